//! The agent's side of the controller: enrolment, the configuration sync stream, and the
//! mutual-TLS channel that sync and the reporter share. Proto types stop here: what goes
//! on to the engine is the core's validated config.

pub mod address;
pub mod backoff;
pub mod cache;
pub mod claim;
pub mod convert;
pub mod delta;
pub mod enroll;
pub mod failover;
pub mod renew;
pub mod sync;
pub mod tls;

#[cfg(test)]
mod fake_controller;
#[cfg(test)]
pub(crate) mod test_pki;
#[cfg(test)]
mod tests;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use knockgate_agent_core::config::{Config, Origin};
use knockgate_proto::api::AgentConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::engine::Update;
use convert::PolicySet;
pub use failover::ControllerChannel;

/// The agent's private key in the state directory (0600).
pub const STATE_KEY: &str = "agent-key.pem";
/// The agent's certificate in the state directory.
pub const STATE_CERT: &str = "agent.pem";
/// The controller's CA in the state directory: the only trust anchor for the controller.
pub const STATE_CA: &str = "ca.pem";
/// The name the controller enrolled this agent as (its certificate's identity): SPA
/// packets must be sealed for it, and the config's `agent.name` must match it.
pub const STATE_NAME: &str = "agent-name";
/// When to renew the agent certificate (unix ms), as the controller said.
pub const STATE_RENEW_AFTER: &str = "agent-renew-after";

/// The enrolled name recorded in `state_dir`, if there is one.
pub fn enrolled_name(state_dir: &std::path::Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(state_dir.join(STATE_NAME)) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why the controller channel cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not enrolled: {path} is missing (run `knockgate-agent enroll` first)")]
    NotEnrolled { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("controller.url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// A channel to the controller at `urls` (its replicas, in order; see [`failover`]),
/// authenticated with the agent's certificate from `state_dir` and trusting only the CA
/// stored there at enrolment. It connects lazily and reconnects by itself; calls on it
/// fail while no replica can be reached.
pub fn channel(urls: &[String], state_dir: &Path) -> Result<ControllerChannel, ControlError> {
    let replicas = urls
        .iter()
        .map(|url| Ok((url.clone(), replica(url, state_dir)?)))
        .collect::<Result<Vec<_>, ControlError>>()?;
    ControllerChannel::new(replicas).ok_or_else(|| ControlError::BadUrl {
        url: String::new(),
        reason: "no controller URL".into(),
    })
}

/// The channel to one replica.
fn replica(url: &str, state_dir: &Path) -> Result<Channel, ControlError> {
    let read = |name: &str| {
        let path = state_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ControlError::NotEnrolled { path }
            } else {
                ControlError::Read { path, source }
            }
        })
    };
    let (key, cert, ca) = (read(STATE_KEY)?, read(STATE_CERT)?, read(STATE_CA)?);
    let bad_url = |reason: String| ControlError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad_url(e.to_string()))?;
    let host = host_of(endpoint.uri()).ok_or_else(|| bad_url("no host".into()))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(host);
    let endpoint = endpoint
        .tls_config(tls)
        .map_err(|e| bad_url(error_chain(&e)))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // A controller that vanished without closing the connection is noticed within
        // about a minute, not when the kernel gives up on TCP.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// The host of a URI, without the brackets of an IPv6 literal.
pub(crate) fn host_of(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| host.to_string())
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // tonic and hyper often repeat their source in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Turn a full config from the controller into everything the engine needs, validated
/// as a whole against the file's own sections (`base`), derived material included.
/// Nothing is applied here.
pub fn prepare(base: &Config, full: &AgentConfig) -> Result<Update, String> {
    let set = PolicySet::try_from(full).map_err(|e| e.to_string())?;
    let config = base
        .with_policies(Origin::Controller, set.users, set.policies)
        .map_err(|e| e.to_string())?;
    let p0f = crate::fingerprint::load(&config)?;
    Update::build(config)
        .map_err(|e| e.to_string())?
        .with_material(set.material)
        .map_err(|e| e.to_string())
        .map(|u| u.with_p0f(p0f))
}
