//! [`CqlFollowStore`]: the follow graph on ScyllaDB / Cassandra, in the tables of
//! `cql/followers/001_init.cql`: `follow_edges` (each edge's state and version), the lists
//! `following` and `followers` (newest follow first), `follow_counts` (counts in static columns
//! beside a ledger of the ops applied to them) and the outbox.
//!
//! # Layout
//!
//! - the statements, in one block below; [`CqlFollowStore::new`] prepares each once.
//! - `Inner::change`: follow and unfollow, in the three steps below, after finishing whatever
//!   the edge's last change left undone.
//! - the reads: full partition keys only, so each is routed token-aware; `counts` asks in `IN`
//!   lists of at most [`IN_CHUNK`] users and puts the answers back in the order asked; a list
//!   page is one slice of a user's `following` or `followers` partition by follow ID.
//! - deleted accounts (`cql/followers/002_gone_users.cql`): `gone_users`, which a follow reads
//!   before deciding, and the accounts whose edges the service still removes, in
//!   `user_purges_by_hour` (`003_purges_by_time.cql`); both kept by a [`DeletedAccounts`]
//!   (hourly partitions read from a cursor, finished purges marked by overwrite, never read
//!   through deletes).
//!
//! # A change of an edge
//!
//! 1. **Decide**, by a lightweight transaction on `follow_edges` in the follower's partition:
//!    `INSERT ... IF NOT EXISTS` for a first follow, `UPDATE ... IF version = ?` after that. The
//!    version goes up by one per change and exactly one caller makes each change. A follow's
//!    `follow_id` is its event's ID; `followed_at` is when the current state was decided (the
//!    follow, or the unfollow).
//! 2. **Write** one logged batch: both list rows (inserted, or deleted by the follow ID the edge
//!    keeps) and the outbox row, its event carrying the version decided in 1 (whoever writes
//!    it: a retry, or a call finishing an abandoned change, writes the same version). A
//!    conditional write cannot share a multi-partition batch, hence a step of its own after 1.
//! 3. **Count**, per user, by a conditional batch on that user's `follow_counts` partition: the
//!    ledger row `follow:<follower>:<followee>:<version>` `IF NOT EXISTS` and the new count
//!    `IF <count> = <count read>`, retried on contention. It moves a count once however often it
//!    is tried, so anyone may try it.
//!
//! Once a change is decided, 2 and 3 run in a task of their own, so a caller that goes away (a
//! deadline) does not leave the change half-done.
//!
//! # What a crash leaves, and how the next call on the edge finishes it
//!
//! Every follow and unfollow first looks at the edge's last change:
//! - Its batch ran (the `following` list row agrees with the edge) but a count may not have: it
//!   applies the count ops again, which the ledger turns into no-ops where they had landed. Only
//!   within [`COUNT_REPAIR_WINDOW`]: ledger rows expire, after which a repeat would count twice.
//! - Its batch did not run, and the change is younger than [`ABANDONED_AFTER`]: its caller is
//!   taken to be at work still, so the call waits for it (up to [`MAX_WAIT`], then fails: try
//!   again). A retry carrying the event that decided the change finishes it at once.
//! - Its batch did not run and it is older: abandoned. An abandoned follow is finished with its
//!   own event, rebuilt from the edge (its ID is the follow ID); if its first caller wakes up and
//!   writes too, the event goes out twice (each staged row gets its own outbox `seq`), which
//!   consumers take as the one change it is (the event carries the edge's version). An abandoned unfollow is finished by the next
//!   unfollow, which takes it over (`UPDATE ... IF followed_at = ?`, so one caller does) and
//!   stages its own event; or by the next follow, quietly, since the follow's event supersedes it.
//!
//! `is_following` reads an edge whose batch has not run as not (yet) followed, so the service's
//! "already following?" check lets a retry through to finish it.
//!
//! # Deleted accounts
//!
//! A follow reads `gone_users` for both ends before deciding, but that read is not part of the
//! change: an account deleted in between can still get the edge. So this store answers true to
//! [`FollowStore::follow_races_deletion`], and the service looks again after each follow (and
//! when it consumes the follow's event back), unfollowing what landed. That closes the race:
//! the purge lists an account's edges only after its deletion is recorded, so an edge written
//! too late for the purge to see is one whose follow, looking afterwards, sees the deletion.
//!
//! A caller that stalls for longer than [`ABANDONED_AFTER`] between 1 and 2 and then goes on can
//! still write after its change was finished for it: an unfollow's event twice, or list rows of
//! a follow undone since. That is the price of never blocking an edge on a dead caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{try_join, try_join_all};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::time::Instant;
use twtr_common::clock;
use twtr_common::cql::{
    CountColumn, CountLedger, CqlError, CqlOutbox, DeletedAccountTables, DeletedAccounts, Keyspace,
    Lwt, Retries, logged_batch, lwt,
};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{Page, PageRequest};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, UserFollowed};

use super::{Counts, Direction, FollowEntry, FollowOutcome, FollowStore, stamp_version};

/// The state of one edge: serves `is_following` and starts every change.
const SELECT_EDGE: &str = "SELECT following, version, follow_id, followed_at \
     FROM {ks}.follow_edges WHERE follower_id = ? AND followee_id = ?";
/// Step 1 of a first follow: version 1.
const FIRST_FOLLOW: &str = "INSERT INTO {ks}.follow_edges \
     (follower_id, followee_id, following, version, follow_id, followed_at) \
     VALUES (?, ?, true, 1, ?, ?) IF NOT EXISTS";
/// Step 1 of every later change: the next version, if nobody took it first.
const CHANGE_EDGE: &str = "UPDATE {ks}.follow_edges \
     SET following = ?, version = ?, follow_id = ?, followed_at = ? \
     WHERE follower_id = ? AND followee_id = ? IF version = ?";
/// Takes an abandoned unfollow over, so that one caller announces it.
const TAKE_OVER: &str = "UPDATE {ks}.follow_edges SET followed_at = ? \
     WHERE follower_id = ? AND followee_id = ? IF version = ? AND followed_at = ?";
/// Whether step 2 of the edge's last change ran: its `following` row exists exactly when the
/// edge is followed.
const SELECT_LISTED: &str = "SELECT follow_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id = ? AND followee_id = ?";
/// Step 2 of a follow (with the outbox row).
const INSERT_FOLLOWING: &str = "INSERT INTO {ks}.following \
     (follower_id, follow_id, followee_id, followed_at) VALUES (?, ?, ?, ?)";
const INSERT_FOLLOWER: &str = "INSERT INTO {ks}.followers \
     (followee_id, follow_id, follower_id, followed_at) VALUES (?, ?, ?, ?)";
/// Step 2 of an unfollow (with the outbox row, or without it when a follow finishes it).
const DELETE_FOLLOWING: &str =
    "DELETE FROM {ks}.following WHERE follower_id = ? AND follow_id = ? AND followee_id = ?";
const DELETE_FOLLOWER: &str =
    "DELETE FROM {ks}.followers WHERE followee_id = ? AND follow_id = ? AND follower_id = ?";
/// Step 3: each user's two counts in `follow_counts`, each through its ledger.
const FOLLOWERS_COUNT: CountColumn = CountColumn {
    what: "followers count of user",
    table: "follow_counts",
    key: "user_id",
    count: "followers_count",
};
const FOLLOWING_COUNT: CountColumn = CountColumn {
    what: "following count of user",
    table: "follow_counts",
    key: "user_id",
    count: "following_count",
};
/// Many users' counts: the static rows only, never the ledger.
const SELECT_COUNTS: &str = "SELECT DISTINCT user_id, followers_count, following_count \
     FROM {ks}.follow_counts WHERE user_id IN ?";
/// A page of a list, newest follow first, between exclusive follow-ID bounds.
const FOLLOWING_PAGE: &str = "SELECT follow_id, followee_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id DESC LIMIT ?";
const FOLLOWERS_PAGE: &str = "SELECT follow_id, follower_id FROM {ks}.followers \
     WHERE followee_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id DESC LIMIT ?";
/// A page read oldest first, for polling (`since`).
const FOLLOWING_PAGE_FORWARD: &str = "SELECT follow_id, followee_id FROM {ks}.following \
     WHERE follower_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id ASC LIMIT ?";
const FOLLOWERS_PAGE_FORWARD: &str = "SELECT follow_id, follower_id FROM {ks}.followers \
     WHERE followee_id = ? AND follow_id > ? AND follow_id < ? ORDER BY follow_id ASC LIMIT ?";
/// Deleted accounts and their purges (see [`DeletedAccounts`]); `user_purges` is the queue
/// `user_purges_by_hour` replaced.
const DELETED_ACCOUNTS: DeletedAccountTables = DeletedAccountTables {
    gone: "gone_users",
    queue: "user_purges_by_hour",
    id_column: "user_id",
    legacy: "user_purges",
};

/// How old a change may be for its counts to be applied again: well inside the
/// [`LEDGER_TTL`](twtr_common::cql::ledger::LEDGER_TTL), so a repeat always finds the ledger row
/// of an op that landed.
pub const COUNT_REPAIR_WINDOW: Duration = Duration::from_secs(2 * 24 * 3600);
/// How old a decided change whose batch never ran must be before another call finishes it: far
/// longer than steps 2 and 3 take, even with the driver's retries, so a live caller is not
/// overtaken.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);
/// How long a call waits for another caller's change of the same edge to be written.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting call looks again.
const WAIT_POLL: Duration = Duration::from_millis(10);
/// The most IDs in one `IN` list: bigger lists make one coordinator wait on too many replicas.
pub const IN_CHUNK: usize = 100;
/// How many times a call tries to decide a change (each refusal means another caller changed
/// the edge meanwhile, or Paxos contention left the outcome unknown).
const DECIDE_ATTEMPTS: u32 = 64;

/// The follow graph in the `<prefix>_followers` keyspace.
pub struct CqlFollowStore {
    inner: Arc<Inner>,
}

/// What the store holds; shared with the tasks that finish changes.
struct Inner {
    ks: Keyspace,
    select_edge: PreparedStatement,
    first_follow: PreparedStatement,
    change_edge: PreparedStatement,
    take_over: PreparedStatement,
    select_listed: PreparedStatement,
    select_counts: PreparedStatement,
    /// Step 2, logged: the two list inserts and the outbox row.
    follow_batch: Batch,
    /// Step 2, logged: the two list deletes and the outbox row.
    unfollow_batch: Batch,
    /// Step 2 of an abandoned unfollow that a follow finishes: the deletes alone.
    quiet_unfollow_batch: Batch,
    /// Step 3: the followee's followers count.
    followers_count: CountLedger,
    /// Step 3: the follower's following count.
    following_count: CountLedger,
    following_page: PreparedStatement,
    followers_page: PreparedStatement,
    following_page_forward: PreparedStatement,
    followers_page_forward: PreparedStatement,
    deleted: DeletedAccounts,
    outbox: Arc<CqlOutbox>,
}

impl std::fmt::Debug for CqlFollowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlFollowStore")
            .field("keyspace", &self.inner.ks.name())
            .finish_non_exhaustive()
    }
}

impl CqlFollowStore {
    /// Prepares every statement in `ks` (so a bad one fails the start, not a request) and the
    /// keyspace's outbox.
    pub async fn new(ks: Keyspace, ids: Arc<twtr_common::IdGenerator>) -> Result<Self, CqlError> {
        let outbox = Arc::new(CqlOutbox::new(ks.clone(), ids).await?);
        let insert_following = ks.prepare(INSERT_FOLLOWING).await?;
        let insert_follower = ks.prepare(INSERT_FOLLOWER).await?;
        let delete_following = ks.prepare(DELETE_FOLLOWING).await?;
        let delete_follower = ks.prepare(DELETE_FOLLOWER).await?;
        let inner = Inner {
            select_edge: ks.prepare(SELECT_EDGE).await?,
            first_follow: ks.prepare(FIRST_FOLLOW).await?,
            change_edge: ks.prepare(CHANGE_EDGE).await?,
            take_over: ks.prepare(TAKE_OVER).await?,
            select_listed: ks.prepare(SELECT_LISTED).await?,
            select_counts: ks.prepare(SELECT_COUNTS).await?,
            follow_batch: logged_batch([&insert_following, &insert_follower, outbox.insert()]),
            unfollow_batch: logged_batch([&delete_following, &delete_follower, outbox.insert()]),
            quiet_unfollow_batch: logged_batch([&delete_following, &delete_follower]),
            followers_count: CountLedger::new(&ks, FOLLOWERS_COUNT).await?,
            following_count: CountLedger::new(&ks, FOLLOWING_COUNT).await?,
            following_page: ks.prepare(FOLLOWING_PAGE).await?,
            followers_page: ks.prepare(FOLLOWERS_PAGE).await?,
            following_page_forward: ks.prepare(FOLLOWING_PAGE_FORWARD).await?,
            followers_page_forward: ks.prepare(FOLLOWERS_PAGE_FORWARD).await?,
            deleted: DeletedAccounts::new(&ks, DELETED_ACCOUNTS).await?,
            outbox,
            ks,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Runs a change in a task of its own: once decided, it is written even if the caller goes
    /// away.
    async fn change(
        &self,
        follower: u64,
        followee: u64,
        follow: bool,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        let pair = Pair { follower, followee };
        tokio::spawn(async move { inner.change(pair, follow, event).await }).await?
    }
}

/// The two ends of an edge.
#[derive(Debug, Clone, Copy)]
struct Pair {
    follower: u64,
    followee: u64,
}

impl Pair {
    fn keys(self) -> (i64, i64) {
        (key(self.follower), key(self.followee))
    }

    /// The count op of `edge`'s last change (see `cql/tweets/001_init.cql`).
    fn op(self, edge: &Edge) -> String {
        format!(
            "follow:{}:{}:{}",
            self.follower, self.followee, edge.version
        )
    }
}

/// A `follow_edges` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    following: bool,
    version: i32,
    /// The key of the edge's list rows: the ID of the event of the follow that made them.
    follow_id: i64,
    /// When the current state was decided (ms).
    changed_at: i64,
}

impl Edge {
    /// The version as events carry it.
    fn version_number(&self) -> u64 {
        u64::try_from(self.version).unwrap_or(0)
    }

    fn age(&self) -> Duration {
        Duration::from_millis(u64::try_from(clock::now_millis() - self.changed_at).unwrap_or(0))
    }
}

/// [`SELECT_EDGE`]'s columns.
type EdgeRow = (Option<bool>, Option<i32>, Option<i64>, Option<CqlTimestamp>);

/// [`SELECT_COUNTS`]'s columns: user, followers, following.
type CountRow = (i64, Option<i64>, Option<i64>);

/// Another caller's change of the edge stayed unwritten for [`MAX_WAIT`]; the caller may try
/// again.
#[derive(Debug, thiserror::Error)]
#[error("{0}: too much contention, try again")]
struct Contended(&'static str);

impl Inner {
    fn session(&self) -> &Session {
        self.ks.session()
    }

    /// Follows (`follow`) or unfollows; true when this call made the change and staged `event`.
    async fn change(&self, pair: Pair, follow: bool, event: Envelope) -> Result<bool, StoreError> {
        let (follower, followee) = pair.keys();
        let mine = key(event.event_id);
        // Changes this call tried to decide without learning whether they landed.
        let mut maybe_decided: Vec<Edge> = Vec::new();
        // The other caller's change this call waits for, and since when.
        let mut waiting: Option<(Edge, Instant)> = None;
        let mut retries = Retries::new("follow edge", DECIDE_ATTEMPTS);
        loop {
            let Some(edge) = self.edge(pair).await? else {
                if !follow {
                    return Ok(false);
                }
                let first = Edge {
                    following: true,
                    version: 1,
                    follow_id: mine,
                    changed_at: clock::now_millis(),
                };
                let values = (follower, followee, mine, ts(first.changed_at));
                match self.execute_lwt(&self.first_follow, values).await? {
                    Lwt::Applied => {
                        self.write(pair, first, Some(&event)).await?;
                        return Ok(true);
                    }
                    Lwt::Unknown(_) => maybe_decided.push(first),
                    Lwt::NotApplied(_) => {}
                }
                retries.lost().await?;
                continue;
            };
            let written = self.is_listed(pair, &edge).await? == edge.following;
            // This call's own change (a follow's ID is its event's, so a retry with the same
            // event knows it too), decided after all.
            if maybe_decided.contains(&edge) || (follow && edge.following && edge.follow_id == mine)
            {
                if written {
                    // Finished for it meanwhile: a follow with its own event (rebuilt), an
                    // unfollow by a caller that took it over and announced it.
                    return Ok(edge.following);
                }
                self.write(pair, edge, Some(&event)).await?;
                return Ok(true);
            }
            if written {
                // A crash between steps 2 and 3 left a count unmoved: move it (a no-op where
                // the ledger shows it moved).
                if edge.age() < COUNT_REPAIR_WINDOW {
                    self.count(pair, &edge).await?;
                }
            } else if edge.age() < ABANDONED_AFTER {
                // Another caller is writing this change: wait for it.
                let since = match waiting {
                    Some((pending, since)) if pending == edge => since,
                    _ => Instant::now(),
                };
                if since.elapsed() >= MAX_WAIT {
                    return Err(StoreError::backend(Contended(
                        "another change of this follow edge is still being written",
                    )));
                }
                waiting = Some((edge, since));
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            } else if edge.following {
                tracing::info!(
                    pair.follower,
                    pair.followee,
                    version = edge.version,
                    "finishing an abandoned follow"
                );
                self.write(pair, edge, Some(&rebuilt_follow(pair, &edge)))
                    .await?;
            } else if !follow {
                // An abandoned unfollow, which this call asks for too: take it over, so that
                // one caller announces it.
                let taken = Edge {
                    changed_at: clock::now_millis(),
                    ..edge
                };
                let values = (
                    ts(taken.changed_at),
                    follower,
                    followee,
                    edge.version,
                    ts(edge.changed_at),
                );
                match self.execute_lwt(&self.take_over, values).await? {
                    Lwt::Applied => {
                        tracing::info!(
                            pair.follower,
                            pair.followee,
                            version = edge.version,
                            "took over an abandoned unfollow"
                        );
                        self.write(pair, taken, Some(&event)).await?;
                        return Ok(true);
                    }
                    Lwt::Unknown(_) => maybe_decided.push(taken),
                    Lwt::NotApplied(_) => {}
                }
                retries.lost().await?;
                continue;
            } else {
                // An abandoned unfollow, and this call follows: finish it without an event; the
                // follow's own event supersedes it.
                tracing::info!(
                    pair.follower,
                    pair.followee,
                    version = edge.version,
                    "finishing an abandoned unfollow"
                );
                self.write(pair, edge, None).await?;
            }
            if edge.following == follow {
                return Ok(false);
            }
            let next = Edge {
                following: follow,
                version: edge.version + 1,
                // An unfollow keeps the follow ID: its batch deletes the rows it keys.
                follow_id: if follow { mine } else { edge.follow_id },
                changed_at: clock::now_millis(),
            };
            let values = (
                next.following,
                next.version,
                next.follow_id,
                ts(next.changed_at),
                follower,
                followee,
                edge.version,
            );
            match self.execute_lwt(&self.change_edge, values).await? {
                Lwt::Applied => {
                    self.write(pair, next, Some(&event)).await?;
                    return Ok(true);
                }
                Lwt::Unknown(_) => maybe_decided.push(next),
                Lwt::NotApplied(_) => {}
            }
            retries.lost().await?;
        }
    }

    /// Steps 2 and 3 of the decided change `edge`: the logged batch of the list rows and the
    /// event (none when a follow finishes an abandoned unfollow), then the counts. Idempotent.
    async fn write(
        &self,
        pair: Pair,
        edge: Edge,
        event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        let (follower, followee) = pair.keys();
        let id = edge.follow_id;
        // The event says which version of the edge it announces: the one decided in step 1,
        // whoever writes it.
        let event = event.map(|event| {
            let mut event = event.clone();
            stamp_version(&mut event, edge.version_number());
            event
        });
        match (edge.following, event.as_ref()) {
            (true, Some(event)) => {
                let at = ts(edge.changed_at);
                let rows = (
                    (follower, id, followee, at),
                    (followee, id, follower, at),
                    self.outbox.row(event),
                );
                self.session().batch(&self.follow_batch, rows).await?;
            }
            (false, Some(event)) => {
                let rows = (
                    (follower, id, followee),
                    (followee, id, follower),
                    self.outbox.row(event),
                );
                self.session().batch(&self.unfollow_batch, rows).await?;
            }
            (false, None) => {
                let rows = ((follower, id, followee), (followee, id, follower));
                self.session()
                    .batch(&self.quiet_unfollow_batch, rows)
                    .await?;
            }
            (true, None) => {
                return Err(StoreError::Corrupt(
                    "a follow is always written with its event".to_owned(),
                ));
            }
        }
        if event.is_some() {
            self.outbox.notify();
        }
        self.count(pair, &edge).await
    }

    /// Step 3: moves both users' counts by `edge`'s last change, once.
    async fn count(&self, pair: Pair, edge: &Edge) -> Result<(), StoreError> {
        let op = pair.op(edge);
        let delta = if edge.following { 1 } else { -1 };
        try_join(
            self.following_count.apply(key(pair.follower), &op, delta),
            self.followers_count.apply(key(pair.followee), &op, delta),
        )
        .await?;
        Ok(())
    }

    async fn edge(&self, pair: Pair) -> Result<Option<Edge>, StoreError> {
        let row = self
            .session()
            .execute_unpaged(&self.select_edge, pair.keys())
            .await?
            .into_rows_result()?
            .maybe_first_row::<EdgeRow>()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (Some(following), Some(version), Some(follow_id), Some(changed_at)) = row else {
            return Err(StoreError::Corrupt(format!(
                "follow edge {} -> {} lacks a column: {row:?}",
                pair.follower, pair.followee
            )));
        };
        Ok(Some(Edge {
            following,
            version,
            follow_id,
            changed_at: changed_at.0,
        }))
    }

    /// Whether the `following` row of `edge`'s follow exists.
    async fn is_listed(&self, pair: Pair, edge: &Edge) -> Result<bool, StoreError> {
        let (follower, followee) = pair.keys();
        Ok(self
            .session()
            .execute_unpaged(&self.select_listed, (follower, edge.follow_id, followee))
            .await?
            .into_rows_result()?
            .rows_num()
            > 0)
    }

    /// The counts rows among `users` (at most [`IN_CHUNK`]), in no particular order.
    async fn count_rows(&self, users: Vec<i64>) -> Result<Vec<CountRow>, StoreError> {
        let rows = self
            .session()
            .execute_unpaged(&self.select_counts, (users,))
            .await?
            .into_rows_result()?;
        let mut found = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<CountRow>()? {
            found.push(row?);
        }
        Ok(found)
    }

    /// Runs a lightweight transaction: what it did.
    async fn execute_lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Lwt, StoreError> {
        Ok(lwt(self
            .session()
            .execute_unpaged(statement, values)
            .await)?)
    }
}

#[async_trait]
impl FollowStore for CqlFollowStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.inner.ks.ping().await?)
    }

    async fn follow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<FollowOutcome, StoreError> {
        let (follower_gone, followee_gone) =
            try_join(self.user_gone(follower), self.user_gone(followee)).await?;
        if follower_gone || followee_gone {
            return Ok(FollowOutcome::AccountGone);
        }
        Ok(if self.change(follower, followee, true, event).await? {
            FollowOutcome::Followed
        } else {
            FollowOutcome::AlreadyFollowing
        })
    }

    async fn unfollow(
        &self,
        follower: u64,
        followee: u64,
        event: Envelope,
    ) -> Result<bool, StoreError> {
        self.change(follower, followee, false, event).await
    }

    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError> {
        let pair = Pair { follower, followee };
        match self.inner.edge(pair).await? {
            // A follow is there once its lists are: until then it may still be abandoned.
            Some(edge) if edge.following => self.inner.is_listed(pair, &edge).await,
            _ => Ok(false),
        }
    }

    async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError> {
        let mut keys: Vec<i64> = users.iter().map(|user| key(*user)).collect();
        keys.sort_unstable();
        keys.dedup();
        let reads = keys
            .chunks(IN_CHUNK)
            .map(|chunk| self.inner.count_rows(chunk.to_vec()));
        let mut found = HashMap::with_capacity(keys.len());
        for rows in try_join_all(reads).await? {
            for (user, followers, following) in rows {
                found.insert(
                    from_key(user),
                    Counts {
                        followers: count(followers),
                        following: count(following),
                    },
                );
            }
        }
        // In the order asked, a user asked twice answered twice, one never counted with zeros.
        Ok(users
            .iter()
            .map(|user| found.get(user).copied().unwrap_or_default())
            .collect())
    }

    async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, StoreError> {
        // Exclusive bounds; IDs are below 2^63, so a larger cursor is "no bound" (before) or
        // "nothing newer" (since).
        let upper = page
            .before
            .map_or(i64::MAX, |before| i64::try_from(before).unwrap_or(i64::MAX));
        let lower = match page.since.map(i64::try_from) {
            None => i64::MIN,
            Some(Ok(since)) => since,
            Some(Err(_)) => return Ok(Page::from_scan(&page, Vec::new(), |e| e.follow_id)),
        };
        if lower >= upper {
            return Ok(Page::from_scan(&page, Vec::new(), |e| e.follow_id));
        }
        let inner = &self.inner;
        let statement = match (direction, page.since.is_some()) {
            (Direction::Following, false) => &inner.following_page,
            (Direction::Followers, false) => &inner.followers_page,
            (Direction::Following, true) => &inner.following_page_forward,
            (Direction::Followers, true) => &inner.followers_page_forward,
        };
        // One row more than asked, to learn whether another page follows.
        let take = i32::try_from(page.limit.get() + 1).unwrap_or(i32::MAX);
        let rows = inner
            .session()
            .execute_unpaged(statement, (key(user), lower, upper, take))
            .await?
            .into_rows_result()?;
        let mut scanned = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<(i64, i64)>()? {
            let (follow_id, other) = row?;
            scanned.push(FollowEntry {
                user_id: from_key(other),
                follow_id: from_key(follow_id),
            });
        }
        Ok(Page::from_scan(&page, scanned, |e| e.follow_id))
    }

    async fn forget_user(&self, user: u64) -> Result<(), StoreError> {
        self.inner.deleted.forget(user).await
    }

    async fn user_gone(&self, user: u64) -> Result<bool, StoreError> {
        self.inner.deleted.is_gone(user).await
    }

    async fn pending_purges(&self, max: usize) -> Result<Vec<PendingPurge>, StoreError> {
        self.inner.deleted.pending(max).await
    }

    async fn purge_done(&self, purge: PendingPurge) -> Result<(), StoreError> {
        self.inner.deleted.done(purge).await
    }

    fn follow_races_deletion(&self) -> bool {
        true
    }

    fn outbox(&self) -> Arc<dyn Outbox> {
        self.inner.outbox.clone()
    }
}

/// IDs are `u64` here and `bigint` in CQL: stored bit for bit, so every ID round-trips.
fn key(id: u64) -> i64 {
    id as i64
}

fn from_key(key: i64) -> u64 {
    key as u64
}

fn ts(millis: i64) -> CqlTimestamp {
    CqlTimestamp(millis)
}

/// A stored count as a count: missing is zero, and so is the brief negative an unfollow's op
/// can leave when it lands before its follow's.
fn count(stored: Option<i64>) -> u64 {
    stored.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// The `UserFollowed` event of an abandoned follow, as its caller built it: its ID is the
/// follow ID, and the service makes the follower the aggregate, so it lands on the outbox row
/// the first caller would have written.
fn rebuilt_follow(pair: Pair, edge: &Edge) -> Envelope {
    let payload = Payload::UserFollowed(UserFollowed {
        follower_id: pair.follower,
        followee_id: pair.followee,
        version: edge.version_number(),
    });
    let mut event = twtr_common::events::envelope(from_key(edge.follow_id), pair.follower, payload);
    event.occurred_at = Some(clock::to_timestamp(edge.changed_at));
    event
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use twtr_common::cql::ledger::LEDGER_TTL;
    use twtr_common::cql::testing::keyspace_for;

    use super::*;
    use crate::store::conformance::{
        followed, pending_purges_of, staged_events, unfollowed, users, version_of,
    };

    async fn open_store() -> Option<CqlFollowStore> {
        let (session, config) = keyspace_for(&super::super::SCHEMA).await?;
        let ks = Keyspace::new(session, &config, "followers").unwrap();
        Some(
            CqlFollowStore::new(ks, Arc::new(twtr_common::IdGenerator::new(1).unwrap()))
                .await
                .unwrap(),
        )
    }

    async fn open_cql() -> Option<(Arc<dyn FollowStore>, ())> {
        Some((Arc::new(open_store().await?), ()))
    }

    crate::follow_store_conformance!(optional open_cql);

    fn counts(followers: u64, following: u64) -> Counts {
        Counts {
            followers,
            following,
        }
    }

    /// What a follow that died right after step 1 leaves: the edge decided `ago`, nothing else.
    async fn decided_follow(store: &CqlFollowStore, pair: Pair, event: &Envelope, ago: Duration) {
        let (follower, followee) = pair.keys();
        let at = ts(clock::now_millis() - ago.as_millis() as i64);
        let values = (follower, followee, key(event.event_id), at);
        let inner = &store.inner;
        let decided = inner.execute_lwt(&inner.first_follow, values).await;
        assert!(matches!(decided.unwrap(), Lwt::Applied));
    }

    /// What an unfollow that died right after step 1 leaves, `ago`.
    async fn decided_unfollow(store: &CqlFollowStore, pair: Pair, ago: Duration) {
        let inner = &store.inner;
        let edge = inner.edge(pair).await.unwrap().unwrap();
        let (follower, followee) = pair.keys();
        let at = ts(clock::now_millis() - ago.as_millis() as i64);
        let values = (
            false,
            edge.version + 1,
            edge.follow_id,
            at,
            follower,
            followee,
            edge.version,
        );
        let decided = inner.execute_lwt(&inner.change_edge, values).await;
        assert!(matches!(decided.unwrap(), Lwt::Applied));
    }

    fn long_ago() -> Duration {
        ABANDONED_AFTER + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn an_abandoned_follow_is_finished_with_its_own_event() {
        let Some(store) = open_store().await else {
            return;
        };
        let [a, b] = users();
        let pair = Pair {
            follower: a,
            followee: b,
        };
        let lost = followed(a, b);
        decided_follow(&store, pair, &lost, long_ago()).await;
        assert!(
            !store.is_following(a, b).await.unwrap(),
            "not followed until its lists are written"
        );
        let retry = followed(a, b);
        assert_eq!(
            store.follow(a, b, retry.clone()).await.unwrap(),
            FollowOutcome::AlreadyFollowing,
            "the edge was decided before this call"
        );
        assert!(store.is_following(a, b).await.unwrap());
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![counts(0, 1), counts(1, 0)]
        );
        let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
        let announced = staged
            .get(&lost.event_id)
            .expect("announced under its own ID");
        assert_eq!(version_of(announced), 1);
        assert!(!staged.contains_key(&retry.event_id));
    }

    #[tokio::test]
    async fn a_change_in_flight_is_waited_for_and_its_own_retry_finishes_it() {
        let Some(store) = open_store().await else {
            return;
        };
        let [a, b] = users();
        let pair = Pair {
            follower: a,
            followee: b,
        };
        let first = followed(a, b);
        decided_follow(&store, pair, &first, Duration::ZERO).await;
        // Another caller's fresh change: wait for it, then give up rather than take it over.
        let started = Instant::now();
        assert!(store.follow(a, b, followed(a, b)).await.is_err());
        assert!(started.elapsed() >= MAX_WAIT);
        assert!(!store.is_following(a, b).await.unwrap());
        // The same follow again (same event): its own, finished at once.
        assert_eq!(
            store.follow(a, b, first.clone()).await.unwrap(),
            FollowOutcome::Followed
        );
        assert!(store.is_following(a, b).await.unwrap());
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![counts(0, 1), counts(1, 0)]
        );
        let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
        assert_eq!(staged.get(&first.event_id).map(version_of), Some(1));
    }

    #[tokio::test]
    async fn an_abandoned_unfollow_is_taken_over_by_one_unfollow() {
        let Some(store) = open_store().await else {
            return;
        };
        let [a, b] = users();
        let pair = Pair {
            follower: a,
            followee: b,
        };
        assert_eq!(
            store.follow(a, b, followed(a, b)).await.unwrap(),
            FollowOutcome::Followed
        );
        decided_unfollow(&store, pair, long_ago()).await;
        let store: Arc<dyn FollowStore> = Arc::new(store);
        let retries: Vec<Envelope> = (0..4).map(|_| unfollowed(a, b)).collect();
        let outcomes = futures_util::future::join_all(
            retries
                .iter()
                .map(|event| store.unfollow(a, b, event.clone())),
        )
        .await;
        let outcomes: Vec<bool> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            outcomes.iter().filter(|taken| **taken).count(),
            1,
            "one retry announces it: {outcomes:?}"
        );
        assert!(!store.is_following(a, b).await.unwrap());
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![Counts::default(); 2]
        );
        let staged = staged_events(&store).await;
        for (event, taken) in retries.iter().zip(&outcomes) {
            let announced = staged.get(&event.event_id);
            assert_eq!(announced.is_some(), *taken);
            if let Some(announced) = announced {
                assert_eq!(
                    version_of(announced),
                    2,
                    "the version decided before the crash"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_follow_finishes_an_abandoned_unfollow_and_announces_itself() {
        let Some(store) = open_store().await else {
            return;
        };
        let [a, b] = users();
        let pair = Pair {
            follower: a,
            followee: b,
        };
        assert_eq!(
            store.follow(a, b, followed(a, b)).await.unwrap(),
            FollowOutcome::Followed
        );
        decided_unfollow(&store, pair, long_ago()).await;
        let again = followed(a, b);
        assert_eq!(
            store.follow(a, b, again.clone()).await.unwrap(),
            FollowOutcome::Followed
        );
        assert!(store.is_following(a, b).await.unwrap());
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![counts(0, 1), counts(1, 0)]
        );
        let edge = store.inner.edge(pair).await.unwrap().unwrap();
        assert_eq!(edge.version, 3, "followed, unfollowed, followed again");
        let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
        assert_eq!(staged.get(&again.event_id).map(version_of), Some(3));
    }

    #[tokio::test]
    async fn counts_a_crash_left_unmoved_are_moved_by_the_next_call() {
        let Some(store) = open_store().await else {
            return;
        };
        let [a, b] = users();
        let pair = Pair {
            follower: a,
            followee: b,
        };
        // Steps 1 and 2 of a follow, and no step 3.
        let event = followed(a, b);
        decided_follow(&store, pair, &event, Duration::ZERO).await;
        let (follower, followee) = pair.keys();
        let (id, at) = (key(event.event_id), ts(clock::now_millis()));
        let rows = (
            (follower, id, followee, at),
            (followee, id, follower, at),
            store.inner.outbox.row(&event),
        );
        let inner = &store.inner;
        inner
            .session()
            .batch(&inner.follow_batch, rows)
            .await
            .unwrap();
        assert!(store.is_following(a, b).await.unwrap());
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![Counts::default(); 2]
        );
        // A repeated follow changes nothing, but moves the counts; once only.
        for _ in 0..2 {
            assert_eq!(
                store.follow(a, b, followed(a, b)).await.unwrap(),
                FollowOutcome::AlreadyFollowing
            );
            assert_eq!(
                store.counts(vec![a, b]).await.unwrap(),
                vec![counts(0, 1), counts(1, 0)]
            );
        }
    }

    /// A purge queued in the one-partition table this replaced (by this version before its
    /// upgrade, or by a replica of the previous version during one) is drained from it.
    #[tokio::test]
    async fn purges_pending_in_the_old_table_are_drained() {
        let Some(store) = open_store().await else {
            return;
        };
        let [user] = users();
        let session = store.inner.session();
        let ks = store.inner.ks.name();
        let queue = "INSERT INTO {ks}.user_purges (scope, user_id) VALUES ('pending', ?)";
        let queue = twtr_common::cql::qualify(queue, ks);
        session.query_unpaged(queue, (key(user),)).await.unwrap();
        let store: Arc<dyn FollowStore> = Arc::new(store);
        let pending = pending_purges_of(&store, user).await;
        assert_eq!(pending.len(), 1);
        store.purge_done(pending[0]).await.unwrap();
        assert!(pending_purges_of(&store, user).await.is_empty());
    }

    #[test]
    fn counts_are_repaired_only_while_the_ledger_remembers_ops() {
        assert!(COUNT_REPAIR_WINDOW < LEDGER_TTL);
    }
}
