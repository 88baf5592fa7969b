//! Fleet sync: 100 simulated agents (real enrolment, real mutual TLS, one Sync stream each,
//! on loopback) connected to one controller. Measures the time from `AddPolicy` until
//! every agent has received the change and acknowledged it (median and p99 over rounds),
//! the controller's resident memory per connected agent, enrolment throughput (32
//! enrolments in flight), and a reconnect storm: the controller is killed and restarted,
//! and the time until every agent is back and has acknowledged its config.
//!
//! `cargo build --release --workspace --bins && cargo bench -p knockgate-tests --bench fleet_sync [-- --agents 100 --rounds 30]`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::api::enrollment_client::EnrollmentClient;
use knockgate_proto::api::{
    Access, AddAgentRequest, AgentMessage, Applied, EnrollRequest, Hello, PolicySpec, Proto,
    agent_message, controller_message,
};
use knockgate_tests::bench_arg;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const PORT: u16 = 47443;

struct Ctl(Child, std::path::PathBuf);

impl Ctl {
    /// SIGKILL and start again on the same data dir and port: every agent reconnects.
    fn restart(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        self.0 = run_controller(&self.1);
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
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

async fn try_channel(
    ca: &str,
    identity: Option<(&str, &str)>,
    from: Option<std::net::IpAddr>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{PORT}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .local_address(from)
        .connect()
        .await
}

async fn channel(ca: &str, identity: Option<(&str, &str)>) -> Channel {
    try_channel(ca, identity, None).await.expect("connect")
}

/// What a simulated agent tells the measuring loop: its index, the config version
/// it acknowledged, and when.
type Ack = (usize, u64, Instant);

#[tokio::main]
async fn main() {
    let agents: usize = bench_arg("--agents").unwrap_or(100);
    let rounds: usize = bench_arg("--rounds").unwrap_or(30);

    let ctl = start_controller();
    let pid = ctl.0.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (admin_cert, admin_key, ca) =
        pems(&std::fs::read_to_string(ctl.1.join("admin.pem")).expect("admin.pem"));
    let mut admin = AdminClient::new(channel(&ca, Some((&admin_cert, &admin_key))).await);
    let rss_before = rss_kib(pid);

    // Enrol and connect every simulated agent; each acks whatever config it receives.
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<Ack>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let enrolled = enroll_all(&admin, &ca, agents).await;
    let t_enrol = enrolled.1;
    let mut tasks = Vec::new();
    for (i, (cert, key)) in enrolled.0.into_iter().enumerate() {
        tasks.push(connect(
            &ca,
            cert,
            key.serialize_pem(),
            i,
            acks_tx.clone(),
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
    let rss_after = rss_kib(pid);

    let mut lat = Vec::new();
    for r in 0..rounds {
        if let Some(d) = round(&mut admin, &mut acks_rx, agents, r).await {
            lat.push(d);
        }
    }
    // A reconnect storm: the controller restarts and every agent comes back at once.
    let mut ctl = ctl;
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
    report(agents, rounds, lat, rss_before, rss_after);
    println!(
        "enrolment: {agents} agents in {:.1} s = {:.0} per second ({ENROL_AT_ONCE} at a time)",
        t_enrol.as_secs_f64(),
        agents as f64 / t_enrol.as_secs_f64()
    );
    println!(
        "reconnect storm: {n} of {agents} agents back and acknowledged {:.2} s after a controller restart",
        storm.as_secs_f64()
    );
    drop(ctl);
}

/// Enrolments in flight at once.
const ENROL_AT_ONCE: usize = 32;

/// Adds and enrols `agents` agents, [`ENROL_AT_ONCE`] at a time; returns their
/// credentials in order, and how long it took.
async fn enroll_all(
    admin: &AdminClient<Channel>,
    ca: &str,
    agents: usize,
) -> (Vec<(String, rcgen::KeyPair)>, Duration) {
    let t0 = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(ENROL_AT_ONCE));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..agents {
        let (mut admin, ca, slots) = (admin.clone(), ca.to_owned(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore");
            (i, enroll(&mut admin, &ca, i).await)
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

/// `knockgate-controller init` in a fresh data dir, then `run` on [`PORT`].
fn start_controller() -> Ctl {
    let dir = std::env::temp_dir().join(format!("kgt-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = knockgate_tests::bin("knockgate-controller");
    let out = Command::new(&bin)
        .arg("init")
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = run_controller(&dir);
    Ctl(child, dir)
}

fn run_controller(dir: &std::path::Path) -> Child {
    Command::new(knockgate_tests::bin("knockgate-controller"))
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{PORT}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run")
}

/// Adds agent `sim{i}` and enrols it (from its own address) as a real agent would: a fresh key, a CSR,
/// the one-time token. Returns its certificate and key.
async fn enroll(admin: &mut AdminClient<Channel>, ca: &str, i: usize) -> (String, rcgen::KeyPair) {
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
    let ch = try_channel(ca, None, Some(source(i)))
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

/// Simulated agent `i`: keeps a Sync stream open (reconnecting with a jittered backoff
/// from 200 ms, as the agent does), acknowledges every config it receives and tells
/// `acks`, until `stop` changes.
fn connect(
    ca: &str,
    cert: String,
    key: String,
    i: usize,
    acks: mpsc::UnboundedSender<Ack>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ca = ca.to_owned();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            if let Ok(ch) = try_channel(&ca, Some((&cert, &key)), Some(source(i))).await {
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

/// The two result lines: sync latency over the complete rounds, and the
/// controller's memory per connected agent.
fn report(agents: usize, rounds: usize, mut lat: Vec<Duration>, rss_before: u64, rss_after: u64) {
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "fleet sync: {agents} agents, {} of {rounds} rounds complete; policy add -> all acked: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "controller RSS: {} KiB idle, {} KiB with {agents} agents connected = {:.1} KiB per agent",
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / agents as f64
    );
}
