//! [`EmbeddedFeedStore`]: feeds in a redb file. Each write is one transaction; a length per
//! feed is kept next to it so trimming to the cap never has to count.

use std::path::Path;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx, scan_page};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{
    Arrival, FeedEntry, FeedLimits, FeedStore, Notification, NotificationKey, NotificationKind,
    NotificationState,
};

/// (user, tweet) -> (author, retweeted by or 0): home feeds.
const FEEDS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("feeds");
/// User -> number of entries in their feed, to trim without counting.
const FEED_LENGTHS: TableDefinition<u64, u64> = TableDefinition::new("feed_lengths");
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

/// (user, arrived at in Unix ms, tweet) -> (author, retweeted by or 0): what fan-out wrote into
/// each feed, in arrival order, for [`FeedLimits::arrivals_kept`].
const ARRIVALS: TableDefinition<(u64, i64, u64), (u64, u64)> =
    TableDefinition::new("feed_arrivals");

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
}

impl EmbeddedFeedStore {
    pub fn open(path: &Path, limits: FeedLimits) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(FEEDS)?;
            tx.open_table(FEED_LENGTHS)?;
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
            tx.open_table(ARRIVALS)?;
            Ok(())
        })?;
        Ok(Self { db, limits })
    }
}

/// The two tables a feed insert touches, opened once per transaction (opening a table is not
/// free, and a fan-out chunk inserts into hundreds of feeds).
struct FeedTables<'t> {
    feeds: redb::Table<'t, (u64, u64), (u64, u64)>,
    lengths: redb::Table<'t, u64, u64>,
    cap: u64,
    slack: u64,
}

impl<'t> FeedTables<'t> {
    fn open(tx: &'t Tx<'_>, limits: FeedLimits) -> Result<Self, StoreError> {
        Ok(Self {
            feeds: tx.open_table(FEEDS)?,
            lengths: tx.open_table(FEED_LENGTHS)?,
            cap: limits.feed_len as u64,
            slack: limits.trim_slack as u64,
        })
    }

    /// Inserts into one feed (replacing an entry of the same tweet), keeping the length counter
    /// exact; a feed more than the slack over its cap is cut back to the cap (its oldest
    /// entries share a page or two, so cutting many at once costs about what cutting one did).
    /// Returns whether the entry is new to the feed.
    fn insert(&mut self, user: u64, entry: FeedEntry) -> Result<bool, StoreError> {
        let value = (entry.author_id, entry.retweeted_by.unwrap_or(0));
        if self.feeds.insert((user, entry.tweet_id), value)?.is_some() {
            return Ok(false);
        }
        let mut len = self.lengths.get(user)?.map_or(0, |l| l.value()) + 1;
        if len > self.cap + self.slack {
            let oldest: Vec<(u64, u64)> = self
                .feeds
                .range((user, 0)..=(user, u64::MAX))?
                .take((len - self.cap) as usize)
                .map(|row| Ok(row?.0.value()))
                .collect::<Result<_, StoreError>>()?;
            for key in oldest {
                self.feeds.remove(key)?;
                len -= 1;
            }
        }
        self.lengths.insert(user, len)?;
        Ok(true)
    }
}

/// Logs `entry`'s arrival in `user`'s feed at `at_ms`, and forgets the user's arrivals older
/// than `kept` (a seek to the partition's start: usually nothing to remove).
fn log_arrival(
    arrivals: &mut redb::Table<'_, (u64, i64, u64), (u64, u64)>,
    user: u64,
    entry: FeedEntry,
    at_ms: i64,
    kept: std::time::Duration,
) -> Result<(), StoreError> {
    let value = (entry.author_id, entry.retweeted_by.unwrap_or(0));
    arrivals.insert((user, at_ms, entry.tweet_id), value)?;
    let cutoff = at_ms.saturating_sub(kept.as_millis() as i64);
    let expired: Vec<(u64, i64, u64)> = arrivals
        .range((user, i64::MIN, 0)..(user, cutoff, 0))?
        .map(|row| Ok(row?.0.value()))
        .collect::<Result<_, StoreError>>()?;
    for key in expired {
        arrivals.remove(key)?;
    }
    Ok(())
}

/// Removes `tweets` from one feed, keeping the length counter exact.
fn remove_from_feed(tx: &Tx<'_>, user: u64, tweets: &[u64]) -> Result<(), StoreError> {
    let mut feeds = tx.open_table(FEEDS)?;
    let mut removed = 0;
    for &tweet in tweets {
        removed += u64::from(feeds.remove((user, tweet))?.is_some());
    }
    if removed > 0 {
        let mut lengths = tx.open_table(FEED_LENGTHS)?;
        let len = lengths.get(user)?.map_or(0, |l| l.value());
        lengths.insert(user, len.saturating_sub(removed))?;
    }
    Ok(())
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
                let mut tables = FeedTables::open(tx, limits)?;
                for entry in entries {
                    tables.insert(user, entry)?;
                }
                Ok(())
            })
            .await
    }

    async fn fan_out(
        &self,
        users: Vec<u64>,
        entry: FeedEntry,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let limits = self.limits;
        self.db
            .write(move |tx| {
                let mut tables = FeedTables::open(tx, limits)?;
                let mut arrivals = tx.open_table(ARRIVALS)?;
                for user in users {
                    if tables.insert(user, entry)? {
                        log_arrival(&mut arrivals, user, entry, at_ms, limits.arrivals_kept)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn arrivals(
        &self,
        user: u64,
        after: (i64, u64),
        max: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        use std::ops::Bound;
        self.db
            .read(move |txn| {
                let arrivals = txn.open_table(ARRIVALS)?;
                let range = (
                    Bound::Excluded((user, after.0, after.1)),
                    Bound::Included((user, i64::MAX, u64::MAX)),
                );
                arrivals
                    .range::<(u64, i64, u64)>(range)?
                    .take(max)
                    .map(|row| {
                        let (key, value) = row?;
                        let ((_, at_ms, tweet_id), (author_id, retweeted_by)) =
                            (key.value(), value.value());
                        Ok(Arrival {
                            at_ms,
                            entry: FeedEntry {
                                tweet_id,
                                author_id,
                                retweeted_by: (retweeted_by != 0).then_some(retweeted_by),
                            },
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
        self.db
            .write(move |tx| remove_from_feed(tx, user, &tweets))
            .await
    }

    async fn entries_via(&self, user: u64, who: u64) -> Result<Vec<FeedEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let feeds = txn.open_table(FEEDS)?;
                let mut found = Vec::new();
                for row in feeds.range((user, 0)..=(user, u64::MAX))? {
                    let (key, value) = row?;
                    let (author_id, retweeted_by) = value.value();
                    if author_id == who || retweeted_by == who {
                        found.push(FeedEntry {
                            tweet_id: key.value().1,
                            author_id,
                            retweeted_by: (retweeted_by != 0).then_some(retweeted_by),
                        });
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn drop_feed(&self, user: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let tweets = keys_in(&tx.open_table(FEEDS)?, user)?;
                remove_from_feed(tx, user, &tweets)?;
                let mut arrivals = tx.open_table(ARRIVALS)?;
                let logged: Vec<(u64, i64, u64)> = arrivals
                    .range((user, i64::MIN, 0)..=(user, i64::MAX, u64::MAX))?
                    .map(|row| Ok(row?.0.value()))
                    .collect::<Result<_, StoreError>>()?;
                for key in logged {
                    arrivals.remove(key)?;
                }
                Ok(())
            })
            .await
    }

    async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let feeds = txn.open_table(FEEDS)?;
                let ids = scan_page(&feeds, user, &page)?;
                let mut entries = Vec::with_capacity(ids.len());
                for tweet_id in ids {
                    if let Some(value) = feeds.get((user, tweet_id))? {
                        let (author_id, retweeted_by) = value.value();
                        entries.push(FeedEntry {
                            tweet_id,
                            author_id,
                            retweeted_by: (retweeted_by != 0).then_some(retweeted_by),
                        });
                    }
                }
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
}
