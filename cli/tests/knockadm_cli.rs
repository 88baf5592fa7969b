//! The built `knockadm` binary without a controller: exit codes and one-line
//! errors for a missing or unusable identity (64), bad local input (64,
//! before anything is dialled), and a closed port (69).

#[path = "support/pki.rs"]
mod pki;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use pki::{TestCa, identity_pem};

fn knockadm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knockadm"))
        .args(args)
        .env_remove("KNOCKADM_CONTROLLER")
        .env_remove("KNOCKADM_IDENTITY")
        .output()
        .expect("run knockadm")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Asserts exit `code`, nothing on stdout, and exactly one
/// `knockadm: error:` line containing every needle.
fn assert_fails(args: &[&str], code: i32, needles: &[&str]) -> String {
    let out = knockadm(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(
        stderr.starts_with("knockadm: error: "),
        "{args:?}: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {stderr} lacks {needle}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    stderr
}

fn valid_identity(dir: &Path) -> std::path::PathBuf {
    let ca = TestCa::new("knockgate test ca");
    let path = dir.join("admin.pem");
    std::fs::write(&path, identity_pem(&ca.admin("root"), &ca)).expect("write identity");
    path
}

#[test]
fn missing_identity_exits_64_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.pem");
    assert_fails(
        &[
            "--controller",
            "https://127.0.0.1:1",
            "--identity",
            path_str(&missing),
            "agent",
            "list",
        ],
        64,
        &["cannot read identity file", path_str(&missing)],
    );
}

#[test]
fn identity_from_the_environment_and_the_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_knockadm"))
        .args(["user", "list"])
        .env("KNOCKADM_CONTROLLER", "https://127.0.0.1:1")
        .env("KNOCKADM_IDENTITY", dir.path().join("env.pem"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("env.pem"));

    let out = Command::new(env!("CARGO_BIN_EXE_knockadm"))
        .args(["user", "list"])
        .current_dir(dir.path())
        .env_remove("KNOCKADM_IDENTITY")
        .env_remove("KNOCKADM_CONTROLLER")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'./admin.pem'"));
}

#[test]
fn unusable_identities_exit_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("ca");
    let admin = ca.admin("root");
    let cases = [
        (
            "nokey.pem",
            format!("{}{}", admin.cert_pem, ca.cert_pem),
            "holds no private key",
        ),
        (
            "noca.pem",
            format!("{}{}", admin.cert_pem, admin.key_pem),
            "holds no CA certificate",
        ),
        (
            "nocert.pem",
            format!("{}{}", admin.key_pem, ca.cert_pem),
            "holds no admin certificate",
        ),
        ("empty.pem", String::new(), "holds no private key"),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let port = format!("https://127.0.0.1:{}", closed_port());
        assert_fails(
            &[
                "--controller",
                &port,
                "--identity",
                path_str(&path),
                "user",
                "list",
            ],
            64,
            &[needle, name],
        );
    }
}

#[test]
fn closed_port_exits_69() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = valid_identity(dir.path());
    let url = format!("https://127.0.0.1:{}", closed_port());
    for command in [
        &["agent", "list"][..],
        &["audit", "--follow"],
        &["grant", "revoke", "7"],
    ] {
        let mut args = vec!["--controller", &url, "--identity", path_str(&identity)];
        args.extend_from_slice(command);
        assert_fails(
            &args,
            69,
            &[&format!(
                "cannot reach controller at {url}: connection refused"
            )],
        );
    }
}

#[test]
fn bad_local_input_exits_64_before_dialling() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = valid_identity(dir.path());
    let id = path_str(&identity);
    // Port 1 would give 69: every case must fail before connecting.
    let base = ["--controller", "https://127.0.0.1:1", "--identity", id];
    let existing = dir.path().join("alice.toml");
    std::fs::write(&existing, "keep me").expect("write");
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "policy", "add", "p", "--open", "tcp/22", "--agents", "role", "--spa",
            ],
            &["'role'", "KEY=VALUE"],
        ),
        (
            vec!["policy", "add", "p", "--open", "tcp/22"],
            &["at least one method"],
        ),
        (
            vec!["policy", "add", "p", "--open", "tcp/99999", "--spa"],
            &["'tcp/99999'"],
        ),
        (
            vec![
                "policy",
                "add",
                "p",
                "--open",
                "tcp/22",
                "--timeout",
                "later",
                "--spa",
            ],
            &["'later'"],
        ),
        (
            vec!["agent", "add", "gw1", "--label", "role"],
            &["'role'", "--label"],
        ),
        (
            vec!["agent", "add", "gw1", "--label", "a=1", "--label", "a=2"],
            &["given twice"],
        ),
        (
            vec!["agent", "add", "gw1", "--token-ttl", "0"],
            &["more than 0"],
        ),
        (vec!["grant", "revoke"], &["required"]),
        (
            vec!["grant", "revoke", "3", "--user", "alice"],
            &["cannot be used with"],
        ),
        (vec!["audit", "--since", "yesterday"], &["'yesterday'"]),
        (
            vec!["user", "add", "alice", "--profile-out", path_str(&existing)],
            &["refusing to overwrite", "alice.toml"],
        ),
        (vec!["agent", "frobnicate"], &["frobnicate"]),
        (vec!["--output", "yaml", "agent", "list"], &["'yaml'"]),
    ];
    for (command, needles) in cases {
        let mut args = base.to_vec();
        args.extend(command);
        assert_fails(&args, 64, needles);
    }
    assert_eq!(std::fs::read_to_string(&existing).expect("read"), "keep me");

    for url in ["http://127.0.0.1:7443", "127.0.0.1:7443", "https://"] {
        assert_fails(
            &["--controller", url, "--identity", id, "agent", "list"],
            64,
            &["invalid --controller"],
        );
    }
}

#[test]
fn help_names_every_noun_and_the_exit_codes() {
    let out = knockadm(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "agent",
        "user",
        "policy",
        "grant",
        "audit",
        "--controller",
        "--identity",
        "--output",
        "69",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let out = knockadm(&[]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "no command prints help and exits 64"
    );
    let out = knockadm(&["policy", "add", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--open",
        "--users",
        "--groups",
        "--agents",
        "--timeout",
        "--max-timeout",
        "--spa",
        "--fwknop",
        "--sequence",
        "--sequence-timeout",
    ] {
        assert!(help.contains(needle), "policy add --help lacks {needle}");
    }
}
