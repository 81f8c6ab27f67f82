//! The mesh as separate `twtr` processes, one per part, talking through a real RabbitMQ broker:
//! the distributed deployment on one machine. Each part gets its own data directory, port 0,
//! JSON logs (collected, so tests can read them) and the shared settings a deployment would give
//! it: the broker URL, a queue prefix unique to the test, one token secret.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use twtr_common::bus::{EventBus as _, RabbitBus};

use crate::support::{Api, CONVERGE, eventually, operator_bus, text};

/// How long a part may take to log its listen address: generous, because a part on CQL and
/// RabbitMQ connects to both, leases a worker number and checks the schema before listening,
/// and CI runs the whole black-box suite in parallel on two cores (30 s was seen to run out).
const START: Duration = Duration::from_secs(90);

/// One running part.
pub struct Part {
    pub name: &'static str,
    /// Kept so the process dies with the test (`kill_on_drop`).
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Every log line it has written so far (JSON, one event per line).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Part {
    /// `kill -9`: no graceful anything.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("reap");
    }

    /// SIGTERM, as a deployment stops a part, and waits for a clean exit.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().expect("still running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(CONVERGE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within {CONVERGE:?}", self.name))
            .expect("reap");
        assert!(status.success(), "{} stopped cleanly: {status}", self.name);
    }

    /// Whether any log line contains every one of `needles`.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    }
}

/// Starts `twtr <command>` with `env`, and waits until it logs where it listens.
pub async fn spawn_part(name: &'static str, command: &str, env: &[(String, String)]) -> Part {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn twtr");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let addr = tokio::time::timeout(START, async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read log")
                .unwrap_or_else(|| panic!("twtr {command} exited before listening"));
            logs.lock().unwrap().push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let message = &event["message"];
            if message == "grpc server listening" || message == "http server listening" {
                break text(&event["addr"]);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("twtr {command} did not listen within {START:?}"));
    // Keep draining the log so the child never blocks on a full pipe.
    let sink = Arc::clone(&logs);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    Part {
        name,
        child,
        addr,
        logs,
    }
}

/// Token key files every cluster of this test process shares (a deployment's Secret): the users
/// service signs with the private key, the gateway verifies with the public one.
pub fn test_keys() -> (String, String) {
    static KEYS: std::sync::OnceLock<(TempDir, String, String)> = std::sync::OnceLock::new();
    let (_, private, public) = KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let (private_pem, public_pem) =
            twtr_common::tokens::generate_key_pair().expect("generate keys");
        let private = dir.path().join("token_private.pem");
        let public = dir.path().join("token_public.pem");
        std::fs::write(&private, private_pem).expect("write key");
        std::fs::write(&public, public_pem).expect("write key");
        (
            dir,
            private.display().to_string(),
            public.display().to_string(),
        )
    });
    (private.clone(), public.clone())
}

/// Runs `twtr migrate` with `env` to completion; returns whether it succeeded and its log.
pub async fn run_migrate(env: &[(String, String)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_twtr"))
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("run twtr migrate");
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), log)
}

/// The environment that puts a part on the CQL cluster `nodes` under keyspace prefix `prefix`.
pub fn cql_env(nodes: &[String], prefix: &str) -> Vec<(String, String)> {
    vec![
        ("TWTR_SCYLLA_NODES".to_owned(), nodes.join(",")),
        ("TWTR_SCYLLA_KEYSPACE_PREFIX".to_owned(), prefix.to_owned()),
    ]
}

/// A keyspace set of the test's own (its prefix unique), dropped when the returned guard is; the
/// first call of the process also sweeps away what finished runs left behind.
pub async fn fresh_keyspaces(nodes: &[String]) -> twtr_common::cql::testing::KeyspaceSet {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let config = twtr_common::cql::CqlConfig::new(nodes.to_vec());
            if let Ok(session) = twtr_common::cql::connect(&config).await {
                twtr_common::cql::testing::drop_stale_keyspaces(&session).await;
            }
        })
        .await;
    twtr_common::cql::testing::KeyspaceSet {
        nodes: nodes.to_vec(),
        prefix: unique_keyspace_prefix(),
        services: twtr::backends::SCHEMAS.iter().map(|s| s.service).collect(),
    }
}

/// A keyspace prefix no other test (or earlier run) uses.
pub fn unique_keyspace_prefix() -> String {
    let name = twtr_common::bus::conformance::unique("bb");
    // `bb-<id>` -> `bb<id>`: keyspace names allow letters, digits and underscores only.
    name.replace('-', "")
}

/// The four services and the gateway, each its own process, on one broker.
pub struct Cluster {
    pub api: Api,
    pub amqp_url: String,
    /// Unique to this cluster: its exchange and queues are `<prefix>.*`.
    pub prefix: String,
    pub users: Part,
    pub tweets: Part,
    pub followers: Part,
    pub feeds: Part,
    /// More replicas of the feeds service, on the same queue (and the same CQL store).
    pub feeds_replicas: Vec<Part>,
    pub gateway: Part,
    /// Parent of every part's data directory.
    root: TempDir,
    extra_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts every part against the broker at `amqp_url`, with `extra_env` on top of the
    /// defaults. The feeds service starts first, as its queue must exist before tweets flow
    /// (every part declares it too, so the order is a courtesy, not a requirement).
    pub async fn start(amqp_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let root = tempfile::tempdir().expect("temp dir");
        let prefix = twtr_common::bus::conformance::unique("twtr-bb");
        Self::start_in(amqp_url, root, prefix, extra_env).await
    }

    /// Starts the cluster on `root` (the parts' data directories) and broker `prefix`, e.g. those
    /// of a cluster that was [`Cluster::stop`]ped.
    pub async fn start_in(
        amqp_url: &str,
        root: TempDir,
        prefix: String,
        extra_env: Vec<(String, String)>,
    ) -> Self {
        let mut cluster_env = Self::base_env(amqp_url, &prefix);
        cluster_env.extend(extra_env.iter().cloned());
        let env = |part: &str, more: &[(&str, String)]| {
            let mut env = cluster_env.clone();
            env.push((
                "TWTR_DATA_DIR".into(),
                root.path().join(part).display().to_string(),
            ));
            env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env
        };
        let feeds = spawn_part("feeds", "feeds", &env("feeds", &[])).await;
        let users = spawn_part("users", "users", &env("users", &[])).await;
        let tweets = spawn_part("tweets", "tweets", &env("tweets", &[])).await;
        let url = |part: &Part| format!("http://{}", part.addr);
        let followers = spawn_part(
            "followers",
            "followers",
            &env("followers", &[("TWTR_USERS_URL", url(&users))]),
        )
        .await;
        let gateway = spawn_part(
            "gateway",
            "gateway",
            &env(
                "gateway",
                &[
                    ("TWTR_USERS_URL", url(&users)),
                    ("TWTR_TWEETS_URL", url(&tweets)),
                    ("TWTR_FOLLOWERS_URL", url(&followers)),
                    ("TWTR_FEEDS_URL", url(&feeds)),
                ],
            ),
        )
        .await;
        let cluster = Self {
            api: Api::new(format!("http://{}", gateway.addr)),
            amqp_url: amqp_url.to_owned(),
            prefix,
            users,
            tweets,
            followers,
            feeds,
            feeds_replicas: Vec::new(),
            gateway,
            root,
            extra_env,
        };
        cluster.await_ready().await;
        cluster
    }

    pub(crate) fn base_env(amqp_url: &str, prefix: &str) -> Vec<(String, String)> {
        let (private, public) = test_keys();
        [
            ("TWTR_TOKEN_PRIVATE_KEY", private.as_str()),
            ("TWTR_TOKEN_PUBLIC_KEYS", public.as_str()),
            ("TWTR_AMQP_URL", amqp_url),
            ("TWTR_AMQP_PREFIX", prefix),
            // The test's queues go away on their own once it is over.
            ("TWTR_AMQP_QUEUE_EXPIRY_SECS", "600"),
            ("TWTR_EVENT_RETRY_DELAY_MS", "200"),
            ("TWTR_LOG_FORMAT", "json"),
            ("TWTR_LOG", "info,twtr_feeds=debug"),
            ("TWTR_HTTP_ADDR", "127.0.0.1:0"),
            ("TWTR_USERS_ADDR", "127.0.0.1:0"),
            ("TWTR_TWEETS_ADDR", "127.0.0.1:0"),
            ("TWTR_FOLLOWERS_ADDR", "127.0.0.1:0"),
            ("TWTR_FEEDS_ADDR", "127.0.0.1:0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// Waits until the gateway reports every service healthy (ready, connected to the broker).
    pub async fn await_ready(&self) {
        eventually("every part to be healthy", CONVERGE, || async {
            let (status, _) = self.api.get("/health/details", None).await;
            status.is_success().then_some(())
        })
        .await;
    }

    /// Stops every part gracefully (SIGTERM, gateway first) and hands back what a restart needs:
    /// the data directories, the broker prefix and the extra environment.
    pub async fn stop(mut self) -> (TempDir, String, Vec<(String, String)>) {
        self.gateway.terminate().await;
        for replica in &mut self.feeds_replicas {
            replica.terminate().await;
        }
        for part in [
            &mut self.feeds,
            &mut self.followers,
            &mut self.tweets,
            &mut self.users,
        ] {
            part.terminate().await;
        }
        (self.root, self.prefix, self.extra_env)
    }

    /// Starts one more feeds process on the same queue: a competing consumer. (With the embedded
    /// store it would have rows of its own; give the cluster a CQL store to share.)
    pub async fn add_feeds_replica(&mut self) -> &Part {
        let n = self.feeds_replicas.len() + 2;
        let mut env = Self::base_env(&self.amqp_url, &self.prefix);
        env.extend(self.extra_env.iter().cloned());
        env.push((
            "TWTR_DATA_DIR".into(),
            self.root
                .path()
                .join(format!("feeds{n}"))
                .display()
                .to_string(),
        ));
        let replica = spawn_part("feeds replica", "feeds", &env).await;
        self.feeds_replicas.push(replica);
        self.feeds_replicas.last().expect("just pushed")
    }

    /// Starts one more gateway, whose feeds service is the one at `feeds` (`host:port`): a
    /// second edge replica, as behind a load balancer.
    pub async fn add_gateway(&self, feeds: &str) -> Part {
        let mut env = Self::base_env(&self.amqp_url, &self.prefix);
        env.extend(self.extra_env.iter().cloned());
        let url = |part: &Part| format!("http://{}", part.addr);
        env.extend([
            (
                "TWTR_DATA_DIR".into(),
                self.root.path().join("gateway2").display().to_string(),
            ),
            ("TWTR_USERS_URL".into(), url(&self.users)),
            ("TWTR_TWEETS_URL".into(), url(&self.tweets)),
            ("TWTR_FOLLOWERS_URL".into(), url(&self.followers)),
            ("TWTR_FEEDS_URL".into(), format!("http://{feeds}")),
        ]);
        spawn_part("gateway 2", "gateway", &env).await
    }

    /// Starts the feeds service again on its data directory and its old address (so the
    /// gateway, which knows that address, reaches it), after [`Part::kill`].
    pub async fn restart_feeds(&mut self) {
        let mut env = Self::base_env(&self.amqp_url, &self.prefix);
        env.extend(self.extra_env.iter().cloned());
        env.push((
            "TWTR_DATA_DIR".into(),
            self.root.path().join("feeds").display().to_string(),
        ));
        env.push(("TWTR_FEEDS_ADDR".into(), self.feeds.addr.clone()));
        self.feeds = spawn_part("feeds", "feeds", &env).await;
    }

    /// A bus client on this cluster's exchange and queues, for looking at them as an operator.
    pub async fn broker(&self) -> RabbitBus {
        let bus = operator_bus(&self.amqp_url, &self.prefix).await;
        assert!(bus.readiness().is_ready(), "the test reaches the broker");
        bus
    }
}

/// A RabbitMQ node of the test's own (its own port, data and Erlang node name), so a test can
/// stop and start a broker without touching the one other tests share.
pub struct PrivateBroker {
    node: String,
    pub port: u16,
    _dir: TempDir,
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let node = format!("twtrtest{}@localhost", std::process::id());
        // The broker runs as the `rabbitmq` user on Debian: let it write here.
        std::fs::write(dir.path().join("enabled_plugins"), "[].").expect("plugins file");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .status()
            .await
            .expect("run rabbitmq-server (scripts/rabbitmq.sh installs it)");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let broker = Self {
            node,
            port,
            _dir: dir,
        };
        broker.await_port(true).await;
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the broker (the `rabbit` application: connections drop, the port closes).
    pub async fn stop(&self) {
        self.ctl("stop_app").await;
        self.await_port(false).await;
    }

    pub async fn resume(&self) {
        self.ctl("start_app").await;
        self.await_port(true).await;
    }

    async fn ctl(&self, command: &str) {
        let status = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "-q", command])
            .status()
            .await
            .expect("run rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {command} failed");
    }

    async fn await_port(&self, open: bool) {
        let port = self.port;
        eventually(
            "the private broker's port",
            Duration::from_secs(60),
            || async move {
                let answers = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok();
                (answers == open).then_some(())
            },
        )
        .await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Stop the whole node (not just the app); best effort, and quick.
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "-q", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Cassandra node of the test's own (its own ports and data, the jars `scripts/cassandra.sh`
/// resolved for the shared node), so a test can stop and start it without touching the node
/// other tests share. Started and stopped by `scripts/cassandra.sh`, as an operator would.
pub struct PrivateCassandra {
    pub port: u16,
    dir: TempDir,
    storage_port: u16,
}

impl PrivateCassandra {
    /// Starts a fresh node (about 15 s once the jars are resolved).
    pub async fn start() -> Self {
        let node = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            storage_port: free_port(),
        };
        node.script("start").await;
        node
    }

    pub fn nodes(&self) -> Vec<String> {
        vec![format!("127.0.0.1:{}", self.port)]
    }

    /// Stops the node (SIGTERM: it drains, then exits).
    pub async fn stop(&self) {
        self.script("stop").await;
    }

    /// Starts the stopped node again on its data.
    pub async fn resume(&self) {
        self.script("start").await;
    }

    /// Runs `scripts/cassandra.sh command` for this node. A start is tried up to five times,
    /// a little later each time: a JVM that dies during start-up (seen right after a stop, with
    /// builds running beside the suite: it printed the JDK's start-up warnings and exited
    /// without a word in its log) is the harness's failure, not the outage's under test.
    async fn script(&self, command: &str) {
        let repo = env!("CARGO_MANIFEST_DIR");
        let attempts = if command == "start" { 5 } else { 1 };
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_secs(2 * (attempt - 1))).await;
            }
            let status = Command::new(format!("{repo}/scripts/cassandra.sh"))
                .arg(command)
                .env("TWTR_CASSANDRA_DIR", self.dir.path())
                .env("TWTR_CASSANDRA_LIB_DIR", format!("{repo}/.cassandra/lib"))
                .env("TWTR_CASSANDRA_PORT", self.port.to_string())
                .env("TWTR_CASSANDRA_STORAGE_PORT", self.storage_port.to_string())
                .env("TWTR_CASSANDRA_HEAP", "1g")
                .status()
                .await
                .expect("run scripts/cassandra.sh");
            if status.success() {
                return;
            }
            eprintln!("scripts/cassandra.sh {command} failed (attempt {attempt} of {attempts})");
        }
        panic!("scripts/cassandra.sh {command} failed");
    }
}

impl Drop for PrivateCassandra {
    fn drop(&mut self) {
        // Best effort: the node must not outlive the test.
        let repo = env!("CARGO_MANIFEST_DIR");
        let _ = std::process::Command::new(format!("{repo}/scripts/cassandra.sh"))
            .arg("stop")
            .env("TWTR_CASSANDRA_DIR", self.dir.path())
            .env("TWTR_CASSANDRA_LIB_DIR", format!("{repo}/.cassandra/lib"))
            .env("TWTR_CASSANDRA_PORT", self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
