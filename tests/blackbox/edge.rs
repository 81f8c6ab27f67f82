//! The gateway as a production edge: every limit answered in the one JSON error shape (413, 429
//! with `Retry-After`, 504, 503 under a flood), CORS, the services' ports closed to a caller
//! who fills in someone else's id, and pages of tweets hydrated in batches (one RPC per kind of
//! data, however many tweets a page holds).

use std::num::NonZeroU32;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use twtr_gateway::RateLimits;
use twtr_gateway::adaptive::ConcurrencyLimits;
use twtr_proto::feeds::v1::GetFeedRequest;
use twtr_proto::feeds::v1::feeds_service_client::FeedsServiceClient;
use twtr_proto::followers::v1::FollowRequest;
use twtr_proto::followers::v1::followers_service_client::FollowersServiceClient;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;
use twtr_proto::tweets::v1::{BatchGetTweetsRequest, CreateTweetRequest};
use twtr_proto::users::v1::users_service_client::UsersServiceClient;
use twtr_proto::users::v1::{CreateUserRequest, DeleteUserRequest, GetUserRequest};

use crate::processes::spawn_part;
use crate::support::{Api, CONVERGE, TestMesh, as_user, eventually, ids, sample, scrape, text};

/// A response's status, `Retry-After` (if any) and JSON body.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Option<u64>, Value) {
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn limits(per_ip: u32, per_caller: u32, auth_per_ip: u32) -> RateLimits {
    RateLimits {
        per_ip: NonZeroU32::new(per_ip),
        per_caller: NonZeroU32::new(per_caller),
        auth_per_ip: NonZeroU32::new(auth_per_ip),
    }
}

#[tokio::test]
async fn logins_and_sign_ups_over_their_limit_get_429_with_retry_after() {
    let mesh = TestMesh::start_configured(|c| c.edge.rates = limits(0, 0, 3)).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", mesh.http);
    let alice = json!({ "username": "alice", "password": "alice-password" });
    let (status, _, _) = send(http.post(url("/v1/users")).json(&alice)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = send(http.post(url("/v1/sessions")).json(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    let wrong = json!({ "username": "alice", "password": "a wrong guess" });
    let (status, _, _) = send(http.post(url("/v1/sessions")).json(&wrong)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The fourth login or sign-up from this address within the minute is refused.
    let (status, retry_after, body) = send(http.post(url("/v1/sessions")).json(&alice)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "rate_limited", "{body}");
    let retry_after = retry_after.expect("a 429 says when to retry");
    assert!(
        (1..=20).contains(&retry_after),
        "3 a minute: {retry_after}s"
    );
    let bob = json!({ "username": "bob", "password": "bob-password" });
    let (status, retry_after, body) = send(http.post(url("/v1/users")).json(&bob)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());
    // Refused means not written; and other routes are not held to that limit.
    let (status, _) = mesh.get("/v1/users/by-username/bob", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mesh.get("/v1/users/by-username/alice", None).await;
    assert_eq!(status, StatusCode::OK);
    mesh.stop().await;
}

#[tokio::test]
async fn each_caller_and_each_address_has_its_own_allowance() {
    let mesh = TestMesh::start_configured(|c| c.edge.rates = limits(0, 4, 0)).await;
    let (_, alice) = mesh.user("alice").await;
    let (_, bob) = mesh.user("bob").await;
    let http = reqwest::Client::new();
    let me = |token: &str| {
        http.get(format!("{}/v1/users/me", mesh.http))
            .bearer_auth(token)
    };
    for _ in 0..4 {
        assert_eq!(send(me(&alice)).await.0, StatusCode::OK);
    }
    let (status, retry_after, body) = send(me(&alice)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        retry_after.is_some_and(|s| (1..=15).contains(&s)),
        "{retry_after:?}"
    );
    // Bob, from the same address, is not held back by Alice's use; anonymous reads neither.
    assert_eq!(send(me(&bob)).await.0, StatusCode::OK);
    assert_eq!(mesh.get("/v1/timeline", None).await.0, StatusCode::OK);
    mesh.stop().await;

    let mesh = TestMesh::start_configured(|c| c.edge.rates = limits(3, 0, 0)).await;
    for _ in 0..3 {
        assert_eq!(mesh.get("/v1/timeline", None).await.0, StatusCode::OK);
    }
    let (status, retry_after, body) =
        send(reqwest::Client::new().get(format!("{}/v1/timeline", mesh.http))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());
    // Probes are never rate limited.
    assert_eq!(mesh.get("/healthz", None).await.0, StatusCode::OK);
    mesh.stop().await;
}

#[tokio::test]
async fn an_expired_deadline_is_a_504_and_the_service_drops_the_work() {
    // Signing up hashes a password (tens of milliseconds): it cannot finish within 1 ms.
    let mesh =
        TestMesh::start_configured(|c| c.edge.request_timeout = Duration::from_millis(1)).await;
    let (status, body) = mesh
        .post(
            "/v1/users",
            None,
            json!({ "username": "too_slow", "password": "hashing takes a while" }),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(code(&body), "deadline_exceeded", "{body}");

    // The users service stopped working on it: the sign-up was never stored, so the same
    // username is free for a caller with time to wait.
    let mut users = UsersServiceClient::connect(format!("http://{}", mesh.users))
        .await
        .unwrap();
    let mut request = tonic::Request::new(CreateUserRequest {
        username: "too_slow".into(),
        password: "hashing takes a while".into(),
        ..CreateUserRequest::default()
    });
    request.set_timeout(CONVERGE);
    let created = users.create_user(request).await;
    assert!(created.is_ok(), "the username was still free: {created:?}");
    mesh.stop().await;
}

/// Sends the head of `POST /v1/tweets` and half its body, and holds the rest: a slow client,
/// occupying one request slot until [`finish`] is called.
async fn hold_a_request(mesh: &TestMesh, token: &str) -> (TcpStream, &'static str) {
    let body = r#"{"text":"held in flight"}"#;
    let (head, tail) = body.split_at(10);
    let addr = mesh.http.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/tweets HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{head}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    (stream, tail)
}

/// Sends the rest of a held request's body and returns its response's status line.
async fn finish(mut stream: TcpStream, tail: &str) -> String {
    stream.write_all(tail.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the response");
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_flood_beyond_the_concurrency_limit_is_shed_with_503_at_once() {
    let mesh = TestMesh::start_configured(|c| {
        c.edge.concurrency = ConcurrencyLimits::fixed(1);
        c.edge.rates = RateLimits::OFF;
        // The held request must not run out of time while the test floods.
        c.edge.request_timeout = Duration::from_secs(60);
    })
    .await;
    let (me, token) = mesh.user("slow_client").await;
    let (held, tail) = hold_a_request(&mesh, &token).await;

    // While that request holds the one slot, every other API request is turned away.
    let http = reqwest::Client::new();
    let timeline = || http.get(format!("{}/v1/timeline", mesh.http));
    eventually("the held request to take the slot", CONVERGE, || async {
        (send(timeline()).await.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let flood: Vec<_> = (0..20).map(|_| tokio::spawn(send(timeline()))).collect();
    for shed in flood {
        let (status, retry_after, body) = shed.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(code(&body), "unavailable", "{body}");
        assert_eq!(retry_after, Some(1));
    }
    // Probes are not shed.
    assert_eq!(mesh.get("/healthz", None).await.0, StatusCode::OK);

    // The held request completes normally, and the slot is free again.
    assert_eq!(finish(held, tail).await, "HTTP/1.1 201 Created");
    eventually("the slot to be free", CONVERGE, || async {
        (send(timeline()).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let (_, page) = mesh.get(&format!("/v1/users/{me}/tweets"), None).await;
    assert_eq!(
        ids(&page).len(),
        1,
        "only the held tweet was posted: {page}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn the_body_limit_is_configurable_and_answered_with_413() {
    let mesh = TestMesh::start_configured(|c| c.edge.body_limit = 1024).await;
    let (me, token) = mesh.user("wordy").await;
    let body = json!({ "text": "x".repeat(2000) }).to_string();
    let (status, error) = mesh.post_raw("/v1/tweets", Some(&token), body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert_eq!(code(&error), "payload_too_large");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("1024"),
        "{error}"
    );
    let (_, page) = mesh.get(&format!("/v1/users/{me}/tweets"), None).await;
    assert!(ids(&page).is_empty(), "nothing was written: {page}");
    mesh.stop().await;
}

#[tokio::test]
async fn cors_answers_the_configured_origins_only() {
    let mesh =
        TestMesh::start_configured(|c| c.edge.cors_origins = vec!["https://app.example".into()])
            .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/v1/tweets", mesh.http))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
    };
    let allowed = preflight("https://app.example").send().await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    mesh.stop().await;

    // Without configured origins, no CORS headers at all.
    let mesh = TestMesh::start().await;
    let response = reqwest::Client::new()
        .get(format!("{}/v1/timeline", mesh.http))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_caller_inside_the_mesh_cannot_act_as_someone_else() {
    let mesh = TestMesh::start().await;
    let (alice_id, alice) = mesh.user("alice").await;
    let (bob_id, bob) = mesh.user("bob").await;
    let alice_n: u64 = alice_id.parse().unwrap();
    let bob_n: u64 = bob_id.parse().unwrap();
    let url = |addr: std::net::SocketAddr| format!("http://{addr}");
    let mut tweets = TweetsServiceClient::connect(url(mesh.tweets))
        .await
        .unwrap();
    let post = || CreateTweetRequest {
        author_id: alice_n,
        text: "am I alice?".into(),
        idempotency_key: String::new(),
        mentions: Vec::new(),
    };
    // A token signed by another key: a forgery.
    let (forger_key, _) = twtr_common::tokens::generate_key_pair().unwrap();
    let forged = twtr_common::tokens::TokenSigner::from_pem(&forger_key, CONVERGE)
        .unwrap()
        .issue(alice_n, 0)
        .unwrap()
        .token;

    let refusals = [
        (tonic::Request::new(post()), tonic::Code::Unauthenticated),
        (as_user(&bob, post()), tonic::Code::PermissionDenied),
        (as_user(&forged, post()), tonic::Code::Unauthenticated),
        (as_user("garbage", post()), tonic::Code::Unauthenticated),
    ];
    for (request, expected) in refusals {
        let refused = tweets.create_tweet(request).await.unwrap_err();
        assert_eq!(refused.code(), expected, "{refused:?}");
    }
    // Reading someone's likes along with tweets needs their token too; the tweets alone do not.
    let reads = |viewer_id| BatchGetTweetsRequest {
        tweet_ids: vec![1],
        viewer_id,
    };
    let refused = tweets
        .batch_get_tweets(as_user(&bob, reads(Some(alice_n))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = tweets
        .batch_get_tweets(reads(Some(alice_n)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(tweets.batch_get_tweets(reads(None)).await.is_ok());
    let mut followers = FollowersServiceClient::connect(url(mesh.followers))
        .await
        .unwrap();
    let follow = FollowRequest {
        follower_id: alice_n,
        followee_id: bob_n,
    };
    let refused = followers.follow(follow).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut feeds = FeedsServiceClient::connect(url(mesh.feeds)).await.unwrap();
    let read = GetFeedRequest {
        user_id: alice_n,
        ..GetFeedRequest::default()
    };
    let refused = feeds.get_feed(as_user(&bob, read)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let mut users = UsersServiceClient::connect(url(mesh.users)).await.unwrap();
    let delete = DeleteUserRequest { user_id: alice_n };
    let refused = users.delete_user(delete).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Nothing of that was done...
    let (status, _) = mesh.get(&format!("/v1/users/{alice_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "alice still exists");
    let (_, page) = mesh
        .get(&format!("/v1/users/{alice_id}/tweets"), None)
        .await;
    assert!(ids(&page).is_empty(), "{page}");
    let (_, alice_me) = mesh.get("/v1/users/me", Some(&alice)).await;
    assert_eq!(alice_me["following_count"], 0);
    // ...while Alice's own token acts as Alice, and reads need no token at all.
    let posted = tweets.create_tweet(as_user(&alice, post())).await;
    assert!(posted.is_ok(), "{posted:?}");
    let read = users.get_user(GetUserRequest { user_id: bob_n }).await;
    assert!(read.is_ok(), "{read:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_the_routes_and_the_docs_page_is_served_offline() {
    let mesh = TestMesh::start().await;
    let (status, document) = mesh.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{:?}", paths.keys());
    // Every documented operation is a route the gateway serves (not the "no such route" 404
    // nor a 405), and documents its errors in the one shape, the edge's included.
    let http = reqwest::Client::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "1")
            .replace("{username}", "nobody_here");
        for (method, operation) in item.as_object().unwrap() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http
                .request(method.clone(), format!("{}{concrete}", mesh.http))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key(status.as_str()),
                "{method} {path} answered an undocumented {status}"
            );
            for edge in ["429", "503", "504"] {
                let error = &responses[edge]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    error, "#/components/schemas/ErrorBody",
                    "{method} {path} {edge}"
                );
            }
        }
    }

    let page = http
        .get(format!("{}/docs", mesh.http))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("/openapi.json"));
    assert!(
        !page.contains("https://"),
        "no asset from elsewhere: {page}"
    );
    for (asset, kind) in [
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        assert!(page.contains(asset), "{asset} in the page");
        let response = http
            .get(format!("{}{asset}", mesh.http))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{asset}: {content_type}");
        assert!(response.bytes().await.unwrap().len() > 10_000, "{asset}");
    }
    mesh.stop().await;
}

/// The gRPC methods a page of tweets may call, as `/metrics` names them.
const PAGE_RPCS: [&str; 7] = [
    "/twtr.feeds.v1.FeedsService/GetFeed",
    "/twtr.tweets.v1.TweetsService/GetPublicTimeline",
    "/twtr.tweets.v1.TweetsService/ListUserTweets",
    "/twtr.tweets.v1.TweetsService/BatchGetTweets",
    "/twtr.tweets.v1.TweetsService/BatchGetViewerFlags",
    "/twtr.users.v1.UsersService/GetUser",
    "/twtr.users.v1.UsersService/BatchGetUsers",
];

/// How many calls of each of [`PAGE_RPCS`] the mesh's services have answered.
async fn page_rpcs(metrics_url: &str) -> [u64; 7] {
    let metrics = scrape(metrics_url).await;
    PAGE_RPCS.map(|method| {
        let series = format!(r#"twtr_grpc_server_requests_total{{method="{method}",code="Ok"}}"#);
        sample(&metrics, &series).unwrap_or(0.0) as u64
    })
}

#[tokio::test]
async fn a_page_of_tweets_costs_one_rpc_per_kind_of_data_however_many_it_holds() {
    // A mesh in a process of its own: the RPC counters are per process, and the other tests'
    // meshes run in this one.
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut env = vec![
        (
            "TWTR_DATA_DIR".to_owned(),
            data_dir.path().display().to_string(),
        ),
        ("TWTR_LOG_FORMAT".to_owned(), "json".to_owned()),
    ];
    for addr in ["HTTP", "USERS", "TWEETS", "FOLLOWERS", "FEEDS"] {
        env.push((format!("TWTR_{addr}_ADDR"), "127.0.0.1:0".to_owned()));
    }
    let mesh = spawn_part("mesh", "all", &env).await;
    let http = eventually("the gateway's address", CONVERGE, || async {
        let logs = mesh.logs.lock().unwrap();
        logs.iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| event["message"] == "http server listening")
            .map(|event| text(&event["addr"]))
    })
    .await;
    let api = Api::new(format!("http://{http}"));

    // The reader follows two of three authors, one of whom retweets the third: a feed of five
    // tweets by three authors, one a retweet, one liked by the reader.
    let (_, reader) = api.user("reader").await;
    let mut authors = Vec::new();
    for name in ["ann", "ben", "cal"] {
        let (id, token) = api.user(name).await;
        let first = api.tweet(&token, &format!("{name}'s first")).await;
        api.tweet(&token, &format!("{name}'s second")).await;
        authors.push((id, token, first));
    }
    let [(ann, _, anns), (ben, bens_token, _), (_, _, cals)] = &authors[..] else {
        unreachable!()
    };
    api.follow(&reader, ann).await;
    api.follow(&reader, ben).await;
    for (path, token) in [
        (format!("/v1/tweets/{cals}/retweet"), bens_token),
        (format!("/v1/tweets/{anns}/like"), &reader),
    ] {
        let (status, body) = api
            .call(reqwest::Method::POST, &path, Some(token), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
    }
    eventually("the reader's feed of five", CONVERGE, || async {
        (api.feed_ids(&reader).await.len() == 5).then_some(())
    })
    .await;

    // Per page: the list, then one tweets call (a feed's tweets with the reader's flags, or the
    // flags alone) and at most one users batch (the authors and retweeters the gateway has not
    // read in the last five seconds), whatever the page's size.
    let metrics = format!("http://{http}/metrics");
    let user_tweets = format!("/v1/users/{ann}/tweets");
    let cases: [(&str, Option<&str>, usize, [u64; 7]); 4] = [
        ("/v1/feed", Some(&reader), 5, [1, 0, 0, 1, 0, 0, 1]),
        ("/v1/timeline", Some(&reader), 6, [0, 1, 0, 0, 1, 0, 1]),
        ("/v1/timeline", None, 6, [0, 1, 0, 0, 0, 0, 1]),
        (&user_tweets, Some(&reader), 2, [0, 0, 1, 0, 1, 1, 1]),
    ];
    for (path, token, items, calls) in cases {
        let before = page_rpcs(&metrics).await;
        let (status, page) = api.get(path, token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(ids(&page).len(), items, "{path}: {page}");
        // Counted as each call ends: a moment's wait before calling a count short.
        let made = calls_made(&metrics, before, |made| {
            made[..6] == calls[..6] && made[6] <= calls[6]
        })
        .await;
        assert_eq!(
            made[..6],
            calls[..6],
            "{path}: the calls of each of {PAGE_RPCS:?}"
        );
        assert!(made[6] <= 1, "{path}: at most one users batch: {made:?}");
    }

    // The users read for one page are not read again for the next: after each author changes
    // their profile (which makes this gateway forget them), the first feed read asks for them
    // and the one right after does not.
    for (_, token, _) in &authors {
        let (status, body) = api
            .patch("/v1/users/me", Some(token), json!({ "bio": "changed" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (read, users_batches) in [("first", 1), ("second", 0)] {
        let before = page_rpcs(&metrics).await;
        let (status, page) = api.get("/v1/feed", Some(&reader)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let calls = [1, 0, 0, 1, 0, 0, users_batches];
        let made = calls_made(&metrics, before, |made| made == calls).await;
        assert_eq!(
            made, calls,
            "the {read} read: the calls of each of {PAGE_RPCS:?}"
        );
    }
}

/// The calls of each of [`PAGE_RPCS`] made since `before`, once `done` says they are all
/// there or after five seconds: each is counted as it ends.
async fn calls_made(metrics: &str, before: [u64; 7], done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let after = page_rpcs(metrics).await;
        let made: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        if done(&made) || tokio::time::Instant::now() > deadline {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
