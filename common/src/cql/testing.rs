//! One migrated keyspace set per test process, for the CQL conformance suites and tests.
//!
//! DDL is slow on Cassandra (about a second a table, and serialized), so a test process migrates
//! each service's keyspace once, under a prefix of its own (`t<ms>p<pid>`), and every test in it
//! shares that keyspace, keeping to its own IDs. Each test opens its own session (a session
//! belongs to the runtime that made it, and every `#[tokio::test]` has its own runtime).
//! Keyspaces that earlier test processes left behind are dropped once they are an hour old;
//! tests that make keyspace sets of their own drop them when done with a [`KeyspaceSet`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scylla::client::session::Session;
use tokio::sync::OnceCell;

use super::{CqlConfig, CqlError, Schema, connect, migrate};

/// Test keyspaces older than this are taken for leftovers of finished runs.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Per service, the migration of its keyspace: done once, awaited by every test that needs it.
type MigratedServices = HashMap<&'static str, Arc<OnceCell<()>>>;

/// This process's keyspace prefix: `t<milliseconds>p<pid>`.
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("t{}p{}", crate::clock::now_millis(), std::process::id()))
}

/// A session on the test cluster and a config whose keyspace for `schema` is migrated, or
/// `None` when no node answers outside CI (see [`crate::testing::cql_nodes`]).
pub async fn keyspace_for(schema: &'static Schema) -> Option<(Arc<Session>, CqlConfig)> {
    let service = schema.service;
    static MIGRATED: OnceLock<std::sync::Mutex<MigratedServices>> = OnceLock::new();
    let nodes = crate::testing::cql_nodes()?;
    let mut config = CqlConfig::new(nodes);
    config.keyspace_prefix = prefix().to_owned();
    let session = connect(&config)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the test CQL node: {err}"));
    let cell = {
        let mut cells = MIGRATED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(cells.entry(service).or_default())
    };
    cell.get_or_init(|| async {
        drop_stale_keyspaces(&session).await;
        migrate(&session, &config, schema)
            .await
            .unwrap_or_else(|err| panic!("cannot migrate the test keyspace for {service}: {err}"));
    })
    .await;
    Some((session, config))
}

/// Drops every `<prefix>_<service>` keyspace of `nodes` when dropped: a test's own keyspace set,
/// so tests do not pile tables up on the node (Cassandra keeps state on its heap per table).
/// The drop runs on a thread of its own, as a destructor cannot await.
#[derive(Debug)]
pub struct KeyspaceSet {
    pub nodes: Vec<String>,
    pub prefix: String,
    /// The services whose `<prefix>_<service>` keyspaces the set holds.
    pub services: Vec<&'static str>,
}

impl Drop for KeyspaceSet {
    fn drop(&mut self) {
        let mut config = CqlConfig::new(self.nodes.clone());
        config.keyspace_prefix = self.prefix.clone();
        let services = self.services.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let session = connect(&config).await.ok()?;
                for service in services {
                    let keyspace = config.keyspace(service).ok()?;
                    let _ = session
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                        .await;
                }
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test keyspaces {}_*", self.prefix);
        }
    }
}

/// When a test keyspace was made, from its name: `t<ms>p<pid>_*` (this module's) or
/// `bb<snowflake id>_*` (the black-box tests', whose IDs carry their creation time).
fn made_at(keyspace: &str) -> Option<i64> {
    if let Some(rest) = keyspace.strip_prefix("bb") {
        let id: u64 = rest.split('_').next()?.parse().ok()?;
        return Some(crate::id::millis_of(id));
    }
    keyspace.strip_prefix('t')?.split('p').next()?.parse().ok()
}

/// Drops test keyspaces (see [`made_at`]) made more than [`STALE_AFTER`] ago (best effort).
pub async fn drop_stale_keyspaces(session: &Session) {
    let names: Result<Vec<String>, CqlError> = async {
        let rows = session
            .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
            .await?
            .into_rows_result()?;
        let mut names = Vec::new();
        for row in rows.rows::<(String,)>()? {
            names.push(row?.0);
        }
        Ok(names)
    }
    .await;
    let Ok(names) = names else { return };
    let now = crate::clock::now_millis();
    for name in names {
        let Some(made_at) = made_at(&name) else {
            continue;
        };
        let stale = now - made_at > STALE_AFTER.as_millis() as i64;
        if stale && name.contains('_') {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_keyspaces_tell_their_age() {
        let ids = crate::IdGenerator::new(3).unwrap_or_else(|_| unreachable!());
        let id = ids.next_id();
        assert_eq!(
            made_at(&format!("bb{id}_users")),
            Some(crate::id::millis_of(id))
        );
        assert_eq!(made_at("t1700000000000p42_feeds"), Some(1_700_000_000_000));
        assert_eq!(
            made_at("twtr_users"),
            None,
            "a deployment's keyspace is never touched"
        );
        assert_eq!(made_at("system_schema"), None);
    }
}
