//! Pushes events through one CQL outbox relay on a real node and traces the relay's polls: how
//! many live rows and tombstone cells each poll reads (Cassandra's `Read N live rows and M
//! tombstone cells` trace events), how fast the relay goes, and how the events spread over the
//! outbox shards. The measurement behind the second outbox (`cql/users/003_outbox_by_time.cql`).
//!
//! ```sh
//! cargo run --example outbox_tombstones                       # 100,000 events, 127.0.0.1:9042
//! OUTBOX_EVENTS=20000 TWTR_TEST_SCYLLA_NODES=10.0.0.5 cargo run --example outbox_tombstones
//! ```
//!
//! Each event is staged as a store stages one: in a logged batch with its domain row (here a
//! `users` row, as a sign-up writes), by 32 writers at once. The relay publishes onto an
//! in-process bus (in a temporary directory) into one queue, which is counted but not consumed
//! (a consumer would measure the bus, not the relay). One relay poll is traced after every
//! fifth of the events, and every poll for 21 seconds once all are published (long enough to
//! catch a sweep). The keyspace (`obx<ms>_users`) is dropped at the end.
//!
//! # Results
//!
//! On the development machine (Cassandra 5.0 single node, 2 shared cores, debug build),
//! 100,000 events, the first outbox (8b9d315, with this example and the tracing hooks added
//! for the run) against this one:
//!
//! | | first outbox | this outbox |
//! |---|---|---|
//! | a poll at 20k / 60k / 100k staged: tombstone cells (all 16 reads) | 14,834 / 37,618 / 57,586 | 0 / 0 / 0 |
//! | an idle poll after all were published: live rows, tombstone cells | 0, 100,000 | 0, 0 |
//! | the most tombstone cells one read met | 8,034 | 0 |
//! | a regular sweep (every 20 s): live rows, tombstone cells | (none) | 100,000, 0 |
//! | events/s through the relay | 1,157 | 1,989 |
//! | events in the fullest shard (this run's IDs; IDs minted one per ms) | 8.0%; 100% | 6.4%; 6.5% |
//!
//! The first outbox's idle poll read one tombstone per event ever published and not yet
//! compacted away (gc_grace is an hour); one read that meets 100,000 (Cassandra's
//! tombstone_failure_threshold) fails. This one's hot path reads only what is new; the sweep
//! reads the last two minutes of rows (`seq` and `published`), live rows only. The two runs
//! were minutes apart on a machine shared with other builds: the rates are indicative.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a panic is the report

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;
use twtr_common::IdGenerator;
use twtr_common::bus::{EventBus, InProcessBus, QueueSpec};
use twtr_common::cql::{
    CqlConfig, CqlOutbox, Keyspace, OUTBOX_SHARDS, OutboxRead, TracedRead, connect, migrate,
    read_counts,
};
use twtr_common::relay::run_relay;
use twtr_proto::events::v1::Envelope;

const WRITERS: usize = 32;
const CHECKPOINTS: usize = 5;
const IDLE_TRACING: Duration = Duration::from_secs(21);
const QUEUE: &str = "outbox-tombstones";

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("OUTBOX_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let nodes: Vec<String> = std::env::var("TWTR_TEST_SCYLLA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut config = CqlConfig::new(nodes);
    config.keyspace_prefix = format!("obx{}", twtr_common::clock::now_millis());
    let session = connect(&config).await.unwrap();
    migrate(&session, &config, &twtr_users::SCHEMA)
        .await
        .unwrap();
    let keyspace = config.keyspace("users").unwrap();
    let outcome = tokio::spawn(run(session.clone(), config, events)).await;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .unwrap();
    outcome.unwrap();
}

async fn run(session: Arc<Session>, config: CqlConfig, events: usize) {
    let ks = Keyspace::new(session.clone(), &config, "users").unwrap();
    let outbox = Arc::new(
        CqlOutbox::new(
            ks.clone(),
            Arc::new(twtr_common::IdGenerator::new(2).unwrap()),
        )
        .await
        .unwrap(),
    );
    let insert_user = ks
        .prepare(
            "INSERT INTO {ks}.users (user_id, username, display_name, created_at, deleted) \
             VALUES (?, ?, ?, ?, false)",
        )
        .await
        .unwrap();
    let mut sign_up = Batch::new(BatchType::Logged);
    sign_up.append_statement(insert_user);
    sign_up.append_statement(outbox.insert().clone());

    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(InProcessBus::open(&dir.path().join("bus.redb")).unwrap());
    // Declares the queue and its binding; never asked for a delivery.
    let _queue = bus
        .subscribe(&QueueSpec::new(QUEUE, &["user.*"]))
        .await
        .unwrap();
    let on_the_bus = || async { bus.depths(QUEUE).await.unwrap().waiting as usize };
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(run_relay(
        "users",
        outbox.clone() as Arc<dyn twtr_common::outbox::Outbox>,
        bus.clone() as Arc<dyn EventBus>,
        stop.clone(),
    ));

    println!("## {events} events through one relay\n");
    println!("| after | reads | live rows | tombstone cells | most tombstones in one read |");
    println!("|---|---|---|---|---|");
    let ids = IdGenerator::new(1).unwrap();
    let mut per_shard = vec![0_usize; OUTBOX_SHARDS as usize];
    let started = Instant::now();
    let chunk = events.div_ceil(CHECKPOINTS);
    let mut staged = 0;
    while staged < events {
        let this_chunk = chunk.min(events - staged);
        let batch: Vec<Envelope> = (0..this_chunk).map(|_| user_created(&ids)).collect();
        for event in &batch {
            per_shard[twtr_common::cql::outbox_shard(event.aggregate_id) as usize] += 1;
        }
        futures_util::stream::iter(batch)
            .for_each_concurrent(WRITERS, |event| {
                let (session, sign_up, outbox) = (&session, &sign_up, &outbox);
                async move {
                    let user = (
                        event.aggregate_id as i64,
                        format!("u{}", event.aggregate_id),
                        "Outbox Bench",
                        CqlTimestamp(twtr_common::clock::now_millis()),
                    );
                    session
                        .batch(sign_up, (user, outbox.row(&event)))
                        .await
                        .unwrap();
                    outbox.notify();
                }
            })
            .await;
        staged += this_chunk;
        let reads = outbox.trace_relay_poll().await;
        report(
            &session,
            &format!("{staged} staged, {} published", on_the_bus().await),
            &reads,
        )
        .await;
    }
    let staged_in = started.elapsed();
    while on_the_bus().await < events {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published_in = started.elapsed();
    // Every poll for a while: the hot-path reads summed up, the sweeps shown one by one.
    let idle_from = Instant::now();
    let (mut polls, mut hot) = (0, Tally::default());
    while idle_from.elapsed() < IDLE_TRACING {
        let reads = outbox.trace_relay_poll().await;
        polls += 1;
        for (kind, tally) in tally(&session, &reads).await {
            if kind == OutboxRead::Forward {
                hot.add(&tally);
            } else {
                print_row(&format!("all published, idle poll {polls}"), kind, &tally);
            }
        }
    }
    print_row(
        &format!("all published, {polls} idle polls (sums)"),
        OutboxRead::Forward,
        &hot,
    );
    stop.cancel();
    relay.await.unwrap();
    let published = on_the_bus().await;

    println!(
        "\nStaged in {:.1} s; all {events} on the bus {:.1} s after the first was staged \
         ({:.0} events/s through the relay); {} published twice.\n",
        staged_in.as_secs_f64(),
        published_in.as_secs_f64(),
        events as f64 / published_in.as_secs_f64(),
        published.saturating_sub(events),
    );
    println!("## Spread over {OUTBOX_SHARDS} shards\n");
    print_spread("this run's events", &per_shard);
    // This run mints IDs several to a millisecond; a process that is not that busy mints one
    // at a time, whose 12-bit sequence (the low bits) is then 0.
    let mut quiet = vec![0_usize; OUTBOX_SHARDS as usize];
    let now = twtr_common::clock::now_millis() - twtr_common::id::EPOCH_MS;
    for ms in 0..events as u64 {
        let id = (now as u64 + ms) << 22;
        let event = Envelope {
            event_id: id,
            aggregate_id: id,
            ..Envelope::default()
        };
        quiet[twtr_common::cql::outbox_shard(event.aggregate_id) as usize] += 1;
    }
    print_spread("as many aggregate IDs minted one per millisecond", &quiet);
}

fn print_spread(what: &str, per_shard: &[usize]) {
    let total: usize = per_shard.iter().sum();
    let max = per_shard.iter().max().copied().unwrap_or(0);
    let min = per_shard.iter().min().copied().unwrap_or(0);
    println!(
        "- {what}: min {min}, max {max} a shard (mean {:.0}); the fullest shard has {:.1}%: \
         {per_shard:?}",
        total as f64 / per_shard.len() as f64,
        100.0 * max as f64 / total as f64
    );
}

/// A `UserCreated`-like event: a fresh user as aggregate, and the event's own fresh ID.
fn user_created(ids: &IdGenerator) -> Envelope {
    let aggregate_id = ids.next_id();
    Envelope {
        event_id: ids.next_id(),
        r#type: "user.created".to_owned(),
        aggregate_id,
        ..Envelope::default()
    }
}

/// What the traced reads of one kind met.
#[derive(Debug, Default)]
struct Tally {
    reads: usize,
    live_rows: u64,
    tombstone_cells: u64,
    /// The most tombstone cells one read met.
    worst: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.reads += other.reads;
        self.live_rows += other.live_rows;
        self.tombstone_cells += other.tombstone_cells;
        self.worst = self.worst.max(other.worst);
    }
}

/// The traced reads of a poll, tallied by kind.
async fn tally(session: &Session, reads: &[TracedRead]) -> Vec<(OutboxRead, Tally)> {
    let mut tallies = Vec::new();
    for kind in [OutboxRead::Forward, OutboxRead::Sweep, OutboxRead::Legacy] {
        let mut tally = Tally::default();
        for read in reads.iter().filter(|r| r.read == kind) {
            let counts = read_counts(session, read.tracing_id).await.unwrap();
            tally.reads += 1;
            tally.live_rows += counts.live_rows;
            tally.tombstone_cells += counts.tombstone_cells;
            tally.worst = tally.worst.max(counts.tombstone_cells);
        }
        if tally.reads > 0 {
            tallies.push((kind, tally));
        }
    }
    tallies
}

fn print_row(when: &str, kind: OutboxRead, tally: &Tally) {
    println!(
        "| {when} | {} {kind:?} | {} | {} | {} |",
        tally.reads, tally.live_rows, tally.tombstone_cells, tally.worst
    );
}

/// Prints one table row per kind of read in a traced poll.
async fn report(session: &Session, when: &str, reads: &[TracedRead]) {
    let tallies = tally(session, reads).await;
    if tallies.is_empty() {
        println!("| {when} | none (all served from memory) | | | |");
    }
    for (kind, tally) in &tallies {
        print_row(when, *kind, tally);
    }
}
