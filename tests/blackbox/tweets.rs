//! Tweets beyond posting, end to end over HTTP on both backends: likes and retweets with exact
//! counts and the caller's flags, deletion by the author only, and the public timeline.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestMesh, ids, on_both_backends};

on_both_backends! {
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
    let (_, author) = mesh.user("author").await;
    let (_, fan) = mesh.user("fan").await;
    let id = mesh.tweet(&author, "like me").await;
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
