//! The one place where configuration picks backends. Domain code only ever sees the traits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use twtr_common::IdGenerator;
use twtr_common::bus::{EventBus, InProcessBus, QueueSpec, RabbitBus, RabbitConfig};
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

/// How a process runs the mesh: every part in one process, or one part alone (so whatever the
/// parts share, such as the token secret, must come from configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    AllInOne,
    Alone,
}

/// The event bus a process uses, and the broker behind it when it is RabbitMQ.
pub struct Events {
    pub bus: Arc<dyn EventBus>,
    broker: Option<RabbitBus>,
}

/// How long startup waits for the broker before going on without it (it keeps reconnecting;
/// events wait in the outbox meanwhile).
const BROKER_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Every queue some consumer of the mesh reads. Each process declares them all on the broker,
/// so an event published by one part reaches its consumers even before they first start.
pub fn consumer_queues(config: &Config) -> Vec<QueueSpec> {
    vec![twtr_feeds::queue(&config.consumer)]
}

/// The event bus: RabbitMQ when `TWTR_AMQP_URL` is set, else the in-process bus. A part run on
/// its own with the in-process bus can only reach consumers in its own process, which is worth
/// a warning.
pub async fn event_bus(config: &Config, part: Part) -> anyhow::Result<Events> {
    if let Some(amqp) = &config.amqp {
        let rabbit = RabbitConfig {
            url: amqp.url.clone(),
            prefix: amqp.prefix.clone(),
            queue_type: amqp.queue_type,
            queue_expiry: amqp.queue_expiry,
            connection_name: format!("twtr pid {}", std::process::id()),
        };
        let broker = RabbitBus::connect(rabbit, BROKER_CONNECT_WAIT).await;
        broker
            .declare(&consumer_queues(config))
            .await
            .context("failed to declare the event queues on RabbitMQ")?;
        return Ok(Events {
            bus: Arc::new(broker.clone()),
            broker: Some(broker),
        });
    }
    if part == Part::Alone {
        tracing::warn!("no TWTR_AMQP_URL: events stay on this process's in-process bus");
    }
    let path = config.data_dir.join("bus.redb");
    let bus =
        InProcessBus::open(&path).with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Events {
        bus: Arc::new(bus),
        broker: None,
    })
}

/// One ID generator per process, with a worker number no other live process uses: the
/// configured one, else one leased from the RabbitMQ broker (held as long as this process is
/// connected), else 0 for the all-in-one mesh (one process, one generator) and a hash of host
/// name and process id for a part on its own (whose events stay in its process anyway).
pub async fn id_generator(
    config: &Config,
    events: &Events,
    part: Part,
) -> anyhow::Result<Arc<IdGenerator>> {
    let worker = match (config.worker_id, &events.broker, part) {
        (Some(worker), _, _) => worker,
        (None, Some(broker), _) => {
            let start = (host_hash() % 1024) as u16;
            let worker = broker
                .lease_worker_id(start)
                .await
                .context("failed to lease a worker number from RabbitMQ")?;
            tracing::info!(worker, "leased the ID worker number from the event broker");
            worker
        }
        (None, None, Part::AllInOne) => 0,
        (None, None, Part::Alone) => {
            let worker = (host_hash() % 1024) as u16;
            tracing::info!(
                worker,
                "derived the ID worker number from the host name and pid"
            );
            worker
        }
    };
    Ok(Arc::new(IdGenerator::new(worker)?))
}

/// FNV-1a of the host name and process id: a starting point that differs between processes.
fn host_hash() -> u64 {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let seed = format!("{host}/{}", std::process::id());
    seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The token signer/verifier. With no configured secret, the all-in-one mesh keeps a generated
/// one in `<data dir>/token_secret`, so tokens survive a restart; parts run on their own must
/// share one configured secret, or the gateway could not verify what the users service signs.
pub fn tokens(config: &Config, part: Part) -> anyhow::Result<Tokens> {
    let secret = match (&config.token_secret, part) {
        (Some(secret), _) => secret.clone().into_bytes(),
        (None, Part::AllInOne) => local_secret(&config.data_dir)?,
        (None, Part::Alone) => anyhow::bail!(
            "TWTR_TOKEN_SECRET must be set when a part runs on its own: the users service and the gateway must share it"
        ),
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
