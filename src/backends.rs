//! The one place where configuration picks backends. Domain code only ever sees the traits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use scylla::client::session::Session;
use twtr_common::IdGenerator;
use twtr_common::bus::{EventBus, InProcessBus, QueueSpec, RabbitBus, RabbitConfig};
use twtr_common::cql::{self, CqlConfig, Keyspace, Schema};
use twtr_common::tokens::{self, TokenSigner, TokenVerifier};
use twtr_feeds::{CqlFeedStore, EmbeddedFeedStore, FeedLimits, FeedStore};
use twtr_followers::{CqlFollowStore, EmbeddedFollowStore, FollowStore};
use twtr_tweets::{CqlTweetStore, EmbeddedTweetStore, TweetStore};
use twtr_users::{CqlUserStore, EmbeddedUserStore, UserStore};

use crate::{Config, Storage};

/// Every service's keyspace schema, in the order `twtr migrate` applies them: each service
/// crate owns its own, and hands it over here.
pub const SCHEMAS: [&Schema; 4] = [
    &twtr_users::SCHEMA,
    &twtr_tweets::SCHEMA,
    &twtr_followers::SCHEMA,
    &twtr_feeds::SCHEMA,
];

/// Where this process keeps its rows: the embedded files, or one session on the CQL cluster
/// shared by every service the process runs. Opened once per process by [`storage`].
pub enum StorageBackend {
    Embedded {
        data_dir: PathBuf,
    },
    Cql {
        session: Arc<Session>,
        config: CqlConfig,
    },
}

/// Opens the configured storage: for CQL, connects once.
pub async fn storage(config: &Config) -> anyhow::Result<StorageBackend> {
    match &config.storage {
        Storage::Embedded { data_dir } => Ok(StorageBackend::Embedded {
            data_dir: data_dir.clone(),
        }),
        Storage::Cql(cql) => {
            let session = cql::connect(cql).await.with_context(|| {
                format!("failed to connect to the CQL cluster at {:?}", cql.nodes)
            })?;
            Ok(StorageBackend::Cql {
                session,
                config: cql.clone(),
            })
        }
    }
}

impl StorageBackend {
    /// The keyspace of `schema`, after checking it is current (a service refuses to serve on
    /// a keyspace that is behind, and says what to run).
    async fn keyspace(&self, schema: &Schema) -> anyhow::Result<Keyspace> {
        let StorageBackend::Cql { session, config } = self else {
            anyhow::bail!("not a CQL backend");
        };
        cql::ensure_current(session, config, schema).await?;
        Ok(Keyspace::new(Arc::clone(session), config, schema.service)?)
    }

    pub async fn user_store(&self, ids: Arc<IdGenerator>) -> anyhow::Result<Arc<dyn UserStore>> {
        Ok(match self {
            Self::Embedded { data_dir } => {
                let path = data_dir.join("users.redb");
                Arc::new(
                    EmbeddedUserStore::open(&path)
                        .with_context(|| format!("failed to open {}", path.display()))?,
                )
            }
            Self::Cql { .. } => Arc::new(
                CqlUserStore::new(self.keyspace(&twtr_users::SCHEMA).await?, ids)
                    .await
                    .context("failed to prepare the users statements")?,
            ),
        })
    }

    /// The tweets store; `ids` is the process's ID generator (the CQL store mints the IDs of
    /// the events it rebuilds for changes their callers abandoned).
    pub async fn tweet_store(&self, ids: Arc<IdGenerator>) -> anyhow::Result<Arc<dyn TweetStore>> {
        Ok(match self {
            Self::Embedded { data_dir } => {
                let path = data_dir.join("tweets.redb");
                Arc::new(
                    EmbeddedTweetStore::open(&path)
                        .with_context(|| format!("failed to open {}", path.display()))?,
                )
            }
            Self::Cql { .. } => Arc::new(
                CqlTweetStore::new(self.keyspace(&twtr_tweets::SCHEMA).await?, ids)
                    .await
                    .context("failed to prepare the tweets statements")?,
            ),
        })
    }

    pub async fn follow_store(
        &self,
        ids: Arc<IdGenerator>,
    ) -> anyhow::Result<Arc<dyn FollowStore>> {
        Ok(match self {
            Self::Embedded { data_dir } => {
                let path = data_dir.join("followers.redb");
                Arc::new(
                    EmbeddedFollowStore::open(&path)
                        .with_context(|| format!("failed to open {}", path.display()))?,
                )
            }
            Self::Cql { .. } => Arc::new(
                CqlFollowStore::new(self.keyspace(&twtr_followers::SCHEMA).await?, ids)
                    .await
                    .context("failed to prepare the followers statements")?,
            ),
        })
    }

    pub async fn feed_store(&self, limits: FeedLimits) -> anyhow::Result<Arc<dyn FeedStore>> {
        Ok(match self {
            Self::Embedded { data_dir } => {
                let path = data_dir.join("feeds.redb");
                Arc::new(
                    EmbeddedFeedStore::open(&path, limits)
                        .with_context(|| format!("failed to open {}", path.display()))?,
                )
            }
            Self::Cql { .. } => Arc::new(
                CqlFeedStore::new(self.keyspace(&twtr_feeds::SCHEMA).await?, limits)
                    .await
                    .context("failed to prepare the feeds statements")?,
            ),
        })
    }
}

/// How a process runs the mesh: every part in one process, or some of them (so whatever the
/// parts share, such as the token keys, must come from configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    AllInOne,
    Split,
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
    // The CQL tweet store finishes its writes from its own events (TweetStore::settles_events);
    // the CQL follow store's follows can race a deletion (FollowStore::follow_races_deletion).
    let cql = matches!(config.storage, Storage::Cql(_));
    vec![
        twtr_feeds::queue(&config.consumer),
        twtr_tweets::queue(&config.consumer, cql),
        twtr_followers::queue(&config.consumer, cql),
    ]
}

/// The event bus: RabbitMQ when `TWTR_AMQP_URL` is set, else the in-process bus. A part run on
/// its own with the in-process bus can only reach consumers in its own process, which is worth
/// a warning.
pub async fn event_bus(config: &Config, deployment: Deployment) -> anyhow::Result<Events> {
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
    if deployment == Deployment::Split {
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
    deployment: Deployment,
) -> anyhow::Result<Arc<IdGenerator>> {
    let worker = match (config.worker_id, &events.broker, deployment) {
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
        (None, None, Deployment::AllInOne) => 0,
        (None, None, Deployment::Split) => {
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

/// The private key that signs tokens (the users service's): the configured PEM file, or in
/// `all` with none configured, a key pair generated once into the data directory
/// (`token_private.pem`, mode 0600, and `token_public.pem`), so tokens survive a restart. A part
/// alone refuses to start without its key.
pub fn token_signer(config: &Config, deployment: Deployment) -> anyhow::Result<TokenSigner> {
    warn_about_retired_secret();
    let pem = match (&config.token_private_key, deployment) {
        (Some(path), _) => {
            twtr_common::files::warn_if_readable(path);
            read_key(path)?
        }
        (None, Deployment::AllInOne) => local_key_pair(&config.data_dir)?.0,
        (None, Deployment::Split) => anyhow::bail!(
            "TWTR_TOKEN_PRIVATE_KEY must name the PEM file of the Ed25519 key that signs tokens \
             (openssl genpkey -algorithm ed25519 -out token_private.pem)"
        ),
    };
    TokenSigner::from_pem(&pem, config.token_ttl).context("invalid TWTR_TOKEN_PRIVATE_KEY")
}

/// The public keys that verify tokens (every verifier's): the configured PEM files, or in `all`
/// with none configured, the public half of the key the users service signs with.
pub fn token_verifier(config: &Config, deployment: Deployment) -> anyhow::Result<TokenVerifier> {
    warn_about_retired_secret();
    let pems = match (config.token_public_keys.is_empty(), deployment) {
        (false, _) => config
            .token_public_keys
            .iter()
            .map(|path| read_key(path))
            .collect::<anyhow::Result<Vec<_>>>()?,
        (true, Deployment::AllInOne) => match &config.token_private_key {
            Some(path) => vec![
                tokens::public_key_of(&read_key(path)?)
                    .context("invalid TWTR_TOKEN_PRIVATE_KEY")?,
            ],
            None => vec![local_key_pair(&config.data_dir)?.1],
        },
        // The users service alone may verify with the public half of its signing key.
        (true, Deployment::Split) => match &config.token_private_key {
            Some(path) => vec![
                tokens::public_key_of(&read_key(path)?)
                    .context("invalid TWTR_TOKEN_PRIVATE_KEY")?,
            ],
            None => anyhow::bail!(
                "TWTR_TOKEN_PUBLIC_KEYS must name the PEM file(s) of the public key(s) that verify \
                 tokens: the gateway checks its callers with them, and every service checks who \
                 acts (openssl pkey -in token_private.pem -pubout -out token_public.pem)"
            ),
        },
    };
    TokenVerifier::from_pems(&pems).context("invalid TWTR_TOKEN_PUBLIC_KEYS")
}

fn warn_about_retired_secret() {
    if std::env::var_os("TWTR_TOKEN_SECRET").is_some() {
        tracing::warn!(
            "TWTR_TOKEN_SECRET is no longer used: tokens are signed with an Ed25519 key \
             (TWTR_TOKEN_PRIVATE_KEY) and verified with its public key (TWTR_TOKEN_PUBLIC_KEYS)"
        );
    }
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the key file {}", path.display()))
}

/// The all-in-one key pair in `data_dir`, generated on first use: (private PEM, public PEM).
fn local_key_pair(data_dir: &Path) -> anyhow::Result<(String, String)> {
    let private_path = data_dir.join("token_private.pem");
    let public_path = data_dir.join("token_public.pem");
    if let Ok(private) = std::fs::read_to_string(&private_path) {
        twtr_common::files::private_dir(data_dir)
            .with_context(|| format!("failed to check {}", data_dir.display()))?;
        twtr_common::files::private_file(&private_path)
            .with_context(|| format!("failed to check {}", private_path.display()))?;
        let public = tokens::public_key_of(&private)
            .with_context(|| format!("invalid key in {}", private_path.display()))?;
        return Ok((private, public));
    }
    twtr_common::files::private_dir(data_dir)
        .with_context(|| format!("failed to create {}", data_dir.display()))?;
    let (private, public) =
        tokens::generate_key_pair().context("failed to generate a token key")?;
    write_private(&private_path, private.as_bytes())
        .with_context(|| format!("failed to write {}", private_path.display()))?;
    std::fs::write(&public_path, &public)
        .with_context(|| format!("failed to write {}", public_path.display()))?;
    tracing::info!(path = %private_path.display(), "generated the token signing key");
    Ok((private, public))
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

/// `twtr migrate`: on CQL, creates each service's keyspace and applies its pending schema files
/// (idempotent; safe to run from several places at once); on RabbitMQ, declares every consumer
/// queue. The embedded store creates its tables when it opens, so there it has nothing to do.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    match &config.storage {
        Storage::Embedded { data_dir } => {
            tracing::info!(data_dir = %data_dir.display(), "embedded store: tables are created on open, nothing to migrate");
        }
        Storage::Cql(cql) => {
            let session = cql::connect(cql).await.with_context(|| {
                format!("failed to connect to the CQL cluster at {:?}", cql.nodes)
            })?;
            for schema in SCHEMAS {
                let report = cql::migrate(&session, cql, schema).await.with_context(|| {
                    format!("failed to migrate the {} keyspace", schema.service)
                })?;
                tracing::info!(
                    keyspace = report.keyspace,
                    applied = ?report.applied,
                    version = report.version,
                    "keyspace migrated"
                );
            }
        }
    }
    if config.amqp.is_some() {
        let events = event_bus(config, Deployment::Split).await?;
        drop(events);
        tracing::info!("event queues declared");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use twtr_common::events::EventKind;

    use super::*;

    /// A binding is a routing key some publisher stamps: built from an [`EventKind`], never
    /// written by hand, so no queue waits for events nobody sends.
    #[test]
    fn every_binding_of_every_consumer_queue_is_a_published_kind() {
        let published: HashSet<&str> = EventKind::ALL.iter().map(|k| k.routing_key()).collect();
        assert_eq!(
            published.len(),
            EventKind::ALL.len(),
            "routing keys are distinct"
        );
        let data_dir = std::path::Path::new("unused");
        for storage in [
            Storage::Embedded {
                data_dir: data_dir.to_owned(),
            },
            Storage::Cql(CqlConfig::new(vec!["127.0.0.1:9042".into()])),
        ] {
            let config = Config {
                storage,
                ..Config::embedded(data_dir)
            };
            for queue in consumer_queues(&config) {
                assert!(!queue.bindings.is_empty(), "{} binds something", queue.name);
                for binding in &queue.bindings {
                    assert!(
                        published.contains(binding.as_str()),
                        "{} is bound to {binding}, which no event kind is",
                        queue.name
                    );
                }
            }
        }
    }

    /// Every service's schema applies on a real node (`TWTR_TEST_SCYLLA_NODES`, or the one
    /// `scripts/cassandra.sh` runs): each file once, every table it creates (less those a
    /// later file drops) plus the migrator's two, and a second run changes nothing.
    #[tokio::test]
    async fn every_schema_migrates_and_a_second_run_changes_nothing() {
        let Some(nodes) = twtr_common::testing::cql_nodes() else {
            return;
        };
        let mut config = CqlConfig::new(nodes);
        config.keyspace_prefix = format!(
            "t{}p{}m",
            twtr_common::clock::now_millis(),
            std::process::id()
        );
        let session = cql::connect(&config)
            .await
            .expect("connect to the test node");
        let keyspaces = twtr_common::cql::testing::KeyspaceSet {
            nodes: config.nodes.clone(),
            prefix: config.keyspace_prefix.clone(),
            services: SCHEMAS.iter().map(|s| s.service).collect(),
        };
        for schema in SCHEMAS {
            let service = schema.service;
            let shipped: Vec<u32> = schema.migrations.iter().map(|m| m.version).collect();
            let report = cql::migrate(&session, &config, schema)
                .await
                .unwrap_or_else(|err| panic!("{service}: {err:?}"));
            assert_eq!(report.applied, shipped, "{service}");
            assert_eq!(Some(&report.version), shipped.last(), "{service}");
            let mut tables = 0_usize;
            for migration in schema.migrations {
                for statement in migration.statements().unwrap() {
                    let upper = statement.trim_start().to_uppercase();
                    if upper.starts_with("CREATE TABLE") {
                        tables += 1;
                    } else if upper.starts_with("DROP TABLE") {
                        tables -= 1;
                    }
                }
            }
            let keyspace = config.keyspace(service).unwrap();
            let rows = session
                .query_unpaged(
                    "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                    (keyspace.as_str(),),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            assert_eq!(
                rows.rows_num(),
                tables + 2,
                "{service}: every table of the files, plus the bookkeeping"
            );
            cql::ensure_current(&session, &config, schema)
                .await
                .unwrap();
            let again = cql::migrate(&session, &config, schema).await.unwrap();
            assert!(again.applied.is_empty(), "{service}: {again:?}");
        }
        drop(keyspaces);
    }
}
