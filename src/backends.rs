//! The one place where configuration picks backends. Domain code only ever sees the traits.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use twtr_common::IdGenerator;
use twtr_common::bus::{EventBus, InProcessBus};
use twtr_common::tokens::{TokenSecret, Tokens};
use twtr_feeds::{EmbeddedFeedStore, FeedStore};
use twtr_followers::{EmbeddedFollowStore, FollowStore};
use twtr_tweets::{EmbeddedTweetStore, TweetStore};
use twtr_users::{EmbeddedUserStore, UserStore};

use crate::{Config, Storage};

/// Refuses a backend this build cannot drive yet, naming what to use instead.
fn not_yet(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} is not available in this version of twtr yet; unset it to use the embedded default"
    )
}

fn embedded_dir(config: &Config) -> anyhow::Result<&Path> {
    match &config.storage {
        Storage::Embedded { data_dir } => Ok(data_dir),
        Storage::Scylla { .. } => Err(not_yet("the ScyllaDB store (TWTR_SCYLLA_NODES)")),
    }
}

pub fn user_store(config: &Config) -> anyhow::Result<Arc<dyn UserStore>> {
    let path = embedded_dir(config)?.join("users.redb");
    let store = EmbeddedUserStore::open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Arc::new(store))
}

pub fn tweet_store(config: &Config) -> anyhow::Result<Arc<dyn TweetStore>> {
    let path = embedded_dir(config)?.join("tweets.redb");
    let store = EmbeddedTweetStore::open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Arc::new(store))
}

pub fn follow_store(config: &Config) -> anyhow::Result<Arc<dyn FollowStore>> {
    let path = embedded_dir(config)?.join("followers.redb");
    let store = EmbeddedFollowStore::open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Arc::new(store))
}

pub fn feed_store(config: &Config) -> anyhow::Result<Arc<dyn FeedStore>> {
    let path = embedded_dir(config)?.join("feeds.redb");
    let store = EmbeddedFeedStore::open(&path, config.feed_limits)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Arc::new(store))
}

/// The event bus: RabbitMQ when `TWTR_AMQP_URL` is set, else the in-process bus. A service run
/// on its own with the in-process bus can only reach consumers in its own process, which is
/// worth a warning (`all_in_one` is false then).
pub fn event_bus(config: &Config, all_in_one: bool) -> anyhow::Result<Arc<dyn EventBus>> {
    if config.amqp_url.is_some() {
        return Err(not_yet("the RabbitMQ event bus (TWTR_AMQP_URL)"));
    }
    if !all_in_one {
        tracing::warn!("no TWTR_AMQP_URL: events stay on this process's in-process bus");
    }
    let path = config.data_dir.join("bus.redb");
    let bus =
        InProcessBus::open(&path).with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Arc::new(bus))
}

/// One ID generator per process. Replicas must not share a worker number: set
/// `TWTR_WORKER_ID` per replica, or accept the host-name hash (unique per pod name, but two
/// names can collide).
pub fn id_generator(config: &Config) -> anyhow::Result<Arc<IdGenerator>> {
    let worker = match config.worker_id {
        Some(worker) => worker,
        None if matches!(config.storage, Storage::Embedded { .. }) => 0,
        None => {
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            let hash = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let worker = (hash % 1024) as u16;
            tracing::info!(
                worker,
                host,
                "derived the ID worker number from the host name"
            );
            worker
        }
    };
    Ok(Arc::new(IdGenerator::new(worker)?))
}

/// The token signer/verifier. With no configured secret, the embedded mode keeps a generated
/// one in `<data dir>/token_secret`, so tokens survive a restart; a distributed deployment must
/// configure one shared secret.
pub fn tokens(config: &Config) -> anyhow::Result<Tokens> {
    let secret = match &config.token_secret {
        Some(secret) => secret.clone().into_bytes(),
        None if matches!(config.storage, Storage::Embedded { .. }) => {
            local_secret(&config.data_dir)?
        }
        None => anyhow::bail!("TWTR_TOKEN_SECRET must be set when the store is ScyllaDB"),
    };
    let secret = TokenSecret::new(secret).context("invalid TWTR_TOKEN_SECRET")?;
    Ok(Tokens::new(&secret, config.token_ttl))
}

fn local_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("token_secret");
    if let Ok(existing) = std::fs::read(&path) {
        return Ok(existing);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("failed to generate a token secret: {err}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, secret.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a token secret");
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// `twtr migrate`: the embedded store creates its tables when it opens, so there is nothing to
/// apply; ScyllaDB migrations arrive with the ScyllaDB backend.
pub fn migrate(config: &Config) -> anyhow::Result<()> {
    match &config.storage {
        Storage::Embedded { data_dir } => {
            tracing::info!(data_dir = %data_dir.display(), "embedded store: tables are created on open, nothing to migrate");
            Ok(())
        }
        Storage::Scylla { .. } => Err(not_yet("ScyllaDB migrations (TWTR_SCYLLA_NODES)")),
    }
}
