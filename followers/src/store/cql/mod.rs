//! [`CqlFollowStore`]: the follow graph on ScyllaDB / Cassandra, in the tables of
//! `cql/followers/001_init.cql`: `follow_edges` (each edge's state and version), the lists
//! `following` and `followers` (newest follow first), `follow_counts` (counts in static columns
//! beside a ledger of the ops applied to them) and the outbox.
//!
//! # Layout
//!
//! - `statements`: every statement; [`CqlFollowStore::new`] prepares each once.
//! - `change`: follow and unfollow (`Inner::change`), in the three steps below, after finishing
//!   whatever the edge's last change left undone.
//! - `reads`: full partition keys only, so each is routed token-aware; `counts` asks in `IN`
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

mod change;
mod reads;
mod statements;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join;
use scylla::client::session::Session;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use twtr_common::cql::{CountLedger, CqlError, CqlOutbox, DeletedAccounts, Keyspace};
use twtr_common::outbox::Outbox;
use twtr_common::store::{PendingPurge, StoreError};
use twtr_common::{IdGenerator, Page, PageRequest};
use twtr_proto::events::v1::Envelope;

use self::change::Pair;
use super::{Counts, Direction, FollowEntry, FollowOutcome, FollowStore};

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
    pub async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        Ok(Self {
            inner: Arc::new(Inner::new(ks, ids).await?),
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

impl Inner {
    fn session(&self) -> &Session {
        self.ks.session()
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

    async fn counts(&self, users: Vec<u64>) -> Result<Vec<Counts>, StoreError> {
        self.inner.counts(users).await
    }

    async fn list(
        &self,
        user: u64,
        direction: Direction,
        page: PageRequest,
    ) -> Result<Page<FollowEntry>, StoreError> {
        self.inner.list(user, direction, page).await
    }

    async fn is_following(&self, follower: u64, followee: u64) -> Result<bool, StoreError> {
        let pair = Pair { follower, followee };
        match self.inner.edge(pair).await? {
            // A follow is there once its lists are: until then it may still be abandoned.
            Some(edge) if edge.following => self.inner.is_listed(pair, &edge).await,
            _ => Ok(false),
        }
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
