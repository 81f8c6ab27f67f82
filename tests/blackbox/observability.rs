//! What operators watch: Prometheus metrics on every process after real traffic, and a trace
//! that crosses the gateway, a service and an event handler.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use twtr_proto::tweets::v1::GetTweetRequest;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;

use crate::processes::{spawn_part, test_keys};
use crate::support::{CONVERGE, TestMesh, eventually, sample, scrape, text};

#[tokio::test]
async fn metrics_cover_requests_rpcs_events_and_queues_after_traffic() {
    let mesh = TestMesh::start().await;
    let (author, token) = mesh.user("metered").await;
    let (_, follower) = mesh.user("watcher").await;
    mesh.follow(&follower, &author).await;
    let tweet = mesh.tweet(&token, "count me").await;
    mesh.await_feed(&follower, &[&tweet], "the tweet in the follower's feed")
        .await;
    let (status, _) = mesh.get("/v1/tweets/not-a-number", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let url = format!("{}/metrics", mesh.http);
    let metrics = eventually("every metric to show", CONVERGE, || async {
        let metrics = scrape(&url).await;
        let ready = [
            r#"twtr_http_requests_total{route="/v1/tweets",method="POST",status="201"}"#,
            r#"twtr_http_requests_total{route="/v1/tweets/{id}",method="GET",status="400"}"#,
            r#"twtr_http_request_duration_seconds_bucket{route="/v1/tweets",method="POST",le="0.5"}"#,
            r#"twtr_grpc_server_requests_total{method="/twtr.tweets.v1.TweetsService/CreateTweet",code="Ok"}"#,
            r#"twtr_grpc_server_duration_seconds_count{method="/twtr.users.v1.UsersService/CreateUser"}"#,
            r#"twtr_events_published_total{type="tweets.tweet_created"}"#,
            r#"twtr_events_consumed_total{queue="feeds",type="tweets.tweet_created",outcome="ok"}"#,
            r#"twtr_event_delivery_lag_seconds_count{queue="feeds"}"#,
            r#"twtr_outbox_depth{service="tweets"}"#,
            r#"twtr_queue_depth{queue="feeds"}"#,
            r#"twtr_dead_letter_depth{queue="feeds"}"#,
        ]
        .iter()
        .all(|series| sample(&metrics, series).is_some());
        ready.then_some(metrics)
    })
    .await;
    let posted = sample(
        &metrics,
        r#"twtr_http_requests_total{route="/v1/tweets",method="POST",status="201"}"#,
    );
    assert!(posted.is_some_and(|n| n >= 1.0), "{posted:?}");
    // Paths with ids are counted under their route, never one series per id.
    assert!(!metrics.contains(&format!("/v1/users/{author}/follow")));
    mesh.stop().await;
}

#[tokio::test]
async fn a_service_alone_serves_its_metrics_on_its_own_listener() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (_, public) = test_keys();
    let env: Vec<(String, String)> = [
        ("TWTR_DATA_DIR", data_dir.path().display().to_string()),
        ("TWTR_TOKEN_PUBLIC_KEYS", public),
        ("TWTR_TWEETS_ADDR", "127.0.0.1:0".into()),
        ("TWTR_METRICS_ADDR", "127.0.0.1:0".into()),
        ("TWTR_LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let tweets = spawn_part("tweets", "tweets", &env).await;
    let metrics_addr = eventually("the metrics listener", CONVERGE, || async {
        let logs = tweets.logs.lock().unwrap();
        logs.iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| event["message"] == "metrics server listening")
            .map(|event| text(&event["addr"]))
    })
    .await;

    let mut client = TweetsServiceClient::connect(format!("http://{}", tweets.addr))
        .await
        .unwrap();
    let missing = client
        .get_tweet(GetTweetRequest { tweet_id: 42 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let series = r#"twtr_grpc_server_requests_total{method="/twtr.tweets.v1.TweetsService/GetTweet",code="NotFound"}"#;
    let url = format!("http://{metrics_addr}/metrics");
    let counted = eventually(
        "the call in the metrics",
        Duration::from_secs(5),
        || async { sample(&scrape(&url).await, series) },
    )
    .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn with_a_metrics_listener_the_public_port_serves_no_metrics() {
    let mesh = TestMesh::start_configured(|config| {
        config.metrics_addr = Some("127.0.0.1:0".into());
    })
    .await;
    // (Without one, the first test here scrapes the gateway's port.)
    let (status, body) = mesh.get("/metrics", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    mesh.stop().await;
}
