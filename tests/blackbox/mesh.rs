//! The public HTTP contract, end to end through the gateway and all four services.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{CONVERGE, TestMesh, eventually, has_store_files, ids, text};

#[tokio::test]
async fn a_followers_feed_shows_the_followees_tweet_through_events() {
    let mesh = TestMesh::start().await;
    let (_, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    mesh.follow(&alice, &bob_id).await;
    let tweet = mesh.tweet(&bob, "hello from bob").await;

    let feed = eventually("bob's tweet in alice's feed", CONVERGE, || async {
        let (status, page) = mesh.get("/v1/feed", Some(&alice)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        (ids(&page) == [tweet.clone()]).then_some(page)
    })
    .await;
    // The entry is hydrated: text and author profile, not just an id.
    let item = &feed["items"][0];
    assert_eq!(item["text"], "hello from bob");
    assert_eq!(item["author"]["id"], bob_id);
    assert_eq!(item["author"]["username"], "bob");
    assert_eq!(feed["next"], serde_json::Value::Null);
    // The author sees their own tweet too.
    mesh.await_feed(&bob, &[&tweet], "bob's tweet in bob's feed")
        .await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_users_tweets_and_feeds() {
    let mesh = TestMesh::start().await;
    let (_, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    mesh.follow(&alice, &bob_id).await;
    let tweet = mesh.tweet(&bob, "still here after a restart").await;
    mesh.await_feed(&alice, &[&tweet], "the tweet in alice's feed")
        .await;
    let data_dir = mesh.stop().await;
    assert!(has_store_files(data_dir.path()));

    let mesh = TestMesh::start_in(data_dir).await;
    // Tokens issued before the restart are still valid (the key pair is kept in the data dir).
    assert_eq!(
        mesh.feed_ids(&alice).await,
        std::slice::from_ref(&tweet),
        "the feed entry survived"
    );
    let (status, body) = mesh.get(&format!("/v1/tweets/{tweet}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["text"], "still here after a restart");
    let (status, bob_profile) = mesh.get("/v1/users/by-username/bob", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            bob_profile["followers_count"].as_u64(),
            bob_profile["tweets_count"].as_u64()
        ),
        (Some(1), Some(1))
    );
    mesh.stop().await;
}

#[tokio::test]
async fn sign_up_validates_and_writes_nothing_on_bad_input() {
    let mesh = TestMesh::start().await;
    let cases = [
        (
            json!({ "username": "ab", "password": "long enough" }),
            "username",
        ),
        (
            json!({ "username": "has space", "password": "long enough" }),
            "username",
        ),
        (
            json!({ "username": "valid_name", "password": "short" }),
            "password",
        ),
        (
            json!({ "username": "valid_name", "password": "long enough", "bio": "b".repeat(161) }),
            "bio",
        ),
        (
            json!({ "username": "valid_name", "password": "long enough", "extra": 1 }),
            "extra",
        ),
        (json!({ "password": "long enough" }), "username"),
    ];
    for (body, mentions) in cases {
        let (status, error) = mesh.post("/v1/users", None, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {error}");
        assert_eq!(error["error"]["code"], "invalid_argument");
        let message = text(&error["error"]["message"]);
        assert!(
            message.contains(mentions),
            "{body}: {message:?} should mention {mentions}"
        );
    }
    let (status, _) = mesh.get("/v1/users/by-username/valid_name", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no refused sign-up was stored"
    );

    let (status, error) = mesh.post_raw("/v1/users", None, "{not json").await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_argument"))
    );
    let huge = json!({ "username": "big", "password": "p".repeat(100 * 1024) }).to_string();
    let (status, error) = mesh.post_raw("/v1/users", None, huge).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("payload_too_large"))
    );
}

#[tokio::test]
async fn usernames_are_unique_ignoring_case() {
    let mesh = TestMesh::start().await;
    mesh.user("Carol").await;
    let (status, error) = mesh
        .post(
            "/v1/users",
            None,
            json!({ "username": "cAROL", "password": "another password" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "already_exists");
    let (status, carol) = mesh.get("/v1/users/by-username/carol", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(carol["username"], "Carol", "the original spelling is kept");
}

#[tokio::test]
async fn logging_in_and_tokens_are_checked() {
    let mesh = TestMesh::start().await;
    let (alice_id, alice) = mesh.user("alice").await;
    let (status, error) = mesh
        .post(
            "/v1/sessions",
            None,
            json!({ "username": "alice", "password": "not her password" }),
        )
        .await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthenticated"))
    );
    let (status, _) = mesh
        .post(
            "/v1/sessions",
            None,
            json!({ "username": "nobody", "password": "whatever123" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, me) = mesh.get("/v1/users/me", Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], alice_id);
    for token in [None, Some("garbage"), Some(&alice[..alice.len() - 2])] {
        let (status, error) = mesh.get("/v1/feed", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {error}");
        assert_eq!(error["error"]["code"], "unauthenticated");
    }
    // A refused post writes nothing.
    let (status, _) = mesh
        .post("/v1/tweets", Some("garbage"), json!({ "text": "sneaky" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, tweets) = mesh
        .get(&format!("/v1/users/{alice_id}/tweets"), None)
        .await;
    assert_eq!(ids(&tweets), Vec::<String>::new());
}

#[tokio::test]
async fn tweets_are_validated_and_bad_ones_write_nothing() {
    let mesh = TestMesh::start().await;
    let (alice_id, alice) = mesh.user("alice").await;
    for text_ in ["", "   ", &"x".repeat(281)] {
        let (status, error) = mesh
            .post("/v1/tweets", Some(&alice), json!({ "text": text_ }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text_:?}: {error}");
        assert_eq!(error["error"]["code"], "invalid_argument");
    }
    // 280 characters that take 1120 bytes are fine.
    mesh.tweet(&alice, &"🦀".repeat(280)).await;
    let (_, me) = mesh.get("/v1/users/me", Some(&alice)).await;
    assert_eq!(me["tweets_count"], 1, "only the valid tweet was stored");
    let (status, tweets) = mesh
        .get(&format!("/v1/users/{alice_id}/tweets"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&tweets).len(), 1, "{tweets}");
}

#[tokio::test]
async fn following_is_idempotent_and_refuses_self_and_unknown_users() {
    let mesh = TestMesh::start().await;
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    mesh.follow(&alice, &bob_id).await;
    mesh.follow(&alice, &bob_id).await;
    let (_, bob_profile) = mesh.get(&format!("/v1/users/{bob_id}"), None).await;
    assert_eq!(
        bob_profile["followers_count"], 1,
        "a repeated follow counts once"
    );

    let (status, error) = mesh
        .call(
            Method::POST,
            &format!("/v1/users/{alice_id}/follow"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, _) = mesh
        .call(Method::POST, "/v1/users/12345/follow", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mesh
        .call(Method::DELETE, "/v1/users/12345/follow", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Unfollowing removes the followee's tweets from the feed, and is idempotent too.
    let tweet = mesh.tweet(&bob, "soon gone from alice's feed").await;
    mesh.await_feed(&alice, &[&tweet], "the tweet in alice's feed")
        .await;
    for _ in 0..2 {
        let (status, _) = mesh
            .call(
                Method::DELETE,
                &format!("/v1/users/{bob_id}/follow"),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    mesh.await_feed(&alice, &[], "the tweet gone from alice's feed")
        .await;
    let (_, bob_profile) = mesh.get(&format!("/v1/users/{bob_id}"), None).await;
    assert_eq!(bob_profile["followers_count"], 0);
}

#[tokio::test]
async fn a_users_tweets_page_newest_first_without_overlap_or_gaps() {
    let mesh = TestMesh::start().await;
    let (alice_id, alice) = mesh.user("alice").await;
    let mut posted = Vec::new();
    for n in 0..5 {
        posted.push(mesh.tweet(&alice, &format!("tweet {n}")).await);
    }
    posted.reverse();

    let mut seen = Vec::new();
    let mut path = format!("/v1/users/{alice_id}/tweets?limit=2");
    loop {
        let (status, page) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/users/{alice_id}/tweets?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, posted);

    // Polling with `since` returns only what is newer.
    let (_, newer) = mesh
        .get(
            &format!("/v1/users/{alice_id}/tweets?since={}", posted[2]),
            None,
        )
        .await;
    assert_eq!(ids(&newer), posted[..2].to_vec());
    let (status, _) = mesh
        .get(&format!("/v1/users/{alice_id}/tweets?limit=101"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let mesh = TestMesh::start().await;
    for path in [
        "/v1/users/12345",
        "/v1/tweets/12345",
        "/v1/users/12345/tweets",
        "/v1/users/by-username/nobody",
    ] {
        let (status, error) = mesh.get(path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {error}");
        assert_eq!(error["error"]["code"], "not_found");
    }
    let (status, error) = mesh.get("/v1/tweets/not-a-number", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, _) = mesh.get("/v1/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, error) = mesh.call(Method::PUT, "/v1/feed", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn liveness_and_readiness() {
    let mesh = TestMesh::start().await;
    let (status, _) = mesh.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    eventually("readiness", CONVERGE, || async {
        let (status, _) = mesh.get("/readyz", None).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let details = eventually("every service healthy", CONVERGE, || async {
        let (status, body) = mesh.get("/health/details", None).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(details["status"], "healthy");
    for service in ["users", "tweets", "followers", "feeds"] {
        let detail = &details["services"][service];
        assert_eq!(detail["ready"], "SERVING", "{details}");
        assert_eq!(detail["events"], "SERVING", "{details}");
    }
}
