//! `knockadm grant list|revoke`: the access the fleet has opened, and
//! closing it early (one grant, or every open grant of a user).

use clap::{ArgGroup, Args, Subcommand, value_parser};
use knockgate_proto::api::{self, GrantRecord};
use serde::Serialize;

use super::args::{access_text, parse_name};
use super::output::{Table, rfc3339, write_json};
use super::{AdminError, Ctx, Format, Subject};

/// `knockadm grant …`.
#[derive(Debug, Clone, Subcommand)]
pub enum GrantCmd {
    /// List open grants (with --all, closed ones too)
    List(GrantListArgs),
    /// Close a grant now, or every open grant of a user
    Revoke(GrantRevokeArgs),
}

/// Arguments of `knockadm grant list`.
#[derive(Debug, Clone, Args)]
pub struct GrantListArgs {
    /// Only grants on this agent
    #[arg(long, value_name = "AGENT", value_parser = parse_name)]
    pub agent: Option<String>,
    /// Only grants of this user
    #[arg(long, value_name = "USER", value_parser = parse_name)]
    pub user: Option<String>,
    /// Include closed grants
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `knockadm grant revoke`: exactly one of ID and --user.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "user"])))]
#[command(after_help = "\
Examples:
  knockadm grant revoke 42
  knockadm grant revoke --user alice")]
pub struct GrantRevokeArgs {
    /// The grant's id (see 'knockadm grant list')
    #[arg(value_name = "ID", value_parser = value_parser!(i64).range(1..))]
    pub id: Option<i64>,
    /// Every open grant of this user instead
    #[arg(long, value_name = "USER", value_parser = parse_name)]
    pub user: Option<String>,
}

impl GrantCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        match self {
            GrantCmd::List(args) => list(ctx, args).await,
            GrantCmd::Revoke(args) => revoke(ctx, args).await,
        }
    }
}

/// One grant as JSON.
#[derive(Debug, Serialize)]
struct GrantJson {
    id: i64,
    agent: String,
    user: String,
    src: String,
    access: Option<String>,
    policy: String,
    opened_at: Option<String>,
    expires_at: Option<String>,
    closed_at: Option<String>,
    close_reason: String,
}

impl From<&GrantRecord> for GrantJson {
    fn from(g: &GrantRecord) -> Self {
        GrantJson {
            id: g.id,
            agent: g.agent.clone(),
            user: g.user.clone(),
            src: g.src.clone(),
            access: g.access.as_ref().map(access_text),
            policy: g.policy.clone(),
            opened_at: rfc3339(g.opened_at_unix_ms),
            expires_at: rfc3339(g.expires_at_unix_ms),
            closed_at: rfc3339(g.closed_at_unix_ms),
            close_reason: g.close_reason.clone(),
        }
    }
}

fn grant_table(grants: &[GrantJson]) -> Table {
    let mut table = Table::new(&[
        "ID", "AGENT", "USER", "SRC", "ACCESS", "POLICY", "OPENED", "EXPIRES", "STATE",
    ]);
    for g in grants {
        let state = match (&g.closed_at, g.close_reason.as_str()) {
            (None, _) => "open".to_owned(),
            (Some(at), "") => format!("closed {at}"),
            (Some(at), reason) => format!("closed {at} ({reason})"),
        };
        table.push(vec![
            g.id.to_string(),
            g.agent.clone(),
            g.user.clone(),
            g.src.clone(),
            g.access.clone().unwrap_or_default(),
            g.policy.clone(),
            g.opened_at.clone().unwrap_or_default(),
            g.expires_at.clone().unwrap_or_default(),
            state,
        ]);
    }
    table
}

async fn list(ctx: &mut Ctx<'_>, args: GrantListArgs) -> Result<(), AdminError> {
    let request = api::ListGrantsRequest {
        agent: args.agent.unwrap_or_default(),
        user: args.user.unwrap_or_default(),
        include_closed: args.all,
    };
    let resp = ctx
        .client()
        .await?
        .list_grants(request)
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
        .into_inner();
    let mut grants: Vec<GrantJson> = resp.grants.iter().map(GrantJson::from).collect();
    grants.sort_by_key(|g| g.id);
    match ctx.format {
        Format::Json => write_json(ctx.out, &grants)?,
        Format::Table => grant_table(&grants).render(ctx.out)?,
    }
    Ok(())
}

async fn revoke(ctx: &mut Ctx<'_>, args: GrantRevokeArgs) -> Result<(), AdminError> {
    let user = args.user.clone().unwrap_or_default();
    let subject = match args.id {
        Some(id) => Subject::Grant(id),
        None => Subject::Named("user", &user),
    };
    let resp = ctx
        .client()
        .await?
        .revoke_grants(api::RevokeGrantsRequest {
            id: args.id.unwrap_or(0),
            user: user.clone(),
        })
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), subject, &s))?
        .into_inner();
    match ctx.format {
        Format::Json => write_json(ctx.out, &serde_json::json!({"revoked": resp.revoked}))?,
        Format::Table => {
            let plural = if resp.revoked == 1 { "" } else { "s" };
            match args.id {
                Some(id) if resp.revoked == 1 => writeln!(ctx.out, "grant {id} revoked")?,
                _ => writeln!(ctx.out, "revoked {} grant{plural}", resp.revoked)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        revoke: GrantRevokeArgs,
    }

    #[test]
    fn revoke_takes_exactly_one_of_id_and_user() {
        let parse = |args: &[&str]| Cli::try_parse_from(["revoke"].iter().chain(args));
        let args = parse(&["42"]).unwrap().revoke;
        assert_eq!((args.id, args.user), (Some(42), None));
        let args = parse(&["--user", "alice"]).unwrap().revoke;
        assert_eq!((args.id, args.user.as_deref()), (None, Some("alice")));
        assert!(parse(&[]).is_err());
        assert!(parse(&["42", "--user", "alice"]).is_err());
        assert!(parse(&["0"]).is_err());
        assert!(parse(&["x"]).is_err());
    }

    #[test]
    fn table_shows_state() {
        let open = GrantRecord {
            id: 7,
            agent: "gw1".into(),
            user: "alice".into(),
            src: "198.51.100.4".into(),
            access: Some(api::Access { proto: 1, port: 22 }),
            policy: "ssh".into(),
            opened_at_unix_ms: 1_748_779_200_000,
            expires_at_unix_ms: 1_748_779_230_000,
            closed_at_unix_ms: 0,
            close_reason: String::new(),
        };
        let closed = GrantRecord {
            id: 3,
            closed_at_unix_ms: 1_748_779_210_000,
            close_reason: "revoked".into(),
            ..open.clone()
        };
        let grants = vec![GrantJson::from(&open), GrantJson::from(&closed)];
        let mut out = Vec::new();
        grant_table(&grants).render(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  AGENT  USER   SRC           ACCESS  POLICY  OPENED                EXPIRES               STATE"
        );
        assert!(
            lines[1].starts_with(
                "7   gw1    alice  198.51.100.4  tcp/22  ssh     2025-06-01T12:00:00Z"
            )
        );
        assert!(
            lines[1].ends_with("2025-06-01T12:00:30Z  open"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("closed 2025-06-01T12:00:10Z (revoked)"),
            "{}",
            lines[2]
        );
    }
}
