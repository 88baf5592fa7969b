use super::*;
use knockgate_agent_core::config::{Config, Origin};
use knockgate_agent_core::packet::KnockStep;

pub(crate) fn tcp(port: u32) -> api::Access {
    api::Access {
        proto: api::Proto::Tcp as i32,
        port,
    }
}

pub(crate) fn ssh() -> api::Policy {
    api::Policy {
        name: "ssh".into(),
        open: vec![tcp(22)],
        timeout_secs: 30,
        max_timeout_secs: 0,
        users: vec![],
        spa: false,
        fwknop: false,
        sequence: vec!["tcp/7000".into(), "udp/8000".into(), "icmp".into()],
        sequence_timeout_secs: 5,
        ..Default::default()
    }
}

pub(crate) fn web() -> api::Policy {
    api::Policy {
        name: "web".into(),
        open: vec![
            tcp(443),
            api::Access {
                proto: api::Proto::Udp as i32,
                port: 51820,
            },
        ],
        timeout_secs: 60,
        max_timeout_secs: 600,
        users: vec!["alice".into()],
        spa: true,
        fwknop: true,
        sequence: vec![],
        sequence_timeout_secs: 0,
        ..Default::default()
    }
}

pub(crate) fn alice() -> api::User {
    api::User {
        name: "alice".into(),
        spa_key: vec![7; 32],
        fwknop_key: vec![1; 32],
        fwknop_hmac_key: vec![2; 64],
        fwknop_hmac: "sha512".into(),
    }
}

pub(crate) fn full(
    version: u64,
    policies: Vec<api::Policy>,
    users: Vec<api::User>,
) -> api::AgentConfig {
    api::AgentConfig {
        version,
        full: true,
        base_version: 0,
        policies,
        users,
        removed_policies: vec![],
        removed_users: vec![],
        ..Default::default()
    }
}

fn convert(c: &api::AgentConfig) -> Result<PolicySet, String> {
    PolicySet::try_from(c).map_err(|e| e.to_string())
}

#[test]
fn every_field_is_carried_over() {
    let timed = api::Policy {
        min_gap_ms: 50,
        max_gap_ms: 1500,
        tcp_flags: "syn,!ack,!rst".into(),
        ..ssh()
    };
    let set = convert(&full(9, vec![timed, web()], vec![alice()])).expect("valid");
    assert_eq!(set.version, 9);
    let [s, w] = &set.policies[..] else {
        panic!("two policies")
    };
    assert_eq!(s.name, "ssh");
    assert_eq!(s.open, ["tcp/22".parse().expect("access")]);
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.max_timeout, None, "0 is the default");
    assert_eq!(
        s.sequence,
        [
            "tcp/7000".parse::<KnockStep>().expect("k"),
            "udp/8000".parse::<KnockStep>().expect("k"),
            KnockStep::Icmp
        ]
    );
    assert_eq!(s.sequence_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        (s.min_gap, s.max_gap),
        (
            Some(Duration::from_millis(50)),
            Some(Duration::from_millis(1500))
        )
    );
    assert_eq!(s.tcp_flags, Some("syn,!ack,!rst".parse().expect("flags")));
    assert!(!s.spa && !s.fwknop && s.users.is_empty());
    assert_eq!(
        w.open,
        [
            "tcp/443".parse().expect("access"),
            "udp/51820".parse().expect("access")
        ]
    );
    assert_eq!(w.max_timeout, Some(Duration::from_secs(600)));
    assert_eq!(w.sequence_timeout, None);
    assert!(w.spa && w.fwknop);
    assert_eq!(w.users, ["alice"]);
    assert_eq!((w.min_gap, w.max_gap, w.tcp_flags), (None, None, None));

    let u = &set.users[0];
    assert_eq!(u.name, "alice");
    assert_eq!(u.spa_key, Some(SpaKey::from_secret([7; 32])));
    let fw = u.fwknop.as_ref().expect("fwknop");
    assert_eq!(
        (&fw.enc_key[..], &fw.hmac_key[..], fw.hmac),
        (&[1u8; 32][..], &[2u8; 64][..], HmacType::Sha512)
    );

    // And the core takes it as it takes a file.
    let base =
        Config::parse("[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = \"/tmp\"\n")
            .expect("base");
    let c = base
        .with_policies(Origin::Controller, set.users, set.policies)
        .expect("validates");
    assert_eq!(c.policies[1].users.iter().copied().collect::<Vec<_>>(), [0]);
}

#[test]
fn defaults_apply_to_empty_optional_fields() {
    let mut u = alice();
    u.fwknop_hmac.clear();
    u.spa_key.clear();
    let set = convert(&full(1, vec![], vec![u])).expect("valid");
    assert_eq!(set.users[0].spa_key, None);
    assert_eq!(
        set.users[0].fwknop.as_ref().expect("fwknop").hmac,
        HmacType::Sha256
    );
    let mut u = alice();
    u.fwknop_key.clear();
    u.fwknop_hmac_key.clear();
    u.fwknop_hmac.clear();
    assert_eq!(
        convert(&full(1, vec![], vec![u])).expect("valid").users[0].fwknop,
        None
    );
}

type Edit = Box<dyn Fn(&mut api::Policy, &mut api::User)>;

/// Bad policy fields, each with the error it must give.
fn bad_policies() -> Vec<(Edit, &'static str)> {
    vec![
        (
            Box::new(|p, _| p.timeout_secs = 0),
            "policies[\"ssh\"].timeout_secs: must be more than 0",
        ),
        (
            Box::new(|p, _| p.max_timeout_secs = 10),
            "policies[\"ssh\"].max_timeout_secs: is less than timeout_secs",
        ),
        (
            Box::new(|p, _| p.tcp_flags = "syn,bogus".into()),
            "policies[\"ssh\"].tcp_flags: unknown tcp flag \"bogus\"",
        ),
        (
            Box::new(|p, _| p.open[0].port = 0),
            "policies[\"ssh\"].open[0].port: 0 is not 1-65535",
        ),
        (
            Box::new(|p, _| p.open[0].port = 70000),
            "policies[\"ssh\"].open[0].port: 70000 is not 1-65535",
        ),
        (
            Box::new(|p, _| p.open[0].proto = 0),
            "policies[\"ssh\"].open[0].proto: unspecified",
        ),
        (
            Box::new(|p, _| p.open[0].proto = 17),
            "policies[\"ssh\"].open[0].proto: unknown value 17",
        ),
        (
            Box::new(|p, _| {
                p.name.clear();
                p.sequence[1] = "sctp/1".into();
            }),
            "policies[0].sequence[1]: bad knock \"sctp/1\"",
        ),
        (
            Box::new(|p, _| p.otk_offline = "local".into()),
            "policies[\"ssh\"].otk_offline: set without otk",
        ),
        (
            Box::new(|p, _| {
                p.otk = true;
                p.otk_offline = "maybe".into();
            }),
            "policies[\"ssh\"].otk_offline: \"maybe\" is not an offline rule: use \"deny\" or \"local\"",
        ),
    ]
}

/// Bad user fields, each with the error it must give.
fn bad_users() -> Vec<(Edit, &'static str)> {
    vec![
        (
            Box::new(|_, u| u.spa_key = vec![9; 31]),
            "users[\"alice\"].spa_key: must be 32 bytes, not 31",
        ),
        (
            Box::new(|_, u| u.fwknop_hmac_key.clear()),
            "users[\"alice\"].fwknop_hmac_key: required with fwknop_key",
        ),
        (
            Box::new(|_, u| u.fwknop_key.clear()),
            "users[\"alice\"].fwknop_key: required with fwknop_hmac_key",
        ),
        (
            Box::new(|_, u| {
                u.fwknop_key.clear();
                u.fwknop_hmac_key.clear();
            }),
            "users[\"alice\"].fwknop_hmac: set without fwknop_key",
        ),
        (
            Box::new(|_, u| u.fwknop_hmac = "whirlpool".into()),
            "users[\"alice\"].fwknop_hmac: unknown \"whirlpool\"",
        ),
        (
            Box::new(|_, u| u.fwknop_key = vec![3; 33]),
            "users[\"alice\"].fwknop_key: rijndael key must be 1..=32 bytes, got 33",
        ),
        (
            Box::new(|_, u| u.fwknop_hmac_key = vec![3; 137]),
            "users[\"alice\"].fwknop_hmac_key: hmac key must be 1..=136 bytes, got 137",
        ),
    ]
}

#[test]
fn errors_name_the_field_and_never_the_key() {
    for (edit, want) in bad_policies().into_iter().chain(bad_users()) {
        let (mut p, mut u) = (ssh(), alice());
        edit(&mut p, &mut u);
        let e = convert(&full(1, vec![p], vec![u])).expect_err(want);
        assert!(e.starts_with(want), "{e}\n  wanted {want}");
        assert!(!e.contains("[7, 7") && !e.contains("BwcH"), "{e}");
    }
    let mut delta = full(2, vec![], vec![]);
    delta.full = false;
    assert_eq!(
        convert(&delta).expect_err("delta"),
        "full: expected a full config, not a delta"
    );
}

pub(crate) fn rotating_policy() -> api::Policy {
    api::Policy {
        name: "rot".into(),
        open: vec![tcp(2222)],
        timeout_secs: 30,
        users: vec!["alice".into()],
        rotating: true,
        window_secs: 10,
        sequence_timeout_secs: 4,
        otk: true,
        otk_offline: "local".into(),
        ..Default::default()
    }
}

#[test]
fn rotating_and_one_time_key_policies_and_their_material_convert() {
    let mut c = full(3, vec![rotating_policy()], vec![alice()]);
    c.rotating = vec![api::RotatingSequence {
        user: "alice".into(),
        policy: "rot".into(),
        window: 77,
        knocks: vec![
            tcp(31000),
            api::Access {
                proto: api::Proto::Udp as i32,
                port: 41000,
            },
        ],
    }];
    c.one_time_keys = vec![api::OneTimeKey {
        user: "alice".into(),
        counter: 4,
        key: vec![5; 32],
    }];
    let set = convert(&c).expect("valid");
    let p = &set.policies[0];
    assert!(p.rotating);
    assert_eq!(p.window_secs, Some(10));
    assert_eq!(p.sequence_timeout, Some(Duration::from_secs(4)));
    assert_eq!(p.otk, Some(OtkOffline::Local));
    let s = &set.material.rotating[0];
    assert_eq!(
        (s.user.as_str(), s.policy.as_str(), s.window),
        ("alice", "rot", 77)
    );
    assert_eq!(
        s.knocks,
        [
            "tcp/31000".parse::<KnockStep>().expect("k"),
            "udp/41000".parse::<KnockStep>().expect("k")
        ]
    );
    let k = &set.material.otks[0];
    assert_eq!((k.user.as_str(), k.counter), ("alice", 4));
    assert_eq!(k.key, SpaKey::from_secret([5; 32]));

    let mut deny = rotating_policy();
    deny.otk_offline.clear();
    deny.window_secs = 0;
    let p = &convert(&full(1, vec![deny], vec![]))
        .expect("valid")
        .policies[0];
    assert_eq!((p.otk, p.window_secs), (Some(OtkOffline::Deny), None));

    let mut bad = c.clone();
    bad.one_time_keys[0].key = vec![5; 31];
    let e = convert(&bad).expect_err("short key");
    assert_eq!(e, "one_time_keys[0].key: must be 32 bytes, not 31");
    let mut bad = c;
    bad.rotating[0].knocks[1].port = 0;
    let e = convert(&bad).expect_err("port 0");
    assert_eq!(e, "rotating[0].knocks[1].port: 0 is not 1-65535");
}

#[test]
fn forwards_are_parsed_and_a_bad_one_is_named() {
    let inner = api::Policy {
        name: "inner".into(),
        open: vec![tcp(2222)],
        forward: vec!["tcp/2222 -> 10.240.2.2:22".into()],
        ..ssh()
    };
    let set = convert(&full(3, vec![inner.clone()], vec![])).expect("valid");
    assert_eq!(
        set.policies[0].forward,
        ["tcp/2222 -> 10.240.2.2:22"
            .parse::<knockgate_proto::Forward>()
            .expect("forward")]
    );
    let bad = api::Policy {
        forward: vec!["tcp/2222 -> 10.240.2.2".into()],
        ..inner
    };
    let e = convert(&full(4, vec![bad], vec![])).expect_err("refused");
    assert!(e.contains("forward[0]") && e.contains("bad forward"), "{e}");
}
