//! The conformance suite every [`EventBus`] backend must pass. A backend's tests invoke
//! [`event_bus_conformance!`](crate::event_bus_conformance) with an async function that returns
//! a fresh bus plus whatever must stay alive while it is used. Queue names and routing keys are
//! unique per test, so the suite can run against a shared broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use twtr_proto::events::v1::Envelope;

use super::{Delivery, EventBus, QueueSpec, Subscription};

/// Generates one `#[tokio::test]` per conformance check for the backend built by `$open`.
#[macro_export]
macro_rules! event_bus_conformance {
    ($open:path) => {
        mod event_bus_conformance {
            use super::*;
            $crate::conformance_tests!($open => $crate::bus::conformance:
                routes_by_binding_pattern,
                acked_messages_are_gone,
                unsettled_and_requeued_messages_come_back,
                dead_lettered_messages_are_not_redelivered,
                competing_consumers_share_a_queue,
            );
        }
    };
}

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

const DELIVERY_DEADLINE: Duration = Duration::from_secs(10);

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(DELIVERY_DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {DELIVERY_DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("subscription failed: {err}"))
}

fn id_of(delivery: &Delivery) -> u64 {
    delivery.decode().expect("delivery decodes").event_id
}

async fn subscribe(
    bus: &Arc<dyn EventBus>,
    name: &str,
    bindings: &[String],
) -> Box<dyn Subscription> {
    let spec = QueueSpec {
        name: name.to_owned(),
        bindings: bindings.to_vec(),
    };
    bus.subscribe(&spec).await.expect("subscribe")
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
    for (id, key) in [(1, &one), (2, &two), (3, &end)] {
        bus.publish(&event(id, key)).await.expect("publish");
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
    bus.publish(&event(1, &format!("{topic}.a")))
        .await
        .expect("publish");
    bus.publish(&event(2, &format!("{topic}.b")))
        .await
        .expect("publish");
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
}

pub async fn unsettled_and_requeued_messages_come_back(bus: Arc<dyn EventBus>) {
    let topic = unique("requeue");
    let mut sub = subscribe(&bus, &unique("requeueq"), &[format!("{topic}.*")]).await;
    bus.publish(&event(42, &format!("{topic}.x")))
        .await
        .expect("publish");

    let first = next(&mut sub).await;
    assert_eq!((id_of(&first), first.attempt), (42, 1));
    drop(first); // a consumer that dies without settling

    let again = next(&mut sub).await;
    assert_eq!(id_of(&again), 42);
    let attempt = again.attempt;
    again.requeue().await.expect("requeue");

    let retried = next(&mut sub).await;
    assert_eq!(id_of(&retried), 42);
    assert!(
        retried.attempt > attempt,
        "a requeue counts as a failed attempt"
    );
    retried.ack().await.expect("ack");
}

pub async fn dead_lettered_messages_are_not_redelivered(bus: Arc<dyn EventBus>) {
    let topic = unique("dead");
    let mut sub = subscribe(&bus, &unique("deadq"), &[format!("{topic}.*")]).await;
    bus.publish(&event(1, &format!("{topic}.poison")))
        .await
        .expect("publish");
    bus.publish(&event(2, &format!("{topic}.fine")))
        .await
        .expect("publish");
    let poison = next(&mut sub).await;
    assert_eq!(id_of(&poison), 1);
    poison.dead_letter().await.expect("dead-letter");
    let fine = next(&mut sub).await;
    assert_eq!(
        id_of(&fine),
        2,
        "a dead-lettered message must leave the queue"
    );
    fine.ack().await.expect("ack");
}

pub async fn competing_consumers_share_a_queue(bus: Arc<dyn EventBus>) {
    let topic = unique("compete");
    let queue = unique("competeq");
    let bindings = [format!("{topic}.*")];
    let mut a = subscribe(&bus, &queue, &bindings).await;
    let mut b = subscribe(&bus, &queue, &bindings).await;
    bus.publish(&event(1, &format!("{topic}.x")))
        .await
        .expect("publish");
    bus.publish(&event(2, &format!("{topic}.y")))
        .await
        .expect("publish");
    // While `a` holds one message, `b` gets the other: each message goes to one consumer.
    let held = next(&mut a).await;
    let other = next(&mut b).await;
    let mut ids = vec![id_of(&held), id_of(&other)];
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    held.ack().await.expect("ack");
    other.ack().await.expect("ack");
}
