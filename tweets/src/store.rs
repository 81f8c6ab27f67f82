//! Where tweets live. Domain code sees only [`TweetStore`]; [`EmbeddedTweetStore`] is the
//! embedded backend (redb), and every backend must pass [`conformance`].

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

/// A stored tweet. Encoded with protobuf so fields can be added without a migration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TweetRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub author_id: u64,
    #[prost(string, tag = "3")]
    pub text: String,
    #[prost(int64, tag = "4")]
    pub created_at_ms: i64,
    #[prost(uint64, tag = "5")]
    pub like_count: u64,
    #[prost(uint64, tag = "6")]
    pub retweet_count: u64,
}

#[async_trait]
pub trait TweetStore: Send + Sync {
    /// Stores the tweet, its place in the author's timeline, the author's tweet count and
    /// `event`, atomically. Storing the same tweet ID again changes nothing.
    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<(), StoreError>;
    async fn get(&self, id: u64) -> Result<Option<TweetRecord>, StoreError>;
    /// The tweets that exist among `ids`, in the order given.
    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<TweetRecord>, StoreError>;
    /// One page of an author's tweets, newest first.
    async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError>;
    /// How many tweets each author has (0 for unknown authors), in the order given.
    async fn count_by_authors(&self, author_ids: Vec<u64>) -> Result<Vec<u64>, StoreError>;
    fn outbox(&self) -> Arc<dyn Outbox>;
}

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

/// The behaviour every [`TweetStore`] backend must show. Backends invoke
/// [`tweet_store_conformance!`](crate::tweet_store_conformance) in their tests.
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report
pub mod conformance {
    use twtr_common::Limit;

    use super::*;

    #[macro_export]
    macro_rules! tweet_store_conformance {
        ($open:path) => {
            mod tweet_store_conformance {
                use super::*;
                twtr_common::conformance_tests!($open => $crate::store::conformance:
                    creates_reads_and_counts,
                    creating_twice_is_harmless,
                    author_timelines_page_newest_first,
                );
            }
        };
    }

    pub fn tweet(id: u64, author_id: u64) -> TweetRecord {
        TweetRecord {
            id,
            author_id,
            text: format!("tweet {id}"),
            created_at_ms: 1_700_000_000_000,
            like_count: 0,
            retweet_count: 0,
        }
    }

    pub fn event(id: u64) -> Envelope {
        Envelope {
            event_id: id,
            r#type: "tweets.tweet_created".to_owned(),
            aggregate_id: id,
            ..Envelope::default()
        }
    }

    pub async fn creates_reads_and_counts(store: Arc<dyn TweetStore>) {
        store.create(tweet(1, 7), event(101)).await.unwrap();
        store.create(tweet(2, 7), event(102)).await.unwrap();
        store.create(tweet(3, 8), event(103)).await.unwrap();
        assert_eq!(store.get(2).await.unwrap(), Some(tweet(2, 7)));
        assert_eq!(store.get(9).await.unwrap(), None);
        let found: Vec<u64> = store
            .get_many(vec![3, 9, 1])
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(found, vec![3, 1]);
        assert_eq!(
            store.count_by_authors(vec![7, 8, 9]).await.unwrap(),
            vec![2, 1, 0]
        );
        let staged = twtr_common::outbox::pending_ids(store.outbox().as_ref(), 10)
            .await
            .unwrap();
        assert_eq!(staged, vec![101, 102, 103]);
    }

    pub async fn creating_twice_is_harmless(store: Arc<dyn TweetStore>) {
        store.create(tweet(1, 7), event(101)).await.unwrap();
        store.create(tweet(1, 7), event(102)).await.unwrap();
        assert_eq!(store.count_by_authors(vec![7]).await.unwrap(), vec![1]);
        let staged = twtr_common::outbox::pending_ids(store.outbox().as_ref(), 10)
            .await
            .unwrap();
        assert_eq!(staged, vec![101]);
    }

    pub async fn author_timelines_page_newest_first(store: Arc<dyn TweetStore>) {
        for id in 1..=5 {
            store.create(tweet(id, 7), event(100 + id)).await.unwrap();
        }
        store.create(tweet(6, 8), event(106)).await.unwrap();
        let limit = Limit::parse(Some(2)).unwrap();
        let first = store
            .list_by_author(7, PageRequest::first(limit))
            .await
            .unwrap();
        assert_eq!(
            first.items.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![5, 4]
        );
        assert_eq!(first.next, Some(4));
        let request = PageRequest {
            before: first.next,
            since: None,
            limit,
        };
        let second = store.list_by_author(7, request).await.unwrap();
        assert_eq!(
            second.items.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![3, 2]
        );
        let request = PageRequest {
            before: second.next,
            since: None,
            limit,
        };
        let last = store.list_by_author(7, request).await.unwrap();
        assert_eq!(last.items.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(last.next, None);
        let newer = PageRequest {
            before: None,
            since: Some(3),
            limit,
        };
        let polled = store.list_by_author(7, newer).await.unwrap();
        assert_eq!(
            polled.items.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![5, 4]
        );
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
