//! The derived material one agent holds (`proto/rotation.md`): the rotating
//! sequences of the users its rotating policies admit, for the windows
//! previous ..= current+3, and a stock of the next one-time keys of the users
//! its one-time-key policies admit. Pure: time and the claimed counters are
//! handed in. A [`Deriver`] caches derivations between refreshes of one
//! stream, so a window boundary derives one new window, not five.

use std::collections::{BTreeMap, HashMap};

use knockgate_proto::Access;
use knockgate_proto::rotation::{self, Protos};
use knockgate_proto::scope;

use crate::name::{AgentName, UserName};
use crate::policy::{PolicyDef, Rotation};
use crate::store::{Timestamp, User};

/// One-time keys stocked per user: `highest claimed + 1 ..= highest claimed + OTK_STOCK`.
pub const OTK_STOCK: u64 = 16;
/// Windows pushed before the current one (a knock that straddled a boundary).
pub const WINDOWS_BEHIND: u64 = 1;
/// Windows pushed after the current one, so an agent that loses the
/// controller keeps accepting knocks for a while.
pub const WINDOWS_AHEAD: u64 = 3;

/// What one agent holds besides its policies and user keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Material {
    /// `(user, policy, window)` → the knocks, in order.
    pub rotating: BTreeMap<(String, String, u64), Vec<Access>>,
    /// `(user, counter)` → the key's 32-byte native SPA secret.
    pub otks: BTreeMap<(String, u64), [u8; 32]>,
}

/// Counts only: the keys never reach a log.
impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("rotating", &self.rotating.len())
            .field("otks", &self.otks.len())
            .finish()
    }
}

/// What the material of one agent is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The agent (its name is the gateway bound into every sequence).
    pub gateway: &'a AgentName,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Every valid policy.
    pub policies: &'a [PolicyDef],
    /// Every user.
    pub users: &'a [User],
    /// Each user's highest claimed one-time key counter.
    pub claimed: &'a BTreeMap<UserName, u64>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SeqKey {
    secret: [u8; 32],
    length: u8,
    protos: u8,
    port_lo: u16,
    port_hi: u16,
    window_secs: u32,
    exclude: Vec<u16>,
    window: u64,
}

impl SeqKey {
    fn new(secret: [u8; 32], r: &Rotation, exclude: &[u16], window: u64) -> Self {
        Self {
            secret,
            length: r.length,
            protos: match r.protos {
                Protos::Tcp => 1,
                Protos::Udp => 2,
                Protos::Both => 3,
            },
            port_lo: r.port_lo,
            port_hi: r.port_hi,
            window_secs: r.window_secs,
            exclude: exclude.to_vec(),
            window,
        }
    }
}

/// Derives one agent's material, remembering what it derived last time.
/// Keyed by the secret itself, so a rotated (or re-created) user never gets
/// a stale value. Holds only what the last derivation used.
#[derive(Default)]
pub struct Deriver {
    sequences: HashMap<SeqKey, Option<Vec<Access>>>,
    otks: HashMap<([u8; 32], u64), [u8; 32]>,
}

impl std::fmt::Debug for Deriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deriver")
            .field("sequences", &self.sequences.len())
            .field("otks", &self.otks.len())
            .finish()
    }
}

/// The start of the window after the one `now_ms` is in, unix ms.
fn next_boundary(now_ms: i64, window_secs: u32) -> i64 {
    let w = i64::from(window_secs.max(1)) * 1000;
    now_ms.div_euclid(w).saturating_add(1).saturating_mul(w)
}

impl Deriver {
    /// The material at `now`, and when it next changes by itself: the next
    /// window boundary of a rotating policy selecting the agent (unix ms).
    pub fn derive(&mut self, inputs: &Inputs<'_>, now: Timestamp) -> (Material, Option<i64>) {
        let now_ms = now.unix_millis();
        let now_secs = u64::try_from(now_ms.div_euclid(1000)).unwrap_or(0);
        let selected: Vec<&PolicyDef> = inputs
            .policies
            .iter()
            .filter(|p| p.agents.matches(inputs.labels))
            .collect();
        // The gateway's protected ports: no rotating knock may land on one.
        let exclude = super::protected_ports(selected.iter().copied());
        let mut material = Material::default();
        let mut boundary: Option<i64> = None;
        let mut sequences = HashMap::new();
        let mut otk_users: BTreeMap<&str, &User> = BTreeMap::new();
        for p in &selected {
            let admitted = inputs.users.iter().filter(|u| p.admits(u));
            if p.otk.is_some() {
                otk_users.extend(admitted.clone().map(|u| (u.name.as_str(), u)));
            }
            let Some(r) = &p.rotating else { continue };
            let next = next_boundary(now_ms, r.window_secs);
            boundary = Some(boundary.map_or(next, |b| b.min(next)));
            let current = rotation::window_index(now_secs, r.window_secs);
            for u in admitted {
                let secret = u.keys.rotating_secret;
                for w in current.saturating_sub(WINDOWS_BEHIND)..=current + WINDOWS_AHEAD {
                    let key = SeqKey::new(secret, r, &exclude, w);
                    let seq = match sequences.get(&key) {
                        Some(s) => s,
                        None => {
                            let s = self.sequences.remove(&key).unwrap_or_else(|| {
                                self.sequence(inputs.gateway, p, u, &key, r, &exclude)
                            });
                            sequences.entry(key).or_insert(s)
                        }
                    };
                    if let Some(seq) = seq {
                        let k = (u.name.to_string(), p.name.to_string(), w);
                        material.rotating.insert(k, seq.clone());
                    }
                }
            }
        }
        let mut otks = HashMap::new();
        for (name, u) in otk_users {
            let secret = u.keys.rotating_secret;
            let first = inputs
                .claimed
                .get(&u.name)
                .map_or(0, |h| h.saturating_add(1));
            for c in first..first.saturating_add(OTK_STOCK) {
                // This gateway's key number `c` (the claim stays keyed by user and
                // counter, so the key is still single-use fleet-wide).
                let key = match self.otks.remove(&(secret, c)) {
                    Some(k) => k,
                    None => match scope::gateway_otk(&secret, inputs.gateway.as_str(), c) {
                        Ok(k) => *k.secret(),
                        Err(e) => {
                            tracing::error!(gateway = %inputs.gateway, user = name, error = %e,
                                "cannot derive one-time keys for this gateway");
                            break;
                        }
                    },
                };
                otks.insert((secret, c), key);
                material.otks.insert((name.to_owned(), c), key);
            }
        }
        self.sequences = sequences;
        self.otks = otks;
        (material, boundary)
    }

    fn sequence(
        &self,
        gateway: &AgentName,
        p: &PolicyDef,
        u: &User,
        key: &SeqKey,
        r: &Rotation,
        exclude: &[u16],
    ) -> Option<Vec<Access>> {
        let params = r.params(exclude.to_vec());
        match rotation::derive_sequence(&key.secret, gateway.as_str(), key.window, &params) {
            Ok(seq) => Some(seq),
            Err(e) => {
                // Fail closed: no sequence, nothing opens by rotation here.
                tracing::error!(agent = %gateway, policy = %p.name, user = %u.name, error = %e,
                    "cannot derive a rotating sequence at this gateway; pushing none");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::RawPolicy;
    use crate::store::UserKeys;

    fn user(name: &str, secret: u8) -> User {
        User {
            name: UserName::new(name).unwrap(),
            groups: BTreeSet::new(),
            disabled: false,
            created_at: Timestamp::from_unix_millis(0),
            keys: UserKeys {
                spa_key: [1; 32],
                fwknop_key: [2; 32],
                fwknop_hmac_key: [3; 64],
                fwknop_hmac: "sha256".into(),
                rotating_secret: [secret; 32],
            },
            key_version: 1,
        }
    }

    fn policy(name: &str, users: &[&str], open: &str, rotating: bool, otk: bool) -> PolicyDef {
        let raw = RawPolicy {
            open: vec![open.into()],
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            timeout_secs: 30,
            rotating,
            window_secs: if rotating { 10 } else { 0 },
            otk,
            ..RawPolicy::default()
        };
        PolicyDef::validate(name, raw).unwrap()
    }

    #[test]
    fn sequences_and_stock_follow_time_policies_and_claims() {
        let gw = AgentName::new("gw1").unwrap();
        let users = [user("alice", 0x42), user("bob", 7), user("carol", 9)];
        let policies = [
            policy("rot", &["alice", "bob"], "tcp/22", true, false),
            policy("keys", &["bob"], "tcp/443", false, true),
        ];
        let claimed = BTreeMap::from([(UserName::new("bob").unwrap(), 3)]);
        let labels = BTreeMap::new();
        let inputs = Inputs {
            gateway: &gw,
            labels: &labels,
            policies: &policies,
            users: &users,
            claimed: &claimed,
        };
        let mut d = Deriver::default();
        let now = Timestamp::from_unix_millis(1_800_000_003_500);
        let (m, next) = d.derive(&inputs, now);
        assert_eq!(next, Some(1_800_000_010_000));
        let w = 180_000_000;
        let windows: Vec<u64> = m
            .rotating
            .keys()
            .filter(|(u, _, _)| u == "alice")
            .map(|k| k.2)
            .collect();
        assert_eq!(windows, (w - 1..=w + 3).collect::<Vec<_>>());
        assert!(!m.rotating.keys().any(|(u, _, _)| u == "carol"));
        let params = policies[0].rotating.unwrap().params(vec![22, 443]);
        assert_eq!(
            m.rotating[&("alice".into(), "rot".into(), w)],
            rotation::derive_sequence(&[0x42; 32], "gw1", w, &params).unwrap()
        );
        let counters: Vec<u64> = m.otks.keys().map(|k| k.1).collect();
        assert_eq!(counters, (4..20).collect::<Vec<_>>());
        assert!(m.otks.keys().all(|(u, _)| u == "bob"));
        assert_eq!(
            &m.otks[&("bob".into(), 4)],
            scope::gateway_otk(&[7; 32], "gw1", 4).unwrap().secret(),
            "one-time keys are derived for this gateway"
        );
        // The cache gives the same answers and keeps only what was used.
        let later = Timestamp::from_unix_millis(1_800_000_010_000);
        let (m2, _) = d.derive(&inputs, later);
        assert_eq!(
            m2.rotating[&("alice".into(), "rot".into(), w + 1)],
            m.rotating[&("alice".into(), "rot".into(), w + 1)]
        );
        assert!(!m2.rotating.keys().any(|k| k.2 == w - 1));
        assert_eq!(d.sequences.len(), 10);
        let fresh = Deriver::default().derive(&inputs, later).0;
        assert_eq!(m2, fresh);
    }
}
