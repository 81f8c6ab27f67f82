//! The behaviour every [`UserStore`] backend must show. Backends invoke
//! [`user_store_conformance!`](crate::user_store_conformance) in their tests.
//!
//! The checks run on a shared store: every CQL check in a test process uses the same keyspace,
//! at the same time. So a check uses only IDs, usernames and event IDs it minted with
//! [`unique_id`], and asks whether its own events are (or are not) among those staged, never
//! what else is there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::{Arc, OnceLock};

use futures_util::future::join_all;
use twtr_common::IdGenerator;
use twtr_proto::events::v1::Envelope;

use super::{Created, ProfileChanges, Updated, UserRecord, UserStore};

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
                update_changes_only_the_fields_given,
                update_of_an_unknown_or_deleted_user_writes_nothing,
                a_password_change_stores_the_hash_and_generation,
                an_update_by_a_revoked_token_writes_nothing,
                delete_removes_the_user_and_frees_the_name,
                deleting_twice_or_replaying_the_sign_up_changes_nothing,
                debug_output_hides_password_hashes,
                people_are_found_by_username_prefix_in_name_order,
                people_are_found_by_the_words_of_their_display_names,
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
                update_changes_only_the_fields_given,
                update_of_an_unknown_or_deleted_user_writes_nothing,
                a_password_change_stores_the_hash_and_generation,
                an_update_by_a_revoked_token_writes_nothing,
                delete_removes_the_user_and_frees_the_name,
                deleting_twice_or_replaying_the_sign_up_changes_nothing,
                debug_output_hides_password_hashes,
                people_are_found_by_username_prefix_in_name_order,
                people_are_found_by_the_words_of_their_display_names,
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
        token_generation: 1,
        updated_at_ms: 1_700_000_000_000,
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

/// A profile event (update or deletion) of `user_id`, with a fresh event ID.
pub fn event_of(user_id: u64, r#type: &str) -> Envelope {
    Envelope {
        event_id: unique_id(),
        r#type: r#type.to_owned(),
        aggregate_id: user_id,
        ..Envelope::default()
    }
}

/// The IDs of the events staged in an outbox, as many times as each is there.
#[derive(Debug)]
pub struct Staged(Vec<u64>);

impl Staged {
    pub fn contains(&self, event_id: &u64) -> bool {
        self.0.contains(event_id)
    }

    pub fn count(&self, event_id: u64) -> usize {
        self.0.iter().filter(|id| **id == event_id).count()
    }
}

/// The IDs of every event staged in `store`'s outbox, this check's and others'. Call it once
/// per check: a CQL outbox lets one relay at a time read a shard (a lease), and every check in
/// the process shares one keyspace, so checks read one at a time and give the leases back
/// afterwards (after which that outbox is closed).
pub async fn staged(store: &dyn UserStore) -> Staged {
    static ONE_READER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _reading = ONE_READER.lock().await;
    let outbox = store.outbox();
    let ids = twtr_common::outbox::pending_ids(outbox.as_ref(), 10_000)
        .await
        .unwrap();
    outbox.close().await;
    Staged(ids)
}

/// Creates `user`, which must succeed.
async fn sign_up(store: &dyn UserStore, user: &UserRecord) -> Envelope {
    let created = event(user);
    assert_eq!(
        store.create(user.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    created
}

/// Whether `user` is absent from every read: by ID, by name and among many.
async fn assert_absent(store: &dyn UserStore, user: &UserRecord) {
    assert_eq!(store.get(user.id).await.unwrap(), None, "absent by ID");
    assert_ne!(
        store
            .get_by_username(&user.username.to_ascii_lowercase())
            .await
            .unwrap()
            .map(|found| found.id),
        Some(user.id),
        "absent by name"
    );
    assert!(
        store.get_many(vec![user.id]).await.unwrap().is_empty(),
        "absent among many"
    );
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

/// Each update writes the fields it names and the update time, nothing else, and stages its
/// event; every read sees the result.
pub async fn update_changes_only_the_fields_given(store: Arc<dyn UserStore>) {
    let ada = fresh_user("Ada");
    sign_up(store.as_ref(), &ada).await;

    let renamed = event_of(ada.id, "users.user_updated");
    let changes = ProfileChanges {
        display_name: Some("Countess".to_owned()),
        updated_at_ms: ada.created_at_ms + 1_000,
        acting_generation: ada.token_generation,
        ..ProfileChanges::default()
    };
    assert_eq!(
        store
            .update(ada.id, changes, renamed.clone())
            .await
            .unwrap(),
        Updated::Updated
    );
    let expected = UserRecord {
        display_name: "Countess".to_owned(),
        updated_at_ms: ada.created_at_ms + 1_000,
        ..ada.clone()
    };
    assert_eq!(store.get(ada.id).await.unwrap(), Some(expected.clone()));

    // An empty bio is a change too (to empty), unlike no bio.
    let cleared = event_of(ada.id, "users.user_updated");
    let changes = ProfileChanges {
        bio: Some(String::new()),
        updated_at_ms: ada.created_at_ms + 2_000,
        acting_generation: ada.token_generation,
        ..ProfileChanges::default()
    };
    assert_eq!(
        store
            .update(ada.id, changes, cleared.clone())
            .await
            .unwrap(),
        Updated::Updated
    );
    let expected = UserRecord {
        bio: String::new(),
        updated_at_ms: ada.created_at_ms + 2_000,
        ..expected
    };
    assert_eq!(store.get(ada.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(
        store
            .get_by_username(&ada.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(expected.clone())
    );
    assert_eq!(store.get_many(vec![ada.id]).await.unwrap(), vec![expected]);
    let staged = staged(store.as_ref()).await;
    assert_eq!(
        staged.count(renamed.event_id),
        1,
        "the first update's event"
    );
    assert_eq!(
        staged.count(cleared.event_id),
        1,
        "the second update's event"
    );
}

/// An update of nobody, or of a deleted user, answers false, stages nothing and brings
/// nobody back.
pub async fn update_of_an_unknown_or_deleted_user_writes_nothing(store: Arc<dyn UserStore>) {
    let nobody = unique_id();
    let changes = ProfileChanges {
        display_name: Some("ghost".to_owned()),
        bio: Some("boo".to_owned()),
        password: Some(("$argon2id$ghost".to_owned(), 9)),
        updated_at_ms: 1_800_000_000_000,
        acting_generation: 0,
    };
    let unknown = event_of(nobody, "users.user_updated");
    assert_eq!(
        store
            .update(nobody, changes.clone(), unknown.clone())
            .await
            .unwrap(),
        Updated::NoSuchUser
    );
    assert_eq!(store.get(nobody).await.unwrap(), None);

    let gone = fresh_user("gone");
    sign_up(store.as_ref(), &gone).await;
    let deleted = event_of(gone.id, "users.user_deleted");
    assert!(
        store
            .delete(gone.id, 1_800_000_000_000, deleted)
            .await
            .unwrap()
    );
    let late = event_of(gone.id, "users.user_updated");
    assert_eq!(
        store.update(gone.id, changes, late.clone()).await.unwrap(),
        Updated::NoSuchUser
    );
    assert_absent(store.as_ref(), &gone).await;

    let staged = staged(store.as_ref()).await;
    assert!(!staged.contains(&unknown.event_id), "no event for nobody");
    assert!(
        !staged.contains(&late.event_id),
        "no event for a deleted user"
    );
}

/// A change made with a token older than the account's generation (a password change revoked
/// it after the service checked it) writes nothing and stages nothing; one made with the
/// current generation goes through.
pub async fn an_update_by_a_revoked_token_writes_nothing(store: Arc<dyn UserStore>) {
    let ada = fresh_user("Ada");
    sign_up(store.as_ref(), &ada).await;
    let password = ProfileChanges {
        password: Some(("$argon2id$new".to_owned(), 5)),
        updated_at_ms: ada.created_at_ms + 1_000,
        acting_generation: ada.token_generation,
        ..ProfileChanges::default()
    };
    let changed = event_of(ada.id, "users.password_changed");
    assert_eq!(
        store.update(ada.id, password, changed).await.unwrap(),
        Updated::Updated
    );
    let after_the_change = store.get(ada.id).await.unwrap();

    let stale = ProfileChanges {
        display_name: Some("Mallory".to_owned()),
        updated_at_ms: ada.created_at_ms + 2_000,
        acting_generation: 4,
        ..ProfileChanges::default()
    };
    let refused = event_of(ada.id, "users.user_updated");
    assert_eq!(
        store.update(ada.id, stale, refused.clone()).await.unwrap(),
        Updated::Revoked
    );
    assert_eq!(store.get(ada.id).await.unwrap(), after_the_change);
    assert!(!staged(store.as_ref()).await.contains(&refused.event_id));

    let current = ProfileChanges {
        display_name: Some("Countess".to_owned()),
        updated_at_ms: ada.created_at_ms + 3_000,
        acting_generation: 5,
        ..ProfileChanges::default()
    };
    assert_eq!(
        store
            .update(ada.id, current, event_of(ada.id, "users.user_updated"))
            .await
            .unwrap(),
        Updated::Updated
    );
    assert_eq!(
        store.get(ada.id).await.unwrap().map(|u| u.display_name),
        Some("Countess".to_owned())
    );
}

/// A password change stores the new hash and token generation; a later profile change keeps
/// them.
pub async fn a_password_change_stores_the_hash_and_generation(store: Arc<dyn UserStore>) {
    let ada = fresh_user("Ada");
    sign_up(store.as_ref(), &ada).await;

    let changed = event_of(ada.id, "users.password_changed");
    let changes = ProfileChanges {
        password: Some(("$argon2id$new".to_owned(), 7)),
        updated_at_ms: ada.created_at_ms + 1_000,
        acting_generation: ada.token_generation,
        ..ProfileChanges::default()
    };
    assert_eq!(
        store
            .update(ada.id, changes, changed.clone())
            .await
            .unwrap(),
        Updated::Updated
    );
    let expected = UserRecord {
        password_hash: "$argon2id$new".to_owned(),
        token_generation: 7,
        updated_at_ms: ada.created_at_ms + 1_000,
        ..ada.clone()
    };
    assert_eq!(store.get(ada.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(
        store.get_many(vec![ada.id]).await.unwrap(),
        vec![expected.clone()]
    );

    let changes = ProfileChanges {
        bio: Some("new bio".to_owned()),
        updated_at_ms: ada.created_at_ms + 2_000,
        acting_generation: 7,
        ..ProfileChanges::default()
    };
    let bio = event_of(ada.id, "users.user_updated");
    assert_eq!(
        store.update(ada.id, changes, bio).await.unwrap(),
        Updated::Updated
    );
    assert_eq!(
        store
            .get_by_username(&ada.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(UserRecord {
            bio: "new bio".to_owned(),
            updated_at_ms: ada.created_at_ms + 2_000,
            ..expected
        }),
        "a profile change keeps the password and generation"
    );
    assert_eq!(staged(store.as_ref()).await.count(changed.event_id), 1);
}

/// A deleted user is absent from every read, its name is free at once (in any case), and its
/// event is staged once.
pub async fn delete_removes_the_user_and_frees_the_name(store: Arc<dyn UserStore>) {
    let ada = fresh_user("Ada");
    sign_up(store.as_ref(), &ada).await;
    let bob = fresh_user("Bob");
    sign_up(store.as_ref(), &bob).await;

    let deleted = event_of(ada.id, "users.user_deleted");
    assert!(
        store
            .delete(ada.id, 1_800_000_000_000, deleted.clone())
            .await
            .unwrap()
    );
    assert_absent(store.as_ref(), &ada).await;
    assert_eq!(
        store.get_many(vec![ada.id, bob.id]).await.unwrap(),
        vec![bob.clone()],
        "others stay"
    );

    // The name is free for a new sign-up, in another case, under a new ID.
    let heir = user(unique_id(), &ada.username.to_ascii_uppercase());
    let heir_created = sign_up(store.as_ref(), &heir).await;
    assert_eq!(
        store
            .get_by_username(&ada.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(heir.clone())
    );
    assert_eq!(
        store.get(ada.id).await.unwrap(),
        None,
        "the old ID stays gone"
    );

    let staged = staged(store.as_ref()).await;
    assert_eq!(
        staged.count(deleted.event_id),
        1,
        "the deletion's event, once"
    );
    assert!(staged.contains(&heir_created.event_id));
}

/// A second deletion answers false and stages nothing; a replay of the deleted user's sign-up
/// neither brings the account back nor takes its name.
pub async fn deleting_twice_or_replaying_the_sign_up_changes_nothing(store: Arc<dyn UserStore>) {
    let ada = fresh_user("Ada");
    let created = sign_up(store.as_ref(), &ada).await;
    let first = event_of(ada.id, "users.user_deleted");
    assert!(
        store
            .delete(ada.id, 1_800_000_000_000, first.clone())
            .await
            .unwrap()
    );
    let second = event_of(ada.id, "users.user_deleted");
    assert!(
        !store
            .delete(ada.id, 1_800_000_000_001, second.clone())
            .await
            .unwrap()
    );
    let nobody = event_of(unique_id(), "users.user_deleted");
    assert!(
        !store
            .delete(nobody.aggregate_id, 1_800_000_000_000, nobody.clone())
            .await
            .unwrap(),
        "deleting nobody"
    );

    let replay = event(&ada);
    assert_eq!(
        store.create(ada.clone(), replay.clone()).await.unwrap(),
        Created::Created,
        "a replayed sign-up is taken for done"
    );
    assert_absent(store.as_ref(), &ada).await;
    let heir = user(unique_id(), &ada.username);
    sign_up(store.as_ref(), &heir).await;

    let staged = staged(store.as_ref()).await;
    assert_eq!(staged.count(created.event_id), 1);
    assert_eq!(staged.count(first.event_id), 1);
    assert!(
        !staged.contains(&second.event_id),
        "a second deletion stages nothing"
    );
    assert!(!staged.contains(&nobody.event_id));
    assert!(
        !staged.contains(&replay.event_id),
        "a replay stages nothing"
    );
}

/// Records as the store hands them out, and changes as callers pass them in, print without
/// their password hash.
pub async fn debug_output_hides_password_hashes(store: Arc<dyn UserStore>) {
    let hash = format!("$argon2id$v=19$m=19456,t=2,p=1$secret{}", unique_id());
    let ada = UserRecord {
        password_hash: hash.clone(),
        ..fresh_user("Ada")
    };
    sign_up(store.as_ref(), &ada).await;
    let stored = store.get(ada.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, hash);
    for shown in [
        format!("{stored:?}"),
        format!("{:#?}", store.get_many(vec![ada.id]).await.unwrap()),
    ] {
        assert!(!shown.contains(&hash), "{shown}");
        assert!(shown.contains(&ada.username), "{shown}");
    }

    let new_hash = format!("$argon2id$v=19$m=19456,t=2,p=1$other{}", unique_id());
    let changes = ProfileChanges {
        password: Some((new_hash.clone(), 2)),
        acting_generation: ada.token_generation,
        ..ProfileChanges::default()
    };
    let shown = format!("{changes:?}");
    assert!(!shown.contains(&new_hash), "{shown}");
    assert_eq!(
        store
            .update(ada.id, changes, event_of(ada.id, "users.password_changed"))
            .await
            .unwrap(),
        Updated::Updated
    );
    let shown = format!("{:?}", store.get(ada.id).await.unwrap());
    assert!(!shown.contains(&new_hash), "{shown}");
}

/// Every live user whose lowercase name starts with the prefix, the name itself first, in name
/// order, up to the limit; a deleted one is gone from the lookup at once.
pub async fn people_are_found_by_username_prefix_in_name_order(store: Arc<dyn UserStore>) {
    let stem = unique_name("pf");
    let exact = user(unique_id(), &stem);
    let b = user(unique_id(), &format!("{stem}B"));
    let a = user(unique_id(), &format!("{}a", stem.to_ascii_uppercase()));
    let c = user(unique_id(), &format!("{stem}c"));
    // Shares all but the last character of the stem: not a match.
    let mut near = stem.clone();
    near.pop();
    let near = user(unique_id(), &format!("{near}_"));
    for each in [&c, &near, &b, &exact, &a] {
        sign_up(store.as_ref(), each).await;
    }
    let names = |found: Vec<UserRecord>| found.into_iter().map(|u| u.username).collect::<Vec<_>>();
    let prefix = stem.to_ascii_lowercase();
    assert_eq!(
        names(store.find_by_username_prefix(&prefix, 10).await.unwrap()),
        [
            exact.username.as_str(),
            a.username.as_str(),
            b.username.as_str(),
            c.username.as_str()
        ],
        "the name itself, then the longer ones in lowercase order"
    );
    assert_eq!(
        names(store.find_by_username_prefix(&prefix, 2).await.unwrap()),
        [exact.username.as_str(), a.username.as_str()],
        "at most the limit"
    );
    let longer = format!("{prefix}b");
    assert_eq!(
        names(store.find_by_username_prefix(&longer, 10).await.unwrap()),
        [b.username.as_str()]
    );

    let deleted = event_of(a.id, "users.user_deleted");
    assert!(
        store
            .delete(a.id, 1_800_000_000_000, deleted)
            .await
            .unwrap()
    );
    assert_eq!(
        names(store.find_by_username_prefix(&prefix, 10).await.unwrap()),
        [
            exact.username.as_str(),
            b.username.as_str(),
            c.username.as_str()
        ],
        "a deleted account is not found"
    );
}

/// A display name's words find its user, in ID order, up to the limit; a new display name
/// moves the user from the old words to the new; a deletion removes them.
pub async fn people_are_found_by_the_words_of_their_display_names(store: Arc<dyn UserStore>) {
    let word = format!("w{}", unique_id());
    let other = format!("v{}", unique_id());
    let mut ada = fresh_user("Ada");
    ada.display_name = format!("Ada {word}");
    let mut bob = fresh_user("Bob");
    bob.display_name = format!("{} the Bob, {word}", word.to_uppercase());
    let mut cy = fresh_user("Cy");
    cy.display_name = format!("Cy {word}x");
    for each in [&ada, &bob, &cy] {
        sign_up(store.as_ref(), each).await;
    }
    let ids = |found: Vec<UserRecord>| found.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.find_by_name_word(&word, 10).await.unwrap()),
        [ada.id, bob.id],
        "whole words, any case, each user once"
    );
    assert_eq!(
        ids(store.find_by_name_word(&word, 1).await.unwrap()),
        [ada.id]
    );
    assert_eq!(
        ids(store.find_by_name_word("the", 10).await.unwrap()),
        [bob.id],
        "every word of the name"
    );

    // A bio change leaves the words; a new display name moves them.
    let bio_only = ProfileChanges {
        bio: Some("new bio".to_owned()),
        updated_at_ms: 1_800_000_000_000,
        acting_generation: 1,
        ..ProfileChanges::default()
    };
    let updated = event_of(bob.id, "users.user_updated");
    assert_eq!(
        store.update(bob.id, bio_only, updated).await.unwrap(),
        Updated::Updated
    );
    let renamed = ProfileChanges {
        display_name: Some(format!("Ada {other}")),
        updated_at_ms: 1_800_000_000_000,
        acting_generation: 1,
        ..ProfileChanges::default()
    };
    let updated = event_of(ada.id, "users.user_updated");
    assert_eq!(
        store.update(ada.id, renamed, updated).await.unwrap(),
        Updated::Updated
    );
    assert_eq!(
        ids(store.find_by_name_word(&word, 10).await.unwrap()),
        [bob.id],
        "the old name's word no longer finds her"
    );
    assert_eq!(
        ids(store.find_by_name_word(&other, 10).await.unwrap()),
        [ada.id]
    );

    let deleted = event_of(bob.id, "users.user_deleted");
    assert!(
        store
            .delete(bob.id, 1_800_000_000_000, deleted)
            .await
            .unwrap()
    );
    assert!(
        store.find_by_name_word(&word, 10).await.unwrap().is_empty(),
        "a deleted account is not found"
    );
}
