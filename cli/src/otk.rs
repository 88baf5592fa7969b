//! The one-time key counter kept beside a profile: `PROFILE.otk`, a text file
//! (mode 0600) holding the number of the next unused key, `0` before the first.
//!
//! [`reserve`] hands out a number and moves the file past it before the key is
//! used, so a key is never sent twice, even when sending fails or two knockers
//! run at once: the read and the write happen under an exclusive `flock` on
//! `PROFILE.otk.lock`, and the new value replaces the file by rename (never a
//! half-written counter). A number reserved but never sent is simply skipped: an
//! agent is stocked with the keys after the highest one claimed fleet-wide (16
//! at a time, `controller/src/desired/material.rs`), so a client that skipped
//! ahead by a few is still let in, and the stock moves past the skipped ones
//! with its next claim. The lock file stays beside the counter.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::profile::PROFILE_MODE;

/// A counter is a number and a newline; anything much longer is not one.
const MAX_COUNTER_LEN: u64 = 64;

/// Why no key number could be reserved.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// The lock file could not be opened or locked.
    #[error("cannot lock one-time key counter '{}'", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The counter file exists but could not be read.
    #[error("cannot read one-time key counter '{}'", path.display())]
    Read {
        /// The counter file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The counter file does not hold a number: refuse rather than guess (a
    /// guess too low would reuse keys).
    #[error(
        "one-time key counter '{}' is not a number ({reason}); write the next unused key \
         number into it",
        path.display()
    )]
    Corrupt {
        /// The counter file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Every key number has been used.
    #[error("one-time key counter '{}' is exhausted", path.display())]
    Exhausted {
        /// The counter file.
        path: PathBuf,
    },
    /// The new value could not be written.
    #[error("cannot write one-time key counter '{}'", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
}

impl CounterError {
    /// Whether the file's content is at fault rather than the system.
    #[must_use]
    pub fn is_corrupt(&self) -> bool {
        matches!(self, CounterError::Corrupt { .. })
    }
}

/// `PROFILE.otk`, the counter file of the profile at `profile`.
#[must_use]
pub fn counter_path(profile: &Path) -> PathBuf {
    sibling(profile, ".otk")
}

fn sibling(profile: &Path, suffix: &str) -> PathBuf {
    let mut name = profile.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reserves the next unused key number of the profile at `profile`: returns it
/// once the counter file holds the number after it (created at 0 if missing).
///
/// # Errors
/// [`CounterError`] naming the file; nothing is reserved then.
pub fn reserve(profile: &Path) -> Result<u64, CounterError> {
    let path = counter_path(profile);
    let lock_path = sibling(profile, ".otk.lock");
    let lock_error = |source| CounterError::Lock {
        path: lock_path.clone(),
        source,
    };
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PROFILE_MODE)
        .open(&lock_path)
        .map_err(lock_error)?;
    // Released when `lock` is closed, on every path out of here.
    lock.lock().map_err(lock_error)?;
    let counter = read_counter(&path)?;
    let next = counter
        .checked_add(1)
        .ok_or_else(|| CounterError::Exhausted { path: path.clone() })?;
    write_counter(&path, next)?;
    Ok(counter)
}

/// The counter's value; 0 when the file does not exist yet.
fn read_counter(path: &Path) -> Result<u64, CounterError> {
    let read_error = |source| CounterError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(read_error(err)),
    };
    let mut text = String::new();
    file.take(MAX_COUNTER_LEN + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    let corrupt = |reason: &str| CounterError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if text.len() as u64 > MAX_COUNTER_LEN {
        return Err(corrupt("too long"));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(corrupt("empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt("expected decimal digits"));
    }
    text.parse().map_err(|_| corrupt("too large"))
}

/// Replaces the counter file with `value`: a new 0600 file, synced, renamed
/// over the old one, and the directory synced, so a crash leaves either value.
fn write_counter(path: &Path, value: u64) -> Result<(), CounterError> {
    // Only a holder of the lock gets here, so a leftover temporary file is from a crash.
    let tmp = sibling(path, ".tmp");
    crate::durable::replace(path, &tmp, format!("{value}\n").as_bytes()).map_err(|source| {
        CounterError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn starts_at_zero_and_counts_up_in_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("alice.toml");
        assert_eq!(counter_path(&profile), dir.path().join("alice.toml.otk"));
        assert_eq!(reserve(&profile).unwrap(), 0);
        let path = counter_path(&profile);
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(reserve(&profile).unwrap(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), "2\n");
        // Edited by hand (skipping ahead) is fine.
        fs::write(&path, " 40\n").unwrap();
        assert_eq!(reserve(&profile).unwrap(), 40);
        assert_eq!(fs::read_to_string(&path).unwrap(), "41\n");
    }

    #[test]
    fn a_bad_counter_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("p.toml");
        let path = counter_path(&profile);
        for bad in [
            "",
            "x",
            "-1",
            "1 2",
            "99999999999999999999999",
            &"1".repeat(80),
        ] {
            fs::write(&path, bad).unwrap();
            let err = reserve(&profile).unwrap_err();
            assert!(err.is_corrupt(), "{bad:?}: {err}");
            assert!(err.to_string().contains("p.toml.otk"), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
        fs::write(&path, u64::MAX.to_string()).unwrap();
        assert!(matches!(
            reserve(&profile),
            Err(CounterError::Exhausted { .. })
        ));
    }

    #[test]
    fn concurrent_reservations_never_share_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("p.toml");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let profile = profile.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| reserve(&profile).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct, (0..100).collect());
        assert_eq!(fs::read_to_string(counter_path(&profile)).unwrap(), "100\n");
    }
}
