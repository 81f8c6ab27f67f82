//! The event bus: one topic exchange, queues bound to it by routing-key patterns, at-least-once
//! delivery with manual acknowledgement, delay queues for retries and a dead-letter queue for
//! messages that cannot succeed.
//!
//! The contract is the one RabbitMQ meets as it is, so the in-process backend ([`InProcessBus`],
//! the embedded default) and the RabbitMQ backend ([`RabbitBus`]) are interchangeable; both
//! pass `conformance` (with the `testsuite` feature):
//!
//! - A delivery is settled explicitly: [`Delivery::ack`] (done), [`Delivery::requeue`] (give it
//!   back untouched, e.g. on shutdown or while the consumer's store is down),
//!   [`Delivery::retry`] (it failed: it waits out the given delay in a delay queue, then comes
//!   back with its attempt count raised, while the messages behind it flow on), or
//!   [`Delivery::dead_letter`] (give up: it moves to the queue's dead-letter queue with the
//!   reason).
//! - A delivery left unsettled comes back only when its subscription ends (the consumer died)
//!   or pauses; dropping a [`Delivery`] is not a way to settle it.
//! - A message carries its failure record (how many attempts failed, since when, the last
//!   error) because the consumer writes it into the message it moves to a delay queue, not
//!   because the broker counts deliveries.
//! - Dead letters stay until an operator re-drives them ([`EventBus::redrive`]) into the work
//!   queue, where they start over with a clean record.
//!
//! Consumers do not drive a [`Subscription`] by hand: [`consume`] runs the loop of decode,
//! handle, acknowledge, retry and dead-letter, and pauses while the consumer's own store is
//! down (see [`consume`] for how failures are classified).

pub mod admin;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
mod in_process;
mod rabbit;

use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use twtr_proto::events::v1::Envelope;

pub use in_process::InProcessBus;
pub use rabbit::{Brokers, InvalidBrokerUrl, QueueType, RabbitBus, RabbitConfig};

use crate::error::error_chain;
use crate::store::StoreError;
use crate::{clock, context, metrics};

/// A consumer's durable queue: its name, the routing-key patterns bound to it (`*` matches one
/// dot-separated word, `#` zero or more), and how its deliveries flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
    /// Deliveries a consumer may hold unsettled at once.
    pub prefetch: u16,
    /// How failed messages wait before they come back (a backend with fixed-delay queues
    /// declares one per [`RetryPolicy::tiers`]).
    pub retry: RetryPolicy,
}

impl QueueSpec {
    /// A queue with the default flow settings (prefetch 32, the default [`RetryPolicy`]).
    pub fn new(name: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            prefetch: 32,
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The backend failed; the operation may succeed if retried.
    #[error("event bus failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker cannot be reached right now; the bus is reconnecting.
    #[error("event broker is unavailable")]
    Unavailable,
    /// The broker refused the message (a negative publisher confirm).
    #[error("event broker refused the message")]
    Refused,
    /// No queue (not even the exchange's catch-all) took the message.
    #[error("event was not routable to any queue")]
    Unroutable,
    #[error("event bus is closed")]
    Closed,
}

impl BusError {
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }
}

impl From<StoreError> for BusError {
    fn from(err: StoreError) -> Self {
        Self::backend(err)
    }
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Routes each event by its `type` to every bound queue, with publishes pipelined. Returns
    /// one result per event, in order: `Ok` once the bus has stored that event durably (a
    /// publisher confirm), so the caller may forget it.
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), BusError>>;

    /// Declares the queue, its delay and dead-letter queues and its bindings (idempotently) and
    /// starts consuming from it. Several subscriptions to one queue are competing consumers.
    async fn subscribe(&self, queue: &QueueSpec) -> Result<Box<dyn Subscription>, BusError>;

    /// Up to `max` messages in `queue`'s dead-letter queue, oldest first, left in place (for
    /// operators and tests).
    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Moves up to `max` of `queue`'s dead letters back into its work queue, with a clean
    /// failure record (they are retried for a whole horizon again); with `only` non-empty, just
    /// the dead letters of those event IDs. Returns how many moved. Handlers are idempotent, so
    /// re-driving an event that already took effect changes nothing.
    async fn redrive(&self, queue: &str, max: usize, only: &[u64]) -> Result<usize, BusError>;

    /// How many messages of `queue` wait for a consumer (ready, or waiting for a retry: the
    /// consumers' lag) and how many are dead-lettered; for metrics and operators.
    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let _ = queue;
        Err(BusError::backend(std::io::Error::other(
            "this bus does not report queue depths",
        )))
    }

    /// Sends `payload` to every process listening on `topic` right now ([`EventBus::listen`]):
    /// a notice, not an event. It is not stored, confirmed or retried, and a process that is not
    /// listening (or not connected) at that moment never hears it, so a notice may only tell a
    /// listener to look at state that is kept elsewhere, and listeners must cope with missing
    /// one (see [`Heard::Missed`]). Returns once the bus has taken it, or an error when it
    /// cannot send at all (e.g. the broker is down): callers log it and go on.
    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BusError>;

    /// Starts hearing the notices broadcast on `topic` from now on, by any process on this bus.
    /// The listener lives until dropped, across broker reconnections (after which it hears
    /// [`Heard::Missed`] once).
    async fn listen(&self, topic: &str) -> Result<Box<dyn Listener>, BusError>;

    /// Whether the bus can publish and deliver right now. It is not a service's readiness (a
    /// broker outage delays events, it does not stop a service from answering): services show
    /// it as a health entry of its own ([`crate::grpc::EVENTS_HEALTH`]) and in a metric.
    fn readiness(&self) -> Readiness {
        Readiness::always()
    }
}

/// What a [`Listener`] hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notice broadcast on the listened topic, as sent.
    Notice(Vec<u8>),
    /// Notices may have been lost just before this (the listener fell behind, or the bus lost
    /// its broker and is back): whoever acts on notices should look at everything once.
    Missed,
}

/// A subscription to a notice topic (see [`EventBus::listen`]).
#[async_trait]
pub trait Listener: Send {
    /// The next thing heard, in the order broadcast (per sender); `None` once the bus is
    /// closed for good.
    async fn next(&mut self) -> Option<Heard>;
}

/// How full a consumer queue is (see [`EventBus::depths`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Not yet handed to a consumer: ready, or waiting in a delay queue.
    pub waiting: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// How often a consuming process samples its queues' depths.
const DEPTH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Dead letters read to find the oldest one (a broker lists a queue only from its head).
const OLDEST_SCAN: usize = 100;

/// Records `queue`'s depths, and the age of its oldest dead letter, in the metrics every
/// [`DEPTH_EVERY`], as long as `upgrade` still gives the bus (a backend calls it when a consumer
/// subscribes, with a weak handle of itself).
pub(crate) fn sample_depths<B, F>(queue: String, upgrade: F)
where
    B: EventBus + 'static,
    F: Fn() -> Option<B> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // The first sample waits a period too: a sample holds the bus for its read, and a bus
        // dropped right after subscribing (a test reopening its file) must be free at once.
        let start = tokio::time::Instant::now() + DEPTH_EVERY;
        let mut every = tokio::time::interval_at(start, DEPTH_EVERY);
        loop {
            every.tick().await;
            let Some(bus) = upgrade() else { return };
            match bus.depths(&queue).await {
                Ok(depths) => metrics::queue_depths(&queue, depths.waiting, depths.dead),
                Err(err) => tracing::debug!(queue, error = %error_chain(&err), "cannot sample the queue depths"),
            }
            match bus.dead_letters(&queue, OLDEST_SCAN).await {
                Ok(dead) => {
                    let oldest = dead.iter().map(|d| d.dead_at_ms).filter(|at| *at > 0).min();
                    let age_ms = oldest.map_or(0, |at| (clock::now_millis() - at).max(0));
                    metrics::oldest_dead_letter(&queue, Duration::from_millis(age_ms as u64));
                }
                Err(err) => tracing::debug!(queue, error = %error_chain(&err), "cannot read the dead letters"),
            }
        }
    });
}

/// Publishes one event; see [`EventBus::publish_batch`].
pub async fn publish(bus: &dyn EventBus, event: &Envelope) -> Result<(), BusError> {
    bus.publish_batch(std::slice::from_ref(event))
        .await
        .pop()
        .unwrap_or(Err(BusError::Closed))
}

/// What a message carries about its failed attempts: written by the consumer into the message
/// it moves to a delay queue or the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// Attempts that failed so far.
    pub failures: u32,
    /// When the first of them failed (Unix milliseconds): the retry horizon counts from here.
    pub first_failed_at_ms: i64,
    /// The error of the last one (for a dead letter: why it was given up on).
    pub error: String,
}

/// A message that could not succeed, as found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as published (normally an encoded [`Envelope`]).
    pub body: Vec<u8>,
    /// Deliveries it had before it was given up on.
    pub attempts: u32,
    /// Why it was given up on: the last error, and for an event past the retry horizon, how
    /// long it was retried.
    pub error: String,
    /// When its first attempt failed (Unix milliseconds; 0 if unknown).
    pub first_failed_at_ms: i64,
    /// When it was dead-lettered (Unix milliseconds; 0 if unknown, e.g. from an older version).
    pub dead_at_ms: i64,
}

impl DeadLetter {
    pub fn decode(&self) -> Result<Envelope, prost::DecodeError> {
        Envelope::decode(self.body.as_slice())
    }
}

/// Whether a dependency is usable right now, as a value that can be watched for changes.
#[derive(Debug, Clone)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Self(receiver)
    }

    /// Always ready (a dependency that lives in this process).
    pub fn always() -> Self {
        let (sender, receiver) = watch::channel(true);
        // Keep the value alive after the sender is gone: a closed channel still reads `true`.
        drop(sender);
        Self(receiver)
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when readiness may have changed; `false` when it never will again.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery. A backend that loses its broker reconnects and goes on
    /// waiting; an `Err` means this subscription cannot go on (a misconfiguration).
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// Stops the flow until the next [`Subscription::next`]: whatever the backend took ahead
    /// (a broker's prefetched, not yet handed out messages) goes back to the queue for other
    /// consumers. Called only when no delivery of this subscription is unsettled.
    async fn pause(&mut self) {}
}

/// How a backend settles one delivery.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    async fn requeue(self: Box<Self>) -> Result<(), BusError>;
    /// Park the message for `delay` with `failure` recorded, then drop it from the queue.
    async fn retry(
        self: Box<Self>,
        failure: &FailureRecord,
        delay: Duration,
    ) -> Result<(), BusError>;
    /// Move the message to the dead-letter queue with `failure` recorded.
    async fn dead_letter(self: Box<Self>, failure: &FailureRecord) -> Result<(), BusError>;
}

/// One message handed to a consumer; settle it with exactly one of its methods.
pub struct Delivery {
    /// The encoded [`Envelope`].
    pub body: Vec<u8>,
    /// 1 on first delivery; each [`Delivery::retry`] adds one (a redrive starts over at 1).
    pub attempt: u32,
    /// When its first failed attempt was (Unix milliseconds); `None` before any failed.
    pub first_failed_at_ms: Option<i64>,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .field("first_failed_at_ms", &self.first_failed_at_ms)
            .finish()
    }
}

impl Delivery {
    pub fn new(
        body: Vec<u8>,
        attempt: u32,
        first_failed_at_ms: Option<i64>,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            body,
            attempt,
            first_failed_at_ms,
            acker,
        }
    }

    pub fn decode(&self) -> Result<Envelope, prost::DecodeError> {
        Envelope::decode(self.body.as_slice())
    }

    /// The failure record this delivery would carry on if it failed now with `error`.
    pub fn failure(&self, error: &str) -> FailureRecord {
        FailureRecord {
            failures: self.attempt,
            first_failed_at_ms: self.first_failed_at_ms.unwrap_or_else(clock::now_millis),
            error: error.to_owned(),
        }
    }

    /// Done: the message leaves the queue.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Not handled, through no fault of the message (e.g. shutting down): deliver it again as
    /// it is, attempt count unchanged.
    pub async fn requeue(self) -> Result<(), BusError> {
        self.acker.requeue().await
    }

    /// Handling failed: deliver it again after `delay`, as attempt + 1.
    pub async fn retry(self, error: &str, delay: Duration) -> Result<(), BusError> {
        let failure = self.failure(error);
        self.acker.retry(&failure, delay).await
    }

    /// Give up: move it to the dead-letter queue with `error` as the reason.
    pub async fn dead_letter(self, error: &str) -> Result<(), BusError> {
        let failure = self.failure(error);
        self.acker.dead_letter(&failure).await
    }
}

/// Whether `routing_key` matches a binding `pattern`, with AMQP topic-exchange rules.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((&word, rest)) => match key.split_first() {
                Some((&first, key_rest)) => (word == "*" || word == first) && go(rest, key_rest),
                None => false,
            },
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    go(&pattern, &key)
}

/// Handles one event. Must be idempotent: the same event may arrive any number of times.
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError>;

    /// Whether the handler's own store answers. [`consume`] asks after a transient failure: if
    /// the store is down, the consumer stops taking deliveries until this succeeds again (the
    /// queue is the buffer), rather than spending the events' retries on an outage.
    async fn probe(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A failure that no retry can fix (the event can never apply). A handler returns it (or any
/// error with it among its sources) to have the event dead-lettered at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Whether a handler's failure is permanent: a [`Permanent`], an undecodable payload, or a
/// corrupt stored record anywhere in its chain of sources. Everything else (a store or peer
/// unavailable, a timeout, contention) is transient and retried.
pub fn is_permanent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<Permanent>() || err.is::<prost::DecodeError>() {
            return true;
        }
        if let Some(store) = err.downcast_ref::<StoreError>()
            && !store.is_transient()
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// How a failing event is retried: capped, jittered exponential backoff, for as long as the
/// horizon allows; past it, the event is dead-lettered with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure; each further failure doubles it...
    pub first_delay: Duration,
    /// ...up to this.
    pub max_delay: Duration,
    /// How long after its first failure an event is still retried.
    pub horizon: Duration,
}

impl Default for RetryPolicy {
    /// 1 s doubling to 5 min, for 7 days: a store restart, a broker failover or a peer's
    /// rolling deploy never costs an event, and a weekend-long outage neither.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            horizon: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1 for the first), before jitter:
    /// `first_delay * 2^(failures - 1)`, at most `max_delay`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let first = self.first_delay.max(Duration::from_millis(1));
        2u32.checked_pow(failures.saturating_sub(1))
            .and_then(|factor| first.checked_mul(factor))
            .unwrap_or(self.max_delay)
            .min(self.max_delay.max(first))
    }

    /// The wait after the `failures`-th failure: uniformly between half of
    /// [`RetryPolicy::backoff`] and all of it ("equal jitter"), so events that failed together
    /// (every event of an outage) do not all come back at the same moment.
    pub fn delay(&self, failures: u32) -> Duration {
        let full = self.backoff(failures);
        let half = full / 2;
        let spread = u64::try_from((full - half).as_millis()).unwrap_or(u64::MAX);
        let jitter = match getrandom::u64() {
            Ok(random) if spread > 0 => random % (spread + 1),
            _ => spread,
        };
        half + Duration::from_millis(jitter)
    }

    /// Every distinct [`RetryPolicy::backoff`], shortest first: a backend whose delay queues
    /// each hold one delay declares one per tier and parks a delay in the smallest tier that
    /// holds it ([`RetryPolicy::tier_for`]).
    pub fn tiers(&self) -> Vec<Duration> {
        let mut tiers = Vec::new();
        for failures in 1..=64 {
            let delay = self.backoff(failures);
            if tiers.last() == Some(&delay) {
                break;
            }
            tiers.push(delay);
        }
        tiers
    }

    /// The smallest tier at least `delay` long (the longest tier if none is).
    pub fn tier_for(&self, delay: Duration) -> Duration {
        let tiers = self.tiers();
        tiers
            .iter()
            .copied()
            .find(|tier| *tier >= delay)
            .or_else(|| tiers.last().copied())
            .unwrap_or(delay)
    }
}

/// How a consuming service takes its deliveries (configuration, the same for every consumer).
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Deliveries a consumer may hold unsettled at once.
    pub prefetch: u16,
    pub retry: RetryPolicy,
}

impl Default for ConsumerSettings {
    /// Prefetch 32 and the default retry policy.
    fn default() -> Self {
        Self {
            prefetch: Self::CQL_PREFETCH,
            retry: RetryPolicy::default(),
        }
    }
}

impl ConsumerSettings {
    /// The default prefetch of a consumer on a CQL store: each delivery's statements go to the
    /// cluster on their own, and more at once only queue in front of its nodes.
    pub const CQL_PREFETCH: u16 = 32;
    /// The default prefetch of a consumer on the embedded store, which commits the writes of
    /// every delivery in hand together (group commit; fan-outs in one transaction sorted by
    /// feed): the more wait, the fewer B-tree pages each entry rewrites. Measured on the
    /// all-in-one mesh (`docs/bench/2026-12-03-prefetch.md`): fan-out 40,722–49,360 feed entries/s
    /// at 32, 96,366 at 128, 120,365 at 256, 147,094 at 512, with the same memory. An event in
    /// hand is a few hundred bytes; a crash redelivers what was in hand, which handlers take in
    /// their stride (idempotent).
    pub const EMBEDDED_PREFETCH: u16 = 512;

    /// The queue `name`, bound to the routing keys of `kinds`, flowing as these settings say.
    pub fn queue(&self, name: &str, kinds: &[crate::events::EventKind]) -> QueueSpec {
        let bindings: Vec<&str> = kinds.iter().map(|kind| kind.routing_key()).collect();
        QueueSpec {
            prefetch: self.prefetch,
            retry: self.retry,
            ..QueueSpec::new(name, &bindings)
        }
    }
}

/// How long a probe of the consumer's store may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// While paused, the store is probed after this, doubling up to [`PROBE_MAX`]: a consumer
/// resumes at most 5 s after its store answers again, for one cheap query per 5 s meanwhile.
const PROBE_FIRST: Duration = Duration::from_millis(500);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// How one delivery ended, as far as the consumer loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Done,
    /// Handed back because the consumer's own store does not answer.
    StoreDown,
}

/// Feeds deliveries to `handler` until `shutdown`, up to `settings.prefetch` of them at once.
/// A delivery is acknowledged only after the handler succeeded (its effect is stored). When it
/// fails:
///
/// - **permanently** ([`is_permanent`]: an undecodable event, a handler that proves the event
///   can never apply, a corrupt record), it is dead-lettered at once, with the reason;
/// - **transiently**, the consumer first probes its own store ([`EventHandler::probe`]). If the
///   store does not answer, the delivery goes back to the queue untouched and the consumer
///   pauses: it settles what it holds, gives back what its subscription took ahead, and takes
///   nothing more until a probe succeeds (backing off to one probe every 5 s), so an outage of
///   its store spends no retries. Otherwise (a peer down, contention, a timeout) the delivery
///   waits in a delay queue for [`RetryPolicy::delay`] and comes back; once it has been failing
///   for longer than the retry horizon, it is dead-lettered with the reason.
///
/// Handling deliveries concurrently reorders them, as several replicas on one queue (or a
/// retry) would anyway: handlers are idempotent and order-independent by contract. It is what
/// lets a store commit the writes of many events together (see `embedded`'s group commit).
///
/// A settlement that fails (the broker went away) is logged and forgotten: the message is
/// still in the queue and is delivered again once the subscription has reconnected. Shutdown
/// stops taking deliveries and waits for the ones in hand to be settled.
pub async fn consume(
    queue: &str,
    mut subscription: Box<dyn Subscription>,
    handler: &dyn EventHandler,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    use futures_util::StreamExt as _;
    let limit = usize::from(settings.prefetch.max(1));
    let mut in_hand = futures_util::stream::FuturesUnordered::new();
    let mut store_down = false;
    loop {
        if store_down && in_hand.is_empty() {
            subscription.pause().await;
            if !wait_for_store(queue, handler, &shutdown).await {
                break;
            }
            store_down = false;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(settled) = in_hand.next(), if !in_hand.is_empty() => {
                store_down |= settled == Settled::StoreDown;
            }
            delivery = subscription.next(), if in_hand.len() < limit && !store_down => {
                in_hand.push(settle_one(queue, delivery?, handler, settings.retry));
            }
        }
    }
    while in_hand.next().await.is_some() {}
    Ok(())
}

/// Probes `handler`'s store until it answers (true) or `shutdown` (false), logging the pause
/// once when it starts and once when it ends.
async fn wait_for_store(
    queue: &str,
    handler: &dyn EventHandler,
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!(
        queue,
        "the consumer's store does not answer; taking no deliveries until it does (they wait in the queue)"
    );
    metrics::consumer_paused(queue, true);
    let began = tokio::time::Instant::now();
    let mut wait = PROBE_FIRST;
    let resumed = loop {
        tokio::select! {
            () = shutdown.cancelled() => break false,
            () = tokio::time::sleep(wait) => {}
        }
        if probe(handler).await.is_ok() {
            break true;
        }
        wait = (wait * 2).min(PROBE_MAX);
    };
    metrics::consumer_paused(queue, false);
    if resumed {
        tracing::info!(
            queue,
            paused_ms = began.elapsed().as_millis() as u64,
            "the consumer's store answers again; taking deliveries"
        );
    }
    resumed
}

async fn probe(handler: &dyn EventHandler) -> Result<(), HandlerError> {
    match tokio::time::timeout(PROBE_TIMEOUT, handler.probe()).await {
        Ok(probed) => probed,
        Err(elapsed) => Err(Box::new(elapsed)),
    }
}

/// Decodes, handles and settles one delivery.
async fn settle_one(
    queue: &str,
    delivery: Delivery,
    handler: &dyn EventHandler,
    policy: RetryPolicy,
) -> Settled {
    let attempt = delivery.attempt;
    let event = match delivery.decode() {
        Ok(event) => event,
        Err(err) => {
            tracing::error!(queue, error = %err, "undecodable event, dead-lettering");
            let settled = delivery
                .dead_letter(&format!("undecodable event: {err}"))
                .await;
            metrics::event_consumed(queue, "undecodable", metrics::Outcome::DeadLetter, 0);
            log_unsettled(queue, 0, settled);
            return Settled::Done;
        }
    };
    // Events from before request ids (or from elsewhere) get a fresh one, as requests do.
    let incoming = event.headers.get(context::REQUEST_ID).map(String::as_str);
    let request_id = context::accept(incoming);
    let span = tracing::info_span!(
        "event", queue, event_id = event.event_id, event_type = %event.r#type, %request_id,
        trace_id = tracing::field::Empty
    );
    context::continue_trace(&span, &event.headers);
    let handled = context::scope(request_id, handler.handle(&event).instrument(span)).await;
    let occurred_at_ms = event.occurred_at.as_ref().map_or(0, clock::from_timestamp);
    let consumed = |outcome| metrics::event_consumed(queue, &event.r#type, outcome, occurred_at_ms);
    let (event_id, event_type) = (event.event_id, event.r#type.as_str());
    let mut result = Settled::Done;
    let settled = match handled {
        Ok(()) => {
            consumed(metrics::Outcome::Ok);
            delivery.ack().await
        }
        Err(err) if is_permanent(err.as_ref()) => {
            let error = format!("permanent failure: {}", error_chain(err.as_ref()));
            tracing::error!(queue, event_id, event_type, attempt, %error, "event cannot apply, dead-lettering");
            consumed(metrics::Outcome::DeadLetter);
            delivery.dead_letter(&error).await
        }
        Err(err) => {
            let error = error_chain(err.as_ref());
            let failing_ms = delivery
                .first_failed_at_ms
                .map_or(0, |first| (clock::now_millis() - first).max(0));
            let failing_for = Duration::from_millis(failing_ms as u64);
            if let Err(down) = probe(handler).await {
                tracing::debug!(
                    queue, event_id, event_type, %error, store = %error_chain(down.as_ref()),
                    "event failed while the consumer's store is down; handing it back"
                );
                consumed(metrics::Outcome::Requeued);
                result = Settled::StoreDown;
                delivery.requeue().await
            } else if failing_for >= policy.horizon {
                let error = format!(
                    "still failing after {attempt} attempts over {}s, past the retry horizon of {}s: {error}",
                    failing_for.as_secs(),
                    policy.horizon.as_secs()
                );
                tracing::error!(queue, event_id, event_type, attempt, %error, "giving up on the event, dead-lettering");
                consumed(metrics::Outcome::DeadLetter);
                delivery.dead_letter(&error).await
            } else {
                let delay = policy.delay(attempt);
                tracing::warn!(
                    queue, event_id, event_type, attempt, %error, retry_in_ms = delay.as_millis() as u64,
                    "event handler failed, will retry"
                );
                consumed(metrics::Outcome::Retry);
                delivery.retry(&error, delay).await
            }
        }
    };
    log_unsettled(queue, event_id, settled);
    result
}

fn log_unsettled(queue: &str, event_id: u64, settled: Result<(), BusError>) {
    if let Err(err) = settled {
        tracing::warn!(
            queue, event_id, error = %error_chain(&err),
            "could not settle a delivery; it will be delivered again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_follow_amqp_rules() {
        let cases = [
            ("tweets.tweet_created", "tweets.tweet_created", true),
            ("tweets.*", "tweets.tweet_created", true),
            ("tweets.*", "users.user_created", false),
            ("*.tweet_created", "tweets.tweet_created", true),
            ("#", "tweets.tweet_created", true),
            ("tweets.#", "tweets", true),
            ("tweets.#", "tweets.a.b", true),
            ("#.b", "a.b", true),
            ("#.b", "a.c", false),
            ("tweets.*", "tweets", false),
            ("tweets.*", "tweets.a.b", false),
            ("tweets", "tweets.a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} ~ {key}");
        }
    }

    #[tokio::test]
    async fn readiness_that_is_always_ready_stays_ready() {
        let mut ready = Readiness::always();
        assert!(ready.is_ready());
        assert!(!ready.changed().await, "it never changes");
        assert!(ready.is_ready());
    }

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=11).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(300));
        assert_eq!(
            policy
                .tiers()
                .iter()
                .map(Duration::as_secs)
                .collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
        );
        assert_eq!(
            policy.tier_for(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.tier_for(Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        assert_eq!(
            policy.tier_for(Duration::from_secs(900)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff_and_spreads() {
        let policy = RetryPolicy::default();
        for failures in [1, 3, 10] {
            let full = policy.backoff(failures);
            let delays: std::collections::HashSet<Duration> =
                (0..200).map(|_| policy.delay(failures)).collect();
            for delay in &delays {
                assert!(
                    *delay >= full / 2 && *delay <= full,
                    "{delay:?} of {full:?}"
                );
            }
            assert!(
                delays.len() > 20,
                "200 draws gave only {} delays",
                delays.len()
            );
        }
    }

    #[test]
    fn permanent_failures_are_told_from_transient_ones_through_their_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("handler failed")]
        struct Wrapper(#[source] StoreError);

        let transient: HandlerError = Box::new(Wrapper(StoreError::backend(
            std::io::Error::other("node down"),
        )));
        assert!(!is_permanent(transient.as_ref()));
        let corrupt: HandlerError = Box::new(Wrapper(StoreError::Corrupt("short row".into())));
        assert!(is_permanent(corrupt.as_ref()));
        let impossible: HandlerError = Box::new(Permanent("no such payload".into()));
        assert!(is_permanent(impossible.as_ref()));
        let plain: HandlerError = "contended".into();
        assert!(!is_permanent(plain.as_ref()));
    }
}
