//! The controller's data dir: what `init` writes and `run` reads.
//!
//! ```text
//! D/               0700
//!   ca.pem         the internal CA certificate (what agents and knockadm pin)
//!   ca-key.pem     0600, the CA's private key
//!   server.pem     server certificate followed by the CA certificate
//!   server-key.pem 0600
//!   admin.pem      0600, knockadm's identity: admin cert + private key + CA cert
//!   knockgate.db   the SQLite store (unless --database-url names PostgreSQL)
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::name::{AdminName, InvalidName};
use crate::pki::{Ca, PkiError};

/// CA certificate file.
pub const CA_CERT: &str = "ca.pem";
/// CA private key file.
pub const CA_KEY: &str = "ca-key.pem";
/// Server certificate chain file.
pub const SERVER_CERT: &str = "server.pem";
/// Server private key file.
pub const SERVER_KEY: &str = "server-key.pem";
/// knockadm's identity file.
pub const ADMIN_IDENTITY: &str = "admin.pem";
/// Names the server certificate always carries.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The administrator `init` creates.
pub const INITIAL_ADMIN: &str = "admin";

/// Errors of the data dir.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `init` found a CA and will not replace it.
    #[error("{0} already exists: refusing to overwrite the CA (use another --data-dir)")]
    CaExists(PathBuf),
    /// A `--san` is neither an IP address nor a DNS name.
    #[error("invalid --san {0:?}: expected a DNS name or an IP address")]
    BadSan(String),
    /// The directory could not be created or restricted.
    #[error("failed to create the data dir {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("failed to read {path} (run `knockgate-controller init` first?)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path} holds no PEM {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The built-in admin name does not validate (a bug).
    #[error("invalid admin name")]
    BadAdminName(#[source] InvalidName),
    /// Certificate generation or CA loading failed.
    #[error("certificate authority error")]
    Pki(#[source] PkiError),
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    /// SHA-256 fingerprint of the CA certificate (lowercase hex).
    pub ca_fingerprint: String,
    /// The server certificate's names.
    pub sans: Vec<String>,
    /// The admin identity file.
    pub admin_identity: PathBuf,
}

/// What `run` needs from the data dir.
pub struct Loaded {
    /// The CA, for signing agent certificates and verifying clients.
    pub ca: Ca,
    /// The server certificate chain (leaf first).
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub server_key: PrivateKeyDer<'static>,
    /// The initial admin identity in the data dir (`admin.pem`), as (name, certificate
    /// fingerprint): pinned when the store has no admin yet.
    pub initial_admin: Option<(AdminName, String)>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Creates `dir` (0700) with a new CA, server certificate (for
/// [`DEFAULT_SANS`] plus `extra_sans`) and the initial admin identity.
/// Refuses when a CA is already there; never overwrites any file.
pub fn init(dir: &Path, extra_sans: &[String]) -> Result<Initialized, DataDirError> {
    for existing in [CA_CERT, CA_KEY] {
        let path = dir.join(existing);
        if path.exists() {
            return Err(DataDirError::CaExists(path));
        }
    }
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect();
    for s in extra_sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let (ca, ca_files) = Ca::create("knockgate controller CA").map_err(DataDirError::Pki)?;
    let server = ca.issue_server(&sans).map_err(|e| match e {
        PkiError::InvalidSan(s) => DataDirError::BadSan(s),
        other => DataDirError::Pki(other),
    })?;
    let admin_name = AdminName::new(INITIAL_ADMIN).map_err(DataDirError::BadAdminName)?;
    let admin = ca.issue_admin(&admin_name).map_err(DataDirError::Pki)?;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|source| DataDirError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    // Keys first: should a later write fail, no certificate points at a missing key.
    write_new(&dir.join(CA_KEY), 0o600, &ca_files.key_pem)?;
    write_new(&dir.join(SERVER_KEY), 0o600, &server.key_pem)?;
    let admin_identity = dir.join(ADMIN_IDENTITY);
    write_new(
        &admin_identity,
        0o600,
        &format!("{}{}{}", admin.cert_pem, admin.key_pem, ca.cert_pem()),
    )?;
    write_new(
        &dir.join(SERVER_CERT),
        0o644,
        &format!("{}{}", server.cert_pem, ca.cert_pem()),
    )?;
    write_new(&dir.join(CA_CERT), 0o644, &ca_files.cert_pem)?;
    Ok(Initialized {
        ca_fingerprint: ca.sha256_fingerprint(),
        sans,
        admin_identity,
    })
}

fn write_new(path: &Path, mode: u32, contents: &str) -> Result<(), DataDirError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .map_err(|source| DataDirError::Write {
            path: path.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, DataDirError> {
    fs::read_to_string(path).map_err(|source| DataDirError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads the CA and the server identity from `dir`.
pub fn load(dir: &Path) -> Result<Loaded, DataDirError> {
    let ca = Ca::load(&read(&dir.join(CA_CERT))?, &read(&dir.join(CA_KEY))?)
        .map_err(DataDirError::Pki)?;
    let cert_path = dir.join(SERVER_CERT);
    let server_chain = CertificateDer::pem_slice_iter(read(&cert_path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or(DataDirError::BadPem {
            path: cert_path,
            what: "certificate",
        })?;
    let key_path = dir.join(SERVER_KEY);
    let server_key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes()).map_err(|_| {
        DataDirError::BadPem {
            path: key_path,
            what: "private key",
        }
    })?;
    let initial_admin = fs::read_to_string(dir.join(ADMIN_IDENTITY))
        .ok()
        .and_then(|pem| {
            let der = CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()?
                .ok()?;
            match crate::pki::identity_from_cert_der(&der)? {
                crate::pki::Identity::Admin(name) => {
                    Some((name, crate::pki::cert_fingerprint(&der)))
                }
                crate::pki::Identity::Agent(_) => None,
            }
        });
    Ok(Loaded {
        ca,
        server_chain,
        server_key,
        initial_admin,
    })
}
