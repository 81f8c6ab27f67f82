//! Mutual TLS between the parts (`TWTR_GRPC_TLS_*`), on the real binary in processes of its
//! own, with certificates made for the test (`twtr_common::testing::pki`): a CA, one
//! certificate every part presents (it names `localhost`, `127.0.0.1` and the parts' service
//! names) and an operator's.
//!
//! - `twtr all` in a child process on the embedded store: every hop (gateway to each service,
//!   followers to users) is gRPC over TLS on loopback; runs everywhere.
//! - The five parts as five processes on RabbitMQ (needs a broker, as every such test does).
//!
//! Both check the same things from outside: a post goes through the gateway and lands in a
//! feed; `grpcurl` with the operator's certificate lists and calls a service, and is refused
//! the service-only methods; a client without a certificate, and a plaintext one, are refused.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::process::Command;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use twtr_common::testing::pki::TestPki;
use twtr_common::tls::TlsFiles;

use crate::processes::{Cluster, spawn_part};
use crate::support::{Api, CONVERGE, eventually, text};

/// The environment that turns mutual TLS on with `files`.
fn tls_env(files: &TlsFiles) -> Vec<(String, String)> {
    [
        ("TWTR_GRPC_TLS_CERT", &files.cert),
        ("TWTR_GRPC_TLS_KEY", &files.key),
        ("TWTR_GRPC_TLS_CA", &files.ca),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.display().to_string()))
    .collect()
}

/// Runs grpcurl with `args`; returns whether it succeeded and what it printed (both streams).
async fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run grpcurl ({err}); scripts/test.sh installs it"));
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// What every variant of the mesh must show, given its gateway and the users service's
/// `host:port`, with the test's certificates in `certs`.
async fn check_mesh_over_mutual_tls(api: &Api, users: &str, certs: &Path) {
    // Every hop works: sign-up and login (the gateway calls Login, a service-only method),
    // a post, and the author's own feed, hydrated (feeds, tweets and users behind it).
    let (_, token) = api.user("tls_alice").await;
    let tweet = api.tweet(&token, "over mutual tls").await;
    api.await_feed(&token, &[&tweet], "the post in its author's feed")
        .await;
    let (status, me) = api.get("/v1/users/me", Some(&token)).await;
    assert!(status.is_success(), "{me}");

    let file = |name: &str| certs.join(name).display().to_string();
    let (ca, cert, key) = (
        file("ca.pem"),
        file("operator.pem"),
        file("operator-key.pem"),
    );
    let operator = ["-cacert", &ca, "-cert", &cert, "-key", &key];
    let with = |more: &[&str]| -> Vec<String> {
        operator
            .iter()
            .chain(more)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        grpcurl(&args).await
    };

    // An operator's certificate: reflection, health and ordinary methods work...
    let (ok, listed) = run(with(&[users, "list"])).await;
    assert!(ok, "{listed}");
    assert!(listed.contains("twtr.users.v1.UsersService"), "{listed}");
    let (ok, found) = run(with(&[
        "-d",
        r#"{"username":"tls_alice"}"#,
        users,
        "twtr.users.v1.UsersService/GetUserByUsername",
    ]))
    .await;
    assert!(ok && found.contains("tls_alice"), "{found}");
    // ...the service-only ones do not.
    let (ok, refused) = run(with(&[
        "-d",
        r#"{"user_ids":["1"]}"#,
        users,
        "twtr.users.v1.UsersService/GetTokenStates",
    ]))
    .await;
    assert!(!ok, "{refused}");
    assert!(refused.contains("PermissionDenied"), "{refused}");

    // No client certificate: the handshake is refused, whatever the method.
    let (ok, said) = grpcurl(&["-cacert", &ca, users, "list"]).await;
    assert!(!ok, "a client without a certificate was served: {said}");
    // Plaintext: refused too.
    let (ok, said) = grpcurl(&["-plaintext", users, "list"]).await;
    assert!(!ok, "a plaintext client was served: {said}");

    // The same with tonic: a TLS client that trusts the CA but has no certificate, and a
    // plaintext one, get no answer to a health check.
    let pem = std::fs::read_to_string(&ca).unwrap();
    let anonymous = tonic::transport::Endpoint::from_shared(format!("https://{users}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_lazy();
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{users}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    for (what, channel) in [("no certificate", anonymous), ("plaintext", plaintext)] {
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(answer.is_err(), "a client with {what} was answered");
    }
}

/// `twtr all` in its own process with mutual TLS on: the one-process mesh still makes real
/// gRPC hops, each over TLS.
#[tokio::test]
async fn the_all_in_one_mesh_runs_on_mutual_tls_and_refuses_clients_without_a_certificate() {
    let certs = TempDir::new().unwrap();
    let files = TestPki::generate().write(certs.path());
    let data = TempDir::new().unwrap();
    let mut env = tls_env(&files);
    env.extend(
        [
            ("TWTR_DATA_DIR", data.path().display().to_string()),
            ("TWTR_LOG_FORMAT", "json".to_owned()),
            ("TWTR_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("TWTR_USERS_ADDR", "127.0.0.1:0".to_owned()),
            ("TWTR_TWEETS_ADDR", "127.0.0.1:0".to_owned()),
            ("TWTR_FOLLOWERS_ADDR", "127.0.0.1:0".to_owned()),
            ("TWTR_FEEDS_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut mesh = spawn_part("all", "all", &env).await;
    // Where each part listens, from its log line.
    let listening = |message: &str, service: Option<&str>| {
        mesh.logs.lock().unwrap().iter().find_map(|line| {
            let event: Value = serde_json::from_str(line).ok()?;
            let matches = event["message"] == message
                && service.is_none_or(|s| event["service"] == s)
                && event["tls"] != false;
            matches.then(|| text(&event["addr"]))
        })
    };
    let (http, users) = eventually("the mesh to listen", CONVERGE, || async {
        Some((
            listening("http server listening", None)?,
            listening("grpc server listening", Some("twtr.users.v1.UsersService"))?,
        ))
    })
    .await;
    let api = Api::new(format!("http://{http}"));
    eventually("the mesh to be healthy", CONVERGE, || async {
        let (status, _) = api.get("/health/details", None).await;
        status.is_success().then_some(())
    })
    .await;

    check_mesh_over_mutual_tls(&api, &users, certs.path()).await;
    mesh.terminate().await;
}

/// The distributed deployment on one machine, every part its own process on RabbitMQ, with
/// mutual TLS on every hop (skipped without a broker outside CI).
#[tokio::test]
async fn five_processes_on_a_broker_talk_mutual_tls() {
    let Some(amqp) = twtr_common::testing::amqp_url() else {
        return;
    };
    let certs = TempDir::new().unwrap();
    let files = TestPki::generate().write(certs.path());
    let env = tls_env(&files);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = Cluster::start(&amqp, &env).await;
    let users = cluster.users.addr.clone();
    check_mesh_over_mutual_tls(&cluster.api, &users, certs.path()).await;
    cluster.stop().await;
}
