//! Measures the feeds service's fan-out on write, handler and store only (no bus, no gateway):
//! how long one author's `TweetCreated` takes to land in every follower's feed, and the feed
//! entries written per second, on the embedded store and (with `TWTR_SCYLLA_NODES`) on CQL.
//!
//! ```sh
//! cargo run --release --example fanout_bench                          # embedded
//! TWTR_SCYLLA_NODES=127.0.0.1:9042 cargo run --release --example fanout_bench  # and CQL
//! ```
//!
//! The end-to-end path (post's 201 to a follower's feed, through the outbox and a bus) is
//! `twtr bench`'s fan-out visibility; this isolates the part that grows with the follower count.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a panic is the report

use std::sync::Arc;
use std::time::Instant;

use twtr_common::bus::EventHandler as _;
use twtr_common::cql::{CqlConfig, Keyspace};
use twtr_feeds::{CqlFeedStore, EmbeddedFeedStore, FeedLimits, FeedStore, Feeds};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, TweetCreated, UserFollowed};

/// Followers of the one author (`FANOUT_FOLLOWERS`), and tweets measured (`FANOUT_TWEETS`).
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let (followers, tweets) = (
        setting("FANOUT_FOLLOWERS", 10_000),
        setting("FANOUT_TWEETS", 5),
    );
    println!("| store | followers | tweet → every feed (each of {tweets}) | feed entries/s |");
    println!("|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        EmbeddedFeedStore::open(&dir.path().join("feeds.redb"), FeedLimits::default()).unwrap();
    measure("embedded (redb)", Arc::new(embedded), followers, tweets).await;
    if let Ok(nodes) = std::env::var("TWTR_SCYLLA_NODES") {
        let mut config = CqlConfig::new(nodes.split(',').map(str::to_owned).collect());
        config.keyspace_prefix = format!("fanout{}", std::process::id());
        let session = twtr_common::cql::connect(&config).await.unwrap();
        twtr_common::cql::migrate(&session, &config, &twtr_feeds::SCHEMA)
            .await
            .unwrap();
        let ks = Keyspace::new(Arc::clone(&session), &config, "feeds").unwrap();
        let store = CqlFeedStore::new(ks, FeedLimits::default()).await.unwrap();
        measure(
            "CQL (Cassandra 5, 1 node)",
            Arc::new(store),
            followers,
            tweets,
        )
        .await;
        let keyspace = config.keyspace("feeds").unwrap();
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await
            .unwrap();
    }
}

fn event(payload: Payload) -> Envelope {
    twtr_common::events::envelope(1, 1, payload)
}

async fn measure(name: &str, store: Arc<dyn FeedStore>, followers: u64, tweets: u64) {
    let feeds = Feeds::new(store);
    let author = 1;
    for follower in 0..followers {
        let followed = Payload::UserFollowed(UserFollowed {
            follower_id: 1_000_000 + follower,
            followee_id: author,
            version: 1,
        });
        feeds.handle(&event(followed)).await.unwrap();
    }
    let mut times = Vec::new();
    for n in 0..tweets {
        let created = Payload::TweetCreated(TweetCreated {
            tweet_id: 1_000 + n,
            author_id: author,
            ..TweetCreated::default()
        });
        let started = Instant::now();
        feeds.handle(&event(created)).await.unwrap();
        times.push(started.elapsed());
    }
    let total: f64 = times.iter().map(|t| t.as_secs_f64()).sum();
    let entries = ((followers + 1) * tweets) as f64;
    let each: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3))
        .collect();
    println!(
        "| {name} | {followers} | {} | {:.0} |",
        each.join(", "),
        entries / total
    );
}
