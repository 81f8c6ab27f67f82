//! One migrated keyspace set per test process, for the CQL conformance suites and tests.
//!
//! DDL is slow on Cassandra (about a second a table, and serialized), so a test process migrates
//! each service's keyspace once, under a prefix of its own (`t<ms>p<pid>`), and every test in it
//! shares that keyspace, keeping to its own IDs. Each test opens its own session (a session
//! belongs to the runtime that made it, and every `#[tokio::test]` has its own runtime).
//! Keyspaces that earlier test processes left behind are dropped once they are an hour old.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scylla::client::session::Session;
use tokio::sync::OnceCell;

use super::{CqlConfig, CqlError, connect, migrate};

/// Test keyspaces older than this are taken for leftovers of finished runs.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Per service, the migration of its keyspace: done once, awaited by every test that needs it.
type MigratedServices = HashMap<&'static str, Arc<OnceCell<()>>>;

/// This process's keyspace prefix: `t<milliseconds>p<pid>`.
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("t{}p{}", crate::clock::now_millis(), std::process::id()))
}

/// A session on the test cluster and a config whose keyspace for `service` is migrated, or
/// `None` when no node answers outside CI (see [`crate::testing::cql_nodes`]).
pub async fn keyspace_for(service: &'static str) -> Option<(Arc<Session>, CqlConfig)> {
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
        migrate(&session, &config, service)
            .await
            .unwrap_or_else(|err| panic!("cannot migrate the test keyspace for {service}: {err}"));
    })
    .await;
    Some((session, config))
}

/// Drops `t<ms>p<pid>_*` keyspaces made more than [`STALE_AFTER`] ago (best effort).
async fn drop_stale_keyspaces(session: &Session) {
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
        let made_at = name
            .strip_prefix('t')
            .and_then(|rest| rest.split('p').next())
            .and_then(|ms| ms.parse::<i64>().ok());
        let Some(made_at) = made_at else { continue };
        let stale = now - made_at > STALE_AFTER.as_millis() as i64;
        if stale && name.contains('_') {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                .await;
        }
    }
}
