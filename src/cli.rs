//! The command line. Every flag has a `TWTR_*` environment variable; flags win over the
//! environment, which wins over the defaults.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use twtr_common::bus::{ConsumerSettings, QueueType, RetryPolicy};
use twtr_common::cql::{
    ConsistencySettings, CqlConfig, parse_consistency, parse_serial_consistency,
};
use twtr_common::telemetry::LogFormat;
use twtr_feeds::FeedLimits;
use twtr_feeds::live::LiveSettings;

use crate::{Amqp, Config, Storage};

/// twtr: a Twitter-like backend built as a gRPC service mesh.
#[derive(Debug, Parser)]
#[command(name = "twtr", version, about)]
pub struct Cli {
    /// What to run; `all` (every service and the gateway in one process) when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// A file of `TWTR_NAME=value` lines, read before the environment (which wins over it).
    #[arg(long, env = "TWTR_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub addrs: Addrs,

    #[command(flatten)]
    pub edge: crate::edge::EdgeArgs,

    #[command(flatten)]
    pub grpc_tls: GrpcTlsArgs,

    /// Directory for the embedded store, the in-process bus and a generated token secret.
    #[arg(long, env = "TWTR_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Comma-separated ScyllaDB/Cassandra contact points (`host` or `host:port`); when set, the
    /// CQL backend is the store of every service.
    #[arg(long, env = "TWTR_SCYLLA_NODES", value_delimiter = ',', global = true)]
    pub scylla_nodes: Vec<String>,

    /// Keyspaces are `<prefix>_users`, `<prefix>_tweets`, ... so several deployments can share
    /// a cluster.
    #[arg(
        long,
        env = "TWTR_SCYLLA_KEYSPACE_PREFIX",
        default_value = "twtr",
        global = true
    )]
    pub scylla_keyspace_prefix: String,

    /// Replication of the keyspaces `twtr migrate` creates: `simple:<factor>` (one datacenter)
    /// or `<dc>:<factor>,<dc>:<factor>` (NetworkTopologyStrategy, production).
    #[arg(
        long,
        env = "TWTR_SCYLLA_REPLICATION",
        default_value = "simple:1",
        global = true
    )]
    pub scylla_replication: String,

    /// This process's datacenter: requests go to its replicas first (what makes LOCAL_*
    /// consistency local).
    #[arg(long, env = "TWTR_SCYLLA_LOCAL_DC", global = true)]
    pub scylla_local_dc: Option<String>,

    /// Consistency of reads.
    #[arg(
        long,
        env = "TWTR_SCYLLA_READ_CONSISTENCY",
        default_value = "local_quorum",
        global = true
    )]
    pub scylla_read_consistency: String,

    /// Consistency of writes.
    #[arg(
        long,
        env = "TWTR_SCYLLA_WRITE_CONSISTENCY",
        default_value = "local_quorum",
        global = true
    )]
    pub scylla_write_consistency: String,

    /// Serial consistency of lightweight transactions (`local_serial` or `serial`).
    #[arg(
        long,
        env = "TWTR_SCYLLA_SERIAL_CONSISTENCY",
        default_value = "local_serial",
        global = true
    )]
    pub scylla_serial_consistency: String,

    /// Bound on every store call, its retries on other nodes and speculative attempts included
    /// (milliseconds).
    #[arg(
        long,
        env = "TWTR_SCYLLA_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub scylla_request_timeout_ms: u64,

    /// RabbitMQ URL (amqp://user:pass@host:5672/vhost), or the URLs of a cluster's nodes
    /// separated by commas; when set, RabbitMQ is the event bus.
    #[arg(long, env = "TWTR_AMQP_URL", hide_env_values = true, global = true)]
    pub amqp_url: Option<String>,

    /// Prefix of every RabbitMQ exchange and queue (`<prefix>.events`, `<prefix>.feeds`, ...),
    /// so several deployments can share one broker.
    #[arg(long, env = "TWTR_AMQP_PREFIX", default_value = "twtr", global = true)]
    pub amqp_prefix: String,

    /// RabbitMQ queue type: quorum (replicated; production) or classic (brokers without quorum
    /// queues).
    #[arg(long, env = "TWTR_AMQP_QUEUE_TYPE", value_enum, default_value_t = QueueTypeArg::Quorum, global = true)]
    pub amqp_queue_type: QueueTypeArg,

    /// Delete RabbitMQ queues unused for this many seconds (x-expires): for throwaway
    /// environments only. Unset in production.
    #[arg(long, env = "TWTR_AMQP_QUEUE_EXPIRY_SECS", global = true)]
    pub amqp_queue_expiry_secs: Option<u64>,

    /// Deliveries a consumer holds unacknowledged, and handles, at once (RabbitMQ prefetch).
    /// Default: 512 on the embedded store, which commits the deliveries in hand together, 32 on
    /// CQL.
    #[arg(long, env = "TWTR_EVENT_PREFETCH", global = true)]
    pub event_prefetch: Option<u16>,

    /// Milliseconds a failed event waits before its second attempt; each further failure
    /// doubles the wait (with jitter), up to TWTR_EVENT_RETRY_MAX_DELAY_MS.
    #[arg(
        long,
        env = "TWTR_EVENT_RETRY_DELAY_MS",
        default_value_t = 1000,
        global = true
    )]
    pub event_retry_delay_ms: u64,

    /// The longest wait between two attempts of a failing event, in milliseconds.
    #[arg(
        long,
        env = "TWTR_EVENT_RETRY_MAX_DELAY_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub event_retry_max_delay_ms: u64,

    /// How long a failing event is retried, from its first failure, before it goes to the
    /// dead-letter queue with the reason (`7d`, `36h`, `90m`, `30s`).
    #[arg(
        long,
        env = "TWTR_EVENT_RETRY_HORIZON",
        default_value = "7d",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub event_retry_horizon: Duration,

    /// PEM file of the Ed25519 private key that signs tokens (the users service's; as
    /// `openssl genpkey -algorithm ed25519` writes it). `all` generates a key pair into the data
    /// directory when no key is given.
    #[arg(long, env = "TWTR_TOKEN_PRIVATE_KEY", global = true)]
    pub token_private_key: Option<PathBuf>,

    /// Comma-separated PEM files of the public keys that verify tokens (every verifier: the
    /// gateway); two during a key rotation.
    #[arg(
        long,
        env = "TWTR_TOKEN_PUBLIC_KEYS",
        value_delimiter = ',',
        global = true
    )]
    pub token_public_keys: Vec<PathBuf>,

    /// How long a login token stays valid, in seconds.
    #[arg(
        long,
        env = "TWTR_TOKEN_TTL_SECS",
        default_value_t = 86_400,
        global = true
    )]
    pub token_ttl_secs: u64,

    /// Snowflake worker number (0..=1023), unique per running process. When unset, a process on
    /// RabbitMQ leases a free number from the broker; otherwise `all` uses 0 and a single
    /// service a hash of the host name and process id.
    #[arg(long, env = "TWTR_WORKER_ID", global = true)]
    pub worker_id: Option<u16>,

    /// Entries kept per home feed.
    #[arg(long, env = "TWTR_FEED_LEN", default_value_t = FeedLimits::default().feed_len, global = true)]
    pub feed_len: usize,

    /// How many entries past TWTR_FEED_LEN a feed may hold between trims: a feed is cut back
    /// to TWTR_FEED_LEN once it is this much over, which saves a read per insert on CQL and a
    /// page write per insert on the embedded store (per feeds replica on CQL; 0 trims on every
    /// insert).
    #[arg(long, env = "TWTR_FEED_TRIM_SLACK", default_value_t = FeedLimits::default().trim_slack, global = true)]
    pub feed_trim_slack: usize,

    /// Recent tweets (and retweets) of an author kept by the feeds service, and put into a new
    /// follower's feed on follow.
    #[arg(long, env = "TWTR_FEED_BACKFILL", default_value_t = FeedLimits::default().recent_per_author, global = true)]
    pub feed_backfill: usize,

    /// How long a feed's arrivals are kept, in seconds: how far back a live feed
    /// (GET /v1/feed/stream) can resume with Last-Event-ID; an older one restarts from now.
    #[arg(long, env = "TWTR_FEED_ARRIVALS_KEPT_SECS", default_value_t = FeedLimits::default().arrivals_kept.as_secs(), global = true)]
    pub feed_arrivals_kept_secs: u64,

    /// Milliseconds a fan-out write may land after it was stamped and still reach live feeds
    /// that already read past its stamp (include the feeds replicas' clock skew).
    #[arg(long, env = "TWTR_FEED_STREAM_SETTLE_MS", default_value_t = LiveSettings::default().settle.as_millis() as u64, global = true)]
    pub feed_stream_settle_ms: u64,

    /// Milliseconds between a live feed's reads when no notice wakes it (notices are best
    /// effort; a celebrity's post is not announced per follower).
    #[arg(long, env = "TWTR_FEED_STREAM_POLL_MS", default_value_t = LiveSettings::default().poll.as_millis() as u64, global = true)]
    pub feed_stream_poll_ms: u64,

    /// Milliseconds a live feed stays quiet before it sends a keep-alive (with its cursor).
    #[arg(long, env = "TWTR_FEED_STREAM_KEEPALIVE_MS", default_value_t = LiveSettings::default().keep_alive.as_millis() as u64, global = true)]
    pub feed_stream_keepalive_ms: u64,

    /// Authors with more followers than this are not fanned out on write; their recent tweets
    /// are merged into readers' pages at read time. 0 turns this off (everyone is fanned out).
    #[arg(long, env = "TWTR_CELEBRITY_THRESHOLD", default_value_t = twtr_feeds::DEFAULT_CELEBRITY_THRESHOLD, global = true)]
    pub celebrity_threshold: usize,

    /// Seconds an `Idempotency-Key` on `POST /v1/tweets` keeps returning its first tweet.
    #[arg(long, env = "TWTR_IDEMPOTENCY_WINDOW_SECS", default_value_t = twtr_tweets::DEFAULT_IDEMPOTENCY_WINDOW.as_secs(), global = true)]
    pub idempotency_window_secs: u64,

    /// Log format.
    #[arg(long, env = "TWTR_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text, global = true)]
    pub log_format: LogFormatArg,
}

#[derive(Debug, Clone, Subcommand, PartialEq)]
pub enum Command {
    /// Every service and the gateway in one process (the default).
    All,
    /// The HTTP/JSON gateway alone.
    Gateway,
    /// The users service alone.
    Users,
    /// The tweets service alone.
    Tweets,
    /// The followers service alone.
    Followers,
    /// The feeds service alone.
    Feeds,
    /// Apply storage schema migrations, then exit.
    Migrate,
    /// Print a token that acts as a user, for calling services with grpcurl (signed with
    /// TWTR_TOKEN_PRIVATE_KEY, or the all-in-one key in TWTR_DATA_DIR).
    Token(crate::edge::TokenArgs),
    /// Operate on events: `twtr events dead list|show|redrive --queue feeds` (a running
    /// service's dead letters, on either bus).
    Events(crate::events::EventsArgs),
    /// Copy the embedded store of a running process (every part's file, one consistent cut)
    /// into a new directory on its host: `twtr backup --to DIR`.
    Backup(crate::backup::BackupArgs),
    /// Put a backup into an empty data directory (TWTR_DATA_DIR), with the mesh stopped:
    /// `twtr restore --from DIR`. Checks every file against the backup's manifest.
    Restore(crate::backup::RestoreArgs),
    /// Export the CQL keyspaces through the driver, table by table, in token ranges, into a
    /// directory of JSON lines (resumable: run again to go on): `twtr export --to DIR`.
    Export(crate::export::ExportArgs),
    /// Import an export into keyspaces `twtr migrate` made (another prefix or cluster, Cassandra
    /// or ScyllaDB): `twtr import --from DIR`.
    Import(crate::export::ImportArgs),
    /// Write a deterministic data set (users, a heavy-tailed follow graph, tweets) into a
    /// running mesh through its public API; safe to repeat, resumable.
    Seed(twtr_bench::SeedArgs),
    /// Benchmark a running, seeded mesh over HTTP, and render reports.
    Bench {
        #[command(subcommand)]
        command: twtr_bench::BenchCommand,
    },
}

/// Where each part listens, and where the others reach it.
#[derive(Debug, Args)]
pub struct Addrs {
    /// Gateway (HTTP) listen address.
    #[arg(
        long,
        env = "TWTR_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: String,
    /// Users service (gRPC) listen address.
    #[arg(
        long,
        env = "TWTR_USERS_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub users_addr: String,
    /// Tweets service (gRPC) listen address.
    #[arg(
        long,
        env = "TWTR_TWEETS_ADDR",
        default_value = "127.0.0.1:50052",
        global = true
    )]
    pub tweets_addr: String,
    /// Followers service (gRPC) listen address.
    #[arg(
        long,
        env = "TWTR_FOLLOWERS_ADDR",
        default_value = "127.0.0.1:50053",
        global = true
    )]
    pub followers_addr: String,
    /// Feeds service (gRPC) listen address.
    #[arg(
        long,
        env = "TWTR_FEEDS_ADDR",
        default_value = "127.0.0.1:50054",
        global = true
    )]
    pub feeds_addr: String,
    /// Where callers reach the users service; derived from its listen address when unset.
    #[arg(long, env = "TWTR_USERS_URL", global = true)]
    pub users_url: Option<String>,
    /// Where callers reach the tweets service.
    #[arg(long, env = "TWTR_TWEETS_URL", global = true)]
    pub tweets_url: Option<String>,
    /// Where callers reach the followers service.
    #[arg(long, env = "TWTR_FOLLOWERS_URL", global = true)]
    pub followers_url: Option<String>,
    /// Where callers reach the feeds service.
    #[arg(long, env = "TWTR_FEEDS_URL", global = true)]
    pub feeds_url: Option<String>,
}

/// Mutual TLS between the parts (all three files, or none).
#[derive(Debug, Args)]
pub struct GrpcTlsArgs {
    /// PEM certificate this process presents, serving gRPC and calling the other parts. With
    /// TWTR_GRPC_TLS_KEY and TWTR_GRPC_TLS_CA it turns mutual TLS on.
    #[arg(long, env = "TWTR_GRPC_TLS_CERT", global = true)]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of TWTR_GRPC_TLS_CERT.
    #[arg(long, env = "TWTR_GRPC_TLS_KEY", global = true)]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM certificate of the CA that signed every part's certificate: callers must present a
    /// certificate it signed, and servers' certificates are checked against it.
    #[arg(long, env = "TWTR_GRPC_TLS_CA", global = true)]
    pub grpc_tls_ca: Option<PathBuf>,
    /// The name servers' certificates must carry, instead of the host of each service URL.
    #[arg(long, env = "TWTR_GRPC_TLS_SERVER_NAME", global = true)]
    pub grpc_tls_server_name: Option<String>,
    /// Comma-separated names that make a client certificate a twtr part's (its common name, a
    /// DNS or URI name, or a DNS name's first label): only those may call the service-only
    /// methods (token states, login, batch reads). Default: twtr-gateway, twtr-users,
    /// twtr-tweets, twtr-followers, twtr-feeds.
    #[arg(
        long,
        env = "TWTR_GRPC_TLS_SERVICE_NAMES",
        value_delimiter = ',',
        global = true
    )]
    pub grpc_tls_service_names: Vec<String>,
}

impl GrpcTlsArgs {
    fn config(&self) -> anyhow::Result<Option<crate::GrpcTls>> {
        let files = twtr_common::tls::TlsFiles::from_settings(
            self.grpc_tls_cert.clone(),
            self.grpc_tls_key.clone(),
            self.grpc_tls_ca.clone(),
        )?;
        Ok(files.map(|files| crate::GrpcTls {
            files,
            server_name: self.grpc_tls_server_name.clone().filter(|n| !n.is_empty()),
            service_names: self
                .grpc_tls_service_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
        }))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum QueueTypeArg {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl Cli {
    pub fn config(&self) -> anyhow::Result<Config> {
        let nodes: Vec<String> = self
            .scylla_nodes
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        let storage = if nodes.is_empty() {
            Storage::Embedded {
                data_dir: self.data_dir.clone(),
            }
        } else {
            let mut cql = CqlConfig::new(nodes);
            cql.keyspace_prefix = self.scylla_keyspace_prefix.clone();
            cql.replication = self
                .scylla_replication
                .parse()
                .context("invalid TWTR_SCYLLA_REPLICATION")?;
            cql.local_dc = self.scylla_local_dc.clone().filter(|dc| !dc.is_empty());
            cql.consistency = ConsistencySettings {
                reads: parse_consistency(&self.scylla_read_consistency)
                    .context("invalid TWTR_SCYLLA_READ_CONSISTENCY")?,
                writes: parse_consistency(&self.scylla_write_consistency)
                    .context("invalid TWTR_SCYLLA_WRITE_CONSISTENCY")?,
                serial: parse_serial_consistency(&self.scylla_serial_consistency)
                    .context("invalid TWTR_SCYLLA_SERIAL_CONSISTENCY")?,
            };
            anyhow::ensure!(
                self.scylla_request_timeout_ms > 0,
                "TWTR_SCYLLA_REQUEST_TIMEOUT_MS must be at least 1"
            );
            cql.request_timeout = Duration::from_millis(self.scylla_request_timeout_ms);
            // Fails on a bad prefix now rather than at the first keyspace.
            cql.keyspace("users")
                .context("invalid TWTR_SCYLLA_KEYSPACE_PREFIX")?;
            Storage::Cql(cql)
        };
        anyhow::ensure!(self.feed_len > 0, "TWTR_FEED_LEN must be at least 1");
        anyhow::ensure!(
            (1..=30_000).contains(&self.feed_stream_keepalive_ms),
            "TWTR_FEED_STREAM_KEEPALIVE_MS must be 1 to 30000: a gateway ends a live feed whose \
             feeds replica is silent for {} s",
            twtr_gateway::streams::UPSTREAM_SILENCE.as_secs()
        );
        anyhow::ensure!(
            self.idempotency_window_secs > 0,
            "TWTR_IDEMPOTENCY_WINDOW_SECS must be at least 1"
        );
        let event_prefetch = self
            .event_prefetch
            .unwrap_or_else(|| storage.default_prefetch());
        anyhow::ensure!(event_prefetch > 0, "TWTR_EVENT_PREFETCH must be at least 1");
        anyhow::ensure!(
            self.event_retry_delay_ms > 0
                && self.event_retry_max_delay_ms >= self.event_retry_delay_ms,
            "TWTR_EVENT_RETRY_DELAY_MS must be at least 1 and at most TWTR_EVENT_RETRY_MAX_DELAY_MS"
        );
        if let Some(url) = self.amqp_url.as_deref().filter(|url| !url.is_empty()) {
            // Fails on a malformed list now rather than at every connection attempt.
            twtr_common::bus::Brokers::parse(url).context("invalid TWTR_AMQP_URL")?;
        }
        let amqp = self
            .amqp_url
            .clone()
            .filter(|url| !url.is_empty())
            .map(|url| Amqp {
                url,
                prefix: self.amqp_prefix.clone(),
                queue_type: match self.amqp_queue_type {
                    QueueTypeArg::Quorum => QueueType::Quorum,
                    QueueTypeArg::Classic => QueueType::Classic,
                },
                queue_expiry: self.amqp_queue_expiry_secs.map(Duration::from_secs),
            });
        Ok(Config {
            storage,
            data_dir: self.data_dir.clone(),
            amqp,
            consumer: ConsumerSettings {
                prefetch: event_prefetch,
                retry: RetryPolicy {
                    first_delay: Duration::from_millis(self.event_retry_delay_ms),
                    max_delay: Duration::from_millis(self.event_retry_max_delay_ms),
                    horizon: self.event_retry_horizon,
                },
            },
            token_private_key: self
                .token_private_key
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            token_public_keys: self
                .token_public_keys
                .iter()
                .filter(|p| !p.as_os_str().is_empty())
                .cloned()
                .collect(),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            worker_id: self.worker_id,
            feed_limits: FeedLimits {
                feed_len: self.feed_len,
                trim_slack: self.feed_trim_slack,
                recent_per_author: self.feed_backfill,
                arrivals_kept: Duration::from_secs(self.feed_arrivals_kept_secs.max(1)),
                ..FeedLimits::default()
            },
            live_feed: LiveSettings {
                settle: Duration::from_millis(self.feed_stream_settle_ms),
                poll: Duration::from_millis(self.feed_stream_poll_ms.max(1)),
                keep_alive: Duration::from_millis(self.feed_stream_keepalive_ms.max(1)),
                kept: Duration::from_secs(self.feed_arrivals_kept_secs.max(1)),
            },
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
            celebrity_threshold: (self.celebrity_threshold > 0).then_some(self.celebrity_threshold),
            edge: self.edge.limits()?,
            grpc_tls: self.grpc_tls.config()?,
            metrics_addr: self.edge.metrics_addr.clone().filter(|a| !a.is_empty()),
            otlp_endpoint: self.edge.otlp_endpoint(),
            listen: crate::ListenAddrs {
                http: self.addrs.http_addr.clone(),
                users: self.addrs.users_addr.clone(),
                tweets: self.addrs.tweets_addr.clone(),
                followers: self.addrs.followers_addr.clone(),
                feeds: self.addrs.feeds_addr.clone(),
            },
            urls: crate::ServiceUrls {
                users: self.addrs.users_url.clone().filter(|u| !u.is_empty()),
                tweets: self.addrs.tweets_url.clone().filter(|u| !u.is_empty()),
                followers: self.addrs.followers_url.clone().filter(|u| !u.is_empty()),
                feeds: self.addrs.feeds_url.clone().filter(|u| !u.is_empty()),
            },
            log_format: match self.log_format {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_embedded_all_in_one_mesh() {
        let cli = Cli::try_parse_from(["twtr"]).unwrap();
        assert_eq!(cli.command, None);
        let config = cli.config().unwrap();
        assert!(matches!(config.storage, Storage::Embedded { .. }));
        assert!(config.amqp.is_none());
        assert_eq!(
            cli.config().unwrap().service_urls().feeds,
            "http://127.0.0.1:50054"
        );
    }

    #[test]
    fn the_default_prefetch_depends_on_the_store_and_a_setting_wins() {
        let prefetch = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            cli.config().unwrap().consumer.prefetch
        };
        assert_eq!(prefetch(&["twtr"]), ConsumerSettings::EMBEDDED_PREFETCH);
        assert_eq!(
            prefetch(&["twtr", "--scylla-nodes", "a:9042"]),
            ConsumerSettings::CQL_PREFETCH
        );
        assert_eq!(prefetch(&["twtr", "--event-prefetch", "7"]), 7);
        assert_eq!(
            prefetch(&[
                "twtr",
                "--scylla-nodes",
                "a:9042",
                "--event-prefetch",
                "700"
            ]),
            700
        );
        let zero = Cli::try_parse_from(["twtr", "--event-prefetch", "0"]).unwrap();
        assert!(zero.config().is_err());
        // The in-process meshes start from the same defaults as the binary.
        assert_eq!(
            Config::embedded("data").consumer.prefetch,
            ConsumerSettings::EMBEDDED_PREFETCH
        );
    }

    #[test]
    fn flags_pick_the_backends_and_urls() {
        let cli = Cli::try_parse_from([
            "twtr",
            "gateway",
            "--scylla-nodes",
            "a:9042,b:9042",
            "--users-url",
            "http://users:50051",
            "--tweets-addr",
            "0.0.0.0:7000",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Gateway));
        let config = cli.config().unwrap();
        let Storage::Cql(cql) = &config.storage else {
            panic!("TWTR_SCYLLA_NODES selects the CQL store");
        };
        assert_eq!(cql.nodes, vec!["a:9042".to_owned(), "b:9042".to_owned()]);
        assert_eq!(cql.keyspace("users").unwrap(), "twtr_users");
        assert_eq!(cql.request_timeout, Duration::from_secs(10));
        let urls = cli.config().unwrap().service_urls();
        assert_eq!(urls.users, "http://users:50051");
        assert_eq!(urls.tweets, "http://127.0.0.1:7000");
    }

    #[test]
    fn key_files_are_read_from_flags_and_lists() {
        let cli = Cli::try_parse_from([
            "twtr",
            "gateway",
            "--token-public-keys",
            "/keys/old.pem,/keys/new.pem",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        assert_eq!(
            config.token_public_keys,
            vec![
                PathBuf::from("/keys/old.pem"),
                PathBuf::from("/keys/new.pem")
            ]
        );
        assert_eq!(config.token_private_key, None);
    }

    #[test]
    fn mutual_tls_takes_all_three_files_and_a_partial_set_is_refused() {
        let plain = Cli::try_parse_from(["twtr"]).unwrap().config().unwrap();
        assert_eq!(plain.grpc_tls, None);

        let cli = Cli::try_parse_from([
            "twtr",
            "users",
            "--grpc-tls-cert=/tls/tls.crt",
            "--grpc-tls-key=/tls/tls.key",
            "--grpc-tls-ca=/tls/ca.crt",
            "--grpc-tls-service-names",
            "prod-twtr-gateway, prod-twtr-users",
        ])
        .unwrap();
        let tls = cli.config().unwrap().grpc_tls.expect("mutual TLS on");
        assert_eq!(tls.files.key, PathBuf::from("/tls/tls.key"));
        assert_eq!(tls.service_names, ["prod-twtr-gateway", "prod-twtr-users"]);
        assert_eq!(tls.server_name, None);

        let partial = Cli::try_parse_from(["twtr", "--grpc-tls-cert=/tls/tls.crt"]).unwrap();
        let err = partial.config().unwrap_err().to_string();
        assert!(
            err.contains("missing: TWTR_GRPC_TLS_KEY, TWTR_GRPC_TLS_CA"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod amqp_tests {
    use super::*;

    #[test]
    fn an_amqp_url_selects_rabbitmq_with_its_settings() {
        let cli = Cli::try_parse_from([
            "twtr",
            "feeds",
            "--amqp-url",
            "amqp://u:secret-pw@broker:5672/%2f",
            "--amqp-prefix",
            "staging",
            "--amqp-queue-type",
            "classic",
            "--event-retry-delay-ms",
            "250",
            "--event-retry-horizon",
            "36h",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        let amqp = config.amqp.as_ref().expect("RabbitMQ selected");
        assert_eq!(amqp.prefix, "staging");
        assert_eq!(amqp.queue_type, QueueType::Classic);
        assert_eq!(
            config.consumer.retry,
            RetryPolicy {
                first_delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(300),
                horizon: Duration::from_secs(36 * 3600),
            }
        );
        assert!(
            !format!("{config:?}").contains("secret-pw"),
            "the broker password stays out of Debug output"
        );
    }

    #[test]
    fn a_cluster_s_brokers_are_listed_with_commas_and_a_bad_entry_is_refused_quietly() {
        let cluster = "amqp://u:secret-pw@rabbit-0:5672/%2f,amqp://u:secret-pw@rabbit-1:5672/%2f";
        let cli = Cli::try_parse_from(["twtr", "feeds", "--amqp-url", cluster]).unwrap();
        let config = cli.config().unwrap();
        assert_eq!(
            config.amqp.as_ref().expect("RabbitMQ selected").url,
            cluster
        );

        let bad = "amqp://u:secret-pw@rabbit-0:5672/%2f,http://u:secret-pw@rabbit-1";
        let cli = Cli::try_parse_from(["twtr", "feeds", "--amqp-url", bad]).unwrap();
        let err = format!("{:#}", cli.config().unwrap_err());
        assert!(err.contains("entry 2"), "{err}");
        assert!(
            !err.contains("secret-pw"),
            "the password stays out of errors: {err}"
        );
    }
}

#[cfg(test)]
mod cql_tests {
    use super::*;

    #[test]
    fn cql_settings_are_read_and_checked() {
        let cli = Cli::try_parse_from([
            "twtr",
            "migrate",
            "--scylla-nodes",
            "db1,db2:9043",
            "--scylla-keyspace-prefix",
            "staging",
            "--scylla-replication",
            "eu:3,us:3",
            "--scylla-local-dc",
            "eu",
            "--scylla-read-consistency",
            "one",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        let Storage::Cql(cql) = &config.storage else {
            panic!("CQL selected");
        };
        assert_eq!(cql.keyspace("feeds").unwrap(), "staging_feeds");
        assert_eq!(cql.local_dc.as_deref(), Some("eu"));
        assert!(cql.replication.to_cql().contains("NetworkTopologyStrategy"));
        assert_eq!(cql.consistency.reads, scylla::statement::Consistency::One);

        for bad in [
            ["--scylla-replication", "lots"],
            ["--scylla-keyspace-prefix", "Bad-Prefix"],
            ["--scylla-write-consistency", "most"],
        ] {
            let cli = Cli::try_parse_from(["twtr", "--scylla-nodes", "db1"].into_iter().chain(bad))
                .unwrap();
            assert!(cli.config().is_err(), "{bad:?} is refused");
        }
    }
}
