//! Every statement of the CQL tweet store, each prepared once when the store is made (so a typo
//! fails the start, not a request).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scylla::statement::prepared::PreparedStatement;
use twtr_common::IdGenerator;
use twtr_common::cql::{
    CountColumn, CountLedger, CqlError, CqlOutbox, DeletedAccountTables, DeletedAccounts, Keyspace,
    Tally, TallyColumn,
};

use super::Inner;
use crate::store::Reaction;

// A create: one logged batch (with the outbox's own insert and the author's tally op). Its rows
// are written at the tweet's creation time, so that a batch that lands after the tweet's
// deletion stays deleted (every deletion write is later).
const INSERT_TWEET: &str = "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at, deleted) \
     VALUES (?, ?, ?, ?, false) USING TIMESTAMP ?";
const INSERT_AUTHOR_TWEET: &str =
    "INSERT INTO {ks}.author_tweets (author_id, tweet_id) VALUES (?, ?) USING TIMESTAMP ?";
const INSERT_TIMELINE: &str = "INSERT INTO {ks}.timeline (bucket, tweet_id, author_id) \
     VALUES (?, ?, ?) USING TIMESTAMP ?";
const INSERT_TIMELINE_BUCKET: &str =
    "INSERT INTO {ks}.timeline_buckets (scope, bucket) VALUES ('all', ?)";
// What a deletion reads to learn whether a create's batch ran, and then whether its own did.
const SELECT_AUTHOR_TWEET: &str =
    "SELECT tweet_id FROM {ks}.author_tweets WHERE author_id = ? AND tweet_id = ?";
// The authors' tweet counts (`007_author_tallies.cql`): an op row in the batch of each create
// and deletion, folded into the base in the background.
const AUTHOR_TALLIES: TallyColumn = TallyColumn {
    what: "tweet count of author",
    table: "author_tallies",
    key: "author_id",
    count: "tweet_count",
};
// The counts the ledger kept before (`001_init.cql`): the base of everything counted before
// `author_tallies`, read with it; no new op moves it. Each op recorded in a tally also writes its
// ledger row (never moving the ledger's count), so a replica of the previous version that meets
// the op (consuming its event back, during a rolling upgrade) finds it applied.
const AUTHOR_COUNTS: CountColumn = CountColumn {
    what: "tweet count of author",
    table: "author_counts",
    key: "author_id",
    count: "tweet_count",
};
const MARK_LEDGER_OP: &str = "INSERT INTO {ks}.author_counts (author_id, op, applied_at) \
     VALUES (?, ?, ?) USING TTL 259200";
// Reads. DISTINCT reads a count partition's static row only, never its ledger.
const SELECT_COUNTS: &str =
    "SELECT DISTINCT author_id, tweet_count FROM {ks}.author_counts WHERE author_id IN ?";
const SELECT_TWEETS: &str =
    "SELECT tweet_id, author_id, text, created_at, deleted FROM {ks}.tweets WHERE tweet_id IN ?";
const SELECT_TWEET_COUNTS: &str = "SELECT DISTINCT tweet_id, like_count, retweet_count \
     FROM {ks}.tweet_counts WHERE tweet_id IN ?";
// A deletion: decided on the tweet's own row, then one logged batch with the outbox row and the
// author's tally op `tweet:<id>:deleted`, its writes at the deletion's time. The decision is
// conditioned on `deleted_at`, which no create writes: a create's `deleted = false`, stamped
// with its writer's clock, may be ahead of the decision's Paxos timestamp; the batch's
// `MARK_DELETED`, at the deletion's time, is later than it whatever the clocks.
const SELECT_TWEET_STATE: &str = "SELECT author_id, text, created_at, deleted, deleted_at \
     FROM {ks}.tweets WHERE tweet_id = ?";
const DELETE_TWEET: &str = "UPDATE {ks}.tweets SET deleted = true, deleted_at = ?, text = null \
     WHERE tweet_id = ? IF deleted_at = null";
const MARK_DELETED: &str = "UPDATE {ks}.tweets USING TIMESTAMP ? \
     SET deleted = true, deleted_at = ?, text = null WHERE tweet_id = ?";
const DELETE_AUTHOR_TWEET: &str =
    "DELETE FROM {ks}.author_tweets USING TIMESTAMP ? WHERE author_id = ? AND tweet_id = ?";
const DELETE_TIMELINE: &str =
    "DELETE FROM {ks}.timeline USING TIMESTAMP ? WHERE bucket = ? AND tweet_id = ?";
// Deleted authors (`002_authors_and_post_keys.cql`) and their purges (`003`).
const DELETED_ACCOUNTS: DeletedAccountTables = DeletedAccountTables {
    gone: "gone_authors",
    queue: "author_purges_by_hour",
    id_column: "author_id",
    legacy: "author_purges",
};
// A tweet's mentions (`006_mentions.cql`), written before its batch, read beside its row.
const INSERT_MENTIONS: &str =
    "INSERT INTO {ks}.tweet_mentions (tweet_id, user_ids, usernames) VALUES (?, ?, ?)";
const SELECT_MENTIONS: &str =
    "SELECT tweet_id, user_ids, usernames FROM {ks}.tweet_mentions WHERE tweet_id IN ?";
// An idempotency key, claimed for the window by its TTL.
const CLAIM_KEY: &str = "INSERT INTO {ks}.post_keys \
     (author_id, idempotency_key, tweet_id, text, claimed_at) VALUES (?, ?, ?, ?, ?) \
     IF NOT EXISTS USING TTL ?";
// The public timeline: its hours newest (or, polling, oldest) first, then each hour's tweets.
const BUCKETS_BACKWARD: &str = "SELECT bucket FROM {ks}.timeline_buckets \
     WHERE scope = 'all' AND bucket >= ? AND bucket <= ? ORDER BY bucket DESC LIMIT ?";
const BUCKETS_FORWARD: &str = "SELECT bucket FROM {ks}.timeline_buckets \
     WHERE scope = 'all' AND bucket >= ? AND bucket <= ? ORDER BY bucket ASC LIMIT ?";
const TIMELINE_BACKWARD: &str = "SELECT tweet_id FROM {ks}.timeline \
     WHERE bucket = ? AND tweet_id >= ? AND tweet_id <= ? ORDER BY tweet_id DESC LIMIT ?";
const TIMELINE_FORWARD: &str = "SELECT tweet_id FROM {ks}.timeline \
     WHERE bucket = ? AND tweet_id >= ? AND tweet_id <= ? ORDER BY tweet_id ASC LIMIT ?";
// Pages of an author's timeline, between inclusive bounds (see `PageBounds`).
const PAGE_BACKWARD: &str = "SELECT tweet_id FROM {ks}.author_tweets \
     WHERE author_id = ? AND tweet_id >= ? AND tweet_id <= ? ORDER BY tweet_id DESC LIMIT ?";
const PAGE_FORWARD: &str = "SELECT tweet_id FROM {ks}.author_tweets \
     WHERE author_id = ? AND tweet_id >= ? AND tweet_id <= ? ORDER BY tweet_id ASC LIMIT ?";

impl Inner {
    pub(super) async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        Ok(Self {
            deleted: DeletedAccounts::new(&ks, DELETED_ACCOUNTS).await?,
            claim_key: ks.prepare(CLAIM_KEY).await?,
            select_tweet_counts: ks.prepare(SELECT_TWEET_COUNTS).await?,
            authors: CountLedger::new(&ks, AUTHOR_COUNTS).await?,
            author_tallies: Tally::new(&ks, AUTHOR_TALLIES).await?,
            mark_ledger_op: ks.prepare(MARK_LEDGER_OP).await?,
            mark_deleted: ks.prepare(MARK_DELETED).await?,
            unfolded: Mutex::new(HashMap::new()),
            likes: ReactionStatements::new(&ks, Reaction::Like).await?,
            retweets: ReactionStatements::new(&ks, Reaction::Retweet).await?,
            select_tweet_state: ks.prepare(SELECT_TWEET_STATE).await?,
            delete_tweet: ks.prepare(DELETE_TWEET).await?,
            delete_author_tweet: ks.prepare(DELETE_AUTHOR_TWEET).await?,
            delete_timeline: ks.prepare(DELETE_TIMELINE).await?,
            buckets_backward: ks.prepare(BUCKETS_BACKWARD).await?,
            buckets_forward: ks.prepare(BUCKETS_FORWARD).await?,
            timeline_backward: ks.prepare(TIMELINE_BACKWARD).await?,
            timeline_forward: ks.prepare(TIMELINE_FORWARD).await?,
            outbox: Arc::new(CqlOutbox::new(ks.clone(), Arc::clone(&ids)).await?),
            ids,
            insert_tweet: ks.prepare(INSERT_TWEET).await?,
            insert_author_tweet: ks.prepare(INSERT_AUTHOR_TWEET).await?,
            insert_timeline: ks.prepare(INSERT_TIMELINE).await?,
            insert_timeline_bucket: ks.prepare(INSERT_TIMELINE_BUCKET).await?,
            select_author_tweet: ks.prepare(SELECT_AUTHOR_TWEET).await?,
            select_counts: ks.prepare(SELECT_COUNTS).await?,
            select_tweets: ks.prepare(SELECT_TWEETS).await?,
            insert_mentions: ks.prepare(INSERT_MENTIONS).await?,
            select_mentions: ks.prepare(SELECT_MENTIONS).await?,
            page_backward: ks.prepare(PAGE_BACKWARD).await?,
            page_forward: ks.prepare(PAGE_FORWARD).await?,
            bucket_written: Mutex::new(None),
            search: super::index::IndexStatements::new(&ks).await?,
            ks,
        })
    }
}

/// The statements of likes or of retweets, which live in tables of the same shape.
pub(super) struct ReactionStatements {
    /// The op key prefix: `like` or `retweet`.
    pub(super) name: &'static str,
    /// `SELECT <flag>, version, <at>` of one (user, tweet) row.
    pub(super) select: PreparedStatement,
    /// The first change of a (user, tweet): version 1, `IF NOT EXISTS`.
    pub(super) first: PreparedStatement,
    /// Every later change: the next version, `IF version = ?`.
    pub(super) change: PreparedStatement,
    /// The mirror row (`tweet_likes` / `tweet_retweets`) of a change, at its write time.
    pub(super) insert_mirror: PreparedStatement,
    /// The undoing's mirror delete, at its write time.
    pub(super) delete_mirror: PreparedStatement,
    /// `SELECT version` of one mirror row: whether the pair's last change was settled.
    pub(super) select_mirror: PreparedStatement,
    /// `SELECT tweet_id, <flag> ... WHERE user_id = ? AND tweet_id IN ?`.
    pub(super) select_flags: PreparedStatement,
    /// `SELECT tweet_id, <flag> ... WHERE user_id = ? AND tweet_id < ? LIMIT ?`, newest first.
    pub(super) scan: PreparedStatement,
    /// The tweets' like or retweet counts in `tweet_counts`.
    pub(super) counter: CountLedger,
}

impl ReactionStatements {
    pub(super) async fn new(ks: &Keyspace, reaction: Reaction) -> Result<Self, CqlError> {
        let (name, by_user, by_tweet, flag, at, count) = match reaction {
            Reaction::Like => (
                "like",
                "user_likes",
                "tweet_likes",
                "liked",
                "liked_at",
                "like_count",
            ),
            Reaction::Retweet => (
                "retweet",
                "user_retweets",
                "tweet_retweets",
                "retweeted",
                "retweeted_at",
                "retweet_count",
            ),
        };
        let counter = CountColumn {
            what: match reaction {
                Reaction::Like => "like count of tweet",
                Reaction::Retweet => "retweet count of tweet",
            },
            table: "tweet_counts",
            key: "tweet_id",
            count,
        };
        Ok(Self {
            name,
            select: ks
                .prepare(&format!(
                    "SELECT {flag}, version, {at} FROM {{ks}}.{by_user} \
                     WHERE user_id = ? AND tweet_id = ?"
                ))
                .await?,
            first: ks
                .prepare(&format!(
                    "INSERT INTO {{ks}}.{by_user} (user_id, tweet_id, {flag}, version, {at}) \
                     VALUES (?, ?, true, 1, ?) IF NOT EXISTS"
                ))
                .await?,
            change: ks
                .prepare(&format!(
                    "UPDATE {{ks}}.{by_user} SET {flag} = ?, version = ?, {at} = ? \
                     WHERE user_id = ? AND tweet_id = ? IF version = ?"
                ))
                .await?,
            insert_mirror: ks
                .prepare(&format!(
                    "INSERT INTO {{ks}}.{by_tweet} (tweet_id, user_id, version, {at}) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                ))
                .await?,
            delete_mirror: ks
                .prepare(&format!(
                    "DELETE FROM {{ks}}.{by_tweet} USING TIMESTAMP ? \
                     WHERE tweet_id = ? AND user_id = ?"
                ))
                .await?,
            select_mirror: ks
                .prepare(&format!(
                    "SELECT version FROM {{ks}}.{by_tweet} WHERE tweet_id = ? AND user_id = ?"
                ))
                .await?,
            select_flags: ks
                .prepare(&format!(
                    "SELECT tweet_id, {flag} FROM {{ks}}.{by_user} \
                     WHERE user_id = ? AND tweet_id IN ?"
                ))
                .await?,
            scan: ks
                .prepare(&format!(
                    "SELECT tweet_id, {flag} FROM {{ks}}.{by_user} \
                     WHERE user_id = ? AND tweet_id < ? LIMIT ?"
                ))
                .await?,
            counter: CountLedger::new(ks, counter).await?,
        })
    }
}
