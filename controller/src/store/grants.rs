//! Grants as agents report them, and admins' requests to close them early.

use super::{
    BeginWrite, Grant, GrantFilter, GrantId, NewGrant, RevokeTarget, StoreError, Timestamp,
};
use super::{Store, bump_version, narrow, on_pool, opt_ts, parse};
use crate::name::{AgentName, PolicyName, UserName};

type GrantRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    bool,
);

const SELECT_GRANT: &str = "SELECT id, agent, agent_ref, user_name, src, proto, port, policy, \
     opened_at, expires_at, closed_at, close_reason, revoke_requested FROM grants WHERE TRUE";

/// Narrows a query over `grants` ending in `WHERE TRUE` to `$filter`.
macro_rules! push_grant_filter {
    ($q:ident, $filter:expr) => {
        if let Some(agent) = &$filter.agent {
            $q.push(" AND agent = ").push_bind(agent.as_str());
        }
        if let Some(user) = &$filter.user {
            $q.push(" AND user_name = ").push_bind(user.as_str());
        }
        if let Some(now) = $filter.active_at {
            $q.push(" AND closed_at IS NULL AND expires_at > ")
                .push_bind(now.unix_millis());
        }
    };
}

fn grant_from_row(row: GrantRow) -> Result<Grant, StoreError> {
    let (
        id,
        agent,
        agent_ref,
        user,
        src,
        proto,
        port,
        policy,
        opened,
        expires,
        closed,
        reason,
        revoke,
    ) = row;
    Ok(Grant {
        id: GrantId(id),
        agent: parse::<AgentName>(&agent, "grant agent")?,
        agent_ref,
        user: user
            .map(|u| parse::<UserName>(&u, "grant user"))
            .transpose()?,
        src: parse(&src, "grant source address")?,
        proto,
        port: narrow(port, "grant port")?,
        policy: parse::<PolicyName>(&policy, "grant policy")?,
        opened_at: Timestamp::from_unix_millis(opened),
        expires_at: Timestamp::from_unix_millis(expires),
        closed_at: opt_ts(closed),
        close_reason: reason,
        revoke_requested: revoke,
    })
}

impl Store {
    /// Records a grant an agent opened. Idempotent on `(agent, agent_ref)`:
    /// a redelivered report returns the id stored the first time.
    pub async fn record_grant_open(&self, grant: &NewGrant) -> Result<GrantId, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let inserted = sqlx::query_scalar::<_, i64>(
                "INSERT INTO grants (agent, agent_ref, user_name, src, proto, port, policy, opened_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (agent, agent_ref) DO NOTHING RETURNING id",
            )
            .bind(grant.agent.as_str())
            .bind(&grant.agent_ref)
            .bind(grant.user.as_ref().map(UserName::as_str))
            .bind(grant.src.to_string())
            .bind(&grant.proto)
            .bind(i64::from(grant.port))
            .bind(grant.policy.as_str())
            .bind(grant.opened_at.unix_millis())
            .bind(grant.expires_at.unix_millis())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
            let id = match inserted {
                Some(id) => id,
                None => sqlx::query_scalar::<_, i64>("SELECT id FROM grants WHERE agent = $1 AND agent_ref = $2")
                    .bind(grant.agent.as_str())
                    .bind(&grant.agent_ref)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::Database)?,
            };
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(GrantId(id))
        })
    }

    /// Records that an agent closed a grant. Idempotent: the first close wins.
    pub async fn record_grant_close(
        &self,
        agent: &AgentName,
        agent_ref: &str,
        closed_at: Timestamp,
        reason: &str,
    ) -> Result<GrantId, StoreError> {
        let id = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "UPDATE grants SET closed_at = COALESCE(closed_at, $3), close_reason = COALESCE(close_reason, $4) \
                 WHERE agent = $1 AND agent_ref = $2 RETURNING id",
            )
            .bind(agent.as_str())
            .bind(agent_ref)
            .bind(closed_at.unix_millis())
            .bind(reason)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        id.map(GrantId)
            .ok_or_else(|| StoreError::not_found("grant", format_args!("{agent}/{agent_ref}")))
    }

    /// Grants matching `filter`, oldest first.
    pub async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(SELECT_GRANT);
            push_grant_filter!(q, filter);
            q.push(" ORDER BY id");
            q.build_query_as::<GrantRow>().fetch_all(pool).await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(grant_from_row).collect()
    }

    /// How many grants match `filter`.
    pub async fn count_grants(&self, filter: &GrantFilter) -> Result<u64, StoreError> {
        let n = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM grants WHERE TRUE");
            push_grant_filter!(q, filter);
            q.build_query_scalar::<i64>().fetch_one(pool).await
        })
        .map_err(StoreError::Database)?;
        narrow(n, "grant count")
    }

    /// Flags the target's grants that are open at `now` for early closing and
    /// returns how many matched. Bumps the config version when any did, so
    /// every replica pushes the request to the agents holding them.
    pub async fn request_grant_revoke(
        &self,
        target: &RevokeTarget,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let query = match target {
                RevokeTarget::Grant(id) => sqlx::query(
                    "UPDATE grants SET revoke_requested = TRUE \
                     WHERE id = $1 AND closed_at IS NULL AND expires_at > $2",
                )
                .bind(id.0),
                RevokeTarget::User(user) => sqlx::query(
                    "UPDATE grants SET revoke_requested = TRUE \
                     WHERE user_name = $1 AND closed_at IS NULL AND expires_at > $2",
                )
                .bind(user.as_str()),
            };
            let affected = query
                .bind(now.unix_millis())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?
                .rows_affected();
            if affected > 0 {
                bump_version!(tx);
            }
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(affected)
        })
    }
}
