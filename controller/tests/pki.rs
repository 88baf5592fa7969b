//! PKI against the real thing: certificates from the CA used in a rustls
//! mutual-TLS handshake over TCP on 127.0.0.1.

#![allow(clippy::unwrap_used)] // tests unwrap by design

use std::sync::Arc;

use knockgate_controller::name::{AdminName, AgentName};
use knockgate_controller::pki::{Ca, Identity, Issued, cert_fingerprint, identity_from_cert_der};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    Arc::new(roots)
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn server_config(ca: &Ca) -> Arc<ServerConfig> {
    let server = ca
        .issue_server(&["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let verifier = WebPkiClientVerifier::builder(roots(ca)).build().unwrap();
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&server.cert_pem), key(&server.key_pem))
        .unwrap();
    Arc::new(config)
}

fn client_config(trusted: &Ca, cert_pem: &str, key_pem: &str) -> Arc<ClientConfig> {
    let config = ClientConfig::builder()
        .with_root_certificates(roots(trusted))
        .with_client_auth_cert(chain(cert_pem), key(key_pem))
        .unwrap();
    Arc::new(config)
}

/// One handshake; returns what the server saw: the client's leaf certificate,
/// or the handshake error.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.unwrap();
        Ok::<_, String>(peer)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let client_result = match TlsConnector::from(client).connect(name, tcp).await {
        Ok(mut tls) => {
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf)
                .await
                .map(|_| buf)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let seen = server_task.await.unwrap();
    match &seen {
        Ok(_) => assert_eq!(client_result.unwrap(), b"hello"),
        Err(_) => assert!(
            client_result.is_err(),
            "client must not get data after a refused handshake"
        ),
    }
    seen
}

fn agent_cert(ca: &Ca, name: &AgentName) -> Issued {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let cert_pem = ca.sign_agent_csr(&csr.pem().unwrap(), name).unwrap();
    Issued {
        cert_pem,
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn mtls_accepts_our_clients_and_refuses_a_foreign_ca() {
    install_provider();
    let (ca, _) = Ca::create("knockgate test CA").unwrap();
    let (foreign, _) = Ca::create("someone else's CA").unwrap();
    let server = server_config(&ca);

    let alice = AdminName::new("alice").unwrap();
    let admin = ca.issue_admin(&alice).unwrap();
    let peer = handshake(
        server.clone(),
        client_config(&ca, &admin.cert_pem, &admin.key_pem),
    )
    .await
    .unwrap();
    assert_eq!(identity_from_cert_der(&peer), Some(Identity::Admin(alice)));

    let web1 = AgentName::new("web-1").unwrap();
    let agent = agent_cert(&ca, &web1);
    let peer = handshake(
        server.clone(),
        client_config(&ca, &agent.cert_pem, &agent.key_pem),
    )
    .await
    .unwrap();
    assert_eq!(
        identity_from_cert_der(&peer),
        Some(Identity::Agent(web1.clone()))
    );
    assert_eq!(
        cert_fingerprint(&peer),
        cert_fingerprint(&chain(&agent.cert_pem)[0])
    );

    // Same identity, wrong issuer: refused by the verifier.
    let forged = foreign
        .issue_admin(&AdminName::new("alice").unwrap())
        .unwrap();
    let refused = handshake(
        server.clone(),
        client_config(&ca, &forged.cert_pem, &forged.key_pem),
    )
    .await;
    assert!(
        refused.unwrap_err().contains("UnknownIssuer"),
        "refused for the wrong reason"
    );
    let forged = agent_cert(&foreign, &web1);
    assert!(
        handshake(
            server,
            client_config(&ca, &forged.cert_pem, &forged.key_pem)
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_reloaded_ca_keeps_issuing_trusted_certificates() {
    install_provider();
    let (ca, files) = Ca::create("knockgate test CA").unwrap();
    let reloaded = Ca::load(&files.cert_pem, &files.key_pem).unwrap();
    let bob = AdminName::new("bob").unwrap();
    let admin = reloaded.issue_admin(&bob).unwrap();
    let peer = handshake(
        server_config(&ca),
        client_config(&ca, &admin.cert_pem, &admin.key_pem),
    )
    .await
    .unwrap();
    assert_eq!(identity_from_cert_der(&peer), Some(Identity::Admin(bob)));
}
