//! Admin: users and their keys. Disabling or removing a user also asks every
//! agent to close that user's grants.

use std::collections::BTreeSet;

use knockgate_proto::api;
use serde_json::json;

use super::Ctx;
use crate::convert::{credentials_to_api, user_gateways_to_api, user_to_api};
use crate::desired;
use crate::error::ServiceError;
use crate::fanout::Revocation;
use crate::name::{UserName, is_valid_name};
use crate::policy::PolicyDef;
use crate::secrets;
use crate::store::{Agent, NewUser, RevokeTarget, Timestamp, User};

fn groups(list: Vec<String>) -> Result<BTreeSet<String>, ServiceError> {
    list.into_iter()
        .enumerate()
        .map(|(i, g)| {
            if is_valid_name(&g) {
                Ok(g)
            } else {
                Err(ServiceError::invalid(format!(
                    "groups[{i}]: invalid group name {g:?}: expected 1 to 64 characters from a-z 0-9 . _ -"
                )))
            }
        })
        .collect()
}

/// The agents and policies [`desired::gateways`] lists a user's gateways from.
async fn fleet(ctx: &Ctx<'_>) -> Result<(Vec<Agent>, Vec<PolicyDef>), ServiceError> {
    let agents = ctx.state.store.list_agents().await?;
    let policies = crate::service::load_policies(&ctx.state.store).await?;
    Ok((agents, policies))
}

/// The user's credentials with the gateways that admit them.
async fn credentials(ctx: &Ctx<'_>, user: &User) -> Result<api::UserCredentials, ServiceError> {
    let (agents, policies) = fleet(ctx).await?;
    Ok(credentials_to_api(
        user,
        desired::gateways(user, &agents, &policies),
    ))
}

/// The gateways a profile of the user lists, as [`credentials`] computes them, without
/// the keys. A disabled user is refused: no policy admits them, so the list would say
/// nothing opens anywhere.
pub(super) async fn gateways(
    ctx: &Ctx<'_>,
    r: api::GetUserRequest,
) -> Result<api::UserGatewaysResponse, ServiceError> {
    let name = UserName::new(r.name)?;
    let user = ctx.state.store.get_user(&name).await?;
    if user.disabled {
        return Err(ServiceError::invalid(format!(
            "user {name} is disabled: enable them first ('knockadm user enable {name}')"
        )));
    }
    let (agents, policies) = fleet(ctx).await?;
    Ok(user_gateways_to_api(
        &user,
        desired::gateways(&user, &agents, &policies),
    ))
}

pub(super) async fn add(
    ctx: &Ctx<'_>,
    r: api::AddUserRequest,
) -> Result<api::UserCredentials, ServiceError> {
    let api::AddUserRequest { name, groups: g } = r;
    let name = UserName::new(name)?;
    let new = NewUser {
        name: name.clone(),
        groups: groups(g)?,
        keys: secrets::user_keys()?,
        created_at: Timestamp::now(),
    };
    let store = &ctx.state.store;
    ctx.changed(store.add_user(&new).await?);
    ctx.audit(
        "user.add",
        None,
        Some(name.as_str()),
        json!({ "groups": new.groups }),
    )
    .await;
    let user = store.get_user(&name).await?;
    credentials(ctx, &user).await
}

pub(super) async fn list(
    ctx: &Ctx<'_>,
    _: api::ListUsersRequest,
) -> Result<api::ListUsersResponse, ServiceError> {
    let users = ctx.state.store.list_users().await?;
    Ok(api::ListUsersResponse {
        users: users.iter().map(user_to_api).collect(),
    })
}

pub(super) async fn get(
    ctx: &Ctx<'_>,
    r: api::GetUserRequest,
) -> Result<api::UserInfo, ServiceError> {
    let user = ctx.state.store.get_user(&UserName::new(r.name)?).await?;
    Ok(user_to_api(&user))
}

/// Flags the user's open grants for closing and pushes a revoke by user to
/// this replica's streams (grants not reported yet are closed too).
async fn close_grants_of(ctx: &Ctx<'_>, name: &UserName) -> Result<u64, ServiceError> {
    let store = &ctx.state.store;
    let flagged = store
        .request_grant_revoke(&RevokeTarget::User(name.clone()), Timestamp::now())
        .await?;
    ctx.state.hub.push_all(Revocation::user(name.to_string()));
    ctx.changed(store.current_version().await?);
    Ok(flagged)
}

pub(super) async fn set_disabled(
    ctx: &Ctx<'_>,
    r: api::SetUserDisabledRequest,
) -> Result<api::UserInfo, ServiceError> {
    let name = UserName::new(r.name)?;
    let store = &ctx.state.store;
    ctx.changed(store.set_user_disabled(&name, r.disabled).await?);
    let (verb, revoked) = if r.disabled {
        ("user.disable", close_grants_of(ctx, &name).await?)
    } else {
        ("user.enable", 0)
    };
    ctx.audit(
        verb,
        None,
        Some(name.as_str()),
        json!({ "grants_revoked": revoked }),
    )
    .await;
    Ok(user_to_api(&store.get_user(&name).await?))
}

pub(super) async fn remove(
    ctx: &Ctx<'_>,
    r: api::RemoveUserRequest,
) -> Result<api::RemoveUserResponse, ServiceError> {
    let name = UserName::new(r.name)?;
    ctx.changed(ctx.state.store.remove_user(&name).await?);
    let revoked = close_grants_of(ctx, &name).await?;
    ctx.audit(
        "user.remove",
        None,
        Some(name.as_str()),
        json!({ "grants_revoked": revoked }),
    )
    .await;
    Ok(api::RemoveUserResponse {})
}

pub(super) async fn rotate_keys(
    ctx: &Ctx<'_>,
    r: api::RotateUserKeysRequest,
) -> Result<api::UserCredentials, ServiceError> {
    let name = UserName::new(r.name)?;
    let store = &ctx.state.store;
    ctx.changed(
        store
            .rotate_user_keys(&name, &secrets::user_keys()?)
            .await?,
    );
    let user = store.get_user(&name).await?;
    ctx.audit(
        "user.rotate_keys",
        None,
        Some(name.as_str()),
        json!({ "key_version": user.key_version }),
    )
    .await;
    credentials(ctx, &user).await
}
