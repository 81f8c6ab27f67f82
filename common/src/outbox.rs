//! The transactional outbox: events are stored in the same transaction as the data they
//! describe, and [`run_relay`] moves them onto the bus afterwards. A crash between the write and
//! the publish loses nothing: the event is still in the outbox when the process comes back.
//! A crash between the publish and the removal publishes it twice, which consumers tolerate
//! (delivery is at-least-once and every handler is idempotent).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use twtr_proto::events::v1::Envelope;

use crate::bus::EventBus;
use crate::embedded::StoreError;
use crate::error::error_chain;

/// The stored side of the outbox, implemented by each storage backend.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `max` stored events, oldest first.
    async fn pending(&self, max: usize) -> Result<Vec<Envelope>, StoreError>;
    /// Forgets events that the bus has confirmed.
    async fn remove(&self, event_ids: Vec<u64>) -> Result<(), StoreError>;
    /// Resolves when new events may have been stored since the last call.
    async fn changed(&self);
}

/// The IDs of up to `max` stored events, oldest first (for operators and tests).
pub async fn pending_ids(outbox: &dyn Outbox, max: usize) -> Result<Vec<u64>, StoreError> {
    Ok(outbox
        .pending(max)
        .await?
        .iter()
        .map(|e| e.event_id)
        .collect())
}

const BATCH: usize = 128;
/// How often the relay looks at the outbox when nothing woke it (e.g. another process wrote).
const IDLE_POLL: Duration = Duration::from_secs(1);
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a shutting-down relay keeps trying to flush before giving up (the events stay
/// stored and go out at the next start).
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Publishes stored events until `shutdown`, then flushes what is left.
pub async fn run_relay(
    service: &'static str,
    outbox: Arc<dyn Outbox>,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) {
    tracing::debug!(service, "outbox relay started");
    loop {
        match relay_batch(outbox.as_ref(), bus.as_ref()).await {
            Ok(0) => {
                tokio::select! {
                    () = outbox.changed() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(service, error = %error_chain(err.as_ref()), "outbox relay failed, retrying");
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
    match flushed {
        Ok(true) => tracing::debug!(service, "outbox flushed"),
        _ => tracing::warn!(
            service,
            "outbox not fully flushed; events stay stored for the next start"
        ),
    }
}

/// Publishes one batch; returns how many events went out.
async fn relay_batch(
    outbox: &dyn Outbox,
    bus: &dyn EventBus,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let events = outbox.pending(BATCH).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut published = Vec::with_capacity(events.len());
    for event in &events {
        if let Err(err) = bus.publish(event).await {
            // Keep what did go out from being published again.
            if !published.is_empty() {
                outbox.remove(published).await?;
            }
            return Err(err.into());
        }
        published.push(event.event_id);
    }
    let count = published.len();
    outbox.remove(published).await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::bus::{BusError, InProcessBus, QueueSpec, Subscription, conformance};
    use crate::embedded::EmbeddedDb;

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
    async fn the_relay_publishes_in_order_then_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("svc.redb"), |_| Ok(())).unwrap();
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).unwrap();
        let spec = QueueSpec {
            name: "q".into(),
            bindings: vec!["svc.*".into()],
        };
        let mut sub = bus.subscribe(&spec).await.unwrap();
        stage(&db, &[1, 2]).await; // stored before the relay starts, as after a crash

        let stop = CancellationToken::new();
        let relay = tokio::spawn(run_relay(
            "svc",
            Arc::new(db.clone()),
            Arc::new(bus),
            stop.clone(),
        ));
        stage(&db, &[3]).await; // stored while it runs: the commit wakes it
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(next_id(&mut sub).await);
        }
        assert_eq!(seen, vec![1, 2, 3]);
        stop.cancel();
        relay.await.unwrap();
        assert!(db.pending(10).await.unwrap().is_empty());
    }

    /// A bus that refuses every publish while `down` is set, counting the refusals.
    struct FlakyBus {
        down: AtomicBool,
        refused: AtomicU32,
        inner: InProcessBus,
    }

    #[async_trait]
    impl EventBus for FlakyBus {
        async fn publish(&self, event: &Envelope) -> Result<(), BusError> {
            if self.down.load(Ordering::SeqCst) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(BusError::Closed);
            }
            self.inner.publish(event).await
        }

        async fn subscribe(&self, queue: &QueueSpec) -> Result<Box<dyn Subscription>, BusError> {
            self.inner.subscribe(queue).await
        }
    }

    #[tokio::test]
    async fn events_stay_in_the_outbox_while_the_bus_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("svc.redb"), |_| Ok(())).unwrap();
        let bus = Arc::new(FlakyBus {
            down: AtomicBool::new(true),
            refused: AtomicU32::new(0),
            inner: InProcessBus::open(&dir.path().join("bus.redb")).unwrap(),
        });
        let spec = QueueSpec {
            name: "q".into(),
            bindings: vec!["svc.*".into()],
        };
        let mut sub = bus.subscribe(&spec).await.unwrap();
        stage(&db, &[1]).await;

        let stop = CancellationToken::new();
        let relay = tokio::spawn(run_relay(
            "svc",
            Arc::new(db.clone()),
            bus.clone(),
            stop.clone(),
        ));
        // However often publishing fails, the event is kept...
        tokio::time::timeout(Duration::from_secs(10), async {
            while bus.refused.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the relay retried");
        assert_eq!(db.pending(10).await.unwrap().len(), 1);
        // ...and goes out once it is back.
        bus.down.store(false, Ordering::SeqCst);
        assert_eq!(next_id(&mut sub).await, 1);
        stop.cancel();
        relay.await.unwrap();
        assert!(db.pending(10).await.unwrap().is_empty());
    }
}
