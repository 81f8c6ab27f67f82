//! The RabbitMQ event bus (through `lapin`), for the distributed deployment.
//!
//! # Topology (durable unless said; `<p>` is [`RabbitConfig::prefix`], `twtr` by default)
//!
//! | name | kind | what it is for |
//! |---|---|---|
//! | `<p>.events` | topic exchange | every domain event, routing key `<service>.<event>` |
//! | `<p>.<queue>` | queue (quorum by default) | a consuming service's work queue, bound to the keys it handles; its replicas are competing consumers |
//! | `<p>.<queue>.retry.<delay>` | queue per delay tier ([`RetryPolicy::tiers`]: `1s`, `2s`, ... `300s`), message TTL = the tier | a failed message waits here (its own `expiration`, jittered, at most the tier), then dead-letters back into the tail of the work queue |
//! | `<p>.<queue>.dead` | queue | messages given up on, with `x-twtr-last-error`, `x-twtr-failures`, `x-twtr-first-failed-at` and `x-twtr-dead-at` headers; re-driven into the work queue by an operator |
//! | `<p>.unrouted` | queue (quorum by default), at most 100,000 messages | events that no queue was bound for (a mandatory publish came back); kept, not dropped |
//! | `<p>.worker.<n>` | exclusive queue | the lease on Snowflake worker number `n` held by one live process |
//! | `<p>.notices` | topic exchange, not durable | notices ([`EventBus::broadcast`]), routing key = the topic |
//! | `amq.gen-…` | server-named, exclusive, auto-delete classic queue per listener, at most 10,000 notices (the oldest dropped) | one [`EventBus::listen`]er's notices, bound to its topic; gone with its channel |
//!
//! # Failure handling
//!
//! One connection per process. Publishing uses one confirm-mode channel with pipelined confirms;
//! each subscription has its own channel with `basic.qos` set to its prefetch. A supervisor task
//! watches the connection: when it drops, readiness turns false, the outage is logged once,
//! and it reconnects with capped exponential backoff, re-declaring every known queue before
//! anyone may publish. Subscriptions re-open their channel on the new connection; deliveries
//! that were in flight are redelivered by the broker.
//!
//! Notices go out on a channel of their own, not in confirm mode and not mandatory: nothing waits
//! for the broker, and a topic nobody listens to drops them. Each listener has its own channel,
//! queue and consumer (`no_ack`), and a task that hands its notices over through a bounded
//! buffer; when the listener falls behind, or the connection is lost, notices are dropped and
//! the listener hears [`Heard::Missed`] once (after a reconnection, only once its queue is bound
//! again on the new connection, so that what it then looks at misses nothing from that point).
//!
//! # A cluster of brokers
//!
//! [`RabbitConfig::url`] may list several brokers, the nodes of one cluster
//! ([`Brokers`]). A process connects to one of them, starting at a random one so that a
//! deployment's connections spread over the nodes, and when that connection drops or an attempt
//! fails it tries the next one at once, round-robin; only when every broker has failed in a row
//! does it back off. Quorum queues keep their messages on a majority of the nodes, so with one
//! node down every queue is still there: the new connection re-declares it, consumers resume
//! from it, and what was delivered but not acknowledged on the lost connection is delivered
//! again. Where each quorum queue's leader goes is the broker's choice (`queue_leader_locator =
//! balanced` in `rabbitmq.conf` spreads them; see the README): queue arguments cannot say it,
//! because RabbitMQ refuses to re-declare an existing queue with an argument it was not created
//! with, which would lock every process of an existing deployment out of its queues.
//!
//! Everything published straight into a queue (a retry, a dead letter, a parked event) is
//! mandatory: a queue the broker cannot reach right now (a classic queue whose node is down)
//! sends the message back instead of dropping it, and the message it came from is kept.
//!
//! A negative confirm (nack) fails the message (the outbox keeps it) and also replaces the
//! publisher channel with a new one. RabbitMQ 3.10 leaves a channel that first published to a
//! quorum queue while the queue was electing a new leader (its old leader's node had just
//! died) nacking every later message to that queue for good, while a new channel publishes to
//! it at once; a nack otherwise only means the message was refused, and a new channel costs
//! nothing.
//!
//! A message waits out a retry in the delay queue of the smallest tier that holds its delay:
//! RabbitMQ expires messages only from the head of a queue, so one queue per tier keeps a short
//! delay from waiting behind a long one (within a tier, a message waits at most the tier).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use twtr_proto::events::v1::Envelope;

use super::{
    Acker, BusError, DeadLetter, Delivery, EventBus, FailureRecord, Heard, Listener, QueueDepths,
    QueueSpec, Readiness, RetryPolicy, Subscription,
};
use crate::error::error_chain;
use crate::{clock, lock, metrics};

/// Header carrying how many deliveries of a message have failed so far.
const FAILURES_HEADER: &str = "x-twtr-failures";
/// Header carrying the error of a message's last failed delivery.
const LAST_ERROR_HEADER: &str = "x-twtr-last-error";
/// Header carrying the routing key a message was first published with.
const ROUTING_KEY_HEADER: &str = "x-twtr-routing-key";
/// Header carrying when a message's first attempt failed (Unix milliseconds).
const FIRST_FAILED_HEADER: &str = "x-twtr-first-failed-at";
/// Header carrying when a message was dead-lettered (Unix milliseconds).
const DEAD_AT_HEADER: &str = "x-twtr-dead-at";
/// Bound on the queue of unroutable events, so a forgotten binding cannot fill the broker.
const UNROUTED_MAX: i64 = 100_000;
/// Notices a listener's queue holds at most (the oldest go first): a listener that is stuck must
/// not grow the broker.
const NOTICE_QUEUE_MAX: i64 = 10_000;
/// Notices a listener may leave unread before it hears [`Heard::Missed`].
const NOTICE_BACKLOG: usize = 1024;
const HEALTH_POLL: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The queue type for work, retry and dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated (Raft) queues: what production on a three-node cluster should use.
    Quorum,
    /// Classic queues, for brokers without quorum queues.
    Classic,
}

impl QueueType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// How to reach the broker and name things on it.
#[derive(Clone)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:5672/vhost`, or several such URLs separated by commas (the
    /// nodes of a cluster; see [`Brokers`]). It holds a password, so it never shows in `Debug`.
    pub url: String,
    /// Prefix of every exchange and queue name, so several deployments can share a broker.
    pub prefix: String,
    pub queue_type: QueueType,
    /// Deletes queues unused for this long (`x-expires`): for throwaway environments such as
    /// tests; `None` in production.
    pub queue_expiry: Option<Duration>,
    /// Shown in the broker's connection list.
    pub connection_name: String,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("queue_type", &self.queue_type)
            .field("queue_expiry", &self.queue_expiry)
            .finish()
    }
}

impl RabbitConfig {
    fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    fn unrouted(&self) -> String {
        format!("{}.unrouted", self.prefix)
    }

    fn work_queue(&self, queue: &str) -> String {
        format!("{}.{queue}", self.prefix)
    }

    /// The delay queue of `queue` for the tier `delay`, e.g. `twtr.feeds.retry.4s`.
    fn delay_queue(&self, queue: &str, delay: Duration) -> String {
        let tier = if delay.subsec_millis() == 0 {
            format!("{}s", delay.as_secs())
        } else {
            format!("{}ms", delay.as_millis())
        };
        format!("{}.{queue}.retry.{tier}", self.prefix)
    }

    fn dead_queue(&self, queue: &str) -> String {
        format!("{}.{queue}.dead", self.prefix)
    }

    fn worker_queue(&self, worker: u16) -> String {
        format!("{}.worker.{worker}", self.prefix)
    }

    fn notices(&self) -> String {
        format!("{}.notices", self.prefix)
    }
}

/// How long a connection may stay silent (no frame, not even a heartbeat) before it is taken for
/// dead, unless the URL says otherwise (`?heartbeat=<seconds>`). RabbitMQ proposes 60 s; a broker
/// that vanished without closing its sockets (a frozen VM, a network cut) would then hold the
/// process's events for minutes instead of seconds.
const HEARTBEAT_SECS: u16 = 10;
/// How long opening a TCP connection to a broker may take, unless the URL says otherwise
/// (`?connection_timeout=<ms>`): an address that drops packets must not stall the move to the
/// next broker.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The brokers `TWTR_AMQP_URL` names: one `amqp://` (or `amqps://`) URL, or several separated by
/// commas, the nodes of one cluster (`amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f`).
/// A comma inside a password must be written `%2C`. Each URL gets a 10 s heartbeat and a 5 s
/// connect timeout unless it sets its own.
///
/// `Debug` and [`Brokers::address`] show hosts and ports only, never credentials.
#[derive(Clone)]
pub struct Brokers {
    uris: Vec<AMQPUri>,
}

/// A `TWTR_AMQP_URL` entry that is not a broker URL. Says which entry, never what it holds (it
/// may hold a password).
#[derive(Debug, thiserror::Error)]
#[error(
    "entry {position} of the RabbitMQ URL list is not a valid amqp:// URL \
     (amqp://user:password@host:port/vhost, several separated by commas)"
)]
pub struct InvalidBrokerUrl {
    /// 1 for the first entry.
    pub position: usize,
}

impl Brokers {
    pub fn parse(urls: &str) -> Result<Self, InvalidBrokerUrl> {
        let mut uris = Vec::new();
        for (i, url) in urls.split(',').enumerate() {
            let invalid = || InvalidBrokerUrl { position: i + 1 };
            let url = url.trim();
            if url.is_empty() {
                return Err(invalid());
            }
            // The parser's own message quotes the URL, password included: not passed on.
            let mut uri: AMQPUri = url.parse().map_err(|_| invalid())?;
            if uri.authority.host.is_empty() {
                return Err(invalid());
            }
            uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
            uri.query
                .connection_timeout
                .get_or_insert(CONNECT_TIMEOUT_MS);
            uris.push(uri);
        }
        Ok(Self { uris })
    }

    pub fn len(&self) -> usize {
        self.uris.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }

    /// `host:port` of the `index`-th broker (modulo their number): what logs name.
    pub fn address(&self, index: usize) -> String {
        match self.uris.get(index % self.uris.len().max(1)) {
            Some(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
            None => String::new(),
        }
    }
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries((0..self.uris.len()).map(|i| self.address(i)))
            .finish()
    }
}

/// The RabbitMQ bus; cheap to clone, share one per process.
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("config", &self.inner.config)
            .finish()
    }
}

struct Inner {
    config: RabbitConfig,
    /// [`RabbitConfig::url`], parsed; an invalid list fails every connection attempt.
    brokers: Result<Brokers, String>,
    /// The broker (an index into `brokers`) the next connection attempt goes to: after each
    /// attempt, the one after it, so a lost or refused broker is not tried again first.
    next_broker: AtomicUsize,
    /// The current connection, if it is up.
    live: Mutex<Option<Live>>,
    /// Every queue this process declared, re-declared on each new connection.
    queues: Mutex<Vec<QueueSpec>>,
    /// Delay queues declared on the current connection (declared when first needed).
    delay_queues: Mutex<HashSet<String>>,
    /// The worker number this process leases, re-claimed on each new connection.
    worker: Mutex<Option<u16>>,
    /// Routing keys already reported as unroutable (each is logged once).
    unrouted_keys: Mutex<HashSet<String>>,
    /// When the publisher channel was last replaced after a nack (see the module docs): at most
    /// once a second, so a burst of nacks does not open a burst of channels.
    publisher_renewed: Mutex<Option<std::time::Instant>>,
    ready: watch::Sender<bool>,
    /// Stops the supervisor when the last handle goes.
    stop: CancellationToken,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    /// Confirm mode: every publish is acknowledged by the broker.
    publisher: Channel,
    /// Notices go out here, unconfirmed, so they neither wait for nor disturb `publisher`'s
    /// confirms. Replaced when a channel error closed it (see [`Inner::notifier`]).
    notifier: Channel,
    /// `host:port` of the broker this connection is to.
    broker: String,
}

impl Live {
    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn bus_error(err: lapin::Error) -> BusError {
    BusError::backend(err)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

impl RabbitBus {
    /// A bus on the broker at `config.url`. It connects in the background: the first
    /// connection attempt is awaited (up to `connect_timeout`), so a reachable broker is ready
    /// when this returns, and an unreachable one is retried without holding up startup.
    pub async fn connect(config: RabbitConfig, connect_timeout: Duration) -> Self {
        let (ready, mut ready_rx) = watch::channel(false);
        let brokers = Brokers::parse(&config.url).map_err(|err| err.to_string());
        // A random first broker, so that a deployment's processes spread over a cluster's nodes.
        let first = match (&brokers, getrandom::u64()) {
            (Ok(brokers), Ok(random)) => (random % brokers.len().max(1) as u64) as usize,
            _ => 0,
        };
        let inner = Arc::new(Inner {
            config,
            brokers,
            next_broker: AtomicUsize::new(first),
            live: Mutex::new(None),
            queues: Mutex::new(Vec::new()),
            delay_queues: Mutex::new(HashSet::new()),
            worker: Mutex::new(None),
            unrouted_keys: Mutex::new(HashSet::new()),
            publisher_renewed: Mutex::new(None),
            ready,
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), inner.stop.clone()));
        let _ = tokio::time::timeout(connect_timeout, ready_rx.wait_for(|up| *up)).await;
        Self { inner }
    }

    /// Declares `queues` (and their retry and dead-letter queues and bindings) now if connected,
    /// and again on every reconnect, so events published from now on reach them even before
    /// their consumers start.
    pub async fn declare(&self, queues: &[QueueSpec]) -> Result<(), BusError> {
        for spec in queues {
            self.inner.remember(spec);
        }
        if let Some(live) = self.inner.live() {
            let channel = live.connection.create_channel().await.map_err(bus_error)?;
            for spec in queues {
                declare_queue(&channel, &self.inner.config, spec).await?;
            }
            let _ = channel.close(200, "declared".into()).await;
        }
        Ok(())
    }

    /// Leases a Snowflake worker number no other live process on this broker holds: an
    /// exclusive queue `<prefix>.worker.<n>`, which the broker deletes when this process's
    /// connection ends. Waits for the broker if it is not reachable yet.
    pub async fn lease_worker_id(&self, start: u16) -> Result<u16, BusError> {
        let live = self.inner.wait_live().await?;
        for offset in 0..=crate::id::MAX_WORKER {
            let worker = (start + offset) % (crate::id::MAX_WORKER + 1);
            match claim_worker(&live, &self.inner.config, worker).await {
                Ok(true) => {
                    *lock(&self.inner.worker) = Some(worker);
                    return Ok(worker);
                }
                Ok(false) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(BusError::backend(std::io::Error::other(
            "every worker number is leased by another process",
        )))
    }

    /// Waits until the bus is connected (for tests and tools).
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|up| *up).await;
    }

    /// `host:port` of the broker the bus is connected to right now, if it is.
    pub fn broker(&self) -> Option<String> {
        self.inner.live().map(|live| live.broker)
    }
}

impl Inner {
    fn live(&self) -> Option<Live> {
        lock(&self.live).clone().filter(Live::is_up)
    }

    /// The live connection, waiting for the supervisor to establish one.
    async fn wait_live(&self) -> Result<Live, BusError> {
        let mut ready = self.ready.subscribe();
        loop {
            if let Some(live) = self.live() {
                return Ok(live);
            }
            tokio::select! {
                changed = ready.changed() => if changed.is_err() { return Err(BusError::Closed) },
                () = tokio::time::sleep(HEALTH_POLL) => {}
                () = self.stop.cancelled() => return Err(BusError::Closed),
            }
        }
    }

    fn remember(&self, spec: &QueueSpec) {
        let mut queues = lock(&self.queues);
        if !queues.iter().any(|known| known == spec) {
            queues.push(spec.clone());
        }
    }

    /// Opens a connection to the next broker and declares everything this process relies on,
    /// before anyone may use it. Fails with the broker's `host:port` in the error.
    async fn open(&self) -> Result<Live, BrokerError> {
        let brokers = self
            .brokers
            .as_ref()
            .map_err(|invalid| BrokerError::new("list", std::io::Error::other(invalid.clone())))?;
        let index = self.next_broker.fetch_add(1, Ordering::Relaxed) % brokers.len().max(1);
        let broker = brokers.address(index);
        self.open_at(brokers.uris[index].clone(), broker.clone())
            .await
            .map_err(|err| BrokerError { broker, err })
    }

    async fn open_at(&self, uri: AMQPUri, broker: String) -> Result<Live, BusError> {
        let config = &self.config;
        // A new connection (perhaps to a broker that lost its queues) declares them anew.
        lock(&self.delay_queues).clear();
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.as_str().into());
        let connection = Arc::new(
            Connection::connect_uri(uri, properties)
                .await
                .map_err(bus_error)?,
        );
        let publisher = connection.create_channel().await.map_err(bus_error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(bus_error)?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        publisher
            .exchange_declare(
                config.exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(bus_error)?;
        let notifier = connection.create_channel().await.map_err(bus_error)?;
        if let Err(err) = declare_notices(&notifier, config).await {
            if !connection.status().connected() {
                return Err(err);
            }
            // Notices are best effort: events flow without them. Each broadcast tries again.
            tracing::warn!(
                exchange = config.notices(),
                broker,
                error = %error_chain(&err),
                "cannot declare the notices exchange; broadcasts fail until it can be"
            );
        }
        let live = Live {
            connection,
            publisher,
            notifier,
            broker,
        };
        if let Err(err) = declare_unrouted(&live, config).await {
            if !live.is_up() {
                return Err(err);
            }
            // Not a reason to stay disconnected: such events wait in the outbox meanwhile.
            tracing::warn!(
                queue = config.unrouted(),
                broker = live.broker,
                error = %error_chain(&err),
                "the queue for unroutable events is unavailable; such events stay in the outbox until it is back"
            );
        }
        let queues = lock(&self.queues).clone();
        for spec in &queues {
            declare_queue(&live.publisher, config, spec).await?;
        }
        let worker = *lock(&self.worker);
        if let Some(worker) = worker
            && !claim_worker(&live, config, worker).await?
        {
            // Another process took this number while we were disconnected: going on would
            // let two processes mint the same IDs. Crash; the outbox keeps every event.
            tracing::error!(
                worker,
                "lost the worker-number lease to another process while the broker was unreachable; exiting"
            );
            crate::telemetry::exit(70);
        }
        Ok(live)
    }

    /// Publishes `body` straight into `queue` (through the default exchange) and waits for the
    /// broker's confirm. Mandatory: when the queue cannot take it right now (a classic queue on a
    /// node that is down would otherwise swallow it), the message comes back and this fails.
    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
        expiration: Option<Duration>,
    ) -> Result<(), BusError> {
        let live = self.live().ok_or(BusError::Unavailable)?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/x-protobuf".into())
            .with_headers(headers);
        if let Some(expiration) = expiration {
            properties = properties.with_expiration(expiration.as_millis().to_string().into());
        }
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = live
            .publisher
            .basic_publish("".into(), queue.into(), mandatory, body, properties)
            .await
            .map_err(bus_error)?
            .await
            .map_err(bus_error)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BusError::Unroutable),
            _ => {
                self.renew_publisher(&live.publisher).await;
                Err(BusError::Refused)
            }
        }
    }

    /// Replaces the publisher channel `stale` with a new confirm-mode channel, after a nack
    /// (see the module docs), unless another task did already or one did in the last second.
    /// Confirms still pending on `stale` fail when it closes; their messages stay in the outbox.
    async fn renew_publisher(&self, stale: &Channel) {
        const AT_MOST_EVERY: Duration = Duration::from_secs(1);
        let Some(live) = self.live() else { return };
        if live.publisher.id() != stale.id()
            || lock(&self.publisher_renewed).is_some_and(|at| at.elapsed() < AT_MOST_EVERY)
        {
            return;
        }
        *lock(&self.publisher_renewed) = Some(std::time::Instant::now());
        let Ok(fresh) = live.connection.create_channel().await else {
            return;
        };
        if fresh
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            return;
        }
        let mut fresh = Some(fresh);
        let replaced = match lock(&self.live).as_mut() {
            Some(current) if current.publisher.id() == stale.id() => fresh
                .take()
                .map(|fresh| std::mem::replace(&mut current.publisher, fresh)),
            _ => None,
        };
        if let Some(old) = replaced {
            tracing::debug!(
                broker = live.broker,
                "replaced the publisher channel after a nack"
            );
            let _ = old.close(200, "replaced after a nack".into()).await;
        } else if let Some(unused) = fresh {
            let _ = unused.close(200, "not needed".into()).await;
        }
    }

    /// The channel notices go out on: `live`'s, or when a channel error closed it (a notices
    /// exchange that could not be declared, or was deleted under it) a new one, with the
    /// exchange declared again.
    async fn notifier(&self, live: &Live) -> Result<Channel, BusError> {
        if live.notifier.status().connected() {
            return Ok(live.notifier.clone());
        }
        let fresh = live.connection.create_channel().await.map_err(bus_error)?;
        declare_notices(&fresh, &self.config).await?;
        if let Some(current) = lock(&self.live).as_mut()
            && Arc::ptr_eq(&current.connection, &live.connection)
        {
            current.notifier = fresh.clone();
        }
        Ok(fresh)
    }

    /// Keeps an event that no queue was bound for in the unrouted queue, and says so once per
    /// routing key.
    async fn park_unrouted(&self, routing_key: &str, body: &[u8]) -> Result<(), BusError> {
        if lock(&self.unrouted_keys).insert(routing_key.to_owned()) {
            tracing::warn!(
                routing_key,
                queue = self.config.unrouted(),
                "no queue is bound for this event type; keeping such events in the unrouted queue"
            );
        }
        let mut headers = FieldTable::default();
        headers.insert(ROUTING_KEY_HEADER.into(), long_string(routing_key));
        self.publish_to_queue(&self.config.unrouted(), body, headers, None)
            .await
    }

    /// Declares `queue`'s delay queue for the tier `tier` unless this connection did already,
    /// and returns its name.
    async fn delay_queue(&self, queue: &str, tier: Duration) -> Result<String, BusError> {
        let name = self.config.delay_queue(queue, tier);
        if lock(&self.delay_queues).contains(&name) {
            return Ok(name);
        }
        let live = self.live().ok_or(BusError::Unavailable)?;
        // A channel of its own: a refused declaration closes the channel it was made on.
        let channel = live.connection.create_channel().await.map_err(bus_error)?;
        declare_delay_queue(&channel, &self.config, queue, tier).await?;
        let _ = channel.close(200, "declared".into()).await;
        lock(&self.delay_queues).insert(name.clone());
        Ok(name)
    }
}

/// Declares the queue that keeps unroutable events: of the configured type (replicated on a
/// cluster), on a channel of its own (a refused declaration closes its channel). Earlier
/// versions made it a classic queue, which cannot be re-declared as another type: one that
/// exists is kept as it is (delete it once empty to have it re-created).
async fn declare_unrouted(live: &Live, config: &RabbitConfig) -> Result<(), BusError> {
    let mut args = base_args(config);
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(UNROUTED_MAX));
    let channel = live.connection.create_channel().await.map_err(bus_error)?;
    if channel
        .queue_declare(config.unrouted().into(), durable_queue(), args)
        .await
        .is_ok()
    {
        let _ = channel.close(200, "declared".into()).await;
        return Ok(());
    }
    let channel = live.connection.create_channel().await.map_err(bus_error)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(config.unrouted().into(), passive, FieldTable::default())
        .await
        .map_err(bus_error)?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The arguments of every queue: its type, and its expiry where configured (tests).
fn base_args(config: &RabbitConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        long_string(config.queue_type.as_str()),
    );
    if let Some(expiry) = config.queue_expiry {
        let ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    args
}

/// Declares `queue`'s delay queue for `tier`: messages expire after at most `tier` (each may
/// carry a shorter `expiration`) and dead-letter back into the work queue.
async fn declare_delay_queue(
    channel: &Channel,
    config: &RabbitConfig,
    queue: &str,
    tier: Duration,
) -> Result<(), BusError> {
    let mut args = base_args(config);
    let ttl = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&config.work_queue(queue)),
    );
    if config.queue_type == QueueType::Quorum {
        // Without these, a quorum queue dead-letters at most once: a message could be lost
        // between the delay queue and the work queue if a node fails at that moment.
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
    }
    channel
        .queue_declare(
            config.delay_queue(queue, tier).as_str().into(),
            durable_queue(),
            args,
        )
        .await
        .map_err(bus_error)?;
    Ok(())
}

/// Declares the notices exchange: not durable, since notices are never kept and every
/// connection declares it again.
async fn declare_notices(channel: &Channel, config: &RabbitConfig) -> Result<(), BusError> {
    channel
        .exchange_declare(
            config.notices().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(bus_error)
}

/// Declares `spec`'s work, delay and dead-letter queues and binds the work queue.
async fn declare_queue(
    channel: &Channel,
    config: &RabbitConfig,
    spec: &QueueSpec,
) -> Result<(), BusError> {
    let (work, dead) = (config.work_queue(&spec.name), config.dead_queue(&spec.name));
    channel
        .queue_declare(work.as_str().into(), durable_queue(), base_args(config))
        .await
        .map_err(bus_error)?;
    channel
        .queue_declare(dead.as_str().into(), durable_queue(), base_args(config))
        .await
        .map_err(bus_error)?;
    // Every delay tier up front: a queue's depth counts them, and a count of a queue that does
    // not exist would close its channel (which lapin logs as an error).
    for tier in spec.retry.tiers() {
        declare_delay_queue(channel, config, &spec.name, tier).await?;
    }
    for binding in &spec.bindings {
        channel
            .queue_bind(
                work.as_str().into(),
                config.exchange().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(bus_error)?;
    }
    Ok(())
}

/// Tries to take the lease on `worker`: true if this connection now holds it, false if another
/// connection does.
async fn claim_worker(live: &Live, config: &RabbitConfig, worker: u16) -> Result<bool, BusError> {
    // A refused declare closes its channel, so each try gets a fresh one.
    let channel = live.connection.create_channel().await.map_err(bus_error)?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let claimed = channel
        .queue_declare(
            config.worker_queue(worker).into(),
            options,
            FieldTable::default(),
        )
        .await;
    match claimed {
        Ok(_) => {
            let _ = channel.close(200, "leased".into()).await;
            Ok(true)
        }
        // RESOURCE_LOCKED: another connection holds this exclusive queue.
        Err(_) if live.connection.status().connected() => Ok(false),
        Err(err) => Err(bus_error(err)),
    }
}

/// A failed connection attempt, and the broker (`host:port`) it was to.
#[derive(Debug, thiserror::Error)]
#[error("broker {broker}")]
struct BrokerError {
    broker: String,
    #[source]
    err: BusError,
}

impl BrokerError {
    fn new(broker: &str, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            broker: broker.to_owned(),
            err: BusError::backend(err),
        }
    }
}

/// Keeps the connection up: reconnects when it drops, to the next broker at once and, once
/// every broker has failed in a row, with capped exponential backoff; publishes readiness.
/// Logs an outage once when it starts and once when it ends.
async fn supervise(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut outage_logged = false;
    // Attempts that failed since the last connection: a full round of the brokers backs off.
    let mut failed_in_a_row = 0_usize;
    // The broker of the connection that was up at the last look, to report losing it.
    let mut connected: Option<String> = None;
    loop {
        let Some(bus) = inner.upgrade() else { return };
        if bus.live().is_some() {
            bus.ready
                .send_if_modified(|up| !std::mem::replace(up, true));
            drop(bus);
            tokio::select! {
                () = tokio::time::sleep(HEALTH_POLL) => continue,
                () = stop.cancelled() => return,
            }
        }
        bus.ready
            .send_if_modified(|up| std::mem::replace(up, false));
        if let Some(lost) = connected.take() {
            metrics::dependency_up("event_broker", false);
            tracing::warn!(
                broker = lost,
                "lost the connection to the event broker; reconnecting (events wait in the outbox)"
            );
            outage_logged = true;
        }
        match bus.open().await {
            Ok(live) => {
                let broker = live.broker.clone();
                *lock(&bus.live) = Some(live);
                bus.ready.send_replace(true);
                metrics::dependency_up("event_broker", true);
                if outage_logged {
                    tracing::info!(broker, "event broker connection restored");
                } else {
                    tracing::info!(
                        broker,
                        prefix = bus.config.prefix,
                        "connected to the event broker"
                    );
                }
                connected = Some(broker);
                outage_logged = false;
                backoff = MIN_BACKOFF;
                failed_in_a_row = 0;
            }
            Err(err) => {
                *lock(&bus.live) = None;
                metrics::dependency_up("event_broker", false);
                if !outage_logged {
                    tracing::warn!(
                        error = %error_chain(&err),
                        "event broker unreachable; events wait in the outbox while reconnecting"
                    );
                    outage_logged = true;
                } else {
                    tracing::debug!(error = %error_chain(&err), "event broker still unreachable");
                }
                failed_in_a_row += 1;
                let brokers = bus.brokers.as_ref().map_or(1, Brokers::len).max(1);
                drop(bus);
                // The next broker at once, unless every one of them just failed.
                if failed_in_a_row.is_multiple_of(brokers) {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[async_trait]
impl EventBus for RabbitBus {
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), BusError>> {
        let Some(live) = self.inner.live() else {
            return events.iter().map(|_| Err(BusError::Unavailable)).collect();
        };
        let exchange = self.inner.config.exchange();
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // Send everything first, then collect the confirms: many events in flight at once.
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/x-protobuf".into())
                .with_message_id(event.event_id.to_string().into())
                .with_type(event.r#type.as_str().into());
            let body = event.encode_to_vec();
            let sent = live
                .publisher
                .basic_publish(
                    exchange.as_str().into(),
                    event.r#type.as_str().into(),
                    mandatory,
                    &body,
                    properties,
                )
                .await;
            match sent {
                Ok(confirm) => pending.push(Ok((confirm, body))),
                Err(err) => {
                    pending.push(Err(bus_error(err)));
                    break;
                }
            }
        }
        let mut results = Vec::with_capacity(events.len());
        let mut nacked = false;
        for (event, sent) in events.iter().zip(pending) {
            let result = match sent {
                Err(err) => Err(err),
                Ok((confirm, body)) => match confirm.await {
                    Ok(Confirmation::Ack(None)) => Ok(()),
                    Ok(Confirmation::Ack(Some(_returned))) => {
                        self.inner.park_unrouted(&event.r#type, &body).await
                    }
                    Ok(_) => {
                        nacked = true;
                        Err(BusError::Refused)
                    }
                    Err(err) => Err(bus_error(err)),
                },
            };
            results.push(result);
        }
        if nacked {
            self.inner.renew_publisher(&live.publisher).await;
        }
        // Whatever was not even sent failed too.
        results.resize_with(events.len(), || Err(BusError::Unavailable));
        results
    }

    async fn subscribe(&self, spec: &QueueSpec) -> Result<Box<dyn Subscription>, BusError> {
        self.declare(std::slice::from_ref(spec)).await?;
        let weak = Arc::downgrade(&self.inner);
        super::sample_depths(spec.name.clone(), move || {
            weak.upgrade().map(|inner| RabbitBus { inner })
        });
        Ok(Box::new(RabbitSubscription {
            inner: Arc::clone(&self.inner),
            spec: spec.clone(),
            consumer: None,
        }))
    }

    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let live = self.inner.live().ok_or(BusError::Unavailable)?;
        let channel = live.connection.create_channel().await.map_err(bus_error)?;
        let dead = self.inner.config.dead_queue(queue);
        let mut out = Vec::new();
        while out.len() < max {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(bus_error)?;
            let Some(message) = got else { break };
            out.push(dead_letter_of(message.delivery));
        }
        // Closing the channel returns every message it got, unacknowledged, to the queue.
        channel
            .close(200, "peeked".into())
            .await
            .map_err(bus_error)?;
        Ok(out)
    }

    /// Takes up to `max` wanted dead letters (each re-published into the work queue with a
    /// clean record and a confirm before it is acknowledged, so a failure in between leaves a
    /// copy in both queues, never in neither); the others go back when the channel closes.
    async fn redrive(&self, queue: &str, max: usize, only: &[u64]) -> Result<usize, BusError> {
        /// Dead letters looked at per call when only some event IDs are wanted.
        const SCAN: usize = 10_000;
        let live = self.inner.live().ok_or(BusError::Unavailable)?;
        let channel = live.connection.create_channel().await.map_err(bus_error)?;
        let (dead, work) = (
            self.inner.config.dead_queue(queue),
            self.inner.config.work_queue(queue),
        );
        let (mut moved, mut looked) = (0, 0);
        while moved < max && looked < SCAN {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(bus_error)?;
            let Some(message) = got else { break };
            looked += 1;
            let delivery = message.delivery;
            let wanted = only.is_empty()
                || Envelope::decode(delivery.data.as_slice())
                    .is_ok_and(|event| only.contains(&event.event_id));
            if !wanted {
                continue;
            }
            let mut headers = FieldTable::default();
            let routing_key = header_string(&delivery.properties, ROUTING_KEY_HEADER)
                .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
            headers.insert(ROUTING_KEY_HEADER.into(), long_string(&routing_key));
            self.inner
                .publish_to_queue(&work, &delivery.data, headers, None)
                .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(bus_error)?;
            moved += 1;
        }
        channel
            .close(200, "redriven".into())
            .await
            .map_err(bus_error)?;
        Ok(moved)
    }

    /// From passive declarations: RabbitMQ counts the messages ready in a queue (those a
    /// consumer holds unacknowledged, at most its prefetch, are not counted).
    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let live = self.inner.live().ok_or(BusError::Unavailable)?;
        let config = &self.inner.config;
        let retry = lock(&self.inner.queues)
            .iter()
            .find(|spec| spec.name == queue)
            .map_or_else(RetryPolicy::default, |spec| spec.retry);
        let mut delay_queues: Vec<String> = retry
            .tiers()
            .into_iter()
            .map(|tier| config.delay_queue(queue, tier))
            .collect();
        let work = count_messages(&live, &config.work_queue(queue)).await?;
        let dead = count_messages(&live, &config.dead_queue(queue)).await?;
        let mut delayed = 0;
        for name in delay_queues.drain(..) {
            // A delay queue that does not exist yet holds nothing.
            delayed += count_messages(&live, &name).await?.unwrap_or(0);
        }
        Ok(QueueDepths {
            waiting: work.unwrap_or(0) + delayed,
            dead: dead.unwrap_or(0),
        })
    }

    fn readiness(&self) -> Readiness {
        Readiness::new(self.inner.ready.subscribe())
    }

    /// Publishes to the notices exchange with the topic as routing key: not mandatory (a topic
    /// nobody listens to drops it) and not confirmed (done once the broker has been sent it).
    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BusError> {
        let live = self.inner.live().ok_or(BusError::Unavailable)?;
        let unavailable_if_down = |err| {
            if live.is_up() {
                err
            } else {
                BusError::Unavailable
            }
        };
        let channel = self
            .inner
            .notifier(&live)
            .await
            .map_err(unavailable_if_down)?;
        channel
            .basic_publish(
                self.inner.config.notices().into(),
                topic.into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            // Not in confirm mode, the "confirm" is there at once.
            .map_err(|err| unavailable_if_down(bus_error(err)))?
            .await
            .map_err(|err| unavailable_if_down(bus_error(err)))?;
        Ok(())
    }

    /// Binds a queue of the listener's own to the topic before returning, so that it hears
    /// every notice broadcast after this returns; a task hands its notices over (see
    /// [`NoticeForwarder`]).
    async fn listen(&self, topic: &str) -> Result<Box<dyn Listener>, BusError> {
        let live = self.inner.live().ok_or(BusError::Unavailable)?;
        let exchange = self.inner.config.notices();
        let listening = listen_on(&live, &exchange, topic).await.map_err(|err| {
            if live.is_up() {
                err
            } else {
                BusError::Unavailable
            }
        })?;
        let (sender, heard) = mpsc::channel(NOTICE_BACKLOG);
        let forwarder = NoticeForwarder {
            bus: Arc::downgrade(&self.inner),
            stop: self.inner.stop.clone(),
            exchange,
            topic: topic.to_owned(),
            sender,
            missed: false,
        };
        tokio::spawn(forwarder.run(listening));
        Ok(Box::new(RabbitListener { heard }))
    }
}

/// A listener of one notice topic: what its [`NoticeForwarder`] hands over.
struct RabbitListener {
    heard: mpsc::Receiver<Heard>,
}

#[async_trait]
impl Listener for RabbitListener {
    async fn next(&mut self) -> Option<Heard> {
        self.heard.recv().await
    }
}

/// A listener's queue on one connection: its channel (the queue goes with it) and consumer.
type Listening = (Channel, lapin::Consumer);

/// Declares a queue of a listener's own on `live` (server-named, exclusive and auto-delete, so
/// it goes with its channel; holding at most [`NOTICE_QUEUE_MAX`] notices, the oldest dropped
/// first), binds it to `topic` on the notices exchange and consumes it without acknowledgements.
async fn listen_on(live: &Live, exchange: &str, topic: &str) -> Result<Listening, BusError> {
    let channel = live.connection.create_channel().await.map_err(bus_error)?;
    let own = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    // Exclusive queues cannot be quorum queues, whatever the broker's default type.
    args.insert("x-queue-type".into(), long_string("classic"));
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(NOTICE_QUEUE_MAX),
    );
    args.insert("x-overflow".into(), long_string("drop-head"));
    let queue = channel
        .queue_declare("".into(), own, args)
        .await
        .map_err(bus_error)?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            topic.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(bus_error)?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            no_ack,
            FieldTable::default(),
        )
        .await
        .map_err(bus_error)?;
    Ok((channel, consumer))
}

/// The task behind a [`RabbitListener`]: hands the notices of its queue over, and when the
/// queue is lost with its connection, listens again on the next one. Ends when the listener is
/// dropped or the bus is gone (the listener then hears `None`).
struct NoticeForwarder {
    /// The bus, which its listeners do not keep alive.
    bus: Weak<Inner>,
    /// Cancelled when the bus is gone.
    stop: CancellationToken,
    exchange: String,
    topic: String,
    sender: mpsc::Sender<Heard>,
    /// Notices were lost (the listener fell behind, or the connection was lost) and the listener
    /// has not heard [`Heard::Missed`] since.
    missed: bool,
}

impl NoticeForwarder {
    async fn run(mut self, listening: Listening) {
        let mut listening = Some(listening);
        loop {
            let Some((_, consumer)) = listening.as_mut() else {
                match self.listen_again().await {
                    Some(again) => listening = Some(again),
                    None => break,
                }
                // What was broadcast while the listener had no queue is lost.
                self.missed = true;
                continue;
            };
            let delivery = tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.sender.closed() => break,
                permit = self.sender.reserve(), if self.missed => {
                    if let Ok(permit) = permit {
                        permit.send(Heard::Missed);
                        self.missed = false;
                    }
                    continue;
                }
                delivery = consumer.next() => delivery,
            };
            let lost = match delivery {
                Some(Ok(delivery)) => {
                    self.hand_over(delivery.data);
                    false
                }
                Some(Err(err)) => {
                    tracing::debug!(topic = self.topic, error = %err, "notice consumer failed, listening again");
                    true
                }
                None => true,
            };
            if lost && let Some((channel, _)) = listening.take() {
                // The connection is gone, or the broker cancelled the consumer: a channel still
                // open is closed, which deletes its queue.
                let _ = channel.close(200, "listening again".into()).await;
            }
        }
        if let Some((channel, _)) = listening {
            let _ = channel.close(200, "stopped listening".into()).await;
        }
    }

    /// Hands `notice` over if the listener has room for it, after the [`Heard::Missed`] it is
    /// owed; otherwise drops it and owes one.
    fn hand_over(&mut self, notice: Vec<u8>) {
        if self.missed {
            if self.sender.try_send(Heard::Missed).is_err() {
                return;
            }
            self.missed = false;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(Heard::Notice(notice))
        {
            self.missed = true;
        }
    }

    /// Waits for the bus to be connected again and listens on the new connection; `None` when
    /// the listener or the bus is gone meanwhile.
    async fn listen_again(&self) -> Option<Listening> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let live = tokio::select! {
                live = live_again(&self.bus, &self.stop) => live?,
                () = self.sender.closed() => return None,
            };
            match listen_on(&live, &self.exchange, &self.topic).await {
                Ok(listening) => return Some(listening),
                Err(err) if live.is_up() => tracing::warn!(
                    topic = self.topic, error = %error_chain(&err),
                    "cannot listen for notices again; retrying"
                ),
                Err(_) => {}
            }
            drop(live);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return None,
                () = self.sender.closed() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The bus's connection once it is up, waiting without keeping the bus alive; `None` once the
/// bus is gone.
async fn live_again(bus: &Weak<Inner>, stop: &CancellationToken) -> Option<Live> {
    loop {
        let inner = bus.upgrade()?;
        if let Some(live) = inner.live() {
            return Some(live);
        }
        let mut ready = inner.ready.subscribe();
        drop(inner);
        tokio::select! {
            _ = ready.changed() => {}
            () = tokio::time::sleep(HEALTH_POLL) => {}
            () = stop.cancelled() => return None,
        }
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The failed deliveries recorded in a message's headers (0 when there are none).
fn failures_of(properties: &BasicProperties) -> u32 {
    let count = match header(properties, FAILURES_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(0)
}

/// The messages in `queue` (a passive declaration on a channel of its own, since one that
/// finds no queue closes its channel); `Ok(None)` when there is no such queue.
async fn count_messages(live: &Live, queue: &str) -> Result<Option<u64>, BusError> {
    let channel = live.connection.create_channel().await.map_err(bus_error)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    match declared {
        Ok(declared) => {
            let _ = channel.close(200, "counted".into()).await;
            Ok(Some(u64::from(declared.message_count())))
        }
        Err(_) if live.is_up() => Ok(None),
        Err(err) => Err(bus_error(err)),
    }
}

fn header_millis(properties: &BasicProperties, name: &str) -> Option<i64> {
    match header(properties, name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// A message taken from a dead-letter queue, as the operator sees it.
fn dead_letter_of(delivery: lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    DeadLetter {
        attempts: failures_of(properties),
        error: header_string(properties, LAST_ERROR_HEADER).unwrap_or_default(),
        first_failed_at_ms: header_millis(properties, FIRST_FAILED_HEADER).unwrap_or(0),
        dead_at_ms: header_millis(properties, DEAD_AT_HEADER).unwrap_or(0),
        body: delivery.data,
    }
}

struct RabbitSubscription {
    inner: Arc<Inner>,
    spec: QueueSpec,
    /// The channel and consumer on the current connection, once opened.
    consumer: Option<(Channel, lapin::Consumer)>,
}

impl RabbitSubscription {
    async fn open(&self, live: &Live) -> Result<(Channel, lapin::Consumer), BusError> {
        let channel = live.connection.create_channel().await.map_err(bus_error)?;
        channel
            .basic_qos(self.spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(bus_error)?;
        declare_queue(&channel, &self.inner.config, &self.spec).await?;
        let consumer = channel
            .basic_consume(
                self.inner.config.work_queue(&self.spec.name).into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(bus_error)?;
        Ok((channel, consumer))
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    /// Closes the consumer's channel, which returns what the broker pushed ahead of
    /// [`Subscription::next`] to the queue; `next` opens a new one.
    async fn pause(&mut self) {
        if let Some((channel, _)) = self.consumer.take() {
            let _ = channel.close(200, "paused".into()).await;
        }
    }

    async fn next(&mut self) -> Result<Delivery, BusError> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some((channel, consumer)) = self.consumer.as_mut() else {
                let live = self.inner.wait_live().await?;
                match self.open(&live).await {
                    Ok(opened) => {
                        self.consumer = Some(opened);
                        backoff = MIN_BACKOFF;
                    }
                    // The connection is fine, so the broker refused the queue as declared (its
                    // arguments differ from an existing queue's, or access is denied).
                    Err(err) if live.is_up() => return Err(err),
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let failures = failures_of(&delivery.properties);
                    let first_failed = (failures > 0)
                        .then(|| header_millis(&delivery.properties, FIRST_FAILED_HEADER))
                        .flatten();
                    let acker = RabbitAcker {
                        inner: Arc::clone(&self.inner),
                        _channel: channel.clone(),
                        queue: self.spec.name.clone(),
                        routing_key: header_string(&delivery.properties, ROUTING_KEY_HEADER)
                            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
                        body: delivery.data.clone(),
                        acker: delivery.acker,
                    };
                    return Ok(Delivery::new(
                        delivery.data,
                        failures + 1,
                        first_failed,
                        Box::new(acker),
                    ));
                }
                Some(Err(err)) => {
                    tracing::debug!(queue = self.spec.name, error = %err, "consumer channel failed, reopening");
                    self.consumer = None;
                }
                None => self.consumer = None,
            }
        }
    }
}

struct RabbitAcker {
    inner: Arc<Inner>,
    /// Keeps the consumer's channel open while this delivery is unsettled.
    _channel: Channel,
    queue: String,
    /// The key the message was first published with.
    routing_key: String,
    body: Vec<u8>,
    acker: lapin::Acker,
}

impl RabbitAcker {
    /// Re-publishes the message into `target` with `headers` (and the routing key it was first
    /// published with), then acknowledges the original: a crash in between delivers it twice,
    /// never zero times.
    async fn move_to(
        self: Box<Self>,
        target: &str,
        mut headers: FieldTable,
        expiration: Option<Duration>,
    ) -> Result<(), BusError> {
        headers.insert(ROUTING_KEY_HEADER.into(), long_string(&self.routing_key));
        self.inner
            .publish_to_queue(target, &self.body, headers, expiration)
            .await?;
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(bus_error)?;
        Ok(())
    }
}

/// The headers that carry a failure record.
fn failure_headers(failure: &FailureRecord) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        FAILURES_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(failure.failures)),
    );
    headers.insert(
        FIRST_FAILED_HEADER.into(),
        AMQPValue::LongLongInt(failure.first_failed_at_ms),
    );
    headers.insert(LAST_ERROR_HEADER.into(), long_string(&failure.error));
    headers
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(bus_error)?;
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BusError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        self.acker.nack(options).await.map_err(bus_error)?;
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        failure: &FailureRecord,
        delay: Duration,
    ) -> Result<(), BusError> {
        let retry = lock(&self.inner.queues)
            .iter()
            .find(|spec| spec.name == self.queue)
            .map_or_else(RetryPolicy::default, |spec| spec.retry);
        let tier = retry.tier_for(delay);
        let target = self.inner.delay_queue(&self.queue, tier).await?;
        self.move_to(&target, failure_headers(failure), Some(delay.min(tier)))
            .await
    }

    async fn dead_letter(self: Box<Self>, failure: &FailureRecord) -> Result<(), BusError> {
        let target = self.inner.config.dead_queue(&self.queue);
        let mut headers = failure_headers(failure);
        headers.insert(
            DEAD_AT_HEADER.into(),
            AMQPValue::LongLongInt(clock::now_millis()),
        );
        self.move_to(&target, headers, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::conformance;

    /// The broker the tests use: `TWTR_TEST_AMQP_URL`, else a local RabbitMQ with its default
    /// guest account. `None` (skip) when none answers, except in CI, where that is a failure.
    pub async fn open_bus() -> Option<(Arc<dyn EventBus>, ())> {
        let bus = connect_bus("twtr-conformance").await?;
        Some((Arc::new(bus), ()))
    }

    /// A bus on the test broker (see [`open_bus`]) whose prefix and connection name are unique
    /// names starting with `name` (so the broker's connection list tells its connection apart).
    async fn connect_bus(name: &str) -> Option<RabbitBus> {
        let url = crate::testing::amqp_url()?;
        let config = RabbitConfig {
            url,
            prefix: conformance::unique(name),
            queue_type: QueueType::Quorum,
            queue_expiry: Some(Duration::from_secs(600)),
            connection_name: conformance::unique(name),
        };
        let bus = RabbitBus::connect(config, Duration::from_secs(10)).await;
        assert!(
            bus.readiness().is_ready(),
            "RabbitMQ did not accept a connection"
        );
        Some(bus)
    }

    crate::event_bus_conformance!(open_bus);

    #[test]
    fn a_list_of_brokers_parses_in_order_and_shows_no_credentials() {
        let brokers = Brokers::parse(
            " amqp://guest:s3cret@10.0.0.1:5672/%2f , amqps://u:s3cret@rabbit-1/%2f,\
             amqp://u:s3cret@rabbit-2:5673/%2f?heartbeat=30",
        )
        .expect("valid");
        assert_eq!(brokers.len(), 3);
        assert_eq!(brokers.address(0), "10.0.0.1:5672");
        assert_eq!(brokers.address(1), "rabbit-1:5671", "amqps' default port");
        assert_eq!(brokers.address(5), "rabbit-2:5673", "round-robin");
        let shown = format!("{brokers:?}");
        assert_eq!(
            shown,
            r#"["10.0.0.1:5672", "rabbit-1:5671", "rabbit-2:5673"]"#
        );
        assert_eq!(brokers.uris[0].query.heartbeat, Some(HEARTBEAT_SECS));
        assert_eq!(
            brokers.uris[2].query.heartbeat,
            Some(30),
            "the URL's own setting wins"
        );
        assert_eq!(
            brokers.uris[0].query.connection_timeout,
            Some(CONNECT_TIMEOUT_MS)
        );
    }

    #[test]
    fn a_bad_entry_is_named_by_position_never_by_content() {
        for (list, position) in [
            ("", 1),
            ("amqp://u:s3cret@a:5672/%2f,", 2),
            ("amqp://u:s3cret@a:5672/%2f,,amqp://b", 2),
            ("amqp://u:s3cret@a:notaport/%2f", 1),
            ("amqp://u:s3cret@a/%2f,http://u:s3cret@b/", 2),
        ] {
            let err = Brokers::parse(list).expect_err(list);
            assert_eq!(err.position, position, "{list:?}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[tokio::test]
    async fn an_event_no_queue_is_bound_for_is_parked_not_dropped() {
        let Some(url) = crate::testing::amqp_url() else {
            return;
        };
        let config = RabbitConfig {
            url,
            prefix: conformance::unique("twtr-unrouted"),
            queue_type: QueueType::Classic,
            queue_expiry: Some(Duration::from_secs(600)),
            connection_name: "twtr unrouted test".into(),
        };
        let bus = RabbitBus::connect(config.clone(), Duration::from_secs(10)).await;
        let event = conformance::event(77, "nobody.listens");
        crate::bus::publish(&bus, &event)
            .await
            .expect("a mandatory publish that comes back is still taken care of");

        let live = bus.inner.live().expect("connected");
        let channel = live.connection.create_channel().await.expect("channel");
        let parked = channel
            .basic_get(
                config.unrouted().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
            .expect("the event waits in the unrouted queue");
        assert_eq!(
            Envelope::decode(parked.delivery.data.as_slice())
                .expect("decodes")
                .event_id,
            77
        );
        assert_eq!(
            header_string(&parked.delivery.properties, ROUTING_KEY_HEADER).as_deref(),
            Some("nobody.listens"),
            "with the routing key it was published with"
        );
    }

    /// How a test loses the bus's connection.
    enum Loss {
        /// The process closes it: to the bus, a connection that is no longer up, as when lapin
        /// gives up on a broker that went silent.
        ClosedHere,
        /// The broker closes it (`rabbitmqctl close_connection`: an operator, or a node going
        /// down).
        ClosedByBroker,
    }

    /// The next thing `listener` hears, within 15 s.
    async fn heard(listener: &mut Box<dyn Listener>) -> Option<Heard> {
        tokio::time::timeout(Duration::from_secs(15), listener.next())
            .await
            .expect("heard nothing within 15 s")
    }

    /// Listens, loses the connection by `loss`, and checks that the listener hears
    /// [`Heard::Missed`] once it listens again on a new connection, then what is broadcast after.
    async fn a_listener_outlives_its_connection(loss: Loss) {
        let Some(bus) = connect_bus("twtr-notices").await else {
            return;
        };
        let topic = conformance::unique("notices");
        let mut listener = bus.listen(&topic).await.expect("listen");
        bus.broadcast(&topic, b"before").await.expect("broadcast");
        assert_eq!(
            heard(&mut listener).await,
            Some(Heard::Notice(b"before".to_vec()))
        );

        let lost = bus.inner.live().expect("connected");
        match loss {
            Loss::ClosedHere => lost
                .connection
                .close(200, "test: the connection is lost".into())
                .await
                .expect("close the connection"),
            Loss::ClosedByBroker => {
                if !close_on_broker(&bus.inner.config.connection_name).await {
                    return;
                }
            }
        }
        assert_eq!(
            heard(&mut listener).await,
            Some(Heard::Missed),
            "the listener is told it may have missed notices"
        );
        let live = bus.inner.live().expect("connected again");
        assert!(
            !Arc::ptr_eq(&live.connection, &lost.connection),
            "on a new connection"
        );
        bus.broadcast(&topic, b"after")
            .await
            .expect("broadcast after the reconnection");
        assert_eq!(
            heard(&mut listener).await,
            Some(Heard::Notice(b"after".to_vec())),
            "heard on the new connection"
        );
    }

    /// Has the broker close the connection named `name`, through `rabbitmqctl` on this machine
    /// (where scripts/test.sh runs the broker). False (skip) when rabbitmqctl cannot list the
    /// broker's connections, except in CI, where that is a failure.
    async fn close_on_broker(name: &str) -> bool {
        // One line per connection: its pid (`<rabbit@host.1.2.3>`), a tab, its client properties.
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .await;
        let connections = match listed {
            Ok(listed) if listed.status.success() => {
                String::from_utf8_lossy(&listed.stdout).into_owned()
            }
            _ => {
                assert!(
                    !crate::testing::in_ci(),
                    "rabbitmqctl cannot list the broker's connections, and CI may not skip tests"
                );
                eprintln!("skipped: rabbitmqctl cannot list the broker's connections");
                return false;
            }
        };
        let pid = connections
            .lines()
            .find(|line| line.contains(&format!("\"{name}\"")))
            .and_then(|line| line.split('\t').next())
            .unwrap_or_else(|| panic!("the broker lists no connection named {name}: {connections}"))
            .to_owned();
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                &pid,
                "test: the broker closes the connection",
            ])
            .output()
            .await
            .expect("run rabbitmqctl");
        assert!(
            closed.status.success(),
            "rabbitmqctl close_connection {pid} failed: {}",
            String::from_utf8_lossy(&closed.stderr)
        );
        true
    }

    #[tokio::test]
    async fn a_listener_outlives_a_connection_closed_here() {
        a_listener_outlives_its_connection(Loss::ClosedHere).await;
    }

    #[tokio::test]
    async fn a_listener_outlives_a_connection_closed_by_the_broker() {
        a_listener_outlives_its_connection(Loss::ClosedByBroker).await;
    }

    /// With the broker down, notices fail at once instead of waiting for it to come back.
    #[tokio::test]
    async fn without_a_broker_broadcast_and_listen_are_unavailable_at_once() {
        let config = RabbitConfig {
            // Nothing listens on port 1: every connection attempt is refused.
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            prefix: conformance::unique("twtr-nobroker"),
            queue_type: QueueType::Classic,
            queue_expiry: None,
            connection_name: "twtr no broker test".into(),
        };
        let bus = RabbitBus::connect(config, Duration::from_millis(100)).await;
        let at_once = Duration::from_secs(5);
        let broadcast = tokio::time::timeout(at_once, bus.broadcast("topic", b"x"))
            .await
            .expect("broadcast does not wait for the broker");
        assert!(
            matches!(broadcast, Err(BusError::Unavailable)),
            "{broadcast:?}"
        );
        let listen = tokio::time::timeout(at_once, bus.listen("topic"))
            .await
            .expect("listen does not wait for the broker");
        assert!(
            matches!(listen.err(), Some(BusError::Unavailable)),
            "listen fails with Unavailable"
        );
    }

    /// A listener that leaves no room drops notices and is owed a Missed, which it hears before
    /// anything that comes after.
    #[tokio::test]
    async fn a_listener_that_falls_behind_hears_missed_before_what_comes_after() {
        let (sender, mut heard) = mpsc::channel(2);
        let mut forwarder = NoticeForwarder {
            bus: Weak::new(),
            stop: CancellationToken::new(),
            exchange: String::new(),
            topic: "topic".into(),
            sender,
            missed: false,
        };
        for n in 1..=3 {
            forwarder.hand_over(vec![n]);
        }
        assert_eq!(heard.recv().await, Some(Heard::Notice(vec![1])));
        assert_eq!(heard.recv().await, Some(Heard::Notice(vec![2])));
        forwarder.hand_over(vec![4]);
        assert_eq!(
            heard.recv().await,
            Some(Heard::Missed),
            "3 was dropped, and the listener hears so before 4"
        );
        assert_eq!(heard.recv().await, Some(Heard::Notice(vec![4])));
        forwarder.hand_over(vec![5]);
        assert_eq!(
            heard.recv().await,
            Some(Heard::Notice(vec![5])),
            "owed nothing more"
        );
    }
}
