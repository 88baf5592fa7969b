//! A controller-fed engine for the rotating-sequence and one-time-key tests: a fixed wall
//! clock, the fake firewall, a real report spool and replay store in a temporary state
//! directory, and the far end of the claim link held by the test (it plays the claim
//! task: it reads the engine's claims and answers them by hand).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knockgate_agent_core::config::{
    Config, MaterialDef, Origin, OtkDef, OtkOffline, PolicyDef, SequenceDef, User,
};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::packet::{KnockStep, tcp_flags};
use knockgate_agent_core::ruleset::Proto;
use knockgate_proto::rotation::{RotationParams, derive_otk, derive_sequence, window_index};
use knockgate_proto::spa::{SpaRequest, seal};
use tokio::sync::{Notify, mpsc};

use crate::capture::{KnockMsg, Tuning};
use crate::engine::{ClaimJob, ClaimLink, ClaimOutcome, Clock, Engine, Update};
use crate::firewall::fake::{FakeFirewall, FakeState};
use crate::otk_store::{BurnedKeys, OfflineClaims};
use crate::replay_store::ReplayStore;
use crate::report::{Record, spool::Spool};

/// A window boundary for 30 s windows.
pub const T0: u64 = 1_800_000_000;
pub const ALICE: [u8; 32] = [0x42; 32];
pub const BOB: [u8; 32] = [7; 32];

/// The window `T0` is in.
pub fn w0() -> u64 {
    window_index(T0, 30)
}

/// A wall clock the test sets (unix ms).
pub struct FakeClock(pub Arc<AtomicU64>);

impl Clock for FakeClock {
    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

pub struct Rig {
    pub engine: Engine,
    pub fw: Arc<Mutex<FakeState>>,
    pub spool: Arc<Mutex<Spool>>,
    /// Unix ms.
    pub clock: Arc<AtomicU64>,
    pub jobs: mpsc::Receiver<ClaimJob>,
    pub live: Arc<AtomicBool>,
    pub offline: Arc<Mutex<OfflineClaims>>,
    pub tuning: Arc<Tuning>,
    pub dir: tempfile::TempDir,
}

/// alice and bob, with no keys of their own: rotating sequences and one-time keys only.
/// "rot" (tcp/2222) is opened by both users' rotating sequences; "keys" (tcp/443) by
/// alice's one-time keys, denied offline; "keys-local" (tcp/8443) by bob's, granted
/// offline.
pub fn users_and_policies() -> (Vec<User>, Vec<PolicyDef>) {
    let user = |name: &str| User {
        name: name.into(),
        spa_key: None,
        fwknop: None,
    };
    let policy = |name: &str, open: &str, users: &[&str]| PolicyDef {
        name: name.into(),
        open: vec![open.parse().expect("access")],
        timeout: Duration::from_secs(30),
        max_timeout: None,
        sequence: vec![],
        sequence_timeout: None,
        min_gap: None,
        max_gap: None,
        tcp_flags: None,
        users: users.iter().map(|u| (*u).to_string()).collect(),
        spa: false,
        fwknop: false,
        rotating: false,
        window_secs: None,
        otk: None,
        sealed: false,
        require_os: vec![],
        forward: vec![],
    };
    let mut rot = policy("rot", "tcp/2222", &["alice", "bob"]);
    rot.rotating = true;
    let mut keys = policy("keys", "tcp/443", &["alice"]);
    keys.otk = Some(OtkOffline::Deny);
    let mut local = policy("keys-local", "tcp/8443", &["bob"]);
    local.otk = Some(OtkOffline::Local);
    (vec![user("alice"), user("bob")], vec![rot, keys, local])
}

/// A user's rotating sequence at gw1 in `window`, as the controller derives it.
pub fn sequence(secret: &[u8; 32], window: u64) -> Vec<KnockStep> {
    let params = RotationParams {
        exclude: vec![443, 2222, 8443],
        ..RotationParams::default()
    };
    derive_sequence(secret, "gw1", window, &params)
        .expect("derive")
        .into_iter()
        .map(|a| KnockStep::Port {
            proto: a.proto,
            port: a.port,
        })
        .collect()
}

/// Both users' sequences for `windows`, and one-time keys `counters` of each.
pub fn material(windows: RangeInclusive<u64>, counters: RangeInclusive<u64>) -> MaterialDef {
    let mut m = MaterialDef::default();
    for (user, secret) in [("alice", ALICE), ("bob", BOB)] {
        for window in windows.clone() {
            m.rotating.push(SequenceDef {
                user: user.into(),
                policy: "rot".into(),
                window,
                knocks: sequence(&secret, window),
            });
        }
        for counter in counters.clone() {
            m.otks.push(OtkDef {
                user: user.into(),
                counter,
                key: derive_otk(&secret, counter),
            });
        }
    }
    m
}

fn base(dir: &std::path::Path) -> Config {
    Config::parse(&format!(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = {dir:?}\n\
         [controller]\nurl = \"https://controller.example:7443\"\n"
    ))
    .expect("base")
}

/// An update as the controller would push it.
pub fn update(
    dir: &std::path::Path,
    users: Vec<User>,
    policies: Vec<PolicyDef>,
    m: MaterialDef,
) -> Update {
    let config = base(dir)
        .with_policies(Origin::Controller, users, policies)
        .expect("valid");
    Update::build(config)
        .expect("build")
        .with_material(m)
        .expect("material fits")
}

/// The engine at `T0 + 5 s`, holding windows w0-1 ..= w0+3 and keys 0 ..= 3 of both users.
pub fn rig() -> Rig {
    rig_in(tempfile::tempdir().expect("tmp"))
}

/// The same over an existing state directory (a restarted agent).
pub fn rig_in(dir: tempfile::TempDir) -> Rig {
    let (users, policies) = users_and_policies();
    let u = update(
        dir.path(),
        users,
        policies,
        material(w0() - 1..=w0() + 3, 0..=3),
    );
    let config = u.config().clone();
    let fw = FakeFirewall::default();
    let state = fw.state.clone();
    let mut detector = SpaDetector::new(&config);
    let store = ReplayStore::open(dir.path(), detector.replay_cache(), T0).expect("store");
    let (reporter, spooler) = crate::report::start(dir.path()).expect("spool");
    let clock = Arc::new(AtomicU64::new((T0 + 5) * 1000));
    let (jobs_tx, jobs) = mpsc::channel(16);
    let live = Arc::new(AtomicBool::new(true));
    let offline = Arc::new(Mutex::new(
        OfflineClaims::open(dir.path()).expect("offline"),
    ));
    let tuning = Tuning::new(String::new(), None);
    let link = ClaimLink {
        jobs: jobs_tx,
        live: live.clone(),
        offline: offline.clone(),
        offline_added: Arc::new(Notify::new()),
    };
    let mut engine = Engine::new(&config, Box::new(fw), Some((detector, store)))
        .expect("engine")
        .with_reporter(reporter)
        .with_clock(Box::new(FakeClock(clock.clone())))
        .with_tuning(tuning.clone())
        .with_claims(Some(link), BurnedKeys::open(dir.path()).expect("burned"))
        .with_rotating_store(dir.path())
        .expect("rotating store");
    engine.set_material(u.material().clone());
    Rig {
        engine,
        fw: state,
        spool: spooler.spool.clone(),
        clock,
        jobs,
        live,
        offline,
        tuning,
        dir,
    }
}

impl Rig {
    /// The controller's answer to claim `id`.
    pub fn claimed(&mut self, id: u64, outcome: ClaimOutcome) {
        self.engine
            .handle_input(crate::engine::Input::Claimed { id, outcome });
    }

    /// Enforce `update` as a push from the controller would.
    pub fn apply(&mut self, update: Update) -> Result<(), String> {
        let now = self.engine.now();
        let r = self.engine.apply(update, now);
        self.engine.drain(now);
        r
    }

    /// Let the engine notice the time.
    pub fn tick(&mut self) {
        self.tick_after(Duration::ZERO);
    }

    /// Let the engine notice the time, `later` on the monotonic clock.
    pub fn tick_after(&mut self, later: Duration) {
        let mut now = self.engine.now();
        now.mono += later;
        self.engine.gateway.handle_timeout(now);
        self.engine.drain(now);
    }

    pub fn set_time(&self, unix_secs: u64) {
        self.clock.store(unix_secs * 1000, Ordering::Relaxed);
    }

    pub fn knock(&mut self, src: &str, kinds: &[KnockStep]) {
        for &kind in kinds {
            self.engine
                .handle_input(crate::engine::Input::Knock(KnockMsg {
                    at: Instant::now(),
                    src: src.parse().expect("ip"),
                    kind,
                    tcp_flags: tcp_flags::SYN,
                    payload: None,
                    syn: None,
                }));
        }
    }

    /// A native SPA packet sealed with one-time key `counter` of `secret`, asking for
    /// `access`, stamped with the rig's clock.
    pub fn otk_spa(&mut self, src: &str, secret: &[u8; 32], counter: u64, access: &str) {
        let now = self.clock.load(Ordering::Relaxed) / 1000;
        let req = SpaRequest {
            timestamp: now,
            nonce: rand::random(),
            gateway: "gw1".into(),
            allow_ip: None,
            access: vec![access.parse().expect("access")],
            duration_secs: 0,
        };
        let packet = seal(&derive_otk(secret, counter), &req, rand::random()).expect("seal");
        self.engine
            .handle_input(crate::engine::Input::Knock(KnockMsg {
                at: Instant::now(),
                src: src.parse().expect("ip"),
                kind: KnockStep::Port {
                    proto: Proto::Udp,
                    port: 62201,
                },
                tcp_flags: 0,
                payload: Some(packet.into()),
                syn: None,
            }));
    }

    /// The grants the firewall holds, as "addr proto/port".
    pub fn open(&self) -> Vec<String> {
        self.fw
            .lock()
            .expect("lock")
            .open
            .keys()
            .map(ToString::to_string)
            .collect()
    }

    /// Events of `kind` spooled so far (waits for the writer to catch up to `want`).
    pub fn events(&self, kind: &str, want: usize) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<Record> = self
                .spool
                .lock()
                .expect("lock")
                .peek(10_000)
                .expect("peek")
                .into_iter()
                .filter(|e| e.kind == kind)
                .collect();
            if got.len() >= want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The capture filter the engine asked for last.
    pub fn filter(&self) -> String {
        self.tuning.get().map(|(f, _)| f).unwrap_or_default()
    }
}
