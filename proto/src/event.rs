//! What an agent decides, as one typed value: [`Event`]. The agent logs it, spools and
//! reports it as a flat [`Record`] (the shape of the wire's `Event` message), and the
//! controller files the record in its audit trail; all three are derived from the one
//! value here, so a field cannot be spelled two ways.
//!
//! The vocabulary is closed: [`Kind`] names every event, [`Reason`] every reason a
//! grant closes or a knock or packet is refused, [`Method`] every way to knock.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::Access;

macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The dotted or snake-case word used in logs, reports and the audit trail.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($s => Ok($name::$v),)*
                    _ => Err(UnknownWord(s.chars().take(64).collect())),
                }
            }
        }
    };
}

/// A word that is not in the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown word {0:?}")]
pub struct UnknownWord(String);

vocabulary! {
    /// The name of every event.
    Kind {
        KnockProgressed = "knock.progressed",
        KnockRetransmit = "knock.retransmit",
        KnockReset = "knock.reset",
        KnockIgnored = "knock.ignored",
        KnockCompleted = "knock.completed",
        KnockRejected = "knock.rejected",
        SpaAccepted = "spa.accepted",
        SpaRejected = "spa.rejected",
        SpaRefusedSummary = "spa.refused_summary",
        GrantOpened = "grant.opened",
        GrantExtended = "grant.extended",
        GrantFailed = "grant.failed",
        GrantClosed = "grant.closed",
        GrantCloseFailed = "grant.close_failed",
        GrantAdopted = "grant.adopted",
        FirewallRepaired = "firewall.repaired",
        FirewallRepairFailed = "firewall.repair_failed",
        AgentStopped = "agent.stopped",
        SpoolDropped = "spool.dropped",
    }
}

vocabulary! {
    /// How a source knocked.
    Method {
        Sequence = "sequence",
        Rotating = "rotating",
        /// A native knockgate SPA packet.
        Spa = "spa",
        Fwknop = "fwknop",
        /// A native packet sealed with a one-time key.
        Otk = "otk",
        /// A sealed knock sequence: the request carried in the ports (`proto/sealed.md`).
        Sealed = "sealed",
    }
}

vocabulary! {
    /// Why a grant closed, or why a knock, a packet or a grant was refused.
    Reason {
        // A grant closed.
        Expired = "expired",
        Revoked = "revoked",
        UserRemoved = "user_removed",
        PolicyRemoved = "policy_removed",
        AgentStopped = "agent_stopped",
        // Something could not be made durable or enforced: refused, fail closed.
        Firewall = "firewall",
        ReplayStore = "replay_store",
        OtkStore = "otk_store",
        ConsumedStore = "consumed_store",
        // One-time keys.
        OtkUsed = "otk_used",
        OtkOfflineDenied = "otk_offline_denied",
        // SPA packets (see `Reason::authenticated`).
        Malformed = "malformed",
        UnknownKey = "unknown_key",
        BadTag = "bad_tag",
        NoMatchingKey = "no_matching_key",
        BadEncryptionKey = "bad_encryption_key",
        WrongGateway = "wrong_gateway",
        Stale = "stale",
        Future = "future",
        Replay = "replay",
        ReplayCacheFull = "replay_cache_full",
        NotAccessRequest = "not_access_request",
        AccessDenied = "access_denied",
        // Sequence knocks.
        WrongKnock = "wrong_knock",
        SequenceTimeout = "sequence_timeout",
        GapTooShort = "gap_too_short",
        GapTooLong = "gap_too_long",
        TcpFlags = "tcp_flags",
        /// The sequence's TCP SYNs were not fingerprinted as an OS its policy requires.
        OsMismatch = "os_mismatch",
    }
}

impl Reason {
    /// Whether an SPA refusal for this reason comes from a sender who proved it holds a
    /// user's key (its refusals are worth telling one by one).
    #[must_use]
    pub const fn authenticated(self) -> bool {
        !matches!(
            self,
            Reason::Malformed | Reason::UnknownKey | Reason::BadTag | Reason::NoMatchingKey
        )
    }
}

/// A grant as events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The agent's id for it; empty for a grant that never opened.
    pub grant_ref: String,
    pub addr: IpAddr,
    pub access: Access,
    /// When it closes at the latest, unix ms.
    pub expires_at_ms: i64,
}

/// Who and what a decision was about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    pub src: Option<IpAddr>,
    pub user: Option<String>,
    pub policy: Option<String>,
}

/// One decision of an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A knock moved a source one step into a sequence.
    KnockProgressed {
        subject: Subject,
        method: Method,
        stage: u8,
        of: u8,
    },
    /// A retransmitted knock, ignored.
    KnockRetransmit { subject: Subject, stage: u8 },
    /// A source's progress was thrown away.
    KnockReset {
        subject: Subject,
        method: Method,
        reason: Option<Reason>,
    },
    /// A knock ignored (its TCP flags fail the policy's filter).
    KnockIgnored { subject: Subject, reason: Reason },
    /// A sequence completed: its policy opens next.
    KnockCompleted {
        subject: Subject,
        method: Method,
        window: Option<u64>,
        /// The OS the sequence's SYNs were fingerprinted as, when its policy requires one.
        os: Option<String>,
    },
    /// A completed sequence that must not open (it could not be recorded as used).
    KnockRejected {
        subject: Subject,
        reason: Reason,
        error: String,
    },
    /// An SPA packet accepted: its access opens next.
    SpaAccepted {
        subject: Subject,
        method: Method,
        allow_ip: IpAddr,
        access: Vec<Access>,
        timeout_s: u64,
        capped: bool,
        otk: Option<OtkUse>,
        latency_us: u64,
    },
    /// An SPA packet refused.
    SpaRejected {
        subject: Subject,
        method: Option<Method>,
        reason: Reason,
        counter: Option<u64>,
        /// The controller's words, when it refused a one-time key.
        controller_reason: Option<String>,
        /// The local error, when a store failed.
        error: Option<String>,
    },
    /// How many SPA packets were refused, by reason, since the last summary.
    SpaRefusedSummary {
        port: u16,
        counts: Vec<(Reason, u64)>,
    },
    /// A grant opened, or an open one extended.
    GrantOpened {
        subject: Subject,
        grant: Granted,
        timeout_s: u64,
        extended: bool,
    },
    /// The firewall refused a grant: the port stays closed.
    GrantFailed {
        subject: Subject,
        grant: Granted,
        error: String,
    },
    /// A grant closed.
    GrantClosed {
        subject: Subject,
        grant: Granted,
        reason: Reason,
    },
    /// Closing a grant failed in the firewall.
    GrantCloseFailed { grant: Granted, error: String },
    /// A grant left by an earlier run, taken over.
    GrantAdopted {
        subject: Subject,
        grant: Granted,
        remaining_ms: u64,
    },
    /// Something else changed the firewall; knockgate's part is restored.
    FirewallRepaired { base: bool, grants: u64 },
    /// The firewall could not be restored (retried).
    FirewallRepairFailed { error: String },
    /// The agent stopped; the firewall keeps protecting.
    AgentStopped { grants_kept: u64 },
}

/// A one-time key's use in an accepted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtkUse {
    pub counter: u64,
    /// Granted here without the controller (its `otk_offline = "local"` rule).
    pub offline: bool,
}

impl Event {
    /// Its name.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Event::KnockProgressed { .. } => Kind::KnockProgressed,
            Event::KnockRetransmit { .. } => Kind::KnockRetransmit,
            Event::KnockReset { .. } => Kind::KnockReset,
            Event::KnockIgnored { .. } => Kind::KnockIgnored,
            Event::KnockCompleted { .. } => Kind::KnockCompleted,
            Event::KnockRejected { .. } => Kind::KnockRejected,
            Event::SpaAccepted { .. } => Kind::SpaAccepted,
            Event::SpaRejected { .. } => Kind::SpaRejected,
            Event::SpaRefusedSummary { .. } => Kind::SpaRefusedSummary,
            Event::GrantOpened {
                extended: false, ..
            } => Kind::GrantOpened,
            Event::GrantOpened { extended: true, .. } => Kind::GrantExtended,
            Event::GrantFailed { .. } => Kind::GrantFailed,
            Event::GrantClosed { .. } => Kind::GrantClosed,
            Event::GrantCloseFailed { .. } => Kind::GrantCloseFailed,
            Event::GrantAdopted { .. } => Kind::GrantAdopted,
            Event::FirewallRepaired { .. } => Kind::FirewallRepaired,
            Event::FirewallRepairFailed { .. } => Kind::FirewallRepairFailed,
            Event::AgentStopped { .. } => Kind::AgentStopped,
        }
    }

    /// The reason it carries, if any.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Event::KnockReset { reason, .. } => *reason,
            Event::KnockIgnored { reason, .. }
            | Event::KnockRejected { reason, .. }
            | Event::SpaRejected { reason, .. }
            | Event::GrantClosed { reason, .. } => Some(*reason),
            Event::GrantFailed { .. } => Some(Reason::Firewall),
            _ => None,
        }
    }

    /// The way of knocking it is about, if any.
    #[must_use]
    pub fn method(&self) -> Option<Method> {
        match self {
            Event::KnockProgressed { method, .. }
            | Event::KnockReset { method, .. }
            | Event::KnockCompleted { method, .. }
            | Event::SpaAccepted { method, .. } => Some(*method),
            Event::SpaRejected { method, .. } => *method,
            _ => None,
        }
    }

    /// Who and what it is about.
    #[must_use]
    pub fn subject(&self) -> Option<&Subject> {
        match self {
            Event::KnockProgressed { subject, .. }
            | Event::KnockRetransmit { subject, .. }
            | Event::KnockReset { subject, .. }
            | Event::KnockIgnored { subject, .. }
            | Event::KnockCompleted { subject, .. }
            | Event::KnockRejected { subject, .. }
            | Event::SpaAccepted { subject, .. }
            | Event::SpaRejected { subject, .. }
            | Event::GrantOpened { subject, .. }
            | Event::GrantFailed { subject, .. }
            | Event::GrantClosed { subject, .. }
            | Event::GrantAdopted { subject, .. } => Some(subject),
            _ => None,
        }
    }

    /// The grant it is about, if any.
    #[must_use]
    pub fn grant(&self) -> Option<&Granted> {
        match self {
            Event::GrantOpened { grant, .. }
            | Event::GrantFailed { grant, .. }
            | Event::GrantClosed { grant, .. }
            | Event::GrantCloseFailed { grant, .. }
            | Event::GrantAdopted { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// Everything else it says, by name: the fields of the log line and of the record's
    /// `detail` object.
    #[must_use]
    pub fn detail(&self) -> Map<String, Value> {
        let mut d = Map::new();
        let mut put = |k: &str, v: Value| {
            d.insert(k.to_string(), v);
        };
        match self {
            Event::SpaAccepted { .. }
            | Event::SpaRejected { .. }
            | Event::SpaRefusedSummary { .. } => {
                self.spa_detail(&mut put);
            }
            Event::KnockProgressed {
                method, stage, of, ..
            } => {
                put("method", method.as_str().into());
                put("stage", (*stage).into());
                put("of", (*of).into());
            }
            Event::KnockRetransmit { stage, .. } => put("stage", (*stage).into()),
            Event::KnockReset { method, .. } => put("method", method.as_str().into()),
            Event::KnockCompleted {
                method, window, os, ..
            } => {
                put("method", method.as_str().into());
                if let Some(w) = window {
                    put("window", (*w).into());
                }
                if let Some(os) = os {
                    put("os", os.as_str().into());
                }
            }
            Event::KnockRejected { error, .. }
            | Event::GrantCloseFailed { error, .. }
            | Event::GrantFailed { error, .. }
            | Event::FirewallRepairFailed { error } => put("error", error.as_str().into()),
            Event::GrantOpened { timeout_s, .. } => put("timeout_s", (*timeout_s).into()),
            Event::GrantAdopted { remaining_ms, .. } => put("remaining_ms", (*remaining_ms).into()),
            Event::FirewallRepaired { base, grants } => {
                put("base", (*base).into());
                put("grants", (*grants).into());
            }
            Event::AgentStopped { grants_kept } => put("grants_kept", (*grants_kept).into()),
            Event::KnockIgnored { .. } | Event::GrantClosed { .. } => {}
        }
        d
    }

    /// The detail of the SPA events.
    fn spa_detail(&self, put: &mut impl FnMut(&str, Value)) {
        match self {
            Event::SpaAccepted {
                method,
                allow_ip,
                access,
                timeout_s,
                capped,
                otk,
                latency_us,
                ..
            } => {
                put("method", method.as_str().into());
                put("allow_ip", allow_ip.to_string().into());
                put("access", access_list(access).into());
                put("timeout_s", (*timeout_s).into());
                put("capped", (*capped).into());
                if let Some(o) = otk {
                    put("counter", o.counter.into());
                    put("offline", o.offline.into());
                }
                put("latency_us", (*latency_us).into());
            }
            Event::SpaRejected {
                method,
                counter,
                controller_reason,
                error,
                ..
            } => {
                put("method", method.map_or("unknown", Method::as_str).into());
                if let Some(c) = counter {
                    put("counter", (*c).into());
                }
                if let Some(r) = controller_reason {
                    put("controller_reason", r.as_str().into());
                }
                if let Some(e) = error {
                    put("error", e.as_str().into());
                }
            }
            Event::SpaRefusedSummary { port, counts } => {
                put("port", (*port).into());
                let m: Map<String, Value> = counts
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), (*n).into()))
                    .collect();
                put("counts", Value::Object(m));
            }
            _ => {}
        }
    }

    /// The flat record that is spooled and reported, for an event at `at_ms` (unix ms).
    #[must_use]
    pub fn to_record(&self, at_ms: i64) -> Record {
        let subject = self.subject().cloned().unwrap_or_default();
        Record {
            seq: 0,
            at_ms,
            kind: self.kind().as_str().to_string(),
            user: subject.user.unwrap_or_default(),
            src: subject.src.map(|a| a.to_string()).unwrap_or_default(),
            policy: subject.policy.unwrap_or_default(),
            reason: self
                .reason()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            grant: self.grant().map(GrantInfo::from),
            detail: self.detail(),
        }
    }
}

/// `tcp/22,udp/53`.
fn access_list(access: &[Access]) -> String {
    let v: Vec<String> = access.iter().map(ToString::to_string).collect();
    v.join(",")
}

/// One event as spooled on disk and carried on the wire (the `Event` message): every
/// field flat, empty when absent. `seq` is given by the agent's spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub src: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantInfo>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
}

impl Record {
    /// A record of `kind` at `at_ms` with nothing else (the spool's own notes, tests).
    #[must_use]
    pub fn new(kind: Kind, at_ms: i64) -> Self {
        Record {
            seq: 0,
            at_ms,
            kind: kind.as_str().to_string(),
            user: String::new(),
            src: String::new(),
            policy: String::new(),
            reason: String::new(),
            grant: None,
            detail: Map::new(),
        }
    }

    /// The same, with `key` set to `value` in its detail.
    #[must_use]
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// The grant of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Empty for a grant that failed to open (it never got one).
    #[serde(default)]
    pub grant_ref: String,
    pub addr: String,
    pub proto: String,
    pub port: u16,
    pub expires_at_ms: i64,
}

impl From<&Granted> for GrantInfo {
    fn from(g: &Granted) -> Self {
        GrantInfo {
            grant_ref: g.grant_ref.clone(),
            addr: g.addr.to_string(),
            proto: g.access.proto.as_str().to_string(),
            port: g.access.port,
            expires_at_ms: g.expires_at_ms,
        }
    }
}

#[cfg(feature = "grpc")]
impl From<Record> for crate::api::Event {
    fn from(r: Record) -> Self {
        let Record {
            seq,
            at_ms,
            kind,
            user,
            src,
            policy,
            reason,
            grant,
            detail,
        } = r;
        crate::api::Event {
            seq,
            at_unix_ms: at_ms,
            kind,
            user,
            src,
            policy,
            reason,
            grant: grant.map(Into::into),
            detail_json: if detail.is_empty() {
                String::new()
            } else {
                Value::Object(detail).to_string()
            },
        }
    }
}

#[cfg(feature = "grpc")]
impl From<GrantInfo> for crate::api::GrantInfo {
    fn from(g: GrantInfo) -> Self {
        use crate::api;
        let GrantInfo {
            grant_ref,
            addr,
            proto,
            port,
            expires_at_ms,
        } = g;
        let proto = match proto.as_str() {
            "tcp" => api::Proto::Tcp,
            "udp" => api::Proto::Udp,
            _ => api::Proto::Unspecified,
        };
        api::GrantInfo {
            grant_ref,
            addr,
            access: Some(api::Access {
                proto: proto as i32,
                port: u32::from(port),
            }),
            expires_at_unix_ms: expires_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Proto;

    #[test]
    fn every_word_reads_back() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(*k));
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(*r));
        }
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>(), Ok(*m));
        }
        assert!("grant.reopened".parse::<Kind>().is_err());
    }

    #[test]
    fn a_closed_grant_becomes_a_flat_record() {
        let addr: IpAddr = "fd00::2".parse().expect("ip");
        let e = Event::GrantClosed {
            subject: Subject {
                src: Some(addr),
                user: Some("bob".into()),
                policy: Some("vpn".into()),
            },
            grant: Granted {
                grant_ref: "b-7".into(),
                addr,
                access: Access {
                    proto: Proto::Udp,
                    port: 51820,
                },
                expires_at_ms: 99,
            },
            reason: Reason::Revoked,
        };
        let r = e.to_record(1234);
        assert_eq!(
            (r.kind.as_str(), r.user.as_str(), r.src.as_str()),
            ("grant.closed", "bob", "fd00::2")
        );
        assert_eq!(
            (r.policy.as_str(), r.reason.as_str(), r.at_ms),
            ("vpn", "revoked", 1234)
        );
        let g = r.grant.clone().expect("grant");
        assert_eq!(
            (g.grant_ref.as_str(), g.proto.as_str(), g.port),
            ("b-7", "udp", 51820)
        );
        let line = serde_json::to_string(&r).expect("json");
        assert!(!line.contains("detail"), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).expect("parse"), r);
    }

    #[test]
    fn an_accepted_one_time_key_says_its_counter_and_offline() {
        let e = Event::SpaAccepted {
            subject: Subject::default(),
            method: Method::Otk,
            allow_ip: "10.240.0.2".parse().expect("ip"),
            access: vec![
                Access {
                    proto: Proto::Tcp,
                    port: 22,
                },
                Access {
                    proto: Proto::Udp,
                    port: 53,
                },
            ],
            timeout_s: 30,
            capped: false,
            otk: Some(OtkUse {
                counter: 7,
                offline: true,
            }),
            latency_us: 5,
        };
        let d = e.detail();
        assert_eq!(d["method"], "otk");
        assert_eq!(d["access"], "tcp/22,udp/53");
        assert_eq!(
            (d["counter"].as_u64(), d["offline"].as_bool()),
            (Some(7), Some(true))
        );
        assert_eq!(e.reason(), None);
    }
}
