//! The engines as clusters: one node of a three-node Cassandra cluster, then of a three-node
//! RabbitMQ cluster, stopped or killed with `kill -9` under load and started again, the clients
//! riding it out. They measure what the README reports (failed requests, how long until the
//! client routed around the dead node, how long until the node was back) and print it.
//!
//! - Cassandra, an RF 3 keyspace (NetworkTopologyStrategy, made by `twtr migrate`) at
//!   `LOCAL_QUORUM` / `LOCAL_SERIAL`: a rolling restart of a node fails no request; after a
//!   `kill -9` no read, write or lightweight transaction fails once the driver has seen the node
//!   go (at once: its sockets close), and nothing at all fails once the other nodes have marked
//!   it down. In between (their failure detector takes about 20 s), a logged batch over several
//!   partitions (every write that stages an event) times out: its coordinator still writes its
//!   batchlog to the dead node, and in a three-node data center it has no other choice.
//! - RabbitMQ, quorum queues: the node the bus is connected to, then the node leading the
//!   queue, killed while publishing with confirms and consuming: every confirmed message is
//!   consumed, the bus moves to another node, consumption resumes.
//!
//! - The whole mesh on both clusters (`mesh.rs`): a Cassandra node, then the broker node leading
//!   the feeds queue, killed under the fault suite's load and model.
//!
//! They need clusters the rest of the suite does not start, and minutes of CPU, so `cargo test`
//! leaves them out (`#[ignore]`) and `scripts/test.sh` runs them last, on clusters it starts and
//! stops. By hand:
//!
//! ```sh
//! TWTR_CASSANDRA_HOSTS=127.0.0.4,127.0.0.5,127.0.0.6 scripts/cassandra.sh start --nodes 3
//! TWTR_RABBITMQ_PORT=5682 scripts/rabbitmq.sh start --nodes 3
//! TWTR_TEST_SCYLLA_CLUSTER=127.0.0.4:9042,127.0.0.5:9042,127.0.0.6:9042 \
//! TWTR_TEST_AMQP_CLUSTER=amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f,amqp://guest:guest@127.0.0.1:5684/%2f \
//!     cargo test --test blackbox -- --ignored clusters:: --test-threads=1 --nocapture
//! ```
//!
//! The i-th address listed is node i of the script's cluster (in `TWTR_CASSANDRA_DIR` /
//! `TWTR_RABBITMQ_DIR`, or the script's default directory), which the tests kill and start
//! through the script, as an operator would. One at a time (`--test-threads=1`): each kills
//! nodes the others use.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::batch::Batch;
use tokio::process::Command;
use twtr_common::bus::{
    EventBus as _, QueueSpec, QueueType, RabbitBus, RabbitConfig, conformance, publish,
};
use twtr_common::cql::testing::KeyspaceSet;
use twtr_common::cql::{CqlConfig, Keyspace, Replication, connect, logged_batch, schema_change};
use twtr_common::error::error_chain;
use twtr_users::store::UserStore as _;
use twtr_users::store::conformance::{event, fresh_user, unique_id};
use twtr_users::store::cql::CqlUserStore;

use crate::processes::{cql_env, run_migrate};
use crate::support::eventually;

mod mesh;

/// The contact points or URLs a variable lists, or `None` (the test is skipped; never in CI).
fn opted_in(var: &str) -> Option<Vec<String>> {
    let listed = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let Some(listed) = listed else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{var} is not set: in CI the cluster tests run (scripts/test.sh starts the clusters)"
        );
        eprintln!(
            "skipped: set {var} to run this test on a cluster (see tests/blackbox/clusters.rs)"
        );
        return None;
    };
    Some(listed.split(',').map(|s| s.trim().to_owned()).collect())
}

/// `scripts/<name>`, run with this process's environment (the cluster's directory and jars).
async fn script(name: &str, args: &[&str]) {
    let path = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(&path)
        .args(args)
        .status()
        .await
        .unwrap_or_else(|err| panic!("run {path}: {err}"));
    assert!(status.success(), "{name} {args:?} failed: {status}");
}

/// Seconds, for reports.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ------------------------------------------------------------------------------------------------
// Cassandra
// ------------------------------------------------------------------------------------------------

/// One request of the load, as it went.
#[derive(Debug, Clone)]
struct Outcome {
    kind: &'static str,
    /// When it was sent, since the test started.
    sent: Duration,
    took: Duration,
    error: Option<String>,
}

/// What the load has done so far.
#[derive(Default)]
struct Record {
    outcomes: Mutex<Vec<Outcome>>,
    /// Requests each node coordinated, by address, and when it last did.
    coordinators: Mutex<BTreeMap<IpAddr, (u64, Duration)>>,
}

impl Record {
    fn push(&self, kind: &'static str, sent: Duration, took: Duration, error: Option<String>) {
        self.outcomes.lock().unwrap().push(Outcome {
            kind,
            sent,
            took,
            error,
        });
    }

    fn coordinated(&self, node: IpAddr, at: Duration) {
        let mut map = self.coordinators.lock().unwrap();
        let entry = map.entry(node).or_insert((0, at));
        entry.0 += 1;
        entry.1 = at;
    }

    /// Whether `node` coordinated a request after `after`.
    fn coordinated_since(&self, node: IpAddr, after: Duration) -> bool {
        self.coordinators
            .lock()
            .unwrap()
            .get(&node)
            .is_some_and(|(_, last)| *last > after)
    }
}

/// The statements of the load, prepared the way the stores prepare theirs.
struct Statements {
    write: scylla::statement::prepared::PreparedStatement,
    read: scylla::statement::prepared::PreparedStatement,
    lwt: scylla::statement::prepared::PreparedStatement,
    batch: Batch,
}

async fn prepare(ks: &Keyspace) -> Statements {
    let batch = logged_batch([
        &ks.prepare("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)")
            .await
            .expect("prepare"),
        &ks.prepare("INSERT INTO {ks}.log (k, seq, note) VALUES (?, ?, ?)")
            .await
            .expect("prepare"),
    ]);
    Statements {
        write: ks
            .prepare("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)")
            .await
            .expect("prepare"),
        read: ks
            .prepare("SELECT v FROM {ks}.kv WHERE k = ?")
            .await
            .expect("prepare"),
        lwt: ks
            .prepare("UPDATE {ks}.kv SET v = ? WHERE k = ? IF v = ?")
            .await
            .expect("prepare"),
        batch,
    }
}

/// One worker of the load: a write, a read of it, a lightweight transaction on it, a logged
/// batch over two partitions, and a sign-up through the users service's CQL store (a lightweight transaction and a
/// logged batch with its outbox row) read back, over and over.
async fn load(
    session: Arc<Session>,
    statements: Arc<Statements>,
    users: Arc<CqlUserStore>,
    record: Arc<Record>,
    started: Instant,
    stop: Arc<AtomicBool>,
) {
    type Answer = scylla::response::query_result::QueryResult;
    while !stop.load(Ordering::Relaxed) {
        let k = i64::try_from(unique_id()).expect("IDs fit in a bigint");
        // Runs one request, records how it went (and who coordinated it), returns its answer.
        macro_rules! timed {
            ($kind:literal, $call:expr, $check:expr) => {{
                let sent = started.elapsed();
                let result = $call.await;
                let took = started.elapsed() - sent;
                let error = match &result {
                    Ok(value) => $check(value),
                    Err(err) => Some(error_chain(err)),
                };
                let failed = error.is_some();
                record.push($kind, sent, took, error);
                result.ok().filter(|_| !failed)
            }};
        }
        let written = timed!(
            "write",
            session.execute_unpaged(&statements.write, (k, 1_i64)),
            |_| None
        );
        if let Some(answer) = &written {
            record.coordinated(
                answer.request_coordinator().connection_address().ip(),
                started.elapsed(),
            );
        }
        timed!(
            "read",
            session.execute_unpaged(&statements.read, (k,)),
            |r: &Answer| {
                let seen = r
                    .clone()
                    .into_rows_result()
                    .ok()
                    .and_then(|rows| rows.maybe_first_row::<(i64,)>().ok().flatten());
                // The write had a quorum, so does the read: they overlap.
                (written.is_some() && seen != Some((1,)))
                    .then(|| format!("read {seen:?} after writing 1"))
            }
        );
        timed!(
            "lwt",
            lwt(&session, &statements.lwt, k),
            |refused: &Option<String>| refused.clone()
        );
        // Two partitions (the row and its log entry under another key), as a store's batch with
        // its outbox row: the coordinator writes a batchlog first.
        timed!(
            "batch",
            session.batch(&statements.batch, ((-k, 3_i64), (k, 1_i64, "batched"))),
            |_| None
        );
        let user = fresh_user("cl");
        let id = user.id;
        let created = event(&user);
        let signed_up = timed!(
            "signup",
            users.create(user, created),
            |c: &twtr_users::store::Created| {
                (*c != twtr_users::store::Created::Created).then(|| format!("{c:?}"))
            }
        );
        if signed_up.is_some() {
            timed!("user read", users.get(id), |u: &Option<_>| {
                u.is_none().then(|| "the new user is not there".to_owned())
            });
        }
    }
}

/// `UPDATE kv SET v = 2 WHERE k = ? IF v = 1` the way the stores run their lightweight
/// transactions: when its outcome is unknown (its coordinator died mid-round, a timeout), try
/// again; "not applied" with `v` already 2 means the first attempt took effect. `None` when it
/// took effect, else why not, with what the condition saw.
async fn lwt(
    session: &Session,
    statement: &scylla::statement::prepared::PreparedStatement,
    k: i64,
) -> Result<Option<String>, twtr_common::cql::CqlError> {
    use twtr_common::cql::Lwt;
    let mut unknown = false;
    for _ in 0..3 {
        let result = session.execute_unpaged(statement, (2_i64, k, 1_i64)).await;
        match twtr_common::cql::lwt(result)? {
            Lwt::Applied => return Ok(None),
            Lwt::NotApplied(columns) => {
                let already = matches!(columns.get("v"), Some(scylla::value::CqlValue::BigInt(2)));
                let after = if unknown {
                    "after an attempt of unknown outcome"
                } else {
                    "at the first attempt"
                };
                return Ok((!(unknown && already)).then(|| {
                    format!("the only writer's LWT was not applied {after}: it saw {columns:?}")
                }));
            }
            Lwt::Unknown(_) => unknown = true,
        }
    }
    Ok(Some(
        "the only writer's LWT was not applied: its outcome stayed unknown after 3 attempts"
            .to_owned(),
    ))
}

/// Whether the driver holds a working connection to the node at `ip`.
fn driver_connected(session: &Session, ip: IpAddr) -> bool {
    session
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .any(|node| node.address.ip() == ip && node.is_connected())
}

/// Whether every other running node's gossip has logged node `node` as `state` (UP or DOWN),
/// from `scripts/cassandra.sh status --cluster`.
async fn peers_see(node: usize, state: &str) -> bool {
    let path = format!("{}/scripts/cassandra.sh", env!("CARGO_MANIFEST_DIR"));
    let Ok(out) = Command::new(&path)
        .args(["status", "--cluster"])
        .output()
        .await
    else {
        return false;
    };
    let status = String::from_utf8_lossy(&out.stderr);
    let peers: Vec<&str> = status
        .lines()
        .filter(|line| line.contains(" sees ") && !line.contains(&format!(": node{node} ")))
        .collect();
    !peers.is_empty()
        && peers
            .iter()
            .all(|line| line.contains(&format!("node{node} {state}")))
}

/// The time since `started` at which `session`'s driver holds (`true`) or has lost (`false`) its
/// connection to `ip`.
async fn driver_sees(session: &Session, ip: IpAddr, connected: bool, started: Instant) -> Duration {
    eventually(
        "the driver's view of the node",
        Duration::from_secs(180),
        || {
            let now = driver_connected(session, ip) == connected;
            async move { now.then(|| started.elapsed()) }
        },
    )
    .await
}

#[ignore = "needs the three-node clusters scripts/test.sh starts; runs after the fault suite"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_a_restart_fails_nothing_and_a_crash_only_batches_until_the_peers_notice() {
    let Some(nodes) = opted_in("TWTR_TEST_SCYLLA_CLUSTER") else {
        return;
    };
    assert_eq!(
        nodes.len(),
        3,
        "three contact points, node 1 to 3 of the cluster"
    );
    // The first contact point: the driver's control connection goes with it.
    let victim = 1_usize;
    let victim_ip: IpAddr = nodes[victim - 1]
        .split(':')
        .next()
        .and_then(|host| host.parse().ok())
        .expect("contact points are ip:port");
    let prefix = format!("cl{}", twtr_common::clock::now_millis());
    let _drop = KeyspaceSet {
        nodes: nodes.clone(),
        prefix: prefix.clone(),
        services: twtr::backends::SCHEMAS.iter().map(|s| s.service).collect(),
    };

    // `twtr migrate` as an operator runs it for a production-like cluster. Cassandra 5 does not
    // retry a lost schema pull, so a node can miss a change for good (seen here: the node the
    // driver had not connected to yet when the first keyspace was created). `twtr migrate` then
    // fails, naming the remedy; an operator applies it and migrates again, and so does this test
    // (`cassandra.sh agree` resets the schema of a node left behind).
    let mut migrate = cql_env(&nodes, &prefix);
    migrate.extend(
        [
            ("TWTR_SCYLLA_REPLICATION", "dc1:3"),
            ("TWTR_SCYLLA_LOCAL_DC", "dc1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let migrate_began = Instant::now();
    let (mut migrated, mut log) = run_migrate(&migrate).await;
    if !migrated {
        eprintln!("twtr migrate failed: the nodes agree on a schema, then again. Its log:\n{log}");
        script("cassandra.sh", &["agree"]).await;
        (migrated, log) = run_migrate(&migrate).await;
    }
    assert!(migrated, "twtr migrate with dc1:3 failed:\n{log}");
    let migrate_took = migrate_began.elapsed();

    let mut config = CqlConfig::new(nodes.clone());
    config.keyspace_prefix = prefix.clone();
    config.replication = "dc1:3".parse::<Replication>().expect("valid");
    config.local_dc = Some("dc1".to_owned());
    let session = connect(&config).await.expect("connect");
    let (class, factor): (String, String) = {
        let rows = session
            .query_unpaged(
                "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
                (format!("{prefix}_users"),),
            )
            .await
            .expect("read the keyspace")
            .into_rows_result()
            .expect("rows");
        let (map,): (std::collections::HashMap<String, String>,) =
            rows.single_row().expect("one keyspace");
        (map["class"].clone(), map["dc1"].clone())
    };
    assert!(
        class.ends_with("NetworkTopologyStrategy") && factor == "3",
        "{class} {factor}"
    );

    let failover = format!("{prefix}_failover");
    for ddl in [
        format!(
            "CREATE KEYSPACE {failover} WITH replication = {}",
            config.replication.to_cql()
        ),
        format!("CREATE TABLE {failover}.kv (k bigint PRIMARY KEY, v bigint)"),
        format!(
            "CREATE TABLE {failover}.log (k bigint, seq bigint, note text, PRIMARY KEY (k, seq))"
        ),
    ] {
        schema_change(&session, ddl)
            .await
            .expect("DDL, agreed on by every node");
    }
    let ks = Keyspace::new(Arc::clone(&session), &config, "failover").expect("keyspace");
    let statements = Arc::new(prepare(&ks).await);
    let users = Arc::new(
        CqlUserStore::new(
            Keyspace::new(Arc::clone(&session), &config, "users").expect("ks"),
            Arc::new(twtr_common::IdGenerator::new(7).expect("worker 7")),
        )
        .await
        .expect("users store"),
    );

    let record = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                Arc::clone(&session),
                Arc::clone(&statements),
                Arc::clone(&users),
                Arc::clone(&record),
                started,
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        record.coordinated_since(victim_ip, Duration::ZERO),
        "before anything happens, node {victim} coordinates requests too"
    );

    // A rolling restart: the node says goodbye, then comes back.
    let stop_at = started.elapsed();
    script("cassandra.sh", &["stop", &victim.to_string()]).await;
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restart1_at = started.elapsed();
    script("cassandra.sh", &["start", &victim.to_string()]).await;
    let up1_at = started.elapsed();
    let back1_at = eventually(
        "the node to coordinate requests again",
        Duration::from_secs(120),
        || {
            let back = record.coordinated_since(victim_ip, up1_at);
            async move { back.then(|| started.elapsed()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A crash: kill -9, no goodbye; the other nodes find out through their failure detector.
    let victim_arg = victim.to_string();
    let kill = ["kill", victim_arg.as_str()];
    let killed_at = started.elapsed();
    let (noticed_at, ()) = tokio::join!(
        driver_sees(&session, victim_ip, false, started),
        script("cassandra.sh", &kill)
    );
    let convicted_at = eventually(
        "the other nodes to mark the killed one down",
        Duration::from_secs(120),
        || async move { peers_see(victim, "DOWN").await.then(|| started.elapsed()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let restart2_at = started.elapsed();
    script("cassandra.sh", &["start", &victim.to_string()]).await;
    let up2_at = started.elapsed();
    let reconnected_at = driver_sees(&session, victim_ip, true, started).await;
    let back2_at = eventually(
        "the node to coordinate requests again",
        Duration::from_secs(120),
        || {
            let back = record.coordinated_since(victim_ip, up2_at);
            async move { back.then(|| started.elapsed()) }
        },
    )
    .await;
    // Every replica answers again: a read at ALL (all three) succeeds.
    let mut all = statements.read.clone();
    all.set_consistency(Consistency::All);
    let k = i64::try_from(unique_id()).expect("IDs fit in a bigint");
    session
        .execute_unpaged(&statements.write, (k, 1_i64))
        .await
        .expect("write");
    let all_at = eventually("a read at ALL to succeed", Duration::from_secs(60), || {
        let (session, all) = (Arc::clone(&session), all.clone());
        async move {
            session
                .execute_unpaged(&all, (k,))
                .await
                .is_ok()
                .then(|| started.elapsed())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    // Best effort: a node just started may not know the keyspace's tables yet ("Unknown CF"),
    // so the drop is tried for a while; a keyspace left behind is only disk on a test cluster.
    let drop_keyspace = format!("DROP KEYSPACE IF EXISTS {failover}");
    let mut dropped = None;
    for _ in 0..15 {
        match session.query_unpaged(drop_keyspace.as_str(), ()).await {
            Ok(_) => {
                dropped = None;
                break;
            }
            Err(err) => dropped = Some(err),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some(err) = dropped {
        eprintln!("left the keyspace {failover} behind: {}", error_chain(&err));
    }

    // The report.
    let outcomes = record.outcomes.lock().unwrap().clone();
    eprintln!(
        "cassandra cluster {nodes:?}: twtr migrate (dc1:3) took {}",
        secs(migrate_took)
    );
    eprintln!(
        "rolling restart of node {victim}: stopped in {}; started again at {}, answering and seen up \
         by its peers {} later, coordinating requests {} after that",
        secs(stopped_at - stop_at),
        secs(restart1_at),
        secs(up1_at - restart1_at),
        secs(back1_at.saturating_sub(up1_at)),
    );
    eprintln!(
        "kill -9 of node {victim} at {}: the driver saw it down {} later, its peers {} later; \
         started again at {}, answering and seen up by its peers {} later; the driver reconnected \
         {} and routed requests to it {} after that; a read at ALL succeeded {} after it was up",
        secs(killed_at),
        secs(noticed_at.saturating_sub(killed_at)),
        secs(convicted_at.saturating_sub(killed_at)),
        secs(restart2_at),
        secs(up2_at - restart2_at),
        secs(reconnected_at.saturating_sub(up2_at)),
        secs(back2_at.saturating_sub(up2_at)),
        secs(all_at.saturating_sub(up2_at)),
    );
    let phases = [
        ("before", Duration::ZERO, stop_at),
        ("stopping (SIGTERM)", stop_at, stopped_at),
        ("stopped", stopped_at, restart1_at),
        ("restarting", restart1_at, up1_at),
        ("back", up1_at, killed_at),
        ("killed, driver unaware", killed_at, noticed_at),
        ("driver aware, peers not", noticed_at, convicted_at),
        ("down, peers aware", convicted_at, restart2_at),
        ("restarting", restart2_at, up2_at),
        ("back", up2_at, Duration::MAX),
    ];
    for (phase, from, to) in phases {
        let in_phase: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent < to)
            .collect();
        let mut line = format!(
            "  {phase:<24} {:>6}",
            secs(to.min(started.elapsed()) - from)
        );
        for kind in ["write", "read", "lwt", "batch", "signup", "user read"] {
            let of_kind: Vec<&&Outcome> = in_phase.iter().filter(|o| o.kind == kind).collect();
            let failed = of_kind.iter().filter(|o| o.error.is_some()).count();
            let slowest = of_kind.iter().map(|o| o.took).max().unwrap_or_default();
            line.push_str(&format!(
                " | {kind} {failed}/{} failed, max {}ms",
                of_kind.len(),
                slowest.as_millis()
            ));
        }
        eprintln!("{line}");
        for o in in_phase.iter().filter(|o| o.error.is_some()) {
            eprintln!(
                "      {} sent at {}, failed after {}ms: {}",
                o.kind,
                secs(o.sent),
                o.took.as_millis(),
                o.error.as_deref().unwrap_or_default()
            );
        }
    }
    let coordinators = record.coordinators.lock().unwrap().clone();
    eprintln!("  writes coordinated per node (count, last at): {coordinators:?}");

    // The failures among the requests sent in `from..to` of the `kinds` given.
    let failed = |from: Duration, to: Duration, kinds: &[&str]| -> Vec<String> {
        outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent < to && kinds.contains(&o.kind))
            .filter_map(|o| {
                o.error
                    .as_ref()
                    .map(|e| format!("{} at {}: {e}", o.kind, secs(o.sent)))
            })
            .collect()
    };
    let all_kinds = ["write", "read", "lwt", "batch", "signup", "user read"];
    // What a rolling restart cost: failures among the requests over before the kill.
    let restart_failures: Vec<String> = outcomes
        .iter()
        .filter(|o| o.sent + o.took < killed_at)
        .filter_map(|o| {
            o.error
                .as_ref()
                .map(|e| format!("{} at {}: {e}", o.kind, secs(o.sent)))
        })
        .collect();
    assert!(
        restart_failures.is_empty(),
        "a rolling restart costs no request: {restart_failures:#?}"
    );
    let after_noticed = failed(noticed_at, Duration::MAX, &["write", "read", "lwt"]);
    assert!(
        after_noticed.is_empty(),
        "once the driver saw the node gone, no read, write or LWT fails: {after_noticed:#?}"
    );
    let after_convicted = failed(convicted_at, Duration::MAX, &all_kinds);
    assert!(
        after_convicted.is_empty(),
        "once the cluster marked the node down, nothing fails: {after_convicted:#?}"
    );
}

// ------------------------------------------------------------------------------------------------
// RabbitMQ
// ------------------------------------------------------------------------------------------------

/// The node (1-based, the script's numbering) whose URL has this `host:port`.
fn node_of(urls: &[String], broker: &str) -> usize {
    urls.iter()
        .position(|url| url.contains(&format!("@{broker}/")))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{broker} is not one of {urls:?}"))
}

/// Every quorum queue of the cluster and the node leading it, from `rabbitmqctl list_queues` on
/// the live node `alive` (a classic queue has no leader and is left out).
async fn queue_leaders(urls: &[String], alive: usize) -> Vec<(String, usize)> {
    let path = format!("{}/scripts/rabbitmq.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&path)
        .args([
            "ctl",
            &alive.to_string(),
            "-q",
            "list_queues",
            "name",
            "leader",
        ])
        .output()
        .await
        .expect("run rabbitmqctl");
    let mut leaders = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut columns = line.split_whitespace();
        let (Some(name), Some(leader)) = (columns.next(), columns.next()) else {
            continue;
        };
        // Nodes are twtr<port>@localhost.
        let Some(port) = leader
            .strip_prefix("twtr")
            .and_then(|rest| rest.split('@').next())
        else {
            continue;
        };
        leaders.push((name.to_owned(), node_of(urls, &format!("127.0.0.1:{port}"))));
    }
    leaders
}

/// The node leading the quorum queue `queue`.
async fn leader_of(urls: &[String], alive: usize, queue: &str) -> usize {
    let leaders = queue_leaders(urls, alive).await;
    leaders
        .iter()
        .find_map(|(name, node)| (name == queue).then_some(*node))
        .unwrap_or_else(|| panic!("no leader for {queue} in {leaders:?}"))
}

/// What the publisher and the consumer saw, with when (since the test started).
#[derive(Default)]
struct Flow {
    confirmed: Mutex<BTreeMap<u64, Duration>>,
    received: Mutex<BTreeMap<u64, Duration>>,
    /// Publish attempts that failed (each retried until confirmed), with when and why.
    failed_publishes: Mutex<Vec<(Duration, String)>>,
    /// Deliveries handed to the consumer, duplicates included.
    deliveries: AtomicU64,
}

impl Flow {
    /// The first moment after `after` at which a message was confirmed / received.
    fn first_after(map: &Mutex<BTreeMap<u64, Duration>>, after: Duration) -> Option<Duration> {
        map.lock()
            .unwrap()
            .values()
            .copied()
            .filter(|t| *t > after)
            .min()
    }
}

/// Kills `node`, waits until the bus and the flow are back, starts the node again; returns the
/// report line.
async fn kill_and_restart(
    what: &str,
    node: usize,
    bus: &RabbitBus,
    urls: &[String],
    flow: &Flow,
    started: Instant,
) -> String {
    let before = bus.broker();
    let killed = urls[node - 1]
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let node_arg = node.to_string();
    let kill = ["kill", node_arg.as_str()];
    // What follows is measured from the SIGKILL (the script sends it as it starts).
    let gone_at = started.elapsed();
    // Connected, and not to the node being killed (watched from the kill on, as the bus may
    // notice before the script returns).
    let ((), reconnected) = tokio::join!(
        script("rabbitmq.sh", &kill),
        eventually("the bus to be connected", Duration::from_secs(60), || {
            let broker = bus.broker().filter(|b| *b != killed);
            async move { broker.map(|b| (b, started.elapsed())) }
        })
    );
    eventually(
        "a publish confirmed after the kill",
        Duration::from_secs(60),
        || {
            let t = Flow::first_after(&flow.confirmed, gone_at);
            async move { t }
        },
    )
    .await;
    // Publishing goes on steadily (a new leader took over), then look at what happened.
    eventually(
        "publishing to go on without failures for 3 s",
        Duration::from_secs(120),
        || {
            let last = flow
                .failed_publishes
                .lock()
                .unwrap()
                .last()
                .map_or(gone_at, |(t, _)| *t)
                .max(gone_at);
            let quiet = started.elapsed().saturating_sub(last) > Duration::from_secs(3)
                && Flow::first_after(&flow.confirmed, last).is_some();
            async move { quiet.then_some(()) }
        },
    )
    .await;
    let failures: Vec<(Duration, String)> = flow
        .failed_publishes
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= gone_at)
        .cloned()
        .collect();
    let last_failure = failures.iter().map(|(t, _)| *t).max().unwrap_or(gone_at);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, why) in &failures {
        *reasons.entry(why.as_str()).or_default() += 1;
    }
    let resumed = Flow::first_after(&flow.confirmed, last_failure.max(gone_at)).unwrap_or_default();
    let first_failure = failures.iter().map(|(t, _)| *t).min().unwrap_or(gone_at);
    // Consumption resumed: the first message published after the kill is consumed.
    let consumed = {
        let confirmed = flow.confirmed.lock().unwrap();
        flow.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| confirmed.get(id).is_some_and(|t| *t > gone_at))
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_default()
    };
    let restart_at = started.elapsed();
    script("rabbitmq.sh", &["start", &node.to_string()]).await;
    let back_at = started.elapsed();
    format!(
        "{what}: kill -9 node {node} (bus on {}) at {}; bus on {} {} later; {} publish \
         attempts failed from {} to {} after the kill (each retried until confirmed: {reasons:?}), \
         publishing confirmed steadily again {} after the kill; first message published after the kill consumed {} after it; node started \
         again, back in the cluster in {}",
        before.unwrap_or_default(),
        secs(gone_at),
        reconnected.0,
        secs(reconnected.1.saturating_sub(gone_at)),
        failures.len(),
        secs(first_failure.saturating_sub(gone_at)),
        secs(last_failure.saturating_sub(gone_at)),
        secs(resumed.saturating_sub(gone_at)),
        secs(consumed.saturating_sub(gone_at)),
        secs(back_at - restart_at),
    )
}

/// How many quorum queues each node leads, cluster-wide (every test run's queues, until they
/// expire).
async fn leaders_per_node(urls: &[String], alive: usize) -> BTreeMap<usize, usize> {
    let mut per_node = BTreeMap::new();
    for (_, node) in queue_leaders(urls, alive).await {
        *per_node.entry(node).or_insert(0) += 1;
    }
    per_node
}

#[ignore = "needs the three-node clusters scripts/test.sh starts; runs after the fault suite"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_a_killed_node_loses_no_confirmed_message() {
    let Some(urls) = opted_in("TWTR_TEST_AMQP_CLUSTER") else {
        return;
    };
    assert_eq!(urls.len(), 3, "three URLs, node 1 to 3 of the cluster");
    let prefix = conformance::unique("twtr-cluster");
    let config = RabbitConfig {
        url: urls.join(","),
        prefix: prefix.clone(),
        queue_type: QueueType::Quorum,
        queue_expiry: Some(Duration::from_secs(600)),
        connection_name: "twtr cluster test".into(),
    };
    let bus = RabbitBus::connect(config, Duration::from_secs(30)).await;
    assert!(
        bus.readiness().is_ready(),
        "the bus connects to the cluster"
    );
    let spec = QueueSpec::new("flow", &["cluster.#"]);
    let mut subscription = bus.subscribe(&spec).await.expect("subscribe");
    let queue = format!("{prefix}.flow");

    let flow = Arc::new(Flow::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let consumer = {
        let flow = Arc::clone(&flow);
        tokio::spawn(async move {
            loop {
                let delivery = subscription.next().await.expect("the subscription goes on");
                flow.deliveries.fetch_add(1, Ordering::Relaxed);
                let id = delivery.decode().expect("decodes").event_id;
                // An ack on a connection that died meanwhile fails: the message comes again.
                if delivery.ack().await.is_ok() {
                    flow.received
                        .lock()
                        .unwrap()
                        .entry(id)
                        .or_insert(started.elapsed());
                }
            }
        })
    };
    let next_id = Arc::new(AtomicU64::new(1));
    let publisher = {
        let (bus, flow, stop, next_id) = (
            bus.clone(),
            Arc::clone(&flow),
            Arc::clone(&stop),
            Arc::clone(&next_id),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let message = conformance::event(id, "cluster.flow");
                // As the outbox does: a message is forgotten only once the broker confirmed it.
                loop {
                    match publish(&bus, &message).await {
                        Ok(()) => {
                            flow.confirmed.lock().unwrap().insert(id, started.elapsed());
                            break;
                        }
                        Err(err) => {
                            flow.failed_publishes
                                .lock()
                                .unwrap()
                                .push((started.elapsed(), error_chain(&err)));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    // First the node the bus is connected to (the bus must move), then whichever node leads
    // the queue at that point (its replicas must elect another leader under the load).
    let first = node_of(&urls, &bus.broker().expect("connected"));
    let leader_before = leader_of(&urls, first % 3 + 1, &queue).await;
    let leaders = leaders_per_node(&urls, first).await;
    let failed_before = flow.failed_publishes.lock().unwrap().len();
    let report_a = kill_and_restart("the bus's node", first, &bus, &urls, &flow, started).await;
    let moved_to = bus.broker().expect("connected");
    let leader = leader_of(&urls, first, &queue).await;
    let report_b =
        kill_and_restart("the queue's leader", leader, &bus, &urls, &flow, started).await;

    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let confirmed: HashSet<u64> = flow.confirmed.lock().unwrap().keys().copied().collect();
    eventually(
        "every confirmed message to be consumed",
        Duration::from_secs(60),
        || {
            let received: HashSet<u64> = flow.received.lock().unwrap().keys().copied().collect();
            let missing = confirmed.difference(&received).count();
            async move { (missing == 0).then_some(()) }
        },
    )
    .await;
    consumer.abort();

    eprintln!(
        "rabbitmq cluster {:?}",
        urls.iter()
            .filter_map(|u| u.split('@').nth(1)?.split('/').next())
            .collect::<Vec<_>>()
    );
    eprintln!(
        "  queue {queue}: leader node {leader_before} at the start, node {leader} before the second \
         kill; leaders of the cluster's {} quorum queues per node: {leaders:?}; {failed_before} \
         publish attempts failed before the first kill",
        leaders.values().sum::<usize>()
    );
    eprintln!("  {report_a}");
    eprintln!("  {report_b}");
    eprintln!(
        "  {} messages confirmed, every one consumed ({} deliveries in all: a delivery whose ack \
         was lost with its connection comes again)",
        confirmed.len(),
        flow.deliveries.load(Ordering::Relaxed)
    );
    assert_ne!(
        node_of(&urls, &moved_to),
        first,
        "the bus moved to another node when its own was killed"
    );
}
