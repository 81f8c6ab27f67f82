//! The security suite (issue 20): the attacks a hostile client tries first, each against the
//! real gateway and services, each answered with the documented 4xx, and none changing anything.
//!
//! - Tokens that must not work, on every route that takes one: missing, malformed, expired,
//!   forged (another key claiming the mesh's `kid`), tampered (a valid token's claims swapped),
//!   `alg: none`, HS256 signed with the public key, an unknown `kid`, a future `nbf`, a huge one.
//! - Object-level authorization: a second user's valid token on every route changes nothing of
//!   the first user's.
//! - Mass assignment: bodies that try to set what the server owns (ids, usernames, counts).
//! - Oversized requests: a huge header, too many headers, a path over the limit.
//! - Slow clients: bodies and heads trickled a byte at a time hold nothing past their deadline.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use twtr_common::tokens::{TokenSigner, generate_key_pair, public_key_of};

use crate::support::{TestMesh, ids, on_both_backends, text};

on_both_backends! {
    bad_tokens => every_route_refuses_a_bad_token_and_nothing_changes,
    other_users_token => a_second_users_token_changes_nothing_of_the_first_user,
    mass_assignment => bodies_cannot_set_what_the_server_owns,
}

/// Every route that takes a bearer token, with `{tweet}` and `{user}` to fill in. (The OpenAPI
/// contract, `gateway/tests/openapi_operations.txt`, lists them; `security=bearer` or
/// `security=none,bearer`.)
const BEARER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/feed"),
    ("GET", "/v1/feed/stream"),
    ("GET", "/v1/notifications"),
    ("POST", "/v1/notifications/read"),
    ("GET", "/v1/timeline"),
    ("GET", "/v1/search/tweets?q=mine"),
    ("GET", "/v1/tags/{tag}/tweets"),
    ("POST", "/v1/tweets"),
    ("GET", "/v1/tweets/{tweet}"),
    ("DELETE", "/v1/tweets/{tweet}"),
    ("POST", "/v1/tweets/{tweet}/like"),
    ("DELETE", "/v1/tweets/{tweet}/like"),
    ("POST", "/v1/tweets/{tweet}/retweet"),
    ("DELETE", "/v1/tweets/{tweet}/retweet"),
    ("GET", "/v1/users/me"),
    ("GET", "/v1/users/me/suggestions"),
    ("PATCH", "/v1/users/me"),
    ("DELETE", "/v1/users/me"),
    ("POST", "/v1/users/{user}/follow"),
    ("DELETE", "/v1/users/{user}/follow"),
    ("GET", "/v1/users/{user}/tweets"),
];

/// The list above is every route the OpenAPI contract says takes a bearer token, no more, no
/// less: a new route joins the suite or this fails.
#[test]
fn the_suite_covers_every_bearer_route_of_the_contract() {
    fn shape(method: &str, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let mut shaped = String::new();
        let mut in_param = false;
        for c in path.chars() {
            match c {
                '{' => in_param = true,
                '}' => {
                    in_param = false;
                    shaped.push_str("{}");
                }
                _ if !in_param => shaped.push(c),
                _ => {}
            }
        }
        format!("{method} {shaped}")
    }
    let contract = include_str!("../../gateway/tests/openapi_operations.txt");
    let mut documented: Vec<String> = contract
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains(" security="))
        .filter(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("security="))
                .is_some_and(|security| security.split(',').any(|s| s == "bearer"))
        })
        .map(|line| {
            let mut fields = line.split_whitespace();
            let (method, path) = (fields.next().unwrap(), fields.next().unwrap());
            shape(method, path)
        })
        .collect();
    let mut covered: Vec<String> = BEARER_ROUTES
        .iter()
        .map(|(method, path)| shape(method, path))
        .collect();
    documented.sort();
    covered.sort();
    assert_eq!(covered, documented);
}

/// The routes on which a token is optional: anonymous callers are welcome there.
fn token_optional(method: &str, path: &str) -> bool {
    method == "GET"
        && matches!(
            path,
            "/v1/timeline"
                | "/v1/search/tweets?q=mine"
                | "/v1/tags/{tag}/tweets"
                | "/v1/tweets/{tweet}"
                | "/v1/users/{user}/tweets"
        )
}

/// A body the route would accept from its owner.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("POST", "/v1/tweets") => Some(json!({ "text": "not mine to post" })),
        ("PATCH", "/v1/users/me") => Some(json!({ "display_name": "pwned" })),
        ("POST", "/v1/notifications/read") => Some(json!({})),
        _ => None,
    }
}

/// The victim's world: a user with a tweet they liked and retweeted, who follows someone.
struct Victim {
    id: String,
    token: String,
    tweet: String,
    /// Someone the victim follows (and the attacker may follow or unfollow).
    followed: String,
}

async fn victim(mesh: &TestMesh, name: &str) -> Victim {
    let (id, token) = mesh.user(name).await;
    let (followed, _) = mesh.user(&format!("{name}_pal")).await;
    mesh.follow(&token, &followed).await;
    let tweet = mesh.tweet(&token, "mine and only mine").await;
    for action in ["like", "retweet"] {
        let (status, body) = mesh
            .post(
                &format!("/v1/tweets/{tweet}/{action}"),
                Some(&token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{action}: {body}");
    }
    Victim {
        id,
        token,
        tweet,
        followed,
    }
}

/// What the victim owns, as the API shows it: profile and counts, their tweet and its counts,
/// their tweets, whom they follow and who follows them. All of it is written synchronously by
/// its owning service, so an attack that got through shows here at once.
async fn snapshot(mesh: &TestMesh, victim: &Victim) -> Value {
    let get = |path: String| async move {
        let (status, body) = mesh.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    };
    let (status, me) = mesh.get("/v1/users/me", Some(&victim.token)).await;
    assert_eq!(status, StatusCode::OK, "the victim's account: {me}");
    json!({
        "me": me,
        "tweet": get(format!("/v1/tweets/{}", victim.tweet)).await,
        "tweets": ids(&get(format!("/v1/users/{}/tweets", victim.id)).await),
        "following": ids(&get(format!("/v1/users/{}/following", victim.id)).await),
        "followers": ids(&get(format!("/v1/users/{}/followers", victim.id)).await),
    })
}

fn fill(path: &str, victim: &Victim, user: &str) -> String {
    path.replace("{tweet}", &victim.tweet)
        .replace("{user}", user)
        .replace("{tag}", "mine")
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("a sane clock")
}

/// Tokens that must not work, each claiming to be `user_id`, named for the failure messages.
fn bad_tokens(mesh: &TestMesh, user_id: &str, someone_elses: &str) -> Vec<(&'static str, String)> {
    let private = std::fs::read_to_string(mesh.data_dir.path().join("token_private.pem"))
        .expect("the mesh's signing key");
    let public = public_key_of(&private).expect("its public key");
    let kid = TokenSigner::from_pem(&private, Duration::from_secs(60))
        .expect("a signing key")
        .key_id()
        .to_owned();
    let mesh_key = EncodingKey::from_ed_pem(private.as_bytes()).expect("an Ed25519 key");
    let (other_private, _) = generate_key_pair().expect("a key pair");
    let other_key = EncodingKey::from_ed_pem(other_private.as_bytes()).expect("an Ed25519 key");
    let t = now();
    let claims = |iat: i64, exp: i64| json!({ "sub": user_id, "iat": iat, "exp": exp, "gen": 0 });
    let header = |alg: Algorithm, kid: &str| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        header
    };
    let sign = |header: Header, claims: Value, key: &EncodingKey| {
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    };
    let b64 = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());

    // A valid token of someone else, its claims swapped for the victim's, its signature kept.
    let mut tampered: Vec<String> = someone_elses.split('.').map(str::to_owned).collect();
    tampered[1] = b64(&claims(t, t + 600));
    let mut early = claims(t, t + 7200);
    early["nbf"] = json!(t + 3600);

    vec![
        ("malformed", "not-a-jwt".to_owned()),
        (
            "expired",
            sign(
                header(Algorithm::EdDSA, &kid),
                claims(t - 7200, t - 60),
                &mesh_key,
            ),
        ),
        (
            "forged with another key under the mesh's kid",
            sign(
                header(Algorithm::EdDSA, &kid),
                claims(t, t + 600),
                &other_key,
            ),
        ),
        ("tampered claims", tampered.join(".")),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "typ": "JWT", "kid": kid })),
                b64(&claims(t, t + 600))
            ),
        ),
        (
            "HS256 signed with the public key",
            sign(
                header(Algorithm::HS256, &kid),
                claims(t, t + 600),
                &EncodingKey::from_secret(public.as_bytes()),
            ),
        ),
        (
            "unknown kid",
            sign(
                header(Algorithm::EdDSA, "no-such-key"),
                claims(t, t + 600),
                &mesh_key,
            ),
        ),
        (
            "not valid before an hour from now",
            sign(header(Algorithm::EdDSA, &kid), early, &mesh_key),
        ),
        ("huge", "A".repeat(12_000)),
    ]
}

pub async fn every_route_refuses_a_bad_token_and_nothing_changes(mesh: &TestMesh) {
    let victim = victim(mesh, "sec_victim").await;
    let (_, stranger) = mesh.user("sec_stranger").await;
    let before = snapshot(mesh, &victim).await;
    let tokens = bad_tokens(mesh, &victim.id, &stranger);
    let mut tried = 0;
    for (method, path) in BEARER_ROUTES {
        let url = fill(path, &victim, &victim.followed);
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let body = body_for(method.as_str(), path);
        if !token_optional(method.as_str(), path) {
            let (status, answer) = mesh.call(method.clone(), &url, None, body.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token: {answer}"
            );
        }
        for (what, token) in &tokens {
            let (status, answer) = mesh
                .call(method.clone(), &url, Some(token), body.clone())
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a {what} token: {answer}"
            );
            assert_eq!(answer["error"]["code"], "unauthenticated", "{answer}");
            tried += 1;
        }
    }
    assert_eq!(tried, BEARER_ROUTES.len() * tokens.len());
    assert_eq!(
        snapshot(mesh, &victim).await,
        before,
        "a bad token changed something"
    );
}

pub async fn a_second_users_token_changes_nothing_of_the_first_user(mesh: &TestMesh) {
    let victim = victim(mesh, "idor_victim").await;
    let (attacker, token) = mesh.user("idor_attacker").await;
    let before = snapshot(mesh, &victim).await;

    // The one route that names another's object: deleting someone else's tweet is refused.
    let (status, body) = mesh
        .delete(&format!("/v1/tweets/{}", victim.tweet), Some(&token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");

    // Every other route acts as the caller: with the attacker's token on the victim's tweet and
    // on whom the victim follows, each touches the attacker's own state only. (The account's
    // own deletion comes last.)
    for (method, path) in BEARER_ROUTES {
        if (*method, *path) == ("DELETE", "/v1/tweets/{tweet}")
            || *path == "/v1/users/me" && *method == "DELETE"
        {
            continue;
        }
        if *path == "/v1/feed/stream" {
            // The attacker's own live feed (it lasts: only its start is read).
            crate::live::open(mesh, &token, None)
                .await
                .expect("the attacker's own live feed");
            continue;
        }
        let url = fill(path, &victim, &victim.followed);
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let body = body_for(method.as_str(), path);
        let (status, answer) = mesh.call(method.clone(), &url, Some(&token), body).await;
        assert!(
            status.is_success(),
            "{method} {path} as another user: {status} {answer}"
        );
    }
    let (_, attacker_view) = mesh.get(&format!("/v1/users/{attacker}"), None).await;
    assert_eq!(
        attacker_view["display_name"], "pwned",
        "the attacker's update was their own"
    );
    let (status, body) = mesh.delete("/v1/users/me", Some(&token)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    assert_eq!(
        snapshot(mesh, &victim).await,
        before,
        "another user's token changed the victim's state"
    );
}

pub async fn bodies_cannot_set_what_the_server_owns(mesh: &TestMesh) {
    let victim = victim(mesh, "mass_victim").await;
    let before = snapshot(mesh, &victim).await;
    let owned = [
        json!({ "display_name": "ok", "id": "1" }),
        json!({ "display_name": "ok", "username": "someone_else" }),
        json!({ "followers_count": 100_000 }),
        json!({ "following_count": 0, "tweets_count": 0 }),
        json!({ "created_at": "2000-01-01T00:00:00Z" }),
        json!({ "token_generation": 0 }),
    ];
    for body in owned {
        let (status, answer) = mesh
            .patch("/v1/users/me", Some(&victim.token), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "PATCH {body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_argument", "{answer}");
    }
    let tweets = [
        json!({ "text": "hello", "author_id": victim.followed }),
        json!({ "text": "hello", "like_count": 1_000 }),
        json!({ "text": "hello", "id": "7" }),
    ];
    for body in tweets {
        let (status, answer) = mesh
            .post("/v1/tweets", Some(&victim.token), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "POST {body}: {answer}");
    }
    let (status, answer) = mesh
        .post(
            "/v1/users",
            None,
            json!({ "username": "mass_admin", "password": "long enough", "id": "1" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _) = mesh.get("/v1/users/by-username/mass_admin", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused sign-up created nobody"
    );
    assert_eq!(
        snapshot(mesh, &victim).await,
        before,
        "a refused body changed something"
    );
}

/// Sends raw bytes as a request head and returns the status line's code and the rest.
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer, got {answer:?}"));
    (code, answer)
}

#[tokio::test]
async fn oversized_heads_and_paths_are_refused() {
    let mesh = TestMesh::start().await;
    let addr = mesh.http.trim_start_matches("http://").to_owned();

    let huge_header = format!(
        "GET /v1/timeline HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let (code, _) = raw(&addr, huge_header.as_bytes()).await;
    assert_eq!(code, 431, "a header over the limit");

    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /v1/timeline HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let (code, _) = raw(&addr, many.as_bytes()).await;
    assert_eq!(code, 431, "more headers than allowed");

    let long_path = format!("/v1/users/{}", "9".repeat(5_000));
    let (status, body) = mesh.get(&long_path, None).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
    assert_eq!(body["error"]["code"], "uri_too_long", "{body}");

    // Whatever came before, an ordinary request is served.
    let (status, body) = mesh.get("/v1/timeline", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    mesh.stop().await;
}

/// How long the slow clients below keep trickling unless the gateway stops them. A lockout
/// that lasts this long is the bug the test is for.
const TRICKLE_FOR: Duration = Duration::from_secs(30);

/// A client that sends a request head, 7 of the 100 body bytes it announced, then one more byte
/// every 300 ms; returns what the gateway answered, once it answers or closes.
async fn slow_body(addr: String, token: String) -> String {
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "PATCH /v1/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"displ"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < TRICKLE_FOR {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                if stream.write_all(b"a").await.is_err() && !answer.is_empty() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that sends a request head a byte every 200 ms; returns how long until the gateway
/// closed the connection (`None`: it never did while the client trickled).
async fn slow_head(addr: String) -> Option<Duration> {
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = b"GET /v1/timeline HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    stream.write_all(head).await.expect("send the start");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < TRICKLE_FOR {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // a 408 a server might send before closing
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn slow_clients_hold_nothing_past_their_deadline() {
    const SLOTS: usize = 4;
    let deadline = Duration::from_secs(3);
    let mesh = TestMesh::start_configured(|config| {
        config.edge.concurrency = twtr_gateway::adaptive::ConcurrencyLimits::fixed(SLOTS);
        config.edge.request_timeout = deadline;
        config.edge.connections.header_read_timeout = Duration::from_secs(1);
        config.edge.rates = twtr_gateway::RateLimits::OFF;
    })
    .await;
    let addr = mesh.http.trim_start_matches("http://").to_owned();
    let (_, token) = mesh.user("slowpoke").await;
    // A fresh connection per probe: the gateway closes idle keep-alive connections at the
    // (short, here) header read timeout, and a pooled one may be reused just as it closes.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let timeline = format!("{}/v1/timeline", mesh.http);

    // Slow heads hold no slot (a request takes one once its head has arrived) and are cut off
    // at the header read timeout.
    let heads: Vec<_> = (0..SLOTS)
        .map(|_| tokio::spawn(slow_head(addr.clone())))
        .collect();
    let status = probe
        .get(&timeline)
        .send()
        .await
        .expect("HTTP request")
        .status();
    assert_eq!(status, StatusCode::OK, "slow heads keep nobody out");
    for head in heads {
        let closed = head.await.expect("slow head task");
        let closed = closed.expect("the gateway closes a connection whose head never ends");
        eprintln!("slow head closed after {} ms", closed.as_millis());
    }

    // Slow bodies hold every slot, until their deadline.
    let bodies: Vec<_> = (0..SLOTS)
        .map(|_| tokio::spawn(slow_body(addr.clone(), token.clone())))
        .collect();
    let locked = Instant::now();
    let mut lockout_began = None;
    let mut served = None;
    while locked.elapsed() < TRICKLE_FOR {
        let response = probe.get(&timeline).send().await.expect("HTTP request");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                lockout_began.get_or_insert_with(|| locked.elapsed());
            }
            StatusCode::OK if lockout_began.is_some() => {
                served = Some(locked.elapsed());
                break;
            }
            StatusCode::OK => {}
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = Vec::new();
    for body in bodies {
        answers.push(body.await.expect("slow body task"));
    }
    let lockout_began = lockout_began
        .unwrap_or_else(|| panic!("the slow bodies never held the slots; they got {answers:?}"));
    let served = served.unwrap_or_else(|| {
        panic!("still locked out while the slow clients trickle; they got {answers:?}")
    });
    eprintln!(
        "slow bodies kept others out from {} ms to {} ms (deadline {} ms)",
        lockout_began.as_millis(),
        served.as_millis(),
        deadline.as_millis()
    );
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("request_timeout"), "{answer:?}");
    }
    let me: Value = probe
        .get(format!("{}/v1/users/me", mesh.http))
        .bearer_auth(&token)
        .send()
        .await
        .expect("HTTP request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        text(&me["display_name"]),
        "slowpoke",
        "a timed-out body changed nothing"
    );
    mesh.stop().await;
}
