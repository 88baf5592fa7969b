//! `knockadm user add|list|show|disable|enable|remove|rotate-keys|profile`.
//! Adding a user or rotating their keys is the only time the controller returns
//! the secrets: `--profile-out` saves them as a knocker profile (and fwknop rc
//! file), checked writable before the controller is asked. `user profile NAME
//! --update FILE` (`user/update.rs`) brings a profile's gateways up to date
//! without new keys.

mod update;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use knockgate_proto::api::{self, GatewayAddress, UserCredentials, UserInfo};
use serde::Serialize;
use zeroize::Zeroize as _;

use super::args::{access_text, parse_name};
use super::output::{Table, rfc3339, time_cell, write_fields, write_json};
use super::{AdminError, Ctx, Format, Subject};
use crate::profile::{
    Profile, ProfileGateway, ProfileGatewayPolicy, ProfileRotation, ProfileUser, encode_key,
    ensure_free, write_profile,
};

/// `knockadm user …`.
#[derive(Debug, Clone, Subcommand)]
pub enum UserCmd {
    /// Add a user; with --profile-out, save their keys as a knocker profile
    Add(UserAddArgs),
    /// List users
    List,
    /// Show one user
    Show {
        /// The user's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Disable a user: their knocks are refused until enabled again
    Disable {
        /// The user's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Enable a disabled user
    Enable {
        /// The user's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Remove a user and their keys
    Remove {
        /// The user's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Issue new keys for a user (the old ones stop working); with
    /// --profile-out, save them as a knocker profile
    RotateKeys(RotateArgs),
    /// Bring a user's knocker profile up to date with the gateways and
    /// policies that admit them now, keeping its keys
    Profile(update::UserProfileArgs),
}

/// Arguments of `knockadm user add`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The controller returns the user's keys only now: without --profile-out they
are not saved, and 'knockadm user rotate-keys NAME --profile-out FILE' is the
way to get new ones. FILE (mode 0600) is the profile 'knocker open' reads;
FILE.fwknoprc holds one stanza per gateway for the stock fwknop client.

Examples:
  knockadm user add alice --group ops --profile-out alice.toml")]
pub struct UserAddArgs {
    /// The user's name
    #[arg(value_parser = parse_name)]
    pub name: String,

    /// A group the user belongs to (repeatable)
    #[arg(long = "group", value_name = "GROUP", value_parser = parse_name)]
    pub groups: Vec<String>,

    /// Write the user's knocker profile here (and FILE.fwknoprc); refuses to
    /// overwrite
    #[arg(long, value_name = "FILE")]
    pub profile_out: Option<PathBuf>,
}

/// Arguments of `knockadm user rotate-keys`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The user's name
    #[arg(value_parser = parse_name)]
    pub name: String,

    /// Write the user's new knocker profile here (and FILE.fwknoprc);
    /// refuses to overwrite
    #[arg(long, value_name = "FILE")]
    pub profile_out: Option<PathBuf>,
}

impl UserCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        match self {
            UserCmd::Add(args) => {
                if let Some(path) = &args.profile_out {
                    ensure_free(path)?;
                }
                let subject = Subject::Named("user", &args.name);
                let request = api::AddUserRequest {
                    name: args.name.clone(),
                    groups: args.groups.clone(),
                };
                let creds = ctx
                    .client()
                    .await?
                    .add_user(request)
                    .await
                    .map_err(|s| AdminError::from_status(ctx.url(), subject, &s))?
                    .into_inner();
                save_and_print(ctx, &args.name, creds, args.profile_out.as_deref(), "added")
            }
            UserCmd::RotateKeys(args) => {
                if let Some(path) = &args.profile_out {
                    ensure_free(path)?;
                }
                let subject = Subject::Named("user", &args.name);
                let request = api::RotateUserKeysRequest {
                    name: args.name.clone(),
                };
                let creds = ctx
                    .client()
                    .await?
                    .rotate_user_keys(request)
                    .await
                    .map_err(|s| AdminError::from_status(ctx.url(), subject, &s))?
                    .into_inner();
                let path = args.profile_out.as_deref();
                save_and_print(ctx, &args.name, creds, path, "has new keys")
            }
            UserCmd::Profile(args) => update::run(ctx, args).await,
            UserCmd::List => list(ctx).await,
            UserCmd::Show { name } => {
                let request = api::GetUserRequest { name: name.clone() };
                let user = ctx
                    .client()
                    .await?
                    .get_user(request)
                    .await
                    .map_err(|s| {
                        AdminError::from_status(ctx.url(), Subject::Named("user", &name), &s)
                    })?
                    .into_inner();
                print_user(ctx, &user)
            }
            UserCmd::Disable { name } => set_disabled(ctx, &name, true).await,
            UserCmd::Enable { name } => set_disabled(ctx, &name, false).await,
            UserCmd::Remove { name } => {
                let request = api::RemoveUserRequest { name: name.clone() };
                ctx.client()
                    .await?
                    .remove_user(request)
                    .await
                    .map_err(|s| {
                        AdminError::from_status(ctx.url(), Subject::Named("user", &name), &s)
                    })?;
                match ctx.format {
                    Format::Json => {
                        write_json(ctx.out, &serde_json::json!({"name": name, "removed": true}))?;
                    }
                    Format::Table => writeln!(ctx.out, "user {name} removed")?,
                }
                Ok(())
            }
        }
    }
}

async fn set_disabled(ctx: &mut Ctx<'_>, name: &str, disabled: bool) -> Result<(), AdminError> {
    let request = api::SetUserDisabledRequest {
        name: name.to_owned(),
        disabled,
    };
    let user = ctx
        .client()
        .await?
        .set_user_disabled(request)
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::Named("user", name), &s))?
        .into_inner();
    print_user(ctx, &user)
}

async fn list(ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
    let resp = ctx
        .client()
        .await?
        .list_users(api::ListUsersRequest {})
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
        .into_inner();
    let mut users: Vec<UserJson> = resp.users.iter().map(UserJson::from).collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    match ctx.format {
        Format::Json => write_json(ctx.out, &users)?,
        Format::Table => user_table(&users).render(ctx.out)?,
    }
    Ok(())
}

/// One user as JSON (never a key, only the SPA key's id).
#[derive(Debug, Serialize)]
struct UserJson {
    name: String,
    groups: Vec<String>,
    disabled: bool,
    key_version: u32,
    created_at: Option<String>,
    spa_key_id: String,
}

impl From<&UserInfo> for UserJson {
    fn from(u: &UserInfo) -> Self {
        UserJson {
            name: u.name.clone(),
            groups: u.groups.clone(),
            disabled: u.disabled,
            key_version: u.key_version,
            created_at: rfc3339(u.created_at_unix_ms),
            spa_key_id: u.spa_key_id.clone(),
        }
    }
}

fn status_text(disabled: bool) -> String {
    if disabled { "disabled" } else { "active" }.to_owned()
}

fn user_table(users: &[UserJson]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "GROUPS",
        "STATUS",
        "KEY-VERSION",
        "SPA-KEY-ID",
        "CREATED",
    ]);
    for u in users {
        table.push(vec![
            u.name.clone(),
            u.groups.join(","),
            status_text(u.disabled),
            u.key_version.to_string(),
            u.spa_key_id.clone(),
            u.created_at.clone().unwrap_or_else(|| "never".to_owned()),
        ]);
    }
    table
}

fn user_fields(u: &UserInfo) -> Vec<(&'static str, String)> {
    vec![
        ("name", u.name.clone()),
        ("groups", u.groups.join(",")),
        ("status", status_text(u.disabled)),
        ("key version", u.key_version.to_string()),
        ("spa key id", u.spa_key_id.clone()),
        ("created", time_cell(u.created_at_unix_ms)),
    ]
}

fn print_user(ctx: &mut Ctx<'_>, user: &UserInfo) -> Result<(), AdminError> {
    match ctx.format {
        Format::Json => write_json(ctx.out, &UserJson::from(user))?,
        Format::Table => write_fields(ctx.out, &user_fields(user))?,
    }
    Ok(())
}

/// The knocker profile for freshly issued credentials. Empty keys (a
/// method the controller did not issue) are left out.
#[must_use]
pub fn profile_from(name: &str, creds: &UserCredentials) -> Profile {
    let key = |bytes: &[u8]| (!bytes.is_empty()).then(|| encode_key(bytes));
    let hmac = creds.fwknop_hmac.trim().to_ascii_lowercase();
    Profile {
        user: ProfileUser {
            name: creds
                .user
                .as_ref()
                .map_or(name, |u| u.name.as_str())
                .to_owned(),
            spa_key: key(&creds.spa_key),
            fwknop_key: key(&creds.fwknop_key),
            fwknop_hmac_key: key(&creds.fwknop_hmac_key),
            fwknop_hmac: Some(if hmac.is_empty() {
                "sha256".to_owned()
            } else {
                hmac
            }),
            rotating_secret: key(&creds.rotating_secret),
        },
        gateways: profile_gateways(&creds.gateways),
    }
}

/// The profile's `[[gateway]]` entries for the gateways the controller lists.
fn profile_gateways(gateways: &[GatewayAddress]) -> Vec<ProfileGateway> {
    gateways
        .iter()
        .map(|g| ProfileGateway {
            name: g.name.clone(),
            address: g.address.clone(),
            policies: g
                .policies
                .iter()
                .map(|p| ProfileGatewayPolicy {
                    name: p.name.clone(),
                    open: p.open.iter().map(access_text).collect(),
                    methods: p.methods.clone(),
                })
                .collect(),
            rotating: g
                .rotating
                .iter()
                .map(|r| ProfileRotation {
                    policy: r.policy.clone(),
                    length: r.length,
                    protos: r.protos.clone(),
                    port_lo: r.port_lo,
                    port_hi: r.port_hi,
                    window_secs: r.window_secs,
                    exclude: r.exclude.clone(),
                })
                .collect(),
        })
        .collect()
}

/// What `user add` / `user rotate-keys` print as JSON.
#[derive(Debug, Serialize)]
struct Issued {
    user: Option<UserJson>,
    gateways: Vec<GatewayJson>,
    profile: Option<PathBuf>,
    fwknoprc: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct GatewayJson {
    name: String,
    address: String,
}

fn save_and_print(
    ctx: &mut Ctx<'_>,
    name: &str,
    mut creds: UserCredentials,
    profile_out: Option<&Path>,
    verb: &str,
) -> Result<(), AdminError> {
    let profile = profile_from(name, &creds);
    for secret in [
        &mut creds.spa_key,
        &mut creds.fwknop_key,
        &mut creds.fwknop_hmac_key,
        &mut creds.rotating_secret,
    ] {
        secret.zeroize();
    }
    let rc = match profile_out {
        Some(path) => {
            Some(
                write_profile(path, &profile).map_err(|source| AdminError::ProfileLost {
                    user: name.to_owned(),
                    source: Box::new(source),
                })?,
            )
        }
        None => None,
    };
    let gateways: Vec<GatewayJson> = profile
        .gateways
        .iter()
        .map(|g| GatewayJson {
            name: g.name.clone(),
            address: g.address.clone(),
        })
        .collect();
    match ctx.format {
        Format::Json => write_json(
            ctx.out,
            &Issued {
                user: creds.user.as_ref().map(UserJson::from),
                gateways,
                profile: profile_out.map(Path::to_owned),
                fwknoprc: rc,
            },
        )?,
        Format::Table => {
            writeln!(ctx.out, "user {name} {verb}")?;
            let mut fields = creds.user.as_ref().map(user_fields).unwrap_or_default();
            let gws: Vec<String> = gateways
                .iter()
                .map(|g| match g.address.as_str() {
                    "" => g.name.clone(),
                    address => format!("{} ({address})", g.name),
                })
                .collect();
            fields.push(("gateways", gws.join(", ")));
            fields.push((
                "profile",
                match (profile_out, &rc) {
                    (Some(path), Some(rc)) => {
                        format!("{} (fwknop: {})", path.display(), rc.display())
                    }
                    _ => format!(
                        "not saved; the keys are shown only once: run 'knockadm user \
                         rotate-keys {name} --profile-out FILE' to issue new ones"
                    ),
                },
            ));
            write_fields(ctx.out, &fields)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
