//! The gateway with its services down: it stays alive and ready (it can route), says what is
//! down in its health details, and answers a retryable 503 in the usual error shape rather than
//! a 500; with a service name that resolves to nothing, it is not ready.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use twtr_common::tokens::{TokenSigner, TokenVerifier, generate_key_pair};
use twtr_gateway::{GatewayDeps, UpstreamUrls};

/// A loopback URL where connections are refused: the port is bound (so no other test can take
/// it) but never listened on. Keep the socket alive while the URL is in use.
fn dead_url() -> (String, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (format!("http://{}", socket.local_addr().unwrap()), socket)
}

#[tokio::test]
async fn with_its_services_down_the_gateway_answers_503_not_500() {
    let (users, _users) = dead_url();
    let (tweets, _tweets) = dead_url();
    let (followers, _followers) = dead_url();
    let (feeds, _feeds) = dead_url();
    let upstreams = UpstreamUrls {
        users,
        tweets,
        followers,
        feeds,
    };
    let (private, public) = generate_key_pair().unwrap();
    let signer = TokenSigner::from_pem(&private, Duration::from_secs(60)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(twtr_gateway::serve(
        GatewayDeps {
            upstreams,
            grpc_tls: None,
            tokens: TokenVerifier::from_pems(&[public]).unwrap(),
            limits: twtr_gateway::EdgeLimits::default(),
            metrics_on_http_port: true,
        },
        listener,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();

    let live = client.get(format!("{http}/healthz")).send().await.unwrap();
    assert_eq!(
        live.status(),
        StatusCode::OK,
        "liveness does not depend on the services"
    );

    let ready = client.get(format!("{http}/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "it can route: services that do not answer are not the gateway's readiness"
    );
    let details = client
        .get(format!("{http}/health/details"))
        .send()
        .await
        .unwrap();
    assert_eq!(details.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = details.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    for service in ["users", "tweets", "followers", "feeds"] {
        assert_eq!(body["services"][service]["routable"], true, "{body}");
        assert_eq!(body["services"][service]["ready"], "UNREACHABLE", "{body}");
    }

    let sign_up = client
        .post(format!("{http}/v1/users"))
        .json(&json!({ "username": "someone", "password": "password123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_up.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sign_up.headers()["retry-after"],
        "1",
        "a 503 says when to try again"
    );
    let body: Value = sign_up.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");

    // Authentication needs no service: a valid token still gets past it.
    let token = signer.issue(42, 0).unwrap().token;
    let feed = client
        .get(format!("{http}/v1/feed"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::SERVICE_UNAVAILABLE);

    shutdown.cancel();
    gateway.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_service_name_without_addresses_makes_the_gateway_unready() {
    let (live, _socket) = dead_url();
    // `.invalid` never resolves (RFC 2606): like a headless Service with no ready pod.
    let upstreams = UpstreamUrls {
        users: live.clone(),
        tweets: "http://tweets.twtr-test.invalid:50052".to_owned(),
        followers: live.clone(),
        feeds: live,
    };
    let (_, public) = generate_key_pair().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(twtr_gateway::serve(
        GatewayDeps {
            upstreams,
            grpc_tls: None,
            tokens: TokenVerifier::from_pems(&[public]).unwrap(),
            limits: twtr_gateway::EdgeLimits::default(),
            metrics_on_http_port: true,
        },
        listener,
        shutdown.clone(),
    ));
    let ready = reqwest::get(format!("{http}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tweets") && !message.contains("users"),
        "{body}"
    );
    shutdown.cancel();
    gateway.await.unwrap().unwrap();
}
