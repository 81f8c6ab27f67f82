//! The whole mesh on the clusters: the four services and the gateway as separate processes, every
//! service on the three-node Cassandra cluster (an RF 3 keyspace set, `LOCAL_QUORUM`) and on the
//! three-node RabbitMQ cluster (quorum queues, every node's URL), under the fault suite's steady
//! mixed load and its model of what the clients did. One Cassandra node is killed with `kill -9`
//! and started again, then the broker node leading the feeds queue.
//!
//! Afterwards, as in the fault suite: every acknowledged write is there, every feed is what the
//! model says, counts are exact, nothing is duplicated, no dead letter. During each node loss no
//! request may fail in a way the client has to see: a write answered 503 or 504 is retried by the
//! client (with its `Idempotency-Key`) and counted, not failed; a read of the home feed is not
//! retried, so any read not answered 200 fails the test. Each loss reports its requests, the
//! retried ones, what the attempts were answered, and the p99 of what began during it.

use std::time::{Duration, Instant};

use twtr_common::cql::testing::KeyspaceSet;

use super::{leader_of, opted_in, script, secs};
use crate::faults::{FaultMesh, Load, Report, Stats};
use crate::processes::{cql_env, unique_keyspace_prefix};

/// How long a killed node stays down before it is started again: past the Cassandra peers'
/// failure detector (about 20 s), so the loss is seen in full by everyone.
const CASSANDRA_DOWN: Duration = Duration::from_secs(30);
/// A killed broker node: the quorum queues elect new leaders within seconds.
const BROKER_DOWN: Duration = Duration::from_secs(15);
/// The load goes on this long after a node is back before the loss is summed up.
const AFTER: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node clusters scripts/test.sh starts; runs after the fault suite"]
async fn a_node_of_each_cluster_lost_under_load_fails_no_request_and_loses_nothing() {
    let (Some(nodes), Some(urls)) = (
        opted_in("TWTR_TEST_SCYLLA_CLUSTER"),
        opted_in("TWTR_TEST_AMQP_CLUSTER"),
    ) else {
        return;
    };
    let began = Instant::now();
    let mut report = Report::default();
    let prefix = unique_keyspace_prefix();
    let _drop = KeyspaceSet {
        nodes: nodes.clone(),
        prefix: prefix.clone(),
        services: twtr::backends::SCHEMAS.iter().map(|s| s.service).collect(),
    };
    let mut cql = cql_env(&nodes, &prefix);
    cql.extend(
        [
            ("TWTR_SCYLLA_REPLICATION", "dc1:3"),
            ("TWTR_SCYLLA_LOCAL_DC", "dc1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let services = ["users", "tweets", "followers", "feeds"];
    // The Cassandra test before this one restarted node 1 and then dropped its keyspaces: the
    // nodes agree on one schema before this test's migration changes it (the script resets the
    // schema of a node Cassandra left behind; see `cassandra.sh agree`).
    script("cassandra.sh", &["agree"]).await;
    let mesh = FaultMesh::start_on("on the clusters", &urls.join(","), cql, &services).await;
    report.line(format!("setup: {:.0?}", began.elapsed()));
    let load = Load::start(&mesh).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. A Cassandra node: node 1, the first contact point (the driver's control connection).
    let loss = Loss::begin(&load);
    script("cassandra.sh", &["kill", "1"]).await;
    tokio::time::sleep(CASSANDRA_DOWN).await;
    let restarting = Instant::now();
    script("cassandra.sh", &["start", "1"]).await;
    let restarted = restarting.elapsed();
    let cassandra = loss.end(&load, "kill -9 of Cassandra node 1").await;
    report.line(format!(
        "{cassandra}; started again and seen up by its peers in {}",
        secs(restarted)
    ));

    // 2. The broker node leading the feeds queue (where the feed fan-out waits).
    let queue = format!("{}.feeds", mesh.prefix);
    let leader = leader_of(&urls, 1, &queue).await;
    let loss = Loss::begin(&load);
    script("rabbitmq.sh", &["kill", &leader.to_string()]).await;
    tokio::time::sleep(BROKER_DOWN).await;
    let restarting = Instant::now();
    script("rabbitmq.sh", &["start", &leader.to_string()]).await;
    let restarted = restarting.elapsed();
    let broker = loss
        .end(
            &load,
            &format!("kill -9 of RabbitMQ node {leader} (leading {queue})"),
        )
        .await;
    report.line(format!(
        "{broker}; started again and back in the cluster in {}",
        secs(restarted)
    ));
    let drained = mesh.probe_delivery(&load).await;
    report.line(format!(
        "a post made after both losses reached a follower's feed {drained:.1?} later"
    ));

    let stats = load.stop().await;
    report.line(format!(
        "load: {} operations ({} retried), attempts answered {:?}, {} met a closed connection, {} feed reads not 200",
        stats.operations,
        stats.retried_operations,
        stats.statuses,
        stats.transport_errors,
        stats.failed_reads
    ));
    let verifying = Instant::now();
    mesh.verify().await;
    report.line(format!(
        "converged and verified in {:.1?}; events retried: {}; consumer pauses: {}",
        verifying.elapsed(),
        mesh.logged("event handler failed, will retry"),
        mesh.logged("the consumer's store does not answer"),
    ));
    report.line(format!(
        "peak resident memory: Cassandra nodes {}, RabbitMQ nodes {}",
        peak_memory(".cassandra-cluster", "cassandra.pid"),
        peak_memory(".rabbitmq-cluster", "pid"),
    ));
    report.line(format!("whole test: {:.0?}", began.elapsed()));
    report.print();
    assert!(
        stats.violations.is_empty(),
        "answers no client may get: {:#?}",
        stats.violations
    );
    assert_eq!(
        stats.failed_reads, 0,
        "every read of a home feed must be answered 200 while a node is down"
    );
    drop(mesh);
}

/// One node loss, measured from just before the kill until the node is back and the load has
/// run on a little.
struct Loss {
    began: Instant,
    before: Stats,
}

impl Loss {
    fn begin(load: &Load) -> Self {
        Self {
            began: Instant::now(),
            before: load.stats.snapshot(),
        }
    }

    /// The report line of the loss: what the load did and met during it.
    async fn end(self, load: &Load, what: &str) -> String {
        let back = Instant::now();
        tokio::time::sleep(AFTER).await;
        let now = load.stats.snapshot();
        let during = now.since(&self.before);
        let (began_while_down, p99_down) = now.p99_began_within(self.began, back);
        let (_, p99_first_30s) =
            now.p99_began_within(self.began, self.began + Duration::from_secs(30));
        format!(
            "{what}: {} operations landed ({} of them retried after a 503, a 504 or a closed \
             connection), attempts answered {:?}, {} met a closed connection, {} feed reads not \
             200, {} operations failed; of the {began_while_down} requests begun while the node \
             was down, p99 {} (first 30 s: {})",
            during.operations,
            during.retried_operations,
            during.statuses,
            during.transport_errors,
            during.failed_reads,
            during.violations.len(),
            secs(p99_down),
            secs(p99_first_30s),
        )
    }
}

/// The largest peak resident set (VmHWM) among the nodes of a cluster the scripts run, from each
/// node's pid file under `dir` (the scripts' default cluster directories, or the ones the
/// environment names).
fn peak_memory(default_dir: &str, pid_file: &str) -> String {
    let var = if pid_file == "pid" {
        "TWTR_RABBITMQ_DIR"
    } else {
        "TWTR_CASSANDRA_DIR"
    };
    let dir = std::env::var(var)
        .unwrap_or_else(|_| format!("{}/{default_dir}", env!("CARGO_MANIFEST_DIR")));
    let peaks: Vec<String> = (1..=3)
        .filter_map(|node| {
            let pid = std::fs::read_to_string(format!("{dir}/node{node}/{pid_file}")).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
            let kb: u64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{} MiB", kb / 1024))
        })
        .collect();
    if peaks.is_empty() {
        "unknown".to_owned()
    } else {
        peaks.join(", ")
    }
}
