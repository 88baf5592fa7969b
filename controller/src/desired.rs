//! What one agent must enforce, computed from the policies, the users and its
//! labels, and the deltas between two such views. Pure: the sync stream
//! reads the store and hands the rows in. The derived material (rotating
//! sequences, one-time keys) is computed in `material`.

pub mod material;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use knockgate_proto::fwknop::HmacType;
use knockgate_proto::knock::FlagFilter;
use knockgate_proto::policy::OtkOffline;
use knockgate_proto::{Access, Forward, KnockStep, scope};
use zeroize::Zeroizing;

use crate::name::{AgentName, PolicyName};
use crate::policy::{PolicyDef, Rotation};
use crate::store::{Agent, User, UserKeys};
pub use material::Material;

/// The policies and user credentials one agent holds, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentView {
    /// Policies selecting the agent, with their users expanded: the same value for every
    /// agent a policy selects, shared ([`Shared`]), so views compare by pointer.
    pub policies: BTreeMap<String, Arc<AgentPolicy>>,
    /// Credentials of every user some of those policies admit.
    pub users: BTreeMap<String, AgentUser>,
    /// Rotating sequences and one-time keys (empty until derived).
    pub material: Material,
}

/// A policy as one agent enforces it: its groups expanded to the users it admits there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPolicy {
    pub name: String,
    pub open: BTreeSet<Access>,
    pub timeout_secs: u32,
    pub max_timeout_secs: u32,
    /// The admitted users, by name.
    pub users: Vec<String>,
    pub spa: bool,
    pub fwknop: bool,
    /// Sealed knock sequences open it (under the users' native SPA keys).
    pub sealed: bool,
    /// OS names the sequence's SYNs must be fingerprinted as.
    pub require_os: Vec<String>,
    pub sequence: Vec<KnockStep>,
    pub sequence_timeout_secs: u32,
    pub min_gap_ms: u32,
    pub max_gap_ms: u32,
    pub tcp_flags: Option<FlagFilter>,
    /// The rotating window length, when rotating sequences open it.
    pub rotating_window_secs: Option<u32>,
    pub otk: Option<OtkOffline>,
    /// Where grants on some of `open` lead instead of the gateway itself.
    pub forward: Vec<Forward>,
}

/// A user's credentials at one agent, derived for that gateway alone.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentUser {
    pub name: String,
    /// The native SPA secret, when a native SPA policy there admits the user.
    pub spa_key: Option<Zeroizing<[u8; 32]>>,
    /// The fwknop keys, when an fwknop policy there admits the user.
    pub fwknop: Option<FwknopSecret>,
}

/// A user's fwknop keys at one gateway.
#[derive(Clone, PartialEq, Eq)]
pub struct FwknopSecret {
    pub enc_key: Zeroizing<Vec<u8>>,
    pub hmac_key: Zeroizing<Vec<u8>>,
    pub hmac: HmacType,
}

/// Names only: the keys never reach a log.
impl std::fmt::Debug for AgentUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentUser")
            .field("name", &self.name)
            .field("spa", &self.spa_key.is_some())
            .field("fwknop", &self.fwknop.is_some())
            .finish()
    }
}

/// Which knock methods reach a user on this agent, so it gets only the keys
/// it can be asked to verify.
#[derive(Clone, Copy, Default)]
struct Needs {
    spa: bool,
    fwknop: bool,
}

/// Every policy as the agents it selects enforce it, and the users it admits (indices into
/// the users it was built from). Neither depends on the agent, so a snapshot builds this
/// once for all of them; an entry equal to the previous snapshot's keeps its allocation,
/// so an agent's old and new views compare by pointer where nothing changed.
#[derive(Debug, Default)]
pub struct Shared {
    entries: Vec<(Arc<AgentPolicy>, Vec<usize>)>,
}

impl Shared {
    /// Built from `policies` and `users`, reusing `previous` where equal.
    pub fn new(policies: &[PolicyDef], users: &[User], previous: Option<&Shared>) -> Shared {
        let before: HashMap<&str, &Arc<AgentPolicy>> = previous
            .map(|s| {
                s.entries
                    .iter()
                    .map(|(p, _)| (p.name.as_str(), p))
                    .collect()
            })
            .unwrap_or_default();
        let entries = policies
            .iter()
            .map(|p| {
                let admitted: Vec<usize> = users
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| p.admits(u))
                    .map(|(i, _)| i)
                    .collect();
                let names: Vec<&User> = admitted.iter().map(|&i| &users[i]).collect();
                let built = agent_policy(p, &names);
                let policy = match before.get(built.name.as_str()) {
                    Some(old) if ***old == built => Arc::clone(old),
                    _ => Arc::new(built),
                };
                (policy, admitted)
            })
            .collect();
        Shared { entries }
    }
}

/// The view of agent `gateway` with `labels`. Each user's keys are derived for this
/// gateway alone (`knockgate_proto::scope`): what one agent holds opens nothing at
/// another.
pub fn compute(
    gateway: &AgentName,
    labels: &BTreeMap<String, String>,
    policies: &[PolicyDef],
    users: &[User],
) -> AgentView {
    compute_shared(
        gateway,
        labels,
        policies,
        users,
        &Shared::new(policies, users, None),
    )
}

/// [`compute`] with the agent-independent part built already (`shared`, from the same
/// `policies` and `users`).
pub fn compute_shared(
    gateway: &AgentName,
    labels: &BTreeMap<String, String>,
    policies: &[PolicyDef],
    users: &[User],
    shared: &Shared,
) -> AgentView {
    let mut view = AgentView::default();
    let mut needs: BTreeMap<&str, (Needs, &User)> = BTreeMap::new();
    for (p, (policy, admitted)) in policies.iter().zip(&shared.entries) {
        if !p.agents.matches(labels) {
            continue;
        }
        for u in admitted.iter().map(|&i| &users[i]) {
            let (n, _) = needs
                .entry(u.name.as_str())
                .or_insert((Needs::default(), u));
            // Sealed sequences are sealed under the native SPA key.
            n.spa |= p.spa || p.sealed;
            n.fwknop |= p.fwknop;
        }
        view.policies.insert(p.name.to_string(), Arc::clone(policy));
    }
    for (name, (n, u)) in needs {
        view.users
            .insert(name.to_owned(), gateway_user(gateway, name, n, &u.keys));
    }
    view
}

/// Policy `p` as the agent enforces it, naming the users it `admitted` there.
fn agent_policy(p: &PolicyDef, admitted: &[&User]) -> AgentPolicy {
    AgentPolicy {
        name: p.name.to_string(),
        open: p.open.clone(),
        timeout_secs: p.timeout_secs,
        max_timeout_secs: p.max_timeout_secs,
        users: admitted.iter().map(|u| u.name.to_string()).collect(),
        spa: p.spa,
        fwknop: p.fwknop,
        sealed: p.sealed,
        require_os: p.require_os.clone(),
        sequence: p.sequence.clone(),
        sequence_timeout_secs: p.sequence_timeout_secs,
        min_gap_ms: p.min_gap_ms,
        max_gap_ms: p.max_gap_ms,
        tcp_flags: p.tcp_flags,
        rotating_window_secs: p.rotating.map(|r| r.window_secs),
        otk: p.otk,
        forward: p.forward.clone(),
    }
}

/// User `name`'s credentials at `gateway`: only the keys of the methods it
/// `needs` there, each derived for this gateway from the user's keys `k`.
fn gateway_user(gateway: &AgentName, name: &str, needs: Needs, k: &UserKeys) -> AgentUser {
    let mut user = AgentUser {
        name: name.to_owned(),
        spa_key: None,
        fwknop: None,
    };
    // A derivation that fails leaves the method closed to this user here.
    if needs.spa {
        match scope::gateway_spa_key(&k.spa_key, gateway.as_str()) {
            Ok(key) => user.spa_key = Some(Zeroizing::new(*key.secret())),
            Err(e) => tracing::error!(%gateway, user = name, error = %e,
                "cannot derive the gateway's SPA key; SPA stays closed to this user"),
        }
    }
    if needs.fwknop {
        let keys = k
            .fwknop_hmac
            .parse::<HmacType>()
            .map_err(|e| e.to_string())
            .and_then(|hmac| {
                scope::gateway_fwknop_keys(
                    &k.fwknop_key,
                    &k.fwknop_hmac_key,
                    hmac,
                    gateway.as_str(),
                )
                .map(|keys| (keys, hmac))
                .map_err(|e| e.to_string())
            });
        match keys {
            Ok((keys, hmac)) => {
                user.fwknop = Some(FwknopSecret {
                    enc_key: Zeroizing::new(keys.enc_key.to_vec()),
                    hmac_key: Zeroizing::new(keys.hmac_key.to_vec()),
                    hmac,
                });
            }
            Err(e) => tracing::error!(%gateway, user = name, error = %e,
                "cannot derive the gateway's fwknop keys; fwknop stays closed to this user"),
        }
    }
    user
}

/// What an agent is sent: a full view, or what changed since the view it holds.
#[derive(Debug)]
pub struct Change<'a> {
    pub version: u64,
    /// Replaces whatever the agent held (else applies on `base_version`).
    pub full: bool,
    pub base_version: u64,
    /// Policies and users added or changed.
    pub policies: Vec<&'a AgentPolicy>,
    pub users: Vec<&'a AgentUser>,
    /// Names gone.
    pub removed_policies: Vec<String>,
    pub removed_users: Vec<String>,
    /// The whole material, when it changed.
    pub material: Option<&'a Material>,
}

/// A full config replacing whatever the agent held.
pub fn full(view: &AgentView, version: u64) -> Change<'_> {
    Change {
        version,
        full: true,
        base_version: 0,
        policies: view.policies.values().map(|p| &**p).collect(),
        users: view.users.values().collect(),
        removed_policies: Vec::new(),
        removed_users: Vec::new(),
        material: Some(&view.material),
    }
}

/// The delta taking an agent from `old` (at `base`) to `new` (at `version`):
/// entries added or changed, then names removed, and the material when it changed. May
/// be empty; `base == version` for material alone.
pub fn delta<'a>(old: &AgentView, new: &'a AgentView, base: u64, version: u64) -> Change<'a> {
    fn changed<'a, T: PartialEq>(
        old: &BTreeMap<String, T>,
        new: &'a BTreeMap<String, T>,
    ) -> Vec<&'a T> {
        new.iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(_, v)| v)
            .collect()
    }
    fn removed<T>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Vec<String> {
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect()
    }
    Change {
        version,
        full: false,
        base_version: base,
        policies: changed(&old.policies, &new.policies)
            .into_iter()
            .map(|p| &**p)
            .collect(),
        users: changed(&old.users, &new.users),
        removed_policies: removed(&old.policies, &new.policies),
        removed_users: removed(&old.users, &new.users),
        material: (old.material != new.material).then_some(&new.material),
    }
}

/// The gateways a user's profile lists, with the address to knock on: every agent that
/// is not revoked and has an address, those whose policies admit `user` first. A user is
/// usually added before the policies that admit them, and the keys in a profile are only
/// ever handed out once, so the profile must already know the gateways it may be let into
/// later; being listed opens nothing.
///
/// Each gateway carries the policies there that admit `user` (so the client can choose
/// what to ask for) and the rotating ones among them, with the settings and excluded
/// ports [`material`] derives with, so the client computes the same sequences.
pub fn gateways<'a>(
    user: &User,
    agents: &'a [Agent],
    policies: &'a [PolicyDef],
) -> Vec<Gateway<'a>> {
    let admits = |a: &Agent| {
        policies
            .iter()
            .any(|p| p.agents.matches(&a.labels) && p.admits(user))
    };
    let mut listed: Vec<&Agent> = agents
        .iter()
        .filter(|a| a.revoked_at.is_none() && a.address.as_deref().is_some_and(|s| !s.is_empty()))
        .collect();
    listed.sort_by_key(|a| !admits(a));
    listed
        .into_iter()
        .map(|a| {
            let (policies, rotating) = admitting(user, &a.labels, policies);
            Gateway {
                name: &a.name,
                address: a.address.as_deref().unwrap_or_default(),
                policies,
                rotating,
            }
        })
        .collect()
}

/// A gateway as a user's profile lists it.
#[derive(Debug)]
pub struct Gateway<'a> {
    pub name: &'a AgentName,
    /// Where to knock.
    pub address: &'a str,
    /// The policies there that admit the user, by name.
    pub policies: Vec<&'a PolicyDef>,
    /// The rotating policies there that admit the user.
    pub rotating: Vec<GatewayRotation<'a>>,
}

/// A rotating policy at a gateway, with the ports its sequences never use there.
#[derive(Debug)]
pub struct GatewayRotation<'a> {
    pub policy: &'a PolicyName,
    pub rotation: &'a Rotation,
    pub exclude: Vec<u16>,
}

/// The policies selecting an agent with `labels` that admit `user`, by name, and the
/// rotating ones among them.
fn admitting<'a>(
    user: &User,
    labels: &BTreeMap<String, String>,
    policies: &'a [PolicyDef],
) -> (Vec<&'a PolicyDef>, Vec<GatewayRotation<'a>>) {
    let selected: BTreeMap<&str, &PolicyDef> = policies
        .iter()
        .filter(|p| p.agents.matches(labels))
        .map(|p| (p.name.as_str(), p))
        .collect();
    let exclude = protected_ports(selected.values().copied());
    let admitting: Vec<&PolicyDef> = selected.into_values().filter(|p| p.admits(user)).collect();
    let rotating = admitting
        .iter()
        .filter_map(|p| {
            p.rotating.as_ref().map(|rotation| GatewayRotation {
                policy: &p.name,
                rotation,
                exclude: exclude.clone(),
            })
        })
        .collect();
    (admitting, rotating)
}

/// The ports rotating knocks at a gateway never use: every port protected there by the
/// policies selecting it, sorted. One function for what agents receive
/// ([`material`]) and what profiles tell clients ([`gateways`]), so the two always derive
/// the same sequences.
pub fn protected_ports<'a>(selected: impl IntoIterator<Item = &'a PolicyDef>) -> Vec<u16> {
    selected
        .into_iter()
        .flat_map(|p| p.open.iter().map(|a| a.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::UserName;
    use crate::policy::RawPolicy;
    use crate::store::{Timestamp, UserKeys};
    use knockgate_proto::Access;
    use knockgate_proto::api;

    fn user(name: &str, groups: &[&str], disabled: bool) -> User {
        User {
            name: UserName::new(name).unwrap(),
            groups: groups
                .iter()
                .map(|g| (*g).to_owned())
                .collect::<BTreeSet<_>>(),
            disabled,
            created_at: Timestamp::from_unix_millis(0),
            keys: UserKeys {
                spa_key: [1; 32],
                fwknop_key: [2; 32],
                fwknop_hmac_key: [3; 64],
                fwknop_hmac: "sha256".into(),
                rotating_secret: [4; 32],
            },
            key_version: 1,
        }
    }

    fn policy(
        name: &str,
        users: &[&str],
        groups: &[&str],
        agents: &str,
        spa: bool,
        fwknop: bool,
    ) -> PolicyDef {
        let raw = RawPolicy {
            open: vec!["tcp/22".into()],
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            agents: agents.into(),
            timeout_secs: 30,
            spa,
            fwknop,
            sequence: if spa || fwknop {
                vec![]
            } else {
                vec!["tcp/7000".into()]
            },
            ..RawPolicy::default()
        };
        PolicyDef::validate(name, raw).unwrap()
    }

    fn labels(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    /// Agents share each policy's value; a later snapshot keeps the unchanged ones, so
    /// an agent's old and new views differ only where a policy changed.
    #[test]
    fn policies_are_shared_between_agents_and_snapshots() {
        let users = vec![user("alice", &["ops"], false), user("bob", &[], false)];
        let policies = vec![
            policy("ssh", &["alice"], &[], "role=edge", true, false),
            policy("web", &[], &["ops"], "", false, true),
        ];
        let first = Shared::new(&policies, &users, None);
        let edge = labels(&[("role", "edge")]);
        let (gw1, gw2) = (
            AgentName::new("gw1").unwrap(),
            AgentName::new("gw2").unwrap(),
        );
        let a = compute_shared(&gw1, &edge, &policies, &users, &first);
        let b = compute_shared(&gw2, &edge, &policies, &users, &first);
        assert_eq!(
            a,
            compute(&gw1, &edge, &policies, &users),
            "the same view as before"
        );
        assert!(Arc::ptr_eq(&a.policies["ssh"], &b.policies["ssh"]));
        assert_ne!(a.users, b.users, "keys stay scoped to each gateway");

        let mut changed = policies.clone();
        changed[1] = policy("web", &["bob"], &["ops"], "", false, true);
        let second = Shared::new(&changed, &users, Some(&first));
        let c = compute_shared(&gw1, &edge, &changed, &users, &second);
        assert!(
            Arc::ptr_eq(&a.policies["ssh"], &c.policies["ssh"]),
            "unchanged: kept"
        );
        assert!(!Arc::ptr_eq(&a.policies["web"], &c.policies["web"]));
        assert_eq!(c.policies["web"].users, ["alice", "bob"]);
        let d = delta(&a, &c, 1, 2);
        assert_eq!(
            d.policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
    }

    #[test]
    fn selects_expands_groups_and_drops_disabled() {
        let users = [
            user("alice", &[], false),
            user("bob", &["ops"], false),
            user("carol", &["ops"], true),
        ];
        let policies = [
            policy("ssh", &["alice"], &["ops"], "role=edge", true, false),
            policy("vpn", &["alice"], &[], "role=core", false, true),
            policy("web", &["bob"], &[], "", false, false),
        ];
        let gw1 = AgentName::new("gw1").unwrap();
        let view = compute(&gw1, &labels(&[("role", "edge")]), &policies, &users);
        assert_eq!(view.policies.keys().collect::<Vec<_>>(), ["ssh", "web"]);
        assert_eq!(view.policies["ssh"].users, ["alice", "bob"]);
        assert_eq!(view.users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        // alice is reached by SPA only here: no fwknop keys, and her SPA key is the one
        // derived for gw1, not her root.
        let gw1_key = scope::gateway_spa_key(&[1; 32], "gw1").unwrap();
        let alice_key = view.users["alice"].spa_key.as_deref();
        assert_eq!(alice_key, Some(gw1_key.secret()));
        assert_ne!(alice_key, Some(&[1; 32]));
        assert!(view.users["alice"].fwknop.is_none());
        assert!(view.users["bob"].spa_key.is_some());
        // On the wire: the key, and no fwknop fields.
        let wire = api::User::from(&view.users["alice"]);
        assert_eq!(wire.spa_key, gw1_key.secret().to_vec());
        assert!(wire.fwknop_key.is_empty() && wire.fwknop_hmac.is_empty());
        let gw2 = AgentName::new("gw2").unwrap();
        let other = compute(&gw2, &labels(&[("role", "edge")]), &policies, &users);
        assert_ne!(
            other.users["alice"].spa_key, view.users["alice"].spa_key,
            "another gateway holds another key"
        );
    }

    #[test]
    fn a_sequence_goes_out_with_its_gaps_and_flags() {
        let mut p = policy("web", &["alice"], &[], "", false, false);
        p.min_gap_ms = 100;
        p.max_gap_ms = 900;
        p.tcp_flags = Some("syn,!ack,!fin".parse().unwrap());
        let gw1 = AgentName::new("gw1").unwrap();
        let view = compute(&gw1, &labels(&[]), &[p], &[user("alice", &[], false)]);
        let w = &view.policies["web"];
        let wire = api::Policy::from(&**w);
        assert_eq!((wire.min_gap_ms, wire.max_gap_ms), (100, 900));
        assert_eq!(wire.tcp_flags, "syn,!fin,!ack");
        assert_eq!(wire.sequence, ["tcp/7000"]);
    }

    #[test]
    fn deltas_upsert_and_remove() {
        let users = [user("alice", &[], false), user("bob", &[], false)];
        let gw = AgentName::new("gw1").unwrap();
        let before = compute(
            &gw,
            &labels(&[]),
            &[policy("ssh", &["alice", "bob"], &[], "", true, false)],
            &users,
        );
        let users2 = [user("alice", &[], true), user("bob", &[], false)];
        let after = compute(
            &gw,
            &labels(&[]),
            &[
                policy("ssh", &["alice", "bob"], &[], "", true, false),
                policy("new", &["bob"], &[], "", true, false),
            ],
            &users2,
        );
        let d = delta(&before, &after, 3, 5);
        assert!(!d.full);
        assert_eq!((d.base_version, d.version), (3, 5));
        assert_eq!(
            d.policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["new", "ssh"]
        );
        assert!(d.users.is_empty(), "bob unchanged");
        assert_eq!(d.removed_users, ["alice"]);
        let empty = delta(&after, &after, 5, 6);
        assert!(
            empty.policies.is_empty() && empty.users.is_empty() && empty.removed_users.is_empty()
        );
        assert_eq!(full(&after, 6).policies.len(), 2);
        let empty = api::AgentConfig::from(empty);
        assert!(!empty.material_changed && empty.one_time_keys.is_empty());
    }

    fn agent(name: &str, l: &[(&str, &str)]) -> Agent {
        Agent {
            name: crate::name::AgentName::new(name).unwrap(),
            labels: labels(l),
            address: Some("192.0.2.1".into()),
            address_pinned: false,
            created_at: Timestamp::from_unix_millis(0),
            enrolled_at: None,
            cert_fingerprint: None,
            revoked_at: None,
            last_seen: None,
            applied_version: crate::store::ConfigVersion(0),
            connected: false,
        }
    }

    #[test]
    fn gateways_carry_what_the_agent_derives_with() {
        let alice = user("alice", &[], false);
        let rotating = |name: &str, open: &str, agents: &str, protos: &str| {
            let raw = RawPolicy {
                open: vec![open.into()],
                users: vec!["alice".into()],
                agents: agents.into(),
                timeout_secs: 30,
                rotating: true,
                rotating_protos: protos.into(),
                ..RawPolicy::default()
            };
            PolicyDef::validate(name, raw).unwrap()
        };
        let policies = [
            rotating("web", "tcp/443", "role=edge", "udp"),
            rotating("core", "tcp/8443", "role=core", ""),
            policy("ssh", &["bob"], &[], "", true, false),
            rotating("rdp", "udp/3389", "role=edge", ""),
        ];
        let agents = [agent("gw1", &[("role", "edge")]), agent("gw2", &[])];
        // As the profile carries them.
        let gws = crate::convert::credentials_to_api(&alice, gateways(&alice, &agents, &policies))
            .gateways;
        assert_eq!(gws[0].name, "gw1");
        let names: Vec<&str> = gws[0].rotating.iter().map(|r| r.policy.as_str()).collect();
        assert_eq!(names, ["rdp", "web"], "by name, only those selecting gw1");
        let web = &gws[0].rotating[1];
        assert_eq!(
            (web.length, web.protos.as_str(), web.port_lo, web.port_hi),
            (4, "udp", 20_000, 60_000)
        );
        assert_eq!(web.window_secs, 30);
        // Every open port at gw1, including a policy that does not admit alice.
        assert_eq!(web.exclude, [22, 443, 3389]);
        assert_eq!(gws[0].rotating[0].protos, "both");
        assert!(
            gws[1].rotating.is_empty(),
            "gw2: no rotating policy selects it"
        );
        // Every policy admitting alice there, with what it opens and how.
        let policies_at = |i: usize| -> Vec<(String, Vec<u32>, Vec<String>)> {
            gws[i]
                .policies
                .iter()
                .map(|p| {
                    let ports = p.open.iter().map(|a| a.port).collect();
                    (p.name.clone(), ports, p.methods.clone())
                })
                .collect()
        };
        let rotating_only = vec!["rotating".to_owned()];
        assert_eq!(
            policies_at(0),
            [
                ("rdp".into(), vec![3389], rotating_only.clone()),
                ("web".into(), vec![443], rotating_only)
            ],
            "not ssh: it admits only bob"
        );
        assert!(policies_at(1).is_empty());

        let gw1 = &agents[0];
        let inputs = material::Inputs {
            gateway: &gw1.name,
            labels: &gw1.labels,
            policies: &policies,
            users: std::slice::from_ref(&alice),
            claimed: &BTreeMap::new(),
        };
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let (m, _) = material::Deriver::default().derive(&inputs, now);
        let params = knockgate_proto::rotation::RotationParams {
            length: 4,
            protos: knockgate_proto::rotation::Protos::Udp,
            port_lo: 20_000,
            port_hi: 60_000,
            exclude: web
                .exclude
                .iter()
                .map(|p| u16::try_from(*p).unwrap())
                .collect(),
            window_secs: web.window_secs,
        };
        let w = 60_000_000;
        assert_eq!(
            m.rotating[&("alice".into(), "web".into(), w)],
            knockgate_proto::rotation::derive_sequence(&[4; 32], "gw1", w, &params).unwrap()
        );
    }

    #[test]
    fn material_alone_makes_a_delta_on_the_same_version() {
        let old = AgentView::default();
        let mut new = old.clone();
        new.material.otks.insert(("alice".into(), 4), [9; 32]);
        new.material
            .rotating
            .insert(("alice".into(), "ssh".into(), 7), vec![Access::tcp(20001)]);
        let d = api::AgentConfig::from(delta(&old, &new, 5, 5));
        assert_eq!((d.base_version, d.version), (5, 5));
        assert!(d.material_changed && d.policies.is_empty());
        assert_eq!(d.one_time_keys[0].counter, 4);
        assert_eq!(d.rotating[0].window, 7);
        let f = api::AgentConfig::from(full(&new, 5));
        assert!(f.material_changed);
        assert_eq!((f.rotating.len(), f.one_time_keys.len()), (1, 1));
    }
}
