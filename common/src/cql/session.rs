//! The driver session and the per-service handle stores build on: [`connect`] opens one session
//! per process; [`Keyspace`] binds it to one service's keyspace and prepares that service's
//! statements (`{ks}` placeholders substituted, read or write consistency chosen, idempotence
//! marked).
//!
//! # When a node dies
//!
//! Production runs on a cluster with three replicas per data center, reads and writes at
//! `LOCAL_QUORUM`, lightweight transactions at `LOCAL_SERIAL`: any two replicas answer for the
//! third. The session is set up so that a dead replica costs no failed request either:
//!
//! - **Load balancing**: token-aware, local data center first. Each request goes straight to a
//!   replica of its partition (no extra hop), replicas shuffled so the load spreads. A node whose
//!   connections are down is skipped when a request's plan is walked, at no cost: a node killed
//!   outright closes its sockets, so the driver knows at once. No failover to another data
//!   center: `LOCAL_QUORUM` coordinated there would be a quorum of *that* data center. No latency
//!   awareness: the driver documents it as apt to pile load on a few nodes, and a slow node is
//!   what speculative execution is for.
//! - **Retries** ([`StoreRetryPolicy`]): a statement cut off with
//!   its node is retried on the next one when it is idempotent, and so is a logged batch whose
//!   batchlog write timed out (the coordinator still thinks the dead node is alive, for 10 to 20
//!   seconds); a node refusing the request as it shuts down sends any statement to the next.
//! - **Speculative execution**, for reads: a `SELECT` that has not answered after
//!   [`SPECULATIVE_DELAY`] is sent to a second node too, and the first answer wins; a node that
//!   hangs (a long GC pause, a stalled disk, a half-open connection) costs that delay, not a
//!   timeout. Not for writes, idempotent or not: the copy sent to the second node can reach it
//!   after the caller, answered by the first node, has gone on to write the same cell again, and
//!   with server-side timestamps the late copy would then win. (A retry after a failure does not
//!   have that problem: the attempt that failed is over before the next begins.)
//! - **Timeouts**: every request, its retries and speculative attempts included, is bounded by
//!   [`CqlConfig::request_timeout`]; keepalives find a connection that stopped answering within
//!   [`KEEPALIVE`] twice over even when the kernel does not.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::{DefaultPolicy, LoadBalancingPolicy};
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::retry::StoreRetryPolicy;
use super::{ConsistencySettings, CqlConfig, CqlError};

/// The placeholder statements use for their keyspace (see the [module docs](super)).
pub const KEYSPACE_PLACEHOLDER: &str = "{ks}";

/// How long an idempotent request waits for its node before it is also sent to another. Far above
/// a healthy node's latency (a millisecond or two on ScyllaDB, tens of milliseconds on the
/// CPU-starved development Cassandra), so it fires for a node that stalls, not for ordinary
/// jitter, and at most doubles the load of the requests that were slow anyway.
pub const SPECULATIVE_DELAY: Duration = Duration::from_millis(300);

/// How often an idle connection is probed (a CQL OPTIONS request). Two unanswered probes in a row
/// close it, so a node that vanished without closing its sockets (a network partition, a frozen
/// VM) is noticed within seconds even with no request in flight.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long a schema change waits, in one go, for every node to report the same schema version.
/// Shorter than the driver's default (60 s) so a migration can renew its lease between waits and
/// go on waiting (see [`super::migrate`]): on Cassandra a node that missed a change pulls it only
/// after a 60-second delay, so agreement can take longer than any single wait.
pub const SCHEMA_AGREEMENT_ROUND: Duration = Duration::from_secs(20);

/// Opens a session to the cluster, set up to ride out a dead node (see the [module
/// docs](self#when-a-node-dies)). The default execution profile carries the configured write and
/// serial consistency; [`Keyspace::prepare`] sets each read's.
pub async fn connect(config: &CqlConfig) -> Result<Arc<Session>, CqlError> {
    if config.nodes.is_empty() {
        return Err(CqlError::InvalidConfig(
            "no CQL contact points configured".to_owned(),
        ));
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.writes)
        .serial_consistency(Some(config.consistency.serial))
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(load_balancing(config))
        .retry_policy(Arc::new(StoreRetryPolicy))
        .speculative_execution_policy(None)
        .build();
    let session = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .keepalive_interval(KEEPALIVE)
        .keepalive_timeout(KEEPALIVE * 2)
        .schema_agreement_timeout(SCHEMA_AGREEMENT_ROUND)
        .build()
        .await?;
    tracing::info!(nodes = ?config.nodes, local_dc = ?config.local_dc, "connected to cql cluster");
    Ok(Arc::new(session))
}

/// Token-aware, replicas shuffled, `local_dc` first and only (see the [module
/// docs](self#when-a-node-dies)).
fn load_balancing(config: &CqlConfig) -> Arc<dyn LoadBalancingPolicy> {
    let mut policy = DefaultPolicy::builder()
        .token_aware(true)
        .enable_shuffling_replicas(true)
        .permit_dc_failover(false);
    if let Some(dc) = &config.local_dc {
        policy = policy.prefer_datacenter(dc.clone());
    }
    policy.build()
}

/// `cql` with every `{ks}` replaced by `keyspace`.
pub fn qualify(cql: &str, keyspace: &str) -> String {
    cql.replace(KEYSPACE_PLACEHOLDER, keyspace)
}

/// One service's keyspace on a shared session: what a CQL store holds on to. Stores prepare all
/// their statements through it once, at startup, so a typo in a statement fails the start rather
/// than the first request.
#[derive(Clone)]
pub struct Keyspace {
    session: Arc<Session>,
    name: String,
    consistency: ConsistencySettings,
    /// The session's profile plus speculative execution: what reads run with.
    reads: ExecutionProfileHandle,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Keyspace {
    /// The keyspace `service` owns under `config`, on `session`.
    pub fn new(session: Arc<Session>, config: &CqlConfig, service: &str) -> Result<Self, CqlError> {
        let reads = session
            .get_default_execution_profile_handle()
            .pointee_to_builder()
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 1,
                retry_interval: SPECULATIVE_DELAY,
            })))
            .build()
            .into_handle();
        Ok(Self {
            session,
            name: config.keyspace(service)?,
            consistency: config.consistency,
            reads,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// A round trip to a node of the cluster (its `system.local` row): whether the store
    /// answers at all. It does not prove a quorum of this keyspace's replicas is up.
    pub async fn ping(&self) -> Result<(), CqlError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }

    /// Prepares `cql` (tables written `{ks}.<table>`) in this keyspace. A `SELECT` runs at the
    /// configured read consistency, with speculative execution, anything else at the write
    /// consistency; lightweight transactions use the configured serial consistency. The
    /// statement is marked idempotent when it is (see [`is_idempotent`]), which lets the driver
    /// retry it on another node after a failure that may have applied it.
    pub async fn prepare(&self, cql: &str) -> Result<PreparedStatement, CqlError> {
        let mut statement = self.session.prepare(qualify(cql, &self.name)).await?;
        let is_read = cql
            .trim_start()
            .get(..6)
            .is_some_and(|verb| verb.eq_ignore_ascii_case("select"));
        statement.set_consistency(if is_read {
            self.consistency.reads
        } else {
            self.consistency.writes
        });
        if is_read {
            statement.set_execution_profile_handle(Some(self.reads.clone()));
        }
        statement.set_serial_consistency(Some(self.consistency.serial));
        statement.set_is_idempotent(is_idempotent(cql));
        Ok(statement)
    }
}

/// Whether running `cql` twice leaves the same state as running it once, so a driver may send it
/// again when it cannot tell whether the first attempt was applied.
///
/// True for reads and for plain writes of given values (`INSERT`, `UPDATE ... SET c = ?`,
/// `DELETE`). False for a lightweight transaction (any `IF`: a second attempt can see the first
/// and report "not applied"), for anything that computes a value on the server (`now()`,
/// `uuid()`) and for arithmetic on a column (`c = c + ?`: a counter or a list append). Only the
/// text is looked at, outside string literals, and when in doubt the answer is false, which
/// costs a retry, never a double write.
pub fn is_idempotent(cql: &str) -> bool {
    // The statement with its string literals blanked out ('it''s' included).
    let mut code = String::with_capacity(cql.len());
    let mut in_literal = false;
    for c in cql.chars() {
        if c == '\'' {
            in_literal = !in_literal;
            code.push(' ');
        } else if !in_literal {
            code.push(c.to_ascii_uppercase());
        }
    }
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    if words.first() == Some(&"SELECT") {
        return true;
    }
    let computes = [
        "NOW",
        "UUID",
        "TIMEUUID",
        "CURRENTTIMEUUID",
        "CURRENTTIMESTAMP",
    ]
    .iter()
    .any(|function| code.contains(&format!("{function}(")));
    !words.contains(&"IF") && !computes && !code.contains(['+', '-'])
}

/// A logged batch of `statements`: the one way stores build a batch whose rows span partitions
/// (all of them land, or none does). It runs at the session profile's consistencies (a batch
/// ignores its statements'; every batch holds writes, which is what the profile carries), and
/// it is marked idempotent exactly when every statement is ([`Keyspace::prepare`] marks them),
/// so the driver sends it again after a lost node only when that is safe.
pub fn logged_batch<'a>(statements: impl IntoIterator<Item = &'a PreparedStatement>) -> Batch {
    batch(BatchType::Logged, statements)
}

/// An unlogged batch of `statements`, all in one partition (applied atomically without the batch
/// log), otherwise as [`logged_batch`].
pub fn unlogged_batch<'a>(statements: impl IntoIterator<Item = &'a PreparedStatement>) -> Batch {
    batch(BatchType::Unlogged, statements)
}

fn batch<'a>(
    kind: BatchType,
    statements: impl IntoIterator<Item = &'a PreparedStatement>,
) -> Batch {
    let mut batch = Batch::new(kind);
    for statement in statements {
        batch.append_statement(statement.clone());
    }
    mark_idempotence(&mut batch);
    batch
}

/// Marks `batch` idempotent exactly when every statement in it is (as [`Keyspace::prepare`]
/// marked them): a batch carries an idempotence of its own, which the driver does not derive from
/// its statements.
fn mark_idempotence(batch: &mut Batch) {
    let idempotent = batch.statements.iter().all(|statement| match statement {
        BatchStatement::PreparedStatement(prepared) => prepared.get_is_idempotent(),
        BatchStatement::Query(query) => query.get_is_idempotent(),
        // A kind of statement this code does not know: assume the worst.
        _ => false,
    });
    batch.set_is_idempotent(idempotent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_plain_writes_are_idempotent() {
        for cql in [
            "SELECT a FROM {ks}.t WHERE k = ?",
            "select now() from system.local",
            "INSERT INTO {ks}.t (k, v) VALUES (?, ?) USING TTL 3600",
            "UPDATE {ks}.t SET v = ?, w = ? WHERE k = ?",
            "DELETE FROM {ks}.t WHERE k = ? AND c = ?",
            "INSERT INTO {ks}.t (k, v) VALUES (?, 'if + - now()')",
            "INSERT INTO {ks}.t (k, v) VALUES (?, 'it''s IF')",
        ] {
            assert!(is_idempotent(cql), "{cql}");
        }
    }

    #[test]
    fn lightweight_transactions_server_side_values_and_arithmetic_are_not() {
        for cql in [
            "INSERT INTO {ks}.t (k, v) VALUES (?, ?) IF NOT EXISTS",
            "UPDATE {ks}.t SET v = ? WHERE k = ? IF v = ?",
            "update {ks}.t set v = ? where k = ? if exists",
            "DELETE FROM {ks}.t WHERE k = ? IF EXISTS",
            "INSERT INTO {ks}.t (k, v) VALUES (?, now())",
            "INSERT INTO {ks}.t (k, v) VALUES (?, uuid())",
            "UPDATE {ks}.t SET n = n + ? WHERE k = ?",
            "UPDATE {ks}.t SET l = ? + l WHERE k = ?",
            "UPDATE {ks}.t SET n = n - 1 WHERE k = ?",
        ] {
            assert!(!is_idempotent(cql), "{cql}");
        }
    }

    #[test]
    fn a_batch_is_idempotent_when_all_its_statements_are() {
        use scylla::statement::unprepared::Statement;
        let statement = |idempotent| {
            let mut statement = Statement::new("INSERT INTO t (k) VALUES (1)");
            statement.set_is_idempotent(idempotent);
            BatchStatement::Query(statement)
        };
        let mut batch = Batch::default();
        batch.statements = vec![statement(true), statement(true)];
        mark_idempotence(&mut batch);
        assert!(batch.get_is_idempotent());
        batch.statements.push(statement(false));
        mark_idempotence(&mut batch);
        assert!(!batch.get_is_idempotent());
    }

    #[test]
    fn qualifies_every_placeholder() {
        assert_eq!(
            qualify(
                "SELECT a FROM {ks}.t WHERE k IN (SELECT 1 FROM {ks}.u)",
                "twtr_users"
            ),
            "SELECT a FROM twtr_users.t WHERE k IN (SELECT 1 FROM twtr_users.u)"
        );
        assert_eq!(
            qualify("SELECT now() FROM system.local", "x"),
            "SELECT now() FROM system.local"
        );
    }
}
