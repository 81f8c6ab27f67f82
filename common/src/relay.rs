//! The outbox relay: moves stored events from a service's [`Outbox`] onto the [`EventBus`],
//! in commit order, with every publish of a round in flight at once, and forgets exactly the
//! events the bus confirmed. A bus outage is logged when it starts and when it ends; the
//! events wait in the outbox meanwhile. [`crate::runtime`] runs it beside a publishing
//! service's gRPC server.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twtr_proto::events::v1::Envelope;

use crate::bus::EventBus;
use crate::error::error_chain;
use crate::outbox::Outbox;

/// Events published per round; all of a round are in flight at once.
const BATCH: usize = 256;
/// How often the relay looks at the outbox when nothing woke it (e.g. another process wrote).
const IDLE_POLL: Duration = Duration::from_secs(1);
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a shutting-down relay keeps trying to flush before giving up (the events stay
/// stored and go out at the next start).
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// How often the outbox depth is sampled for metrics, and the most it counts.
const DEPTH_EVERY: Duration = Duration::from_secs(10);
const DEPTH_CAP: usize = 10_000;

type RelayError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes stored events until `shutdown`, then flushes what is left. A bus outage is logged
/// when it starts and when it ends, not on every retry.
pub async fn run_relay(
    service: &'static str,
    outbox: Arc<dyn Outbox>,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) {
    tracing::debug!(service, "outbox relay started");
    let mut failing = false;
    loop {
        let round = relay_batch(outbox.as_ref(), bus.as_ref()).await;
        match (&round, failing) {
            (Ok(_), true) => {
                tracing::info!(service, "outbox relay publishing again");
                failing = false;
            }
            (Err(err), false) => {
                tracing::warn!(service, error = %error_chain(err.as_ref()), "outbox relay cannot publish; events stay in the outbox, retrying");
                failing = true;
            }
            (Err(err), true) => {
                tracing::debug!(service, error = %error_chain(err.as_ref()), "outbox relay still cannot publish");
            }
            (Ok(_), false) => {}
        }
        match round {
            Ok(0) => {
                tokio::select! {
                    () = outbox.changed() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            Ok(_) => {}
            Err(_) => {
                tokio::select! {
                    () = tokio::time::sleep(RETRY_BACKOFF) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    let flushed = tokio::time::timeout(FLUSH_DEADLINE, async {
        loop {
            match relay_batch(outbox.as_ref(), bus.as_ref()).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    outbox.close().await;
    match flushed {
        Ok(true) => tracing::debug!(service, "outbox flushed"),
        _ => tracing::warn!(
            service,
            "outbox not fully flushed; events stay stored for the next start"
        ),
    }
}

/// Records the outbox's depth (up to 10,000) every 10 s until `stop`.
pub async fn sample_depth(service: &'static str, outbox: Arc<dyn Outbox>, stop: CancellationToken) {
    let mut every = tokio::time::interval(DEPTH_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        match outbox.peek(DEPTH_CAP).await {
            Ok(stored) => crate::metrics::outbox_depth(service, stored.len()),
            Err(err) => tracing::debug!(service, error = %err, "cannot sample the outbox depth"),
        }
    }
}

/// Publishes one batch in commit order, with every publish in flight at once, and forgets
/// exactly the events the bus confirmed. Returns how many went out.
async fn relay_batch(outbox: &dyn Outbox, bus: &dyn EventBus) -> Result<usize, RelayError> {
    let pending = outbox.pending(BATCH).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let events: Vec<Envelope> = pending.iter().map(|p| p.event.clone()).collect();
    let results = bus.publish_batch(&events).await;
    let mut confirmed = Vec::with_capacity(pending.len());
    let mut first_error = None;
    for (entry, result) in pending.iter().zip(results) {
        match result {
            Ok(()) => {
                crate::metrics::events_published(&entry.event.r#type, 1);
                confirmed.push(entry.key);
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    let count = confirmed.len();
    if !confirmed.is_empty() {
        outbox.remove(confirmed).await?;
    }
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(count),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::bus::{BusError, DeadLetter, InProcessBus, Subscription, conformance};
    use crate::embedded::EmbeddedDb;
    use crate::outbox::pending_ids;

    async fn stage(db: &EmbeddedDb, ids: &[u64]) {
        let events: Vec<Envelope> = ids
            .iter()
            .map(|id| conformance::event(*id, "svc.happened"))
            .collect();
        db.write(move |tx| {
            for event in &events {
                tx.stage_event(event)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }

    async fn next_id(sub: &mut Box<dyn Subscription>) -> u64 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        let id = delivery.decode().unwrap().event_id;
        delivery.ack().await.unwrap();
        id
    }

    #[tokio::test]
    async fn the_relay_publishes_in_commit_order_then_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("svc.redb"), |_| Ok(())).unwrap();
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).unwrap();
        let mut sub = bus
            .subscribe(&conformance::spec("q", &["svc.*".into()]))
            .await
            .unwrap();
        // Event IDs are minted before their transaction commits, so a later commit can carry a
        // smaller ID: commit order, not ID order, is what goes out.
        stage(&db, &[20]).await;
        stage(&db, &[10]).await; // stored before the relay starts, as after a crash

        let stop = CancellationToken::new();
        let relay = tokio::spawn(run_relay(
            "svc",
            Arc::new(db.clone()),
            Arc::new(bus),
            stop.clone(),
        ));
        stage(&db, &[5]).await; // stored while it runs: the commit wakes it
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(next_id(&mut sub).await);
        }
        assert_eq!(seen, vec![20, 10, 5]);
        stop.cancel();
        relay.await.unwrap();
        assert!(db.pending(10).await.unwrap().is_empty());
    }

    /// A bus that refuses the events whose IDs are in `refuse`, counting the refusals, and
    /// passes the rest to an in-process bus.
    struct FlakyBus {
        refuse: Mutex<HashSet<u64>>,
        refused: AtomicU32,
        inner: InProcessBus,
    }

    #[async_trait]
    impl EventBus for FlakyBus {
        async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), BusError>> {
            let mut results = Vec::new();
            for event in events {
                if self.refuse.lock().unwrap().contains(&event.event_id) {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    results.push(Err(BusError::Unavailable));
                } else {
                    results.push(crate::bus::publish(&self.inner, event).await);
                }
            }
            results
        }

        async fn subscribe(
            &self,
            queue: &crate::bus::QueueSpec,
        ) -> Result<Box<dyn Subscription>, BusError> {
            self.inner.subscribe(queue).await
        }

        async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
            self.inner.dead_letters(queue, max).await
        }

        async fn redrive(&self, queue: &str, max: usize, only: &[u64]) -> Result<usize, BusError> {
            self.inner.redrive(queue, max, only).await
        }

        async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BusError> {
            self.inner.broadcast(topic, payload).await
        }

        async fn listen(&self, topic: &str) -> Result<Box<dyn crate::bus::Listener>, BusError> {
            self.inner.listen(topic).await
        }
    }

    #[tokio::test]
    async fn only_confirmed_events_leave_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("svc.redb"), |_| Ok(())).unwrap();
        let bus = Arc::new(FlakyBus {
            refuse: Mutex::new(HashSet::from([2])),
            refused: AtomicU32::new(0),
            inner: InProcessBus::open(&dir.path().join("bus.redb")).unwrap(),
        });
        let mut sub = bus
            .subscribe(&conformance::spec("q", &["svc.*".into()]))
            .await
            .unwrap();
        stage(&db, &[1, 2, 3]).await;

        let stop = CancellationToken::new();
        let relay = tokio::spawn(run_relay(
            "svc",
            Arc::new(db.clone()),
            bus.clone(),
            stop.clone(),
        ));
        // However often the broker refuses event 2, it is kept, and the others go out...
        assert_eq!(next_id(&mut sub).await, 1);
        assert_eq!(next_id(&mut sub).await, 3);
        tokio::time::timeout(Duration::from_secs(10), async {
            while bus.refused.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the relay retried");
        assert_eq!(pending_ids(&db, 10).await.unwrap(), vec![2]);
        // ...and it goes out once the broker takes it.
        bus.refuse.lock().unwrap().clear();
        assert_eq!(next_id(&mut sub).await, 2);
        stop.cancel();
        relay.await.unwrap();
        assert!(db.pending(10).await.unwrap().is_empty());
    }
}
