//! The connection to the controller: the admin identity file (admin
//! certificate, its key and the CA certificate in one PEM file) and a tonic
//! channel over rustls (ring) that presents the admin certificate and trusts
//! that CA only, dialled by [`Dialer`](super::dial::Dialer).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use knockgate_proto::api::admin_client::AdminClient;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use super::dial::Dialer;
use super::error::AdminError;

/// `--controller` unless told otherwise.
pub const DEFAULT_CONTROLLER: &str = "https://127.0.0.1:7443";
/// `--identity` unless told otherwise.
pub const DEFAULT_IDENTITY: &str = "./admin.pem";

/// How long to wait for TCP + TLS before calling the controller unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Port of an `https://` URL without one.
const HTTPS_PORT: u16 = 443;
/// An identity file is a few kilobytes.
const MAX_IDENTITY_LEN: u64 = 1024 * 1024;

/// Why the identity file is unusable. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Missing, unreadable, or not UTF-8.
    #[error("cannot read identity file '{}'", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// No `PRIVATE KEY` block.
    #[error("identity file '{}' holds no private key", path.display())]
    NoKey {
        /// The file as given.
        path: PathBuf,
    },
    /// No certificate without the CA flag.
    #[error("identity file '{}' holds no admin certificate", path.display())]
    NoCert {
        /// The file as given.
        path: PathBuf,
    },
    /// No certificate with the CA flag.
    #[error("identity file '{}' holds no CA certificate", path.display())]
    NoCa {
        /// The file as given.
        path: PathBuf,
    },
    /// A `CERTIFICATE` block that is not X.509.
    #[error("identity file '{}' holds a certificate that does not parse", path.display())]
    BadCert {
        /// The file as given.
        path: PathBuf,
    },
    /// rustls refused the certificate and key (e.g. an unsupported key type).
    #[error("identity file '{}' holds an unusable certificate or key: {reason}", path.display())]
    Unusable {
        /// The file as given.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// The admin identity: certificate chain, private key, and the CA(s) to trust.
pub struct Identity {
    /// The file it came from.
    pub path: PathBuf,
    /// The admin certificate (and any intermediates), in file order.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key. Secret (rustls wipes it on drop).
    pub key: PrivateKeyDer<'static>,
    /// The CA certificate(s): the only roots the controller is checked against.
    pub roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.path)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the identity file: certificates with the CA basic constraint
    /// are trust roots, the others the admin chain, in file order.
    ///
    /// # Errors
    /// [`IdentityError`] naming `path`.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let read_error = |source| IdentityError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        let mut pem = Zeroizing::new(Vec::new());
        file.take(MAX_IDENTITY_LEN + 1)
            .read_to_end(&mut pem)
            .map_err(read_error)?;
        if pem.len() as u64 > MAX_IDENTITY_LEN {
            return Err(read_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("longer than {MAX_IDENTITY_LEN} bytes"),
            )));
        }
        Self::from_pem(path, &pem)
    }

    /// Splits PEM text into chain, key and roots (see [`Identity::load`]).
    ///
    /// # Errors
    /// [`IdentityError`] naming `path`.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Identity, IdentityError> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| IdentityError::NoKey {
            path: path.to_owned(),
        })?;
        let (mut chain, mut roots) = (Vec::new(), Vec::new());
        for cert in CertificateDer::pem_slice_iter(pem) {
            let bad = || IdentityError::BadCert {
                path: path.to_owned(),
            };
            let cert = cert.map_err(|_| bad())?;
            let (_, x509) = x509_parser::parse_x509_certificate(&cert).map_err(|_| bad())?;
            if x509.is_ca() {
                roots.push(cert);
            } else {
                chain.push(cert);
            }
        }
        if chain.is_empty() {
            return Err(IdentityError::NoCert {
                path: path.to_owned(),
            });
        }
        if roots.is_empty() {
            return Err(IdentityError::NoCa {
                path: path.to_owned(),
            });
        }
        Ok(Identity {
            path: path.to_owned(),
            chain,
            key,
            roots,
        })
    }

    /// The rustls client configuration: ring, these roots only, this
    /// client certificate, HTTP/2 by ALPN.
    ///
    /// # Errors
    /// [`IdentityError::Unusable`] when rustls refuses a root, the
    /// certificate or the key (e.g. a key that does not match).
    pub fn client_config(&self) -> Result<ClientConfig, IdentityError> {
        let unusable = |err: rustls::Error| IdentityError::Unusable {
            path: self.path.clone(),
            reason: err.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for root in &self.roots {
            roots.add(root.clone()).map_err(unusable)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(unusable)?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(unusable)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Checks `--controller`: an `https://host[:port]` URL.
///
/// # Errors
/// [`AdminError::BadUrl`].
pub fn parse_controller_url(url: &str) -> Result<Uri, AdminError> {
    let bad = |reason: &str| AdminError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(_) => return Err(bad("the controller speaks https only")),
        None => return Err(bad("expected https://HOST[:PORT]")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(bad("expected no path"));
    }
    Ok(uri)
}

/// The admin client: every call carries the current trace context.
pub type Admin = AdminClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        knockgate_telemetry::propagate::Injecting,
    >,
>;

/// The controller to talk to and the identity to present, connected on
/// first use.
pub struct Connector {
    url: String,
    identity: PathBuf,
    client: Option<Admin>,
}

impl Connector {
    /// A connector for `url` with the identity file `identity`; nothing is
    /// read or dialled yet.
    #[must_use]
    pub fn new(url: String, identity: PathBuf) -> Self {
        Connector {
            url,
            identity,
            client: None,
        }
    }

    /// The controller URL as given.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin client; the first call checks the URL, loads the identity
    /// and connects (TCP and TLS), so an unreachable controller is reported
    /// before any request.
    ///
    /// # Errors
    /// [`AdminError::BadUrl`], [`AdminError::Identity`],
    /// [`AdminError::Unreachable`], [`AdminError::Tls`], [`AdminError::Refused`].
    pub async fn client(&mut self) -> Result<Admin, AdminError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let uri = parse_controller_url(&self.url)?;
        let identity = Identity::load(&self.identity)?;
        let config = identity.client_config()?;
        let host = uri.host().unwrap_or_default();
        // `host()` keeps an IPv6 address's brackets; TCP and TLS want it bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone()).map_err(|_| AdminError::BadUrl {
            url: self.url.clone(),
            reason: "the host is neither a DNS name nor an IP address".to_owned(),
        })?;
        let port = uri.port_u16().unwrap_or(HTTPS_PORT);
        // tonic sees plain http: TLS is the dialer's, so tonic must not add its own.
        let authority = uri
            .authority()
            .map_or(host.as_str(), |a| a.as_str())
            .to_owned();
        let plain = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| AdminError::BadUrl {
                url: self.url.clone(),
                reason: "not a URL".to_owned(),
            })?;
        let dialer = Dialer::new(Arc::new(config), server_name, host, port);
        let channel = Endpoint::from(plain)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector(dialer)
            .await
            .map_err(|err| AdminError::from_transport(&self.url, &err))?;
        let client = AdminClient::with_interceptor(channel, knockgate_telemetry::propagate::INJECT);
        self.client = Some(client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    #[test]
    fn controller_urls() {
        for good in [
            "https://127.0.0.1:7443",
            "https://ctl.example",
            "https://[::1]:7443/",
        ] {
            assert!(parse_controller_url(good).is_ok(), "{good}");
        }
        for (bad, reason) in [
            ("http://127.0.0.1:7443", "https only"),
            ("127.0.0.1:7443", "expected https://HOST[:PORT]"),
            ("https://ctl.example/admin", "no path"),
            ("not a url", "not a URL"),
        ] {
            let err = parse_controller_url(bad).unwrap_err().to_string();
            assert!(err.contains(reason) && err.contains(bad), "{bad}: {err}");
        }
    }

    /// CA and admin certificate PEM, and the admin key PEM.
    fn certs() -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let admin = CertificateParams::new(vec!["admin".into()]).unwrap();
        let admin_pem = admin.signed_by(&key, &issuer).unwrap().pem();
        (ca_pem, admin_pem, key.serialize_pem())
    }

    #[test]
    fn identity_splits_by_the_ca_flag_in_any_order() {
        let (ca, admin, key) = certs();
        for text in [
            format!("{admin}{key}{ca}"),
            format!("{ca}\n# comment\n{key}\n{admin}"),
        ] {
            let id = Identity::from_pem(Path::new("a.pem"), text.as_bytes()).unwrap();
            assert_eq!((id.chain.len(), id.roots.len()), (1, 1));
            assert!(id.client_config().is_ok());
            assert!(!format!("{id:?}").contains("PRIVATE"), "no key in Debug");
        }
    }

    #[test]
    fn mismatched_key_is_unusable() {
        let (ca, admin, _) = certs();
        let other = KeyPair::generate().unwrap().serialize_pem();
        let id = Identity::from_pem(Path::new("a.pem"), format!("{admin}{other}{ca}").as_bytes())
            .unwrap();
        let err = id.client_config().unwrap_err().to_string();
        assert!(err.contains("unusable certificate or key"), "{err}");
    }
}
