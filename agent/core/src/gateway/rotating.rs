//! The rotating-sequence path: the controller's derived material turned into the
//! detector's doors, every knock fed to the detector, a completed sequence recorded as
//! used ([`Persist::Consumed`]) and then opening its policy for the user it belongs to,
//! and the capture filter kept to exactly the knocks of the sequences accepted now.
//!
//! The detector keys progress and consumption by (user, policy, window). Users and
//! policies get ids here that never change for the life of the process, whatever order
//! later configs list them in: were they config indexes, a config that inserted a user
//! would move a consumed mark onto someone else's sequence and free the consumed one
//! for a replay.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use knockgate_proto::event::{Event, Method, Reason, Subject};
use serde::{Deserialize, Serialize};

use super::{Action, Gateway, KnockMsg, Level, Persist, Then, Time, progress_event};
use crate::config::Material;
use crate::detect::progress::Outcome;
use crate::detect::rotating::{DoorKey, RotatingDetector, RotatingDoor};
use crate::packet::KnockStep;

/// One used sequence, as recorded: with the unix second after which it could not be
/// accepted anyway (the end of the window after its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    pub user: String,
    pub policy: String,
    pub window: u64,
    pub until: u64,
}

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
    outcomes: Vec<(DoorKey, Outcome)>,
    /// The rotating knocks the capture filter passes now; `None` forces a retune.
    tuned: Option<BTreeSet<KnockStep>>,
    /// The wall second of the last prune.
    last_tick: u64,
}

/// A completed sequence whose use is being recorded.
pub(super) struct Completed {
    src: IpAddr,
    consumed: Consumed,
    /// When its last knock was captured.
    at: Instant,
}

impl RotatingState {
    pub(super) fn new(max_sources: usize) -> Self {
        RotatingState {
            detector: RotatingDetector::new(max_sources),
            users: Interner::default(),
            policies: Interner::default(),
            outcomes: Vec::new(),
            tuned: None,
            last_tick: 0,
        }
    }

    /// Have the next tick retune the capture filter whatever the rotating knocks are
    /// (the static part of the filter changed).
    pub(super) fn force_retune(&mut self) {
        self.tuned = None;
    }
}

impl Gateway {
    /// Sequences used in an earlier run (still within their windows): refused here too.
    pub fn restore_consumed(&mut self, consumed: &[Consumed]) {
        for c in consumed {
            let key = DoorKey {
                user: self.rotating.users.id(&c.user),
                policy: self.rotating.policies.id(&c.policy),
                window: c.window,
            };
            self.rotating.detector.mark_consumed(key);
        }
    }

    /// Hold `material` (checked against the config enforced now) from now on: the
    /// rotating sequences it lists, in place of those held (progress and consumption
    /// carry over), and its one-time keys, less those burned here.
    pub fn set_material(&mut self, material: Material, now: Time) {
        let Material { rotating, otks } = material;
        let st = &mut self.rotating;
        let config = &self.config;
        let policies = config
            .rotating_policies()
            .into_iter()
            .map(|(i, p)| (st.policies.id(&config.policies[i].name), p))
            .collect();
        let doors: Vec<RotatingDoor> = rotating
            .into_iter()
            .filter_map(|s| {
                let user = st.users.id(&config.users.get(s.user)?.name);
                let policy = st.policies.id(&config.policies.get(s.policy)?.name);
                let key = DoorKey {
                    user,
                    policy,
                    window: s.window,
                };
                Some(RotatingDoor {
                    key,
                    steps: s.knocks,
                })
            })
            .collect();
        st.detector.set(policies, doors);
        self.stock_otks(otks);
        self.retune(now);
    }

    /// Feed one knock to the rotating detector; record what it completes.
    pub(super) fn handle_rotating(&mut self, k: &KnockMsg, now: Time) {
        if self.rotating.detector.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.rotating.outcomes);
        out.clear();
        self.rotating.detector.handle_knock(
            k.src,
            k.kind,
            k.tcp_flags,
            k.at,
            now.unix_secs(),
            &mut out,
        );
        let mut consumed = false;
        for (key, outcome) in &out {
            let user = self.rotating.users.name(key.user).to_string();
            let policy = self.rotating.policies.name(key.policy).to_string();
            let subject = Subject {
                src: Some(k.src),
                user: Some(user),
                policy: Some(policy),
            };
            let method = Method::Rotating;
            if *outcome == Outcome::Completed {
                consumed = true;
                self.rotating_completed(k.src, subject, key.window, k.at);
            } else if let Some((level, event)) = progress_event(*outcome, subject, method) {
                self.tell(level, false, now, event);
            }
        }
        self.rotating.outcomes = out;
        if consumed {
            // The used sequence no longer needs to reach user space.
            self.retune(now);
        }
    }

    fn rotating_completed(&mut self, src: IpAddr, subject: Subject, window: u64, at: Instant) {
        let (Some(user), Some(policy)) = (subject.user, subject.policy) else {
            return;
        };
        let Some(p) = self.policy(&policy).filter(|p| p.rotating.is_some()) else {
            return;
        };
        let window_secs = p.rotating.map_or(30, |r| u64::from(r.window_secs.max(1)));
        let until = window.saturating_add(2).saturating_mul(window_secs);
        let consumed = Consumed {
            user,
            policy,
            window,
            until,
        };
        let completed = Completed {
            src,
            consumed: consumed.clone(),
            at,
        };
        self.persist_then(Persist::Consumed(consumed), Then::Rotating(completed));
    }

    /// The use of a completed sequence is durable (or not: then it opens nothing).
    pub(super) fn rotating_recorded(
        &mut self,
        c: Completed,
        result: Result<(), String>,
        now: Time,
    ) {
        let Completed {
            src,
            consumed:
                Consumed {
                    user,
                    policy,
                    window,
                    ..
                },
            at,
        } = c;
        let subject = Subject {
            src: Some(src),
            user: Some(user.clone()),
            policy: Some(policy.clone()),
        };
        if let Err(error) = result {
            let event = Event::KnockRejected {
                subject,
                reason: Reason::ConsumedStore,
                error,
            };
            self.tell(Level::Warn, true, now, event);
            return;
        }
        let Some(p) = self.policy(&policy) else {
            return;
        };
        let (open, timeout) = (p.open.clone(), p.timeout);
        let event = Event::KnockCompleted {
            subject,
            method: Method::Rotating,
            window: Some(window),
            os: None,
        };
        self.tell(Level::Info, true, now, event);
        self.open_grants(&policy, Some(&user), src, &open, timeout, at);
    }

    /// Once per wall second: forget consumed marks of windows gone by, and follow the
    /// window boundaries with the capture filter.
    pub(super) fn tick_rotating(&mut self, now: Time) {
        let now_unix = now.unix_secs();
        if now_unix == self.rotating.last_tick {
            return;
        }
        self.rotating.last_tick = now_unix;
        self.rotating.detector.prune(now_unix);
        self.retune(now);
    }

    /// Point the capture filter at the static knocks, the SPA port and the knocks of the
    /// rotating sequences accepted now: exactly those, never a whole port range (a range
    /// such as 20000-60000 would pass the host's own reply traffic on its ephemeral ports
    /// to user space).
    pub(super) fn retune(&mut self, now: Time) {
        if !self.tuning {
            return;
        }
        let live = self.rotating.detector.live_knocks(now.unix_secs());
        if self.rotating.tuned.as_ref() == Some(&live) {
            return;
        }
        let extra: Vec<_> = live.iter().copied().collect();
        let filter = self.config.capture_filter(&extra);
        self.actions.push_back(Action::Retune {
            filter,
            spa_port: self.config.spa_port(),
            fingerprint: self.config.fingerprints(),
        });
        self.rotating.tuned = Some(live);
    }
}
