//! Where tweets live. Domain code sees only [`TweetStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`TweetStore`] trait and the record it stores.
//! - [`embedded`]: [`EmbeddedTweetStore`], tweets in a redb file (one transaction per write).
//! - [`cql`]: [`CqlTweetStore`], tweets on ScyllaDB / Cassandra (the tweet ID claimed by a
//!   lightweight transaction, then one logged batch for its timeline rows and its event, then the
//!   author's count moved once through a ledger).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`tweet_store_conformance!`](crate::tweet_store_conformance).

pub mod conformance;
pub mod cql;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::outbox::Outbox;
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};
use twtr_proto::events::v1::Envelope;

pub use cql::CqlTweetStore;
pub use embedded::EmbeddedTweetStore;

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
    /// The outbox that `create` stages events into.
    fn outbox(&self) -> Arc<dyn Outbox>;
}
