//! `knockadm policy add|list|show|remove`: who (users, groups) may open what
//! (`--open`) on which agents (a label selector), by which knock methods,
//! for how long.

use clap::{Args, Subcommand};
use knockgate_proto::api::{self, PolicySpec};
use knockgate_proto::{Access, Forward};
use serde::Serialize;

use super::args::{access_text, access_to_api, parse_name, parse_secs, parse_selector};
use super::output::{Table, secs_cell, write_fields, write_json};
use super::{AdminError, Ctx, Format, Subject};
use crate::cmd::spa::parse_access;

mod methods;

pub use methods::{MethodArgs, OtkOffline, RotatingProtos};

/// `knockadm policy …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCmd {
    /// Add a policy
    Add(Box<PolicyAddArgs>),
    /// List policies
    List,
    /// Show one policy
    Show {
        /// The policy's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Remove a policy (open grants run out on their own)
    Remove {
        /// The policy's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// Arguments of `knockadm policy add`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
At least one method is needed: --spa, --fwknop, --sealed, --sequence, --rotating or --otk.

Examples:
  knockadm policy add ssh --open tcp/22 --groups ops --agents role=edge --spa --fwknop
  knockadm policy add vpn --open udp/51820 --users alice,bob --timeout 1m --max-timeout 1h --spa
  knockadm policy add legacy --open tcp/22 --users carol --sequence tcp/7000,udp/8000,icmp
  knockadm policy add admin --open tcp/443 --groups ops --rotating --window 1m --otk
  knockadm policy add linux-only --open tcp/22 --sequence tcp/7000,tcp/8000 --require-os Linux
  knockadm policy add sealed-ssh --open tcp/22 --groups ops --sealed
  knockadm policy add inner-ssh --forward \"tcp/2222 -> 10.0.0.5:22\" --groups ops --spa")]
pub struct PolicyAddArgs {
    /// The policy's name
    #[arg(value_parser = parse_name)]
    pub name: String,

    /// What to open: tcp/PORT or udp/PORT, comma-separated or repeated
    #[arg(long, value_name = "PROTO/PORT", required_unless_present = "forward",
          value_delimiter = ',', value_parser = parse_access)]
    pub open: Vec<Access>,

    /// Users the policy admits (comma-separated or repeated)
    #[arg(long, value_name = "USER", value_delimiter = ',', value_parser = parse_name)]
    pub users: Vec<String>,

    /// Groups the policy admits (comma-separated or repeated)
    #[arg(long, value_name = "GROUP", value_delimiter = ',', value_parser = parse_name)]
    pub groups: Vec<String>,

    /// Agents it applies to, by label: KEY=VALUE[,KEY=VALUE...] (all must
    /// match). Default: every agent
    #[arg(long, value_name = "SELECTOR", default_value = "", hide_default_value = true,
          value_parser = parse_selector)]
    pub agents: String,

    /// How long a grant stays open
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_secs)]
    pub timeout: u32,

    /// The longest a client may ask for (SPA and fwknop requests carry a
    /// duration). Default: --timeout
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub max_timeout: Option<u32>,

    /// How the policy can be opened
    #[command(flatten)]
    pub methods: MethodArgs,

    /// Open PROTO/PORT on the gateway and take a granted source's connections to it on
    /// to a host behind it (DNAT), e.g. "tcp/2222 -> 10.0.0.5:22" (IPv6:
    /// "tcp/2222 -> [fd00::5]:22"); repeat for several. The gateway must forward
    /// (net.ipv4.ip_forward=1)
    #[arg(long, value_name = "PROTO/PORT -> ADDR:PORT", value_parser = parse_forward)]
    pub forward: Vec<Forward>,
}

/// A `--forward`, read by the one parser.
fn parse_forward(s: &str) -> Result<Forward, String> {
    s.parse().map_err(|e| format!("{e}"))
}

impl PolicyAddArgs {
    /// The request, after the checks clap cannot make.
    ///
    /// # Errors
    /// [`AdminError::Input`] without a method, or with a --max-timeout
    /// below --timeout.
    pub fn spec(&self) -> Result<PolicySpec, AdminError> {
        if let Some(max) = self.max_timeout
            && max < self.timeout
        {
            return Err(AdminError::Input(format!(
                "--max-timeout ({}) is shorter than --timeout ({})",
                secs_cell(max),
                secs_cell(self.timeout)
            )));
        }
        let mut open = self.open.clone();
        open.sort_unstable();
        open.dedup();
        let mut spec = PolicySpec {
            name: self.name.clone(),
            open: open.into_iter().map(access_to_api).collect(),
            users: self.users.clone(),
            groups: self.groups.clone(),
            agents: self.agents.clone(),
            timeout_secs: self.timeout,
            max_timeout_secs: self.max_timeout.unwrap_or(0),
            forward: self.forward.iter().map(ToString::to_string).collect(),
            ..PolicySpec::default()
        };
        self.methods.apply(&mut spec)?;
        Ok(spec)
    }
}

impl PolicyCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        match self {
            PolicyCmd::Add(args) => {
                let spec = args.spec()?;
                let subject = Subject::Named("policy", &args.name);
                let policy = ctx
                    .client()
                    .await?
                    .add_policy(spec)
                    .await
                    .map_err(|s| AdminError::from_status(ctx.url(), subject, &s))?
                    .into_inner();
                if ctx.format == Format::Table {
                    writeln!(ctx.out, "policy {} added", policy.name)?;
                }
                print_policy(ctx, &policy)
            }
            PolicyCmd::List => {
                let resp = ctx
                    .client()
                    .await?
                    .list_policies(api::ListPoliciesRequest {})
                    .await
                    .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
                    .into_inner();
                let mut policies = resp.policies;
                policies.sort_by(|a, b| a.name.cmp(&b.name));
                match ctx.format {
                    Format::Json => {
                        let json: Vec<PolicyJson> = policies.iter().map(PolicyJson::from).collect();
                        write_json(ctx.out, &json)?;
                    }
                    Format::Table => policy_table(&policies).render(ctx.out)?,
                }
                Ok(())
            }
            PolicyCmd::Show { name } => {
                let policy = ctx
                    .client()
                    .await?
                    .get_policy(api::GetPolicyRequest { name: name.clone() })
                    .await
                    .map_err(|s| {
                        AdminError::from_status(ctx.url(), Subject::Named("policy", &name), &s)
                    })?
                    .into_inner();
                print_policy(ctx, &policy)
            }
            PolicyCmd::Remove { name } => {
                ctx.client()
                    .await?
                    .remove_policy(api::RemovePolicyRequest { name: name.clone() })
                    .await
                    .map_err(|s| {
                        AdminError::from_status(ctx.url(), Subject::Named("policy", &name), &s)
                    })?;
                match ctx.format {
                    Format::Json => {
                        write_json(ctx.out, &serde_json::json!({"name": name, "removed": true}))?;
                    }
                    Format::Table => writeln!(ctx.out, "policy {name} removed")?,
                }
                Ok(())
            }
        }
    }
}

/// One policy as JSON: the spec's fields, access as `tcp/22`.
#[derive(Debug, Serialize)]
struct PolicyJson {
    name: String,
    open: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    agents: String,
    timeout_secs: u32,
    max_timeout_secs: u32,
    spa: bool,
    fwknop: bool,
    sequence: Vec<String>,
    sequence_timeout_secs: u32,
    rotating: bool,
    rotating_length: u32,
    rotating_protos: String,
    rotating_port_lo: u32,
    rotating_port_hi: u32,
    window_secs: u32,
    otk: bool,
    otk_offline: String,
    forward: Vec<String>,
}

impl From<&PolicySpec> for PolicyJson {
    fn from(p: &PolicySpec) -> Self {
        PolicyJson {
            name: p.name.clone(),
            open: p.open.iter().map(access_text).collect(),
            users: p.users.clone(),
            groups: p.groups.clone(),
            agents: p.agents.clone(),
            timeout_secs: p.timeout_secs,
            max_timeout_secs: p.max_timeout_secs,
            spa: p.spa,
            fwknop: p.fwknop,
            sequence: p.sequence.clone(),
            sequence_timeout_secs: p.sequence_timeout_secs,
            rotating: p.rotating,
            rotating_length: p.rotating_length,
            rotating_protos: p.rotating_protos.clone(),
            rotating_port_lo: p.rotating_port_lo,
            rotating_port_hi: p.rotating_port_hi,
            window_secs: p.window_secs,
            otk: p.otk,
            otk_offline: p.otk_offline.clone(),
            forward: p.forward.clone(),
        }
    }
}

fn agents_text(p: &PolicySpec) -> String {
    if p.agents.is_empty() {
        "*".to_owned()
    } else {
        p.agents.clone()
    }
}

fn open_text(p: &PolicySpec) -> String {
    p.open.iter().map(access_text).collect::<Vec<_>>().join(",")
}

/// The longest grant a client may ask for (0 on the wire means --timeout).
fn max_timeout(p: &PolicySpec) -> u32 {
    if p.max_timeout_secs == 0 {
        p.timeout_secs
    } else {
        p.max_timeout_secs
    }
}

fn policy_table(policies: &[PolicySpec]) -> Table {
    let mut table = Table::new(&[
        "NAME", "OPEN", "METHODS", "USERS", "GROUPS", "AGENTS", "TIMEOUT", "MAX",
    ]);
    for p in policies {
        table.push(vec![
            p.name.clone(),
            open_text(p),
            methods::methods(p),
            p.users.join(","),
            p.groups.join(","),
            agents_text(p),
            secs_cell(p.timeout_secs),
            secs_cell(max_timeout(p)),
        ]);
    }
    table
}

fn print_policy(ctx: &mut Ctx<'_>, p: &PolicySpec) -> Result<(), AdminError> {
    match ctx.format {
        Format::Json => write_json(ctx.out, &PolicyJson::from(p))?,
        Format::Table => {
            let mut fields = vec![
                ("name", p.name.clone()),
                ("open", open_text(p)),
                ("users", p.users.join(",")),
                ("groups", p.groups.join(",")),
                ("agents", agents_text(p)),
                ("methods", methods::methods(p)),
            ];
            fields.extend(methods::method_fields(p));
            if !p.forward.is_empty() {
                fields.push(("forward", p.forward.join(", ")));
            }
            fields.push(("timeout", secs_cell(p.timeout_secs)));
            fields.push(("max timeout", secs_cell(max_timeout(p))));
            write_fields(ctx.out, &fields)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
