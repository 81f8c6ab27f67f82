//! Crash safety of the real binary: an acknowledged write survives `kill -9`, and so does the
//! event it produced (transactional outbox + durable bus), so the feed still converges.

use std::process::Stdio;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::{CONVERGE, eventually, text};

/// `twtr all` as a child process on random ports; returns it and the gateway URL it logged.
async fn spawn_twtr(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .env("TWTR_DATA_DIR", data_dir)
        .env("TWTR_LOG_FORMAT", "json")
        .env("TWTR_LOG", "info")
        .env("TWTR_HTTP_ADDR", "127.0.0.1:0")
        .env("TWTR_USERS_ADDR", "127.0.0.1:0")
        .env("TWTR_TWEETS_ADDR", "127.0.0.1:0")
        .env("TWTR_FOLLOWERS_ADDR", "127.0.0.1:0")
        .env("TWTR_FEEDS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn twtr");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let http = loop {
        let line = lines
            .next_line()
            .await
            .expect("read log")
            .expect("twtr exited before starting");
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["message"] == "twtr mesh starting" {
            break text(&event["http"]);
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http)
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn acknowledged_writes_and_their_events_survive_kill_9() {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let client = reqwest::Client::new();
    let (mut child, http) = spawn_twtr(data_dir.path()).await;
    let ready = || async {
        let ok = client
            .get(format!("{http}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success());
        matches!(ok, Ok(true)).then_some(())
    };
    eventually("twtr to be ready", CONVERGE, ready).await;

    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let body = serde_json::json!({ "username": name, "password": "password123" });
        let (status, user) = post(&client, format!("{http}/v1/users"), None, body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let (status, session) = post(&client, format!("{http}/v1/sessions"), None, body).await;
        assert_eq!(status, StatusCode::OK, "{session}");
        ids.push(text(&user["id"]));
        tokens.push(text(&session["token"]));
    }
    let follow = client
        .post(format!("{http}/v1/users/{}/follow", ids[1]))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .expect("follow");
    assert_eq!(follow.status(), StatusCode::NO_CONTENT);
    let body = serde_json::json!({ "text": "written just before the crash" });
    let (status, tweet) = post(&client, format!("{http}/v1/tweets"), Some(&tokens[1]), body).await;
    assert_eq!(status, StatusCode::CREATED, "{tweet}");
    let tweet_id = text(&tweet["id"]);

    // No graceful anything: the process dies the moment the write is acknowledged.
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reap");

    let (_child, http) = spawn_twtr(data_dir.path()).await;
    eventually("twtr to be ready again", CONVERGE, || async {
        let ok = client
            .get(format!("{http}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success());
        matches!(ok, Ok(true)).then_some(())
    })
    .await;
    let tweet = client
        .get(format!("{http}/v1/tweets/{tweet_id}"))
        .send()
        .await
        .expect("get tweet");
    assert_eq!(
        tweet.status(),
        StatusCode::OK,
        "the acknowledged tweet survived"
    );
    eventually(
        "the tweet in alice's feed after the crash",
        CONVERGE,
        || async {
            let response = client
                .get(format!("{http}/v1/feed"))
                .bearer_auth(&tokens[0])
                .send()
                .await
                .ok()?;
            let page: Value = response.json().await.ok()?;
            (crate::support::ids(&page) == [tweet_id.clone()]).then_some(())
        },
    )
    .await;
}
