//! Admin: admin identities (add with a new certificate, list, revoke). Each one is pinned
//! by its certificate's fingerprint, as agents are.

use knockgate_proto::api;
use serde_json::json;

use super::Ctx;
use crate::error::ServiceError;
use crate::name::AdminName;
use crate::pki::pem_fingerprint;
use crate::store::Timestamp;

pub(super) async fn add(
    ctx: &Ctx<'_>,
    r: api::AddAdminRequest,
) -> Result<api::AddAdminResponse, ServiceError> {
    let name = AdminName::new(r.name)?;
    let issued = ctx.state.ca.issue_admin(&name)?;
    let fingerprint = pem_fingerprint(&issued.cert_pem).ok_or(ServiceError::Internal(
        "issued admin certificate is not PEM",
    ))?;
    ctx.state
        .store
        .add_admin(&name, &fingerprint, Timestamp::now())
        .await?;
    tracing::info!(admin = %name, by = %ctx.admin, "admin added");
    ctx.audit(
        "admin.add",
        None,
        None,
        json!({ "name": name.as_str(), "cert_sha256": fingerprint }),
    )
    .await;
    Ok(api::AddAdminResponse {
        identity_pem: format!(
            "{}{}{}",
            issued.cert_pem,
            issued.key_pem,
            ctx.state.ca.cert_pem()
        ),
        cert_sha256: fingerprint,
    })
}

pub(super) async fn list(
    ctx: &Ctx<'_>,
    _: api::ListAdminsRequest,
) -> Result<api::ListAdminsResponse, ServiceError> {
    let admins = ctx
        .state
        .store
        .list_admins()
        .await?
        .into_iter()
        .map(|a| api::AdminInfo {
            name: a.name.to_string(),
            cert_sha256: a.cert_fingerprint,
            created_at_unix_ms: a.created_at.unix_millis(),
            revoked_at_unix_ms: a.revoked_at.map_or(0, |t| t.unix_millis()),
        })
        .collect();
    Ok(api::ListAdminsResponse { admins })
}

pub(super) async fn revoke(
    ctx: &Ctx<'_>,
    r: api::RevokeAdminRequest,
) -> Result<api::RevokeAdminResponse, ServiceError> {
    let name = AdminName::new(r.name)?;
    ctx.state
        .store
        .revoke_admin(&name, Timestamp::now())
        .await?;
    tracing::info!(admin = %name, by = %ctx.admin, "admin revoked");
    ctx.audit("admin.revoke", None, None, json!({ "name": name.as_str() }))
        .await;
    Ok(api::RevokeAdminResponse {})
}
