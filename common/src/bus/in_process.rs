//! The in-process event bus, for the all-in-one mode: the same contract as RabbitMQ (durable
//! queues bound by routing-key patterns, at-least-once delivery, manual ack, dead-lettering),
//! kept in its own redb file so that published events survive a crash exactly like the outbox
//! that feeds them.
//!
//! Messages live in the `bus_messages` table keyed by `(queue, sequence)`; a delivery in a
//! consumer's hands is tracked in memory only, so after a crash every unacknowledged message is
//! simply delivered again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use tokio::sync::Notify;
use twtr_proto::events::v1::Envelope;

use super::{Acker, BusError, Delivery, EventBus, QueueSpec, Subscription, topic_matches};
use crate::embedded::{EmbeddedDb, StoreError};

/// Queue name -> its binding patterns, one per line.
const BINDINGS: TableDefinition<&str, &str> = TableDefinition::new("bus_bindings");
/// (queue, sequence) -> 4-byte little-endian count of failed deliveries, then the body.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bus_messages");
/// (queue, sequence) -> body of a message that kept failing.
const DEAD_LETTERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bus_dead_letters");
/// Counters; `next_seq` orders messages within each queue.
const META: TableDefinition<&str, u64> = TableDefinition::new("bus_meta");

/// A durable in-process bus; cheap to clone, share one per process.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    db: EmbeddedDb,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    bindings: BTreeMap<String, Vec<String>>,
    queues: HashMap<String, QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Sequences handed to a consumer and not yet settled.
    in_flight: HashSet<u64>,
    /// Wakes consumers of this queue when a message becomes available.
    ready: Arc<Notify>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn release(&self, queue: &str, seq: u64) {
        let mut state = self.state();
        let queue = state.queues.entry(queue.to_owned()).or_default();
        queue.in_flight.remove(&seq);
        queue.ready.notify_waiters();
    }
}

impl InProcessBus {
    /// Opens (or creates) the bus stored at `path`, with the bindings declared in earlier runs.
    pub fn open(path: &Path) -> Result<Self, BusError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(BINDINGS)?;
            tx.open_table(MESSAGES)?;
            tx.open_table(DEAD_LETTERS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        let bindings = load_bindings(&db)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                state: Mutex::new(State {
                    bindings,
                    queues: HashMap::new(),
                }),
            }),
        })
    }

    /// The messages dead-lettered from `queue`, oldest first (for operators and tests).
    pub async fn dead_lettered(&self, queue: &str) -> Result<Vec<Envelope>, BusError> {
        let queue = queue.to_owned();
        let bodies = self
            .shared
            .db
            .read(move |txn| {
                let table = txn.open_table(DEAD_LETTERS)?;
                let mut out = Vec::new();
                for row in table.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))? {
                    out.push(Envelope::decode(row?.1.value())?);
                }
                Ok(out)
            })
            .await?;
        Ok(bodies)
    }
}

/// Reads the bindings declared in earlier runs; called once, while opening.
fn load_bindings(db: &EmbeddedDb) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    db.read_blocking(|txn| {
        let table = txn.open_table(BINDINGS)?;
        let mut bindings = BTreeMap::new();
        for row in table.iter()? {
            let (queue, patterns) = row?;
            let patterns = patterns.value().lines().map(str::to_owned).collect();
            bindings.insert(queue.value().to_owned(), patterns);
        }
        Ok(bindings)
    })
}

fn encode_message(failures: u32, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + body.len());
    value.extend_from_slice(&failures.to_le_bytes());
    value.extend_from_slice(body);
    value
}

fn decode_message(value: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    let (failures, body) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| StoreError::Corrupt("bus message shorter than its header".into()))?;
    Ok((u32::from_le_bytes(*failures), body))
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &Envelope) -> Result<(), BusError> {
        let queues: Vec<String> = self
            .shared
            .state()
            .bindings
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| topic_matches(p, &event.r#type)))
            .map(|(queue, _)| queue.clone())
            .collect();
        if queues.is_empty() {
            // Like an AMQP exchange: a message no queue is bound for goes nowhere.
            return Ok(());
        }
        let value = encode_message(0, &event.encode_to_vec());
        let targets = queues.clone();
        self.shared
            .db
            .write(move |tx| {
                let mut meta = tx.open_table(META)?;
                let seq = meta.get("next_seq")?.map_or(1, |v| v.value());
                meta.insert("next_seq", seq + 1)?;
                let mut messages = tx.open_table(MESSAGES)?;
                for queue in &targets {
                    messages.insert((queue.as_str(), seq), value.as_slice())?;
                }
                Ok(())
            })
            .await?;
        let mut state = self.shared.state();
        for queue in queues {
            state
                .queues
                .entry(queue)
                .or_default()
                .ready
                .notify_waiters();
        }
        Ok(())
    }

    async fn subscribe(&self, spec: &QueueSpec) -> Result<Box<dyn Subscription>, BusError> {
        let merged = {
            let state = self.shared.state();
            let mut patterns = state.bindings.get(&spec.name).cloned().unwrap_or_default();
            for binding in &spec.bindings {
                if !patterns.contains(binding) {
                    patterns.push(binding.clone());
                }
            }
            patterns
        };
        let (queue, joined) = (spec.name.clone(), merged.join("\n"));
        self.shared
            .db
            .write(move |tx| {
                tx.open_table(BINDINGS)?
                    .insert(queue.as_str(), joined.as_str())?;
                Ok(())
            })
            .await?;
        self.shared
            .state()
            .bindings
            .insert(spec.name.clone(), merged);
        Ok(Box::new(InProcessSubscription {
            shared: Arc::clone(&self.shared),
            queue: spec.name.clone(),
        }))
    }
}

struct InProcessSubscription {
    shared: Arc<Shared>,
    queue: String,
}

impl InProcessSubscription {
    /// Claims the oldest message of the queue that no consumer holds, if any.
    async fn try_claim(&self) -> Result<Option<Delivery>, BusError> {
        let shared = Arc::clone(&self.shared);
        let queue = self.queue.clone();
        let claimed = self
            .shared
            .db
            .read(move |txn| {
                let messages = txn.open_table(MESSAGES)?;
                for row in messages.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))? {
                    let (key, value) = row?;
                    let seq = key.value().1;
                    let newly_claimed = shared
                        .state()
                        .queues
                        .entry(queue.clone())
                        .or_default()
                        .in_flight
                        .insert(seq);
                    if newly_claimed {
                        let (failures, body) = decode_message(value.value())?;
                        return Ok(Some((seq, failures, body.to_vec())));
                    }
                }
                Ok(None)
            })
            .await?;
        Ok(claimed.map(|(seq, failures, body)| {
            let acker = InProcessAcker {
                shared: Arc::clone(&self.shared),
                queue: self.queue.clone(),
                seq,
                failures,
                body: body.clone(),
                settled: false,
            };
            Delivery::new(body, failures + 1, Box::new(acker))
        }))
    }
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let ready = Arc::clone(
            &self
                .shared
                .state()
                .queues
                .entry(self.queue.clone())
                .or_default()
                .ready,
        );
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.try_claim().await? {
                return Ok(delivery);
            }
            notified.await;
        }
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    queue: String,
    seq: u64,
    failures: u32,
    body: Vec<u8>,
    settled: bool,
}

impl InProcessAcker {
    async fn settle(mut self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let (queue, seq, failures) = (self.queue.clone(), self.seq, self.failures);
        let body = std::mem::take(&mut self.body);
        let result = self
            .shared
            .db
            .write(move |tx| {
                let mut messages = tx.open_table(MESSAGES)?;
                let key = (queue.as_str(), seq);
                match outcome {
                    Outcome::Ack => {
                        messages.remove(key)?;
                    }
                    Outcome::Requeue => {
                        messages.insert(key, encode_message(failures + 1, &body).as_slice())?;
                    }
                    Outcome::DeadLetter => {
                        messages.remove(key)?;
                        tx.open_table(DEAD_LETTERS)?.insert(key, body.as_slice())?;
                    }
                }
                Ok(())
            })
            .await;
        // Settled or not, the message is no longer in this consumer's hands; if the write failed
        // it is still stored and will be delivered again.
        self.settled = true;
        self.shared.release(&self.queue, self.seq);
        Ok(result?)
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Ack,
    Requeue,
    DeadLetter,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(Outcome::Ack).await
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        self.settle(if requeue {
            Outcome::Requeue
        } else {
            Outcome::DeadLetter
        })
        .await
    }
}

impl Drop for InProcessAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.release(&self.queue, self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::conformance;

    async fn open_bus() -> (Arc<dyn EventBus>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).expect("open bus");
        (Arc::new(bus), dir)
    }

    crate::event_bus_conformance!(open_bus);

    #[tokio::test]
    async fn messages_and_bindings_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.redb");
        let queue = QueueSpec {
            name: "reopen".into(),
            bindings: vec!["reopen.*".into()],
        };
        {
            let bus = InProcessBus::open(&path).unwrap();
            drop(bus.subscribe(&queue).await.unwrap());
            bus.publish(&conformance::event(1, "reopen.one"))
                .await
                .unwrap();
            let mut sub = bus.subscribe(&queue).await.unwrap();
            // Delivered but never acknowledged before the process goes away.
            let first = sub.next().await.unwrap();
            assert_eq!(first.decode().unwrap().event_id, 1);
            drop((first, sub, bus));
        }
        let bus = InProcessBus::open(&path).unwrap();
        // The binding is remembered: a publish before anyone subscribes still reaches the queue.
        bus.publish(&conformance::event(2, "reopen.two"))
            .await
            .unwrap();
        let mut sub = bus.subscribe(&queue).await.unwrap();
        for expected in [1, 2] {
            let delivery = sub.next().await.unwrap();
            assert_eq!(delivery.decode().unwrap().event_id, expected);
            delivery.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn dead_letters_are_kept_for_inspection() {
        let dir = tempfile::tempdir().unwrap();
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).unwrap();
        let queue = QueueSpec {
            name: "dlq".into(),
            bindings: vec!["dlq.#".into()],
        };
        let mut sub = bus.subscribe(&queue).await.unwrap();
        bus.publish(&conformance::event(7, "dlq.poison"))
            .await
            .unwrap();
        sub.next().await.unwrap().dead_letter().await.unwrap();
        let dead = bus.dead_lettered("dlq").await.unwrap();
        assert_eq!(dead.iter().map(|e| e.event_id).collect::<Vec<_>>(), vec![7]);
    }
}
