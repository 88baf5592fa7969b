//! One-time keys on disk, under the state directory, so a restart forgets nothing that
//! matters for single use:
//!
//! - `otk-burned`: the keys this agent has used up. The controller may keep stocking a
//!   key for a while after it was burned here (until it hears of the claim, or for ever
//!   if the claim was never made), and a restarted agent starts from the cached stock; this
//!   list keeps such keys out. An entry is forgotten once the controller stops stocking it.
//! - `otk-offline.jsonl`: claims this agent granted on its own while the controller was
//!   out of reach (policy `otk_offline = "local"`), waiting to be reported to it.
//!
//! Both are JSON lines, appended and synced before the grant opens (a crash in between
//! costs the grant, never a second use), rewritten atomically when entries go.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state;

/// The burned-keys file in the state directory.
pub const BURNED_FILE: &str = "otk-burned";
/// The offline-claims file in the state directory.
pub const OFFLINE_FILE: &str = "otk-offline.jsonl";

pub use knockgate_agent_core::gateway::Claim;

#[derive(Serialize, Deserialize)]
struct BurnedLine {
    user: String,
    counter: u64,
}

/// Read every well-formed JSON line of `path` (none if it does not exist). A torn last
/// line (a crash mid-append) and lines that do not parse are skipped.
fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Vec<T>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if let Ok(v) = serde_json::from_str(&line?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Replace `path` with `lines`, atomically.
fn rewrite<T: Serialize>(path: &Path, lines: impl Iterator<Item = T>) -> io::Result<()> {
    state::write_atomic(path, |f| {
        for l in lines {
            serde_json::to_writer(&mut *f, &l).map_err(io::Error::other)?;
            f.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Append one line to `path`, synced.
fn append<T: Serialize>(path: &Path, line: &T) -> io::Result<()> {
    let mut buf = serde_json::to_vec(line).map_err(io::Error::other)?;
    buf.push(b'\n');
    let mut f = state::open_append(path)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// The one-time keys this agent has burned, by (user, counter).
#[derive(Debug, Default)]
pub struct BurnedKeys {
    path: Option<PathBuf>,
    keys: BTreeSet<(String, u64)>,
}

impl BurnedKeys {
    /// A list that lives only as long as the process (tests, agents without a controller).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Load `state_dir/otk-burned`, compacted.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join(BURNED_FILE);
        let keys: BTreeSet<(String, u64)> = read_lines::<BurnedLine>(&path)?
            .into_iter()
            .map(|l| (l.user, l.counter))
            .collect();
        let me = BurnedKeys {
            path: Some(path),
            keys,
        };
        me.save()?;
        Ok(me)
    }

    fn save(&self) -> io::Result<()> {
        match &self.path {
            Some(p) => rewrite(
                p,
                self.keys.iter().map(|(user, counter)| BurnedLine {
                    user: user.clone(),
                    counter: *counter,
                }),
            ),
            None => Ok(()),
        }
    }

    /// The burned keys, by (user, counter).
    pub fn keys(&self) -> &BTreeSet<(String, u64)> {
        &self.keys
    }

    pub fn contains(&self, user: &str, counter: u64) -> bool {
        self.keys.contains(&(user.to_string(), counter))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Burn a key: on disk first, then here. On an error nothing is recorded.
    pub fn insert(&mut self, user: &str, counter: u64) -> io::Result<()> {
        if let Some(p) = &self.path {
            append(
                p,
                &BurnedLine {
                    user: user.to_string(),
                    counter,
                },
            )?;
        }
        self.keys.insert((user.to_string(), counter));
        Ok(())
    }

    /// Forget burned keys the controller no longer stocks (`stock`): it has moved past
    /// them, so they cannot come back.
    pub fn retain_stocked(&mut self, stock: &BTreeSet<(String, u64)>) -> io::Result<()> {
        let before = self.keys.len();
        self.keys.retain(|k| stock.contains(k));
        if self.keys.len() == before {
            return Ok(());
        }
        self.save()
    }
}

/// Claims granted offline, waiting for the controller. Shared between the engine (which
/// adds) and the claim task (which delivers and removes), behind a mutex.
#[derive(Debug, Default)]
pub struct OfflineClaims {
    path: Option<PathBuf>,
    claims: Vec<Claim>,
}

impl OfflineClaims {
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Load `state_dir/otk-offline.jsonl`, compacted.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join(OFFLINE_FILE);
        let mut claims: Vec<Claim> = Vec::new();
        for c in read_lines::<Claim>(&path)? {
            if !claims
                .iter()
                .any(|o| o.user == c.user && o.counter == c.counter)
            {
                claims.push(c);
            }
        }
        rewrite(&path, claims.iter())?;
        Ok(OfflineClaims {
            path: Some(path),
            claims,
        })
    }

    /// Queue `claim`: on disk first. On an error nothing is queued.
    pub fn push(&mut self, claim: Claim) -> io::Result<()> {
        if let Some(p) = &self.path {
            append(p, &claim)?;
        }
        self.claims.push(claim);
        Ok(())
    }

    /// The claims waiting, oldest first.
    pub fn pending(&self) -> Vec<Claim> {
        self.claims.clone()
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Drop `delivered` from the queue (the controller has them).
    pub fn remove(&mut self, delivered: &[Claim]) -> io::Result<()> {
        let before = self.claims.len();
        self.claims.retain(|c| !delivered.contains(c));
        if self.claims.len() == before {
            return Ok(());
        }
        match &self.path {
            Some(p) => rewrite(p, self.claims.iter()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(counter: u64) -> Claim {
        Claim {
            user: "alice".into(),
            counter,
            src: "10.0.0.2".parse().expect("ip"),
            at_unix_ms: 1_800_000_000_000,
            offline: true,
        }
    }

    #[test]
    fn burned_keys_survive_a_restart_until_no_longer_stocked() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut b = BurnedKeys::open(dir.path()).expect("open");
        b.insert("alice", 4).expect("burn");
        b.insert("bob", 9).expect("burn");
        // A crash mid-append leaves a torn line.
        let mut f = state::open_append(&dir.path().join(BURNED_FILE)).expect("file");
        f.write_all(b"{\"user\":\"al").expect("torn");
        drop(b);
        let mut b = BurnedKeys::open(dir.path()).expect("reopen");
        assert!(b.contains("alice", 4) && b.contains("bob", 9));
        assert_eq!(b.len(), 2);
        let stock = BTreeSet::from([("alice".to_string(), 4), ("alice".to_string(), 5)]);
        b.retain_stocked(&stock).expect("retain");
        drop(b);
        let b = BurnedKeys::open(dir.path()).expect("reopen");
        assert!(b.contains("alice", 4));
        assert!(!b.contains("bob", 9), "no longer stocked: forgotten");
    }

    #[test]
    fn offline_claims_survive_a_restart_until_delivered() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut q = OfflineClaims::open(dir.path()).expect("open");
        q.push(claim(1)).expect("push");
        q.push(claim(2)).expect("push");
        drop(q);
        let mut q = OfflineClaims::open(dir.path()).expect("reopen");
        assert_eq!(q.pending(), [claim(1), claim(2)]);
        q.remove(&[claim(1)]).expect("remove");
        drop(q);
        let q = OfflineClaims::open(dir.path()).expect("reopen");
        assert_eq!(q.pending(), [claim(2)]);
    }
}
