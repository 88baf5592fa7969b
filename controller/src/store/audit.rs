//! The audit trail: append-only, de-duplicated by `(agent, agent_seq)` so
//! agents can redeliver at least once; and the refusals in it, counted.

use sqlx::types::Json;

use super::{
    AppendOutcome, AuditEvent, AuditFilter, AuditId, NewAuditEvent, RefusalCount, RefusalKinds,
    StoreError, Timestamp,
};
use super::{Backend, Store, narrow, on_pool, parse};
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

/// The SQL that reads `detail`, the one part of the refusal count the backends spell
/// differently. Agents write `detail`, so every read tolerates any JSON there: a value
/// of the wrong type counts as absent, and a count is clamped to 0..=10⁹ (so no sum
/// overflows).
struct DetailSql {
    /// `detail.reason` if a string, else `''`.
    reason: &'static str,
    /// `1 + detail.suppressed` if a number, else 1.
    one_plus_suppressed: &'static str,
    /// `audit` joined with one row `c` per entry of `detail.counts` if an object.
    tally_from: &'static str,
    /// The entry's key.
    tally_reason: &'static str,
    /// The entry's value if a number, else 0.
    tally_count: &'static str,
}

const SQLITE_DETAIL: DetailSql = DetailSql {
    reason: "CASE WHEN json_type(audit.detail, '$.reason') = 'text' \
             THEN json_extract(audit.detail, '$.reason') ELSE '' END",
    one_plus_suppressed: "1 + CASE WHEN json_type(audit.detail, '$.suppressed') = 'integer' \
             THEN MIN(MAX(json_extract(audit.detail, '$.suppressed'), 0), 1000000000) ELSE 0 END",
    // A table-valued function never fails on valid JSON, so the WHERE clause can keep
    // the objects (and their text keys) only.
    tally_from: "audit, json_each(audit.detail, '$.counts') AS c \
             WHERE json_type(audit.detail, '$.counts') = 'object' AND",
    tally_reason: "CAST(c.key AS TEXT)",
    tally_count: "CASE WHEN c.type = 'integer' THEN MIN(MAX(c.value, 0), 1000000000) ELSE 0 END",
};

const POSTGRES_DETAIL: DetailSql = DetailSql {
    reason: "CASE WHEN jsonb_typeof(audit.detail -> 'reason') = 'string' \
             THEN audit.detail ->> 'reason' ELSE '' END",
    one_plus_suppressed: "1 + CASE WHEN jsonb_typeof(audit.detail -> 'suppressed') = 'number' \
             THEN LEAST(GREATEST((audit.detail ->> 'suppressed')::numeric, 0), 1000000000)::bigint \
             ELSE 0 END",
    // jsonb_each fails on a non-object and a WHERE clause need not run first: the
    // guard is inside its argument.
    tally_from: "audit CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(audit.detail -> 'counts') \
             = 'object' THEN audit.detail -> 'counts' ELSE '{}'::jsonb END) AS c WHERE",
    tally_reason: "c.key",
    tally_count: "CASE WHEN jsonb_typeof(c.value) = 'number' \
             THEN LEAST(GREATEST((c.value #>> '{}')::numeric, 0), 1000000000)::bigint ELSE 0 END",
};

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
        let _timer = crate::metrics::StoreTimer::start("audit.append");
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
        if id.is_some() {
            crate::metrics::audit_row(&event.kind);
        }
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

    /// Refusals at or after `since` (all without it), counted by kind and reason in
    /// the database, most first, at most `limit` kinds and reasons. Which rows count and
    /// how is `kinds`; a controller kind counts only rows the controller wrote, a
    /// reported kind only rows an agent reported, so neither can pass for the other.
    pub async fn count_refusals(
        &self,
        kinds: &RefusalKinds<'_>,
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<RefusalCount>, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => &SQLITE_DETAIL,
            Backend::Postgres => &POSTGRES_DETAIL,
        };
        let since = since.map_or(i64::MIN, Timestamp::unix_millis);
        // (kinds, FROM … WHERE, origin, reason, count) of each UNION ALL branch.
        let branches = [
            (
                kinds.controller,
                "audit WHERE",
                "IS NULL",
                sql.reason,
                sql.one_plus_suppressed,
            ),
            (
                kinds.reported,
                "audit WHERE",
                "IS NOT NULL",
                sql.reason,
                "1",
            ),
            (
                kinds.tallies,
                sql.tally_from,
                "IS NOT NULL",
                sql.tally_reason,
                sql.tally_count,
            ),
        ];
        if branches.iter().all(|b| b.0.is_empty()) {
            return Ok(Vec::new());
        }
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new("SELECT kind, reason, CAST(SUM(n) AS BIGINT) AS total FROM (");
            let mut union = "";
            for (list, from, origin, reason, count) in branches.iter().filter(|b| !b.0.is_empty()) {
                q.push(format_args!(
                    "{union}SELECT audit.kind AS kind, {reason} AS reason, {count} AS n FROM {from} \
                     audit.agent_seq {origin} AND audit.at >= "
                ));
                q.push_bind(since).push(" AND audit.kind IN (");
                let mut each = q.separated(", ");
                for kind in *list {
                    each.push_bind(*kind);
                }
                q.push(")");
                union = " UNION ALL ";
            }
            q.push(") r GROUP BY kind, reason HAVING SUM(n) > 0 ORDER BY total DESC, kind, reason LIMIT ");
            q.push_bind(i64::from(limit));
            q.build_query_as::<(String, String, i64)>().fetch_all(pool).await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter()
            .map(|(kind, reason, n)| {
                Ok(RefusalCount {
                    kind,
                    reason,
                    count: narrow(n, "refusal count")?,
                })
            })
            .collect()
    }
}
