//! The embedded backend of [`TweetStore`]: tweets in a redb file, each write one transaction
//! (the tweet, the author's timeline entry, the author's count and the outbox event together).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use twtr_common::embedded::{EmbeddedDb, scan_page};
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};
use twtr_proto::events::v1::Envelope;

use super::{TweetRecord, TweetStore};

const TWEETS: TableDefinition<u64, &[u8]> = TableDefinition::new("tweets");
/// (author, tweet) -> (): each author's timeline, scanned newest first.
const AUTHOR_TWEETS: TableDefinition<(u64, u64), ()> = TableDefinition::new("author_tweets");
/// Author -> number of tweets.
const TWEET_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("tweet_counts");

/// Tweets in a redb file (`tweets.redb` under the data directory).
#[derive(Debug, Clone)]
pub struct EmbeddedTweetStore {
    db: EmbeddedDb,
}

impl EmbeddedTweetStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(TWEETS)?;
            tx.open_table(AUTHOR_TWEETS)?;
            tx.open_table(TWEET_COUNTS)?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

fn read_many(
    tweets: &impl redb::ReadableTable<u64, &'static [u8]>,
    ids: impl IntoIterator<Item = u64>,
) -> Result<Vec<TweetRecord>, StoreError> {
    let mut found = Vec::new();
    for id in ids {
        if let Some(row) = tweets.get(id)? {
            found.push(TweetRecord::decode(row.value())?);
        }
    }
    Ok(found)
}

#[async_trait]
impl TweetStore for EmbeddedTweetStore {
    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut tweets = tx.open_table(TWEETS)?;
                if tweets.get(tweet.id)?.is_some() {
                    return Ok(());
                }
                tweets.insert(tweet.id, tweet.encode_to_vec().as_slice())?;
                tx.open_table(AUTHOR_TWEETS)?
                    .insert((tweet.author_id, tweet.id), ())?;
                let mut counts = tx.open_table(TWEET_COUNTS)?;
                let count = counts.get(tweet.author_id)?.map_or(0, |c| c.value());
                counts.insert(tweet.author_id, count + 1)?;
                tx.stage_event(&event)?;
                Ok(())
            })
            .await
    }

    async fn get(&self, id: u64) -> Result<Option<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| Ok(read_many(&txn.open_table(TWEETS)?, [id])?.pop()))
            .await
    }

    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| read_many(&txn.open_table(TWEETS)?, ids))
            .await
    }

    async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        self.db
            .read(move |txn| {
                let ids = scan_page(&txn.open_table(AUTHOR_TWEETS)?, author_id, &page)?;
                let tweets = read_many(&txn.open_table(TWEETS)?, ids)?;
                Ok(Page::from_scan(&page, tweets, |t| t.id))
            })
            .await
    }

    async fn count_by_authors(&self, author_ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.db
            .read(move |txn| {
                let counts = txn.open_table(TWEET_COUNTS)?;
                author_ids
                    .into_iter()
                    .map(|id| Ok(counts.get(id)?.map_or(0, |c| c.value())))
                    .collect()
            })
            .await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(self.db.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_embedded() -> (Arc<dyn TweetStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedTweetStore::open(&dir.path().join("tweets.redb")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::tweet_store_conformance!(open_embedded);
}
