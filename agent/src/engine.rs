//! The engine: the one owner of decision state. It receives knocks from the capture
//! threads, runs them through the matcher, opens grants through the firewall, notices
//! expiry, and emits every decision as a structured event (target `knockgate::event`).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use knockgate_agent_core::config::Policy;
use knockgate_agent_core::detect::sequence::{Decision, Outcome, SequenceMatcher};
use knockgate_agent_core::grants::{Grants, Opened};
use knockgate_agent_core::ruleset::GrantKey;
use tracing::{debug, info, trace, warn};

use crate::capture::KnockMsg;
use crate::firewall::Firewall;

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
    matcher: SequenceMatcher,
    grants: Grants,
    firewall: Box<dyn Firewall>,
    decisions: Vec<Decision>,
}

impl Engine {
    /// An engine for `policies` (door id = policy index) over an installed firewall.
    pub fn new(
        policies: Vec<Policy>,
        matcher: SequenceMatcher,
        firewall: Box<dyn Firewall>,
    ) -> Self {
        Engine {
            policies,
            matcher,
            grants: Grants::new(),
            firewall,
            decisions: Vec::new(),
        }
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
            match rx.recv_timeout(wait) {
                Ok(Input::Knock(k)) => self.handle_knock(k),
                Ok(Input::Shutdown { keep }) => break keep,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break false,
            }
        };
        (self.firewall, keep)
    }

    /// One knock through the matcher, and whatever it completes.
    pub fn handle_knock(&mut self, k: KnockMsg) {
        let mut decisions = std::mem::take(&mut self.decisions);
        decisions.clear();
        self.matcher
            .handle_knock(k.src, k.kind, k.tcp_flags, k.at, &mut decisions);
        for d in &decisions {
            let policy = &self.policies[d.door as usize].name;
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
                    self.open_policy(d.door as usize, k.src, k.at.max(Instant::now()));
                }
            }
        }
        self.decisions = decisions;
    }

    fn open_policy(&mut self, idx: usize, src: std::net::IpAddr, now: Instant) {
        let policy = &self.policies[idx];
        for spec in &policy.open {
            let key = GrantKey {
                addr: src,
                proto: spec.proto,
                port: spec.port,
            };
            match self.firewall.open(&key, policy.timeout) {
                Ok(()) => {
                    let kind = self
                        .grants
                        .handle_open(key, &policy.name, policy.timeout, now);
                    let event = if kind == Opened::New {
                        "grant.opened"
                    } else {
                        "grant.extended"
                    };
                    info!(target: "knockgate::event", event, src = %src, policy = %policy.name,
                        proto = %spec.proto, port = spec.port, timeout_s = policy.timeout.as_secs_f64(),
                        "grant opened");
                }
                Err(e) => warn!(target: "knockgate::event", event = "grant.failed", src = %src,
                    policy = %policy.name, proto = %spec.proto, port = spec.port, error = %e,
                    "firewall refused the grant; the port stays closed"),
            }
        }
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
        let m = SequenceMatcher::new(c.doors(), 16).expect("doors");
        Engine::new(c.policies, m, Box::new(fw))
    }

    fn knock(e: &mut Engine, at: Instant, kind: KnockKind) {
        let src = "10.240.0.2".parse().expect("ip");
        e.handle_knock(KnockMsg {
            at,
            src,
            kind,
            tcp_flags: tcp_flags::SYN,
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
