//! The controller's internal CA: creates and loads it, issues the server
//! certificate, admin certificates and agent certificates (from CSRs), and
//! reads the identity back out of a peer certificate.
//!
//! Identity is the SAN URI `spiffe://knockgate/agent/<name>` or
//! `spiffe://knockgate/admin/<name>`. Fingerprints are plain lowercase hex of
//! the SHA-256 over the certificate DER (64 characters, no separators).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::name::{AdminName, AgentName};

/// SAN URI prefix of agent certificates.
pub const AGENT_URI_PREFIX: &str = "spiffe://knockgate/agent/";
/// SAN URI prefix of admin certificates.
pub const ADMIN_URI_PREFIX: &str = "spiffe://knockgate/admin/";
const KNOCKGATE_URI_PREFIX: &str = "spiffe://knockgate/";

/// Validity of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of server, admin and agent certificates.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// Leaf certificates start this far in the past, to tolerate clock skew.
const BACKDATE: Duration = Duration::hours(1);

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation or signing failed.
    #[error("failed to generate a key or certificate")]
    Generate(#[source] rcgen::Error),
    /// The CA certificate or key PEM could not be parsed.
    #[error("failed to load the CA certificate or key")]
    LoadCa(#[source] rcgen::Error),
    /// The CA certificate PEM holds no certificate.
    #[error("the CA certificate file holds no PEM certificate")]
    NoCaCert,
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    /// The agent's CSR is malformed or its signature does not verify.
    #[error("invalid certificate signing request")]
    InvalidCsr(#[source] rcgen::Error),
    /// A server SAN is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// Who a peer certificate speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// An enrolled agent.
    Agent(AgentName),
    /// An administrator (knockadm).
    Admin(AdminName),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The internal certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.sha256_fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a CA (ECDSA P-256, 10 years) named `common_name`; returns it
    /// with its certificate and key PEM for the data dir.
    pub fn create(common_name: &str) -> Result<(Ca, Issued), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = Ca {
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            cert_pem: issued.cert_pem.clone(),
        };
        Ok((ca, issued))
    }

    /// Loads a CA from its certificate and key PEM, checking they match.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| PkiError::NoCaCert)?;
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::LoadCa)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|_| PkiError::LoadCa(rcgen::Error::CouldNotParseCertificate))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(PkiError::LoadCa)?;
        Ok(Ca {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM (what clients and agents trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (for a rustls `RootCertStore`).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate DER, for pinning at enrolment.
    pub fn sha256_fingerprint(&self) -> String {
        cert_fingerprint(&self.cert_der)
    }

    /// Issues the controller's server certificate for `sans`: each entry is an
    /// IP address or a DNS name.
    pub fn issue_server(&self, sans: &[String]) -> Result<Issued, PkiError> {
        let sans = sans
            .iter()
            .map(|s| server_san(s))
            .collect::<Result<Vec<_>, _>>()?;
        let cn = match sans.first() {
            Some(SanType::DnsName(n)) => n.as_str().to_owned(),
            _ => "knockgate-controller".to_owned(),
        };
        self.issue_with_new_key(&cn, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate for administrator `name`.
    pub fn issue_admin(&self, name: &AdminName) -> Result<Issued, PkiError> {
        let uri = identity_uri(ADMIN_URI_PREFIX, name.as_str())?;
        self.issue_with_new_key(
            name.as_str(),
            vec![uri],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Signs an agent's CSR as `agent`. Only the CSR's public key is used:
    /// subject, SANs and extensions it asks for are ignored, and the
    /// certificate names exactly `spiffe://knockgate/agent/<agent>`.
    pub fn sign_agent_csr(&self, csr_pem: &str, agent: &AgentName) -> Result<String, PkiError> {
        self.sign_agent_csr_for(csr_pem, agent, LEAF_VALIDITY)
    }

    /// [`Ca::sign_agent_csr`] with a certificate valid for `lifetime` from now.
    pub fn sign_agent_csr_for(
        &self,
        csr_pem: &str,
        agent: &AgentName,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
        let uri = identity_uri(AGENT_URI_PREFIX, agent.as_str())?;
        let mut params = self.leaf_params(
            agent.as_str(),
            vec![uri],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        params.not_after = OffsetDateTime::now_utc() + lifetime;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(cert.pem())
    }

    fn issue_with_new_key(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Generate)?;
        let params = self.leaf_params(common_name, sans, usage)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn leaf_params(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }
}

/// [`cert_fingerprint`] of the first certificate in `pem`, if it holds one.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(cert_fingerprint(&der))
}

/// Lowercase hex SHA-256 over a certificate's DER (64 characters).
pub fn cert_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The knockgate identity a certificate carries, if it carries exactly one
/// well-formed `spiffe://knockgate/...` SAN URI. The chain must already have
/// been verified (by the TLS layer); this only reads the name.
pub fn identity_from_cert_der(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(KNOCKGATE_URI_PREFIX) => {
            Some(*uri)
        }
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    if let Some(name) = uri.strip_prefix(AGENT_URI_PREFIX) {
        AgentName::new(name).ok().map(Identity::Agent)
    } else if let Some(name) = uri.strip_prefix(ADMIN_URI_PREFIX) {
        AdminName::new(name).ok().map(Identity::Admin)
    } else {
        None
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "knockgate");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn identity_uri(prefix: &str, name: &str) -> Result<SanType, PkiError> {
    let uri = format!("{prefix}{name}");
    uri.clone()
        .try_into()
        .map(SanType::URI)
        .map_err(|_| PkiError::InvalidSan(uri))
}

fn server_san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && (label == "*"
                    || label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        });
    if !valid {
        return Err(PkiError::InvalidSan(s.to_owned()));
    }
    s.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| PkiError::InvalidSan(s.to_owned()))
}

/// A random positive 16-byte serial, so re-issuing for the same key never
/// repeats a serial (rcgen's default derives it from the public key).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> AgentName {
        AgentName::new(name).unwrap()
    }

    #[test]
    fn csr_identity_is_ignored() {
        let (ca, _) = Ca::create("test ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://knockgate/admin/root".try_into().unwrap(),
        ));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca.sign_agent_csr(&csr, &agent("web-1")).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            identity_from_cert_der(&der),
            Some(Identity::Agent(agent("web-1")))
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let sans = &x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(sans.len(), 1);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let (ca, _) = Ca::create("test ca").unwrap();
        assert!(matches!(
            ca.sign_agent_csr("nope", &agent("a")),
            Err(PkiError::InvalidCsr(_))
        ));
    }

    #[test]
    fn load_round_trips_and_checks_the_key() {
        let (ca, files) = Ca::create("test ca").unwrap();
        let loaded = Ca::load(&files.cert_pem, &files.key_pem).unwrap();
        assert_eq!(loaded.sha256_fingerprint(), ca.sha256_fingerprint());
        assert_eq!(ca.sha256_fingerprint().len(), 64);
        let (_, other) = Ca::create("other").unwrap();
        assert!(matches!(
            Ca::load(&files.cert_pem, &other.key_pem),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            Ca::load("", &files.key_pem),
            Err(PkiError::NoCaCert)
        ));
    }

    #[test]
    fn server_sans_are_checked() {
        let (ca, _) = Ca::create("test ca").unwrap();
        ca.issue_server(&["ctl.example.org".into(), "10.0.0.1".into(), "::1".into()])
            .unwrap();
        assert!(matches!(
            ca.issue_server(&["bad name".into()]),
            Err(PkiError::InvalidSan(_))
        ));
        let server = ca.issue_server(&["localhost".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity_from_cert_der(&der), None);
    }
}
