//! Deleted accounts on CQL: [`DeletedAccounts`], the ledger of accounts the users service
//! deleted and the queue of those whose purge is not done yet, never read through its own
//! deletes. The tweets and followers services each keep one in their keyspace
//! (`cql/tweets/002_authors_and_post_keys.cql` and `003_settled_changes.cql`,
//! `cql/followers/002_gone_users.cql` and `003_purges_by_time.cql`).
//!
//! # Shape
//!
//! - the ledger (`gone_authors`, `gone_users`): a row per deleted account, which a write that
//!   would add to an account reads first ([`DeletedAccounts::is_gone`]). [`DeletedAccounts::forget`]
//!   writes it and queues the account's purge in one logged batch.
//! - the queue table (`author_purges_by_hour`, `user_purges_by_hour`): one partition per hour of
//!   deletion (`bucket` = Unix ms / 3,600,000), a row per account. A finished purge is marked by
//!   overwriting `done = true`, never by a delete, and every row expires by the table's TTL
//!   ([`QUEUE_TTL`]), far longer than any purge takes.
//! - `purge_cursor`, one row: the first hour that may still hold an unfinished purge. A pass
//!   ([`DeletedAccounts::pending`]) reads the hours from the cursor to now, at most a day's
//!   partitions per query, and moves the cursor up to the first hour with a pending row. So a
//!   pass reads a bounded, recent range: live rows only, never what the TTL expired behind the
//!   cursor. The cursor stays [`CURSOR_LAG`] behind now, so a deletion written late (a slow
//!   writer, a node whose clock is behind) still lands in an hour the passes read.
//! - the table this replaced (`author_purges` / `user_purges`: one partition `'pending'` whose
//!   rows were deleted when done, so every pass reread the tombstones of the last ten days):
//!   the passes drain it, handing out its rows first, until it has been empty for
//!   [`LEGACY_GRACE`] (replicas of the previous version may still write to it while a rolling
//!   upgrade runs); then they stop reading it.
//!
//! Several replicas may run passes at once: the cursor is a hint (a stale write only moves it
//! back, which costs a reread), and a purge is idempotent, so two replicas doing one is
//! harmless.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::{CqlError, Keyspace, logged_batch};
use crate::clock;
use crate::store::{PendingPurge, StoreError};

/// How long a queue row lives (the queue table's `default_time_to_live`).
pub const QUEUE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far behind now the cursor always stays.
pub const CURSOR_LAG: Duration = Duration::from_secs(3600);
/// How long the passes keep reading the old table after they first found it empty.
pub const LEGACY_GRACE: Duration = Duration::from_secs(24 * 3600);
/// A queue partition's span.
const BUCKET_MS: i64 = 3_600_000;
/// How many hours one read of the queue asks for (an `IN` list of partitions).
const BUCKETS_PER_READ: i64 = 24;
/// The slot of an entry read from the old table.
const LEGACY_SLOT: i64 = -1;

/// The names of one service's deleted-account tables.
#[derive(Debug, Clone, Copy)]
pub struct DeletedAccountTables {
    /// The ledger: `<id_column> bigint PRIMARY KEY, gone_at timestamp`.
    pub gone: &'static str,
    /// The queue, partitioned by hour.
    pub queue: &'static str,
    /// The account column of all three tables.
    pub id_column: &'static str,
    /// The old one-partition table that the passes drain.
    pub legacy: &'static str,
}

/// One keyspace's deleted accounts: its statements (see the [module docs](self)).
pub struct DeletedAccounts {
    ks: Keyspace,
    select_gone: PreparedStatement,
    /// Logged: the ledger row and the queue row (which leaves `done` alone, so writing it again
    /// never makes a finished purge pending).
    forget: Batch,
    read_buckets: PreparedStatement,
    mark_done: PreparedStatement,
    read_cursor: PreparedStatement,
    move_cursor: PreparedStatement,
    legacy_emptied: PreparedStatement,
    read_legacy: PreparedStatement,
    delete_legacy: PreparedStatement,
}

impl std::fmt::Debug for DeletedAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeletedAccounts")
            .field("keyspace", &self.ks.name())
            .finish_non_exhaustive()
    }
}

impl DeletedAccounts {
    /// Prepares the statements on `tables` in `ks`.
    pub async fn new(ks: &Keyspace, tables: DeletedAccountTables) -> Result<Self, CqlError> {
        let DeletedAccountTables {
            gone,
            queue,
            id_column: id,
            legacy,
        } = tables;
        let insert_gone = ks
            .prepare(&format!(
                "INSERT INTO {{ks}}.{gone} ({id}, gone_at) VALUES (?, ?)"
            ))
            .await?;
        let enqueue = ks
            .prepare(&format!(
                "INSERT INTO {{ks}}.{queue} (bucket, {id}) VALUES (?, ?)"
            ))
            .await?;
        Ok(Self {
            select_gone: ks
                .prepare(&format!("SELECT {id} FROM {{ks}}.{gone} WHERE {id} = ?"))
                .await?,
            forget: logged_batch([&insert_gone, &enqueue]),
            read_buckets: ks
                .prepare(&format!(
                    "SELECT bucket, {id}, done FROM {{ks}}.{queue} WHERE bucket IN ?"
                ))
                .await?,
            mark_done: ks
                .prepare(&format!(
                    "UPDATE {{ks}}.{queue} SET done = true WHERE bucket = ? AND {id} = ?"
                ))
                .await?,
            read_cursor: ks
                .prepare(
                    "SELECT bucket, legacy_empty_since FROM {ks}.purge_cursor WHERE scope = 'all'",
                )
                .await?,
            move_cursor: ks
                .prepare("UPDATE {ks}.purge_cursor SET bucket = ? WHERE scope = 'all'")
                .await?,
            legacy_emptied: ks
                .prepare("UPDATE {ks}.purge_cursor SET legacy_empty_since = ? WHERE scope = 'all'")
                .await?,
            read_legacy: ks
                .prepare(&format!(
                    "SELECT {id} FROM {{ks}}.{legacy} WHERE scope = 'pending' LIMIT ?"
                ))
                .await?,
            delete_legacy: ks
                .prepare(&format!(
                    "DELETE FROM {{ks}}.{legacy} WHERE scope = 'pending' AND {id} = ?"
                ))
                .await?,
            ks: ks.clone(),
        })
    }

    /// Records that `user`'s account is deleted and queues its purge, unless it was recorded
    /// already. Idempotent.
    pub async fn forget(&self, user: u64) -> Result<(), StoreError> {
        if self.is_gone(user).await? {
            return Ok(());
        }
        let now = clock::now_millis();
        let key = user as i64;
        let values = ((key, CqlTimestamp(now)), (bucket_of(now), key));
        self.ks.session().batch(&self.forget, values).await?;
        Ok(())
    }

    /// Whether `user`'s account is deleted.
    pub async fn is_gone(&self, user: u64) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_gone, (user as i64,))
            .await?
            .into_rows_result()?;
        Ok(rows.rows_num() > 0)
    }

    /// Up to `max` purges not done yet: the old table's first, then the queue's, oldest hour
    /// first. Moves the cursor forward when it can.
    pub async fn pending(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        let now = clock::now_millis();
        let session = self.ks.session();
        let (cursor, legacy_empty_since) = session
            .execute_unpaged(&self.read_cursor, ())
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>, Option<CqlTimestamp>)>()?
            .unwrap_or_default();
        let mut found = Vec::new();
        let grace = LEGACY_GRACE.as_millis() as i64;
        if legacy_empty_since.is_none_or(|since| now - since.0 < grace) {
            let take = i32::try_from(max).unwrap_or(i32::MAX);
            let rows = session
                .execute_unpaged(&self.read_legacy, (take,))
                .await?
                .into_rows_result()?;
            for row in rows.rows::<(i64,)>()? {
                found.push(PendingPurge {
                    user: row?.0 as u64,
                    slot: LEGACY_SLOT,
                });
            }
            if found.is_empty() && legacy_empty_since.is_none() {
                session
                    .execute_unpaged(&self.legacy_emptied, (CqlTimestamp(now),))
                    .await?;
            }
        }
        let newest = bucket_of(now);
        // No cursor yet: no pass has run since the queue was made, so read all it may hold.
        let start = cursor.unwrap_or_else(|| bucket_of(now - QUEUE_TTL.as_millis() as i64));
        let mut first_unfinished = None;
        let mut next = start;
        while next <= newest && found.len() < max {
            let last = (next + BUCKETS_PER_READ - 1).min(newest);
            let buckets: Vec<i64> = (next..=last).collect();
            let mut pending: Vec<(i64, i64)> = session
                .execute_iter(self.read_buckets.clone(), (buckets,))
                .await?
                .rows_stream::<(i64, i64, Option<bool>)>()
                .map_err(|err| StoreError::Corrupt(err.to_string()))?
                .map_err(StoreError::backend)
                .try_filter_map(|(bucket, user, done)| async move {
                    Ok((done != Some(true)).then_some((bucket, user)))
                })
                .try_collect()
                .await?;
            // An `IN` read returns partitions in token order: put them back in time order.
            pending.sort_unstable();
            if let Some(&(bucket, _)) = pending.first() {
                first_unfinished.get_or_insert(bucket);
            }
            for (bucket, user) in pending.into_iter().take(max - found.len()) {
                found.push(PendingPurge {
                    user: user as u64,
                    slot: bucket,
                });
            }
            next = last + 1;
        }
        // Everything before `first_unfinished` (or before `next`, where the read stopped) is
        // done; but the cursor never passes the hour `CURSOR_LAG` ago.
        let lagging = bucket_of(now - CURSOR_LAG.as_millis() as i64);
        let moved = first_unfinished.unwrap_or(next).min(lagging);
        if cursor.is_none_or(|cursor| moved > cursor) {
            session.execute_unpaged(&self.move_cursor, (moved,)).await?;
        }
        Ok(found)
    }

    /// Marks `purge` (one of [`DeletedAccounts::pending`]'s entries) done.
    pub async fn done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        let session = self.ks.session();
        let user = purge.user as i64;
        if purge.slot == LEGACY_SLOT {
            session
                .execute_unpaged(&self.delete_legacy, (user,))
                .await?;
        } else {
            session
                .execute_unpaged(&self.mark_done, (purge.slot, user))
                .await?;
        }
        Ok(())
    }
}

/// The queue partition of a moment (Unix ms).
fn bucket_of(millis: i64) -> i64 {
    millis.div_euclid(BUCKET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_files_use_the_queue_ttl() {
        let ttl = format!("default_time_to_live = {}", QUEUE_TTL.as_secs());
        for (file, cql) in [
            (
                "tweets/003",
                include_str!("../../../cql/tweets/003_settled_changes.cql"),
            ),
            (
                "followers/003",
                include_str!("../../../cql/followers/003_purges_by_time.cql"),
            ),
        ] {
            assert!(cql.contains(&ttl), "{file} expires its queue after {ttl}");
        }
        assert!(CURSOR_LAG < QUEUE_TTL && LEGACY_GRACE < QUEUE_TTL);
    }

    #[test]
    fn buckets_are_hours() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(3_599_999), 0);
        assert_eq!(bucket_of(3_600_000), 1);
    }
}
