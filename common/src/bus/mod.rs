//! The event bus: one topic exchange, queues bound to it by routing-key patterns, at-least-once
//! delivery with manual acknowledgement, a delay queue for retries and a dead-letter queue for
//! messages that keep failing.
//!
//! The contract is the one RabbitMQ meets as it is, so the in-process backend ([`InProcessBus`],
//! the embedded default) and the RabbitMQ backend ([`RabbitBus`]) are interchangeable; both
//! pass [`conformance`]:
//!
//! - A delivery is settled explicitly: [`Delivery::ack`] (done), [`Delivery::requeue`] (give it
//!   back untouched, e.g. on shutdown), [`Delivery::retry`] (it failed: it waits in the queue's
//!   delay queue for [`QueueSpec::retry_delay`], then comes back with its attempt count raised,
//!   while the messages behind it flow on), or [`Delivery::dead_letter`] (give up: it moves to
//!   the queue's dead-letter queue with the last error).
//! - A delivery left unsettled comes back only when its subscription ends (the consumer died);
//!   dropping a [`Delivery`] is not a way to settle it.
//! - The attempt count survives redelivery because the consumer writes it into the message it
//!   re-publishes to the delay queue, not because the broker counts deliveries.
//!
//! Consumers do not drive a [`Subscription`] by hand: [`consume`] runs the loop of decode,
//! handle, acknowledge, retry and dead-letter.

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
pub use rabbit::{QueueType, RabbitBus, RabbitConfig};

use crate::error::error_chain;
use crate::{context, metrics};

/// A consumer's durable queue: its name, the routing-key patterns bound to it (`*` matches one
/// dot-separated word, `#` zero or more), and how its deliveries flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
    /// Deliveries a consumer may hold unsettled at once.
    pub prefetch: u16,
    /// How long a failed message waits in the delay queue before it is delivered again.
    pub retry_delay: Duration,
}

impl QueueSpec {
    /// A queue with the default flow settings (prefetch 32, one second between retries).
    pub fn new(name: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            prefetch: 32,
            retry_delay: Duration::from_secs(1),
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

impl From<crate::store::StoreError> for BusError {
    fn from(err: crate::store::StoreError) -> Self {
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

    /// How many messages of `queue` wait for a consumer (ready, or waiting for a retry: the
    /// consumers' lag) and how many are dead-lettered; for metrics and operators.
    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let _ = queue;
        Err(BusError::backend(std::io::Error::other(
            "this bus does not report queue depths",
        )))
    }

    /// Whether the bus can publish and deliver right now; services report it as readiness.
    fn readiness(&self) -> Readiness {
        Readiness::always()
    }
}

/// How full a consumer queue is (see [`EventBus::depths`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Not yet handed to a consumer: ready, or waiting in the retry queue.
    pub waiting: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// How often a consuming process samples its queues' depths.
const DEPTH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Records `queue`'s depths in the metrics every [`DEPTH_EVERY`], as long as `upgrade` still
/// gives the bus (a backend calls it when a consumer subscribes, with a weak handle of itself).
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

/// A message that kept failing, as found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as published (normally an encoded [`Envelope`]).
    pub body: Vec<u8>,
    /// Deliveries it had before it was given up on.
    pub attempts: u32,
    /// The error of its last attempt.
    pub error: String,
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
}

/// How a backend settles one delivery.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    async fn requeue(self: Box<Self>) -> Result<(), BusError>;
    /// Park the message in the delay queue with `failures` recorded, then drop it from the queue.
    async fn retry(self: Box<Self>, failures: u32, error: &str) -> Result<(), BusError>;
    /// Move the message to the dead-letter queue with `failures` and `error` recorded.
    async fn dead_letter(self: Box<Self>, failures: u32, error: &str) -> Result<(), BusError>;
}

/// One message handed to a consumer; settle it with exactly one of its methods.
pub struct Delivery {
    /// The encoded [`Envelope`].
    pub body: Vec<u8>,
    /// 1 on first delivery; each [`Delivery::retry`] adds one.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    pub fn new(body: Vec<u8>, attempt: u32, acker: Box<dyn Acker>) -> Self {
        Self {
            body,
            attempt,
            acker,
        }
    }

    pub fn decode(&self) -> Result<Envelope, prost::DecodeError> {
        Envelope::decode(self.body.as_slice())
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

    /// Handling failed: deliver it again after the queue's retry delay, as attempt + 1.
    pub async fn retry(self, error: &str) -> Result<(), BusError> {
        self.acker.retry(self.attempt, error).await
    }

    /// Give up: move it to the dead-letter queue with `error`.
    pub async fn dead_letter(self, error: &str) -> Result<(), BusError> {
        self.acker.dead_letter(self.attempt, error).await
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
}

pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// When to give up on a failing message: after `max_attempts` deliveries it is dead-lettered.
/// (The wait between attempts is the queue's [`QueueSpec::retry_delay`].)
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 8 }
    }
}

/// How a consuming service takes its deliveries (configuration, the same for every consumer).
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Deliveries a consumer may hold unsettled at once.
    pub prefetch: u16,
    /// Wait between a failed delivery and the next attempt.
    pub retry_delay: Duration,
    pub retry: RetryPolicy,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            prefetch: 32,
            retry_delay: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        }
    }
}

impl ConsumerSettings {
    /// The queue `name`, bound to `bindings`, flowing as these settings say.
    pub fn queue(&self, name: &str, bindings: &[&str]) -> QueueSpec {
        QueueSpec {
            prefetch: self.prefetch,
            retry_delay: self.retry_delay,
            ..QueueSpec::new(name, bindings)
        }
    }
}

/// Feeds deliveries to `handler` until `shutdown`, up to `settings.prefetch` of them at once.
/// A delivery is acknowledged only after the handler succeeded (its effect is stored); a
/// failure goes to the delay queue for another attempt, and after `settings.retry.max_attempts`
/// (or at once, if it cannot even be decoded) to the dead-letter queue. Shutdown stops taking
/// deliveries and waits for the ones in hand to be settled.
///
/// Handling deliveries concurrently reorders them, as several replicas on one queue (or a
/// retry) would anyway: handlers are idempotent and order-independent by contract. It is what
/// lets a store commit the writes of many events together (see `embedded`'s group commit).
///
/// A settlement that fails (the broker went away) is logged and forgotten: the message is
/// still in the queue and is delivered again once the subscription has reconnected.
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
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
            delivery = subscription.next(), if in_hand.len() < limit => {
                in_hand.push(settle_one(queue, delivery?, handler, settings.retry));
            }
        }
    }
    while in_hand.next().await.is_some() {}
    Ok(())
}

/// Decodes, handles and settles one delivery.
async fn settle_one(
    queue: &str,
    delivery: Delivery,
    handler: &dyn EventHandler,
    policy: RetryPolicy,
) {
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
            return;
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
    let occurred_at_ms = event
        .occurred_at
        .as_ref()
        .map_or(0, crate::clock::from_timestamp);
    let consumed = |outcome| metrics::event_consumed(queue, &event.r#type, outcome, occurred_at_ms);
    let settled = match handled {
        Ok(()) => {
            consumed(metrics::Outcome::Ok);
            delivery.ack().await
        }
        Err(err) => {
            let error = error_chain(err.as_ref());
            if attempt >= policy.max_attempts {
                tracing::error!(
                    queue, event_id = event.event_id, event_type = %event.r#type,
                    attempt, %error, "event keeps failing, dead-lettering"
                );
                consumed(metrics::Outcome::DeadLetter);
                delivery.dead_letter(&error).await
            } else {
                tracing::warn!(
                    queue, event_id = event.event_id, event_type = %event.r#type,
                    attempt, %error, "event handler failed, will retry"
                );
                consumed(metrics::Outcome::Retry);
                delivery.retry(&error).await
            }
        }
    };
    log_unsettled(queue, event.event_id, settled);
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
}
