//! Admin identities: pinned certificate fingerprints, revocable, like agents.

use super::{Store, StoreError, Timestamp, map_write_err, on_pool, opt_ts};
use crate::name::AdminName;

/// A stored admin identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// Its name (`spiffe://knockgate/admin/<name>`).
    pub name: AdminName,
    /// SHA-256 of the certificate issued to it: the only one accepted.
    pub cert_fingerprint: String,
    /// When it was added.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

type AdminRow = (String, String, i64, Option<i64>);

fn admin_from_row((name, fp, created, revoked): AdminRow) -> Result<Admin, StoreError> {
    Ok(Admin {
        name: AdminName::new(name).map_err(|_| StoreError::Corrupt { what: "admin name" })?,
        cert_fingerprint: fp,
        created_at: Timestamp::from_unix_millis(created),
        revoked_at: opt_ts(revoked),
    })
}

impl Store {
    /// Records admin `name` with the fingerprint of the certificate issued to it.
    pub async fn add_admin(
        &self,
        name: &AdminName,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO admins (name, cert_fingerprint, created_at) VALUES ($1, $2, $3)")
                .bind(name.as_str())
                .bind(fingerprint)
                .bind(now.unix_millis())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(map_write_err("admin", name.as_str(), None))
    }

    /// One admin.
    pub async fn get_admin(&self, name: &AdminName) -> Result<Admin, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, AdminRow>(
                "SELECT name, cert_fingerprint, created_at, revoked_at FROM admins WHERE name = $1",
            )
            .bind(name.as_str())
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        admin_from_row(row.ok_or_else(|| StoreError::not_found("admin", name.as_str()))?)
    }

    /// Every admin, by name.
    pub async fn list_admins(&self) -> Result<Vec<Admin>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, AdminRow>(
                "SELECT name, cert_fingerprint, created_at, revoked_at FROM admins ORDER BY name",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(admin_from_row).collect()
    }

    /// Revokes admin `name` (idempotent: the first revocation time stays). Refused when
    /// it would leave no admin able to act.
    pub async fn revoke_admin(&self, name: &AdminName, now: Timestamp) -> Result<(), StoreError> {
        let admins = self.list_admins().await?;
        let Some(target) = admins.iter().find(|a| a.name == *name) else {
            return Err(StoreError::not_found("admin", name.as_str()));
        };
        if target.revoked_at.is_some() {
            return Ok(());
        }
        if admins.iter().filter(|a| a.revoked_at.is_none()).count() <= 1 {
            return Err(StoreError::Conflict(format!(
                "{name} is the last admin that is not revoked"
            )));
        }
        on_pool!(self, pool => {
            sqlx::query("UPDATE admins SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL")
                .bind(name.as_str())
                .bind(now.unix_millis())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(StoreError::Database)
    }
}
