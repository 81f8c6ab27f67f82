//! The event bus: one topic exchange, queues bound to it by routing-key patterns, at-least-once
//! delivery with manual acknowledgement, and a dead-letter place for messages that keep failing.
//!
//! This mirrors RabbitMQ's model so that the in-process backend ([`InProcessBus`], the embedded
//! default) and the RabbitMQ backend are interchangeable; both must pass [`conformance`].
//! Consumers do not drive a [`Subscription`] by hand: [`consume`] runs the loop of decode,
//! handle, acknowledge, retry with backoff, and dead-letter.

pub mod conformance;
mod in_process;

use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use twtr_proto::events::v1::Envelope;

pub use in_process::InProcessBus;

use crate::context;
use crate::error::error_chain;

/// A consumer's durable queue and the routing-key patterns bound to it (`*` matches one
/// dot-separated word, `#` zero or more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("event bus is closed")]
    Closed,
}

impl From<crate::embedded::StoreError> for BusError {
    fn from(err: crate::embedded::StoreError) -> Self {
        Self::Backend(Box::new(err))
    }
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Routes `event` by its `type` to every bound queue. Returns once the bus has stored it
    /// durably (a publisher confirm), so the caller may forget it.
    async fn publish(&self, event: &Envelope) -> Result<(), BusError>;

    /// Declares the queue and its bindings (idempotently) and starts consuming from it. Several
    /// subscriptions to one queue are competing consumers.
    async fn subscribe(&self, queue: &QueueSpec) -> Result<Box<dyn Subscription>, BusError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// How a backend settles one delivery.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// `requeue`: deliver again later; otherwise move it to the dead-letter place.
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError>;
}

/// One message handed to a consumer. Dropping it unsettled makes it deliverable again.
pub struct Delivery {
    /// The encoded [`Envelope`].
    pub body: Vec<u8>,
    /// 1 on first delivery, then counts redeliveries.
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

    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    pub async fn requeue(self) -> Result<(), BusError> {
        self.acker.nack(true).await
    }

    pub async fn dead_letter(self) -> Result<(), BusError> {
        self.acker.nack(false).await
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

/// When to give up on a failing message.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Deliveries before a message is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the first redelivery; doubles each time, capped at `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Feeds deliveries to `handler` until `shutdown`. A delivery is acknowledged only after the
/// handler succeeded (its effect is stored); a failure is retried with backoff, and after
/// `policy.max_attempts` (or at once, if it cannot even be decoded) it is dead-lettered.
/// Shutdown waits for the delivery in hand to be settled.
pub async fn consume(
    queue: &str,
    mut subscription: Box<dyn Subscription>,
    handler: &dyn EventHandler,
    policy: RetryPolicy,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            delivery = subscription.next() => delivery?,
        };
        let event = match delivery.decode() {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(queue, error = %err, "undecodable event, dead-lettering");
                delivery.dead_letter().await?;
                continue;
            }
        };
        // Events from before request ids (or from elsewhere) get a fresh one, as requests do.
        let incoming = event.headers.get(context::REQUEST_ID).map(String::as_str);
        let request_id = context::accept(incoming);
        let span = tracing::info_span!(
            "event", queue, event_id = event.event_id, event_type = %event.r#type, %request_id
        );
        let handled = context::scope(request_id, handler.handle(&event).instrument(span)).await;
        match handled {
            Ok(()) => delivery.ack().await?,
            Err(err) if delivery.attempt >= policy.max_attempts => {
                tracing::error!(
                    queue, event_id = event.event_id, event_type = %event.r#type,
                    attempt = delivery.attempt, error = %error_chain(err.as_ref()),
                    "event keeps failing, dead-lettering"
                );
                delivery.dead_letter().await?;
            }
            Err(err) => {
                tracing::warn!(
                    queue, event_id = event.event_id, event_type = %event.r#type,
                    attempt = delivery.attempt, error = %error_chain(err.as_ref()),
                    "event handler failed, will retry"
                );
                tokio::time::sleep(policy.backoff(delivery.attempt)).await;
                delivery.requeue().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails every event whose ID is in `poison`, and the first `flaky` deliveries of the rest;
    /// records what it handled.
    struct Handler {
        poison: Vec<u64>,
        flaky: AtomicU32,
        calls: AtomicU32,
        handled: std::sync::Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl EventHandler for Handler {
        async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.poison.contains(&event.event_id) {
                return Err("poison".into());
            }
            if self.flaky.load(Ordering::SeqCst) > 0 {
                self.flaky.fetch_sub(1, Ordering::SeqCst);
                return Err("transient".into());
            }
            self.handled.lock().unwrap().push(event.event_id);
            Ok(())
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };

    async fn run(handler: Arc<Handler>, events: &[u64]) -> (InProcessBus, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).unwrap();
        let spec = QueueSpec {
            name: "q".into(),
            bindings: vec!["t.#".into()],
        };
        let subscription = bus.subscribe(&spec).await.unwrap();
        for id in events {
            bus.publish(&conformance::event(*id, "t.x")).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let consumer = {
            let (handler, shutdown) = (Arc::clone(&handler), shutdown.clone());
            tokio::spawn(async move {
                consume("q", subscription, handler.as_ref(), FAST, shutdown).await
            })
        };
        let last = *events.last().unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !handler.handled.lock().unwrap().contains(&last) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the last event was handled");
        shutdown.cancel();
        consumer.await.unwrap().unwrap();
        (bus, dir)
    }

    fn handler(poison: Vec<u64>, flaky: u32) -> Arc<Handler> {
        Arc::new(Handler {
            poison,
            flaky: AtomicU32::new(flaky),
            calls: AtomicU32::new(0),
            handled: std::sync::Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_they_succeed() {
        let h = handler(vec![], 2);
        let (bus, _dir) = run(Arc::clone(&h), &[1, 2]).await;
        assert_eq!(
            *h.handled.lock().unwrap(),
            vec![1, 2],
            "in order, each once"
        );
        assert_eq!(
            h.calls.load(Ordering::SeqCst),
            4,
            "two failed attempts, then two successes"
        );
        assert!(bus.dead_lettered("q").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_message_that_keeps_failing_is_dead_lettered_and_the_queue_moves_on() {
        let h = handler(vec![1], 0);
        let (bus, _dir) = run(Arc::clone(&h), &[1, 2]).await;
        assert_eq!(*h.handled.lock().unwrap(), vec![2]);
        assert_eq!(h.calls.load(Ordering::SeqCst), FAST.max_attempts + 1);
        let dead: Vec<u64> = bus
            .dead_lettered("q")
            .await
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(dead, vec![1]);
    }

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

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(350));
        assert_eq!(policy.backoff(60), Duration::from_millis(350));
    }
}
