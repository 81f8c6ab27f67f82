//! Feeds and the projections they are built from. Domain code sees only [`FeedStore`]; every
//! backend must pass [`conformance`].
//!
//! Every method is idempotent, because every event may be delivered more than once.
//!
//! # Layout
//!
//! - this module: the [`FeedStore`] trait, [`FeedEntry`] and [`FeedLimits`].
//! - [`embedded`]: [`EmbeddedFeedStore`], feeds in a redb file (one transaction per write, with
//!   an exact length per feed).
//! - [`cql`]: [`CqlFeedStore`], feeds on ScyllaDB / Cassandra (idempotent upserts, then a trim
//!   that reads the newest `cap + 1` IDs and range-deletes below the cap).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`feed_store_conformance!`](crate::feed_store_conformance).

pub mod conformance;
pub mod cql;
pub mod embedded;

use async_trait::async_trait;
use twtr_common::store::StoreError;
use twtr_common::{Page, PageRequest};

pub use cql::CqlFeedStore;
pub use embedded::EmbeddedFeedStore;

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
    /// Everyone following `author`, per this service's copy of the graph, in ascending ID order.
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
