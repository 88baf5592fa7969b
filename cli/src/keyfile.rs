//! Native SPA key files: what `knocker keygen --out` writes (the base64 key on
//! one line, mode 0600) and what `knocker spa --key-file` reads (that line,
//! with blank lines and `#` comments allowed around it).
//!
//! No error here ever carries the file's content: a key that fails to parse
//! is reported by path and line only, so a near-miss secret never reaches a
//! terminal or a log.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use knockgate_proto::spa::{SpaKey, SpaKeyError};
use zeroize::Zeroizing;

/// Mode of a key file `knocker keygen` creates: readable by its owner only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// A key file is one short line; anything much longer is not a key file
/// (and reading `/dev/zero` by mistake must not run out of memory).
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Why the text of a key file holds no usable key. Never carries the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    /// Only blank lines and comments.
    #[error("no key in it (expected one line of base64, as 'knocker keygen' prints)")]
    NoKey,
    /// A second non-comment line after the key.
    #[error("line {0}: more than one key line")]
    ExtraLine(usize),
    /// The key line is not base64 of 32 bytes.
    #[error("line {line}")]
    BadKey {
        /// 1-based line number of the key line.
        line: usize,
        /// What is wrong with it (no key material in the message).
        #[source]
        source: SpaKeyError,
    },
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Opening or reading the file failed (missing, permissions, not UTF-8, …).
    #[error("cannot read key file '{}'", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The file was read but holds no usable key.
    #[error("invalid key file '{}'", path.display())]
    Parse {
        /// The file as given.
        path: PathBuf,
        /// What is wrong with its text.
        #[source]
        source: KeyTextError,
    },
    /// The file exists and overwriting was not asked for.
    #[error("refusing to overwrite existing key file '{}' (use --force)", path.display())]
    Exists {
        /// The file as given.
        path: PathBuf,
    },
    /// Creating or writing the file failed.
    #[error("cannot write key file '{}'", path.display())]
    Write {
        /// The file as given.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
}

/// Parses the text of a key file: exactly one line holding the base64 key
/// (surrounding whitespace ignored), plus any number of blank lines and lines
/// whose first non-blank character is `#`.
///
/// # Errors
/// [`KeyTextError`] when there is no key line, more than one, or the key line
/// is not base64 of 32 bytes.
pub fn parse_key_text(text: &str) -> Result<SpaKey, KeyTextError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
    let (line, key) = lines.next().ok_or(KeyTextError::NoKey)?;
    if let Some((extra, _)) = lines.next() {
        return Err(KeyTextError::ExtraLine(extra));
    }
    SpaKey::parse(key).map_err(|source| KeyTextError::BadKey { line, source })
}

/// Reads and parses a key file (see [`parse_key_text`]).
///
/// # Errors
/// [`KeyFileError::Read`] or [`KeyFileError::Parse`], naming `path`.
pub fn read_key_file(path: &Path) -> Result<SpaKey, KeyFileError> {
    let read_error = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {MAX_KEY_FILE_LEN} bytes"),
        )));
    }
    parse_key_text(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes `key` to `path` as one base64 line, in a file of mode 0600.
///
/// Without `force` the file must not exist yet (checked atomically with
/// `O_EXCL`). With `force` an existing file is truncated and set to 0600
/// before the key is written, so a formerly wider mode never covers the key.
///
/// # Errors
/// [`KeyFileError::Exists`] when the file exists and `force` is false,
/// [`KeyFileError::Write`] for any other failure.
pub fn write_key_file(path: &Path, key: &SpaKey, force: bool) -> Result<(), KeyFileError> {
    let write_error = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(KEY_FILE_MODE);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            write_error(source)
        }
    })?;
    if force {
        file.set_permissions(Permissions::from_mode(KEY_FILE_MODE))
            .map_err(write_error)?;
    }
    let line = Zeroizing::new(format!("{key}\n"));
    file.write_all(line.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key() -> SpaKey {
        SpaKey::parse(KEY).unwrap()
    }

    #[test]
    fn plain_key_line() {
        assert_eq!(parse_key_text(KEY), Ok(key()));
        assert_eq!(parse_key_text(&format!("{KEY}\n")), Ok(key()));
        assert_eq!(parse_key_text(&format!("  {KEY}  \r\n\n")), Ok(key()));
        // Padding is optional.
        assert_eq!(parse_key_text(KEY.trim_end_matches('=')), Ok(key()));
    }

    #[test]
    fn comments_and_blank_lines_around_the_key() {
        let text = format!("# knockgate spa key for alice\n\n   # gw1\n{KEY}\n# end\n\n");
        assert_eq!(parse_key_text(&text), Ok(key()));
    }

    #[test]
    fn no_key() {
        assert_eq!(parse_key_text(""), Err(KeyTextError::NoKey));
        assert_eq!(
            parse_key_text("\n  \n# only a comment\n"),
            Err(KeyTextError::NoKey)
        );
    }

    #[test]
    fn two_key_lines() {
        let text = format!("# c\n{KEY}\n\n{KEY}\n");
        assert_eq!(parse_key_text(&text), Err(KeyTextError::ExtraLine(4)));
    }

    #[test]
    fn bad_keys_name_the_line_not_the_key() {
        let short = &KEY[..40]; // 30 bytes
        for (text, want) in [
            (format!("#\n{short}"), SpaKeyError::WrongLength(30)),
            ("#\nnot base64!".to_owned(), SpaKeyError::NotBase64),
            (format!("#\n{KEY}AAAA"), SpaKeyError::NotBase64),
        ] {
            let err = parse_key_text(&text).unwrap_err();
            assert_eq!(
                err,
                KeyTextError::BadKey {
                    line: 2,
                    source: want
                }
            );
            assert_eq!(err.to_string(), "line 2");
            assert!(!want.to_string().contains(short));
        }
    }

    #[test]
    fn write_then_read_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        write_key_file(&path, &key(), false).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{KEY}\n"));
        assert_eq!(read_key_file(&path).unwrap(), key());
    }

    #[test]
    fn refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            write_key_file(&path, &key(), false),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");

        write_key_file(&path, &key(), true).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "force tightens");
        assert_eq!(read_key_file(&path).unwrap(), key());
    }

    #[test]
    fn read_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.key");
        let err = read_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }));
        assert!(err.to_string().contains("missing.key"), "{err}");

        std::fs::write(&path, "# nothing\n").unwrap();
        let err = read_key_file(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::Parse {
                source: KeyTextError::NoKey,
                ..
            }
        ));
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
