//! Policies: a name and a JSON spec the controller's policy module defines.

use sqlx::types::Json;

use super::{BeginWrite, ConfigVersion, Policy, StoreError, Timestamp};
use super::{Store, bump_version, map_write_err, on_pool};
use crate::name::PolicyName;

type PolicyRow = (String, Json<serde_json::Value>, i64, i64);

fn policy_from_row((name, spec, created_at, updated_at): PolicyRow) -> Result<Policy, StoreError> {
    Ok(Policy {
        name: PolicyName::new(name).map_err(|_| StoreError::Corrupt {
            what: "policy name",
        })?,
        spec: spec.0,
        created_at: Timestamp::from_unix_millis(created_at),
        updated_at: Timestamp::from_unix_millis(updated_at),
    })
}

impl Store {
    /// Adds a policy.
    pub async fn add_policy(
        &self,
        name: &PolicyName,
        spec: &serde_json::Value,
        now: Timestamp,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO policies (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)")
                .bind(name.as_str())
                .bind(Json(spec))
                .bind(now.unix_millis())
                .execute(&mut *tx)
                .await
                .map_err(map_write_err("policy", name.as_str(), None))?;
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// Replaces an existing policy's spec.
    pub async fn update_policy(
        &self,
        name: &PolicyName,
        spec: &serde_json::Value,
        now: Timestamp,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("UPDATE policies SET spec = $2, updated_at = $3 WHERE name = $1")
                .bind(name.as_str())
                .bind(Json(spec))
                .bind(now.unix_millis())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("policy", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// One policy.
    pub async fn get_policy(&self, name: &PolicyName) -> Result<Policy, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, PolicyRow>(
                "SELECT name, spec, created_at, updated_at FROM policies WHERE name = $1",
            )
            .bind(name.as_str())
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        policy_from_row(row.ok_or_else(|| StoreError::not_found("policy", name))?)
    }

    /// Every policy, by name.
    pub async fn list_policies(&self) -> Result<Vec<Policy>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, PolicyRow>("SELECT name, spec, created_at, updated_at FROM policies ORDER BY name")
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(policy_from_row).collect()
    }

    /// Removes a policy.
    pub async fn remove_policy(&self, name: &PolicyName) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("DELETE FROM policies WHERE name = $1")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("policy", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }
}
