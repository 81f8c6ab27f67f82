//! [`CqlUserStore`]: users on ScyllaDB / Cassandra, in the tables of `cql/users/001_init.cql`
//! (`users` by ID, `usernames` as the case-insensitive uniqueness claim, and the outbox),
//! `002_token_generation.cql` (`user_tokens`: each account's token generation) and
//! `004_people_search.cql` (the people search lookups).
//!
//! # Layout
//!
//! - `statements`: every statement; [`CqlUserStore::new`] prepares each once.
//! - `names`: the `usernames` claims (take, take over, release) and what their lightweight
//!   transactions saw.
//! - [`UserStore::create`]: claim the name, then one logged batch (see below).
//! - [`UserStore::update`] and [`UserStore::delete`]: one logged batch each (see below).
//! - `reads`: full partition keys only, so every one is routed token-aware; `get_many` asks
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
//! People search (`cql/users/004_people_search.cql`): a sign-up's batch also writes its row of
//! `username_prefixes` and a `name_words` row per display-name word; an update with a new
//! display name deletes the old words' rows and writes the new ones in its batch (the rows to
//! delete come from the account it read first); a deletion's batch deletes them all. The reads
//! check each candidate against its account, so a row left by two renames racing each other
//! finds nobody.
//!
//! This store keeps no counts (they live with the services whose events move them), so the
//! count-ledger pattern of the other keyspaces has no use here.

mod names;
mod reads;
mod statements;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, MaybeUnset};
use twtr_common::cql::{CqlOutbox, Keyspace, logged_batch};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_proto::events::v1::Envelope;

use self::names::Claim;
use self::reads::UserRow;
use super::{Created, ProfileChanges, Updated, UserRecord, UserStore};
use crate::search::{MIN_PREFIX_CHARS, name_words};

/// How old a claim without a `users` row must be before another sign-up may take it over: far
/// longer than a sign-up's two steps take, even with retries, so a live sign-up is never robbed.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(300);
/// The most IDs in one `IN` list: bigger lists make one coordinator wait on too many replicas.
pub const IN_CHUNK: usize = 100;
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
    insert_user: PreparedStatement,
    insert_tokens: PreparedStatement,
    update_user: PreparedStatement,
    update_tokens: PreparedStatement,
    tombstone_user: PreparedStatement,
    delete_tokens: PreparedStatement,
    insert_username_prefix: PreparedStatement,
    delete_username_prefix: PreparedStatement,
    select_username_prefix: PreparedStatement,
    insert_name_word: PreparedStatement,
    delete_name_word: PreparedStatement,
    select_name_word: PreparedStatement,
    outbox: Arc<CqlOutbox>,
}

impl std::fmt::Debug for CqlUserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlUserStore")
            .field("keyspace", &self.ks.name())
            .finish_non_exhaustive()
    }
}

impl CqlUserStore {
    fn session(&self) -> &Session {
        self.ks.session()
    }

    /// The batch of an update of `user`, live a moment ago, then the check for a deletion that
    /// overtook it (see the module docs).
    async fn write_changes(
        &self,
        user: &UserRecord,
        changes: ProfileChanges,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let ProfileChanges {
            display_name,
            bio,
            password,
            updated_at_ms,
            acting_generation: _,
        } = changes;
        let id = key(user.id);
        // A new display name moves the account from the old name's words to the new one's.
        let words = display_name.as_deref().map(|name| {
            let (before, after) = (name_words(&user.display_name), name_words(name));
            let gone: Vec<String> = before.into_iter().filter(|w| !after.contains(w)).collect();
            (after, gone)
        });
        let (password_hash, generation) = password.unzip();
        let mut batch = BatchRows::default();
        batch.push(
            &self.update_user,
            (
                MaybeUnset::from_option(display_name),
                MaybeUnset::from_option(bio),
                MaybeUnset::from_option(password_hash),
                CqlTimestamp(updated_at_ms),
                id,
            ),
        );
        if let Some(generation) = generation {
            batch.push(&self.update_tokens, (generation as i64, id));
        }
        if let Some((after, gone)) = &words {
            self.name_word_rows(&mut batch, id, after, gone);
        }
        batch.push(self.outbox.insert(), self.outbox.row(event));
        batch.run(self.session()).await?;
        self.outbox.notify();
        if self
            .user_row(user.id)
            .await?
            .is_some_and(|row| row.is_deleted())
        {
            tracing::info!(
                user_id = user.id,
                "a profile update landed on a deleted account, clearing it again"
            );
            let mut scrub = BatchRows::default();
            scrub.push(
                &self.tombstone_user,
                (MaybeUnset::<CqlTimestamp>::Unset, id),
            );
            scrub.push(&self.delete_tokens, (id,));
            if let Some((after, _)) = &words {
                self.name_word_rows(&mut scrub, id, &[], after);
            }
            scrub.run(self.session()).await?;
        }
        Ok(())
    }

    /// The logged batch of the deletion of the live account `row` (see the module docs),
    /// its search rows included.
    async fn write_deletion(
        &self,
        row: &UserRow,
        deleted_at_ms: i64,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let id = row.user_id;
        let mut batch = BatchRows::default();
        batch.push(
            &self.tombstone_user,
            (MaybeUnset::Set(CqlTimestamp(deleted_at_ms)), id),
        );
        batch.push(&self.delete_tokens, (id,));
        if let Some(username) = &row.username {
            let canonical = username.to_ascii_lowercase();
            batch.push(
                &self.delete_username_prefix,
                (prefix_partition(&canonical), canonical, id),
            );
        }
        let words = name_words(row.display_name.as_deref().unwrap_or_default());
        self.name_word_rows(&mut batch, id, &[], &words);
        batch.push(self.outbox.insert(), self.outbox.row(event));
        batch.run(self.session()).await?;
        self.outbox.notify();
        Ok(())
    }

    /// Adds to `batch` the rows that put `id` under each of `words` and take it from `gone`.
    fn name_word_rows<'a>(
        &'a self,
        batch: &mut BatchRows<'a>,
        id: i64,
        words: &[String],
        gone: &[String],
    ) {
        for word in gone {
            batch.push(&self.delete_name_word, (word.clone(), id));
        }
        for word in words {
            batch.push(&self.insert_name_word, (word.clone(), id));
        }
    }
}

/// The partition of `canonical` (a lowercase username) in `username_prefixes`: its first two
/// characters (every username has at least three).
fn prefix_partition(canonical: &str) -> String {
    canonical.chars().take(MIN_PREFIX_CHARS).collect()
}

/// A logged batch being put together whose statements depend on the write (how many words a
/// display name has): statements and their values, in step.
#[derive(Default)]
struct BatchRows<'a> {
    statements: Vec<&'a PreparedStatement>,
    values: Vec<Box<dyn SerializeRow + Send + Sync + 'a>>,
}

impl<'a> BatchRows<'a> {
    fn push(
        &mut self,
        statement: &'a PreparedStatement,
        values: impl SerializeRow + Send + Sync + 'a,
    ) {
        self.statements.push(statement);
        self.values.push(Box::new(values));
    }

    async fn run(self, session: &Session) -> Result<(), StoreError> {
        session
            .batch(&logged_batch(self.statements), self.values)
            .await?;
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
        let id = key(user.id);
        let mut batch = BatchRows::default();
        batch.push(
            &self.insert_user,
            (
                id,
                &user.username,
                &user.display_name,
                &user.bio,
                &user.password_hash,
                CqlTimestamp(user.created_at_ms),
                CqlTimestamp(user.updated_at_ms),
            ),
        );
        batch.push(&self.insert_tokens, (id, user.token_generation as i64));
        batch.push(
            &self.insert_username_prefix,
            (prefix_partition(&canonical), canonical.clone(), id),
        );
        let words = name_words(&user.display_name);
        self.name_word_rows(&mut batch, id, &words, &[]);
        batch.push(self.outbox.insert(), self.outbox.row(&event));
        batch.run(self.session()).await?;
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
    ) -> Result<Updated, StoreError> {
        let Some(user) = self.get(user_id).await? else {
            return Ok(Updated::NoSuchUser);
        };
        if user.token_generation > changes.acting_generation {
            return Ok(Updated::Revoked);
        }
        self.write_changes(&user, changes, &event).await?;
        Ok(Updated::Updated)
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
            self.write_deletion(&row, deleted_at_ms, &event).await?;
        }
        // Also when the row was deleted already: a deletion that stopped after its batch left
        // the name held, and this retry frees it.
        if let Some(username) = &row.username {
            self.release_name(username, user_id).await?;
        }
        Ok(live)
    }

    async fn find_by_username_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let values = (
            prefix_partition(prefix),
            prefix,
            format!("{prefix}~"),
            limit_value(limit),
        );
        let ids = self.user_ids(&self.select_username_prefix, values).await?;
        // Checked against the account itself, as the display-name lookup is.
        let mut found = self.get_many(ids).await?;
        found.retain(|user| user.username.to_ascii_lowercase().starts_with(prefix));
        Ok(found)
    }

    async fn find_by_name_word(
        &self,
        word: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let ids = self
            .user_ids(&self.select_name_word, (word, limit_value(limit)))
            .await?;
        // Two changes of one display name racing each other can leave a row of a word the
        // name no longer has (each removes the words it read): such a row is skipped here.
        let mut found = self.get_many(ids).await?;
        found.retain(|user| name_words(&user.display_name).iter().any(|w| w == word));
        Ok(found)
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        self.outbox.clone()
    }
}

/// A read's `LIMIT`, an `int` in CQL.
fn limit_value(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

/// IDs are `u64` here and `bigint` in CQL: stored bit for bit, so every ID round-trips.
fn key(id: u64) -> i64 {
    id as i64
}

fn from_key(key: i64) -> u64 {
    key as u64
}
