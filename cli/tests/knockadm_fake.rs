//! The built `knockadm` against a stand-in controller: a tonic `Admin`
//! service over real mutual TLS on 127.0.0.1:0 with rcgen certificates. It
//! checks what the client side owns (TLS and identity, request fields,
//! status-to-error mapping, tables, JSON, profile files, `audit --follow`);
//! the controller's own behaviour is tested against the real server.

#[path = "support/pki.rs"]
mod pki;

#[path = "support/fake.rs"]
mod fake;

use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake::{Controller, FWKNOP_HMAC_KEY, FWKNOP_KEY, SPA_KEY, event};
use knockgate_proto::fwknop::{self, DigestType, FwknopKeys};
use knockgate_proto::spa::{self, SpaKey};
use pki::{TestCa, identity_pem};

#[test]
fn agents_as_table_and_json() {
    let ctl = Controller::start("127.0.0.1");
    let table = ctl.ok(&["agent", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines,
        [
            "NAME  LABELS     ADDRESS      CONNECTED  LAST-SEEN             APPLIED/CURRENT  GRANTS  REVOKED",
            "gw1   role=edge  203.0.113.7  yes        2025-06-01T12:00:00Z  3/3              1       no",
            "gw2   role=edge  203.0.113.7  no         never                 3/3              1       no",
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["--output", "json", "agent", "list"])).expect("json");
    assert_eq!(json[0]["name"], "gw1");
    assert_eq!(json[1]["last_seen"], serde_json::Value::Null);
    assert_eq!(json[0]["labels"]["role"], "edge");
}

#[test]
fn status_as_table_and_json() {
    let ctl = Controller::start("127.0.0.1");
    let table = ctl.ok(&["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[..9],
        [
            "agents connected:       1",
            "agents stale:           2",
            "agents never connected: 1",
            "agents not enrolled:    0",
            "agents revoked:         1",
            "config version:         7",
            "agents behind:          3",
            "open grants:            1",
            "",
        ]
    );
    assert!(
        lines[9].starts_with("refusals since ") && lines[9].ends_with("Z:"),
        "{table}"
    );
    assert_eq!(
        lines[10..],
        [
            "KIND          REASON                COUNT",
            "spa.rejected  bad_tag               4",
            "auth.refused  agent gw3 is revoked  1",
        ]
    );
    let asked = SystemTime::now();
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["status", "--since", "2h", "-o", "json"])).expect("json");
    assert_eq!(
        json["agents"],
        serde_json::json!({
            "connected": 1, "stale": 2, "never_connected": 1, "not_enrolled": 0, "revoked": 1,
            "behind": 3
        })
    );
    assert_eq!(
        (
            json["config_version"].as_u64(),
            json["open_grants"].as_u64()
        ),
        (Some(7), Some(1))
    );
    assert_eq!(
        json["refusals"][0],
        serde_json::json!({"kind": "spa.rejected", "reason": "bad_tag", "count": 4})
    );
    assert!(json["refusals_since"].is_string());
    // The window goes out as a time: one hour ago by default, --since otherwise.
    let queries = ctl.fake.status_queries.lock().expect("lock");
    let ago = |q: &knockgate_proto::api::FleetStatusRequest| {
        let now_ms = asked
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        i64::try_from(now_ms).expect("ms") - q.since_unix_ms
    };
    assert!(
        (3_540_000..=3_660_000).contains(&ago(&queries[0])),
        "{queries:?}"
    );
    assert!(
        (7_140_000..=7_260_000).contains(&ago(&queries[1])),
        "{queries:?}"
    );
}

#[test]
fn agent_add_prints_the_enrol_command() {
    let ctl = Controller::start("127.0.0.1");
    let out = ctl.ok(&[
        "-o",
        "json",
        "agent",
        "add",
        "gw9",
        "--label",
        "role=edge",
        "--label",
        "site=par",
        "--address",
        "203.0.113.9",
        "--token-ttl",
        "2h",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let fp = "ab".repeat(32);
    assert_eq!(json["name"], "gw9");
    assert_eq!(json["token"], "tok-gw9");
    assert_eq!(json["ca_sha256"], fp.as_str());
    assert_eq!(json["expires_at"], "2025-06-01T14:00:00Z");
    assert_eq!(
        json["command"],
        format!(
            "knockgate-agent enroll --config agent.toml --controller {} --token tok-gw9 --ca-sha256 {fp}",
            ctl.url
        )
    );
    let req = ctl.fake.added_agents.lock().expect("lock")[0].clone();
    assert_eq!(req.labels.len(), 2);
    assert_eq!(req.labels["site"], "par");
    assert_eq!(
        (req.address.as_str(), req.token_ttl_secs),
        ("203.0.113.9", 7200)
    );

    let table = ctl.ok(&["agent", "add", "gw8"]);
    assert!(table.starts_with("agent gw8 added\n"), "{table}");
    assert!(table.contains("--token tok-gw8 --ca-sha256"), "{table}");
    assert_eq!(
        ctl.fake.added_agents.lock().expect("lock")[1].token_ttl_secs,
        3600
    );
}

#[test]
fn refusals_are_one_line_and_exit_1() {
    let ctl = Controller::start("127.0.0.1");
    let id = ctl.identity.clone();
    ctl.fails(&id, &["user", "show", "bob"], 1, "no user named bob");
    ctl.fails(
        &id,
        &["user", "add", "taken"],
        1,
        "a user named taken already exists",
    );
    ctl.fails(&id, &["policy", "show", "ssh"], 1, "no policy named ssh");
    ctl.fails(&id, &["agent", "revoke", "nope"], 1, "no agent named nope");
    ctl.fails(&id, &["grant", "revoke", "99"], 1, "no grant with id 99");
    ctl.fails(
        &id,
        &["policy", "add", "bad", "--open", "tcp/22", "--spa"],
        1,
        "policy name 'bad' is reserved",
    );
    ctl.fails(
        &id,
        &["agent", "revoke", "root"],
        1,
        "the controller refused this identity: admin certificates only",
    );
}

#[test]
fn foreign_identities_are_refused() {
    let ctl = Controller::start("127.0.0.1");
    // A client certificate from another CA: the controller's TLS refuses it.
    let other = TestCa::new("other ca");
    let stranger = ctl.dir.path().join("stranger.pem");
    std::fs::write(&stranger, identity_pem(&other.admin("root"), &ctl.ca)).expect("write");
    ctl.fails(
        &stranger,
        &["user", "list"],
        1,
        "the controller refused this identity",
    );
    // Trusting another CA: the controller's certificate does not verify.
    let misled = ctl.dir.path().join("misled.pem");
    std::fs::write(&misled, identity_pem(&ctl.ca.admin("root"), &other)).expect("write");
    ctl.fails(&misled, &["user", "list"], 1, "UnknownIssuer");
}

/// A UDP socket standing for gw1, its address, and a controller that lists gw1 there.
fn gw1_and_controller() -> (UdpSocket, String, Controller) {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let gw = receiver.local_addr().expect("addr").to_string();
    let ctl = Controller::start(&gw);
    (receiver, gw, ctl)
}

#[test]
fn user_add_writes_a_profile_knocker_opens_with() {
    let (receiver, gw, ctl) = gw1_and_controller();
    let profile = ctl.dir.path().join("alice.toml");
    user_add_saves_private_files(&ctl, &profile, &gw);

    // A second add to the same file is refused before the controller is asked.
    ctl.fails(
        &ctl.identity,
        &[
            "user",
            "add",
            "alice",
            "--profile-out",
            profile.to_str().expect("utf-8"),
        ],
        64,
        "refusing to overwrite",
    );

    // Every packet is sealed with the key derived for gw1, which is what gw1's agent
    // holds; the root keys open none of them.
    native_packet_opens_with_the_gw1_key_only(&receiver, &profile);
    fwknop_packet_opens_with_the_gw1_keys_only(&receiver, &profile);
    profile_carries_rotation_and_one_time_keys(&receiver, &profile);
    json_carries_no_keys(&ctl);
}

/// `user add alice --profile-out` names the gateway, prints no key, and writes the
/// profile and its fwknoprc with mode 0600.
fn user_add_saves_private_files(ctl: &Controller, profile: &Path, gw: &str) {
    let out = ctl.ok(&[
        "user",
        "add",
        "alice",
        "--group",
        "ops",
        "--profile-out",
        profile.to_str().expect("utf-8"),
    ]);
    assert!(out.starts_with("user alice added\n"), "{out}");
    assert!(out.contains(&format!("gw1 ({gw})")), "{out}");
    assert!(
        !out.contains(&knockgate_cli::profile::encode_key(&SPA_KEY)),
        "no key on stdout"
    );
    for path in [
        profile.to_path_buf(),
        ctl.dir.path().join("alice.toml.fwknoprc"),
    ] {
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let rc = std::fs::read_to_string(ctl.dir.path().join("alice.toml.fwknoprc")).expect("rc");
    assert!(
        rc.contains("[gw1]\nSPA_SERVER 127.0.0.1\nSPA_SERVER_PORT"),
        "{rc}"
    );
}

/// Runs `knocker open gw1 --method METHOD` with `profile` and returns the packet
/// `receiver` (gw1) got.
fn knocker(receiver: &UdpSocket, profile: &Path, method: &str) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(["open", "gw1", "--profile"])
        .arg(profile)
        .args(["--method", method, "--timeout", "60s"])
        .output()
        .expect("run knocker");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut buf = [0u8; 2048];
    let (len, _) = receiver.recv_from(&mut buf).expect("packet");
    buf[..len].to_vec()
}

fn native_packet_opens_with_the_gw1_key_only(receiver: &UdpSocket, profile: &Path) {
    let native = knocker(receiver, profile, "spa");
    let gw1_key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw1").expect("derive");
    let req = spa::open(&gw1_key, &native).expect("native opens");
    assert_eq!((req.gateway.as_str(), req.duration_secs), ("gw1", 60));
    assert!(spa::open(&SpaKey::from_secret(SPA_KEY), &native).is_err());
}

fn fwknop_packet_opens_with_the_gw1_keys_only(receiver: &UdpSocket, profile: &Path) {
    let keys = knockgate_proto::scope::gateway_fwknop_keys(
        &FWKNOP_KEY,
        &FWKNOP_HMAC_KEY,
        DigestType::Sha256,
        "gw1",
    )
    .expect("keys");
    let wire = knocker(receiver, profile, "fwknop");
    let roots = FwknopKeys::new(
        FWKNOP_KEY.to_vec(),
        FWKNOP_HMAC_KEY.to_vec(),
        DigestType::Sha256,
    )
    .expect("keys");
    assert!(
        fwknop::decode(&roots, &wire).is_err(),
        "root keys do not open it"
    );
    let req = fwknop::decode(&keys, &wire).expect("fwknop decodes");
    assert_eq!((req.user.as_str(), req.client_timeout), ("alice", Some(60)));
}

/// The rotating parameters the controller sent are in the profile, and the
/// rotating secret makes one-time keys.
fn profile_carries_rotation_and_one_time_keys(receiver: &UdpSocket, profile: &Path) {
    let text = std::fs::read_to_string(profile).expect("profile");
    assert!(
        text.contains(
            "[[gateway.rotating]]\npolicy = \"ssh\"\nlength = 4\nprotos = \"both\"\n\
             port_lo = 20000\nport_hi = 60000\nwindow_secs = 30\nexclude = [22]\n"
        ),
        "{text}"
    );
    let otk0 = knockgate_proto::scope::gateway_otk(&[3; 32], "gw1", 0).expect("derive");
    let req = spa::open(&otk0, &knocker(receiver, profile, "otk")).expect("one-time key 0 opens");
    assert_eq!((req.gateway.as_str(), req.duration_secs), ("gw1", 60));
}

/// JSON never carries keys either.
fn json_carries_no_keys(ctl: &Controller) {
    let other = ctl.dir.path().join("bob.toml");
    let out = ctl.ok(&[
        "-o",
        "json",
        "user",
        "rotate-keys",
        "bob",
        "--profile-out",
        other.to_str().expect("utf-8"),
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["user"]["name"], "bob");
    assert_eq!(json["gateways"][0]["name"], "gw1");
    assert_eq!(json["fwknoprc"], format!("{}.fwknoprc", other.display()));
    assert!(!out.contains(&knockgate_cli::profile::encode_key(&SPA_KEY)));
}

#[test]
fn user_profile_update_keeps_the_keys_and_lists_gateways_now() {
    let (receiver, gw, ctl) = gw1_and_controller();
    let profile = ctl.dir.path().join("alice.toml");
    let path = profile.to_str().expect("utf-8");
    ctl.ok(&["user", "add", "alice", "--profile-out", path]);
    let user_table = |text: &str| text[..text.find("[[gateway]]").expect("gateway")].to_owned();
    let before = std::fs::read_to_string(&profile).expect("profile");
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    let out = ctl.ok(&["user", "profile", "alice", "--update", path]);
    assert!(
        out.starts_with(&format!(
            "profile {path} of user alice updated (fwknop: {path}.fwknoprc): \
             gateways added: gw3; removed: none\nGATEWAY  ADDRESS"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "gw1      {gw}  changed  ssh (tcp/22: spa,fwknop,rotating,otk) web (tcp/443: spa,fwknop)"
        )),
        "{out}"
    );
    assert!(
        !out.contains(&knockgate_cli::profile::encode_key(&SPA_KEY)),
        "no key on stdout"
    );
    let after = std::fs::read_to_string(&profile).expect("profile");
    assert_eq!(user_table(&after), user_table(&before), "the keys are kept");
    assert!(
        after.contains("[[gateway.policy]]\nname = \"web\"\nopen = [\"tcp/443\"]\n"),
        "{after}"
    );
    assert!(
        after.contains("[[gateway]]\nname = \"gw3\"\naddress = \"203.0.113.9\""),
        "{after}"
    );
    assert!(
        after.contains("[[gateway.rotating]]\npolicy = \"ssh\""),
        "{after}"
    );
    let rc = std::fs::read_to_string(format!("{path}.fwknoprc")).expect("rc");
    assert!(rc.contains("\n[gw3]\nSPA_SERVER 203.0.113.9\n"), "{rc}");
    for file in [profile.clone(), ctl.dir.path().join("alice.toml.fwknoprc")] {
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // Again, as JSON: nothing changes any more.
    let out = ctl.ok(&["-o", "json", "user", "profile", "alice", "--update", path]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["user"], "alice");
    assert_eq!(json["added"], serde_json::json!([]));
    assert_eq!(json["changed"], serde_json::json!([]));
    assert_eq!(json["gateways"][1]["name"], "gw3");
    assert_eq!(json["gateways"][1]["change"], "unchanged");
    assert_eq!(json["fwknoprc"], format!("{path}.fwknoprc"));

    // knocker now knows two policies at gw1 that spa opens, and one otk opens.
    let out = Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(["open", "gw1", "--profile", path])
        .output()
        .expect("run knocker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "knocker: error: gateway gw1: policies ssh (tcp/22), web (tcp/443) allow spa: pass --access"
    );
    let otk0 = knockgate_proto::scope::gateway_otk(&[3; 32], "gw1", 0).expect("derive");
    let req = spa::open(&otk0, &knocker(&receiver, &profile, "otk")).expect("opens");
    assert_eq!(req.access, [knockgate_proto::Access::tcp(22)]);

    user_profile_update_refusals(&ctl, path);
}

/// The wrong user's profile, a missing file, an unknown or disabled user: one line each,
/// and the profile untouched.
fn user_profile_update_refusals(ctl: &Controller, path: &str) {
    let before = std::fs::read_to_string(path).expect("profile");
    let id = ctl.identity.clone();
    ctl.fails(
        &id,
        &["user", "profile", "bob", "--update", path],
        64,
        &format!("profile '{path}' belongs to user 'alice', not 'bob'"),
    );
    let missing = ctl.dir.path().join("missing.toml");
    let missing = missing.to_str().expect("utf-8");
    ctl.fails(
        &id,
        &["user", "profile", "bob", "--update", missing],
        64,
        "cannot read profile",
    );
    for (name, code, needle) in [
        ("zed", 1, "no user named zed"),
        ("carol", 1, "user carol is disabled"),
    ] {
        let other = ctl.dir.path().join(format!("{name}.toml"));
        std::fs::write(&other, format!("[user]\nname = \"{name}\"\n")).expect("write");
        let other = other.to_str().expect("utf-8");
        ctl.fails(
            &id,
            &["user", "profile", name, "--update", other],
            code,
            needle,
        );
        assert_eq!(
            std::fs::read_to_string(other).expect("profile"),
            format!("[user]\nname = \"{name}\"\n")
        );
    }
    ctl.fails(&id, &["user", "profile", "alice"], 64, "--update <FILE>");
    assert_eq!(std::fs::read_to_string(path).expect("profile"), before);
}

#[test]
fn audit_prints_oldest_first_and_follows() {
    let ctl = Controller::start("127.0.0.1");
    let table = ctl.ok(&["audit", "--kind", "spa", "--since", "1h"]);
    let ids: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["1", "2"], "{table}");
    assert!(table.starts_with("ID  TIME"), "{table}");
    assert!(table.contains("n=1"), "{table}");
    let q = ctl.fake.audit_queries.lock().expect("lock")[0].clone();
    assert_eq!((q.kind.as_str(), q.limit, q.after_id), ("spa", 100, 0));
    assert!(q.since_unix_ms > 0);

    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-o", "json", "audit"])).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(3));
    assert_eq!(json[0]["detail"]["n"], 1);

    follow_prints_new_events_until_ctrl_c(&ctl);
    follow_ends_quietly_when_the_reader_goes(&ctl);
}

/// `audit --follow` prints what there is, then each new event, asking only after
/// the last id seen; Ctrl-C ends it cleanly.
fn follow_prints_new_events_until_ctrl_c(ctl: &Controller) {
    let mut child = ctl
        .command(
            &ctl.identity,
            &["-o", "json", "audit", "--follow", "--limit", "2"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_id = || -> i64 {
        let line = lines.next().expect("a line").expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(&line).expect("one object per line");
        v["id"].as_i64().expect("id")
    };
    assert_eq!([next_id(), next_id(), next_id()], [1, 2, 3]);
    ctl.fake
        .events
        .lock()
        .expect("lock")
        .push(event(4, "knock.sequence"));
    assert_eq!(next_id(), 4);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "Ctrl-C ends --follow cleanly: {out:?}"
    );
    let after: Vec<i64> = ctl
        .fake
        .audit_queries
        .lock()
        .expect("lock")
        .iter()
        .map(|q| q.after_id)
        .collect();
    assert!(
        after.windows(2).all(|w| w[0] <= w[1]),
        "after_id only moves on: {after:?}"
    );
}

/// A reader that goes away ends --follow quietly.
fn follow_ends_quietly_when_the_reader_goes(ctl: &Controller) {
    let mut child = ctl
        .command(&ctl.identity, &["audit", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut header = String::new();
    stdout.read_line(&mut header).expect("header");
    assert!(header.starts_with("ID  TIME"), "{header}");
    drop(stdout);
    ctl.fake
        .events
        .lock()
        .expect("lock")
        .push(event(5, "knock.sequence"));
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn small_verbs() {
    let ctl = Controller::start("127.0.0.1");
    assert_eq!(ctl.ok(&["agent", "revoke", "gw1"]), "agent gw1 revoked\n");
    assert_eq!(ctl.ok(&["user", "remove", "alice"]), "user alice removed\n");
    assert!(
        ctl.ok(&["user", "disable", "alice"])
            .contains("status:      disabled")
    );
    assert!(
        ctl.ok(&["user", "enable", "alice"])
            .contains("status:      active")
    );
    assert_eq!(
        ctl.ok(&["grant", "revoke", "--user", "alice"]),
        "revoked 3 grants\n"
    );
    assert_eq!(ctl.ok(&["grant", "revoke", "5"]), "grant 5 revoked\n");
    assert_eq!(
        ctl.ok(&["-o", "json", "grant", "revoke", "5"]),
        "{\n  \"revoked\": 1\n}\n"
    );
    assert_eq!(
        ctl.ok(&["grant", "list", "--all"]),
        "ID  AGENT  USER  SRC  ACCESS  POLICY  OPENED  EXPIRES  STATE\n"
    );
    assert_eq!(ctl.ok(&["-o", "json", "policy", "list"]), "[]\n");
    let out = ctl.ok(&[
        "policy",
        "add",
        "ssh",
        "--open",
        "tcp/22",
        "--groups",
        "ops",
        "--agents",
        "role=edge",
        "--spa",
    ]);
    assert!(out.starts_with("policy ssh added\nname:"), "{out}");
    assert!(out.contains("agents:        role=edge"), "{out}");
    assert!(out.contains("one-time keys: -"), "{out}");
    let out = ctl.ok(&["user", "add", "carol"]);
    assert!(out.contains("profile:     not saved"), "{out}");
    // The controller issued keys but they cannot be saved: say how to recover.
    let nowhere = ctl.dir.path().join("no-such-dir").join("dave.toml");
    let id = ctl.identity.clone();
    ctl.fails(&id, &["user", "add", "dave", "--profile-out", nowhere.to_str().expect("utf-8")], 1,
        "user dave has new keys but the profile could not be saved (issue new ones with 'knockadm user rotate-keys dave --profile-out FILE'): cannot write");
    let users = ctl.ok(&["user", "list"]);
    assert!(users.starts_with("NAME   GROUPS  STATUS"), "{users}");
}
