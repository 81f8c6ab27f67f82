//! The CQL backend of [`TweetStore`]: tweets on ScyllaDB / Cassandra, in the tables of
//! `cql/tweets/001_init.cql` (whose header explains the count ledger this module follows),
//! `002_authors_and_post_keys.cql` and `003_settled_changes.cql` (how a call learns whether a
//! change was settled, and the purge queue).
//!
//! # Layout
//!
//! - the statements, in one block below, each prepared once by [`CqlTweetStore::new`].
//! - [`CqlTweetStore`], a handle on `Inner` (what the store holds), which runs creates,
//!   reactions and deletions in a task of their own: once a change is decided, its remaining
//!   steps run even if the caller goes away (a deadline drops its future).
//! - `Inner`'s write paths, each in three steps (decide, batch, count): creates (below), likes
//!   and retweets (`Inner::react`) and deletions (`Inner::delete`), the last two as the schema's
//!   header describes: a lightweight transaction on the row that owns the state, a logged batch
//!   with the outbox row, then the count op through its ledger (`like:<user>:<version>`,
//!   `retweet:<user>:<version>`, `tweet:<id>:deleted`), each applied by its
//!   [`CountLedger`]. Each first finishes what the last change of its row left undone (see below).
//! - its reads: single rows by full primary key, several partitions by `IN` lists of at most
//!   [`IN_CHUNK`] keys, put back in the order the trait promises. Every hydrated tweet carries
//!   its like and retweet counts, read from `tweet_counts`' static columns in the same chunks.
//!   The public timeline reads the hours listed in `timeline_buckets` newest first (oldest
//!   first when polling), `BUCKETS_PER_READ` at a time, and each hour's partition of
//!   `timeline` until the page is full: never a table scan.
//! - deleted authors: `gone_authors`, which a create reads first, and the authors whose tweets,
//!   likes and retweets the service still removes, in `author_purges_by_hour` (one
//!   [`DeletedAccounts`]: hourly partitions read from a cursor, never through deletes).
//!
//! # How a create lands, and how a retry finishes one cut short
//!
//! 1. **Claim** the tweet ID: `INSERT INTO tweets ... IF NOT EXISTS`, a lightweight transaction
//!    on the tweet's own partition, so it never contends with other tweets. It decides, once and
//!    for all, which tweet owns the ID. An ID held by another tweet (minted twice: two
//!    processes with one worker number) fails the create with [`StoreError::Conflict`], logged
//!    as an error; the caller's retry gets a fresh ID.
//! 2. **Batch**: one logged batch with the author's timeline row, the public timeline row, its
//!    hour in `timeline_buckets` (once per hour per process) and the `TweetCreated` outbox row.
//!    All of them land or none does; the batch is plain upserts, so running it again is harmless.
//! 3. **Count**: the op `tweet:<id>:created` applied to `author_counts` through its ledger
//!    (conditional batch: ledger row `IF NOT EXISTS` + `SET tweet_count = ? IF tweet_count = ?`),
//!    exactly once however often it is attempted.
//!
//! A crash (or a timeout) between the steps leaves the claim without its batch, or the batch
//! without its count. The caller's retry of the same tweet finds the ID claimed, and then:
//! if the batch's author-timeline row is missing, the batch never ran, so it runs it now, with
//! the retry's own event (the tweet gets announced exactly when it exists: a claim whose batch
//! never ran was never announced, and the retry's event describes the same tweet); if the row is
//! there, the batch ran, event included, so it skips it, and stages no second event. Either way it
//! applies the count op, which the ledger turns into a no-op if it was done. A deletion of a tweet
//! whose batch never ran finishes the create first (with an event rebuilt from the row), so
//! that the deletion's own batch leaves a mark (below).
//!
//! The one race left: a retry that runs while the first attempt sits between its claim and its
//! batch also finds the timeline row missing, and both attempts stage an event (with different
//! event IDs) for the same tweet. Consumers take events at least once and key them by tweet ID,
//! so a second announcement is harmless; a lost one would not be.
//!
//! # What a crash leaves of a like, a retweet or a deletion, and how the next call finishes it
//!
//! A crash, or a store error, between step 1 (decided) and step 2 (the batch with the event)
//! would lose the event for good: a repeat finds the change made. So every call on a (user,
//! tweet) pair, or on a deleted tweet, first looks at whether the last change was **settled**,
//! which the rows written by its batch tell (`003_settled_changes.cql`): a like or retweet at
//! version `v` is settled when its `tweet_likes` / `tweet_retweets` row holds `v`, its undoing
//! when that row is gone, a deletion when the tweet's `author_tweets` row is gone. Then:
//! - Settled, and the call repeats it: within `REPAIR_WINDOW` (a day) it applies the count op
//!   again (a no-op when it was applied), for a crash between steps 2 and 3.
//! - Not settled, and the change is this call's own (a lightweight transaction whose reply was
//!   lost): it writes it with its own event.
//! - Not settled and younger than [`ABANDONED_AFTER`]: its caller is taken to be writing it
//!   still (a batch takes milliseconds), so the call waits for it, at most that long.
//! - Not settled and older: abandoned (its caller died, or its batch failed). The call runs
//!   step 2 with the change's event rebuilt from the decided row and the tweet's author: the
//!   version decided, the count op of that version, a fresh event ID; then step 3. Consumers
//!   keep the highest version they saw and the ledger moves a count once per op, so if the first
//!   caller wakes up and writes its own event too, the two count as one.
//!
//! Only then does the call decide its own change; so a change is decided only once the one
//! before it is settled, which is what makes those rows a faithful mark. They are written
//! `USING TIMESTAMP` the change's decision time (in the decided row, one millisecond later at
//! least than the previous version's), so a batch that lands late, after the next change's,
//! loses to it and never brings a stale mirror or timeline row back.
//!
//! A deletion is a terminal change: the calls that find a deleted tweet are the repeated delete,
//! a reaction to it, and the service's [`TweetStore::finish_deletion`] (which every write that
//! finds the tweet gone calls), and each finishes an abandoned deletion the same way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use tokio::time::Instant;
use twtr_common::cql::{
    CountColumn, CountLedger, CqlError, CqlOutbox, DeletedAccountTables, DeletedAccounts, Keyspace,
    Lwt, Retries, logged_batch, lwt,
};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{IdGenerator, Page, PageRequest, clock, events, id, lock};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{
    Envelope, Retweeted, TweetCreated, TweetDeleted, TweetLiked, TweetUnliked, Unretweeted,
};

use super::{KeyClaim, Reacted, Reaction, TweetRecord, TweetStore};

// Step 1 of a create: the claim.
const CLAIM_TWEET: &str = "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at, deleted) \
     VALUES (?, ?, ?, ?, false) IF NOT EXISTS";
// Step 2: the logged batch (with the outbox's own insert). The timeline rows are written at the
// tweet's creation time, so that a batch that lands after the tweet's deletion stays deleted.
const INSERT_AUTHOR_TWEET: &str =
    "INSERT INTO {ks}.author_tweets (author_id, tweet_id) VALUES (?, ?) USING TIMESTAMP ?";
const INSERT_TIMELINE: &str = "INSERT INTO {ks}.timeline (bucket, tweet_id, author_id) \
     VALUES (?, ?, ?) USING TIMESTAMP ?";
const INSERT_TIMELINE_BUCKET: &str =
    "INSERT INTO {ks}.timeline_buckets (scope, bucket) VALUES ('all', ?)";
// What a retry reads to learn whether step 2 ran (and a deletion, whether its own step 2 did).
const SELECT_AUTHOR_TWEET: &str =
    "SELECT tweet_id FROM {ks}.author_tweets WHERE author_id = ? AND tweet_id = ?";
// Step 3: the count op on the author's partition of `author_counts`, through its ledger.
const AUTHOR_COUNTS: CountColumn = CountColumn {
    what: "tweet count of author",
    table: "author_counts",
    key: "author_id",
    count: "tweet_count",
};
// Reads. DISTINCT reads a count partition's static row only, never its ledger.
const SELECT_COUNTS: &str =
    "SELECT DISTINCT author_id, tweet_count FROM {ks}.author_counts WHERE author_id IN ?";
const SELECT_TWEETS: &str =
    "SELECT tweet_id, author_id, text, created_at, deleted FROM {ks}.tweets WHERE tweet_id IN ?";
const SELECT_TWEET_COUNTS: &str = "SELECT DISTINCT tweet_id, like_count, retweet_count \
     FROM {ks}.tweet_counts WHERE tweet_id IN ?";
// A deletion: decided on the tweet's own row, then one logged batch with the outbox row (its
// deletes at the deletion's time), then the author's count op `tweet:<id>:deleted`.
const SELECT_TWEET_STATE: &str = "SELECT author_id, text, created_at, deleted, deleted_at \
     FROM {ks}.tweets WHERE tweet_id = ?";
const DELETE_TWEET: &str = "UPDATE {ks}.tweets SET deleted = true, deleted_at = ?, text = null \
     WHERE tweet_id = ? IF deleted = false";
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

/// The most keys one `IN` list carries: a longer list makes one coordinator wait on many
/// partitions at once; shorter lists run in parallel instead.
pub const IN_CHUNK: usize = 100;
/// The public timeline's partitions are hours of tweet time.
const BUCKET_MS: i64 = 3_600_000;
/// How many times a like, retweet or deletion is tried against concurrent changes of the same
/// row before it fails (and its caller may try again).
const DECIDE_ATTEMPTS: u32 = 20;
/// How long after a change a repeat of it still makes sure the change's count op was applied:
/// well within the three days ledger rows live, after which a repeat would count twice.
const REPAIR_WINDOW_MS: i64 = 24 * 3_600_000;
const REPAIR_WINDOW: Duration = Duration::from_millis(REPAIR_WINDOW_MS as u64);
/// How old a decided change whose batch has not run must be before another call finishes it:
/// far longer than its own caller takes to write it (milliseconds), so a live caller is seldom
/// overtaken (and if it is, its event and the rebuilt one count as one).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(1);
/// How often a call waiting for another caller's change looks again.
const WAIT_POLL: Duration = Duration::from_millis(10);
/// The header of a like's or retweet's event that names its count op, so the service can apply
/// the op again when it consumes the event back ([`TweetStore::settle`]).
pub const COUNT_OP_HEADER: &str = "x-twtr-count-op";
/// The longest TTL CQL accepts (20 years), the cap of an idempotency window.
const MAX_TTL_SECS: u64 = 630_720_000;
/// How many timeline hours one read of `timeline_buckets` returns.
const BUCKETS_PER_READ: i32 = 24;

/// Tweets in a CQL keyspace (see the [module docs](self)).
pub struct CqlTweetStore {
    inner: Arc<Inner>,
}

/// What the store holds; shared with the tasks that run its writes.
struct Inner {
    ks: Keyspace,
    outbox: Arc<CqlOutbox>,
    /// Mints the IDs of events rebuilt for abandoned changes: this process's generator, so
    /// they never collide with the events its service mints.
    ids: Arc<IdGenerator>,
    claim_tweet: PreparedStatement,
    insert_author_tweet: PreparedStatement,
    insert_timeline: PreparedStatement,
    insert_timeline_bucket: PreparedStatement,
    select_author_tweet: PreparedStatement,
    select_counts: PreparedStatement,
    select_tweets: PreparedStatement,
    page_backward: PreparedStatement,
    page_forward: PreparedStatement,
    select_tweet_counts: PreparedStatement,
    /// The authors' tweet counts in `author_counts`.
    authors: CountLedger,
    likes: ReactionStatements,
    retweets: ReactionStatements,
    select_tweet_state: PreparedStatement,
    delete_tweet: PreparedStatement,
    delete_author_tweet: PreparedStatement,
    delete_timeline: PreparedStatement,
    deleted: DeletedAccounts,
    claim_key: PreparedStatement,
    buckets_backward: PreparedStatement,
    buckets_forward: PreparedStatement,
    timeline_backward: PreparedStatement,
    timeline_forward: PreparedStatement,
    /// The newest timeline hour this process has written to `timeline_buckets`, so a batch adds
    /// that row once an hour rather than with every tweet (the partition is one hot row set).
    bucket_written: Mutex<Option<i64>>,
}

impl std::fmt::Debug for CqlTweetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlTweetStore")
            .field("keyspace", &self.inner.ks.name())
            .finish_non_exhaustive()
    }
}

impl CqlTweetStore {
    /// Prepares every statement in `ks` (a typo fails the start, not a request) and the outbox.
    /// `ids` is the process's ID generator (see `Inner::ids`).
    pub async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        Ok(Self {
            inner: Arc::new(Inner::new(ks, ids).await?),
        })
    }

    /// Runs `write` in a task of its own, so that a caller that goes away (a deadline drops
    /// its future) cannot stop it between a change's decision and the steps that finish it.
    async fn spawned<T, F, Fut>(&self, write: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(write(Arc::clone(&self.inner))).await?
    }
}

/// The last change of a (user, tweet) pair: its `user_likes` or `user_retweets` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    /// Liked (or retweeted), or taken back.
    on: bool,
    version: i32,
    /// When it was decided (Unix ms).
    at: i64,
}

impl Change {
    /// The write time of the rows its batch writes: its decision time, in microseconds.
    fn write_time(&self) -> i64 {
        self.at.saturating_mul(1000)
    }

    /// The change after this one, to `on`, decided now: at least a millisecond later, so that
    /// its rows' write time is later too, whatever the clocks of the processes deciding them.
    fn next(&self, on: bool) -> Self {
        Self {
            on,
            version: self.version + 1,
            at: clock::now_millis().max(self.at + 1),
        }
    }
}

/// A (user, tweet) pair and the tweet's author, for rebuilding the pair's events.
#[derive(Debug, Clone, Copy)]
struct Pair {
    user: u64,
    tweet: u64,
    author: u64,
}

/// A `tweets` row, as a write sees it.
#[derive(Debug, Clone)]
struct TweetState {
    author: i64,
    text: Option<String>,
    /// Unix ms.
    created_at: Option<i64>,
    deleted: bool,
    /// When the deletion was decided (Unix ms).
    deleted_at: Option<i64>,
}

/// How long ago `at` (Unix ms) was; zero if it is ahead of this clock.
fn age(at: i64) -> Duration {
    Duration::from_millis(u64::try_from(clock::now_millis() - at).unwrap_or(0))
}

/// Whether another caller's change decided at `at`, which this call first saw unsettled at
/// `since`, is abandoned: old enough, or waited for long enough (its decider's clock may be
/// ahead of this one).
fn abandoned(at: i64, since: Instant) -> bool {
    age(at) >= ABANDONED_AFTER || since.elapsed() >= ABANDONED_AFTER
}

impl Inner {
    async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        Ok(Self {
            deleted: DeletedAccounts::new(&ks, DELETED_ACCOUNTS).await?,
            claim_key: ks.prepare(CLAIM_KEY).await?,
            select_tweet_counts: ks.prepare(SELECT_TWEET_COUNTS).await?,
            authors: CountLedger::new(&ks, AUTHOR_COUNTS).await?,
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
            claim_tweet: ks.prepare(CLAIM_TWEET).await?,
            insert_author_tweet: ks.prepare(INSERT_AUTHOR_TWEET).await?,
            insert_timeline: ks.prepare(INSERT_TIMELINE).await?,
            insert_timeline_bucket: ks.prepare(INSERT_TIMELINE_BUCKET).await?,
            select_author_tweet: ks.prepare(SELECT_AUTHOR_TWEET).await?,
            select_counts: ks.prepare(SELECT_COUNTS).await?,
            select_tweets: ks.prepare(SELECT_TWEETS).await?,
            page_backward: ks.prepare(PAGE_BACKWARD).await?,
            page_forward: ks.prepare(PAGE_FORWARD).await?,
            bucket_written: Mutex::new(None),
            ks,
        })
    }

    /// Step 1: claims `tweet.id` for `tweet`. On a lost claim, the row that holds the ID.
    async fn claim(&self, tweet: &TweetRecord) -> Result<Claim, StoreError> {
        let values = (
            to_cql(tweet.id)?,
            to_cql(tweet.author_id)?,
            &tweet.text,
            CqlTimestamp(tweet.created_at_ms),
        );
        let result = self
            .ks
            .session()
            .execute_unpaged(&self.claim_tweet, values)
            .await;
        let holder = match lwt(result)? {
            Lwt::Applied => return Ok(Claim::Won),
            Lwt::NotApplied(holder) => holder,
            // Fails the create, as any store error: a retry of it finds the claim if it landed.
            Lwt::Unknown(unknown) => return Err(unknown.into()),
        };
        // A lost claim returns the row that won it. A deleted tweet keeps its author and time
        // (its text is gone), which is enough to tell a retry of it from another tweet.
        let column = |name: &str| holder.get(name).cloned();
        let same_author_and_time = column("author_id")
            == Some(CqlValue::BigInt(to_cql(tweet.author_id)?))
            && column("created_at") == Some(CqlValue::Timestamp(CqlTimestamp(tweet.created_at_ms)));
        if let Some(CqlValue::Boolean(true)) = column("deleted") {
            return Ok(if same_author_and_time {
                Claim::Deleted
            } else {
                Claim::HeldByOther
            });
        }
        let same =
            same_author_and_time && column("text") == Some(CqlValue::Text(tweet.text.clone()));
        Ok(if same {
            Claim::HeldBySame
        } else {
            Claim::HeldByOther
        })
    }

    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        if self.deleted.is_gone(tweet.author_id).await? {
            return Ok(false);
        }
        match self.claim(&tweet).await? {
            Claim::Won => self.write_batch(&tweet, &event).await?,
            Claim::HeldBySame => {
                if !self
                    .batch_ran(to_cql(tweet.author_id)?, to_cql(tweet.id)?)
                    .await?
                {
                    tracing::info!(
                        tweet_id = tweet.id,
                        "finishing a create whose batch never ran"
                    );
                    self.write_batch(&tweet, &event).await?;
                }
            }
            Claim::Deleted => {
                tracing::debug!(
                    tweet_id = tweet.id,
                    "tweet deleted since; nothing to create"
                );
                return Ok(true);
            }
            Claim::HeldByOther => {
                // Nothing was stored: answering success would tell the caller its tweet exists.
                tracing::error!(
                    tweet_id = tweet.id,
                    author_id = tweet.author_id,
                    "tweet id already holds another tweet: two processes mint ids with one \
                     worker number (check TWTR_WORKER_ID); the create is refused"
                );
                return Err(StoreError::Conflict(format!(
                    "tweet id {} is held by another tweet",
                    tweet.id
                )));
            }
        }
        let op = format!("tweet:{}:created", tweet.id);
        self.apply_count_op(to_cql(tweet.author_id)?, &op).await?;
        Ok(true)
    }

    /// Whether step 2 of the create of `tweet` by `author` ran: its author-timeline row is the
    /// batch's first row, and a logged batch lands whole. Once the tweet is deleted, whether
    /// the deletion's batch ran: that batch removes the row.
    async fn batch_ran(&self, author: i64, tweet: i64) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_author_tweet, (author, tweet))
            .await?
            .into_rows_result()?;
        Ok(rows.rows_num() > 0)
    }

    /// Step 2: the tweet's timeline rows and `event`, in one logged batch.
    async fn write_batch(&self, tweet: &TweetRecord, event: &Envelope) -> Result<(), StoreError> {
        let (id, author) = (to_cql(tweet.id)?, to_cql(tweet.author_id)?);
        let bucket = id::millis_of(tweet.id) / BUCKET_MS;
        let written = tweet.created_at_ms.saturating_mul(1000);
        let mut statements = vec![&self.insert_author_tweet, &self.insert_timeline];
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = vec![
            Box::new((author, id, written)),
            Box::new((bucket, id, author, written)),
        ];
        let new_bucket = *lock(&self.bucket_written) != Some(bucket);
        if new_bucket {
            statements.push(&self.insert_timeline_bucket);
            values.push(Box::new((bucket,)));
        }
        statements.push(self.outbox.insert());
        values.push(Box::new(self.outbox.row(event)));
        self.ks
            .session()
            .batch(&logged_batch(statements), values)
            .await?;
        self.outbox.notify();
        if new_bucket {
            // Remembered only once a batch that wrote it succeeded.
            *lock(&self.bucket_written) = Some(bucket);
        }
        Ok(())
    }

    /// Steps 2 and 3 of a create that a crash cut short after its claim, with its
    /// `TweetCreated` rebuilt from the tweet's row.
    async fn finish_create(&self, tweet: i64, state: &TweetState) -> Result<(), StoreError> {
        let (Some(text), Some(created_at)) = (state.text.clone(), state.created_at) else {
            return Err(StoreError::Corrupt(format!(
                "live tweet {tweet} lacks its text or time"
            )));
        };
        let record = TweetRecord {
            id: from_cql(tweet)?,
            author_id: from_cql(state.author)?,
            text,
            created_at_ms: created_at,
            like_count: 0,
            retweet_count: 0,
        };
        tracing::info!(tweet_id = record.id, "finishing an abandoned create");
        let payload = Payload::TweetCreated(TweetCreated {
            tweet_id: record.id,
            author_id: record.author_id,
            text: record.text.clone(),
            created_at: Some(clock::to_timestamp(created_at)),
        });
        let event = events::envelope(self.ids.next_id(), record.id, payload);
        self.write_batch(&record, &event).await?;
        self.apply_count_op(state.author, &format!("tweet:{tweet}:created"))
            .await
    }

    /// Step 3: applies the count op `op` (+1) to `author`'s tweet count, once.
    async fn apply_count_op(&self, author: i64, op: &str) -> Result<(), StoreError> {
        self.authors.apply(author, op, 1).await
    }

    /// The live tweets among `ids` (each at most [`IN_CHUNK`] per query, queries in parallel),
    /// in the order of `ids`, repeats included, with their like and retweet counts.
    async fn fetch(&self, ids: &[u64]) -> Result<Vec<TweetRecord>, StoreError> {
        let keys = distinct_keys(ids);
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let tweets = async {
                let rows = session
                    .execute_unpaged(&self.select_tweets, (chunk,))
                    .await?
                    .into_rows_result()?;
                let mut found = Vec::new();
                for row in rows.rows::<TweetRow>()? {
                    found.extend(record(row?)?);
                }
                Ok::<_, StoreError>(found)
            };
            let counts = async {
                let rows = session
                    .execute_unpaged(&self.select_tweet_counts, (chunk,))
                    .await?
                    .into_rows_result()?;
                let mut counts = HashMap::new();
                for row in rows.rows::<(i64, Option<i64>, Option<i64>)>()? {
                    let (id, likes, retweets) = row?;
                    counts.insert(from_cql(id)?, (count(likes), count(retweets)));
                }
                Ok::<_, StoreError>(counts)
            };
            let (mut found, counts) = try_join(tweets, counts).await?;
            for tweet in &mut found {
                if let Some(&(likes, retweets)) = counts.get(&tweet.id) {
                    tweet.like_count = likes;
                    tweet.retweet_count = retweets;
                }
            }
            Ok::<_, StoreError>(found)
        });
        let mut by_id = HashMap::new();
        for found in join_all(reads).await {
            by_id.extend(found?.into_iter().map(|t| (t.id, t)));
        }
        Ok(ids.iter().filter_map(|id| by_id.get(id).cloned()).collect())
    }

    fn reaction(&self, reaction: Reaction) -> &ReactionStatements {
        match reaction {
            Reaction::Like => &self.likes,
            Reaction::Retweet => &self.retweets,
        }
    }

    /// The `tweets` row of `tweet`; `None` when no such tweet.
    async fn tweet_state(&self, tweet: i64) -> Result<Option<TweetState>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_tweet_state, (tweet,))
            .await?
            .into_rows_result()?;
        type Row = (
            Option<i64>,
            Option<String>,
            Option<CqlTimestamp>,
            Option<bool>,
            Option<CqlTimestamp>,
        );
        let Some((author, text, created_at, deleted, deleted_at)) =
            rows.maybe_first_row::<Row>()?
        else {
            return Ok(None);
        };
        let Some(author) = author else {
            return Err(StoreError::Corrupt(format!("tweet {tweet} has no author")));
        };
        Ok(Some(TweetState {
            author,
            text,
            created_at: created_at.map(|at| at.0),
            deleted: deleted == Some(true),
            deleted_at: deleted_at.map(|at| at.0),
        }))
    }

    /// Likes or retweets (`on`), or takes one back, as the trait's `react` (see the
    /// [module docs](self) for the steps and for what a crash leaves).
    async fn react(
        &self,
        reaction: Reaction,
        user: u64,
        tweet: u64,
        on: bool,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        let (Ok(user_key), Ok(tweet_key)) = (i64::try_from(user), i64::try_from(tweet)) else {
            return Ok(None);
        };
        let Some(state) = self.tweet_state(tweet_key).await? else {
            return Ok(None);
        };
        if state.deleted {
            self.settle_deletion(tweet_key, &state).await?;
            return Ok(None);
        }
        let pair = Pair {
            user,
            tweet,
            author: from_cql(state.author)?,
        };
        let statements = self.reaction(reaction);
        let session = self.ks.session();
        // The change this call tried to decide without learning whether it did.
        let mut maybe_decided: Option<Change> = None;
        // Another caller's unsettled change this call waits for, and since when.
        let mut waiting: Option<(Change, Instant)> = None;
        let mut retries = Retries::new(statements.name, DECIDE_ATTEMPTS);
        loop {
            let last = self.last_change(statements, user_key, tweet_key).await?;
            if let Some(last) = last {
                if maybe_decided == Some(last) {
                    // This call's own change, decided after all (and, if this call took long
                    // enough, finished for it meanwhile).
                    if !self.reaction_settled(statements, pair, &last).await? {
                        self.write_reaction(statements, pair, last, &event).await?;
                    }
                    return Ok(Some(true));
                }
                if !self.reaction_settled(statements, pair, &last).await? {
                    let since = match waiting {
                        Some((change, since)) if change == last => since,
                        _ => Instant::now(),
                    };
                    if !abandoned(last.at, since) {
                        waiting = Some((last, since));
                        tokio::time::sleep(WAIT_POLL).await;
                        continue;
                    }
                    tracing::info!(
                        pair.user,
                        pair.tweet,
                        version = last.version,
                        "finishing an abandoned {}",
                        statements.name
                    );
                    let rebuilt = self.rebuilt_reaction(reaction, pair, &last);
                    self.write_reaction(statements, pair, last, &rebuilt)
                        .await?;
                } else if last.on == on && age(last.at) < REPAIR_WINDOW {
                    // A crash between steps 2 and 3 left the count unmoved: move it (a no-op
                    // where the ledger shows it moved).
                    let op = reaction_op(statements, user, last.version);
                    let delta = if on { 1 } else { -1 };
                    statements.counter.apply(tweet_key, &op, delta).await?;
                }
                if last.on == on {
                    return Ok(Some(false));
                }
            } else if !on {
                return Ok(Some(false));
            }
            let next = match last {
                Some(last) => last.next(on),
                None => Change {
                    on,
                    version: 1,
                    at: clock::now_millis(),
                },
            };
            let result = match last {
                None => {
                    let values = (user_key, tweet_key, CqlTimestamp(next.at));
                    session.execute_unpaged(&statements.first, values).await
                }
                Some(last) => {
                    let values = (
                        on,
                        next.version,
                        CqlTimestamp(next.at),
                        user_key,
                        tweet_key,
                        last.version,
                    );
                    session.execute_unpaged(&statements.change, values).await
                }
            };
            match lwt(result)? {
                Lwt::Applied => {
                    self.write_reaction(statements, pair, next, &event).await?;
                    return Ok(Some(true));
                }
                Lwt::Unknown(_) => maybe_decided = Some(next),
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// The last change of (`user`, `tweet`) under `statements`' reaction; `None` if never any.
    async fn last_change(
        &self,
        statements: &ReactionStatements,
        user: i64,
        tweet: i64,
    ) -> Result<Option<Change>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&statements.select, (user, tweet))
            .await?
            .into_rows_result()?;
        match rows.maybe_first_row::<ReactionRow>()? {
            Some((on, Some(version), at)) => Ok(Some(Change {
                on: on == Some(true),
                version,
                at: at.map_or(0, |at| at.0),
            })),
            Some((_, None, _)) => Err(StoreError::Corrupt(format!(
                "{} of user {user} on tweet {tweet} has no version",
                statements.name
            ))),
            None => Ok(None),
        }
    }

    /// Whether step 2 of `change` ran: its mirror row holds its version (a like or retweet), or
    /// is gone (its undoing). Before step 2 the mirror row is the previous change's, as a change
    /// is decided only once the one before it is settled.
    async fn reaction_settled(
        &self,
        statements: &ReactionStatements,
        pair: Pair,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(
                &statements.select_mirror,
                (to_cql(pair.tweet)?, to_cql(pair.user)?),
            )
            .await?
            .into_rows_result()?;
        let mirrored = rows.maybe_first_row::<(Option<i32>,)>()?.map(|(v,)| v);
        Ok(match mirrored {
            Some(version) if change.on => version.is_some_and(|v| v >= change.version),
            None if change.on => false,
            None => true,
            // A mirror row newer than the change cannot be; read it as settled rather than
            // rewrite it forever.
            Some(version) => version.is_some_and(|v| v > change.version),
        })
    }

    /// The event of `change` of `pair`, as its caller built it, with an ID of its own (the
    /// version and the count op, which consumers and the ledger go by, are `change`'s).
    fn rebuilt_reaction(&self, reaction: Reaction, pair: Pair, change: &Change) -> Envelope {
        let version = u64::try_from(change.version).unwrap_or(0);
        let payload = reaction_payload(reaction, change.on, pair, version);
        events::envelope(self.ids.next_id(), pair.tweet, payload)
    }

    /// Steps 2 and 3 of the decided `change` of `pair`. Idempotent, and harmless when late:
    /// the mirror row is written at the change's own time.
    async fn write_reaction(
        &self,
        statements: &ReactionStatements,
        pair: Pair,
        change: Change,
        event: &Envelope,
    ) -> Result<(), StoreError> {
        let (user_key, tweet_key) = (to_cql(pair.user)?, to_cql(pair.tweet)?);
        let op = reaction_op(statements, pair.user, change.version);
        let mut event = event.clone();
        event.headers.insert(COUNT_OP_HEADER.to_owned(), op.clone());
        super::stamp_reaction_version(&mut event, u64::try_from(change.version).unwrap_or(0));
        let (mirror, mirror_row): (_, Box<dyn SerializeRow + Send + Sync>) = if change.on {
            let at = CqlTimestamp(change.at);
            let row = (tweet_key, user_key, change.version, at, change.write_time());
            (&statements.insert_mirror, Box::new(row))
        } else {
            let row = (change.write_time(), tweet_key, user_key);
            (&statements.delete_mirror, Box::new(row))
        };
        let batch = logged_batch([mirror, self.outbox.insert()]);
        let values = (mirror_row, self.outbox.row(&event));
        self.ks.session().batch(&batch, values).await?;
        self.outbox.notify();
        let delta = if change.on { 1 } else { -1 };
        statements.counter.apply(tweet_key, &op, delta).await
    }

    /// Which of `tweets` `user` has the reaction on, as a set of keys.
    async fn reacted_among(
        &self,
        statements: &ReactionStatements,
        user: i64,
        keys: &[i64],
    ) -> Result<std::collections::HashSet<u64>, StoreError> {
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let rows = session
                .execute_unpaged(&statements.select_flags, (user, chunk))
                .await?
                .into_rows_result()?;
            let mut on = Vec::new();
            for row in rows.rows::<(i64, Option<bool>)>()? {
                let (tweet, flag) = row?;
                if flag == Some(true) {
                    on.push(from_cql(tweet)?);
                }
            }
            Ok::<_, StoreError>(on)
        });
        let mut on = std::collections::HashSet::new();
        for found in join_all(reads).await {
            on.extend(found?);
        }
        Ok(on)
    }

    /// Deletes a live tweet, as the trait's `delete`: step 1 decides the deletion on the
    /// tweet's own row (`IF deleted = false`, so one call does), steps 2 and 3 are
    /// `Inner::write_deletion`. A repeat finds the tweet deleted and returns false, after
    /// finishing the deletion if it was abandoned (or, when it was settled recently, making
    /// sure the author's count moved: a no-op when it did).
    async fn delete(&self, id: u64, event: Envelope) -> Result<bool, StoreError> {
        let Ok(tweet) = i64::try_from(id) else {
            return Ok(false);
        };
        let mut maybe_decided = false;
        // Since when this call waits for the tweet's create to be written.
        let mut waiting: Option<Instant> = None;
        let mut retries = Retries::new("tweet deletion", DECIDE_ATTEMPTS);
        loop {
            let Some(state) = self.tweet_state(tweet).await? else {
                return Ok(false);
            };
            let deleted_at = state.deleted_at.unwrap_or(0);
            if state.deleted && maybe_decided {
                // This call's own deletion, decided after all (or, as a lost reply cannot
                // tell, a concurrent one, which then gets announced twice: harmless).
                if !self.deletion_settled(tweet, &state).await? {
                    self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
                        .await?;
                }
                return Ok(true);
            }
            if state.deleted {
                if self.settle_deletion(tweet, &state).await? && age(deleted_at) < REPAIR_WINDOW {
                    self.write_deletion(tweet, state.author, None).await?;
                }
                return Ok(false);
            }
            let created_at = state.created_at.unwrap_or(0);
            // A deletion is decided only once the create wrote the author's timeline row, which
            // the deletion's batch removes: how a later call learns whether that batch ran.
            if !self.batch_ran(state.author, tweet).await? {
                let since = *waiting.get_or_insert_with(Instant::now);
                if !abandoned(created_at, since) {
                    tokio::time::sleep(WAIT_POLL).await;
                    continue;
                }
                self.finish_create(tweet, &state).await?;
            }
            // Later than the create's rows, whatever the clock of the process deleting.
            let deleted_at = clock::now_millis().max(created_at + 1);
            let result = self
                .ks
                .session()
                .execute_unpaged(&self.delete_tweet, (CqlTimestamp(deleted_at), tweet))
                .await;
            match lwt(result)? {
                Lwt::Applied => {
                    self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
                        .await?;
                    return Ok(true);
                }
                Lwt::Unknown(_) => maybe_decided = true,
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// Whether step 2 of the deletion of `tweet` ran: it removes the author's timeline row,
    /// which the tweet's create had written before the deletion was decided.
    async fn deletion_settled(&self, tweet: i64, state: &TweetState) -> Result<bool, StoreError> {
        Ok(!self.batch_ran(state.author, tweet).await?)
    }

    /// Finishes the deletion `state` holds if it was abandoned (waiting, while it is young, for
    /// its own caller to write it): its batch with a `TweetDeleted` rebuilt from the row, then
    /// its count. Whether it had been settled.
    async fn settle_deletion(&self, tweet: i64, state: &TweetState) -> Result<bool, StoreError> {
        let deleted_at = state.deleted_at.unwrap_or(0);
        let since = Instant::now();
        loop {
            if self.deletion_settled(tweet, state).await? {
                return Ok(true);
            }
            if abandoned(deleted_at, since) {
                break;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        let (tweet_id, author_id) = (from_cql(tweet)?, from_cql(state.author)?);
        tracing::info!(tweet_id, "finishing an abandoned tweet deletion");
        let payload = Payload::TweetDeleted(TweetDeleted {
            tweet_id,
            author_id,
        });
        let event = events::envelope(self.ids.next_id(), tweet_id, payload);
        self.write_deletion(tweet, state.author, Some((&event, deleted_at)))
            .await?;
        Ok(false)
    }

    /// The trait's `finish_deletion`: finishes the deletion of `id` if it was abandoned.
    async fn finish_deletion(&self, id: u64) -> Result<(), StoreError> {
        let Ok(tweet) = i64::try_from(id) else {
            return Ok(());
        };
        if let Some(state) = self.tweet_state(tweet).await?
            && state.deleted
        {
            self.settle_deletion(tweet, &state).await?;
        }
        Ok(())
    }

    /// Steps 2 and 3 of a decided deletion: with `announce` (its event and the deletion's
    /// time), the removal of its timeline rows and the event in one logged batch, the removals
    /// at the deletion's time, so a create's batch that lands late stays removed; then the
    /// author's count. The count op `tweet:<id>:created` is applied first (a no-op when its
    /// create did so), so that the deletion never takes back a count that a create cut short
    /// never added; the two cancel out either way.
    async fn write_deletion(
        &self,
        tweet: i64,
        author: i64,
        announce: Option<(&Envelope, i64)>,
    ) -> Result<(), StoreError> {
        if let Some((event, deleted_at)) = announce {
            let bucket = id::millis_of(from_cql(tweet)?) / BUCKET_MS;
            let written = deleted_at.saturating_mul(1000);
            let batch = logged_batch([
                &self.delete_author_tweet,
                &self.delete_timeline,
                self.outbox.insert(),
            ]);
            let values = (
                (written, author, tweet),
                (written, bucket, tweet),
                self.outbox.row(event),
            );
            self.ks.session().batch(&batch, values).await?;
            self.outbox.notify();
        }
        let created = format!("tweet:{tweet}:created");
        let deleted = format!("tweet:{tweet}:deleted");
        let age = clock::now_millis() - id::millis_of(from_cql(tweet)?);
        // Past the ledger's lifetime the created op may have expired from it: it was applied
        // long ago (a create finishes within seconds), and applying it again would count twice.
        if age < REPAIR_WINDOW_MS {
            self.authors.apply(author, &created, 1).await?;
        }
        self.authors.apply(author, &deleted, -1).await
    }

    /// Up to `take` IDs of the public timeline within `bounds`, in the direction of `page`,
    /// read hour by hour from the hours `timeline_buckets` lists.
    async fn scan_timeline(
        &self,
        page: &PageRequest,
        bounds: &PageBounds,
        take: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let forward = page.since.is_some();
        let (buckets, timeline) = if forward {
            (&self.buckets_forward, &self.timeline_forward)
        } else {
            (&self.buckets_backward, &self.timeline_backward)
        };
        let bucket_of =
            |key: i64| -> Result<i64, StoreError> { Ok(id::millis_of(from_cql(key)?) / BUCKET_MS) };
        let (mut low, mut high) = (bucket_of(bounds.low)?, bucket_of(bounds.high)?);
        let session = self.ks.session();
        let mut ids = Vec::new();
        while low <= high {
            let rows = session
                .execute_unpaged(buckets, (low, high, BUCKETS_PER_READ))
                .await?
                .into_rows_result()?;
            let mut read = 0;
            for row in rows.rows::<(i64,)>()? {
                let (bucket,) = row?;
                read += 1;
                let left = i32::try_from(take - ids.len()).unwrap_or(i32::MAX);
                let rows = session
                    .execute_unpaged(timeline, (bucket, bounds.low, bounds.high, left))
                    .await?
                    .into_rows_result()?;
                for row in rows.rows::<(i64,)>()? {
                    ids.push(from_cql(row?.0)?);
                }
                if ids.len() >= take {
                    return Ok(ids);
                }
                if forward {
                    low = bucket + 1;
                } else {
                    high = bucket - 1;
                }
            }
            if read < BUCKETS_PER_READ {
                break;
            }
        }
        Ok(ids)
    }

    async fn claim_key(
        &self,
        author: u64,
        key: &str,
        tweet_id: u64,
        text: &str,
        window: Duration,
    ) -> Result<KeyClaim, StoreError> {
        let ttl = i32::try_from(window.as_secs().clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX);
        let values = (
            to_cql(author)?,
            key,
            to_cql(tweet_id)?,
            text,
            CqlTimestamp(clock::now_millis()),
            ttl,
        );
        let result = self
            .ks
            .session()
            .execute_unpaged(&self.claim_key, values)
            .await;
        let holder = match lwt(result)? {
            Lwt::Applied => return Ok(KeyClaim::Won),
            Lwt::NotApplied(holder) => holder,
            // Fails the post, as any store error: a retry with the key finds the claim if it
            // landed.
            Lwt::Unknown(unknown) => return Err(unknown.into()),
        };
        match (holder.get("tweet_id"), holder.get("text")) {
            (Some(CqlValue::BigInt(id)), Some(CqlValue::Text(text))) => Ok(KeyClaim::Held {
                tweet_id: from_cql(*id)?,
                text: text.clone(),
            }),
            _ => Err(StoreError::Corrupt(format!(
                "the idempotency key {key:?} of author {author} holds no tweet"
            ))),
        }
    }

    /// The trait's `reacted`.
    async fn reacted(
        &self,
        reaction: Reaction,
        user: u64,
        before: Option<u64>,
        max: usize,
    ) -> Result<Reacted, StoreError> {
        let (Ok(user), Ok(before)) = (
            i64::try_from(user),
            i64::try_from(before.unwrap_or(i64::MAX as u64)),
        ) else {
            return Ok(Reacted::default());
        };
        // One row more than asked, to learn whether another batch follows.
        let take = i32::try_from(max + 1).unwrap_or(i32::MAX);
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.reaction(reaction).scan, (user, before, take))
            .await?
            .into_rows_result()?;
        let mut scanned = Vec::new();
        for row in rows.rows::<(i64, Option<bool>)>()? {
            let (tweet, on) = row?;
            scanned.push((from_cql(tweet)?, on == Some(true)));
        }
        let next = if scanned.len() > max {
            scanned.truncate(max);
            scanned.last().map(|(tweet, _)| *tweet)
        } else {
            None
        };
        let tweets = scanned
            .into_iter()
            .filter_map(|(tweet, on)| on.then_some(tweet))
            .collect();
        Ok(Reacted { tweets, next })
    }

    /// Applies the count op of the write `event` announces (a no-op when it was), within the
    /// window the ledger remembers ops: its batch ran (the event exists), but its process may
    /// have died before the count moved.
    async fn settle(&self, event: &Envelope) -> Result<(), StoreError> {
        let occurred = event.occurred_at.as_ref().map_or(0, clock::from_timestamp);
        if clock::now_millis() - occurred >= REPAIR_WINDOW_MS {
            return Ok(());
        }
        let (reaction, tweet, delta) = match &event.payload {
            Some(Payload::TweetCreated(created)) => {
                let op = format!("tweet:{}:created", created.tweet_id);
                return self.authors.apply(to_cql(created.author_id)?, &op, 1).await;
            }
            Some(Payload::TweetDeleted(deleted)) => {
                let (tweet, author) = (to_cql(deleted.tweet_id)?, to_cql(deleted.author_id)?);
                return self.write_deletion(tweet, author, None).await;
            }
            Some(Payload::TweetLiked(e)) => (Reaction::Like, e.tweet_id, 1),
            Some(Payload::TweetUnliked(e)) => (Reaction::Like, e.tweet_id, -1),
            Some(Payload::Retweeted(e)) => (Reaction::Retweet, e.tweet_id, 1),
            Some(Payload::Unretweeted(e)) => (Reaction::Retweet, e.tweet_id, -1),
            _ => return Ok(()),
        };
        let Some(op) = event.headers.get(COUNT_OP_HEADER) else {
            return Ok(());
        };
        let counter = &self.reaction(reaction).counter;
        counter.apply(to_cql(tweet)?, op, delta).await
    }

    async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        let (Ok(author), Some(bounds)) = (i64::try_from(author_id), PageBounds::of(&page)) else {
            return Ok(Page::from_scan(&page, Vec::new(), |t: &TweetRecord| t.id));
        };
        // Reads in the direction `scan_page` does, `limit + 1` IDs, for `Page::from_scan`.
        let statement = if page.since.is_some() {
            &self.page_forward
        } else {
            &self.page_backward
        };
        let take = i32::try_from(page.limit.get() + 1).unwrap_or(i32::MAX);
        let rows = self
            .ks
            .session()
            .execute_unpaged(statement, (author, bounds.low, bounds.high, take))
            .await?
            .into_rows_result()?;
        let mut ids = Vec::new();
        for row in rows.rows::<(i64,)>()? {
            ids.push(from_cql(row?.0)?);
        }
        let tweets = self.fetch(&ids).await?;
        Ok(Page::from_scan(&page, tweets, |t| t.id))
    }

    async fn count_by_authors(&self, author_ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        let keys = distinct_keys(&author_ids);
        let session = self.ks.session();
        let reads = keys.chunks(IN_CHUNK).map(|chunk| async move {
            let rows = session
                .execute_unpaged(&self.select_counts, (chunk,))
                .await?
                .into_rows_result()?;
            let mut counts = Vec::new();
            for row in rows.rows::<(i64, Option<i64>)>()? {
                let (author, count) = row?;
                // A count never goes below zero; clamp rather than wrap if one ever did.
                counts.push((from_cql(author)?, count.unwrap_or(0).max(0) as u64));
            }
            Ok::<_, StoreError>(counts)
        });
        let mut by_author = HashMap::new();
        for counts in join_all(reads).await {
            by_author.extend(counts?);
        }
        Ok(author_ids
            .iter()
            .map(|id| by_author.get(id).copied().unwrap_or(0))
            .collect())
    }

    async fn liked_and_retweeted(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, StoreError> {
        let Ok(user_key) = i64::try_from(user) else {
            return Ok(vec![(false, false); tweets.len()]);
        };
        let keys = distinct_keys(&tweets);
        let (liked, retweeted) = try_join(
            self.reacted_among(&self.likes, user_key, &keys),
            self.reacted_among(&self.retweets, user_key, &keys),
        )
        .await?;
        Ok(tweets
            .iter()
            .map(|id| (liked.contains(id), retweeted.contains(id)))
            .collect())
    }

    async fn public_timeline(&self, page: PageRequest) -> Result<Page<TweetRecord>, StoreError> {
        let Some(bounds) = PageBounds::of(&page) else {
            return Ok(Page::from_scan(&page, Vec::new(), |t: &TweetRecord| t.id));
        };
        let ids = self
            .scan_timeline(&page, &bounds, page.limit.get() + 1)
            .await?;
        let tweets = self.fetch(&ids).await?;
        Ok(Page::from_scan(&page, tweets, |t| t.id))
    }
}

/// What a like or retweet (`on`), or its undoing, of `pair` at `version` announces.
fn reaction_payload(reaction: Reaction, on: bool, pair: Pair, version: u64) -> Payload {
    let (tweet_id, author_id, user_id) = (pair.tweet, pair.author, pair.user);
    match (reaction, on) {
        (Reaction::Like, true) => Payload::TweetLiked(TweetLiked {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Like, false) => Payload::TweetUnliked(TweetUnliked {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Retweet, true) => Payload::Retweeted(Retweeted {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
        (Reaction::Retweet, false) => Payload::Unretweeted(Unretweeted {
            tweet_id,
            author_id,
            user_id,
            version,
        }),
    }
}

/// The count op key of a like's or retweet's change to `version`.
fn reaction_op(statements: &ReactionStatements, user: u64, version: i32) -> String {
    format!("{}:{user}:{version}", statements.name)
}

/// A stored count; never below zero (clamped rather than wrapped if one ever were).
fn count(stored: Option<i64>) -> u64 {
    stored.unwrap_or(0).max(0) as u64
}

/// Who holds a tweet ID after a claim.
enum Claim {
    /// This call claimed it: the rest of the create follows.
    Won,
    /// An earlier call with this very tweet did (a retry, or a concurrent duplicate).
    HeldBySame,
    /// A different tweet holds it, deleted or not: the ID was minted twice.
    HeldByOther,
    /// This very tweet, deleted since; its row stays as a tombstone so that nothing brings it
    /// back.
    Deleted,
}

/// The statements of likes or of retweets, which live in tables of the same shape.
struct ReactionStatements {
    /// The op key prefix: `like` or `retweet`.
    name: &'static str,
    /// `SELECT <flag>, version, <at>` of one (user, tweet) row.
    select: PreparedStatement,
    /// The first change of a (user, tweet): version 1, `IF NOT EXISTS`.
    first: PreparedStatement,
    /// Every later change: the next version, `IF version = ?`.
    change: PreparedStatement,
    /// The mirror row (`tweet_likes` / `tweet_retweets`) of a change, at its write time.
    insert_mirror: PreparedStatement,
    /// The undoing's mirror delete, at its write time.
    delete_mirror: PreparedStatement,
    /// `SELECT version` of one mirror row: whether the pair's last change was settled.
    select_mirror: PreparedStatement,
    /// `SELECT tweet_id, <flag> ... WHERE user_id = ? AND tweet_id IN ?`.
    select_flags: PreparedStatement,
    /// `SELECT tweet_id, <flag> ... WHERE user_id = ? AND tweet_id < ? LIMIT ?`, newest first.
    scan: PreparedStatement,
    /// The tweets' like or retweet counts in `tweet_counts`.
    counter: CountLedger,
}

impl ReactionStatements {
    async fn new(ks: &Keyspace, reaction: Reaction) -> Result<Self, CqlError> {
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

/// A (user, tweet) row of `user_likes` or `user_retweets`: whether it is on, its version, and
/// when its last change was decided.
type ReactionRow = (Option<bool>, Option<i32>, Option<CqlTimestamp>);

#[async_trait]
impl TweetStore for CqlTweetStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.inner.ks.ping().await?)
    }

    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        self.spawned(|inner| async move { inner.create(tweet, event).await })
            .await
    }

    async fn claim_key(
        &self,
        author: u64,
        key: &str,
        tweet_id: u64,
        text: &str,
        window: Duration,
    ) -> Result<KeyClaim, StoreError> {
        self.inner
            .claim_key(author, key, tweet_id, text, window)
            .await
    }

    async fn forget_author(&self, user: u64) -> Result<(), StoreError> {
        self.inner.deleted.forget(user).await
    }

    async fn author_gone(&self, user: u64) -> Result<bool, StoreError> {
        self.inner.deleted.is_gone(user).await
    }

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        self.inner.deleted.pending(max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        self.inner.deleted.done(purge).await
    }

    async fn reacted(
        &self,
        reaction: Reaction,
        user: u64,
        before: Option<u64>,
        max: usize,
    ) -> Result<Reacted, StoreError> {
        self.inner.reacted(reaction, user, before, max).await
    }

    fn settles_events(&self) -> bool {
        true
    }

    async fn settle(&self, event: &Envelope) -> Result<(), StoreError> {
        self.inner.settle(event).await
    }

    async fn get(&self, id: u64) -> Result<Option<TweetRecord>, StoreError> {
        Ok(self.inner.fetch(&[id]).await?.pop())
    }

    async fn get_many(&self, ids: Vec<u64>) -> Result<Vec<TweetRecord>, StoreError> {
        self.inner.fetch(&ids).await
    }

    async fn list_by_author(
        &self,
        author_id: u64,
        page: PageRequest,
    ) -> Result<Page<TweetRecord>, StoreError> {
        self.inner.list_by_author(author_id, page).await
    }

    async fn count_by_authors(&self, author_ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.inner.count_by_authors(author_ids).await
    }

    /// Likes or retweets (`on`), or takes one back: step 1 decides the change on the user's own
    /// row (a lightweight transaction that never contends with other users), step 2 writes the
    /// mirror row and the event in one logged batch, step 3 moves the count through its ledger
    /// under the op key `<like|retweet>:<user>:<version>`; first finishing the pair's last change
    /// if it was abandoned (see the [module docs](self)).
    ///
    /// A repeat that finds the change made already returns `Some(false)`; if the change is
    /// recent, it first makes sure the change's count op was applied (a no-op when it was), so a
    /// retry after a crash between steps 2 and 3 finishes the count. Two calls of the same user
    /// racing with the same change, whose lightweight transactions both time out, may both take
    /// it for their own and stage an event each; the count still moves once.
    async fn react(
        &self,
        reaction: Reaction,
        user: u64,
        tweet: u64,
        on: bool,
        event: Envelope,
    ) -> Result<Option<bool>, StoreError> {
        self.spawned(|inner| async move { inner.react(reaction, user, tweet, on, event).await })
            .await
    }

    async fn liked_and_retweeted(
        &self,
        user: u64,
        tweets: Vec<u64>,
    ) -> Result<Vec<(bool, bool)>, StoreError> {
        self.inner.liked_and_retweeted(user, tweets).await
    }

    async fn delete(&self, id: u64, event: Envelope) -> Result<bool, StoreError> {
        self.spawned(|inner| async move { inner.delete(id, event).await })
            .await
    }

    async fn finish_deletion(&self, id: u64) -> Result<(), StoreError> {
        self.spawned(|inner| async move { inner.finish_deletion(id).await })
            .await
    }

    async fn public_timeline(&self, page: PageRequest) -> Result<Page<TweetRecord>, StoreError> {
        self.inner.public_timeline(page).await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::clone(&self.inner.outbox) as Arc<dyn Outbox>
    }
}

/// A `tweets` row: `(tweet_id, author_id, text, created_at, deleted)`.
type TweetRow = (
    i64,
    Option<i64>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<bool>,
);

/// The record a `tweets` row holds, `None` for a deleted tweet's tombstone. Like and retweet
/// counts are zero here: they live in `tweet_counts`, which `fetch` reads alongside.
fn record(row: TweetRow) -> Result<Option<TweetRecord>, StoreError> {
    let (id, author_id, text, created_at, deleted) = row;
    if deleted == Some(true) {
        return Ok(None);
    }
    let (Some(author_id), Some(text), Some(created_at)) = (author_id, text, created_at) else {
        return Err(StoreError::Corrupt(format!(
            "tweet {id} lacks its author, text or time"
        )));
    };
    Ok(Some(TweetRecord {
        id: from_cql(id)?,
        author_id: from_cql(author_id)?,
        text,
        created_at_ms: created_at.0,
        like_count: 0,
        retweet_count: 0,
    }))
}

/// A page request as inclusive bounds on a `bigint` clustering key: `scan_page`'s half-open
/// ranges (`since` < id < `before`), made to fit CQL's signed IDs.
struct PageBounds {
    low: i64,
    high: i64,
}

impl PageBounds {
    /// `None` when no ID can be in the page.
    fn of(page: &PageRequest) -> Option<Self> {
        let low = page.since.map_or(Some(0), |since| since.checked_add(1))?;
        let high = match page.before {
            Some(before) => before.checked_sub(1)?,
            None => u64::MAX,
        };
        // IDs are below 2^63: an upper bound past that means "no upper bound".
        let high = i64::try_from(high).unwrap_or(i64::MAX);
        let low = i64::try_from(low).ok()?;
        (low <= high).then_some(Self { low, high })
    }
}

/// The IDs as CQL keys, each once. IDs past `bigint` cannot be stored, so they are not looked up.
fn distinct_keys(ids: &[u64]) -> Vec<i64> {
    let mut keys: Vec<i64> = ids
        .iter()
        .filter_map(|&id| i64::try_from(id).ok())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// An ID as the `bigint` that stores it. Snowflake IDs stay below 2^63 for decades.
fn to_cql(id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::Corrupt(format!("id {id} does not fit a bigint")))
}

fn from_cql(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("negative id {id} stored")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use twtr_common::cql::testing::keyspace_for;

    use super::*;
    use crate::store::conformance::{self, event, ids, staged_of, unique_id};

    async fn open_cql() -> Option<(Arc<dyn TweetStore>, ())> {
        let (session, config) = keyspace_for(&super::super::SCHEMA).await?;
        let ks = Keyspace::new(session, &config, "tweets").expect("the tweets keyspace name");
        let store = CqlTweetStore::new(ks, ids())
            .await
            .expect("prepare the tweets statements");
        Some((Arc::new(store), ()))
    }

    crate::tweet_store_conformance!(optional open_cql);

    async fn cql_store() -> Option<CqlTweetStore> {
        let (session, config) = keyspace_for(&super::super::SCHEMA).await?;
        let ks = Keyspace::new(session, &config, "tweets").unwrap();
        Some(CqlTweetStore::new(ks, ids()).await.unwrap())
    }

    /// Runs `query` (tables written `{ks}.<table>`) in the store's keyspace.
    async fn run(
        store: &CqlTweetStore,
        query: &str,
        values: impl SerializeRow,
    ) -> scylla::response::query_result::QueryResult {
        let query = twtr_common::cql::qualify(query, store.inner.ks.name());
        store
            .inner
            .ks
            .session()
            .query_unpaged(query, values)
            .await
            .unwrap()
    }

    /// Whether `query` (tables written `{ks}.<table>`) returns a row.
    async fn has_row(store: &CqlTweetStore, query: &str, values: impl SerializeRow) -> bool {
        let rows = run(store, query, values).await;
        rows.into_rows_result().unwrap().rows_num() > 0
    }

    /// The crash gap of the count ledger: a process that dies after a write's batch (its event
    /// staged) but before its count op leaves the count behind, until the service consumes the
    /// event back and settles it.
    #[tokio::test]
    async fn settling_its_event_finishes_writes_cut_short_before_their_counts() {
        let Some(store) = cql_store().await else {
            return;
        };
        let [author, user, id] = [unique_id(), unique_id(), unique_id()];
        let tweet = conformance::tweet(id, author);
        let now = Some(clock::to_timestamp(clock::now_millis()));
        let announce = |payload: Payload| Envelope {
            event_id: unique_id(),
            r#type: twtr_common::events::routing_key(&payload).to_owned(),
            occurred_at: now,
            payload: Some(payload),
            ..Envelope::default()
        };
        let created = announce(Payload::TweetCreated(
            twtr_proto::events::v1::TweetCreated {
                tweet_id: id,
                author_id: author,
                text: tweet.text.clone(),
                created_at: now,
            },
        ));
        assert!(matches!(
            store.inner.claim(&tweet).await.unwrap(),
            Claim::Won
        ));
        store.inner.write_batch(&tweet, &created).await.unwrap();
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
        // A like decided, its mirror row and event written, its count never moved.
        let (user_key, tweet_key) = (to_cql(user).unwrap(), to_cql(id).unwrap());
        let at = CqlTimestamp(clock::now_millis());
        store
            .inner
            .ks
            .session()
            .execute_unpaged(&store.inner.likes.first, (user_key, tweet_key, at))
            .await
            .unwrap();
        let op = reaction_op(&store.inner.likes, user, 1);
        let mut liked = announce(Payload::TweetLiked(twtr_proto::events::v1::TweetLiked {
            tweet_id: id,
            author_id: author,
            user_id: user,
            version: 1,
        }));
        liked.headers.insert(COUNT_OP_HEADER.to_owned(), op);
        assert_eq!(store.get(id).await.unwrap().unwrap().like_count, 0);
        // Delivered twice, as at-least-once delivery may.
        for event in [&created, &liked, &created, &liked] {
            store.settle(event).await.unwrap();
        }
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
        assert_eq!(store.get(id).await.unwrap().unwrap().like_count, 1);
    }

    #[tokio::test]
    async fn a_retry_finishes_a_create_whose_batch_never_ran() {
        let Some(store) = cql_store().await else {
            return;
        };
        let [author, id, retry_event] = [unique_id(), unique_id(), unique_id()];
        let tweet = conformance::tweet(id, author);
        // The first attempt died right after claiming the ID.
        assert!(matches!(
            store.inner.claim(&tweet).await.unwrap(),
            Claim::Won
        ));
        store
            .create(tweet.clone(), event(retry_event))
            .await
            .unwrap();
        let listed = store
            .list_by_author(author, PageRequest::first(twtr_common::Limit::DEFAULT))
            .await
            .unwrap();
        assert_eq!(listed.items, vec![tweet]);
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
        let bucket = id::millis_of(id) / BUCKET_MS;
        assert!(
            has_row(
                &store,
                "SELECT author_id FROM {ks}.timeline WHERE bucket = ? AND tweet_id = ?",
                (bucket, id as i64),
            )
            .await
        );
        assert!(
            has_row(
                &store,
                "SELECT bucket FROM {ks}.timeline_buckets WHERE scope = 'all' AND bucket = ?",
                (bucket,),
            )
            .await
        );
        assert_eq!(staged_of(&store, &[retry_event]).await, vec![retry_event]);
    }

    #[tokio::test]
    async fn a_retry_after_the_batch_counts_and_stages_nothing_more() {
        let Some(store) = cql_store().await else {
            return;
        };
        let [author, id, first_event, retry_event] =
            [unique_id(), unique_id(), unique_id(), unique_id()];
        let tweet = conformance::tweet(id, author);
        // The first attempt died between its batch and its count.
        assert!(matches!(
            store.inner.claim(&tweet).await.unwrap(),
            Claim::Won
        ));
        store
            .inner
            .write_batch(&tweet, &event(first_event))
            .await
            .unwrap();
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
        store
            .create(tweet.clone(), event(retry_event))
            .await
            .unwrap();
        store.create(tweet, event(retry_event)).await.unwrap();
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
        // The op's ledger row expires once no redelivery can come any more.
        let op = format!("tweet:{id}:created");
        let query = twtr_common::cql::qualify(
            "SELECT TTL(applied_at) FROM {ks}.author_counts WHERE author_id = ? AND op = ?",
            store.inner.ks.name(),
        );
        let (ttl,): (Option<i32>,) = store
            .inner
            .ks
            .session()
            .query_unpaged(query, (author as i64, op))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row()
            .unwrap();
        assert!(ttl.is_some_and(|ttl| ttl > 259_000), "{ttl:?}");
        assert_eq!(
            staged_of(&store, &[first_event, retry_event]).await,
            vec![first_event]
        );
    }

    /// A tweet by a fresh author, fully created: `(author, tweet)`.
    async fn posted(store: &CqlTweetStore) -> (u64, u64) {
        let (author, id) = (unique_id(), unique_id());
        let created = store
            .create(conformance::tweet(id, author), event(unique_id()))
            .await
            .unwrap();
        assert!(created);
        (author, id)
    }

    /// The event a service call would stage for `user` changing `reaction` on `tweet` to `on`
    /// (the store stamps the version it decides).
    fn reaction_event(reaction: Reaction, on: bool, pair: Pair) -> Envelope {
        let payload = reaction_payload(reaction, on, pair, 0);
        events::envelope(unique_id(), pair.tweet, payload)
    }

    async fn react(
        store: &CqlTweetStore,
        reaction: Reaction,
        on: bool,
        pair: Pair,
    ) -> Option<bool> {
        let event = reaction_event(reaction, on, pair);
        store
            .react(reaction, pair.user, pair.tweet, on, event)
            .await
            .unwrap()
    }

    /// The count `reaction` has on `tweet`.
    async fn count_of(store: &CqlTweetStore, reaction: Reaction, tweet: u64) -> u64 {
        let tweet = store.get(tweet).await.unwrap().unwrap();
        match reaction {
            Reaction::Like => tweet.like_count,
            Reaction::Retweet => tweet.retweet_count,
        }
    }

    /// The staged events about `tweet`, as an operator's peek at the outbox finds them.
    async fn staged_about(store: &CqlTweetStore, tweet: u64) -> Vec<Envelope> {
        let pending = store.outbox().peek(100_000).await.unwrap();
        let about = |event: &Envelope| match &event.payload {
            Some(Payload::TweetCreated(e)) => e.tweet_id,
            Some(Payload::TweetDeleted(e)) => e.tweet_id,
            Some(Payload::TweetLiked(e)) => e.tweet_id,
            Some(Payload::TweetUnliked(e)) => e.tweet_id,
            Some(Payload::Retweeted(e)) => e.tweet_id,
            Some(Payload::Unretweeted(e)) => e.tweet_id,
            _ => 0,
        };
        pending
            .into_iter()
            .map(|p| p.event)
            .filter(|e| about(e) == tweet)
            .collect()
    }

    /// The staged events of `pair`'s changes at `version`: `(type, event id, count op)`.
    async fn staged_changes(
        store: &CqlTweetStore,
        pair: Pair,
        version: u64,
    ) -> Vec<(String, u64, Option<String>)> {
        let user_and_version = |event: &Envelope| match &event.payload {
            Some(Payload::TweetLiked(e)) => Some((e.user_id, e.version)),
            Some(Payload::TweetUnliked(e)) => Some((e.user_id, e.version)),
            Some(Payload::Retweeted(e)) => Some((e.user_id, e.version)),
            Some(Payload::Unretweeted(e)) => Some((e.user_id, e.version)),
            _ => None,
        };
        staged_about(store, pair.tweet)
            .await
            .into_iter()
            .filter(|e| user_and_version(e) == Some((pair.user, version)))
            .map(|e| {
                (
                    e.r#type,
                    e.event_id,
                    e.headers.get(COUNT_OP_HEADER).cloned(),
                )
            })
            .collect()
    }

    /// Step 1 of `pair`'s change of `reaction` to `on`, decided now, and nothing more: what a
    /// call leaves that dies (or whose batch fails) right after its lightweight transaction.
    async fn decide(store: &CqlTweetStore, reaction: Reaction, on: bool, pair: Pair) -> Change {
        let inner = &store.inner;
        let statements = inner.reaction(reaction);
        let (user, tweet) = (to_cql(pair.user).unwrap(), to_cql(pair.tweet).unwrap());
        let session = inner.ks.session();
        let (decided, result) = match inner.last_change(statements, user, tweet).await.unwrap() {
            None => {
                assert!(on, "a pair's first change is a like or a retweet");
                let first = Change {
                    on,
                    version: 1,
                    at: clock::now_millis(),
                };
                let values = (user, tweet, CqlTimestamp(first.at));
                let result = session.execute_unpaged(&statements.first, values).await;
                (first, result)
            }
            Some(last) => {
                let next = last.next(on);
                let at = CqlTimestamp(next.at);
                let values = (on, next.version, at, user, tweet, last.version);
                let result = session.execute_unpaged(&statements.change, values).await;
                (next, result)
            }
        };
        assert!(lwt(result).unwrap().applied().unwrap());
        decided
    }

    /// A change of `reaction` to `on` whose caller died right after deciding it (step 1 only):
    /// the repeated call (a new request, with its own event), and separately the next
    /// different call on another such pair, each stage exactly the missing event, with the
    /// decided version and count op, and move the count exactly once. Both are made while the
    /// dead callers' changes are fresh, so they first wait [`ABANDONED_AFTER`] for them.
    async fn a_change_cut_short_after_its_decision_is_finished(reaction: Reaction, on: bool) {
        let Some(store) = cql_store().await else {
            return;
        };
        let (author, tweet) = posted(&store).await;
        let pair = |user| Pair {
            user,
            tweet,
            author,
        };
        let (fan, repeats, moves_on) = (pair(unique_id()), pair(unique_id()), pair(unique_id()));
        // Someone else's reaction, so that a count taken back below zero would show.
        assert_eq!(react(&store, reaction, true, fan).await, Some(true));
        if !on {
            for pair in [repeats, moves_on] {
                assert_eq!(react(&store, reaction, true, pair).await, Some(true));
            }
        }
        let before = count_of(&store, reaction, tweet).await;
        let version: u64 = if on { 1 } else { 2 };
        let (decided, next) = (routing_key(reaction, on), routing_key(reaction, !on));
        let mut decided_for_moves_on = None;
        for pair in [repeats, moves_on] {
            decided_for_moves_on = Some(decide(&store, reaction, on, pair).await);
            assert!(staged_changes(&store, pair, version).await.is_empty());
        }
        assert_eq!(count_of(&store, reaction, tweet).await, before);

        let (repeat_event, next_event) = (
            reaction_event(reaction, on, repeats),
            reaction_event(reaction, !on, moves_on),
        );
        let (repeated, moved_on) = futures_util::future::join(
            store.react(reaction, repeats.user, tweet, on, repeat_event.clone()),
            store.react(reaction, moves_on.user, tweet, !on, next_event.clone()),
        )
        .await;
        assert_eq!(repeated.unwrap(), Some(false), "decided before the repeat");
        assert_eq!(moved_on.unwrap(), Some(true));
        let delta: i64 = if on { 1 } else { -1 };
        // `repeats`' change moved the count once; `moves_on`'s, and then back.
        let after = before.checked_add_signed(delta).unwrap();
        assert_eq!(count_of(&store, reaction, tweet).await, after);

        let name = store.inner.reaction(reaction).name;
        let op = |pair: Pair, version: u64| Some(format!("{name}:{}:{version}", pair.user));
        let finished = staged_changes(&store, repeats, version).await;
        assert_eq!(finished.len(), 1, "the missing event, once: {finished:?}");
        let (kind, id, count_op) = &finished[0];
        assert_eq!((kind.as_str(), count_op), (decided, &op(repeats, version)));
        assert_ne!(
            *id, repeat_event.event_id,
            "the repeat's own event announces nothing"
        );
        let finished = staged_changes(&store, moves_on, version).await;
        assert_eq!(finished.len(), 1, "the missing event, once: {finished:?}");
        assert_eq!(
            (finished[0].0.as_str(), &finished[0].2),
            (decided, &op(moves_on, version))
        );
        assert_eq!(
            staged_changes(&store, moves_on, version + 1).await,
            vec![(
                next.to_owned(),
                next_event.event_id,
                op(moves_on, version + 1)
            )]
        );

        // Settled now: a repeat stages and counts nothing more.
        assert_eq!(react(&store, reaction, on, repeats).await, Some(false));
        assert_eq!(staged_changes(&store, repeats, version).await.len(), 1);
        assert_eq!(count_of(&store, reaction, tweet).await, after);
        let flags = store
            .liked_and_retweeted(repeats.user, vec![tweet])
            .await
            .unwrap();
        let reacted = match reaction {
            Reaction::Like => flags[0].0,
            Reaction::Retweet => flags[0].1,
        };
        assert_eq!(reacted, on);
        // The mirror rows tell the same as the pairs' rows, whatever order the batches landed in.
        let mirror = match reaction {
            Reaction::Like => {
                "SELECT user_id FROM {ks}.tweet_likes WHERE tweet_id = ? AND user_id = ?"
            }
            Reaction::Retweet => {
                "SELECT user_id FROM {ks}.tweet_retweets WHERE tweet_id = ? AND user_id = ?"
            }
        };
        for (pair, state) in [(repeats, on), (moves_on, !on)] {
            let listed = has_row(&store, mirror, (tweet as i64, pair.user as i64)).await;
            assert_eq!(listed, state);
        }
        // The dead caller of `moves_on`'s change wakes up and writes its batch after all, after
        // the next change's: its mirror row loses to the later one's, its count op is a no-op.
        let late = decided_for_moves_on.unwrap();
        let statements = store.inner.reaction(reaction);
        let event = reaction_event(reaction, on, moves_on);
        let writing = store
            .inner
            .write_reaction(statements, moves_on, late, &event);
        writing.await.unwrap();
        let listed = has_row(&store, mirror, (tweet as i64, moves_on.user as i64)).await;
        assert_eq!(listed, !on, "no stale mirror row comes back");
        assert_eq!(count_of(&store, reaction, tweet).await, after);
        let last = store
            .inner
            .last_change(statements, moves_on.user as i64, tweet as i64);
        let last = last.await.unwrap().unwrap();
        assert!(
            store
                .inner
                .reaction_settled(statements, moves_on, &last)
                .await
                .unwrap()
        );
    }

    fn routing_key(reaction: Reaction, on: bool) -> &'static str {
        let pair = Pair {
            user: 1,
            tweet: 1,
            author: 1,
        };
        twtr_common::events::routing_key(&reaction_payload(reaction, on, pair, 1))
    }

    #[tokio::test]
    async fn a_like_cut_short_after_its_decision_is_finished_by_the_next_call() {
        a_change_cut_short_after_its_decision_is_finished(Reaction::Like, true).await;
    }

    #[tokio::test]
    async fn an_unlike_cut_short_after_its_decision_is_finished_by_the_next_call() {
        a_change_cut_short_after_its_decision_is_finished(Reaction::Like, false).await;
    }

    #[tokio::test]
    async fn a_retweet_cut_short_after_its_decision_is_finished_by_the_next_call() {
        a_change_cut_short_after_its_decision_is_finished(Reaction::Retweet, true).await;
    }

    #[tokio::test]
    async fn an_unretweet_cut_short_after_its_decision_is_finished_by_the_next_call() {
        a_change_cut_short_after_its_decision_is_finished(Reaction::Retweet, false).await;
    }

    /// The `TweetDeleted` events staged for `tweet`.
    async fn staged_deletions(store: &CqlTweetStore, tweet: u64) -> Vec<u64> {
        let staged = staged_about(store, tweet).await.into_iter();
        staged
            .filter(|e| matches!(e.payload, Some(Payload::TweetDeleted(_))))
            .map(|e| e.event_id)
            .collect()
    }

    fn deletion_event(tweet: u64, author: u64) -> Envelope {
        let payload = Payload::TweetDeleted(TweetDeleted {
            tweet_id: tweet,
            author_id: author,
        });
        events::envelope(unique_id(), tweet, payload)
    }

    const AUTHOR_TWEET: &str =
        "SELECT tweet_id FROM {ks}.author_tweets WHERE author_id = ? AND tweet_id = ?";
    const TIMELINE_ROW: &str =
        "SELECT tweet_id FROM {ks}.timeline WHERE bucket = ? AND tweet_id = ?";

    /// A deletion whose caller died right after deciding it: the repeated delete (a new
    /// request), and separately the next different call on another such tweet (a like, and
    /// the service's `finish_deletion`), each stage exactly the missing `TweetDeleted` and
    /// move the author's count exactly once.
    #[tokio::test]
    async fn a_deletion_cut_short_after_its_decision_is_finished_by_the_next_call() {
        let Some(store) = cql_store().await else {
            return;
        };
        let (author, user) = (unique_id(), unique_id());
        let [kept, repeated, next] = [(); 3].map(|()| unique_id());
        for id in [kept, repeated, next] {
            let tweet = conformance::tweet(id, author);
            assert!(store.create(tweet, event(unique_id())).await.unwrap());
        }
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
        // Step 1 of two deletions, and nothing more.
        for id in [repeated, next] {
            let values = (CqlTimestamp(clock::now_millis()), id as i64);
            let inner = &store.inner;
            let result = inner
                .ks
                .session()
                .execute_unpaged(&inner.delete_tweet, values);
            assert!(lwt(result.await).unwrap().applied().unwrap());
            assert_eq!(store.get(id).await.unwrap(), None, "reads as gone at once");
        }
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);

        let retry = deletion_event(repeated, author);
        let like = reaction_event(
            Reaction::Like,
            true,
            Pair {
                user,
                tweet: next,
                author,
            },
        );
        let (deleted, liked) = futures_util::future::join(
            store.delete(repeated, retry.clone()),
            store.like(user, next, like.clone()),
        )
        .await;
        assert!(!deleted.unwrap(), "deleted before the repeat");
        assert_eq!(liked.unwrap(), None, "a deleted tweet");
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
        for id in [repeated, next] {
            let staged = staged_deletions(&store, id).await;
            assert_eq!(staged.len(), 1, "the missing event, once: {staged:?}");
            assert_ne!(staged[0], retry.event_id);
            let bucket = id::millis_of(id) / BUCKET_MS;
            assert!(!has_row(&store, AUTHOR_TWEET, (author as i64, id as i64)).await);
            assert!(!has_row(&store, TIMELINE_ROW, (bucket, id as i64)).await);
        }
        assert!(
            staged_about(&store, next)
                .await
                .iter()
                .all(|e| e.event_id != like.event_id)
        );

        // Settled now: nothing is staged or counted again.
        assert!(
            !store
                .delete(repeated, deletion_event(repeated, author))
                .await
                .unwrap()
        );
        store.finish_deletion(next).await.unwrap();
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
        for id in [repeated, next] {
            assert_eq!(staged_deletions(&store, id).await.len(), 1);
        }
    }

    /// A deletion of a tweet whose create died after its claim: the create is finished first
    /// (its event rebuilt from the row, its count moved), then the deletion, so each of the
    /// two events is staged once and the count ends where it began.
    #[tokio::test]
    async fn a_deletion_first_finishes_a_create_cut_short_after_its_claim() {
        let Some(store) = cql_store().await else {
            return;
        };
        let (author, id) = (unique_id(), unique_id());
        let tweet = conformance::tweet(id, author);
        assert!(matches!(
            store.inner.claim(&tweet).await.unwrap(),
            Claim::Won
        ));
        assert_eq!(store.get(id).await.unwrap(), Some(tweet));
        let deletion = deletion_event(id, author);
        assert!(store.delete(id, deletion.clone()).await.unwrap());
        let staged = staged_about(&store, id).await;
        let created: Vec<&Envelope> = staged
            .iter()
            .filter(|e| matches!(e.payload, Some(Payload::TweetCreated(_))))
            .collect();
        assert_eq!(created.len(), 1, "{staged:?}");
        assert_eq!(staged_deletions(&store, id).await, vec![deletion.event_id]);
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
        for op in ["created", "deleted"] {
            let op = format!("tweet:{id}:{op}");
            let applied = store.inner.authors.applied(author as i64, &op);
            assert!(applied.await.unwrap(), "{op}");
        }
        assert!(!has_row(&store, AUTHOR_TWEET, (author as i64, id as i64)).await);
    }

    /// A caller that goes away (its deadline drops the future) after the like was decided does
    /// not leave it half-done: the store's own task writes it, event and count.
    #[tokio::test]
    async fn a_like_whose_caller_goes_away_is_written_all_the_same() {
        let Some(store) = cql_store().await else {
            return;
        };
        let (author, tweet) = posted(&store).await;
        let pair = Pair {
            user: unique_id(),
            tweet,
            author,
        };
        let event = reaction_event(Reaction::Like, true, pair);
        let call = store.like(pair.user, tweet, event.clone());
        let gave_up = tokio::time::timeout(Duration::from_millis(1), call).await;
        assert!(gave_up.is_err(), "the caller went away before the answer");
        let deadline = Instant::now() + Duration::from_secs(10);
        while count_of(&store, Reaction::Like, tweet).await == 0 {
            assert!(Instant::now() < deadline, "the like was never counted");
            tokio::time::sleep(WAIT_POLL).await;
        }
        let staged = staged_changes(&store, pair, 1).await;
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].1, event.event_id);
    }

    /// A purge pass reads from its cursor, stops the cursor at the first hour with an
    /// unfinished purge, moves it past that hour once the purge is done (never closer to now
    /// than `CURSOR_LAG`), and never reads before it again.
    #[tokio::test]
    async fn purge_passes_read_from_a_cursor_past_finished_hours() {
        let Some(store) = cql_store().await else {
            return;
        };
        let [old, older] = [unique_id(), unique_id()];
        let hour = clock::now_millis() / BUCKET_MS;
        let (old_hour, older_hour) = (hour - 5, hour - 10);
        let queue = "INSERT INTO {ks}.author_purges_by_hour (bucket, author_id) VALUES (?, ?)";
        let cursor = |store| async move {
            let rows = run(
                store,
                "SELECT bucket FROM {ks}.purge_cursor WHERE scope = 'all'",
                (),
            );
            let row = rows
                .await
                .into_rows_result()
                .unwrap()
                .single_row::<(Option<i64>,)>();
            row.unwrap().0.unwrap()
        };
        run(&store, queue, (old_hour, old as i64)).await;
        let mine = PendingPurge {
            user: old,
            slot: old_hour,
        };
        // Passes of other tests may move the cursor meanwhile (one that read it before it was
        // set back writes its own later value): set it before the hour again until a pass of
        // this test starts from there and leaves it held at the unfinished purge.
        let mut held = false;
        for _ in 0..10 {
            let back = "UPDATE {ks}.purge_cursor SET bucket = ? WHERE scope = 'all'";
            run(&store, back, (old_hour - 1,)).await;
            let found = store.pending_purges(100_000).await.unwrap().contains(&mine);
            if found && cursor(&store).await <= old_hour {
                held = true;
                break;
            }
        }
        assert!(
            held,
            "a pass read the cursor's hour and held the cursor at the purge"
        );
        store.purge_done(mine).await.unwrap();
        let mut moved = i64::MIN;
        for _ in 0..10 {
            assert!(!store.pending_purges(100_000).await.unwrap().contains(&mine));
            moved = cursor(&store).await;
            if moved > old_hour {
                break;
            }
        }
        assert!(moved > old_hour, "moved past the finished hour: {moved}");
        let now_hour = clock::now_millis() / BUCKET_MS;
        assert!(moved < now_hour, "but never up to now");
        // An hour before the cursor is never read again.
        run(&store, queue, (older_hour, older as i64)).await;
        let pending = store.pending_purges(100_000).await.unwrap();
        assert!(pending.iter().all(|p| p.user != older));
    }

    /// A purge queued in the one-partition table this replaced (by this version before its
    /// upgrade, or by a replica of the previous version during one) is drained from it.
    #[tokio::test]
    async fn purges_pending_in_the_old_table_are_drained() {
        let Some(store) = cql_store().await else {
            return;
        };
        let user = unique_id();
        let legacy = "INSERT INTO {ks}.author_purges (scope, author_id) VALUES ('pending', ?)";
        run(&store, legacy, (user as i64,)).await;
        let pending = conformance::pending_purges_of(&store, user).await;
        assert_eq!(pending.len(), 1);
        store.purge_done(pending[0]).await.unwrap();
        assert!(
            conformance::pending_purges_of(&store, user)
                .await
                .is_empty()
        );
        let gone =
            "SELECT author_id FROM {ks}.author_purges WHERE scope = 'pending' AND author_id = ?";
        assert!(!has_row(&store, gone, (user as i64,)).await);
    }

    fn page(before: Option<u64>, since: Option<u64>) -> PageRequest {
        PageRequest {
            before,
            since,
            limit: twtr_common::Limit::DEFAULT,
        }
    }

    #[test]
    fn page_bounds_match_scan_page_ranges() {
        let bounds = |before, since| PageBounds::of(&page(before, since)).map(|b| (b.low, b.high));
        assert_eq!(bounds(None, None), Some((0, i64::MAX)));
        assert_eq!(bounds(Some(10), None), Some((0, 9)));
        assert_eq!(bounds(None, Some(10)), Some((11, i64::MAX)));
        assert_eq!(bounds(Some(12), Some(10)), Some((11, 11)));
        assert_eq!(bounds(Some(11), Some(10)), None);
        assert_eq!(bounds(Some(0), None), None);
        assert_eq!(bounds(None, Some(u64::MAX)), None);
        assert_eq!(bounds(None, Some(i64::MAX as u64)), None);
    }
}
