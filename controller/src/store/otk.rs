//! One-time SPA key claims: the fleet-wide single-use decision, one
//! transaction per claim, and each user's highest claimed counter (where the
//! agents' stock of keys starts).

use std::collections::BTreeMap;

use super::{BeginWrite, ConfigVersion, StoreError, Timestamp};
use super::{Store, bump_version, map_write_err, on_pool};
use crate::name::{AgentName, UserName};

/// A claim of key `counter` of `user`, as an agent makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOtkClaim {
    /// Whose key.
    pub user: UserName,
    /// Which key (from 0).
    pub counter: u64,
    /// The claiming agent.
    pub agent: AgentName,
    /// The packet's source address, as text.
    pub src: String,
    /// When the packet arrived.
    pub at: Timestamp,
    /// Granted already, while the controller was unreachable.
    pub offline: bool,
}

/// A stored claim: the one that won its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtkClaim {
    /// The claim as made.
    pub claim: NewOtkClaim,
    /// When the controller recorded it.
    pub claimed_at: Timestamp,
}

/// How a claim was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Recorded: the claimer has the key. The config version was bumped in the
    /// same transaction (the stock moves forward on every agent).
    Won(ConfigVersion),
    /// This very claim (same agent, source, time and mode) was recorded
    /// before: a retry, still the winner.
    Repeated,
    /// Someone had the key: `Some(first)` claimed it; `None` means it was
    /// withdrawn unclaimed because a later key of the user was claimed
    /// (online claims only; an offline report of such a key is recorded).
    Used(Option<OtkClaim>),
    /// Beyond the keys stocked: no agent can have been given it.
    Unknown,
}

type ClaimRow = (String, i64, String, String, i64, bool, i64);

fn claim_from_row(row: ClaimRow) -> Result<OtkClaim, StoreError> {
    let (user, counter, agent, src, at, offline, claimed_at) = row;
    Ok(OtkClaim {
        claim: NewOtkClaim {
            user: super::parse(&user, "otk claim user")?,
            counter: super::narrow(counter, "otk claim counter")?,
            agent: super::parse(&agent, "otk claim agent")?,
            src,
            at: Timestamp::from_unix_millis(at),
            offline,
        },
        claimed_at: Timestamp::from_unix_millis(claimed_at),
    })
}

/// The stored claim of `($user, $counter)` inside transaction `$tx`.
macro_rules! claim_row {
    ($tx:expr, $user:expr, $counter:expr) => {
        sqlx::query_as::<_, ClaimRow>(
            "SELECT user_name, counter, agent, src, at, offline, claimed_at FROM otk_claims \
             WHERE user_name = $1 AND counter = $2",
        )
        .bind($user)
        .bind($counter)
        .fetch_optional(&mut *$tx)
        .await
        .map_err(StoreError::Database)?
        .map(claim_from_row)
        .transpose()?
    };
}

impl Store {
    /// Decides `claim` in one transaction. Of any number of concurrent claims
    /// of one key, on any replica, exactly one is [`ClaimOutcome::Won`]: the
    /// primary key `(user_name, counter)` lets one `INSERT` through. Keys
    /// beyond `stock` past the highest claimed one are [`ClaimOutcome::Unknown`].
    pub async fn claim_otk(
        &self,
        claim: &NewOtkClaim,
        stock: u64,
        now: Timestamp,
    ) -> Result<ClaimOutcome, StoreError> {
        let _timer = crate::metrics::StoreTimer::start("otk.claim");
        let counter = i64::try_from(claim.counter).map_err(|_| StoreError::OutOfRange {
            what: "one-time key counter",
        })?;
        let user = claim.user.as_str();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let highest = sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MAX(counter) FROM otk_claims WHERE user_name = $1",
            )
            .bind(user)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
            let first_stocked = highest.map_or(0, |h| i128::from(h) + 1);
            if i128::from(counter) >= first_stocked + i128::from(stock) {
                return Ok(ClaimOutcome::Unknown);
            }
            if !claim.offline && highest.is_some_and(|h| counter < h) {
                return Ok(ClaimOutcome::Used(claim_row!(tx, user, counter)));
            }
            let inserted = sqlx::query_scalar::<_, i64>(
                "INSERT INTO otk_claims (user_name, counter, agent, src, at, offline, claimed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (user_name, counter) DO NOTHING RETURNING counter",
            )
            .bind(user)
            .bind(counter)
            .bind(claim.agent.as_str())
            .bind(&claim.src)
            .bind(claim.at.unix_millis())
            .bind(claim.offline)
            .bind(now.unix_millis())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_write_err("otk claim", user, Some(("user", user))))?;
            if inserted.is_some() {
                let version = bump_version!(tx);
                tx.commit().await.map_err(StoreError::Database)?;
                return Ok(ClaimOutcome::Won(version));
            }
            // Lost the insert: the winner has committed, so it is visible now.
            Ok(match claim_row!(tx, user, counter) {
                Some(first) if first.claim == *claim => ClaimOutcome::Repeated,
                first => ClaimOutcome::Used(first),
            })
        })
    }

    /// Each user's highest claimed one-time key counter (users with no claim
    /// are absent).
    pub async fn otk_highest_claims(&self) -> Result<BTreeMap<UserName, u64>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT user_name, MAX(counter) FROM otk_claims GROUP BY user_name",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        rows.into_iter()
            .map(|(u, c)| {
                Ok((
                    super::parse(&u, "otk claim user")?,
                    super::narrow(c, "otk claim counter")?,
                ))
            })
            .collect()
    }

    /// The claim that won key `counter` of `user`, if any.
    pub async fn get_otk_claim(
        &self,
        user: &UserName,
        counter: u64,
    ) -> Result<Option<OtkClaim>, StoreError> {
        let counter = i64::try_from(counter).map_err(|_| StoreError::OutOfRange {
            what: "one-time key counter",
        })?;
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, ClaimRow>(
                "SELECT user_name, counter, agent, src, at, offline, claimed_at FROM otk_claims \
                 WHERE user_name = $1 AND counter = $2",
            )
            .bind(user.as_str())
            .bind(counter)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::Database)?;
        row.map(claim_from_row).transpose()
    }
}
