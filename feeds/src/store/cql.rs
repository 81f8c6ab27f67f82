//! [`CqlFeedStore`]: feeds on ScyllaDB / Cassandra, in the `feeds`, `recent_tweets` and
//! `author_followers` tables of `cql/feeds/001_init.cql`.
//!
//! The feeds store consumes events and publishes none, and nothing in it needs a check-and-set:
//! every write is an upsert or a delete keyed by IDs, so repeating it is harmless, and no
//! lightweight transaction, outbox row or count is involved.
//!
//! # Write paths, and what a crash between their steps leaves
//!
//! - A feed insert ([`FeedStore::insert_entries`], and per user [`FeedStore::fan_out`]): (1) upsert
//!   the entries, one single-partition batch per 100; (2) trim: read the newest `feed_len + 1`
//!   tweet IDs and, if there are that many, range-delete `tweet_id <=` the last of them (one range
//!   tombstone). A crash after (1) leaves the feed over its cap; the redelivered event repeats (1)
//!   (a no-op) and runs (2), and so does any later insert into that feed.
//! - [`FeedStore::record_tweet`]: the same two steps on the author's `recent_tweets` partition,
//!   with `recent_per_author`.
//! - [`FeedStore::add_follower`] / [`FeedStore::remove_follower`]: one upsert of `followed` (true
//!   or false; the false row is the tombstone). A single statement: nothing to finish.
//! - [`FeedStore::remove_author`]: (1) read the user's feed partition (small: the cap bounds it);
//!   (2) delete the author's rows, one single-partition batch per 100. A crash before (2) is
//!   finished by the retry, which reads what is left and deletes it.
//!
//! Every read names its whole partition key, so the driver sends it straight to a replica.

use async_trait::async_trait;
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use twtr_common::cql::{CqlError, Keyspace};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{FeedEntry, FeedLimits, FeedStore};

const INSERT_ENTRY: &str =
    "INSERT INTO {ks}.feeds (user_id, tweet_id, author_id, retweeted_by) VALUES (?, ?, ?, ?)";
const DELETE_ENTRY: &str = "DELETE FROM {ks}.feeds WHERE user_id = ? AND tweet_id = ?";
/// The newest tweet IDs of a feed, for trimming it.
const NEWEST_IN_FEED: &str = "SELECT tweet_id FROM {ks}.feeds WHERE user_id = ? LIMIT ?";
/// Everything at or below the oldest tweet past the cap, as one range tombstone.
const TRIM_FEED: &str = "DELETE FROM {ks}.feeds WHERE user_id = ? AND tweet_id <= ?";
/// Who wrote each entry of a feed, for removing one author's entries.
const FEED_AUTHORS: &str = "SELECT tweet_id, author_id FROM {ks}.feeds WHERE user_id = ?";

// Feed pages, one statement per combination of bounds. They mirror `embedded::scan_page`: a
// backward page reads newest first below `before`, a forward (polling) page reads oldest first
// above `since`; both fetch `limit + 1` rows, so `Page::from_scan` can tell whether more exist.
const PAGE_FIRST: &str =
    "SELECT tweet_id, author_id, retweeted_by FROM {ks}.feeds WHERE user_id = ? LIMIT ?";
const PAGE_BEFORE: &str = "SELECT tweet_id, author_id, retweeted_by FROM {ks}.feeds \
     WHERE user_id = ? AND tweet_id < ? LIMIT ?";
const PAGE_SINCE: &str = "SELECT tweet_id, author_id, retweeted_by FROM {ks}.feeds \
     WHERE user_id = ? AND tweet_id > ? ORDER BY tweet_id ASC LIMIT ?";
const PAGE_BETWEEN: &str = "SELECT tweet_id, author_id, retweeted_by FROM {ks}.feeds \
     WHERE user_id = ? AND tweet_id > ? AND tweet_id < ? ORDER BY tweet_id ASC LIMIT ?";

const INSERT_RECENT: &str = "INSERT INTO {ks}.recent_tweets (author_id, tweet_id) VALUES (?, ?)";
/// An author's newest tweets: read back (`LIMIT recent_per_author`) and for trimming (`+ 1`).
const NEWEST_RECENT: &str = "SELECT tweet_id FROM {ks}.recent_tweets WHERE author_id = ? LIMIT ?";
const TRIM_RECENT: &str = "DELETE FROM {ks}.recent_tweets WHERE author_id = ? AND tweet_id <= ?";

/// Follow and unfollow alike: unfollowing writes `followed = false` instead of deleting, so the
/// row stays as the edge's tombstone (see the schema file).
const SET_FOLLOWED: &str =
    "INSERT INTO {ks}.author_followers (author_id, follower_id, followed) VALUES (?, ?, ?)";
const FOLLOWERS: &str =
    "SELECT follower_id, followed FROM {ks}.author_followers WHERE author_id = ?";

/// Statements per batch: keeps a batch well under the size at which the cluster warns.
const BATCH_ROWS: usize = 100;
/// Feeds written at once by one fan-out: enough to hide round trips, few enough not to flood
/// the cluster (or the driver's connection pool) when an author has many followers.
const FAN_OUT_CONCURRENCY: usize = 64;

/// Feeds on a CQL cluster.
pub struct CqlFeedStore {
    ks: Keyspace,
    limits: FeedLimits,
    insert_entry: PreparedStatement,
    delete_entry: PreparedStatement,
    newest_in_feed: PreparedStatement,
    trim_feed: PreparedStatement,
    feed_authors: PreparedStatement,
    page_first: PreparedStatement,
    page_before: PreparedStatement,
    page_since: PreparedStatement,
    page_between: PreparedStatement,
    insert_recent: PreparedStatement,
    newest_recent: PreparedStatement,
    trim_recent: PreparedStatement,
    set_followed: PreparedStatement,
    followers: PreparedStatement,
}

impl std::fmt::Debug for CqlFeedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlFeedStore")
            .field("keyspace", &self.ks.name())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl CqlFeedStore {
    /// Prepares every statement in `ks` (whose schema must be current).
    pub async fn new(ks: Keyspace, limits: FeedLimits) -> Result<Self, CqlError> {
        Ok(Self {
            insert_entry: ks.prepare(INSERT_ENTRY).await?,
            delete_entry: ks.prepare(DELETE_ENTRY).await?,
            newest_in_feed: ks.prepare(NEWEST_IN_FEED).await?,
            trim_feed: ks.prepare(TRIM_FEED).await?,
            feed_authors: ks.prepare(FEED_AUTHORS).await?,
            page_first: ks.prepare(PAGE_FIRST).await?,
            page_before: ks.prepare(PAGE_BEFORE).await?,
            page_since: ks.prepare(PAGE_SINCE).await?,
            page_between: ks.prepare(PAGE_BETWEEN).await?,
            insert_recent: ks.prepare(INSERT_RECENT).await?,
            newest_recent: ks.prepare(NEWEST_RECENT).await?,
            trim_recent: ks.prepare(TRIM_RECENT).await?,
            set_followed: ks.prepare(SET_FOLLOWED).await?,
            followers: ks.prepare(FOLLOWERS).await?,
            ks,
            limits,
        })
    }

    /// Runs `statement` once per row of `rows`, all in one partition: one unlogged batch per
    /// [`BATCH_ROWS`]. A single-partition batch is applied atomically without the batch log.
    async fn write_partition<V: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<V>,
    ) -> Result<(), StoreError> {
        let session = self.ks.session();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<V> = rows.by_ref().take(BATCH_ROWS).collect();
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in &chunk {
                batch.append_statement(statement.clone());
            }
            session.batch(&batch, &chunk).await?;
        }
        Ok(())
    }

    /// The first column of up to `limit` rows of `statement` (bound to one partition key).
    async fn newest_ids(
        &self,
        statement: &PreparedStatement,
        partition: i64,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(statement, (partition, cql_limit(limit)))
            .await?
            .into_rows_result()?;
        let ids = rows
            .rows::<(i64,)>()?
            .map(|row| row.map(|(id,)| id))
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Keeps the newest `keep` rows of a partition: reads the newest `keep + 1` IDs and, when
    /// there are that many, range-deletes at and below the last one.
    async fn trim(
        &self,
        newest: &PreparedStatement,
        trim: &PreparedStatement,
        partition: i64,
        keep: usize,
    ) -> Result<(), StoreError> {
        let ids = self
            .newest_ids(newest, partition, keep.saturating_add(1))
            .await?;
        if let Some(oldest_past_cap) = ids.get(keep) {
            self.ks
                .session()
                .execute_unpaged(trim, (partition, oldest_past_cap))
                .await?;
        }
        Ok(())
    }

    /// Every row of a partition, page by page.
    async fn read_partition<R>(
        &self,
        statement: &PreparedStatement,
        partition: i64,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send,
    {
        self.ks
            .session()
            .execute_iter(statement.clone(), (partition,))
            .await?
            .rows_stream::<R>()
            .map_err(|err| StoreError::Corrupt(err.to_string()))?
            .map_err(StoreError::backend)
            .try_collect()
            .await
    }

    /// Upserts `entries` into `user`'s feed, then trims it to the cap.
    async fn insert_into_feed(&self, user: u64, entries: &[FeedEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let user = to_cql(user)?;
        let rows = entries
            .iter()
            .map(|entry| {
                // No retweeter is written as null, so a plain entry replaces a retweet's, exactly
                // as the embedded store overwrites the whole value.
                let retweeted_by = entry.retweeted_by.filter(|&by| by != 0).map(to_cql);
                Ok((
                    user,
                    to_cql(entry.tweet_id)?,
                    to_cql(entry.author_id)?,
                    retweeted_by.transpose()?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write_partition(&self.insert_entry, rows).await?;
        self.trim(
            &self.newest_in_feed,
            &self.trim_feed,
            user,
            self.limits.feed_len,
        )
        .await
    }

    async fn set_followed(
        &self,
        author: u64,
        follower: u64,
        followed: bool,
    ) -> Result<(), StoreError> {
        self.ks
            .session()
            .execute_unpaged(
                &self.set_followed,
                (to_cql(author)?, to_cql(follower)?, followed),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl FeedStore for CqlFeedStore {
    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError> {
        let author = to_cql(author)?;
        self.ks
            .session()
            .execute_unpaged(&self.insert_recent, (author, to_cql(tweet)?))
            .await?;
        self.trim(
            &self.newest_recent,
            &self.trim_recent,
            author,
            self.limits.recent_per_author,
        )
        .await
    }

    async fn recent_tweets(&self, author: u64) -> Result<Vec<u64>, StoreError> {
        let keep = self.limits.recent_per_author;
        if keep == 0 {
            // CQL has no `LIMIT 0`, and nothing is kept anyway.
            return Ok(Vec::new());
        }
        self.newest_ids(&self.newest_recent, to_cql(author)?, keep)
            .await?
            .into_iter()
            .map(from_cql)
            .collect()
    }

    async fn add_follower(&self, author: u64, follower: u64) -> Result<(), StoreError> {
        self.set_followed(author, follower, true).await
    }

    async fn remove_follower(&self, author: u64, follower: u64) -> Result<(), StoreError> {
        self.set_followed(author, follower, false).await
    }

    async fn followers(&self, author: u64) -> Result<Vec<u64>, StoreError> {
        // Clustered by follower_id ascending: the order the trait promises.
        let rows: Vec<(i64, Option<bool>)> = self
            .read_partition(&self.followers, to_cql(author)?)
            .await?;
        rows.into_iter()
            .filter(|(_, followed)| *followed == Some(true))
            .map(|(follower, _)| from_cql(follower))
            .collect()
    }

    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError> {
        self.insert_into_feed(user, &entries).await
    }

    async fn fan_out(&self, users: Vec<u64>, entry: FeedEntry) -> Result<(), StoreError> {
        let entries = [entry];
        let mut inserts = stream::iter(users)
            .map(|user| self.insert_into_feed(user, &entries))
            .buffer_unordered(FAN_OUT_CONCURRENCY);
        while let Some(inserted) = inserts.next().await {
            inserted?;
        }
        Ok(())
    }

    async fn remove_author(&self, user: u64, author: u64) -> Result<(), StoreError> {
        let user = to_cql(user)?;
        let author = to_cql(author)?;
        let rows: Vec<(i64, i64)> = self.read_partition(&self.feed_authors, user).await?;
        let doomed: Vec<(i64, i64)> = rows
            .into_iter()
            .filter(|&(_, by)| by == author)
            .map(|(tweet, _)| (user, tweet))
            .collect();
        self.write_partition(&self.delete_entry, doomed).await
    }

    async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, StoreError> {
        let user = to_cql(user)?;
        let limit = cql_limit(page.limit.get().saturating_add(1));
        // A `before` past every bigint bounds nothing (no stored ID is that large).
        let upper = page.before.and_then(|before| i64::try_from(before).ok());
        let session = self.ks.session();
        let result = match page.since {
            Some(since) => {
                let empty = Page::from_scan(&page, Vec::new(), |e: &FeedEntry| e.tweet_id);
                if since.saturating_add(1) >= page.before.unwrap_or(u64::MAX) {
                    return Ok(empty);
                }
                let Ok(since) = i64::try_from(since) else {
                    // Nothing stored is newer than the largest bigint.
                    return Ok(empty);
                };
                match upper {
                    Some(before) => {
                        session
                            .execute_unpaged(&self.page_between, (user, since, before, limit))
                            .await?
                    }
                    None => {
                        session
                            .execute_unpaged(&self.page_since, (user, since, limit))
                            .await?
                    }
                }
            }
            None => match upper {
                Some(before) => {
                    session
                        .execute_unpaged(&self.page_before, (user, before, limit))
                        .await?
                }
                None => {
                    session
                        .execute_unpaged(&self.page_first, (user, limit))
                        .await?
                }
            },
        };
        let rows = result.into_rows_result()?;
        let entries = rows
            .rows::<(i64, i64, Option<i64>)>()?
            .map(|row| {
                let (tweet_id, author_id, retweeted_by) = row?;
                Ok(FeedEntry {
                    tweet_id: from_cql(tweet_id)?,
                    author_id: from_cql(author_id)?,
                    retweeted_by: retweeted_by
                        .filter(|&by| by != 0)
                        .map(from_cql)
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page::from_scan(&page, entries, |e| e.tweet_id))
    }
}

/// An ID that does not fit a CQL `bigint`. Snowflake IDs stay below 2^63 for decades, so only a
/// bogus ID from an event gets here; it is refused rather than stored out of order.
#[derive(Debug, thiserror::Error)]
#[error("id {0} is too large for a CQL bigint")]
struct IdOutOfRange(u64);

fn to_cql(id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::backend(IdOutOfRange(id)))
}

fn from_cql(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("negative id {id}")))
}

/// A row count as a CQL `LIMIT` (an `int`, at least 1).
fn cql_limit(rows: usize) -> i32 {
    i32::try_from(rows).unwrap_or(i32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use twtr_common::cql::testing::keyspace_for;

    use super::*;
    use crate::store::conformance;

    /// A CQL store on this test process's migrated `feeds` keyspace, with the suite's small
    /// limits; `None` (the check is skipped) when no CQL node answers outside CI.
    async fn open_cql() -> Option<(Arc<dyn FeedStore>, ())> {
        let (session, config) = keyspace_for("feeds").await?;
        let ks = Keyspace::new(session, &config, "feeds").expect("feeds keyspace name");
        let store = CqlFeedStore::new(ks, conformance::LIMITS)
            .await
            .expect("prepare the feeds statements");
        Some((Arc::new(store), ()))
    }

    crate::feed_store_conformance!(optional open_cql);
}
