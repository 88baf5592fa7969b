//! The engine's rotating-sequence path: the controller's derived material turned into
//! the detector's doors, every knock fed to the detector, a completed sequence opening
//! its policy for the user it belongs to, and the capture filter kept to exactly the
//! knocks of the sequences accepted now.
//!
//! The detector keys progress and consumption by (user, policy, window). Users and
//! policies get ids here that never change for the life of the process, whatever order
//! later configs list them in: were they config indexes, a config that inserted a user
//! would move a consumed mark onto someone else's sequence and free the consumed one
//! for a replay.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use knockgate_agent_core::config::Material;
use knockgate_agent_core::detect::rotating::{
    DoorKey, RotatingDetector, RotatingDoor, RotatingOutcome,
};
use knockgate_agent_core::filter::capture_filter;
use knockgate_agent_core::packet::KnockKind;
use knockgate_proto::unix_secs;
use tracing::{debug, info, warn};

use super::Engine;
use crate::capture::KnockMsg;
use crate::report::ReportEvent;

/// Names to ids that are never reused.
#[derive(Default)]
struct Interner {
    names: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Interner {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len();
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    fn name(&self, id: usize) -> &str {
        self.names.get(id).map_or("", String::as_str)
    }
}

/// The detector with its stable names.
pub(super) struct RotatingState {
    detector: RotatingDetector,
    users: Interner,
    policies: Interner,
    outcomes: Vec<(DoorKey, RotatingOutcome)>,
    /// The rotating knocks the capture filter passes now; `None` forces a retune.
    tuned: Option<BTreeSet<KnockKind>>,
    /// The wall second of the last prune.
    last_tick: u64,
    /// Used sequences on disk, so a restart does not make them usable again.
    store: Option<ConsumedFile>,
}

/// `state_dir/rotating-consumed`: one JSON line per used sequence, appended and synced
/// before its grant opens, with the unix second after which the sequence could not be
/// accepted anyway (the end of the window after its own). Rewritten with only live lines
/// at start.
struct ConsumedFile {
    file: std::fs::File,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ConsumedLine {
    user: String,
    policy: String,
    window: u64,
    until: u64,
}

/// The used-sequences file in the state directory.
pub const CONSUMED_FILE: &str = "rotating-consumed";

impl RotatingState {
    pub(super) fn new(max_sources: usize) -> Self {
        RotatingState {
            detector: RotatingDetector::new(max_sources),
            users: Interner::default(),
            policies: Interner::default(),
            outcomes: Vec::new(),
            tuned: None,
            last_tick: 0,
            store: None,
        }
    }

    /// Have the next tick retune the capture filter whatever the rotating knocks are
    /// (the static part of the filter changed).
    pub(super) fn force_retune(&mut self) {
        self.tuned = None;
    }
}

impl Engine {
    /// Hold `material` (checked against the config enforced now) from now on: the
    /// rotating sequences it lists, in place of those held (progress and consumption
    /// carry over), and its one-time keys, less those burned here.
    pub fn set_material(&mut self, material: Material) {
        let Material { rotating, otks } = material;
        let st = &mut self.rotating;
        let policies = self
            .config
            .rotating_policies()
            .into_iter()
            .map(|(i, p)| (st.policies.id(&self.policies[i].name), p))
            .collect();
        let doors: Vec<RotatingDoor> = rotating
            .into_iter()
            .filter_map(|s| {
                let user = st.users.id(self.users.get(s.user)?);
                let policy = st.policies.id(&self.policies.get(s.policy)?.name);
                Some(RotatingDoor {
                    key: DoorKey {
                        user,
                        policy,
                        window: s.window,
                    },
                    steps: s.knocks,
                })
            })
            .collect();
        let sequences = doors.len();
        st.detector.set(policies, doors);
        let keys = self.stock_otks(otks);
        debug!(sequences, one_time_keys = keys, "derived material held");
        self.retune();
    }

    /// Feed one knock to the rotating detector; open what it completes.
    pub(super) fn handle_rotating(&mut self, k: &KnockMsg) {
        if self.rotating.detector.is_empty() {
            return;
        }
        let now_unix = unix_secs(self.clock.wall());
        let mut out = std::mem::take(&mut self.rotating.outcomes);
        out.clear();
        self.rotating
            .detector
            .handle_knock(k.src, k.kind, k.tcp_flags, k.at, now_unix, &mut out);
        let mut consumed = false;
        for (key, outcome) in &out {
            let user = self.rotating.users.name(key.user).to_string();
            let policy = self.rotating.policies.name(key.policy).to_string();
            match *outcome {
                RotatingOutcome::Progressed { stage, of } => debug!(target: "knockgate::event",
                    event = "knock.progressed", src = %k.src, policy = %policy, method = "rotating",
                    stage, of, "knock progressed"),
                RotatingOutcome::Reset => debug!(target: "knockgate::event", event = "knock.reset",
                    src = %k.src, policy = %policy, method = "rotating", "knock sequence reset"),
                RotatingOutcome::Completed => {
                    consumed = true;
                    self.rotating_completed(k, &user, &policy, key.window);
                }
            }
        }
        self.rotating.outcomes = out;
        if consumed {
            // The used sequence no longer needs to reach user space.
            self.retune();
        }
    }

    fn rotating_completed(&mut self, k: &KnockMsg, user: &str, policy: &str, window: u64) {
        let Some(p) = self
            .policies
            .iter()
            .find(|p| p.name == policy && p.rotating.is_some())
        else {
            return;
        };
        let (name, open, timeout) = (p.name.clone(), p.open.clone(), p.timeout);
        let window_secs = p.rotating.map_or(30, |r| u64::from(r.window_secs.max(1)));
        if let Some(store) = &mut self.rotating.store {
            let line = ConsumedLine {
                user: user.to_string(),
                policy: name.clone(),
                window,
                until: (window + 2) * window_secs,
            };
            if let Err(e) = store.append(&line) {
                warn!(target: "knockgate::event", event = "knock.rejected", src = %k.src, policy = %name,
                    user, reason = "consumed_store", error = %e,
                    "cannot record the used rotating sequence; refusing (fail closed)");
                return;
            }
        }
        info!(target: "knockgate::event", event = "knock.completed", src = %k.src,
            policy = %name, user, method = "rotating", window, "rotating knock sequence completed");
        self.report(|| {
            ReportEvent::new("knock.completed")
                .src(k.src)
                .user(Some(user))
                .policy(&name)
                .detail("method", "rotating")
                .detail("window", window)
        });
        self.open_grants(&name, Some(user), k.src, &open, timeout, Instant::now());
    }

    /// Keep used sequences in `state_dir` (see [`CONSUMED_FILE`]) and restore the ones
    /// still within their acceptance window, so a restarted agent refuses them too.
    pub fn with_rotating_store(mut self, state_dir: &std::path::Path) -> std::io::Result<Self> {
        let path = state_dir.join(CONSUMED_FILE);
        let now = unix_secs(self.clock.wall());
        let mut live = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A torn last line (a crash mid-append) is skipped.
                if let Ok(l) = serde_json::from_str::<ConsumedLine>(line)
                    && l.until > now
                {
                    live.push(l);
                }
            }
        }
        for l in &live {
            let key = DoorKey {
                user: self.rotating.users.id(&l.user),
                policy: self.rotating.policies.id(&l.policy),
                window: l.window,
            };
            self.rotating.detector.mark_consumed(key);
        }
        crate::state::write_atomic(&path, |f| {
            for l in &live {
                serde_json::to_writer(&mut *f, l).map_err(std::io::Error::other)?;
                std::io::Write::write_all(f, b"\n")?;
            }
            Ok(())
        })?;
        let file = crate::state::open_append(&path)?;
        self.rotating.store = Some(ConsumedFile { file });
        Ok(self)
    }

    /// Once per wall second: forget consumed marks of windows gone by, and follow the
    /// window boundaries with the capture filter.
    pub(super) fn tick_rotating(&mut self) {
        let now_unix = unix_secs(self.clock.wall());
        if now_unix == self.rotating.last_tick {
            return;
        }
        self.rotating.last_tick = now_unix;
        self.rotating.detector.prune(now_unix);
        self.retune();
    }

    /// Point the capture filter at the static knocks, the SPA port and the knocks of the
    /// rotating sequences accepted now: exactly those, never a whole port range (a range
    /// such as 20000-60000 would pass the host's own reply traffic on its ephemeral ports
    /// to user space).
    pub(super) fn retune(&mut self) {
        let Some(tuning) = &self.tuning else { return };
        let live = self
            .rotating
            .detector
            .live_knocks(unix_secs(self.clock.wall()));
        if self.rotating.tuned.as_ref() == Some(&live) {
            return;
        }
        let mut kinds = self.config.capture_kinds();
        kinds.extend(live.iter().copied());
        tuning.set(capture_filter(&kinds), self.config.spa_port());
        self.rotating.tuned = Some(live);
    }
}

impl ConsumedFile {
    fn append(&mut self, line: &ConsumedLine) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        std::io::Write::write_all(&mut self.file, &bytes)?;
        self.file.sync_data()
    }
}
