//! The behaviour every [`FollowStore`] backend must show. Backends invoke
//! [`follow_store_conformance!`](crate::follow_store_conformance) in their tests.
//!
//! The checks run on a shared store: every CQL check in a test process uses the same keyspace,
//! at the same time. So a check uses only user and event IDs it minted with [`unique_id`], and
//! asks whether its own events are (or are not) among those staged, never what else is there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use twtr_common::store::PendingPurge;
use twtr_common::{IdGenerator, Limit, Page, PageRequest};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{Envelope, UserFollowed, UserUnfollowed};

use super::{Counts, Direction, FollowEntry, FollowOutcome, FollowStore};

/// Runs every check against the backend `$open` returns: `$open` is an async fn returning
/// `(Arc<dyn FollowStore>, guard)`, or with `optional`, `Option<(Arc<dyn FollowStore>, guard)>`
/// where `None` skips the check (a backend whose server this machine does not run).
#[macro_export]
macro_rules! follow_store_conformance {
    (@suite [$($optional:ident)?] $open:path) => {
        mod follow_store_conformance {
            use super::*;
            twtr_common::conformance_tests!($($optional)? $open => $crate::store::conformance:
                follow_is_idempotent_and_counted_once,
                unfollow_is_idempotent_and_uncounted_once,
                following_again_after_unfollowing,
                counts_come_in_the_order_asked,
                concurrent_changes_of_one_pair_stay_consistent,
                concurrent_followers_are_all_counted,
                versions_count_every_change_and_events_carry_them,
                lists_page_newest_first_without_overlap_or_skip,
                unfollowed_edges_leave_the_lists_and_a_follow_again_goes_on_top,
                deleted_accounts_are_refused_and_pending_until_purged,
            );
        }
    };
    (optional $open:path) => {
        $crate::follow_store_conformance!(@suite [optional] $open);
    };
    ($open:path) => {
        $crate::follow_store_conformance!(@suite [] $open);
    };
}

/// An ID no other check in this process uses (nor, as far as the worker number goes, another
/// test process on this machine).
pub fn unique_id() -> u64 {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| {
        IdGenerator::new((std::process::id() % 1024) as u16).expect("a worker number below 1024")
    })
    .next_id()
}

/// `N` fresh user IDs.
pub fn users<const N: usize>() -> [u64; N] {
    std::array::from_fn(|_| unique_id())
}

/// A `UserFollowed` event with a fresh ID, about the follower (as the service builds it).
pub fn followed(follower: u64, followee: u64) -> Envelope {
    let payload = Payload::UserFollowed(UserFollowed {
        follower_id: follower,
        followee_id: followee,
        version: 0,
    });
    twtr_common::events::envelope(unique_id(), follower, payload)
}

/// A `UserUnfollowed` event with a fresh ID, about the follower.
pub fn unfollowed(follower: u64, followee: u64) -> Envelope {
    let payload = Payload::UserUnfollowed(UserUnfollowed {
        follower_id: follower,
        followee_id: followee,
        version: 0,
    });
    twtr_common::events::envelope(unique_id(), follower, payload)
}

/// The IDs of every event staged in `store`'s outbox, this check's and others'.
pub async fn staged(store: &Arc<dyn FollowStore>) -> HashSet<u64> {
    twtr_common::outbox::pending_ids(store.outbox().as_ref(), 10_000)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Every event staged in `store`'s outbox, by ID.
pub async fn staged_events(store: &Arc<dyn FollowStore>) -> HashMap<u64, Envelope> {
    store
        .outbox()
        .peek(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|pending| (pending.event.event_id, pending.event))
        .collect()
}

/// The edge version a `UserFollowed` or `UserUnfollowed` event carries.
pub fn version_of(event: &Envelope) -> u64 {
    match &event.payload {
        Some(Payload::UserFollowed(followed)) => followed.version,
        Some(Payload::UserUnfollowed(unfollowed)) => unfollowed.version,
        other => panic!("not a follow event: {other:?}"),
    }
}

/// Follows, expecting the edge to be made.
pub async fn follow(store: &Arc<dyn FollowStore>, follower: u64, followee: u64) -> Envelope {
    let event = followed(follower, followee);
    assert_eq!(
        store
            .follow(follower, followee, event.clone())
            .await
            .unwrap(),
        FollowOutcome::Followed,
        "{follower} follows {followee}"
    );
    event
}

fn limit(n: u32) -> Limit {
    Limit::parse(Some(n)).unwrap()
}

/// Every entry of `user`'s list, read `size` at a time by following the `next` cursors; checks
/// that each page but the last is full.
pub async fn walk(
    store: &Arc<dyn FollowStore>,
    user: u64,
    direction: Direction,
    size: u32,
) -> Vec<FollowEntry> {
    let mut request = PageRequest::first(limit(size));
    let mut all = Vec::new();
    loop {
        let Page { items, next } = store.list(user, direction, request).await.unwrap();
        assert!(items.len() <= size as usize);
        all.extend(items.iter().copied());
        match next {
            Some(next) => {
                assert_eq!(items.len(), size as usize, "a page with a next is full");
                assert_eq!(items.last().map(|e| e.follow_id), Some(next));
                request.before = Some(next);
            }
            None => return all,
        }
    }
}

/// The other users of `entries`, in order.
pub fn others(entries: &[FollowEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.user_id).collect()
}

fn counts(followers: u64, following: u64) -> Counts {
    Counts {
        followers,
        following,
    }
}

pub async fn follow_is_idempotent_and_counted_once(store: Arc<dyn FollowStore>) {
    let [a, b, c, d] = users();
    let (first, repeated, other) = (followed(a, b), followed(a, b), followed(c, b));
    assert_eq!(
        store.follow(a, b, first.clone()).await.unwrap(),
        FollowOutcome::Followed
    );
    assert_eq!(
        store.follow(a, b, repeated.clone()).await.unwrap(),
        FollowOutcome::AlreadyFollowing
    );
    assert_eq!(
        store.follow(c, b, other.clone()).await.unwrap(),
        FollowOutcome::Followed
    );
    assert!(store.is_following(a, b).await.unwrap());
    assert!(!store.is_following(b, a).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b, c, d]).await.unwrap(),
        vec![counts(0, 1), counts(2, 0), counts(0, 1), Counts::default()]
    );
    let staged = staged(&store).await;
    assert!(staged.contains(&first.event_id) && staged.contains(&other.event_id));
    assert!(
        !staged.contains(&repeated.event_id),
        "a repeated follow publishes nothing"
    );
}

pub async fn unfollow_is_idempotent_and_uncounted_once(store: Arc<dyn FollowStore>) {
    let [a, b] = users();
    let never = unfollowed(a, b);
    let follow = followed(a, b);
    let (first, repeated) = (unfollowed(a, b), unfollowed(a, b));
    assert!(!store.unfollow(a, b, never.clone()).await.unwrap());
    assert_eq!(
        store.follow(a, b, follow.clone()).await.unwrap(),
        FollowOutcome::Followed
    );
    assert!(store.unfollow(a, b, first.clone()).await.unwrap());
    assert!(!store.unfollow(a, b, repeated.clone()).await.unwrap());
    assert!(!store.is_following(a, b).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![Counts::default(); 2]
    );
    let staged = staged(&store).await;
    assert!(staged.contains(&follow.event_id) && staged.contains(&first.event_id));
    assert!(
        !staged.contains(&never.event_id) && !staged.contains(&repeated.event_id),
        "unfollowing without an edge publishes nothing"
    );
}

/// An edge can come and go any number of times; each change counts and publishes once.
pub async fn following_again_after_unfollowing(store: Arc<dyn FollowStore>) {
    let [a, b] = users();
    let changes = [
        followed(a, b),
        unfollowed(a, b),
        followed(a, b),
        unfollowed(a, b),
        followed(a, b),
    ];
    for (i, event) in changes.iter().enumerate() {
        let changed = if i % 2 == 0 {
            store.follow(a, b, event.clone()).await.unwrap() == FollowOutcome::Followed
        } else {
            store.unfollow(a, b, event.clone()).await.unwrap()
        };
        assert!(changed, "change {i} took effect");
    }
    let repeated = followed(a, b);
    assert_eq!(
        store.follow(a, b, repeated.clone()).await.unwrap(),
        FollowOutcome::AlreadyFollowing
    );
    assert!(store.is_following(a, b).await.unwrap());
    assert!(!store.is_following(b, a).await.unwrap());
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![counts(0, 1), counts(1, 0)]
    );
    let staged = staged(&store).await;
    for (i, event) in changes.iter().enumerate() {
        assert!(staged.contains(&event.event_id), "change {i} is staged");
    }
    assert!(!staged.contains(&repeated.event_id));
}

/// Counts answer every user asked for, in the order asked (repeats and unknown users included),
/// however many there are.
pub async fn counts_come_in_the_order_asked(store: Arc<dyn FollowStore>) {
    let [a, b, c] = users();
    store.follow(a, b, followed(a, b)).await.unwrap();
    store.follow(c, b, followed(c, b)).await.unwrap();
    store.follow(b, c, followed(b, c)).await.unwrap();
    let expected = |user: u64| match user {
        u if u == a => counts(0, 1),
        u if u == b => counts(2, 1),
        u if u == c => counts(1, 1),
        _ => Counts::default(),
    };
    // More users than one round trip asks for, the known ones spread through them.
    let mut asked: Vec<u64> = (0..250).map(|_| unique_id()).collect();
    for (at, user) in [(0, b), (99, a), (100, c), (150, b), (249, a)] {
        asked[at] = user;
    }
    let answered = store.counts(asked.clone()).await.unwrap();
    assert_eq!(answered.len(), asked.len());
    for (i, (user, got)) in asked.iter().zip(&answered).enumerate() {
        assert_eq!(*got, expected(*user), "user {i} of the list");
    }
    assert!(store.counts(Vec::new()).await.unwrap().is_empty());
}

/// What one call of a concurrent mix asked for and got.
struct Outcome {
    follow: bool,
    event_id: u64,
    changed: bool,
}

/// Sixteen callers follow and unfollow one pair at once, in a fixed pseudo-random mix: every
/// change that took effect is announced once, nothing else is, and the edge and both counts
/// agree at the end.
pub async fn concurrent_changes_of_one_pair_stay_consistent(store: Arc<dyn FollowStore>) {
    const CALLERS: u32 = 16;
    const CALLS_EACH: u32 = 4;
    let [a, b] = users();
    let callers = (0..CALLERS).map(|caller| {
        let store = Arc::clone(&store);
        async move {
            let mut state = caller.wrapping_mul(2_654_435_761).wrapping_add(12_345);
            let mut outcomes = Vec::new();
            for _ in 0..CALLS_EACH {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let follow = (state >> 16) & 1 == 0;
                let (event, changed) = if follow {
                    let event = followed(a, b);
                    let outcome = store.follow(a, b, event.clone()).await.unwrap();
                    (event, outcome == FollowOutcome::Followed)
                } else {
                    let event = unfollowed(a, b);
                    (event.clone(), store.unfollow(a, b, event).await.unwrap())
                };
                outcomes.push(Outcome {
                    follow,
                    event_id: event.event_id,
                    changed,
                });
            }
            outcomes
        }
    });
    let outcomes: Vec<Outcome> = join_all(callers).await.into_iter().flatten().collect();
    let follows = outcomes.iter().filter(|o| o.follow && o.changed).count();
    let unfollows = outcomes.iter().filter(|o| !o.follow && o.changed).count();
    assert!(follows > 0, "some follow took effect");

    let edge = store.is_following(a, b).await.unwrap();
    // Changes alternate: each unfollow that took effect undid one follow.
    assert_eq!(
        follows,
        unfollows + usize::from(edge),
        "{follows} follows and {unfollows} unfollows took effect, edge {edge}"
    );
    let n = u64::from(edge);
    assert_eq!(
        store.counts(vec![a, b]).await.unwrap(),
        vec![counts(0, n), counts(n, 0)],
        "counts agree with the edge ({edge})"
    );
    let staged = staged(&store).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            staged.contains(&outcome.event_id),
            outcome.changed,
            "call {i} (follow: {}) staged its event exactly when it changed the edge",
            outcome.follow
        );
    }
}

/// Many users follow one user at once (the count partition every one of them moves), then half
/// of them unfollow while the others repeat their follow: the counts stay exact.
pub async fn concurrent_followers_are_all_counted(store: Arc<dyn FollowStore>) {
    const FOLLOWERS: usize = 12;
    let [star] = users();
    let fans: Vec<u64> = (0..FOLLOWERS).map(|_| unique_id()).collect();
    let follows: Vec<Envelope> = fans.iter().map(|fan| followed(*fan, star)).collect();
    let made = join_all(
        fans.iter()
            .zip(&follows)
            .map(|(fan, event)| store.follow(*fan, star, event.clone())),
    )
    .await;
    assert!(
        made.into_iter()
            .all(|made| made.unwrap() == FollowOutcome::Followed)
    );
    let mut asked = vec![star];
    asked.extend(&fans);
    let mut expected = vec![counts(FOLLOWERS as u64, 0)];
    expected.extend(vec![counts(0, 1); FOLLOWERS]);
    assert_eq!(store.counts(asked.clone()).await.unwrap(), expected);

    // Even fans leave; odd fans follow again, which changes nothing.
    let second: Vec<Envelope> = fans
        .iter()
        .enumerate()
        .map(|(i, fan)| {
            if i % 2 == 0 {
                unfollowed(*fan, star)
            } else {
                followed(*fan, star)
            }
        })
        .collect();
    let changed = join_all(
        fans.iter()
            .zip(&second)
            .enumerate()
            .map(|(i, (fan, event))| {
                let store = Arc::clone(&store);
                let event = event.clone();
                async move {
                    if i % 2 == 0 {
                        store.unfollow(*fan, star, event).await.unwrap()
                    } else {
                        store.follow(*fan, star, event).await.unwrap() == FollowOutcome::Followed
                    }
                }
            }),
    )
    .await;
    for (i, changed) in changed.iter().enumerate() {
        assert_eq!(*changed, i % 2 == 0, "fan {i}");
    }
    let mut expected = vec![counts((FOLLOWERS / 2) as u64, 0)];
    expected.extend((0..FOLLOWERS).map(|i| counts(0, u64::from(i % 2 == 1))));
    assert_eq!(store.counts(asked).await.unwrap(), expected);
    for (i, fan) in fans.iter().enumerate() {
        assert_eq!(store.is_following(*fan, star).await.unwrap(), i % 2 == 1);
    }
    let staged = staged(&store).await;
    for (i, event) in follows.iter().chain(&second).enumerate() {
        assert_eq!(
            staged.contains(&event.event_id),
            i < FOLLOWERS || (i - FOLLOWERS).is_multiple_of(2),
            "event {i}"
        );
    }
}

/// Each change of a pair takes the next version (follow 1, unfollow 2, follow 3, ...), its
/// event carries it, and a change that finds itself made already stages nothing.
pub async fn versions_count_every_change_and_events_carry_them(store: Arc<dyn FollowStore>) {
    let [a, b] = users();
    let first = follow(&store, a, b).await;
    assert_eq!(
        store.follow(a, b, followed(a, b)).await.unwrap(),
        FollowOutcome::AlreadyFollowing
    );
    let unfollow = unfollowed(a, b);
    assert!(store.unfollow(a, b, unfollow.clone()).await.unwrap());
    assert!(!store.unfollow(a, b, unfollowed(a, b)).await.unwrap());
    let again = follow(&store, a, b).await;
    // The other direction is another edge, with versions of its own.
    let reverse = follow(&store, b, a).await;
    let staged = staged_events(&store).await;
    for (event, version) in [(&first, 1), (&unfollow, 2), (&again, 3), (&reverse, 1)] {
        let stored = staged
            .get(&event.event_id)
            .unwrap_or_else(|| panic!("event of version {version} staged"));
        assert_eq!(version_of(stored), version, "{stored:?}");
        assert_eq!(stored.r#type, event.r#type);
    }
}

/// A user's lists read newest follow first, and walking them by `next` cursors returns every
/// edge once, whatever the page size; `since` polls for newer follows.
pub async fn lists_page_newest_first_without_overlap_or_skip(store: Arc<dyn FollowStore>) {
    const FANS: usize = 7;
    let [star] = users();
    let fans: Vec<u64> = (0..FANS).map(|_| unique_id()).collect();
    let mut follow_ids = Vec::new();
    for fan in &fans {
        follow_ids.push(follow(&store, *fan, star).await.event_id);
    }
    // And one fan follows others too: the star last.
    let [other_a, other_b] = users();
    let fan = fans[0];
    follow(&store, fan, other_a).await;
    follow(&store, fan, other_b).await;

    let newest_first: Vec<u64> = fans.iter().rev().copied().collect();
    for size in [1, 3, 7, 100] {
        let walked = walk(&store, star, Direction::Followers, size).await;
        assert_eq!(others(&walked), newest_first, "pages of {size}");
        let ids: Vec<u64> = walked.iter().map(|e| e.follow_id).collect();
        let expected: Vec<u64> = follow_ids.iter().rev().copied().collect();
        assert_eq!(ids, expected, "entries carry their follow IDs");
    }
    let following = walk(&store, fan, Direction::Following, 2).await;
    assert_eq!(others(&following), vec![other_b, other_a, star]);
    assert!(
        walk(&store, star, Direction::Following, 5).await.is_empty(),
        "the star follows nobody"
    );

    // Polling: the oldest `limit` follows newer than a cursor, newest first, without a next.
    let since = PageRequest {
        since: Some(follow_ids[2]),
        ..PageRequest::first(limit(2))
    };
    let polled = store.list(star, Direction::Followers, since).await.unwrap();
    assert_eq!(others(&polled.items), vec![fans[4], fans[3]]);
    assert_eq!(polled.next, None);
    let between = PageRequest {
        since: Some(follow_ids[1]),
        before: Some(follow_ids[4]),
        ..PageRequest::first(limit(10))
    };
    let polled = store
        .list(star, Direction::Followers, between)
        .await
        .unwrap();
    assert_eq!(others(&polled.items), vec![fans[3], fans[2]]);
    let empty = PageRequest {
        since: Some(follow_ids[4]),
        before: Some(follow_ids[3]),
        ..PageRequest::first(limit(10))
    };
    assert!(
        store
            .list(star, Direction::Followers, empty)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // An unknown user has empty lists.
    let [nobody] = users();
    let page = store
        .list(nobody, Direction::Followers, PageRequest::first(limit(5)))
        .await;
    assert_eq!(
        page.unwrap(),
        Page {
            items: Vec::new(),
            next: None
        }
    );
}

/// An unfollowed edge leaves both lists; following again puts it on top of both, under the new
/// follow's ID.
pub async fn unfollowed_edges_leave_the_lists_and_a_follow_again_goes_on_top(
    store: Arc<dyn FollowStore>,
) {
    let [star, early, late] = users();
    follow(&store, early, star).await;
    follow(&store, late, star).await;
    let [other] = users();
    follow(&store, early, other).await;
    assert_eq!(
        others(&walk(&store, star, Direction::Followers, 10).await),
        vec![late, early]
    );
    assert_eq!(
        others(&walk(&store, early, Direction::Following, 10).await),
        vec![other, star]
    );

    assert!(
        store
            .unfollow(early, star, unfollowed(early, star))
            .await
            .unwrap()
    );
    assert_eq!(
        others(&walk(&store, star, Direction::Followers, 10).await),
        vec![late]
    );
    assert_eq!(
        others(&walk(&store, early, Direction::Following, 10).await),
        vec![other]
    );

    let again = follow(&store, early, star).await;
    let followers = walk(&store, star, Direction::Followers, 1).await;
    assert_eq!(others(&followers), vec![early, late], "back on top");
    assert_eq!(
        followers[0].follow_id, again.event_id,
        "under the new follow"
    );
    let following = walk(&store, early, Direction::Following, 1).await;
    assert_eq!(others(&following), vec![star, other]);
    assert_eq!(
        store.counts(vec![star, early]).await.unwrap(),
        vec![counts(2, 0), counts(0, 2)]
    );
}

/// The pending purges of `user`, among everyone's.
pub async fn pending_purges_of(store: &Arc<dyn FollowStore>, user: u64) -> Vec<PendingPurge> {
    let pending = store.pending_purges(100_000).await.unwrap();
    pending.into_iter().filter(|p| p.user == user).collect()
}

/// A deleted account can neither follow nor be followed (nothing written, nothing staged),
/// its existing edges can still be unfollowed (what its purge does), and it is pending a purge
/// once, until the purge is done.
pub async fn deleted_accounts_are_refused_and_pending_until_purged(store: Arc<dyn FollowStore>) {
    let [gone, fan, idol, stranger] = users();
    follow(&store, fan, gone).await;
    follow(&store, gone, idol).await;
    assert!(!store.user_gone(gone).await.unwrap());
    store.forget_user(gone).await.unwrap();
    store.forget_user(gone).await.unwrap();
    assert!(store.user_gone(gone).await.unwrap());
    assert!(!store.user_gone(fan).await.unwrap());

    let (to_gone, from_gone) = (followed(stranger, gone), followed(gone, stranger));
    assert_eq!(
        store.follow(stranger, gone, to_gone.clone()).await.unwrap(),
        FollowOutcome::AccountGone
    );
    assert_eq!(
        store
            .follow(gone, stranger, from_gone.clone())
            .await
            .unwrap(),
        FollowOutcome::AccountGone
    );
    assert!(!store.is_following(stranger, gone).await.unwrap());
    assert!(!store.is_following(gone, stranger).await.unwrap());
    assert_eq!(
        store.counts(vec![stranger]).await.unwrap(),
        vec![Counts::default()]
    );
    let staged = staged(&store).await;
    assert!(!staged.contains(&to_gone.event_id) && !staged.contains(&from_gone.event_id));

    // The purge's unfollows, both directions.
    let (out, back) = (unfollowed(fan, gone), unfollowed(gone, idol));
    assert!(store.unfollow(fan, gone, out.clone()).await.unwrap());
    assert!(store.unfollow(gone, idol, back.clone()).await.unwrap());
    assert!(
        walk(&store, gone, Direction::Followers, 10)
            .await
            .is_empty()
    );
    assert!(
        walk(&store, gone, Direction::Following, 10)
            .await
            .is_empty()
    );
    assert_eq!(
        store.counts(vec![gone, fan, idol]).await.unwrap(),
        vec![Counts::default(); 3]
    );
    let staged = staged_events(&store).await;
    for event in [&out, &back] {
        assert_eq!(staged.get(&event.event_id).map(version_of), Some(2));
    }

    let pending = pending_purges_of(&store, gone).await;
    assert!(!pending.is_empty());
    for purge in pending {
        store.purge_done(purge).await.unwrap();
    }
    assert!(pending_purges_of(&store, gone).await.is_empty());
    store.forget_user(gone).await.unwrap();
    assert!(
        pending_purges_of(&store, gone).await.is_empty(),
        "a purge done is not pending again"
    );
    assert!(store.user_gone(gone).await.unwrap());
}
