//! Enrolment: make the agent's own key on the agent, send a CSR with the one-time token
//! to a controller verified by its CA's fingerprint, and keep the certificate and CA it
//! returns in the state directory. The private key never leaves the host.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use knockgate_proto::api::EnrollRequest;
use knockgate_proto::api::enrollment_client::EnrollmentClient;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::tls::{Fingerprint, PinFailure, PinVerifier, fingerprint_hex, provider};
use super::{STATE_CA, STATE_CERT, STATE_KEY, STATE_NAME, STATE_RENEW_AFTER, host_of};

/// How long to try to reach the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why enrolment failed; `main` picks the exit code.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("bad --controller {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the controller at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the controller's CA does not match --ca-sha256")]
    PinMismatch,
    #[error("the controller's certificate is not valid for {url}: {reason}")]
    BadCertificate { url: String, reason: String },
    #[error("the controller refused the token: {0}")]
    Refused(String),
    #[error("enrolment failed: {0}")]
    Failed(String),
    #[error("cannot make the agent key or CSR: {0}")]
    Key(#[source] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the controller issued.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub agent_name: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The key made here, PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// When to renew the certificate (unix ms; 0 = the controller did not say).
    pub renew_after_unix_ms: i64,
}

/// A fresh agent key and a CSR for it (the controller decides the identity; `name` is
/// informational).
pub fn key_and_csr(name: &str) -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr_pem = params.serialize_request(&key).and_then(|csr| csr.pem())?;
    Ok((key, csr_pem))
}

/// Enrol with the controller at `url` using `token`, trusting only a CA whose SHA-256 is
/// `pin`. `name` goes into the CSR for information; the controller decides the identity.
pub async fn enroll(
    url: &str,
    token: &str,
    pin: Fingerprint,
    name: &str,
) -> Result<Enrolled, EnrollError> {
    let (key, csr_pem) = key_and_csr(name).map_err(EnrollError::Key)?;

    let bad_url = |reason: String| EnrollError::BadUrl {
        url: url.to_string(),
        reason,
    };
    if !url.starts_with("https://") {
        return Err(bad_url("must start with https://".into()));
    }
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad_url(e.to_string()))?;
    let host = host_of(endpoint.uri()).ok_or_else(|| bad_url("no host".into()))?;
    let verifier = PinVerifier::new(pin, provider());
    let failure = verifier.failure();
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT * 3)
        .tls_config_with_verifier(ClientTlsConfig::new().domain_name(host), Arc::new(verifier))
        .map_err(|e| bad_url(e.to_string()))?;
    let tls_failure = || failure.lock().ok().and_then(|f| f.clone());
    let refused_cert = |f: PinFailure| match f {
        PinFailure::Mismatch => EnrollError::PinMismatch,
        PinFailure::Invalid(reason) => EnrollError::BadCertificate {
            url: url.to_string(),
            reason,
        },
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return Err(match tls_failure() {
                Some(f) => refused_cert(f),
                None => EnrollError::Unreachable {
                    url: url.to_string(),
                    reason: super::error_chain(&e),
                },
            });
        }
    };
    let response = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_string(),
            csr_pem,
        })
        .await;
    let resp = match response {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return Err(match (tls_failure(), status.code()) {
                (Some(f), _) => refused_cert(f),
                (None, Code::Unauthenticated | Code::PermissionDenied) => {
                    EnrollError::Refused(status.message().to_string())
                }
                (None, Code::Unavailable) => EnrollError::Unreachable {
                    url: url.to_string(),
                    reason: status.message().to_string(),
                },
                (None, code) => EnrollError::Failed(format!("{code:?}: {}", status.message())),
            });
        }
    };
    // The CA to trust from now on must be the one the operator pinned.
    let ca = CertificateDer::from_pem_slice(resp.ca_pem.as_bytes())
        .map_err(|_| EnrollError::Failed("the controller sent no CA certificate".into()))?;
    if fingerprint_hex(&ca) != fingerprint_hex_of(pin) {
        return Err(EnrollError::PinMismatch);
    }
    CertificateDer::from_pem_slice(resp.cert_pem.as_bytes())
        .map_err(|_| EnrollError::Failed("the controller sent no agent certificate".into()))?;
    Ok(Enrolled {
        agent_name: resp.agent_name,
        cert_pem: resp.cert_pem,
        ca_pem: resp.ca_pem,
        key_pem: key.serialize_pem(),
        renew_after_unix_ms: resp.renew_after_unix_ms,
    })
}

fn fingerprint_hex_of(f: Fingerprint) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write the key (0600), certificate and CA into `state_dir`, each atomically.
pub fn write_credentials(state_dir: &Path, e: &Enrolled) -> Result<(), EnrollError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EnrollError::Write { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(write_err(state_dir))?;
    for (name, text) in [
        (STATE_KEY, &e.key_pem),
        (STATE_CERT, &e.cert_pem),
        (STATE_CA, &e.ca_pem),
        (STATE_NAME, &format!("{}\n", e.agent_name)),
        (STATE_RENEW_AFTER, &format!("{}\n", e.renew_after_unix_ms)),
    ] {
        let path = state_dir.join(name);
        crate::state::write_atomic(&path, |f| f.write_all(text.as_bytes()))
            .map_err(write_err(&path))?;
    }
    Ok(())
}

/// Append `[controller] url = …` to the config file at `path` (which has no such section).
pub fn add_controller_section(path: &Path, url: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(path)?;
    write!(f, "\n[controller]\nurl = {url:?}\n")?;
    f.sync_all()
}
