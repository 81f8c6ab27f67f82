//! The transactional outbox: events are stored in the same transaction as the data they
//! describe, and the relay ([`crate::relay`]) moves them onto the bus afterwards. A crash between the write and
//! the publish loses nothing: the event is still in the outbox when the process comes back.
//! A crash between the publish and the removal publishes it twice, which consumers tolerate
//! (delivery is at-least-once and every handler is idempotent).

use async_trait::async_trait;
use twtr_proto::events::v1::Envelope;

use crate::store::StoreError;

/// Where an event sits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboxKey {
    /// A backend may split its outbox into shards, so that several relays (one per replica)
    /// share the work; a backend with one relay uses shard 0.
    pub shard: u32,
    /// Order within the shard: commit order where the backend knows it (embedded: a sequence
    /// taken inside the write transaction), else the event's time-ordered ID.
    pub seq: u64,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub key: OutboxKey,
    pub event: Envelope,
}

/// The stored side of the outbox, implemented by each storage backend.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `max` stored events, in commit order.
    async fn pending(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError>;
    /// Forgets events that the bus has confirmed: the embedded outbox deletes them, the CQL
    /// one marks them published (deletes would leave tombstones for its reads to wade through).
    async fn remove(&self, keys: Vec<OutboxKey>) -> Result<(), StoreError>;
    /// Resolves when new events may have been stored since the last call.
    async fn changed(&self);
    /// Called once when the relay stops: give back whatever the relay held (leases).
    async fn close(&self) {}
    /// Up to `max` stored events whichever relay drains them, without taking anything (for
    /// operators and tests). The same as [`Outbox::pending`] for a backend with one relay.
    async fn peek(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        self.pending(max).await
    }
}

/// The IDs of up to `max` stored events (for operators and tests; see [`Outbox::peek`]).
pub async fn pending_ids(outbox: &dyn Outbox, max: usize) -> Result<Vec<u64>, StoreError> {
    Ok(outbox
        .peek(max)
        .await?
        .iter()
        .map(|p| p.event.event_id)
        .collect())
}
