//! The command line. Every flag has a `TWTR_*` environment variable; flags win over the
//! environment, which wins over the defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use twtr_common::telemetry::LogFormat;
use twtr_feeds::FeedLimits;
use twtr_gateway::UpstreamUrls;

use crate::{Config, Storage};

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

    /// Directory for the embedded store, the in-process bus and a generated token secret.
    #[arg(long, env = "TWTR_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Comma-separated ScyllaDB contact points; when set, ScyllaDB is the store.
    #[arg(long, env = "TWTR_SCYLLA_NODES", value_delimiter = ',', global = true)]
    pub scylla_nodes: Vec<String>,

    /// RabbitMQ URL (amqp://user:pass@host:5672/vhost); when set, RabbitMQ is the event bus.
    #[arg(long, env = "TWTR_AMQP_URL", hide_env_values = true, global = true)]
    pub amqp_url: Option<String>,

    /// Token signing secret (at least 32 bytes). Without it, the embedded mode generates one
    /// and keeps it in the data directory.
    #[arg(long, env = "TWTR_TOKEN_SECRET", hide_env_values = true, global = true)]
    pub token_secret: Option<String>,

    /// How long a login token stays valid, in seconds.
    #[arg(
        long,
        env = "TWTR_TOKEN_TTL_SECS",
        default_value_t = 86_400,
        global = true
    )]
    pub token_ttl_secs: u64,

    /// Snowflake worker number (0..=1023), unique per running process. Defaults to 0 in `all`
    /// and to a hash of the host name for a single service.
    #[arg(long, env = "TWTR_WORKER_ID", global = true)]
    pub worker_id: Option<u16>,

    /// Entries kept per home feed.
    #[arg(long, env = "TWTR_FEED_LEN", default_value_t = FeedLimits::default().feed_len, global = true)]
    pub feed_len: usize,

    /// Log format.
    #[arg(long, env = "TWTR_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text, global = true)]
    pub log_format: LogFormatArg,
}

#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// `http://<addr>`, with an unspecified host (0.0.0.0) replaced by loopback.
fn url_for(addr: &str) -> String {
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    format!("http://{addr}")
}

impl Cli {
    pub fn config(&self) -> anyhow::Result<Config> {
        let storage = if self.scylla_nodes.is_empty() {
            Storage::Embedded {
                data_dir: self.data_dir.clone(),
            }
        } else {
            Storage::Scylla {
                nodes: self.scylla_nodes.clone(),
            }
        };
        anyhow::ensure!(self.feed_len > 0, "TWTR_FEED_LEN must be at least 1");
        Ok(Config {
            storage,
            data_dir: self.data_dir.clone(),
            amqp_url: self.amqp_url.clone().filter(|url| !url.is_empty()),
            token_secret: self.token_secret.clone().filter(|s| !s.is_empty()),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            worker_id: self.worker_id,
            feed_limits: FeedLimits {
                feed_len: self.feed_len,
                ..FeedLimits::default()
            },
            log_format: match self.log_format {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            },
        })
    }

    /// Where the gateway (and followers) reach each service in the distributed mode.
    pub fn upstream_urls(&self) -> UpstreamUrls {
        let a = &self.addrs;
        UpstreamUrls {
            users: a
                .users_url
                .clone()
                .unwrap_or_else(|| url_for(&a.users_addr)),
            tweets: a
                .tweets_url
                .clone()
                .unwrap_or_else(|| url_for(&a.tweets_addr)),
            followers: a
                .followers_url
                .clone()
                .unwrap_or_else(|| url_for(&a.followers_addr)),
            feeds: a
                .feeds_url
                .clone()
                .unwrap_or_else(|| url_for(&a.feeds_addr)),
        }
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
        assert_eq!(config.amqp_url, None);
        assert_eq!(cli.upstream_urls().feeds, "http://127.0.0.1:50054");
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
        assert_eq!(
            config.storage,
            Storage::Scylla {
                nodes: vec!["a:9042".into(), "b:9042".into()]
            }
        );
        let urls = cli.upstream_urls();
        assert_eq!(urls.users, "http://users:50051");
        assert_eq!(urls.tweets, "http://127.0.0.1:7000");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let cli = Cli::try_parse_from([
            "twtr",
            "--token-secret",
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
