//! The audit trail: append-only, de-duplicated by `(agent, agent_seq)` so
//! agents can redeliver at least once.

use sqlx::types::Json;

use super::{
    AppendOutcome, AuditEvent, AuditFilter, AuditId, NewAuditEvent, StoreError, Timestamp,
};
use super::{Store, on_pool, parse};
use crate::name::AgentName;

type AuditRow = (
    i64,
    i64,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Json<serde_json::Value>,
);

fn event_from_row(row: AuditRow) -> Result<AuditEvent, StoreError> {
    let (id, at, agent, agent_seq, kind, user, src, detail) = row;
    Ok(AuditEvent {
        id: AuditId(id),
        event: NewAuditEvent {
            at: Timestamp::from_unix_millis(at),
            agent: agent
                .map(|a| parse::<AgentName>(&a, "audit agent"))
                .transpose()?,
            agent_seq: agent_seq
                .map(|s| {
                    u64::try_from(s).map_err(|_| StoreError::Corrupt {
                        what: "audit sequence",
                    })
                })
                .transpose()?,
            kind,
            user,
            src,
            detail: detail.0,
        },
    })
}

impl Store {
    /// Appends an event. A second event with the same `(agent, agent_seq)` is
    /// not stored and yields [`AppendOutcome::Duplicate`].
    pub async fn append_audit(&self, event: &NewAuditEvent) -> Result<AppendOutcome, StoreError> {
        let seq = event
            .agent_seq
            .map(i64::try_from)
            .transpose()
            .map_err(|_| StoreError::OutOfRange {
                what: "agent sequence number",
            })?;
        let id = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO audit (at, agent, agent_seq, kind, user_name, src, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (agent, agent_seq) DO NOTHING RETURNING id",
            )
            .bind(event.at.unix_millis())
            .bind(event.agent.as_ref().map(AgentName::as_str))
            .bind(seq)
            .bind(&event.kind)
            .bind(event.user.as_deref())
            .bind(event.src.as_deref())
            .bind(Json(&event.detail))
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        Ok(id.map_or(AppendOutcome::Duplicate, |id| {
            AppendOutcome::Inserted(AuditId(id))
        }))
    }

    /// Events matching `filter`, ordered by id (ascending unless `newest_first`).
    pub async fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = filter
            .limit
            .unwrap_or(AuditFilter::DEFAULT_LIMIT)
            .clamp(1, AuditFilter::MAX_LIMIT);
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT id, at, agent, agent_seq, kind, user_name, src, detail FROM audit WHERE TRUE",
            );
            if let Some(since) = filter.since {
                q.push(" AND at >= ").push_bind(since.unix_millis());
            }
            if let Some(kind) = &filter.kind {
                // A plain comparison, not LIKE: kinds may contain `_`.
                q.push(" AND substr(kind, 1, length(").push_bind(kind.as_str());
                q.push(")) = ").push_bind(kind.as_str());
            }
            if let Some(user) = &filter.user {
                q.push(" AND user_name = ").push_bind(user.as_str());
            }
            if let Some(agent) = &filter.agent {
                q.push(" AND agent = ").push_bind(agent.as_str());
            }
            if let Some(after) = filter.after_id {
                q.push(if filter.newest_first { " AND id < " } else { " AND id > " }).push_bind(after.0);
            }
            q.push(if filter.newest_first { " ORDER BY id DESC" } else { " ORDER BY id" });
            q.push(" LIMIT ").push_bind(i64::from(limit));
            q.build_query_as::<AuditRow>().fetch_all(pool).await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(event_from_row).collect()
    }
}
