//! One-time key knock-to-open, including the agent's claim round trip to the controller,
//! beside plain native SPA through the same controller-managed agent. Namespaces: a
//! controller, one gateway and a client on one bridge; 30 runs per mode, each timed from
//! the packet sent to the first completed TCP handshake with the protected port.
//!
//! `cargo build --release --workspace --bins && cargo bench -p knockgate-tests --bench otk_to_open [-- --runs 30]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use knockgate_cli::spa::{build_spa, send_spa};
use knockgate_proto::Access;
use knockgate_proto::rotation::derive_otk;
use knockgate_proto::spa::SpaKey;
use knockgate_tests::agent::Workdir;
use knockgate_tests::bench_arg;
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::sh;
use knockgate_tests::probe::{Listener, first_connect, report};

fn key_from_profile(path: &std::path::Path, field: &str) -> [u8; 32] {
    let user = knockgate_cli::profile::read_profile(path)
        .expect("profile")
        .user;
    let text = match field {
        "spa_key" => user.spa_key.clone(),
        _ => user.rotating_secret.clone(),
    };
    let b = base64::engine::general_purpose::STANDARD
        .decode(text.expect(field))
        .expect("b64");
    b.try_into().expect("32 bytes")
}

fn main() {
    let runs: usize = bench_arg("--runs").unwrap_or(30);
    let fleet = Fleet::new(&["ctl", "gw1", "client"]);
    let work = Workdir::new();
    let ctl = Controller::start(
        &fleet.host(0).ns,
        &work.path.join("ctl"),
        "10.240.1.1",
        None,
    );
    let _sshd = Listener::start(&fleet.host(1).ns, 22);
    let (_gw1, _) = enroll_and_start(&ctl, &fleet.host(1).ns, &work, "gw1", "role=edge");
    assert!(
        wait_applied(&ctl, Duration::from_secs(10)),
        "agent connected"
    );
    let profile = admit_alice(&ctl, &work);
    let spa_key = SpaKey::from_secret(key_from_profile(&profile, "spa_key"));
    let secret = key_from_profile(&profile, "rotating_secret");

    for mode in ["spa", "otk"] {
        let (lat, failed) = measure(&fleet, mode, runs, &spa_key, &secret);
        report(
            if mode == "otk" {
                "one-time key (with claim)"
            } else {
                "native spa (same agent)"
            },
            &lat,
            failed,
        );
    }
}

/// Adds alice (her profile written to the work dir, returned) and a policy that
/// opens tcp/22 on gw1 to her by native SPA and by one-time key; waits until gw1
/// applied it.
fn admit_alice(ctl: &Controller, work: &Workdir) -> PathBuf {
    let profile = work.path.join("alice.toml");
    let out = ctl.knockadm(&[
        "user",
        "add",
        "alice",
        "--profile-out",
        profile.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctl.knockadm_json(&[
        "policy",
        "add",
        "ssh",
        "--open",
        "tcp/22",
        "--users",
        "alice",
        "--agents",
        "role=edge",
        "--spa",
        "--otk",
        "--timeout",
        "30s",
    ]);
    assert!(wait_applied(ctl, Duration::from_secs(5)), "policy applied");
    profile
}

/// `runs` timed knocks in `mode` (`spa` under alice's gateway key, `otk` under
/// her next one-time key each time), after one warm-up, each from an empty
/// grant set. Returns the latencies and how many did not open.
fn measure(
    fleet: &Fleet,
    mode: &str,
    runs: usize,
    spa_key: &SpaKey,
    secret: &[u8; 32],
) -> (Vec<Duration>, usize) {
    let gw1 = fleet.host(1);
    let mut lat = Vec::new();
    let mut failed = 0;
    for i in 0..=runs {
        sh(gw1
            .ns
            .cmd("nft")
            .args(["flush", "set", "inet", "knockgate", "grants4"]));
        // Let the controller refill the agent's key stock after the last claim.
        std::thread::sleep(Duration::from_millis(if mode == "otk" { 150 } else { 50 }));
        let key = if mode == "otk" {
            derive_otk(secret, i as u64)
        } else {
            spa_key.clone()
        };
        let r = knock_to_open(fleet, key);
        if i == 0 {
            continue; // warm-up
        }
        match r {
            Some(d) => lat.push(d),
            None => failed += 1,
        }
    }
    (lat, failed)
}

/// From the client: one SPA packet under `key` to gw1, timed to the first
/// completed handshake with its tcp/22 (`None`: not within 2 s).
fn knock_to_open(fleet: &Fleet, key: SpaKey) -> Option<Duration> {
    let gw1 = fleet.host(1);
    let dst = SocketAddr::new(gw1.addr(), 22);
    let spa_port = SocketAddr::new(gw1.addr(), 62201);
    fleet.host(2).ns.run(move || {
        let p = build_spa(
            &key,
            "gw1",
            vec![Access::tcp(22)],
            None,
            0,
            SystemTime::now(),
        )
        .expect("build");
        send_spa(spa_port, &p).expect("send");
        first_connect(dst, Instant::now(), Duration::from_secs(2))
    })
}
