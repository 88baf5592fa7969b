//! `Admin`: the API knockadm drives. Handlers live by noun in `admin/*`;
//! this file maps RPCs to them and writes the audit event every change
//! leaves (`admin.<noun>.<verb>`, with the admin's identity).

mod admins;
mod agents;
mod grants;
mod policies;
mod status;
mod users;

use std::sync::Arc;

use knockgate_proto::api::{self, admin_server::Admin};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::authz::Principal;
use crate::error::ServiceError;
use crate::name::{AdminName, AgentName};
use crate::server::Controller;
use crate::store::ConfigVersion;
use crate::trail::Entry;

/// The `Admin` service.
#[derive(Debug)]
pub struct AdminService {
    state: Arc<Controller>,
}

impl AdminService {
    /// The service over `state`.
    pub fn new(state: Arc<Controller>) -> Self {
        Self { state }
    }

    fn ctx<T>(&self, req: &Request<T>) -> Result<Ctx<'_>, ServiceError> {
        match Principal::of(req)? {
            Principal::Admin(admin) => Ok(Ctx {
                state: &self.state,
                admin,
            }),
            _ => Err(ServiceError::Internal(
                "admin service reached without an admin principal",
            )),
        }
    }
}

/// One admin call: the shared state and who is calling.
struct Ctx<'a> {
    state: &'a Controller,
    admin: AdminName,
}

impl Ctx<'_> {
    /// Writes `admin.<kind>` with the admin's name added to `detail`.
    async fn audit(
        &self,
        kind: &str,
        agent: Option<&AgentName>,
        user: Option<&str>,
        mut detail: Value,
    ) {
        if let Value::Object(m) = &mut detail {
            m.insert("admin".into(), Value::from(self.admin.as_str()));
        }
        Entry::new(format!("admin.{kind}"), detail)
            .agent(agent)
            .user(user)
            .write(&self.state.store)
            .await;
    }

    /// Tells this replica's streams about a committed change (other replicas
    /// hear of it through the store).
    fn changed(&self, v: ConfigVersion) {
        self.state.hub.bump(v);
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Runs `$handler(ctx, request body)` and wraps the result.
macro_rules! handle {
    ($self:ident, $req:ident, $handler:path) => {{
        let ctx = $self.ctx(&$req)?;
        Ok(Response::new($handler(&ctx, $req.into_inner()).await?))
    }};
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_agent(&self, req: Request<api::AddAgentRequest>) -> Reply<api::AddAgentResponse> {
        handle!(self, req, agents::add)
    }
    async fn list_agents(
        &self,
        req: Request<api::ListAgentsRequest>,
    ) -> Reply<api::ListAgentsResponse> {
        handle!(self, req, agents::list)
    }
    async fn revoke_agent(
        &self,
        req: Request<api::RevokeAgentRequest>,
    ) -> Reply<api::RevokeAgentResponse> {
        handle!(self, req, agents::revoke)
    }
    async fn add_user(&self, req: Request<api::AddUserRequest>) -> Reply<api::UserCredentials> {
        handle!(self, req, users::add)
    }
    async fn list_users(
        &self,
        req: Request<api::ListUsersRequest>,
    ) -> Reply<api::ListUsersResponse> {
        handle!(self, req, users::list)
    }
    async fn get_user(&self, req: Request<api::GetUserRequest>) -> Reply<api::UserInfo> {
        handle!(self, req, users::get)
    }
    async fn set_user_disabled(
        &self,
        req: Request<api::SetUserDisabledRequest>,
    ) -> Reply<api::UserInfo> {
        handle!(self, req, users::set_disabled)
    }
    async fn remove_user(
        &self,
        req: Request<api::RemoveUserRequest>,
    ) -> Reply<api::RemoveUserResponse> {
        handle!(self, req, users::remove)
    }
    async fn rotate_user_keys(
        &self,
        req: Request<api::RotateUserKeysRequest>,
    ) -> Reply<api::UserCredentials> {
        handle!(self, req, users::rotate_keys)
    }
    async fn user_gateways(
        &self,
        req: Request<api::GetUserRequest>,
    ) -> Reply<api::UserGatewaysResponse> {
        handle!(self, req, users::gateways)
    }
    async fn add_policy(&self, req: Request<api::PolicySpec>) -> Reply<api::PolicySpec> {
        handle!(self, req, policies::add)
    }
    async fn list_policies(
        &self,
        req: Request<api::ListPoliciesRequest>,
    ) -> Reply<api::ListPoliciesResponse> {
        handle!(self, req, policies::list)
    }
    async fn get_policy(&self, req: Request<api::GetPolicyRequest>) -> Reply<api::PolicySpec> {
        handle!(self, req, policies::get)
    }
    async fn remove_policy(
        &self,
        req: Request<api::RemovePolicyRequest>,
    ) -> Reply<api::RemovePolicyResponse> {
        handle!(self, req, policies::remove)
    }
    async fn list_grants(
        &self,
        req: Request<api::ListGrantsRequest>,
    ) -> Reply<api::ListGrantsResponse> {
        handle!(self, req, grants::list)
    }
    async fn revoke_grants(
        &self,
        req: Request<api::RevokeGrantsRequest>,
    ) -> Reply<api::RevokeGrantsResponse> {
        handle!(self, req, grants::revoke)
    }
    async fn query_audit(&self, req: Request<api::AuditQuery>) -> Reply<api::AuditPage> {
        handle!(self, req, grants::query_audit)
    }
    async fn fleet_status(
        &self,
        req: Request<api::FleetStatusRequest>,
    ) -> Reply<api::FleetStatusResponse> {
        handle!(self, req, status::fleet)
    }
    async fn add_admin(&self, req: Request<api::AddAdminRequest>) -> Reply<api::AddAdminResponse> {
        handle!(self, req, admins::add)
    }
    async fn list_admins(
        &self,
        req: Request<api::ListAdminsRequest>,
    ) -> Reply<api::ListAdminsResponse> {
        handle!(self, req, admins::list)
    }
    async fn revoke_admin(
        &self,
        req: Request<api::RevokeAdminRequest>,
    ) -> Reply<api::RevokeAdminResponse> {
        handle!(self, req, admins::revoke)
    }
}
