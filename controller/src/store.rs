//! The controller's persistent state behind one async API, on SQLite (one
//! file in the data dir, the default) or PostgreSQL (shared by replicas).
//!
//! Both backends run the same SQL text: `$n` placeholders, `RETURNING` and
//! `ON CONFLICT` mean the same on both, and only the schema differs
//! (`migrations/sqlite`, `migrations/postgres`), and the JSON functions that
//! read audit details when refusals are counted (`audit.rs`). `on_pool!` expands a body
//! once per backend, so queries are written once yet typed natively. Every
//! change that affects agents bumps the config version in its transaction.

mod admins;
mod agents;
mod audit;
mod grants;
mod model;
mod otk;
mod policies;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

pub use admins::Admin;
pub use agents::TokenError;
pub use model::*;
pub use otk::{ClaimOutcome, NewOtkClaim, OtkClaim};

/// File name of the SQLite database inside the data dir.
pub const DEFAULT_SQLITE_FILE: &str = "knockgate.db";
/// PostgreSQL channel notified (payload: the new version) when a bump commits.
pub const CONFIG_CHANNEL: &str = "knockgate_config";

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Errors of the store. Display never contains SQL or row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or reached.
    #[error("failed to open database {location}")]
    Open {
        /// Path or redacted URL.
        location: String,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("failed to migrate the database schema")]
    Migrate(#[source] MigrateError),
    /// A unique name or key is taken.
    #[error("{entity} {name} already exists")]
    AlreadyExists {
        /// "user", "agent", ...
        entity: &'static str,
        /// The conflicting name.
        name: String,
    },
    /// The row does not exist.
    #[error("{entity} {name} not found")]
    NotFound {
        /// "user", "agent", ...
        entity: &'static str,
        /// The missing name or id.
        name: String,
    },
    /// A value does not fit the stored range.
    #[error("{what} is out of range")]
    OutOfRange {
        /// Which value.
        what: &'static str,
    },
    /// A stored row could not be read back into its type.
    #[error("stored {what} is invalid")]
    Corrupt {
        /// Which column or record.
        what: &'static str,
    },
    /// The change would break an invariant (such as leaving no admin).
    #[error("{0}")]
    Conflict(String),
    /// Any other database failure.
    #[error("database operation failed")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    fn not_found(entity: &'static str, name: impl ToString) -> Self {
        Self::NotFound {
            entity,
            name: name.to_string(),
        }
    }
}

/// Maps a unique violation to `AlreadyExists` and a foreign-key violation to
/// `NotFound` of `parent`, everything else to `Database`.
fn map_write_err(
    entity: &'static str,
    name: &str,
    parent: Option<(&'static str, &str)>,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::AlreadyExists {
            entity,
            name: name.to_owned(),
        },
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => match parent {
            Some((p, n)) => StoreError::not_found(p, n),
            None => StoreError::Database(e),
        },
        _ => StoreError::Database(e),
    }
}

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's native pool; the body is
/// compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
use on_pool;

/// Bumps the config version inside transaction `$tx`, yielding the new one.
macro_rules! bump_version {
    ($tx:expr) => {
        sqlx::query_scalar::<_, i64>(
            "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *$tx)
        .await
        .map($crate::store::ConfigVersion)
        .map_err($crate::store::StoreError::Database)?
    };
}
use bump_version;

/// Starts a transaction that will write.
trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, StoreError>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction
    /// that reads first waits on `busy_timeout` instead of failing `SQLITE_BUSY`.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::Database)
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin().await.map_err(StoreError::Database)
    }
}

/// The controller's database. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

/// Only the backend: the pool's options would print the database password.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `database`: a `postgres://`/`postgresql://` URL, a `sqlite:` URL
    /// or a plain file path (SQLite, created if missing). Runs migrations.
    pub async fn open(database: &str) -> Result<Self, StoreError> {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            Self::open_postgres(database).await
        } else if database.starts_with("sqlite:") {
            let options =
                SqliteConnectOptions::from_str(database).map_err(|source| StoreError::Open {
                    location: database.to_owned(),
                    source,
                })?;
            Self::open_sqlite_with(options, database).await
        } else {
            Self::open_sqlite(Path::new(database)).await
        }
    }

    /// Opens (creating if missing) the SQLite file at `path`, in WAL mode.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::open_sqlite_with(options, &path.display().to_string()).await
    }

    async fn open_sqlite_with(
        options: SqliteConnectOptions,
        location: &str,
    ) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                location: location.to_owned(),
                source,
            })?;
        SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Connects to PostgreSQL at `url`. Runs migrations (sqlx serialises
    /// concurrent replicas with an advisory lock).
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .map_err(|source| StoreError::Open {
                location: redact_url(url),
                source,
            })?;
        POSTGRES_MIGRATIONS
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Self {
            pool: Pool::Postgres(pool),
        })
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The PostgreSQL pool, for `LISTEN` on [`CONFIG_CHANNEL`].
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// The current config version (0 on a fresh database).
    pub async fn current_version(&self) -> Result<ConfigVersion, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT version FROM config_version WHERE id = 1")
                .fetch_one(pool)
                .await
        })
        .map(ConfigVersion)
        .map_err(StoreError::Database)
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// `postgres://user:secret@host/db` → `postgres://host/db`.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://{rest}"),
        _ => url.to_owned(),
    }
}

/// Converts a stored integer to a narrower type, or reports corruption.
fn narrow<T: TryFrom<i64>>(v: i64, what: &'static str) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Corrupt { what })
}

/// Parses a stored value, or reports corruption.
fn parse<T: FromStr>(s: &str, what: &'static str) -> Result<T, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt { what })
}

fn opt_ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_unix_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("postgres://app:pw@db:5432/gw"),
            "postgres://db:5432/gw"
        );
        assert_eq!(redact_url("postgres://db/gw"), "postgres://db/gw");
    }
}
