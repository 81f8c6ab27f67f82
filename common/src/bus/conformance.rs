//! The conformance suite every [`EventBus`] backend must pass. A backend's tests invoke
//! [`event_bus_conformance!`](crate::event_bus_conformance) with an async function that returns
//! a fresh bus plus whatever must stay alive while it is used. Queue names and routing keys are
//! unique per test, so the suite can run against a shared broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use twtr_proto::events::v1::Envelope;

use super::{
    ConsumerSettings, Delivery, EventBus, EventHandler, HandlerError, Heard, Listener, Permanent,
    QueueSpec, RetryPolicy, Subscription, consume, publish,
};

/// Generates one `#[tokio::test]` per conformance check for the backend built by `$open`, which
/// returns `Option<(bus, guard)>`: `None` skips the suite (a backend that is not available on
/// this machine outside CI).
#[macro_export]
macro_rules! event_bus_conformance {
    ($open:path) => {
        mod event_bus_conformance {
            use super::*;
            $crate::conformance_tests!(optional $open => $crate::bus::conformance:
                routes_by_binding_pattern,
                acked_messages_are_gone,
                requeued_messages_come_back_with_the_same_attempt,
                retried_messages_wait_without_blocking_the_queue,
                short_delays_do_not_wait_behind_long_ones,
                dead_letters_keep_their_error_and_leave_the_queue,
                redrive_moves_dead_letters_back_with_a_clean_record,
                unsettled_deliveries_return_when_their_consumer_goes,
                an_abandoned_next_loses_nothing,
                competing_consumers_share_a_queue,
                consume_retries_a_failing_event_until_it_succeeds,
                consume_dead_letters_a_poison_event_and_moves_on,
                consume_gives_up_past_the_retry_horizon,
                consume_pauses_while_its_store_is_down,
                consume_handles_up_to_prefetch_deliveries_at_once,
                depths_count_what_waits_and_what_is_dead,
                every_listener_hears_each_notice_in_order,
                a_listener_hears_nothing_of_other_topics,
                broadcasting_with_no_listener_is_ok,
                a_listener_hears_nothing_broadcast_before_it_listened,
                a_listener_ends_with_its_bus,
            );
        }
    };
}

/// The shortest retry delay the suite uses: short, so retries are quick, but long enough to see
/// that a retried message does not hold up the ones behind it.
pub const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The suite's retry policy: tiers of 200, 400 and 800 ms, a horizon no check reaches unless
/// it sets its own.
pub const POLICY: RetryPolicy = RetryPolicy {
    first_delay: RETRY_DELAY,
    max_delay: Duration::from_millis(800),
    horizon: Duration::from_secs(600),
};

/// A test event with the given ID and routing key.
pub fn event(event_id: u64, routing_key: &str) -> Envelope {
    Envelope {
        event_id,
        r#type: routing_key.to_owned(),
        aggregate_id: event_id,
        ..Envelope::default()
    }
}

/// A name no other test run uses, so tests can share one broker.
pub fn unique(prefix: &str) -> String {
    static IDS: std::sync::OnceLock<crate::IdGenerator> = std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| {
        crate::IdGenerator::new((std::process::id() % 1024) as u16)
            .unwrap_or_else(|_| unreachable!())
    });
    format!("{prefix}-{}", ids.next_id())
}

/// A queue spec for the suite: unique name, the suite's retry delay, prefetch 1 (so a consumer
/// holding one message leaves the next to a competitor).
pub fn spec(name: &str, bindings: &[String]) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        bindings: bindings.to_vec(),
        prefetch: 1,
        retry: POLICY,
    }
}

const DELIVERY_DEADLINE: Duration = Duration::from_secs(15);

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(DELIVERY_DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {DELIVERY_DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("subscription failed: {err}"))
}

/// Asserts that nothing is delivered within `wait`.
async fn nothing_within(sub: &mut Box<dyn Subscription>, wait: Duration) {
    if let Ok(delivery) = tokio::time::timeout(wait, sub.next()).await {
        panic!(
            "expected no delivery, got {:?}",
            delivery.map(|d| id_of(&d))
        );
    }
}

fn id_of(delivery: &Delivery) -> u64 {
    delivery.decode().expect("delivery decodes").event_id
}

async fn subscribe(
    bus: &Arc<dyn EventBus>,
    name: &str,
    bindings: &[String],
) -> Box<dyn Subscription> {
    bus.subscribe(&spec(name, bindings))
        .await
        .expect("subscribe")
}

async fn send(bus: &Arc<dyn EventBus>, id: u64, key: &str) {
    publish(bus.as_ref(), &event(id, key))
        .await
        .expect("publish");
}

pub async fn routes_by_binding_pattern(bus: Arc<dyn EventBus>) {
    let topic = unique("route");
    let (one, two, end) = (
        format!("{topic}.one"),
        format!("{topic}.two"),
        format!("{topic}.end"),
    );
    let mut exact = subscribe(&bus, &unique("exact"), &[one.clone(), end.clone()]).await;
    let mut wildcard = subscribe(&bus, &unique("wild"), &[format!("{topic}.*")]).await;
    let batch = [event(1, &one), event(2, &two), event(3, &end)];
    for result in bus.publish_batch(&batch).await {
        result.expect("publish");
    }
    // The exact queue sees `one`, then `end`: `two` was never routed to it.
    let mut seen_exact = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut exact).await;
        seen_exact.push(id_of(&delivery));
        delivery.ack().await.expect("ack");
    }
    assert_eq!(seen_exact, vec![1, 3]);
    let mut seen_wild = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut wildcard).await;
        seen_wild.push(id_of(&delivery));
        delivery.ack().await.expect("ack");
    }
    assert_eq!(seen_wild, vec![1, 2, 3]);
}

pub async fn acked_messages_are_gone(bus: Arc<dyn EventBus>) {
    let topic = unique("ack");
    let queue = unique("ackq");
    let mut sub = subscribe(&bus, &queue, &[format!("{topic}.#")]).await;
    send(&bus, 1, &format!("{topic}.a")).await;
    send(&bus, 2, &format!("{topic}.b")).await;
    let first = next(&mut sub).await;
    assert_eq!(id_of(&first), 1);
    first.ack().await.expect("ack");
    let second = next(&mut sub).await;
    assert_eq!(
        id_of(&second),
        2,
        "an acked message must not be delivered again"
    );
    second.ack().await.expect("ack");
    drop(sub);
    // A new consumer of the same queue finds it empty.
    let mut again = subscribe(&bus, &queue, &[format!("{topic}.#")]).await;
    nothing_within(&mut again, RETRY_DELAY * 2).await;
}

pub async fn requeued_messages_come_back_with_the_same_attempt(bus: Arc<dyn EventBus>) {
    let topic = unique("requeue");
    let mut sub = subscribe(&bus, &unique("requeueq"), &[format!("{topic}.*")]).await;
    send(&bus, 42, &format!("{topic}.x")).await;
    let first = next(&mut sub).await;
    assert_eq!((id_of(&first), first.attempt), (42, 1));
    first.requeue().await.expect("requeue");
    let again = next(&mut sub).await;
    assert_eq!(
        (id_of(&again), again.attempt),
        (42, 1),
        "a requeue is not a failed attempt"
    );
    again.ack().await.expect("ack");
}

pub async fn retried_messages_wait_without_blocking_the_queue(bus: Arc<dyn EventBus>) {
    let topic = unique("retry");
    let mut sub = subscribe(&bus, &unique("retryq"), &[format!("{topic}.*")]).await;
    send(&bus, 1, &format!("{topic}.failing")).await;
    send(&bus, 2, &format!("{topic}.fine")).await;

    let failing = next(&mut sub).await;
    assert_eq!((id_of(&failing), failing.attempt), (1, 1));
    assert_eq!(failing.first_failed_at_ms, None, "nothing failed yet");
    let retried_at = tokio::time::Instant::now();
    let first_failed = crate::clock::now_millis();
    failing.retry("boom", RETRY_DELAY).await.expect("retry");
    // The message behind it is not held up by the one waiting to be retried...
    let fine = next(&mut sub).await;
    assert_eq!(id_of(&fine), 2);
    fine.ack().await.expect("ack");
    // ...which comes back after the delay, counted as a second attempt.
    let again = next(&mut sub).await;
    assert!(
        retried_at.elapsed() >= RETRY_DELAY.mul_f32(0.9),
        "came back after {:?}, before the retry delay",
        retried_at.elapsed()
    );
    assert_eq!((id_of(&again), again.attempt), (1, 2));
    let since = again
        .first_failed_at_ms
        .expect("it remembers its first failure");
    assert!(
        (since - first_failed).abs() < 1000,
        "first failed at {since}, not {first_failed}"
    );
    again
        .retry("boom again", RETRY_DELAY * 2)
        .await
        .expect("retry");
    let third = next(&mut sub).await;
    assert_eq!((id_of(&third), third.attempt), (1, 3));
    assert_eq!(
        third.first_failed_at_ms,
        Some(since),
        "the first failure stays the first"
    );
    third.ack().await.expect("ack");
}

/// A message retried with a short delay comes back before one retried earlier with a long
/// delay (a broker expires messages only at the head of a queue: each delay needs its tier).
pub async fn short_delays_do_not_wait_behind_long_ones(bus: Arc<dyn EventBus>) {
    let topic = unique("tiers");
    let mut sub = subscribe(&bus, &unique("tiersq"), &[format!("{topic}.*")]).await;
    send(&bus, 1, &format!("{topic}.slow")).await;
    send(&bus, 2, &format!("{topic}.quick")).await;
    let slow = next(&mut sub).await;
    assert_eq!(id_of(&slow), 1);
    slow.retry("slow", POLICY.max_delay * 4)
        .await
        .expect("retry");
    let quick = next(&mut sub).await;
    assert_eq!(id_of(&quick), 2);
    quick.retry("quick", RETRY_DELAY).await.expect("retry");
    let first_back = next(&mut sub).await;
    assert_eq!(
        id_of(&first_back),
        2,
        "the short delay came back first, not behind the long one"
    );
    first_back.ack().await.expect("ack");
    let last_back = next(&mut sub).await;
    assert_eq!(id_of(&last_back), 1);
    last_back.ack().await.expect("ack");
}

pub async fn dead_letters_keep_their_error_and_leave_the_queue(bus: Arc<dyn EventBus>) {
    let topic = unique("dead");
    let queue = unique("deadq");
    let mut sub = subscribe(&bus, &queue, &[format!("{topic}.*")]).await;
    send(&bus, 1, &format!("{topic}.poison")).await;
    send(&bus, 2, &format!("{topic}.fine")).await;
    let poison = next(&mut sub).await;
    assert_eq!(id_of(&poison), 1);
    let before = crate::clock::now_millis();
    poison
        .retry("first failure", RETRY_DELAY)
        .await
        .expect("retry");
    let fine = next(&mut sub).await;
    assert_eq!(
        id_of(&fine),
        2,
        "the failing message does not block the queue"
    );
    fine.ack().await.expect("ack");
    let poison = next(&mut sub).await;
    assert_eq!((id_of(&poison), poison.attempt), (1, 2));
    poison
        .dead_letter("handler said no")
        .await
        .expect("dead-letter");
    nothing_within(&mut sub, RETRY_DELAY * 2).await;

    let dead = bus.dead_letters(&queue, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].decode().expect("decodes").event_id, 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].error, "handler said no");
    let after = crate::clock::now_millis();
    assert!(
        (before..=after).contains(&dead[0].first_failed_at_ms),
        "first failed at {} (between {before} and {after})",
        dead[0].first_failed_at_ms
    );
    assert!(
        (dead[0].first_failed_at_ms..=after).contains(&dead[0].dead_at_ms),
        "dead at {}",
        dead[0].dead_at_ms
    );
    // Looking does not take them away.
    assert_eq!(bus.dead_letters(&queue, 10).await.expect("again").len(), 1);
}

/// Dead letters go back to the work queue when an operator re-drives them, all or by event ID,
/// starting over as first attempts; re-driving an empty dead-letter queue moves nothing.
pub async fn redrive_moves_dead_letters_back_with_a_clean_record(bus: Arc<dyn EventBus>) {
    let topic = unique("redrive");
    let queue = unique("redriveq");
    let mut sub = subscribe(&bus, &queue, &[format!("{topic}.*")]).await;
    for id in 1..=3 {
        send(&bus, id, &format!("{topic}.x")).await;
    }
    for _ in 1..=3 {
        let delivery = next(&mut sub).await;
        delivery
            .dead_letter("store said no")
            .await
            .expect("dead-letter");
    }
    let dead_ids = |dead: Vec<super::DeadLetter>| {
        let mut ids: Vec<u64> = dead.iter().map(|d| d.decode().unwrap().event_id).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(
        dead_ids(bus.dead_letters(&queue, 10).await.unwrap()),
        vec![1, 2, 3]
    );

    assert_eq!(bus.redrive(&queue, 10, &[2]).await.expect("redrive"), 1);
    let back = next(&mut sub).await;
    assert_eq!(
        (id_of(&back), back.attempt, back.first_failed_at_ms),
        (2, 1, None),
        "re-driven as a first attempt"
    );
    back.ack().await.expect("ack");
    assert_eq!(
        dead_ids(bus.dead_letters(&queue, 10).await.unwrap()),
        vec![1, 3]
    );

    assert_eq!(bus.redrive(&queue, 10, &[]).await.expect("redrive all"), 2);
    let mut again = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut sub).await;
        again.push(id_of(&delivery));
        delivery.ack().await.expect("ack");
    }
    again.sort_unstable();
    assert_eq!(again, vec![1, 3]);
    assert_eq!(bus.redrive(&queue, 10, &[]).await.expect("nothing left"), 0);
    assert!(bus.dead_letters(&queue, 10).await.unwrap().is_empty());
    nothing_within(&mut sub, RETRY_DELAY * 2).await;
}

/// Polls `bus.depths(queue)` until it reads `(waiting, dead)` (a broker's counts trail its
/// state by a moment).
async fn await_depths(bus: &Arc<dyn EventBus>, queue: &str, expected: (u64, u64)) {
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    loop {
        let depths = bus.depths(queue).await.expect("depths");
        if (depths.waiting, depths.dead) == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depths of {queue}: {depths:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn depths_count_what_waits_and_what_is_dead(bus: Arc<dyn EventBus>) {
    let topic = unique("depth");
    let queue = unique("depthq");
    let mut sub = subscribe(&bus, &queue, &[format!("{topic}.*")]).await;
    await_depths(&bus, &queue, (0, 0)).await;
    for id in 1..=3 {
        send(&bus, id, &format!("{topic}.x")).await;
    }
    await_depths(&bus, &queue, (3, 0)).await;
    for settle in ["ack", "dead", "ack"] {
        let delivery = next(&mut sub).await;
        match settle {
            "ack" => delivery.ack().await.expect("ack"),
            _ => delivery.dead_letter("no").await.expect("dead-letter"),
        }
    }
    await_depths(&bus, &queue, (0, 1)).await;
}

pub async fn unsettled_deliveries_return_when_their_consumer_goes(bus: Arc<dyn EventBus>) {
    let topic = unique("crash");
    let queue = unique("crashq");
    let bindings = [format!("{topic}.*")];
    let mut doomed = subscribe(&bus, &queue, &bindings).await;
    send(&bus, 7, &format!("{topic}.x")).await;
    let held = next(&mut doomed).await;
    assert_eq!(id_of(&held), 7);
    // Another consumer joins; the first dies without settling what it holds.
    let mut survivor = subscribe(&bus, &queue, &bindings).await;
    drop(held);
    drop(doomed);
    let again = next(&mut survivor).await;
    assert_eq!(id_of(&again), 7);
    assert_eq!(again.attempt, 1, "a lost consumer is not a failed attempt");
    again.ack().await.expect("ack");
}

/// A `next()` abandoned part-way (as a `select!` does) must not swallow a message.
pub async fn an_abandoned_next_loses_nothing(bus: Arc<dyn EventBus>) {
    let topic = unique("abandon");
    let mut sub = subscribe(&bus, &unique("abandonq"), &[format!("{topic}.*")]).await;
    for attempt in 0..20 {
        send(&bus, 100 + attempt, &format!("{topic}.x")).await;
        // Give up on the first poll, wherever the claim is.
        let _ = tokio::time::timeout(Duration::from_micros(1), sub.next()).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let delivery = next(&mut sub).await;
        seen.push(id_of(&delivery));
        delivery.ack().await.expect("ack");
    }
    seen.sort_unstable();
    assert_eq!(seen, (100..120).collect::<Vec<_>>());
}

pub async fn competing_consumers_share_a_queue(bus: Arc<dyn EventBus>) {
    let topic = unique("compete");
    let queue = unique("competeq");
    let bindings = [format!("{topic}.*")];
    let mut a = subscribe(&bus, &queue, &bindings).await;
    let mut b = subscribe(&bus, &queue, &bindings).await;
    send(&bus, 1, &format!("{topic}.x")).await;
    send(&bus, 2, &format!("{topic}.y")).await;
    // While `a` holds one message, `b` gets the other: each message goes to one consumer.
    let held = next(&mut a).await;
    let other = next(&mut b).await;
    let mut ids = vec![id_of(&held), id_of(&other)];
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    held.ack().await.expect("ack");
    other.ack().await.expect("ack");
}

/// Fails every event whose ID is in `poison` permanently, every event in `stuck` transiently,
/// and the first `flaky` deliveries of the rest transiently; while `store_down`, fails every
/// event and its probe. Records what it handled.
struct Handler {
    poison: Vec<u64>,
    stuck: Vec<u64>,
    flaky: AtomicU32,
    store_down: std::sync::atomic::AtomicBool,
    calls: AtomicU32,
    probes: AtomicU32,
    handled: Mutex<Vec<u64>>,
}

impl Handler {
    fn new(poison: Vec<u64>, flaky: u32) -> Arc<Self> {
        Arc::new(Self {
            poison,
            stuck: Vec::new(),
            flaky: AtomicU32::new(flaky),
            store_down: std::sync::atomic::AtomicBool::new(false),
            calls: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            handled: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl EventHandler for Handler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.store_down.load(Ordering::SeqCst) {
            return Err("store unreachable".into());
        }
        if self.poison.contains(&event.event_id) {
            return Err(Box::new(Permanent("poison".into())));
        }
        if self.stuck.contains(&event.event_id) {
            return Err("peer unavailable".into());
        }
        if self.flaky.load(Ordering::SeqCst) > 0 {
            self.flaky.fetch_sub(1, Ordering::SeqCst);
            return Err("transient".into());
        }
        self.handled.lock().unwrap().push(event.event_id);
        Ok(())
    }

    async fn probe(&self) -> Result<(), HandlerError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if self.store_down.load(Ordering::SeqCst) {
            return Err("store unreachable".into());
        }
        Ok(())
    }
}

/// The suite's consumer: one delivery at a time, [`POLICY`]'s delays.
const SETTINGS: ConsumerSettings = ConsumerSettings {
    prefetch: 1,
    retry: POLICY,
};

/// Runs [`consume`] on a fresh queue until `done` says the handler has seen enough.
async fn run_consumer(
    bus: &Arc<dyn EventBus>,
    handler: Arc<Handler>,
    events: &[u64],
    done: impl Fn(&Handler) -> bool,
) -> String {
    run_consumer_with(bus, handler, SETTINGS, events, done).await
}

/// [`run_consumer`] with `settings` of the check's own.
async fn run_consumer_with(
    bus: &Arc<dyn EventBus>,
    handler: Arc<Handler>,
    settings: ConsumerSettings,
    events: &[u64],
    done: impl Fn(&Handler) -> bool,
) -> String {
    let running = start_consumer(bus, Arc::clone(&handler), settings, events).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done(&handler) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the consumer got there in time");
    running.stop().await
}

/// A [`consume`] loop running on a queue of its own.
struct Running {
    queue: String,
    shutdown: CancellationToken,
    consumer: tokio::task::JoinHandle<Result<(), super::BusError>>,
}

impl Running {
    /// Stops the consumer (it settles what it holds) and returns its queue's name.
    async fn stop(self) -> String {
        self.shutdown.cancel();
        self.consumer.await.unwrap().unwrap();
        self.queue
    }
}

/// Starts [`consume`] with `handler` on a fresh queue holding `events`.
async fn start_consumer(
    bus: &Arc<dyn EventBus>,
    handler: Arc<Handler>,
    settings: ConsumerSettings,
    events: &[u64],
) -> Running {
    let topic = unique("consume");
    let queue = unique("consumeq");
    let spec = QueueSpec {
        retry: settings.retry,
        ..spec(&queue, &[format!("{topic}.*")])
    };
    let subscription = bus.subscribe(&spec).await.expect("subscribe");
    for id in events {
        send(bus, *id, &format!("{topic}.x")).await;
    }
    let shutdown = CancellationToken::new();
    let consumer = {
        let (handler, shutdown, queue) = (Arc::clone(&handler), shutdown.clone(), queue.clone());
        tokio::spawn(async move {
            consume(&queue, subscription, handler.as_ref(), settings, shutdown).await
        })
    };
    Running {
        queue,
        shutdown,
        consumer,
    }
}

pub async fn consume_retries_a_failing_event_until_it_succeeds(bus: Arc<dyn EventBus>) {
    let handler = Handler::new(vec![], 2);
    let queue = run_consumer(&bus, Arc::clone(&handler), &[1, 2], |h| {
        h.handled.lock().unwrap().len() == 2
    })
    .await;
    let mut handled = handler.handled.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(handled, vec![1, 2], "each handled once");
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        4,
        "two failed attempts, then two successes"
    );
    assert!(bus.dead_letters(&queue, 10).await.unwrap().is_empty());
}

pub async fn consume_dead_letters_a_poison_event_and_moves_on(bus: Arc<dyn EventBus>) {
    let handler = Handler::new(vec![1], 0);
    let queue = run_consumer(&bus, Arc::clone(&handler), &[1, 2], |h| {
        h.handled.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(*handler.handled.lock().unwrap(), vec![2]);
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        2,
        "a permanent failure is not retried"
    );
    let dead = bus.dead_letters(&queue, 10).await.unwrap();
    let dead: Vec<(u64, u32, &str)> = dead
        .iter()
        .map(|d| (d.decode().unwrap().event_id, d.attempts, d.error.as_str()))
        .collect();
    assert_eq!(dead, vec![(1, 1, "permanent failure: poison")]);
}

/// A transient failure is retried with growing delays until the horizon, then dead-lettered
/// with the reason; the events behind it flow meanwhile.
pub async fn consume_gives_up_past_the_retry_horizon(bus: Arc<dyn EventBus>) {
    let handler = Arc::new(Handler {
        stuck: vec![1],
        ..Arc::into_inner(Handler::new(vec![], 0)).unwrap()
    });
    let horizon = Duration::from_millis(1500);
    let settings = ConsumerSettings {
        retry: RetryPolicy { horizon, ..POLICY },
        ..SETTINGS
    };
    let running = start_consumer(&bus, Arc::clone(&handler), settings, &[1, 2]).await;
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    while bus
        .dead_letters(&running.queue, 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck event was never given up on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queue = running.stop().await;
    assert_eq!(*handler.handled.lock().unwrap(), vec![2]);
    let dead = bus.dead_letters(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].decode().unwrap().event_id, 1);
    assert!(
        dead[0].error.contains("past the retry horizon")
            && dead[0].error.ends_with("peer unavailable"),
        "{}",
        dead[0].error
    );
    // Backing off from 200 ms doubling to 800 ms, 1.5 s of failing is 3 to 6 attempts.
    let calls = handler.calls.load(Ordering::SeqCst) - 1;
    assert!((3..=7).contains(&calls), "{calls} attempts");
    assert_eq!(dead[0].attempts, calls);
}

/// While its store does not answer, a consumer takes no deliveries, so an outage spends no
/// retries; it resumes when the store answers, and every event is handled on its first try.
pub async fn consume_pauses_while_its_store_is_down(bus: Arc<dyn EventBus>) {
    let handler = Handler::new(vec![], 0);
    handler.store_down.store(true, Ordering::SeqCst);
    let outage = Duration::from_millis(2000);
    let recovery = {
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            // The consumer held still through the outage: one delivery tried, then probes.
            let calls = handler.calls.load(Ordering::SeqCst);
            let probes = handler.probes.load(Ordering::SeqCst);
            handler.store_down.store(false, Ordering::SeqCst);
            (calls, probes)
        })
    };
    let queue = run_consumer(&bus, Arc::clone(&handler), &[1, 2, 3], |h| {
        h.handled.lock().unwrap().len() == 3
    })
    .await;
    let (calls_in_outage, probes_in_outage) = recovery.await.unwrap();
    assert_eq!(calls_in_outage, 1, "one delivery failed, then it paused");
    assert!(
        probes_in_outage >= 3,
        "it kept probing the store ({probes_in_outage} probes)"
    );
    let mut handled = handler.handled.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(handled, vec![1, 2, 3]);
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        4,
        "the failed delivery came back once, untouched; nothing else was tried in the outage"
    );
    assert!(bus.dead_letters(&queue, 10).await.unwrap().is_empty());
}

/// Counts the handler calls running at once, holding each one until `width` run together (or
/// a deadline passes, so a consumer that handles one at a time fails the check, not the run).
struct Gate {
    width: u32,
    running: AtomicU32,
    most: AtomicU32,
    done: AtomicU32,
}

#[async_trait]
impl EventHandler for Gate {
    async fn handle(&self, _event: &Envelope) -> Result<(), HandlerError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.most.load(Ordering::SeqCst) < self.width
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub async fn consume_handles_up_to_prefetch_deliveries_at_once(bus: Arc<dyn EventBus>) {
    const WIDTH: u16 = 4;
    let topic = unique("wide");
    let queue = unique("wideq");
    let spec = QueueSpec {
        prefetch: WIDTH,
        ..spec(&queue, &[format!("{topic}.*")])
    };
    let subscription = bus.subscribe(&spec).await.expect("subscribe");
    let events = 3 * u64::from(WIDTH);
    for id in 1..=events {
        send(&bus, id, &format!("{topic}.x")).await;
    }
    let gate = Arc::new(Gate {
        width: u32::from(WIDTH),
        running: AtomicU32::new(0),
        most: AtomicU32::new(0),
        done: AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let consumer = {
        let (gate, shutdown, queue) = (Arc::clone(&gate), shutdown.clone(), queue.clone());
        let settings = ConsumerSettings {
            prefetch: WIDTH,
            ..SETTINGS
        };
        tokio::spawn(async move {
            consume(&queue, subscription, gate.as_ref(), settings, shutdown).await
        })
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while u64::from(gate.done.load(Ordering::SeqCst)) < events {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every event handled in time");
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert_eq!(
        gate.most.load(Ordering::SeqCst),
        u32::from(WIDTH),
        "handled {WIDTH} at once, never more"
    );
    let mut sub = subscribe(&bus, &queue, &[format!("{topic}.*")]).await;
    nothing_within(&mut sub, Duration::from_millis(500)).await;
}

async fn listen(bus: &Arc<dyn EventBus>, topic: &str) -> Box<dyn Listener> {
    bus.listen(topic).await.expect("listen")
}

async fn broadcast(bus: &Arc<dyn EventBus>, topic: &str, payload: &[u8]) {
    bus.broadcast(topic, payload).await.expect("broadcast");
}

/// The next notice `listener` hears (a [`Heard::Missed`] fails the check: nothing here is lost).
async fn notice(listener: &mut Box<dyn Listener>) -> Vec<u8> {
    let heard = tokio::time::timeout(DELIVERY_DEADLINE, listener.next())
        .await
        .unwrap_or_else(|_| panic!("no notice within {DELIVERY_DEADLINE:?}"));
    match heard {
        Some(Heard::Notice(payload)) => payload,
        other => panic!("expected a notice, heard {other:?}"),
    }
}

pub async fn every_listener_hears_each_notice_in_order(bus: Arc<dyn EventBus>) {
    let topic = format!("{}.live", unique("notices"));
    let mut first = listen(&bus, &topic).await;
    let mut second = listen(&bus, &topic).await;
    // Payloads of every length up to 20, one of every byte value, and an empty one.
    let mut notices: Vec<Vec<u8>> = (1..=20_u8).map(|n| vec![n; usize::from(n)]).collect();
    notices.push((0..=255_u8).collect());
    notices.push(Vec::new());
    for payload in &notices {
        broadcast(&bus, &topic, payload).await;
    }
    for listener in [&mut first, &mut second] {
        for expected in &notices {
            assert_eq!(notice(listener).await, *expected);
        }
    }
}

pub async fn a_listener_hears_nothing_of_other_topics(bus: Arc<dyn EventBus>) {
    let topic = unique("notices");
    // A topic that extends this one, and one that shares nothing with it.
    let (longer, unrelated) = (format!("{topic}.more"), unique("notices"));
    let mut listener = listen(&bus, &topic).await;
    let mut longer_listener = listen(&bus, &longer).await;
    broadcast(&bus, &longer, b"for the longer topic").await;
    broadcast(&bus, &unrelated, b"for another topic").await;
    broadcast(&bus, &topic, b"marker").await;
    assert_eq!(
        notice(&mut listener).await,
        b"marker",
        "the first notice heard is the one of its own topic"
    );
    assert_eq!(notice(&mut longer_listener).await, b"for the longer topic");
}

/// Nobody listening (yet, or any more) is not an error: the notice is dropped.
pub async fn broadcasting_with_no_listener_is_ok(bus: Arc<dyn EventBus>) {
    let topic = unique("notices");
    broadcast(&bus, &topic, b"before anyone listens").await;
    let mut listener = listen(&bus, &topic).await;
    let gone = listen(&bus, &topic).await;
    drop(gone);
    broadcast(&bus, &topic, b"to the one still listening").await;
    assert_eq!(notice(&mut listener).await, b"to the one still listening");
    drop(listener);
    broadcast(&bus, &topic, b"after everyone left").await;
}

pub async fn a_listener_hears_nothing_broadcast_before_it_listened(bus: Arc<dyn EventBus>) {
    let topic = unique("notices");
    let mut early = listen(&bus, &topic).await;
    broadcast(&bus, &topic, b"before").await;
    let mut late = listen(&bus, &topic).await;
    broadcast(&bus, &topic, b"after").await;
    assert_eq!(notice(&mut late).await, b"after");
    assert_eq!(notice(&mut early).await, b"before");
    assert_eq!(notice(&mut early).await, b"after");
}

/// A listener hears `None` once its bus is gone (its last handle dropped).
pub async fn a_listener_ends_with_its_bus(bus: Arc<dyn EventBus>) {
    let topic = unique("notices");
    let mut listener = listen(&bus, &topic).await;
    drop(bus);
    let heard = tokio::time::timeout(DELIVERY_DEADLINE, listener.next())
        .await
        .unwrap_or_else(|_| {
            panic!("the listener still waits {DELIVERY_DEADLINE:?} after its bus went")
        });
    assert_eq!(heard, None);
}
