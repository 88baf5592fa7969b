//! Admin: grants (list, revoke) and the audit trail.

use knockgate_proto::api;
use serde_json::json;

use super::Ctx;
use crate::convert::{audit_to_api, grant_filter, grant_to_api};
use crate::error::ServiceError;
use crate::fanout::Revocation;
use crate::store::{AuditFilter, GrantFilter, RevokeTarget, Timestamp};

pub(super) async fn list(
    ctx: &Ctx<'_>,
    r: api::ListGrantsRequest,
) -> Result<api::ListGrantsResponse, ServiceError> {
    let filter = grant_filter(r, Timestamp::now())?;
    let grants = ctx.state.store.list_grants(&filter).await?;
    Ok(api::ListGrantsResponse {
        grants: grants.iter().map(grant_to_api).collect(),
    })
}

/// Flags the grants in the store; every stream whose agent holds one pushes
/// the revoke on the version bump that follows (on any replica). A revoke by
/// user is also pushed by name at once, for grants not reported yet.
pub(super) async fn revoke(
    ctx: &Ctx<'_>,
    r: api::RevokeGrantsRequest,
) -> Result<api::RevokeGrantsResponse, ServiceError> {
    let target = RevokeTarget::try_from(r)?;
    let store = &ctx.state.store;
    let now = Timestamp::now();
    let (detail, user) = match &target {
        RevokeTarget::Grant(id) => {
            let open = GrantFilter {
                active_at: Some(now),
                ..GrantFilter::default()
            };
            if !store.list_grants(&open).await?.iter().any(|g| g.id == *id) {
                return Err(ServiceError::NotFound(format!(
                    "grant {} not found or not open",
                    id.0
                )));
            }
            (json!({ "grant": id.0 }), None)
        }
        RevokeTarget::User(u) => (json!({ "user": u.as_str() }), Some(u.to_string())),
    };
    let revoked = store.request_grant_revoke(&target, now).await?;
    if let Some(user) = &user {
        ctx.state.hub.push_all(Revocation::user(user.clone()));
    }
    ctx.changed(store.current_version().await?);
    let mut detail = detail;
    detail["revoked"] = json!(revoked);
    ctx.audit("grant.revoke", None, user.as_deref(), detail)
        .await;
    Ok(api::RevokeGrantsResponse {
        revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
    })
}

pub(super) async fn query_audit(
    ctx: &Ctx<'_>,
    q: api::AuditQuery,
) -> Result<api::AuditPage, ServiceError> {
    let filter = AuditFilter::try_from(q)?;
    let events = ctx.state.store.query_audit(&filter).await?;
    Ok(api::AuditPage {
        events: events.iter().map(audit_to_api).collect(),
    })
}
