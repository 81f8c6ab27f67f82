//! The CQL backend's foundation, shared by every service's CQL store: configuration, the session,
//! keyspace naming, statement preparation and schema migrations. Runs unchanged on ScyllaDB
//! (production) and Apache Cassandra 5 (the test cluster `scripts/cassandra.sh` starts).
//!
//! # Layout
//!
//! - [`config`]: [`CqlConfig`], [`Replication`] (`simple:1`, `dc1:3,dc2:3`), consistency levels
//!   and [`keyspace`] naming (`<prefix>_<service>`).
//! - [`session`]: [`connect`] (token-aware, local-datacenter first, configured consistency,
//!   bounded, and set up to ride out a dead node) and [`Keyspace`], which prepares a service's
//!   statements once at startup and marks the idempotent ones; [`logged_batch`] (and
//!   [`unlogged_batch`]), the one way to build a batch of them.
//! - [`retry`]: [`StoreRetryPolicy`], what the driver does when one attempt fails.
//! - [`lwt`](mod@lwt): what a lightweight transaction did ([`Lwt`]: applied, not applied,
//!   unknown), read by [`lwt()`] from its execution; and [`Retries`], the one [`backoff`] of
//!   every write that loses to concurrent writers of its row.
//! - [`outbox`]: [`CqlOutbox`], the sharded transactional outbox with a lease per shard, so any
//!   number of replicas relay a service's events; read forward from a cursor, marked instead of
//!   deleted and expired by TTL, so no read meets a tombstone. [`outbox_shard`] picks a shard.
//! - [`ledger`]: [`CountLedger`], a count that moves once per op however often the op is
//!   tried (the tweets and followers services keep their counts in them).
//! - [`tally`]: [`Tally`], a count whose ops are plain rows written in the batch of the change
//!   they count and folded into its base in the background: no lightweight transaction on the
//!   write path (the tweets service's author counts).
//! - [`purges`]: [`DeletedAccounts`], the accounts the users service deleted and those a
//!   service still has to purge, in hourly partitions read from a cursor (the tweets and
//!   followers services keep one each).
//! - `testing` (with the `testsuite` feature): one migrated keyspace set per test process, for the CQL conformance suites.
//! - [`migrate`](mod@migrate): the numbered schema files under `cql/<service>/`, [`migrate()`] (what
//!   `twtr migrate` runs) and [`ensure_current`] (what a service checks before serving).
//! - [`CqlError`], this module's one error type, and the conversions that let store code use `?`
//!   on driver errors to get a backend-neutral [`StoreError`].
//!
//! # Statements name their keyspace with `{ks}`
//!
//! Every statement, in code and in the schema files alike, names its tables `{ks}.<table>`;
//! [`Keyspace::prepare`] and the migrator substitute the service's keyspace. Qualified names,
//! rather than `USE <keyspace>`, because one session serves every service in the all-in-one
//! process and `USE` would change it for all of them; and because a statement naming its
//! keyspace is routed token-aware without further setup.

pub mod config;
pub mod ledger;
pub mod lwt;
pub mod migrate;
pub mod outbox;
pub mod purges;
pub mod retry;
pub mod session;
pub mod tally;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

pub use config::{
    ConsistencySettings, CqlConfig, DEFAULT_KEYSPACE_PREFIX, DEFAULT_REQUEST_TIMEOUT, Replication,
    keyspace, parse_consistency, parse_serial_consistency,
};
pub use ledger::{CountColumn, CountLedger};
pub use lwt::{Contended, Lwt, LwtRow, OutcomeUnknown, Retries, backoff, lwt};
pub use migrate::{Migration, MigrationReport, Schema, ensure_current, migrate, schema_change};
pub use outbox::{CqlOutbox, OutboxRead, OutboxRow, ReadCounts, TracedRead, read_counts};
pub use purges::{DeletedAccountTables, DeletedAccounts};
pub use retry::StoreRetryPolicy;
pub use session::{Keyspace, connect, is_idempotent, logged_batch, qualify, unlogged_batch};
pub use tally::{Folded, Tallied, Tally, TallyColumn};

use scylla::deserialize::DeserializationError;
use scylla::errors::{
    ExecutionError, NewSessionError, PagerExecutionError, PrepareError, SchemaAgreementError,
    TracingError,
};
use scylla::response::query_result::{
    FirstRowError, IntoRowsResultError, MaybeFirstRowError, RowsError, SingleRowError,
};

use crate::store::StoreError;

/// Outbox shards per keyspace (the `shard` column of `outbox_by_time`, `outbox_cursors`,
/// `outbox_leases` and the legacy `outbox`): an event goes to shard [`outbox_shard`] of its
/// aggregate, so one aggregate's events stay in order in one shard, and up to this many relay
/// replicas can drain a service's outbox in parallel (a relay holds a lease per shard). Changing
/// it strands events in shards no relay reads any more: drain the outbox first.
pub const OUTBOX_SHARDS: i32 = 16;

/// The outbox shard of an aggregate: a splitmix64 mix of its ID, modulo [`OUTBOX_SHARDS`].
///
/// Not `aggregate_id % OUTBOX_SHARDS`, which is what the first outbox did: aggregate IDs are
/// Snowflake IDs whose low 12 bits are a per-millisecond sequence, zero for nearly every ID a
/// quiet process mints, so 87% of events landed in shard 0 (one relay doing the work of all, and
/// one partition taking all the writes). The mix makes every bit of the ID count.
pub fn outbox_shard(aggregate_id: u64) -> i32 {
    // The splitmix64 finalizer (Steele, Lea and Flood): a bijection on u64 whose every output
    // bit depends on every input bit.
    let mut z = aggregate_id;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // OUTBOX_SHARDS is positive and small, so the remainder fits an i32.
    (z % OUTBOX_SHARDS as u64) as i32
}

/// What can go wrong talking to the cluster or managing its schema.
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    /// A setting that cannot work (replication string, keyspace name, contact points).
    #[error("{0}")]
    InvalidConfig(String),
    // Driver errors are boxed: they are large, and every `Result` here would carry their size.
    #[error("cannot connect to the CQL cluster")]
    Connect(#[source] Box<NewSessionError>),
    #[error("CQL statement failed")]
    Execution(#[source] Box<ExecutionError>),
    #[error("CQL query failed")]
    Pager(#[source] Box<PagerExecutionError>),
    #[error("cannot prepare CQL statement")]
    Prepare(#[source] Box<PrepareError>),
    #[error("CQL nodes did not agree on the schema")]
    SchemaAgreement(#[source] Box<SchemaAgreementError>),
    #[error("cannot read a CQL trace")]
    Tracing(#[source] Box<TracingError>),
    /// A result did not have the shape the statement promises.
    #[error("unexpected CQL result: {0}")]
    UnexpectedResult(String),
    /// A schema file is not well-formed (an unterminated string or comment).
    #[error("migration {file} is malformed: {reason}")]
    MalformedMigration { file: String, reason: String },
    /// A file that was applied has since been edited. Applied files are history: change the
    /// schema with a new file instead.
    #[error(
        "migration {file} was changed after it was applied to keyspace {keyspace} \
         (applied checksum {applied}, this build has {built}): \
         restore the file and put the change in a new migration"
    )]
    ChecksumMismatch {
        keyspace: String,
        file: String,
        applied: String,
        built: String,
    },
    /// The keyspace lacks migrations this build relies on.
    #[error(
        "keyspace {keyspace} is at schema version {current}, this build needs {needed}: run `twtr migrate`"
    )]
    SchemaBehind {
        keyspace: String,
        current: u32,
        needed: u32,
    },
    /// Another migrator held the keyspace's schema lease for the whole wait.
    #[error(
        "timed out after {waited_secs}s waiting for the schema lease of keyspace {keyspace} \
         (held by {holder}); if no migration is running it expires by itself within a minute"
    )]
    LeaseTimeout {
        keyspace: String,
        holder: String,
        waited_secs: u64,
    },
    /// The schema lease expired mid-run and someone else may be migrating.
    #[error(
        "lost the schema lease of keyspace {keyspace} while migrating; run `twtr migrate` again"
    )]
    LeaseLost { keyspace: String },
}

macro_rules! boxed_driver_error {
    ($($variant:ident($err:ty)),+ $(,)?) => {
        $(
            impl From<$err> for CqlError {
                fn from(err: $err) -> Self {
                    Self::$variant(Box::new(err))
                }
            }
        )+
    };
}
boxed_driver_error!(
    Connect(NewSessionError),
    Execution(ExecutionError),
    Pager(PagerExecutionError),
    Prepare(PrepareError),
    SchemaAgreement(SchemaAgreementError),
    Tracing(TracingError),
);

macro_rules! unexpected_result {
    ($($err:ty),+) => {
        $(
            impl From<$err> for CqlError {
                fn from(err: $err) -> Self {
                    Self::UnexpectedResult(err.to_string())
                }
            }
        )+
    };
}
unexpected_result!(
    IntoRowsResultError,
    RowsError,
    FirstRowError,
    MaybeFirstRowError,
    SingleRowError,
    DeserializationError
);

impl From<CqlError> for StoreError {
    fn from(err: CqlError) -> Self {
        match err {
            CqlError::UnexpectedResult(why) => Self::Corrupt(why),
            other => Self::backend(other),
        }
    }
}

/// Driver failures are retryable backend failures; malformed results are corrupt records (the
/// stored row does not have the shape the statement expects).
macro_rules! store_error_from {
    (backend: $($backend:ty),+; corrupt: $($corrupt:ty),+) => {
        $(
            impl From<$backend> for StoreError {
                fn from(err: $backend) -> Self {
                    Self::backend(err)
                }
            }
        )+
        $(
            impl From<$corrupt> for StoreError {
                fn from(err: $corrupt) -> Self {
                    Self::Corrupt(err.to_string())
                }
            }
        )+
    };
}
store_error_from!(
    backend: ExecutionError, PagerExecutionError, PrepareError, SchemaAgreementError;
    corrupt: IntoRowsResultError, RowsError, FirstRowError, MaybeFirstRowError, SingleRowError,
        DeserializationError
);
