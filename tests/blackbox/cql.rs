//! The distributed deployment for real: every part its own process, rows in Cassandra (the CQL
//! backend, as on ScyllaDB), events through RabbitMQ. Each test has keyspaces and queues of its
//! own (unique prefixes). Skipped when either server is missing, except in CI.

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::json;

use twtr_common::cql::testing::KeyspaceSet;

use crate::processes::{Cluster, cql_env, fresh_keyspaces, run_migrate};
use crate::support::{Api, CONVERGE, eventually, ids};

/// The broker and the CQL nodes, or `None` to skip (never in CI).
fn servers() -> Option<(String, Vec<String>)> {
    Some((
        twtr_common::testing::amqp_url()?,
        twtr_common::testing::cql_nodes()?,
    ))
}

/// A cluster on freshly migrated keyspaces of its own (dropped with the returned guard).
async fn cql_cluster(
    amqp: &str,
    nodes: &[String],
    more_env: &[(&str, &str)],
) -> (Cluster, KeyspaceSet) {
    let keyspaces = fresh_keyspaces(nodes).await;
    let env = cql_env(nodes, &keyspaces.prefix);
    let (migrated, log) = run_migrate(&env).await;
    assert!(migrated, "twtr migrate failed:\n{log}");
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    extra.extend_from_slice(more_env);
    (Cluster::start(amqp, &extra).await, keyspaces)
}

async fn profile(api: &Api, user_id: &str) -> serde_json::Value {
    let (status, user) = api.get(&format!("/v1/users/{user_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    user
}

#[tokio::test]
async fn the_mesh_on_cassandra_and_rabbitmq_keeps_everything_across_a_restart() {
    let Some((amqp, nodes)) = servers() else {
        return;
    };
    let (cluster, _keyspaces) = cql_cluster(&amqp, &nodes, &[]).await;
    let api = cluster.api.clone();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    // Usernames are unique ignoring case on CQL too.
    let (status, body) = api
        .post(
            "/v1/users",
            None,
            json!({ "username": "ALICE", "password": "another-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    api.follow(&alice, &bob_id).await;
    let first = api.tweet(&bob, "stored in cassandra").await;
    let second = api.tweet(&bob, "and relayed by the cql outbox").await;
    api.await_feed(&alice, &[&second, &first], "bob's tweets in alice's feed")
        .await;
    let (status, page) = api.get(&format!("/v1/users/{bob_id}/tweets"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), [second.clone(), first.clone()]);

    // Every part stops gracefully, then the whole mesh comes back on the same keyspaces.
    let (root, prefix, extra_env) = cluster.stop().await;
    let cluster = Cluster::start_in(&amqp, root, prefix, extra_env).await;
    let api = &cluster.api;
    assert_eq!(
        api.feed_ids(&alice).await,
        [second.clone(), first.clone()],
        "the feed survived, and the old token still works"
    );
    let (status, tweet) = api.get(&format!("/v1/tweets/{first}"), None).await;
    assert_eq!(status, StatusCode::OK, "{tweet}");
    assert_eq!(tweet["text"], "stored in cassandra");
    let bob_profile = profile(api, &bob_id).await;
    assert_eq!(bob_profile["followers_count"], 1);
    assert_eq!(bob_profile["tweets_count"], 2);
    assert_eq!(profile(api, &alice_id).await["following_count"], 1);
    // Logging in again works against the stored password hash.
    let (status, _) = api
        .post(
            "/v1/sessions",
            None,
            json!({ "username": "bob", "password": "bob-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let third = api.tweet(&bob, "after the restart").await;
    api.await_feed(&alice, &[&third, &second, &first], "the new tweet")
        .await;
}

#[tokio::test]
async fn two_feeds_replicas_share_the_queue_and_build_the_same_feeds() {
    let Some((amqp, nodes)) = servers() else {
        return;
    };
    // Prefetch 1: the broker hands each replica one event at a time, round robin.
    let (mut cluster, _keyspaces) =
        cql_cluster(&amqp, &nodes, &[("TWTR_EVENT_PREFETCH", "1")]).await;
    cluster.add_feeds_replica().await;
    let api = cluster.api.clone();

    let mut users = HashMap::new();
    for name in ["ann", "ben", "cat", "dan"] {
        users.insert(name, api.user(name).await);
    }
    // ann follows ben and cat; dan follows cat.
    let follows = [("ann", "ben"), ("ann", "cat"), ("dan", "cat")];
    for (follower, followee) in follows {
        api.follow(&users[follower].1, &users[followee].0).await;
    }
    let mut by_author: HashMap<&str, Vec<String>> = HashMap::new();
    for n in 0..12 {
        for author in ["ben", "cat"] {
            let id = api.tweet(&users[author].1, &format!("{author} {n}")).await;
            by_author.entry(author).or_default().push(id);
        }
    }
    let expected = |reader: &str| -> HashSet<String> {
        let mut feed: HashSet<String> = by_author
            .get(reader)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (follower, followee) in follows {
            if follower == reader {
                feed.extend(by_author[followee].iter().cloned());
            }
        }
        feed
    };
    for reader in ["ann", "dan", "ben", "cat"] {
        let want = expected(reader);
        let token = users[reader].1.clone();
        eventually(&format!("{reader}'s feed"), CONVERGE, || async {
            let (status, page) = api.get("/v1/feed?limit=100", Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let got = ids(&page);
            let set: HashSet<String> = got.iter().cloned().collect();
            assert_eq!(set.len(), got.len(), "no duplicates in {reader}'s feed");
            (set == want).then_some(())
        })
        .await;
    }
    // Both replicas did part of the work.
    for part in std::iter::once(&cluster.feeds).chain(&cluster.feeds_replicas) {
        assert!(
            part.logged(&["tweet fanned out"]),
            "the {} handled no tweet",
            part.name
        );
    }
}

#[tokio::test]
async fn a_service_refuses_a_keyspace_that_is_behind_and_says_what_to_run() {
    let Some((_, nodes)) = servers() else { return };
    let keyspaces = fresh_keyspaces(&nodes).await;
    let env = cql_env(&nodes, &keyspaces.prefix);
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = tokio::time::timeout(
        CONVERGE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_twtr"))
            .arg("users")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TWTR_USERS_ADDR", "127.0.0.1:0")
            .env("TWTR_DATA_DIR", data_dir.path())
            .env("TWTR_TOKEN_PRIVATE_KEY", crate::processes::test_keys().0)
            .output(),
    )
    .await
    .expect("twtr users gave up instead of waiting")
    .expect("run twtr users");
    assert!(!output.status.success(), "it refused to serve");
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("twtr migrate"),
        "the error names the fix: {said}"
    );
}

#[tokio::test]
async fn migrate_is_idempotent_and_two_runs_at_once_both_succeed() {
    let Some((_, nodes)) = servers() else { return };
    let keyspaces = fresh_keyspaces(&nodes).await;
    let mut env = cql_env(&nodes, &keyspaces.prefix);
    env.push(("TWTR_LOG_FORMAT".into(), "json".into()));
    let (a, b) = tokio::join!(run_migrate(&env), run_migrate(&env));
    assert!(a.0, "first concurrent migrate failed:\n{}", a.1);
    assert!(b.0, "second concurrent migrate failed:\n{}", b.1);
    let (again, log) = run_migrate(&env).await;
    assert!(again, "{log}");
    let migrated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keyspace migrated"))
        .collect();
    assert_eq!(migrated.len(), 4, "every keyspace reported: {log}");
    assert!(
        migrated.iter().all(|l| l.contains(r#""applied":"[]""#)),
        "a second run applies nothing: {migrated:?}"
    );
}
