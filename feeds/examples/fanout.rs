//! Fan-out on the embedded feeds store alone, without the mesh: how many feed entries per
//! second the feeds service's own event handling writes, and how many bytes each costs.
//!
//! It drives [`Feeds`] (the service's domain logic, exactly as the event consumer does) with
//! `TweetCreated` events, `--concurrency` at a time (the consumer's prefetch: 512 by default, as
//! on the embedded store), over a store seeded with a follow graph (`--users`, each following
//! `--follows` others at random) and feeds already holding entries (`--prefill` tweets fanned
//! out first).
//!
//! ```text
//! cargo run --release -p twtr-feeds --example fanout -- --users 2000 --follows 100 --tweets 2000
//! ```
//!
//! The bytes written are the process's (`/proc/self/io`), so they include redb's page writes
//! and nothing else: nothing else writes.

#![allow(clippy::expect_used)] // a measuring tool: a failed write is the report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::StreamExt as _;
use twtr_common::bus::EventHandler as _;
use twtr_feeds::service::Feeds;
use twtr_feeds::store::{EmbeddedFeedStore, FeedLimits};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{TweetCreated, UserFollowed};

struct Args {
    users: u64,
    follows: u64,
    prefill: u64,
    tweets: u64,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args {
        users: 2_000,
        follows: 100,
        prefill: 4_000,
        tweets: 2_000,
        concurrency: usize::from(twtr_common::bus::ConsumerSettings::EMBEDDED_PREFETCH),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--users" => args.users = value,
            "--follows" => args.follows = value,
            "--prefill" => args.prefill = value,
            "--tweets" => args.tweets = value,
            "--concurrency" => args.concurrency = value as usize,
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

/// Bytes this process has written to storage so far.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A small deterministic generator, so runs compare.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn run(feeds: &Feeds, events: Vec<(u64, u64)>, concurrency: usize) {
    futures_util::stream::iter(events)
        .map(|(tweet_id, author_id)| async move {
            let event = twtr_common::events::envelope(
                tweet_id,
                author_id,
                Payload::TweetCreated(TweetCreated {
                    tweet_id,
                    author_id,
                    ..Default::default()
                }),
            );
            feeds.handle(&event).await.expect("handle");
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedFeedStore::open(&dir.path().join("feeds.redb"), FeedLimits::default())
        .expect("open");
    let feeds = Feeds::new(Arc::new(store));

    let mut rng = 0x9e37_79b9_7f4a_7c15;
    let mut followers = vec![0u64; args.users as usize + 1];
    let mut follows = Vec::new();
    for follower in 1..=args.users {
        for _ in 0..args.follows {
            let followee = 1 + next(&mut rng) % args.users;
            if followee != follower {
                follows.push((follower, followee));
            }
        }
    }
    follows.sort_unstable();
    follows.dedup();
    for &(_, followee) in &follows {
        followers[followee as usize] += 1;
    }
    let started = Instant::now();
    let version = AtomicU64::new(1);
    futures_util::stream::iter(follows.iter().copied())
        .map(|(follower_id, followee_id)| {
            let version = version.fetch_add(1, Ordering::Relaxed);
            let feeds = &feeds;
            async move {
                let event = twtr_common::events::envelope(
                    version,
                    follower_id,
                    Payload::UserFollowed(UserFollowed {
                        follower_id,
                        followee_id,
                        version,
                    }),
                );
                feeds.handle(&event).await.expect("follow");
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<()>()
        .await;
    println!(
        "{} follows in {:.1} s",
        follows.len(),
        started.elapsed().as_secs_f64()
    );

    let mut tweet = 1_000_000_u64;
    let mut tweets = |n: u64| -> (Vec<(u64, u64)>, u64) {
        let mut events = Vec::new();
        let mut entries = 0;
        for _ in 0..n {
            tweet += 1 + next(&mut rng) % 1_000;
            let author = 1 + next(&mut rng) % args.users;
            entries += followers[author as usize] + 1;
            events.push((tweet, author));
        }
        (events, entries)
    };

    let (prefill, entries) = tweets(args.prefill);
    let started = Instant::now();
    run(&feeds, prefill, args.concurrency).await;
    println!(
        "prefill: {} tweets, {entries} entries in {:.1} s",
        args.prefill,
        started.elapsed().as_secs_f64()
    );

    let (measured, entries) = tweets(args.tweets);
    let bytes = written();
    let started = Instant::now();
    run(&feeds, measured, args.concurrency).await;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = written() - bytes;
    println!(
        "fan-out: {} tweets, {entries} entries in {seconds:.2} s: {:.0} entries/s, {:.0} tweets/s, \
         {:.0} bytes written per entry",
        args.tweets,
        entries as f64 / seconds,
        args.tweets as f64 / seconds,
        bytes as f64 / entries as f64,
    );
    let size = std::fs::metadata(dir.path().join("feeds.redb")).map_or(0, |m| m.len());
    println!("feeds.redb: {:.0} MB", size as f64 / 1e6);
}
