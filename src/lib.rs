//! The `twtr` binary's library: command line, configuration, and the one startup path.
//!
//! # Layout
//!
//! - [`Cli`]: flags, each with a `TWTR_*` environment variable, turned into a [`Config`].
//! - [`backends`]: the one place where configuration picks the storage and event-bus backends.
//! - [`run`]: starts what the subcommand names; [`run_all`] starts the whole mesh in one process
//!   (what `cargo run` and the black-box tests use), each service still a real gRPC server on
//!   its own listener and the gateway calling them over gRPC.
//!
//! # Shutdown
//!
//! SIGINT or SIGTERM cancels one token. In `all`, the gateway drains first (so requests in
//! flight can still reach the services), then the services: health goes NOT_SERVING, requests
//! drain, consumers settle what they hold, outboxes flush.

pub mod backends;
mod cli;
mod edge;
mod events;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use twtr_common::auth;
use twtr_common::bus::{ConsumerSettings, QueueType};
use twtr_common::cql::CqlConfig;
use twtr_common::telemetry::{self, LogFormat};
use twtr_feeds::FeedLimits;
use twtr_gateway::UpstreamUrls;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

pub use cli::{Cli, Command};

use crate::backends::Part;

/// Storage engine behind every service's store trait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// redb files under this directory.
    Embedded { data_dir: PathBuf },
    /// A ScyllaDB or Cassandra cluster (`TWTR_SCYLLA_NODES`).
    Cql(CqlConfig),
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
    /// Authors with more followers than this are merged into feeds at read time.
    pub celebrity_threshold: Option<usize>,
    /// How long an `Idempotency-Key` keeps returning its first tweet.
    pub idempotency_window: Duration,
    /// The gateway's limits: body size, deadline, concurrency, rate limits, CORS.
    pub edge: twtr_gateway::EdgeLimits,
    /// Where this process serves Prometheus metrics, besides the gateway's `/metrics`.
    pub metrics_addr: Option<String>,
    /// Where traces are exported (OTLP over gRPC); `None`: not exported.
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
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
            .field("celebrity_threshold", &self.celebrity_threshold)
            .field("idempotency_window", &self.idempotency_window)
            .field("edge", &self.edge)
            .field("metrics_addr", &self.metrics_addr)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .finish()
    }
}

impl Config {
    /// The all-in-one defaults on `data_dir`: embedded store, in-process bus.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            storage: Storage::Embedded {
                data_dir: data_dir.clone(),
            },
            data_dir,
            amqp: None,
            consumer: ConsumerSettings::default(),
            token_private_key: None,
            token_public_keys: Vec::new(),
            token_ttl: Duration::from_secs(24 * 3600),
            worker_id: None,
            feed_limits: FeedLimits::default(),
            celebrity_threshold: Some(twtr_feeds::DEFAULT_CELEBRITY_THRESHOLD),
            idempotency_window: twtr_tweets::DEFAULT_IDEMPOTENCY_WINDOW,
            edge: twtr_gateway::EdgeLimits::default(),
            metrics_addr: None,
            otlp_endpoint: None,
            log_format: LogFormat::Text,
        }
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

/// The listeners of the whole mesh, bound by the caller (port 0 is fine).
#[derive(Debug)]
pub struct MeshListeners {
    pub http: TcpListener,
    pub users: TcpListener,
    pub tweets: TcpListener,
    pub followers: TcpListener,
    pub feeds: TcpListener,
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
    let service = match command {
        Command::Gateway => "twtr-gateway",
        Command::Users => "twtr-users",
        Command::Tweets => "twtr-tweets",
        Command::Followers => "twtr-followers",
        Command::Feeds => "twtr-feeds",
        _ => "twtr",
    };
    let telemetry = telemetry::init(config.log_format, service, config.otlp_endpoint.as_deref())?;
    let ran = match command {
        // A service alone checks its callers' tokens with the deployment's public keys.
        Command::Users | Command::Tweets | Command::Followers | Command::Feeds => {
            match backends::token_verifier(&config, Part::Alone) {
                Ok(keys) => twtr_common::auth::scope(keys, run_part(&cli, config, command)).await,
                Err(err) => Err(err),
            }
        }
        _ => run_part(&cli, config, command).await,
    };
    telemetry.shutdown().await;
    ran
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
    let signer = backends::token_signer(&config, Part::AllInOne)?;
    let issued = signer
        .issue(args.user, 0)
        .context("failed to sign the token")?;
    println!("{}", issued.token);
    Ok(())
}

/// Runs one part of the mesh (or all of it) until SIGINT/SIGTERM.
async fn run_part(cli: &Cli, config: Config, command: Command) -> anyhow::Result<()> {
    let shutdown = twtr_common::shutdown::on_signal();
    let addrs = &cli.addrs;
    let serves = matches!(
        command,
        Command::All
            | Command::Gateway
            | Command::Users
            | Command::Tweets
            | Command::Followers
            | Command::Feeds
    );
    if let (true, Some(addr)) = (serves, &config.metrics_addr) {
        let listener = bind("metrics", addr).await?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = twtr_common::metrics::serve(listener, stop).await {
                tracing::error!(error = format!("{err:#}"), "metrics server stopped");
            }
        });
    }
    match command {
        Command::Token(args) => print_token(&config, args),
        Command::Events(args) => events::run(args, &cli.upstream_urls()).await,
        Command::Seed(args) => twtr_bench::seed(args).await,
        Command::Bench { command } => twtr_bench::bench(command).await,
        Command::All => {
            let listeners = MeshListeners {
                http: bind("gateway", &addrs.http_addr).await?,
                users: bind("users", &addrs.users_addr).await?,
                tweets: bind("tweets", &addrs.tweets_addr).await?,
                followers: bind("followers", &addrs.followers_addr).await?,
                feeds: bind("feeds", &addrs.feeds_addr).await?,
            };
            run_all(config, listeners, shutdown).await
        }
        Command::Gateway => {
            let listener = bind("gateway", &addrs.http_addr).await?;
            let deps = twtr_gateway::GatewayDeps {
                upstreams: cli.upstream_urls(),
                tokens: backends::token_verifier(&config, Part::Alone)?,
                limits: config.edge.clone(),
            };
            twtr_gateway::serve(deps, listener, shutdown).await
        }
        Command::Users => {
            let listener = bind("users", &addrs.users_addr).await?;
            let events = backends::event_bus(&config, Part::Alone).await?;
            let ids = backends::id_generator(&config, &events, Part::Alone).await?;
            let deps = twtr_users::UsersDeps {
                store: backends::storage(&config)
                    .await?
                    .user_store(Arc::clone(&ids))
                    .await?,
                ids,
                bus: events.bus,
                tokens: backends::token_signer(&config, Part::Alone)?,
            };
            twtr_users::serve(deps, listener, shutdown).await
        }
        Command::Tweets => {
            let listener = bind("tweets", &addrs.tweets_addr).await?;
            let events = backends::event_bus(&config, Part::Alone).await?;
            let ids = backends::id_generator(&config, &events, Part::Alone).await?;
            let deps = twtr_tweets::TweetsDeps {
                store: backends::storage(&config)
                    .await?
                    .tweet_store(Arc::clone(&ids))
                    .await?,
                ids,
                bus: events.bus,
                consumer: config.consumer,
                idempotency_window: config.idempotency_window,
            };
            twtr_tweets::TweetsService::build(deps)
                .await?
                .serve(listener, shutdown)
                .await
        }
        Command::Followers => {
            let listener = bind("followers", &addrs.followers_addr).await?;
            let users = UsersServiceClient::new(twtr_gateway::upstream::channel(
                &cli.upstream_urls().users,
            )?);
            let events = backends::event_bus(&config, Part::Alone).await?;
            let ids = backends::id_generator(&config, &events, Part::Alone).await?;
            let deps = twtr_followers::FollowersDeps {
                store: backends::storage(&config)
                    .await?
                    .follow_store(Arc::clone(&ids))
                    .await?,
                ids,
                bus: events.bus,
                users: Arc::new(users),
                consumer: config.consumer,
            };
            twtr_followers::FollowersService::build(deps)
                .await?
                .serve(listener, shutdown)
                .await
        }
        Command::Feeds => {
            let listener = bind("feeds", &addrs.feeds_addr).await?;
            let deps = twtr_feeds::FeedsDeps {
                store: backends::storage(&config)
                    .await?
                    .feed_store(config.feed_limits)
                    .await?,
                bus: backends::event_bus(&config, Part::Alone).await?.bus,
                consumer: config.consumer,
                celebrity_threshold: config.celebrity_threshold,
            };
            twtr_feeds::FeedsService::build(deps)
                .await?
                .serve(listener, shutdown)
                .await
        }
        Command::Migrate => backends::migrate(&config).await,
    }
}

type ServiceResult = (&'static str, anyhow::Result<()>);

/// The error of a finished part of the mesh, if it failed or panicked.
fn failure(ended: Result<ServiceResult, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match ended {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(err))) => Some(err.context(format!("the {name} failed"))),
        Err(join) => Some(anyhow::Error::new(join).context("a part of the mesh panicked")),
    }
}

/// Runs the four services and the gateway in this process until `shutdown` (or until one of
/// them fails, which brings the others down too).
pub async fn run_all(
    config: Config,
    listeners: MeshListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let urls = UpstreamUrls {
        users: local_url(&listeners.users)?,
        tweets: local_url(&listeners.tweets)?,
        followers: local_url(&listeners.followers)?,
        feeds: local_url(&listeners.feeds)?,
    };
    let storage = backends::storage(&config).await?;
    let events = backends::event_bus(&config, Part::AllInOne).await?;
    let ids = backends::id_generator(&config, &events, Part::AllInOne).await?;
    let bus = events.bus;
    let signer = backends::token_signer(&config, Part::AllInOne)?;
    let verifier = backends::token_verifier(&config, Part::AllInOne)?;

    // Declare the consumers' queues before anything can publish, so no event misses them.
    let feeds = twtr_feeds::FeedsService::build(twtr_feeds::FeedsDeps {
        store: storage.feed_store(config.feed_limits).await?,
        bus: Arc::clone(&bus),
        consumer: config.consumer,
        celebrity_threshold: config.celebrity_threshold,
    })
    .await?;
    let users = twtr_users::UsersDeps {
        store: storage.user_store(Arc::clone(&ids)).await?,
        bus: Arc::clone(&bus),
        ids: Arc::clone(&ids),
        tokens: signer,
    };
    let tweets = twtr_tweets::TweetsService::build(twtr_tweets::TweetsDeps {
        store: storage.tweet_store(Arc::clone(&ids)).await?,
        bus: Arc::clone(&bus),
        ids: Arc::clone(&ids),
        consumer: config.consumer,
        idempotency_window: config.idempotency_window,
    })
    .await?;
    let followers = twtr_followers::FollowersService::build(twtr_followers::FollowersDeps {
        store: storage.follow_store(Arc::clone(&ids)).await?,
        bus: Arc::clone(&bus),
        ids: Arc::clone(&ids),
        users: Arc::new(UsersServiceClient::new(twtr_gateway::upstream::channel(
            &urls.users,
        )?)),
        consumer: config.consumer,
    })
    .await?;
    let gateway = twtr_gateway::GatewayDeps {
        upstreams: urls.clone(),
        tokens: verifier.clone(),
        limits: config.edge.clone(),
    };

    tracing::info!(
        http = %local_url(&listeners.http)?, users = %urls.users, tweets = %urls.tweets,
        followers = %urls.followers, feeds = %urls.feeds, "twtr mesh starting"
    );

    // The services stop only after the gateway has drained.
    let services_stop = CancellationToken::new();
    let mut services: JoinSet<ServiceResult> = JoinSet::new();
    // Each service checks its callers' tokens with the mesh's key (see twtr_common::auth).
    let keys = || verifier.clone();
    let stop = services_stop.clone();
    services.spawn(auth::scope(keys(), async move {
        (
            "users service",
            twtr_users::serve(users, listeners.users, stop).await,
        )
    }));
    let stop = services_stop.clone();
    services.spawn(auth::scope(keys(), async move {
        ("tweets service", tweets.serve(listeners.tweets, stop).await)
    }));
    let stop = services_stop.clone();
    services.spawn(auth::scope(keys(), async move {
        (
            "followers service",
            followers.serve(listeners.followers, stop).await,
        )
    }));
    let stop = services_stop.clone();
    services.spawn(auth::scope(keys(), async move {
        ("feeds service", feeds.serve(listeners.feeds, stop).await)
    }));
    let gateway_stop = shutdown.clone();
    let gateway = tokio::spawn(async move {
        let served = twtr_gateway::serve(gateway, listeners.http, gateway_stop).await;
        ("gateway", served)
    });

    let mut first_error: Option<anyhow::Error> = None;
    tokio::select! {
        () = shutdown.cancelled() => {}
        Some(ended) = services.join_next() => {
            // A service ended on its own: that is a failure, whatever it returned.
            let error = failure(ended)
                .unwrap_or_else(|| anyhow::anyhow!("a service stopped unexpectedly"));
            tracing::error!(error = format!("{error:#}"), "shutting the mesh down");
            first_error = Some(error);
            shutdown.cancel();
        }
    }
    if let Some(error) = failure(gateway.await) {
        first_error.get_or_insert(error);
    }
    services_stop.cancel();
    while let Some(ended) = services.join_next().await {
        if let Some(error) = failure(ended) {
            first_error.get_or_insert(error);
        }
    }
    tracing::info!("twtr mesh stopped");
    first_error.map_or(Ok(()), Err)
}
