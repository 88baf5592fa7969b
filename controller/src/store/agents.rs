//! Agents and their one-time enrolment tokens.

use std::collections::BTreeMap;

use sqlx::types::Json;

use super::{Agent, BeginWrite, ConfigVersion, NewAgent, StoreError, Timestamp, TokenHash};
use super::{Backend, Store, bump_version, map_write_err, on_pool, opt_ts};
use crate::name::AgentName;

/// Why an enrolment token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No such token.
    #[error("enrolment token is unknown")]
    Unknown,
    /// The token was already redeemed.
    #[error("enrolment token was already used")]
    Used,
    /// The token expired before it was redeemed.
    #[error("enrolment token has expired")]
    Expired,
    /// The agent it was issued for has been revoked.
    #[error("agent {0} is revoked")]
    Revoked(AgentName),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type AgentRow = (
    String,
    Json<BTreeMap<String, String>>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    bool,
    bool,
);

macro_rules! select_agent {
    ($tail:literal) => {
        concat!(
            "SELECT name, labels, address, created_at, enrolled_at, cert_fingerprint, ",
            "revoked_at, last_seen, applied_version, connected, address_pinned FROM agents",
            $tail
        )
    };
}

fn agent_name(s: String) -> Result<AgentName, StoreError> {
    AgentName::new(s).map_err(|_| StoreError::Corrupt { what: "agent name" })
}

fn agent_from_row(row: AgentRow) -> Result<Agent, StoreError> {
    let (
        name,
        labels,
        address,
        created_at,
        enrolled_at,
        fingerprint,
        revoked_at,
        last_seen,
        applied,
        connected,
        address_pinned,
    ) = row;
    Ok(Agent {
        name: agent_name(name)?,
        labels: labels.0,
        address,
        address_pinned,
        created_at: Timestamp::from_unix_millis(created_at),
        enrolled_at: opt_ts(enrolled_at),
        cert_fingerprint: fingerprint,
        revoked_at: opt_ts(revoked_at),
        last_seen: opt_ts(last_seen),
        applied_version: ConfigVersion(applied),
        connected,
    })
}

/// Runs a single-statement update on one agent; `NotFound` if it matched no row.
macro_rules! update_agent {
    ($store:expr, $name:expr, $sql:literal $(, $arg:expr)*) => {{
        let done = on_pool!($store, pool => {
            sqlx::query($sql).bind($name.as_str())$(.bind($arg))*.execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(StoreError::Database)?;
        if done == 0 {
            return Err(StoreError::not_found("agent", $name));
        }
        Ok(())
    }};
}

impl Store {
    /// Adds a not yet enrolled agent; an address given here is pinned.
    pub async fn add_agent(&self, agent: &NewAgent) -> Result<(), StoreError> {
        let name = agent.name.as_str();
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO agents (name, labels, address, created_at, address_pinned) VALUES ($1, $2, $3, $4, $3 IS NOT NULL)")
                .bind(name)
                .bind(Json(&agent.labels))
                .bind(agent.address.as_deref())
                .bind(agent.created_at.unix_millis())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(map_write_err("agent", name, None))?;
        Ok(())
    }

    /// One agent.
    pub async fn get_agent(&self, name: &AgentName) -> Result<Agent, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, AgentRow>(select_agent!(" WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::Database)?;
        agent_from_row(row.ok_or_else(|| StoreError::not_found("agent", name))?)
    }

    /// Every agent, by name.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, AgentRow>(select_agent!(" ORDER BY name")).fetch_all(pool).await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(agent_from_row).collect()
    }

    /// Replaces an agent's labels (this changes which policies reach it).
    pub async fn set_agent_labels(
        &self,
        name: &AgentName,
        labels: &BTreeMap<String, String>,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("UPDATE agents SET labels = $2 WHERE name = $1")
                .bind(name.as_str())
                .bind(Json(labels))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("agent", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// Sets and pins the address an admin gave the agent, or with `None`
    /// clears and unpins it (the agent's reported address is used again).
    pub async fn set_agent_address(
        &self,
        name: &AgentName,
        address: Option<&str>,
    ) -> Result<(), StoreError> {
        update_agent!(
            self,
            name,
            "UPDATE agents SET address = $2, address_pinned = $2 IS NOT NULL WHERE name = $1",
            address
        )
    }

    /// Records the certificate issued at enrolment; its fingerprint is pinned.
    pub async fn set_agent_enrolled(
        &self,
        name: &AgentName,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        update_agent!(
            self,
            name,
            "UPDATE agents SET cert_fingerprint = $2, enrolled_at = $3 WHERE name = $1",
            fingerprint,
            now.unix_millis()
        )
    }

    /// Revokes an agent (idempotent: the first revocation time stays).
    pub async fn revoke_agent(
        &self,
        name: &AgentName,
        now: Timestamp,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("UPDATE agents SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1")
                .bind(name.as_str())
                .bind(now.unix_millis())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("agent", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// Records contact: `last_seen`, whether a sync stream is open, and the
    /// address the agent reported (kept unchanged when `None`, ignored when
    /// an admin pinned one).
    pub async fn touch_agent(
        &self,
        name: &AgentName,
        now: Timestamp,
        connected: bool,
        reported_address: Option<&str>,
    ) -> Result<(), StoreError> {
        let _timer = crate::metrics::StoreTimer::start("agent.touch");
        update_agent!(
            self,
            name,
            "UPDATE agents SET last_seen = $2, connected = $3, \
             address = CASE WHEN address_pinned THEN address ELSE COALESCE($4, address) END WHERE name = $1",
            now.unix_millis(),
            connected,
            reported_address
        )
    }

    /// Records the config versions agents acknowledged, never moving one backwards; an
    /// unknown name (an agent removed meanwhile) is skipped.
    pub async fn set_applied_versions(
        &self,
        acks: &[(AgentName, ConfigVersion)],
    ) -> Result<(), StoreError> {
        let _timer = crate::metrics::StoreTimer::start("applied.write");
        if acks.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch, the rows passed as one JSON array: a
        // statement per row cost the store (and this process) a round trip each.
        let rows = serde_json::Value::Array(
            acks.iter()
                .map(|(name, v)| serde_json::json!({ "n": name.as_str(), "v": v.0 }))
                .collect(),
        )
        .to_string();
        let sql = match self.backend() {
            Backend::Sqlite => {
                "UPDATE agents SET applied_version = max(agents.applied_version, a.v) \
                 FROM (SELECT value->>'n' AS n, max(value->>'v') AS v FROM json_each($1) \
                 GROUP BY 1) AS a \
                 WHERE agents.name = a.n"
            }
            Backend::Postgres => {
                "UPDATE agents SET applied_version = GREATEST(agents.applied_version, a.v) \
                 FROM (SELECT n, max(v) AS v FROM json_to_recordset($1::json) AS r(n text, v bigint) \
                 GROUP BY n) AS a WHERE agents.name = a.n"
            }
        };
        on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&rows)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(StoreError::Database)
        })
    }

    /// Renews the connection lease of agents whose streams this replica
    /// holds: `last_seen = now` where `connected` is still recorded. One
    /// statement for all of them.
    pub async fn renew_leases(
        &self,
        names: &[AgentName],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let names = serde_json::Value::Array(
            names
                .iter()
                .map(|n| serde_json::Value::from(n.as_str()))
                .collect(),
        )
        .to_string();
        let sql = match self.backend() {
            Backend::Sqlite => {
                "UPDATE agents SET last_seen = $2 \
                 WHERE connected AND name IN (SELECT value FROM json_each($1))"
            }
            Backend::Postgres => {
                "UPDATE agents SET last_seen = $2 \
                 WHERE connected AND name IN (SELECT json_array_elements_text($1::json))"
            }
        };
        on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&names)
                .bind(now.unix_millis())
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(StoreError::Database)
        })
    }

    /// Stores a token (by hash) that lets `agent` enrol once before `expires_at`.
    pub async fn create_token(
        &self,
        agent: &AgentName,
        hash: &TokenHash,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO enrol_tokens (token_hash, agent, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&hash.0[..])
                .bind(agent.as_str())
                .bind(now.unix_millis())
                .bind(expires_at.unix_millis())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(map_write_err("enrolment token", "(hash)", Some(("agent", agent.as_str()))))?;
        Ok(())
    }

    /// Redeems a token: in one transaction, checks it is unused, unexpired and
    /// its agent not revoked, and marks it used. Of concurrent redeemers of
    /// one token exactly one succeeds: the claim is a single conditional
    /// `UPDATE`, which PostgreSQL re-checks after the row lock and SQLite
    /// runs under its write lock.
    pub async fn redeem_token(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<AgentName, TokenError> {
        let (claimed, state) = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let claimed = sqlx::query_scalar::<_, String>(
                "UPDATE enrol_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
                 AND expires_at > $2 AND agent IN (SELECT name FROM agents WHERE revoked_at IS NULL) \
                 RETURNING agent",
            )
            .bind(&hash.0[..])
            .bind(now.unix_millis())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
            let state = if claimed.is_some() {
                None
            } else {
                sqlx::query_as::<_, (String, Option<i64>, i64, Option<i64>)>(
                    "SELECT t.agent, t.used_at, t.expires_at, a.revoked_at FROM enrol_tokens t \
                     JOIN agents a ON a.name = t.agent WHERE t.token_hash = $1",
                )
                .bind(&hash.0[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::Database)?
            };
            tx.commit().await.map_err(StoreError::Database)?;
            (claimed, state)
        });
        if let Some(agent) = claimed {
            return Ok(agent_name(agent)?);
        }
        match state {
            None => Err(TokenError::Unknown),
            Some((_, Some(_), _, _)) => Err(TokenError::Used),
            Some((_, None, expires_at, _)) if expires_at <= now.unix_millis() => {
                Err(TokenError::Expired)
            }
            Some((agent, None, _, Some(_))) => Err(TokenError::Revoked(agent_name(agent)?)),
            // Unreachable after a failed claim; refuse rather than guess.
            Some((_, None, _, None)) => Err(TokenError::Used),
        }
    }
}
