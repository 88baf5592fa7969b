//! The three gRPC services. Each handler takes the [`Principal`] the
//! authorization layer established, converts the request at the edge, and
//! returns `ServiceError`s that `error.rs` maps to statuses.
//!
//! [`Principal`]: crate::authz::Principal

mod admin;
mod agent;
mod claim;
mod enroll;
mod sync;

pub use admin::AdminService;
pub use agent::AgentService;
pub use enroll::EnrollService;

use crate::error::ServiceError;
use crate::policy::PolicyDef;
use crate::store::Store;

/// Every stored policy that still validates. One that does not (a stored
/// spec from an incompatible version) is left out, so it opens nothing, and
/// logged.
pub(crate) async fn load_policies(store: &Store) -> Result<Vec<PolicyDef>, ServiceError> {
    let mut out = Vec::new();
    for p in store.list_policies().await? {
        match PolicyDef::from_json(p.name.as_str(), &p.spec) {
            Ok(def) => out.push(def),
            Err(e) => {
                tracing::error!(policy = %p.name, error = %e, "stored policy is invalid; ignoring it")
            }
        }
    }
    Ok(out)
}
