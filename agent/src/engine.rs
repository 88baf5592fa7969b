//! The engine: the one owner of decision state. It receives knocks from the capture
//! threads, runs them through the matcher, opens grants through the firewall, notices
//! expiry, and emits every decision as a structured event (target `knockgate::event`).

mod spa;

use std::net::IpAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use knockgate_agent_core::config::{Config, Policy};
use knockgate_agent_core::detect::sequence::{Decision, DoorError, Outcome, SequenceMatcher};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::grants::{Grants, Opened};
use knockgate_agent_core::ruleset::{Access, GrantKey};
use tracing::{debug, info, trace, warn};

use crate::capture::KnockMsg;
use crate::firewall::Firewall;
use crate::replay_store::ReplayStore;

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    Knock(KnockMsg),
    /// Stop; remove the firewall state unless `keep`.
    Shutdown {
        keep: bool,
    },
}

/// How long the engine sleeps at most when nothing is due.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Decision state plus the firewall that enforces it.
pub struct Engine {
    policies: Vec<Policy>,
    users: Vec<String>,
    /// Policy index of each sequence door.
    door_policy: Vec<usize>,
    matcher: SequenceMatcher,
    spa: Option<spa::SpaState>,
    grants: Grants,
    firewall: Box<dyn Firewall>,
    decisions: Vec<Decision>,
}

impl Engine {
    /// An engine for `config` over an installed firewall. `spa` carries the detector and
    /// its on-disk replay cache when any policy is opened by SPA.
    pub fn new(
        config: &Config,
        firewall: Box<dyn Firewall>,
        spa: Option<(SpaDetector, ReplayStore)>,
    ) -> Result<Self, DoorError> {
        let (door_policy, doors): (Vec<usize>, Vec<_>) = config.doors().into_iter().unzip();
        let matcher = SequenceMatcher::new(doors, config.agent.max_sources)?;
        Ok(Engine {
            policies: config.policies.clone(),
            users: config.users.iter().map(|u| u.name.clone()).collect(),
            door_policy,
            matcher,
            spa: spa.map(|(detector, store)| spa::SpaState::new(detector, store, config.spa.port)),
            grants: Grants::new(),
            firewall,
            decisions: Vec::new(),
        })
    }

    /// Install the static ruleset (protected ports, knock ports, grant sets).
    pub fn install(
        &mut self,
        ruleset: &knockgate_agent_core::ruleset::Ruleset,
    ) -> Result<(), crate::firewall::FirewallError> {
        self.firewall.ensure_base(ruleset)
    }

    /// Take over the grants the firewall already holds (left by an earlier run).
    pub fn adopt_existing(
        &mut self,
        now: Instant,
    ) -> Result<usize, crate::firewall::FirewallError> {
        let held = self.firewall.list()?;
        for h in &held {
            self.grants.adopt(h.key, h.remaining, now);
            info!(target: "knockgate::event", event = "grant.adopted", src = %h.key.addr,
                proto = %h.key.proto, port = h.key.port, remaining_ms = h.remaining.as_millis() as u64,
                "grant adopted from the firewall");
        }
        Ok(held.len())
    }

    /// Run until told to stop or every sender is gone. Returns the firewall so the caller
    /// can decide what to leave behind.
    pub fn run(mut self, rx: Receiver<Input>) -> (Box<dyn Firewall>, bool) {
        let keep = loop {
            let now = Instant::now();
            self.expire(now);
            let wait = self.grants.next_expiry().map_or(IDLE_TICK, |t| {
                t.saturating_duration_since(now).min(IDLE_TICK)
            });
            if let Some(spa) = &mut self.spa {
                spa.summarize(now);
            }
            match rx.recv_timeout(wait) {
                Ok(Input::Knock(k)) => self.handle_input(k),
                Ok(Input::Shutdown { keep }) => break keep,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break false,
            }
        };
        (self.firewall, keep)
    }

    /// One packet from capture: a datagram for the SPA port, or a knock.
    pub fn handle_input(&mut self, k: KnockMsg) {
        if let Some(payload) = &k.payload {
            self.handle_spa(k.src, payload, k.at);
        } else {
            self.handle_knock(k);
        }
    }

    /// One knock through the matcher, and whatever it completes.
    fn handle_knock(&mut self, k: KnockMsg) {
        let mut decisions = std::mem::take(&mut self.decisions);
        decisions.clear();
        self.matcher
            .handle_knock(k.src, k.kind, k.tcp_flags, k.at, &mut decisions);
        for d in &decisions {
            let policy_idx = self.door_policy[d.door as usize];
            let policy = &self.policies[policy_idx].name;
            match d.outcome {
                Outcome::Progressed { stage, of } => debug!(target: "knockgate::event",
                    event = "knock.progressed", src = %k.src, policy = %policy, stage, of, "knock progressed"),
                Outcome::Retransmit { stage } => debug!(target: "knockgate::event",
                    event = "knock.retransmit", src = %k.src, policy = %policy, stage, "retransmitted knock ignored"),
                Outcome::Reset(reason) => debug!(target: "knockgate::event",
                    event = "knock.reset", src = %k.src, policy = %policy, reason = reason.as_str(), "knock sequence reset"),
                Outcome::FlagsIgnored => trace!(target: "knockgate::event",
                    event = "knock.ignored", src = %k.src, policy = %policy, reason = "tcp_flags", "knock ignored"),
                Outcome::Completed => {
                    info!(target: "knockgate::event", event = "knock.completed", src = %k.src,
                        policy = %policy, method = "sequence", "knock sequence completed");
                    let p = &self.policies[policy_idx];
                    let (name, open, timeout) = (p.name.clone(), p.open.clone(), p.timeout);
                    self.open_grants(&name, k.src, &open, timeout, Instant::now());
                }
            }
        }
        self.decisions = decisions;
    }

    /// Open `access` for `src` for `timeout`; every port that fails stays closed.
    /// Returns how many opened.
    fn open_grants(
        &mut self,
        policy: &str,
        src: IpAddr,
        access: &[Access],
        timeout: Duration,
        now: Instant,
    ) -> usize {
        let mut opened = 0;
        for spec in access {
            let key = GrantKey {
                addr: src,
                proto: spec.proto,
                port: spec.port,
            };
            match self.firewall.open(&key, timeout) {
                Ok(()) => {
                    opened += 1;
                    let kind = self.grants.handle_open(key, policy, timeout, now);
                    let event = if kind == Opened::New {
                        "grant.opened"
                    } else {
                        "grant.extended"
                    };
                    info!(target: "knockgate::event", event, src = %src, policy = %policy,
                        proto = %spec.proto, port = spec.port, timeout_s = timeout.as_secs_f64(),
                        "grant opened");
                }
                Err(e) => warn!(target: "knockgate::event", event = "grant.failed", src = %src,
                    policy = %policy, proto = %spec.proto, port = spec.port, error = %e,
                    "firewall refused the grant; the port stays closed"),
            }
        }
        opened
    }

    fn expire(&mut self, now: Instant) {
        for (key, grant) in self.grants.poll_expired(now) {
            // The kernel has expired nftables grants already; closing again is harmless and
            // is what makes the command backend close at all.
            if let Err(e) = self.firewall.close(&key) {
                warn!(target: "knockgate::event", event = "grant.close_failed", src = %key.addr,
                    proto = %key.proto, port = key.port, error = %e, "could not close grant");
            }
            info!(target: "knockgate::event", event = "grant.closed", src = %key.addr,
                policy = %grant.policy, proto = %key.proto, port = key.port, reason = "expired",
                "grant closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fake::FakeFirewall;
    use knockgate_agent_core::config::Config;
    use knockgate_agent_core::packet::{KnockKind, tcp_flags};
    use knockgate_agent_core::ruleset::Proto;

    const CONFIG: &str = r#"
[agent]
name = "gw1"
interfaces = ["lo"]
state_dir = "/tmp"
[[policy]]
name = "ssh"
open = ["tcp/22", "udp/60001"]
timeout = "30s"
sequence = ["tcp/7000", "udp/8000"]
"#;

    fn engine(fw: FakeFirewall) -> Engine {
        let c = Config::parse(CONFIG).expect("config");
        Engine::new(&c, Box::new(fw), None).expect("engine")
    }

    fn knock(e: &mut Engine, at: Instant, kind: KnockKind) {
        let src = "10.240.0.2".parse().expect("ip");
        e.handle_input(KnockMsg {
            at,
            src,
            kind,
            tcp_flags: tcp_flags::SYN,
            payload: None,
        });
    }

    #[test]
    fn a_completed_sequence_opens_every_port_of_the_policy_and_expiry_closes() {
        let fw = FakeFirewall::default();
        let state = fw.state.clone();
        let mut e = engine(fw);
        let t0 = Instant::now();
        knock(
            &mut e,
            t0,
            KnockKind::Port {
                proto: Proto::Tcp,
                port: 7000,
            },
        );
        assert!(state.lock().expect("lock").open.is_empty());
        knock(
            &mut e,
            t0,
            KnockKind::Port {
                proto: Proto::Udp,
                port: 8000,
            },
        );
        let open: Vec<String> = state
            .lock()
            .expect("lock")
            .open
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(open, ["10.240.0.2 tcp/22", "10.240.0.2 udp/60001"]);
        assert_eq!(e.grants.len(), 2);
        e.expire(Instant::now() + Duration::from_secs(31));
        assert!(
            state.lock().expect("lock").open.is_empty(),
            "expiry closes through the firewall"
        );
        assert!(e.grants.is_empty());
    }

    #[test]
    fn a_firewall_error_records_no_grant() {
        let fw = FakeFirewall::default();
        fw.state.lock().expect("lock").fail = true;
        let mut e = engine(fw);
        let t0 = Instant::now();
        knock(
            &mut e,
            t0,
            KnockKind::Port {
                proto: Proto::Tcp,
                port: 7000,
            },
        );
        knock(
            &mut e,
            t0,
            KnockKind::Port {
                proto: Proto::Udp,
                port: 8000,
            },
        );
        assert!(e.grants.is_empty(), "fail closed: nothing believed open");
    }
}
