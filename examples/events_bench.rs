//! Measures the event path: how many events per second the outbox relay moves through a bus to a
//! consumer, and how long a post takes to reach a follower's feed. Prints a Markdown table.
//!
//! ```sh
//! cargo run --release --example events_bench                       # in-process bus only
//! TWTR_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run --release --example events_bench                     # and through RabbitMQ
//! ```
//!
//! Until `twtr bench` (the benchmark harness) exists, this is how the numbers in the closing
//! notes were taken. Everything runs on this machine: the generator competes with the mesh for
//! the same cores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a panic is the report

use std::sync::Arc;
use std::time::{Duration, Instant};

use twtr::{Amqp, Config, MeshListeners};
use twtr_common::bus::{EventBus, InProcessBus, QueueType, RabbitBus, RabbitConfig, conformance};
use twtr_common::embedded::EmbeddedDb;
use twtr_common::relay::run_relay;
use twtr_proto::events::v1::Envelope;

const RELAY_EVENTS: u64 = 20_000;
const POSTS: usize = 300;

#[tokio::main]
async fn main() {
    let amqp = std::env::var("TWTR_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty());
    println!("| measurement | bus | result |\n|---|---|---|");

    let dir = tempfile::tempdir().unwrap();
    let in_process: Arc<dyn EventBus> =
        Arc::new(InProcessBus::open(&dir.path().join("bus.redb")).unwrap());
    relay_throughput("in-process", in_process).await;
    if let Some(url) = &amqp {
        let bus = RabbitBus::connect(rabbit(url), Duration::from_secs(10)).await;
        relay_throughput("RabbitMQ", Arc::new(bus)).await;
    }

    post_to_feed("in-process", None).await;
    if let Some(url) = &amqp {
        let amqp = Amqp {
            url: url.clone(),
            prefix: conformance::unique("twtr-bench"),
            queue_type: QueueType::Quorum,
            queue_expiry: Some(Duration::from_secs(600)),
        };
        post_to_feed("RabbitMQ", Some(amqp)).await;
    }
}

fn rabbit(url: &str) -> RabbitConfig {
    RabbitConfig {
        url: url.to_owned(),
        prefix: conformance::unique("twtr-bench"),
        queue_type: QueueType::Quorum,
        queue_expiry: Some(Duration::from_secs(600)),
        connection_name: "twtr events bench".into(),
    }
}

/// Stages `RELAY_EVENTS` events in an outbox, then times the relay publishing them and one
/// consumer receiving and acknowledging every one.
async fn relay_throughput(name: &str, bus: Arc<dyn EventBus>) {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(&dir.path().join("svc.redb"), |_| Ok(())).unwrap();
    let topic = conformance::unique("bench");
    let mut sub = bus
        .subscribe(&twtr_common::bus::QueueSpec {
            prefetch: 256,
            ..conformance::spec(&conformance::unique("benchq"), &[format!("{topic}.*")])
        })
        .await
        .unwrap();
    for chunk in (1..=RELAY_EVENTS).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Envelope> = chunk
            .iter()
            .map(|id| conformance::event(*id, &format!("{topic}.happened")))
            .collect();
        db.write(move |tx| {
            for event in &events {
                tx.stage_event(event)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(run_relay(
        "bench",
        Arc::new(db),
        Arc::clone(&bus),
        stop.clone(),
    ));
    for _ in 0..RELAY_EVENTS {
        let delivery = sub.next().await.unwrap();
        delivery.ack().await.unwrap();
    }
    let elapsed = started.elapsed();
    stop.cancel();
    relay.await.unwrap();
    println!(
        "| relay → bus → consumer, {RELAY_EVENTS} events | {name} | {:.0} events/s |",
        RELAY_EVENTS as f64 / elapsed.as_secs_f64()
    );
}

/// Runs the all-in-one mesh (on RabbitMQ when `amqp` is given), has one user follow another,
/// and times each of `POSTS` posts from its 201 to its appearance in the follower's feed.
async fn post_to_feed(name: &str, amqp: Option<Amqp>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.amqp = amqp;
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let listeners = MeshListeners {
        http: bind().await,
        users: bind().await,
        tweets: bind().await,
        followers: bind().await,
        feeds: bind().await,
    };
    let http = format!("http://{}", listeners.http.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mesh = tokio::spawn(twtr::start(config, listeners.into(), shutdown.clone()));
    let client = reqwest::Client::new();
    wait_ready(&client, &http).await;

    let (_, reader) = user(&client, &http, "reader").await;
    let (author_id, author) = user(&client, &http, "author").await;
    let follow = client
        .post(format!("{http}/v1/users/{author_id}/follow"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 204);

    let mut latencies = Vec::with_capacity(POSTS);
    for n in 0..POSTS {
        let response = client
            .post(format!("{http}/v1/tweets"))
            .bearer_auth(&author)
            .json(&serde_json::json!({ "text": format!("bench {n}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let acknowledged = Instant::now();
        let tweet: serde_json::Value = response.json().await.unwrap();
        let id = tweet["id"].as_str().unwrap().to_owned();
        loop {
            let page: serde_json::Value = client
                .get(format!("{http}/v1/feed?limit=1"))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if page["items"][0]["id"] == id.as_str() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        latencies.push(acknowledged.elapsed());
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "| post 201 → follower's feed, {POSTS} posts (p50 / p99 / max) | {name} | {:.1} / {:.1} / {:.1} ms |",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
    shutdown.cancel();
    mesh.await.unwrap().unwrap();
}

async fn wait_ready(client: &reqwest::Client, http: &str) {
    for _ in 0..200 {
        if let Ok(response) = client.get(format!("{http}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the mesh did not become ready");
}

async fn user(client: &reqwest::Client, http: &str, name: &str) -> (String, String) {
    let body = serde_json::json!({ "username": name, "password": "benchmark-password" });
    let created: serde_json::Value = client
        .post(format!("{http}/v1/users"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session: serde_json::Value = client
        .post(format!("{http}/v1/sessions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        session["token"].as_str().unwrap().to_owned(),
    )
}
