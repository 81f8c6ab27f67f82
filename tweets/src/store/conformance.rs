//! The behaviour every [`TweetStore`] backend must show. Backends invoke
//! [`tweet_store_conformance!`](crate::tweet_store_conformance) in their tests.
//!
//! The checks run against a store that other checks (and other test runs) share, as the CQL
//! backend's keyspace is: each check uses only IDs it minted with [`unique_id`], and looks for its
//! own events in the outbox rather than expecting the outbox to hold nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use twtr_common::store::PendingPurge;
use twtr_common::{IdGenerator, Limit, PageRequest};
use twtr_proto::events::v1::Envelope;

use std::time::Duration;

use twtr_common::clock;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{TweetCreated, TweetDeleted, TweetLiked, Unretweeted};

use super::{KeyClaim, Reacted, Reaction, TweetRecord, TweetStore};

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
                likes_and_retweets_count_once,
                concurrent_likes_are_all_counted,
                reacting_to_missing_or_deleted_tweets_is_none,
                liked_and_retweeted_keep_the_order_given,
                deleting_removes_a_tweet_everywhere_once,
                public_timeline_pages_newest_first,
                public_timeline_spans_hours,
                idempotency_keys_hold_per_author,
                idempotency_keys_expire_after_their_window,
                a_gone_author_cannot_post_and_is_purged_once,
                reacted_walks_every_reaction_in_batches,
                settling_finished_writes_changes_nothing,
                reaction_events_carry_the_pairs_version,
                indexed_tweets_are_found_under_each_term,
                indexing_twice_changes_nothing,
                deleted_tweets_leave_the_index_whatever_the_order,
                postings_span_hours_both_ways,
                tag_uses_count_each_tweet_once_in_its_minute,
                mentions_are_read_with_their_tweet,
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
/// authors and events alike, from [`ids`].
pub fn unique_id() -> u64 {
    ids().next_id()
}

/// This test process's one ID generator, whose worker comes from the pid: the one a store
/// under test mints its own event IDs with, too, so they never collide with the checks' IDs.
pub fn ids() -> Arc<IdGenerator> {
    static IDS: OnceLock<Arc<IdGenerator>> = OnceLock::new();
    Arc::clone(IDS.get_or_init(|| {
        Arc::new(IdGenerator::new((std::process::id() % 1024) as u16).expect("a worker below 1024"))
    }))
}

/// `n` fresh IDs, increasing.
fn unique_ids(n: usize) -> Vec<u64> {
    (0..n).map(|_| unique_id()).collect()
}

pub fn tweet(id: u64, author_id: u64) -> TweetRecord {
    TweetRecord {
        mentions: Vec::new(),
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
/// too. It peeks, as an operator would, so it takes no relay's lease and waits for none.
pub async fn staged_of(store: &dyn TweetStore, mine: &[u64]) -> Vec<u64> {
    staged_events_of(store, mine)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect()
}

/// The events of [`staged_of`], whole.
pub async fn staged_events_of(store: &dyn TweetStore, mine: &[u64]) -> Vec<Envelope> {
    let pending = store.outbox().peek(100_000).await.unwrap();
    pending
        .into_iter()
        .map(|p| p.event)
        .filter(|e| mine.contains(&e.event_id))
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
        .create_again(tweet(id, author), event(second_event))
        .await
        .unwrap();
    store
        .create_again(tweet(id, author), event(third_event))
        .await
        .unwrap();
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
    .collect::<Result<Vec<bool>, _>>()
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

/// One author's concurrent posts are all counted, before and after the backend folds its
/// count ops ([`TweetStore::fold_counts`]).
pub async fn concurrent_creates_are_all_counted(store: Arc<dyn TweetStore>) {
    const N: usize = 50;
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
    store.fold_counts().await.unwrap();
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
    let results = join_all(events.iter().enumerate().map(|(i, &event_id)| {
        let store = Arc::clone(&store);
        async move {
            if i == 0 {
                store.create(tweet(id, author), event(event_id)).await
            } else {
                store.create_again(tweet(id, author), event(event_id)).await
            }
        }
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

/// `tweet(id, author)` with the counts a read should show.
fn counted(id: u64, author_id: u64, like_count: u64, retweet_count: u64) -> TweetRecord {
    TweetRecord {
        like_count,
        retweet_count,
        ..tweet(id, author_id)
    }
}

pub async fn likes_and_retweets_count_once(store: Arc<dyn TweetStore>) {
    let [author, user, id] = [unique_id(), unique_id(), unique_id()];
    store
        .create(tweet(id, author), event(unique_id()))
        .await
        .unwrap();
    let e = unique_ids(10);
    assert_eq!(store.like(user, id, event(e[0])).await.unwrap(), Some(true));
    assert_eq!(
        store.like(user, id, event(e[1])).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(counted(id, author, 1, 0))
    );
    assert_eq!(
        store.retweet(user, id, event(e[2])).await.unwrap(),
        Some(true)
    );
    assert_eq!(
        store.retweet(user, id, event(e[3])).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(counted(id, author, 1, 1))
    );
    assert_eq!(
        store.unlike(user, id, event(e[4])).await.unwrap(),
        Some(true)
    );
    assert_eq!(
        store.unlike(user, id, event(e[5])).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(counted(id, author, 0, 1))
    );
    // Liking again after unliking counts again.
    assert_eq!(store.like(user, id, event(e[6])).await.unwrap(), Some(true));
    assert_eq!(
        store.unretweet(user, id, event(e[7])).await.unwrap(),
        Some(true)
    );
    assert_eq!(
        store.unretweet(user, id, event(e[8])).await.unwrap(),
        Some(false)
    );
    // Never liked: nothing to take back.
    assert_eq!(
        store.unlike(unique_id(), id, event(e[9])).await.unwrap(),
        Some(false)
    );
    let expected = counted(id, author, 1, 0);
    assert_eq!(store.get(id).await.unwrap(), Some(expected.clone()));
    assert_eq!(
        store.get_many(vec![id]).await.unwrap(),
        vec![expected.clone()]
    );
    let listed = store
        .list_by_author(author, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(listed.items, vec![expected]);
    assert_eq!(
        store.liked_and_retweeted(user, vec![id]).await.unwrap(),
        vec![(true, false)]
    );
    assert_eq!(
        staged_of(store.as_ref(), &e).await,
        vec![e[0], e[2], e[4], e[6], e[7]]
    );
}

pub async fn concurrent_likes_are_all_counted(store: Arc<dyn TweetStore>) {
    const N: usize = 20;
    let [author, id] = [unique_id(), unique_id()];
    store
        .create(tweet(id, author), event(unique_id()))
        .await
        .unwrap();
    let users = unique_ids(N);
    let results = join_all(users.iter().map(|&user| {
        let store = Arc::clone(&store);
        async move { store.like(user, id, event(unique_id())).await }
    }))
    .await;
    for result in results {
        assert_eq!(result.unwrap(), Some(true));
    }
    assert_eq!(
        store.get(id).await.unwrap().map(|t| t.like_count),
        Some(N as u64)
    );
}

pub async fn reacting_to_missing_or_deleted_tweets_is_none(store: Arc<dyn TweetStore>) {
    let [author, user, missing, deleted] = [unique_id(), unique_id(), unique_id(), unique_id()];
    store
        .create(tweet(deleted, author), event(unique_id()))
        .await
        .unwrap();
    assert!(store.delete(deleted, event(unique_id())).await.unwrap());
    let e = unique_ids(8);
    for (i, id) in [missing, deleted].into_iter().enumerate() {
        let e = &e[i * 4..];
        assert_eq!(store.like(user, id, event(e[0])).await.unwrap(), None);
        assert_eq!(store.unlike(user, id, event(e[1])).await.unwrap(), None);
        assert_eq!(store.retweet(user, id, event(e[2])).await.unwrap(), None);
        assert_eq!(store.unretweet(user, id, event(e[3])).await.unwrap(), None);
    }
    assert_eq!(
        store
            .liked_and_retweeted(user, vec![missing, deleted])
            .await
            .unwrap(),
        vec![(false, false); 2]
    );
    assert!(staged_of(store.as_ref(), &e).await.is_empty());
}

/// More tweets than one CQL `IN` list holds, most of them never reacted to.
pub async fn liked_and_retweeted_keep_the_order_given(store: Arc<dyn TweetStore>) {
    let [author, user, other_user] = [unique_id(), unique_id(), unique_id()];
    let t = unique_ids(4);
    for &id in &t {
        store
            .create(tweet(id, author), event(unique_id()))
            .await
            .unwrap();
    }
    store.like(user, t[0], event(unique_id())).await.unwrap();
    store.retweet(user, t[1], event(unique_id())).await.unwrap();
    store.like(user, t[2], event(unique_id())).await.unwrap();
    store.retweet(user, t[2], event(unique_id())).await.unwrap();
    // Someone else's reactions are not `user`'s.
    store
        .like(other_user, t[3], event(unique_id()))
        .await
        .unwrap();
    store
        .retweet(other_user, t[3], event(unique_id()))
        .await
        .unwrap();
    let mut asked = unique_ids(120);
    let mut expected = vec![(false, false); asked.len()];
    for (at, id, flags) in [
        (0, t[2], (true, true)),
        (50, t[0], (true, false)),
        (101, t[3], (false, false)),
        (110, t[1], (false, true)),
        (115, t[0], (true, false)),
    ] {
        asked.insert(at, id);
        expected.insert(at, flags);
    }
    assert_eq!(
        store.liked_and_retweeted(user, asked).await.unwrap(),
        expected
    );
    assert!(
        store
            .liked_and_retweeted(user, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn deleting_removes_a_tweet_everywhere_once(store: Arc<dyn TweetStore>) {
    let [author, user] = [unique_id(), unique_id()];
    let t = unique_ids(3);
    for &id in &t {
        store
            .create(tweet(id, author), event(unique_id()))
            .await
            .unwrap();
    }
    store.like(user, t[1], event(unique_id())).await.unwrap();
    let e = unique_ids(4);
    assert!(store.delete(t[1], event(e[0])).await.unwrap());
    assert!(!store.delete(t[1], event(e[1])).await.unwrap());
    assert!(!store.delete(unique_id(), event(e[2])).await.unwrap());
    // Creating it again (a retried create) does not bring it back, nor announces it again.
    store
        .create_again(tweet(t[1], author), event(e[3]))
        .await
        .unwrap();

    assert_eq!(store.get(t[1]).await.unwrap(), None);
    assert_eq!(
        ids_of(&store.get_many(t.clone()).await.unwrap()),
        vec![t[0], t[2]]
    );
    let listed = store
        .list_by_author(author, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(ids_of(&listed.items), vec![t[2], t[0]]);
    let around = PageRequest {
        before: Some(t[2] + 1),
        since: Some(t[0] - 1),
        limit: Limit::parse(Some(Limit::MAX)).unwrap(),
    };
    let public = store.public_timeline(around).await.unwrap();
    let mine: Vec<u64> = ids_of(&public.items)
        .into_iter()
        .filter(|id| t.contains(id))
        .collect();
    assert_eq!(mine, vec![t[2], t[0]]);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![2]);
    assert_eq!(staged_of(store.as_ref(), &e).await, vec![e[0]]);
}

/// Everyone's tweets, walked page by page backwards and polled forwards: every page newest
/// first, no tweet twice, none skipped. Other checks' tweets may interleave (a shared store),
/// so the check looks at its own tweets' order and completeness.
pub async fn public_timeline_pages_newest_first(store: Arc<dyn TweetStore>) {
    let authors = unique_ids(3);
    let t = unique_ids(7);
    for (i, &id) in t.iter().enumerate() {
        store
            .create(tweet(id, authors[i % 3]), event(unique_id()))
            .await
            .unwrap();
    }
    let mine =
        |ids: Vec<u64>| -> Vec<u64> { ids.into_iter().filter(|id| t.contains(id)).collect() };
    let limit = Limit::parse(Some(2)).unwrap();
    let mut request = PageRequest {
        before: Some(t[6] + 1),
        since: None,
        limit,
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.public_timeline(request).await.unwrap();
        assert!(page.items.len() <= 2);
        pages += 1;
        seen.extend(ids_of(&page.items));
        match page.next {
            Some(next) if next > t[0] => request.before = Some(next),
            _ => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "pages overlap: {seen:?}"
    );
    let expected: Vec<u64> = t.iter().rev().copied().collect();
    assert_eq!(mine(seen), expected);
    let first = store
        .public_timeline(PageRequest::first(limit))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.items[0].id > first.items[1].id);

    // Polling forwards from the oldest: the oldest `limit` newer ones each time.
    let mut since = t[0];
    let mut polled: Vec<u64> = Vec::new();
    while since < t[6] {
        let page = store
            .public_timeline(PageRequest {
                before: None,
                since: Some(since),
                limit,
            })
            .await
            .unwrap();
        let ids = ids_of(&page.items);
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
        since = *ids.first().expect("tweets newer than `since`");
        polled.extend(ids.into_iter().rev());
    }
    assert!(
        polled.windows(2).all(|w| w[0] < w[1]),
        "polls overlap: {polled:?}"
    );
    assert_eq!(mine(polled), t[1..].to_vec());
    let found = store.get(t[3]).await.unwrap();
    assert_eq!(found, Some(tweet(t[3], authors[0])));
}

/// A fresh ID from `hours` hours ago (Snowflake IDs keep their millisecond in their top bits),
/// for tweets spread over many hours.
fn id_hours_ago(hours: u64) -> u64 {
    unique_id() - ((hours * 3_600_000) << 22)
}

/// Tweets over more hours than one read of the CQL backend's hour list returns, some hours
/// empty: pages cross hours, backwards and forwards, and skip none.
pub async fn public_timeline_spans_hours(store: Arc<dyn TweetStore>) {
    let author = unique_id();
    // Oldest first: one tweet an hour for 30 hours, from 40 hours ago, then two in this hour.
    let mut t: Vec<u64> = (0..30).map(|k| id_hours_ago(40 - k)).collect();
    t.extend(unique_ids(2));
    assert!(t.windows(2).all(|w| w[0] < w[1]));
    for &id in &t {
        store
            .create(tweet(id, author), event(unique_id()))
            .await
            .unwrap();
    }
    let limit = Limit::parse(Some(7)).unwrap();
    let mut request = PageRequest {
        before: Some(t[31] + 1),
        since: None,
        limit,
    };
    let mut seen = Vec::new();
    loop {
        let page = store.public_timeline(request).await.unwrap();
        seen.extend(ids_of(&page.items));
        match page.next {
            Some(next) if next > t[0] => request.before = Some(next),
            _ => break,
        }
    }
    let mine: Vec<u64> = seen.iter().copied().filter(|id| t.contains(id)).collect();
    assert_eq!(mine, t.iter().rev().copied().collect::<Vec<_>>());
    let mut since = t[0];
    let mut polled = Vec::new();
    while since < t[31] {
        let page = store
            .public_timeline(PageRequest {
                before: None,
                since: Some(since),
                limit,
            })
            .await
            .unwrap();
        since = page.items.first().expect("tweets newer than `since`").id;
        polled.extend(ids_of(&page.items).into_iter().rev());
    }
    let mine: Vec<u64> = polled.into_iter().filter(|id| t.contains(id)).collect();
    assert_eq!(mine, t[1..].to_vec());
    // One page over all 30 past hours (no other check writes there), both ways.
    let past = t[..30].to_vec();
    let newest_first: Vec<u64> = past.iter().rev().copied().collect();
    for since in [None, Some(t[0] - 1)] {
        let page = store
            .public_timeline(PageRequest {
                before: Some(t[29] + 1),
                since,
                limit: Limit::parse(Some(Limit::MAX)).unwrap(),
            })
            .await
            .unwrap();
        assert_eq!(ids_of(&page.items), newest_first, "since {since:?}");
        assert_eq!(page.next, None);
    }
    assert_eq!(
        store.count_by_authors(vec![author]).await.unwrap(),
        vec![32]
    );
}

const HOUR: Duration = Duration::from_secs(3600);

pub async fn idempotency_keys_hold_per_author(store: Arc<dyn TweetStore>) {
    let [author, other, first, second, third] = [(); 5].map(|()| unique_id());
    let key = format!("key-{first}");
    assert_eq!(
        store
            .claim_key(author, &key, first, "hello", HOUR)
            .await
            .unwrap(),
        KeyClaim::Won
    );
    let held = KeyClaim::Held {
        tweet_id: first,
        text: "hello".to_owned(),
    };
    // A retry, and a reuse of the key for another text, both find the first claim.
    assert_eq!(
        store
            .claim_key(author, &key, second, "hello", HOUR)
            .await
            .unwrap(),
        held
    );
    assert_eq!(
        store
            .claim_key(author, &key, second, "other", HOUR)
            .await
            .unwrap(),
        held
    );
    // Another author's key of the same name is theirs.
    assert_eq!(
        store
            .claim_key(other, &key, third, "hello", HOUR)
            .await
            .unwrap(),
        KeyClaim::Won
    );
    assert_eq!(
        store
            .claim_key(other, &key, second, "hello", HOUR)
            .await
            .unwrap(),
        KeyClaim::Held {
            tweet_id: third,
            text: "hello".to_owned()
        }
    );
}

/// A claim outlives its window by at most the backend's granularity (CQL TTLs count seconds).
pub async fn idempotency_keys_expire_after_their_window(store: Arc<dyn TweetStore>) {
    let [author, first, second] = [(); 3].map(|()| unique_id());
    let window = Duration::from_secs(1);
    let key = "short-lived";
    assert_eq!(
        store
            .claim_key(author, key, first, "a", window)
            .await
            .unwrap(),
        KeyClaim::Won
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        store
            .claim_key(author, key, second, "b", window)
            .await
            .unwrap(),
        KeyClaim::Won,
        "the window passed"
    );
}

/// The pending purges of `user`, among everyone's.
pub async fn pending_purges_of(store: &dyn TweetStore, user: u64) -> Vec<PendingPurge> {
    let pending = store.pending_purges(100_000).await.unwrap();
    pending.into_iter().filter(|p| p.user == user).collect()
}

pub async fn a_gone_author_cannot_post_and_is_purged_once(store: Arc<dyn TweetStore>) {
    let [author, posted, refused] = [(); 3].map(|()| unique_id());
    assert!(!store.author_gone(author).await.unwrap());
    assert!(
        store
            .create(tweet(posted, author), event(unique_id()))
            .await
            .unwrap()
    );
    store.forget_author(author).await.unwrap();
    store.forget_author(author).await.unwrap();
    assert!(store.author_gone(author).await.unwrap());
    let refused_event = unique_id();
    assert!(
        !store
            .create(tweet(refused, author), event(refused_event))
            .await
            .unwrap(),
        "a gone author cannot post"
    );
    assert_eq!(store.get(refused).await.unwrap(), None);
    assert!(staged_of(store.as_ref(), &[refused_event]).await.is_empty());
    // The tweet posted before stays until the purge removes it: forgetting removes nothing.
    assert!(store.get(posted).await.unwrap().is_some());
    let pending = pending_purges_of(store.as_ref(), author).await;
    assert!(!pending.is_empty());
    for purge in pending {
        store.purge_done(purge).await.unwrap();
    }
    assert!(pending_purges_of(store.as_ref(), author).await.is_empty());
    store.forget_author(author).await.unwrap();
    assert!(
        pending_purges_of(store.as_ref(), author).await.is_empty(),
        "a purge done is not pending again"
    );
    assert!(store.author_gone(author).await.unwrap());
}

pub async fn reacted_walks_every_reaction_in_batches(store: Arc<dyn TweetStore>) {
    let [author, user] = [unique_id(), unique_id()];
    let t = unique_ids(5);
    for &id in &t {
        store
            .create(tweet(id, author), event(unique_id()))
            .await
            .unwrap();
        store.like(user, id, event(unique_id())).await.unwrap();
    }
    store.unlike(user, t[2], event(unique_id())).await.unwrap();
    store.retweet(user, t[0], event(unique_id())).await.unwrap();
    store.retweet(user, t[3], event(unique_id())).await.unwrap();
    let walk = |reaction| {
        let store = Arc::clone(&store);
        async move {
            let (mut all, mut before, mut batches) = (Vec::new(), None, 0);
            loop {
                let Reacted { tweets, next } =
                    store.reacted(reaction, user, before, 2).await.unwrap();
                assert!(tweets.len() <= 2, "a batch holds at most what was asked");
                all.extend(tweets);
                batches += 1;
                match next {
                    Some(next) => before = Some(next),
                    None => return (all, batches),
                }
            }
        }
    };
    let (liked, batches) = walk(Reaction::Like).await;
    assert_eq!(liked, vec![t[4], t[3], t[1], t[0]]);
    assert!(batches >= 2, "walked in batches, not at once");
    assert_eq!(walk(Reaction::Retweet).await.0, vec![t[3], t[0]]);
    let nobody = store
        .reacted(Reaction::Like, unique_id(), None, 10)
        .await
        .unwrap();
    assert_eq!(nobody, Reacted::default());
}

/// Settling the events of writes that finished (each settled twice, as a redelivery would)
/// moves no count.
pub async fn settling_finished_writes_changes_nothing(store: Arc<dyn TweetStore>) {
    let [author, user, id, gone] = [(); 4].map(|()| unique_id());
    let e = unique_ids(5);
    let now = Some(clock::to_timestamp(clock::now_millis()));
    let with = |event_id: u64, payload: Payload| Envelope {
        event_id,
        r#type: twtr_common::events::routing_key(&payload).to_owned(),
        aggregate_id: id,
        occurred_at: now,
        payload: Some(payload),
        ..Envelope::default()
    };
    let created = |tweet_id| {
        Payload::TweetCreated(TweetCreated {
            mentioned_user_ids: Vec::new(),
            tweet_id,
            author_id: author,
            text: format!("tweet {tweet_id}"),
            created_at: now,
        })
    };
    store
        .create(tweet(id, author), with(e[0], created(id)))
        .await
        .unwrap();
    store
        .create(tweet(gone, author), with(e[1], created(gone)))
        .await
        .unwrap();
    let reaction = |tweet_id| TweetLiked {
        tweet_id,
        author_id: author,
        user_id: user,
        version: 0,
    };
    store
        .like(user, id, with(e[2], Payload::TweetLiked(reaction(id))))
        .await
        .unwrap();
    store.retweet(user, id, event(unique_id())).await.unwrap();
    let unretweeted = Payload::Unretweeted(Unretweeted {
        tweet_id: id,
        author_id: author,
        user_id: user,
        version: 0,
    });
    store
        .unretweet(user, id, with(e[3], unretweeted))
        .await
        .unwrap();
    let deleted = Payload::TweetDeleted(TweetDeleted {
        mentioned_user_ids: Vec::new(),
        tweet_id: gone,
        author_id: author,
    });
    store.delete(gone, with(e[4], deleted)).await.unwrap();
    let staged = staged_events_of(store.as_ref(), &e).await;
    assert_eq!(staged.len(), e.len(), "every write staged its event");
    for event in staged.iter().chain(&staged) {
        store.settle(event).await.unwrap();
    }
    assert_eq!(
        store.get(id).await.unwrap(),
        Some(counted(id, author, 1, 0))
    );
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
}

/// Each change of a (user, tweet) pair's like or retweet stamps the pair's next version into its
/// event, so consumers can keep the latest whatever order events arrive in.
pub async fn reaction_events_carry_the_pairs_version(store: Arc<dyn TweetStore>) {
    let [author, user, id] = [(); 3].map(|()| unique_id());
    store
        .create(tweet(id, author), event(unique_id()))
        .await
        .unwrap();
    let e = unique_ids(5);
    let pair = |tweet_id| TweetLiked {
        tweet_id,
        author_id: author,
        user_id: user,
        version: 0,
    };
    let liked = |event_id| Envelope {
        event_id,
        payload: Some(Payload::TweetLiked(pair(id))),
        ..Envelope::default()
    };
    let unliked = |event_id| Envelope {
        event_id,
        payload: Some(Payload::TweetUnliked(
            twtr_proto::events::v1::TweetUnliked {
                tweet_id: id,
                author_id: author,
                user_id: user,
                version: 0,
            },
        )),
        ..Envelope::default()
    };
    assert_eq!(store.like(user, id, liked(e[0])).await.unwrap(), Some(true));
    assert_eq!(
        store.like(user, id, liked(e[1])).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        store.unlike(user, id, unliked(e[2])).await.unwrap(),
        Some(true)
    );
    assert_eq!(store.like(user, id, liked(e[3])).await.unwrap(), Some(true));
    let retweeted = Envelope {
        event_id: e[4],
        payload: Some(Payload::Retweeted(twtr_proto::events::v1::Retweeted {
            tweet_id: id,
            author_id: author,
            user_id: user,
            version: 0,
        })),
        ..Envelope::default()
    };
    assert_eq!(
        store.retweet(user, id, retweeted).await.unwrap(),
        Some(true)
    );
    let versions: Vec<(u64, u64)> = staged_events_of(store.as_ref(), &e)
        .await
        .into_iter()
        .map(|event| {
            let version = match event.payload {
                Some(Payload::TweetLiked(e)) => e.version,
                Some(Payload::TweetUnliked(e)) => e.version,
                Some(Payload::Retweeted(e)) => e.version,
                other => panic!("unexpected payload {other:?}"),
            };
            (event.event_id, version)
        })
        .collect();
    // The repeat staged nothing; likes count 1, 2, 3; the retweet is its own pair.
    assert_eq!(versions, vec![(e[0], 1), (e[2], 2), (e[3], 3), (e[4], 1)]);
}

/// Creates the tweet `id` with `text` and indexes it, as the service does with its event.
async fn post(store: &dyn TweetStore, id: u64, author: u64, text: &str) {
    let mut record = tweet(id, author);
    record.text = text.to_owned();
    store.create(record, event(unique_id())).await.unwrap();
    store
        .index(id, crate::words::index_terms(text))
        .await
        .unwrap();
}

/// Every posting of `term`, newest first.
async fn posted(store: &dyn TweetStore, term: &str) -> Vec<u64> {
    let postings = store.postings(term, None, None, 10_000).await.unwrap();
    postings.iter().map(|p| p.tweet_id).collect()
}

/// How many tweets used `tag` (with its `#`) in the last hour and the next minute.
async fn uses_of(store: &dyn TweetStore, tag: &str) -> u64 {
    let now = clock::now_millis() / 60_000;
    let uses = store.tag_uses(now - 59, now + 1, 10_000).await.unwrap();
    uses.into_iter()
        .find(|(used, _)| used == tag)
        .map_or(0, |(_, n)| n)
}

fn id_minutes_ago(minutes: u64) -> u64 {
    unique_id() - ((minutes * 60_000) << 22)
}

/// A tweet is found under each of its words and tags, newest first, each posting carrying all
/// of the tweet's terms; bounds and `max` page through them.
pub async fn indexed_tweets_are_found_under_each_term(store: Arc<dyn TweetStore>) {
    let author = unique_id();
    let (word, tag) = (format!("w{}", unique_id()), format!("t{}", unique_id()));
    let [a, b] = [unique_id(), unique_id()];
    let first = format!("First {word} #{tag}");
    post(store.as_ref(), a, author, &first).await;
    post(store.as_ref(), b, author, &format!("second {word}")).await;
    assert_eq!(posted(store.as_ref(), &word).await, vec![b, a]);
    assert_eq!(posted(store.as_ref(), &format!("#{tag}")).await, vec![a]);
    assert_eq!(
        posted(store.as_ref(), &tag).await,
        vec![a],
        "a tag is a word too"
    );
    assert!(
        posted(store.as_ref(), &format!("w{}", unique_id()))
            .await
            .is_empty()
    );
    let postings = store.postings(&tag, None, None, 10).await.unwrap();
    assert_eq!(postings[0].terms, crate::words::index_terms(&first));
    let ids = |postings: Vec<super::Posting>| -> Vec<u64> {
        postings.into_iter().map(|p| p.tweet_id).collect()
    };
    let page = |before, since, max| store.postings(&word, before, since, max);
    assert_eq!(ids(page(None, None, 1).await.unwrap()), vec![b]);
    assert_eq!(ids(page(Some(b), None, 10).await.unwrap()), vec![a]);
    assert_eq!(ids(page(None, Some(a), 10).await.unwrap()), vec![b]);
    assert_eq!(
        ids(page(None, Some(a - 1), 10).await.unwrap()),
        vec![a, b],
        "oldest first"
    );
    assert!(page(Some(b), Some(a), 10).await.unwrap().is_empty());
    assert!(page(Some(a), None, 10).await.unwrap().is_empty());
}

/// An event delivered twice indexes once: one posting, one tag use.
pub async fn indexing_twice_changes_nothing(store: Arc<dyn TweetStore>) {
    let (author, id) = (unique_id(), unique_id());
    let tag = format!("#t{}", unique_id());
    let text = format!("{tag} {tag} again");
    post(store.as_ref(), id, author, &text).await;
    store
        .index(id, crate::words::index_terms(&text))
        .await
        .unwrap();
    assert_eq!(posted(store.as_ref(), &tag).await, vec![id]);
    assert_eq!(uses_of(store.as_ref(), &tag).await, 1);
    // Indexing a tweet that does not exist writes nothing.
    let ghost = unique_id();
    store.index(ghost, vec![tag.clone()]).await.unwrap();
    assert_eq!(posted(store.as_ref(), &tag).await, vec![id]);
    // Nor does unindexing a live tweet remove it.
    store.unindex(id).await.unwrap();
    assert_eq!(posted(store.as_ref(), &tag).await, vec![id]);
}

/// A deleted tweet leaves every posting and its tag uses, whether its deletion is handled
/// after its indexing, before it (events reordered), or twice, and a late or repeated indexing
/// never brings it back.
pub async fn deleted_tweets_leave_the_index_whatever_the_order(store: Arc<dyn TweetStore>) {
    let author = unique_id();
    let tag = format!("#t{}", unique_id());
    let [in_order, reordered, kept] = [unique_id(), unique_id(), unique_id()];
    for id in [in_order, kept] {
        post(store.as_ref(), id, author, &format!("{tag} post")).await;
    }
    assert_eq!(uses_of(store.as_ref(), &tag).await, 2);
    assert!(store.delete(in_order, event(unique_id())).await.unwrap());
    store.unindex(in_order).await.unwrap();
    store.unindex(in_order).await.unwrap();
    let terms = crate::words::index_terms(&format!("{tag} post"));
    store.index(in_order, terms.clone()).await.unwrap();
    assert_eq!(posted(store.as_ref(), &tag).await, vec![kept]);
    assert_eq!(uses_of(store.as_ref(), &tag).await, 1);

    // Created, deleted, and the deletion's event handled before the creation's.
    let mut record = tweet(reordered, author);
    record.text = format!("{tag} post");
    store.create(record, event(unique_id())).await.unwrap();
    assert!(store.delete(reordered, event(unique_id())).await.unwrap());
    store.unindex(reordered).await.unwrap();
    store.index(reordered, terms.clone()).await.unwrap();
    store.index(reordered, terms).await.unwrap();
    assert_eq!(posted(store.as_ref(), &tag).await, vec![kept]);
    assert!(!posted(store.as_ref(), "post").await.contains(&reordered));
    assert_eq!(uses_of(store.as_ref(), &tag).await, 1);
}

/// Postings over more hours than one read of the CQL backend's hour list, some hours empty,
/// read in small batches backwards and forwards: none skipped, none twice.
pub async fn postings_span_hours_both_ways(store: Arc<dyn TweetStore>) {
    let author = unique_id();
    let word = format!("w{}", unique_id());
    // One tweet an hour from now on, 30 hours ahead (IDs from the future): on a shared store,
    // `public_timeline_spans_hours` reads every tweet older than 11 hours ago as its own.
    let mut t = unique_ids(2);
    t.extend((1..=30).map(|k| unique_id() + ((k * 3_600_000) << 22)));
    for &id in &t {
        post(store.as_ref(), id, author, &format!("{word} hourly")).await;
    }
    let mut backwards = Vec::new();
    let mut before = None;
    loop {
        let batch = store.postings(&word, before, None, 7).await.unwrap();
        backwards.extend(batch.iter().map(|p| p.tweet_id));
        match batch.last() {
            Some(last) if batch.len() == 7 => before = Some(last.tweet_id),
            _ => break,
        }
    }
    assert_eq!(backwards, t.iter().rev().copied().collect::<Vec<_>>());
    let mut forwards = Vec::new();
    let mut since = Some(t[0] - 1);
    loop {
        let batch = store.postings(&word, None, since, 7).await.unwrap();
        forwards.extend(batch.iter().map(|p| p.tweet_id));
        match batch.last() {
            Some(last) if batch.len() == 7 => since = Some(last.tweet_id),
            _ => break,
        }
    }
    assert_eq!(forwards, t);
}

/// Tag uses count distinct tweets in the minute of each tweet's ID: older than the window
/// they count in no window of the last hour, and very old tweets write no use at all.
pub async fn tag_uses_count_each_tweet_once_in_its_minute(store: Arc<dyn TweetStore>) {
    let author = unique_id();
    let tag = format!("#t{}", unique_id());
    let text = format!("{tag} {tag}");
    let now = unique_ids(3);
    let half_hour_ago = id_minutes_ago(30);
    let three_hours_ago = id_minutes_ago(180);
    for &id in now.iter().chain([&half_hour_ago, &three_hours_ago]) {
        post(store.as_ref(), id, author, &text).await;
    }
    assert_eq!(uses_of(store.as_ref(), &tag).await, 4);
    let minute = super::minute_of(now[0]);
    let recent = store
        .tag_uses(minute - 10, minute + 1, 10_000)
        .await
        .unwrap();
    let recent = recent.into_iter().find(|(used, _)| *used == tag);
    assert_eq!(recent, Some((tag.clone(), 3)));
    let old = super::minute_of(three_hours_ago);
    let old = store.tag_uses(old, old, 10_000).await.unwrap();
    assert!(old.iter().all(|(used, _)| *used != tag), "{old:?}");
    assert!(store.delete(now[1], event(unique_id())).await.unwrap());
    store.unindex(now[1]).await.unwrap();
    assert_eq!(uses_of(store.as_ref(), &tag).await, 3);
}

/// A tweet's mentions come back with it, alone and in batches and pages; a tweet without any
/// has none.
pub async fn mentions_are_read_with_their_tweet(store: Arc<dyn TweetStore>) {
    let ids = unique_ids(4);
    let (author, plain) = (ids[0], ids[1]);
    let mentioned = TweetRecord {
        mentions: vec![
            twtr_proto::tweets::v1::Mention {
                user_id: ids[3],
                username: "ada".into(),
            },
            twtr_proto::tweets::v1::Mention {
                user_id: author,
                username: "self_".into(),
            },
        ],
        ..tweet(ids[2], author)
    };
    assert!(
        store
            .create(tweet(plain, author), event(unique_id()))
            .await
            .unwrap()
    );
    assert!(
        store
            .create(mentioned.clone(), event(unique_id()))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(mentioned.id).await.unwrap(),
        Some(mentioned.clone())
    );
    let both = store.get_many(vec![mentioned.id, plain]).await.unwrap();
    assert_eq!(both[0].mentions, mentioned.mentions);
    assert!(both[1].mentions.is_empty());
    let page = store
        .list_by_author(author, PageRequest::first(Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(page.items[0].mentions, mentioned.mentions);
}
