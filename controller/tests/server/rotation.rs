//! Rotating sequences through the real server: policy validation, what each
//! agent's config carries (only its admitted users, derived for its own name
//! with its protected ports excluded), the push at every window boundary, and the
//! per-gateway parameters in AddUser/RotateUserKeys credentials that let a client derive
//! exactly what the agent is sent.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use knockgate_controller::convert::{access_from_api, access_to_api};
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::rotation::{Protos, RotationParams, derive_sequence, window_index};
use knockgate_proto::{Access, api, unix_secs};
use tonic::Code;
use tonic::transport::Channel;

use super::harness::*;

const WINDOW: u32 = 5;

fn policy(name: &str, open: &[u16], users: &[&str], agents: &str) -> api::PolicySpec {
    api::PolicySpec {
        name: name.into(),
        open: open
            .iter()
            .map(|p| access_to_api(Access::tcp(*p)))
            .collect(),
        users: users.iter().map(|u| (*u).into()).collect(),
        agents: agents.into(),
        timeout_secs: 30,
        ..api::PolicySpec::default()
    }
}

fn rotating(name: &str, open: &[u16], users: &[&str], agents: &str) -> api::PolicySpec {
    api::PolicySpec {
        rotating: true,
        rotating_port_lo: 2200,
        rotating_port_hi: 2300,
        window_secs: WINDOW,
        ..policy(name, open, users, agents)
    }
}

fn now_window() -> u64 {
    window_index(unix_secs(SystemTime::now()), WINDOW)
}

/// The config's sequences by (user, policy) → window → knocks.
type Sequences = BTreeMap<(String, String), BTreeMap<u64, Vec<Access>>>;

fn sequences(c: &api::AgentConfig) -> Sequences {
    let mut out = Sequences::new();
    for s in &c.rotating {
        let knocks = s
            .knocks
            .iter()
            .map(|a| access_from_api(a).unwrap())
            .collect();
        out.entry((s.user.clone(), s.policy.clone()))
            .or_default()
            .insert(s.window, knocks);
    }
    out
}

/// Asserts `c` holds alice's sequences at `gateway` for windows
/// `current-1 ..= current+3`, with `current` in `lo..=hi`; returns `current`.
fn check(c: &api::AgentConfig, gateway: &str, secret: &[u8; 32], lo: u64, hi: u64) -> u64 {
    let seqs = sequences(c);
    let keys: Vec<_> = seqs.keys().cloned().collect();
    assert_eq!(keys, [("alice".to_owned(), "rot".to_owned())]);
    let by_window = &seqs[&("alice".to_owned(), "rot".to_owned())];
    let windows: Vec<u64> = by_window.keys().copied().collect();
    let current = windows[0] + 1;
    assert!((lo..=hi).contains(&current), "{windows:?} for {lo}..={hi}");
    assert_eq!(windows, (current - 1..=current + 3).collect::<Vec<_>>());
    let params = RotationParams {
        length: 4,
        protos: Protos::Both,
        port_lo: 2200,
        port_hi: 2300,
        // Every `open` port of the policies selecting the gateway.
        exclude: vec![22, 443, 2222],
        window_secs: WINDOW,
    };
    for (w, knocks) in by_window {
        assert_eq!(
            knocks,
            &derive_sequence(secret, gateway, *w, &params).unwrap(),
            "window {w}"
        );
    }
    current
}

pub async fn rotating_sequences(server: &Server) {
    let mut admin = server.admin();
    let alice = new_user(server, "alice").await;
    new_user(server, "bob").await;
    let gw1 = enrolled_agent(server, "gw1", &[("role", "edge")]).await;
    let gw2 = enrolled_agent(server, "gw2", &[("role", "core")]).await;

    bad_settings_name_their_field(&mut admin).await;
    add_ssh_and_rotating(&mut admin).await;
    let mut s1 = SyncStream::open(&gw1, server, "").await;
    let mut s2 = SyncStream::open(&gw2, server, "").await;
    let secret = rotating_secret(&alice);
    let (full, current) = first_configs(&mut s1, &mut s2, &secret).await;
    window_boundary_moves_the_range(&mut s1, &mut s2, &full, &secret, current).await;
    rotated_keys_change_the_sequences(&mut admin, &mut s1, &full).await;
    new_user_gets_the_rotation_in_add_user(&mut admin, &mut s2).await;
}

/// Validation names the field; rotating alone is a knock method.
async fn bad_settings_name_their_field(admin: &mut AdminClient<Channel>) {
    for (bad, field) in [
        (
            api::PolicySpec {
                rotating_length: 17,
                ..rotating("x", &[22], &[], "")
            },
            "rotating_length",
        ),
        (
            api::PolicySpec {
                rotating_protos: "icmp".into(),
                ..rotating("x", &[22], &[], "")
            },
            "rotating_protos",
        ),
        (
            api::PolicySpec {
                window_secs: 4,
                ..rotating("x", &[22], &[], "")
            },
            "window_secs",
        ),
        (
            api::PolicySpec {
                rotating_port_lo: 70_000,
                ..rotating("x", &[22], &[], "")
            },
            "rotating_port_lo",
        ),
        (
            api::PolicySpec {
                otk_offline: "sometimes".into(),
                otk: true,
                ..rotating("x", &[22], &[], "")
            },
            "otk_offline",
        ),
        (
            policy("x", &[22], &[], ""),
            "spa/fwknop/sealed/sequence/rotating/otk",
        ),
    ] {
        let status = assert_code(admin.add_policy(bad).await, Code::InvalidArgument);
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{status:?}"
        );
    }
}

/// An SPA policy for alice and bob everywhere (its ports are excluded from the
/// sequences), and `rot`, rotating for alice on role=edge with defaults filled in.
async fn add_ssh_and_rotating(admin: &mut AdminClient<Channel>) {
    let spa = api::PolicySpec {
        spa: true,
        ..policy("ssh", &[22, 443], &["alice", "bob"], "")
    };
    admin.add_policy(spa).await.unwrap();
    let stored = admin
        .add_policy(rotating("rot", &[2222], &["alice"], "role=edge"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            stored.rotating_length,
            stored.rotating_port_lo,
            stored.window_secs
        ),
        (4, 2200, WINDOW),
        "defaults are filled in"
    );
}

/// gw1's first config carries alice's sequences and the rotating policy; gw2,
/// not selected, gets the users' keys and no sequences. Returns gw1's config and
/// its current window.
async fn first_configs(
    s1: &mut SyncStream,
    s2: &mut SyncStream,
    secret: &[u8; 32],
) -> (api::AgentConfig, u64) {
    let (lo, full) = (now_window(), s1.next_config(Duration::from_secs(5)).await.0);
    let current = check(&full, "gw1", secret, lo, now_window());
    let rot = full.policies.iter().find(|p| p.name == "rot").unwrap();
    assert!(rot.rotating && !rot.otk);
    assert_eq!(
        (rot.window_secs, rot.users.as_slice()),
        (WINDOW, &["alice".to_owned()][..])
    );
    assert!(full.one_time_keys.is_empty());
    // gw2 is not selected: the users' keys, no sequences.
    let (other, _) = s2.next_config(Duration::from_secs(5)).await;
    assert!(other.full && other.rotating.is_empty());
    assert_eq!(other.users.len(), 2);
    (full, current)
}

/// The next window boundary pushes the moved range, on the same version, to gw1
/// alone.
async fn window_boundary_moves_the_range(
    s1: &mut SyncStream,
    s2: &mut SyncStream,
    full: &api::AgentConfig,
    secret: &[u8; 32],
    current: u64,
) {
    let delta = s1
        .next_material(Duration::from_secs(u64::from(WINDOW) + 2))
        .await;
    assert!(!delta.full && delta.material_changed);
    assert_eq!(
        (delta.base_version, delta.version),
        (full.version, full.version)
    );
    assert!(delta.policies.is_empty() && delta.users.is_empty());
    let moved = check(&delta, "gw1", secret, current + 1, now_window());
    assert_eq!(moved, current + 1);
    s2.assert_quiet(Duration::from_millis(300)).await;
}

/// Rotating alice's keys changes her sequences at once, and her new credentials
/// carry what gw1 derives with, so her client derives the same.
async fn rotated_keys_change_the_sequences(
    admin: &mut AdminClient<Channel>,
    s1: &mut SyncStream,
    full: &api::AgentConfig,
) {
    let rotated = admin
        .rotate_user_keys(api::RotateUserKeysRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (lo, delta) = (now_window(), s1.next_material(Duration::from_secs(1)).await);
    assert!(delta.version > full.version);
    check(&delta, "gw1", &rotating_secret(&rotated), lo, now_window());
    // Her new credentials carry what gw1 derives with, so her client derives the same.
    let at_gw1 = &gateway(&rotated, "gw1").rotating;
    assert_eq!(
        at_gw1,
        &[api::GatewayRotation {
            policy: "rot".into(),
            length: 4,
            protos: "both".into(),
            port_lo: 2200,
            port_hi: 2300,
            window_secs: WINDOW,
            exclude: vec![22, 443, 2222],
        }]
    );
    assert!(gateway(&rotated, "gw2").rotating.is_empty());
    assert_derived_from(&delta, "alice", &rotated, "gw1");
}

/// A user added once a rotating policy admits them gets it in AddUser's answer,
/// and gw2 is sent the sequences derived from it.
async fn new_user_gets_the_rotation_in_add_user(
    admin: &mut AdminClient<Channel>,
    s2: &mut SyncStream,
) {
    admin
        .add_policy(api::PolicySpec {
            groups: vec!["ops".into()],
            rotating_protos: "udp".into(),
            ..rotating("rot2", &[8443], &[], "role=core")
        })
        .await
        .unwrap();
    let dave = admin
        .add_user(api::AddUserRequest {
            name: "dave".into(),
            groups: vec!["ops".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let at_gw2 = &gateway(&dave, "gw2").rotating;
    assert_eq!(at_gw2.len(), 1);
    assert_eq!(
        (at_gw2[0].policy.as_str(), at_gw2[0].protos.as_str()),
        ("rot2", "udp")
    );
    assert_eq!(at_gw2[0].exclude, [22, 443, 8443]);
    assert!(gateway(&dave, "gw1").rotating.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let pushed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let c = s2.next_material(left).await;
        if c.rotating.iter().any(|s| s.user == "dave") {
            break c;
        }
    };
    assert_derived_from(&pushed, "dave", &dave, "gw2");
}

fn gateway<'a>(creds: &'a api::UserCredentials, name: &str) -> &'a api::GatewayAddress {
    creds
        .gateways
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no gateway {name} in {:?}", creds.gateways))
}

/// Asserts every sequence of `user` in `c` is what `derive_sequence` gives with the
/// secret and the gateway's rotating parameters from `creds`, as a client derives it.
fn assert_derived_from(c: &api::AgentConfig, user: &str, creds: &api::UserCredentials, gw: &str) {
    let secret = rotating_secret(creds);
    let mut seen = 0;
    for r in &gateway(creds, gw).rotating {
        let params = RotationParams {
            length: u8::try_from(r.length).unwrap(),
            protos: match r.protos.as_str() {
                "tcp" => Protos::Tcp,
                "udp" => Protos::Udp,
                "both" => Protos::Both,
                other => panic!("protos {other:?}"),
            },
            port_lo: u16::try_from(r.port_lo).unwrap(),
            port_hi: u16::try_from(r.port_hi).unwrap(),
            exclude: r
                .exclude
                .iter()
                .map(|p| u16::try_from(*p).unwrap())
                .collect(),
            window_secs: r.window_secs,
        };
        for (w, knocks) in sequences(c)
            .get(&(user.to_owned(), r.policy.clone()))
            .into_iter()
            .flatten()
        {
            assert_eq!(
                knocks,
                &derive_sequence(&secret, gw, *w, &params).unwrap(),
                "{user} {} window {w}",
                r.policy
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 5, "windows current-1 ..= current+3 of one policy");
}
