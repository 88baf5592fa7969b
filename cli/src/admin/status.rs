//! `knockadm status`: the fleet at a glance. Agents by state, config versions applied
//! against the controller's, grants open now, and the refusals of a recent window
//! counted by kind and reason (the controller counts them; nothing is paged here).

use std::time::SystemTime;

use clap::Args;
use knockgate_proto::api;
use serde::Serialize;

use super::args::{Since, parse_since};
use super::output::{Table, rfc3339, write_fields, write_json};
use super::{AdminError, Ctx, Format, Subject};

/// Arguments of `knockadm status`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Agents: each is in one state. Revoked; else not enrolled (added, no certificate
yet); else connected (holds its sync stream now, as 'agent list' shows); else
stale (seen before, not connected now); else never connected. Behind: enrolled,
not revoked, and has not applied the controller's current config version.

Refusals: someone asked and was told no. Counted by kind and reason:
  auth.refused         a call or TLS handshake refused by the controller
  enrol.refused        an enrolment refused (token unknown, used, expired...)
  otk.refused          a one-time key claim refused by the controller
  config.refused       a config an agent could not apply
  spa.rejected         an SPA packet an agent refused (reported one by one, rate
                       limited)
  knock.rejected       a completed sequence refused (it could not be recorded as
                       used)
  spa.refused_summary  every packet an agent's SPA detector refused, from its
                       periodic tally (so it overlaps spa.rejected)
The controller's throttled refusals count with the ones they stand for. Knock
resets are not refusals (and agents do not report them).

Examples:
  knockadm status
  knockadm status --since 24h --output json")]
pub struct StatusArgs {
    /// Count refusals from this long ago (1h, 30m) or this time (RFC 3339)
    #[arg(long, value_name = "WHEN", default_value = "1h", value_parser = parse_since)]
    pub since: Since,
}

/// Agents by state, as JSON.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct AgentsJson {
    connected: u32,
    stale: u32,
    never_connected: u32,
    not_enrolled: u32,
    revoked: u32,
    behind: u32,
}

/// One kind and reason of refusal, as JSON.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct RefusalJson {
    kind: String,
    reason: String,
    count: u64,
}

/// What `status` prints as JSON.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct StatusJson {
    agents: AgentsJson,
    config_version: u64,
    open_grants: u64,
    refusals_since: Option<String>,
    refusals: Vec<RefusalJson>,
}

impl StatusJson {
    fn new(s: api::FleetStatusResponse, since_unix_ms: i64) -> Self {
        let api::FleetStatusResponse {
            agents_connected,
            agents_stale,
            agents_never_connected,
            agents_not_enrolled,
            agents_revoked,
            current_version,
            agents_behind,
            open_grants,
            refusals,
        } = s;
        StatusJson {
            agents: AgentsJson {
                connected: agents_connected,
                stale: agents_stale,
                never_connected: agents_never_connected,
                not_enrolled: agents_not_enrolled,
                revoked: agents_revoked,
                behind: agents_behind,
            },
            config_version: current_version,
            open_grants,
            refusals_since: rfc3339(since_unix_ms),
            refusals: refusals
                .into_iter()
                .map(|r| RefusalJson {
                    kind: r.kind,
                    reason: r.reason,
                    count: r.count,
                })
                .collect(),
        }
    }

    fn write_table(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let a = &self.agents;
        write_fields(
            out,
            &[
                ("agents connected", a.connected.to_string()),
                ("agents stale", a.stale.to_string()),
                ("agents never connected", a.never_connected.to_string()),
                ("agents not enrolled", a.not_enrolled.to_string()),
                ("agents revoked", a.revoked.to_string()),
                ("config version", self.config_version.to_string()),
                ("agents behind", a.behind.to_string()),
                ("open grants", self.open_grants.to_string()),
            ],
        )?;
        let since = self.refusals_since.as_deref().unwrap_or("the start");
        if self.refusals.is_empty() {
            return writeln!(out, "\nno refusals since {since}");
        }
        writeln!(out, "\nrefusals since {since}:")?;
        let mut table = Table::new(&["KIND", "REASON", "COUNT"]);
        for r in &self.refusals {
            table.push(vec![r.kind.clone(), r.reason.clone(), r.count.to_string()]);
        }
        table.render(out)
    }
}

impl StatusArgs {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        let since_unix_ms = self.since.unix_ms(SystemTime::now());
        let resp = ctx
            .client()
            .await?
            .fleet_status(api::FleetStatusRequest { since_unix_ms })
            .await
            .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
            .into_inner();
        let status = StatusJson::new(resp, since_unix_ms);
        match ctx.format {
            Format::Json => write_json(ctx.out, &status)?,
            Format::Table => status.write_table(ctx.out)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> StatusJson {
        StatusJson::new(
            api::FleetStatusResponse {
                agents_connected: 3,
                agents_stale: 1,
                agents_never_connected: 0,
                agents_not_enrolled: 1,
                agents_revoked: 2,
                current_version: 9,
                agents_behind: 1,
                open_grants: 4,
                refusals: vec![
                    api::RefusalCount {
                        kind: "spa.rejected".into(),
                        reason: "bad_tag".into(),
                        count: 12,
                    },
                    api::RefusalCount {
                        kind: "auth.refused".into(),
                        reason: "a client certificate is required".into(),
                        count: 1,
                    },
                ],
            },
            1_748_779_200_000,
        )
    }

    #[test]
    fn table() {
        let mut out = Vec::new();
        status().write_table(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "agents connected:       3\n\
             agents stale:           1\n\
             agents never connected: 0\n\
             agents not enrolled:    1\n\
             agents revoked:         2\n\
             config version:         9\n\
             agents behind:          1\n\
             open grants:            4\n\
             \n\
             refusals since 2025-06-01T12:00:00Z:\n\
             KIND          REASON                            COUNT\n\
             spa.rejected  bad_tag                           12\n\
             auth.refused  a client certificate is required  1\n"
        );
    }

    #[test]
    fn no_refusals_and_json() {
        let mut quiet = status();
        quiet.refusals.clear();
        quiet.refusals_since = None;
        let mut out = Vec::new();
        quiet.write_table(&mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("open grants:            4\n\nno refusals since the start\n")
        );
        let json = serde_json::to_value(status()).unwrap();
        assert_eq!(json["agents"]["connected"], 3);
        assert_eq!(json["agents"]["behind"], 1);
        assert_eq!(json["refusals_since"], "2025-06-01T12:00:00Z");
        assert_eq!(
            json["refusals"][0],
            serde_json::json!({"kind": "spa.rejected", "reason": "bad_tag", "count": 12})
        );
    }
}
