//! Operators call the services with the real `grpcurl`, with no `.proto` files at hand: each
//! service lists itself through reflection and answers the standard health check.

use std::net::SocketAddr;

use tokio::process::Command;

use crate::support::TestMesh;

async fn grpcurl(args: &[&str]) -> String {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run grpcurl ({err}); scripts/test.sh installs it"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn every_service_answers_grpcurl_list_and_health_check() {
    let mesh = TestMesh::start().await;
    let services: [(SocketAddr, &str); 4] = [
        (mesh.users, "twtr.users.v1.UsersService"),
        (mesh.tweets, "twtr.tweets.v1.TweetsService"),
        (mesh.followers, "twtr.followers.v1.FollowersService"),
        (mesh.feeds, "twtr.feeds.v1.FeedsService"),
    ];
    for (addr, service) in services {
        let addr = addr.to_string();
        let listed = grpcurl(&["-plaintext", &addr, "list"]).await;
        let listed: Vec<&str> = listed.lines().collect();
        assert!(
            listed.contains(&service),
            "{service} not listed at {addr}: {listed:?}"
        );
        assert!(listed.contains(&"grpc.health.v1.Health"), "{listed:?}");
        // Each port serves its own service, not the whole mesh's, a consuming service its
        // queue's dead letters for operators, and (on the embedded store) every port the
        // process's backups.
        let (dead_letters, admin) = ("twtr.events.v1.DeadLetters", "twtr.admin.v1.Admin");
        assert_eq!(
            listed
                .iter()
                .filter(|s| s.starts_with("twtr.") && **s != dead_letters && **s != admin)
                .count(),
            1,
            "{listed:?}"
        );
        let consumes = service != "twtr.users.v1.UsersService";
        assert_eq!(listed.contains(&dead_letters), consumes, "{listed:?}");
        assert!(listed.contains(&admin), "{listed:?}");

        let request = format!(r#"{{"service":"{service}"}}"#);
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .await;
        assert!(health.contains("\"SERVING\""), "{service}: {health}");
    }
    // Reflection describes the notification methods and the live feed with the feed's.
    let described = grpcurl(&[
        "-plaintext",
        &mesh.feeds.to_string(),
        "describe",
        "twtr.feeds.v1.FeedsService",
    ])
    .await;
    for method in [
        "GetFeed",
        "ListNotifications",
        "MarkNotificationsRead",
        "WatchFeed",
    ] {
        assert!(
            described.contains(&format!("rpc {method} (")),
            "{described}"
        );
    }

    // A real call through reflection alone: a user created over HTTP, read back over gRPC.
    let (user_id, _) = mesh.user("grpcurl_user").await;
    let request = r#"{"username":"GRPCURL_USER"}"#;
    let users = mesh.users.to_string();
    let found = grpcurl(&[
        "-plaintext",
        "-d",
        request,
        &users,
        "twtr.users.v1.UsersService/GetUserByUsername",
    ])
    .await;
    assert!(found.contains(&format!("\"id\": \"{user_id}\"")), "{found}");
    mesh.stop().await;
}

/// `twtr token` as an operator uses it: a call that acts as a user needs that user's token in
/// the metadata; without one the service refuses it.
#[tokio::test]
async fn an_operator_acts_as_a_user_with_a_token_from_twtr_token() {
    let mesh = TestMesh::start().await;
    let (user_id, _) = mesh.user("operated").await;
    let minted = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .args(["token", "--user", &user_id, "--ttl", "60"])
        .env("TWTR_DATA_DIR", mesh.data_dir.path())
        .output()
        .await
        .expect("run twtr token");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let tweets = mesh.tweets.to_string();
    let request = format!(r#"{{"author_id":"{user_id}","text":"posted by an operator"}}"#);
    let method = "twtr.tweets.v1.TweetsService/CreateTweet";

    let refused = Command::new("grpcurl")
        .args(["-plaintext", "-d", &request, &tweets, method])
        .output()
        .await
        .expect("run grpcurl");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("Unauthenticated"), "{said}");

    let header = format!("authorization: Bearer {token}");
    let posted = grpcurl(&["-plaintext", "-H", &header, "-d", &request, &tweets, method]).await;
    assert!(posted.contains("posted by an operator"), "{posted}");
    let (_, page) = mesh.get(&format!("/v1/users/{user_id}/tweets"), None).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    mesh.stop().await;
}

/// Hashtags, search and trends over gRPC with reflection alone, as an operator would look.
#[tokio::test]
async fn tags_search_and_trends_answer_grpcurl() {
    let mesh = TestMesh::start().await;
    let (_, token) = mesh.user("grpcurl_tags").await;
    let id = mesh.tweet(&token, "reflection works #grpcurl").await;
    let tweets = mesh.tweets.to_string();
    let service = "twtr.tweets.v1.TweetsService";
    let described = grpcurl(&["-plaintext", &tweets, "describe", service]).await;
    for method in ["ListTagTweets", "SearchTweets", "GetTrends"] {
        assert!(described.contains(method), "{method}: {described}");
    }
    let tagged = crate::support::eventually("the tag over gRPC", crate::support::CONVERGE, || {
        let (tweets, wanted) = (tweets.clone(), format!("\"id\": \"{id}\""));
        async move {
            let found = grpcurl(&[
                "-plaintext",
                "-d",
                r##"{"tag":"#GRPCURL"}"##,
                &tweets,
                "twtr.tweets.v1.TweetsService/ListTagTweets",
            ])
            .await;
            found.contains(&wanted).then_some(found)
        }
    })
    .await;
    assert!(tagged.contains("reflection works"), "{tagged}");
    let found = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"query":"reflection #grpcurl"}"#,
        &tweets,
        "twtr.tweets.v1.TweetsService/SearchTweets",
    ])
    .await;
    assert!(found.contains(&id), "{found}");
    let trends = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &tweets,
        "twtr.tweets.v1.TweetsService/GetTrends",
    ])
    .await;
    assert!(trends.contains("\"tag\": \"grpcurl\""), "{trends}");
    mesh.stop().await;
}
