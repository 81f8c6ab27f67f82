//! Tweets end to end over HTTP on both backends: the 280 limit, retries made safe by an
//! idempotency key, likes and retweets with exact counts and the caller's flags, deletion by the
//! author only, timelines that page cleanly while tweets arrive, and the removal of everything a
//! deleted account left.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;
use twtr_proto::tweets::v1::{CreateTweetRequest, ListUserTweetsRequest};

use crate::support::{CONVERGE, TestMesh, as_user, eventually, ids, on_both_backends, text};

on_both_backends! {
    text_limit => the_280_limit_counts_characters_after_normalization,
    idempotency_key => a_post_retried_with_its_idempotency_key_creates_one_tweet,
    timelines_while_posting => author_timelines_page_cleanly_while_tweets_arrive,
    account_deletion => a_deleted_accounts_tweets_likes_and_retweets_go,
    likes_and_retweets => likes_and_retweets_are_idempotent_with_exact_counts_and_flags,
    concurrent_likers => twenty_concurrent_likers_give_exactly_twenty,
    deletion => only_the_author_deletes_and_a_deleted_tweet_is_gone_everywhere,
    public_timeline => the_public_timeline_pages_newest_first_without_overlap_or_gaps,
}

async fn tweet(mesh: &TestMesh, id: &str, token: Option<&str>) -> (StatusCode, Value) {
    mesh.get(&format!("/v1/tweets/{id}"), token).await
}

async fn act(mesh: &TestMesh, method: Method, id: &str, what: &str, token: &str) -> StatusCode {
    mesh.call(
        method,
        &format!("/v1/tweets/{id}/{what}"),
        Some(token),
        None,
    )
    .await
    .0
}

pub async fn likes_and_retweets_are_idempotent_with_exact_counts_and_flags(mesh: &TestMesh) {
    let (author_id, author) = mesh.user("author").await;
    let (_, fan) = mesh.user("fan").await;
    mesh.follow(&fan, &author_id).await;
    let id = mesh.tweet(&author, "like me").await;
    mesh.await_feed(&fan, &[&id], "the author's tweet").await;
    for _ in 0..2 {
        assert_eq!(
            act(mesh, Method::POST, &id, "like", &fan).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            act(mesh, Method::POST, &id, "retweet", &fan).await,
            StatusCode::NO_CONTENT
        );
    }
    let (_, seen) = tweet(mesh, &id, Some(&fan)).await;
    assert_eq!(
        (seen["like_count"].clone(), seen["retweet_count"].clone()),
        (json!(1), json!(1)),
        "{seen}"
    );
    assert_eq!(
        (seen["liked_by_me"].clone(), seen["retweeted_by_me"].clone()),
        (json!(true), json!(true))
    );
    // The home feed carries the same flags (fetched with its tweets, in one call).
    let (_, feed) = mesh.get("/v1/feed", Some(&fan)).await;
    assert_eq!(
        (
            feed["items"][0]["liked_by_me"].clone(),
            feed["items"][0]["retweeted_by_me"].clone()
        ),
        (json!(true), json!(true)),
        "{feed}"
    );
    let (_, as_author) = tweet(mesh, &id, Some(&author)).await;
    assert_eq!(
        as_author["liked_by_me"], false,
        "flags are the caller's own"
    );
    let (_, anonymous) = tweet(mesh, &id, None).await;
    assert!(
        anonymous.get("liked_by_me").is_none(),
        "no flags without a token: {anonymous}"
    );
    for _ in 0..2 {
        assert_eq!(
            act(mesh, Method::DELETE, &id, "like", &fan).await,
            StatusCode::NO_CONTENT
        );
    }
    let (_, seen) = tweet(mesh, &id, Some(&fan)).await;
    assert_eq!(
        (seen["like_count"].clone(), seen["liked_by_me"].clone()),
        (json!(0), json!(false))
    );
    assert_eq!(seen["retweet_count"], 1, "unliking leaves the retweet");
    assert_eq!(
        act(mesh, Method::DELETE, &id, "retweet", &fan).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(tweet(mesh, &id, None).await.1["retweet_count"], 0);
    // Unknown tweets and missing tokens.
    assert_eq!(
        act(mesh, Method::POST, "12345", "like", &fan).await,
        StatusCode::NOT_FOUND
    );
    let (status, _) = mesh
        .call(Method::POST, &format!("/v1/tweets/{id}/like"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The flags come with pages too (one batched lookup per page).
    let (_, page) = mesh.get("/v1/timeline", Some(&fan)).await;
    assert_eq!(page["items"][0]["liked_by_me"], false, "{page}");
}

pub async fn twenty_concurrent_likers_give_exactly_twenty(mesh: &TestMesh) {
    let (_, author) = mesh.user("popular").await;
    let id = mesh.tweet(&author, "everyone likes this").await;
    let mut likers = Vec::new();
    for n in 0..20 {
        likers.push(mesh.user(&format!("liker{n}")).await.1);
    }
    let likes = likers
        .iter()
        .map(|token| act(mesh, Method::POST, &id, "like", token));
    let statuses = futures_util::future::join_all(likes).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{statuses:?}"
    );
    assert_eq!(tweet(mesh, &id, None).await.1["like_count"], 20);
}

pub async fn only_the_author_deletes_and_a_deleted_tweet_is_gone_everywhere(mesh: &TestMesh) {
    let (author_id, author) = mesh.user("writer").await;
    let (_, other) = mesh.user("reader").await;
    let keep = mesh.tweet(&author, "keep me").await;
    let doomed = mesh.tweet(&author, "delete me").await;
    assert_eq!(
        act(mesh, Method::POST, &doomed, "like", &other).await,
        StatusCode::NO_CONTENT
    );

    let (status, body) = mesh
        .delete(&format!("/v1/tweets/{doomed}"), Some(&other))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = mesh.delete(&format!("/v1/tweets/{doomed}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        tweet(mesh, &doomed, None).await.0,
        StatusCode::OK,
        "refusals changed nothing"
    );

    let (status, _) = mesh
        .delete(&format!("/v1/tweets/{doomed}"), Some(&author))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(tweet(mesh, &doomed, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        mesh.delete(&format!("/v1/tweets/{doomed}"), Some(&author))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        act(mesh, Method::POST, &doomed, "like", &other).await,
        StatusCode::NOT_FOUND
    );
    let (_, mine) = mesh
        .get(&format!("/v1/users/{author_id}/tweets"), None)
        .await;
    assert_eq!(ids(&mine), std::slice::from_ref(&keep));
    let (_, everyone) = mesh.get("/v1/timeline", None).await;
    assert_eq!(ids(&everyone), [keep]);
    let (_, profile) = mesh.get(&format!("/v1/users/{author_id}"), None).await;
    assert_eq!(profile["tweets_count"], 1);
}

pub async fn the_public_timeline_pages_newest_first_without_overlap_or_gaps(mesh: &TestMesh) {
    let mut authors = Vec::new();
    for name in ["ann", "bea", "cal"] {
        authors.push(mesh.user(name).await.1);
    }
    let mut posted = Vec::new();
    for n in 0..8 {
        posted.push(mesh.tweet(&authors[n % 3], &format!("tweet {n}")).await);
    }
    let newest_first: Vec<String> = posted.iter().rev().cloned().collect();
    // Backwards with `before`, three at a time.
    let mut seen = Vec::new();
    let mut path = "/v1/timeline?limit=3".to_owned();
    loop {
        let (status, page) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/timeline?limit=3&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    // Forwards with `since`, as a poller does, while a new tweet arrives.
    let late = mesh.tweet(&authors[0], "late").await;
    let mut polled = Vec::new();
    let mut since = posted[2].clone();
    loop {
        let (_, page) = mesh
            .get(&format!("/v1/timeline?limit=2&since={since}"), None)
            .await;
        let items = ids(&page);
        let Some(newest) = items.first().cloned() else {
            break;
        };
        polled.extend(items.into_iter().rev());
        since = newest;
    }
    let mut expected: Vec<String> = posted[3..].to_vec();
    expected.push(late);
    assert_eq!(polled, expected);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no tweet twice");
}

/// Posts `text_` as `token`, with an `Idempotency-Key` when given; the status and the body.
async fn post(mesh: &TestMesh, token: &str, text_: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/tweets", mesh.http))
        .bearer_auth(token)
        .json(&json!({ "text": text_ }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every tweet of `user_id`, newest first, walking the pages.
async fn all_tweets_of(mesh: &TestMesh, user_id: &str, limit: u32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut path = format!("/v1/users/{user_id}/tweets?limit={limit}");
    loop {
        let (status, page) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/users/{user_id}/tweets?limit={limit}&before={next}"),
            None => return seen,
        }
    }
}

pub async fn the_280_limit_counts_characters_after_normalization(mesh: &TestMesh) {
    let (me, token) = mesh.user("ada").await;
    let accepted = [
        // 280 two-byte characters.
        ("precomposed é", "é".repeat(280), "é".repeat(280)),
        // 560 scalars that NFC composes into 280.
        (
            "e + combining acute",
            "e\u{301}".repeat(280),
            "é".repeat(280),
        ),
        // 280 four-byte emoji.
        ("emoji", "😀".repeat(280), "😀".repeat(280)),
        // 280 scalars with no composed form: a + combining low line, 140 times.
        (
            "combining, no composed form",
            "a\u{332}".repeat(140),
            "a\u{332}".repeat(140),
        ),
        (
            "surrounding spaces are trimmed",
            format!("  {}  ", "x".repeat(280)),
            "x".repeat(280),
        ),
    ];
    for (what, sent, stored) in &accepted {
        let (status, body) = post(mesh, &token, sent, None).await;
        assert_eq!(status, StatusCode::CREATED, "{what}: {body}");
        assert_eq!(&text(&body["text"]), stored, "{what}");
    }
    let refused = [
        ("281 precomposed é", "é".repeat(281)),
        ("281 emoji", "😀".repeat(281)),
        ("282 scalars of combining text", "a\u{332}".repeat(141)),
        ("281 ASCII", "x".repeat(281)),
        ("blank", " \n ".to_owned()),
    ];
    for (what, sent) in &refused {
        let (status, body) = post(mesh, &token, sent, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{what}: {body}");
    }
    let (_, profile) = mesh.get(&format!("/v1/users/{me}"), None).await;
    assert_eq!(
        profile["tweets_count"],
        accepted.len(),
        "refused posts wrote nothing"
    );
}

pub async fn a_post_retried_with_its_idempotency_key_creates_one_tweet(mesh: &TestMesh) {
    let (me, token) = mesh.user("kay").await;
    let (_, other) = mesh.user("lee").await;
    let (status, first) = post(mesh, &token, "once", Some("key-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = post(mesh, &token, "once", Some("key-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(
        again["id"], first["id"],
        "the retry answers with the first tweet"
    );
    // As it is now: a retry after the author liked it says so.
    assert_eq!(first["liked_by_me"], false, "{first}");
    let first_id = text(&first["id"]);
    assert_eq!(
        act(mesh, Method::POST, &first_id, "like", &token).await,
        StatusCode::NO_CONTENT
    );
    let (_, liked) = post(mesh, &token, "once", Some("key-1")).await;
    assert_eq!(
        (liked["id"].clone(), liked["liked_by_me"].clone()),
        (first["id"].clone(), json!(true)),
        "{liked}"
    );
    // The same key for another text is a client bug, not a retry.
    let (status, body) = post(mesh, &token, "something else", Some("key-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Another caller's key of the same name is theirs.
    let (status, theirs) = post(mesh, &other, "once", Some("key-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert_ne!(theirs["id"], first["id"]);
    // Without a key, the same text twice is two tweets.
    let (_, a) = post(mesh, &token, "twice", None).await;
    let (_, b) = post(mesh, &token, "twice", None).await;
    assert_ne!(a["id"], b["id"]);
    assert_eq!(
        (a["liked_by_me"].clone(), a["retweeted_by_me"].clone()),
        (json!(false), json!(false)),
        "{a}"
    );
    for bad in ["has space", "é"] {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/tweets", mesh.http))
            .bearer_auth(&token)
            .header("idempotency-key", bad.as_bytes())
            .json(&json!({ "text": "bad key" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "key {bad:?}");
    }
    // A first attempt whose caller gave up before the answer (it may or may not have landed),
    // then the retry: one tweet either way.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(2))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/tweets", mesh.http))
        .bearer_auth(&token)
        .header("idempotency-key", "key-2")
        .json(&json!({ "text": "maybe landed" }))
        .send()
        .await;
    let (status, retried) = post(mesh, &token, "maybe landed", Some("key-2")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{retried} (first attempt: {gave_up:?})"
    );
    // And through gRPC, as a caller inside the mesh would retry (with the author's token).
    let mut tweets = TweetsServiceClient::connect(format!("http://{}", mesh.tweets))
        .await
        .unwrap();
    let author_id: u64 = me.parse().unwrap();
    let as_me = mesh.token_for(&me);
    let request = || {
        as_user(
            &as_me,
            CreateTweetRequest {
                author_id,
                text: "over grpc".to_owned(),
                idempotency_key: "key-3".to_owned(),
                mentions: Vec::new(),
            },
        )
    };
    let one = tweets.create_tweet(request()).await.unwrap().into_inner();
    let two = tweets.create_tweet(request()).await.unwrap().into_inner();
    assert_eq!(one.id, two.id);
    let mine = all_tweets_of(mesh, &me, 100).await;
    let expected = [
        text(&first["id"]),
        text(&a["id"]),
        text(&b["id"]),
        text(&retried["id"]),
        one.id.to_string(),
    ];
    assert_eq!(mine.len(), expected.len(), "{mine:?}");
    for id in &expected {
        assert!(mine.contains(id), "{id} in {mine:?}");
    }
}

pub async fn author_timelines_page_cleanly_while_tweets_arrive(mesh: &TestMesh) {
    let (me, token) = mesh.user("pat").await;
    let mut posted = Vec::new();
    for n in 0..9 {
        posted.push(mesh.tweet(&token, &format!("tweet {n}")).await);
    }
    let newest_first: Vec<String> = posted.iter().rev().cloned().collect();
    // Backwards, a tweet posted between every two pages: the walk still sees exactly the
    // tweets older than where it started, once each.
    let mut seen = Vec::new();
    let mut arrived = Vec::new();
    let mut path = format!("/v1/users/{me}/tweets?limit=2");
    for round in 0.. {
        let (status, page) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        arrived.push(mesh.tweet(&token, &format!("arrived {round}")).await);
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/users/{me}/tweets?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    // Polling forwards from the newest seen picks up exactly the arrivals, oldest first.
    let mut polled = Vec::new();
    let mut since = posted.last().unwrap().clone();
    loop {
        let (_, page) = mesh
            .get(
                &format!("/v1/users/{me}/tweets?limit=2&since={since}"),
                None,
            )
            .await;
        let items = ids(&page);
        let Some(newest) = items.first().cloned() else {
            break;
        };
        polled.extend(items.into_iter().rev());
        since = newest;
    }
    assert_eq!(polled, arrived);
}

pub async fn a_deleted_accounts_tweets_likes_and_retweets_go(mesh: &TestMesh) {
    let (gone_id, gone) = mesh.user("gone").await;
    let (_, stays) = mesh.user("stays").await;
    let mut theirs = Vec::new();
    for n in 0..5 {
        theirs.push(mesh.tweet(&gone, &format!("soon gone {n}")).await);
    }
    let kept = mesh.tweet(&stays, "kept").await;
    for what in ["like", "retweet"] {
        assert_eq!(
            act(mesh, Method::POST, &kept, what, &gone).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            act(mesh, Method::POST, &theirs[0], what, &stays).await,
            StatusCode::NO_CONTENT
        );
    }
    let (_, before) = tweet(mesh, &kept, None).await;
    assert_eq!(
        (
            before["like_count"].clone(),
            before["retweet_count"].clone()
        ),
        (json!(1), json!(1))
    );

    let (status, _) = mesh.delete("/v1/users/me", Some(&gone)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    eventually(
        "the deleted account's tweets and reactions to go",
        CONVERGE,
        || async {
            let (_, kept_now) = tweet(mesh, &kept, None).await;
            let counts_back = kept_now["like_count"] == 0 && kept_now["retweet_count"] == 0;
            let mut tweets_gone = true;
            for id in &theirs {
                tweets_gone &= tweet(mesh, id, None).await.0 == StatusCode::NOT_FOUND;
            }
            (counts_back && tweets_gone).then_some(())
        },
    )
    .await;
    let (_, timeline) = mesh.get("/v1/timeline?limit=100", None).await;
    assert_eq!(ids(&timeline), vec![kept.clone()], "the public timeline");
    let (status, _) = mesh.get(&format!("/v1/users/{gone_id}/tweets"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no such user any more");
    let mut tweets = TweetsServiceClient::connect(format!("http://{}", mesh.tweets))
        .await
        .unwrap();
    let listed = tweets
        .list_user_tweets(ListUserTweetsRequest {
            author_id: gone_id.parse().unwrap(),
            limit: 100,
            ..ListUserTweetsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tweets.is_empty(), "{listed:?}");
    // The account cannot post any more: not with its old token at the gateway, and not by a
    // caller inside the mesh with a validly signed token of its id (the gateway's revocation
    // check is not there; the tweets service's own record of deletions is).
    let (status, _) = post(mesh, &gone, "from beyond", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refused = tweets
        .create_tweet(as_user(
            &mesh.token_for(&gone_id),
            CreateTweetRequest {
                author_id: gone_id.parse().unwrap(),
                text: "from beyond".to_owned(),
                idempotency_key: String::new(),
                mentions: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let (_, timeline) = mesh.get("/v1/timeline?limit=100", None).await;
    assert_eq!(
        ids(&timeline),
        vec![kept],
        "nothing posted after the deletion"
    );
}
