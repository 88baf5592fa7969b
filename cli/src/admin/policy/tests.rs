//! `policy add` parsing and checks, and the policy table.

use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    add: PolicyAddArgs,
}

fn parse(args: &[&str]) -> Result<PolicyAddArgs, clap::Error> {
    Cli::try_parse_from(["policy", "ssh"].iter().chain(args)).map(|c| c.add)
}

#[test]
fn full_policy() {
    let args = parse(&[
        "--open",
        "tcp/22,udp/53",
        "--open",
        "tcp/22",
        "--users",
        "a,b",
        "--groups",
        "ops",
        "--agents",
        "role=edge",
        "--timeout",
        "1m",
        "--max-timeout",
        "5m",
        "--spa",
        "--fwknop",
        "--sequence",
        "tcp/7000,udp/8000,icmp",
        "--sequence-timeout",
        "15s",
    ])
    .unwrap();
    let spec = args.spec().unwrap();
    assert_eq!(spec.name, "ssh");
    assert_eq!(
        spec.open.iter().map(access_text).collect::<Vec<_>>(),
        ["tcp/22", "udp/53"]
    );
    assert_eq!(spec.users, ["a", "b"]);
    assert_eq!(spec.groups, ["ops"]);
    assert_eq!(spec.agents, "role=edge");
    assert_eq!((spec.timeout_secs, spec.max_timeout_secs), (60, 300));
    assert!(spec.spa && spec.fwknop);
    assert_eq!(spec.sequence, ["tcp/7000", "udp/8000", "icmp"]);
    assert_eq!(spec.sequence_timeout_secs, 15);
}

#[test]
fn defaults() {
    let spec = parse(&["--open", "tcp/22", "--spa"])
        .unwrap()
        .spec()
        .unwrap();
    assert_eq!(spec.agents, "");
    assert_eq!((spec.timeout_secs, spec.max_timeout_secs), (30, 0));
    assert_eq!(
        spec.sequence_timeout_secs, 0,
        "no sequence, no sequence timeout"
    );
}

#[test]
fn bad_input() {
    for (args, needle) in [
        (
            &["--open", "tcp/22", "--agents", "role", "--spa"][..],
            "'role'",
        ),
        (
            &["--open", "tcp/22", "--agents", "a=1,a=2", "--spa"],
            "given twice",
        ),
        (&["--open", "sctp/22", "--spa"], "'sctp/22'"),
        (
            &["--open", "tcp/22", "--timeout", "soon", "--spa"],
            "'soon'",
        ),
        (
            &["--open", "tcp/22", "--timeout", "0", "--spa"],
            "more than 0",
        ),
        (&["--open", "tcp/22", "--sequence", "tcp/0"], "'tcp/0'"),
        (
            &["--open", "tcp/22", "--users", "a,,b", "--spa"],
            "empty name",
        ),
        (&["--spa"], "--open"),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = parse(&["--open", "tcp/22"]).unwrap().spec().unwrap_err();
    assert!(err.to_string().contains("at least one method"), "{err}");
    let err = parse(&[
        "--open",
        "tcp/22",
        "--spa",
        "--timeout",
        "5m",
        "--max-timeout",
        "1m",
    ])
    .unwrap()
    .spec()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--max-timeout (1m) is shorter than --timeout (5m)"
    );
}

#[test]
fn list_table() {
    let spec = parse(&[
        "--open",
        "tcp/22",
        "--groups",
        "ops",
        "--spa",
        "--sequence",
        "tcp/1",
    ])
    .unwrap()
    .spec()
    .unwrap();
    let mut out = Vec::new();
    policy_table(&[spec]).render(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "NAME  OPEN    METHODS       USERS  GROUPS  AGENTS  TIMEOUT  MAX\n\
         ssh   tcp/22  spa,sequence  -      ops     *       30s      30s\n"
    );
}

#[test]
fn forward_needs_no_open_and_reaches_the_spec() {
    let spec = parse(&[
        "--forward",
        "tcp/2222 -> 10.0.0.5:22",
        "--forward",
        "udp/51820->[fd00::5]:51820",
        "--spa",
    ])
    .unwrap()
    .spec()
    .unwrap();
    assert!(spec.open.is_empty(), "the controller opens the outer ports");
    assert_eq!(
        spec.forward,
        ["tcp/2222 -> 10.0.0.5:22", "udp/51820 -> [fd00::5]:51820"]
    );
    let e = parse(&["--forward", "tcp/2222 -> fd00::5:22", "--spa"]).unwrap_err();
    assert!(e.to_string().contains("[fd00::5]:22"), "{e}");
    let e = parse(&["--spa"]).unwrap_err();
    assert!(e.to_string().contains("--open"), "{e}");
}
