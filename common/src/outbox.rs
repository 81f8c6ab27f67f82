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
