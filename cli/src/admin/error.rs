//! [`AdminError`]: everything a `knockadm` command can fail with, as one line
//! and an exit code: 64 for bad local input, 69 when the controller cannot be
//! reached, 1 when it refuses. The one place gRPC statuses and transport
//! errors are turned into messages.

use std::error::Error as StdError;
use std::io;

use rustls::AlertDescription;
use tonic::{Code, Status};

use super::client::IdentityError;
use super::dial::RefusedAfterHandshake;
use crate::cmd::{CommandError, EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::profile::ProfileError;

/// What a call was about, so a `NotFound` can say "no user named alice".
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Nothing named: the server's message is used.
    None,
    /// An agent, user or policy by name.
    Named(&'static str, &'a str),
    /// A grant by id.
    Grant(i64),
}

/// Why a `knockadm` command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The identity file is missing or unusable (exit 64).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `--controller` is not an `https://` URL (exit 64).
    #[error("invalid --controller '{url}': {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Bad local input the argument parser could not catch (exit 64).
    #[error("{0}")]
    Input(String),
    /// TCP to the controller failed, or the connection dropped (exit 69).
    #[error("cannot reach controller at {url}: {reason}")]
    Unreachable {
        /// The controller URL.
        url: String,
        /// Why, e.g. "connection refused".
        reason: String,
    },
    /// The TLS handshake failed on our side, e.g. the controller's
    /// certificate is not signed by the identity's CA (exit 1).
    #[error("tls with controller at {url} failed: {reason}")]
    Tls {
        /// The controller URL.
        url: String,
        /// rustls' reason.
        reason: String,
    },
    /// The controller refused the admin certificate (exit 1).
    #[error("the controller refused this identity: {0}")]
    Refused(String),
    /// The named thing does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already (exit 1).
    #[error("{0}")]
    AlreadyExists(String),
    /// The controller rejected the request as invalid (exit 1).
    #[error("{0}")]
    Rejected(String),
    /// Any other status from the controller (exit 1).
    #[error("the controller failed: {message} ({code})")]
    Server {
        /// The gRPC code, described.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A profile could not be written, or exists already (exit 64 then).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The controller issued keys, but the profile holding them could not
    /// be written (exit 1).
    #[error(
        "user {user} has new keys but the profile could not be saved \
         (issue new ones with 'knockadm user rotate-keys {user} --profile-out FILE')"
    )]
    ProfileLost {
        /// The user.
        user: String,
        /// Why the write failed (boxed: keeps every `AdminError` small).
        #[source]
        source: Box<ProfileError>,
    },
    /// Output could not be written (exit 1).
    #[error("failed to write to stdout")]
    Output(#[from] io::Error),
}

impl CommandError for AdminError {
    fn exit_code(&self) -> u8 {
        match self {
            AdminError::Identity(_)
            | AdminError::BadUrl { .. }
            | AdminError::Input(_)
            | AdminError::Profile(ProfileError::Exists { .. }) => EXIT_USAGE,
            AdminError::Unreachable { .. } => EXIT_UNAVAILABLE,
            AdminError::Tls { .. }
            | AdminError::Refused(_)
            | AdminError::NotFound(_)
            | AdminError::AlreadyExists(_)
            | AdminError::Rejected(_)
            | AdminError::Server { .. }
            | AdminError::Profile(_)
            | AdminError::ProfileLost { .. }
            | AdminError::Output(_) => EXIT_FAILURE,
        }
    }
}

/// What a transport error chain comes down to.
enum Cause {
    /// The TLS handshake failed: rustls' message, and whether it was the
    /// server refusing our certificate (an alert about it).
    Tls {
        /// rustls' message.
        text: String,
        /// The peer's alert says it does not accept the client certificate.
        refused: bool,
    },
    /// Socket-level failure: its kind and the innermost message.
    Io(io::ErrorKind, String),
    /// Anything else: the innermost message.
    Other(String),
}

/// Alerts a server sends when it does not accept the client certificate.
const CLIENT_CERT_ALERTS: [AlertDescription; 8] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// rustls' `Display` for a received alert; h2 keeps only this text of an
/// IO error (not the error itself), so it is matched as text too.
const ALERT_PREFIX: &str = "received fatal alert: ";

fn tls_cause(text: String) -> Cause {
    let refused = text
        .strip_prefix(ALERT_PREFIX)
        .is_some_and(|alert| CLIENT_CERT_ALERTS.iter().any(|a| format!("{a:?}") == alert));
    Cause::Tls { text, refused }
}

/// Walks an error chain, looking inside `io::Error`s (whose `source()`
/// skips the error they wrap).
fn cause(err: &(dyn StdError + 'static)) -> Cause {
    let mut current = Some(err);
    let mut io_kind = None;
    let mut innermost = one_line(&err.to_string());
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_cause(tls.to_string());
        }
        if let Some(refused) = err.downcast_ref::<RefusedAfterHandshake>() {
            return Cause::Tls {
                text: refused.reason.clone(),
                refused: true,
            };
        }
        innermost = one_line(&err.to_string());
        current = match err.downcast_ref::<io::Error>() {
            Some(io_err) => {
                io_kind.get_or_insert(io_err.kind());
                match io_err.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => err.source(),
                }
            }
            None => err.source(),
        };
    }
    if innermost.starts_with(ALERT_PREFIX) || innermost.starts_with("invalid peer certificate: ") {
        return tls_cause(innermost);
    }
    match io_kind {
        Some(kind) => Cause::Io(kind, innermost),
        None => Cause::Other(innermost),
    }
}

/// Says what a server-certificate failure usually means.
fn with_hint(text: String) -> String {
    let hint = if text.contains("NotValidForName") {
        "the controller's certificate does not name this host: use a name it was \
         issued for, or add one with 'knockgate-controller init --san'"
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the controller's certificate is not signed by the CA in the identity file"
    } else {
        return text;
    };
    format!("{text} ({hint})")
}

fn io_text(kind: io::ErrorKind, innermost: String) -> String {
    let text = match kind {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "connection timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        _ => return innermost,
    };
    text.to_owned()
}

impl AdminError {
    /// Whether stdout was closed by its reader (`knockadm … | head`).
    #[must_use]
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AdminError::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
    }

    /// Classifies a failure to connect (or a transport failure in a call).
    pub(crate) fn from_transport(url: &str, err: &(dyn StdError + 'static)) -> AdminError {
        match cause(err) {
            Cause::Tls {
                text,
                refused: true,
            } => AdminError::Refused(text),
            Cause::Tls { text, .. } => AdminError::Tls {
                url: url.to_owned(),
                reason: with_hint(text),
            },
            Cause::Io(kind, text) => AdminError::Unreachable {
                url: url.to_owned(),
                reason: io_text(kind, text),
            },
            Cause::Other(text) => AdminError::Unreachable {
                url: url.to_owned(),
                reason: text,
            },
        }
    }

    /// Turns a gRPC status into an error about `subject`.
    pub fn from_status(url: &str, subject: Subject<'_>, status: &Status) -> AdminError {
        let message = one_line(status.message());
        if let Some(source) = status.source() {
            // A status made from a transport failure (tonic sets the source).
            let transport = AdminError::from_transport(url, source);
            if matches!(transport, AdminError::Refused(_) | AdminError::Tls { .. })
                || matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                )
            {
                return transport;
            }
        }
        match status.code() {
            Code::NotFound => AdminError::NotFound(match subject {
                Subject::Named(noun, name) => format!("no {noun} named {name}"),
                Subject::Grant(id) => format!("no grant with id {id}"),
                Subject::None => message,
            }),
            Code::AlreadyExists => AdminError::AlreadyExists(match subject {
                Subject::Named(noun, name) => {
                    format!("{} {noun} named {name} already exists", article(noun))
                }
                _ => message,
            }),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                AdminError::Rejected(message)
            }
            Code::PermissionDenied | Code::Unauthenticated => AdminError::Refused(message),
            Code::Unavailable | Code::DeadlineExceeded => AdminError::Unreachable {
                url: url.to_owned(),
                reason: message,
            },
            code => AdminError::Server {
                code: code.description().to_owned(),
                message,
            },
        }
    }
}

fn article(noun: &str) -> &'static str {
    // The nouns are agent, user and policy: only "agent" takes "an".
    if noun == "agent" { "an" } else { "a" }
}

/// Server text on one line, control characters dropped, so a message can
/// never forge or garble terminal output.
pub(crate) fn one_line(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
