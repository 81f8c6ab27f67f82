//! [`CqlUserStore`]: users on ScyllaDB / Cassandra, in the tables of `cql/users/001_init.cql`
//! (`users` by ID, `usernames` as the case-insensitive uniqueness claim, and the outbox) and
//! `002_token_generation.cql` (`user_tokens`: each account's token generation).
//!
//! # Layout
//!
//! - the statements, in one block below; [`CqlUserStore::new`] prepares each once.
//! - [`UserStore::create`]: claim the name, then one logged batch (see below).
//! - [`UserStore::update`] and [`UserStore::delete`]: one logged batch each (see below).
//! - the reads: full partition keys only, so every one is routed token-aware; `get_many` asks
//!   in `IN` lists of at most [`IN_CHUNK`] IDs and puts the answers back in the order asked. A
//!   user is its `users` row and its `user_tokens` row, read side by side.
//!
//! # Sign-up, and what a crash leaves
//!
//! 0. If the ID has a `users` row (live or deleted) with this sign-up's name and creation
//!    time, this is a retry of a sign-up that ran: write nothing, so a late replay cannot bring
//!    a deleted account back. Another account's row under the ID (an ID minted twice: two
//!    processes with one worker number) fails the sign-up with [`StoreError::Conflict`], logged
//!    as an error, before it claims the name; the caller's retry gets a fresh ID.
//! 1. Claim the lowercase name: `INSERT INTO usernames ... IF NOT EXISTS`, a lightweight
//!    transaction on the name's own partition, so only sign-ups for the same name contend.
//! 2. One logged batch: the `users` row, the `user_tokens` row and the `UserCreated` outbox
//!    row, so all land or none does. (A conditional write cannot share a multi-partition
//!    batch, hence two steps.)
//!
//! A crash (or timeout) between 1 and 2 leaves a claim with no `users` row: the name is taken
//! but nobody can log in with it. A retry of the same sign-up (same user ID) finds the claim its
//! own and runs the batch, which is idempotent; if the batch had in fact run, the retry writes
//! nothing and reports success. A sign-up under another ID takes an orphaned claim over (an
//! `UPDATE ... IF user_id = <orphan>`, so only one taker wins) once it is [`ORPHAN_AFTER`] old
//! and its owner has no live `users` row, so no name stays blocked forever.
//!
//! # Profile changes and deletion
//!
//! An update reads the row (is the user live?), then writes one logged batch: the changed
//! columns of `users` (the others bound unset, so they are neither written nor tombstoned), the
//! new generation in `user_tokens` when the password changes, and the outbox row.
//!
//! A deletion reads the row (live? whose name?), then writes one logged batch: `users` marked
//! `deleted = true` with its personal fields and password hash nulled (the row stays, with the
//! username and creation time, so the ID is never reused), the `user_tokens` row deleted, and
//! the outbox row. Then it frees the name with `DELETE FROM usernames ... IF user_id = <id>`, a
//! lightweight transaction, so it can't join the batch. A crash between the two leaves a
//! deleted user holding its name: a retry of the deletion finds the row deleted, frees the name
//! and answers false; failing that, a sign-up takes the claim over as an orphan once the claim
//! is [`ORPHAN_AFTER`] old (the owner has no live row).
//!
//! An update that races a deletion (the row was live when read, deleted when the batch lands)
//! could write a profile onto the tombstone: never readable, but personal data that should be
//! gone. So an update reads the row again after its batch and, if it is deleted by then, nulls
//! the personal fields and credentials once more.
//!
//! This store keeps no counts (they live with the services whose events move them), so the
//! count-ledger pattern of the other keyspaces has no use here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{try_join, try_join_all};
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, MaybeUnset};
use twtr_common::clock;
use twtr_common::cql::{CqlError, CqlOutbox, Keyspace, Lwt, LwtRow, Retries, logged_batch, lwt};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

use super::{Created, ProfileChanges, UserRecord, UserStore};

/// Step 1 of a sign-up: the lightweight transaction that makes names unique.
const CLAIM_USERNAME: &str =
    "INSERT INTO {ks}.usernames (username, user_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS";
/// Takes a claim over from a sign-up that never finished; `IF` so only one taker wins.
const TAKE_OVER_CLAIM: &str =
    "UPDATE {ks}.usernames SET user_id = ?, claimed_at = ? WHERE username = ? IF user_id = ?";
/// The last step of a deletion; `IF` so a name someone else has claimed since stays theirs.
const RELEASE_USERNAME: &str = "DELETE FROM {ks}.usernames WHERE username = ? IF user_id = ?";
/// Step 2 of a sign-up, in a logged batch with [`INSERT_TOKENS`] and the outbox row.
/// `deleted = false` is written so that the row always says which it is.
const INSERT_USER: &str = "INSERT INTO {ks}.users \
     (user_id, username, display_name, bio, password_hash, created_at, updated_at, deleted) \
     VALUES (?, ?, ?, ?, ?, ?, ?, false)";
const INSERT_TOKENS: &str =
    "INSERT INTO {ks}.user_tokens (user_id, token_generation) VALUES (?, ?)";
/// A profile change: a column bound unset keeps its value. Never writes `deleted`, so it
/// cannot bring a deleted account back.
const UPDATE_USER: &str = "UPDATE {ks}.users \
     SET display_name = ?, bio = ?, password_hash = ?, updated_at = ? WHERE user_id = ?";
const UPDATE_TOKENS: &str = "UPDATE {ks}.user_tokens SET token_generation = ? WHERE user_id = ?";
/// A deletion: the row stays, as a tombstone with the username (so a retry knows which name
/// to free) and the creation time. `updated_at` may be bound unset.
const TOMBSTONE_USER: &str = "UPDATE {ks}.users SET deleted = true, display_name = null, \
     bio = null, password_hash = null, updated_at = ? WHERE user_id = ?";
const DELETE_TOKENS: &str = "DELETE FROM {ks}.user_tokens WHERE user_id = ?";
const SELECT_CLAIM: &str = "SELECT user_id FROM {ks}.usernames WHERE username = ?";
/// The columns of [`UserRow`].
const SELECT_USER: &str = "SELECT user_id, username, display_name, bio, password_hash, \
     created_at, updated_at, deleted FROM {ks}.users WHERE user_id = ?";
const SELECT_USERS: &str = "SELECT user_id, username, display_name, bio, password_hash, \
     created_at, updated_at, deleted FROM {ks}.users WHERE user_id IN ?";
const SELECT_TOKENS: &str =
    "SELECT user_id, token_generation FROM {ks}.user_tokens WHERE user_id = ?";
const SELECT_TOKENS_IN: &str =
    "SELECT user_id, token_generation FROM {ks}.user_tokens WHERE user_id IN ?";

/// How old a claim without a `users` row must be before another sign-up may take it over: far
/// longer than a sign-up's two steps take, even with retries, so a live sign-up is never robbed.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(300);
/// The most IDs in one `IN` list: bigger lists make one coordinator wait on too many replicas.
pub const IN_CHUNK: usize = 100;
/// How many times a claim is tried when Paxos contention (or a lost reply) times it out. A
/// retry is safe: a claim that did land shows up as this sign-up's own.
const CLAIM_ATTEMPTS: u32 = 4;

/// A `users` row, as [`SELECT_USER`] reads it (columns matched by name).
#[derive(DeserializeRow)]
struct UserRow {
    user_id: i64,
    username: Option<String>,
    display_name: Option<String>,
    bio: Option<String>,
    password_hash: Option<String>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
    deleted: Option<bool>,
}

impl UserRow {
    fn is_deleted(&self) -> bool {
        self.deleted == Some(true)
    }
}

/// A `user_tokens` row: `(user_id, token_generation)`.
type TokensRow = (i64, Option<i64>);

/// Users in the `<prefix>_users` keyspace.
pub struct CqlUserStore {
    ks: Keyspace,
    claim_username: PreparedStatement,
    take_over_claim: PreparedStatement,
    release_username: PreparedStatement,
    select_claim: PreparedStatement,
    select_user: PreparedStatement,
    select_users: PreparedStatement,
    select_tokens: PreparedStatement,
    select_tokens_in: PreparedStatement,
    /// The logged batches, built once and bound per write. A sign-up: [`INSERT_USER`],
    /// [`INSERT_TOKENS`] and the outbox insert.
    create_batch: Batch,
    /// A profile change that keeps the password: [`UPDATE_USER`] and the outbox insert.
    update_batch: Batch,
    /// A profile change with a new password: [`UPDATE_USER`], [`UPDATE_TOKENS`] and the outbox
    /// insert.
    password_batch: Batch,
    /// A deletion: [`TOMBSTONE_USER`], [`DELETE_TOKENS`] and the outbox insert.
    delete_batch: Batch,
    /// [`TOMBSTONE_USER`] and [`DELETE_TOKENS`], with no event: clears what an update racing a
    /// deletion wrote onto the tombstone.
    scrub_batch: Batch,
    outbox: Arc<CqlOutbox>,
}

impl std::fmt::Debug for CqlUserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlUserStore")
            .field("keyspace", &self.ks.name())
            .finish_non_exhaustive()
    }
}

/// What a lightweight transaction on `usernames` saw.
struct ClaimSeen {
    applied: bool,
    /// When not applied: who holds the name (`None` if nobody does).
    owner: Option<u64>,
    claimed_at: Option<i64>,
}

impl ClaimSeen {
    const APPLIED: Self = Self {
        applied: true,
        owner: None,
        claimed_at: None,
    };
}

/// Where step 1 of a sign-up left the name.
enum Claim {
    /// This sign-up holds it now.
    Won,
    /// This sign-up's user ID held it already: an earlier attempt of the same sign-up.
    Ours,
    Taken,
}

impl CqlUserStore {
    /// Prepares every statement in `ks` (so a bad one fails the start, not a request) and the
    /// keyspace's outbox.
    pub async fn new(ks: Keyspace, ids: Arc<twtr_common::IdGenerator>) -> Result<Self, CqlError> {
        let outbox = Arc::new(CqlOutbox::new(ks.clone(), ids).await?);
        let insert_user = ks.prepare(INSERT_USER).await?;
        let insert_tokens = ks.prepare(INSERT_TOKENS).await?;
        let update_user = ks.prepare(UPDATE_USER).await?;
        let update_tokens = ks.prepare(UPDATE_TOKENS).await?;
        let tombstone_user = ks.prepare(TOMBSTONE_USER).await?;
        let delete_tokens = ks.prepare(DELETE_TOKENS).await?;
        let event = outbox.insert();
        Ok(Self {
            claim_username: ks.prepare(CLAIM_USERNAME).await?,
            take_over_claim: ks.prepare(TAKE_OVER_CLAIM).await?,
            release_username: ks.prepare(RELEASE_USERNAME).await?,
            select_claim: ks.prepare(SELECT_CLAIM).await?,
            select_user: ks.prepare(SELECT_USER).await?,
            select_users: ks.prepare(SELECT_USERS).await?,
            select_tokens: ks.prepare(SELECT_TOKENS).await?,
            select_tokens_in: ks.prepare(SELECT_TOKENS_IN).await?,
            create_batch: logged_batch([&insert_user, &insert_tokens, event]),
            update_batch: logged_batch([&update_user, event]),
            password_batch: logged_batch([&update_user, &update_tokens, event]),
            delete_batch: logged_batch([&tombstone_user, &delete_tokens, event]),
            scrub_batch: logged_batch([&tombstone_user, &delete_tokens]),
            outbox,
            ks,
        })
    }

    fn session(&self) -> &Session {
        self.ks.session()
    }

    /// Step 1 of a sign-up: claims `canonical` for `id`, or takes over a claim that a sign-up
    /// abandoned (see the module docs).
    async fn claim(&self, canonical: &str, id: u64) -> Result<Claim, StoreError> {
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
    async fn lwt(
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

    /// The record of `id` if it is a live user: its `users` and `user_tokens` rows, read side by
    /// side.
    async fn user(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        let (row, tokens) = try_join(self.user_row(id), self.tokens_row(id)).await?;
        match row {
            Some(row) => record(row, tokens.and_then(|(_, generation)| generation)),
            None => Ok(None),
        }
    }

    /// The `user_tokens` row of `id`, if it has one.
    async fn tokens_row(&self, id: u64) -> Result<Option<TokensRow>, StoreError> {
        Ok(self
            .session()
            .execute_unpaged(&self.select_tokens, (key(id),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<TokensRow>()?)
    }

    /// The `users` row of `id`, deleted or not.
    async fn user_row(&self, id: u64) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .session()
            .execute_unpaged(&self.select_user, (key(id),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<UserRow>()?)
    }

    /// The `users` rows among `ids` (at most [`IN_CHUNK`]), in no particular order.
    async fn user_rows(&self, ids: Vec<i64>) -> Result<Vec<UserRow>, StoreError> {
        let rows = self
            .session()
            .execute_unpaged(&self.select_users, (ids,))
            .await?
            .into_rows_result()?;
        let mut found = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<UserRow>()? {
            found.push(row?);
        }
        Ok(found)
    }

    /// The live users among `ids` (at most [`IN_CHUNK`]), in no particular order.
    async fn users(&self, ids: Vec<i64>) -> Result<Vec<UserRecord>, StoreError> {
        let tokens = async {
            let rows = self
                .session()
                .execute_unpaged(&self.select_tokens_in, (&ids,))
                .await?
                .into_rows_result()?;
            let mut generations = HashMap::with_capacity(rows.rows_num());
            for row in rows.rows::<TokensRow>()? {
                let (id, generation) = row?;
                generations.insert(id, generation);
            }
            Ok::<_, StoreError>(generations)
        };
        let (rows, generations) = try_join(self.user_rows(ids.clone()), tokens).await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let generation = generations.get(&row.user_id).copied().flatten();
            if let Some(user) = record(row, generation)? {
                found.push(user);
            }
        }
        Ok(found)
    }

    /// The batch of an update whose user was live a moment ago, then the check for a deletion
    /// that overtook it (see the module docs).
    async fn write_changes(
        &self,
        user_id: u64,
        changes: ProfileChanges,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let ProfileChanges {
            display_name,
            bio,
            password,
            updated_at_ms,
        } = changes;
        let (password_hash, generation) = password.unzip();
        let user = (
            MaybeUnset::from_option(display_name),
            MaybeUnset::from_option(bio),
            MaybeUnset::from_option(password_hash),
            CqlTimestamp(updated_at_ms),
            key(user_id),
        );
        let outbox_row = self.outbox.row(event);
        match generation {
            Some(generation) => {
                let tokens = (generation as i64, key(user_id));
                self.session()
                    .batch(&self.password_batch, (user, tokens, outbox_row))
                    .await?;
            }
            None => {
                self.session()
                    .batch(&self.update_batch, (user, outbox_row))
                    .await?;
            }
        }
        self.outbox.notify();
        if self
            .user_row(user_id)
            .await?
            .is_some_and(|row| row.is_deleted())
        {
            tracing::info!(
                user_id,
                "a profile update landed on a deleted account, clearing it again"
            );
            let tombstone = (MaybeUnset::<CqlTimestamp>::Unset, key(user_id));
            self.session()
                .batch(&self.scrub_batch, (tombstone, (key(user_id),)))
                .await?;
        }
        Ok(())
    }

    /// The last step of a deletion: frees `username` unless someone else holds it by now.
    async fn release_name(&self, username: &str, user_id: u64) -> Result<(), StoreError> {
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

#[async_trait]
impl UserStore for CqlUserStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.ks.ping().await?)
    }

    async fn create(&self, user: UserRecord, event: Envelope) -> Result<Created, StoreError> {
        if let Some(row) = self.user_row(user.id).await? {
            // This sign-up ran already (writing again would stage its event twice, or bring a
            // deleted account back): the row, deleted or not, keeps its name and creation time.
            if row.username.as_deref() == Some(user.username.as_str())
                && row.created_at == Some(CqlTimestamp(user.created_at_ms))
            {
                return Ok(Created::Created);
            }
            // Another account holds the ID: answering success would hand this sign-up an
            // account that is not its own.
            tracing::error!(
                user_id = user.id,
                "user id already holds another account: two processes mint ids with one \
                 worker number (check TWTR_WORKER_ID); the sign-up is refused"
            );
            return Err(StoreError::Conflict(format!(
                "user id {} is held by another account",
                user.id
            )));
        }
        let canonical = user.username.to_ascii_lowercase();
        match self.claim(&canonical, user.id).await? {
            Claim::Won => {}
            Claim::Ours => {
                // An earlier attempt of this sign-up claimed the name but stored nothing (or
                // is still storing it: the batch is idempotent).
                tracing::info!(
                    user_id = user.id,
                    "finishing a sign-up that claimed its name but stored nothing"
                );
            }
            Claim::Taken => return Ok(Created::UsernameTaken),
        }
        let row = (
            key(user.id),
            &user.username,
            &user.display_name,
            &user.bio,
            &user.password_hash,
            CqlTimestamp(user.created_at_ms),
            CqlTimestamp(user.updated_at_ms),
        );
        let tokens = (key(user.id), user.token_generation as i64);
        self.session()
            .batch(&self.create_batch, (row, tokens, self.outbox.row(&event)))
            .await?;
        self.outbox.notify();
        Ok(Created::Created)
    }

    async fn get(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        self.user(id).await
    }

    async fn get_by_username(&self, canonical: &str) -> Result<Option<UserRecord>, StoreError> {
        let claim = self
            .session()
            .execute_unpaged(&self.select_claim, (canonical,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?;
        match claim {
            // A claim whose sign-up is still running (or never finished) has no user yet.
            Some((Some(owner),)) => self.get(from_key(owner)).await,
            _ => Ok(None),
        }
    }

    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<UserRecord>, StoreError> {
        let mut keys: Vec<i64> = ids.iter().map(|id| key(*id)).collect();
        keys.sort_unstable();
        keys.dedup();
        let reads = keys
            .chunks(IN_CHUNK)
            .map(|chunk| self.users(chunk.to_vec()));
        let mut found = HashMap::with_capacity(keys.len());
        for users in try_join_all(reads).await? {
            for user in users {
                found.insert(user.id, user);
            }
        }
        // In the order asked, an ID asked twice answered twice, as the embedded store does.
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    async fn update(
        &self,
        user_id: u64,
        changes: ProfileChanges,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        match self.user_row(user_id).await? {
            Some(row) if !row.is_deleted() => {}
            _ => return Ok(false),
        }
        self.write_changes(user_id, changes, &event).await?;
        Ok(true)
    }

    async fn delete(
        &self,
        user_id: u64,
        deleted_at_ms: i64,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        let Some(row) = self.user_row(user_id).await? else {
            return Ok(false);
        };
        let live = !row.is_deleted();
        if live {
            let tombstone = (MaybeUnset::Set(CqlTimestamp(deleted_at_ms)), key(user_id));
            self.session()
                .batch(
                    &self.delete_batch,
                    (tombstone, (key(user_id),), self.outbox.row(&event)),
                )
                .await?;
            self.outbox.notify();
        }
        // Also when the row was deleted already: a deletion that stopped after its batch left
        // the name held, and this retry frees it.
        if let Some(username) = &row.username {
            self.release_name(username, user_id).await?;
        }
        Ok(live)
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        self.outbox.clone()
    }
}

/// IDs are `u64` here and `bigint` in CQL: stored bit for bit, so every ID round-trips.
fn key(id: u64) -> i64 {
    id as i64
}

fn from_key(key: i64) -> u64 {
    key as u64
}

/// A `users` row and its token generation (`None`: no `user_tokens` row) as a record: `None`
/// for a deleted account (the row stays, so that its ID is never reused).
fn record(row: UserRow, token_generation: Option<i64>) -> Result<Option<UserRecord>, StoreError> {
    if row.is_deleted() {
        return Ok(None);
    }
    let UserRow {
        user_id,
        username,
        display_name,
        bio,
        password_hash,
        created_at,
        updated_at,
        deleted: _,
    } = row;
    let (Some(username), Some(password_hash), Some(created_at)) =
        (username, password_hash, created_at)
    else {
        return Err(StoreError::Corrupt(format!(
            "users row {} lacks its username, password hash or creation time",
            from_key(user_id)
        )));
    };
    Ok(Some(UserRecord {
        id: from_key(user_id),
        username,
        display_name: display_name.unwrap_or_default(),
        bio: bio.unwrap_or_default(),
        password_hash,
        created_at_ms: created_at.0,
        token_generation: token_generation.unwrap_or_default() as u64,
        updated_at_ms: updated_at.unwrap_or(created_at).0,
    }))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use twtr_common::cql::testing::keyspace_for;

    use super::*;
    use crate::store::conformance::{event, event_of, fresh_user, staged, unique_id, user};

    async fn open_store() -> Option<CqlUserStore> {
        let (session, config) = keyspace_for(&super::super::SCHEMA).await?;
        let ks = Keyspace::new(session, &config, "users").unwrap();
        Some(
            CqlUserStore::new(ks, Arc::new(twtr_common::IdGenerator::new(1).unwrap()))
                .await
                .unwrap(),
        )
    }

    async fn open_cql() -> Option<(Arc<dyn UserStore>, ())> {
        Some((Arc::new(open_store().await?), ()))
    }

    crate::user_store_conformance!(optional open_cql);

    /// What a sign-up that died after step 1 leaves behind: a claim `claimed_ago` old.
    async fn abandoned_claim(
        store: &CqlUserStore,
        canonical: &str,
        id: u64,
        claimed_ago: Duration,
    ) {
        let at = CqlTimestamp(clock::now_millis() - claimed_ago.as_millis() as i64);
        let result = store
            .session()
            .execute_unpaged(&store.claim_username, (canonical, key(id), at))
            .await;
        assert!(lwt(result).unwrap().applied().unwrap());
    }

    /// An ID minted twice (two processes with one worker number) is never a silent success:
    /// the second sign-up is refused as a conflict its caller retries, and writes nothing.
    #[tokio::test]
    async fn a_sign_up_under_an_id_held_by_another_account_is_a_conflict() {
        let Some(store) = open_store().await else {
            return;
        };
        let ada = fresh_user("Ada");
        let created = event(&ada);
        assert_eq!(
            store.create(ada.clone(), created.clone()).await.unwrap(),
            Created::Created
        );
        let impostor = UserRecord {
            id: ada.id,
            ..fresh_user("Bob")
        };
        let refused = event(&impostor);
        let err = store
            .create(impostor.clone(), refused.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert!(err.is_transient(), "a retry with a fresh ID gets past it");
        assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
        let canonical = impostor.username.to_ascii_lowercase();
        assert_eq!(store.get_by_username(&canonical).await.unwrap(), None);
        // Its name was not claimed: the retry, under a fresh ID, signs up.
        let retried = UserRecord {
            id: unique_id(),
            ..impostor
        };
        assert_eq!(
            store
                .create(retried.clone(), event(&retried))
                .await
                .unwrap(),
            Created::Created
        );
        // The same sign-up again is still a retry, not a conflict.
        assert_eq!(
            store.create(ada.clone(), event(&ada)).await.unwrap(),
            Created::Created
        );
        let staged = staged(&store).await;
        assert!(staged.contains(&created.event_id) && !staged.contains(&refused.event_id));
    }

    #[tokio::test]
    async fn a_retry_finishes_a_sign_up_that_stopped_after_its_claim() {
        let Some(store) = open_store().await else {
            return;
        };
        let ada = fresh_user("Ada");
        let canonical = ada.username.to_ascii_lowercase();
        abandoned_claim(&store, &canonical, ada.id, Duration::ZERO).await;
        assert_eq!(store.get_by_username(&canonical).await.unwrap(), None);

        let created = event(&ada);
        assert_eq!(
            store.create(ada.clone(), created.clone()).await.unwrap(),
            Created::Created
        );
        assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
        assert_eq!(
            store.get_by_username(&canonical).await.unwrap(),
            Some(ada.clone())
        );
        // Once finished, the same sign-up again writes nothing more.
        let again = event(&ada);
        assert_eq!(
            store.create(ada.clone(), again.clone()).await.unwrap(),
            Created::Created
        );
        let staged = staged(&store).await;
        assert!(
            staged.contains(&created.event_id),
            "the retry staged the event"
        );
        assert!(
            !staged.contains(&again.event_id),
            "a finished sign-up is not written twice"
        );
    }

    #[tokio::test]
    async fn an_abandoned_claim_is_taken_over_once_it_is_old() {
        let Some(store) = open_store().await else {
            return;
        };
        let fresh = fresh_user("fresh");
        let stale = fresh_user("stale");
        abandoned_claim(
            &store,
            &fresh.username.to_ascii_lowercase(),
            unique_id(),
            Duration::ZERO,
        )
        .await;
        abandoned_claim(
            &store,
            &stale.username.to_ascii_lowercase(),
            unique_id(),
            ORPHAN_AFTER + Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            store.create(fresh.clone(), event(&fresh)).await.unwrap(),
            Created::UsernameTaken,
            "a recent claim may still be finishing"
        );
        let created = event(&stale);
        assert_eq!(
            store.create(stale.clone(), created.clone()).await.unwrap(),
            Created::Created
        );
        assert_eq!(
            store
                .get_by_username(&stale.username.to_ascii_lowercase())
                .await
                .unwrap(),
            Some(stale.clone())
        );
        // A live owner's claim is never taken over, however old.
        let age = store
            .ks
            .prepare("UPDATE {ks}.usernames SET claimed_at = ? WHERE username = ?")
            .await
            .unwrap();
        let long_ago = CqlTimestamp(clock::now_millis() - 2 * ORPHAN_AFTER.as_millis() as i64);
        store
            .session()
            .execute_unpaged(&age, (long_ago, stale.username.to_ascii_lowercase()))
            .await
            .unwrap();
        let rival = user(unique_id(), &stale.username.to_ascii_uppercase());
        assert_eq!(
            store.create(rival.clone(), event(&rival)).await.unwrap(),
            Created::UsernameTaken
        );
        assert!(staged(&store).await.contains(&created.event_id));
    }

    #[tokio::test]
    async fn a_retry_frees_the_name_of_a_deletion_that_stopped_after_its_batch() {
        let Some(store) = open_store().await else {
            return;
        };
        let ada = fresh_user("Ada");
        store.create(ada.clone(), event(&ada)).await.unwrap();
        // What a deletion that died before its last step leaves: the batch, not the release.
        let deleted = event_of(ada.id, "users.user_deleted");
        let tombstone = (
            MaybeUnset::Set(CqlTimestamp(clock::now_millis())),
            key(ada.id),
        );
        store
            .session()
            .batch(
                &store.delete_batch,
                (tombstone, (key(ada.id),), store.outbox.row(&deleted)),
            )
            .await
            .unwrap();
        assert_eq!(store.get(ada.id).await.unwrap(), None);
        let heir = user(unique_id(), &ada.username.to_ascii_uppercase());
        assert_eq!(
            store.create(heir.clone(), event(&heir)).await.unwrap(),
            Created::UsernameTaken,
            "the name is still held"
        );

        let retried = event_of(ada.id, "users.user_deleted");
        assert!(
            !store
                .delete(ada.id, clock::now_millis(), retried.clone())
                .await
                .unwrap()
        );
        assert_eq!(
            store.create(heir.clone(), event(&heir)).await.unwrap(),
            Created::Created,
            "the retry freed the name"
        );
        let staged = staged(&store).await;
        assert_eq!(staged.count(deleted.event_id), 1);
        assert!(
            !staged.contains(&retried.event_id),
            "the retry stages nothing"
        );
    }

    #[tokio::test]
    async fn an_update_overtaken_by_a_deletion_leaves_no_profile_behind() {
        let Some(store) = open_store().await else {
            return;
        };
        let ada = fresh_user("Ada");
        store.create(ada.clone(), event(&ada)).await.unwrap();
        // The update read a live row; the deletion lands before the update's batch.
        let deleted = event_of(ada.id, "users.user_deleted");
        assert!(
            store
                .delete(ada.id, clock::now_millis(), deleted)
                .await
                .unwrap()
        );
        let changes = ProfileChanges {
            display_name: Some("late".to_owned()),
            bio: Some("late bio".to_owned()),
            password: Some(("$argon2id$late".to_owned(), 5)),
            updated_at_ms: clock::now_millis(),
        };
        let late = event_of(ada.id, "users.user_updated");
        store.write_changes(ada.id, changes, &late).await.unwrap();

        let row = store
            .user_row(ada.id)
            .await
            .unwrap()
            .expect("the tombstone");
        assert!(row.is_deleted());
        assert_eq!(
            (row.display_name, row.bio, row.password_hash),
            (None, None, None),
            "no personal data on the tombstone"
        );
        assert_eq!(row.username.as_deref(), Some(ada.username.as_str()));
        assert_eq!(store.tokens_row(ada.id).await.unwrap(), None);
        assert_eq!(store.get(ada.id).await.unwrap(), None);
    }
}
