//! `AgentControl`: the long-lived `Sync` stream (driven in `sync.rs`),
//! `Report`, which stores events at least once, de-duplicated by
//! `(agent, seq)`, and keeps the grants table in step with grant events, and
//! `Claim` of one-time keys (decided in `claim.rs`).

use std::sync::Arc;

use knockgate_proto::api::{self, agent_control_server::AgentControl};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::authz::Principal;
use crate::convert::claim_from_api;
use crate::error::ServiceError;
use crate::event::{GrantChange, ReportedEvent};
use crate::name::AgentName;
use crate::server::Controller;
use crate::store::{StoreError, Timestamp};
use crate::trail::{AGENT_RENEWED, Entry};
use serde_json::json;

/// Messages queued towards one agent before the stream task waits.
const OUTBOUND_QUEUE: usize = 16;

/// The `AgentControl` service.
#[derive(Debug)]
pub struct AgentService {
    state: Arc<Controller>,
}

impl AgentService {
    /// The service over `state`.
    pub fn new(state: Arc<Controller>) -> Self {
        Self { state }
    }
}

fn agent_of<T>(req: &Request<T>) -> Result<(AgentName, String), ServiceError> {
    match Principal::of(req)? {
        Principal::Agent { name, fingerprint } => Ok((name, fingerprint)),
        _ => Err(ServiceError::Internal(
            "agent service reached without an agent principal",
        )),
    }
}

#[tonic::async_trait]
impl AgentControl for AgentService {
    type SyncStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<api::ControllerMessage, Status>> + Send>>;

    async fn sync(
        &self,
        req: Request<Streaming<api::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let (agent, fingerprint) = agent_of(&req)?;
        let peer = req.remote_addr();
        let (tx, rx) = mpsc::channel::<super::sync::Outbound>(OUTBOUND_QUEUE);
        // Registered before the task reads the agent row, so a revoke either
        // finds this stream or is seen by that read.
        let registration = self.state.hub.register(agent.clone());
        let session = super::sync::Session::new(Arc::clone(&self.state), agent, fingerprint, tx);
        tokio::spawn(session.run(req.into_inner(), registration, peer));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|m| *m))))
    }

    async fn report(
        &self,
        req: Request<api::ReportRequest>,
    ) -> Result<Response<api::ReportResponse>, Status> {
        let (agent, _) = agent_of(&req)?;
        let events = req
            .into_inner()
            .events
            .into_iter()
            .map(ReportedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let stored_through_seq = store_events(&self.state, &agent, &events).await?;
        Ok(Response::new(api::ReportResponse { stored_through_seq }))
    }

    async fn claim(
        &self,
        req: Request<api::ClaimRequest>,
    ) -> Result<Response<api::ClaimResponse>, Status> {
        let (agent, _) = agent_of(&req)?;
        let claim = claim_from_api(req.into_inner(), &agent, Timestamp::now())?;
        let resp = super::claim::claim(&self.state, &agent, claim).await?;
        Ok(Response::new(resp))
    }

    async fn renew(
        &self,
        req: Request<api::RenewRequest>,
    ) -> Result<Response<api::RenewResponse>, Status> {
        let (agent, old) = agent_of(&req)?;
        let api::RenewRequest { csr_pem } = req.into_inner();
        let now = Timestamp::now();
        let issued = super::enroll::issue_agent_cert(&self.state, &agent, &csr_pem, now).await?;
        tracing::info!(%agent, "agent certificate renewed");
        Entry::new(
            AGENT_RENEWED,
            json!({ "old_fingerprint": old, "fingerprint": issued.fingerprint }),
        )
        .agent(Some(&agent))
        .write(&self.state.store)
        .await;
        Ok(Response::new(api::RenewResponse {
            cert_pem: issued.cert_pem,
            renew_after_unix_ms: issued.renew_after_unix_ms,
        }))
    }
}

/// Stores `events` in order; returns the highest seq, all stored.
async fn store_events(
    state: &Controller,
    agent: &AgentName,
    events: &[ReportedEvent],
) -> Result<u64, ServiceError> {
    let store = &state.store;
    let mut through = 0;
    for e in events {
        // A duplicate is a redelivery: the grant writes below are idempotent too.
        store.append_audit(&e.audit_row(agent)).await?;
        if let Some(why) = e.grant_error() {
            tracing::warn!(%agent, seq = e.seq, kind = %e.kind, reason = why, "reported grant not recorded");
        }
        match &e.grant {
            Some(GrantChange::Opened { .. }) => {
                if let Some(grant) = e.new_grant(agent) {
                    store.record_grant_open(&grant).await?;
                }
            }
            Some(GrantChange::Closed { grant_ref, reason }) => {
                match store
                    .record_grant_close(agent, grant_ref, e.at, reason)
                    .await
                {
                    Ok(_) => {}
                    // A close for a grant whose opening was never reported: the
                    // audit row is the record.
                    Err(StoreError::NotFound { .. }) => {
                        tracing::debug!(%agent, grant_ref, "close reported for an unknown grant");
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            None => {}
        }
        through = through.max(e.seq);
    }
    Ok(through)
}
