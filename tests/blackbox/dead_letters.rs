//! An operator's dead letters, end to end on the real binary: an event the feeds consumer gave
//! up on is listed and shown by `twtr events dead`, takes effect when re-driven, and re-driving
//! again changes nothing. The same on the in-process bus and on RabbitMQ.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use twtr_common::bus::{
    ConsumerSettings, EventBus, InProcessBus, QueueType, RabbitBus, RabbitConfig,
};
use twtr_proto::events::v1::UserUnfollowed;
use twtr_proto::events::v1::envelope::Payload;

use crate::binary::{Twtr, post, spawn_twtr_with, wait_ready};
use crate::support::{CONVERGE, eventually, ids, text};

/// The bus a run uses: the in-process one, or RabbitMQ with a prefix of the run's own.
enum Bus {
    InProcess,
    Rabbit { url: String, prefix: String },
}

impl Bus {
    fn env(&self) -> Vec<(&str, String)> {
        match self {
            Self::InProcess => Vec::new(),
            Self::Rabbit { url, prefix } => vec![
                ("TWTR_AMQP_URL", url.clone()),
                ("TWTR_AMQP_PREFIX", prefix.clone()),
                ("TWTR_AMQP_QUEUE_EXPIRY_SECS", "600".to_owned()),
            ],
        }
    }

    /// Opens the bus as the stopped mesh left it.
    async fn open(&self, data_dir: &Path) -> Arc<dyn EventBus> {
        match self {
            Self::InProcess => Arc::new(InProcessBus::open(&data_dir.join("bus.redb")).unwrap()),
            Self::Rabbit { url, prefix } => {
                let config = RabbitConfig {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    queue_type: QueueType::Quorum,
                    queue_expiry: Some(Duration::from_secs(600)),
                    connection_name: "twtr dead-letter test".into(),
                };
                let bus = RabbitBus::connect(config, CONVERGE).await;
                assert!(bus.readiness().is_ready(), "the test reaches the broker");
                Arc::new(bus)
            }
        }
    }
}

async fn spawn(data_dir: &Path, bus: &Bus) -> Twtr {
    let env = bus.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_twtr_with(data_dir, "info", &env).await
}

/// Runs `twtr events dead <args>` against the feeds service at `feeds`; its stdout.
async fn events_dead(feeds: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_twtr"))
        .args(["events", "dead"])
        .args(args)
        .args(["--queue", "feeds"])
        .env("TWTR_FEEDS_URL", feeds)
        .env("TWTR_LOG", "warn")
        .output()
        .await
        .expect("run twtr events dead");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "twtr events dead {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn feed(client: &reqwest::Client, http: &str, token: &str) -> Vec<String> {
    let response = client
        .get(format!("{http}/v1/feed"))
        .bearer_auth(token)
        .send()
        .await
        .expect("feed");
    assert_eq!(response.status(), StatusCode::OK);
    ids(&response.json::<Value>().await.expect("feed page"))
}

async fn dead_letters_are_listed_shown_and_redriven(bus: Bus) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let mesh = spawn(data_dir.path(), &bus).await;
    wait_ready(&client, &mesh.http).await;
    let http = mesh.http.clone();
    let mut users = Vec::new();
    for name in ["alice", "bob"] {
        let body = json!({ "username": name, "password": "password123" });
        let (status, user) = post(&client, format!("{http}/v1/users"), None, body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let (_, session) = post(&client, format!("{http}/v1/sessions"), None, body).await;
        users.push((text(&user["id"]), text(&session["token"])));
    }
    let [(alice, alice_token), (bob, bob_token)] = [users[0].clone(), users[1].clone()];
    let (status, _) = post(
        &client,
        format!("{http}/v1/users/{bob}/follow"),
        Some(&alice_token),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, tweet) = post(
        &client,
        format!("{http}/v1/tweets"),
        Some(&bob_token),
        json!({ "text": "before the dead letter" }),
    )
    .await;
    let tweet = text(&tweet["id"]);
    eventually("bob's tweet in alice's feed", CONVERGE, || async {
        (feed(&client, &http, &alice_token).await == [tweet.clone()]).then_some(())
    })
    .await;

    // With the mesh down, the feeds queue gets an unfollow of bob by alice that its consumer
    // gave up on, exactly as `consume` dead-letters one.
    let Twtr { mut child, .. } = mesh;
    child.start_kill().expect("kill");
    child.wait().await.expect("reap");
    let unfollow = twtr_common::events::envelope(
        9_000_000_001,
        alice.parse().unwrap(),
        Payload::UserUnfollowed(UserUnfollowed {
            follower_id: alice.parse().unwrap(),
            followee_id: bob.parse().unwrap(),
            version: 2,
        }),
    );
    {
        let opened = bus.open(data_dir.path()).await;
        let mut feeds = opened
            .subscribe(&twtr_feeds::queue(&ConsumerSettings::default()))
            .await
            .expect("subscribe to the feeds queue");
        twtr_common::bus::publish(opened.as_ref(), &unfollow)
            .await
            .expect("publish");
        let delivery = tokio::time::timeout(CONVERGE, feeds.next())
            .await
            .expect("the unfollow is delivered")
            .expect("delivery");
        assert_eq!(delivery.decode().unwrap().event_id, unfollow.event_id);
        delivery
            .dead_letter("the store refused it (test)")
            .await
            .expect("dead-letter");
    }

    let mesh = spawn(data_dir.path(), &bus).await;
    wait_ready(&client, &mesh.http).await;
    let http = mesh.http.clone();
    let listed = events_dead(&mesh.feeds, &["list"]).await;
    assert!(
        listed.contains("1 dead letter(s) in queue feeds"),
        "{listed}"
    );
    assert!(
        listed.contains("9000000001  followers.user_unfollowed  attempts=1")
            && listed.contains("reason: the store refused it (test)"),
        "{listed}"
    );
    let shown = events_dead(&mesh.feeds, &["show", "9000000001"]).await;
    assert!(
        shown.contains("UserUnfollowed") && shown.contains("version: 2"),
        "{shown}"
    );
    assert_eq!(
        feed(&client, &http, &alice_token).await,
        std::slice::from_ref(&tweet),
        "a dead letter takes no effect"
    );

    let redriven = events_dead(&mesh.feeds, &["redrive"]).await;
    assert!(redriven.contains("re-drove 1 dead letter(s)"), "{redriven}");
    eventually(
        "the re-driven unfollow empties alice's feed",
        CONVERGE,
        || async {
            feed(&client, &http, &alice_token)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let listed = events_dead(&mesh.feeds, &["list"]).await;
    assert!(
        listed.contains("0 dead letter(s) in queue feeds"),
        "{listed}"
    );
    let again = events_dead(&mesh.feeds, &["redrive"]).await;
    assert!(again.contains("re-drove 0 dead letter(s)"), "{again}");
}

#[tokio::test]
async fn on_the_in_process_bus() {
    dead_letters_are_listed_shown_and_redriven(Bus::InProcess).await;
}

#[tokio::test]
async fn on_rabbitmq() {
    let Some(url) = twtr_common::testing::amqp_url() else {
        return;
    };
    let prefix = twtr_common::bus::conformance::unique("twtr-dead");
    dead_letters_are_listed_shown_and_redriven(Bus::Rabbit { url, prefix }).await;
}
