//! Users and their key material.

use std::collections::BTreeSet;

use sqlx::types::Json;

use super::{BeginWrite, ConfigVersion, NewUser, StoreError, Timestamp, User, UserKeys};
use super::{Store, bump_version, map_write_err, on_pool};
use crate::name::UserName;

type UserRow = (
    String,
    Json<BTreeSet<String>>,
    bool,
    i64,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    String,
    Vec<u8>,
    i64,
);

macro_rules! select_user {
    ($tail:literal) => {
        concat!(
            "SELECT name, groups, disabled, created_at, spa_key, fwknop_key, fwknop_hmac_key, ",
            "fwknop_hmac, rotating_secret, key_version FROM users",
            $tail
        )
    };
}

fn key<const N: usize>(bytes: Vec<u8>, what: &'static str) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt { what })
}

fn user_from_row(row: UserRow) -> Result<User, StoreError> {
    let (name, groups, disabled, created_at, spa, fwk, fwk_hmac, hmac, rot, key_version) = row;
    Ok(User {
        name: UserName::new(name).map_err(|_| StoreError::Corrupt { what: "user name" })?,
        groups: groups.0,
        disabled,
        created_at: Timestamp::from_unix_millis(created_at),
        keys: UserKeys {
            spa_key: key(spa, "spa key")?,
            fwknop_key: key(fwk, "fwknop key")?,
            fwknop_hmac_key: key(fwk_hmac, "fwknop hmac key")?,
            fwknop_hmac: hmac,
            rotating_secret: key(rot, "rotating secret")?,
        },
        key_version,
    })
}

impl Store {
    /// Adds a user with key version 1.
    pub async fn add_user(&self, user: &NewUser) -> Result<ConfigVersion, StoreError> {
        let name = user.name.as_str();
        let k = &user.keys;
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO users (name, groups, disabled, created_at, spa_key, fwknop_key, \
                 fwknop_hmac_key, fwknop_hmac, rotating_secret, key_version) \
                 VALUES ($1, $2, FALSE, $3, $4, $5, $6, $7, $8, 1)",
            )
            .bind(name)
            .bind(Json(&user.groups))
            .bind(user.created_at.unix_millis())
            .bind(&k.spa_key[..])
            .bind(&k.fwknop_key[..])
            .bind(&k.fwknop_hmac_key[..])
            .bind(&k.fwknop_hmac)
            .bind(&k.rotating_secret[..])
            .execute(&mut *tx)
            .await
            .map_err(map_write_err("user", name, None))?;
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// One user.
    pub async fn get_user(&self, name: &UserName) -> Result<User, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(select_user!(" WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::Database)?;
        user_from_row(row.ok_or_else(|| StoreError::not_found("user", name))?)
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(select_user!(" ORDER BY name"))
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter().map(user_from_row).collect()
    }

    /// Disables or re-enables a user.
    pub async fn set_user_disabled(
        &self,
        name: &UserName,
        disabled: bool,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("UPDATE users SET disabled = $2 WHERE name = $1")
                .bind(name.as_str())
                .bind(disabled)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("user", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// Removes a user. Its grants and audit events keep its name.
    pub async fn remove_user(&self, name: &UserName) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("DELETE FROM users WHERE name = $1")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("user", name));
            }
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }

    /// Replaces a user's key material and bumps its key version; the user's
    /// one-time key claims go with the old secret.
    pub async fn rotate_user_keys(
        &self,
        name: &UserName,
        keys: &UserKeys,
    ) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE users SET spa_key = $2, fwknop_key = $3, fwknop_hmac_key = $4, \
                 fwknop_hmac = $5, rotating_secret = $6, key_version = key_version + 1 \
                 WHERE name = $1",
            )
            .bind(name.as_str())
            .bind(&keys.spa_key[..])
            .bind(&keys.fwknop_key[..])
            .bind(&keys.fwknop_hmac_key[..])
            .bind(&keys.fwknop_hmac)
            .bind(&keys.rotating_secret[..])
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::not_found("user", name));
            }
            // One-time keys derive from the rotating secret: the new secret's
            // keys start again at counter 0.
            sqlx::query("DELETE FROM otk_claims WHERE user_name = $1")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            let version = bump_version!(tx);
            tx.commit().await.map_err(StoreError::Database)?;
            Ok(version)
        })
    }
}
