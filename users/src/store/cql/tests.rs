//! The CQL user store against a real node: its conformance suite, and what a crash leaves at
//! each step of a sign-up, an update or a deletion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use twtr_common::cql::testing::keyspace_for;

use twtr_common::clock;
use twtr_common::cql::lwt;

use super::*;
use crate::store::conformance::{event, event_of, fresh_user, staged, unique_id, user};

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

async fn open_store() -> Option<CqlUserStore> {
    let (session, config) = keyspace_for(&crate::store::SCHEMA).await?;
    let ks = Keyspace::new(session, &config, "users").unwrap();
    Some(CqlUserStore::new(ks, shared_ids()).await.unwrap())
}

async fn open_cql() -> Option<(Arc<dyn UserStore>, ())> {
    Some((Arc::new(open_store().await?), ()))
}

crate::user_store_conformance!(optional open_cql);

/// What a sign-up that died after step 1 leaves behind: a claim `claimed_ago` old.
async fn abandoned_claim(store: &CqlUserStore, canonical: &str, id: u64, claimed_ago: Duration) {
    let at = CqlTimestamp(clock::now_millis() - claimed_ago.as_millis() as i64);
    let result = store
        .session()
        .execute_unpaged(&store.claim_username, (canonical, key(id), at))
        .await;
    assert!(lwt(result).unwrap().applied().unwrap());
}

/// An ID minted twice (two processes with one worker number) is never a silent success:
/// the second sign-up is refused as a conflict its caller retries, and writes nothing.
#[tokio::test]
async fn a_sign_up_under_an_id_held_by_another_account_is_a_conflict() {
    let Some(store) = open_store().await else {
        return;
    };
    let ada = fresh_user("Ada");
    let created = event(&ada);
    assert_eq!(
        store.create(ada.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    let impostor = UserRecord {
        id: ada.id,
        ..fresh_user("Bob")
    };
    let refused = event(&impostor);
    let err = store
        .create(impostor.clone(), refused.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.is_transient(), "a retry with a fresh ID gets past it");
    assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
    let canonical = impostor.username.to_ascii_lowercase();
    assert_eq!(store.get_by_username(&canonical).await.unwrap(), None);
    // Its name was not claimed: the retry, under a fresh ID, signs up.
    let retried = UserRecord {
        id: unique_id(),
        ..impostor
    };
    assert_eq!(
        store
            .create(retried.clone(), event(&retried))
            .await
            .unwrap(),
        Created::Created
    );
    // The same sign-up again is still a retry, not a conflict.
    assert_eq!(
        store.create(ada.clone(), event(&ada)).await.unwrap(),
        Created::Created
    );
    let staged = staged(&store).await;
    assert!(staged.contains(&created.event_id) && !staged.contains(&refused.event_id));
}

#[tokio::test]
async fn a_retry_finishes_a_sign_up_that_stopped_after_its_claim() {
    let Some(store) = open_store().await else {
        return;
    };
    let ada = fresh_user("Ada");
    let canonical = ada.username.to_ascii_lowercase();
    abandoned_claim(&store, &canonical, ada.id, Duration::ZERO).await;
    assert_eq!(store.get_by_username(&canonical).await.unwrap(), None);

    let created = event(&ada);
    assert_eq!(
        store.create(ada.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
    assert_eq!(
        store.get_by_username(&canonical).await.unwrap(),
        Some(ada.clone())
    );
    // Once finished, the same sign-up again writes nothing more.
    let again = event(&ada);
    assert_eq!(
        store.create(ada.clone(), again.clone()).await.unwrap(),
        Created::Created
    );
    let staged = staged(&store).await;
    assert!(
        staged.contains(&created.event_id),
        "the retry staged the event"
    );
    assert!(
        !staged.contains(&again.event_id),
        "a finished sign-up is not written twice"
    );
}

#[tokio::test]
async fn an_abandoned_claim_is_taken_over_once_it_is_old() {
    let Some(store) = open_store().await else {
        return;
    };
    let fresh = fresh_user("fresh");
    let stale = fresh_user("stale");
    abandoned_claim(
        &store,
        &fresh.username.to_ascii_lowercase(),
        unique_id(),
        Duration::ZERO,
    )
    .await;
    abandoned_claim(
        &store,
        &stale.username.to_ascii_lowercase(),
        unique_id(),
        ORPHAN_AFTER + Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        store.create(fresh.clone(), event(&fresh)).await.unwrap(),
        Created::UsernameTaken,
        "a recent claim may still be finishing"
    );
    let created = event(&stale);
    assert_eq!(
        store.create(stale.clone(), created.clone()).await.unwrap(),
        Created::Created
    );
    assert_eq!(
        store
            .get_by_username(&stale.username.to_ascii_lowercase())
            .await
            .unwrap(),
        Some(stale.clone())
    );
    // A live owner's claim is never taken over, however old.
    let age = store
        .ks
        .prepare("UPDATE {ks}.usernames SET claimed_at = ? WHERE username = ?")
        .await
        .unwrap();
    let long_ago = CqlTimestamp(clock::now_millis() - 2 * ORPHAN_AFTER.as_millis() as i64);
    store
        .session()
        .execute_unpaged(&age, (long_ago, stale.username.to_ascii_lowercase()))
        .await
        .unwrap();
    let rival = user(unique_id(), &stale.username.to_ascii_uppercase());
    assert_eq!(
        store.create(rival.clone(), event(&rival)).await.unwrap(),
        Created::UsernameTaken
    );
    assert!(staged(&store).await.contains(&created.event_id));
}

#[tokio::test]
async fn a_retry_frees_the_name_of_a_deletion_that_stopped_after_its_batch() {
    let Some(store) = open_store().await else {
        return;
    };
    let ada = fresh_user("Ada");
    store.create(ada.clone(), event(&ada)).await.unwrap();
    // What a deletion that died before its last step leaves: the batch, not the release.
    let deleted = event_of(ada.id, "users.user_deleted");
    let row = store.user_row(ada.id).await.unwrap().expect("the row");
    store
        .write_deletion(&row, clock::now_millis(), &deleted)
        .await
        .unwrap();
    assert_eq!(store.get(ada.id).await.unwrap(), None);
    let heir = user(unique_id(), &ada.username.to_ascii_uppercase());
    assert_eq!(
        store.create(heir.clone(), event(&heir)).await.unwrap(),
        Created::UsernameTaken,
        "the name is still held"
    );

    let retried = event_of(ada.id, "users.user_deleted");
    assert!(
        !store
            .delete(ada.id, clock::now_millis(), retried.clone())
            .await
            .unwrap()
    );
    assert_eq!(
        store.create(heir.clone(), event(&heir)).await.unwrap(),
        Created::Created,
        "the retry freed the name"
    );
    let staged = staged(&store).await;
    assert_eq!(staged.count(deleted.event_id), 1);
    assert!(
        !staged.contains(&retried.event_id),
        "the retry stages nothing"
    );
}

#[tokio::test]
async fn an_update_overtaken_by_a_deletion_leaves_no_profile_behind() {
    let Some(store) = open_store().await else {
        return;
    };
    let ada = fresh_user("Ada");
    store.create(ada.clone(), event(&ada)).await.unwrap();
    // The update read a live row; the deletion lands before the update's batch.
    let deleted = event_of(ada.id, "users.user_deleted");
    assert!(
        store
            .delete(ada.id, clock::now_millis(), deleted)
            .await
            .unwrap()
    );
    let changes = ProfileChanges {
        display_name: Some("late".to_owned()),
        bio: Some("late bio".to_owned()),
        password: Some(("$argon2id$late".to_owned(), 5)),
        updated_at_ms: clock::now_millis(),
        acting_generation: 0,
    };
    let late = event_of(ada.id, "users.user_updated");
    store.write_changes(&ada, changes, &late).await.unwrap();
    assert!(
        store
            .find_by_name_word("late", 10)
            .await
            .unwrap()
            .is_empty(),
        "the late name is not findable"
    );
    let rows = store
        .user_ids(&store.select_name_word, ("late", 10))
        .await
        .unwrap();
    assert!(rows.is_empty(), "nor left in the name's rows: {rows:?}");

    let row = store
        .user_row(ada.id)
        .await
        .unwrap()
        .expect("the tombstone");
    assert!(row.is_deleted());
    assert_eq!(
        (row.display_name, row.bio, row.password_hash),
        (None, None, None),
        "no personal data on the tombstone"
    );
    assert_eq!(row.username.as_deref(), Some(ada.username.as_str()));
    assert_eq!(store.tokens_row(ada.id).await.unwrap(), None);
    assert_eq!(store.get(ada.id).await.unwrap(), None);
}
