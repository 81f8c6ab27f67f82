//! The transactional outbox on CQL, for any number of replicas of a service: read forward from
//! a cursor, marked rather than deleted, expired by TTL, so that no read meets a tombstone (the
//! schema and its reasons: `cql/users/003_outbox_by_time.cql`).
//!
//! # Layout
//!
//! Four tables in each service's keyspace:
//!
//! - `outbox_by_time`: the events, partitioned by `(shard, bucket)` and clustered by `seq` (a
//!   Snowflake ID minted when the row is staged, see [`CqlOutbox::row`]). The shard is
//!   [`outbox_shard`] of the aggregate, the bucket the `seq`'s [`BUCKET_MS`] window of time. A `published` flag is set once the bus has confirmed
//!   the event. Rows live [`RETENTION`] (the table's TTL) and are never deleted.
//! - `outbox_cursors`: per shard, a `seq` at or below which every row is published (or landed
//!   later than the sweep's margin, see below). Plain overwrites, no TTL.
//! - `outbox_leases`: which relay holds which shard (a lightweight transaction with a TTL).
//! - `outbox`: the first outbox, a queue read through its own deletes; drained, then dropped
//!   in a later release.
//!
//! # Writing
//!
//! A store appends [`CqlOutbox::insert`] with [`CqlOutbox::row`] to the logged batch that holds
//! its domain rows, so both land or neither does, then calls [`CqlOutbox::notify`].
//!
//! # Relaying
//!
//! Each replica's relay drains the shards it holds a lease on. A lease is taken with `IF NOT
//! EXISTS`, renewed with `IF owner = ?`, given back on a clean shutdown, and free for another
//! replica once a dead one's TTL runs out. For each shard it holds, [`Outbox::pending`]:
//!
//! 1. **Hot path.** Reads forward from an in-memory head, `seq > head`, bucket by bucket up to
//!    the current one, and keeps what it read in memory until the bus confirms it. A bucket
//!    whose time is over and that has been read to its end moves the head to its end, so an
//!    idle shard costs one read of the current bucket per poll. Published rows are below the
//!    head: the hot path never reads them again, and as nothing is deleted there are no
//!    tombstones to read either.
//! 2. **Sweeps.** A seq is minted before its batch commits, so rows land only roughly in seq
//!    order: a row can land below the head. Off the hot path, the relay re-reads `seq` and
//!    `published` behind the head and queues the unmarked rows it has not seen, at three
//!    depths. Every [`NEAR_SWEEP_EVERY`] it looks back [`NEAR_SWEEP_MARGIN`], for the common
//!    case: concurrent batches commit a few milliseconds out of seq order (with 32 writers,
//!    about one event in a hundred; without this tier each waited for the next regular sweep).
//!    Every [`SWEEP_EVERY`] it looks back [`SWEEP_MARGIN`] (clock skew between writers, a slow
//!    write, a batchlog replay); every [`DEEP_SWEEP_EVERY`], [`DEEP_SWEEP_MARGIN`]. A row
//!    landing later than that is published by no relay (the schema file says what that takes
//!    and what to do).
//! 3. **Cursor.** After a sweep, the shard's cursor moves up to what no late row can still land
//!    below (the margin behind the clock) and nothing is still waiting for the bus: a plain
//!    overwrite, also made when the lease is given back. A relay that takes a shard starts
//!    its head at the cursor and skips the rows already marked, so a takeover republishes only
//!    what its predecessor published and had not yet marked.
//! 4. **Legacy.** While the old `outbox` table holds rows for the shard, they are handed out
//!    too (and deleted once confirmed, as before); once it is found empty, it is looked at
//!    again every [`LEGACY_RECHECK`], as processes of the previous version may still write
//!    there during a rolling upgrade.
//!
//! [`Outbox::remove`] marks the confirmed rows `published` (legacy rows: deletes them). So
//! every event is published, and at any time each shard has at most one relay (but for the rare
//! overlap around a lease expiring, which publishes an event twice: consumers tolerate that).
//!
//! [`Outbox::peek`] reads every shard from its persisted cursor, without taking a lease: past
//! the marked rows in the small projection, then the events not yet marked; and the legacy
//! rows.
//!
//! [`CqlOutbox::trace_next_poll`] and [`CqlOutbox::trace_relay_poll`] trace the CQL reads of
//! the relay's next poll, and [`read_counts`] sums the live rows and tombstone cells a traced
//! read met.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use prost::Message as _;
use scylla::client::session::Session;
use scylla::errors::TracingError;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::Notify;
use tokio::time::Instant;
use twtr_proto::events::v1::Envelope;
use uuid::Uuid;

use super::{CqlError, Keyspace, Lwt, OUTBOX_SHARDS, lwt, outbox_shard};
use crate::outbox::{Outbox, OutboxKey, PendingEvent};
use crate::store::StoreError;
use crate::{IdGenerator, clock, id, lock};

/// How long a lease lasts without renewal: a dead replica's shards wait this long for a new
/// relay.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a relay renews its leases and looks for free shards.
const LEASE_REFRESH: Duration = Duration::from_secs(10);
/// How often the relay looks for events written by other replicas (its own process's writes
/// wake it at once).
const POLL: Duration = Duration::from_millis(500);

/// The time span of one `outbox_by_time` partition of a shard, in milliseconds (ten minutes).
/// Small enough to keep a partition small (at 1,000 events/s over 16 shards, about 37,500
/// rows); large enough that the hot path reads one bucket per poll, and that a takeover
/// after a day-long outage walks 144 of them.
pub const BUCKET_MS: i64 = 10 * 60 * 1000;

/// How long an event stays in `outbox_by_time` (the table's `default_time_to_live`): the
/// longest a broker outage can last before unpublished events expire.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How far back the near sweep looks: a batch in flight when a later-minted one committed lands
/// within the write timeout (2 s on Cassandra and ScyllaDB), nearly always within milliseconds.
pub const NEAR_SWEEP_MARGIN: Duration = Duration::from_secs(3);

/// How often the near sweep runs: the longest a batch that committed out of order waits. Each
/// row is read about four more times, in the smallest projection.
pub const NEAR_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How far behind the clock a row may land and still be published by the regular sweep, and
/// how far behind the clock the cursor stays. It covers clock skew between writers (NTP keeps
/// it to milliseconds), a slow write (the driver's request timeout) and a dead coordinator's
/// batch replayed from the batchlog (Cassandra replays batches older than twice the write
/// timeout, checking every 10 s), with room to spare.
pub const SWEEP_MARGIN: Duration = Duration::from_secs(120);

/// How often the regular sweep runs: the longest a late row waits for the bus. Each sweep reads
/// `seq` and `published` of about `SWEEP_MARGIN + SWEEP_EVERY` of rows, so every row is read
/// about seven times, in the smallest projection the table has.
pub const SWEEP_EVERY: Duration = Duration::from_secs(20);

/// How far back the deep sweep looks: rows that land up to an hour late (a batchlog replica
/// that was down, a writer's clock far behind) still go out.
pub const DEEP_SWEEP_MARGIN: Duration = Duration::from_secs(3600);

/// How often the deep sweep runs: with [`DEEP_SWEEP_MARGIN`], each row is read twice more, in the
/// same small projection.
pub const DEEP_SWEEP_EVERY: Duration = Duration::from_secs(30 * 60);

/// How often a relay looks again at a legacy partition it found empty (an old-version process
/// may still write there during a rolling upgrade). Each look reads that partition's
/// tombstones, one per event drained, until a compaction an hour or more after the drain
/// (the legacy table's gc_grace) purges them.
pub const LEGACY_RECHECK: Duration = Duration::from_secs(60);

/// How far past the current bucket the hot path reads: a writer whose clock runs ahead mints
/// seqs of the next bucket a little early, and they should not wait for the boundary.
const CLOCK_AHEAD: Duration = Duration::from_secs(10);

/// The most rows one read asks for (the relay's batches are smaller; a sweep or `peek` pages).
const PAGE: i32 = 1000;

/// The timing of a relay: the constants above, or shorter ones in tests.
#[derive(Debug, Clone, Copy)]
struct Timing {
    near_sweep_margin: Duration,
    near_sweep_every: Duration,
    sweep_margin: Duration,
    sweep_every: Duration,
    deep_sweep_margin: Duration,
    deep_sweep_every: Duration,
    legacy_recheck: Duration,
}

impl Timing {
    const DEFAULT: Self = Self {
        near_sweep_margin: NEAR_SWEEP_MARGIN,
        near_sweep_every: NEAR_SWEEP_EVERY,
        sweep_margin: SWEEP_MARGIN,
        sweep_every: SWEEP_EVERY,
        deep_sweep_margin: DEEP_SWEEP_MARGIN,
        deep_sweep_every: DEEP_SWEEP_EVERY,
        legacy_recheck: LEGACY_RECHECK,
    };
}

/// How deep a sweep looks (see the module docs). Each covers the shallower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Depth {
    Near,
    Regular,
    Deep,
}

/// Which read of a relay poll a trace belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxRead {
    /// The hot path: `seq > head` in one bucket.
    Forward,
    /// A sweep: `seq` and `published` behind the head.
    Sweep,
    /// The legacy table's head.
    Legacy,
}

/// One CQL read of a traced poll (see [`CqlOutbox::trace_next_poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedRead {
    pub shard: i32,
    pub read: OutboxRead,
    /// The CQL tracing session: see [`read_counts`].
    pub tracing_id: Uuid,
}

/// What a traced read met on the replicas: the sums of their `Read N live rows and M tombstone
/// cells` trace events (Cassandra's wording).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub live_rows: u64,
    pub tombstone_cells: u64,
    /// How many such events the trace held (one per replica read); 0 if the server reports
    /// its reads in other words.
    pub reports: usize,
}

/// The statements of one keyspace's outbox, prepared once.
struct Statements {
    insert: PreparedStatement,
    forward: PreparedStatement,
    sweep: PreparedStatement,
    fetch: PreparedStatement,
    mark: PreparedStatement,
    read_cursor: PreparedStatement,
    init_cursor: PreparedStatement,
    write_cursor: PreparedStatement,
    legacy_select: PreparedStatement,
    legacy_delete: PreparedStatement,
    acquire: PreparedStatement,
    renew: PreparedStatement,
    release: PreparedStatement,
}

/// One service's outbox tables and this replica's relay over them.
pub struct CqlOutbox {
    ks: Keyspace,
    /// Mints each staged row's `seq` (see [`CqlOutbox::row`]).
    ids: Arc<IdGenerator>,
    statements: Statements,
    timing: Timing,
    /// Who this relay is, in the lease table: host, process and a random part.
    owner: String,
    /// The relay's shards and where it is in each. An async lock, held for a whole `pending`
    /// or `remove` (they await the cluster); the relay calls them one at a time anyway.
    relay: tokio::sync::Mutex<Relay>,
    /// Per shard, when its legacy partition was last found empty: the relay and `peek` look
    /// again only [`LEGACY_RECHECK`] later.
    legacy_empty: Mutex<HashMap<i32, Instant>>,
    /// Woken when this process staged an event, so its relay publishes without waiting a poll.
    staged: Notify,
    /// Set by [`CqlOutbox::trace_next_poll`], taken by the next `pending`.
    trace_next: AtomicBool,
    traces: Mutex<Vec<TracedRead>>,
    /// Woken when a traced poll is over.
    traced: Notify,
}

/// The relay's state: the shards it holds and when it last renewed their leases.
#[derive(Default)]
struct Relay {
    shards: BTreeMap<i32, ShardRelay>,
    /// When the leases were last renewed (or looked for); `None` before the first time.
    refreshed: Option<Instant>,
}

/// Where the relay is in one shard it holds.
#[derive(Debug)]
struct ShardRelay {
    /// Every row with `seq <= head` has been read by the hot path (or, if it landed later, is
    /// the sweeps' business).
    head: i64,
    /// The shard's cursor as last read or written.
    cursor: i64,
    /// Set by each sweep: every row at or below it has been read, or has landed later than the
    /// margin. The cursor may move up to it once nothing below it waits for the bus.
    settled: i64,
    /// Rows read and not yet confirmed by the bus, by seq; handed out by every `pending` until
    /// `remove` marks them.
    waiting: BTreeMap<i64, PendingEvent>,
    /// The same, from the legacy table.
    legacy: BTreeMap<i64, PendingEvent>,
    /// The next regular sweep reads the rows above this seq (up to the head): those that may
    /// have landed since the last sweep, within the margin.
    sweep_from: i64,
    next_near_sweep: Instant,
    next_sweep: Instant,
    next_deep_sweep: Instant,
}

impl ShardRelay {
    /// A shard just taken, at its persisted cursor.
    fn at(cursor: i64, timing: &Timing) -> Self {
        let now = Instant::now();
        Self {
            head: cursor,
            cursor,
            settled: cursor,
            waiting: BTreeMap::new(),
            legacy: BTreeMap::new(),
            // What is there now, the hot path reads from the cursor on; of what lands from now
            // on, only rows within the margin are the sweep's. So a relay taking over an old
            // cursor sweeps the margin, not everything since.
            sweep_from: cursor.max(seq_before(
                clock::now_millis() - millis(timing.sweep_margin),
            )),
            next_near_sweep: now + timing.near_sweep_every,
            next_sweep: now + timing.sweep_every,
            next_deep_sweep: now + timing.deep_sweep_every,
        }
    }

    /// The deepest sweep due at `now`, if any.
    fn sweep_due(&self, now: Instant) -> Option<Depth> {
        if now >= self.next_deep_sweep {
            Some(Depth::Deep)
        } else if now >= self.next_sweep {
            Some(Depth::Regular)
        } else if now >= self.next_near_sweep {
            Some(Depth::Near)
        } else {
            None
        }
    }

    /// How far the cursor may go now: to what the last sweep settled, but below every row
    /// still waiting for the bus.
    fn safe_cursor(&self) -> i64 {
        match self.waiting.keys().next() {
            Some(&oldest) => self.settled.min(oldest - 1),
            None => self.settled,
        }
    }
}

impl std::fmt::Debug for CqlOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlOutbox")
            .field("keyspace", &self.ks.name())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The values of one outbox row: `(shard, bucket, seq, event)`, in the order of
/// [`CqlOutbox::insert`].
pub type OutboxRow = (i32, i64, i64, Vec<u8>);

/// The bucket of a seq: its ten minutes (see [`BUCKET_MS`]).
fn bucket_of(seq: i64) -> i64 {
    id::millis_of(seq as u64).div_euclid(BUCKET_MS)
}

/// The largest seq minted before `millis`: a row at or below it was minted earlier.
fn seq_before(millis: i64) -> i64 {
    id::first_id_at(millis) as i64 - 1
}

/// The last seq of `bucket`.
fn bucket_end(bucket: i64) -> i64 {
    seq_before((bucket + 1) * BUCKET_MS)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl CqlOutbox {
    /// Prepares the outbox statements in `ks` and makes sure every shard has a cursor.
    pub async fn new(ks: Keyspace, ids: Arc<IdGenerator>) -> Result<Self, CqlError> {
        Self::with_timing(ks, Timing::DEFAULT, ids).await
    }

    async fn with_timing(
        ks: Keyspace,
        timing: Timing,
        ids: Arc<IdGenerator>,
    ) -> Result<Self, CqlError> {
        let ttl = LEASE_TTL.as_secs();
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|err| {
            CqlError::InvalidConfig(format!("no randomness for a lease owner: {err}"))
        })?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
        let owner = format!(
            "{host}/{}/{:08x}",
            std::process::id(),
            u32::from_le_bytes(random)
        );
        let statements = Statements {
            insert: ks
                .prepare(
                    "INSERT INTO {ks}.outbox_by_time (shard, bucket, seq, event) VALUES (?, ?, ?, ?)",
                )
                .await?,
            forward: ks
                .prepare(
                    "SELECT seq, published, event FROM {ks}.outbox_by_time \
                     WHERE shard = ? AND bucket = ? AND seq > ? LIMIT ?",
                )
                .await?,
            sweep: ks
                .prepare(
                    "SELECT seq, published FROM {ks}.outbox_by_time \
                     WHERE shard = ? AND bucket = ? AND seq > ? AND seq <= ? LIMIT ?",
                )
                .await?,
            fetch: ks
                .prepare(
                    "SELECT published, event FROM {ks}.outbox_by_time \
                     WHERE shard = ? AND bucket = ? AND seq = ?",
                )
                .await?,
            mark: ks
                .prepare(
                    "UPDATE {ks}.outbox_by_time SET published = true \
                     WHERE shard = ? AND bucket = ? AND seq = ?",
                )
                .await?,
            read_cursor: ks
                .prepare("SELECT seq FROM {ks}.outbox_cursors WHERE shard = ?")
                .await?,
            init_cursor: ks
                .prepare("INSERT INTO {ks}.outbox_cursors (shard, seq) VALUES (?, ?) IF NOT EXISTS")
                .await?,
            write_cursor: ks
                .prepare("UPDATE {ks}.outbox_cursors SET seq = ? WHERE shard = ?")
                .await?,
            legacy_select: ks
                .prepare("SELECT seq, event FROM {ks}.outbox WHERE shard = ? LIMIT ?")
                .await?,
            legacy_delete: ks
                .prepare("DELETE FROM {ks}.outbox WHERE shard = ? AND seq = ?")
                .await?,
            acquire: ks
                .prepare(&format!(
                    "INSERT INTO {{ks}}.outbox_leases (shard, owner) VALUES (?, ?) IF NOT EXISTS USING TTL {ttl}"
                ))
                .await?,
            renew: ks
                .prepare(&format!(
                    "UPDATE {{ks}}.outbox_leases USING TTL {ttl} SET owner = ? WHERE shard = ? IF owner = ?"
                ))
                .await?,
            release: ks
                .prepare("DELETE FROM {ks}.outbox_leases WHERE shard = ? IF owner = ?")
                .await?,
        };
        let outbox = Self {
            ks,
            statements,
            timing,
            ids,
            owner,
            relay: tokio::sync::Mutex::new(Relay::default()),
            legacy_empty: Mutex::new(HashMap::new()),
            staged: Notify::new(),
            trace_next: AtomicBool::new(false),
            traces: Mutex::new(Vec::new()),
            traced: Notify::new(),
        };
        outbox.init_cursors().await?;
        Ok(outbox)
    }

    /// The statement a store appends to its logged batch, with [`CqlOutbox::row`] as values.
    pub fn insert(&self) -> &PreparedStatement {
        &self.statements.insert
    }

    /// The outbox row for `event`: its aggregate's shard, and a `seq` minted now (with its
    /// bucket). Not the event's ID: the relay reads forward by `seq` and looks back only a
    /// margin for rows that commit late, and some events are staged long after their ID was
    /// minted (a change abandoned by a dead caller, finished by the next call with the event
    /// it would have staged). A `seq` minted at staging is as close to commit order as a
    /// Snowflake ID can be, and unique across writers, whatever the event.
    pub fn row(&self, event: &Envelope) -> OutboxRow {
        let seq = i64::try_from(self.ids.next_id()).unwrap_or(i64::MAX);
        Self::row_with_seq(event, seq)
    }

    /// The outbox row for `event` under `seq` (tests stage rows whose `seq` they choose).
    fn row_with_seq(event: &Envelope, seq: i64) -> OutboxRow {
        (
            outbox_shard(event.aggregate_id),
            bucket_of(seq),
            seq,
            event.encode_to_vec(),
        )
    }

    /// Tells this process's relay that a batch with events committed.
    pub fn notify(&self) {
        self.staged.notify_one();
    }

    /// Traces (CQL tracing) every read of the relay's next poll; [`CqlOutbox::take_traces`]
    /// then returns them, for [`read_counts`]. For measurements and tests: tracing costs the
    /// cluster a few writes per read.
    pub fn trace_next_poll(&self) {
        self.trace_next.store(true, Ordering::SeqCst);
    }

    /// The reads traced since the last call (see [`CqlOutbox::trace_next_poll`]).
    pub fn take_traces(&self) -> Vec<TracedRead> {
        std::mem::take(&mut *lock(&self.traces))
    }

    /// Traces the next poll of the relay running on this outbox and returns its reads once
    /// the poll is over (see [`CqlOutbox::trace_next_poll`]).
    pub async fn trace_relay_poll(&self) -> Vec<TracedRead> {
        let over = self.traced.notified();
        tokio::pin!(over);
        // Listening before asking, so a poll that starts and ends at once is not missed.
        over.as_mut().enable();
        self.take_traces();
        self.trace_next_poll();
        over.await;
        self.take_traces()
    }

    /// Creates the cursor of every shard that has none, at [`SWEEP_MARGIN`] before now. Runs
    /// before this process can write an event (stores build their outbox first), so every row
    /// in `outbox_by_time` is above its shard's first cursor, and a relay never searches the
    /// table for where to start. `IF NOT EXISTS` keeps the first process's value; the relays'
    /// later plain overwrites could lose to it only by a timestamp tie-break between servers'
    /// clocks, which leaves the cursor lower: more to re-read, nothing skipped.
    async fn init_cursors(&self) -> Result<(), CqlError> {
        let start = seq_before(clock::now_millis() - millis(self.timing.sweep_margin));
        let session = self.ks.session();
        let inits = (0..OUTBOX_SHARDS).map(|shard| async move {
            if self.read_cursor(shard).await?.is_none() {
                let result = session
                    .execute_unpaged(&self.statements.init_cursor, (shard, start))
                    .await;
                // Refused: another process made the cursor first, which is as good.
                lwt(result)?.applied()?;
            }
            Ok::<_, CqlError>(())
        });
        for init in join_all(inits).await {
            init?;
        }
        Ok(())
    }

    async fn read_cursor(&self, shard: i32) -> Result<Option<i64>, CqlError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.statements.read_cursor, (shard,))
            .await?
            .into_rows_result()?;
        Ok(rows
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(seq,)| seq))
    }

    /// The shard's cursor, or if it has none (its row was deleted by hand), the oldest seq the
    /// table can still hold.
    async fn cursor_or_oldest(&self, shard: i32) -> Result<i64, CqlError> {
        match self.read_cursor(shard).await? {
            Some(cursor) => Ok(cursor),
            None => {
                tracing::warn!(
                    keyspace = self.ks.name(),
                    shard,
                    "outbox shard has no cursor; reading it from the start of its retention"
                );
                Ok(seq_before(clock::now_millis() - millis(RETENTION)))
            }
        }
    }

    async fn write_cursor(&self, shard: i32, seq: i64) -> Result<(), CqlError> {
        self.ks
            .session()
            .execute_unpaged(&self.statements.write_cursor, (seq, shard))
            .await?;
        Ok(())
    }

    /// Runs `statement`, traced if `trace` is set (the trace is kept for
    /// [`CqlOutbox::take_traces`]).
    async fn read(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        trace: Option<(i32, OutboxRead)>,
    ) -> Result<scylla::response::query_result::QueryRowsResult, CqlError> {
        let session = self.ks.session();
        let result = match trace {
            None => session.execute_unpaged(statement, values).await?,
            Some((shard, read)) => {
                let mut traced = statement.clone();
                traced.set_tracing(true);
                let result = session.execute_unpaged(&traced, values).await?;
                if let Some(tracing_id) = result.tracing_id() {
                    lock(&self.traces).push(TracedRead {
                        shard,
                        read,
                        tracing_id,
                    });
                }
                result
            }
        };
        Ok(result.into_rows_result()?)
    }

    /// The shards this relay may drain: renews the leases it holds and takes free ones, at most
    /// once per [`LEASE_REFRESH`]. A shard just taken starts at its cursor; a lost one is
    /// forgotten (its new relay starts at the cursor too).
    async fn refresh_leases(&self, relay: &mut Relay) -> Result<(), StoreError> {
        if relay
            .refreshed
            .is_some_and(|at| at.elapsed() < LEASE_REFRESH)
        {
            return Ok(());
        }
        let session = self.ks.session();
        let attempts = (0..OUTBOX_SHARDS).map(|shard| {
            let was_held = relay.shards.contains_key(&shard);
            async move {
                let result = if was_held {
                    session
                        .execute_unpaged(&self.statements.renew, (&self.owner, shard, &self.owner))
                        .await
                } else {
                    session
                        .execute_unpaged(&self.statements.acquire, (shard, &self.owner))
                        .await
                };
                let holds = lwt(result).and_then(Lwt::applied)?;
                // A shard just taken starts where the last relay's cursor says.
                let cursor = if holds && !was_held {
                    Some(self.cursor_or_oldest(shard).await?)
                } else {
                    None
                };
                Ok::<_, StoreError>((shard, holds, was_held, cursor))
            }
        });
        let mut changed = false;
        for outcome in join_all(attempts).await {
            let (shard, holds, was_held, cursor) = outcome?;
            if let Some(cursor) = cursor {
                relay
                    .shards
                    .insert(shard, ShardRelay::at(cursor, &self.timing));
                changed = true;
            } else if !holds && was_held {
                relay.shards.remove(&shard);
                changed = true;
                tracing::warn!(
                    keyspace = self.ks.name(),
                    shard,
                    "lost an outbox lease to another relay"
                );
            }
        }
        if changed {
            tracing::debug!(
                keyspace = self.ks.name(),
                shards = ?relay.shards.keys().collect::<Vec<_>>(),
                "outbox leases held"
            );
        }
        relay.refreshed = Some(Instant::now());
        Ok(())
    }

    /// One poll of one shard: the legacy table if due, the hot path if the shard has room for
    /// more, a sweep if due.
    async fn poll_shard(
        &self,
        shard: i32,
        state: &mut ShardRelay,
        max: usize,
        trace: bool,
    ) -> Result<(), StoreError> {
        if state.legacy.is_empty() && self.legacy_due(shard) {
            for event in self.read_legacy(shard, max, trace).await? {
                state.legacy.insert(event.key.seq as i64, event);
            }
        }
        if state.waiting.len() < max {
            let want = max - state.waiting.len();
            let (events, head) = self.read_forward(shard, state.head, want, trace).await?;
            state.head = head;
            for event in events {
                state.waiting.insert(event.key.seq as i64, event);
            }
        }
        if let Some(depth) = state.sweep_due(Instant::now()) {
            self.sweep(shard, state, depth, trace).await?;
        }
        Ok(())
    }

    /// Up to `want` unpublished rows of `shard` above `head`, oldest first, and the new head:
    /// the last row read, or the end of the last bucket read through whose time is over.
    async fn read_forward(
        &self,
        shard: i32,
        mut head: i64,
        want: usize,
        trace: bool,
    ) -> Result<(Vec<PendingEvent>, i64), StoreError> {
        let now = clock::now_millis();
        let current = now.div_euclid(BUCKET_MS);
        let last = (now + millis(CLOCK_AHEAD)).div_euclid(BUCKET_MS);
        let mut bucket = bucket_of(head.saturating_add(1));
        let mut found = Vec::new();
        loop {
            // Ask for what is still wanted, but not for a handful at a time when a takeover
            // reads through rows its predecessor marked.
            let limit = (want.saturating_sub(found.len())).clamp(64, PAGE as usize);
            let rows = self
                .read(
                    &self.statements.forward,
                    (shard, bucket, head, limit as i32),
                    trace.then_some((shard, OutboxRead::Forward)),
                )
                .await?;
            let mut read = 0;
            for row in rows.rows::<(i64, Option<bool>, Option<Vec<u8>>)>()? {
                let (seq, published, body) = row?;
                read += 1;
                head = seq;
                // Skip what is marked, and a row whose event expired (TTL) after it was marked.
                if published == Some(true) {
                    continue;
                }
                if let Some(body) = body {
                    found.push(PendingEvent {
                        key: OutboxKey {
                            shard: shard as u32,
                            seq: seq as u64,
                        },
                        event: Envelope::decode(body.as_slice())?,
                    });
                }
            }
            if read == limit {
                // More in this bucket.
                if found.len() >= want {
                    break;
                }
                continue;
            }
            // Read to the end. A bucket whose time is over takes no more on-time rows: move
            // the head to its end, so the next poll starts at the next bucket (a row landing
            // there now is late, and the sweep's).
            if bucket < current {
                head = head.max(bucket_end(bucket));
            }
            if bucket >= last || found.len() >= want {
                break;
            }
            bucket += 1;
        }
        Ok((found, head))
    }

    /// Re-reads the shard behind its head for rows that landed late (see the module docs) and
    /// queues the unmarked ones; after a regular or deep sweep, moves the cursor as far as is
    /// safe.
    async fn sweep(
        &self,
        shard: i32,
        state: &mut ShardRelay,
        depth: Depth,
        trace: bool,
    ) -> Result<(), StoreError> {
        let now = clock::now_millis();
        let from = match depth {
            // A shortcut for the common case only: the regular sweep is what the cursor relies
            // on, so the near one keeps no bookkeeping.
            Depth::Near => state
                .sweep_from
                .max(seq_before(now - millis(self.timing.near_sweep_margin))),
            Depth::Regular => state.sweep_from,
            Depth::Deep => state
                .sweep_from
                .min(seq_before(now - millis(self.timing.deep_sweep_margin))),
        };
        let mut late = Vec::new();
        let mut after = from;
        while after < state.head {
            let bucket = bucket_of(after + 1);
            let rows = self
                .read(
                    &self.statements.sweep,
                    (shard, bucket, after, state.head, PAGE),
                    trace.then_some((shard, OutboxRead::Sweep)),
                )
                .await?;
            let mut read = 0;
            for row in rows.rows::<(i64, Option<bool>)>()? {
                let (seq, published) = row?;
                read += 1;
                after = seq;
                if published != Some(true) && !state.waiting.contains_key(&seq) {
                    late.push(seq);
                }
            }
            if read < PAGE {
                // This bucket is read to its end (or to the head).
                after = after.max(bucket_end(bucket));
            }
        }
        for seq in late {
            if let Some(event) = self.fetch(shard, seq).await? {
                // Out of order by milliseconds is routine (concurrent batches); later than the
                // near sweep's margin is worth a line.
                let behind = Duration::from_millis(
                    u64::try_from(now - id::millis_of(seq as u64)).unwrap_or(0),
                );
                if behind > self.timing.near_sweep_margin {
                    tracing::info!(
                        keyspace = self.ks.name(),
                        shard,
                        seq,
                        behind_ms = behind.as_millis() as u64,
                        "outbox event landed late behind the relay; publishing it now"
                    );
                } else {
                    tracing::debug!(
                        keyspace = self.ks.name(),
                        shard,
                        seq,
                        "outbox event landed behind the relay"
                    );
                }
                state.waiting.insert(seq, event);
            }
        }
        let ready = Instant::now();
        state.next_near_sweep = ready + self.timing.near_sweep_every;
        if depth == Depth::Near {
            return Ok(());
        }
        // Whatever lands from now on at or below the margin is later than the margin.
        let settled = seq_before(now - millis(self.timing.sweep_margin));
        state.sweep_from = settled;
        state.settled = state.head.min(settled);
        state.next_sweep = ready + self.timing.sweep_every;
        if depth == Depth::Deep {
            state.next_deep_sweep = ready + self.timing.deep_sweep_every;
        }
        let cursor = state.safe_cursor();
        if cursor > state.cursor {
            self.write_cursor(shard, cursor).await?;
            state.cursor = cursor;
        }
        Ok(())
    }

    /// The row `seq` of `shard`, unless it is marked.
    async fn fetch(&self, shard: i32, seq: i64) -> Result<Option<PendingEvent>, StoreError> {
        let rows = self
            .read(&self.statements.fetch, (shard, bucket_of(seq), seq), None)
            .await?;
        let Some((published, body)) = rows.maybe_first_row::<(Option<bool>, Option<Vec<u8>>)>()?
        else {
            return Ok(None);
        };
        match (published, body) {
            (Some(true), _) | (_, None) => Ok(None),
            (_, Some(body)) => Ok(Some(PendingEvent {
                key: OutboxKey {
                    shard: shard as u32,
                    seq: seq as u64,
                },
                event: Envelope::decode(body.as_slice())?,
            })),
        }
    }

    /// Whether the shard's legacy partition is due a look: never found empty, or long enough
    /// ago.
    fn legacy_due(&self, shard: i32) -> bool {
        lock(&self.legacy_empty)
            .get(&shard)
            .is_none_or(|at| at.elapsed() >= self.timing.legacy_recheck)
    }

    /// Up to `max` events of the shard's legacy partition, oldest first; an empty partition is
    /// remembered as such for [`LEGACY_RECHECK`].
    async fn read_legacy(
        &self,
        shard: i32,
        max: usize,
        trace: bool,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let limit = i32::try_from(max).unwrap_or(i32::MAX);
        let rows = self
            .read(
                &self.statements.legacy_select,
                (shard, limit),
                trace.then_some((shard, OutboxRead::Legacy)),
            )
            .await?;
        let mut events = Vec::new();
        for row in rows.rows::<(i64, Vec<u8>)>()? {
            let (seq, body) = row?;
            events.push(PendingEvent {
                key: OutboxKey {
                    shard: shard as u32,
                    seq: seq as u64,
                },
                event: Envelope::decode(body.as_slice())?,
            });
        }
        if events.is_empty() {
            lock(&self.legacy_empty).insert(shard, Instant::now());
        }
        Ok(events)
    }

    /// The seq just below the shard's first unmarked row above `after`, or `None` if every row
    /// up to now is marked.
    async fn skip_marked(&self, shard: i32, mut after: i64) -> Result<Option<i64>, StoreError> {
        let last = (clock::now_millis() + millis(CLOCK_AHEAD)).div_euclid(BUCKET_MS);
        let mut bucket = bucket_of(after.saturating_add(1));
        while bucket <= last {
            let rows = self
                .read(
                    &self.statements.sweep,
                    (shard, bucket, after, i64::MAX, PAGE),
                    None,
                )
                .await?;
            let mut read = 0;
            for row in rows.rows::<(i64, Option<bool>)>()? {
                let (seq, published) = row?;
                if published != Some(true) {
                    return Ok(Some(seq - 1));
                }
                read += 1;
                after = seq;
            }
            if read < PAGE {
                bucket += 1;
            }
        }
        Ok(None)
    }

    /// One relay poll (see the module docs): up to `max` events of the shards held, oldest
    /// first.
    async fn poll(
        &self,
        relay: &mut Relay,
        max: usize,
        trace: bool,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        self.refresh_leases(relay).await?;
        let polls = relay
            .shards
            .iter_mut()
            .map(|(shard, state)| self.poll_shard(*shard, state, max, trace));
        for polled in join_all(polls).await {
            polled?;
        }
        // Oldest first across shards (IDs are time-ordered), then as many as asked for; the
        // rest wait in memory for the next round.
        let mut pending: Vec<PendingEvent> = relay
            .shards
            .values()
            .flat_map(|state| state.legacy.values().chain(state.waiting.values()))
            .cloned()
            .collect();
        pending.sort_by_key(|p| p.key.seq);
        pending.truncate(max);
        Ok(pending)
    }

    /// Up to `max` stored, unpublished events of one shard, from its persisted cursor. The
    /// rows between the cursor and the first unmarked one (about two minutes of them on a
    /// healthy relay) are read in the small projection; only from there on are events read.
    async fn peek_shard(&self, shard: i32, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let cursor = self.cursor_or_oldest(shard).await?;
        let mut events = Vec::new();
        if let Some(before_unmarked) = self.skip_marked(shard, cursor).await? {
            events = self
                .read_forward(shard, before_unmarked, max, false)
                .await?
                .0;
        }
        if self.legacy_due(shard) {
            events.extend(self.read_legacy(shard, max, false).await?);
        }
        Ok(events)
    }
}

#[async_trait]
impl Outbox for CqlOutbox {
    async fn pending(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let mut relay = self.relay.lock().await;
        let trace = self.trace_next.swap(false, Ordering::SeqCst);
        let polled = self.poll(&mut relay, max, trace).await;
        if trace {
            self.traced.notify_waiters();
        }
        polled
    }

    async fn peek(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let reads = (0..OUTBOX_SHARDS).map(|shard| self.peek_shard(shard, max));
        let mut pending = Vec::new();
        for events in join_all(reads).await {
            pending.extend(events?);
        }
        pending.sort_by_key(|p| p.key.seq);
        pending.truncate(max);
        Ok(pending)
    }

    /// Marks the confirmed events `published` (an overwrite: nothing is deleted), and deletes
    /// the confirmed legacy rows.
    async fn remove(&self, keys: Vec<OutboxKey>) -> Result<(), StoreError> {
        let mut relay = self.relay.lock().await;
        let session = self.ks.session();
        let writes = keys.iter().map(|key| {
            let shard = key.shard as i32;
            let seq = key.seq as i64;
            let legacy = relay
                .shards
                .get(&shard)
                .is_some_and(|state| state.legacy.contains_key(&seq));
            async move {
                // A key the relay does not know (its lease was lost in between) came from the
                // new table, as the legacy table takes no new rows.
                let written = if legacy {
                    session
                        .execute_unpaged(&self.statements.legacy_delete, (shard, seq))
                        .await
                } else {
                    session
                        .execute_unpaged(&self.statements.mark, (shard, bucket_of(seq), seq))
                        .await
                };
                (shard, seq, written)
            }
        });
        let mut first_error = None;
        for (shard, seq, written) in join_all(writes).await {
            match written {
                Ok(_) => {
                    if let Some(state) = relay.shards.get_mut(&shard) {
                        state.legacy.remove(&seq);
                        state.waiting.remove(&seq);
                    }
                }
                // Still waiting: handed out again, published again, marked then.
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(CqlError::from(err).into()),
            None => Ok(()),
        }
    }

    async fn changed(&self) {
        tokio::select! {
            () = self.staged.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }

    /// Saves each shard's cursor as far as is safe, then gives the leases back.
    async fn close(&self) {
        let held = {
            let mut relay = self.relay.lock().await;
            // Look for free shards again at the next read, rather than idling a refresh period.
            relay.refreshed = None;
            std::mem::take(&mut relay.shards)
        };
        let session = self.ks.session();
        let releases = held.iter().map(|(shard, state)| async move {
            let cursor = state.safe_cursor();
            if cursor > state.cursor
                && let Err(err) = self.write_cursor(*shard, cursor).await
            {
                tracing::debug!(error = %err, shard, "could not save an outbox cursor; the next relay reads a little more");
            }
            session
                .execute_unpaged(&self.statements.release, (*shard, &self.owner))
                .await
        });
        for released in join_all(releases).await {
            if let Err(err) = released {
                tracing::debug!(error = %err, "could not give an outbox lease back; it expires on its own");
            }
        }
    }
}

/// Sums the `Read N live rows and M tombstone cells` events of a traced read (see
/// [`CqlOutbox::trace_next_poll`]). The server writes traces in the background, later still
/// when busy, so this asks again for up to ten seconds until one shows up.
pub async fn read_counts(session: &Session, tracing_id: Uuid) -> Result<ReadCounts, CqlError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = match session.get_tracing_info(&tracing_id).await {
            Ok(info) => info,
            // The driver's own few quick retries found no complete trace yet.
            Err(TracingError::EmptyResults) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let mut counts = ReadCounts::default();
        for event in &info.events {
            if let Some((live, tombstones)) = event.activity.as_deref().and_then(parse_read_report)
            {
                counts.live_rows += live;
                counts.tombstone_cells += tombstones;
                counts.reports += 1;
            }
        }
        if counts.reports > 0 || Instant::now() >= deadline {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(N, M)` of Cassandra's `Read N live rows and M tombstone cells` trace event.
fn parse_read_report(activity: &str) -> Option<(u64, u64)> {
    let rest = activity.strip_prefix("Read ")?;
    let (live, rest) = rest.split_once(" live rows and ")?;
    let (tombstones, _) = rest.split_once(" tombstone cells")?;
    Some((live.trim().parse().ok()?, tombstones.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashSet;
    use std::sync::{Arc, OnceLock};

    use scylla::statement::batch::{Batch, BatchType};

    use super::*;
    use crate::IdGenerator;
    use crate::bus::{EventBus, InProcessBus, Subscription, conformance};
    use crate::cql::testing::keyspace_for;
    use crate::outbox::pending_ids;

    /// One generator for the whole test process: tests sharing a keyspace never mint the same
    /// event ID.
    fn ids() -> &'static IdGenerator {
        ids_arc_ref()
    }

    fn ids_arc_ref() -> &'static Arc<IdGenerator> {
        static IDS: OnceLock<Arc<IdGenerator>> = OnceLock::new();
        IDS.get_or_init(|| Arc::new(IdGenerator::new(1).unwrap()))
    }

    /// The same generator, as an outbox takes it (for the `seq` of the rows it stages).
    fn ids_arc() -> Arc<IdGenerator> {
        Arc::clone(ids_arc_ref())
    }

    /// Events of a test of their own: fresh IDs, and aggregates (fresh IDs too) spread over
    /// shards.
    fn events(n: usize) -> Vec<Envelope> {
        (0..n)
            .map(|_| {
                let mut event = conformance::event(ids().next_id(), "svc.happened");
                event.aggregate_id = ids().next_id();
                event
            })
            .collect()
    }

    /// Stages `events` in one logged batch, as a store does with its domain rows.
    async fn stage(outbox: &CqlOutbox, events: &[Envelope]) {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::new();
        for event in events {
            batch.append_statement(outbox.insert().clone());
            // Each row's seq is its event's ID, so a test chooses when a row "was minted".
            values.push(CqlOutbox::row_with_seq(event, event.event_id as i64));
        }
        outbox.ks.session().batch(&batch, values).await.unwrap();
        outbox.notify();
    }

    fn ids_of(events: &[Envelope]) -> Vec<u64> {
        events.iter().map(|e| e.event_id).collect()
    }

    /// The events of `pending` that are among `mine`, in the order given.
    fn mine(pending: &[PendingEvent], mine: &[u64]) -> Vec<u64> {
        pending
            .iter()
            .map(|p| p.event.event_id)
            .filter(|id| mine.contains(id))
            .collect()
    }

    /// A test's turn at `service`'s keyspace, and an outbox on it. Tests of one keyspace take
    /// turns, as a relay's leases and `peek` see every test's events; the leases a failed test
    /// left behind are cleared, so that its failure stays its own.
    /// The users keyspace's files, which hold every outbox table (each keyspace has the same):
    /// the outbox tests' two keyspaces of their own take them.
    const USERS_FILES: crate::cql::Schema = crate::cql_schema!(
        "users":
        1 => "001_init.cql",
        2 => "002_token_generation.cql",
        3 => "003_outbox_by_time.cql",
    );
    static OUTBOX_ONE: crate::cql::Schema = crate::cql::Schema {
        service: "outbox_one",
        ..USERS_FILES
    };
    static OUTBOX_TWO: crate::cql::Schema = crate::cql::Schema {
        service: "outbox_two",
        ..USERS_FILES
    };

    /// The outbox tests' keyspace `which` (1 or 2), its leases cleared, held for one test at a
    /// time (the tests of one keyspace share its shards).
    async fn turn(which: u8) -> Option<(tokio::sync::MutexGuard<'static, ()>, Keyspace)> {
        static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        static TWO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let (schema, lock) = match which {
            1 => (&OUTBOX_ONE, &ONE),
            _ => (&OUTBOX_TWO, &TWO),
        };
        let (session, config) = keyspace_for(schema).await?;
        let turn = lock.lock().await;
        let ks = Keyspace::new(session, &config, schema.service).unwrap();
        let clear = ks
            .prepare("DELETE FROM {ks}.outbox_leases WHERE shard = ? IF EXISTS")
            .await
            .unwrap();
        for shard in 0..OUTBOX_SHARDS {
            ks.session()
                .execute_unpaged(&clear, (shard,))
                .await
                .unwrap();
        }
        Some((turn, ks))
    }

    /// Timing for tests that run the sweeps by hand: none falls due by itself.
    const BY_HAND: Timing = Timing {
        near_sweep_every: Duration::from_secs(3600),
        sweep_every: Duration::from_secs(3600),
        deep_sweep_every: Duration::from_secs(3600),
        legacy_recheck: Duration::from_secs(3600),
        ..Timing::DEFAULT
    };

    /// Makes a sweep of `depth` due now on every held shard.
    async fn sweep_due(outbox: &CqlOutbox, depth: Depth) {
        let mut relay = outbox.relay.lock().await;
        for state in relay.shards.values_mut() {
            let due = match depth {
                Depth::Near => &mut state.next_near_sweep,
                Depth::Regular => &mut state.next_sweep,
                Depth::Deep => &mut state.next_deep_sweep,
            };
            *due = Instant::now();
        }
    }

    /// Publishes (marks) everything pending, this test's and any other's, until none is left.
    async fn drain(outbox: &CqlOutbox) {
        loop {
            let pending = outbox.pending(256).await.unwrap();
            if pending.is_empty() {
                return;
            }
            outbox
                .remove(pending.iter().map(|p| p.key).collect())
                .await
                .unwrap();
        }
    }

    #[test]
    fn shards_spread_snowflake_ids_evenly() {
        const N: usize = 16_384;
        let mean = N / OUTBOX_SHARDS as usize;
        // At most 20% off the mean: about 6.4 standard deviations of a uniform spread
        // (sqrt(1024 * 15/16) = 31), so a sound hash essentially never fails it.
        let bound = mean / 5;
        let spread = |ids: &[u64]| {
            let mut per_shard = vec![0_usize; OUTBOX_SHARDS as usize];
            for id in ids {
                per_shard[outbox_shard(*id) as usize] += 1;
            }
            per_shard
        };
        let generator = IdGenerator::new(7).unwrap();
        let dense: Vec<u64> = (0..N).map(|_| generator.next_id()).collect();
        // One ID per millisecond, as a quiet process mints them: the sequence is always 0.
        let start = clock::now_millis();
        let sparse: Vec<u64> = (0..N as i64)
            .map(|ms| id::first_id_at(start + ms))
            .collect();
        for (name, ids) in [("dense", &dense), ("sparse", &sparse)] {
            for (shard, count) in spread(ids).into_iter().enumerate() {
                assert!(
                    count.abs_diff(mean) <= bound,
                    "{name}: shard {shard} has {count} of {N} IDs, expected {mean} ± {bound}"
                );
            }
        }
        // What the first outbox's `aggregate_id % 16` made of the sparse IDs.
        assert!(sparse.iter().all(|id| id % OUTBOX_SHARDS as u64 == 0));
        // One aggregate, one shard.
        assert_eq!(outbox_shard(dense[5]), outbox_shard(dense[5]));
    }

    #[test]
    fn buckets_are_ten_minutes_of_ids() {
        let id = ids().next_id() as i64;
        let bucket = bucket_of(id);
        assert!(bucket_end(bucket - 1) < id && id <= bucket_end(bucket));
        assert_eq!(bucket_of(bucket_end(bucket)), bucket);
        assert_eq!(bucket_of(bucket_end(bucket) + 1), bucket + 1);
        let at = id::millis_of(id as u64);
        assert!(seq_before(at) < id && id <= seq_before(at + 1));
    }

    #[test]
    fn read_reports_parse() {
        assert_eq!(
            parse_read_report("Read 0 live rows and 1746 tombstone cells"),
            Some((0, 1746))
        );
        assert_eq!(
            parse_read_report("Read 12 live rows and 0 tombstone cells for query SELECT ..."),
            Some((12, 0))
        );
        assert_eq!(
            parse_read_report("Merged data from memtables and 2 sstables"),
            None
        );
    }

    /// The four keyspaces' outbox migrations create the same tables, with the TTL the code
    /// calls [`RETENTION`].
    #[test]
    fn every_keyspace_has_the_same_outbox_tables() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../cql/");
        let statements: Vec<Vec<String>> = ["users", "tweets", "followers", "feeds"]
            .iter()
            .map(|service| {
                let dir = std::fs::read_dir(format!("{root}{service}")).unwrap();
                let name = dir
                    .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                    .find(|name| name.ends_with("_outbox_by_time.cql"))
                    .unwrap_or_else(|| panic!("{service} has an outbox_by_time migration"));
                let cql = std::fs::read_to_string(format!("{root}{service}/{name}")).unwrap();
                crate::cql::migrate::split_statements(&cql).unwrap()
            })
            .collect();
        assert!(statements.iter().all(|s| *s == statements[0]));
        let ttl = format!("default_time_to_live = {}", RETENTION.as_secs());
        assert!(statements[0][0].contains(&ttl), "{}", statements[0][0]);
    }

    #[tokio::test]
    async fn staged_events_come_out_oldest_first_until_removed() {
        let Some((_turn, ks)) = turn(1).await else {
            return;
        };
        let outbox = CqlOutbox::new(ks, ids_arc()).await.unwrap();
        let staged = events(5);
        stage(&outbox, &staged).await;
        let expected = ids_of(&staged);
        let pending = outbox.pending(100).await.unwrap();
        assert_eq!(mine(&pending, &expected), expected);
        assert!(
            pending
                .iter()
                .map(|p| p.key.shard)
                .collect::<HashSet<_>>()
                .len()
                > 1,
            "the events were spread over shards"
        );
        let key = |id: u64| pending.iter().find(|p| p.event.event_id == id).unwrap().key;
        outbox
            .remove(vec![key(expected[0]), key(expected[3])])
            .await
            .unwrap();
        let left = pending_ids(&outbox, 100).await.unwrap();
        assert_eq!(
            mine_ids(&left, &expected),
            vec![expected[1], expected[2], expected[4]]
        );
        assert_eq!(
            mine(&outbox.pending(100).await.unwrap(), &expected),
            vec![expected[1], expected[2], expected[4]],
            "what the bus has not confirmed is handed out again"
        );
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        assert!(mine(&outbox.pending(100).await.unwrap(), &expected).is_empty());
        assert!(mine_ids(&pending_ids(&outbox, 100).await.unwrap(), &expected).is_empty());
        outbox.close().await;
    }

    fn mine_ids(ids: &[u64], mine: &[u64]) -> Vec<u64> {
        ids.iter().copied().filter(|id| mine.contains(id)).collect()
    }

    #[tokio::test]
    async fn a_shard_has_one_relay_until_its_lease_is_given_back() {
        let Some((_turn, ks)) = turn(2).await else {
            return;
        };
        let first = CqlOutbox::new(ks.clone(), ids_arc()).await.unwrap();
        let second = CqlOutbox::new(ks, ids_arc()).await.unwrap();
        let staged = events(3);
        let expected = ids_of(&staged);
        stage(&first, &staged).await;
        // The first relay to look takes every free shard; the second finds none free.
        assert_eq!(
            mine(&first.pending(100).await.unwrap(), &expected),
            expected
        );
        assert!(second.pending(100).await.unwrap().is_empty());
        assert!(second.relay.lock().await.shards.is_empty());
        // A clean shutdown gives the shards back; the other replica takes them over.
        first.close().await;
        second.relay.lock().await.refreshed = None;
        let taken_over = second.pending(100).await.unwrap();
        assert_eq!(mine(&taken_over, &expected), expected);
        assert_eq!(
            second.relay.lock().await.shards.len(),
            OUTBOX_SHARDS as usize
        );
        second
            .remove(taken_over.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        second.close().await;
    }

    async fn next_id(sub: &mut Box<dyn Subscription>) -> u64 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event within 10 s")
            .unwrap();
        let id = delivery.decode().unwrap().event_id;
        delivery.ack().await.unwrap();
        id
    }

    #[tokio::test]
    async fn the_relay_publishes_each_event_once_in_shard_order() {
        let Some((_turn, ks)) = turn(2).await else {
            return;
        };
        let outbox = Arc::new(CqlOutbox::new(ks, ids_arc()).await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(InProcessBus::open(&dir.path().join("bus.redb")).unwrap());
        let mut sub = bus
            .subscribe(&conformance::spec("q", &["svc.*".into()]))
            .await
            .unwrap();
        let staged: Vec<Vec<Envelope>> = (0..6).map(|_| events(50)).collect();
        stage(&outbox, &staged[0]).await; // stored before the relay starts, as after a crash
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = tokio::spawn(crate::relay::run_relay(
            "svc",
            outbox.clone(),
            bus.clone(),
            stop.clone(),
        ));
        for batch in &staged[1..] {
            stage(&outbox, batch).await; // stored while it runs
        }
        let expected: HashSet<u64> = staged.iter().flat_map(|b| ids_of(b)).collect();
        let shard_of: HashMap<u64, i32> = staged
            .iter()
            .flatten()
            .map(|e| (e.event_id, outbox_shard(e.aggregate_id)))
            .collect();
        let mut seen = Vec::new();
        while seen.iter().filter(|id| expected.contains(id)).count() < expected.len() {
            seen.push(next_id(&mut sub).await);
        }
        let seen: Vec<u64> = seen
            .into_iter()
            .filter(|id| expected.contains(id))
            .collect();
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            seen.len(),
            "no event came out twice"
        );
        for shard in 0..OUTBOX_SHARDS {
            let order: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|id| shard_of[id] == shard)
                .collect();
            assert!(
                order.is_sorted(),
                "shard {shard} came out in order: {order:?}"
            );
        }
        stop.cancel();
        relay.await.unwrap();
        let left = pending_ids(outbox.as_ref(), 10_000).await.unwrap();
        assert!(!left.iter().any(|id| expected.contains(id)), "all marked");
    }

    #[tokio::test]
    async fn a_takeover_starts_at_the_cursor_and_republishes_nothing_marked() {
        let Some((_turn, ks)) = turn(2).await else {
            return;
        };
        // No margin: the cursor follows the head as closely as it may, so the test sees it.
        let first = CqlOutbox::with_timing(
            ks.clone(),
            Timing {
                sweep_margin: Duration::ZERO,
                sweep_every: Duration::ZERO,
                ..BY_HAND
            },
            ids_arc(),
        )
        .await
        .unwrap();
        drain(&first).await;
        let staged = events(6);
        let expected = ids_of(&staged);
        stage(&first, &staged).await;
        let pending = first.pending(100).await.unwrap();
        assert_eq!(mine(&pending, &expected), expected);
        let (published, unpublished) = expected.split_at(4);
        let keys: Vec<OutboxKey> = pending
            .iter()
            .filter(|p| published.contains(&p.event.event_id))
            .map(|p| p.key)
            .collect();
        first.remove(keys).await.unwrap();
        // A sweep (due on every poll here) moves the cursors; a clean shutdown saves them.
        assert_eq!(
            mine(&first.pending(100).await.unwrap(), &expected),
            unpublished
        );
        first.close().await;

        // Each shard's cursor is past its published events and below its unpublished ones.
        for event in &staged {
            let (shard, seq) = (outbox_shard(event.aggregate_id), event.event_id as i64);
            let cursor = first.read_cursor(shard).await.unwrap().unwrap();
            if published.contains(&event.event_id) {
                assert!(
                    cursor >= seq,
                    "shard {shard}: cursor {cursor} is past {seq}"
                );
            } else {
                assert!(
                    cursor < seq,
                    "shard {shard}: cursor {cursor} is below {seq}"
                );
            }
        }

        // The next relay starts there, and republishes only what was never confirmed.
        let second = CqlOutbox::new(ks, ids_arc()).await.unwrap();
        let taken_over = second.pending(100).await.unwrap();
        for (shard, state) in &second.relay.lock().await.shards {
            assert_eq!(
                state.cursor,
                second.read_cursor(*shard).await.unwrap().unwrap()
            );
        }
        assert_eq!(mine(&taken_over, &expected), unpublished);
        second
            .remove(taken_over.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        second.close().await;
    }

    #[tokio::test]
    async fn a_takeover_with_the_default_margin_skips_marked_rows() {
        let Some((_turn, ks)) = turn(1).await else {
            return;
        };
        let first = CqlOutbox::new(ks.clone(), ids_arc()).await.unwrap();
        drain(&first).await;
        let staged = events(6);
        let expected = ids_of(&staged);
        stage(&first, &staged).await;
        let pending = first.pending(100).await.unwrap();
        first
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        first.close().await;
        // The cursors stay two minutes behind, so the next relay reads these rows again, but
        // finds them marked.
        for event in &staged {
            let (shard, seq) = (outbox_shard(event.aggregate_id), event.event_id as i64);
            assert!(first.read_cursor(shard).await.unwrap().unwrap() < seq);
        }
        let second = CqlOutbox::new(ks, ids_arc()).await.unwrap();
        assert!(mine(&second.pending(100).await.unwrap(), &expected).is_empty());
        second.close().await;
    }

    /// A change abandoned by a dead caller and finished hours later by the next call stages the
    /// event it would have staged then, ID and all: the row's `seq` is minted at staging, so
    /// the hot path publishes it at once instead of no sweep ever reaching back that far.
    #[tokio::test]
    async fn an_event_staged_long_after_its_id_was_minted_goes_out_at_once() {
        let Some((_turn, ks)) = turn(1).await else {
            return;
        };
        let outbox = CqlOutbox::with_timing(ks, BY_HAND, ids_arc())
            .await
            .unwrap();
        drain(&outbox).await;
        let hours_ago = clock::now_millis() - 2 * 3600 * 1000;
        let mut old = conformance::event(
            id::first_id_at(hours_ago) | (ids().next_id() & ((1 << 22) - 1)),
            "svc.happened",
        );
        old.aggregate_id = ids().next_id();
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(outbox.insert().clone());
        outbox
            .ks
            .session()
            .batch(&batch, (outbox.row(&old),))
            .await
            .unwrap();
        let pending = outbox.pending(100).await.unwrap();
        assert_eq!(
            mine(&pending, &[old.event_id]),
            vec![old.event_id],
            "the hot path finds it, no sweep needed"
        );
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        outbox.close().await;
    }

    #[tokio::test]
    async fn late_arrivals_are_published_by_the_sweeps() {
        let Some((_turn, ks)) = turn(1).await else {
            return;
        };
        let outbox = CqlOutbox::with_timing(ks, BY_HAND, ids_arc())
            .await
            .unwrap();
        drain(&outbox).await;
        // One aggregate, so every event is on one shard, whose head passes them all.
        let aggregate = ids().next_id();
        let event = |id: u64| {
            let mut event = conformance::event(id, "svc.happened");
            event.aggregate_id = aggregate;
            event
        };
        let late = event(ids().next_id()); // minted first, committed last
        let on_time: Vec<Envelope> = (0..3).map(|_| event(ids().next_id())).collect();
        stage(&outbox, &on_time).await;
        let pending = outbox.pending(100).await.unwrap();
        assert_eq!(mine(&pending, &ids_of(&on_time)), ids_of(&on_time));
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();

        // Minted before the others, committed after them: behind the head.
        stage(&outbox, std::slice::from_ref(&late)).await;
        assert!(
            mine(&outbox.pending(100).await.unwrap(), &[late.event_id]).is_empty(),
            "the hot path does not look below its head"
        );
        let publish_in_sweep = |depth: Depth, event: &Envelope| {
            let (outbox, id) = (&outbox, event.event_id);
            async move {
                sweep_due(outbox, depth).await;
                let swept = outbox.pending(100).await.unwrap();
                let found = !mine(&swept, &[id]).is_empty();
                outbox
                    .remove(swept.iter().map(|p| p.key).collect())
                    .await
                    .unwrap();
                found
            }
        };
        assert!(publish_in_sweep(Depth::Near, &late).await);

        // Minted a minute, then ten minutes, before landing: each found only by the sweep
        // whose margin reaches that far back.
        let ago = |minutes: i64| {
            let low_bits = ids().next_id() & ((1 << 22) - 1);
            let millis = clock::now_millis() - minutes * 60 * 1000;
            event(id::first_id_at(millis) | low_bits)
        };
        let minute_late = ago(1);
        stage(&outbox, std::slice::from_ref(&minute_late)).await;
        assert!(!publish_in_sweep(Depth::Near, &minute_late).await);
        assert!(publish_in_sweep(Depth::Regular, &minute_late).await);
        let ten_minutes_late = ago(10);
        stage(&outbox, std::slice::from_ref(&ten_minutes_late)).await;
        assert!(!publish_in_sweep(Depth::Regular, &ten_minutes_late).await);
        assert!(publish_in_sweep(Depth::Deep, &ten_minutes_late).await);

        for event in [&late, &minute_late, &ten_minutes_late] {
            assert!(
                !publish_in_sweep(Depth::Deep, event).await,
                "marked rows are not swept up again"
            );
        }
        outbox.close().await;
    }

    #[tokio::test]
    async fn the_legacy_table_is_drained_and_looked_at_again() {
        let Some((_turn, ks)) = turn(1).await else {
            return;
        };
        let legacy_insert = ks
            .prepare("INSERT INTO {ks}.outbox (shard, seq, event) VALUES (?, ?, ?)")
            .await
            .unwrap();
        // What a process of the previous version writes: shard = aggregate % 16.
        let write_legacy = |event: &Envelope| {
            let values = (
                (event.aggregate_id % OUTBOX_SHARDS as u64) as i32,
                event.event_id as i64,
                event.encode_to_vec(),
            );
            let (session, statement) = (ks.session().clone(), legacy_insert.clone());
            async move { session.execute_unpaged(&statement, values).await.unwrap() }
        };
        let outbox = CqlOutbox::with_timing(ks.clone(), BY_HAND, ids_arc())
            .await
            .unwrap();
        let legacy = events(3);
        for event in &legacy {
            write_legacy(event).await;
        }
        let current = events(2);
        stage(&outbox, &current).await;
        let expected: Vec<u64> = {
            let mut ids = [ids_of(&legacy), ids_of(&current)].concat();
            ids.sort_unstable();
            ids
        };
        assert_eq!(
            mine_ids(&pending_ids(&outbox, 1000).await.unwrap(), &expected),
            expected,
            "peek counts the legacy rows too"
        );
        let pending = outbox.pending(100).await.unwrap();
        assert_eq!(mine(&pending, &expected), expected);
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        let select = ks
            .prepare("SELECT seq FROM {ks}.outbox WHERE shard = ?")
            .await
            .unwrap();
        for event in &legacy {
            let shard = (event.aggregate_id % OUTBOX_SHARDS as u64) as i32;
            let rows = ks
                .session()
                .execute_unpaged(&select, (shard,))
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            let seqs: Vec<i64> = rows
                .rows::<(i64,)>()
                .unwrap()
                .map(|r| r.unwrap().0)
                .collect();
            assert!(
                !seqs.contains(&(event.event_id as i64)),
                "deleted once published"
            );
        }
        assert!(mine(&outbox.pending(100).await.unwrap(), &expected).is_empty());
        assert_eq!(
            lock(&outbox.legacy_empty).len(),
            OUTBOX_SHARDS as usize,
            "every legacy partition was found empty"
        );

        // An old-version process writes again: seen at the next look, not before.
        let straggler = events(1);
        write_legacy(&straggler[0]).await;
        let straggler = ids_of(&straggler);
        assert!(mine(&outbox.pending(100).await.unwrap(), &straggler).is_empty());
        lock(&outbox.legacy_empty).clear();
        let pending = outbox.pending(100).await.unwrap();
        assert_eq!(mine(&pending, &straggler), straggler);
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        outbox.close().await;
    }

    /// The point of the second outbox: after thousands of events went out, a relay's polls
    /// read no tombstones (the first outbox's read one per event published), and the events
    /// are spread over the shards.
    #[tokio::test]
    async fn polls_read_no_tombstones_after_thousands_of_events() {
        let Some((_turn, ks)) = turn(2).await else {
            return;
        };
        let outbox = CqlOutbox::with_timing(ks.clone(), BY_HAND, ids_arc())
            .await
            .unwrap();
        drain(&outbox).await;
        let staged = events(3_000);
        for batch in staged.chunks(50) {
            stage(&outbox, batch).await;
        }
        drain(&outbox).await;

        let mut per_shard = vec![0_usize; OUTBOX_SHARDS as usize];
        for event in &staged {
            per_shard[outbox_shard(event.aggregate_id) as usize] += 1;
        }
        // 187.5 a shard on average; 40% off is over five standard deviations.
        assert!(
            per_shard.iter().all(|n| n.abs_diff(187) <= 75),
            "spread: {per_shard:?}"
        );

        // A hot-path poll and a sweep, traced.
        sweep_due(&outbox, Depth::Regular).await;
        outbox.trace_next_poll();
        assert!(outbox.pending(256).await.unwrap().is_empty());
        let traces = outbox.take_traces();
        let mut reports = 0;
        for traced in &traces {
            let counts = read_counts(ks.session(), traced.tracing_id).await.unwrap();
            reports += counts.reports;
            assert_eq!(counts.tombstone_cells, 0, "{traced:?}: {counts:?}");
            if traced.read == OutboxRead::Forward {
                assert_eq!(counts.live_rows, 0, "published rows are behind the head");
            }
        }
        assert!(
            traces.iter().any(|t| t.read == OutboxRead::Forward)
                && traces.iter().any(|t| t.read == OutboxRead::Sweep),
            "{traces:?}"
        );
        assert!(reports > 0, "the server reported its reads in its trace");
        outbox.close().await;
    }
}
