//! The behaviour every [`TweetStore`] backend must show. Backends invoke
//! [`tweet_store_conformance!`](crate::tweet_store_conformance) in their tests.
//!
//! The checks run against a store that other checks (and other test runs) share, as the CQL
//! backend's keyspace is: each check uses only IDs it minted with [`unique_id`], and looks for its
//! own events in the outbox rather than expecting the outbox to hold nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use twtr_common::{IdGenerator, Limit, PageRequest};
use twtr_proto::events::v1::Envelope;

use super::{TweetRecord, TweetStore};

/// Runs the suite against a backend: `$open` is an async function returning
/// `(Arc<dyn TweetStore>, guard)`; with `optional`, it returns an `Option` of that, and `None`
/// skips every check (a backend whose server this machine does not run; never in CI).
#[macro_export]
macro_rules! tweet_store_conformance {
    (@suite $($open:tt)+) => {
        mod tweet_store_conformance {
            use super::*;
            twtr_common::conformance_tests!($($open)+ => $crate::store::conformance:
                creates_reads_and_counts,
                creating_twice_is_harmless,
                author_timelines_page_newest_first,
                batch_reads_keep_the_order_given,
                concurrent_creates_are_all_counted,
                concurrent_retries_of_one_create_count_once,
            );
        }
    };
    (optional $open:path) => {
        $crate::tweet_store_conformance!(@suite optional $open);
    };
    ($open:path) => {
        $crate::tweet_store_conformance!(@suite $open);
    };
}

/// An ID no other check, and no other test process running now, uses: the IDs of tweets,
/// authors and events alike, from one generator per process whose worker comes from the pid.
pub fn unique_id() -> u64 {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| {
        IdGenerator::new((std::process::id() % 1024) as u16).expect("a worker below 1024")
    })
    .next_id()
}

/// `n` fresh IDs, increasing.
fn unique_ids(n: usize) -> Vec<u64> {
    (0..n).map(|_| unique_id()).collect()
}

pub fn tweet(id: u64, author_id: u64) -> TweetRecord {
    TweetRecord {
        id,
        author_id,
        text: format!("tweet {id}"),
        created_at_ms: 1_700_000_000_000,
        like_count: 0,
        retweet_count: 0,
    }
}

pub fn event(id: u64) -> Envelope {
    Envelope {
        event_id: id,
        r#type: "tweets.tweet_created".to_owned(),
        aggregate_id: id,
        ..Envelope::default()
    }
}

/// Which of `mine` the store's outbox holds, in the outbox's order. Backends' own tests use it
/// too, to take their turn with the suite's checks.
///
/// Reading an outbox is what a relay does, and a sharded outbox (CQL) lets one relay at a time
/// hold each shard: so the checks of this process take turns, and each gives its shards back when
/// it has read. A CQL relay that gave its shards back waits before taking them again, so a check
/// reads its store's outbox once, at its end.
pub async fn staged_of(store: &dyn TweetStore, mine: &[u64]) -> Vec<u64> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = TURN.lock().await;
    let outbox = store.outbox();
    let pending = twtr_common::outbox::pending_ids(outbox.as_ref(), 10_000).await;
    outbox.close().await;
    pending
        .unwrap()
        .into_iter()
        .filter(|id| mine.contains(id))
        .collect()
}

fn ids_of(tweets: &[TweetRecord]) -> Vec<u64> {
    tweets.iter().map(|t| t.id).collect()
}

pub async fn creates_reads_and_counts(store: Arc<dyn TweetStore>) {
    let [author, other_author, unknown_author] = [unique_id(), unique_id(), unique_id()];
    let [first, second, third, missing] = [unique_id(), unique_id(), unique_id(), unique_id()];
    let events = unique_ids(3);
    store
        .create(tweet(first, author), event(events[0]))
        .await
        .unwrap();
    store
        .create(tweet(second, author), event(events[1]))
        .await
        .unwrap();
    store
        .create(tweet(third, other_author), event(events[2]))
        .await
        .unwrap();
    assert_eq!(
        store.get(second).await.unwrap(),
        Some(tweet(second, author))
    );
    assert_eq!(store.get(missing).await.unwrap(), None);
    let found = store.get_many(vec![third, missing, first]).await.unwrap();
    assert_eq!(ids_of(&found), vec![third, first]);
    assert_eq!(found[0], tweet(third, other_author));
    assert_eq!(
        store
            .count_by_authors(vec![author, other_author, unknown_author])
            .await
            .unwrap(),
        vec![2, 1, 0]
    );
    assert_eq!(staged_of(store.as_ref(), &events).await, events);
}

pub async fn creating_twice_is_harmless(store: Arc<dyn TweetStore>) {
    let [author, id] = [unique_id(), unique_id()];
    let [first_event, second_event, third_event] = [unique_id(), unique_id(), unique_id()];
    store
        .create(tweet(id, author), event(first_event))
        .await
        .unwrap();
    store
        .create(tweet(id, author), event(second_event))
        .await
        .unwrap();
    // Another tweet under an ID that is taken changes nothing either.
    let impostor = TweetRecord {
        text: "not the first".to_owned(),
        ..tweet(id, unique_id())
    };
    store.create(impostor, event(third_event)).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), Some(tweet(id, author)));
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    let listed = store
        .list_by_author(author, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(ids_of(&listed.items), vec![id]);
    assert_eq!(
        staged_of(store.as_ref(), &[first_event, second_event, third_event]).await,
        vec![first_event]
    );
}

pub async fn author_timelines_page_newest_first(store: Arc<dyn TweetStore>) {
    let [author, other_author] = [unique_id(), unique_id()];
    // t[0] oldest .. t[4] newest, all by `author`; t[5] by someone else, newer still.
    let t = unique_ids(6);
    for &id in &t[..5] {
        store
            .create(tweet(id, author), event(unique_id()))
            .await
            .unwrap();
    }
    store
        .create(tweet(t[5], other_author), event(unique_id()))
        .await
        .unwrap();
    let limit = Limit::parse(Some(2)).unwrap();
    let first = store
        .list_by_author(author, PageRequest::first(limit))
        .await
        .unwrap();
    assert_eq!(ids_of(&first.items), vec![t[4], t[3]]);
    assert_eq!(first.items[0], tweet(t[4], author));
    assert_eq!(first.next, Some(t[3]));
    let request = PageRequest {
        before: first.next,
        since: None,
        limit,
    };
    let second = store.list_by_author(author, request).await.unwrap();
    assert_eq!(ids_of(&second.items), vec![t[2], t[1]]);
    let request = PageRequest {
        before: second.next,
        since: None,
        limit,
    };
    let last = store.list_by_author(author, request).await.unwrap();
    assert_eq!(ids_of(&last.items), vec![t[0]]);
    assert_eq!(last.next, None);
    let newer = PageRequest {
        before: None,
        since: Some(t[2]),
        limit,
    };
    let polled = store.list_by_author(author, newer).await.unwrap();
    assert_eq!(ids_of(&polled.items), vec![t[4], t[3]]);
    // Polling reads the oldest `limit` items newer than `since`, still newest first.
    let newer = PageRequest {
        before: None,
        since: Some(t[0]),
        limit,
    };
    let polled = store.list_by_author(author, newer).await.unwrap();
    assert_eq!(ids_of(&polled.items), vec![t[2], t[1]]);
    assert_eq!(polled.next, None);
    let between = PageRequest {
        before: Some(t[4]),
        since: Some(t[1]),
        limit: Limit::DEFAULT,
    };
    let window = store.list_by_author(author, between).await.unwrap();
    assert_eq!(ids_of(&window.items), vec![t[3], t[2]]);
    let unknown = store
        .list_by_author(unique_id(), PageRequest::first(limit))
        .await
        .unwrap();
    assert!(unknown.items.is_empty());
    assert_eq!(unknown.next, None);
}

/// More IDs than one CQL `IN` list holds, asked for in an order of the caller's choosing.
pub async fn batch_reads_keep_the_order_given(store: Arc<dyn TweetStore>) {
    const N: usize = 150;
    let authors = unique_ids(N);
    let ids = unique_ids(N);
    join_all(authors.iter().zip(&ids).map(|(&author, &id)| {
        let store = Arc::clone(&store);
        async move { store.create(tweet(id, author), event(unique_id())).await }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<()>, _>>()
    .unwrap();
    // Oldest and newest interleaved, an unknown ID in the middle, one ID asked for twice.
    let missing = unique_id();
    let mut asked: Vec<u64> = (0..N / 2).flat_map(|i| [ids[i], ids[N - 1 - i]]).collect();
    asked.insert(N / 2, missing);
    asked.push(ids[7]);
    let mut expected = asked.clone();
    expected.retain(|&id| id != missing);
    let found = store.get_many(asked).await.unwrap();
    assert_eq!(ids_of(&found), expected);
    assert!(found.iter().all(|t| *t == tweet(t.id, t.author_id)));

    let mut asked_authors: Vec<u64> = authors.iter().rev().copied().collect();
    asked_authors.insert(3, unique_id());
    let counts = store.count_by_authors(asked_authors).await.unwrap();
    let mut expected_counts = vec![1; N];
    expected_counts.insert(3, 0);
    assert_eq!(counts, expected_counts);
    assert!(store.get_many(Vec::new()).await.unwrap().is_empty());
    assert!(store.count_by_authors(Vec::new()).await.unwrap().is_empty());
}

pub async fn concurrent_creates_are_all_counted(store: Arc<dyn TweetStore>) {
    const N: usize = 20;
    let author = unique_id();
    let ids = unique_ids(N);
    let events = unique_ids(N);
    let results = join_all(ids.iter().zip(&events).map(|(&id, &event_id)| {
        let store = Arc::clone(&store);
        async move { store.create(tweet(id, author), event(event_id)).await }
    }))
    .await;
    for result in results {
        result.unwrap();
    }
    assert_eq!(
        store.count_by_authors(vec![author]).await.unwrap(),
        vec![N as u64]
    );
    let listed = store
        .list_by_author(author, PageRequest::first(Limit::parse(Some(100)).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        ids_of(&listed.items),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    let mut staged = staged_of(store.as_ref(), &events).await;
    staged.sort_unstable();
    assert_eq!(staged, events);
}

/// A client retrying a create it believes lost, while the first attempt is still running: the
/// tweet is stored and counted once, and its creation is announced (more than one announcement
/// is allowed: consumers take events at least once).
pub async fn concurrent_retries_of_one_create_count_once(store: Arc<dyn TweetStore>) {
    let [author, id] = [unique_id(), unique_id()];
    let events = unique_ids(5);
    let results = join_all(events.iter().map(|&event_id| {
        let store = Arc::clone(&store);
        async move { store.create(tweet(id, author), event(event_id)).await }
    }))
    .await;
    for result in results {
        result.unwrap();
    }
    assert_eq!(store.get(id).await.unwrap(), Some(tweet(id, author)));
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    let listed = store
        .list_by_author(author, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(ids_of(&listed.items), vec![id]);
    assert!(!staged_of(store.as_ref(), &events).await.is_empty());
}
