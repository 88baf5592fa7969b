//! `knockadm audit`: the audit trail, oldest first, filtered by user, agent,
//! kind and time; `--follow` keeps polling for new events (every 500 ms)
//! until interrupted.

use std::time::{Duration, SystemTime};

use clap::{Args, value_parser};
use knockgate_proto::api::{self, AuditEvent};
use serde::Serialize;
use serde_json::Value;

use super::args::{Since, parse_name, parse_since};
use super::output::{Table, rfc3339, time_cell, write_json, write_json_line};
use super::{AdminError, Ctx, Format, Subject};

/// How often `--follow` asks for new events.
const POLL: Duration = Duration::from_millis(500);
/// Events per query unless `--limit` says otherwise (the controller's default).
const DEFAULT_LIMIT: u32 = 100;

/// Arguments of `knockadm audit`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Events are printed oldest first: at most --limit of them from --since on (from
the start of the trail without --since).

Examples:
  knockadm audit --since 1h --kind spa
  knockadm audit --follow --user alice --output json")]
pub struct AuditArgs {
    /// Keep printing new events as they arrive, until interrupted (Ctrl-C)
    #[arg(short, long)]
    pub follow: bool,
    /// Only events about this user
    #[arg(long, value_name = "USER", value_parser = parse_name)]
    pub user: Option<String>,
    /// Only events from this agent
    #[arg(long, value_name = "AGENT", value_parser = parse_name)]
    pub agent: Option<String>,
    /// Only events whose kind starts with this ("spa" matches spa.accepted
    /// and spa.rejected)
    #[arg(long, value_name = "KIND", value_parser = parse_name)]
    pub kind: Option<String>,
    /// Only events from this long ago (1h, 30m) or this time (RFC 3339)
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Since>,
    /// At most this many events (per poll with --follow)
    #[arg(long, value_name = "N", value_parser = value_parser!(u32).range(1..=10_000))]
    pub limit: Option<u32>,
}

/// One event as JSON; `detail` is the event's JSON detail as an object
/// (or a string when the controller sent something else).
#[derive(Debug, Serialize)]
struct EventJson {
    id: i64,
    time: Option<String>,
    agent: String,
    kind: String,
    user: String,
    src: String,
    detail: Value,
}

impl From<&AuditEvent> for EventJson {
    fn from(e: &AuditEvent) -> Self {
        let detail = if e.detail_json.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&e.detail_json)
                .unwrap_or_else(|_| Value::String(e.detail_json.clone()))
        };
        EventJson {
            id: e.id,
            time: rfc3339(e.at_unix_ms),
            agent: e.agent.clone(),
            kind: e.kind.clone(),
            user: e.user.clone(),
            src: e.src.clone(),
            detail,
        }
    }
}

/// The detail for a table: `key=value` pairs of an object, strings unquoted.
fn detail_cell(detail: &Value) -> String {
    match detail {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn event_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(&["ID", "TIME", "AGENT", "KIND", "USER", "SRC", "DETAIL"]);
    for e in events {
        table.push(vec![
            e.id.to_string(),
            time_cell(e.at_unix_ms),
            e.agent.clone(),
            e.kind.clone(),
            e.user.clone(),
            e.src.clone(),
            detail_cell(&EventJson::from(e).detail),
        ]);
    }
    table
}

impl AuditArgs {
    fn query(&self, after_id: i64, now: SystemTime) -> api::AuditQuery {
        api::AuditQuery {
            since_unix_ms: self.since.map_or(0, |s| s.unix_ms(now)),
            kind: self.kind.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            agent: self.agent.clone().unwrap_or_default(),
            after_id,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
        }
    }

    async fn page(
        &self,
        ctx: &mut Ctx<'_>,
        query: api::AuditQuery,
    ) -> Result<Vec<AuditEvent>, AdminError> {
        let mut events = ctx
            .client()
            .await?
            .query_audit(query)
            .await
            .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
            .into_inner()
            .events;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    /// Runs the command; with `--follow`, until Ctrl-C.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        if !self.follow {
            let events = self.page(ctx, self.query(0, SystemTime::now())).await?;
            match ctx.format {
                Format::Json => {
                    let json: Vec<EventJson> = events.iter().map(EventJson::from).collect();
                    write_json(ctx.out, &json)?;
                }
                Format::Table => event_table(&events).render(ctx.out)?,
            }
            return Ok(());
        }
        tokio::select! {
            result = self.follow(ctx) => result,
            // Ctrl-C is how --follow ends: a success, not an error.
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    }

    async fn follow(&self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        // The time filter is fixed at start; after that only ids move on.
        let start = SystemTime::now();
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT) as usize;
        let mut after_id = 0;
        let mut widths = Vec::new();
        let mut header = true;
        loop {
            let events = self.page(ctx, self.query(after_id, start)).await?;
            after_id = events.iter().map(|e| e.id).fold(after_id, i64::max);
            match ctx.format {
                Format::Json => {
                    for e in &events {
                        write_json_line(ctx.out, &EventJson::from(e))?;
                    }
                }
                Format::Table if header || !events.is_empty() => {
                    event_table(&events).render_with(ctx.out, &mut widths, header)?;
                    ctx.out.flush()?;
                    header = false;
                }
                Format::Table => {}
            }
            // A full page means more are waiting: ask again at once.
            if events.len() < limit {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, detail: &str) -> AuditEvent {
        AuditEvent {
            id,
            at_unix_ms: 1_748_779_200_000,
            agent: "gw1".into(),
            kind: "spa.accepted".into(),
            user: "alice".into(),
            src: "198.51.100.4".into(),
            detail_json: detail.into(),
        }
    }

    #[test]
    fn table_and_details() {
        let events = [
            event(1, r#"{"access":"tcp/22","duration_secs":30}"#),
            event(12, ""),
            event(13, "not json"),
        ];
        let mut out = Vec::new();
        event_table(&events).render(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID  TIME                  AGENT  KIND          USER   SRC           DETAIL\n\
             1   2025-06-01T12:00:00Z  gw1    spa.accepted  alice  198.51.100.4  access=tcp/22 duration_secs=30\n\
             12  2025-06-01T12:00:00Z  gw1    spa.accepted  alice  198.51.100.4  -\n\
             13  2025-06-01T12:00:00Z  gw1    spa.accepted  alice  198.51.100.4  not json\n"
        );
    }

    #[test]
    fn json_event() {
        let json =
            serde_json::to_value(EventJson::from(&event(5, r#"{"reason":"replay"}"#))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": 5, "time": "2025-06-01T12:00:00Z", "agent": "gw1", "kind": "spa.accepted",
                "user": "alice", "src": "198.51.100.4", "detail": {"reason": "replay"}
            })
        );
    }

    #[test]
    fn query_fields() {
        let args = AuditArgs {
            follow: false,
            user: Some("alice".into()),
            agent: None,
            kind: Some("spa".into()),
            since: Some(Since::Ago(Duration::from_secs(3600))),
            limit: None,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7200);
        let q = args.query(9, now);
        assert_eq!(q.since_unix_ms, 3_600_000);
        assert_eq!(
            (q.user.as_str(), q.agent.as_str(), q.kind.as_str()),
            ("alice", "", "spa")
        );
        assert_eq!((q.after_id, q.limit), (9, 100));
    }
}
