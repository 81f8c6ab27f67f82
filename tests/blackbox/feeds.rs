//! Home feeds end to end over HTTP on both backends: backfill on follow, removal on unfollow and
//! deletion, retweets marked and never duplicated, a deleted account leaving no trace, and pages
//! that neither overlap nor skip while tweets arrive.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{CONVERGE, TestMesh, eventually, ids, on_both_backends, text};

on_both_backends! {
    backfill_and_unfollow => following_backfills_and_unfollowing_removes,
    deleted_tweets => a_deleted_tweet_leaves_every_feed,
    retweets => retweets_reach_followers_once_and_marked,
    account_deletion => a_deleted_account_leaves_no_trace_in_feeds,
    profile_change => a_profile_change_shows_beside_tweets_at_once,
    feed_pages => feed_pages_never_overlap_or_skip_while_tweets_arrive,
}

async fn send(mesh: &TestMesh, method: Method, path: &str, token: &str) -> StatusCode {
    let (status, body) = mesh.call(method, path, Some(token), None).await;
    assert!(status.is_success(), "{path}: {status} {body}");
    status
}

/// Waits until `token`'s first feed page is exactly `expected` (tweet ids, newest first).
async fn await_feed_ids(mesh: &TestMesh, token: &str, expected: &[String], what: &str) {
    eventually(what, CONVERGE, || async {
        (mesh.feed_ids(token).await == expected).then_some(())
    })
    .await;
}

/// The caller's first feed page.
async fn feed(mesh: &TestMesh, token: &str) -> Vec<Value> {
    let (status, page) = mesh.get("/v1/feed?limit=100", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

pub async fn following_backfills_and_unfollowing_removes(mesh: &TestMesh) {
    let (_, reader) = mesh.user("reader").await;
    let (writer_id, writer) = mesh.user("writer").await;
    let mut posted = Vec::new();
    for n in 0..3 {
        posted.push(mesh.tweet(&writer, &format!("before the follow {n}")).await);
    }
    mesh.follow(&reader, &writer_id).await;
    let newest_first: Vec<String> = posted.iter().rev().cloned().collect();
    await_feed_ids(mesh, &reader, &newest_first, "the backfill").await;
    send(
        mesh,
        Method::DELETE,
        &format!("/v1/users/{writer_id}/follow"),
        &reader,
    )
    .await;
    await_feed_ids(mesh, &reader, &[], "the unfollow's removal").await;
    // A tweet after the unfollow reaches the author's feed, never the former follower's.
    let after = mesh.tweet(&writer, "after the unfollow").await;
    let mut writers_feed = vec![after];
    writers_feed.extend(newest_first);
    await_feed_ids(mesh, &writer, &writers_feed, "the author's own feed").await;
    assert!(mesh.feed_ids(&reader).await.is_empty());
}

pub async fn a_deleted_tweet_leaves_every_feed(mesh: &TestMesh) {
    let (_, reader) = mesh.user("reader").await;
    let (writer_id, writer) = mesh.user("writer").await;
    mesh.follow(&reader, &writer_id).await;
    let kept = mesh.tweet(&writer, "kept").await;
    let doomed = mesh.tweet(&writer, "doomed").await;
    let both = [doomed.clone(), kept.clone()];
    await_feed_ids(mesh, &reader, &both, "both tweets").await;
    send(
        mesh,
        Method::DELETE,
        &format!("/v1/tweets/{doomed}"),
        &writer,
    )
    .await;
    for (token, who) in [(&reader, "the follower"), (&writer, "the author")] {
        await_feed_ids(mesh, token, std::slice::from_ref(&kept), who).await;
    }
}

pub async fn retweets_reach_followers_once_and_marked(mesh: &TestMesh) {
    let (author_id, author) = mesh.user("author").await;
    let (retweeter_id, retweeter) = mesh.user("retweeter").await;
    // `fan` follows only the retweeter; `both` follows the author and the retweeter.
    let (_, fan) = mesh.user("fan").await;
    let (_, both) = mesh.user("both").await;
    mesh.follow(&fan, &retweeter_id).await;
    mesh.follow(&both, &retweeter_id).await;
    mesh.follow(&both, &author_id).await;
    let tweet = mesh.tweet(&author, "worth sharing").await;
    await_feed_ids(
        mesh,
        &both,
        std::slice::from_ref(&tweet),
        "the author's follower",
    )
    .await;
    let path = format!("/v1/tweets/{tweet}/retweet");
    send(mesh, Method::POST, &path, &retweeter).await;
    await_feed_ids(mesh, &fan, std::slice::from_ref(&tweet), "the retweet").await;
    let items = feed(mesh, &fan).await;
    assert_eq!(
        text(&items[0]["retweeted_by"]["id"]),
        retweeter_id,
        "{items:?}"
    );
    assert_eq!(text(&items[0]["author"]["id"]), author_id);
    // Already in the feed through its author: one entry, not marked as a retweet.
    let items = feed(mesh, &both).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0]["retweeted_by"].is_null(), "{items:?}");
    send(mesh, Method::DELETE, &path, &retweeter).await;
    await_feed_ids(mesh, &fan, &[], "the unretweet").await;
    assert_eq!(mesh.feed_ids(&both).await, vec![tweet]);
}

pub async fn a_deleted_account_leaves_no_trace_in_feeds(mesh: &TestMesh) {
    let (reader_id, reader) = mesh.user("reader").await;
    let (gone_id, gone) = mesh.user("gone").await;
    let (other_id, other) = mesh.user("other").await;
    mesh.follow(&reader, &gone_id).await;
    mesh.follow(&reader, &other_id).await;
    mesh.follow(&gone, &reader_id).await;
    let kept = mesh.tweet(&other, "stays").await;
    let theirs = mesh.tweet(&gone, "goes").await;
    // Their retweet of someone else's tweet goes too.
    send(
        mesh,
        Method::POST,
        &format!("/v1/tweets/{kept}/retweet"),
        &gone,
    )
    .await;
    await_feed_ids(
        mesh,
        &reader,
        &[theirs, kept.clone()],
        "before the deletion",
    )
    .await;
    let (status, _) = mesh.delete("/v1/users/me", Some(&gone)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_feed_ids(
        mesh,
        &reader,
        std::slice::from_ref(&kept),
        "after the deletion",
    )
    .await;
    eventually(
        "the follow counts to forget the account",
        CONVERGE,
        || async {
            let (_, me) = mesh.get("/v1/users/me", Some(&reader)).await;
            (me["followers_count"] == 0 && me["following_count"] == 1).then_some(())
        },
    )
    .await;
    let items = feed(mesh, &reader).await;
    assert!(items[0]["retweeted_by"].is_null(), "{items:?}");
}

/// The gateway remembers the users it shows beside tweets for a few seconds, and forgets one
/// whose profile it changes: the caller who changed it sees it on their next read.
pub async fn a_profile_change_shows_beside_tweets_at_once(mesh: &TestMesh) {
    let (_, author) = mesh.user("author").await;
    let posted = mesh.tweet(&author, "before the change").await;
    await_feed_ids(mesh, &author, std::slice::from_ref(&posted), "the post").await;
    let before = feed(mesh, &author).await;
    assert_ne!(before[0]["author"]["display_name"], "Renamed", "{before:?}");

    let (status, body) = mesh
        .patch(
            "/v1/users/me",
            Some(&author),
            json!({ "display_name": "Renamed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = feed(mesh, &author).await;
    assert_eq!(after[0]["author"]["display_name"], "Renamed", "{after:?}");
}

pub async fn feed_pages_never_overlap_or_skip_while_tweets_arrive(mesh: &TestMesh) {
    let (_, reader) = mesh.user("reader").await;
    let mut writers = Vec::new();
    for name in ["ann", "bob"] {
        let (id, token) = mesh.user(name).await;
        mesh.follow(&reader, &id).await;
        writers.push(token);
    }
    let mut posted = Vec::new();
    for n in 0..8 {
        posted.push(mesh.tweet(&writers[n % 2], &format!("tweet {n}")).await);
    }
    let newest_first: Vec<String> = posted.iter().rev().cloned().collect();
    await_feed_ids(mesh, &reader, &newest_first, "every tweet").await;
    let mut seen = Vec::new();
    let mut path = "/v1/feed?limit=3".to_owned();
    let mut arrived = Vec::new();
    loop {
        let (status, page) = mesh.get(&path, Some(&reader)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        arrived.push(mesh.tweet(&writers[0], "arrived while paging").await);
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/feed?limit=3&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first, "backwards: no overlap, no gap");
    // Polling forwards from the newest seen picks up exactly the arrivals, oldest first.
    eventually("the arrivals", CONVERGE, || async {
        let mut since = posted.last().unwrap().clone();
        let mut polled = Vec::new();
        loop {
            let (_, page) = mesh
                .get(&format!("/v1/feed?limit=2&since={since}"), Some(&reader))
                .await;
            let items = ids(&page);
            let Some(newest) = items.first().cloned() else {
                break;
            };
            polled.extend(items.into_iter().rev());
            since = newest;
        }
        (polled == arrived).then_some(())
    })
    .await;
}
