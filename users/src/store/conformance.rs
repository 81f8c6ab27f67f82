//! The behaviour every [`UserStore`] backend must show. Backends invoke
//! [`user_store_conformance!`](crate::user_store_conformance) in their tests.
//!
//! The checks run on a shared store: every CQL check in a test process uses the same keyspace,
//! at the same time. So a check uses only IDs, usernames and event IDs it minted with
//! [`unique_id`], and asks whether its own events are (or are not) among those staged, never
//! what else is there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use twtr_common::IdGenerator;
use twtr_proto::events::v1::Envelope;

use super::{Created, UserRecord, UserStore};

/// Runs every check against the backend `$open` returns: `$open` is an async fn returning
/// `(Arc<dyn UserStore>, guard)`, or with `optional`, `Option<(Arc<dyn UserStore>, guard)>`
/// where `None` skips the check (a backend whose server this machine does not run).
#[macro_export]
macro_rules! user_store_conformance {
    (optional $open:path) => {
        mod user_store_conformance {
            use super::*;
            twtr_common::conformance_tests!(optional $open => $crate::store::conformance:
                creates_and_reads_back,
                usernames_are_unique_ignoring_case,
                get_many_skips_unknown_ids,
                get_many_keeps_the_order_given_past_one_round_trip,
                concurrent_sign_ups_for_one_name_have_one_winner,
            );
        }
    };
    ($open:path) => {
        mod user_store_conformance {
            use super::*;
            twtr_common::conformance_tests!($open => $crate::store::conformance:
                creates_and_reads_back,
                usernames_are_unique_ignoring_case,
                get_many_skips_unknown_ids,
                get_many_keeps_the_order_given_past_one_round_trip,
                concurrent_sign_ups_for_one_name_have_one_winner,
            );
        }
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

/// A username of this check alone: `base` followed by a fresh ID.
pub fn unique_name(base: &str) -> String {
    format!("{base}_{}", unique_id())
}

pub fn user(id: u64, username: &str) -> UserRecord {
    UserRecord {
        id,
        username: username.to_owned(),
        display_name: format!("{username} display"),
        bio: "bio".to_owned(),
        password_hash: "$argon2id$fake".to_owned(),
        created_at_ms: 1_700_000_000_000,
    }
}

/// A fresh user named `base_<id>`.
pub fn fresh_user(base: &str) -> UserRecord {
    user(unique_id(), &unique_name(base))
}

/// The `UserCreated` event of `user`, with a fresh event ID.
pub fn event(user: &UserRecord) -> Envelope {
    Envelope {
        event_id: unique_id(),
        r#type: "users.user_created".to_owned(),
        aggregate_id: user.id,
        ..Envelope::default()
    }
}

/// The IDs of every event staged in `store`'s outbox, this check's and others'. Call it once
/// per check: a CQL outbox lets one relay at a time read a shard (a lease), and every check in
/// the process shares one keyspace, so checks read one at a time and give the leases back
/// afterwards (after which that outbox is closed).
pub async fn staged(store: &dyn UserStore) -> HashSet<u64> {
    static ONE_READER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _reading = ONE_READER.lock().await;
    let outbox = store.outbox();
    let ids = twtr_common::outbox::pending_ids(outbox.as_ref(), 10_000)
        .await
        .unwrap();
    outbox.close().await;
    ids.into_iter().collect()
}

pub async fn creates_and_reads_back(store: Arc<dyn UserStore>) {
    let alice = fresh_user("Alice");
    let created = event(&alice);
    assert_eq!(
        store.create(alice.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    assert_eq!(store.get(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(
        store
            .get_by_username(&alice.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.get(unique_id()).await.unwrap(), None);
    assert_eq!(
        store.get_by_username(&unique_name("bob")).await.unwrap(),
        None
    );
    // Empty optional fields read back empty, not missing.
    let quiet = UserRecord {
        display_name: String::new(),
        bio: String::new(),
        ..fresh_user("quiet")
    };
    let quiet_created = event(&quiet);
    assert_eq!(
        store
            .create(quiet.clone(), quiet_created.clone())
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(store.get(quiet.id).await.unwrap(), Some(quiet));
    let staged = staged(store.as_ref()).await;
    assert!(
        staged.contains(&created.event_id) && staged.contains(&quiet_created.event_id),
        "the event is stored with the user"
    );
}

pub async fn usernames_are_unique_ignoring_case(store: Arc<dyn UserStore>) {
    let alice = fresh_user("Alice");
    let created = event(&alice);
    assert_eq!(
        store.create(alice.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    let shouting = user(unique_id(), &alice.username.to_ascii_uppercase());
    let refused = event(&shouting);
    let taken = store
        .create(shouting.clone(), refused.clone())
        .await
        .unwrap();
    assert_eq!(taken, Created::UsernameTaken);
    assert_eq!(
        store.get(shouting.id).await.unwrap(),
        None,
        "a refused user writes nothing"
    );
    assert_eq!(
        store
            .get_by_username(&alice.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(alice),
        "the name still leads to its first owner"
    );
    let staged = staged(store.as_ref()).await;
    assert!(
        staged.contains(&created.event_id),
        "the accepted user's event is staged"
    );
    assert!(
        !staged.contains(&refused.event_id),
        "a refused user stages no event"
    );
}

pub async fn get_many_skips_unknown_ids(store: Arc<dyn UserStore>) {
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let user = fresh_user(name);
        ids.push(user.id);
        store.create(user.clone(), event(&user)).await.unwrap();
    }
    let found: Vec<u64> = store
        .get_many(vec![ids[2], unique_id(), ids[0]])
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(found, vec![ids[2], ids[0]]);
    assert!(store.get_many(Vec::new()).await.unwrap().is_empty());
}

/// More IDs than one CQL `IN` list holds, unknown ones among them, in an order that is
/// neither ascending nor descending: the known users come back whole, in the order asked.
pub async fn get_many_keeps_the_order_given_past_one_round_trip(store: Arc<dyn UserStore>) {
    let users: Vec<UserRecord> = (0..120).map(|_| fresh_user("many")).collect();
    let created = join_all(
        users
            .iter()
            .map(|user| store.create(user.clone(), event(user))),
    )
    .await;
    for outcome in created {
        assert_eq!(outcome.unwrap(), Created::Created);
    }
    // Odd positions first, newest first, then even positions oldest first, with an unknown ID
    // after every fourth user.
    let mut wanted: Vec<&UserRecord> = users.iter().skip(1).step_by(2).rev().collect();
    wanted.extend(users.iter().step_by(2));
    let mut ids = Vec::new();
    for (i, user) in wanted.iter().enumerate() {
        ids.push(user.id);
        if i % 4 == 3 {
            ids.push(unique_id());
        }
    }
    let found = store.get_many(ids).await.unwrap();
    assert_eq!(found.len(), users.len());
    assert!(
        found.iter().zip(&wanted).all(|(got, want)| got == *want),
        "every known user, whole, in the order asked"
    );
}

/// Eight sign-ups race for one name, each under a different case of it: exactly one wins, and
/// only the winner is stored and announced.
pub async fn concurrent_sign_ups_for_one_name_have_one_winner(store: Arc<dyn UserStore>) {
    let name = unique_name("race");
    // The eight cases of the first three letters: "race_..", "Race_..", ..., "RACe_..".
    let contenders: Vec<UserRecord> = (0..8u32)
        .map(|mask| {
            let cased: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i < 3 && mask & (1 << i) != 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            user(unique_id(), &cased)
        })
        .collect();
    let events: Vec<Envelope> = contenders.iter().map(event).collect();
    let outcomes: Vec<Created> = join_all(
        contenders
            .iter()
            .zip(&events)
            .map(|(user, event)| store.create(user.clone(), event.clone())),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|i| outcomes[*i] == Created::Created)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one sign-up wins: {outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Created::UsernameTaken)
            .count(),
        7
    );
    let winner = winners[0];
    assert_eq!(
        store.get_by_username(&name).await.unwrap(),
        Some(contenders[winner].clone())
    );
    for (i, loser) in contenders.iter().enumerate() {
        if i != winner {
            assert_eq!(
                store.get(loser.id).await.unwrap(),
                None,
                "a loser is not stored"
            );
        }
    }
    let staged = staged(store.as_ref()).await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            staged.contains(&event.event_id),
            i == winner,
            "only the winner's event is staged (contender {i})"
        );
    }
}
