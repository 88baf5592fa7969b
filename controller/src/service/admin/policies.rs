//! Admin: policies (validated at the edge, stored as JSON).

use std::collections::BTreeSet;

use knockgate_proto::api;
use serde_json::json;

use super::Ctx;
use crate::convert::policy_to_api;
use crate::error::ServiceError;
use crate::name::{PolicyName, UserName};
use crate::policy::PolicyDef;
use crate::store::Timestamp;

pub(super) async fn add(
    ctx: &Ctx<'_>,
    spec: api::PolicySpec,
) -> Result<api::PolicySpec, ServiceError> {
    let def = PolicyDef::try_from(spec)?;
    let store = &ctx.state.store;
    let known: BTreeSet<UserName> = store
        .list_users()
        .await?
        .into_iter()
        .map(|u| u.name)
        .collect();
    if let Some((i, unknown)) = def
        .users
        .iter()
        .enumerate()
        .find(|(_, u)| !known.contains(*u))
    {
        return Err(ServiceError::invalid(format!(
            "users[{i}]: unknown user {unknown}"
        )));
    }
    ctx.changed(
        store
            .add_policy(&def.name, &def.to_json(), Timestamp::now())
            .await?,
    );
    ctx.audit(
        "policy.add",
        None,
        None,
        json!({ "policy": def.name.as_str(), "spec": def.to_json() }),
    )
    .await;
    Ok(policy_to_api(&def))
}

pub(super) async fn list(
    ctx: &Ctx<'_>,
    _: api::ListPoliciesRequest,
) -> Result<api::ListPoliciesResponse, ServiceError> {
    let policies = crate::service::load_policies(&ctx.state.store).await?;
    Ok(api::ListPoliciesResponse {
        policies: policies.iter().map(policy_to_api).collect(),
    })
}

pub(super) async fn get(
    ctx: &Ctx<'_>,
    r: api::GetPolicyRequest,
) -> Result<api::PolicySpec, ServiceError> {
    let stored = ctx
        .state
        .store
        .get_policy(&PolicyName::new(r.name)?)
        .await?;
    let def = PolicyDef::from_json(stored.name.as_str(), &stored.spec).map_err(|e| {
        tracing::error!(policy = %stored.name, error = %e, "stored policy is invalid");
        ServiceError::Internal("stored policy is invalid")
    })?;
    Ok(policy_to_api(&def))
}

pub(super) async fn remove(
    ctx: &Ctx<'_>,
    r: api::RemovePolicyRequest,
) -> Result<api::RemovePolicyResponse, ServiceError> {
    let name = PolicyName::new(r.name)?;
    ctx.changed(ctx.state.store.remove_policy(&name).await?);
    ctx.audit(
        "policy.remove",
        None,
        None,
        json!({ "policy": name.as_str() }),
    )
    .await;
    Ok(api::RemovePolicyResponse {})
}
