//! The test harness: spawn the mesh on pre-bound `127.0.0.1:0` listeners with a fresh data
//! directory, and typed helpers for the HTTP API.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use twtr::{Config, MeshListeners};
use twtr_common::bus::{QueueType, RabbitBus, RabbitConfig};

/// How long `eventually` waits for the mesh to converge (events are asynchronous).
pub const CONVERGE: Duration = Duration::from_secs(15);

/// A client of a running gateway, with typed helpers for the HTTP API.
#[derive(Clone)]
pub struct Api {
    pub http: String,
    client: reqwest::Client,
}

/// A running mesh. Dropping it without [`TestMesh::stop`] cancels it too. It derefs to its
/// [`Api`].
pub struct TestMesh {
    pub api: Api,
    pub users: SocketAddr,
    pub tweets: SocketAddr,
    pub followers: SocketAddr,
    pub feeds: SocketAddr,
    pub data_dir: Arc<TempDir>,
    /// The broker a CQL mesh's events go through (its URL and exchange prefix), if any: for a
    /// test that publishes events of its own (a redelivery).
    pub amqp: Option<(String, String)>,
    /// The CQL keyspaces of a CQL mesh, dropped after the mesh.
    keyspaces: Option<twtr_common::cql::testing::KeyspaceSet>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

impl TestMesh {
    /// The whole mesh on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().expect("temp dir"))).await
    }

    /// The whole mesh on a fresh data directory, with `configure` applied to the defaults.
    pub async fn start_configured(configure: impl FnOnce(&mut Config)) -> Self {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::embedded(data_dir.path());
        configure(&mut config);
        Self::start_with(config, data_dir).await
    }

    /// The whole mesh on `data_dir` (e.g. one a previous mesh used).
    pub async fn start_in(data_dir: Arc<TempDir>) -> Self {
        Self::start_with(Config::embedded(data_dir.path()), data_dir).await
    }

    /// The whole mesh as production runs it: the CQL backend (keyspaces of its own, migrated
    /// first) and RabbitMQ (exchange and queues of its own), or `None` when no CQL node answers
    /// outside CI. Without a broker (outside CI only), events go through the in-process bus.
    pub async fn start_cql() -> Option<Self> {
        Self::start_cql_configured(|_| {}).await
    }

    /// [`TestMesh::start_cql`], with `configure` applied to its configuration.
    pub async fn start_cql_configured(configure: impl FnOnce(&mut Config)) -> Option<Self> {
        let nodes = twtr_common::testing::cql_nodes()?;
        let keyspaces = crate::processes::fresh_keyspaces(&nodes).await;
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::embedded(data_dir.path());
        let mut cql = twtr_common::cql::CqlConfig::new(nodes);
        cql.keyspace_prefix = keyspaces.prefix.clone();
        config.storage = twtr::Storage::Cql(cql);
        config.amqp = twtr_common::testing::amqp_url().map(|url| twtr::Amqp {
            url,
            prefix: twtr_common::bus::conformance::unique("twtr-cql"),
            queue_type: twtr_common::bus::QueueType::Quorum,
            queue_expiry: Some(Duration::from_secs(600)),
        });
        configure(&mut config);
        twtr::backends::migrate(&config)
            .await
            .expect("migrate the test keyspaces");
        let amqp = config
            .amqp
            .as_ref()
            .map(|amqp| (amqp.url.clone(), amqp.prefix.clone()));
        let mut mesh = Self::start_with(config, data_dir).await;
        mesh.keyspaces = Some(keyspaces);
        mesh.amqp = amqp;
        Some(mesh)
    }

    /// The whole mesh with `config`, whose files live in `data_dir`.
    pub async fn start_with(config: Config, data_dir: Arc<TempDir>) -> Self {
        let listeners = MeshListeners {
            http: loopback().await,
            users: loopback().await,
            tweets: loopback().await,
            followers: loopback().await,
            feeds: loopback().await,
        };
        let addr = |l: &TcpListener| l.local_addr().expect("local addr");
        let (http, users, tweets, followers, feeds) = (
            addr(&listeners.http),
            addr(&listeners.users),
            addr(&listeners.tweets),
            addr(&listeners.followers),
            addr(&listeners.feeds),
        );
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(twtr::start(config, listeners.into(), shutdown.clone()));
        Self {
            api: Api::new(format!("http://{http}")),
            users,
            tweets,
            followers,
            feeds,
            data_dir,
            amqp: None,
            keyspaces: None,
            shutdown,
            handle: Some(handle),
        }
    }

    /// A token acting as `user_id`, signed with the mesh's own key (what `twtr token` prints):
    /// for calling a service directly as that user.
    pub fn token_for(&self, user_id: &str) -> String {
        let pem = std::fs::read_to_string(self.data_dir.path().join("token_private.pem"))
            .expect("the mesh's signing key");
        let signer = twtr_common::tokens::TokenSigner::from_pem(&pem, Duration::from_secs(600))
            .expect("a signing key");
        signer
            .issue(user_id.parse().expect("a user id"), 0)
            .expect("sign")
            .token
    }

    /// The keyspace prefix of a CQL mesh.
    pub fn keyspaces_prefix(&self) -> Option<&str> {
        self.keyspaces.as_ref().map(|k| k.prefix.as_str())
    }

    /// Shuts the mesh down gracefully and returns its data directory (and drops its CQL
    /// keyspaces, if it had any).
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("mesh task")
                .expect("mesh stopped cleanly");
        }
        Arc::clone(&self.data_dir)
    }
}

impl std::ops::Deref for TestMesh {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    pub fn new(http: String) -> Self {
        Self {
            http,
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let text = response.text().await.expect("HTTP body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, token, None).await
    }

    /// A raw request with a literal JSON body, for malformed input.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A raw request with a literal body, for malformed input.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Signs up and logs in; returns (user id, token).
    pub async fn user(&self, username: &str) -> (String, String) {
        let password = format!("{username}-password");
        let (status, user) = self
            .post(
                "/v1/users",
                None,
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "sign up {username}: {user}");
        let (status, session) = self
            .post(
                "/v1/sessions",
                None,
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "log in {username}: {session}");
        (text(&user["id"]), text(&session["token"]))
    }

    pub async fn follow(&self, token: &str, user_id: &str) {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/users/{user_id}/follow"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "follow: {body}");
    }

    /// Posts a tweet; returns its id.
    pub async fn tweet(&self, token: &str, text_: &str) -> String {
        let (status, tweet) = self
            .post("/v1/tweets", Some(token), json!({ "text": text_ }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "tweet: {tweet}");
        text(&tweet["id"])
    }

    /// Waits until the caller's home feed (first page) holds exactly `expected`, newest first.
    pub async fn await_feed(&self, token: &str, expected: &[&str], what: &str) {
        eventually(what, CONVERGE, || async {
            (self.feed_ids(token).await == expected).then_some(())
        })
        .await;
    }

    /// The tweet ids on the caller's home feed (first page).
    pub async fn feed_ids(&self, token: &str) -> Vec<String> {
        let (status, page) = self.get("/v1/feed", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "feed: {page}");
        ids(&page)
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC request carrying `token` (`authorization: Bearer <token>`), as the gateway forwards
/// a caller's.
pub fn as_user<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("a metadata value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A JSON string's contents (panics on anything else, naming it).
pub fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a JSON string, got {value}"))
        .to_owned()
}

/// The `id`s of a page's items.
pub fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a page, got {page}"))
        .iter()
        .map(|item| text(&item["id"]))
        .collect()
}

/// A process's `/metrics`, as Prometheus scrapes it.
pub async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics text")
}

/// The value of the sample whose line starts with `series` (name and labels), if any.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A bus client on the exchange and queues of `prefix` at the broker `url` (a mesh's
/// `amqp`), connected as an operator's tool would be: for tests that publish beside the mesh's
/// own events or look at its queues.
pub async fn operator_bus(url: &str, prefix: &str) -> RabbitBus {
    let config = RabbitConfig {
        url: url.to_owned(),
        prefix: prefix.to_owned(),
        queue_type: QueueType::Quorum,
        queue_expiry: Some(Duration::from_secs(600)),
        connection_name: "twtr black-box test".into(),
    };
    RabbitBus::connect(config, CONVERGE).await
}

/// Polls `check` until it returns `Some`, or panics after `deadline` saying what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// True if `dir` holds the embedded store files.
pub fn has_store_files(dir: &Path) -> bool {
    [
        "users.redb",
        "tweets.redb",
        "followers.redb",
        "feeds.redb",
        "bus.redb",
    ]
    .iter()
    .all(|f| dir.join(f).exists())
}

/// Generates, for each `name => check`, a test that runs `check(&TestMesh)` on the embedded mesh
/// (`embedded::name`) and one on the CQL mesh (`cql::name`, skipped outside CI when no CQL node
/// answers). The checks live in the invoking module.
macro_rules! on_both_backends {
    ($($name:ident => $check:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let mesh = crate::support::TestMesh::start().await;
                    super::$check(&mesh).await;
                    mesh.stop().await;
                }
            )+
        }
        mod cql {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(mesh) = crate::support::TestMesh::start_cql().await else { return };
                    super::$check(&mesh).await;
                    mesh.stop().await;
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;
