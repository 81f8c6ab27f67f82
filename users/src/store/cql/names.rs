//! The `usernames` claims: step 1 of a sign-up (claim a name, or take over one a sign-up
//! abandoned), the release of a deleted account's name, and what their lightweight transactions
//! saw.

use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use twtr_common::clock;
use twtr_common::cql::{CqlError, Lwt, LwtRow, Retries, lwt};
use twtr_common::store::StoreError;

use super::{CqlUserStore, ORPHAN_AFTER, from_key, key};

/// How many times a claim is tried when Paxos contention (or a lost reply) times it out. A
/// retry is safe: a claim that did land shows up as this sign-up's own.
const CLAIM_ATTEMPTS: u32 = 4;

/// What a lightweight transaction on `usernames` saw.
pub(super) struct ClaimSeen {
    pub(super) applied: bool,
    /// When not applied: who holds the name (`None` if nobody does).
    pub(super) owner: Option<u64>,
    pub(super) claimed_at: Option<i64>,
}

impl ClaimSeen {
    const APPLIED: Self = Self {
        applied: true,
        owner: None,
        claimed_at: None,
    };
}

/// Where step 1 of a sign-up left the name.
pub(super) enum Claim {
    /// This sign-up holds it now.
    Won,
    /// This sign-up's user ID held it already: an earlier attempt of the same sign-up.
    Ours,
    Taken,
}

impl CqlUserStore {
    /// Step 1 of a sign-up: claims `canonical` for `id`, or takes over a claim that a sign-up
    /// abandoned (see the module docs).
    pub(super) async fn claim(&self, canonical: &str, id: u64) -> Result<Claim, StoreError> {
        let now = CqlTimestamp(clock::now_millis());
        let seen = self
            .lwt(&self.claim_username, (canonical, key(id), now))
            .await?;
        if seen.applied {
            return Ok(Claim::Won);
        }
        let Some(owner) = seen.owner else {
            return Err(CqlError::UnexpectedResult(format!(
                "username claim {canonical:?} refused without an owner"
            ))
            .into());
        };
        if owner == id {
            return Ok(Claim::Ours);
        }
        let age = clock::now_millis() - seen.claimed_at.unwrap_or(i64::MIN / 2);
        if age < ORPHAN_AFTER.as_millis() as i64
            || self
                .user_row(owner)
                .await?
                .is_some_and(|row| !row.is_deleted())
        {
            return Ok(Claim::Taken);
        }
        let taken_over = self
            .lwt(&self.take_over_claim, (key(id), now, canonical, key(owner)))
            .await?;
        if taken_over.applied {
            tracing::info!(
                user_id = id,
                orphan = owner,
                "took over a username claim whose sign-up never finished"
            );
            return Ok(Claim::Won);
        }
        // Another sign-up took it over first (or, after a lost reply, this one did).
        Ok(if taken_over.owner == Some(id) {
            Claim::Ours
        } else {
            Claim::Taken
        })
    }

    /// Runs a lightweight transaction on `usernames`, trying again while Paxos contention or a
    /// lost reply leaves its outcome unknown.
    pub(super) async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<ClaimSeen, StoreError> {
        let mut retries = Retries::new("username claim", CLAIM_ATTEMPTS);
        loop {
            let result = self.session().execute_unpaged(statement, &values).await;
            match lwt(result)? {
                Lwt::Applied => return Ok(ClaimSeen::APPLIED),
                Lwt::NotApplied(row) => return Ok(claim_seen(&row)),
                Lwt::Unknown(_) => retries.lost().await?,
            }
        }
    }

    /// The last step of a deletion: frees `username` unless someone else holds it by now.
    pub(super) async fn release_name(
        &self,
        username: &str,
        user_id: u64,
    ) -> Result<(), StoreError> {
        let canonical = username.to_ascii_lowercase();
        let seen = self
            .lwt(&self.release_username, (&canonical, key(user_id)))
            .await?;
        if !seen.applied && seen.owner.is_none() {
            tracing::debug!(user_id, "a deleted user's name was free already");
        }
        Ok(())
    }
}

/// What a refused lightweight transaction on `usernames` saw: the current owner and claim time
/// (none when nobody holds the name).
fn claim_seen(row: &LwtRow) -> ClaimSeen {
    let owner = match row.get("user_id") {
        Some(CqlValue::BigInt(owner)) => Some(from_key(*owner)),
        _ => None,
    };
    let claimed_at = match row.get("claimed_at") {
        Some(CqlValue::Timestamp(at)) => Some(at.0),
        _ => None,
    };
    ClaimSeen {
        applied: false,
        owner,
        claimed_at,
    }
}
