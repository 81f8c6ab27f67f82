//! The CQL backend of [`TweetStore`]: tweets on ScyllaDB / Cassandra, in the tables of
//! `cql/tweets/001_init.cql` (whose header explains the count ledger this module follows),
//! `002_authors_and_post_keys.cql`, `003_settled_changes.cql` (how a call learns whether a
//! change was settled, and the purge queue) and `007_author_tallies.cql` (the authors' tweet
//! counts, which creates and deletions move without a lightweight transaction).
//!
//! # Layout
//!
//! - `statements`: every statement, each prepared once by [`CqlTweetStore::new`], and the
//!   statements of likes and of retweets, which live in tables of the same shape.
//! - this module: [`CqlTweetStore`], a handle on `Inner` (what the store holds), which runs
//!   creates, reactions and deletions in a task of their own: once a change is decided, its
//!   remaining steps run even if the caller goes away (a deadline drops its future); and
//!   `Inner::settle`, which finishes a write from its event consumed back.
//! - `index`: hashtags, search and trends (`005_search_and_trends.cql`): the index a tweet's
//!   own events feed, its postings read hour by hour, tag uses counted minute by minute.
//! - `create`, `reactions` and `delete`: the write paths. Creates (below) are one logged batch.
//!   Likes and retweets (`Inner::react`) take three steps, as the schema's header describes: a
//!   lightweight transaction on the row that owns the state, a logged batch with the outbox
//!   row, then the count op through its ledger (`like:<user>:<version>`,
//!   `retweet:<user>:<version>`), applied by its [`CountLedger`]. Deletions (`Inner::delete`)
//!   take the first two, the author's count op `tweet:<id>:deleted` riding in the batch.
//!   Each first finishes what the last change of its row left undone (see below).
//! - the authors' tweet counts: a [`Tally`] (`author_tallies`): each create's and deletion's
//!   op is a row of its batch, and the service's background pass
//!   ([`TweetStore::fold_counts`]) folds the ops older than [`FOLD_AFTER`] of the authors this
//!   process wrote ops for (`Inner::unfolded`) into the base. A count read sums the ledger's
//!   count (`author_counts`, what was counted before the tallies, which no op moves now), the
//!   base and the pending ops; a read that meets many pending ops puts the author up for a
//!   fold, for the ops of a process that died before folding them.
//! - `reads`: single rows by full primary key, several partitions by `IN` lists of at most
//!   [`IN_CHUNK`] keys, put back in the order the trait promises. Every hydrated tweet carries
//!   its like and retweet counts, read from `tweet_counts`' static columns in the same chunks.
//!   The public timeline reads the hours listed in `timeline_buckets` newest first (oldest
//!   first when polling), `BUCKETS_PER_READ` at a time, and each hour's partition of
//!   `timeline` until the page is full: never a table scan.
//! - deleted authors: `gone_authors`, which a create reads first, and the authors whose tweets,
//!   likes and retweets the service still removes, in `author_purges_by_hour` (one
//!   [`DeletedAccounts`]: hourly partitions read from a
//!   cursor, never through deletes).

//! # How a create lands, and how a retry finishes one cut short
//!
//! A create is **one logged batch**, with no read first and no lightweight transaction: the
//! tweet's row in `tweets`, the author's timeline row, the public timeline row, its hour in
//! `timeline_buckets` (once per hour per process), the author's count op `tweet:<id>:created`
//! (+1, a row of `author_tallies`) and the `TweetCreated` outbox row. All of them land or none
//! does, so a tweet is announced and counted exactly when it exists. Every row is written
//! `USING TIMESTAMP` the tweet's creation time, and every write of its deletion later (see
//! `delete`), so the batch run again, however late, rewrites the same rows (the op counts once)
//! and never brings back a deleted tweet, its timeline rows or its count op; a count op that a
//! fold moved stays deleted too (the fold's tombstone is later). The tweet's mentions are
//! written just before it, so whoever finishes the create finds them.
//!
//! No ID claim: Snowflake IDs are unique by construction (each process has its own worker
//! number), so [`TweetStore::create`] is called only with an ID the service minted in that very
//! call, and writes without looking. The claim that detected an ID minted twice (two processes
//! with one worker number) and refused the second tweet went with it: such a pair would now
//! overwrite one another's row, which the worker numbers rule out.
//!
//! A repeat ([`TweetStore::create_again`]: the post repeated with its idempotency key, whose
//! first attempt may have died, or be running still) reads first, with plain reads: the tweet's
//! row, and if it says the tweet was deleted since, it writes nothing (no second
//! `TweetCreated`); then the author's timeline row, and if it is there the batch ran, count op
//! and event included, so it writes nothing; else the batch never ran (a batch that never ran
//! announced nothing), or the tweet was claimed by the version before the tallies and its
//! batch never ran, and it runs the batch now with the repeat's own event. A deletion is
//! decided only once the create's batch ran, so a create whose batch never ran has nothing to
//! delete; a tweet claimed by the version before whose batch never ran is finished by its
//! deletion first (`Inner::finish_create`).
//!
//! The one race left: a repeat that runs while the first attempt's batch is in flight also
//! finds no row, and both attempts stage an event (with different event IDs) for the same
//! tweet; the count op is one row, so it counts once. Consumers take events at least once and
//! key them by tweet ID, so a second announcement is harmless; a lost one would not be.
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
//!   again (a no-op when it was applied), for a crash between steps 2 and 3 (likes and
//!   retweets: a deletion's count op is in its batch, so a settled deletion is counted).
//! - Not settled, and the change is this call's own (a lightweight transaction whose reply was
//!   lost): it writes it with its own event.
//! - Not settled and younger than [`ABANDONED_AFTER`]: its caller is taken to be writing it
//!   still (a batch takes milliseconds), so the call waits for it, at most that long.
//! - Not settled and older: abandoned (its caller died, or its batch failed). The call runs
//!   step 2 with the change's event rebuilt from the decided row and the tweet's author: the
//!   version decided, the count op of that version, a fresh event ID; then step 3, if any. Consumers
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
//!
//! A deletion is decided by `IF deleted_at = null` on the tweet's row, a column no create
//! writes: a create's `deleted = false` carries its writer's clock, which may run ahead of the
//! decision's Paxos timestamp. Its batch marks the row deleted (`deleted`, `deleted_at`, no
//! text) `USING TIMESTAMP` the deletion's time, later than the creation's by at least a
//! millisecond whatever the clocks, along with its count op `tweet:<id>:deleted` (-1) and the
//! removal of its timeline rows. Writes read the row as deleted from the decision on; reads of
//! the tweet do from the decision on too, unless the creating process's clock ran ahead of the
//! nodes' by more than the tweet's age, in which case from the batch on.

mod create;
mod delete;
mod index;
mod reactions;
mod reads;
mod statements;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use scylla::statement::prepared::PreparedStatement;
use tokio::time::Instant;
use twtr_common::cql::{CountLedger, CqlError, CqlOutbox, DeletedAccounts, Keyspace, Tally};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{IdGenerator, Page, PageRequest, clock, lock};
use twtr_proto::events::v1::Envelope;
use twtr_proto::events::v1::envelope::Payload;

use self::statements::ReactionStatements;
use super::{KeyClaim, Posting, Reacted, Reaction, TweetRecord, TweetStore};

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
/// The header of a `TweetCreated` or `TweetDeleted` whose batch recorded the author's count op
/// in `author_tallies`: settling it has nothing left to do. An event without it was written
/// before the tallies, and its op is applied through the ledger.
pub const TALLIED_HEADER: &str = "x-twtr-tallied";
/// How old an author's count ops must be before a fold moves them into the base: longer than
/// any clock skew between the processes that write ops and the nodes that time the fold (see
/// `twtr_common::cql::tally`), and long enough that a fold takes many posts at once.
pub const FOLD_AFTER: Duration = Duration::from_secs(60);
/// How many pending ops a read of an author's count may meet before it asks for a fold even if
/// this process did not write them (a process that wrote them died before folding).
const FOLD_BACKLOG: usize = 16;
/// How many authors' folds run at once.
const FOLDS_AT_ONCE: usize = 8;
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
    insert_tweet: PreparedStatement,
    insert_author_tweet: PreparedStatement,
    insert_timeline: PreparedStatement,
    insert_timeline_bucket: PreparedStatement,
    select_author_tweet: PreparedStatement,
    select_counts: PreparedStatement,
    select_tweets: PreparedStatement,
    insert_mentions: PreparedStatement,
    select_mentions: PreparedStatement,
    page_backward: PreparedStatement,
    page_forward: PreparedStatement,
    select_tweet_counts: PreparedStatement,
    /// The authors' tweet counts as the ledger kept them (`author_counts`): the base of what was
    /// counted before `author_tallies`, and the ops of events written before it.
    authors: CountLedger,
    /// The authors' tweet counts since (`author_tallies`): each create's and deletion's op,
    /// written in its batch, folded in the background.
    author_tallies: Tally,
    /// An op's ledger row in `author_counts`, written beside its tally op (see `statements`).
    mark_ledger_op: PreparedStatement,
    /// A deletion's `tweets` row, written in its batch at the deletion's time.
    mark_deleted: PreparedStatement,
    /// The authors with ops not folded yet that this process knows of, each with the time
    /// (Unix ms) of its oldest such op: what [`TweetStore::fold_counts`] folds. Lost with the
    /// process: an author's next op (or a read that meets many pending) puts it back, and ops
    /// left unfolded still count (a read sums them).
    unfolded: Mutex<HashMap<i64, i64>>,
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
    /// Hashtags, search and trends (`index`).
    search: index::IndexStatements,
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
    /// Applies the count op of the write `event` announces (a no-op when it was), within the
    /// window the ledger remembers ops: its batch ran (the event exists), but its process may
    /// have died before the count moved. A create's or deletion's event marked
    /// [`TALLIED_HEADER`] needs nothing: its batch held its count op.
    async fn settle(&self, event: &Envelope) -> Result<(), StoreError> {
        let occurred = event.occurred_at.as_ref().map_or(0, clock::from_timestamp);
        if clock::now_millis() - occurred >= REPAIR_WINDOW_MS {
            return Ok(());
        }
        let tallied = event.headers.contains_key(TALLIED_HEADER);
        let (reaction, tweet, delta) = match &event.payload {
            Some(Payload::TweetCreated(_) | Payload::TweetDeleted(_)) if tallied => {
                return Ok(());
            }
            Some(Payload::TweetCreated(created)) => {
                let op = format!("tweet:{}:created", created.tweet_id);
                return self.authors.apply(to_cql(created.author_id)?, &op, 1).await;
            }
            Some(Payload::TweetDeleted(deleted)) => {
                let (tweet, author) = (to_cql(deleted.tweet_id)?, to_cql(deleted.author_id)?);
                return self.settle_ledger_deletion(tweet, author).await;
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
}

impl Inner {
    /// Remembers that `author` has a count op decided at `at` (Unix ms) not folded yet.
    fn note_unfolded(&self, author: i64, at: i64) {
        let mut unfolded = lock(&self.unfolded);
        let oldest = unfolded.entry(author).or_insert(at);
        *oldest = (*oldest).min(at);
    }

    /// Folds the count ops older than `age` of every author this process knows to have some
    /// (see `twtr_common::cql::tally`): how many ops it folded.
    async fn fold_counts(&self, age: Duration) -> Result<usize, StoreError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let ripe_before = clock::now_millis().saturating_sub(age_ms);
        let ripe: Vec<i64> = {
            let mut unfolded = lock(&self.unfolded);
            let ripe: Vec<i64> = unfolded
                .iter()
                .filter(|&(_, &oldest)| oldest < ripe_before)
                .map(|(&author, _)| author)
                .collect();
            for author in &ripe {
                unfolded.remove(author);
            }
            ripe
        };
        let folds = futures_util::stream::iter(ripe)
            .map(|author| async move { (author, self.author_tallies.fold(author, age).await) })
            .buffer_unordered(FOLDS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let (mut folded, mut failed) = (0, None);
        for (author, fold) in folds {
            match fold {
                // Younger ops stay for a later pass.
                Ok(done) if done.left > 0 => {
                    folded += done.folded;
                    self.note_unfolded(author, clock::now_millis());
                }
                Ok(done) => folded += done.folded,
                Err(err) => {
                    self.note_unfolded(author, 0);
                    failed = Some(err);
                }
            }
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(folded),
        }
    }
}

#[async_trait]
impl TweetStore for CqlTweetStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.inner.ks.ping().await?)
    }

    async fn create(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        self.spawned(|inner| async move { inner.create(tweet, event).await })
            .await
    }

    async fn create_again(&self, tweet: TweetRecord, event: Envelope) -> Result<bool, StoreError> {
        self.spawned(|inner| async move { inner.create_again(tweet, event).await })
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

    async fn fold_counts(&self) -> Result<usize, StoreError> {
        self.inner.fold_counts(FOLD_AFTER).await
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

    async fn index(&self, tweet: u64, terms: Vec<String>) -> Result<(), StoreError> {
        self.inner.index(tweet, terms).await
    }

    async fn unindex(&self, tweet: u64) -> Result<(), StoreError> {
        self.inner.unindex(tweet).await
    }

    async fn postings(
        &self,
        term: &str,
        before: Option<u64>,
        since: Option<u64>,
        max: usize,
    ) -> Result<Vec<Posting>, StoreError> {
        self.inner.postings(term, before, since, max).await
    }

    async fn tag_uses(
        &self,
        from: i64,
        to: i64,
        per_minute: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.tag_uses(from, to, per_minute).await
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::clone(&self.inner.outbox) as Arc<dyn Outbox>
    }
}

/// An ID as the `bigint` that stores it. Snowflake IDs stay below 2^63 for decades.
fn to_cql(id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::Corrupt(format!("id {id} does not fit a bigint")))
}

fn from_cql(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("negative id {id} stored")))
}
