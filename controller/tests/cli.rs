//! The `knockgate-controller` binary: `init` (files, modes, fingerprint,
//! refusals, exit codes) and a `run` smoke test over real mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap by design

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use knockgate_controller::pki::{Ca, cert_fingerprint};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use x509_parser::extensions::GeneralName;

const BIN: &str = env!("CARGO_BIN_EXE_knockgate-controller");

fn controller(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let out = controller(&[
        "init",
        "--data-dir",
        d.to_str().unwrap(),
        "--san",
        "ctl.example.org",
        "--san",
        "10.1.2.3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();

    assert_eq!(mode(&d), 0o700);
    for (file, m) in [
        ("ca-key.pem", 0o600),
        ("server-key.pem", 0o600),
        ("admin.pem", 0o600),
    ] {
        assert_eq!(mode(&d.join(file)), m, "{file}");
    }
    let ca_pem = std::fs::read_to_string(d.join("ca.pem")).unwrap();
    let ca_der = assert_ca_fingerprint_printed(&d, &ca_pem, &stdout);
    assert_server_chain(&d, &ca_der);
    assert_admin_bundle(&d, &ca_der);

    // A second init refuses and changes nothing.
    let again = controller(&["init", "--data-dir", d.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8(again.stderr).unwrap();
    assert!(err.contains("refusing to overwrite the CA"), "{err}");
    assert_eq!(std::fs::read_to_string(d.join("ca.pem")).unwrap(), ca_pem);
}

/// The CA in `d` loads with its key, and `init` printed its fingerprint, the
/// same `cert_fingerprint` computes. Returns the CA certificate.
fn assert_ca_fingerprint_printed(d: &Path, ca_pem: &str, stdout: &str) -> CertificateDer<'static> {
    let ca = Ca::load(
        ca_pem,
        &std::fs::read_to_string(d.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ca sha256: "))
        .unwrap();
    assert_eq!(line, format!("ca sha256: {}", ca.sha256_fingerprint()));
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    assert_eq!(ca.sha256_fingerprint(), cert_fingerprint(&ca_der));
    ca_der
}

/// server.pem: leaf then CA; the names include the defaults and every --san.
fn assert_server_chain(d: &Path, ca_der: &CertificateDer<'_>) {
    let chain: Vec<_> =
        CertificateDer::pem_slice_iter(std::fs::read(d.join("server.pem")).unwrap().as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(&chain[1], ca_der);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => (*d).to_owned(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
            }
            GeneralName::IPAddress(b) => {
                IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        [
            "localhost",
            "127.0.0.1",
            "::1",
            "ctl.example.org",
            "10.1.2.3"
        ]
    );
}

/// admin.pem: admin cert, its key, the CA.
fn assert_admin_bundle(d: &Path, ca_der: &CertificateDer<'_>) {
    let admin = std::fs::read_to_string(d.join("admin.pem")).unwrap();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(admin.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(&certs[1], ca_der);
    assert_eq!(
        knockgate_controller::pki::identity_from_cert_der(&certs[0]),
        Some(knockgate_controller::pki::Identity::Admin(
            "admin".parse().unwrap()
        ))
    );
    assert!(admin.contains("PRIVATE KEY"));
}

#[test]
fn bad_flags_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    assert_eq!(controller(&["init"]).status.code(), Some(64));
    assert_eq!(controller(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(
        controller(&["run", "--data-dir", "x", "--listen", "nope"])
            .status
            .code(),
        Some(64)
    );
    let out = controller(&[
        "init",
        "--data-dir",
        d.to_str().unwrap(),
        "--san",
        "bad name",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("invalid --san")
    );
    assert!(
        !d.join("ca.pem").exists(),
        "nothing is written for a bad flag"
    );
    assert_eq!(controller(&["--help"]).status.code(), Some(0));
}

#[test]
fn run_without_init_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = controller(&[
        "run",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("ca.pem") && err.contains("init"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_admin_over_mutual_tls_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    assert!(
        controller(&["init", "--data-dir", d.to_str().unwrap()])
            .status
            .success()
    );
    let (child, port) = start_run(&d);
    let admin = std::fs::read_to_string(d.join("admin.pem")).unwrap();
    let agents = list_agents_once_up(&admin_endpoint(port, &admin, &admin)).await;
    assert!(agents.is_empty());
    assert!(
        d.join("knockgate.db").exists(),
        "SQLite in the data dir by default"
    );
    another_admin_certificate_is_refused(&d, port, &admin).await;
    sigterm_stops_it_cleanly(child).await;
}

/// `knockgate-controller run` on a free loopback port, logging JSON to a pipe.
fn start_run(d: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .args([
            "run",
            "--data-dir",
            d.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, port)
}

/// The admin endpoint on `port`, trusting the CA in `ca_pem` and presenting
/// `identity_pem` (certificate and key).
fn admin_endpoint(port: u16, ca_pem: &str, identity_pem: &str) -> Endpoint {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(identity_pem, identity_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

/// ListAgents, retried until the controller answers (20 s at most).
async fn list_agents_once_up(endpoint: &Endpoint) -> Vec<api::AgentInfo> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut client = AdminClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
            client
                .list_agents(api::ListAgentsRequest {})
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(r) => break r.into_inner().agents,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("controller never answered: {e}"),
        }
    }
}

/// Another certificate the CA signed for the same admin name is not the pinned one.
async fn another_admin_certificate_is_refused(d: &Path, port: u16, admin: &str) {
    let ca = Ca::load(
        &std::fs::read_to_string(d.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(d.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let twin = ca
        .issue_admin(&knockgate_controller::name::AdminName::new("admin").unwrap())
        .unwrap();
    let twin_identity = format!("{}{}", twin.cert_pem, twin.key_pem);
    let twin_endpoint = admin_endpoint(port, admin, &twin_identity);
    let refused = AdminClient::new(twin_endpoint.connect().await.unwrap())
        .list_agents(api::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("not the certificate issued to admin admin"),
        "{refused:?}"
    );
}

/// SIGTERM stops the controller with success, after it logged (as JSON) that it
/// was listening.
async fn sigterm_stops_it_cleanly(child: Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let log = String::from_utf8(status.stderr).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("controller listening") && l.starts_with('{')),
        "{log}"
    );
}
