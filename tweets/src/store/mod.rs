//! Where tweets live. Domain code sees only [`TweetStore`]; every backend must pass
//! [`conformance`].
//!
//! # Layout
//!
//! - this module: the [`TweetStore`] trait and the record it stores.
//! - [`embedded`]: [`EmbeddedTweetStore`], tweets in a redb file (one transaction per write).
//! - [`cql`]: [`CqlTweetStore`], tweets on ScyllaDB / Cassandra (a create is one logged batch
//!   with the tweet, its timeline rows, the author's count op and its event, no lightweight
//!   transaction; likes, retweets and deletions are decided by a lightweight transaction, then
//!   a batch (a deletion's with its count op), then (likes and retweets) a count op through a
//!   ledger, and a change that a crash cut short after its decision is finished by the next
//!   call on the same pair or tweet).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`tweet_store_conformance!`](crate::tweet_store_conformance).

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod cql;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{Page, PageRequest};
use twtr_proto::events::v1::Envelope;

pub use cql::CqlTweetStore;
pub use embedded::EmbeddedTweetStore;

/// Likes or retweets: the two ways a user reacts to a tweet, stored alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    Like,
    Retweet,
}

/// Writes the (user, tweet) pair's new `version` into a like's or retweet's event (or its
/// undoing): the store decides the version, in the same write that stages the event.
pub fn stamp_reaction_version(event: &mut Envelope, version: u64) {
    use twtr_proto::events::v1::envelope::Payload;
    match &mut event.payload {
        Some(Payload::TweetLiked(e)) => e.version = version,
        Some(Payload::TweetUnliked(e)) => e.version = version,
        Some(Payload::Retweeted(e)) => e.version = version,
        Some(Payload::Unretweeted(e)) => e.version = version,
        _ => {}
    }
}

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
    /// The users the text mentions, as resolved when it was posted.
    #[prost(message, repeated, tag = "7")]
    pub mentions: Vec<twtr_proto::tweets::v1::Mention>,
}

/// Who holds an author's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// Nobody within the window did: the key is now this call's, for this tweet ID.
    Won,
    /// An earlier request did, for the tweet `tweet_id` with the (normalized) text `text`.
    Held { tweet_id: u64, text: String },
}

/// One batch of the tweets a user has a reaction on, for walking them all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reacted {
    /// Tweet IDs the reaction is on, newest first.
    pub tweets: Vec<u64>,
    /// Where the next batch starts (`before`), or `None` when this was the last.
    pub next: Option<u64>,
}

/// One tweet under one term of the index: the tweet, and every term it is indexed under (so a
/// search of several terms checks the others without another read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub tweet_id: u64,
    pub terms: Vec<String>,
}

/// The terms a tweet is indexed under, as the embedded store keeps them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexedTerms {
    #[prost(string, repeated, tag = "1")]
    pub terms: Vec<String>,
}

/// How long a tag use counts towards trends: uses of tweets older than this are not written
/// (and, on CQL, expire), twice the trends window so a late event still lands in it.
pub const TREND_RETENTION_MINUTES: i64 = 120;

/// The minute (Unix ms / 60,000) a tweet's tag uses count in: its ID's time, so a redelivered
/// or late event lands in the same minute as the first.
pub fn minute_of(tweet: u64) -> i64 {
    twtr_common::id::millis_of(tweet) / 60_000
}

/// The `tweets` keyspace's schema: the numbered files in `cql/tweets/`, which `twtr migrate`
/// applies (see `twtr_common::cql::migrate`). A file added there must be added here too (a test
/// checks).
pub const SCHEMA: twtr_common::cql::Schema = twtr_common::cql_schema!(
    "tweets":
    1 => "001_init.cql",
    2 => "002_authors_and_post_keys.cql",
    3 => "003_settled_changes.cql",
    4 => "004_outbox_by_time.cql",
    5 => "005_search_and_trends.cql",
    6 => "006_mentions.cql",
    7 => "007_author_tallies.cql",
);

#[async_trait]
pub trait TweetStore: Send + Sync {
    /// Whether the store answers right now, by a cheap round trip: the service's readiness, and
    /// what its event consumer probes before it spends a retry (`twtr_common::bus::consume`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a fresh tweet, its place in the author's timeline, the author's tweet count and
    /// `event`, atomically. Fresh: its ID was minted for this call, so nothing is stored under
    /// it (IDs are unique by construction: each process has its own worker number); a backend
    /// may write without looking first. Returns `false`, writing nothing, when the author is
    /// gone ([`TweetStore::forget_author`]). A create tried again goes through
    /// [`TweetStore::create_again`].
    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError>;
    /// [`TweetStore::create`] of a tweet whose create may have run already, in part or whole
    /// (a post repeated with its idempotency key): stores it if it never was, and changes
    /// nothing if it was, also once it is deleted (no second count, no `event` staged), but for
    /// the race of two attempts at once, which may both stage their event (consumers key
    /// `TweetCreated` by tweet ID). `false` as `create`.
    async fn create_again(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        self.create(tweet, event).await
    }
    /// Claims `key` for `author`'s post of `tweet_id` with `text`, unless a claim of it younger
    /// than `window` exists, which it returns instead. A claim lasts at least `window`.
    async fn claim_key(
        &self,
        author: u64,
        key: &str,
        tweet_id: u64,
        text: &str,
        window: std::time::Duration,
    ) -> Result<KeyClaim, StoreError>;
    /// Records that the account `user` was deleted (the users service's `UserDeleted`): from now
    /// on [`TweetStore::create`] refuses them as an author, [`TweetStore::author_gone`] says so,
    /// and they are among [`TweetStore::pending_purges`] until [`TweetStore::purge_done`].
    /// Idempotent; a purge already done is not pending again.
    async fn forget_author(&self, user: u64) -> Result<(), StoreError>;
    /// Whether `user`'s account was deleted.
    async fn author_gone(&self, user: u64) -> Result<bool, StoreError>;
    /// Deleted accounts whose tweets, likes and retweets may remain, at most `max`. An account
    /// may be listed twice (two records of one deletion): purging it twice is harmless.
    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError>;
    /// The purge of `purge` (one of [`TweetStore::pending_purges`]'s entries) is complete.
    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError>;
    /// Up to `max` tweets older than `before` that `user` has `reaction` on, newest first.
    async fn reacted(
        &self,
        reaction: Reaction,
        user: u64,
        before: Option<u64>,
        max: usize,
    ) -> Result<Reacted, StoreError>;
    /// Whether this backend needs [`TweetStore::settle`] called with each of its own events once
    /// published (a backend whose writes are not one transaction finishes them there).
    fn settles_events(&self) -> bool {
        false
    }
    /// Finishes what the write behind `event` (one of this store's own events) left undone if
    /// its process died half-way: on the CQL backend, the count ops. Idempotent.
    async fn settle(&self, _event: &Envelope) -> Result<(), StoreError> {
        Ok(())
    }
    /// Folds the count ops a backend recorded beside its writes into their counts' bases,
    /// which keeps count reads cheap; counts read the same before and after. How many ops it
    /// folded. The service runs it as a background pass.
    async fn fold_counts(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
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
    /// `user` reacts to `tweet` (`on`: likes or retweets it; off: takes that back):
    /// `Some(true)` when this call changed it (the count moves by one, once, and `event` is
    /// staged), `Some(false)` when it was so already (nothing written), `None` when the tweet does
    /// not exist or is deleted (nothing written).
    async fn react(
        &self,
        reaction: Reaction,
        user: u64,
        tweet: u64,
        on: bool,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError>;
    /// [`TweetStore::react`] with a like.
    async fn like(
        &self,
        user: u64,
        tweet: u64,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.react(Reaction::Like, user, tweet, true, event).await
    }
    /// [`TweetStore::react`] taking a like back.
    async fn unlike(
        &self,
        user: u64,
        tweet: u64,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.react(Reaction::Like, user, tweet, false, event).await
    }
    /// [`TweetStore::react`] with a retweet.
    async fn retweet(
        &self,
        user: u64,
        tweet: u64,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.react(Reaction::Retweet, user, tweet, true, event)
            .await
    }
    /// [`TweetStore::react`] taking a retweet back.
    async fn unretweet(
        &self,
        user: u64,
        tweet: u64,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.react(Reaction::Retweet, user, tweet, false, event)
            .await
    }
    /// Whether `user` likes and whether they retweeted each of `tweets`, in the order given.
    async fn liked_and_retweeted(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, StoreError>;
    /// Deletes a live tweet: it then reads as absent everywhere, its author's count drops by
    /// one (once) and `event` is staged. `false` (nothing written) when no live tweet has `id`.
    async fn delete(&self, id: u64, event: Envelope) -> Result<bool, StoreError>;
    /// Finishes the deletion of `id` if one was decided but cut short (a backend whose deletion
    /// is not one transaction): its event staged, its count moved. A no-op otherwise. The
    /// service calls it when a write finds the tweet gone, as a repeated delete does.
    async fn finish_deletion(&self, _id: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// One page of everyone's live tweets, newest first.
    async fn public_timeline(&self, page: PageRequest) -> Result<Page<TweetRecord>, StoreError>;
    /// Indexes the tweet `tweet` under `terms` (its `words::index_terms`): a posting per term
    /// and, for each tag (`#` term) and a tweet younger than [`TREND_RETENTION_MINUTES`], a use
    /// in the tweet's minute ([`minute_of`]). Idempotent (indexing twice leaves one posting and
    /// one use), and a no-op for an unknown or deleted tweet: once [`TweetStore::delete`] has
    /// run, the tweet stays out of the index whatever order this and
    /// [`TweetStore::unindex`] run in, even concurrently.
    async fn index(&self, tweet: u64, terms: Vec<String>) -> Result<(), StoreError>;
    /// Removes the deleted tweet `tweet` from the index and from trends. Idempotent; a no-op
    /// for a tweet never indexed or not deleted.
    async fn unindex(&self, tweet: u64) -> Result<(), StoreError>;
    /// Up to `max` postings of `term` with IDs below `before` and above `since`: newest first,
    /// or, with `since`, oldest first (polling).
    async fn postings(
        &self,
        term: &str,
        before: Option<u64>,
        since: Option<u64>,
        max: usize,
    ) -> Result<Vec<Posting>, StoreError>;
    /// How many distinct tweets used each tag in the minutes `from..=to` ([`minute_of`]), the
    /// tag with its `#`, in no order; at most `per_minute` uses are read from each minute.
    async fn tag_uses(
        &self,
        from: i64,
        to: i64,
        per_minute: usize,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// The outbox that `create` stages events into.
    fn outbox(&self) -> Arc<dyn Outbox>;
}

#[cfg(test)]
mod schema_tests {
    /// Every file of `cql/tweets/` is registered, in order, and keeps the rules every migration
    /// relies on (idempotent, keyspace-agnostic, portable between ScyllaDB and Cassandra).
    #[test]
    fn the_schema_files_are_registered_and_follow_the_rules() {
        let problems = super::SCHEMA.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
