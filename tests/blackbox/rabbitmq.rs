//! Events through a real RabbitMQ broker, with the parts as separate processes (and once as the
//! all-in-one mesh): the feed slice, a broker outage, a consumer killed mid-stream, a poison
//! message. Each test uses its own exchange and queues (a unique prefix), so they share a broker
//! without seeing each other's messages. Skipped when no broker answers, except in CI.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde_json::json;
use twtr_common::bus::EventBus as _;

use crate::processes::{Cluster, PrivateBroker};
use crate::support::{Api, CONVERGE, TestMesh, eventually, ids};

/// The shared broker the tests use, or `None` to skip (never in CI).
fn broker() -> Option<String> {
    twtr_common::testing::amqp_url()
}

/// Waits until `token`'s home feed holds exactly the tweets in `expected` (any order).
async fn await_feed_set(api: &Api, token: &str, expected: &HashSet<String>, what: &str) {
    eventually(what, CONVERGE, || async {
        let (status, page) = api.get("/v1/feed?limit=100", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = ids(&page);
        let unique: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "a feed never holds a tweet twice: {got:?}"
        );
        (unique == *expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_feed_slice_works_across_processes_through_rabbitmq() {
    let Some(amqp) = broker() else { return };
    let cluster = Cluster::start(&amqp, &[]).await;
    let api = &cluster.api;
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.follow(&alice, &bob_id).await;
    let tweet = api.tweet(&bob, "hello across processes").await;
    api.await_feed(&alice, &[&tweet], "bob's tweet in alice's feed")
        .await;
    // The event went through the broker: the feeds process logged handling it.
    eventually(
        "the feeds process's log of the fan-out",
        CONVERGE,
        || async { cluster.feeds.logged(&["tweet fanned out"]).then_some(()) },
    )
    .await;
    // Every part leased a different Snowflake worker number from the broker.
    let workers: Vec<String> = [&cluster.users, &cluster.tweets, &cluster.followers]
        .iter()
        .map(|part| {
            let logs = part.logs.lock().unwrap();
            logs.iter()
                .find(|l| l.contains("leased the ID worker number"))
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["worker"].to_string()
                })
                .unwrap_or_else(|| panic!("{} leased no worker number", part.name))
        })
        .collect();
    let distinct: HashSet<&String> = workers.iter().collect();
    assert_eq!(distinct.len(), workers.len(), "worker numbers {workers:?}");
}

#[tokio::test]
async fn the_all_in_one_mesh_uses_the_broker_when_configured() {
    let Some(amqp) = broker() else { return };
    let data_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = twtr::Config::embedded(data_dir.path());
    config.amqp = Some(twtr::Amqp {
        url: amqp,
        prefix: twtr_common::bus::conformance::unique("twtr-all"),
        queue_type: twtr_common::bus::QueueType::Quorum,
        queue_expiry: Some(Duration::from_secs(600)),
    });
    let mesh = TestMesh::start_with(config, data_dir).await;
    let (_, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    mesh.follow(&alice, &bob_id).await;
    let tweet = mesh.tweet(&bob, "through the broker").await;
    mesh.await_feed(&alice, &[&tweet], "the tweet in alice's feed")
        .await;
    assert!(
        !mesh.data_dir.path().join("bus.redb").exists(),
        "no in-process bus was opened"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn posts_during_a_broker_outage_are_delivered_after_it() {
    if broker().is_none() {
        return;
    }
    let rabbit = PrivateBroker::start().await;
    let cluster = Cluster::start(&rabbit.url(), &[]).await;
    let api = &cluster.api;
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.follow(&alice, &bob_id).await;
    let before = api.tweet(&bob, "before the outage").await;
    api.await_feed(&alice, &[&before], "the first tweet").await;

    rabbit.stop().await;
    eventually("the mesh to report the broker down", CONVERGE, || async {
        let (_, details) = api.get("/health/details", None).await;
        let down = ["users", "tweets", "followers", "feeds"]
            .iter()
            .all(|s| details["services"][s]["events"] == "NOT_SERVING");
        down.then_some(())
    })
    .await;
    // A broker outage delays events; it is not an outage: the gateway stays ready, every
    // service stays ready, reads go on...
    assert_eq!(api.get("/readyz", None).await.0, StatusCode::OK);
    let (_, details) = api.get("/health/details", None).await;
    for service in ["users", "tweets", "followers", "feeds"] {
        assert_eq!(
            details["services"][service]["ready"], "SERVING",
            "{details}"
        );
    }
    assert_eq!(api.get("/v1/timeline", None).await.0, StatusCode::OK);
    // ...and writes too: every post is acknowledged and waits in the tweets service's outbox.
    let mut expected: HashSet<String> = HashSet::from([before]);
    for n in 0..5 {
        expected.insert(api.tweet(&bob, &format!("during the outage {n}")).await);
    }
    rabbit.resume().await;
    cluster.await_ready().await;
    await_feed_set(api, &alice, &expected, "every tweet after the outage").await;
    // The outage was logged once by the tweets service, not once per retry.
    let outages = cluster
        .tweets
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            // The first line of an outage: a connection lost, or none to be had at start.
            l.contains("lost the connection to the event broker")
                || l.contains("event broker unreachable")
        })
        .count();
    assert_eq!(outages, 1, "one outage, one log line");
}

#[tokio::test]
async fn a_feeds_process_killed_mid_stream_loses_and_duplicates_nothing() {
    let Some(amqp) = broker() else { return };
    let mut cluster = Cluster::start(&amqp, &[]).await;
    let api = cluster.api.clone();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.follow(&alice, &bob_id).await;

    let posting = {
        let (api, bob) = (api.clone(), bob.clone());
        tokio::spawn(async move {
            let mut posted = HashSet::new();
            for n in 0..40 {
                posted.insert(api.tweet(&bob, &format!("stream {n}")).await);
            }
            posted
        })
    };
    // Once the feeds service is busy with the stream, kill it without warning.
    eventually("the stream to reach alice's feed", CONVERGE, || async {
        (api.feed_ids(&alice).await.len() >= 5).then_some(())
    })
    .await;
    cluster.feeds.kill().await;
    let posted = posting.await.expect("posting task");
    cluster.restart_feeds().await;
    cluster.await_ready().await;
    await_feed_set(&api, &alice, &posted, "all 40 tweets, once each").await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_queue_moves_on() {
    let Some(amqp) = broker() else { return };
    let cluster = Cluster::start(&amqp, &[]).await;
    let api = &cluster.api;
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.follow(&alice, &bob_id).await;

    // Something that is not an event, published where tweets go.
    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .expect("connect to the broker");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            format!("{}.events", cluster.prefix).as_str().into(),
            "tweets.tweet_created".into(),
            BasicPublishOptions::default(),
            b"\xff\xfe not protobuf",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let tweet = api.tweet(&bob, "behind the poison").await;
    api.await_feed(&alice, &[&tweet], "the tweet behind the poison")
        .await;
    let broker = cluster.broker().await;
    let dead = eventually("the poison in the dead-letter queue", CONVERGE, || async {
        let dead = broker.dead_letters("feeds", 10).await.expect("peek");
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, b"\xff\xfe not protobuf");
    assert!(
        dead[0].error.contains("undecodable"),
        "the reason travels with it: {}",
        dead[0].error
    );
    let (status, _) = api
        .post("/v1/tweets", Some(&bob), json!({ "text": "and after" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}
