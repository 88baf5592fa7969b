//! `knocker open` argument parsing and the flags each method refuses.

use super::*;
use crate::resolve::Family;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    open: OpenArgs,
}

fn parse(extra: &[&str]) -> Result<OpenArgs, clap::Error> {
    let base = ["knocker", "gw1", "--profile", "p.toml"];
    Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.open)
}

#[test]
fn defaults() {
    let args = parse(&[]).unwrap();
    assert_eq!(args.gateway, "gw1");
    assert_eq!(args.profile, PathBuf::from("p.toml"));
    assert_eq!(args.method, Method::Spa);
    let listed_only = ProfileGateway {
        name: "gw1".into(),
        address: "192.0.2.1".into(),
        policies: vec![],
        rotating: vec![],
    };
    assert_eq!(args.access(&listed_only).unwrap(), vec![Access::tcp(22)]);
    assert_eq!(args.timeout, None);
    assert_eq!(args.port, None);
    assert_eq!((args.policy.as_deref(), args.delay), (None, None));
    assert_eq!(args.family(), Family::Any);
}

#[test]
fn flags() {
    let args = parse(&[
        "-m",
        "fwknop",
        "-A",
        "tcp/22,udp/53",
        "-t",
        "60s",
        "-p",
        "4000",
        "-4",
        "-v",
    ])
    .unwrap();
    assert_eq!(args.method, Method::Fwknop);
    assert_eq!(args.access, vec![Access::tcp(22), Access::udp(53)]);
    assert_eq!(args.timeout, Some(60));
    assert_eq!(args.port, Some(4000));
    assert_eq!(args.family(), Family::V4);
    assert!(args.verbose);
    let args = parse(&["-m", "rotating", "--policy", "ssh", "--delay", "50"]).unwrap();
    assert_eq!(args.method, Method::Rotating);
    assert_eq!(args.policy.as_deref(), Some("ssh"));
    assert_eq!(args.delay, Some(Duration::from_millis(50)));
    assert_eq!(parse(&["-m", "otk"]).unwrap().method, Method::Otk);
    for bad in [
        &["-m", "knock"][..],
        &["-A", "sctp/1"],
        &["-p", "0"],
        &["-t", "x"],
        &["-d", "soon"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn flags_that_do_not_apply_are_refused() {
    for (extra, message) in [
        (
            &["-m", "rotating", "-A", "tcp/22"][..],
            "--access does not apply to --method rotating",
        ),
        (
            &["-m", "rotating", "-t", "60s"],
            "--timeout does not apply to --method rotating",
        ),
        (
            &["-m", "rotating", "-p", "9"],
            "--port does not apply to --method rotating",
        ),
        (
            &["--policy", "ssh"],
            "--policy does not apply to --method spa",
        ),
        (
            &["-m", "otk", "--delay", "1s"],
            "--delay does not apply to --method otk",
        ),
    ] {
        let err = parse(extra).unwrap().run(&mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn fwknop_user_names() {
    assert!(fwknop_user_ok("alice"));
    assert!(fwknop_user_ok("a.b-c_d"));
    assert!(fwknop_user_ok(&"a".repeat(48)));
    for bad in ["", "a:b", "a/b", "a,b", "a=b", "é"] {
        assert!(!fwknop_user_ok(bad), "{bad}");
    }
    assert!(!fwknop_user_ok(&"a".repeat(49)));
}
