//! Accounts, end to end over HTTP: profile changes, password changes, deletion, and the tokens
//! that must stop working after them. Every check runs on the embedded store and on the CQL
//! backend (a real Cassandra node; skipped outside CI when none answers).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use twtr_common::tokens::{TokenSigner, generate_key_pair};

use crate::support::{CONVERGE, TestMesh, eventually, on_both_backends, text};

on_both_backends! {
    profile_updates => profile_updates_change_only_what_they_name,
    bad_profile_updates => bad_profile_updates_are_400s_that_change_nothing,
    password_changes => a_password_change_needs_the_current_password_and_revokes_old_tokens,
    deletion => a_deleted_account_is_gone_and_its_token_is_refused_everywhere,
    bad_tokens => forged_expired_and_wrong_key_tokens_are_refused,
    concurrent_sign_ups => eight_concurrent_sign_ups_of_one_name_give_one_account,
    sign_up_validation => bad_sign_ups_are_400s_or_409s_that_write_nothing,
}

async fn me(mesh: &TestMesh, token: &str) -> (StatusCode, Value) {
    mesh.get("/v1/users/me", Some(token)).await
}

async fn log_in(mesh: &TestMesh, username: &str, password: &str) -> StatusCode {
    mesh.post(
        "/v1/sessions",
        None,
        json!({ "username": username, "password": password }),
    )
    .await
    .0
}

pub async fn profile_updates_change_only_what_they_name(mesh: &TestMesh) {
    let (id, token) = mesh.user("alice").await;
    let (status, user) = mesh
        .patch(
            "/v1/users/me",
            Some(&token),
            json!({ "display_name": "Alice A.", "bio": "hello" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(
        (user["display_name"].clone(), user["bio"].clone()),
        (json!("Alice A."), json!("hello"))
    );
    assert_eq!(text(&user["id"]), id);
    let (status, user) = mesh
        .patch("/v1/users/me", Some(&token), json!({ "bio": "changed" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["display_name"], "Alice A.", "an absent field stays");
    assert_eq!(user["bio"], "changed");
    let (_, seen) = mesh.get(&format!("/v1/users/{id}"), None).await;
    assert_eq!(
        (seen["display_name"].clone(), seen["bio"].clone()),
        (json!("Alice A."), json!("changed"))
    );
    // An empty display name falls back to the username, as at sign-up.
    let (_, user) = mesh
        .patch("/v1/users/me", Some(&token), json!({ "display_name": "" }))
        .await;
    assert_eq!(user["display_name"], "alice");
    // Without a token, nothing.
    let (status, _) = mesh
        .patch("/v1/users/me", None, json!({ "bio": "x" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

pub async fn bad_profile_updates_are_400s_that_change_nothing(mesh: &TestMesh) {
    let (_, token) = mesh.user("bob").await;
    let bad = [
        json!({ "display_name": "x".repeat(51) }),
        json!({ "bio": "x".repeat(161) }),
        json!({ "dispaly_name": "typo" }),
        json!({ "password": "short", "current_password": "bob-password" }),
        json!({ "password": "y".repeat(129), "current_password": "bob-password" }),
        json!({ "password": "a-new-password" }),
    ];
    for body in bad {
        let (status, error) = mesh.patch("/v1/users/me", Some(&token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, _) = mesh
        .send_raw(Method::PATCH, "/v1/users/me", Some(&token), "{\"bio\": ")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "malformed JSON");
    let (_, user) = me(mesh, &token).await;
    assert_eq!(
        (user["display_name"].clone(), user["bio"].clone()),
        (json!("bob"), json!(""))
    );
    assert_eq!(
        log_in(mesh, "bob", "bob-password").await,
        StatusCode::OK,
        "the password stayed"
    );
}

pub async fn a_password_change_needs_the_current_password_and_revokes_old_tokens(mesh: &TestMesh) {
    let (_, old_token) = mesh.user("carol").await;
    let (status, _) = mesh
        .patch(
            "/v1/users/me",
            Some(&old_token),
            json!({ "password": "brand-new-pass", "current_password": "not-my-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a wrong current password");
    let (status, body) = mesh
        .patch(
            "/v1/users/me",
            Some(&old_token),
            json!({ "password": "brand-new-pass", "current_password": "carol-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        log_in(mesh, "carol", "carol-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        log_in(mesh, "carol", "brand-new-pass").await,
        StatusCode::OK
    );
    // Tokens from before the change stop working (at once on this gateway)...
    eventually("the old token to be refused", CONVERGE, || async {
        (me(mesh, &old_token).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let (status, _) = mesh
        .post(
            "/v1/tweets",
            Some(&old_token),
            json!({ "text": "with a revoked token" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // ...and one from after it works.
    let (_, session) = mesh
        .post(
            "/v1/sessions",
            None,
            json!({ "username": "carol", "password": "brand-new-pass" }),
        )
        .await;
    let (status, user) = me(mesh, &text(&session["token"])).await;
    assert_eq!(status, StatusCode::OK, "{user}");
}

pub async fn a_deleted_account_is_gone_and_its_token_is_refused_everywhere(mesh: &TestMesh) {
    let (dave_id, dave) = mesh.user("dave").await;
    let (erin_id, erin) = mesh.user("erin").await;
    let erin_tweet = mesh.tweet(&erin, "erin's tweet").await;
    let (status, _) = mesh.delete("/v1/users/me", Some(&dave)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    assert_eq!(
        log_in(mesh, "dave", "dave-password").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        mesh.get(&format!("/v1/users/{dave_id}"), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        mesh.get("/v1/users/by-username/dave", None).await.0,
        StatusCode::NOT_FOUND
    );
    // The old token is refused by every route that acts as the caller.
    let refused = [
        mesh.get("/v1/users/me", Some(&dave)).await,
        mesh.get("/v1/feed", Some(&dave)).await,
        mesh.patch("/v1/users/me", Some(&dave), json!({ "bio": "back?" }))
            .await,
        mesh.delete("/v1/users/me", Some(&dave)).await,
        mesh.post("/v1/tweets", Some(&dave), json!({ "text": "from beyond" }))
            .await,
        mesh.call(
            Method::POST,
            &format!("/v1/users/{erin_id}/follow"),
            Some(&dave),
            None,
        )
        .await,
        mesh.call(
            Method::DELETE,
            &format!("/v1/users/{erin_id}/follow"),
            Some(&dave),
            None,
        )
        .await,
    ];
    for (n, (status, body)) in refused.iter().enumerate() {
        assert_eq!(*status, StatusCode::UNAUTHORIZED, "route {n}: {body}");
    }
    // The username is free again at once, in any case.
    let (status, user) = mesh
        .post(
            "/v1/users",
            None,
            json!({ "username": "DAVE", "password": "a-new-dave-pass" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_ne!(
        text(&user["id"]),
        dave_id,
        "a new account, not the old one back"
    );
    // Other users are untouched.
    assert_eq!(
        mesh.get(&format!("/v1/tweets/{erin_tweet}"), None).await.0,
        StatusCode::OK
    );
    assert_eq!(me(mesh, &erin).await.0, StatusCode::OK);
}

pub async fn forged_expired_and_wrong_key_tokens_are_refused(mesh: &TestMesh) {
    let (frank_id, _) = mesh.user("frank").await;
    let frank_id: u64 = frank_id.parse().unwrap();
    // Signed by a key the gateway does not know: a forgery.
    let (stranger, _) = generate_key_pair().unwrap();
    let forged = TokenSigner::from_pem(&stranger, Duration::from_secs(3600))
        .unwrap()
        .issue(frank_id, u64::MAX)
        .unwrap();
    // Signed by the mesh's own key (read from its data directory), but expired.
    let key = std::fs::read_to_string(mesh.data_dir.path().join("token_private.pem")).unwrap();
    let short = TokenSigner::from_pem(&key, Duration::from_secs(1)).unwrap();
    let expiring = short.issue(frank_id, u64::MAX).unwrap().token;
    for (what, token) in [
        ("forged", forged.token.as_str()),
        ("garbage", "not.a.token"),
        ("empty", ""),
    ] {
        let (status, body) = me(mesh, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    }
    eventually("the short-lived token to expire", CONVERGE, || async {
        (me(mesh, &expiring).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let (_, body) = me(mesh, &expiring).await;
    assert!(
        text(&body["error"]["message"]).contains("expired"),
        "{body}"
    );
}

pub async fn eight_concurrent_sign_ups_of_one_name_give_one_account(mesh: &TestMesh) {
    let attempts = [
        "grace", "Grace", "GRACE", "gRaCe", "grace", "GrAcE", "graCE", "GRace",
    ]
    .into_iter()
    .map(|name| async move {
        mesh.post(
            "/v1/users",
            None,
            json!({ "username": name, "password": "graces-password" }),
        )
        .await
        .0
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 7), "{statuses:?}");
    let (status, _) = mesh.get("/v1/users/by-username/grace", None).await;
    assert_eq!(status, StatusCode::OK);
}

pub async fn bad_sign_ups_are_400s_or_409s_that_write_nothing(mesh: &TestMesh) {
    mesh.user("henry").await;
    let cases = [
        (
            json!({ "username": "hi", "password": "long-enough-pw" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "a_very_long_name", "password": "long-enough-pw" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "bad-name", "password": "long-enough-pw" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "ivy", "password": "7-chars" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "ivy", "password": "p".repeat(129) }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "ivy", "password": "long-enough-pw", "admin": true }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "username": "HENRY", "password": "long-enough-pw" }),
            StatusCode::CONFLICT,
        ),
    ];
    for (body, expected) in cases {
        let (status, error) = mesh.post("/v1/users", None, body.clone()).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert!(
            error["error"]["code"].is_string(),
            "one error shape: {error}"
        );
    }
    let (status, _) = mesh
        .send_raw(Method::POST, "/v1/users", None, "{\"username\": \"ivy\"")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "malformed JSON");
    // Nothing was written: ivy does not exist, and henry is still the one henry.
    assert_eq!(
        mesh.get("/v1/users/by-username/ivy", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        log_in(mesh, "henry", "henry-password").await,
        StatusCode::OK
    );
    // The limits themselves are fine: 3 and 15 characters, 8 and 128 for passwords.
    for (name, password) in [
        ("ivy", "8-chars!".to_owned()),
        ("fifteen_chars_x", "q".repeat(128)),
    ] {
        let (status, body) = mesh
            .post(
                "/v1/users",
                None,
                json!({ "username": name, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
}
