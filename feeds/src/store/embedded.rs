//! [`EmbeddedFeedStore`]: feeds in a redb file. Each write is one transaction, except that
//! fan-outs arriving together share one; each feed's length is kept beside its entries (so
//! trimming to the cap never has to count) and so are its arrivals (see [`FEED`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx, scan_page};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{
    Arrival, FeedEntry, FeedLimits, FeedStore, Notification, NotificationKey, NotificationKind,
    NotificationState,
};

/// Every home feed and what goes with it, side by side under the feed's user, so that putting
/// an entry into a feed rewrites one B-tree page (where the three meet) rather than one page in
/// each of three tables. Keyed `(user, slot, id)`:
/// - `(user, ENTRIES, tweet)` -> `(author, retweeted by or 0)`: the feed's entries;
/// - `(user, LENGTH, 0)` -> `(entries, 0)`: their number, to trim without counting;
/// - `(user, ARRIVED + ms_before_max, u64::MAX - tweet)` -> `(author, retweeted by or 0)`: what
///   fan-out wrote into the feed, newest first (so the newest arrival sits beside the newest
///   entries), for [`FeedLimits::arrivals_kept`].
///
/// A feed of 800 entries spans several pages, and a fan-out write touches only the one where its
/// newest entries end and its arrivals begin; the layout with three tables (`feeds`,
/// `feed_lengths`, `feed_arrivals`) rewrote three pages per entry, about 8 KB, and is migrated
/// when the store opens.
const FEED: TableDefinition<(u64, u64, u64), (u64, u64)> = TableDefinition::new("feed");
/// The slots of [`FEED`].
const ENTRIES: u64 = 0;
const LENGTH: u64 = 1;
const ARRIVED: u64 = 2;

/// The [`FEED`] key of an arrival: newest first, and within one millisecond the highest tweet
/// first, so reading backwards gives `(at_ms, tweet)` order. (A time before 1970, which no
/// clock here gives, counts as 1970.)
fn arrival_key(user: u64, at_ms: i64, tweet: u64) -> (u64, u64, u64) {
    (
        user,
        ARRIVED + (i64::MAX - at_ms.max(0)) as u64,
        u64::MAX - tweet,
    )
}

/// The `(at_ms, tweet)` of an arrival's [`FEED`] key.
fn arrival_of(key: (u64, u64, u64)) -> (i64, u64) {
    (i64::MAX - (key.1 - ARRIVED) as i64, u64::MAX - key.2)
}

/// The tables of the three-table feed layout, read once to migrate them into [`FEED`].
mod before_feed {
    use redb::TableDefinition;
    pub const FEEDS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("feeds");
    pub const LENGTHS: TableDefinition<u64, u64> = TableDefinition::new("feed_lengths");
    pub const ARRIVALS: TableDefinition<(u64, i64, u64), (u64, u64)> =
        TableDefinition::new("feed_arrivals");
}

/// (followee, follower) -> (following, version): every edge ever seen, its latest version.
const EDGES: TableDefinition<(u64, u64), (bool, u64)> = TableDefinition::new("edges");
/// (author, follower) -> (): the live edges, for fan-out.
const FOLLOWERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("followers");
/// (author, tweet) -> (): each author's recent tweets.
const RECENT: TableDefinition<(u64, u64), ()> = TableDefinition::new("recent_tweets");
/// Tweet -> author: deleted tweets, for good.
const DELETED: TableDefinition<u64, u64> = TableDefinition::new("deleted_tweets");
/// (user, tweet) -> (standing, version, author): every retweet ever seen, its latest version.
const RETWEETS: TableDefinition<(u64, u64), (bool, u64, u64)> = TableDefinition::new("retweets");
/// (tweet, user) -> (): the standing retweets of each tweet.
const RETWEETERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("retweeters");
/// (user, tweet) -> author: each user's most recent standing retweets, for backfill.
const RECENT_RETWEETS: TableDefinition<(u64, u64), u64> = TableDefinition::new("recent_retweets");

/// Author -> (): the celebrities, merged at read time rather than fanned out.
const CELEBRITIES: TableDefinition<u64, ()> = TableDefinition::new("celebrities");

/// (recipient, notification id) -> (kind, actor, tweet or 0): each user's notifications.
const NOTIFICATIONS: TableDefinition<(u64, u64), (u8, u64, u64)> =
    TableDefinition::new("notifications");
/// Recipient -> number of their notifications, to trim without counting.
const NOTIFICATION_LENGTHS: TableDefinition<u64, u64> =
    TableDefinition::new("notification_lengths");
/// (recipient, kind, actor, tweet or 0) -> (version, listed id or 0): every notification key
/// ever seen, at its latest version.
const NOTIFICATION_KEYS: TableDefinition<(u64, u8, u64, u64), (u64, u64)> =
    TableDefinition::new("notification_keys");
/// Recipient -> the ID up to which their notifications are read.
const NOTIFICATION_READS: TableDefinition<u64, u64> = TableDefinition::new("notification_reads");

/// Feeds in a redb file (`feeds.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedFeedStore {
    db: EmbeddedDb,
    limits: FeedLimits,
    fan_outs: Arc<FanOuts>,
}

/// Fan-outs waiting for the next combined write (see [`EmbeddedFeedStore::fan_out`]).
#[derive(Debug, Default)]
struct FanOuts {
    state: Mutex<FanOutState>,
}

#[derive(Debug, Default)]
struct FanOutState {
    waiting: Vec<FanOut>,
    /// Whether a task is writing (and will take what waits when it is done).
    writing: bool,
}

#[derive(Debug)]
struct FanOut {
    users: Vec<u64>,
    entry: FeedEntry,
    at_ms: i64,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl EmbeddedFeedStore {
    pub fn open(path: &Path, limits: FeedLimits) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(FEED)?;
            migrate_feed_layout(tx)?;
            tx.open_table(EDGES)?;
            tx.open_table(FOLLOWERS)?;
            tx.open_table(RECENT)?;
            tx.open_table(DELETED)?;
            tx.open_table(RETWEETS)?;
            tx.open_table(RETWEETERS)?;
            tx.open_table(RECENT_RETWEETS)?;
            tx.open_table(CELEBRITIES)?;
            tx.open_table(NOTIFICATIONS)?;
            tx.open_table(NOTIFICATION_LENGTHS)?;
            tx.open_table(NOTIFICATION_KEYS)?;
            tx.open_table(NOTIFICATION_READS)?;
            Ok(())
        })?;
        Ok(Self {
            db,
            limits,
            fan_outs: Arc::default(),
        })
    }

    /// Writes every fan-out that waits, in one transaction, until none waits.
    async fn write_fan_outs(db: EmbeddedDb, limits: FeedLimits, fan_outs: Arc<FanOuts>) {
        loop {
            let batch = {
                let mut state = fan_outs.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.waiting.is_empty() {
                    state.writing = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let mut rows: Vec<(u64, FeedEntry, i64)> = batch
                .iter()
                .flat_map(|f| f.users.iter().map(|&u| (u, f.entry, f.at_ms)))
                .collect();
            rows.sort_unstable_by_key(|&(user, entry, _)| (user, entry.tweet_id));
            let result = db
                .write(move |tx| {
                    let mut feed = FeedTable::open(tx, limits)?;
                    for (user, entry, at_ms) in rows {
                        if feed.insert(user, entry)? {
                            feed.log_arrival(user, entry, at_ms)?;
                        }
                    }
                    Ok(())
                })
                .await;
            for fan_out in batch {
                let _ = fan_out.done.send(match &result {
                    Ok(()) => Ok(()),
                    Err(err) => Err(shared_failure(err)),
                });
            }
        }
    }
}

/// [`FEED`], opened once per transaction (opening a table is not free, and a fan-out inserts into
/// hundreds of feeds), with the limits its writes keep.
struct FeedTable<'t> {
    rows: redb::Table<'t, (u64, u64, u64), (u64, u64)>,
    limits: FeedLimits,
}

impl<'t> FeedTable<'t> {
    fn open(tx: &'t Tx<'_>, limits: FeedLimits) -> Result<Self, StoreError> {
        Ok(Self {
            rows: tx.open_table(FEED)?,
            limits,
        })
    }

    fn len(&self, user: u64) -> Result<u64, StoreError> {
        Ok(self.rows.get((user, LENGTH, 0))?.map_or(0, |l| l.value().0))
    }

    fn set_len(&mut self, user: u64, len: u64) -> Result<(), StoreError> {
        self.rows.insert((user, LENGTH, 0), (len, 0))?;
        Ok(())
    }

    /// Inserts into one feed (replacing an entry of the same tweet), keeping the length exact;
    /// a feed more than the slack over its cap is cut back to the cap (its oldest entries share
    /// a page or two, so cutting many at once costs about what cutting one did). Returns whether
    /// the entry is new to the feed.
    fn insert(&mut self, user: u64, entry: FeedEntry) -> Result<bool, StoreError> {
        if self
            .rows
            .insert((user, ENTRIES, entry.tweet_id), feed_value(entry))?
            .is_some()
        {
            return Ok(false);
        }
        let mut len = self.len(user)? + 1;
        let cap = self.limits.feed_len as u64;
        if len > cap + self.limits.trim_slack as u64 {
            let oldest: Vec<u64> = self
                .rows
                .range((user, ENTRIES, 0)..=(user, ENTRIES, u64::MAX))?
                .take((len - cap) as usize)
                .map(|row| Ok(row?.0.value().2))
                .collect::<Result<_, StoreError>>()?;
            for tweet in oldest {
                self.rows.remove((user, ENTRIES, tweet))?;
                len -= 1;
            }
        }
        self.set_len(user, len)?;
        Ok(true)
    }

    /// Removes `tweets` from one feed, keeping the length exact.
    fn remove(&mut self, user: u64, tweets: &[u64]) -> Result<(), StoreError> {
        let mut removed = 0;
        for &tweet in tweets {
            removed += u64::from(self.rows.remove((user, ENTRIES, tweet))?.is_some());
        }
        if removed > 0 {
            let len = self.len(user)?;
            self.set_len(user, len.saturating_sub(removed))?;
        }
        Ok(())
    }

    /// Logs `entry`'s arrival in `user`'s feed at `at_ms`, and forgets the user's arrivals
    /// older than [`FeedLimits::arrivals_kept`] (a seek to the end of the feed's arrivals:
    /// usually nothing to remove).
    fn log_arrival(&mut self, user: u64, entry: FeedEntry, at_ms: i64) -> Result<(), StoreError> {
        self.rows
            .insert(arrival_key(user, at_ms, entry.tweet_id), feed_value(entry))?;
        let kept = self.limits.arrivals_kept.as_millis() as i64;
        let cutoff = at_ms.saturating_sub(kept);
        if cutoff <= 0 {
            return Ok(());
        }
        // Arrivals before the cutoff: every key past the cutoff's first.
        let first_expired = arrival_key(user, cutoff - 1, u64::MAX);
        let expired: Vec<(u64, u64, u64)> = self
            .rows
            .range(first_expired..=(user, u64::MAX, u64::MAX))?
            .map(|row| Ok(row?.0.value()))
            .collect::<Result<_, StoreError>>()?;
        for key in expired {
            self.rows.remove(key)?;
        }
        Ok(())
    }

    /// Empties `user`'s feed and its arrivals.
    fn drop_feed(&mut self, user: u64) -> Result<(), StoreError> {
        self.rows
            .retain_in((user, 0, 0)..=(user, u64::MAX, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

/// Moves the rows of the three-table feed layout ([`before_feed`]) into [`FEED`], once: the
/// old tables are deleted in the same transaction.
fn migrate_feed_layout(tx: &Tx<'_>) -> Result<(), StoreError> {
    let mut feed = tx.open_table(FEED)?;
    {
        let feeds = tx.open_table(before_feed::FEEDS)?;
        for row in feeds.iter()? {
            let (key, value) = row?;
            let (user, tweet) = key.value();
            feed.insert((user, ENTRIES, tweet), value.value())?;
        }
        let lengths = tx.open_table(before_feed::LENGTHS)?;
        for row in lengths.iter()? {
            let (user, len) = row?;
            feed.insert((user.value(), LENGTH, 0), (len.value(), 0))?;
        }
        let arrivals = tx.open_table(before_feed::ARRIVALS)?;
        for row in arrivals.iter()? {
            let (key, value) = row?;
            let (user, at_ms, tweet) = key.value();
            feed.insert(arrival_key(user, at_ms, tweet), value.value())?;
        }
    }
    tx.delete_table(before_feed::FEEDS)?;
    tx.delete_table(before_feed::LENGTHS)?;
    tx.delete_table(before_feed::ARRIVALS)?;
    Ok(())
}

/// `err`, for each of the fan-outs a combined write failed for: as transient or as permanent.
fn shared_failure(err: &StoreError) -> StoreError {
    match err {
        StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
        other => StoreError::backend(std::io::Error::other(other.to_string())),
    }
}

/// The [`FEED`] row value of an entry (or of its arrival): the inverse of [`feed_entry`].
fn feed_value(entry: FeedEntry) -> (u64, u64) {
    (entry.author_id, entry.retweeted_by.unwrap_or(0))
}

/// The [`FeedEntry`] of a [`FEED`] row's value.
fn feed_entry(tweet_id: u64, (author_id, retweeted_by): (u64, u64)) -> FeedEntry {
    FeedEntry {
        tweet_id,
        author_id,
        retweeted_by: (retweeted_by != 0).then_some(retweeted_by),
    }
}

/// Lists a notification, keeping the length counter exact and trimming the oldest past the cap
/// (within the slack), as [`FeedTables::insert`] does for feeds.
fn list_notification(
    tx: &Tx<'_>,
    limits: FeedLimits,
    recipient: u64,
    item: Notification,
) -> Result<(), StoreError> {
    let mut listed = tx.open_table(NOTIFICATIONS)?;
    let value = (item.kind.code(), item.actor, item.tweet_id);
    if listed.insert((recipient, item.id), value)?.is_some() {
        return Ok(());
    }
    let mut lengths = tx.open_table(NOTIFICATION_LENGTHS)?;
    let mut len = lengths.get(recipient)?.map_or(0, |l| l.value()) + 1;
    let (cap, slack) = (limits.notifications_len as u64, limits.trim_slack as u64);
    if len > cap + slack {
        let oldest: Vec<(u64, u64)> = listed
            .range((recipient, 0)..=(recipient, u64::MAX))?
            .take((len - cap) as usize)
            .map(|row| Ok(row?.0.value()))
            .collect::<Result<_, StoreError>>()?;
        for key in oldest {
            listed.remove(key)?;
            len -= 1;
        }
    }
    lengths.insert(recipient, len)?;
    Ok(())
}

/// Removes notifications `ids` of `recipient` (absent ones are fine), keeping the count exact.
fn unlist_notifications(tx: &Tx<'_>, recipient: u64, ids: &[u64]) -> Result<(), StoreError> {
    let mut listed = tx.open_table(NOTIFICATIONS)?;
    let mut removed = 0;
    for &id in ids {
        removed += u64::from(listed.remove((recipient, id))?.is_some());
    }
    if removed > 0 {
        let mut lengths = tx.open_table(NOTIFICATION_LENGTHS)?;
        let len = lengths.get(recipient)?.map_or(0, |l| l.value());
        lengths.insert(recipient, len.saturating_sub(removed))?;
    }
    Ok(())
}

fn notification_of(
    id: u64,
    (kind, actor, tweet_id): (u8, u64, u64),
) -> Result<Notification, StoreError> {
    let kind = NotificationKind::from_code(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("notification kind {kind}")))?;
    Ok(Notification {
        id,
        kind,
        actor,
        tweet_id,
    })
}

fn keys_in<V: redb::Value + 'static>(
    table: &impl redb::ReadableTable<(u64, u64), V>,
    partition: u64,
) -> Result<Vec<u64>, StoreError> {
    table
        .range((partition, 0)..=(partition, u64::MAX))?
        .map(|row| Ok(row?.0.value().1))
        .collect()
}

/// Keeps the newest `keep` rows of `partition` in `table`.
fn trim<V: redb::Value + 'static>(
    table: &mut redb::Table<(u64, u64), V>,
    partition: u64,
    keep: usize,
) -> Result<(), StoreError> {
    let ids = keys_in(table, partition)?;
    for old in ids.iter().take(ids.len().saturating_sub(keep)) {
        table.remove((partition, *old))?;
    }
    Ok(())
}

#[async_trait]
impl FeedStore for EmbeddedFeedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    async fn set_edge(
        &self,
        follower: u64,
        followee: u64,
        following: bool,
        version: u64,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                let mut edges = tx.open_table(EDGES)?;
                if let Some(stored) = edges.get((followee, follower))? {
                    let (_, latest) = stored.value();
                    if latest > version {
                        return Ok(false);
                    }
                }
                edges.insert((followee, follower), (following, version))?;
                let mut followers = tx.open_table(FOLLOWERS)?;
                if following {
                    followers.insert((followee, follower), ())?;
                } else {
                    followers.remove((followee, follower))?;
                }
                Ok(true)
            })
            .await
    }

    async fn edges(&self, pairs: Vec<(u64, u64)>) -> Result<Vec<bool>, StoreError> {
        self.db
            .read(move |txn| {
                let followers = txn.open_table(FOLLOWERS)?;
                pairs
                    .into_iter()
                    .map(|(follower, followee)| Ok(followers.get((followee, follower))?.is_some()))
                    .collect()
            })
            .await
    }

    async fn followers(
        &self,
        author: u64,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                let followers = txn.open_table(FOLLOWERS)?;
                let from = after.map_or(0, |a| a.saturating_add(1));
                if after == Some(u64::MAX) {
                    return Ok(Vec::new());
                }
                followers
                    .range((author, from)..=(author, u64::MAX))?
                    .take(max)
                    .map(|row| Ok(row?.0.value().1))
                    .collect()
            })
            .await
    }

    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<bool, StoreError> {
        let keep = self.limits.recent_per_author;
        self.db
            .write(move |tx| {
                if tx.open_table(DELETED)?.get(tweet)?.is_some() {
                    return Ok(false);
                }
                let mut recent = tx.open_table(RECENT)?;
                recent.insert((author, tweet), ())?;
                trim(&mut recent, author, keep)?;
                Ok(true)
            })
            .await
    }

    async fn recent_tweets(&self, author: u64) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                let mut ids = keys_in(&txn.open_table(RECENT)?, author)?;
                ids.reverse();
                Ok(ids)
            })
            .await
    }

    async fn delete_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                tx.open_table(DELETED)?.insert(tweet, author)?;
                tx.open_table(RECENT)?.remove((author, tweet))?;
                Ok(())
            })
            .await
    }

    async fn deleted(&self, tweets: Vec<u64>) -> Result<Vec<bool>, StoreError> {
        self.db
            .read(move |txn| {
                let deleted = txn.open_table(DELETED)?;
                tweets
                    .into_iter()
                    .map(|tweet| Ok(deleted.get(tweet)?.is_some()))
                    .collect()
            })
            .await
    }

    async fn set_retweet(
        &self,
        user: u64,
        tweet: u64,
        author: u64,
        active: bool,
        version: u64,
    ) -> Result<bool, StoreError> {
        let keep = self.limits.recent_per_author;
        self.db
            .write(move |tx| {
                let mut retweets = tx.open_table(RETWEETS)?;
                if let Some(stored) = retweets.get((user, tweet))? {
                    let (_, latest, _) = stored.value();
                    if latest > version {
                        return Ok(false);
                    }
                }
                retweets.insert((user, tweet), (active, version, author))?;
                let mut retweeters = tx.open_table(RETWEETERS)?;
                let mut recent = tx.open_table(RECENT_RETWEETS)?;
                if active {
                    retweeters.insert((tweet, user), ())?;
                    recent.insert((user, tweet), author)?;
                    trim(&mut recent, user, keep)?;
                } else {
                    retweeters.remove((tweet, user))?;
                    recent.remove((user, tweet))?;
                }
                Ok(true)
            })
            .await
    }

    async fn retweeters(&self, tweet: u64, max: usize) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                let mut users = keys_in(&txn.open_table(RETWEETERS)?, tweet)?;
                users.truncate(max);
                Ok(users)
            })
            .await
    }

    async fn recent_retweets(&self, user: u64) -> Result<Vec<FeedEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let recent = txn.open_table(RECENT_RETWEETS)?;
                let mut entries = Vec::new();
                for row in recent.range((user, 0)..=(user, u64::MAX))?.rev() {
                    let (key, author) = row?;
                    entries.push(FeedEntry {
                        tweet_id: key.value().1,
                        author_id: author.value(),
                        retweeted_by: Some(user),
                    });
                }
                Ok(entries)
            })
            .await
    }

    async fn set_celebrity(&self, author: u64, celebrity: bool) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut celebrities = tx.open_table(CELEBRITIES)?;
                if celebrity {
                    celebrities.insert(author, ())?;
                } else {
                    celebrities.remove(author)?;
                }
                Ok(())
            })
            .await
    }

    async fn celebrities(&self) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                txn.open_table(CELEBRITIES)?
                    .iter()?
                    .map(|row| Ok(row?.0.value()))
                    .collect()
            })
            .await
    }

    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError> {
        let limits = self.limits;
        self.db
            .write(move |tx| {
                let mut feed = FeedTable::open(tx, limits)?;
                for entry in entries {
                    feed.insert(user, entry)?;
                }
                Ok(())
            })
            .await
    }

    /// Fan-outs that arrive while one is being written wait and are then written together, in
    /// one transaction sorted by feed: every fan-out costs a commit of its own otherwise, and
    /// two fan-outs reaching one feed rewrite its page once.
    async fn fan_out(
        &self,
        users: Vec<u64>,
        entry: FeedEntry,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let start = {
            let mut state = self
                .fan_outs
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            state.waiting.push(FanOut {
                users,
                entry,
                at_ms,
                done,
            });
            !std::mem::replace(&mut state.writing, true)
        };
        if start {
            // A task of its own, so that no caller's cancellation strands the others.
            tokio::spawn(Self::write_fan_outs(
                self.db.clone(),
                self.limits,
                self.fan_outs.clone(),
            ));
        }
        written.await.unwrap_or_else(|_| {
            Err(StoreError::backend(std::io::Error::other(
                "the fan-out writer stopped",
            )))
        })
    }

    async fn arrivals(
        &self,
        user: u64,
        after: (i64, u64),
        max: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        self.db
            .read(move |txn| {
                let rows = txn.open_table(FEED)?;
                // Newest first in the table: what came after `after` is before its key.
                let first = (user, ARRIVED, 0);
                let rows = if after.0 < 0 {
                    rows.range(first..=(user, u64::MAX, u64::MAX))?
                } else {
                    rows.range(first..arrival_key(user, after.0, after.1))?
                };
                rows.rev()
                    .take(max)
                    .map(|row| {
                        let (key, value) = row?;
                        let (at_ms, tweet_id) = arrival_of(key.value());
                        Ok(Arrival {
                            at_ms,
                            entry: feed_entry(tweet_id, value.value()),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn remove_entries(&self, user: u64, tweets: Vec<u64>) -> Result<(), StoreError> {
        if tweets.is_empty() {
            return Ok(());
        }
        let limits = self.limits;
        self.db
            .write(move |tx| FeedTable::open(tx, limits)?.remove(user, &tweets))
            .await
    }

    async fn entries_via(&self, user: u64, who: u64) -> Result<Vec<FeedEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let rows = txn.open_table(FEED)?;
                let mut found = Vec::new();
                for row in rows.range((user, ENTRIES, 0)..=(user, ENTRIES, u64::MAX))? {
                    let (key, value) = row?;
                    let entry = feed_entry(key.value().2, value.value());
                    if entry.author_id == who || entry.retweeted_by == Some(who) {
                        found.push(entry);
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn drop_feed(&self, user: u64) -> Result<(), StoreError> {
        let limits = self.limits;
        self.db
            .write(move |tx| FeedTable::open(tx, limits)?.drop_feed(user))
            .await
    }

    async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let rows = txn.open_table(FEED)?;
                let upper = page.before.unwrap_or(u64::MAX);
                let take = page.limit.get() + 1;
                let lower = match page.since {
                    Some(since) => since.saturating_add(1),
                    None => 0,
                };
                if lower >= upper {
                    return Ok(Page::from_scan(&page, Vec::new(), |e: &FeedEntry| {
                        e.tweet_id
                    }));
                }
                let range = rows.range((user, ENTRIES, lower)..(user, ENTRIES, upper))?;
                type Row<'a> = (
                    redb::AccessGuard<'a, (u64, u64, u64)>,
                    redb::AccessGuard<'a, (u64, u64)>,
                );
                let entry = |row: Result<Row<'_>, redb::StorageError>| {
                    let (key, value) = row?;
                    Ok::<_, StoreError>(feed_entry(key.value().2, value.value()))
                };
                // Newest first, or (polling with `since`) oldest first: as `scan_page` reads.
                let entries: Vec<FeedEntry> = if page.since.is_some() {
                    range.take(take).map(entry).collect::<Result<_, _>>()?
                } else {
                    range
                        .rev()
                        .take(take)
                        .map(entry)
                        .collect::<Result<_, _>>()?
                };
                Ok(Page::from_scan(&page, entries, |e| e.tweet_id))
            })
            .await
    }

    async fn set_notification(
        &self,
        key: NotificationKey,
        version: u64,
        id: Option<u64>,
    ) -> Result<(), StoreError> {
        let limits = self.limits;
        self.db
            .write(move |tx| {
                let mut keys = tx.open_table(NOTIFICATION_KEYS)?;
                let k = (key.recipient, key.kind.code(), key.actor, key.tweet_id);
                let stored = keys.get(k)?.map(|v| v.value());
                if stored.is_some_and(|(latest, _)| latest >= version) {
                    return Ok(()); // stale, or a repeat of the latest
                }
                keys.insert(k, (version, id.unwrap_or(0)))?;
                drop(keys);
                if let Some((_, old)) = stored.filter(|&(_, old)| old != 0) {
                    unlist_notifications(tx, key.recipient, &[old])?;
                }
                if let Some(id) = id {
                    let item = Notification {
                        id,
                        kind: key.kind,
                        actor: key.actor,
                        tweet_id: key.tweet_id,
                    };
                    list_notification(tx, limits, key.recipient, item)?;
                }
                Ok(())
            })
            .await
    }

    async fn remove_tweet_notifications(
        &self,
        recipient: u64,
        tweet: u64,
    ) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut ids = Vec::new();
                for row in tx
                    .open_table(NOTIFICATIONS)?
                    .range((recipient, 0)..=(recipient, u64::MAX))?
                {
                    let (key, value) = row?;
                    if value.value().2 == tweet {
                        ids.push(key.value().1);
                    }
                }
                unlist_notifications(tx, recipient, &ids)
            })
            .await
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
        self.db
            .read(move |txn| {
                let listed = txn.open_table(NOTIFICATIONS)?;
                let mut items = Vec::new();
                for id in scan_page(&listed, recipient, &page)? {
                    if let Some(value) = listed.get((recipient, id))? {
                        items.push(notification_of(id, value.value())?);
                    }
                }
                Ok(Page::from_scan(&page, items, |n| n.id))
            })
            .await
    }

    async fn notification_state(&self, recipient: u64) -> Result<NotificationState, StoreError> {
        self.db
            .read(move |txn| {
                let read_up_to = txn
                    .open_table(NOTIFICATION_READS)?
                    .get(recipient)?
                    .map_or(0, |v| v.value());
                if read_up_to == u64::MAX {
                    return Ok(NotificationState {
                        read_up_to,
                        unread: 0,
                    });
                }
                let unread = txn
                    .open_table(NOTIFICATIONS)?
                    .range((recipient, read_up_to + 1)..=(recipient, u64::MAX))?
                    .count() as u64;
                Ok(NotificationState { read_up_to, unread })
            })
            .await
    }

    async fn mark_notifications_read(
        &self,
        recipient: u64,
        up_to: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.db
            .write(move |tx| {
                let up_to = match up_to {
                    Some(up_to) => up_to,
                    None => tx
                        .open_table(NOTIFICATIONS)?
                        .range((recipient, 0)..=(recipient, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map_or(0, |(key, _)| key.value().1),
                };
                let mut reads = tx.open_table(NOTIFICATION_READS)?;
                let current = reads.get(recipient)?.map_or(0, |v| v.value());
                if up_to > current {
                    reads.insert(recipient, up_to)?;
                }
                Ok(up_to.max(current))
            })
            .await
    }

    async fn drop_notifications(&self, recipient: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let ids = keys_in(&tx.open_table(NOTIFICATIONS)?, recipient)?;
                unlist_notifications(tx, recipient, &ids)?;
                tx.open_table(NOTIFICATION_LENGTHS)?.remove(recipient)?;
                tx.open_table(NOTIFICATION_READS)?.remove(recipient)?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::conformance;

    /// An embedded store with the suite's small limits, so caps are reached quickly.
    async fn open_embedded() -> (Arc<dyn FeedStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feeds.redb");
        let store = EmbeddedFeedStore::open(&path, conformance::LIMITS).expect("open store");
        (Arc::new(store), dir)
    }

    crate::feed_store_conformance!(open_embedded);

    /// A feed's arrivals older than `arrivals_kept` (by the newest arrival's clock) are
    /// forgotten as new ones come, in that feed only; the feed's entries stay.
    #[tokio::test]
    async fn arrivals_past_their_keeping_are_forgotten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kept = std::time::Duration::from_secs(60);
        let limits = FeedLimits {
            arrivals_kept: kept,
            ..FeedLimits::default()
        };
        let store = EmbeddedFeedStore::open(&dir.path().join("feeds.redb"), limits).expect("open");
        let (user, other, at) = (7, 8, 1_700_000_000_000);
        let entry = |tweet_id| FeedEntry {
            tweet_id,
            author_id: 9,
            retweeted_by: None,
        };
        store
            .fan_out(vec![user, other], entry(1), at)
            .await
            .unwrap();
        store.fan_out(vec![user], entry(2), at + 1).await.unwrap();
        // 60 s after the second: the first (61 s old) goes, the second (60 s old) stays.
        let later = at + 1 + kept.as_millis() as i64;
        store.fan_out(vec![user], entry(3), later).await.unwrap();
        let arrived = |user| {
            let store = &store;
            async move {
                let arrivals = store.arrivals(user, (0, 0), 10).await.unwrap();
                arrivals
                    .iter()
                    .map(|a| a.entry.tweet_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(arrived(user).await, [2, 3]);
        assert_eq!(arrived(other).await, [1]);
        let first = PageRequest::first(twtr_common::Limit::parse(Some(10)).unwrap());
        let feed = store.feed(user, first).await.unwrap();
        assert_eq!(feed.items.len(), 3);
    }

    /// A file written in the three-table layout opens with its feeds, lengths and arrivals in
    /// [`FEED`], and the old tables gone.
    #[tokio::test]
    async fn the_three_table_feed_layout_is_migrated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feeds.redb");
        let (user, author, at) = (7, 9, 1_700_000_000_000);
        {
            let db = redb::Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut feeds = tx.open_table(before_feed::FEEDS).expect("feeds");
                let mut lengths = tx.open_table(before_feed::LENGTHS).expect("lengths");
                let mut arrivals = tx.open_table(before_feed::ARRIVALS).expect("arrivals");
                for tweet in [101, 102, 103] {
                    feeds.insert((user, tweet), (author, 0)).expect("entry");
                    arrivals
                        .insert((user, at + tweet as i64, tweet), (author, 0))
                        .expect("arrival");
                }
                feeds.insert((user, 104), (author, 5)).expect("retweet");
                lengths.insert(user, 4).expect("length");
            }
            tx.commit().expect("commit");
        }
        let limits = FeedLimits {
            feed_len: 4,
            trim_slack: 0,
            ..FeedLimits::default()
        };
        let store = EmbeddedFeedStore::open(&path, limits).expect("open");
        let first = PageRequest::first(twtr_common::Limit::parse(Some(10)).unwrap());
        let ids = |page: Page<FeedEntry>| page.items.iter().map(|e| e.tweet_id).collect::<Vec<_>>();
        let feed = store.feed(user, first).await.expect("feed");
        assert_eq!(feed.items[0].retweeted_by, Some(5));
        assert_eq!(ids(feed), [104, 103, 102, 101]);
        let arrived = store.arrivals(user, (0, 0), 10).await.expect("arrivals");
        let arrived: Vec<_> = arrived
            .iter()
            .map(|a| (a.at_ms, a.entry.tweet_id))
            .collect();
        assert_eq!(arrived, [(at + 101, 101), (at + 102, 102), (at + 103, 103)]);
        // The migrated length is the one trimming counts from: a fifth entry cuts the oldest.
        let entry = FeedEntry {
            tweet_id: 105,
            author_id: author,
            retweeted_by: None,
        };
        store
            .insert_entries(user, vec![entry])
            .await
            .expect("insert");
        let feed = store.feed(user, first).await.expect("feed");
        assert_eq!(ids(feed), [105, 104, 103, 102]);
        drop(store);
        let db = redb::Database::create(&path).expect("reopen");
        use redb::{ReadableDatabase as _, TableHandle as _};
        let txn = db.begin_read().expect("read");
        let tables: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_owned())
            .collect();
        for old in ["feeds", "feed_lengths", "feed_arrivals"] {
            assert!(
                !tables.contains(&old.to_owned()),
                "{old} is still there: {tables:?}"
            );
        }
    }
}
