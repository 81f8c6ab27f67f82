//! Hostile clients (issue 20): text that would lie when shown (terminal escapes, NULs,
//! bidirectional overrides, zero-width characters) is refused with a 400 naming the rule and
//! writes nothing, through the gateway and over gRPC alike; the data directory and the files
//! holding secrets are private to the owner, even when an older version left them open.

use reqwest::StatusCode;
use serde_json::{Value, json};
use twtr_proto::tweets::v1::CreateTweetRequest;
use twtr_proto::tweets::v1::tweets_service_client::TweetsServiceClient;

use crate::support::{TestMesh, as_user, on_both_backends};

on_both_backends! {
    text_policy => text_that_lies_when_shown_is_refused_and_writes_nothing,
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
