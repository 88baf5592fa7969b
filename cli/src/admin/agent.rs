//! `knockadm agent add|list|revoke`: register a gateway and hand out its
//! one-time enrolment token, show the fleet, revoke an agent.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use clap::{Args, Subcommand};
use knockgate_proto::api::{self, AgentInfo};
use serde::Serialize;

use super::args::{parse_label, parse_name, parse_secs};
use super::output::{Table, rfc3339, time_cell, until, write_fields, write_json, yes_no};
use super::{AdminError, Ctx, Format, Subject};

/// `knockadm agent …`.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentCmd {
    /// Register an agent and print its one-time enrolment token and the
    /// command that enrols it
    Add(AgentAddArgs),
    /// List agents: labels, address, connection, config version, grants
    List,
    /// Revoke an agent: its certificate is refused from now on
    Revoke {
        /// The agent's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// Arguments of `knockadm agent add`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  knockadm agent add gw1 --label role=edge --label site=par --address 203.0.113.7
  knockadm agent add gw2 --token-ttl 24h --output json")]
pub struct AgentAddArgs {
    /// The agent's name: lowercase letters, digits, '.', '_' and '-' (1 to 64)
    #[arg(value_parser = parse_name)]
    pub name: String,

    /// A label for policy selectors (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// The address users knock on (host, IP or host:port). Default: the
    /// address the agent reports
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,

    /// How long the enrolment token stays valid
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_secs)]
    pub token_ttl: u32,
}

impl AgentCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        match self {
            AgentCmd::Add(args) => args.run(ctx).await,
            AgentCmd::List => list(ctx).await,
            AgentCmd::Revoke { name } => revoke(ctx, &name).await,
        }
    }
}

/// What `agent add` prints as JSON.
#[derive(Debug, Serialize)]
struct Added<'a> {
    name: &'a str,
    token: &'a str,
    expires_at: Option<String>,
    ca_sha256: &'a str,
    command: String,
}

impl AgentAddArgs {
    /// The labels as the request's map.
    ///
    /// # Errors
    /// [`AdminError::Input`] when a key is given twice.
    pub fn label_map(&self) -> Result<HashMap<String, String>, AdminError> {
        let mut map = HashMap::new();
        for (key, value) in &self.labels {
            if map.insert(key.clone(), value.clone()).is_some() {
                return Err(AdminError::Input(format!("--label '{key}' given twice")));
            }
        }
        Ok(map)
    }

    async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        let request = api::AddAgentRequest {
            name: self.name.clone(),
            labels: self.label_map()?,
            address: self.address.clone().unwrap_or_default(),
            token_ttl_secs: self.token_ttl,
        };
        let subject = Subject::Named("agent", &self.name);
        let resp = ctx
            .client()
            .await?
            .add_agent(request)
            .await
            .map_err(|s| AdminError::from_status(ctx.url(), subject, &s))?
            .into_inner();
        let command = enroll_command(ctx.url(), &resp.token, &resp.ca_sha256);
        match ctx.format {
            Format::Json => write_json(
                ctx.out,
                &Added {
                    name: &self.name,
                    token: &resp.token,
                    expires_at: rfc3339(resp.expires_at_unix_ms),
                    ca_sha256: &resp.ca_sha256,
                    command,
                },
            )?,
            Format::Table => {
                writeln!(ctx.out, "agent {} added", self.name)?;
                write_fields(
                    ctx.out,
                    &[
                        ("token", resp.token.clone()),
                        (
                            "expires",
                            format!(
                                "{} (in {}, single use)",
                                time_cell(resp.expires_at_unix_ms),
                                until(resp.expires_at_unix_ms, SystemTime::now())
                            ),
                        ),
                        ("ca sha256", resp.ca_sha256.clone()),
                    ],
                )?;
                writeln!(
                    ctx.out,
                    "\nEnrol it by running on the agent host:\n  {command}"
                )?;
            }
        }
        Ok(())
    }
}

/// The exact command that enrols the agent.
#[must_use]
pub fn enroll_command(controller: &str, token: &str, ca_sha256: &str) -> String {
    format!(
        "knockgate-agent enroll --config agent.toml --controller {controller} \
         --token {token} --ca-sha256 {ca_sha256}"
    )
}

/// One agent as JSON.
#[derive(Debug, Serialize)]
struct AgentJson {
    name: String,
    labels: BTreeMap<String, String>,
    address: String,
    enrolled: bool,
    connected: bool,
    last_seen: Option<String>,
    applied_version: u64,
    current_version: u64,
    active_grants: u32,
    revoked: bool,
}

impl From<AgentInfo> for AgentJson {
    fn from(a: AgentInfo) -> Self {
        AgentJson {
            last_seen: rfc3339(a.last_seen_unix_ms),
            labels: a.labels.into_iter().collect(),
            name: a.name,
            address: a.address,
            enrolled: a.enrolled,
            connected: a.connected,
            applied_version: a.applied_version,
            current_version: a.current_version,
            active_grants: a.active_grants,
            revoked: a.revoked,
        }
    }
}

/// The `agent list` table.
fn agent_table(agents: &[AgentJson]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "LABELS",
        "ADDRESS",
        "CONNECTED",
        "LAST-SEEN",
        "APPLIED/CURRENT",
        "GRANTS",
        "REVOKED",
    ]);
    for a in agents {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let connected = if !a.enrolled {
            "not enrolled".to_owned()
        } else {
            yes_no(a.connected)
        };
        table.push(vec![
            a.name.clone(),
            labels.join(","),
            a.address.clone(),
            connected,
            a.last_seen.clone().unwrap_or_else(|| "never".to_owned()),
            format!("{}/{}", a.applied_version, a.current_version),
            a.active_grants.to_string(),
            yes_no(a.revoked),
        ]);
    }
    table
}

async fn list(ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
    let resp = ctx
        .client()
        .await?
        .list_agents(api::ListAgentsRequest {})
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
        .into_inner();
    let mut agents: Vec<AgentJson> = resp.agents.into_iter().map(AgentJson::from).collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    match ctx.format {
        Format::Json => write_json(ctx.out, &agents)?,
        Format::Table => agent_table(&agents).render(ctx.out)?,
    }
    Ok(())
}

async fn revoke(ctx: &mut Ctx<'_>, name: &str) -> Result<(), AdminError> {
    ctx.client()
        .await?
        .revoke_agent(api::RevokeAgentRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::Named("agent", name), &s))?;
    match ctx.format {
        Format::Json => write_json(ctx.out, &serde_json::json!({"name": name, "revoked": true}))?,
        Format::Table => writeln!(ctx.out, "agent {name} revoked")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_table() {
        let agents = vec![
            AgentJson::from(AgentInfo {
                name: "gw1".into(),
                labels: [
                    ("site".into(), "par".into()),
                    ("role".into(), "edge".into()),
                ]
                .into_iter()
                .collect(),
                address: "203.0.113.7".into(),
                enrolled: true,
                connected: true,
                last_seen_unix_ms: 1_748_779_200_000,
                applied_version: 4,
                current_version: 5,
                active_grants: 2,
                revoked: false,
            }),
            AgentJson::from(AgentInfo {
                name: "gw2".into(),
                ..AgentInfo::default()
            }),
        ];
        let mut out = Vec::new();
        agent_table(&agents).render(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  LABELS              ADDRESS      CONNECTED     LAST-SEEN             APPLIED/CURRENT  GRANTS  REVOKED\n\
             gw1   role=edge,site=par  203.0.113.7  yes           2025-06-01T12:00:00Z  4/5              2       no\n\
             gw2   -                   -            not enrolled  never                 0/0              0       no\n"
        );
        let json = serde_json::to_value(&agents[1]).unwrap();
        assert_eq!(json["last_seen"], serde_json::Value::Null);
        assert_eq!(json["labels"], serde_json::json!({}));
    }

    #[test]
    fn enroll_command_is_exact() {
        assert_eq!(
            enroll_command("https://ctl.example:7443", "tok", "ab12"),
            "knockgate-agent enroll --config agent.toml --controller https://ctl.example:7443 \
             --token tok --ca-sha256 ab12"
        );
    }
}
