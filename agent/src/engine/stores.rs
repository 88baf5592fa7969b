//! The engine's durable state under `state_dir`, written when the gateway asks
//! ([`Persist`]): the SPA replay file, burned one-time keys, used rotating sequences
//! (`rotating-consumed`), offline claims (through the claim link) and the protected set.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use knockgate_agent_core::gateway::{Consumed, Persist};
use knockgate_agent_core::replay::ReplayCache;

use super::{ClaimLink, queue_offline};
use crate::otk_store::BurnedKeys;
use crate::replay_store::ReplayStore;

/// The used-sequences file in the state directory: one JSON line per used sequence,
/// appended and synced before its grant opens, rewritten with only live lines at start.
pub const CONSUMED_FILE: &str = "rotating-consumed";

/// The files, each `None` when this agent does not keep it.
#[derive(Default)]
pub(super) struct Stores {
    pub(super) replay: Option<ReplayStore>,
    pub(super) burned: Option<BurnedKeys>,
    pub(super) consumed: Option<File>,
    /// Where the protected set is recorded.
    pub(super) state_dir: Option<PathBuf>,
}

impl Stores {
    pub(super) fn new(replay: Option<ReplayStore>) -> Self {
        Stores {
            replay,
            ..Stores::default()
        }
    }

    /// Load `state_dir/rotating-consumed`, keep the lines still live at `now_unix`, and
    /// keep the file open for appending. Returns the live ones.
    pub(super) fn open_consumed(
        &mut self,
        state_dir: &Path,
        now_unix: u64,
    ) -> std::io::Result<Vec<Consumed>> {
        let path = state_dir.join(CONSUMED_FILE);
        let mut live = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A torn last line (a crash mid-append) is skipped.
            live = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Consumed>(l).ok())
                .filter(|c| c.until > now_unix)
                .collect();
        }
        crate::state::write_atomic(&path, |f| {
            for c in &live {
                serde_json::to_writer(&mut *f, c).map_err(std::io::Error::other)?;
                f.write_all(b"\n")?;
            }
            Ok(())
        })?;
        self.consumed = Some(crate::state::open_append(&path)?);
        Ok(live)
    }

    /// Make `p` durable.
    pub(super) fn persist(
        &mut self,
        p: &Persist,
        cache: Option<&ReplayCache>,
        claims: &Option<ClaimLink>,
    ) -> Result<(), String> {
        let r = match p {
            Persist::Replay { key, expires } => match (&mut self.replay, cache) {
                (Some(store), Some(cache)) => store.append(key, *expires, cache),
                _ => Ok(()),
            },
            Persist::Burn { user, counter } => match &mut self.burned {
                Some(b) => b.insert(user, *counter),
                None => Ok(()),
            },
            Persist::KeepBurned(keep) => match &mut self.burned {
                Some(b) => b.retain_stocked(keep),
                None => Ok(()),
            },
            Persist::Consumed(c) => match &mut self.consumed {
                Some(f) => append_line(f, c),
                None => Ok(()),
            },
            Persist::OfflineClaim(claim) => queue_offline(claims.as_ref(), claim),
            Persist::Protected(set) => match &self.state_dir {
                Some(dir) => crate::state::save_protected(dir, set),
                None => Ok(()),
            },
        };
        r.map_err(|e| e.to_string())
    }
}

fn append_line(f: &mut File, c: &Consumed) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    f.write_all(&bytes)?;
    f.sync_data()
}
