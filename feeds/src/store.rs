//! Feeds and the projections they are built from. Domain code sees only [`FeedStore`];
//! [`EmbeddedFeedStore`] is the embedded backend (redb), and every backend must pass
//! [`conformance`].
//!
//! Every method is idempotent, because every event may be delivered more than once.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx, scan_page};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

/// One item of a home feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedEntry {
    pub tweet_id: u64,
    pub author_id: u64,
    /// Who retweeted it into this feed, for retweets.
    pub retweeted_by: Option<u64>,
}

/// Bounds that keep storage per user and per author fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Entries kept per home feed; the oldest fall off.
    pub feed_len: usize,
    /// Recent tweets remembered per author, for backfilling a new follower's feed.
    pub recent_per_author: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            feed_len: 800,
            recent_per_author: 50,
        }
    }
}

#[async_trait]
pub trait FeedStore: Send + Sync {
    /// Remembers that `author` posted `tweet` (keeping only their most recent ones).
    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError>;
    /// The author's remembered recent tweets, newest first.
    async fn recent_tweets(&self, author: u64) -> Result<Vec<u64>, StoreError>;
    /// Adds `follower` to this service's copy of `author`'s followers.
    async fn add_follower(&self, author: u64, follower: u64) -> Result<(), StoreError>;
    async fn remove_follower(&self, author: u64, follower: u64) -> Result<(), StoreError>;
    /// Everyone following `author`, per this service's copy of the graph.
    async fn followers(&self, author: u64) -> Result<Vec<u64>, StoreError>;
    /// Puts `entries` into `user`'s feed, trimming it to its cap.
    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError>;
    /// Puts `entry` into each of `users`' feeds.
    async fn fan_out(&self, users: Vec<u64>, entry: FeedEntry) -> Result<(), StoreError>;
    /// Removes every entry by `author` from `user`'s feed.
    async fn remove_author(&self, user: u64, author: u64) -> Result<(), StoreError>;
    /// One page of `user`'s feed, newest first.
    async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, StoreError>;
}

/// (user, tweet) -> (author, retweeted by or 0): home feeds.
const FEEDS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("feeds");
/// User -> number of entries in their feed, to trim without counting.
const FEED_LENGTHS: TableDefinition<u64, u64> = TableDefinition::new("feed_lengths");
/// (author, follower) -> (): this service's copy of the follow graph.
const FOLLOWERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("followers");
/// (author, tweet) -> (): each author's recent tweets.
const RECENT: TableDefinition<(u64, u64), ()> = TableDefinition::new("recent_tweets");

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
            tx.open_table(FOLLOWERS)?;
            tx.open_table(RECENT)?;
            Ok(())
        })?;
        Ok(Self { db, limits })
    }
}

/// Inserts into one feed and trims it to `cap`, keeping the length counter exact.
fn insert_into_feed(
    tx: &Tx<'_>,
    user: u64,
    entry: FeedEntry,
    cap: usize,
) -> Result<(), StoreError> {
    let mut feeds = tx.open_table(FEEDS)?;
    let value = (entry.author_id, entry.retweeted_by.unwrap_or(0));
    if feeds.insert((user, entry.tweet_id), value)?.is_some() {
        return Ok(());
    }
    let mut lengths = tx.open_table(FEED_LENGTHS)?;
    let mut len = lengths.get(user)?.map_or(0, |l| l.value()) + 1;
    while len > cap as u64 {
        let oldest = match feeds.range((user, 0)..=(user, u64::MAX))?.next() {
            Some(row) => row?.0.value(),
            None => break,
        };
        feeds.remove(oldest)?;
        len -= 1;
    }
    lengths.insert(user, len)?;
    Ok(())
}

fn keys_in(
    table: &impl redb::ReadableTable<(u64, u64), ()>,
    partition: u64,
) -> Result<Vec<u64>, StoreError> {
    table
        .range((partition, 0)..=(partition, u64::MAX))?
        .map(|row| Ok(row?.0.value().1))
        .collect()
}

#[async_trait]
impl FeedStore for EmbeddedFeedStore {
    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError> {
        let keep = self.limits.recent_per_author;
        self.db
            .write(move |tx| {
                let mut recent = tx.open_table(RECENT)?;
                recent.insert((author, tweet), ())?;
                let ids = keys_in(&recent, author)?;
                for old in ids.iter().take(ids.len().saturating_sub(keep)) {
                    recent.remove((author, *old))?;
                }
                Ok(())
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

    async fn add_follower(&self, author: u64, follower: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                tx.open_table(FOLLOWERS)?.insert((author, follower), ())?;
                Ok(())
            })
            .await
    }

    async fn remove_follower(&self, author: u64, follower: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                tx.open_table(FOLLOWERS)?.remove((author, follower))?;
                Ok(())
            })
            .await
    }

    async fn followers(&self, author: u64) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| keys_in(&txn.open_table(FOLLOWERS)?, author))
            .await
    }

    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError> {
        let cap = self.limits.feed_len;
        self.db
            .write(move |tx| {
                for entry in entries {
                    insert_into_feed(tx, user, entry, cap)?;
                }
                Ok(())
            })
            .await
    }

    async fn fan_out(&self, users: Vec<u64>, entry: FeedEntry) -> Result<(), StoreError> {
        let cap = self.limits.feed_len;
        self.db
            .write(move |tx| {
                for user in users {
                    insert_into_feed(tx, user, entry, cap)?;
                }
                Ok(())
            })
            .await
    }

    async fn remove_author(&self, user: u64, author: u64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut feeds = tx.open_table(FEEDS)?;
                let doomed: Vec<u64> = feeds
                    .range((user, 0)..=(user, u64::MAX))?
                    .filter_map(|row| match row {
                        Ok((key, value)) => (value.value().0 == author).then(|| Ok(key.value().1)),
                        Err(err) => Some(Err(err)),
                    })
                    .collect::<Result<_, _>>()?;
                if doomed.is_empty() {
                    return Ok(());
                }
                for tweet in &doomed {
                    feeds.remove((user, *tweet))?;
                }
                let mut lengths = tx.open_table(FEED_LENGTHS)?;
                let len = lengths.get(user)?.map_or(0, |l| l.value());
                lengths.insert(user, len.saturating_sub(doomed.len() as u64))?;
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
}

/// The behaviour every [`FeedStore`] backend must show. Backends invoke
/// [`feed_store_conformance!`](crate::feed_store_conformance) with a function that opens a
/// fresh store with [`conformance::LIMITS`].
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report
pub mod conformance {
    use twtr_common::Limit;

    use super::*;

    #[macro_export]
    macro_rules! feed_store_conformance {
        ($open:path) => {
            mod feed_store_conformance {
                use super::*;
                twtr_common::conformance_tests!($open => $crate::store::conformance:
                    feeds_are_idempotent_and_newest_first,
                    feeds_are_capped,
                    recent_tweets_are_capped_newest_first,
                    follower_projection_and_author_removal,
                );
            }
        };
    }

    pub const LIMITS: FeedLimits = FeedLimits {
        feed_len: 3,
        recent_per_author: 2,
    };

    pub fn entry(tweet_id: u64, author_id: u64) -> FeedEntry {
        FeedEntry {
            tweet_id,
            author_id,
            retweeted_by: None,
        }
    }

    async fn ids(store: &Arc<dyn FeedStore>, user: u64) -> Vec<u64> {
        let page = store
            .feed(user, PageRequest::first(Limit::DEFAULT))
            .await
            .unwrap();
        page.items.iter().map(|e| e.tweet_id).collect()
    }

    pub async fn feeds_are_idempotent_and_newest_first(store: Arc<dyn FeedStore>) {
        store.fan_out(vec![1, 2], entry(10, 9)).await.unwrap();
        store.fan_out(vec![1, 2], entry(10, 9)).await.unwrap();
        store
            .insert_entries(1, vec![entry(11, 9), entry(11, 9)])
            .await
            .unwrap();
        assert_eq!(ids(&store, 1).await, vec![11, 10]);
        assert_eq!(ids(&store, 2).await, vec![10]);
        let page = store
            .feed(1, PageRequest::first(Limit::DEFAULT))
            .await
            .unwrap();
        assert_eq!(page.items[0], entry(11, 9));
    }

    pub async fn feeds_are_capped(store: Arc<dyn FeedStore>) {
        for tweet in [10, 11, 12, 13, 14] {
            store.fan_out(vec![1], entry(tweet, 9)).await.unwrap();
        }
        // Re-delivering an entry that is still there must not push anything out.
        store.fan_out(vec![1], entry(14, 9)).await.unwrap();
        assert_eq!(ids(&store, 1).await, vec![14, 13, 12]);
        // Removal keeps the length exact: the feed fills back up to the cap, not beyond.
        store.remove_author(1, 9).await.unwrap();
        for tweet in [20, 21, 22, 23] {
            store.fan_out(vec![1], entry(tweet, 8)).await.unwrap();
        }
        assert_eq!(ids(&store, 1).await, vec![23, 22, 21]);
    }

    pub async fn recent_tweets_are_capped_newest_first(store: Arc<dyn FeedStore>) {
        for tweet in [10, 11, 12] {
            store.record_tweet(9, tweet).await.unwrap();
        }
        store.record_tweet(9, 12).await.unwrap();
        store.record_tweet(8, 5).await.unwrap();
        assert_eq!(store.recent_tweets(9).await.unwrap(), vec![12, 11]);
        assert_eq!(store.recent_tweets(8).await.unwrap(), vec![5]);
        assert!(store.recent_tweets(7).await.unwrap().is_empty());
    }

    pub async fn follower_projection_and_author_removal(store: Arc<dyn FeedStore>) {
        store.add_follower(9, 1).await.unwrap();
        store.add_follower(9, 1).await.unwrap();
        store.add_follower(9, 2).await.unwrap();
        assert_eq!(store.followers(9).await.unwrap(), vec![1, 2]);
        store.remove_follower(9, 1).await.unwrap();
        store.remove_follower(9, 1).await.unwrap();
        assert_eq!(store.followers(9).await.unwrap(), vec![2]);

        store
            .insert_entries(1, vec![entry(10, 9), entry(11, 8), entry(12, 9)])
            .await
            .unwrap();
        store.remove_author(1, 9).await.unwrap();
        store.remove_author(1, 9).await.unwrap();
        assert_eq!(ids(&store, 1).await, vec![11]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An embedded store with the suite's small limits, so caps are reached quickly.
    async fn open_embedded() -> (Arc<dyn FeedStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feeds.redb");
        let store = EmbeddedFeedStore::open(&path, conformance::LIMITS).expect("open store");
        (Arc::new(store), dir)
    }

    crate::feed_store_conformance!(open_embedded);
}
