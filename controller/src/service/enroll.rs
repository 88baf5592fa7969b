//! `Enrollment.Enroll`: a one-time token and a CSR in, an agent certificate
//! out. Anyone may call it; the token is the credential.

use std::net::SocketAddr;
use std::sync::Arc;

use knockgate_proto::api::{self, enrollment_server::Enrollment};
use rcgen::CertificateSigningRequestParams;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::name::AgentName;
use crate::pki::pem_fingerprint;
use crate::server::Controller;
use crate::store::{Timestamp, TokenError, TokenHash};
use crate::trail::{ENROL_OK, ENROL_REFUSED, Entry};

/// Longest token accepted (ours are 43 characters).
const MAX_TOKEN_LEN: usize = 128;

/// The `Enrollment` service.
#[derive(Debug)]
pub struct EnrollService {
    state: Arc<Controller>,
}

impl EnrollService {
    /// The service over `state`.
    pub fn new(state: Arc<Controller>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        req: Request<api::EnrollRequest>,
    ) -> Result<Response<api::EnrollResponse>, Status> {
        let peer = req.remote_addr();
        let api::EnrollRequest { token, csr_pem } = req.into_inner();
        Ok(Response::new(
            enroll(&self.state, peer, &token, &csr_pem).await?,
        ))
    }
}

async fn refuse(
    state: &Controller,
    peer: Option<SocketAddr>,
    agent: Option<&AgentName>,
    reason: &str,
) {
    let suppressed = match peer {
        Some(p) => match state.refusals.admit(ENROL_REFUSED, p.ip(), reason) {
            Some(n) => n,
            None => {
                tracing::debug!(peer = ?peer, reason, "enrolment refused (aggregated)");
                return;
            }
        },
        None => 0,
    };
    tracing::warn!(peer = ?peer, agent = ?agent, reason, suppressed, "enrolment refused");
    Entry::new(
        ENROL_REFUSED,
        json!({ "reason": reason, "suppressed": suppressed }),
    )
    .agent(agent)
    .peer(peer)
    .write(&state.store)
    .await;
}

async fn enroll(
    state: &Controller,
    peer: Option<SocketAddr>,
    token: &str,
    csr_pem: &str,
) -> Result<api::EnrollResponse, ServiceError> {
    // The CSR is checked before the token is spent, so a bad CSR does not burn it.
    if CertificateSigningRequestParams::from_pem(csr_pem).is_err() {
        refuse(state, peer, None, "invalid certificate signing request").await;
        return Err(ServiceError::invalid(
            "csr_pem: invalid certificate signing request",
        ));
    }
    let now = Timestamp::now();
    let redeemed = if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        Err(TokenError::Unknown)
    } else {
        state.store.redeem_token(&TokenHash::of(token), now).await
    };
    let agent = match redeemed {
        Ok(agent) => agent,
        Err(TokenError::Store(e)) => return Err(e.into()),
        Err(e) => {
            let agent = match &e {
                TokenError::Revoked(a) => Some(a),
                _ => None,
            };
            refuse(state, peer, agent, &e.to_string()).await;
            return Err(ServiceError::Unauthenticated(e.to_string()));
        }
    };
    let issued = issue_agent_cert(state, &agent, csr_pem, now).await?;
    let (cert_pem, fingerprint) = (issued.cert_pem, issued.fingerprint);
    tracing::info!(%agent, peer = ?peer, "agent enrolled");
    Entry::new(ENROL_OK, json!({ "fingerprint": fingerprint }))
        .agent(Some(&agent))
        .peer(peer)
        .write(&state.store)
        .await;
    Ok(api::EnrollResponse {
        agent_name: agent.to_string(),
        renew_after_unix_ms: issued.renew_after_unix_ms,
        cert_pem,
        ca_pem: state.ca.cert_pem().to_owned(),
    })
}

/// An agent certificate just signed and pinned.
pub(super) struct IssuedAgentCert {
    pub(super) cert_pem: String,
    pub(super) fingerprint: String,
    /// Two thirds into its lifetime: when the agent should renew it.
    pub(super) renew_after_unix_ms: i64,
}

/// Sign `csr_pem` as `agent` for the controller's agent certificate lifetime and pin the
/// result: from now on only this certificate is accepted for `agent`.
pub(super) async fn issue_agent_cert(
    state: &Controller,
    agent: &AgentName,
    csr_pem: &str,
    now: Timestamp,
) -> Result<IssuedAgentCert, ServiceError> {
    let lifetime = state.agent_cert_lifetime;
    let validity = time::Duration::try_from(lifetime)
        .map_err(|_| ServiceError::Internal("agent certificate lifetime out of range"))?;
    let cert_pem = state.ca.sign_agent_csr_for(csr_pem, agent, validity)?;
    let fingerprint = pem_fingerprint(&cert_pem)
        .ok_or(ServiceError::Internal("signed certificate does not parse"))?;
    state
        .store
        .set_agent_enrolled(agent, &fingerprint, now)
        .await?;
    let renew_in = i64::try_from((lifetime * 2 / 3).as_millis()).unwrap_or(i64::MAX);
    Ok(IssuedAgentCert {
        cert_pem,
        fingerprint,
        renew_after_unix_ms: now.unix_millis().saturating_add(renew_in),
    })
}
