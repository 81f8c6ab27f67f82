//! The CQL tweet store against a real node: its conformance suite, and what a crash or a
//! caller that goes away leaves at each step of a write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use scylla::serialize::row::SerializeRow;
use scylla::value::CqlTimestamp;
use twtr_common::cql::lwt;
use twtr_common::cql::testing::keyspace_for;
use twtr_common::{events, id};
use twtr_proto::events::v1::TweetDeleted;

use super::reactions::{Change, Pair, reaction_op, reaction_payload};
use super::reads::PageBounds;
use super::*;
use crate::store::conformance::{self, event, ids, staged_of, unique_id};

async fn open_cql() -> Option<(Arc<dyn TweetStore>, ())> {
    let (session, config) = keyspace_for(&crate::store::SCHEMA).await?;
    let ks = Keyspace::new(session, &config, "tweets").expect("the tweets keyspace name");
    let store = CqlTweetStore::new(ks, ids())
        .await
        .expect("prepare the tweets statements");
    Some((Arc::new(store), ()))
}

crate::tweet_store_conformance!(optional open_cql);

async fn cql_store() -> Option<CqlTweetStore> {
    let (session, config) = keyspace_for(&crate::store::SCHEMA).await?;
    let ks = Keyspace::new(session, &config, "tweets").unwrap();
    Some(CqlTweetStore::new(ks, ids()).await.unwrap())
}

/// Runs `query` (tables written `{ks}.<table>`) in the store's keyspace.
async fn run(
    store: &CqlTweetStore,
    query: &str,
    values: impl SerializeRow,
) -> scylla::response::query_result::QueryResult {
    let query = twtr_common::cql::qualify(query, store.inner.ks.name());
    store
        .inner
        .ks
        .session()
        .query_unpaged(query, values)
        .await
        .unwrap()
}

/// Whether `query` (tables written `{ks}.<table>`) returns a row.
async fn has_row(store: &CqlTweetStore, query: &str, values: impl SerializeRow) -> bool {
    let rows = run(store, query, values).await;
    rows.into_rows_result().unwrap().rows_num() > 0
}

/// The crash gap of the count ledger: a process that dies after a write's batch (its event
/// staged) but before its count op leaves the count behind, until the service consumes the
/// event back and settles it. Likes do so today; creates did before the tallies, and an event
/// of theirs (no `TALLIED_HEADER`) is still settled through the ledger. A create's event of
/// today carries its count op in its batch: settling it changes nothing.
#[tokio::test]
async fn settling_its_event_finishes_writes_cut_short_before_their_counts() {
    let Some(store) = cql_store().await else {
        return;
    };
    let [author, user, id, old, old_author] = [(); 5].map(|()| unique_id());
    let tweet = conformance::tweet(id, author);
    let now = Some(clock::to_timestamp(clock::now_millis()));
    let announce = |payload: Payload| Envelope {
        event_id: unique_id(),
        r#type: twtr_common::events::routing_key(&payload).to_owned(),
        occurred_at: now,
        payload: Some(payload),
        ..Envelope::default()
    };
    // A create written before the tallies: its rows and event, its ledger op never applied.
    let created_before = announce(Payload::TweetCreated(
        twtr_proto::events::v1::TweetCreated {
            mentioned_user_ids: Vec::new(),
            tweet_id: old,
            author_id: old_author,
            text: tweet.text.clone(),
            created_at: now,
        },
    ));
    assert_eq!(
        store.count_by_authors(vec![old_author]).await.unwrap(),
        vec![0]
    );
    // A create of today: its count op moved with its batch.
    let created = announce(Payload::TweetCreated(
        twtr_proto::events::v1::TweetCreated {
            mentioned_user_ids: Vec::new(),
            tweet_id: id,
            author_id: author,
            text: tweet.text.clone(),
            created_at: now,
        },
    ));
    store.create(tweet.clone(), created).await.unwrap();
    let created = staged_about(&store, id).await.remove(0);
    assert!(created.headers.contains_key(TALLIED_HEADER));
    // A like decided, its mirror row and event written, its count never moved.
    let (user_key, tweet_key) = (to_cql(user).unwrap(), to_cql(id).unwrap());
    let at = CqlTimestamp(clock::now_millis());
    store
        .inner
        .ks
        .session()
        .execute_unpaged(&store.inner.likes.first, (user_key, tweet_key, at))
        .await
        .unwrap();
    let op = reaction_op(&store.inner.likes, user, 1);
    let mut liked = announce(Payload::TweetLiked(twtr_proto::events::v1::TweetLiked {
        tweet_id: id,
        author_id: author,
        user_id: user,
        version: 1,
    }));
    liked.headers.insert(COUNT_OP_HEADER.to_owned(), op);
    assert_eq!(store.get(id).await.unwrap().unwrap().like_count, 0);
    // Delivered twice, as at-least-once delivery may.
    for event in [
        &created_before,
        &created,
        &liked,
        &created_before,
        &created,
        &liked,
    ] {
        store.settle(event).await.unwrap();
    }
    let counts = store.count_by_authors(vec![author, old_author]).await;
    assert_eq!(counts.unwrap(), vec![1, 1]);
    assert_eq!(store.get(id).await.unwrap().unwrap().like_count, 1);
}

#[tokio::test]
async fn a_retry_finishes_a_create_whose_batch_never_ran() {
    let Some(store) = cql_store().await else {
        return;
    };
    // The first attempt died before its batch ran: nothing of it is there, or (by the
    // version before the tallies) its claim, the tweet's row alone.
    for claimed in [false, true] {
        a_retry_finishes_a_create_whose_batch_never_ran_after(&store, claimed).await;
    }
}

async fn a_retry_finishes_a_create_whose_batch_never_ran_after(
    store: &CqlTweetStore,
    claimed: bool,
) {
    let [author, id, retry_event] = [unique_id(), unique_id(), unique_id()];
    let tweet = conformance::tweet(id, author);
    if claimed {
        legacy_claim(store, &tweet).await;
    }
    store
        .create_again(tweet.clone(), event(retry_event))
        .await
        .unwrap();
    let listed = store
        .list_by_author(author, PageRequest::first(twtr_common::Limit::DEFAULT))
        .await
        .unwrap();
    assert_eq!(listed.items, vec![tweet]);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    let bucket = id::millis_of(id) / BUCKET_MS;
    assert!(
        has_row(
            store,
            "SELECT author_id FROM {ks}.timeline WHERE bucket = ? AND tweet_id = ?",
            (bucket, id as i64),
        )
        .await
    );
    assert!(
        has_row(
            store,
            "SELECT bucket FROM {ks}.timeline_buckets WHERE scope = 'all' AND bucket = ?",
            (bucket,),
        )
        .await
    );
    assert_eq!(staged_of(store, &[retry_event]).await, vec![retry_event]);
}

#[tokio::test]
async fn a_retry_after_the_batch_counts_and_stages_nothing_more() {
    let Some(store) = cql_store().await else {
        return;
    };
    let [author, id, first_event, retry_event] =
        [unique_id(), unique_id(), unique_id(), unique_id()];
    let tweet = conformance::tweet(id, author);
    // The first attempt's batch ran (its answer was lost): the count moved with it.
    store
        .inner
        .write_batch(&tweet, &event(first_event))
        .await
        .unwrap();
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    store
        .create_again(tweet.clone(), event(retry_event))
        .await
        .unwrap();
    store.create_again(tweet, event(retry_event)).await.unwrap();
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    // The op's ledger row, written beside its tally op so that a replica of the version before
    // finds it applied, expires once no redelivery can come any more.
    let op = format!("tweet:{id}:created");
    let query = twtr_common::cql::qualify(
        "SELECT TTL(applied_at) FROM {ks}.author_counts WHERE author_id = ? AND op = ?",
        store.inner.ks.name(),
    );
    let (ttl,): (Option<i32>,) = store
        .inner
        .ks
        .session()
        .query_unpaged(query, (author as i64, op))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert!(ttl.is_some_and(|ttl| ttl > 259_000), "{ttl:?}");
    assert_eq!(
        staged_of(&store, &[first_event, retry_event]).await,
        vec![first_event]
    );
}

/// Step 1 of a create by the version before the tallies: the tweet's row, claimed.
async fn legacy_claim(store: &CqlTweetStore, tweet: &TweetRecord) {
    let claim = "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at, deleted) \
                 VALUES (?, ?, ?, ?, false) IF NOT EXISTS";
    let values = (
        tweet.id as i64,
        tweet.author_id as i64,
        &tweet.text,
        CqlTimestamp(tweet.created_at_ms),
    );
    run(store, claim, values).await;
}

/// A tweet by a fresh author, fully created: `(author, tweet)`.
async fn posted(store: &CqlTweetStore) -> (u64, u64) {
    let (author, id) = (unique_id(), unique_id());
    let created = store
        .create(conformance::tweet(id, author), event(unique_id()))
        .await
        .unwrap();
    assert!(created);
    (author, id)
}

/// The event a service call would stage for `user` changing `reaction` on `tweet` to `on`
/// (the store stamps the version it decides).
fn reaction_event(reaction: Reaction, on: bool, pair: Pair) -> Envelope {
    let payload = reaction_payload(reaction, on, pair, 0);
    events::envelope(unique_id(), pair.tweet, payload)
}

async fn react(store: &CqlTweetStore, reaction: Reaction, on: bool, pair: Pair) -> Option<bool> {
    let event = reaction_event(reaction, on, pair);
    store
        .react(reaction, pair.user, pair.tweet, on, event)
        .await
        .unwrap()
}

/// The count `reaction` has on `tweet`.
async fn count_of(store: &CqlTweetStore, reaction: Reaction, tweet: u64) -> u64 {
    let tweet = store.get(tweet).await.unwrap().unwrap();
    match reaction {
        Reaction::Like => tweet.like_count,
        Reaction::Retweet => tweet.retweet_count,
    }
}

/// The staged events about `tweet`, as an operator's peek at the outbox finds them.
async fn staged_about(store: &CqlTweetStore, tweet: u64) -> Vec<Envelope> {
    let pending = store.outbox().peek(100_000).await.unwrap();
    let about = |event: &Envelope| match &event.payload {
        Some(Payload::TweetCreated(e)) => e.tweet_id,
        Some(Payload::TweetDeleted(e)) => e.tweet_id,
        Some(Payload::TweetLiked(e)) => e.tweet_id,
        Some(Payload::TweetUnliked(e)) => e.tweet_id,
        Some(Payload::Retweeted(e)) => e.tweet_id,
        Some(Payload::Unretweeted(e)) => e.tweet_id,
        _ => 0,
    };
    pending
        .into_iter()
        .map(|p| p.event)
        .filter(|e| about(e) == tweet)
        .collect()
}

/// The staged events of `pair`'s changes at `version`: `(type, event id, count op)`.
async fn staged_changes(
    store: &CqlTweetStore,
    pair: Pair,
    version: u64,
) -> Vec<(String, u64, Option<String>)> {
    let user_and_version = |event: &Envelope| match &event.payload {
        Some(Payload::TweetLiked(e)) => Some((e.user_id, e.version)),
        Some(Payload::TweetUnliked(e)) => Some((e.user_id, e.version)),
        Some(Payload::Retweeted(e)) => Some((e.user_id, e.version)),
        Some(Payload::Unretweeted(e)) => Some((e.user_id, e.version)),
        _ => None,
    };
    staged_about(store, pair.tweet)
        .await
        .into_iter()
        .filter(|e| user_and_version(e) == Some((pair.user, version)))
        .map(|e| {
            (
                e.r#type,
                e.event_id,
                e.headers.get(COUNT_OP_HEADER).cloned(),
            )
        })
        .collect()
}

/// Step 1 of `pair`'s change of `reaction` to `on`, decided now, and nothing more: what a
/// call leaves that dies (or whose batch fails) right after its lightweight transaction.
async fn decide(store: &CqlTweetStore, reaction: Reaction, on: bool, pair: Pair) -> Change {
    let inner = &store.inner;
    let statements = inner.reaction(reaction);
    let (user, tweet) = (to_cql(pair.user).unwrap(), to_cql(pair.tweet).unwrap());
    let session = inner.ks.session();
    let (decided, result) = match inner.last_change(statements, user, tweet).await.unwrap() {
        None => {
            assert!(on, "a pair's first change is a like or a retweet");
            let first = Change {
                on,
                version: 1,
                at: clock::now_millis(),
            };
            let values = (user, tweet, CqlTimestamp(first.at));
            let result = session.execute_unpaged(&statements.first, values).await;
            (first, result)
        }
        Some(last) => {
            let next = last.next(on);
            let at = CqlTimestamp(next.at);
            let values = (on, next.version, at, user, tweet, last.version);
            let result = session.execute_unpaged(&statements.change, values).await;
            (next, result)
        }
    };
    assert!(lwt(result).unwrap().applied().unwrap());
    decided
}

/// A change of `reaction` to `on` whose caller died right after deciding it (step 1 only):
/// the repeated call (a new request, with its own event), and separately the next
/// different call on another such pair, each stage exactly the missing event, with the
/// decided version and count op, and move the count exactly once. Both are made while the
/// dead callers' changes are fresh, so they first wait [`ABANDONED_AFTER`] for them.
async fn a_change_cut_short_after_its_decision_is_finished(reaction: Reaction, on: bool) {
    let Some(store) = cql_store().await else {
        return;
    };
    let (author, tweet) = posted(&store).await;
    let pair = |user| Pair {
        user,
        tweet,
        author,
    };
    let (fan, repeats, moves_on) = (pair(unique_id()), pair(unique_id()), pair(unique_id()));
    // Someone else's reaction, so that a count taken back below zero would show.
    assert_eq!(react(&store, reaction, true, fan).await, Some(true));
    if !on {
        for pair in [repeats, moves_on] {
            assert_eq!(react(&store, reaction, true, pair).await, Some(true));
        }
    }
    let before = count_of(&store, reaction, tweet).await;
    let version: u64 = if on { 1 } else { 2 };
    let (decided, next) = (routing_key(reaction, on), routing_key(reaction, !on));
    let mut decided_for_moves_on = None;
    for pair in [repeats, moves_on] {
        decided_for_moves_on = Some(decide(&store, reaction, on, pair).await);
        assert!(staged_changes(&store, pair, version).await.is_empty());
    }
    assert_eq!(count_of(&store, reaction, tweet).await, before);

    let (repeat_event, next_event) = (
        reaction_event(reaction, on, repeats),
        reaction_event(reaction, !on, moves_on),
    );
    let (repeated, moved_on) = futures_util::future::join(
        store.react(reaction, repeats.user, tweet, on, repeat_event.clone()),
        store.react(reaction, moves_on.user, tweet, !on, next_event.clone()),
    )
    .await;
    assert_eq!(repeated.unwrap(), Some(false), "decided before the repeat");
    assert_eq!(moved_on.unwrap(), Some(true));
    let delta: i64 = if on { 1 } else { -1 };
    // `repeats`' change moved the count once; `moves_on`'s, and then back.
    let after = before.checked_add_signed(delta).unwrap();
    assert_eq!(count_of(&store, reaction, tweet).await, after);

    let name = store.inner.reaction(reaction).name;
    let op = |pair: Pair, version: u64| Some(format!("{name}:{}:{version}", pair.user));
    let finished = staged_changes(&store, repeats, version).await;
    assert_eq!(finished.len(), 1, "the missing event, once: {finished:?}");
    let (kind, id, count_op) = &finished[0];
    assert_eq!((kind.as_str(), count_op), (decided, &op(repeats, version)));
    assert_ne!(
        *id, repeat_event.event_id,
        "the repeat's own event announces nothing"
    );
    let finished = staged_changes(&store, moves_on, version).await;
    assert_eq!(finished.len(), 1, "the missing event, once: {finished:?}");
    assert_eq!(
        (finished[0].0.as_str(), &finished[0].2),
        (decided, &op(moves_on, version))
    );
    assert_eq!(
        staged_changes(&store, moves_on, version + 1).await,
        vec![(
            next.to_owned(),
            next_event.event_id,
            op(moves_on, version + 1)
        )]
    );

    // Settled now: a repeat stages and counts nothing more.
    assert_eq!(react(&store, reaction, on, repeats).await, Some(false));
    assert_eq!(staged_changes(&store, repeats, version).await.len(), 1);
    assert_eq!(count_of(&store, reaction, tweet).await, after);
    let flags = store
        .liked_and_retweeted(repeats.user, vec![tweet])
        .await
        .unwrap();
    let reacted = match reaction {
        Reaction::Like => flags[0].0,
        Reaction::Retweet => flags[0].1,
    };
    assert_eq!(reacted, on);
    // The mirror rows tell the same as the pairs' rows, whatever order the batches landed in.
    let mirror = match reaction {
        Reaction::Like => "SELECT user_id FROM {ks}.tweet_likes WHERE tweet_id = ? AND user_id = ?",
        Reaction::Retweet => {
            "SELECT user_id FROM {ks}.tweet_retweets WHERE tweet_id = ? AND user_id = ?"
        }
    };
    for (pair, state) in [(repeats, on), (moves_on, !on)] {
        let listed = has_row(&store, mirror, (tweet as i64, pair.user as i64)).await;
        assert_eq!(listed, state);
    }
    // The dead caller of `moves_on`'s change wakes up and writes its batch after all, after
    // the next change's: its mirror row loses to the later one's, its count op is a no-op.
    let late = decided_for_moves_on.unwrap();
    let statements = store.inner.reaction(reaction);
    let event = reaction_event(reaction, on, moves_on);
    let writing = store
        .inner
        .write_reaction(statements, moves_on, late, &event);
    writing.await.unwrap();
    let listed = has_row(&store, mirror, (tweet as i64, moves_on.user as i64)).await;
    assert_eq!(listed, !on, "no stale mirror row comes back");
    assert_eq!(count_of(&store, reaction, tweet).await, after);
    let last = store
        .inner
        .last_change(statements, moves_on.user as i64, tweet as i64);
    let last = last.await.unwrap().unwrap();
    assert!(
        store
            .inner
            .reaction_settled(statements, moves_on, &last)
            .await
            .unwrap()
    );
}

fn routing_key(reaction: Reaction, on: bool) -> &'static str {
    let pair = Pair {
        user: 1,
        tweet: 1,
        author: 1,
    };
    twtr_common::events::routing_key(&reaction_payload(reaction, on, pair, 1))
}

#[tokio::test]
async fn a_like_cut_short_after_its_decision_is_finished_by_the_next_call() {
    a_change_cut_short_after_its_decision_is_finished(Reaction::Like, true).await;
}

#[tokio::test]
async fn an_unlike_cut_short_after_its_decision_is_finished_by_the_next_call() {
    a_change_cut_short_after_its_decision_is_finished(Reaction::Like, false).await;
}

#[tokio::test]
async fn a_retweet_cut_short_after_its_decision_is_finished_by_the_next_call() {
    a_change_cut_short_after_its_decision_is_finished(Reaction::Retweet, true).await;
}

#[tokio::test]
async fn an_unretweet_cut_short_after_its_decision_is_finished_by_the_next_call() {
    a_change_cut_short_after_its_decision_is_finished(Reaction::Retweet, false).await;
}

/// The `TweetDeleted` events staged for `tweet`.
async fn staged_deletions(store: &CqlTweetStore, tweet: u64) -> Vec<u64> {
    let staged = staged_about(store, tweet).await.into_iter();
    staged
        .filter(|e| matches!(e.payload, Some(Payload::TweetDeleted(_))))
        .map(|e| e.event_id)
        .collect()
}

fn deletion_event(tweet: u64, author: u64) -> Envelope {
    let payload = Payload::TweetDeleted(TweetDeleted {
        mentioned_user_ids: Vec::new(),
        tweet_id: tweet,
        author_id: author,
    });
    events::envelope(unique_id(), tweet, payload)
}

const AUTHOR_TWEET: &str =
    "SELECT tweet_id FROM {ks}.author_tweets WHERE author_id = ? AND tweet_id = ?";
const TIMELINE_ROW: &str = "SELECT tweet_id FROM {ks}.timeline WHERE bucket = ? AND tweet_id = ?";

/// A deletion whose caller died right after deciding it: the repeated delete (a new
/// request), and separately the next different call on another such tweet (a like, and
/// the service's `finish_deletion`), each stage exactly the missing `TweetDeleted` and
/// move the author's count exactly once.
#[tokio::test]
async fn a_deletion_cut_short_after_its_decision_is_finished_by_the_next_call() {
    let Some(store) = cql_store().await else {
        return;
    };
    let (author, user) = (unique_id(), unique_id());
    let [kept, repeated, next] = [(); 3].map(|()| unique_id());
    for id in [kept, repeated, next] {
        let tweet = conformance::tweet(id, author);
        assert!(store.create(tweet, event(unique_id())).await.unwrap());
    }
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
    // Step 1 of two deletions, and nothing more.
    for id in [repeated, next] {
        let values = (CqlTimestamp(clock::now_millis()), id as i64);
        let inner = &store.inner;
        let result = inner
            .ks
            .session()
            .execute_unpaged(&inner.delete_tweet, values);
        assert!(lwt(result.await).unwrap().applied().unwrap());
        assert_eq!(store.get(id).await.unwrap(), None, "reads as gone at once");
    }
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);

    let retry = deletion_event(repeated, author);
    let like = reaction_event(
        Reaction::Like,
        true,
        Pair {
            user,
            tweet: next,
            author,
        },
    );
    let (deleted, liked) = futures_util::future::join(
        store.delete(repeated, retry.clone()),
        store.like(user, next, like.clone()),
    )
    .await;
    assert!(!deleted.unwrap(), "deleted before the repeat");
    assert_eq!(liked.unwrap(), None, "a deleted tweet");
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    for id in [repeated, next] {
        let staged = staged_deletions(&store, id).await;
        assert_eq!(staged.len(), 1, "the missing event, once: {staged:?}");
        assert_ne!(staged[0], retry.event_id);
        let bucket = id::millis_of(id) / BUCKET_MS;
        assert!(!has_row(&store, AUTHOR_TWEET, (author as i64, id as i64)).await);
        assert!(!has_row(&store, TIMELINE_ROW, (bucket, id as i64)).await);
    }
    assert!(
        staged_about(&store, next)
            .await
            .iter()
            .all(|e| e.event_id != like.event_id)
    );

    // Settled now: nothing is staged or counted again.
    assert!(
        !store
            .delete(repeated, deletion_event(repeated, author))
            .await
            .unwrap()
    );
    store.finish_deletion(next).await.unwrap();
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    for id in [repeated, next] {
        assert_eq!(staged_deletions(&store, id).await.len(), 1);
    }
}

/// A deletion of a tweet whose create died after its claim (by the version before the tallies,
/// which claimed the ID with the tweet's row first): the create is finished first (its event
/// rebuilt from the row, its count moved), then the deletion, so each of the two events is
/// staged once and the count ends where it began.
#[tokio::test]
async fn a_deletion_first_finishes_a_create_cut_short_after_its_claim() {
    let Some(store) = cql_store().await else {
        return;
    };
    let (author, id) = (unique_id(), unique_id());
    let tweet = conformance::tweet(id, author);
    legacy_claim(&store, &tweet).await;
    assert_eq!(store.get(id).await.unwrap(), Some(tweet));
    let deletion = deletion_event(id, author);
    assert!(store.delete(id, deletion.clone()).await.unwrap());
    let staged = staged_about(&store, id).await;
    let created: Vec<&Envelope> = staged
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::TweetCreated(_))))
        .collect();
    assert_eq!(created.len(), 1, "{staged:?}");
    assert_eq!(staged_deletions(&store, id).await, vec![deletion.event_id]);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
    for op in ["created", "deleted"] {
        let op = format!("tweet:{id}:{op}");
        let applied = store.inner.authors.applied(author as i64, &op);
        assert!(applied.await.unwrap(), "{op}");
    }
    assert!(!has_row(&store, AUTHOR_TWEET, (author as i64, id as i64)).await);
}

/// A caller that goes away (its deadline drops the future) after the like was decided does
/// not leave it half-done: the store's own task writes it, event and count.
#[tokio::test]
async fn a_like_whose_caller_goes_away_is_written_all_the_same() {
    let Some(store) = cql_store().await else {
        return;
    };
    let (author, tweet) = posted(&store).await;
    let pair = Pair {
        user: unique_id(),
        tweet,
        author,
    };
    let event = reaction_event(Reaction::Like, true, pair);
    let call = store.like(pair.user, tweet, event.clone());
    let gave_up = tokio::time::timeout(Duration::from_millis(1), call).await;
    assert!(gave_up.is_err(), "the caller went away before the answer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_of(&store, Reaction::Like, tweet).await == 0 {
        assert!(Instant::now() < deadline, "the like was never counted");
        tokio::time::sleep(WAIT_POLL).await;
    }
    let staged = staged_changes(&store, pair, 1).await;
    assert_eq!(staged.len(), 1);
    assert_eq!(staged[0].1, event.event_id);
}

/// A purge pass reads from its cursor, stops the cursor at the first hour with an
/// unfinished purge, moves it past that hour once the purge is done (never closer to now
/// than `CURSOR_LAG`), and never reads before it again.
#[tokio::test]
async fn purge_passes_read_from_a_cursor_past_finished_hours() {
    let Some(store) = cql_store().await else {
        return;
    };
    let [old, older] = [unique_id(), unique_id()];
    let hour = clock::now_millis() / BUCKET_MS;
    let (old_hour, older_hour) = (hour - 5, hour - 10);
    let queue = "INSERT INTO {ks}.author_purges_by_hour (bucket, author_id) VALUES (?, ?)";
    let cursor = |store| async move {
        let rows = run(
            store,
            "SELECT bucket FROM {ks}.purge_cursor WHERE scope = 'all'",
            (),
        );
        let row = rows
            .await
            .into_rows_result()
            .unwrap()
            .single_row::<(Option<i64>,)>();
        row.unwrap().0.unwrap()
    };
    run(&store, queue, (old_hour, old as i64)).await;
    let mine = PendingPurge {
        user: old,
        slot: old_hour,
    };
    // Passes of other tests may move the cursor meanwhile (one that read it before it was
    // set back writes its own later value): set it before the hour again until a pass of
    // this test starts from there and leaves it held at the unfinished purge.
    let mut held = false;
    for _ in 0..10 {
        let back = "UPDATE {ks}.purge_cursor SET bucket = ? WHERE scope = 'all'";
        run(&store, back, (old_hour - 1,)).await;
        let found = store.pending_purges(100_000).await.unwrap().contains(&mine);
        if found && cursor(&store).await <= old_hour {
            held = true;
            break;
        }
    }
    assert!(
        held,
        "a pass read the cursor's hour and held the cursor at the purge"
    );
    store.purge_done(mine).await.unwrap();
    let mut moved = i64::MIN;
    for _ in 0..10 {
        assert!(!store.pending_purges(100_000).await.unwrap().contains(&mine));
        moved = cursor(&store).await;
        if moved > old_hour {
            break;
        }
    }
    assert!(moved > old_hour, "moved past the finished hour: {moved}");
    let now_hour = clock::now_millis() / BUCKET_MS;
    assert!(moved < now_hour, "but never up to now");
    // An hour before the cursor is never read again.
    run(&store, queue, (older_hour, older as i64)).await;
    let pending = store.pending_purges(100_000).await.unwrap();
    assert!(pending.iter().all(|p| p.user != older));
}

/// A purge queued in the one-partition table this replaced (by this version before its
/// upgrade, or by a replica of the previous version during one) is drained from it.
#[tokio::test]
async fn purges_pending_in_the_old_table_are_drained() {
    let Some(store) = cql_store().await else {
        return;
    };
    let user = unique_id();
    let legacy = "INSERT INTO {ks}.author_purges (scope, author_id) VALUES ('pending', ?)";
    run(&store, legacy, (user as i64,)).await;
    let pending = conformance::pending_purges_of(&store, user).await;
    assert_eq!(pending.len(), 1);
    store.purge_done(pending[0]).await.unwrap();
    assert!(
        conformance::pending_purges_of(&store, user)
            .await
            .is_empty()
    );
    let gone = "SELECT author_id FROM {ks}.author_purges WHERE scope = 'pending' AND author_id = ?";
    assert!(!has_row(&store, gone, (user as i64,)).await);
}

fn page(before: Option<u64>, since: Option<u64>) -> PageRequest {
    PageRequest {
        before,
        since,
        limit: twtr_common::Limit::DEFAULT,
    }
}

#[test]
fn page_bounds_match_scan_page_ranges() {
    let bounds = |before, since| PageBounds::of(&page(before, since)).map(|b| (b.low, b.high));
    assert_eq!(bounds(None, None), Some((0, i64::MAX)));
    assert_eq!(bounds(Some(10), None), Some((0, 9)));
    assert_eq!(bounds(None, Some(10)), Some((11, i64::MAX)));
    assert_eq!(bounds(Some(12), Some(10)), Some((11, 11)));
    assert_eq!(bounds(Some(11), Some(10)), None);
    assert_eq!(bounds(Some(0), None), None);
    assert_eq!(bounds(None, Some(u64::MAX)), None);
    assert_eq!(bounds(None, Some(i64::MAX as u64)), None);
}

/// Not a check: how long N sequential creates by one author take against the node (run with
/// `--ignored --nocapture`; targets live in the benchmark report, never in tests).
#[tokio::test]
#[ignore]
async fn measure_sequential_creates() {
    let Some(store) = cql_store().await else {
        return;
    };
    const N: usize = 300;
    let author = unique_id();
    let started = std::time::Instant::now();
    for _ in 0..N {
        let id = unique_id();
        store
            .create(conformance::tweet(id, author), event(unique_id()))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    println!(
        "{N} sequential creates of one author: {took:?}, {:.0} creates/s",
        N as f64 / took.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let creates = (0..N).map(|_| {
        let store = &store;
        async move {
            let id = unique_id();
            store
                .create(conformance::tweet(id, author), event(unique_id()))
                .await
        }
    });
    let failed = futures_util::future::join_all(creates)
        .await
        .iter()
        .filter(|result| result.is_err())
        .count();
    let took = started.elapsed();
    println!(
        "{N} concurrent creates of one author: {took:?}, {:.0} creates/s, {failed} failed",
        N as f64 / took.as_secs_f64()
    );
}

/// A tweet stamped with its ID's time, as the service stamps them (the suite's are all older).
fn fresh_tweet(id: u64, author: u64) -> TweetRecord {
    TweetRecord {
        created_at_ms: id::millis_of(id),
        ..conformance::tweet(id, author)
    }
}

/// The author's tally as stored: its count (base and pending ops) and how many ops are pending.
async fn tally_of(store: &CqlTweetStore, author: u64) -> twtr_common::cql::Tallied {
    let key = author as i64;
    let read = store.inner.author_tallies.read(&[key]).await.unwrap();
    read.get(&key).copied().unwrap_or_default()
}

/// Folds every pending op of `author`, however young (the test node shares this clock).
async fn fold_now(store: &CqlTweetStore, author: u64) -> twtr_common::cql::Folded {
    // Past the millisecond of the newest op, which the fold's age is counted from.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let tallies = &store.inner.author_tallies;
    tallies.fold(author as i64, Duration::ZERO).await.unwrap()
}

/// A count read between two folds sums the base and the ops not folded yet; a fold moves ops
/// only once they are older than its age, and the count reads the same before and after.
#[tokio::test]
async fn the_count_before_a_fold_includes_the_pending_ops() {
    let Some(store) = cql_store().await else {
        return;
    };
    let author = unique_id();
    for _ in 0..3 {
        let tweet = fresh_tweet(unique_id(), author);
        store.create(tweet, event(unique_id())).await.unwrap();
    }
    assert_eq!(tally_of(&store, author).await.pending, 3);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
    // Younger than the service's age: left for a later pass.
    let young = store.inner.author_tallies.fold(author as i64, FOLD_AFTER);
    assert_eq!(young.await.unwrap().folded, 0);
    let folded = fold_now(&store, author).await;
    assert_eq!((folded.folded, folded.left), (3, 0));
    assert_eq!(tally_of(&store, author).await.pending, 0);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
    let tweet = fresh_tweet(unique_id(), author);
    store.create(tweet, event(unique_id())).await.unwrap();
    let tallied = tally_of(&store, author).await;
    assert_eq!((tallied.count, tallied.pending), (4, 1));
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![4]);
}

/// A create's batch that runs again after its op was folded (a retry that raced the first
/// attempt, a batch log replay) rewrites the op row with its first timestamp, which the fold's
/// delete shadows: counted once. So does a retry through `create_again`.
#[tokio::test]
async fn a_create_batch_run_again_after_the_fold_counts_once() {
    let Some(store) = cql_store().await else {
        return;
    };
    let [author, id, first_event] = [(); 3].map(|()| unique_id());
    let tweet = conformance::tweet(id, author);
    store
        .create(tweet.clone(), event(first_event))
        .await
        .unwrap();
    assert_eq!(fold_now(&store, author).await.folded, 1);
    store
        .inner
        .write_batch(&tweet, &event(first_event))
        .await
        .unwrap();
    assert_eq!(tally_of(&store, author).await.pending, 0, "shadowed");
    store
        .create_again(tweet.clone(), event(unique_id()))
        .await
        .unwrap();
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    assert_eq!(fold_now(&store, author).await.folded, 0);
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![1]);
    assert_eq!(store.get(id).await.unwrap(), Some(tweet));
}

/// After a deletion, a retry of the create finds the tweet deleted and writes nothing (no
/// `TweetCreated`); and even the create's very batch run again late (its rows at the creation
/// time, every deletion write later) brings back neither the tweet, nor its timeline rows, nor
/// its count, whether the ops were folded in between or not.
#[tokio::test]
async fn a_create_run_again_after_the_deletion_stays_deleted() {
    let Some(store) = cql_store().await else {
        return;
    };
    for fold_between in [false, true] {
        let [author, id, first_event, retry_event] = [(); 4].map(|()| unique_id());
        let tweet = conformance::tweet(id, author);
        store
            .create(tweet.clone(), event(first_event))
            .await
            .unwrap();
        assert!(store.delete(id, deletion_event(id, author)).await.unwrap());
        if fold_between {
            assert_eq!(fold_now(&store, author).await.folded, 2);
        }
        store
            .create_again(tweet.clone(), event(retry_event))
            .await
            .unwrap();
        assert!(staged_of(&store, &[retry_event]).await.is_empty());
        // The batch itself, late.
        store
            .inner
            .write_batch(&tweet, &event(first_event))
            .await
            .unwrap();
        assert_eq!(
            store.get(id).await.unwrap(),
            None,
            "fold between: {fold_between}"
        );
        let bucket = id::millis_of(id) / BUCKET_MS;
        assert!(!has_row(&store, AUTHOR_TWEET, (author as i64, id as i64)).await);
        assert!(!has_row(&store, TIMELINE_ROW, (bucket, id as i64)).await);
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
        fold_now(&store, author).await;
        assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![0]);
        assert!(!store.delete(id, deletion_event(id, author)).await.unwrap());
        assert_eq!(staged_deletions(&store, id).await.len(), 1);
    }
}

/// One author's concurrent posts and deletions never contend (no compare-and-set on the post
/// path), and folds running all along lose none of them.
#[tokio::test]
async fn concurrent_posts_of_one_author_count_exactly_across_folds() {
    let Some(store) = cql_store().await else {
        return;
    };
    const N: usize = 50;
    let author = unique_id();
    let ids: Vec<u64> = (0..N).map(|_| unique_id()).collect();
    let folding = std::sync::atomic::AtomicBool::new(true);
    let folds = async {
        let mut folded = 0;
        while folding.load(std::sync::atomic::Ordering::Relaxed) {
            folded += store.inner.fold_counts(Duration::ZERO).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        folded
    };
    let writes = async {
        let creates = ids.iter().map(|&id| {
            let store = &store;
            async move {
                let tweet = conformance::tweet(id, author);
                store.create(tweet, event(unique_id())).await.unwrap();
            }
        });
        futures_util::future::join_all(creates).await;
        let deletions = ids[..5].iter().map(|&id| {
            let store = &store;
            async move { store.delete(id, deletion_event(id, author)).await.unwrap() }
        });
        futures_util::future::join_all(deletions).await;
        folding.store(false, std::sync::atomic::Ordering::Relaxed);
    };
    let (folded, ()) = futures_util::future::join(folds, writes).await;
    let expected = vec![(N - 5) as u64];
    assert_eq!(
        store.count_by_authors(vec![author]).await.unwrap(),
        expected
    );
    let last = fold_now(&store, author).await;
    assert_eq!(folded + last.folded, N + 5, "every op folded once");
    assert_eq!(tally_of(&store, author).await.pending, 0);
    assert_eq!(
        store.count_by_authors(vec![author]).await.unwrap(),
        expected
    );
}

/// Counts the ledger kept before the tallies stay counted: the ledger's count is the base of
/// everything before, and the tallies add to it.
#[tokio::test]
async fn counts_kept_by_the_ledger_before_the_tallies_still_count() {
    let Some(store) = cql_store().await else {
        return;
    };
    let author = unique_id();
    for _ in 0..2 {
        let op = format!("tweet:{}:created", unique_id());
        store
            .inner
            .authors
            .apply(author as i64, &op, 1)
            .await
            .unwrap();
    }
    let (id, gone) = (unique_id(), unique_id());
    for id in [id, gone] {
        let tweet = conformance::tweet(id, author);
        store.create(tweet, event(unique_id())).await.unwrap();
    }
    assert!(
        store
            .delete(gone, deletion_event(gone, author))
            .await
            .unwrap()
    );
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
    fold_now(&store, author).await;
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
    // A replica of the version before meets today's ops in the ledger as applied.
    for op in [
        format!("tweet:{id}:created"),
        format!("tweet:{gone}:deleted"),
    ] {
        store
            .inner
            .authors
            .apply(author as i64, &op, 1)
            .await
            .unwrap();
    }
    assert_eq!(store.count_by_authors(vec![author]).await.unwrap(), vec![3]);
}
