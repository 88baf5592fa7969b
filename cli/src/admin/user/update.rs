//! `knockadm user profile NAME --update FILE`: brings a knocker profile's
//! gateways up to date after policies or agents change, keeping its keys. The
//! controller returns the user's gateways (`UserGateways`, no key material) as
//! `user add` would list them now; the profile and its `.fwknoprc` are replaced
//! atomically, and what changed is printed (never a key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use knockgate_proto::api;
use serde::Serialize;

use super::super::args::parse_name;
use super::super::output::{Table, write_json};
use super::super::{AdminError, Ctx, Format, Subject};
use super::profile_gateways;
use crate::profile::{ProfileError, ProfileGateway, known_list, read_profile, replace_profile};

/// Arguments of `knockadm user profile`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The profile written by 'user add' or 'user rotate-keys' lists the gateways and
policies that admitted the user then. After policies or agents change,
--update FILE asks the controller for the user's gateways now and rewrites FILE
and FILE.fwknoprc with them, keeping the keys (no new keys are issued). FILE
must be NAME's profile.

Examples:
  knockadm user profile alice --update alice.toml")]
pub struct UserProfileArgs {
    /// The user's name
    #[arg(value_parser = parse_name)]
    pub name: String,

    /// The user's knocker profile to bring up to date (and FILE.fwknoprc),
    /// replaced in place
    #[arg(long, value_name = "FILE", required = true)]
    pub update: PathBuf,
}

/// How a gateway of the profile changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One gateway in the report: `--output json` and a table row.
#[derive(Debug, Serialize)]
struct GatewayChange {
    name: String,
    address: String,
    change: Change,
    policies: Vec<String>,
}

/// What `user profile --update` prints as JSON.
#[derive(Debug, Serialize)]
struct Updated {
    user: String,
    profile: PathBuf,
    fwknoprc: PathBuf,
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    gateways: Vec<GatewayChange>,
}

/// Runs `knockadm user profile NAME --update FILE`.
pub(super) async fn run(ctx: &mut Ctx<'_>, args: UserProfileArgs) -> Result<(), AdminError> {
    let UserProfileArgs { name, update: path } = args;
    let mut profile = read_profile(&path).map_err(local)?;
    if profile.user.name != name {
        return Err(AdminError::Input(format!(
            "profile '{}' belongs to user '{}', not '{name}'",
            path.display(),
            profile.user.name
        )));
    }
    let response = ctx
        .client()
        .await?
        .user_gateways(api::GetUserRequest { name: name.clone() })
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::Named("user", &name), &s))?
        .into_inner();
    let gateways = profile_gateways(&response.gateways);
    let report = changes(&profile.gateways, &gateways);
    profile.gateways = gateways;
    let rc = replace_profile(&path, &profile)?;
    print(ctx, name, &path, rc, report)
}

/// A profile that cannot be read or parsed is bad local input (exit 64).
fn local(err: ProfileError) -> AdminError {
    match err {
        ProfileError::Read { .. } | ProfileError::Parse { .. } => {
            AdminError::Input(err.to_string())
        }
        other => AdminError::Profile(other),
    }
}

/// Every gateway of `old` and `new`, by name, with how it changed.
fn changes(old: &[ProfileGateway], new: &[ProfileGateway]) -> Vec<GatewayChange> {
    let old: BTreeMap<&str, &ProfileGateway> = old.iter().map(|g| (g.name.as_str(), g)).collect();
    let new_names: BTreeMap<&str, &ProfileGateway> =
        new.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut out: Vec<GatewayChange> = new
        .iter()
        .map(|g| {
            let change = match old.get(g.name.as_str()) {
                None => Change::Added,
                Some(before) if *before == g => Change::Unchanged,
                Some(_) => Change::Changed,
            };
            gateway_change(g, change)
        })
        .collect();
    out.extend(
        old.values()
            .filter(|g| !new_names.contains_key(g.name.as_str()))
            .map(|g| gateway_change(g, Change::Removed)),
    );
    out
}

fn gateway_change(g: &ProfileGateway, change: Change) -> GatewayChange {
    GatewayChange {
        name: g.name.clone(),
        address: g.address.clone(),
        change,
        policies: g
            .policies
            .iter()
            .map(|p| format!("{} ({}: {})", p.name, p.open.join(","), p.methods.join(",")))
            .collect(),
    }
}

fn names(gateways: &[GatewayChange], change: Change) -> Vec<String> {
    gateways
        .iter()
        .filter(|g| g.change == change)
        .map(|g| g.name.clone())
        .collect()
}

fn print(
    ctx: &mut Ctx<'_>,
    user: String,
    path: &Path,
    fwknoprc: PathBuf,
    gateways: Vec<GatewayChange>,
) -> Result<(), AdminError> {
    let updated = Updated {
        user,
        profile: path.to_owned(),
        fwknoprc,
        added: names(&gateways, Change::Added),
        removed: names(&gateways, Change::Removed),
        changed: names(&gateways, Change::Changed),
        gateways,
    };
    match ctx.format {
        Format::Json => write_json(ctx.out, &updated)?,
        Format::Table => {
            writeln!(
                ctx.out,
                "profile {} of user {} updated (fwknop: {}): gateways added: {}; removed: {}",
                updated.profile.display(),
                updated.user,
                updated.fwknoprc.display(),
                known_list(&updated.added),
                known_list(&updated.removed),
            )?;
            gateway_table(&updated.gateways).render(ctx.out)?;
        }
    }
    Ok(())
}

fn gateway_table(gateways: &[GatewayChange]) -> Table {
    let mut table = Table::new(&["GATEWAY", "ADDRESS", "CHANGE", "POLICIES"]);
    for g in gateways {
        table.push(vec![
            g.name.clone(),
            g.address.clone(),
            g.change.word().to_owned(),
            match g.policies.as_slice() {
                [] => "none".to_owned(),
                list => list.join(" "),
            },
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileGatewayPolicy;

    fn gw(name: &str, address: &str, policies: &[&str]) -> ProfileGateway {
        ProfileGateway {
            name: name.into(),
            address: address.into(),
            policies: policies
                .iter()
                .map(|p| ProfileGatewayPolicy {
                    name: (*p).into(),
                    open: vec!["tcp/22".into()],
                    methods: vec!["spa".into()],
                })
                .collect(),
            rotating: vec![],
        }
    }

    #[test]
    fn changes_name_added_removed_and_changed_gateways() {
        let old = [
            gw("gw1", "192.0.2.1", &[]),
            gw("gw2", "192.0.2.2", &["ssh"]),
            gw("gw9", "192.0.2.9", &[]),
        ];
        let new = [
            gw("gw1", "192.0.2.1", &["ssh"]),
            gw("gw2", "192.0.2.2", &["ssh"]),
            gw("gw3", "192.0.2.3", &["ssh"]),
        ];
        let report = changes(&old, &new);
        let got: Vec<(&str, Change)> = report.iter().map(|g| (g.name.as_str(), g.change)).collect();
        assert_eq!(
            got,
            [
                ("gw1", Change::Changed),
                ("gw2", Change::Unchanged),
                ("gw3", Change::Added),
                ("gw9", Change::Removed),
            ]
        );
        let mut out = Vec::new();
        gateway_table(&report).render(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GATEWAY  ADDRESS    CHANGE     POLICIES\n\
             gw1      192.0.2.1  changed    ssh (tcp/22: spa)\n\
             gw2      192.0.2.2  unchanged  ssh (tcp/22: spa)\n\
             gw3      192.0.2.3  added      ssh (tcp/22: spa)\n\
             gw9      192.0.2.9  removed    none\n"
        );
    }
}
