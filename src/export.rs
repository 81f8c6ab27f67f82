//! `twtr export` and `twtr import`: a logical copy of the CQL keyspaces (`<prefix>_users`,
//! `<prefix>_tweets`, ...) through the driver, portable between Apache Cassandra and ScyllaDB
//! (and between clusters of different sizes), for moving data and for small deployments' backups.
//!
//! # The export
//!
//! For each keyspace and each table (but the migrator's bookkeeping, `schema_migrations` and
//! `schema_lock`, and the relays' `*_leases`, which are a running process's state), the token
//! ring is cut into `--ranges` equal ranges, and each range is read with
//! `SELECT JSON <columns>, ttl(<a column>) AS export_ttl FROM t WHERE token(<partition key>) > ?
//! AND token(<partition key>) <= ?`, paged by the driver (`--page-size` rows a page), at the
//! session's read consistency. Each range becomes one file of JSON lines,
//! `DIR/<service>/<table>/range-NNNNN.jsonl`: each line is the row as the cluster writes it in
//! JSON (what `INSERT ... JSON` reads back), plus `export_ttl`, the seconds the row had left
//! (null without a TTL). A range is written under a temporary name and renamed when whole, then
//! recorded in `DIR/progress.json`; an interrupted export run again with the same `--to` goes on
//! from there. `DIR/manifest.json`, written last, lists every table with its row count, the
//! schema version and the source cluster's release; a directory without it is unfinished.
//!
//! # What a concurrent write may or may not include
//!
//! Every range is read at its own moment, so an export is not a point-in-time copy: a write
//! acknowledged before the export began is in it (at the default quorum consistencies); one
//! acknowledged after it ended is not; one made during it is in it if its range was read after it
//! landed. The tables of one keyspace (a tweet and its author's timeline row) and the keyspaces
//! (a follow and the feeds' copy of it) may disagree about such writes. Stop the writers (scale
//! the gateway to zero) for an exact copy, or use the engine's snapshots.
//!
//! # The import
//!
//! Into keyspaces `twtr migrate` made with the same schema version (a fresh `--scylla-keyspace-
//! prefix`, say), every line is written with a plain, idempotent `INSERT ... JSON` (`USING TTL`
//! when it had one, so expiring rows still expire: their clock starts again at the import),
//! `--concurrency` at once; importing twice, or after an interrupted import, writes the same
//! rows. No table uses CQL counters (their updates are not idempotent; the schemas keep counts
//! in ledgers of plain rows instead), so there is nothing else to special-case. Write times are
//! not carried: the imported cells are timestamped at the import.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use futures_util::{StreamExt as _, TryStreamExt as _};
use scylla::client::session::Session;
use scylla::statement::Statement;
use serde::{Deserialize, Serialize};
use twtr_common::cql::{CqlConfig, Schema};

/// Tables that are a migrator's or a running relay's state, not data.
fn skipped(table: &str) -> bool {
    matches!(table, "schema_migrations" | "schema_lock") || table.ends_with("_leases")
}

/// The layout this build writes and reads.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const PROGRESS: &str = "progress.json";
/// The alias of the TTL column in each exported row.
const TTL_KEY: &str = "export_ttl";

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ExportArgs {
    /// A new directory, or the directory of an interrupted export to go on with.
    #[arg(long)]
    pub to: PathBuf,
    /// Token ranges per table: the unit of resumption (and of files).
    #[arg(long, default_value_t = 64)]
    pub ranges: u32,
    /// Rows per page of a range's read.
    #[arg(long, default_value_t = 1000)]
    pub page_size: i32,
    /// Stop after this many ranges (to test resumption; the export is then unfinished).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ImportArgs {
    /// A directory a finished `twtr export` wrote.
    #[arg(long)]
    pub from: PathBuf,
    /// Inserts in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// `manifest.json`: what a finished export holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The source cluster's `release_version` (Cassandra `5.0.x`, ScyllaDB `3.0.8` + its own).
    pub source_release: String,
    pub keyspace_prefix: String,
    pub ranges: u32,
    /// Service -> its keyspace's export.
    pub services: BTreeMap<String, ServiceExport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceExport {
    pub keyspace: String,
    /// The newest migration applied, which the target must have too.
    pub schema_version: u32,
    /// Table -> rows exported.
    pub tables: BTreeMap<String, u64>,
}

/// `progress.json`: the ranges written so far, and the parameters they were written with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    ranges: u32,
    keyspace_prefix: String,
    /// `<service>/<table>/<range>` -> rows.
    done: BTreeMap<String, u64>,
}

/// One table to export: its name, partition key and columns.
struct Table {
    name: String,
    partition_key: Vec<String>,
    columns: Vec<String>,
    /// A regular column whose TTL stands for the row's, if the table has one.
    ttl_column: Option<String>,
}

/// `twtr export`.
pub async fn export(
    args: ExportArgs,
    config: &CqlConfig,
    schemas: &[&Schema],
) -> anyhow::Result<()> {
    anyhow::ensure!(args.ranges >= 1, "--ranges must be at least 1");
    let started = Instant::now();
    let session = twtr_common::cql::connect(config).await?;
    let dir = &args.to;
    anyhow::ensure!(
        !dir.join(MANIFEST).exists(),
        "{} holds a finished export already",
        dir.display()
    );
    let mut progress = match std::fs::read(dir.join(PROGRESS)) {
        Ok(bytes) => {
            let progress: Progress = serde_json::from_slice(&bytes)
                .with_context(|| format!("failed to read {}", dir.join(PROGRESS).display()))?;
            anyhow::ensure!(
                progress.ranges == args.ranges
                    && progress.keyspace_prefix == config.keyspace_prefix,
                "{} holds an export of prefix {} in {} ranges: go on with the same \
                 --ranges and prefix, or start in a new directory",
                dir.display(),
                progress.keyspace_prefix,
                progress.ranges
            );
            eprintln!(
                "going on with the export in {} ({} ranges done)",
                dir.display(),
                progress.done.len()
            );
            progress
        }
        Err(_) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                anyhow::bail!(
                    "{} is not empty and holds no export to go on with",
                    dir.display()
                );
            }
            twtr_common::files::private_dir(dir)?;
            Progress {
                ranges: args.ranges,
                keyspace_prefix: config.keyspace_prefix.clone(),
                done: BTreeMap::new(),
            }
        }
    };

    let mut manifest = Manifest {
        format: FORMAT,
        source_release: release(&session).await?,
        keyspace_prefix: config.keyspace_prefix.clone(),
        ranges: args.ranges,
        services: BTreeMap::new(),
    };
    let mut budget = args.stop_after;
    for schema in schemas {
        twtr_common::cql::ensure_current(&session, config, schema)
            .await
            .with_context(|| format!("the {} keyspace is not current", schema.service))?;
        let keyspace = config.keyspace(schema.service)?;
        let mut service = ServiceExport {
            keyspace: keyspace.clone(),
            schema_version: schema_version(schema),
            tables: BTreeMap::new(),
        };
        for table in tables(&session, &keyspace).await? {
            let folder = dir.join(schema.service).join(&table.name);
            twtr_common::files::private_dir(&folder)?;
            let select = table.select(&keyspace);
            let mut rows = 0;
            for range in 0..args.ranges {
                let key = format!("{}/{}/{range:05}", schema.service, table.name);
                if let Some(done) = progress.done.get(&key) {
                    rows += done;
                    continue;
                }
                if let Some(left) = budget.as_mut() {
                    if *left == 0 {
                        eprintln!(
                            "stopped after the ranges asked for; run again to go on ({} done)",
                            progress.done.len()
                        );
                        return Ok(());
                    }
                    *left -= 1;
                }
                let (low, high) = token_range(range, args.ranges);
                let file = folder.join(format!("range-{range:05}.jsonl"));
                let written =
                    export_range(&session, &select, args.page_size, low, high, &file).await?;
                rows += written;
                progress.done.insert(key, written);
                write_json(dir, PROGRESS, &progress)?;
            }
            service.tables.insert(table.name.clone(), rows);
        }
        manifest.services.insert(schema.service.to_owned(), service);
    }
    write_json(dir, MANIFEST, &manifest)?;
    let total: u64 = manifest
        .services
        .values()
        .flat_map(|s| s.tables.values())
        .sum();
    println!(
        "exported {total} rows of {} keyspaces into {} in {} ms",
        manifest.services.len(),
        dir.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// `twtr import`.
pub async fn import(
    args: ImportArgs,
    config: &CqlConfig,
    schemas: &[&Schema],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = &args.from;
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).with_context(|| {
            format!(
                "no finished export in {} (no {MANIFEST}; run the export again to finish it)",
                dir.display()
            )
        })?)?;
    anyhow::ensure!(
        manifest.format == FORMAT,
        "an export of format {}; this twtr reads format {FORMAT}",
        manifest.format
    );
    let session = twtr_common::cql::connect(config).await?;
    let mut total = 0u64;
    for schema in schemas {
        let Some(service) = manifest.services.get(schema.service) else {
            anyhow::bail!("the export has no {} keyspace", schema.service);
        };
        anyhow::ensure!(
            service.schema_version == schema_version(schema),
            "the {} keyspace was exported at schema version {}, this twtr has {}: import with \
             the twtr that exported it",
            schema.service,
            service.schema_version,
            schema_version(schema)
        );
        twtr_common::cql::ensure_current(&session, config, schema)
            .await
            .with_context(|| {
                format!(
                    "the target {} keyspace is not ready: run `twtr migrate` with the same \
                     prefix first",
                    schema.service
                )
            })?;
        let keyspace = config.keyspace(schema.service)?;
        for (table, rows) in &service.tables {
            let imported = import_table(
                &session,
                &keyspace,
                table,
                &dir.join(schema.service).join(table),
                args.concurrency.max(1),
            )
            .await?;
            anyhow::ensure!(
                imported == *rows,
                "{}.{table}: {imported} rows in the files, the manifest says {rows}",
                schema.service
            );
            total += imported;
        }
    }
    println!(
        "imported {total} rows into the keyspaces of prefix {} in {} ms",
        config.keyspace_prefix,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The newest migration of `schema`.
fn schema_version(schema: &Schema) -> u32 {
    schema
        .migrations
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

async fn release(session: &Session) -> anyhow::Result<String> {
    let (release,) = session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await?
        .into_rows_result()?
        .single_row::<(String,)>()?;
    Ok(release)
}

/// The tables of `keyspace` to export, by name, with their columns.
async fn tables(session: &Session, keyspace: &str) -> anyhow::Result<Vec<Table>> {
    let rows = session
        .query_unpaged(
            "SELECT table_name, column_name, kind, position, type FROM system_schema.columns \
             WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    let mut by_table: BTreeMap<String, Vec<(String, String, i32, String)>> = BTreeMap::new();
    for row in rows.rows::<(String, String, String, i32, String)>()? {
        let (table, column, kind, position, kind_of) = row?;
        by_table
            .entry(table)
            .or_default()
            .push((column, kind, position, kind_of));
    }
    let mut tables = Vec::new();
    for (name, mut columns) in by_table {
        if skipped(&name) {
            continue;
        }
        columns.sort_by(|a, b| a.0.cmp(&b.0));
        let mut partition_key: Vec<(i32, String)> = columns
            .iter()
            .filter(|c| c.1 == "partition_key")
            .map(|c| (c.2, c.0.clone()))
            .collect();
        partition_key.sort();
        // ttl() takes a regular column; collections and counters have none to give.
        let ttl_column = columns
            .iter()
            .find(|c| {
                c.1 == "regular"
                    && !["list<", "set<", "map<", "counter"]
                        .iter()
                        .any(|t| c.3.starts_with(t))
            })
            .map(|c| c.0.clone());
        tables.push(Table {
            name,
            partition_key: partition_key.into_iter().map(|(_, c)| c).collect(),
            columns: columns.into_iter().map(|c| c.0).collect(),
            ttl_column,
        });
    }
    Ok(tables)
}

impl Table {
    /// The range read (see the [module docs](self)).
    fn select(&self, keyspace: &str) -> String {
        let quote = |c: &String| format!("\"{}\"", c.replace('"', "\"\""));
        let mut selectors: Vec<String> = self.columns.iter().map(quote).collect();
        if let Some(column) = &self.ttl_column {
            selectors.push(format!("ttl({}) AS {TTL_KEY}", quote(column)));
        }
        let token = self
            .partition_key
            .iter()
            .map(quote)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT JSON {} FROM {keyspace}.\"{}\" WHERE token({token}) >= ? AND token({token}) <= ?",
            selectors.join(", "),
            self.name
        )
    }
}

/// The inclusive token range `range` of `ranges` equal ones covering the Murmur3 ring.
fn token_range(range: u32, ranges: u32) -> (i64, i64) {
    let width = (u64::MAX / u64::from(ranges)) as i128;
    let low = i128::from(i64::MIN) + width * i128::from(range);
    let high = if range + 1 == ranges {
        i128::from(i64::MAX)
    } else {
        low + width - 1
    };
    (low as i64, high as i64)
}

/// Reads one range into `file` (whole or not at all); the rows written.
async fn export_range(
    session: &Session,
    select: &str,
    page_size: i32,
    low: i64,
    high: i64,
    file: &Path,
) -> anyhow::Result<u64> {
    let mut statement = Statement::new(select);
    statement.set_page_size(page_size);
    statement.set_is_idempotent(true);
    let partial = file.with_extension("jsonl.partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .with_context(|| format!("failed to create {}", partial.display()))?,
    );
    let mut rows = session
        .query_iter(statement, (low, high))
        .await
        .with_context(|| format!("failed to read {select}"))?
        .rows_stream::<(String,)>()?;
    let mut count = 0;
    while let Some((json,)) = rows.try_next().await? {
        out.write_all(json.as_bytes())?;
        out.write_all(b"\n")?;
        count += 1;
    }
    let file_handle = out.into_inner().map_err(|e| e.into_error())?;
    file_handle.sync_all()?;
    std::fs::rename(&partial, file)?;
    Ok(count)
}

/// Writes every range file of one table into `keyspace`; the rows written.
async fn import_table(
    session: &Arc<Session>,
    keyspace: &str,
    table: &str,
    folder: &Path,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let mut plain = session
        .prepare(format!("INSERT INTO {keyspace}.\"{table}\" JSON ?"))
        .await?;
    plain.set_is_idempotent(true);
    let mut expiring = session
        .prepare(format!(
            "INSERT INTO {keyspace}.\"{table}\" JSON ? USING TTL ?"
        ))
        .await?;
    expiring.set_is_idempotent(true);
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("failed to read {}", folder.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut count = 0u64;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("failed to read {}", file.display()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let (plain, expiring, file) = (&plain, &expiring, &file);
        futures_util::stream::iter(lines)
            .map(|line| async move {
                let mut row: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line)
                        .with_context(|| format!("a line of {} is not JSON", file.display()))?;
                let ttl = row.remove(TTL_KEY).and_then(|t| t.as_i64());
                let json = serde_json::Value::Object(row).to_string();
                match ttl {
                    Some(ttl) if ttl > 0 => {
                        session
                            .execute_unpaged(expiring, (json, ttl as i32))
                            .await?
                    }
                    _ => session.execute_unpaged(plain, (json,)).await?,
                };
                anyhow::Ok(())
            })
            .buffer_unordered(concurrency)
            .try_for_each(|()| {
                count += 1;
                futures_util::future::ready(Ok(()))
            })
            .await
            .with_context(|| format!("failed to import {}", file.display()))?;
    }
    Ok(count)
}

/// Writes `value` as `dir/name`, whole or not at all.
fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(&serde_json::to_vec_pretty(value)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, dir.join(name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::token_range;

    #[test]
    fn token_ranges_cover_the_ring_without_overlap() {
        for ranges in [1, 2, 3, 64, 1000] {
            let mut next = i64::MIN;
            for range in 0..ranges {
                let (low, high) = token_range(range, ranges);
                assert_eq!(low, next, "range {range} of {ranges}");
                assert!(high >= low);
                next = high.wrapping_add(1);
            }
            assert_eq!(next, i64::MIN, "the last range ends at the top of the ring");
        }
    }
}
