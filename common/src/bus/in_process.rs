//! The in-process event bus, for the all-in-one mode: the same contract as RabbitMQ (durable
//! queues bound by routing-key patterns, at-least-once delivery, explicit settlement, delay
//! queues, dead-lettering and re-driving), kept in its own redb file so that published events
//! survive a crash exactly like the outbox that feeds them.
//!
//! # Tables
//!
//! | table | key | what it holds |
//! |---|---|---|
//! | `bus_bindings` | queue | its binding patterns, one per line |
//! | `bus_messages_v2` | (queue, sequence) | messages ready for a consumer or held by one, in queue order |
//! | `bus_delayed` | (queue, due time, sequence) | retried messages waiting out their delay, soonest first |
//! | `bus_dead_letters_v2` | (queue, sequence) | messages given up on, with the reason |
//! | `bus_meta` | name | `next_seq`, which orders messages within each queue |
//!
//! A retried message leaves `bus_messages_v2` for `bus_delayed`; once due it goes back to the
//! tail of its queue under a new sequence (as RabbitMQ's delay queues dead-letter back into the
//! work queue), so a consumer never scans past waiting messages. What is in memory only: which
//! deliveries a consumer holds. After a crash every unacknowledged message is simply delivered
//! again, and a delayed one waits out the rest of its delay (due times are wall-clock times).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use redb::{ReadableTable as _, TableDefinition};
use tokio::sync::Notify;
use twtr_proto::events::v1::Envelope;

use super::{
    Acker, BusError, DeadLetter, Delivery, EventBus, FailureRecord, Heard, Listener, QueueDepths,
    QueueSpec, Subscription, topic_matches,
};
use crate::clock;
use crate::embedded::{EmbeddedDb, Tx};
use crate::store::StoreError;

/// Queue name -> its binding patterns, one per line.
const BINDINGS: TableDefinition<&str, &str> = TableDefinition::new("bus_bindings");
/// (queue, sequence) -> a [`StoredMessage`].
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bus_messages_v2");
/// (queue, due at in Unix ms, sequence) -> a [`StoredMessage`] waiting out its retry delay.
const DELAYED: TableDefinition<(&str, i64, u64), &[u8]> = TableDefinition::new("bus_delayed");
/// (queue, sequence) -> a [`DeadLetterRecord`].
const DEAD_LETTERS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("bus_dead_letters_v2");
/// Counters; `next_seq` orders messages within each queue.
const META: TableDefinition<&str, u64> = TableDefinition::new("bus_meta");
/// Messages as earlier versions stored them: a 4-byte little-endian count of failed deliveries,
/// then the body. Moved into [`MESSAGES`] when the bus opens.
const LEGACY_MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bus_messages");

/// A message in a queue or a delay queue, with its failure record.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredMessage {
    #[prost(bytes = "vec", tag = "1")]
    body: Vec<u8>,
    #[prost(uint32, tag = "2")]
    failures: u32,
    #[prost(int64, tag = "3")]
    first_failed_at_ms: i64,
    #[prost(string, tag = "4")]
    last_error: String,
}

/// A dead-lettered message as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct DeadLetterRecord {
    #[prost(uint32, tag = "1")]
    attempts: u32,
    #[prost(string, tag = "2")]
    error: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
    #[prost(int64, tag = "4")]
    first_failed_at_ms: i64,
    #[prost(int64, tag = "5")]
    dead_at_ms: i64,
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
    /// Notice topics that someone listened to, each a broadcast channel (notices are not
    /// stored: a topic without listeners drops them).
    notices: Mutex<HashMap<String, tokio::sync::broadcast::Sender<Arc<[u8]>>>>,
}

/// Notices a listener may fall behind by before it hears [`Heard::Missed`].
const NOTICE_BACKLOG: usize = 1024;

#[derive(Debug, Default)]
struct State {
    bindings: BTreeMap<String, Vec<String>>,
    queues: HashMap<String, QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Sequences handed to a consumer and not yet settled.
    in_flight: HashSet<u64>,
    /// When the soonest delayed message of this queue is due (Unix ms), if one may be waiting;
    /// `None` before it was first looked up.
    next_due: Option<Option<i64>>,
    /// Wakes consumers of this queue when a message becomes available.
    ready: Arc<Notify>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// The message is out of the consumer's hands (settled, or back in the queue).
    fn release(&self, queue: &str, seq: u64) {
        let mut state = self.state();
        let queue = state.queues.entry(queue.to_owned()).or_default();
        queue.in_flight.remove(&seq);
        queue.ready.notify_waiters();
    }

    fn wake(&self, queue: &str) {
        self.state()
            .queues
            .entry(queue.to_owned())
            .or_default()
            .ready
            .notify_waiters();
    }
}

impl InProcessBus {
    /// Opens (or creates) the bus stored at `path`, with the bindings declared in earlier runs.
    pub fn open(path: &Path) -> Result<Self, BusError> {
        let db = EmbeddedDb::open(path, |tx| {
            tx.open_table(BINDINGS)?;
            tx.open_table(MESSAGES)?;
            tx.open_table(DELAYED)?;
            tx.open_table(DEAD_LETTERS)?;
            tx.open_table(META)?;
            move_legacy_messages(tx)
        })?;
        let bindings = load_bindings(&db)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                state: Mutex::new(State {
                    bindings,
                    queues: HashMap::new(),
                }),
                notices: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A listener of one notice topic: a receiver of its broadcast channel.
struct InProcessListener {
    receiver: tokio::sync::broadcast::Receiver<Arc<[u8]>>,
}

#[async_trait]
impl Listener for InProcessListener {
    async fn next(&mut self) -> Option<Heard> {
        use tokio::sync::broadcast::error::RecvError;
        match self.receiver.recv().await {
            Ok(notice) => Some(Heard::Notice(notice.to_vec())),
            Err(RecvError::Lagged(_)) => Some(Heard::Missed),
            Err(RecvError::Closed) => None,
        }
    }
}

/// Moves messages stored by earlier versions into [`MESSAGES`], keeping their sequences (so
/// their order) and failure counts.
fn move_legacy_messages(tx: &Tx<'_>) -> Result<(), StoreError> {
    let mut legacy = tx.open_table(LEGACY_MESSAGES)?;
    let mut messages = tx.open_table(MESSAGES)?;
    let now = clock::now_millis();
    while let Some((key, value)) = legacy.pop_first()? {
        let (queue, seq) = key.value();
        let value = value.value();
        let (failures, body) = value
            .split_first_chunk::<4>()
            .ok_or_else(|| StoreError::Corrupt("bus message shorter than its header".into()))?;
        let failures = u32::from_le_bytes(*failures);
        let stored = StoredMessage {
            body: body.to_vec(),
            failures,
            first_failed_at_ms: if failures > 0 { now } else { 0 },
            last_error: String::new(),
        };
        messages.insert((queue, seq), stored.encode_to_vec().as_slice())?;
    }
    Ok(())
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

/// Takes the next sequence number from `meta`.
fn next_seq(tx: &Tx<'_>) -> Result<u64, StoreError> {
    let mut meta = tx.open_table(META)?;
    let seq = meta.get("next_seq")?.map_or(1, |v| v.value());
    meta.insert("next_seq", seq + 1)?;
    Ok(seq)
}

/// The due time and key range of `queue`'s delayed messages.
fn delayed_range(queue: &str) -> std::ops::RangeInclusive<(&str, i64, u64)> {
    (queue, i64::MIN, 0)..=(queue, i64::MAX, u64::MAX)
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
                    let stored = StoredMessage {
                        body: event.encode_to_vec(),
                        ..StoredMessage::default()
                    };
                    (queues, stored.encode_to_vec())
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
                for queue in touched {
                    self.shared.wake(&queue);
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
            state.queues.entry(spec.name.clone()).or_default();
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

    async fn broadcast(&self, topic: &str, payload: &[u8]) -> Result<(), BusError> {
        if let Some(sender) = crate::lock(&self.shared.notices).get(topic) {
            // No receiver left is fine: nobody listens.
            let _ = sender.send(Arc::from(payload));
        }
        Ok(())
    }

    async fn listen(&self, topic: &str) -> Result<Box<dyn Listener>, BusError> {
        let receiver = crate::lock(&self.shared.notices)
            .entry(topic.to_owned())
            .or_insert_with(|| tokio::sync::broadcast::channel(NOTICE_BACKLOG).0)
            .subscribe();
        Ok(Box::new(InProcessListener { receiver }))
    }

    async fn depths(&self, queue: &str) -> Result<QueueDepths, BusError> {
        let held = self
            .shared
            .state()
            .queues
            .get(queue)
            .map_or(0, |q| q.in_flight.len() as u64);
        let queue = queue.to_owned();
        let (stored, delayed, dead) = self
            .shared
            .db
            .read(move |txn| {
                let range = (queue.as_str(), 0)..=(queue.as_str(), u64::MAX);
                let stored = txn.open_table(MESSAGES)?.range(range.clone())?.count();
                let delayed = txn
                    .open_table(DELAYED)?
                    .range(delayed_range(&queue))?
                    .count();
                let dead = txn.open_table(DEAD_LETTERS)?.range(range)?.count();
                Ok((stored as u64, delayed as u64, dead as u64))
            })
            .await?;
        Ok(QueueDepths {
            waiting: stored.saturating_sub(held) + delayed,
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
                        first_failed_at_ms: record.first_failed_at_ms,
                        dead_at_ms: record.dead_at_ms,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(dead)
    }

    async fn redrive(&self, queue: &str, max: usize, only: &[u64]) -> Result<usize, BusError> {
        let (name, only) = (queue.to_owned(), only.to_vec());
        let moved = self
            .shared
            .db
            .write(move |tx| {
                let mut dead = tx.open_table(DEAD_LETTERS)?;
                let mut picked = Vec::new();
                for row in dead.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                    if picked.len() == max {
                        break;
                    }
                    let (key, value) = row?;
                    let record = DeadLetterRecord::decode(value.value())?;
                    let wanted = only.is_empty()
                        || Envelope::decode(record.body.as_slice())
                            .is_ok_and(|event| only.contains(&event.event_id));
                    if wanted {
                        picked.push((key.value().1, record.body));
                    }
                }
                for (seq, _) in &picked {
                    dead.remove((name.as_str(), *seq))?;
                }
                drop(dead);
                let mut messages = tx.open_table(MESSAGES)?;
                for (_, body) in &picked {
                    let stored = StoredMessage {
                        body: body.clone(),
                        ..StoredMessage::default()
                    };
                    let seq = next_seq(tx)?;
                    messages.insert((name.as_str(), seq), stored.encode_to_vec().as_slice())?;
                }
                Ok(picked.len())
            })
            .await?;
        if moved > 0 {
            self.shared.wake(queue);
        }
        Ok(moved)
    }
}

struct InProcessSubscription {
    shared: Arc<Shared>,
    queue: String,
}

impl InProcessSubscription {
    /// Moves this queue's delayed messages that are due to the tail of the queue, if the
    /// soonest is due. Remembers when the next one will be.
    async fn release_due(&self) -> Result<(), BusError> {
        let now = clock::now_millis();
        let known = self
            .shared
            .state()
            .queues
            .get(&self.queue)
            .and_then(|q| q.next_due);
        if let Some(next_due) = known
            && next_due.is_none_or(|due| due > now)
        {
            return Ok(());
        }
        let queue = self.queue.clone();
        let next_due = self
            .shared
            .db
            .write(move |tx| {
                let mut delayed = tx.open_table(DELAYED)?;
                let mut due = Vec::new();
                let mut next_due = None;
                for row in delayed.range(delayed_range(&queue))? {
                    let (key, value) = row?;
                    let (_, due_at, seq) = key.value();
                    if due_at > now {
                        next_due = Some(due_at);
                        break;
                    }
                    due.push((due_at, seq, value.value().to_vec()));
                }
                for (due_at, seq, _) in &due {
                    delayed.remove((queue.as_str(), *due_at, *seq))?;
                }
                drop(delayed);
                let mut messages = tx.open_table(MESSAGES)?;
                for (_, _, value) in &due {
                    let seq = next_seq(tx)?;
                    messages.insert((queue.as_str(), seq), value.as_slice())?;
                }
                Ok(next_due)
            })
            .await?;
        self.shared
            .state()
            .queues
            .entry(self.queue.clone())
            .or_default()
            .next_due = Some(next_due);
        Ok(())
    }

    /// Claims the oldest message of the queue that no consumer holds, if any.
    ///
    /// Cancellation-safe: the blocking read only looks; the claim itself (marking the message in
    /// flight) happens after it, with no await before the delivery is returned. So a `next()`
    /// dropped mid-way (by a `select!`) cannot leave a message claimed by nobody.
    async fn try_claim(&self) -> Result<Option<Delivery>, BusError> {
        const LOOK_AHEAD: usize = 64;
        let shared = Arc::clone(&self.shared);
        let queue = self.queue.clone();
        let candidates = self
            .shared
            .db
            .read(move |txn| {
                let messages = txn.open_table(MESSAGES)?;
                let mut found = Vec::new();
                for row in messages.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))? {
                    let (key, value) = row?;
                    let seq = key.value().1;
                    let held = shared
                        .state()
                        .queues
                        .get(&queue)
                        .is_some_and(|q| q.in_flight.contains(&seq));
                    if !held {
                        found.push((seq, StoredMessage::decode(value.value())?));
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
        for (seq, stored) in candidates {
            if !queue_state.in_flight.insert(seq) {
                continue; // another consumer took it since the read
            }
            let first_failed = (stored.failures > 0).then_some(stored.first_failed_at_ms);
            let acker = InProcessAcker {
                shared: Arc::clone(&self.shared),
                queue: self.queue.clone(),
                seq,
                body: stored.body.clone(),
                settled: false,
            };
            return Ok(Some(Delivery::new(
                stored.body,
                stored.failures + 1,
                first_failed,
                Box::new(acker),
            )));
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
            self.release_due().await?;
            if let Some(delivery) = self.try_claim().await? {
                return Ok(delivery);
            }
            let due = self
                .shared
                .state()
                .queues
                .get(&self.queue)
                .and_then(|q| q.next_due.flatten());
            match due {
                Some(due) => {
                    let wait = u64::try_from(due - clock::now_millis()).unwrap_or(0);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
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

enum Outcome {
    Ack,
    Retry { failure: FailureRecord, due_at: i64 },
    DeadLetter { failure: FailureRecord },
}

impl InProcessAcker {
    async fn settle(mut self: Box<Self>, outcome: Outcome) -> Result<(), BusError> {
        let (queue, seq) = (self.queue.clone(), self.seq);
        let body = std::mem::take(&mut self.body);
        let retry_due = match &outcome {
            Outcome::Retry { due_at, .. } => Some(*due_at),
            _ => None,
        };
        let result = self
            .shared
            .db
            .write(move |tx| {
                let key = (queue.as_str(), seq);
                tx.open_table(MESSAGES)?.remove(key)?;
                match outcome {
                    Outcome::Ack => {}
                    Outcome::Retry { failure, due_at } => {
                        let stored = StoredMessage {
                            body,
                            failures: failure.failures,
                            first_failed_at_ms: failure.first_failed_at_ms,
                            last_error: failure.error,
                        };
                        tx.open_table(DELAYED)?.insert(
                            (queue.as_str(), due_at, seq),
                            stored.encode_to_vec().as_slice(),
                        )?;
                    }
                    Outcome::DeadLetter { failure } => {
                        let record = DeadLetterRecord {
                            attempts: failure.failures,
                            error: failure.error,
                            body,
                            first_failed_at_ms: failure.first_failed_at_ms,
                            dead_at_ms: clock::now_millis(),
                        };
                        tx.open_table(DEAD_LETTERS)?
                            .insert(key, record.encode_to_vec().as_slice())?;
                    }
                }
                Ok(())
            })
            .await;
        if let (Ok(()), Some(due_at)) = (&result, retry_due) {
            let mut state = self.shared.state();
            let queue = state.queues.entry(self.queue.clone()).or_default();
            // The soonest due time may now be this one.
            queue.next_due = match queue.next_due {
                Some(Some(known)) => Some(Some(known.min(due_at))),
                Some(None) => Some(Some(due_at)),
                None => None,
            };
        }
        // Settled or not, the message is no longer in this consumer's hands; if the write failed
        // it is still stored and will be delivered again.
        self.settled = true;
        self.shared.release(&self.queue, self.seq);
        Ok(result?)
    }
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(Outcome::Ack).await
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        self.shared.release(&self.queue, self.seq);
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        failure: &FailureRecord,
        delay: Duration,
    ) -> Result<(), BusError> {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let due_at = clock::now_millis().saturating_add(delay_ms);
        let failure = failure.clone();
        self.settle(Outcome::Retry { failure, due_at }).await
    }

    async fn dead_letter(self: Box<Self>, failure: &FailureRecord) -> Result<(), BusError> {
        let failure = failure.clone();
        self.settle(Outcome::DeadLetter { failure }).await
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
