//! Schema migrations: the numbered files under `cql/<service>/`, compiled into the binary, and
//! the two operations on them. [`migrate`] (what `twtr migrate` and the Helm hook Job run) brings
//! a service's keyspace up to date; [`ensure_current`] (what a service runs at startup) refuses
//! to serve from a keyspace that is missing or behind.
//!
//! # How a run goes
//!
//! 1. Create the keyspace with the configured replication, and the two bookkeeping tables
//!    `schema_migrations` (one row per applied file: version, name, SHA-256 checksum, time) and
//!    `schema_lock`, unless they exist. Existence is checked first so a routine run issues no DDL.
//! 2. Take the keyspace's lease: a lightweight transaction on the `schema_lock` row with a TTL,
//!    retried with backoff, so concurrent runs (several pods starting at once) take turns and a
//!    crashed run's lease expires by itself.
//! 3. Refuse if an applied file has changed since (its checksum differs); apply the files not yet
//!    recorded, in version order, statement by statement; wait for schema agreement; record
//!    each file; renew the lease between files.
//! 4. Release the lease.
//!
//! Every statement in a file is idempotent (`IF NOT EXISTS`), so a run that dies between a
//! statement and its file's record is finished by the next run.
//!
//! # Schema agreement
//!
//! After each change the run waits until every reachable node reports the same schema version,
//! up to [`SCHEMA_AGREEMENT_WAIT`] in rounds of [`SCHEMA_AGREEMENT_ROUND`] (renewing the lease
//! between rounds). Usually that takes well under a second. On a Cassandra cluster a node that
//! missed a change (busy or just started when it was pushed) pulls it only after a 60-second
//! delay, so a wait bounded by the driver's one minute failed runs on freshly started clusters.
//! And Cassandra 5.0 never retries a pull whose answer was lost: a node that keeps an older
//! version past the wait needs `nodetool resetlocalschema`, which the final error says.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::errors::{ExecutionError, SchemaAgreementError};
use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};
use scylla::statement::unprepared::Statement;
use scylla::value::{CqlTimestamp, CqlValue};
use sha2::{Digest as _, Sha256};

use super::lwt::{Lwt, lwt};
use super::session::{SCHEMA_AGREEMENT_ROUND, qualify};
use super::{CqlConfig, CqlError};

/// One schema file. Applied files are history: never edit one, add the next version instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Position in apply order, from the file name's number (`001_init.cql` is 1).
    pub version: u32,
    /// The file name under `cql/<service>/`.
    pub name: &'static str,
    /// `;`-separated statements naming tables `{ks}.<table>`.
    pub cql: &'static str,
}

impl Migration {
    /// SHA-256 of the file, in hex: what `schema_migrations` records, to notice later edits.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.cql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The file's statements, without comments, each still naming tables `{ks}.<table>`.
    pub fn statements(&self) -> Result<Vec<String>, CqlError> {
        split_statements(self.cql).map_err(|reason| CqlError::MalformedMigration {
            file: self.name.to_owned(),
            reason,
        })
    }
}

/// What a [`migrate`] run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub keyspace: String,
    /// Versions this run applied, in order; empty when the keyspace was already current.
    pub applied: Vec<u32>,
    /// The keyspace's schema version afterwards.
    pub version: u32,
}

/// A service's keyspace schema: the service it belongs to (its keyspace is
/// `<prefix>_<service>`) and its numbered files, in version order. Each service crate exports
/// its own (built with [`cql_schema!`](crate::cql_schema)); the binary hands them to the
/// migrator.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub service: &'static str,
    /// The folder the files come from (`cql/<service>/`), to check that none is left out.
    pub dir: &'static str,
    pub migrations: &'static [Migration],
}

/// A [`Schema`] of the files `cql/<service>/<file>` (relative to the calling crate's
/// directory's parent, the repository root), compiled into the binary:
///
/// ```ignore
/// pub const SCHEMA: Schema = twtr_common::cql_schema!("feeds": 1 => "001_init.cql", 2 => "002_retweets.cql");
/// ```
#[macro_export]
macro_rules! cql_schema {
    ($service:literal: $($version:literal => $file:literal),+ $(,)?) => {
        $crate::cql::Schema {
            service: $service,
            dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../cql/", $service),
            migrations: &[$($crate::cql::Migration {
                version: $version,
                name: $file,
                cql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../cql/", $service, "/", $file)),
            }),+],
        }
    };
}

impl Schema {
    /// What is wrong with the schema's files, if anything: a file in its folder that is not
    /// registered (it would never run); versions out of order or not matching file names; a
    /// statement that is not idempotent, names a keyspace, or uses what only one of Cassandra
    /// and ScyllaDB has. Each service's tests assert this is empty.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let service = self.service;
        match std::fs::read_dir(self.dir) {
            Ok(entries) => {
                let mut on_disk: Vec<String> = entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| name.ends_with(".cql"))
                    .collect();
                on_disk.sort();
                let registered: Vec<&str> = self.migrations.iter().map(|m| m.name).collect();
                if on_disk != registered {
                    problems.push(format!(
                        "cql/{service}/ holds {on_disk:?}, the schema registers {registered:?}"
                    ));
                }
            }
            Err(err) => problems.push(format!("cannot read {}: {err}", self.dir)),
        }
        if self.migrations.is_empty() {
            problems.push(format!("{service} has no migrations"));
        }
        for (i, file) in self.migrations.iter().enumerate() {
            let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if file.version != expected || !file.name.starts_with(&format!("{expected:03}_")) {
                problems.push(format!(
                    "{service}/{} should be version {expected}, named {expected:03}_<what>.cql",
                    file.name
                ));
            }
            let statements = match file.statements() {
                Ok(statements) => statements,
                Err(err) => {
                    problems.push(err.to_string());
                    continue;
                }
            };
            if statements.is_empty() {
                problems.push(format!("{service}/{} is empty", file.name));
            }
            for statement in statements {
                problems.extend(statement_problems(service, file.name, &statement));
            }
        }
        problems
    }
}

/// What breaks the rules in one statement of `service/file` (see [`Schema::problems`]).
fn statement_problems(service: &str, file: &str, statement: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let upper = statement.to_ascii_uppercase();
    let at = format!("{service}/{file}: {statement}");
    if !(upper.contains("IF NOT EXISTS") || upper.trim_start().starts_with("DROP TABLE IF EXISTS"))
    {
        problems.push(format!("not idempotent: {at}"));
    }
    if !statement.contains("{ks}.") || upper.contains("KEYSPACE") {
        problems.push(format!(
            "tables are named {{ks}}.<table>, keyspaces not at all: {at}"
        ));
    }
    let words: Vec<&str> = upper
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    let text = format!(" {} ", words.join(" "));
    for banned in [
        "ALLOW FILTERING",
        "MATERIALIZED VIEW",
        "INDEX",
        "SAI",
        "COUNTER",
        "VECTOR",
    ] {
        if text.contains(&format!(" {banned} ")) {
            problems.push(format!("{banned} is not portable or not wanted: {at}"));
        }
    }
    problems
}

/// Brings `schema`'s keyspace up to date (see the [module docs](self)). Safe to run again, and
/// concurrently with itself: each file is applied once.
pub async fn migrate(
    session: &Session,
    config: &CqlConfig,
    schema: &Schema,
) -> Result<MigrationReport, CqlError> {
    apply(session, config, schema.service, schema.migrations).await
}

/// Errors unless `schema`'s keyspace holds every migration this build has, unchanged. Services
/// call it before serving, so a forgotten `twtr migrate` fails the start with the fix in the
/// message instead of failing requests later. A keyspace ahead of this build is fine (migrations
/// only add, so an older build keeps working during a rolling upgrade).
pub async fn ensure_current(
    session: &Session,
    config: &CqlConfig,
    schema: &Schema,
) -> Result<(), CqlError> {
    check_current(session, config, schema.service, schema.migrations).await
}

/// The TTL of the schema lease: how long a crashed migrator blocks others.
const LEASE_TTL_SECS: u32 = 60;
/// How long to wait for another migrator: longer than the TTL, so a crashed holder's lease has
/// expired before we give up.
const LEASE_WAIT: Duration = Duration::from_secs(90);
const LEASE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const LEASE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The one row of `schema_lock`.
const LEASE_ID: &str = "migrate";

pub(crate) async fn apply(
    session: &Session,
    config: &CqlConfig,
    service: &str,
    files: &[Migration],
) -> Result<MigrationReport, CqlError> {
    let keyspace = config.keyspace(service)?;
    // Parse every file before touching the cluster: a malformed one fails the run cleanly.
    let planned = files
        .iter()
        .map(|file| Ok((file, file.statements()?)))
        .collect::<Result<Vec<_>, CqlError>>()?;
    ensure_keyspace(session, config, &keyspace).await?;
    ensure_bookkeeping(session, &keyspace).await?;
    let owner = lease_owner();
    acquire_lease(session, &keyspace, &owner).await?;
    let outcome = apply_leased(session, service, &keyspace, &owner, &planned).await;
    release_lease(session, &keyspace, &owner).await;
    outcome
}

async fn apply_leased(
    session: &Session,
    service: &str,
    keyspace: &str,
    owner: &str,
    planned: &[(&Migration, Vec<String>)],
) -> Result<MigrationReport, CqlError> {
    let applied = applied_checksums(session, keyspace).await?;
    verify_checksums(
        service,
        keyspace,
        planned.iter().map(|(file, _)| *file),
        &applied,
    )?;
    let mut report = MigrationReport {
        keyspace: keyspace.to_owned(),
        applied: Vec::new(),
        version: applied.keys().copied().max().unwrap_or(0),
    };
    let record = format!(
        "INSERT INTO {keyspace}.schema_migrations (version, name, checksum, applied_at) \
         VALUES (?, ?, ?, ?)"
    );
    for (file, statements) in planned {
        if applied.contains_key(&file.version) {
            continue;
        }
        let started = Instant::now();
        let lease = Some((keyspace, owner));
        for statement in statements {
            change_schema(session, qualify(statement, keyspace), lease).await?;
        }
        let values = (
            version_column(file.version)?,
            file.name,
            file.checksum(),
            CqlTimestamp(crate::clock::now_millis()),
        );
        session.query_unpaged(record.as_str(), values).await?;
        tracing::info!(
            keyspace,
            version = file.version,
            file = file.name,
            statements = statements.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "applied migration"
        );
        report.applied.push(file.version);
        report.version = report.version.max(file.version);
        renew_lease(session, keyspace, owner).await?;
    }
    if report.applied.is_empty() {
        tracing::info!(keyspace, version = report.version, "schema already current");
    }
    Ok(report)
}

pub(crate) async fn check_current(
    session: &Session,
    config: &CqlConfig,
    service: &str,
    files: &[Migration],
) -> Result<(), CqlError> {
    let keyspace = config.keyspace(service)?;
    let needed = files.iter().map(|f| f.version).max().unwrap_or(0);
    let behind = |current| CqlError::SchemaBehind {
        keyspace: keyspace.clone(),
        current,
        needed,
    };
    if stored_replication(session, &keyspace).await?.is_none()
        || !table_names(session, &keyspace)
            .await?
            .contains("schema_migrations")
    {
        return Err(behind(0));
    }
    let applied = applied_checksums(session, &keyspace).await?;
    verify_checksums(service, &keyspace, files.iter(), &applied)?;
    // The version reached without gaps: normally the highest applied, but a missing file in
    // the middle counts as not being there yet.
    let mut versions: Vec<u32> = files.iter().map(|f| f.version).collect();
    versions.sort_unstable();
    let current = versions
        .iter()
        .take_while(|v| applied.contains_key(v))
        .last()
        .copied()
        .unwrap_or(0);
    if current < needed {
        return Err(behind(current));
    }
    Ok(())
}

/// Creates the keyspace unless it exists. An existing keyspace keeps its replication; a
/// difference from the configuration is reported, not "fixed" (that needs a repair too).
async fn ensure_keyspace(
    session: &Session,
    config: &CqlConfig,
    keyspace: &str,
) -> Result<(), CqlError> {
    match stored_replication(session, keyspace).await? {
        Some(stored) => {
            if !config.replication.matches(&stored) {
                tracing::warn!(
                    keyspace,
                    configured = %config.replication,
                    stored = ?stored,
                    "keyspace replication differs from the configured one; leaving it as it is"
                );
            }
        }
        None => {
            let create = format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}{}",
                config.replication.to_cql(),
                keyspace_options(session).await?
            );
            change_schema(session, create, None).await?;
            tracing::info!(keyspace, replication = %config.replication, "created keyspace");
        }
    }
    Ok(())
}

/// Server-specific keyspace options, the one place the schema differs between servers. ScyllaDB
/// puts new keyspaces on tablets by default, and its releases up to 2025.3 refuse lightweight
/// transactions there, which twtr needs (username claims, leases, counts): so on a ScyllaDB
/// that has tablets, keyspaces are created on vnodes. Detected by the column tablets add to
/// ScyllaDB's schema tables; the query is valid on Cassandra too, which returns no rows.
async fn keyspace_options(session: &Session) -> Result<&'static str, CqlError> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = 'system_schema' \
             AND table_name = 'scylla_keyspaces' AND column_name = 'initial_tablets'",
            (),
        )
        .await?
        .into_rows_result()?;
    Ok(if rows.rows_num() > 0 {
        " AND tablets = {'enabled': false}"
    } else {
        ""
    })
}

/// Creates `schema_migrations` and `schema_lock` unless both exist. Unlike the files' tables,
/// these are made before any lease exists (the lease lives in one of them): concurrent first
/// runs may both issue the `IF NOT EXISTS` DDL, which a single node, and ScyllaDB's Raft-managed
/// schema, take in their stride. On a multi-node Cassandra cluster, run the first migration
/// once (the Helm hook Job does) rather than from many processes at once.
async fn ensure_bookkeeping(session: &Session, keyspace: &str) -> Result<(), CqlError> {
    let tables = table_names(session, keyspace).await?;
    if !tables.contains("schema_migrations") {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations \
             (version int PRIMARY KEY, name text, checksum text, applied_at timestamp)"
        );
        change_schema(session, create, None).await?;
    }
    if !tables.contains("schema_lock") {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_lock (id text PRIMARY KEY, owner text)"
        );
        change_schema(session, create, None).await?;
    }
    // Even when another process created them, wait until every node agrees on them.
    await_agreement(session, None).await
}

/// How long a run waits in all for the nodes to agree on one schema change (see the [module
/// docs](self#schema-agreement)): past Cassandra's 60-second pull delay with room to spare.
pub(crate) const SCHEMA_AGREEMENT_WAIT: Duration = Duration::from_secs(240);

/// Runs one DDL statement and waits until every node agrees on its outcome, for up to
/// [`SCHEMA_AGREEMENT_WAIT`]: what a tool creating tables of its own outside the migrations
/// should use instead of `query_unpaged`, whose wait is one [`SCHEMA_AGREEMENT_ROUND`].
pub async fn schema_change(
    session: &Session,
    statement: impl Into<String>,
) -> Result<(), CqlError> {
    change_schema(session, statement.into(), None).await
}

/// [`schema_change`], keeping the lease of `lease` (keyspace and owner) renewed while it waits.
async fn change_schema(
    session: &Session,
    statement: String,
    lease: Option<(&str, &str)>,
) -> Result<(), CqlError> {
    match session.query_unpaged(statement, ()).await {
        Ok(_) => Ok(()),
        // The statement took effect; only the driver's own wait (one round) ran out.
        Err(ExecutionError::SchemaAgreementError(SchemaAgreementError::Timeout(_))) => {
            await_agreement(session, lease).await
        }
        Err(err) => Err(err.into()),
    }
}

/// Waits for schema agreement in rounds until [`SCHEMA_AGREEMENT_WAIT`] has passed, renewing
/// `lease` between rounds.
async fn await_agreement(session: &Session, lease: Option<(&str, &str)>) -> Result<(), CqlError> {
    let started = Instant::now();
    loop {
        match session.await_schema_agreement().await {
            Ok(_) => return Ok(()),
            Err(SchemaAgreementError::Timeout(_))
                if started.elapsed() + SCHEMA_AGREEMENT_ROUND <= SCHEMA_AGREEMENT_WAIT =>
            {
                tracing::warn!(
                    waited_secs = started.elapsed().as_secs(),
                    versions = %schema_versions(session).await,
                    "the CQL nodes do not agree on the schema yet; waiting on"
                );
                if let Some((keyspace, owner)) = lease {
                    renew_lease(session, keyspace, owner).await?;
                }
            }
            Err(err) => {
                if matches!(err, SchemaAgreementError::Timeout(_)) {
                    tracing::error!(
                        waited_secs = started.elapsed().as_secs(),
                        versions = %schema_versions(session).await,
                        "the CQL nodes still do not agree on the schema; a node that keeps an \
                         older version missed a change and did not pull it (Cassandra does not \
                         retry a lost schema pull): run `nodetool resetlocalschema` on that node, \
                         then run the migration again"
                    );
                }
                return Err(err.into());
            }
        }
    }
}

/// Each node's schema version, asked of the node itself (a node's view of its peers lags behind
/// by a gossip round, and mixing two nodes' views lists one node twice), for the operator
/// reading why a run waits; best effort.
async fn schema_versions(session: &Session) -> String {
    let mut versions = Vec::new();
    for node in session.get_cluster_state().get_nodes_info() {
        let mut ask = Statement::new("SELECT schema_version FROM system.local WHERE key = 'local'");
        ask.set_load_balancing_policy(Some(SingleTargetLoadBalancingPolicy::new(
            NodeIdentifier::Node(node.clone()),
            None,
        )));
        let version = match session.query_unpaged(ask, ()).await {
            Ok(result) => result
                .into_rows_result()
                .ok()
                .and_then(|rows| rows.maybe_first_row::<(Option<uuid::Uuid>,)>().ok())
                .flatten()
                .and_then(|(version,)| version)
                .map_or_else(|| "none".to_owned(), |v| v.to_string()),
            Err(err) => format!("unreachable ({err})"),
        };
        versions.push(format!("{}: {version}", node.address.ip()));
    }
    versions.join(", ")
}

/// Whether `err` says a table is unknown: a table another process just created can show in
/// `system_schema` a moment before the node serves it, so the caller waits and asks again.
fn table_not_there_yet(err: &scylla::errors::ExecutionError) -> bool {
    let message = err.to_string();
    message.contains("does not exist") || message.contains("unconfigured table")
}

/// The keyspace's replication map, or `None` when there is no such keyspace.
async fn stored_replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<HashMap<String, String>>, CqlError> {
    let rows = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    let row: Option<(HashMap<String, String>,)> = rows.maybe_first_row()?;
    Ok(row.map(|(replication,)| replication))
}

async fn table_names(session: &Session, keyspace: &str) -> Result<HashSet<String>, CqlError> {
    let rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    rows.rows::<(String,)>()?.map(|row| Ok(row?.0)).collect()
}

/// Applied versions and their recorded checksums.
async fn applied_checksums(
    session: &Session,
    keyspace: &str,
) -> Result<BTreeMap<u32, String>, CqlError> {
    let rows = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {keyspace}.schema_migrations"),
            (),
        )
        .await?
        .into_rows_result()?;
    let mut applied = BTreeMap::new();
    for row in rows.rows::<(i32, Option<String>)>()? {
        let (version, checksum) = row?;
        let version = u32::try_from(version).map_err(|_| {
            CqlError::UnexpectedResult(format!(
                "{keyspace}.schema_migrations holds version {version}"
            ))
        })?;
        applied.insert(version, checksum.unwrap_or_default());
    }
    Ok(applied)
}

fn verify_checksums<'a>(
    service: &str,
    keyspace: &str,
    files: impl Iterator<Item = &'a Migration>,
    applied: &BTreeMap<u32, String>,
) -> Result<(), CqlError> {
    for file in files {
        let Some(recorded) = applied.get(&file.version) else {
            continue;
        };
        let built = file.checksum();
        if *recorded != built {
            return Err(CqlError::ChecksumMismatch {
                keyspace: keyspace.to_owned(),
                file: format!("cql/{service}/{}", file.name),
                applied: recorded.clone(),
                built,
            });
        }
    }
    Ok(())
}

fn version_column(version: u32) -> Result<i32, CqlError> {
    i32::try_from(version)
        .map_err(|_| CqlError::InvalidConfig(format!("migration version {version} is too large")))
}

/// Who holds a lease, as operators reading `schema_lock` will want to know it: the host (the pod
/// name on Kubernetes), the process and a random suffix that makes it unique.
fn lease_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown-host".to_owned());
    let mut suffix = [0u8; 4];
    // Without an entropy source the time still tells concurrent runs apart.
    if getrandom::fill(&mut suffix).is_err() {
        suffix = (crate::clock::now_millis() as u32).to_le_bytes();
    }
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{suffix}", std::process::id())
}

async fn acquire_lease(session: &Session, keyspace: &str, owner: &str) -> Result<(), CqlError> {
    let insert = format!(
        "INSERT INTO {keyspace}.schema_lock (id, owner) VALUES (?, ?) IF NOT EXISTS \
         USING TTL {LEASE_TTL_SECS}"
    );
    let started = Instant::now();
    let mut backoff = LEASE_BACKOFF_FIRST;
    let mut logged = false;
    loop {
        let outcome = match session
            .query_unpaged(insert.as_str(), (LEASE_ID, owner))
            .await
        {
            Err(err) if table_not_there_yet(&err) && started.elapsed() < LEASE_WAIT => {
                tracing::debug!(keyspace, "schema_lock not served yet; asking again");
                tokio::time::sleep(backoff).await;
                continue;
            }
            result => lwt(result)?,
        };
        let row = match outcome {
            Lwt::Applied => {
                tracing::debug!(keyspace, owner, "took schema lease");
                return Ok(());
            }
            Lwt::NotApplied(row) => row,
            Lwt::Unknown(unknown) => return Err(unknown.into()),
        };
        let holder = match row.get("owner") {
            Some(CqlValue::Text(holder)) => holder.clone(),
            _ => "someone".to_owned(),
        };
        if !logged {
            tracing::info!(keyspace, holder, "waiting for schema lease");
            logged = true;
        }
        let pause = backoff + jitter(backoff / 2);
        if started.elapsed() + pause > LEASE_WAIT {
            return Err(CqlError::LeaseTimeout {
                keyspace: keyspace.to_owned(),
                holder,
                waited_secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(LEASE_BACKOFF_MAX);
    }
}

/// Extends the lease to a full TTL again, failing if it has passed to someone else.
async fn renew_lease(session: &Session, keyspace: &str, owner: &str) -> Result<(), CqlError> {
    let update = format!(
        "UPDATE {keyspace}.schema_lock USING TTL {LEASE_TTL_SECS} SET owner = ? \
         WHERE id = ? IF owner = ?"
    );
    let result = session
        .query_unpaged(update, (owner, LEASE_ID, owner))
        .await;
    if lwt(result)?.applied()? {
        Ok(())
    } else {
        Err(CqlError::LeaseLost {
            keyspace: keyspace.to_owned(),
        })
    }
}

/// Gives the lease back so a waiting migrator goes on at once. Failing here is not fatal: the
/// lease expires by itself.
async fn release_lease(session: &Session, keyspace: &str, owner: &str) {
    let delete = format!("DELETE FROM {keyspace}.schema_lock WHERE id = ? IF owner = ?");
    match session.query_unpaged(delete, (LEASE_ID, owner)).await {
        Ok(_) => tracing::debug!(keyspace, owner, "released schema lease"),
        Err(err) => tracing::warn!(
            keyspace,
            error = %crate::error::error_chain(&err),
            "cannot release schema lease; it expires by itself"
        ),
    }
}

/// A random duration below `max`, so migrators that collided do not retry in lockstep.
fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() || max.is_zero() {
        return Duration::ZERO;
    }
    let max_ms = u32::try_from(max.as_millis()).unwrap_or(u32::MAX).max(1);
    Duration::from_millis(u64::from(u32::from_le_bytes(bytes) % max_ms))
}

/// Splits a schema file into statements at `;`, dropping comments (`--`, `//`, `/* */`) and
/// blank statements. A `;` inside a string (`'...'`, `$$...$$`) or a quoted identifier
/// (`"..."`) does not split. Errors name what is left unterminated.
pub(crate) fn split_statements(cql: &str) -> Result<Vec<String>, String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = cql.chars().peekable();
    let finish = |current: &mut String, statements: &mut Vec<String>| {
        let statement = current.trim();
        if !statement.is_empty() {
            statements.push(statement.to_owned());
        }
        current.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // A doubled quote inside is an escaped quote, not the end.
                current.push(c);
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated {c}...{c} literal")),
                        Some(q) if q == c => {
                            current.push(q);
                            if chars.peek() == Some(&c) {
                                chars.next();
                                current.push(c);
                            } else {
                                break;
                            }
                        }
                        Some(other) => current.push(other),
                    }
                }
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                current.push_str("$$");
                loop {
                    match chars.next() {
                        None => return Err("unterminated $$...$$ literal".to_owned()),
                        Some('$') if chars.peek() == Some(&'$') => {
                            chars.next();
                            current.push_str("$$");
                            break;
                        }
                        Some(other) => current.push(other),
                    }
                }
            }
            '-' | '/' if chars.peek() == Some(&c) => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        break;
                    }
                }
                current.push('\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = '\0';
                loop {
                    match chars.next() {
                        None => return Err("unterminated /* comment".to_owned()),
                        Some('/') if last == '*' => break,
                        Some(other) => last = other,
                    }
                }
                current.push(' ');
            }
            ';' => finish(&mut current, &mut statements),
            _ => current.push(c),
        }
    }
    finish(&mut current, &mut statements);
    Ok(statements)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let cql = "-- heading; with a semicolon\n\
                   CREATE TABLE a (x int PRIMARY KEY); -- trailing\n\
                   ;;\n\
                   /* block; comment */ INSERT INTO a (x) VALUES (1);\n\
                   // another comment\n\
                   SELECT x FROM a";
        assert_eq!(
            split_statements(cql).unwrap(),
            vec![
                "CREATE TABLE a (x int PRIMARY KEY)",
                "INSERT INTO a (x) VALUES (1)",
                "SELECT x FROM a",
            ]
        );
    }

    #[test]
    fn keeps_semicolons_and_comment_markers_inside_literals() {
        let cql = "INSERT INTO t (a, b) VALUES ('x; -- y', 'it''s; ok');\n\
                   SELECT \"we;ird\" FROM t;\n\
                   INSERT INTO t (a) VALUES ($$a; /* b */ c$$);";
        assert_eq!(
            split_statements(cql).unwrap(),
            vec![
                "INSERT INTO t (a, b) VALUES ('x; -- y', 'it''s; ok')",
                "SELECT \"we;ird\" FROM t",
                "INSERT INTO t (a) VALUES ($$a; /* b */ c$$)",
            ]
        );
    }

    #[test]
    fn comments_and_blanks_alone_are_no_statements() {
        assert!(split_statements("").unwrap().is_empty());
        assert!(
            split_statements("  -- nothing\n/* at all */ ;\n ; ")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn refuses_unterminated_literals_and_comments() {
        assert!(split_statements("SELECT 'abc FROM t;").is_err());
        assert!(split_statements("SELECT \"abc FROM t;").is_err());
        assert!(split_statements("SELECT $$abc FROM t;").is_err());
        assert!(split_statements("SELECT 1 /* never closed").is_err());
    }

    #[test]
    fn checksums_are_sha256_hex() {
        let file = Migration {
            version: 1,
            name: "001_x.cql",
            cql: "abc",
        };
        assert_eq!(
            file.checksum(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// A schema folder with a file left out, a file named off its version, a statement that
    /// is not idempotent and one that uses what only one engine has: each is reported.
    #[test]
    fn schema_problems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["001_init.cql", "002_more.cql", "003_forgotten.cql"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let dir_path: &'static str = Box::leak(dir.path().display().to_string().into_boxed_str());
        let bad = Schema {
            service: "probe",
            dir: dir_path,
            migrations: &[
                Migration {
                    version: 1,
                    name: "001_init.cql",
                    cql: "CREATE TABLE IF NOT EXISTS {ks}.a (id int PRIMARY KEY);",
                },
                Migration {
                    version: 2,
                    name: "02_more.cql",
                    cql: "CREATE TABLE {ks}.b (id int PRIMARY KEY);\n\
                          CREATE INDEX IF NOT EXISTS b_id ON {ks}.b (id);",
                },
            ],
        };
        let problems = bad.problems();
        let expect = [
            "cql/probe/ holds",
            "02_more.cql should be version 2",
            "not idempotent",
            "INDEX is not portable",
        ];
        for what in expect {
            assert!(
                problems.iter().any(|p| p.contains(what)),
                "{what:?} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    // Against a real node (`TWTR_TEST_SCYLLA_NODES`, or the one `scripts/cassandra.sh` runs).
    // Each test has its own keyspace prefix and drops its keyspaces at the end, even when it
    // fails; DDL costs about 0.2 s a table on Cassandra, so tests create few keyspaces.

    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    use futures_util::FutureExt as _;

    use crate::cql::connect;

    /// A session and a config with a fresh keyspace prefix, or `None` to skip (off CI, no node).
    async fn cluster() -> Option<(Arc<Session>, CqlConfig)> {
        let nodes = crate::testing::cql_nodes()?;
        let mut config = CqlConfig::new(nodes);
        let mut bytes = [0u8; 5];
        getrandom::fill(&mut bytes).unwrap();
        config.keyspace_prefix = format!(
            "t{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let session = connect(&config).await.expect("connect to the test node");
        Some((session, config))
    }

    /// Runs `test`, then drops the `services`' keyspaces whether it passed or not.
    async fn with_keyspaces<F: std::future::Future<Output = ()>>(
        session: &Session,
        config: &CqlConfig,
        services: &[&str],
        test: F,
    ) {
        let outcome = AssertUnwindSafe(test).catch_unwind().await;
        for service in services {
            let keyspace = config.keyspace(service).unwrap();
            if let Err(err) = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                .await
            {
                eprintln!("cannot drop test keyspace {keyspace}: {err}");
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn recorded_versions(session: &Session, keyspace: &str) -> Vec<u32> {
        applied_checksums(session, keyspace)
            .await
            .unwrap()
            .into_keys()
            .collect()
    }

    #[tokio::test]
    async fn concurrent_runs_apply_each_file_once() {
        let Some((session, config)) = cluster().await else {
            return;
        };
        // A second session: another process, as far as the cluster can tell.
        let other = connect(&config).await.unwrap();
        with_keyspaces(&session, &config, &["probe"], async {
            let files = [PROBE_V1, PROBE_V2];
            let (a, b) = tokio::join!(
                apply(&session, &config, "probe", &files),
                apply(&other, &config, "probe", &files)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let mut applied = [a.applied, b.applied].concat();
            applied.sort_unstable();
            let shipped: Vec<u32> = files.iter().map(|m| m.version).collect();
            assert_eq!(
                applied, shipped,
                "one run applied each file, the other nothing"
            );
            let newest = *shipped.last().unwrap();
            assert_eq!((a.version, b.version), (newest, newest));
            let keyspace = config.keyspace("probe").unwrap();
            assert_eq!(recorded_versions(&session, &keyspace).await, shipped);
            let lease = session
                .query_unpaged(format!("SELECT owner FROM {keyspace}.schema_lock"), ())
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            assert_eq!(lease.rows_num(), 0, "both runs released the lease");
        })
        .await;
    }

    const PROBE_V1: Migration = Migration {
        version: 1,
        name: "001_probe.cql",
        cql: "-- a probe\nCREATE TABLE IF NOT EXISTS {ks}.probe (id int PRIMARY KEY);",
    };
    const PROBE_V1_EDITED: Migration = Migration {
        cql: "CREATE TABLE IF NOT EXISTS {ks}.probe (id int PRIMARY KEY, note text);",
        ..PROBE_V1
    };
    const PROBE_V2: Migration = Migration {
        version: 2,
        name: "002_more.cql",
        cql: "CREATE TABLE IF NOT EXISTS {ks}.more (id int PRIMARY KEY);\n\
              CREATE TABLE IF NOT EXISTS {ks}.yet_more (id int PRIMARY KEY);",
    };

    #[tokio::test]
    async fn edited_files_and_missing_or_old_keyspaces_are_refused() {
        let Some((session, config)) = cluster().await else {
            return;
        };
        with_keyspaces(&session, &config, &["probe"], async {
            let keyspace = config.keyspace("probe").unwrap();
            let missing = check_current(&session, &config, "probe", &[PROBE_V1])
                .await
                .unwrap_err();
            assert_eq!(
                missing.to_string(),
                format!(
                    "keyspace {keyspace} is at schema version 0, this build needs 1: run `twtr migrate`"
                )
            );

            let report = apply(&session, &config, "probe", &[PROBE_V1]).await.unwrap();
            assert_eq!(report.applied, vec![1]);
            check_current(&session, &config, "probe", &[PROBE_V1])
                .await
                .unwrap();
            let behind = check_current(&session, &config, "probe", &[PROBE_V1, PROBE_V2])
                .await
                .unwrap_err();
            assert!(
                matches!(behind, CqlError::SchemaBehind { current: 1, needed: 2, .. }),
                "{behind}"
            );

            let edited = apply(&session, &config, "probe", &[PROBE_V1_EDITED])
                .await
                .unwrap_err();
            assert!(matches!(edited, CqlError::ChecksumMismatch { .. }), "{edited:?}");
            assert!(edited.to_string().contains("cql/probe/001_probe.cql"), "{edited}");
            let edited = check_current(&session, &config, "probe", &[PROBE_V1_EDITED])
                .await
                .unwrap_err();
            assert!(matches!(edited, CqlError::ChecksumMismatch { .. }), "{edited:?}");

            let report = apply(&session, &config, "probe", &[PROBE_V1, PROBE_V2])
                .await
                .unwrap();
            assert_eq!((report.applied, report.version), (vec![2], 2));
            check_current(&session, &config, "probe", &[PROBE_V1, PROBE_V2])
                .await
                .unwrap();
            check_current(&session, &config, "probe", &[PROBE_V1])
                .await
                .expect("a keyspace ahead of the build is fine");
        })
        .await;
    }

    #[tokio::test]
    async fn no_contact_points_is_refused() {
        let config = CqlConfig::new(vec![]);
        assert!(matches!(
            crate::cql::connect(&config).await,
            Err(CqlError::InvalidConfig(_))
        ));
    }
}
