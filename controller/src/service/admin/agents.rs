//! Admin: agents (add with a one-time enrolment token, list, revoke).

use std::collections::BTreeMap;

use knockgate_proto::api;
use serde_json::json;

use super::Ctx;
use crate::convert::{AgentRequest, agent_to_api};
use crate::error::ServiceError;
use crate::name::AgentName;
use crate::secrets;
use crate::store::{GrantFilter, NewAgent, Timestamp, TokenHash};

pub(super) async fn add(
    ctx: &Ctx<'_>,
    r: api::AddAgentRequest,
) -> Result<api::AddAgentResponse, ServiceError> {
    let r = AgentRequest::try_from(r)?;
    let store = &ctx.state.store;
    let token = secrets::enrolment_token()?;
    let now = Timestamp::now();
    let expires_at = now.saturating_add(r.token_ttl);
    store
        .add_agent(&NewAgent {
            name: r.name.clone(),
            labels: r.labels.clone(),
            address: r.address.clone(),
            created_at: now,
        })
        .await?;
    store
        .create_token(&r.name, &TokenHash::of(&token), expires_at, now)
        .await?;
    let detail = json!({
        "labels": r.labels,
        "address": r.address,
        "token_expires_at_unix_ms": expires_at.unix_millis(),
    });
    ctx.audit("agent.add", Some(&r.name), None, detail).await;
    Ok(api::AddAgentResponse {
        token,
        expires_at_unix_ms: expires_at.unix_millis(),
        ca_sha256: ctx.state.ca.sha256_fingerprint(),
    })
}

pub(super) async fn list(
    ctx: &Ctx<'_>,
    _: api::ListAgentsRequest,
) -> Result<api::ListAgentsResponse, ServiceError> {
    let store = &ctx.state.store;
    let version = store.current_version().await?;
    let now = Timestamp::now();
    let open = GrantFilter {
        active_at: Some(now),
        ..GrantFilter::default()
    };
    let mut active: BTreeMap<AgentName, u32> = BTreeMap::new();
    for g in store.list_grants(&open).await? {
        *active.entry(g.agent).or_default() += 1;
    }
    let agents = store
        .list_agents()
        .await?
        .iter()
        .map(|a| {
            let grants = active.get(&a.name).copied().unwrap_or(0);
            agent_to_api(a, version.0, grants, now)
        })
        .collect();
    Ok(api::ListAgentsResponse { agents })
}

pub(super) async fn revoke(
    ctx: &Ctx<'_>,
    r: api::RevokeAgentRequest,
) -> Result<api::RevokeAgentResponse, ServiceError> {
    let name = AgentName::new(r.name)?;
    let version = ctx
        .state
        .store
        .revoke_agent(&name, Timestamp::now())
        .await?;
    let closed = ctx.state.hub.close_agent(&name);
    ctx.changed(version);
    tracing::info!(agent = %name, closed, "agent revoked");
    ctx.audit(
        "agent.revoke",
        Some(&name),
        None,
        json!({ "closed_streams": closed }),
    )
    .await;
    Ok(api::RevokeAgentResponse {})
}
