//! [`CqlFeedStore`]: feeds on ScyllaDB / Cassandra, in the tables of `cql/feeds/001_init.cql`
//! and `002_retweets.cql`.
//!
//! The feeds store consumes events and publishes none, and nothing in it needs a check-and-set:
//! every write is an upsert or a delete keyed by IDs, so repeating it is harmless, and no
//! lightweight transaction, outbox row or count is involved.
//!
//! # Write paths, and what a crash between their steps leaves
//!
//! - A feed insert ([`FeedStore::insert_entries`], and per user [`FeedStore::fan_out`]): (1) upsert
//!   the entries, one single-partition batch per 100 (a fan-out: each feed's entry and arrival,
//!   in unlogged batches of up to 10 feeds whose partitions have the same replicas, so a batch
//!   saves requests and its coordinator writes locally); (2) when a trim is due, read the newest
//!   `feed_len + 1` tweet IDs and, if there are that many, range-delete `tweet_id <=` the last of
//!   them (one range tombstone). A trim is due once the process has inserted more than
//!   [`FeedLimits::trim_slack`] entries into the feed since its last trim, and on the first
//!   insert into a feed it does not remember (after a start, or when its count was evicted), so
//!   the read is paid once per `trim_slack + 1` inserts. A crash after (1) leaves the feed over
//!   its cap; the restarted process trims it on its first insert there.
//! - [`FeedStore::record_tweet`]: the same two steps on the author's `recent_tweets` partition,
//!   with `recent_per_author`.
//! - [`FeedStore::set_edge`] / [`FeedStore::set_retweet`]: one upsert (a logged batch of two for
//!   a retweet) written `USING TIMESTAMP <version>`, so the highest version wins without a read
//!   or a lightweight transaction, then a read of the row's version to learn whether this one is
//!   the latest. Nothing to finish after a crash: the redelivered event writes the same cells.
//! - [`FeedStore::remove_entries`] / [`FeedStore::entries_via`]: deletes by key, and a read of
//!   the user's feed partition (small: the cap bounds it).
//! - [`FeedStore::delete_tweet`]: the tombstone row in `deleted_tweets`, then the recent-tweets
//!   row; [`FeedStore::record_tweet`] reads the tombstone first (and the service re-checks after
//!   its fan-out, closing the race between the two).
//!
//! Every read names its whole partition key, so the driver sends it straight to a replica.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use twtr_common::cql::{CqlError, Keyspace, logged_batch, unlogged_batch};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{
    Arrival, FeedEntry, FeedLimits, FeedStore, Notification, NotificationKey, NotificationKind,
    NotificationState,
};

const INSERT_ENTRY: &str =
    "INSERT INTO {ks}.feeds (user_id, tweet_id, author_id, retweeted_by) VALUES (?, ?, ?, ?)";
/// An entry's arrival in a feed, for the live feed; written in one batch with its feed row.
const INSERT_ARRIVAL: &str = "INSERT INTO {ks}.feed_arrivals \
     (user_id, arrived_at, tweet_id, author_id, retweeted_by) VALUES (?, ?, ?, ?, ?) USING TTL ?";
const ARRIVALS_AFTER: &str = "SELECT arrived_at, tweet_id, author_id, retweeted_by \
     FROM {ks}.feed_arrivals WHERE user_id = ? AND (arrived_at, tweet_id) > (?, ?) LIMIT ?";
const DROP_ARRIVALS: &str = "DELETE FROM {ks}.feed_arrivals WHERE user_id = ?";
const DELETE_ENTRY: &str = "DELETE FROM {ks}.feeds WHERE user_id = ? AND tweet_id = ?";
/// The newest tweet IDs of a feed, for trimming it.
const NEWEST_IN_FEED: &str = "SELECT tweet_id FROM {ks}.feeds WHERE user_id = ? LIMIT ?";
/// Everything at or below the oldest tweet past the cap, as one range tombstone.
const TRIM_FEED: &str = "DELETE FROM {ks}.feeds WHERE user_id = ? AND tweet_id <= ?";
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

/// Follow and unfollow alike, last writer wins by the edge version as the write timestamp:
/// unfollowing writes `followed = false` instead of deleting, so the row stays as the edge's
/// tombstone (see the schema file).
const SET_FOLLOWED: &str = "INSERT INTO {ks}.author_followers \
     (author_id, follower_id, followed, version) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
const EDGE: &str = "SELECT follower_id, followed, version FROM {ks}.author_followers \
     WHERE author_id = ? AND follower_id IN ?";
const FOLLOWERS_AFTER: &str = "SELECT follower_id, followed FROM {ks}.author_followers \
     WHERE author_id = ? AND follower_id > ? LIMIT ?";
const DELETE_TWEET: &str =
    "INSERT INTO {ks}.deleted_tweets (tweet_id, author_id, deleted_at) VALUES (?, ?, ?)";
const DELETED_TWEETS: &str = "SELECT tweet_id FROM {ks}.deleted_tweets WHERE tweet_id IN ?";
const FORGET_RECENT: &str = "DELETE FROM {ks}.recent_tweets WHERE author_id = ? AND tweet_id = ?";
/// A retweet (or its undoing) in both of its tables, versioned like the edges.
const SET_RETWEET: &str = "INSERT INTO {ks}.retweets \
     (user_id, tweet_id, author_id, standing, version) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
const SET_RETWEETER: &str = "INSERT INTO {ks}.tweet_retweeters (tweet_id, user_id, standing) \
     VALUES (?, ?, ?) USING TIMESTAMP ?";
const RETWEET_VERSION: &str =
    "SELECT version FROM {ks}.retweets WHERE user_id = ? AND tweet_id = ?";
const RETWEETERS_AFTER: &str = "SELECT user_id, standing FROM {ks}.tweet_retweeters \
     WHERE tweet_id = ? AND user_id > ? LIMIT ?";
const RECENT_RETWEETS: &str =
    "SELECT tweet_id, author_id, standing FROM {ks}.retweets WHERE user_id = ? LIMIT ?";
const FEED_ROWS: &str =
    "SELECT tweet_id, author_id, retweeted_by FROM {ks}.feeds WHERE user_id = ?";
const DROP_FEED: &str = "DELETE FROM {ks}.feeds WHERE user_id = ?";
const SET_CELEBRITY: &str = "INSERT INTO {ks}.celebrities (scope, author_id) VALUES ('all', ?)";
const UNSET_CELEBRITY: &str = "DELETE FROM {ks}.celebrities WHERE scope = 'all' AND author_id = ?";
const CELEBRITIES: &str = "SELECT author_id FROM {ks}.celebrities WHERE scope = 'all'";

const LIST_NOTIFICATION: &str = "INSERT INTO {ks}.notifications \
     (recipient_id, id, kind, actor_id, tweet_id) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
/// Takes a listing away at the timestamp of the version that no longer names it.
const UNLIST_NOTIFICATION: &str =
    "DELETE FROM {ks}.notifications USING TIMESTAMP ? WHERE recipient_id = ? AND id = ?";
/// Takes a listing away for good (its tweet was deleted): at the current time, above every
/// version.
const REMOVE_NOTIFICATION: &str =
    "DELETE FROM {ks}.notifications WHERE recipient_id = ? AND id = ?";
const NOTIFICATION_VERSION: &str = "INSERT INTO {ks}.notification_versions \
     (recipient_id, kind, actor_id, tweet_id, version, id) VALUES (?, ?, ?, ?, ?, ?)";
const NOTIFICATION_VERSIONS: &str = "SELECT version, id FROM {ks}.notification_versions \
     WHERE recipient_id = ? AND kind = ? AND actor_id = ? AND tweet_id = ?";
const NEWEST_NOTIFICATIONS: &str =
    "SELECT id FROM {ks}.notifications WHERE recipient_id = ? LIMIT ?";
const TRIM_NOTIFICATIONS: &str =
    "DELETE FROM {ks}.notifications WHERE recipient_id = ? AND id <= ?";
const NOTIFICATIONS_FIRST: &str = "SELECT id, kind, actor_id, tweet_id FROM {ks}.notifications \
     WHERE recipient_id = ? LIMIT ?";
const NOTIFICATIONS_BEFORE: &str = "SELECT id, kind, actor_id, tweet_id FROM {ks}.notifications \
     WHERE recipient_id = ? AND id < ? LIMIT ?";
const NOTIFICATION_TWEETS: &str =
    "SELECT id, tweet_id FROM {ks}.notifications WHERE recipient_id = ?";
const UNREAD_NOTIFICATIONS: &str =
    "SELECT id FROM {ks}.notifications WHERE recipient_id = ? AND id > ? LIMIT ?";
const READ_CURSOR: &str = "SELECT read_up_to FROM {ks}.notification_reads WHERE recipient_id = ?";
const SET_READ_CURSOR: &str = "INSERT INTO {ks}.notification_reads (recipient_id, read_up_to) \
     VALUES (?, ?) USING TIMESTAMP ?";
const DROP_NOTIFICATIONS: &str = "DELETE FROM {ks}.notifications WHERE recipient_id = ?";
const DROP_READ_CURSOR: &str = "DELETE FROM {ks}.notification_reads WHERE recipient_id = ?";

/// Statements per batch: keeps a batch well under the size at which the cluster warns.
const BATCH_ROWS: usize = 100;
/// Feeds one request of a fan-out writes: an unlogged batch of that many feeds whose partitions
/// have the same replicas, so its coordinator is a replica of each and the batch saves requests,
/// not hops. Cassandra warns about an unlogged batch across more partitions than its
/// `unlogged_batch_across_partitions_warn_threshold` (10 by default), so no more.
const FEEDS_PER_BATCH: usize = 10;
/// Batches written at once by one fan-out: enough to hide round trips, few enough not to flood
/// the cluster (or the driver's connection pool) when an author has many followers.
const FAN_OUT_CONCURRENCY: usize = 32;

/// Feeds whose inserts since their last trim this process counts; a feed it forgets is trimmed
/// on its next insert, so the bound only costs memory, never the cap.
const TRIM_COUNTS_KEPT: u64 = 200_000;

/// Feeds on a CQL cluster.
pub struct CqlFeedStore {
    ks: Keyspace,
    limits: FeedLimits,
    /// Per feed, the entries this process inserted since it last trimmed it.
    untrimmed: moka::sync::Cache<i64, usize>,
    /// Per user, the notifications this process listed since it last trimmed their list.
    untrimmed_notifications: moka::sync::Cache<i64, usize>,
    insert_entry: PreparedStatement,
    /// The feed rows and arrivals of 1 to [`FEEDS_PER_BATCH`] feeds: `insert_arrived[n]`
    /// writes `n + 1` feeds (see [`CqlFeedStore::arrive_in_feeds`]).
    insert_arrived: Vec<Batch>,
    arrivals_after: PreparedStatement,
    drop_arrivals: PreparedStatement,
    delete_entry: PreparedStatement,
    newest_in_feed: PreparedStatement,
    trim_feed: PreparedStatement,
    page_first: PreparedStatement,
    page_before: PreparedStatement,
    page_since: PreparedStatement,
    page_between: PreparedStatement,
    insert_recent: PreparedStatement,
    newest_recent: PreparedStatement,
    trim_recent: PreparedStatement,
    set_followed: PreparedStatement,
    edge: PreparedStatement,
    followers_after: PreparedStatement,
    delete_tweet: PreparedStatement,
    deleted_tweets: PreparedStatement,
    forget_recent: PreparedStatement,
    set_retweet: Batch,
    retweet_version: PreparedStatement,
    retweeters_after: PreparedStatement,
    recent_retweets: PreparedStatement,
    feed_rows: PreparedStatement,
    drop_feed: PreparedStatement,
    set_celebrity: PreparedStatement,
    unset_celebrity: PreparedStatement,
    celebrities: PreparedStatement,
    list_notification: PreparedStatement,
    unlist_notification: PreparedStatement,
    remove_notification: PreparedStatement,
    notification_version: PreparedStatement,
    notification_versions: PreparedStatement,
    newest_notifications: PreparedStatement,
    trim_notifications: PreparedStatement,
    notifications_first: PreparedStatement,
    notifications_before: PreparedStatement,
    notification_tweets: PreparedStatement,
    unread_notifications: PreparedStatement,
    read_cursor: PreparedStatement,
    set_read_cursor: PreparedStatement,
    drop_notifications: PreparedStatement,
    drop_read_cursor: PreparedStatement,
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
        let set_retweet = logged_batch([
            &ks.prepare(SET_RETWEET).await?,
            &ks.prepare(SET_RETWEETER).await?,
        ]);
        let insert_entry = ks.prepare(INSERT_ENTRY).await?;
        let insert_arrival = ks.prepare(INSERT_ARRIVAL).await?;
        let insert_arrived = (1..=FEEDS_PER_BATCH)
            .map(|feeds| {
                let pair = [&insert_entry, &insert_arrival];
                unlogged_batch(std::iter::repeat_n(pair, feeds).flatten())
            })
            .collect();
        Ok(Self {
            insert_arrived,
            arrivals_after: ks.prepare(ARRIVALS_AFTER).await?,
            drop_arrivals: ks.prepare(DROP_ARRIVALS).await?,
            insert_entry,
            delete_entry: ks.prepare(DELETE_ENTRY).await?,
            newest_in_feed: ks.prepare(NEWEST_IN_FEED).await?,
            trim_feed: ks.prepare(TRIM_FEED).await?,
            page_first: ks.prepare(PAGE_FIRST).await?,
            page_before: ks.prepare(PAGE_BEFORE).await?,
            page_since: ks.prepare(PAGE_SINCE).await?,
            page_between: ks.prepare(PAGE_BETWEEN).await?,
            insert_recent: ks.prepare(INSERT_RECENT).await?,
            newest_recent: ks.prepare(NEWEST_RECENT).await?,
            trim_recent: ks.prepare(TRIM_RECENT).await?,
            set_followed: ks.prepare(SET_FOLLOWED).await?,
            edge: ks.prepare(EDGE).await?,
            followers_after: ks.prepare(FOLLOWERS_AFTER).await?,
            delete_tweet: ks.prepare(DELETE_TWEET).await?,
            deleted_tweets: ks.prepare(DELETED_TWEETS).await?,
            forget_recent: ks.prepare(FORGET_RECENT).await?,
            set_retweet,
            retweet_version: ks.prepare(RETWEET_VERSION).await?,
            retweeters_after: ks.prepare(RETWEETERS_AFTER).await?,
            recent_retweets: ks.prepare(RECENT_RETWEETS).await?,
            feed_rows: ks.prepare(FEED_ROWS).await?,
            drop_feed: ks.prepare(DROP_FEED).await?,
            set_celebrity: ks.prepare(SET_CELEBRITY).await?,
            unset_celebrity: ks.prepare(UNSET_CELEBRITY).await?,
            celebrities: ks.prepare(CELEBRITIES).await?,
            list_notification: ks.prepare(LIST_NOTIFICATION).await?,
            unlist_notification: ks.prepare(UNLIST_NOTIFICATION).await?,
            remove_notification: ks.prepare(REMOVE_NOTIFICATION).await?,
            notification_version: ks.prepare(NOTIFICATION_VERSION).await?,
            notification_versions: ks.prepare(NOTIFICATION_VERSIONS).await?,
            newest_notifications: ks.prepare(NEWEST_NOTIFICATIONS).await?,
            trim_notifications: ks.prepare(TRIM_NOTIFICATIONS).await?,
            notifications_first: ks.prepare(NOTIFICATIONS_FIRST).await?,
            notifications_before: ks.prepare(NOTIFICATIONS_BEFORE).await?,
            notification_tweets: ks.prepare(NOTIFICATION_TWEETS).await?,
            unread_notifications: ks.prepare(UNREAD_NOTIFICATIONS).await?,
            read_cursor: ks.prepare(READ_CURSOR).await?,
            set_read_cursor: ks.prepare(SET_READ_CURSOR).await?,
            drop_notifications: ks.prepare(DROP_NOTIFICATIONS).await?,
            drop_read_cursor: ks.prepare(DROP_READ_CURSOR).await?,
            ks,
            limits,
            untrimmed: moka::sync::Cache::new(TRIM_COUNTS_KEPT),
            untrimmed_notifications: moka::sync::Cache::new(TRIM_COUNTS_KEPT),
        })
    }

    /// Counts `inserted` entries into `user`'s feed; whether a trim is due (see the module
    /// documentation). A due trim resets the count, so concurrent inserts do not all trim.
    fn trim_due(&self, user: i64, inserted: usize) -> bool {
        trim_due(&self.untrimmed, self.limits.trim_slack, user, inserted)
    }
}

/// Counts `inserted` rows into `partition` in `untrimmed`: whether a trim is due.
fn trim_due(
    untrimmed: &moka::sync::Cache<i64, usize>,
    slack: usize,
    partition: i64,
    inserted: usize,
) -> bool {
    let mut due = false;
    untrimmed.entry(partition).and_upsert_with(|counted| {
        let count = counted.map_or(usize::MAX, |c| c.into_value().saturating_add(inserted));
        due = count > slack;
        if due { 0 } else { count }
    });
    due
}

impl CqlFeedStore {
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
            let batch = unlogged_batch(std::iter::repeat_n(statement, chunk.len()));
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
        self.trim_feed_if_due(user, entries.len()).await
    }

    /// Counts `inserted` entries into `user`'s feed and trims it when a trim is due (see the
    /// module documentation).
    async fn trim_feed_if_due(&self, user: i64, inserted: usize) -> Result<(), StoreError> {
        if !self.trim_due(user, inserted) {
            return Ok(());
        }
        let trimmed = self
            .trim(
                &self.newest_in_feed,
                &self.trim_feed,
                user,
                self.limits.feed_len,
            )
            .await;
        if trimmed.is_err() {
            // Not trimmed after all: the next insert into this feed tries again.
            self.untrimmed.invalidate(&user);
        }
        trimmed
    }

    /// Fan-out into up to [`FEEDS_PER_BATCH`] feeds of the same replicas: each feed's entry and
    /// arrival, in one unlogged batch, then a trim of each feed where one is due. The batch
    /// merges the two rows of one feed into one mutation of its partition, applied atomically;
    /// across feeds it promises nothing, and needs nothing (a retried fan-out rewrites the same
    /// rows).
    async fn arrive_in_feeds(
        &self,
        users: &[i64],
        entry: FeedEntry,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(batch) = users
            .len()
            .checked_sub(1)
            .and_then(|i| self.insert_arrived.get(i))
        else {
            return Ok(());
        };
        let (tweet, author) = (to_cql(entry.tweet_id)?, to_cql(entry.author_id)?);
        let retweeted_by = entry
            .retweeted_by
            .filter(|&by| by != 0)
            .map(to_cql)
            .transpose()?;
        let ttl = i32::try_from(self.limits.arrivals_kept.as_secs().max(1)).unwrap_or(i32::MAX);
        let rows: Vec<ArrivedRow> = users
            .iter()
            .flat_map(|&user| {
                [
                    ArrivedRow::Entry((user, tweet, author, retweeted_by)),
                    ArrivedRow::Arrival((user, at_ms, tweet, author, retweeted_by, ttl)),
                ]
            })
            .collect();
        self.ks.session().batch(batch, &rows).await?;
        for &user in users {
            self.trim_feed_if_due(user, 1).await?;
        }
        Ok(())
    }

    /// `users`' feeds in groups of at most [`FEEDS_PER_BATCH`] whose partitions have the same
    /// replicas, as the driver knows them now (token-aware grouping). Where it cannot tell, a
    /// feed is a group of its own.
    fn by_replicas(&self, users: Vec<u64>) -> Result<Vec<Vec<i64>>, StoreError> {
        let cluster = self.ks.session().get_cluster_state();
        let mut groups: HashMap<Vec<_>, Vec<i64>> = HashMap::new();
        let mut alone = Vec::new();
        for user in users {
            let user = to_cql(user)?;
            match self.drop_feed.calculate_token(&(user,)) {
                Ok(Some(token)) => {
                    let mut replicas: Vec<_> = cluster
                        .get_token_endpoints(self.ks.name(), "feeds", token)
                        .into_iter()
                        .map(|(node, _)| node.host_id)
                        .collect();
                    replicas.sort_unstable();
                    groups.entry(replicas).or_default().push(user);
                }
                _ => alone.push(vec![user]),
            }
        }
        let mut batches = alone;
        for feeds in groups.into_values() {
            batches.extend(feeds.chunks(FEEDS_PER_BATCH).map(<[i64]>::to_vec));
        }
        Ok(batches)
    }

    /// Up to `max` keys of a partition clustered ascending, above `after`, whose flag is set:
    /// reads [`BATCH_ROWS`]-row pages past the unset ones until it has `max` or the partition
    /// ends.
    async fn flagged_after(
        &self,
        statement: &PreparedStatement,
        partition: i64,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let mut cursor = match after {
            None => -1,
            Some(after) => match i64::try_from(after) {
                Ok(after) => after,
                Err(_) => return Ok(Vec::new()),
            },
        };
        let mut found = Vec::new();
        while found.len() < max {
            let rows = self
                .ks
                .session()
                .execute_unpaged(statement, (partition, cursor, cql_limit(BATCH_ROWS)))
                .await?
                .into_rows_result()?;
            let mut read = 0;
            for row in rows.rows::<(i64, Option<bool>)>()? {
                let (key, flag) = row?;
                read += 1;
                cursor = key;
                if flag == Some(true) && found.len() < max {
                    found.push(from_cql(key)?);
                }
            }
            if read < BATCH_ROWS {
                break;
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl FeedStore for CqlFeedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.ks.ping().await?)
    }

    async fn set_edge(
        &self,
        follower: u64,
        followee: u64,
        following: bool,
        version: u64,
    ) -> Result<bool, StoreError> {
        let (author, follower) = (to_cql(followee)?, to_cql(follower)?);
        let Ok(stamp) = i64::try_from(version) else {
            return Err(StoreError::backend(IdOutOfRange(version)));
        };
        let values = (
            author,
            follower,
            following,
            i32::try_from(version).unwrap_or(i32::MAX),
            stamp,
        );
        self.ks
            .session()
            .execute_unpaged(&self.set_followed, values)
            .await?;
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.edge, (author, vec![follower]))
            .await?
            .into_rows_result()?;
        let latest = rows
            .maybe_first_row::<(i64, Option<bool>, Option<i32>)>()?
            .and_then(|(_, _, version)| version);
        Ok(latest.and_then(|v| u64::try_from(v).ok()) == Some(version.min(i32::MAX as u64)))
    }

    async fn edges(&self, pairs: Vec<(u64, u64)>) -> Result<Vec<bool>, StoreError> {
        let mut by_followee: HashMap<i64, Vec<i64>> = HashMap::new();
        for &(follower, followee) in &pairs {
            by_followee
                .entry(to_cql(followee)?)
                .or_default()
                .push(to_cql(follower)?);
        }
        let session = self.ks.session();
        let reads = by_followee.iter().flat_map(|(&author, followers)| {
            followers.chunks(BATCH_ROWS).map(move |chunk| async move {
                let rows = session
                    .execute_unpaged(&self.edge, (author, chunk))
                    .await?
                    .into_rows_result()?;
                let mut live = Vec::new();
                for row in rows.rows::<(i64, Option<bool>, Option<i32>)>()? {
                    let (follower, followed, _) = row?;
                    if followed == Some(true) {
                        live.push((follower, author));
                    }
                }
                Ok::<_, StoreError>(live)
            })
        });
        let mut live = HashSet::new();
        for found in join_all(reads).await {
            live.extend(found?);
        }
        pairs
            .iter()
            .map(|&(follower, followee)| Ok(live.contains(&(to_cql(follower)?, to_cql(followee)?))))
            .collect()
    }

    async fn followers(
        &self,
        author: u64,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.flagged_after(&self.followers_after, to_cql(author)?, after, max)
            .await
    }

    async fn delete_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError> {
        let (author, tweet) = (to_cql(author)?, to_cql(tweet)?);
        let session = self.ks.session();
        let now = CqlTimestamp(twtr_common::clock::now_millis());
        session
            .execute_unpaged(&self.delete_tweet, (tweet, author, now))
            .await?;
        session
            .execute_unpaged(&self.forget_recent, (author, tweet))
            .await?;
        Ok(())
    }

    async fn deleted(&self, tweets: Vec<u64>) -> Result<Vec<bool>, StoreError> {
        let keys = tweets
            .iter()
            .map(|&t| to_cql(t))
            .collect::<Result<Vec<_>, _>>()?;
        let session = self.ks.session();
        let reads = keys.chunks(BATCH_ROWS).map(|chunk| async move {
            let rows = session
                .execute_unpaged(&self.deleted_tweets, (chunk,))
                .await?
                .into_rows_result()?;
            rows.rows::<(i64,)>()?
                .map(|row| Ok(row?.0))
                .collect::<Result<Vec<_>, StoreError>>()
        });
        let mut deleted = HashSet::new();
        for found in join_all(reads).await {
            deleted.extend(found?);
        }
        Ok(keys.iter().map(|key| deleted.contains(key)).collect())
    }

    async fn set_retweet(
        &self,
        user: u64,
        tweet: u64,
        author: u64,
        active: bool,
        version: u64,
    ) -> Result<bool, StoreError> {
        let (user, tweet, author) = (to_cql(user)?, to_cql(tweet)?, to_cql(author)?);
        let stamp = to_cql(version)?;
        let values = (
            (user, tweet, author, active, stamp, stamp),
            (tweet, user, active, stamp),
        );
        self.ks.session().batch(&self.set_retweet, values).await?;
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.retweet_version, (user, tweet))
            .await?
            .into_rows_result()?;
        let latest = rows
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(version,)| version);
        Ok(latest == Some(stamp))
    }

    async fn retweeters(&self, tweet: u64, max: usize) -> Result<Vec<u64>, StoreError> {
        self.flagged_after(&self.retweeters_after, to_cql(tweet)?, None, max)
            .await
    }

    async fn recent_retweets(&self, user: u64) -> Result<Vec<FeedEntry>, StoreError> {
        let keep = self.limits.recent_per_author;
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.recent_retweets, (to_cql(user)?, cql_limit(keep)))
            .await?
            .into_rows_result()?;
        let mut entries = Vec::new();
        for row in rows.rows::<(i64, Option<i64>, Option<bool>)>()? {
            if let (tweet, Some(author), Some(true)) = row? {
                entries.push(FeedEntry {
                    tweet_id: from_cql(tweet)?,
                    author_id: from_cql(author)?,
                    retweeted_by: Some(user),
                });
            }
        }
        Ok(entries)
    }

    async fn set_celebrity(&self, author: u64, celebrity: bool) -> Result<(), StoreError> {
        let statement = if celebrity {
            &self.set_celebrity
        } else {
            &self.unset_celebrity
        };
        self.ks
            .session()
            .execute_unpaged(statement, (to_cql(author)?,))
            .await?;
        Ok(())
    }

    async fn celebrities(&self) -> Result<Vec<u64>, StoreError> {
        let rows: Vec<(i64,)> = self
            .ks
            .session()
            .execute_iter(self.celebrities.clone(), ())
            .await?
            .rows_stream::<(i64,)>()
            .map_err(|err| StoreError::Corrupt(err.to_string()))?
            .map_err(StoreError::backend)
            .try_collect()
            .await?;
        rows.into_iter().map(|(author,)| from_cql(author)).collect()
    }

    async fn remove_entries(&self, user: u64, tweets: Vec<u64>) -> Result<(), StoreError> {
        let user = to_cql(user)?;
        let rows = tweets
            .into_iter()
            .map(|tweet| Ok((user, to_cql(tweet)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write_partition(&self.delete_entry, rows).await
    }

    async fn entries_via(&self, user: u64, who: u64) -> Result<Vec<FeedEntry>, StoreError> {
        let rows: Vec<(i64, i64, Option<i64>)> =
            self.read_partition(&self.feed_rows, to_cql(user)?).await?;
        let who = to_cql(who)?;
        rows.into_iter()
            .filter(|&(_, author, by)| author == who || by == Some(who))
            .map(|(tweet, author, by)| {
                Ok(FeedEntry {
                    tweet_id: from_cql(tweet)?,
                    author_id: from_cql(author)?,
                    retweeted_by: by.filter(|&by| by != 0).map(from_cql).transpose()?,
                })
            })
            .collect()
    }

    async fn drop_feed(&self, user: u64) -> Result<(), StoreError> {
        let user = to_cql(user)?;
        let session = self.ks.session();
        session.execute_unpaged(&self.drop_feed, (user,)).await?;
        session
            .execute_unpaged(&self.drop_arrivals, (user,))
            .await?;
        Ok(())
    }

    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<bool, StoreError> {
        if self.deleted(vec![tweet]).await?[0] {
            return Ok(false);
        }
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
        .await?;
        Ok(true)
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

    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError> {
        self.insert_into_feed(user, &entries).await
    }

    async fn fan_out(
        &self,
        users: Vec<u64>,
        entry: FeedEntry,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut inserts = stream::iter(self.by_replicas(users)?)
            .map(|feeds| async move { self.arrive_in_feeds(&feeds, entry, at_ms).await })
            .buffer_unordered(FAN_OUT_CONCURRENCY);
        while let Some(inserted) = inserts.next().await {
            inserted?;
        }
        Ok(())
    }

    async fn arrivals(
        &self,
        user: u64,
        after: (i64, u64),
        max: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        // Tweet IDs above the largest bigint do not exist: past it is past every tweet.
        let after_tweet = i64::try_from(after.1).unwrap_or(i64::MAX);
        let values = (to_cql(user)?, after.0, after_tweet, cql_limit(max));
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.arrivals_after, values)
            .await?
            .into_rows_result()?;
        rows.rows::<(i64, i64, i64, Option<i64>)>()?
            .map(|row| {
                let (at_ms, tweet_id, author_id, retweeted_by) = row?;
                Ok(Arrival {
                    at_ms,
                    entry: FeedEntry {
                        tweet_id: from_cql(tweet_id)?,
                        author_id: from_cql(author_id)?,
                        retweeted_by: retweeted_by.map(from_cql).transpose()?,
                    },
                })
            })
            .collect()
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

    async fn set_notification(
        &self,
        key: NotificationKey,
        version: u64,
        id: Option<u64>,
    ) -> Result<(), StoreError> {
        let session = self.ks.session();
        let recipient = to_cql(key.recipient)?;
        let (kind, actor, tweet) = (
            i32::from(key.kind.code()),
            to_cql(key.actor)?,
            to_cql(key.tweet_id)?,
        );
        let stamp = to_cql(version)?;
        let listed = id.map(to_cql).transpose()?;
        session
            .execute_unpaged(
                &self.notification_version,
                (recipient, kind, actor, tweet, stamp, listed.unwrap_or(0)),
            )
            .await?;
        if let Some(listed) = listed {
            session
                .execute_unpaged(
                    &self.list_notification,
                    (recipient, listed, kind, actor, tweet, stamp),
                )
                .await?;
            if trim_due(
                &self.untrimmed_notifications,
                self.limits.trim_slack,
                recipient,
                1,
            ) {
                let trimmed = self
                    .trim(
                        &self.newest_notifications,
                        &self.trim_notifications,
                        recipient,
                        self.limits.notifications_len,
                    )
                    .await;
                if trimmed.is_err() {
                    self.untrimmed_notifications.invalidate(&recipient);
                }
                trimmed?;
            }
        }
        // Read back every version of the key: the highest decides, and every listing it does not
        // name goes, at its timestamp (so a listing written later by a lower version stays
        // shadowed).
        let versions: Vec<(i64, i64)> = session
            .execute_unpaged(&self.notification_versions, (recipient, kind, actor, tweet))
            .await?
            .into_rows_result()?
            .rows::<(i64, i64)>()?
            .collect::<Result<_, _>>()?;
        let Some(&(latest, latest_id)) = versions.first() else {
            return Ok(());
        };
        for &(_, stale) in &versions[1..] {
            if stale != 0 && stale != latest_id {
                session
                    .execute_unpaged(&self.unlist_notification, (latest, recipient, stale))
                    .await?;
            }
        }
        Ok(())
    }

    async fn remove_tweet_notifications(
        &self,
        recipient: u64,
        tweet: u64,
    ) -> Result<(), StoreError> {
        let (recipient, tweet) = (to_cql(recipient)?, to_cql(tweet)?);
        let rows: Vec<(i64, i64)> = self
            .read_partition(&self.notification_tweets, recipient)
            .await?;
        let ids: Vec<(i64, i64)> = rows
            .into_iter()
            .filter(|&(_, about)| about == tweet)
            .map(|(id, _)| (recipient, id))
            .collect();
        self.write_partition(&self.remove_notification, ids).await
    }

    async fn notifications(
        &self,
        recipient: u64,
        page: PageRequest,
    ) -> Result<Page<Notification>, StoreError> {
        let page = PageRequest {
            since: None,
            ..page
        };
        let recipient = to_cql(recipient)?;
        let limit = cql_limit(page.limit.get().saturating_add(1));
        let session = self.ks.session();
        let result = match page.before.and_then(|before| i64::try_from(before).ok()) {
            Some(before) => {
                session
                    .execute_unpaged(&self.notifications_before, (recipient, before, limit))
                    .await?
            }
            None => {
                session
                    .execute_unpaged(&self.notifications_first, (recipient, limit))
                    .await?
            }
        };
        let items = result
            .into_rows_result()?
            .rows::<(i64, i32, i64, i64)>()?
            .map(|row| {
                let (id, kind, actor, tweet_id) = row?;
                let kind = u8::try_from(kind)
                    .ok()
                    .and_then(NotificationKind::from_code)
                    .ok_or_else(|| StoreError::Corrupt(format!("notification kind {kind}")))?;
                Ok(Notification {
                    id: from_cql(id)?,
                    kind,
                    actor: from_cql(actor)?,
                    tweet_id: from_cql(tweet_id)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page::from_scan(&page, items, |n| n.id))
    }

    async fn notification_state(&self, recipient: u64) -> Result<NotificationState, StoreError> {
        let recipient = to_cql(recipient)?;
        let read_up_to = self.read_cursor(recipient).await?;
        let cap = self
            .limits
            .notifications_len
            .saturating_add(self.limits.trim_slack);
        let unread = self
            .ks
            .session()
            .execute_unpaged(
                &self.unread_notifications,
                (recipient, read_up_to, cql_limit(cap)),
            )
            .await?
            .into_rows_result()?
            .rows_num() as u64;
        Ok(NotificationState {
            read_up_to: from_cql(read_up_to)?,
            unread,
        })
    }

    async fn mark_notifications_read(
        &self,
        recipient: u64,
        up_to: Option<u64>,
    ) -> Result<u64, StoreError> {
        let recipient = to_cql(recipient)?;
        let up_to = match up_to {
            Some(up_to) => to_cql(up_to)?,
            None => {
                let newest = self
                    .newest_ids(&self.newest_notifications, recipient, 1)
                    .await?;
                match newest.first() {
                    Some(&newest) => newest,
                    None => return from_cql(self.read_cursor(recipient).await?),
                }
            }
        };
        // The cursor's own time orders the writes (never later than now, so an account's
        // deletion, at the current time, still removes it).
        let millis =
            twtr_common::id::millis_of(from_cql(up_to)?).min(twtr_common::clock::now_millis());
        self.ks
            .session()
            .execute_unpaged(
                &self.set_read_cursor,
                (recipient, up_to, millis.saturating_mul(1000)),
            )
            .await?;
        from_cql(self.read_cursor(recipient).await?)
    }

    async fn drop_notifications(&self, recipient: u64) -> Result<(), StoreError> {
        let recipient = to_cql(recipient)?;
        let session = self.ks.session();
        session
            .execute_unpaged(&self.drop_notifications, (recipient,))
            .await?;
        session
            .execute_unpaged(&self.drop_read_cursor, (recipient,))
            .await?;
        self.untrimmed_notifications.invalidate(&recipient);
        Ok(())
    }
}

impl CqlFeedStore {
    /// `recipient`'s read cursor (0: nothing read).
    async fn read_cursor(&self, recipient: i64) -> Result<i64, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.read_cursor, (recipient,))
            .await?
            .into_rows_result()?;
        Ok(rows
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(cursor,)| cursor)
            .unwrap_or(0))
    }
}

/// An ID that does not fit a CQL `bigint`. Snowflake IDs stay below 2^63 for decades, so only a
/// bogus ID from an event gets here; it is refused rather than stored out of order.
#[derive(Debug, thiserror::Error)]
#[error("id {0} is too large for a CQL bigint")]
struct IdOutOfRange(u64);

/// The values of one statement of a fan-out batch ([`CqlFeedStore::arrive_in_feeds`]), whose
/// statements alternate between a feed row and its arrival.
enum ArrivedRow {
    /// `INSERT_ENTRY`: user, tweet, author, retweeter.
    Entry((i64, i64, i64, Option<i64>)),
    /// `INSERT_ARRIVAL`: user, arrival time, tweet, author, retweeter, TTL.
    Arrival((i64, i64, i64, i64, Option<i64>, i32)),
}

impl SerializeRow for ArrivedRow {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            Self::Entry(values) => values.serialize(ctx, writer),
            Self::Arrival(values) => values.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

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
        Some((Arc::new(open().await?), ()))
    }

    async fn open() -> Option<CqlFeedStore> {
        let (session, config) = keyspace_for(&super::super::SCHEMA).await?;
        let ks = Keyspace::new(session, &config, "feeds").expect("feeds keyspace name");
        let store = CqlFeedStore::new(ks, conformance::LIMITS)
            .await
            .expect("prepare the feeds statements");
        Some(store)
    }

    crate::feed_store_conformance!(optional open_cql);

    /// Every feed in exactly one batch of at most ten; on one node (as in CI) every feed has the
    /// same replica, so 95 feeds are ten batches.
    #[tokio::test]
    async fn a_fan_out_writes_feeds_of_the_same_replicas_in_batches() {
        let Some(store) = open().await else { return };
        let batches = store.by_replicas((1..=95).collect()).unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&n| n <= FEEDS_PER_BATCH), "{sizes:?}");
        if store
            .ks
            .session()
            .get_cluster_state()
            .get_nodes_info()
            .len()
            == 1
        {
            assert_eq!(sizes.len(), 10, "{sizes:?}");
        }
        let mut feeds = batches.concat();
        feeds.sort_unstable();
        assert_eq!(feeds, (1..=95).collect::<Vec<i64>>());
    }
}
