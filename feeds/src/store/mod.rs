//! Feeds and the projections they are built from. Domain code sees only [`FeedStore`]; every
//! backend must pass [`conformance`].
//!
//! Every method is idempotent, because every event may be delivered more than once.
//!
//! # Layout
//!
//! - this module: the [`FeedStore`] trait, [`FeedEntry`], [`FeedLimits`] and the notification
//!   types ([`Notification`], [`NotificationKey`]).
//! - [`embedded`]: [`EmbeddedFeedStore`], feeds in a redb file (each feed's entries, exact length
//!   and arrivals side by side in one table, trimmed past the slack; concurrent fan-outs written
//!   together in one transaction).
//! - [`cql`]: [`CqlFeedStore`], feeds on ScyllaDB / Cassandra (idempotent upserts, then a trim
//!   that reads the newest `cap + 1` IDs and range-deletes below the cap).
//! - [`conformance`]: the suite both backends pass, and its macro
//!   [`feed_store_conformance!`](crate::feed_store_conformance).

#[cfg(any(test, feature = "testsuite"))]
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
    /// How far past `feed_len` a feed may run between trims. Trimming on every insert costs a
    /// read on CQL and, on the embedded store, a write to a second page of the feed (its oldest
    /// entries sit far from its newest), so both let a feed grow `trim_slack` past its cap and
    /// then cut it back to `feed_len` at once. A feed holds at most `feed_len + trim_slack`
    /// entries (per feeds replica on CQL, which counts inserts in memory), and its newest
    /// `feed_len` are always there. `0` trims on every insert.
    pub trim_slack: usize,
    /// Recent tweets remembered per author, for backfilling a new follower's feed.
    pub recent_per_author: usize,
    /// Notifications kept per user, newest first; the oldest fall off (trimmed like feeds,
    /// within [`FeedLimits::trim_slack`]).
    pub notifications_len: usize,
    /// How long a feed's arrivals are kept ([`FeedStore::arrivals`]): how far back a live feed
    /// can resume.
    pub arrivals_kept: std::time::Duration,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            feed_len: 800,
            trim_slack: 50,
            recent_per_author: 50,
            notifications_len: 800,
            arrivals_kept: ARRIVALS_KEPT,
        }
    }
}

/// How long a feed's arrivals are kept unless configured: a day.
pub const ARRIVALS_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// An entry as it arrived in a feed by fan-out: the live feed's log (see
/// [`FeedStore::arrivals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// When the fan-out wrote it (Unix ms, the writer's clock).
    pub at_ms: i64,
    pub entry: FeedEntry,
}

/// The `feeds` keyspace's schema: the numbered files in `cql/feeds/`, which `twtr migrate`
/// applies (see `twtr_common::cql::migrate`). A file added there must be added here too (a test
/// checks).
pub const SCHEMA: twtr_common::cql::Schema = twtr_common::cql_schema!(
    "feeds":
    1 => "001_init.cql",
    2 => "002_retweets.cql",
    3 => "003_celebrities.cql",
    4 => "004_drop_feed_meta.cql",
    5 => "005_outbox_by_time.cql",
    6 => "006_notifications.cql",
    7 => "007_feed_arrivals.cql",
);

/// What a notification tells its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotificationKind {
    /// The actor mentioned the recipient in the tweet.
    Mention = 1,
    /// The actor followed the recipient.
    Follow = 2,
    /// The actor liked the recipient's tweet.
    Like = 3,
    /// The actor retweeted the recipient's tweet.
    Retweet = 4,
}

impl NotificationKind {
    /// The stored code (also the wire enum's number).
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Mention,
            2 => Self::Follow,
            3 => Self::Like,
            4 => Self::Retweet,
            _ => return None,
        })
    }
}

/// What identifies a notification: a recipient holds at most one per key, and the action's
/// undoing removes it by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotificationKey {
    pub recipient: u64,
    pub kind: NotificationKind,
    pub actor: u64,
    /// The tweet it is about; 0 for a follow.
    pub tweet_id: u64,
}

/// One item of a user's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// Time-ordered (a Snowflake ID: the mentioning tweet's, or the event's that caused it):
    /// the list's order and its cursor.
    pub id: u64,
    pub kind: NotificationKind,
    pub actor: u64,
    /// The tweet it is about; 0 for a follow.
    pub tweet_id: u64,
}

/// A user's read state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotificationState {
    /// Notifications with IDs up to this one are read (0: none).
    pub read_up_to: u64,
    /// Listed notifications newer than `read_up_to` (at most the cap plus the slack).
    pub unread: u64,
}

#[async_trait]
pub trait FeedStore: Send + Sync {
    /// Whether the store answers right now, by a cheap round trip: the service's readiness, and
    /// what its event consumer probes before it spends a retry (`twtr_common::bus::consume`).
    async fn ping(&self) -> Result<(), StoreError>;

    // --- The follow graph, as this service learned it from events ------------------------------

    /// Records that `follower` follows `followee` (or, with `following` false, does not) as of
    /// the edge's `version`, unless a higher version is recorded. Returns whether `version` is
    /// the edge's latest after the call (a repeat of the latest included): then its effects on
    /// feeds are due; otherwise the event is stale and has none.
    async fn set_edge(
        &self,
        follower: u64,
        followee: u64,
        following: bool,
        version: u64,
    ) -> Result<bool, StoreError>;
    /// Whether each `(follower, followee)` pair is a live edge, in the order given.
    async fn edges(&self, pairs: Vec<(u64, u64)>) -> Result<Vec<bool>, StoreError>;
    /// Up to `max` of `author`'s followers with IDs above `after`, in ascending ID order.
    async fn followers(
        &self,
        author: u64,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError>;

    // --- Tweets and retweets -------------------------------------------------------------------

    /// Remembers `tweet` as one of `author`'s recent tweets (keeping only the most recent),
    /// unless it was deleted: then returns `false` and remembers nothing.
    async fn record_tweet(&self, author: u64, tweet: u64) -> Result<bool, StoreError>;
    /// The author's remembered recent tweets, newest first.
    async fn recent_tweets(&self, author: u64) -> Result<Vec<u64>, StoreError>;
    /// Marks `tweet` deleted for good (nothing records it again) and forgets it as recent.
    async fn delete_tweet(&self, author: u64, tweet: u64) -> Result<(), StoreError>;
    /// Whether each of `tweets` is deleted, in the order given.
    async fn deleted(&self, tweets: Vec<u64>) -> Result<Vec<bool>, StoreError>;
    /// Records that `user` retweeted `tweet` by `author` (or, with `active` false, took it
    /// back) as of the pair's `version`, as [`FeedStore::set_edge`] does for edges; keeps
    /// [`FeedStore::retweeters`] and [`FeedStore::recent_retweets`] in step.
    async fn set_retweet(
        &self,
        user: u64,
        tweet: u64,
        author: u64,
        active: bool,
        version: u64,
    ) -> Result<bool, StoreError>;
    /// Up to `max` users whose retweet of `tweet` stands, in ascending ID order.
    async fn retweeters(&self, tweet: u64, max: usize) -> Result<Vec<u64>, StoreError>;
    /// `user`'s most recent standing retweets (as the entries they put in a follower's feed),
    /// newest tweet first.
    async fn recent_retweets(&self, user: u64) -> Result<Vec<FeedEntry>, StoreError>;

    /// Marks `author` as a celebrity (their tweets are merged into readers' pages at read time
    /// rather than fanned out) or, with `false`, as an ordinary author again.
    async fn set_celebrity(&self, author: u64, celebrity: bool) -> Result<(), StoreError>;
    /// Every author marked a celebrity, in ascending ID order.
    async fn celebrities(&self) -> Result<Vec<u64>, StoreError>;

    // --- Feeds ---------------------------------------------------------------------------------

    /// Puts `entries` into `user`'s feed (replacing an entry of the same tweet), trimming it to
    /// its cap (within [`FeedLimits::trim_slack`]).
    async fn insert_entries(&self, user: u64, entries: Vec<FeedEntry>) -> Result<(), StoreError>;
    /// Puts `entry` into each of `users`' feeds, as [`FeedStore::insert_entries`], and logs its
    /// arrival there at `at_ms` ([`FeedStore::arrivals`]). A backend that can tell, without a
    /// read before the write, that a feed already held the entry logs nothing for that feed; one
    /// that cannot (CQL) logs the repeat too, under its own time.
    async fn fan_out(
        &self,
        users: Vec<u64>,
        entry: FeedEntry,
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Up to `max` of the entries that arrived in `user`'s feed by fan-out after `after` (an
    /// arrival's `(at_ms, tweet_id)`), oldest first by that pair, kept for
    /// [`FeedLimits::arrivals_kept`]; the live feed reads it. Entries removed from the feed
    /// since are still listed.
    async fn arrivals(
        &self,
        user: u64,
        after: (i64, u64),
        max: usize,
    ) -> Result<Vec<Arrival>, StoreError>;
    /// Removes `tweets` from `user`'s feed (absent ones are fine).
    async fn remove_entries(&self, user: u64, tweets: Vec<u64>) -> Result<(), StoreError>;
    /// The entries of `user`'s feed that `who` wrote or retweeted.
    async fn entries_via(&self, user: u64, who: u64) -> Result<Vec<FeedEntry>, StoreError>;
    /// Empties `user`'s feed, and its arrivals.
    async fn drop_feed(&self, user: u64) -> Result<(), StoreError>;
    /// One page of `user`'s feed, newest first.
    async fn feed(&self, user: u64, page: PageRequest) -> Result<Page<FeedEntry>, StoreError>;

    // --- Notifications -------------------------------------------------------------------------

    /// Records the notification `key` as of `version` (the version of the pair or edge the
    /// event carries): `Some(id)` lists it under `id`, `None` takes it out (its action was
    /// undone). Of all the calls for a key, the highest version decides, whatever their order,
    /// and a repeated call changes nothing; a listing the highest version does not name is
    /// removed. `version` must be above 0, and two calls with one version must agree.
    async fn set_notification(
        &self,
        key: NotificationKey,
        version: u64,
        id: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Removes `recipient`'s notifications about `tweet` (it was deleted) for good: a repeated
    /// [`FeedStore::set_notification`] of one of them does not bring it back.
    async fn remove_tweet_notifications(
        &self,
        recipient: u64,
        tweet: u64,
    ) -> Result<(), StoreError>;
    /// One page of `recipient`'s notifications, newest first (`before` and `limit`; `since` is
    /// not supported and reads as absent).
    async fn notifications(
        &self,
        recipient: u64,
        page: PageRequest,
    ) -> Result<Page<Notification>, StoreError>;
    /// `recipient`'s read cursor and unread count.
    async fn notification_state(&self, recipient: u64) -> Result<NotificationState, StoreError>;
    /// Moves `recipient`'s read cursor to `up_to` (`None`: their newest notification), never
    /// back. Returns the cursor after the call.
    async fn mark_notifications_read(
        &self,
        recipient: u64,
        up_to: Option<u64>,
    ) -> Result<u64, StoreError>;
    /// Drops `recipient`'s notifications and read cursor (their account was deleted).
    async fn drop_notifications(&self, recipient: u64) -> Result<(), StoreError>;
}

#[cfg(test)]
mod schema_tests {
    /// Every file of `cql/feeds/` is registered, in order, and keeps the rules every migration
    /// relies on (idempotent, keyspace-agnostic, portable between ScyllaDB and Cassandra).
    #[test]
    fn the_schema_files_are_registered_and_follow_the_rules() {
        let problems = super::SCHEMA.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
