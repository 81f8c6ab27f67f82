//! The in-process event bus, for the all-in-one mode: the same contract as RabbitMQ (durable
//! queues bound by routing-key patterns, at-least-once delivery, explicit settlement, a retry
//! delay, dead-lettering), kept in its own redb file so that published events survive a crash
//! exactly like the outbox that feeds them.
//!
//! Messages live in the `bus_messages` table keyed by `(queue, sequence)`, with the number of
//! failed attempts in front of the body. What is in memory only: which deliveries a consumer
//! holds, and until when a retried message waits. After a crash every unacknowledged message is
//! simply delivered again, and a waiting retry is due at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use tokio::sync::Notify;
use tokio::time::Instant;
use twtr_proto::events::v1::Envelope;

use super::{
    Acker, BusError, DeadLetter, Delivery, EventBus, QueueDepths, QueueSpec, Subscription,
    topic_matches,
};
use crate::embedded::EmbeddedDb;
use crate::store::StoreError;

/// Queue name -> its binding patterns, one per line.
const BINDINGS: TableDefinition<&str, &str> = TableDefinition::new("bus_bindings");
/// (queue, sequence) -> 4-byte little-endian count of failed deliveries, then the body.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bus_messages");
/// (queue, sequence) -> a [`DeadLetterRecord`].
const DEAD_LETTERS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("bus_dead_letters_v2");
/// Counters; `next_seq` orders messages within each queue.
const META: TableDefinition<&str, u64> = TableDefinition::new("bus_meta");

/// A dead-lettered message as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct DeadLetterRecord {
    #[prost(uint32, tag = "1")]
    attempts: u32,
    #[prost(string, tag = "2")]
    error: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

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
    /// Retried messages and when they are due again.
    waiting: HashMap<u64, Instant>,
    retry_delay: Duration,
    /// Wakes consumers of this queue when a message becomes available.
    ready: Arc<Notify>,
}

impl QueueState {
    /// The earliest time a waiting message is due, if any is waiting.
    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The message is out of the consumer's hands; `due` says when it may be delivered again.
    fn release(&self, queue: &str, seq: u64, due: Option<Instant>) {
        let mut state = self.state();
        let queue = state.queues.entry(queue.to_owned()).or_default();
        queue.in_flight.remove(&seq);
        match due {
            Some(due) => {
                queue.waiting.insert(seq, due);
            }
            None => {
                queue.waiting.remove(&seq);
            }
        }
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
    /// Stores the whole batch in one transaction (one fsync), so every result is the same.
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), BusError>> {
        let routed: Vec<(Vec<String>, Vec<u8>)> = {
            let state = self.shared.state();
            events
                .iter()
                .map(|event| {
                    let queues = state
                        .bindings
                        .iter()
                        .filter(|(_, patterns)| {
                            patterns.iter().any(|p| topic_matches(p, &event.r#type))
                        })
                        .map(|(queue, _)| queue.clone())
                        .collect();
                    (queues, encode_message(0, &event.encode_to_vec()))
                })
                .collect()
        };
        let touched: HashSet<String> = routed.iter().flat_map(|(q, _)| q.clone()).collect();
        if touched.is_empty() {
            // Like an AMQP exchange: a message no queue is bound for goes nowhere.
            return events.iter().map(|_| Ok(())).collect();
        }
        let stored = self
            .shared
            .db
            .write(move |tx| {
                let mut meta = tx.open_table(META)?;
                let mut seq = meta.get("next_seq")?.map_or(1, |v| v.value());
                let mut messages = tx.open_table(MESSAGES)?;
                for (queues, value) in &routed {
                    for queue in queues {
                        messages.insert((queue.as_str(), seq), value.as_slice())?;
                    }
                    seq += 1;
                }
                meta.insert("next_seq", seq)?;
                Ok(())
            })
            .await;
        match stored {
            Ok(()) => {
                let mut state = self.shared.state();
                for queue in touched {
                    state
                        .queues
                        .entry(queue)
                        .or_default()
                        .ready
                        .notify_waiters();
                }
                events.iter().map(|_| Ok(())).collect()
            }
            Err(err) => {
                let message = err.to_string();
                events
                    .iter()
                    .map(|_| Err(BusError::backend(StoreError::Corrupt(message.clone()))))
                    .collect()
            }
        }
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
        {
            let mut state = self.shared.state();
            state.bindings.insert(spec.name.clone(), merged);
            state
                .queues
                .entry(spec.name.clone())
                .or_default()
                .retry_delay = spec.retry_delay;
        }
        let weak = Arc::downgrade(&self.shared);
        super::sample_depths(spec.name.clone(), move || {
            weak.upgrade().map(|shared| InProcessBus { shared })
        });
        Ok(Box::new(InProcessSubscription {
            shared: Arc::clone(&self.shared),
            queue: spec.name.clone(),
        }))
    }

    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let held = self
            .shared
            .state()
            .queues
            .get(queue)
            .map_or(0, |q| q.in_flight.len() as u64);
        let queue = queue.to_owned();
        let (stored, dead) = self
            .shared
            .db
            .read(move |txn| {
                let range = (queue.as_str(), 0)..=(queue.as_str(), u64::MAX);
                let stored = txn.open_table(MESSAGES)?.range(range.clone())?.count();
                let dead = txn.open_table(DEAD_LETTERS)?.range(range)?.count();
                Ok((stored as u64, dead as u64))
            })
            .await?;
        Ok(QueueDepths {
            waiting: stored.saturating_sub(held),
            dead,
        })
    }

    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let queue = queue.to_owned();
        let dead = self
            .shared
            .db
            .read(move |txn| {
                let table = txn.open_table(DEAD_LETTERS)?;
                let mut out = Vec::new();
                for row in table
                    .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))?
                    .take(max)
                {
                    let record = DeadLetterRecord::decode(row?.1.value())?;
                    out.push(DeadLetter {
                        body: record.body,
                        attempts: record.attempts,
                        error: record.error,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(dead)
    }
}

struct InProcessSubscription {
    shared: Arc<Shared>,
    queue: String,
}

impl InProcessSubscription {
    /// Claims the oldest message of the queue that no consumer holds and that is not waiting
    /// for a retry, if any.
    ///
    /// Cancellation-safe: the blocking read only looks; the claim itself (marking the message in
    /// flight) happens after it, with no await before the delivery is returned. So a `next()`
    /// dropped mid-way (by a `select!`) cannot leave a message claimed by nobody.
    async fn try_claim(&self) -> Result<Option<Delivery>, BusError> {
        const LOOK_AHEAD: usize = 64;
        let shared = Arc::clone(&self.shared);
        let queue = self.queue.clone();
        let now = Instant::now();
        let candidates = self
            .shared
            .db
            .read(move |txn| {
                let messages = txn.open_table(MESSAGES)?;
                let mut found = Vec::new();
                for row in messages.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))? {
                    let (key, value) = row?;
                    let seq = key.value().1;
                    let available = {
                        let state = shared.state();
                        state.queues.get(&queue).is_none_or(|q| {
                            !q.in_flight.contains(&seq)
                                && q.waiting.get(&seq).is_none_or(|due| *due <= now)
                        })
                    };
                    if available {
                        let (failures, body) = decode_message(value.value())?;
                        found.push((seq, failures, body.to_vec()));
                        if found.len() == LOOK_AHEAD {
                            break;
                        }
                    }
                }
                Ok(found)
            })
            .await?;
        let mut state = self.shared.state();
        let queue_state = state.queues.entry(self.queue.clone()).or_default();
        for (seq, failures, body) in candidates {
            let waiting = queue_state.waiting.get(&seq).is_some_and(|due| *due > now);
            if waiting || !queue_state.in_flight.insert(seq) {
                continue; // another consumer took it since the read
            }
            let acker = InProcessAcker {
                shared: Arc::clone(&self.shared),
                queue: self.queue.clone(),
                seq,
                body: body.clone(),
                settled: false,
            };
            return Ok(Some(Delivery::new(body, failures + 1, Box::new(acker))));
        }
        Ok(None)
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
            let due = self
                .shared
                .state()
                .queues
                .get(&self.queue)
                .and_then(QueueState::next_due);
            match due {
                Some(due) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    queue: String,
    seq: u64,
    body: Vec<u8>,
    settled: bool,
}

#[derive(Clone)]
enum Outcome {
    Ack,
    Requeue,
    Retry { failures: u32 },
    DeadLetter { failures: u32, error: String },
}

impl InProcessAcker {
    async fn settle(mut self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let (queue, seq) = (self.queue.clone(), self.seq);
        let body = std::mem::take(&mut self.body);
        let due = match outcome {
            Outcome::Retry { .. } => {
                let delay = self
                    .shared
                    .state()
                    .queues
                    .get(&self.queue)
                    .map_or(Duration::ZERO, |q| q.retry_delay);
                Some(Instant::now() + delay)
            }
            _ => None,
        };
        let result = match outcome {
            Outcome::Requeue => Ok(()),
            outcome => {
                self.shared
                    .db
                    .write(move |tx| {
                        let mut messages = tx.open_table(MESSAGES)?;
                        let key = (queue.as_str(), seq);
                        match outcome {
                            Outcome::Ack | Outcome::Requeue => {
                                messages.remove(key)?;
                            }
                            Outcome::Retry { failures } => {
                                messages.insert(key, encode_message(failures, &body).as_slice())?;
                            }
                            Outcome::DeadLetter { failures, error } => {
                                messages.remove(key)?;
                                let record = DeadLetterRecord {
                                    attempts: failures,
                                    error,
                                    body,
                                };
                                tx.open_table(DEAD_LETTERS)?
                                    .insert(key, record.encode_to_vec().as_slice())?;
                            }
                        }
                        Ok(())
                    })
                    .await
            }
        };
        // Settled or not, the message is no longer in this consumer's hands; if the write failed
        // it is still stored and will be delivered again.
        self.settled = true;
        self.shared.release(&self.queue, self.seq, due);
        Ok(result?)
    }
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(Outcome::Ack).await
    }

    async fn requeue(self: Box<Self>) -> Result<(), BusError> {
        self.settle(Outcome::Requeue).await
    }

    async fn retry(self: Box<Self>, failures: u32, _error: &str) -> Result<(), BusError> {
        self.settle(Outcome::Retry { failures }).await
    }

    async fn dead_letter(self: Box<Self>, failures: u32, error: &str) -> Result<(), BusError> {
        let error = error.to_owned();
        self.settle(Outcome::DeadLetter { failures, error }).await
    }
}

impl Drop for InProcessAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.release(&self.queue, self.seq, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{conformance, publish};

    async fn open_bus() -> Option<(Arc<dyn EventBus>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = InProcessBus::open(&dir.path().join("bus.redb")).expect("open bus");
        Some((Arc::new(bus), dir))
    }

    crate::event_bus_conformance!(open_bus);

    #[tokio::test]
    async fn messages_and_bindings_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.redb");
        let queue = conformance::spec("reopen", &["reopen.*".into()]);
        {
            let bus = InProcessBus::open(&path).unwrap();
            drop(bus.subscribe(&queue).await.unwrap());
            publish(&bus, &conformance::event(1, "reopen.one"))
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
        publish(&bus, &conformance::event(2, "reopen.two"))
            .await
            .unwrap();
        let mut sub = bus.subscribe(&queue).await.unwrap();
        for expected in [1, 2] {
            let delivery = sub.next().await.unwrap();
            assert_eq!(delivery.decode().unwrap().event_id, expected);
            delivery.ack().await.unwrap();
        }
    }
}
