//! The CQL follow store against a real node: its conformance suite, and what a crash or a
//! caller that goes away leaves at each step of a change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use twtr_common::cql::ledger::LEDGER_TTL;
use twtr_common::cql::testing::keyspace_for;

use tokio::time::Instant;
use twtr_common::clock;
use twtr_common::cql::Lwt;

use super::*;
use crate::store::conformance::{
    followed, pending_purges_of, staged_events, unfollowed, users, version_of,
};

/// One ID generator for every store this test process opens, as a deployment has one per
/// process: the checks run at once on one keyspace, and stores with generators of their own
/// (one worker number) minted the same outbox `seq` in the same millisecond, so one check's
/// staged event overwrote another's (a check then missed its event, now and then, under load).
fn shared_ids() -> Arc<twtr_common::IdGenerator> {
    static IDS: std::sync::OnceLock<Arc<twtr_common::IdGenerator>> = std::sync::OnceLock::new();
    Arc::clone(
        IDS.get_or_init(|| Arc::new(twtr_common::IdGenerator::new(1).expect("worker 1 is valid"))),
    )
}

async fn open_store() -> Option<CqlFollowStore> {
    let (session, config) = keyspace_for(&crate::store::SCHEMA).await?;
    let ks = Keyspace::new(session, &config, "followers").unwrap();
    Some(CqlFollowStore::new(ks, shared_ids()).await.unwrap())
}

async fn open_cql() -> Option<(Arc<dyn FollowStore>, ())> {
    Some((Arc::new(open_store().await?), ()))
}

crate::follow_store_conformance!(optional open_cql);

fn counts(followers: u64, following: u64) -> Counts {
    Counts {
        followers,
        following,
    }
}

/// What a follow that died right after step 1 leaves: the edge decided `ago`, nothing else.
async fn decided_follow(store: &CqlFollowStore, pair: Pair, event: &Envelope, ago: Duration) {
    let (follower, followee) = pair.keys();
    let at = ts(clock::now_millis() - ago.as_millis() as i64);
    let values = (follower, followee, key(event.event_id), at);
    let inner = &store.inner;
    let decided = inner.execute_lwt(&inner.first_follow, values).await;
    assert!(matches!(decided.unwrap(), Lwt::Applied));
}

/// What an unfollow that died right after step 1 leaves, `ago`.
async fn decided_unfollow(store: &CqlFollowStore, pair: Pair, ago: Duration) {
    let inner = &store.inner;
    let edge = inner.edge(pair).await.unwrap().unwrap();
    let (follower, followee) = pair.keys();
    let at = ts(clock::now_millis() - ago.as_millis() as i64);
    let values = (
        false,
        edge.version + 1,
        edge.follow_id,
        at,
        follower,
        followee,
        edge.version,
    );
    let decided = inner.execute_lwt(&inner.change_edge, values).await;
    assert!(matches!(decided.unwrap(), Lwt::Applied));
}

fn long_ago() -> Duration {
    ABANDONED_AFTER + Duration::from_secs(60)
}

#[tokio::test]
async fn an_abandoned_follow_is_finished_with_its_own_event() {
    let Some(store) = open_store().await else {
        return;
    };
    let [a, b] = users();
    let pair = Pair {
        follower: a,
        followee: b,
    };
    let lost = followed(a, b);
    decided_follow(&store, pair, &lost, long_ago()).await;
    assert!(
        !store.is_following(a, b).await.unwrap(),
        "not followed until its lists are written"
    );
    let retry = followed(a, b);
    assert_eq!(
        store.follow(a, b, retry.clone()).await.unwrap(),
        FollowOutcome::AlreadyFollowing,
        "the edge was decided before this call"
    );
    assert!(store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![counts(0, 1), counts(1, 0)]
    );
    let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
    let announced = staged
        .get(&lost.event_id)
        .expect("announced under its own ID");
    assert_eq!(version_of(announced), 1);
    assert!(!staged.contains_key(&retry.event_id));
}

#[tokio::test]
async fn a_change_in_flight_is_waited_for_and_its_own_retry_finishes_it() {
    let Some(store) = open_store().await else {
        return;
    };
    let [a, b] = users();
    let pair = Pair {
        follower: a,
        followee: b,
    };
    let first = followed(a, b);
    decided_follow(&store, pair, &first, Duration::ZERO).await;
    // Another caller's fresh change: wait for it, then give up rather than take it over.
    let started = Instant::now();
    assert!(store.follow(a, b, followed(a, b)).await.is_err());
    assert!(started.elapsed() >= MAX_WAIT);
    assert!(!store.is_following(a, b).await.unwrap());
    // The same follow again (same event): its own, finished at once.
    assert_eq!(
        store.follow(a, b, first.clone()).await.unwrap(),
        FollowOutcome::Followed
    );
    assert!(store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![counts(0, 1), counts(1, 0)]
    );
    let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
    assert_eq!(staged.get(&first.event_id).map(version_of), Some(1));
}

#[tokio::test]
async fn an_abandoned_unfollow_is_taken_over_by_one_unfollow() {
    let Some(store) = open_store().await else {
        return;
    };
    let [a, b] = users();
    let pair = Pair {
        follower: a,
        followee: b,
    };
    assert_eq!(
        store.follow(a, b, followed(a, b)).await.unwrap(),
        FollowOutcome::Followed
    );
    decided_unfollow(&store, pair, long_ago()).await;
    let store: Arc<dyn FollowStore> = Arc::new(store);
    let retries: Vec<Envelope> = (0..4).map(|_| unfollowed(a, b)).collect();
    let outcomes = futures_util::future::join_all(
        retries
            .iter()
            .map(|event| store.unfollow(a, b, event.clone())),
    )
    .await;
    let outcomes: Vec<bool> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes.iter().filter(|taken| **taken).count(),
        1,
        "one retry announces it: {outcomes:?}"
    );
    assert!(!store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![Counts::default(); 2]
    );
    let staged = staged_events(&store).await;
    for (event, taken) in retries.iter().zip(&outcomes) {
        let announced = staged.get(&event.event_id);
        assert_eq!(announced.is_some(), *taken);
        if let Some(announced) = announced {
            assert_eq!(
                version_of(announced),
                2,
                "the version decided before the crash"
            );
        }
    }
}

#[tokio::test]
async fn a_follow_finishes_an_abandoned_unfollow_and_announces_itself() {
    let Some(store) = open_store().await else {
        return;
    };
    let [a, b] = users();
    let pair = Pair {
        follower: a,
        followee: b,
    };
    assert_eq!(
        store.follow(a, b, followed(a, b)).await.unwrap(),
        FollowOutcome::Followed
    );
    decided_unfollow(&store, pair, long_ago()).await;
    let again = followed(a, b);
    assert_eq!(
        store.follow(a, b, again.clone()).await.unwrap(),
        FollowOutcome::Followed
    );
    assert!(store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![counts(0, 1), counts(1, 0)]
    );
    let edge = store.inner.edge(pair).await.unwrap().unwrap();
    assert_eq!(edge.version, 3, "followed, unfollowed, followed again");
    let staged = staged_events(&(Arc::new(store) as Arc<dyn FollowStore>)).await;
    assert_eq!(staged.get(&again.event_id).map(version_of), Some(3));
}

#[tokio::test]
async fn counts_a_crash_left_unmoved_are_moved_by_the_next_call() {
    let Some(store) = open_store().await else {
        return;
    };
    let [a, b] = users();
    let pair = Pair {
        follower: a,
        followee: b,
    };
    // Steps 1 and 2 of a follow, and no step 3.
    let event = followed(a, b);
    decided_follow(&store, pair, &event, Duration::ZERO).await;
    let (follower, followee) = pair.keys();
    let (id, at) = (key(event.event_id), ts(clock::now_millis()));
    let rows = (
        (follower, id, followee, at),
        (followee, id, follower, at),
        store.inner.outbox.row(&event),
    );
    let inner = &store.inner;
    inner
        .session()
        .batch(&inner.follow_batch, rows)
        .await
        .unwrap();
    assert!(store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![Counts::default(); 2]
    );
    // A repeated follow changes nothing, but moves the counts; once only.
    for _ in 0..2 {
        assert_eq!(
            store.follow(a, b, followed(a, b)).await.unwrap(),
            FollowOutcome::AlreadyFollowing
        );
        assert_eq!(
            store.counts(vec![a, b]).await.unwrap(),
            vec![counts(0, 1), counts(1, 0)]
        );
    }
}

/// A purge queued in the one-partition table this replaced (by this version before its
/// upgrade, or by a replica of the previous version during one) is drained from it.
#[tokio::test]
async fn purges_pending_in_the_old_table_are_drained() {
    let Some(store) = open_store().await else {
        return;
    };
    let [user] = users();
    let session = store.inner.session();
    let ks = store.inner.ks.name();
    let queue = "INSERT INTO {ks}.user_purges (scope, user_id) VALUES ('pending', ?)";
    let queue = twtr_common::cql::qualify(queue, ks);
    session.query_unpaged(queue, (key(user),)).await.unwrap();
    let store: Arc<dyn FollowStore> = Arc::new(store);
    let pending = pending_purges_of(&store, user).await;
    assert_eq!(pending.len(), 1);
    store.purge_done(pending[0]).await.unwrap();
    assert!(pending_purges_of(&store, user).await.is_empty());
}

#[test]
fn counts_are_repaired_only_while_the_ledger_remembers_ops() {
    assert!(COUNT_REPAIR_WINDOW < LEDGER_TTL);
}
