//! The real `twtr` binary as a child process: crash safety under `kill -9`, the request id and
//! the trace id in its logs, and its traces exported over OTLP.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::{CONVERGE, eventually, text};

/// `twtr all` as a child process on random ports.
pub(crate) struct Twtr {
    /// Kept so the process dies with the test (`kill_on_drop`).
    pub(crate) child: Child,
    /// The gateway URL it logged at startup.
    pub(crate) http: String,
    /// The feeds service's URL it logged at startup.
    pub(crate) feeds: String,
    /// Every log line it has written so far (JSON, one event per line).
    logs: Arc<Mutex<Vec<String>>>,
}

async fn spawn_twtr(data_dir: &std::path::Path, log_filter: &str) -> Twtr {
    spawn_twtr_with(data_dir, log_filter, &[]).await
}

pub(crate) async fn spawn_twtr_with(
    data_dir: &std::path::Path,
    log_filter: &str,
    env: &[(&str, &str)],
) -> Twtr {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .envs(env.iter().copied())
        .env("TWTR_DATA_DIR", data_dir)
        .env("TWTR_LOG_FORMAT", "json")
        .env("TWTR_LOG", log_filter)
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
    let (http, feeds) = loop {
        let line = lines
            .next_line()
            .await
            .expect("read log")
            .expect("twtr exited before starting");
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["message"] == "twtr mesh starting" {
            break (text(&event["http"]), text(&event["feeds"]));
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    Twtr {
        child,
        http,
        feeds,
        logs,
    }
}

/// Waits until the gateway reports every service healthy.
pub(crate) async fn wait_ready(client: &reqwest::Client, http: &str) {
    eventually("twtr to be ready", CONVERGE, || async {
        let response = client
            .get(format!("{http}/health/details"))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

pub(crate) async fn post(
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
    let Twtr {
        mut child, http, ..
    } = spawn_twtr(data_dir.path(), "info").await;
    wait_ready(&client, &http).await;

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

    let Twtr {
        child: _child,
        http,
        ..
    } = spawn_twtr(data_dir.path(), "info").await;
    wait_ready(&client, &http).await;
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

#[tokio::test]
async fn a_request_id_follows_a_tweet_through_grpc_and_its_event() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let twtr = spawn_twtr(data_dir.path(), "info,twtr_feeds=debug").await;
    let (client, http) = (reqwest::Client::new(), &twtr.http);
    let body = serde_json::json!({ "username": "tracer", "password": "password123" });
    let (status, _) = post(&client, format!("{http}/v1/users"), None, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, session) = post(&client, format!("{http}/v1/sessions"), None, body).await;

    let response = client
        .post(format!("{http}/v1/tweets"))
        .bearer_auth(text(&session["token"]))
        .header("x-request-id", "trace-me-42")
        .json(&serde_json::json!({ "text": "follow my request id" }))
        .send()
        .await
        .expect("post tweet");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["x-request-id"],
        "trace-me-42",
        "the id is echoed"
    );

    // The tweets service logged the write under the id it got in gRPC metadata, and the feeds
    // service logged the fan-out under the id it got in the event's headers.
    let logged = |message: &'static str| {
        let logs = Arc::clone(&twtr.logs);
        move || {
            let logs = Arc::clone(&logs);
            async move {
                let logs = logs.lock().unwrap();
                logs.iter()
                    .any(|line| {
                        line.contains(message) && line.contains("\"request_id\":\"trace-me-42\"")
                    })
                    .then_some(())
            }
        }
    };
    eventually(
        "the tweets service's log line",
        CONVERGE,
        logged("tweet created"),
    )
    .await;
    eventually(
        "the feeds consumer's log line",
        CONVERGE,
        logged("tweet fanned out"),
    )
    .await;
}

#[tokio::test]
async fn passwords_and_their_hashes_never_reach_the_logs() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    // Everything twtr itself logs, at the most detailed level.
    let mut twtr = spawn_twtr(data_dir.path(), "debug").await;
    let (client, http) = (reqwest::Client::new(), twtr.http.clone());
    wait_ready(&client, &http).await;
    let password = "correct-horse-battery-7731";
    let changed = "staple-horse-battery-9917";
    let body = serde_json::json!({ "username": "secretive", "password": password });
    let (status, user) = post(&client, format!("{http}/v1/users"), None, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (_, session) = post(&client, format!("{http}/v1/sessions"), None, body).await;
    let token = text(&session["token"]);
    let wrong = serde_json::json!({ "username": "secretive", "password": "wrong-guess-for-logs" });
    let (status, _) = post(&client, format!("{http}/v1/sessions"), None, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = client
        .patch(format!("{http}/v1/users/me"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "password": changed, "current_password": password }))
        .send()
        .await
        .expect("change password");
    assert_eq!(response.status(), StatusCode::OK);

    twtr.child.start_kill().expect("kill");
    twtr.child.wait().await.expect("reap");
    let store = twtr_users::EmbeddedUserStore::open(&data_dir.path().join("users.redb"))
        .expect("open the users store");
    let stored = twtr_users::UserStore::get_by_username(&store, "secretive")
        .await
        .expect("read")
        .expect("the user");
    let logs = twtr.logs.lock().unwrap().join("\n");
    assert!(logs.contains("user updated"), "the run was logged at all");
    for secret in [
        password,
        changed,
        "wrong-guess-for-logs",
        stored.password_hash.as_str(),
        token.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
}

/// A W3C trace context, as a caller (or a load balancer) sends it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Signs up, logs in and posts with `traceparent` carrying [`TRACE_ID`]; returns the response's
/// status.
async fn post_traced(http: &str, username: &str) -> StatusCode {
    let client = reqwest::Client::new();
    let body = serde_json::json!({ "username": username, "password": "password123" });
    let (status, _) = post(&client, format!("{http}/v1/users"), None, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, session) = post(&client, format!("{http}/v1/sessions"), None, body).await;
    let response = client
        .post(format!("{http}/v1/tweets"))
        .bearer_auth(text(&session["token"]))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "text": "follow my trace" }))
        .send()
        .await
        .expect("post tweet");
    response.status()
}

#[tokio::test]
async fn a_trace_id_crosses_the_gateway_a_service_and_an_event_handler() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let twtr = spawn_twtr(data_dir.path(), "info,twtr_feeds=debug").await;
    assert_eq!(post_traced(&twtr.http, "tracer").await, StatusCode::CREATED);

    // The gateway logged the request, the tweets service the write (it got the context in gRPC
    // metadata) and the feeds consumer the fan-out (from the event's headers), all under the
    // caller's trace id.
    let logged = |message: &'static str| {
        let logs = Arc::clone(&twtr.logs);
        move || {
            let logs = Arc::clone(&logs);
            async move {
                let needle = format!("\"trace_id\":\"{TRACE_ID}\"");
                let logs = logs.lock().unwrap();
                logs.iter()
                    .any(|line| line.contains(message) && line.contains(&needle))
                    .then_some(())
            }
        }
    };
    for (what, message) in [
        ("the gateway's log line", "request served"),
        ("the tweets service's log line", "tweet created"),
        ("the feeds consumer's log line", "tweet fanned out"),
    ] {
        eventually(what, CONVERGE, logged(message)).await;
    }
}

mod collector {
    //! A stand-in OpenTelemetry collector: the real OTLP/gRPC trace service, keeping what it is
    //! sent.
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    /// (service name, span name, trace id in hex) of every span received.
    pub type Received = Arc<Mutex<Vec<(String, String, String)>>>;

    #[derive(Default)]
    pub struct Collector(pub Received);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut received = self.0.lock().unwrap();
            for resource_spans in request.into_inner().resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        let trace_id: String =
                            span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                        received.push((service.clone(), span.name, trace_id));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serves the collector on a loopback port; returns its endpoint and what it receives.
    pub async fn start() -> (String, Received) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let received = Arc::clone(&collector.0);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (endpoint, received)
    }
}

#[tokio::test]
async fn traces_are_exported_over_otlp_when_an_endpoint_is_set() {
    let (endpoint, received) = collector::start().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let twtr = spawn_twtr_with(
        data_dir.path(),
        // Only the binary's own start-up lines: the services' spans are below the log level.
        "warn,twtr=info",
        &[
            ("TWTR_OTLP_ENDPOINT", endpoint.as_str()),
            // Export batches often, so the test does not wait for the default five seconds.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    assert_eq!(
        post_traced(&twtr.http, "exported").await,
        StatusCode::CREATED
    );

    // One trace: the gateway's request, the tweets service's call and the feeds consumer's
    // event, each a span of the caller's trace (even with logs filtered down to warnings).
    let spans = eventually("the spans at the collector", CONVERGE, || async {
        let received = received.lock().unwrap();
        let ours: Vec<String> = received
            .iter()
            .filter(|(_, _, trace)| trace == TRACE_ID)
            .map(|(_, name, _)| name.clone())
            .collect();
        let complete = ["http", "rpc", "event"]
            .iter()
            .all(|name| ours.iter().any(|n| n == name));
        complete.then_some(received.clone())
    })
    .await;
    assert!(
        spans.iter().all(|(service, _, _)| service.contains("twtr")),
        "{spans:?}"
    );
}
