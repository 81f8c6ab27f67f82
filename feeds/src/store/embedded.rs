//! [`EmbeddedFeedStore`]: feeds in a redb file. Each write is one transaction; a length per
//! feed is kept next to it so trimming to the cap never has to count.

use std::path::Path;

use async_trait::async_trait;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, Tx, scan_page};
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

use super::{FeedEntry, FeedLimits, FeedStore};

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
