//! The replay cache on disk, so a restarted agent still refuses packets it accepted
//! before. An append-only file of `hex(key) expires` lines under the state directory,
//! rewritten with only live entries at start and whenever dead lines dominate.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use knockgate_agent_core::replay::{ReplayCache, ReplayKey};

/// The open replay file.
pub struct ReplayStore {
    path: PathBuf,
    file: File,
    lines: usize,
}

impl ReplayStore {
    /// Load `state_dir/spa-replay` into `cache` (dropping expired entries), compact it,
    /// and keep it open for appending.
    pub fn open(state_dir: &Path, cache: &mut ReplayCache, now: u64) -> io::Result<ReplayStore> {
        let path = state_dir.join("spa-replay");
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                let mut parts = line.split_whitespace();
                let (Some(hex), Some(exp)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Some(key), Ok(exp)) = (decode_hex(hex), exp.parse::<u64>()) {
                    cache.restore(key, exp, now);
                }
            }
        }
        let mut store = ReplayStore {
            file: rewrite(&path, cache)?,
            path,
            lines: cache.len(),
        };
        store.file.flush()?;
        Ok(store)
    }

    /// Record one accepted packet. Written before the grant opens: a crash in between
    /// costs a grant, never a replay.
    pub fn append(&mut self, key: &ReplayKey, expires: u64, cache: &ReplayCache) -> io::Result<()> {
        writeln!(self.file, "{} {expires}", encode_hex(key))?;
        // Durable before the grant opens: a power cut must not make the packet new again.
        self.file.sync_data()?;
        self.lines += 1;
        if self.lines > 2 * cache.len() + 1024 {
            self.file = rewrite(&self.path, cache)?;
            self.lines = cache.len();
        }
        Ok(())
    }
}

/// Write the live entries atomically, then open the file for appending.
fn rewrite(path: &Path, cache: &ReplayCache) -> io::Result<File> {
    crate::state::write_atomic(path, |f| {
        for (key, exp) in cache.iter() {
            writeln!(f, "{} {exp}", encode_hex(key))?;
        }
        Ok(())
    })?;
    crate::state::open_append(path)
}

fn encode_hex(key: &ReplayKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<ReplayKey> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use knockgate_agent_core::replay::ReplayError;

    #[test]
    fn survives_a_restart_and_forgets_expired_entries() {
        let dir = std::env::temp_dir().join(format!("kg-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cache = ReplayCache::new(100);
        let mut store = ReplayStore::open(&dir, &mut cache, 1000).unwrap();
        cache.handle_seen([7; 32], 2000, 1000, 1).unwrap();
        store.append(&[7; 32], 2000, &cache).unwrap();
        cache.handle_seen([8; 32], 1500, 1000, 1).unwrap();
        store.append(&[8; 32], 1500, &cache).unwrap();
        drop(store);
        let mut fresh = ReplayCache::new(100);
        let _store = ReplayStore::open(&dir, &mut fresh, 1600).unwrap();
        assert_eq!(
            fresh.handle_seen([7; 32], 2000, 1600, 1),
            Err(ReplayError::Replay)
        );
        assert_eq!(
            fresh.handle_seen([8; 32], 2100, 1600, 1),
            Ok(()),
            "expired entries are forgotten"
        );
        let text = std::fs::read_to_string(dir.join("spa-replay")).unwrap();
        assert_eq!(text.lines().count(), 1, "compacted at open: {text}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
