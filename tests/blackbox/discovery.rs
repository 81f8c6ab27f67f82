//! Hashtags, search, trends and people search, end to end: posts are found under their tags and
//! words, leave when deleted or when their author's account goes, people by their usernames and
//! display names (best first, gone when renamed or deleted), and trends count each tweet once, also
//! when the broker delivers an event twice or late (the CQL mesh, through RabbitMQ; on the
//! embedded mesh the in-process bus is out of a test's reach, and the store conformance suite
//! and the service's unit tests hold redelivery and reordering).

use reqwest::StatusCode;
use serde_json::Value;
use twtr_common::IdGenerator;
use twtr_common::bus;
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{TweetCreated, TweetDeleted};

use crate::support::{CONVERGE, TestMesh, eventually, ids, on_both_backends, operator_bus, text};

on_both_backends! {
    tags_and_search => tags_and_search_find_posts_newest_first,
    deletions => deleted_tweets_and_accounts_leave_tags_search_and_trends,
    trends => trends_rank_tags_by_tweets_in_the_last_hour,
    people => people_are_found_by_username_and_display_name_best_first,
}

/// The ids of `path`'s first page, once it answers 200.
async fn listed(mesh: &TestMesh, path: &str) -> Vec<String> {
    let (status, page) = mesh.get(path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    ids(&page)
}

/// Waits until `path`'s first page holds exactly `expected`, newest first.
async fn await_listed(mesh: &TestMesh, path: &str, expected: &[&str]) {
    eventually(
        &format!("{path} to list {expected:?}"),
        CONVERGE,
        || async { (listed(mesh, path).await == expected).then_some(()) },
    )
    .await;
}

/// How many tweets used `tag` in the last hour, by `GET /v1/trends`.
async fn trend(mesh: &TestMesh, tag: &str) -> u64 {
    let (status, trends) = mesh.get("/v1/trends?limit=100", None).await;
    assert_eq!(status, StatusCode::OK, "{trends}");
    assert_eq!(trends["window_minutes"], 60);
    trends["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["tag"] == tag)
        .map_or(0, |item| item["tweet_count"].as_u64().expect("a count"))
}

async fn await_trend(mesh: &TestMesh, tag: &str, expected: u64) {
    eventually(&format!("#{tag} trending {expected}"), CONVERGE, || async {
        (trend(mesh, tag).await == expected).then_some(())
    })
    .await;
}

pub async fn tags_and_search_find_posts_newest_first(mesh: &TestMesh) {
    let (_, alice) = mesh.user("alice").await;
    let (_, bob) = mesh.user("bob").await;
    let a = mesh.tweet(&alice, "Learning #Rust with Tokio").await;
    let b = mesh.tweet(&bob, "tokio and #rust again, #async").await;
    let c = mesh.tweet(&alice, "rust without the tag").await;
    await_listed(mesh, "/v1/tags/rust/tweets", &[&b, &a]).await;
    // With its `#` (encoded), in capitals, fullwidth: the same tag.
    for path in [
        "/v1/tags/%23RUST/tweets",
        "/v1/tags/%EF%BD%92%EF%BD%95%EF%BD%93%EF%BD%94/tweets",
    ] {
        assert_eq!(listed(mesh, path).await, [b.clone(), a.clone()], "{path}");
    }
    await_listed(mesh, "/v1/search/tweets?q=rust", &[&c, &b, &a]).await;
    assert_eq!(
        listed(mesh, "/v1/search/tweets?q=tokio%20%23rust").await,
        [b.clone(), a.clone()]
    );
    assert_eq!(
        listed(mesh, "/v1/search/tweets?q=TOKIO+async+rust").await,
        [b.as_str()]
    );
    assert!(listed(mesh, "/v1/search/tweets?q=nothing").await.is_empty());

    // Hydrated like every page of tweets, and paged by cursor.
    let (_, page) = mesh.get("/v1/search/tweets?q=rust&limit=2", None).await;
    assert_eq!(ids(&page), [c.clone(), b.clone()]);
    assert_eq!(page["items"][1]["author"]["username"], "bob");
    let next = text(&page["next"]);
    let (_, rest) = mesh
        .get(
            &format!("/v1/search/tweets?q=rust&limit=2&before={next}"),
            None,
        )
        .await;
    assert_eq!(ids(&rest), [a.as_str()]);
    assert_eq!(rest["next"], Value::Null);
    let (_, polled) = mesh
        .get(&format!("/v1/tags/rust/tweets?since={a}"), None)
        .await;
    assert_eq!(ids(&polled), [b.as_str()]);

    for bad in [
        "/v1/search/tweets",
        "/v1/search/tweets?q=",
        "/v1/search/tweets?q=%21%21",
        "/v1/search/tweets?q=a+b+c+d",
        "/v1/tags/two%20words/tweets",
        "/v1/tags/rust/tweets?limit=0",
        "/v1/trends?limit=101",
    ] {
        let (status, body) = mesh.get(bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{bad}");
    }
}

pub async fn deleted_tweets_and_accounts_leave_tags_search_and_trends(mesh: &TestMesh) {
    let (_, alice) = mesh.user("alice").await;
    let (_, bob) = mesh.user("bob").await;
    let one = mesh.tweet(&alice, "#gone one").await;
    let two = mesh.tweet(&alice, "#gone two").await;
    let three = mesh.tweet(&bob, "#gone three").await;
    await_listed(mesh, "/v1/tags/gone/tweets", &[&three, &two, &one]).await;
    await_trend(mesh, "gone", 3).await;

    let (status, _) = mesh
        .delete(&format!("/v1/tweets/{one}"), Some(&alice))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_listed(mesh, "/v1/tags/gone/tweets", &[&three, &two]).await;
    await_trend(mesh, "gone", 2).await;

    let (status, _) = mesh.delete("/v1/users/me", Some(&alice)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_listed(mesh, "/v1/tags/gone/tweets", &[&three]).await;
    await_listed(mesh, "/v1/search/tweets?q=gone", &[&three]).await;
    await_trend(mesh, "gone", 1).await;
}

pub async fn trends_rank_tags_by_tweets_in_the_last_hour(mesh: &TestMesh) {
    let (_, alice) = mesh.user("alice").await;
    let (_, bob) = mesh.user("bob").await;
    for text in ["#hot #warm #cool", "#hot #hot #warm", "#HOT"] {
        mesh.tweet(&alice, text).await;
    }
    mesh.tweet(&bob, "not a tag: c#").await;
    eventually("the trends", CONVERGE, || async {
        let (status, trends) = mesh.get("/v1/trends", None).await;
        assert_eq!(status, StatusCode::OK, "{trends}");
        let items: Vec<(String, u64)> = trends["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| (text(&item["tag"]), item["tweet_count"].as_u64().unwrap()))
            .collect();
        let expected = [("hot", 3), ("warm", 2), ("cool", 1)]
            .map(|(tag, n)| (tag.to_owned(), n))
            .to_vec();
        (items == expected).then_some(())
    })
    .await;
    let (_, top) = mesh.get("/v1/trends?limit=1", None).await;
    assert_eq!(top["items"].as_array().map(Vec::len), Some(1));
    assert!(top["as_of"].as_str().is_some_and(|at| at.ends_with('Z')));
}

/// Events the broker delivers twice, or late (a tweet's `TweetCreated` after its
/// `TweetDeleted`), leave tags, search and trends as they were: published here, beside the
/// mesh's own, on the CQL mesh's RabbitMQ exchange.
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
    let one = mesh.tweet(&alice, "#echo one").await;
    let two = mesh.tweet(&alice, "#echo two").await;
    await_listed(&mesh, "/v1/tags/echo/tweets", &[&two, &one]).await;
    await_trend(&mesh, "echo", 2).await;
    let (status, _) = mesh
        .delete(&format!("/v1/tweets/{two}"), Some(&alice))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_listed(&mesh, "/v1/tags/echo/tweets", &[&one]).await;

    let broker = operator_bus(&url, &prefix).await;
    let ids = IdGenerator::new(1023).unwrap();
    let author_id: u64 = alice_id.parse().unwrap();
    let created = |id: &str, words: &str| {
        let tweet_id: u64 = id.parse().unwrap();
        let payload = Payload::TweetCreated(TweetCreated {
            tweet_id,
            author_id,
            text: words.to_owned(),
            created_at: None,
            mentioned_user_ids: Vec::new(),
        });
        twtr_common::events::envelope(ids.next_id(), tweet_id, payload)
    };
    let deleted = |id: &str| {
        let tweet_id: u64 = id.parse().unwrap();
        let payload = Payload::TweetDeleted(TweetDeleted {
            tweet_id,
            author_id,
            mentioned_user_ids: Vec::new(),
        });
        twtr_common::events::envelope(ids.next_id(), tweet_id, payload)
    };
    for event in [
        created(&one, "#echo one"),
        created(&one, "#echo one"),
        created(&two, "#echo two"), // after its deletion
        deleted(&two),
        created(&two, "#echo two"),
    ] {
        bus::publish(&broker, &event).await.expect("publish");
    }
    // A tweet posted after them, once listed, shows the queue got that far.
    let three = mesh.tweet(&alice, "#echo three").await;
    await_listed(&mesh, "/v1/tags/echo/tweets", &[&three, &one]).await;
    await_trend(&mesh, "echo", 2).await;
    assert_eq!(
        listed(&mesh, "/v1/search/tweets?q=echo").await,
        [three.clone(), one.clone()]
    );
    mesh.stop().await;
}

/// The usernames `GET /v1/users/search?<query>` answers, once it answers 200.
async fn people(mesh: &TestMesh, query: &str) -> Vec<String> {
    let (status, body) = mesh.get(&format!("/v1/users/search?{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|user| text(&user["username"]))
        .collect()
}

async fn await_people(mesh: &TestMesh, query: &str, expected: &[&str]) {
    eventually(
        &format!("{query} to find {expected:?}"),
        CONVERGE,
        || async { (people(mesh, query).await == expected).then_some(()) },
    )
    .await;
}

pub async fn people_are_found_by_username_and_display_name_best_first(mesh: &TestMesh) {
    mesh.user("ada").await;
    mesh.user("Ada_b").await;
    let (ada_c, ada_c_token) = mesh.user("ada_c").await;
    let (_, countess_token) = mesh.user("countess").await;
    let (_, fan_token) = mesh.user("fan").await;
    let (status, body) = mesh
        .patch(
            "/v1/users/me",
            Some(&countess_token),
            serde_json::json!({ "display_name": "Ada, Countess of Lovelace" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    mesh.follow(&fan_token, &ada_c).await;

    // The exact name, then the names it starts, most followed first, then display names.
    await_people(mesh, "q=ADA", &["ada", "ada_c", "Ada_b", "countess"]).await;
    let (_, body) = mesh.get("/v1/users/search?q=ada", None).await;
    assert_eq!(body["items"][1]["followers_count"], 1, "hydrated: {body}");
    assert_eq!(people(mesh, "q=ada&limit=2").await, ["ada", "ada_c"]);
    assert_eq!(people(mesh, "q=%40ada_").await, ["ada_c", "Ada_b"]);
    assert_eq!(people(mesh, "q=lovelace").await, ["countess"]);
    assert_eq!(people(mesh, "q=LOVELACE%20ada").await, ["countess"]);
    assert!(people(mesh, "q=lovelace%20babbage").await.is_empty());
    assert!(people(mesh, "q=zz").await.is_empty());

    // A new display name leaves the old words; a deleted account is found no more.
    let (status, body) = mesh
        .patch(
            "/v1/users/me",
            Some(&countess_token),
            serde_json::json!({ "display_name": "The Enchantress of Numbers" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(people(mesh, "q=lovelace").await.is_empty());
    assert_eq!(people(mesh, "q=enchantress").await, ["countess"]);
    let (status, body) = mesh.delete("/v1/users/me", Some(&ada_c_token)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(people(mesh, "q=ada").await, ["ada", "Ada_b"]);

    for bad in [
        "",
        "q=",
        "q=%21%21",
        "q=one%20two%20three%20four",
        "q=ada&limit=0",
        "q=ada&limit=51",
        "q=ada&q=bob",
    ] {
        let (status, body) = mesh.get(&format!("/v1/users/search?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{bad}: {body}");
    }
}
