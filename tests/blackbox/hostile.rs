//! Hostile clients (issue 20): text that would lie when shown (terminal escapes, NULs,
//! bidirectional overrides, zero-width characters) is refused with a 400 naming the rule and
//! writes nothing, through the gateway and over gRPC alike; the data directory and the files
//! holding secrets are private to the owner, even when an older version left them open; made-up
//! paths and methods add no metric series; a revoked token stays revoked over gRPC.

use reqwest::StatusCode;
use serde_json::{Value, json};
use twtr_proto::tweets::v1::CreateTweetRequest;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;
use twtr_proto::users::v1::{DeleteUserRequest, UpdateUserRequest};

use crate::support::{TestMesh, as_user, on_both_backends};

on_both_backends! {
    text_policy => text_that_lies_when_shown_is_refused_and_writes_nothing,
    revoked_over_grpc => a_revoked_token_cannot_change_or_delete_the_account_over_grpc,
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

pub async fn text_that_lies_when_shown_is_refused_and_writes_nothing(mesh: &TestMesh) {
    let (me, token) = mesh.user("mallory").await;

    // The security pass's tweet: it used to be stored (201).
    let tweets = [
        ("hi\u{0}there\u{1b}[31mRED\u{202e}", "control characters"),
        ("innocent\u{202e}txt.exe", "bidirectional"),
        ("isolated \u{2067}text\u{2069}", "bidirectional"),
        ("carriage\rreturn", "control characters"),
        ("trailing C1\u{85}", "control characters"),
    ];
    for (text, rule) in tweets {
        let (status, body) = mesh
            .post("/v1/tweets", Some(&token), json!({ "text": text }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
        assert!(message(&body).contains(rule), "{text:?}: {body}");
    }
    // Newlines, tabs and emoji sequences are ordinary text.
    let (status, body) = mesh
        .post(
            "/v1/tweets",
            Some(&token),
            json!({ "text": "two\nlines\tand 👩\u{200d}💻" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The same rule holds for a caller who skips the gateway.
    let mut grpc = TweetsServiceClient::connect(format!("http://{}", mesh.tweets))
        .await
        .expect("connect to the tweets service");
    let status = grpc
        .create_tweet(as_user(
            &token,
            CreateTweetRequest {
                author_id: me.parse().expect("an id"),
                text: "hi\u{0}there\u{1b}[31mRED\u{202e}".into(),
                idempotency_key: String::new(),
                mentions: Vec::new(),
            },
        ))
        .await
        .expect_err("refused over gRPC too");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("control characters"),
        "{status:?}"
    );

    let (_, profile) = mesh.get(&format!("/v1/users/{me}"), None).await;
    assert_eq!(profile["tweets_count"], 1, "refused posts wrote nothing");

    // The security pass's display name: a zero-width space and a right-to-left override.
    let (status, body) = mesh
        .post(
            "/v1/users",
            None,
            json!({
                "username": "admin2",
                "password": "long-enough-pw",
                "display_name": "ad\u{200b}min\u{202e}",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("display_name"), "{body}");
    assert_eq!(
        mesh.get("/v1/users/by-username/admin2", None).await.0,
        StatusCode::NOT_FOUND,
        "a refused sign-up wrote nothing"
    );
    let profiles = [
        (json!({ "display_name": "ad\u{200b}min" }), "zero-width"),
        (json!({ "display_name": "nimda\u{202e}" }), "bidirectional"),
        (
            json!({ "bio": "\u{1b}]0;owned\u{7}" }),
            "control characters",
        ),
        (json!({ "bio": "two\nlines" }), "control characters"),
        (json!({ "bio": "\u{feff}bom" }), "zero-width"),
    ];
    for (body, rule) in profiles {
        let (status, error) = mesh.patch("/v1/users/me", Some(&token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(message(&error).contains(rule), "{body}: {error}");
    }
    let (_, user) = mesh.get("/v1/users/me", Some(&token)).await;
    assert_eq!(
        (user["display_name"].clone(), user["bio"].clone()),
        (json!("mallory"), json!("")),
        "refused updates changed nothing"
    );
}

/// The permission bits of `path`.
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// `users.redb` (the password hashes) used to be created 0644. Now every store and the signing
/// key are 0600 in a 0700 directory, and loose ones left by an older version are tightened at
/// start.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_its_secrets_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    let data = root.path().join("data");
    let start = || TestMesh::start_with(twtr::Config::embedded(&data), root.clone());
    let mesh = start().await;
    mesh.user("olivia").await;
    mesh.stop().await;
    let secrets = [
        "users.redb",
        "tweets.redb",
        "followers.redb",
        "feeds.redb",
        "bus.redb",
        "token_private.pem",
    ];
    assert_eq!(mode(&data), 0o700, "a new data directory");
    for file in secrets {
        assert_eq!(mode(&data.join(file)), 0o600, "a new {file}");
    }

    // As an older version (or a careless restore) left them.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in secrets {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mesh = start().await;
    let (status, _) = mesh.get("/v1/users/by-username/olivia", None).await;
    assert_eq!(status, StatusCode::OK, "the data is still there");
    mesh.stop().await;
    assert_eq!(mode(&data), 0o700, "a loose data directory is tightened");
    for file in secrets {
        assert_eq!(mode(&data.join(file)), 0o600, "a loose {file} is tightened");
    }
}

/// The security pass: three `POST /attacker/path-N` calls with a bad token made three new
/// `twtr_grpc_server_requests_total` series (the token is refused before routing, and the raw
/// path was the label). Made-up paths and HTTP methods must add no series, gRPC nor HTTP.
#[tokio::test]
async fn made_up_paths_and_methods_add_no_metric_series() {
    let mesh = TestMesh::start().await;
    for n in 1..=3 {
        let path = format!("/attacker/path-{n}");
        let refused = raw_grpc_call(mesh.tweets, &path, Some("not-a-token")).await;
        assert_eq!(refused, tonic::Code::Unauthenticated, "{path}");
        // Without a token the call reaches routing: there is no such method.
        let unrouted = raw_grpc_call(mesh.users, &path, None).await;
        assert_eq!(unrouted, tonic::Code::Unimplemented, "{path}");
    }
    let http = reqwest::Client::new();
    for n in 1..=3 {
        let made_up = reqwest::Method::from_bytes(format!("ATTACKER{n}").as_bytes()).unwrap();
        for (method, path) in [
            (reqwest::Method::POST, format!("/attacker/path-{n}")),
            (made_up.clone(), "/v1/timeline".to_owned()),
            (made_up, format!("/attacker/path-{n}")),
        ] {
            let status = http
                .request(method, format!("{}{path}", mesh.http))
                .bearer_auth("not-a-token")
                .send()
                .await
                .expect("an HTTP request")
                .status();
            assert!(status.is_client_error(), "{path}: {status}");
        }
    }
    let metrics = reqwest::get(format!("{}/metrics", mesh.http))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let leaked: Vec<&str> = metrics
        .lines()
        .filter(|line| line.contains("attacker") || line.contains("ATTACKER"))
        .collect();
    assert!(leaked.is_empty(), "made-up labels: {leaked:#?}");
    for expected in [
        r#"twtr_grpc_server_requests_total{method="unknown",code="Unauthenticated"}"#,
        r#"twtr_grpc_server_requests_total{method="unknown",code="Unimplemented"}"#,
        r#"twtr_http_requests_total{route="unknown",method="POST",status="404"}"#,
        r#"twtr_http_requests_total{route="/v1/timeline",method="unknown",status="405"}"#,
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    mesh.stop().await;
}

/// Calls `path` on the gRPC server at `addr` (an empty message), with `token` if any; the code
/// it answered.
async fn raw_grpc_call(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> tonic::Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let request = match token {
        Some(token) => as_user(token, ()),
        None => tonic::Request::new(()),
    };
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("a path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match client.unary(request, path, codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// The gateway's revocation cache is not the only check: a caller who reaches the users service
/// directly with a token issued before a password change can neither change nor delete the
/// account (the users service owns the token generation and checks it).
pub async fn a_revoked_token_cannot_change_or_delete_the_account_over_grpc(mesh: &TestMesh) {
    let (me, old) = mesh.user("victor").await;
    let (status, body) = mesh
        .patch(
            "/v1/users/me",
            Some(&old),
            json!({ "password": "a-brand-new-pw", "current_password": "victor-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user_id: u64 = me.parse().expect("an id");
    let mut users = UsersServiceClient::connect(format!("http://{}", mesh.users))
        .await
        .expect("connect to the users service");
    let rename = || UpdateUserRequest {
        user_id,
        display_name: Some("hijacked".into()),
        ..UpdateUserRequest::default()
    };
    let refused = users
        .update_user(as_user(&old, rename()))
        .await
        .expect_err("an old token cannot change the profile");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    let refused = users
        .delete_user(as_user(&old, DeleteUserRequest { user_id }))
        .await
        .expect_err("an old token cannot delete the account");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let (status, user) = mesh.get(&format!("/v1/users/{me}"), None).await;
    assert_eq!(status, StatusCode::OK, "the account stands: {user}");
    assert_eq!(user["display_name"], "victor");

    // A token from a login since the change works.
    let (status, session) = mesh
        .post(
            "/v1/sessions",
            None,
            json!({ "username": "victor", "password": "a-brand-new-pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let new = session["token"].as_str().expect("a token").to_owned();
    let renamed = users
        .update_user(as_user(&new, rename()))
        .await
        .expect("a current token changes the profile")
        .into_inner();
    assert_eq!(renamed.display_name, "hijacked");
}
