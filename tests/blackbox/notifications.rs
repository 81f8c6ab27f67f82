//! Mentions and notifications, end to end: `@username` links a known user (an unknown name
//! stays text), who is notified; so is a user who gains a follower, or whose tweet is liked or
//! retweeted; undoing the action (unfollow, unlike, unretweet, deleting the tweet or the
//! account) takes the notification away; the unread count and the read cursor. Redelivered and
//! reordered events are published on the CQL mesh's RabbitMQ exchange (on the embedded mesh the
//! in-process bus is out of a test's reach: the feeds service's unit tests and the store
//! conformance suite hold redelivery and reordering there).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use twtr_common::IdGenerator;
use twtr_common::bus;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{TweetCreated, TweetLiked, TweetUnliked, UserFollowed};

use crate::support::{CONVERGE, TestMesh, eventually, on_both_backends, operator_bus, text};

on_both_backends! {
    mentions => mentions_link_known_users_and_notify_them,
    actions => follows_likes_and_retweets_notify_until_undone,
    deletions => deleting_a_tweet_or_an_account_takes_its_notifications_away,
    reading => the_unread_count_pages_and_the_read_cursor,
}

/// The caller's notifications page at `query`, once it answers 200.
async fn page(mesh: &TestMesh, token: &str, query: &str) -> Value {
    let (status, page) = mesh
        .get(&format!("/v1/notifications{query}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

/// The caller's notifications (first page of 100) as `kind actor tweet` lines, newest first.
async fn notified(mesh: &TestMesh, token: &str) -> Vec<String> {
    let page = page(mesh, token, "?limit=100").await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            let tweet = item["tweet"]["id"].as_str().unwrap_or("-");
            format!(
                "{} {} {tweet}",
                text(&item["kind"]),
                text(&item["actor"]["id"])
            )
        })
        .collect()
}

/// Waits until the caller's notifications are exactly `expected` (`kind actor tweet`, `-` for
/// no tweet), newest first.
async fn await_notified(mesh: &TestMesh, token: &str, expected: &[String]) {
    eventually(
        &format!("notifications to be {expected:?}"),
        CONVERGE,
        || async { (notified(mesh, token).await == expected).then_some(()) },
    )
    .await;
}

/// Likes and retweets `tweet` as `token`.
async fn like_and_retweet(mesh: &TestMesh, token: &str, tweet: &str) {
    for action in ["like", "retweet"] {
        let path = format!("/v1/tweets/{tweet}/{action}");
        let (status, body) = mesh.call(Method::POST, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{action}: {body}");
    }
}

fn line(kind: &str, actor: &str, tweet: &str) -> String {
    format!("{kind} {actor} {tweet}")
}

pub async fn mentions_link_known_users_and_notify_them(mesh: &TestMesh) {
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    let (status, tweet) = mesh
        .post(
            "/v1/tweets",
            Some(&bob),
            json!({ "text": "hi @ALICE, @nobody_here and me @bob; mail bob@alice.com" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tweet}");
    let id = text(&tweet["id"]);
    let mentions = json!([
        { "id": alice_id, "username": "alice" },
        { "id": bob_id, "username": "bob" },
    ]);
    assert_eq!(tweet["mentions"], mentions, "known names only, in order");
    let (_, read) = mesh.get(&format!("/v1/tweets/{id}"), None).await;
    assert_eq!(read["mentions"], mentions);
    let plain = mesh.tweet(&alice, "no one here, not even a@b.co").await;
    let (_, read) = mesh.get(&format!("/v1/tweets/{plain}"), None).await;
    assert_eq!(read["mentions"], json!([]));

    await_notified(mesh, &alice, &[line("mention", &bob_id, &id)]).await;
    let first = page(mesh, &alice, "").await;
    let item = &first["items"][0];
    assert_eq!(item["actor"]["username"], "bob");
    assert_eq!(item["tweet"]["text"], tweet["text"]);
    assert_eq!(item["read"], false);
    assert!(text(&item["created_at"]).ends_with('Z'));
    assert_eq!(first["unread_count"], 1);
    assert_eq!(first["next_cursor"], Value::Null);
    // Nobody is told of their own mention.
    assert!(notified(mesh, &bob).await.is_empty());

    // A retried post (same Idempotency-Key) is the first one: one notification, not two.
    let post = || async {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/tweets", mesh.http))
            .bearer_auth(&bob)
            .header("idempotency-key", "mention-retry")
            .json(&json!({ "text": "again @alice" }))
            .send()
            .await
            .expect("HTTP request");
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let (status, one) = post().await;
    assert_eq!(status, StatusCode::CREATED, "{one}");
    let (status, two) = post().await;
    assert_eq!(status, StatusCode::CREATED, "{two}");
    assert_eq!(one["id"], two["id"]);
    assert_eq!(
        two["mentions"],
        json!([{ "id": alice_id, "username": "alice" }])
    );
    let again = text(&one["id"]);
    await_notified(
        mesh,
        &alice,
        &[
            line("mention", &bob_id, &again),
            line("mention", &bob_id, &id),
        ],
    )
    .await;
}

pub async fn follows_likes_and_retweets_notify_until_undone(mesh: &TestMesh) {
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    let tweet = mesh.tweet(&alice, "like me").await;
    mesh.follow(&bob, &alice_id).await;
    like_and_retweet(mesh, &bob, &tweet).await;
    // Their own like and retweet notify no one.
    like_and_retweet(mesh, &alice, &tweet).await;
    let follow = line("follow", &bob_id, "-");
    let like = line("like", &bob_id, &tweet);
    let retweet = line("retweet", &bob_id, &tweet);
    await_notified(
        mesh,
        &alice,
        &[retweet.clone(), like.clone(), follow.clone()],
    )
    .await;
    assert_eq!(page(mesh, &alice, "").await["unread_count"], 3);
    assert!(notified(mesh, &bob).await.is_empty());

    let bob_ = bob.as_str();
    let undo = |path: String| async move {
        let (status, body) = mesh.delete(&path, Some(bob_)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
    };
    undo(format!("/v1/tweets/{tweet}/like")).await;
    await_notified(mesh, &alice, &[retweet.clone(), follow.clone()]).await;
    undo(format!("/v1/tweets/{tweet}/retweet")).await;
    await_notified(mesh, &alice, std::slice::from_ref(&follow)).await;
    undo(format!("/v1/users/{alice_id}/follow")).await;
    await_notified(mesh, &alice, &[]).await;
    assert_eq!(page(mesh, &alice, "").await["unread_count"], 0);

    // Doing it again notifies again.
    mesh.follow(&bob, &alice_id).await;
    await_notified(mesh, &alice, &[follow]).await;
}

pub async fn deleting_a_tweet_or_an_account_takes_its_notifications_away(mesh: &TestMesh) {
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    let (carol_id, carol) = mesh.user("carol").await;
    let tweet = mesh.tweet(&alice, "hello @carol").await;
    like_and_retweet(mesh, &bob, &tweet).await;
    mesh.follow(&bob, &alice_id).await;
    let answer = mesh.tweet(&bob, "@alice hi back").await;
    await_notified(mesh, &carol, &[line("mention", &alice_id, &tweet)]).await;
    await_notified(
        mesh,
        &alice,
        &[
            line("mention", &bob_id, &answer),
            line("follow", &bob_id, "-"),
            line("retweet", &bob_id, &tweet),
            line("like", &bob_id, &tweet),
        ],
    )
    .await;

    // Deleting the tweet takes its mention, likes and retweets away.
    let (status, _) = mesh
        .delete(&format!("/v1/tweets/{tweet}"), Some(&alice))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_notified(mesh, &carol, &[]).await;
    await_notified(
        mesh,
        &alice,
        &[
            line("mention", &bob_id, &answer),
            line("follow", &bob_id, "-"),
        ],
    )
    .await;

    // Deleting bob's account takes away what he did (his tweet's mention, his follow), as the
    // purges emit the undoing events.
    let (status, _) = mesh.delete("/v1/users/me", Some(&bob)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_notified(mesh, &alice, &[]).await;

    // Carol's own notifications go with her account (checked over gRPC: her token is revoked).
    let tweet = mesh.tweet(&alice, "for @carol").await;
    await_notified(mesh, &carol, &[line("mention", &alice_id, &tweet)]).await;
    let (status, _) = mesh.delete("/v1/users/me", Some(&carol)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = mesh.get("/v1/notifications", Some(&carol)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let _ = carol_id;
}

pub async fn the_unread_count_pages_and_the_read_cursor(mesh: &TestMesh) {
    let (alice_id, alice) = mesh.user("alice").await;
    let mut followers = Vec::new();
    for name in ["fan_one", "fan_two", "fan_three"] {
        let (id, token) = mesh.user(name).await;
        mesh.follow(&token, &alice_id).await;
        followers.push(id);
    }
    let expected: Vec<String> = followers
        .iter()
        .rev()
        .map(|id| line("follow", id, "-"))
        .collect();
    await_notified(mesh, &alice, &expected).await;
    let all = page(mesh, &alice, "").await;
    assert_eq!(all["unread_count"], 3);
    let ids: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| text(&item["id"]))
        .collect();

    // Pages of two, then one, never overlapping.
    let first = page(mesh, &alice, "?limit=2").await;
    let cursor = text(&first["next_cursor"]);
    assert_eq!(cursor, ids[1]);
    let second = page(mesh, &alice, &format!("?limit=2&before={cursor}")).await;
    assert_eq!(second["items"][0]["id"], json!(ids[2]));
    assert_eq!(second["next_cursor"], Value::Null);
    let (status, _) = mesh.get("/v1/notifications?since=1", Some(&alice)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let alice_ = alice.as_str();
    let read = |body: Value| async move {
        let (status, answer) = mesh
            .post("/v1/notifications/read", Some(alice_), body)
            .await;
        (status, answer)
    };
    let (status, _) = read(json!({ "up_to": ids[1] })).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let now = page(mesh, &alice, "").await;
    assert_eq!(now["unread_count"], 1);
    let flags: Vec<&Value> = now["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["read"])
        .collect();
    assert_eq!(flags, [&json!(false), &json!(true), &json!(true)]);
    // Never back.
    let (status, _) = read(json!({ "up_to": ids[2] })).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(page(mesh, &alice, "").await["unread_count"], 1);
    // Bad cursors.
    for bad in [
        json!({ "up_to": "abc" }),
        json!({ "up_to": "0" }),
        json!({ "upto": "1" }),
    ] {
        let (status, body) = read(bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // Up to the newest.
    let (status, _) = read(json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(page(mesh, &alice, "").await["unread_count"], 0);
    // A new one is unread.
    let (late, token) = mesh.user("fan_four").await;
    mesh.follow(&token, &alice_id).await;
    let mut expected = expected;
    expected.insert(0, line("follow", &late, "-"));
    await_notified(mesh, &alice, &expected).await;
    assert_eq!(page(mesh, &alice, "").await["unread_count"], 1);
}

/// Events the broker delivers twice, or late (a like after its unlike, a follow after its
/// unfollow, a tweet's `TweetCreated` with its mentions after its deletion), leave the
/// notifications as they were: published here, beside the mesh's own, on the CQL mesh's
/// RabbitMQ exchange.
#[tokio::test]
async fn redelivered_and_reordered_events_change_nothing() {
    let Some(mesh) = TestMesh::start_cql().await else {
        return;
    };
    let Some((url, prefix)) = mesh.amqp.clone() else {
        eprintln!("skipped: the CQL mesh runs without a broker here");
        return;
    };
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    let tweet = mesh.tweet(&alice, "like me").await;
    let gone = mesh.tweet(&bob, "soon gone @alice").await;
    mesh.follow(&bob, &alice_id).await;
    like_and_retweet(&mesh, &bob, &tweet).await;
    let retweet = line("retweet", &bob_id, &tweet);
    await_notified(
        &mesh,
        &alice,
        &[
            retweet.clone(),
            line("like", &bob_id, &tweet),
            line("follow", &bob_id, "-"),
            line("mention", &bob_id, &gone),
        ],
    )
    .await;
    // Unlike (version 2), unfollow (version 2), delete the mentioning tweet.
    let (status, _) = mesh
        .delete(&format!("/v1/tweets/{tweet}/like"), Some(&bob))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = mesh
        .delete(&format!("/v1/users/{alice_id}/follow"), Some(&bob))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = mesh.delete(&format!("/v1/tweets/{gone}"), Some(&bob)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_notified(&mesh, &alice, std::slice::from_ref(&retweet)).await;

    let broker = operator_bus(&url, &prefix).await;
    let ids = IdGenerator::new(1023).unwrap();
    let (alice_n, bob_n): (u64, u64) = (alice_id.parse().unwrap(), bob_id.parse().unwrap());
    let (tweet_n, gone_n): (u64, u64) = (tweet.parse().unwrap(), gone.parse().unwrap());
    let envelope =
        |aggregate, payload| twtr_common::events::envelope(ids.next_id(), aggregate, payload);
    let events = [
        // The like again, late: its unlike (version 2) stands.
        Payload::TweetLiked(TweetLiked {
            tweet_id: tweet_n,
            author_id: alice_n,
            user_id: bob_n,
            version: 1,
        }),
        Payload::TweetUnliked(TweetUnliked {
            tweet_id: tweet_n,
            author_id: alice_n,
            user_id: bob_n,
            version: 2,
        }),
        // The follow again, late.
        Payload::UserFollowed(UserFollowed {
            follower_id: bob_n,
            followee_id: alice_n,
            version: 1,
        }),
        // The deleted tweet's mention, late.
        Payload::TweetCreated(TweetCreated {
            tweet_id: gone_n,
            author_id: bob_n,
            text: "soon gone @alice".into(),
            created_at: None,
            mentioned_user_ids: vec![alice_n],
        }),
    ];
    for payload in events {
        let event = envelope(tweet_n, payload);
        bus::publish(&broker, &event).await.expect("publish");
        bus::publish(&broker, &event).await.expect("publish twice");
    }
    // A follow after them, once notified, shows the queue got that far.
    let (carol_id, carol) = mesh.user("carol").await;
    mesh.follow(&carol, &alice_id).await;
    await_notified(&mesh, &alice, &[line("follow", &carol_id, "-"), retweet]).await;
    mesh.stop().await;
}
