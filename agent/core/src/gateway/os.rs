//! `require_os`: the TCP SYNs of each source's knocks, fingerprinted with p0f v3
//! signatures ([`crate::p0f`]), and the verdict on a completed sequence whose policy
//! requires an OS. Only built when a policy requires one: otherwise knocks carry no SYN
//! fields and nothing here runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::lru::BoundedLru;
use crate::p0f::{Database, Syn};

/// SYNs remembered per source: a sequence has at most this many TCP knocks that count.
const KEEP: usize = 16;

/// One source's latest SYNs: when, and the label p0f matched (`None`: no signature).
#[derive(Default)]
struct Seen {
    syns: [Option<(Instant, Option<usize>)>; KEEP],
    next: usize,
}

pub(super) struct OsState {
    db: Arc<Database>,
    seen: BoundedLru<IpAddr, Seen>,
}

impl OsState {
    pub(super) fn new(db: Arc<Database>, max_sources: usize) -> Self {
        OsState {
            db,
            seen: BoundedLru::new(max_sources),
        }
    }

    /// Whether this state judges by `db`.
    pub(super) fn uses(&self, db: &Arc<Database>) -> bool {
        Arc::ptr_eq(&self.db, db)
    }

    /// A TCP SYN knock from `src` at `at`, fingerprinted.
    pub(super) fn observe(&mut self, src: IpAddr, syn: &Syn, at: Instant) {
        let label = self.db.classify(syn).map(|m| m.label_id());
        let (seen, _) = self.seen.get_or_insert_with(src, Seen::default);
        seen.syns[seen.next] = Some((at, label));
        seen.next = (seen.next + 1) % KEEP;
    }

    /// The verdict on `src`'s sequence that began no earlier than `since`: every SYN it
    /// sent since then must be fingerprinted as one of `required` (names compared
    /// ignoring ASCII case). `Ok`: the label of the last; `Err`: what was seen instead.
    pub(super) fn verdict(
        &mut self,
        src: IpAddr,
        required: &[String],
        since: Instant,
    ) -> Result<String, String> {
        let Some(seen) = self.seen.get_mut(&src) else {
            return Err("no TCP SYN of the sequence was fingerprinted".into());
        };
        let mut recent: Vec<(Instant, Option<usize>)> = seen
            .syns
            .iter()
            .flatten()
            .filter(|(at, _)| *at >= since)
            .copied()
            .collect();
        recent.sort_by_key(|(at, _)| *at);
        let Some(&(_, last)) = recent.last() else {
            return Err("no TCP SYN of the sequence was fingerprinted".into());
        };
        for (_, label) in &recent {
            let Some(id) = label else {
                return Err("an OS no p0f signature matches".into());
            };
            let name = self.db.label_name(*id);
            if !required.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                return Err(self.db.label_text(*id).to_owned());
            }
        }
        Ok(last.map_or_else(String::new, |id| self.db.label_text(id).to_owned()))
    }

    /// Forget `src`'s SYNs (its sequence was judged).
    pub(super) fn forget(&mut self, src: &IpAddr) {
        self.seen.remove(src);
    }
}
