//! Native SPA end to end on loopback: `knocker keygen` writes a key file,
//! `knocker spa` sends one datagram to a real UDP socket, and the gateway's
//! codec (`knockgate_proto::spa::open`) opens it with that key. Also the
//! binary's exit codes and one-line errors, which must never show the key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use knockgate_cli::{build_spa, read_key_file, send_spa};
use knockgate_proto::spa::{self, SpaKey, SpaRequest};
use knockgate_proto::{Access, unix_secs};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(5);

fn knocker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(args)
        .output()
        .expect("run knocker")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Runs `knocker keygen --out DIR/NAME` and returns the file and its key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, SpaKey) {
    let path = dir.join(name);
    let out = knocker(&["keygen", "--out", path_str(&path)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    let key = read_key_file(&path).expect("key file parses");
    (path, key)
}

fn receiver(ip: IpAddr) -> (UdpSocket, u16) {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp receiver");
    socket.set_read_timeout(Some(WAIT)).expect("set timeout");
    let port = socket.local_addr().expect("local addr").port();
    (socket, port)
}

/// Receives one datagram and asserts no second one follows.
fn receive_one(socket: &UdpSocket, from_ip: IpAddr) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (len, from) = socket.recv_from(&mut buf).expect("spa datagram received");
    assert_eq!(from.ip(), from_ip);
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set timeout");
    assert!(
        socket.recv_from(&mut [0u8; 8]).is_err(),
        "exactly one datagram"
    );
    buf[..len].to_vec()
}

fn spa_through_binary(ip: IpAddr, family_flag: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key_path, key) = keygen(dir.path(), "alice.key");
    let (socket, port) = receiver(ip);
    let host = ip.to_string();
    let port_arg = port.to_string();
    let before = unix_secs(SystemTime::now());

    let out = knocker(&[
        "spa",
        family_flag,
        &host,
        "--user",
        "alice",
        "--key-file",
        path_str(&key_path),
        "--gateway",
        "gw1",
        "--access",
        "tcp/22",
        "--access",
        "udp/53,tcp/443",
        "--allow-ip",
        "192.0.2.7",
        "--timeout",
        "90s",
        "--port",
        &port_arg,
        "--verbose",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");

    let packet = receive_one(&socket, ip);
    let req: SpaRequest = spa::open(&key, &packet).expect("gateway opens the packet");
    assert_eq!(req.gateway, "gw1");
    assert_eq!(
        req.access,
        vec![Access::tcp(22), Access::tcp(443), Access::udp(53)]
    );
    assert_eq!(req.allow_ip, Some("192.0.2.7".parse().expect("ip")));
    assert_eq!(req.duration_secs, 90);
    let after = unix_secs(SystemTime::now());
    assert!((before..=after).contains(&req.timestamp), "fresh timestamp");

    let target = SocketAddr::new(ip, port);
    assert_eq!(
        stdout,
        format!(
            "sent SPA for alice to gw1 ({target}): access tcp/22,tcp/443,udp/53, \
             allow 192.0.2.7, {} bytes, key id {}\n",
            packet.len(),
            key.id()
        )
    );
    assert!(!stdout.contains(&key.to_string()), "key never printed");
}

#[test]
fn binary_spa_arrives_and_opens_v4() {
    spa_through_binary(V4, "-4");
}

#[test]
fn binary_spa_arrives_and_opens_v6() {
    spa_through_binary(V6, "-6");
}

#[test]
fn binary_defaults_seal_the_sender_and_ask_for_the_policy_duration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key_path, key) = keygen(dir.path(), "k");
    let (socket, port) = receiver(V4);
    let port_arg = port.to_string();
    let send = |extra: &[&str]| {
        let mut args = vec![
            "spa",
            "localhost",
            "-4",
            "-u",
            "alice",
            "-k",
            path_str(&key_path),
            "-g",
            "gw1",
            "-A",
            "tcp/22",
            "-p",
            &port_arg,
        ];
        args.extend_from_slice(extra);
        let out = knocker(&args);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        receive_one(&socket, V4)
    };
    let req = spa::open(&key, &send(&[])).expect("opens");
    assert_eq!(
        req.allow_ip,
        Some(std::net::Ipv4Addr::LOCALHOST.into()),
        "the address it sends from is sealed"
    );
    assert_eq!(req.duration_secs, 0);
    assert_eq!(req.access, vec![Access::tcp(22)]);

    let packet = send(&["--source-any"]);
    assert_eq!(packet.len(), 88, "one port, short gateway, no address");
    let req = spa::open(&key, &packet).expect("opens");
    assert_eq!(req.allow_ip, None, "--source-any seals none");
}

#[test]
fn library_build_and_send() {
    let key = SpaKey::from_secret([9; 32]);
    for ip in [V4, V6] {
        let (socket, port) = receiver(ip);
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let packet = build_spa(
            &key,
            "edge-7",
            vec![Access::udp(51820)],
            Some(ip),
            3600,
            now,
        )
        .expect("built");
        send_spa(SocketAddr::new(ip, port), &packet).expect("sent");
        let req = spa::open(&key, &receive_one(&socket, ip)).expect("opens");
        assert_eq!(req.timestamp, 1_750_000_000);
        assert_eq!(req.gateway, "edge-7");
        assert_eq!(req.access, vec![Access::udp(51820)]);
        assert_eq!(req.allow_ip, Some(ip));
        assert_eq!(req.duration_secs, 3600);
    }
}

#[test]
fn keygen_prints_to_stdout_and_guards_files() {
    let out = knocker(&["keygen"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(line.lines().count(), 1);
    assert!(SpaKey::parse(&line).is_ok(), "stdout is a key");

    let dir = tempfile::tempdir().expect("temp dir");
    let (path, first) = keygen(dir.path(), "k");
    let out = knocker(&["keygen", "--out", path_str(&path)]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force") && stderr.contains(path_str(&path)));
    assert_eq!(
        read_key_file(&path).expect("kept"),
        first,
        "not overwritten"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = knocker(&["keygen", "--out", path_str(&path), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_ne!(read_key_file(&path).expect("new key"), first);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Asserts `knocker` failed with `code` and exactly one `knocker: error:` line
/// on stderr that contains every needle and none of `secrets`.
fn assert_fails(args: &[&str], code: i32, needles: &[&str], secrets: &[&str]) {
    let out = knocker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(stderr.starts_with("knocker: error: "), "{args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {stderr} lacks {needle}");
    }
    for secret in secrets {
        assert!(!stderr.contains(secret), "{args:?}: {stderr} shows the key");
    }
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

/// A good key file for the bad-input tests, and the forms its key could leak in.
struct BadInput {
    dir: tempfile::TempDir,
    good: String,
    secrets: [String; 3],
}

impl BadInput {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (good, key) = keygen(dir.path(), "good.key");
        let good = path_str(&good).to_owned();
        let secret = key.to_string();
        let unpadded = secret.trim_end_matches('=').to_owned();
        let prefix = secret[..20].to_owned();
        Self {
            dir,
            good,
            secrets: [secret, unpadded, prefix],
        }
    }

    /// The key as written in the file.
    fn secret(&self) -> &str {
        &self.secrets[0]
    }

    /// `knocker spa 127.0.0.1 -u alice -k KEY_FILE -g gw1 EXTRA…`.
    fn spa(&self, key_file: &str, extra: &[&str]) -> Vec<String> {
        let mut args = [
            "spa",
            "127.0.0.1",
            "-u",
            "alice",
            "-k",
            key_file,
            "-g",
            "gw1",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `args` exit 64 with one error line holding every needle and no form of the key.
    fn check(&self, args: Vec<String>, needles: &[&str]) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        assert_fails(&args, 64, needles, &secrets);
    }
}

/// Key files: missing, not base64, wrong length, two key lines.
#[test]
fn bad_key_files_exit_64() {
    let t = BadInput::new();
    let secret = t.secret();
    let missing = t.dir.path().join("missing.key");
    t.check(
        t.spa(path_str(&missing), &["-A", "tcp/22"]),
        &["cannot read key file", "missing.key"],
    );
    let cases = [
        (
            "garbage.key",
            format!("# alice\n{secret}!\n"),
            "not valid base64",
        ),
        ("short.key", format!("{}\n", &secret[..40]), "30 bytes"),
        (
            "two.key",
            format!("{secret}\n{secret}\n"),
            "more than one key line",
        ),
    ];
    for (name, text, needle) in cases {
        let path = t.dir.path().join(name);
        std::fs::write(&path, text).expect("write key file");
        t.check(
            t.spa(path_str(&path), &["-A", "tcp/22"]),
            &["invalid key file", name, needle],
        );
    }
}

/// Flags, each named with the offending value.
#[test]
fn bad_flags_exit_64_naming_the_value() {
    let t = BadInput::new();
    let good = t.good.as_str();
    t.check(
        t.spa(good, &["-A", "tcp/22,sctp/9"]),
        &["'sctp/9'", "--access"],
    );
    t.check(t.spa(good, &["-A", "tcp/0"]), &["'tcp/0'"]);
    t.check(
        t.spa(good, &["-A", "tcp/22", "-t", "5x"]),
        &["'5x'", "--timeout"],
    );
    t.check(
        t.spa(good, &["-A", "tcp/22", "-t", "4294967296s"]),
        &["'4294967296s'", "at most 4294967295 seconds"],
    );
    t.check(
        t.spa(good, &["-A", "tcp/22", "--allow-ip", "10.0.0.256"]),
        &["'10.0.0.256'", "--allow-ip"],
    );
    t.check(t.spa(good, &[]), &["--access"]);
    let many: Vec<String> = (1..=17).map(|p| format!("tcp/{p}")).collect();
    t.check(
        t.spa(good, &["-A", &many.join(",")]),
        &["too many --access"],
    );
}

/// Unknown host and wrong family.
#[test]
fn bad_hosts_exit_64() {
    let t = BadInput::new();
    let mut args = t.spa(&t.good, &["-A", "tcp/22"]);
    args[1] = "no-such-host.invalid".into();
    t.check(args, &["'no-such-host.invalid'"]);
    t.check(t.spa(&t.good, &["-A", "tcp/22", "-6"]), &["'127.0.0.1'"]);
}

#[test]
fn binary_send_failure_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, key) = keygen(dir.path(), "k");
    // Linux refuses a send to broadcast without SO_BROADCAST (EACCES).
    assert_fails(
        &[
            "spa",
            "255.255.255.255",
            "-u",
            "alice",
            "-k",
            path_str(&path),
            "-g",
            "gw1",
            "-A",
            "tcp/22",
        ],
        1,
        &["255.255.255.255:62201"],
        &[&key.to_string()],
    );
}

#[test]
fn binary_help_is_useful() {
    let out = knocker(&["spa", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--user",
        "--key-file",
        "--gateway",
        "--access",
        "--allow-ip",
        "--timeout",
        "--port",
        "62201",
        "-4",
        "-6",
        "--verbose",
    ] {
        assert!(help.contains(needle), "spa --help lacks {needle}: {help}");
    }
    let out = knocker(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("spa") && help.contains("keygen"), "{help}");
}
