//! The `twtr` binary's library: command line, configuration, and the one startup path.
//!
//! # Layout
//!
//! - [`Cli`]: flags, each with a `TWTR_*` environment variable; it only parses, into a
//!   [`Config`], which holds everything configurable (addresses and URLs included).
//! - [`backends`]: the one place where configuration picks the storage and event-bus backends.
//! - [`run`]: what a subcommand asks for. The serving ones (`all`, `gateway`, `users`, ...) all
//!   go through [`start`], which runs any subset of the five [`Part`]s in one process: `twtr
//!   all` is all five (what `cargo run` and the black-box tests use), `twtr tweets` one. Each
//!   service is a real gRPC server on its own listener, and the gateway calls the services over
//!   gRPC whether they run in its process or elsewhere: a part that runs here is reached at its
//!   listener, the others at their configured URLs.
//! - The operator commands that run and exit: `migrate`, `token`, `events` (dead letters),
//!   `backup` / `restore` (the embedded store, `backup.rs`), `export` / `import` (the CQL
//!   keyspaces, `export.rs`), `seed` / `bench`.
//!
//! # Shutdown
//!
//! SIGINT or SIGTERM cancels one token. The gateway drains first (so requests in flight can
//! still reach the services of its process), then the services: health goes NOT_SERVING,
//! requests drain, consumers settle what they hold, outboxes flush (see
//! `twtr_common::runtime`).

pub mod backends;
mod backup;
mod cli;
mod edge;
mod events;
mod export;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use twtr_common::bus::{ConsumerSettings, QueueType};
use twtr_common::cql::CqlConfig;
use twtr_common::runtime::ServiceRuntime;
use twtr_common::telemetry::{self, LogFormat};
use twtr_common::tls::{MeshTls, TlsFiles};
use twtr_feeds::FeedLimits;
use twtr_gateway::UpstreamUrls;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

pub use cli::{Cli, Command};

use crate::backends::Deployment;

/// Storage engine behind every service's store trait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// redb files under this directory.
    Embedded { data_dir: PathBuf },
    /// A ScyllaDB or Cassandra cluster (`TWTR_SCYLLA_NODES`).
    Cql(CqlConfig),
}

impl Storage {
    /// How many deliveries a consumer on this store holds at once unless `TWTR_EVENT_PREFETCH`
    /// says otherwise (see [`ConsumerSettings::EMBEDDED_PREFETCH`]).
    pub fn default_prefetch(&self) -> u16 {
        match self {
            Self::Embedded { .. } => ConsumerSettings::EMBEDDED_PREFETCH,
            Self::Cql(_) => ConsumerSettings::CQL_PREFETCH,
        }
    }
}

/// Everything configurable, after defaults, environment and flags are applied.
#[derive(Clone)]
pub struct Config {
    pub storage: Storage,
    /// Where embedded files (store, in-process bus, generated token secret) live.
    pub data_dir: PathBuf,
    /// The RabbitMQ broker; `None` means the in-process bus.
    pub amqp: Option<Amqp>,
    /// How consumers take their deliveries (prefetch, retry delay, attempts).
    pub consumer: ConsumerSettings,
    /// PEM file of the token signing key (users service); `None` in `all` means generate a key
    /// pair into the data directory.
    pub token_private_key: Option<PathBuf>,
    /// PEM files of the token verification keys (gateway).
    pub token_public_keys: Vec<PathBuf>,
    pub token_ttl: Duration,
    /// This process's Snowflake worker number; `None` means derive one.
    pub worker_id: Option<u16>,
    pub feed_limits: FeedLimits,
    /// How live feeds (`WatchFeed`) read and wait.
    pub live_feed: twtr_feeds::live::LiveSettings,
    /// Authors with more followers than this are merged into feeds at read time.
    pub celebrity_threshold: Option<usize>,
    /// How long an `Idempotency-Key` keeps returning its first tweet.
    pub idempotency_window: Duration,
    /// The gateway's limits: body size, deadline, concurrency, rate limits, CORS.
    pub edge: twtr_gateway::EdgeLimits,
    /// Mutual TLS between the parts; `None`: plaintext gRPC.
    pub grpc_tls: Option<GrpcTls>,
    /// Where this process serves Prometheus metrics, besides the gateway's `/metrics`.
    pub metrics_addr: Option<String>,
    /// Where traces are exported (OTLP over gRPC); `None`: not exported.
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    /// Where each part listens (port 0: any free port).
    pub listen: ListenAddrs,
    /// Where callers reach each service that runs elsewhere; `None`: at its listen address.
    pub urls: ServiceUrls,
}

/// Where each part listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs {
    pub http: String,
    pub users: String,
    pub tweets: String,
    pub followers: String,
    pub feeds: String,
}

impl Default for ListenAddrs {
    /// The gateway on 8080, the services on 50051..50054, all on loopback.
    fn default() -> Self {
        Self {
            http: "127.0.0.1:8080".into(),
            users: "127.0.0.1:50051".into(),
            tweets: "127.0.0.1:50052".into(),
            followers: "127.0.0.1:50053".into(),
            feeds: "127.0.0.1:50054".into(),
        }
    }
}

/// Where callers reach each service (a URL such as `http://feeds.twtr.svc:50054`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceUrls {
    pub users: Option<String>,
    pub tweets: Option<String>,
    pub followers: Option<String>,
    pub feeds: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("storage", &self.storage)
            .field("data_dir", &self.data_dir)
            .field("amqp", &self.amqp)
            .field("consumer", &self.consumer)
            .field("token_private_key", &self.token_private_key)
            .field("token_public_keys", &self.token_public_keys)
            .field("token_ttl", &self.token_ttl)
            .field("worker_id", &self.worker_id)
            .field("feed_limits", &self.feed_limits)
            .field("live_feed", &self.live_feed)
            .field("celebrity_threshold", &self.celebrity_threshold)
            .field("idempotency_window", &self.idempotency_window)
            .field("edge", &self.edge)
            .field("grpc_tls", &self.grpc_tls)
            .field("metrics_addr", &self.metrics_addr)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("listen", &self.listen)
            .field("urls", &self.urls)
            .finish()
    }
}

impl Config {
    /// The all-in-one defaults on `data_dir`: embedded store, in-process bus.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let storage = Storage::Embedded {
            data_dir: data_dir.clone(),
        };
        Self {
            consumer: ConsumerSettings {
                prefetch: storage.default_prefetch(),
                ..ConsumerSettings::default()
            },
            storage,
            data_dir,
            amqp: None,
            token_private_key: None,
            token_public_keys: Vec::new(),
            token_ttl: Duration::from_secs(24 * 3600),
            worker_id: None,
            feed_limits: FeedLimits::default(),
            live_feed: twtr_feeds::live::LiveSettings::default(),
            celebrity_threshold: Some(twtr_feeds::DEFAULT_CELEBRITY_THRESHOLD),
            idempotency_window: twtr_tweets::DEFAULT_IDEMPOTENCY_WINDOW,
            edge: twtr_gateway::EdgeLimits::default(),
            grpc_tls: None,
            metrics_addr: None,
            otlp_endpoint: None,
            log_format: LogFormat::Text,
            listen: ListenAddrs::default(),
            urls: ServiceUrls::default(),
        }
    }

    /// Where callers reach each service: its configured URL, else its listen address (a
    /// wildcard address reached on loopback).
    pub fn service_urls(&self) -> UpstreamUrls {
        let url = |configured: &Option<String>, listen: &str| {
            configured
                .clone()
                .unwrap_or_else(|| format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1")))
        };
        UpstreamUrls {
            users: url(&self.urls.users, &self.listen.users),
            tweets: url(&self.urls.tweets, &self.listen.tweets),
            followers: url(&self.urls.followers, &self.listen.followers),
            feeds: url(&self.urls.feeds, &self.listen.feeds),
        }
    }
}

/// Mutual TLS between the parts: the files, and how peers are named (see `twtr_common::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    pub files: TlsFiles,
    /// Checked against servers' certificates instead of each service URL's host.
    pub server_name: Option<String>,
    /// Names that make a client certificate a twtr part's; empty: the default list.
    pub service_names: Vec<String>,
}

impl GrpcTls {
    /// Reads and checks the files.
    pub fn load(&self) -> anyhow::Result<MeshTls> {
        MeshTls::load(
            &self.files,
            self.server_name.clone(),
            self.service_names.clone(),
        )
    }
}

impl Config {
    /// Mutual TLS, loaded, when it is configured.
    pub fn mesh_tls(&self) -> anyhow::Result<Option<MeshTls>> {
        self.grpc_tls.as_ref().map(GrpcTls::load).transpose()
    }
}

/// Where the RabbitMQ event bus is and how its queues are named and made.
#[derive(Clone, PartialEq, Eq)]
pub struct Amqp {
    /// Holds the broker password: never in `Debug` output.
    pub url: String,
    pub prefix: String,
    pub queue_type: QueueType,
    pub queue_expiry: Option<Duration>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("queue_type", &self.queue_type)
            .field("queue_expiry", &self.queue_expiry)
            .finish()
    }
}

/// One of the five parts of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Gateway,
    Users,
    Tweets,
    Followers,
    Feeds,
}

impl Part {
    /// Every part: what `twtr all` runs.
    pub const ALL: [Part; 5] = [
        Part::Gateway,
        Part::Users,
        Part::Tweets,
        Part::Followers,
        Part::Feeds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Users => "users",
            Self::Tweets => "tweets",
            Self::Followers => "followers",
            Self::Feeds => "feeds",
        }
    }
}

/// The listeners of the whole mesh, bound by the caller (port 0 is fine).
#[derive(Debug)]
pub struct MeshListeners {
    pub http: TcpListener,
    pub users: TcpListener,
    pub tweets: TcpListener,
    pub followers: TcpListener,
    pub feeds: TcpListener,
}

/// A listener for each part this process runs: [`start`] runs exactly these parts.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub users: Option<TcpListener>,
    pub tweets: Option<TcpListener>,
    pub followers: Option<TcpListener>,
    pub feeds: Option<TcpListener>,
}

impl From<MeshListeners> for Listeners {
    fn from(mesh: MeshListeners) -> Self {
        Self {
            http: Some(mesh.http),
            users: Some(mesh.users),
            tweets: Some(mesh.tweets),
            followers: Some(mesh.followers),
            feeds: Some(mesh.feeds),
        }
    }
}

impl Listeners {
    /// Binds each of `parts` on its configured address.
    pub async fn bind(config: &Config, parts: &[Part]) -> anyhow::Result<Self> {
        let mut listeners = Self::default();
        for part in parts {
            let (slot, addr) = match part {
                Part::Gateway => (&mut listeners.http, &config.listen.http),
                Part::Users => (&mut listeners.users, &config.listen.users),
                Part::Tweets => (&mut listeners.tweets, &config.listen.tweets),
                Part::Followers => (&mut listeners.followers, &config.listen.followers),
                Part::Feeds => (&mut listeners.feeds, &config.listen.feeds),
            };
            *slot = Some(bind(part.name(), addr).await?);
        }
        Ok(listeners)
    }

    /// The parts these listeners are for.
    pub fn parts(&self) -> Vec<Part> {
        let present = [
            (Part::Gateway, self.http.is_some()),
            (Part::Users, self.users.is_some()),
            (Part::Tweets, self.tweets.is_some()),
            (Part::Followers, self.followers.is_some()),
            (Part::Feeds, self.feeds.is_some()),
        ];
        present
            .into_iter()
            .filter_map(|(part, here)| here.then_some(part))
            .collect()
    }
}

/// Binds `addr`, saying which listener failed if it cannot.
pub async fn bind(name: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind the {name} listener on {addr}"))
}

/// The URL a client in this process uses to reach `listener`.
fn local_url(listener: &TcpListener) -> anyhow::Result<String> {
    let mut addr: SocketAddr = listener
        .local_addr()
        .context("failed to read a listen address")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{addr}"))
}

/// Loads the config file named by `--config <file>` (or `--config=<file>`) in `args`, else by
/// `TWTR_CONFIG`: lines of `TWTR_NAME=value`, as in a `.env` file. A variable already set in the
/// environment wins over the file, and a flag wins over both, so the precedence is defaults,
/// then file, then environment, then flags. Call it before any other thread starts.
pub fn load_config_file(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> anyhow::Result<Option<PathBuf>> {
    let mut args = args.into_iter();
    let mut path = None;
    while let Some(arg) = args.next() {
        if arg == "--config" {
            path = args.next().map(PathBuf::from);
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            path = Some(PathBuf::from(value));
        }
    }
    let path = path.or_else(|| std::env::var_os("TWTR_CONFIG").map(PathBuf::from));
    if let Some(path) = &path {
        dotenvy::from_path(path)
            .with_context(|| format!("failed to load the config file {}", path.display()))?;
    }
    Ok(path)
}

/// Runs what the command line asks for until SIGINT/SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config()?;
    let command = cli.command.clone().unwrap_or(Command::All);
    if let Command::Token(args) = command {
        // Nothing but the token on stdout, so `$(twtr token ...)` works.
        return print_token(&config, args);
    }
    let parts: &[Part] = match command {
        Command::All => &Part::ALL,
        Command::Gateway => &[Part::Gateway],
        Command::Users => &[Part::Users],
        Command::Tweets => &[Part::Tweets],
        Command::Followers => &[Part::Followers],
        Command::Feeds => &[Part::Feeds],
        _ => &[],
    };
    let service = match parts {
        [one] => format!("twtr-{}", one.name()),
        _ => "twtr".to_owned(),
    };
    let telemetry = telemetry::init(config.log_format, &service, config.otlp_endpoint.as_deref())?;
    let ran = match command {
        Command::Token(_) => Ok(()),
        Command::Seed(args) => twtr_bench::seed(args).await,
        Command::Bench { command } => twtr_bench::bench(command).await,
        Command::Events(args) => match config.mesh_tls() {
            Ok(tls) => events::run(args, &config.service_urls(), tls.as_ref()).await,
            Err(err) => Err(err),
        },
        Command::Migrate => backends::migrate(&config).await,
        Command::Backup(args) => match config.mesh_tls() {
            Ok(tls) => {
                let url = args
                    .url
                    .clone()
                    .unwrap_or_else(|| config.service_urls().users);
                backup::backup(args, &url, tls.as_ref()).await
            }
            Err(err) => Err(err),
        },
        Command::Restore(args) => backup::restore(&args, &config.data_dir),
        Command::Export(args) => match &config.storage {
            Storage::Cql(cql) => export::export(args, cql, &backends::SCHEMAS).await,
            Storage::Embedded { .. } => Err(anyhow::anyhow!(
                "export reads CQL keyspaces: set TWTR_SCYLLA_NODES (for the embedded store, \
                 use `twtr backup`)"
            )),
        },
        Command::Import(args) => match &config.storage {
            Storage::Cql(cql) => export::import(args, cql, &backends::SCHEMAS).await,
            Storage::Embedded { .. } => Err(anyhow::anyhow!(
                "import writes CQL keyspaces: set TWTR_SCYLLA_NODES (for the embedded store, \
                 use `twtr restore`)"
            )),
        },
        Command::All
        | Command::Gateway
        | Command::Users
        | Command::Tweets
        | Command::Followers
        | Command::Feeds => serve(config, parts).await,
    };
    telemetry.shutdown().await;
    ran
}

/// Binds the listeners of `parts` (and the metrics listener, if configured) and runs them
/// until SIGINT/SIGTERM.
async fn serve(config: Config, parts: &[Part]) -> anyhow::Result<()> {
    let shutdown = twtr_common::shutdown::on_signal();
    if let Some(addr) = &config.metrics_addr {
        let listener = bind("metrics", addr).await?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = twtr_common::metrics::serve(listener, stop).await {
                tracing::error!(error = format!("{err:#}"), "metrics server stopped");
            }
        });
    }
    let listeners = Listeners::bind(&config, parts).await?;
    start(config, listeners, shutdown).await
}

/// `twtr token`: a token acting as a user, signed with the configured key (or the all-in-one
/// mesh's, which must exist already).
fn print_token(config: &Config, args: edge::TokenArgs) -> anyhow::Result<()> {
    let local = config.data_dir.join("token_private.pem");
    anyhow::ensure!(
        config.token_private_key.is_some() || local.exists(),
        "no signing key: set TWTR_TOKEN_PRIVATE_KEY, or TWTR_DATA_DIR to the data directory of \
         an all-in-one mesh that has run (it holds token_private.pem)"
    );
    let mut config = config.clone();
    config.token_ttl = Duration::from_secs(args.ttl);
    let signer = backends::token_signer(&config, Deployment::AllInOne)?;
    let issued = signer
        .issue(args.user, 0)
        .context("failed to sign the token")?;
    println!("{}", issued.token);
    Ok(())
}

type PartResult = (Part, anyhow::Result<()>);

/// The error of a finished part, if it failed or panicked.
fn failure(ended: Result<PartResult, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match ended {
        Ok((_, Ok(()))) => None,
        Ok((part, Err(err))) => Some(err.context(format!("the {} failed", part.name()))),
        Err(join) => Some(anyhow::Error::new(join).context("a part of the mesh panicked")),
    }
}

/// Runs the parts `listeners` are for, in this process, until `shutdown` (or until one of them
/// fails, which brings the others down too). The one startup path: `twtr all`, each `twtr
/// <part>`, and the black-box tests.
///
/// Every service of this process is built (its consumer queue declared) before any part
/// starts, so no event published here misses a consumer here. A service that runs here is
/// reached at its listener; the others at their configured URLs.
pub async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let parts = listeners.parts();
    anyhow::ensure!(!parts.is_empty(), "no part of the mesh to run");
    let deployment = if parts.len() == Part::ALL.len() {
        Deployment::AllInOne
    } else {
        Deployment::Split
    };
    let mut urls = config.service_urls();
    for (listener, url) in [
        (&listeners.users, &mut urls.users),
        (&listeners.tweets, &mut urls.tweets),
        (&listeners.followers, &mut urls.followers),
        (&listeners.feeds, &mut urls.feeds),
    ] {
        if let Some(listener) = listener {
            *url = local_url(listener)?;
        }
    }
    let verifier = backends::token_verifier(&config, deployment)?;
    let tls = config.mesh_tls()?;
    let mut services = Services::build(
        &config,
        &listeners,
        &urls,
        &verifier,
        tls.as_ref(),
        deployment,
    )
    .await?;
    tracing::info!(
        parts = ?parts.iter().map(|p| p.name()).collect::<Vec<_>>(),
        http = %listeners.http.as_ref().map(local_url).transpose()?.unwrap_or_default(),
        users = %urls.users, tweets = %urls.tweets, followers = %urls.followers,
        feeds = %urls.feeds, grpc_tls = tls.is_some(),
        "twtr mesh starting"
    );

    // The services stop only after the gateway has drained.
    let services_stop = CancellationToken::new();
    let mut running: JoinSet<PartResult> = JoinSet::new();
    let Listeners {
        http,
        users,
        tweets,
        followers,
        feeds,
    } = listeners;
    for (part, listener) in [
        (Part::Users, users),
        (Part::Tweets, tweets),
        (Part::Followers, followers),
        (Part::Feeds, feeds),
    ] {
        if let Some(listener) = listener
            && let Some(service) = services.take(part)
        {
            let stop = services_stop.clone();
            running.spawn(async move { (part, service(listener, stop).await) });
        }
    }
    let mut gateway = http.map(|listener| {
        let deps = twtr_gateway::GatewayDeps {
            upstreams: urls.clone(),
            grpc_tls: tls.clone(),
            tokens: verifier.clone(),
            limits: config.edge.clone(),
            metrics_on_http_port: config.metrics_addr.is_none(),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            (
                Part::Gateway,
                twtr_gateway::serve(deps, listener, stop).await,
            )
        })
    });

    let mut first_error: Option<anyhow::Error> = None;
    let mut gateway_ended = None;
    {
        let gateway_done = async {
            match gateway.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(gateway_done);
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(ended) = running.join_next() => {
                // A service ended on its own: that is a failure, whatever it returned.
                let error = failure(ended)
                    .unwrap_or_else(|| anyhow::anyhow!("a service stopped unexpectedly"));
                tracing::error!(error = format!("{error:#}"), "shutting the mesh down");
                first_error = Some(error);
                shutdown.cancel();
            }
            ended = &mut gateway_done => {
                // The gateway also stops on the shutdown signal, and may be done draining by
                // the time this select looks: then it ended as asked.
                let error = failure(ended).or_else(|| {
                    (!shutdown.is_cancelled())
                        .then(|| anyhow::anyhow!("the gateway stopped unexpectedly"))
                });
                if let Some(error) = error {
                    tracing::error!(error = format!("{error:#}"), "shutting the mesh down");
                    first_error = Some(error);
                }
                gateway_ended = Some(());
                shutdown.cancel();
            }
        }
    }
    if let (Some(gateway), None) = (gateway, gateway_ended)
        && let Some(error) = failure(gateway.await)
    {
        first_error.get_or_insert(error);
    }
    services_stop.cancel();
    while let Some(ended) = running.join_next().await {
        if let Some(error) = failure(ended) {
            first_error.get_or_insert(error);
        }
    }
    tracing::info!("twtr stopped");
    first_error.map_or(Ok(()), Err)
}

/// `runtime`, serving backups of the data directory when the store is embedded.
fn backups<S>(runtime: ServiceRuntime<S>, config: &Config) -> ServiceRuntime<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    match &config.storage {
        Storage::Embedded { data_dir } => runtime.serving_backups(data_dir.clone()),
        Storage::Cql(_) => runtime,
    }
}

/// A built service: runs on its listener until its stop token.
type RunService = Box<
    dyn FnOnce(TcpListener, CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send,
>;

/// The services of this process, built (their queues declared) and ready to run.
struct Services(std::collections::BTreeMap<Part, RunService>);

impl Services {
    async fn build(
        config: &Config,
        listeners: &Listeners,
        urls: &UpstreamUrls,
        verifier: &twtr_common::tokens::TokenVerifier,
        tls: Option<&MeshTls>,
        deployment: Deployment,
    ) -> anyhow::Result<Self> {
        let mut built: std::collections::BTreeMap<Part, RunService> = Default::default();
        let here = |l: &Option<TcpListener>| l.is_some();
        if !(here(&listeners.users)
            || here(&listeners.tweets)
            || here(&listeners.followers)
            || here(&listeners.feeds))
        {
            return Ok(Self(built));
        }
        let storage = backends::storage(config).await?;
        let events = backends::event_bus(config, deployment).await?;
        let ids = backends::id_generator(config, &events, deployment).await?;
        let bus = events.bus;
        // The consumers first: their queues exist before anything here can publish.
        if here(&listeners.feeds) {
            let runtime = twtr_feeds::runtime(twtr_feeds::FeedsDeps {
                store: storage.feed_store(config.feed_limits).await?,
                bus: Arc::clone(&bus),
                consumer: config.consumer,
                celebrity_threshold: config.celebrity_threshold,
                live: config.live_feed,
                verifier: verifier.clone(),
            })
            .await?;
            let runtime = backups(runtime.with_tls(tls.cloned()), config);
            built.insert(
                Part::Feeds,
                Box::new(|l, stop| Box::pin(runtime.run(l, stop))),
            );
        }
        if here(&listeners.tweets) {
            let runtime = twtr_tweets::runtime(twtr_tweets::TweetsDeps {
                store: storage.tweet_store(Arc::clone(&ids)).await?,
                bus: Arc::clone(&bus),
                ids: Arc::clone(&ids),
                consumer: config.consumer,
                idempotency_window: config.idempotency_window,
                verifier: verifier.clone(),
            })
            .await?;
            let runtime = backups(runtime.with_tls(tls.cloned()), config);
            built.insert(
                Part::Tweets,
                Box::new(|l, stop| Box::pin(runtime.run(l, stop))),
            );
        }
        if here(&listeners.followers) {
            let users = UsersServiceClient::new(twtr_common::client::channel(&urls.users, tls)?);
            let runtime = twtr_followers::runtime(twtr_followers::FollowersDeps {
                store: storage.follow_store(Arc::clone(&ids)).await?,
                bus: Arc::clone(&bus),
                ids: Arc::clone(&ids),
                users: Arc::new(users),
                consumer: config.consumer,
                verifier: verifier.clone(),
            })
            .await?;
            let runtime = backups(runtime.with_tls(tls.cloned()), config);
            built.insert(
                Part::Followers,
                Box::new(|l, stop| Box::pin(runtime.run(l, stop))),
            );
        }
        if here(&listeners.users) {
            let runtime = twtr_users::runtime(twtr_users::UsersDeps {
                store: storage.user_store(Arc::clone(&ids)).await?,
                bus: Arc::clone(&bus),
                ids: Arc::clone(&ids),
                tokens: backends::token_signer(config, deployment)?,
                verifier: verifier.clone(),
            })?;
            let runtime = backups(runtime.with_tls(tls.cloned()), config);
            built.insert(
                Part::Users,
                Box::new(|l, stop| Box::pin(runtime.run(l, stop))),
            );
        }
        Ok(Self(built))
    }

    fn take(&mut self, part: Part) -> Option<RunService> {
        self.0.remove(&part)
    }
}
