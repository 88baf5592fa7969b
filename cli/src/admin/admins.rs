//! `knockadm admin add|list|revoke`: admin identities, pinned and revocable like agents.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Subcommand;
use knockgate_proto::api;
use serde::Serialize;

use super::args::parse_name;
use super::output::{Table, rfc3339, write_json};
use super::{AdminError, Ctx, Format, Subject};

/// `knockadm admin …`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCmd {
    /// Issue a new admin identity and write it (certificate, key, CA) to a new file, 0600
    Add {
        /// The admin's name: lowercase letters, digits, '.', '_' and '-' (1 to 64)
        #[arg(value_parser = parse_name)]
        name: String,
        /// Where to write the identity (refuses to overwrite a file)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// List admin identities, their pinned certificate and whether they are revoked
    List,
    /// Revoke an admin: its certificate is refused from now on (not the last one)
    Revoke {
        /// The admin's name
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// One admin as `admin list -o json` prints it.
#[derive(Debug, Serialize)]
struct AdminJson {
    name: String,
    cert_sha256: String,
    created_at: Option<String>,
    revoked_at: Option<String>,
}

impl AdminCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn run(self, ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
        match self {
            AdminCmd::Add { name, out } => add(ctx, &name, out).await,
            AdminCmd::List => list(ctx).await,
            AdminCmd::Revoke { name } => revoke(ctx, &name).await,
        }
    }
}

async fn add(ctx: &mut Ctx<'_>, name: &str, out: PathBuf) -> Result<(), AdminError> {
    // Refuse before asking the controller: an identity that cannot be written is lost.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .map_err(|e| AdminError::Input(format!("cannot create {}: {e}", out.display())))?;
    let resp = ctx
        .client()
        .await?
        .add_admin(api::AddAdminRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| {
            let _ = std::fs::remove_file(&out);
            AdminError::from_status(ctx.url(), Subject::Named("admin", name), &s)
        })?
        .into_inner();
    file.write_all(resp.identity_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AdminError::Input(format!("cannot write {}: {e}", out.display())))?;
    match ctx.format {
        Format::Json => write_json(
            ctx.out,
            &serde_json::json!({
                "name": name,
                "cert_sha256": resp.cert_sha256,
                "identity": out.display().to_string(),
            }),
        )?,
        Format::Table => writeln!(
            ctx.out,
            "admin {name} added; identity in {} (certificate sha256 {})",
            out.display(),
            resp.cert_sha256
        )?,
    }
    Ok(())
}

async fn list(ctx: &mut Ctx<'_>) -> Result<(), AdminError> {
    let resp = ctx
        .client()
        .await?
        .list_admins(api::ListAdminsRequest {})
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::None, &s))?
        .into_inner();
    let admins: Vec<AdminJson> = resp
        .admins
        .into_iter()
        .map(|a| AdminJson {
            name: a.name,
            cert_sha256: a.cert_sha256,
            created_at: rfc3339(a.created_at_unix_ms),
            revoked_at: rfc3339(a.revoked_at_unix_ms),
        })
        .collect();
    match ctx.format {
        Format::Json => write_json(ctx.out, &admins)?,
        Format::Table => {
            let mut table = Table::new(&["NAME", "CERT-SHA256", "CREATED", "REVOKED"]);
            for a in &admins {
                table.push(vec![
                    a.name.clone(),
                    a.cert_sha256.chars().take(16).collect(),
                    a.created_at.clone().unwrap_or_default(),
                    a.revoked_at.clone().unwrap_or_else(|| "-".to_owned()),
                ]);
            }
            table.render(ctx.out)?;
        }
    }
    Ok(())
}

async fn revoke(ctx: &mut Ctx<'_>, name: &str) -> Result<(), AdminError> {
    ctx.client()
        .await?
        .revoke_admin(api::RevokeAdminRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| AdminError::from_status(ctx.url(), Subject::Named("admin", name), &s))?;
    match ctx.format {
        Format::Json => write_json(ctx.out, &serde_json::json!({"name": name, "revoked": true}))?,
        Format::Table => writeln!(ctx.out, "admin {name} revoked")?,
    }
    Ok(())
}
