//! The transactional outbox on CQL, for any number of replicas of a service.
//!
//! A store writes an event by appending [`CqlOutbox::insert`] with [`CqlOutbox::row`] to the
//! logged batch that holds its domain rows, so both land or neither does. The table is split into
//! [`OUTBOX_SHARDS`] partitions (by aggregate, so one aggregate's events stay in order); each
//! replica's relay drains only the shards it holds a lease on. A lease is a lightweight
//! transaction with a TTL: taken with `IF NOT EXISTS`, renewed with `IF owner = ?`, given back on
//! a clean shutdown, and free for another replica to take once a dead replica's TTL runs out. So
//! every event is published, and at any time each shard has at most one relay (but for the rare
//! overlap around a lease expiring, which publishes an event twice: consumers tolerate that).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use prost::Message as _;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::Notify;
use tokio::time::Instant;
use twtr_proto::events::v1::Envelope;

use super::{CqlError, Keyspace, OUTBOX_SHARDS, lwt_applied};
use crate::lock;
use crate::outbox::{Outbox, OutboxKey, PendingEvent};
use crate::store::StoreError;

/// How long a lease lasts without renewal: a dead replica's shards wait this long for a new
/// relay.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a relay renews its leases and looks for free shards.
const LEASE_REFRESH: Duration = Duration::from_secs(10);
/// How often the relay looks for events written by other replicas (its own process's writes
/// wake it at once).
const POLL: Duration = Duration::from_millis(500);

/// One service's outbox table and this replica's leases on its shards.
pub struct CqlOutbox {
    ks: Keyspace,
    insert: PreparedStatement,
    select: PreparedStatement,
    delete: PreparedStatement,
    acquire: PreparedStatement,
    renew: PreparedStatement,
    release: PreparedStatement,
    /// Who this relay is, in the lease table: host, process and a random part.
    owner: String,
    leases: Mutex<Leases>,
    /// Woken when this process staged an event, so its relay publishes without waiting a poll.
    staged: Notify,
}

#[derive(Default)]
struct Leases {
    held: Vec<i32>,
    /// When the leases were last renewed (or looked for); `None` before the first time.
    refreshed: Option<Instant>,
}

impl std::fmt::Debug for CqlOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlOutbox")
            .field("keyspace", &self.ks.name())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The values of one outbox row: `(shard, seq, event)`, in the order of [`CqlOutbox::insert`].
pub type OutboxRow = (i32, i64, Vec<u8>);

impl CqlOutbox {
    /// Prepares the outbox statements in `ks`.
    pub async fn new(ks: Keyspace) -> Result<Self, CqlError> {
        let ttl = LEASE_TTL.as_secs();
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|err| {
            CqlError::InvalidConfig(format!("no randomness for a lease owner: {err}"))
        })?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
        let owner = format!(
            "{host}/{}/{:08x}",
            std::process::id(),
            u32::from_le_bytes(random)
        );
        Ok(Self {
            insert: ks
                .prepare("INSERT INTO {ks}.outbox (shard, seq, event) VALUES (?, ?, ?)")
                .await?,
            select: ks
                .prepare("SELECT seq, event FROM {ks}.outbox WHERE shard = ? LIMIT ?")
                .await?,
            delete: ks
                .prepare("DELETE FROM {ks}.outbox WHERE shard = ? AND seq = ?")
                .await?,
            acquire: ks
                .prepare(&format!(
                    "INSERT INTO {{ks}}.outbox_leases (shard, owner) VALUES (?, ?) IF NOT EXISTS USING TTL {ttl}"
                ))
                .await?,
            renew: ks
                .prepare(&format!(
                    "UPDATE {{ks}}.outbox_leases USING TTL {ttl} SET owner = ? WHERE shard = ? IF owner = ?"
                ))
                .await?,
            release: ks
                .prepare("DELETE FROM {ks}.outbox_leases WHERE shard = ? IF owner = ?")
                .await?,
            ks,
            owner,
            leases: Mutex::new(Leases::default()),
            staged: Notify::new(),
        })
    }

    /// The statement a store appends to its logged batch, with [`CqlOutbox::row`] as values.
    pub fn insert(&self) -> &PreparedStatement {
        &self.insert
    }

    /// The outbox row for `event`: its aggregate's shard, and its (time-ordered) ID as sequence.
    pub fn row(event: &Envelope) -> OutboxRow {
        let shard = (event.aggregate_id % OUTBOX_SHARDS as u64) as i32;
        (shard, event.event_id as i64, event.encode_to_vec())
    }

    /// Tells this process's relay that a batch with events committed.
    pub fn notify(&self) {
        self.staged.notify_one();
    }

    /// The shards this relay may drain: renews the leases it holds and takes free ones, at most
    /// once per [`LEASE_REFRESH`].
    async fn shards(&self) -> Result<Vec<i32>, StoreError> {
        let (held, due) = {
            let leases = lock(&self.leases);
            let due = leases
                .refreshed
                .is_none_or(|at| at.elapsed() >= LEASE_REFRESH);
            (leases.held.clone(), due)
        };
        if !due {
            return Ok(held);
        }
        let session = self.ks.session();
        let attempts = (0..OUTBOX_SHARDS).map(|shard| {
            let was_held = held.contains(&shard);
            async move {
                let result = if was_held {
                    session
                        .execute_unpaged(&self.renew, (&self.owner, shard, &self.owner))
                        .await
                } else {
                    session
                        .execute_unpaged(&self.acquire, (shard, &self.owner))
                        .await
                };
                let holds = result.map_err(CqlError::from).and_then(lwt_applied)?;
                Ok::<_, StoreError>((shard, holds, was_held))
            }
        });
        let mut now_held = Vec::new();
        for outcome in join_all(attempts).await {
            let (shard, holds, was_held) = outcome?;
            if holds {
                now_held.push(shard);
            } else if was_held {
                tracing::warn!(
                    keyspace = self.ks.name(),
                    shard,
                    "lost an outbox lease to another relay"
                );
            }
        }
        if now_held != held {
            tracing::debug!(keyspace = self.ks.name(), shards = ?now_held, "outbox leases held");
        }
        let mut leases = lock(&self.leases);
        leases.held.clone_from(&now_held);
        leases.refreshed = Some(Instant::now());
        Ok(now_held)
    }
}

impl CqlOutbox {
    /// Up to `max` events of `shards`, oldest first.
    async fn read_shards(
        &self,
        shards: &[i32],
        max: usize,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let limit = i32::try_from(max).unwrap_or(i32::MAX);
        let session = self.ks.session();
        let reads = shards.iter().map(|shard| async move {
            let rows = session
                .execute_unpaged(&self.select, (*shard, limit))
                .await
                .map_err(CqlError::from)?
                .into_rows_result()
                .map_err(CqlError::from)?;
            let mut events = Vec::new();
            for row in rows.rows::<(i64, Vec<u8>)>().map_err(CqlError::from)? {
                let (seq, body) = row.map_err(CqlError::from)?;
                events.push(PendingEvent {
                    key: OutboxKey {
                        shard: *shard as u32,
                        seq: seq as u64,
                    },
                    event: Envelope::decode(body.as_slice())?,
                });
            }
            Ok::<_, StoreError>(events)
        });
        let mut pending = Vec::new();
        for events in join_all(reads).await {
            pending.extend(events?);
        }
        // Oldest first across shards (IDs are time-ordered), then as many as asked for.
        pending.sort_by_key(|p| p.key.seq);
        pending.truncate(max);
        Ok(pending)
    }
}

#[async_trait]
impl Outbox for CqlOutbox {
    async fn pending(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let shards = self.shards().await?;
        self.read_shards(&shards, max).await
    }

    async fn peek(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let every_shard: Vec<i32> = (0..OUTBOX_SHARDS).collect();
        self.read_shards(&every_shard, max).await
    }

    async fn remove(&self, keys: Vec<OutboxKey>) -> Result<(), StoreError> {
        let session = self.ks.session();
        let deletes = keys
            .iter()
            .map(|key| session.execute_unpaged(&self.delete, (key.shard as i32, key.seq as i64)));
        for deleted in join_all(deletes).await {
            deleted.map_err(CqlError::from)?;
        }
        Ok(())
    }

    async fn changed(&self) {
        tokio::select! {
            () = self.staged.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }

    async fn close(&self) {
        let held = {
            let mut leases = lock(&self.leases);
            // Look for free shards again at the next read, rather than idling a refresh period.
            leases.refreshed = None;
            std::mem::take(&mut leases.held)
        };
        let session = self.ks.session();
        let releases = held
            .iter()
            .map(|shard| session.execute_unpaged(&self.release, (*shard, &self.owner)));
        for released in join_all(releases).await {
            if let Err(err) = released {
                tracing::debug!(error = %err, "could not give an outbox lease back; it expires on its own");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use scylla::statement::batch::{Batch, BatchType};

    use super::*;
    use crate::cql::testing::keyspace_for;
    use crate::outbox::pending_ids;

    /// Events of a test of their own: IDs from a fresh generator, aggregates spread over shards.
    fn events(n: u64) -> Vec<Envelope> {
        let ids = crate::IdGenerator::new(1).unwrap();
        (0..n)
            .map(|i| {
                let mut event = crate::bus::conformance::event(ids.next_id(), "svc.happened");
                event.aggregate_id = event.event_id + i;
                event
            })
            .collect()
    }

    async fn stage(outbox: &CqlOutbox, events: &[Envelope]) {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::new();
        for event in events {
            batch.append_statement(outbox.insert().clone());
            values.push(CqlOutbox::row(event));
        }
        outbox.ks.session().batch(&batch, values).await.unwrap();
        outbox.notify();
    }

    /// The outbox of a keyspace of this test alone, so no other test's events show up.
    async fn outbox(service: &'static str) -> Option<CqlOutbox> {
        let (session, config) = keyspace_for(service).await?;
        let ks = Keyspace::new(session, &config, service).unwrap();
        Some(CqlOutbox::new(ks).await.unwrap())
    }

    #[tokio::test]
    async fn staged_events_come_out_oldest_first_until_removed() {
        // The users keyspace: no other test in this crate stages events there.
        let Some(outbox) = outbox("users").await else {
            return;
        };
        let staged = events(5);
        stage(&outbox, &staged).await;
        let pending = outbox.pending(100).await.unwrap();
        let expected: Vec<u64> = staged.iter().map(|e| e.event_id).collect();
        assert_eq!(
            pending.iter().map(|p| p.event.event_id).collect::<Vec<_>>(),
            expected
        );
        assert!(
            pending
                .iter()
                .map(|p| p.key.shard)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1,
            "the events were spread over shards"
        );
        outbox
            .remove(vec![pending[0].key, pending[3].key])
            .await
            .unwrap();
        assert_eq!(
            pending_ids(&outbox, 100).await.unwrap(),
            vec![expected[1], expected[2], expected[4]]
        );
        outbox
            .remove(pending.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        assert!(outbox.pending(100).await.unwrap().is_empty());
        outbox.close().await;
    }

    #[tokio::test]
    async fn a_shard_has_one_relay_until_its_lease_is_given_back() {
        let Some(first) = outbox("followers").await else {
            return;
        };
        let Some(second) = outbox("followers").await else {
            return;
        };
        let staged = events(3);
        stage(&first, &staged).await;
        // The first relay to look takes every free shard; the second finds none free.
        assert_eq!(first.pending(100).await.unwrap().len(), 3);
        assert!(second.pending(100).await.unwrap().is_empty());
        // A clean shutdown gives the shards back; the other replica takes them over.
        first.close().await;
        lock(&second.leases).refreshed = None;
        let taken_over = second.pending(100).await.unwrap();
        assert_eq!(taken_over.len(), 3);
        second
            .remove(taken_over.iter().map(|p| p.key).collect())
            .await
            .unwrap();
        second.close().await;
    }
}
