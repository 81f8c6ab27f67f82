//! Counts that move once per op without a lightweight transaction on the write path: a folded
//! base in a static column, beside the ops not folded yet (one clustering row per op with its
//! `delta`). The tweets service counts an author's tweets this way
//! (`cql/tweets/007_author_tallies.cql` explains the table).
//!
//! - **Record** an op: a plain row `(key, op, delta)` written `USING TIMESTAMP` the op's decision
//!   time, in the logged batch of the change it counts ([`Tally::insert`], [`Tally::op_row`]). The
//!   op and its change land together or not at all, and running the batch again rewrites the
//!   same row: the op counts once.
//! - **Read** a count: the base plus the sum of the deltas, one read of the partition
//!   ([`Tally::read`]); the ops not folded yet are the partition's only rows, so the read stays
//!   small while folds keep up.
//! - **Fold** ([`Tally::fold`]), off the write path: one conditional batch on the partition moves
//!   the ops older than a given age into the base and deletes their rows, on the condition that
//!   no fold ran since its read (`SET <count> = ?, folds = <read + 1> IF folds = <read>`: a
//!   fold counter, never the base, which ops of both signs could bring back to a value a stale
//!   fold read). It is all or nothing, so an unknown outcome (a Paxos timeout) leaves a state
//!   the next fold reads right. The deletes carry the fold's Paxos timestamp, later than the op
//!   rows' by at least that age, so a batch that runs again late rewrites a row that stays
//!   deleted (while the tombstone lives: the table's `gc_grace_seconds`). The age must exceed
//!   any clock skew between the writers (whose clocks timestamp the ops) and the nodes (whose
//!   clocks timestamp the fold).
//!
//! Concurrent folds of one partition contend (one wins, the others read again); ops never do.

use std::collections::HashMap;
use std::time::Duration;

use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlError, Keyspace, Lwt, logged_batch, lwt};
use crate::clock;
use crate::store::StoreError;

/// The most op rows one fold moves (one conditional batch); a fold with more pending goes on.
pub const FOLD_BATCH: usize = 100;

/// How many times a fold is tried against concurrent folds of the same partition.
const FOLD_ATTEMPTS: u32 = 8;

/// Where one tally lives: its table (`<key> bigint, op text, delta bigint` with `(<key>, op)`
/// as primary key, the base a static `bigint` and `folds bigint static`, how many folds ran),
/// its key column and its base column.
#[derive(Debug, Clone, Copy)]
pub struct TallyColumn {
    /// What is counted, for logs and errors (`"tweet count of author"`).
    pub what: &'static str,
    pub table: &'static str,
    pub key: &'static str,
    pub count: &'static str,
}

/// The count of one key as read: the base and the ops not folded yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tallied {
    /// Base plus every delta.
    pub count: i64,
    /// How many op rows are not folded yet.
    pub pending: usize,
}

/// What one [`Tally::fold`] of a key did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    /// Ops moved into the base.
    pub folded: usize,
    /// Ops left pending (younger than the fold's age, or beyond what it took).
    pub left: usize,
}

/// What a fold read of one key.
#[derive(Debug, Default)]
struct Ripe {
    base: i64,
    /// How many folds ran (`None` before the first).
    folds: Option<i64>,
    /// The ops old enough to fold: (op, delta).
    ripe: Vec<(String, i64)>,
    /// How many ops are younger.
    young: usize,
}

/// One tally table in one keyspace (see the [module docs](self)).
pub struct Tally {
    ks: Keyspace,
    what: &'static str,
    insert: PreparedStatement,
    /// Every row of the partitions `<key> IN ?`: base, op, delta.
    read_many: PreparedStatement,
    /// One partition's rows with each delta's write time, for a fold.
    read_one: PreparedStatement,
    set_base: PreparedStatement,
    delete_op: PreparedStatement,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("keyspace", &self.ks.name())
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl Tally {
    /// Prepares the statements of `column` in `ks`.
    pub async fn new(ks: &Keyspace, column: TallyColumn) -> Result<Self, CqlError> {
        let TallyColumn {
            what,
            table,
            key,
            count,
        } = column;
        Ok(Self {
            insert: ks
                .prepare(&format!(
                    "INSERT INTO {{ks}}.{table} ({key}, op, delta) VALUES (?, ?, ?) \
                     USING TIMESTAMP ?"
                ))
                .await?,
            read_many: ks
                .prepare(&format!(
                    "SELECT {key}, {count}, delta FROM {{ks}}.{table} WHERE {key} IN ?"
                ))
                .await?,
            read_one: ks
                .prepare(&format!(
                    "SELECT {count}, folds, op, delta, WRITETIME(delta) FROM {{ks}}.{table} \
                     WHERE {key} = ?"
                ))
                .await?,
            set_base: ks
                .prepare(&format!(
                    "UPDATE {{ks}}.{table} SET {count} = ?, folds = ? WHERE {key} = ? \
                     IF folds = ?"
                ))
                .await?,
            delete_op: ks
                .prepare(&format!(
                    "DELETE FROM {{ks}}.{table} WHERE {key} = ? AND op = ?"
                ))
                .await?,
            ks: ks.clone(),
            what,
        })
    }

    /// The insert of one op row, for the logged batch of the change it counts; its values are
    /// [`Tally::op_row`].
    pub fn insert(&self) -> &PreparedStatement {
        &self.insert
    }

    /// The values of [`Tally::insert`]: `op` moves the count of `key` by `delta`, decided at
    /// `at` (Unix ms), the row's write time, the same however often the op is written.
    pub fn op_row(key: i64, op: String, delta: i64, at: i64) -> (i64, String, i64, i64) {
        (key, op, delta, at.saturating_mul(1000))
    }

    /// The counts of `keys` (at most one `IN` list's worth), by key; a key nothing counted yet
    /// is absent.
    pub async fn read(&self, keys: &[i64]) -> Result<HashMap<i64, Tallied>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.read_many, (keys,))
            .await?
            .into_rows_result()?;
        let mut counts: HashMap<i64, Tallied> = HashMap::new();
        let mut based = Vec::new();
        for row in rows.rows::<(i64, Option<i64>, Option<i64>)>()? {
            let (key, base, delta) = row?;
            let tallied = counts.entry(key).or_default();
            // The static base comes with every row of its partition: add it once.
            if !based.contains(&key) {
                based.push(key);
                tallied.count += base.unwrap_or(0);
            }
            if let Some(delta) = delta {
                tallied.count += delta;
                tallied.pending += 1;
            }
        }
        Ok(counts)
    }

    /// Moves the ops of `key` older than `age` into its base, [`FOLD_BATCH`] at a time, until
    /// none is left that old (see the [module docs](self)).
    pub async fn fold(&self, key: i64, age: Duration) -> Result<Folded, StoreError> {
        let mut done = Folded::default();
        let mut attempts = 0;
        loop {
            let Ripe {
                base,
                folds,
                ripe,
                young,
            } = self.ripe_ops(key, age).await?;
            done.left = young + ripe.len().saturating_sub(FOLD_BATCH);
            if ripe.is_empty() {
                return Ok(done);
            }
            let take = &ripe[..ripe.len().min(FOLD_BATCH)];
            let sum: i64 = take.iter().map(|(_, delta)| delta).sum();
            let batch = logged_batch(
                std::iter::once(&self.set_base)
                    .chain(std::iter::repeat_n(&self.delete_op, take.len())),
            );
            let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> =
                vec![Box::new((base + sum, folds.unwrap_or(0) + 1, key, folds))];
            for (op, _) in take {
                values.push(Box::new((key, op.clone())));
            }
            match lwt(self.ks.session().batch(&batch, values).await)? {
                Lwt::Applied => {
                    done.folded += take.len();
                    if ripe.len() <= FOLD_BATCH {
                        return Ok(done);
                    }
                }
                // Another fold moved the base first, or the outcome is unknown: either way the
                // batch landed whole or not at all, and a read again tells which.
                Lwt::NotApplied(_) | Lwt::Unknown(_) => {
                    attempts += 1;
                    if attempts >= FOLD_ATTEMPTS {
                        tracing::warn!(key, what = self.what, "fold lost to concurrent folds");
                        return Ok(done);
                    }
                }
            }
        }
    }

    /// What a fold of `key` reads: its base and fold counter, its ops older than `age`.
    async fn ripe_ops(&self, key: i64, age: Duration) -> Result<Ripe, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.read_one, (key,))
            .await?
            .into_rows_result()?;
        let age_us = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let ripe_before = clock::now_millis()
            .saturating_mul(1000)
            .saturating_sub(age_us);
        let mut read = Ripe::default();
        type Row = (
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        for row in rows.rows::<Row>()? {
            let (base, folds, op, delta, written) = row?;
            (read.base, read.folds) = (base.unwrap_or(0), folds);
            let (Some(op), Some(delta)) = (op, delta) else {
                continue;
            };
            if written.is_some_and(|written| written < ripe_before) {
                read.ripe.push((op, delta));
            } else {
                read.young += 1;
            }
        }
        Ok(read)
    }
}
