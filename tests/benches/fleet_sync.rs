//! Fleet sync: 100 simulated agents (real enrolment, real mutual TLS, one Sync stream each,
//! on loopback) connected to one controller on SQLite, or split evenly between
//! `--replicas N` controllers sharing a throwaway PostgreSQL (`--postgres` for one on
//! PostgreSQL). Measures, in one run:
//!
//! - enrolment throughput (32 enrolments in flight);
//! - the controller's resident memory per connected agent (all replicas together);
//! - the time from `AddPolicy` (on the first replica) until every agent has received the
//!   change and acknowledged it (median and p99 over rounds);
//! - a claim storm: every agent claims a one-time key at once (8 users, keys drawn so that
//!   many agents race for the same key), claims decided per second and their latency, the
//!   outcomes, exactly one winner per key, and the time until every agent holds the new stock;
//! - a reconnect storm: every controller is killed and restarted, and the time until every
//!   agent is back and has acknowledged its config.
//!
//! `cargo build --release --workspace --bins && cargo bench -p knockgate-tests --bench fleet_sync [-- --agents 1000,4000,10000 --rounds 30 --replicas 2 --controller PATH]`
//! (`--controller`: an older controller build to compare with.)
//! (`KGT_FLEET_LOG=1` shows the controllers' logs.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::api::enrollment_client::EnrollmentClient;
use knockgate_proto::api::{
    Access, AddAgentRequest, AddUserRequest, AgentMessage, Applied, ClaimRequest, EnrollRequest,
    FleetStatusRequest, Hello, PolicySpec, Proto, agent_message, controller_message,
};
use knockgate_tests::bench_arg;
use knockgate_tests::pg::Postgres;
use knockgate_tests::procfs;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The first replica's port; replica `r` listens on `PORT + r`.
const PORT: u16 = 47443;

/// The controllers under test: one data dir each (the first made by `init`, the others
/// reading its PKI with `--pki-dir`), and the PostgreSQL they share, if any.
struct Ctl {
    replicas: Vec<Child>,
    root: PathBuf,
    db: Option<String>,
    /// Dropped after the replicas (field order).
    _pg: Option<Postgres>,
}

impl Ctl {
    fn dir(&self, r: usize) -> PathBuf {
        self.root.join(format!("r{r}"))
    }

    /// SIGKILL every replica and start them again on the same data dirs and ports: every
    /// agent reconnects.
    fn restart(&mut self) {
        for c in &mut self.replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in 0..self.replicas.len() {
            self.replicas[r] = run_controller(&self.dir(r), &self.dir(0), r, self.db.as_deref());
        }
    }

    /// Resident memory of all replicas together.
    fn rss_kib(&self) -> u64 {
        self.replicas.iter().map(|c| procfs::rss_kib(c.id())).sum()
    }

    /// CPU time of all replicas together, so far.
    fn cpu_time(&self) -> Duration {
        self.replicas.iter().map(|c| procfs::cpu_time(c.id())).sum()
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        for c in &mut self.replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// (admin cert, admin key, CA cert) from the controller's admin.pem bundle.
fn pems(text: &str) -> (String, String, String) {
    let blocks: Vec<String> = text
        .split("-----BEGIN ")
        .skip(1)
        .map(|b| format!("-----BEGIN {b}"))
        .collect();
    let certs: Vec<&String> = blocks
        .iter()
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE"))
        .collect();
    let key = blocks
        .iter()
        .find(|b| b.contains("PRIVATE KEY"))
        .expect("key in admin.pem");
    (
        certs[0].clone(),
        key.clone(),
        certs.last().expect("ca in admin.pem").to_string(),
    )
}

/// Simulated agent `i`'s own source address (127.1.0.1, 127.1.0.2, …: all loopback), so
/// that, as in a real fleet, the controller's per-source handshake limit is per agent.
fn source(i: usize) -> std::net::IpAddr {
    assert!(i < 64_000, "at most 64,000 simulated agents");
    std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8).into()
}

/// The port of the replica simulated agent `i` talks to: agents are split evenly.
fn port_of(i: usize, replicas: usize) -> u16 {
    PORT + (i % replicas) as u16
}

async fn try_channel(
    ca: &str,
    identity: Option<(&str, &str)>,
    from: Option<std::net::IpAddr>,
    port: u16,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .local_address(from)
        .connect()
        .await
}

/// A channel to the first replica, waiting up to 30 s for it to listen.
async fn channel(ca: &str, identity: Option<(&str, &str)>) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_channel(ca, identity, None, PORT).await {
            Ok(ch) => return ch,
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What a simulated agent tells the measuring loop: its index, the config version
/// it acknowledged, and when.
type Ack = (usize, u64, Instant);

/// Where every simulated agent's current channel is kept, for the claim storm.
type Channels = Arc<Mutex<Vec<Option<Channel>>>>;

#[tokio::main]
async fn main() {
    // `--agents 1000,4000,10000`: one fleet after the other, each with fresh controllers.
    let sizes: String = bench_arg("--agents").unwrap_or_else(|| "100".to_owned());
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|n| match n.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("fleet_sync: --agents: expected counts like 1000,4000, not {n:?}");
                std::process::exit(64);
            }
        })
        .collect();
    let rounds: usize = bench_arg("--rounds").unwrap_or(30);
    let replicas: usize = bench_arg("--replicas").unwrap_or(1).max(1);
    let postgres = replicas > 1 || std::env::args().any(|a| a == "--postgres");
    for (i, agents) in sizes.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        fleet(agents, rounds, replicas, postgres).await;
    }
}

/// One fleet of `agents` simulated agents against fresh controllers: every measurement,
/// printed.
async fn fleet(agents: usize, rounds: usize, replicas: usize, postgres: bool) {
    let mut ctl = start_controllers(replicas, postgres);
    let store = if postgres { "PostgreSQL" } else { "SQLite" };
    println!("fleet: {agents} agents, {replicas} controller replica(s) on {store}");
    let (admin_cert, admin_key, ca) =
        pems(&std::fs::read_to_string(ctl.dir(0).join("admin.pem")).expect("admin.pem"));
    let mut admin = AdminClient::new(channel(&ca, Some((&admin_cert, &admin_key))).await);
    let rss_before = ctl.rss_kib();

    // Enrol and connect every simulated agent; each acks whatever config it receives.
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<Ack>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let enrolled = enroll_all(&admin, &ca, agents, replicas).await;
    let t_enrol = enrolled.1;
    let channels: Channels = Arc::new(Mutex::new(vec![None; agents]));
    let mut tasks = Vec::new();
    for (i, (cert, key)) in enrolled.0.into_iter().enumerate() {
        let agent = Sim {
            i,
            port: port_of(i, replicas),
            cert,
            key: key.serialize_pem(),
        };
        tasks.push(connect(
            &ca,
            agent,
            acks_tx.clone(),
            Arc::clone(&channels),
            stop_rx.clone(),
        ));
    }
    // Everyone has its first config.
    let mut first = 0;
    while first < agents {
        if acks_rx.recv().await.is_some() {
            first += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = ctl.rss_kib();

    let mut lat = Vec::new();
    let mut cpu = Vec::new();
    for r in 0..rounds {
        let before = ctl.cpu_time();
        if let Some(d) = round(&mut admin, &mut acks_rx, agents, r).await {
            lat.push(d);
            cpu.push(ctl.cpu_time() - before);
        }
    }
    let claims = claim_storm(&mut admin, &channels, &mut acks_rx, agents).await;

    // A reconnect storm: the controllers restart and every agent comes back at once.
    ctl.restart();
    let restarted = Instant::now();
    let mut back = vec![false; agents];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while n < agents {
        match tokio::time::timeout_at(deadline, acks_rx.recv()).await {
            Ok(Some((i, _, at))) if at > restarted && !back[i] => {
                back[i] = true;
                n += 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let storm = restarted.elapsed();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "enrolment: {agents} agents in {:.1} s = {:.0} per second ({ENROL_AT_ONCE} at a time)",
        t_enrol.as_secs_f64(),
        agents as f64 / t_enrol.as_secs_f64()
    );
    report(agents, rounds, lat, cpu, rss_before, rss_after);
    claims.report();
    println!(
        "reconnect storm: {n} of {agents} agents back and acknowledged {:.2} s after a controller restart",
        storm.as_secs_f64()
    );
    drop(ctl);
}

/// Enrolments in flight at once.
const ENROL_AT_ONCE: usize = 32;

/// Adds and enrols `agents` agents, [`ENROL_AT_ONCE`] at a time, each at its own
/// replica; returns their credentials in order, and how long it took.
async fn enroll_all(
    admin: &AdminClient<Channel>,
    ca: &str,
    agents: usize,
    replicas: usize,
) -> (Vec<(String, rcgen::KeyPair)>, Duration) {
    let t0 = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(ENROL_AT_ONCE));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..agents {
        let (mut admin, ca, slots) = (admin.clone(), ca.to_owned(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore");
            (i, enroll(&mut admin, &ca, i, port_of(i, replicas)).await)
        });
    }
    let mut out: Vec<Option<(String, rcgen::KeyPair)>> = (0..agents).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, creds) = done.expect("enrolment task");
        out[i] = Some(creds);
    }
    let creds = out.into_iter().map(|c| c.expect("enrolled")).collect();
    (creds, t0.elapsed())
}

/// `knockgate-controller init` in a fresh data dir, then `run` of `replicas` replicas
/// (PostgreSQL when `postgres`), the first on [`PORT`].
fn start_controllers(replicas: usize, postgres: bool) -> Ctl {
    let root = std::env::temp_dir().join(format!("kgt-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let pg = postgres.then(Postgres::start);
    let mut ctl = Ctl {
        replicas: Vec::new(),
        db: pg.as_ref().map(Postgres::url),
        _pg: pg,
        root,
    };
    let out = Command::new(controller_bin())
        .arg("init")
        .arg("--data-dir")
        .arg(ctl.dir(0))
        .output()
        .expect("init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in 0..replicas {
        std::fs::create_dir_all(ctl.dir(r)).expect("replica dir");
        let child = run_controller(&ctl.dir(r), &ctl.dir(0), r, ctl.db.as_deref());
        ctl.replicas.push(child);
    }
    ctl
}

/// The controller binary: `--controller PATH` (an older build, to compare), else this
/// workspace's.
fn controller_bin() -> PathBuf {
    bench_arg("--controller").unwrap_or_else(|| knockgate_tests::bin("knockgate-controller"))
}

/// `run` replica `r` on `PORT + r`, its PKI read from `pki`.
fn run_controller(dir: &Path, pki: &Path, r: usize, db: Option<&str>) -> Child {
    let mut c = Command::new(controller_bin());
    c.arg("run")
        .arg("--data-dir")
        .arg(dir)
        .arg("--pki-dir")
        .arg(pki)
        .args(["--listen", &format!("127.0.0.1:{}", PORT + r as u16)]);
    if let Some(url) = db {
        c.args(["--database-url", url]);
    }
    c.stdout(Stdio::null())
        .stderr(if std::env::var_os("KGT_FLEET_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("run")
}

/// Adds agent `sim{i}` and enrols it (from its own address, at the replica on `port`)
/// as a real agent would: a fresh key, a CSR, the one-time token. Returns its
/// certificate and key.
async fn enroll(
    admin: &mut AdminClient<Channel>,
    ca: &str,
    i: usize,
    port: u16,
) -> (String, rcgen::KeyPair) {
    let name = &format!("sim{i}");
    let token = admin
        .add_agent(AddAgentRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .expect("add agent")
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr");
    let ch = try_channel(ca, None, Some(source(i)), port)
        .await
        .expect("connect");
    let mut enroll = EnrollmentClient::new(ch);
    let cert = enroll
        .enroll(EnrollRequest {
            token,
            csr_pem: csr.pem().expect("pem"),
        })
        .await
        .expect("enroll")
        .into_inner()
        .cert_pem;
    (cert, key)
}

/// One simulated agent: its index, its replica's port, its certificate and key.
struct Sim {
    i: usize,
    port: u16,
    cert: String,
    key: String,
}

/// Simulated agent `agent.i`: keeps a Sync stream open (reconnecting with a jittered
/// backoff from 200 ms, as the agent does), publishes its channel in `channels`,
/// acknowledges every config it receives and tells `acks`, until `stop` changes.
fn connect(
    ca: &str,
    agent: Sim,
    acks: mpsc::UnboundedSender<Ack>,
    channels: Channels,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ca = ca.to_owned();
    tokio::spawn(async move {
        let Sim { i, port, cert, key } = agent;
        let mut delay = Duration::from_millis(200);
        loop {
            if let Ok(ch) = try_channel(&ca, Some((&cert, &key)), Some(source(i)), port).await {
                channels.lock().expect("channels")[i] = Some(ch.clone());
                let mut client = AgentControlClient::new(ch);
                let (tx, rx) = mpsc::channel(8);
                let hello = AgentMessage {
                    msg: Some(agent_message::Msg::Hello(Hello::default())),
                };
                let _ = tx.send(hello).await;
                if let Ok(r) = client
                    .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    let mut inbound = r.into_inner();
                    delay = Duration::from_millis(200);
                    loop {
                        tokio::select! {
                            m = inbound.message() => {
                                let Ok(Some(m)) = m else { break };
                                if let Some(controller_message::Msg::Config(c)) = m.msg {
                                    let _ = tx.send(AgentMessage { msg: Some(agent_message::Msg::Applied(Applied { version: c.version })) }).await;
                                    let _ = acks.send((i, c.version, Instant::now()));
                                }
                            }
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
            // Spread the retries: a fixed fraction of the delay per agent.
            let jitter = delay.mul_f64((i % 97) as f64 / 97.0);
            tokio::select! {
                () = tokio::time::sleep(delay + jitter) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    })
}

/// Users whose one-time keys the claim storm races for.
const OTK_USERS: usize = 8;
/// One-time keys each user has in stock (the controller's `OTK_STOCK`).
const OTK_STOCK: usize = 16;

/// What the claim storm measured.
struct Claims {
    agents: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    outcomes: BTreeMap<String, usize>,
    keys_won: usize,
    stocked_after: Option<Duration>,
}

impl Claims {
    fn report(&self) {
        let mut lat = self.latencies.clone();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "claim storm: {} claims by {} agents at once decided in {:.2} s = {:.0} per second; \
             latency median {:.1} ms, p99 {:.1} ms; {}; {} keys, each won once",
            lat.len(),
            self.agents,
            self.elapsed.as_secs_f64(),
            lat.len() as f64 / self.elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            outcomes.join(", "),
            self.keys_won,
        );
        match self.stocked_after {
            Some(d) => println!(
                "claim storm: every agent acknowledged the new stock {:.2} s after the first claim",
                d.as_secs_f64()
            ),
            None => println!("claim storm: not every agent acknowledged the new stock within 60 s"),
        }
    }
}

/// Every agent claims one of [`OTK_USERS`] × [`OTK_STOCK`] one-time keys at once
/// (agent `i` key `(i mod users, i / users mod stock)`, so agents race for keys);
/// checks that each key is won at most once, then waits until every agent has
/// acknowledged the config version the claims moved the stock to.
async fn claim_storm(
    admin: &mut AdminClient<Channel>,
    channels: &Channels,
    acks_rx: &mut mpsc::UnboundedReceiver<Ack>,
    agents: usize,
) -> Claims {
    for u in 0..OTK_USERS {
        admin
            .add_user(AddUserRequest {
                name: format!("otk{u}"),
                groups: vec!["otk".to_owned()],
            })
            .await
            .expect("add user");
    }
    admin
        .add_policy(PolicySpec {
            name: "otk".to_owned(),
            open: vec![Access {
                proto: Proto::Tcp as i32,
                port: 22,
            }],
            groups: vec!["otk".to_owned()],
            timeout_secs: 30,
            otk: true,
            ..Default::default()
        })
        .await
        .expect("add otk policy");
    settle(admin, acks_rx, agents).await;

    let chans: Vec<Channel> = channels
        .lock()
        .expect("channels")
        .iter()
        .map(|c| c.clone().expect("every agent has a channel"))
        .collect();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, ch) in chans.into_iter().enumerate() {
        let (user, counter) = (i % OTK_USERS, (i / OTK_USERS) % OTK_STOCK);
        set.spawn(async move {
            let started = Instant::now();
            let r = AgentControlClient::new(ch)
                .claim(ClaimRequest {
                    user: format!("otk{user}"),
                    counter: counter as u64,
                    src: "10.240.0.9".to_owned(),
                    at_unix_ms: 0,
                    offline: false,
                })
                .await;
            (
                (user, counter),
                started.elapsed(),
                r.map(|r| r.into_inner()),
            )
        });
    }
    let mut latencies = Vec::with_capacity(agents);
    let mut outcomes = BTreeMap::new();
    let mut winners: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        let (key, took, r) = done.expect("claim task");
        let outcome = match r {
            Ok(r) if r.granted => {
                *winners.entry(key).or_default() += 1;
                "won".to_owned()
            }
            Ok(r) => r.reason,
            Err(status) => format!("error {:?}", status.code()),
        };
        latencies.push(took);
        *outcomes.entry(outcome).or_default() += 1;
    }
    let elapsed = t0.elapsed();
    assert!(
        winners.values().all(|&n| n == 1),
        "a one-time key was won more than once: {winners:?}"
    );
    let target = current_version(admin).await;
    let stocked_after = all_acked(acks_rx, agents, target, Duration::from_secs(60))
        .await
        .then(|| t0.elapsed());
    Claims {
        agents,
        elapsed,
        latencies,
        outcomes,
        keys_won: winners.len(),
        stocked_after,
    }
}

/// The controller's config version now.
async fn current_version(admin: &mut AdminClient<Channel>) -> u64 {
    admin
        .fleet_status(FleetStatusRequest::default())
        .await
        .expect("fleet status")
        .into_inner()
        .current_version
}

/// Waits until every agent acknowledged the current version.
async fn settle(
    admin: &mut AdminClient<Channel>,
    acks_rx: &mut mpsc::UnboundedReceiver<Ack>,
    agents: usize,
) {
    let v = current_version(admin).await;
    assert!(
        all_acked(acks_rx, agents, v, Duration::from_secs(60)).await,
        "agents did not settle on version {v}"
    );
}

/// Whether every one of `agents` acknowledges `version` or later within `within`.
async fn all_acked(
    acks_rx: &mut mpsc::UnboundedReceiver<Ack>,
    agents: usize,
    version: u64,
    within: Duration,
) -> bool {
    let mut done = vec![false; agents];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + within;
    while n < agents {
        match tokio::time::timeout_at(deadline, acks_rx.recv()).await {
            Ok(Some((i, v, _))) if v >= version && !done[i] => {
                done[i] = true;
                n += 1;
            }
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
    true
}

/// Round `r`: adds a policy every agent receives and returns the time until the
/// last of the `agents` acknowledged it, or `None` (said on stdout) when some did
/// not within 10 s.
async fn round(
    admin: &mut AdminClient<Channel>,
    acks_rx: &mut mpsc::UnboundedReceiver<Ack>,
    agents: usize,
    r: usize,
) -> Option<Duration> {
    let t0 = Instant::now();
    let p = admin
        .add_policy(PolicySpec {
            name: format!("bench{r}"),
            open: vec![Access {
                proto: Proto::Tcp as i32,
                port: 22,
            }],
            timeout_secs: 30,
            sequence: vec![format!("tcp/{}", 10000 + r)],
            ..Default::default()
        })
        .await;
    p.expect("add policy");
    let mut seen = vec![false; agents];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = t0;
    while n < agents {
        match tokio::time::timeout_at(deadline, acks_rx.recv()).await {
            Ok(Some((i, _v, at))) => {
                if !seen[i] {
                    seen[i] = true;
                    n += 1;
                    last = last.max(at);
                }
            }
            _ => break,
        }
    }
    if n < agents {
        println!("round {r}: only {n} of {agents} agents acknowledged within 10 s");
        return None;
    }
    // Drain late duplicates before the next round.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while acks_rx.try_recv().is_ok() {}
    Some(last - t0)
}

/// The result lines: sync latency and the controllers' CPU time over the complete
/// rounds, and the controller's memory per connected agent.
fn report(
    agents: usize,
    rounds: usize,
    mut lat: Vec<Duration>,
    mut cpu: Vec<Duration>,
    rss_before: u64,
    rss_after: u64,
) {
    lat.sort();
    cpu.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    let cpu_median = cpu.get(cpu.len() / 2).copied().unwrap_or_default();
    println!(
        "fleet sync: {agents} agents, {} of {rounds} rounds complete; policy add -> all acked: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "fleet sync: controller CPU per round (all replicas, median) {:.0} ms = {:.1} us per agent",
        cpu_median.as_secs_f64() * 1e3,
        cpu_median.as_secs_f64() * 1e6 / agents as f64
    );
    println!(
        "controller RSS: {} KiB idle, {} KiB with {agents} agents connected = {:.1} KiB per agent",
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / agents as f64
    );
}
