//! The embedded, durable storage engine: [redb], one database file per service under the data
//! directory. Every write is fsynced before it returns, so a write that was acknowledged
//! survives a crash (`kill -9` included).
//!
//! Each service builds its embedded store on an [`EmbeddedDb`]: it declares its own tables and
//! runs its reads and writes through [`EmbeddedDb::read`] (in the caller's task: reads are
//! bounded and mostly served from caches) and [`EmbeddedDb::write`] (on the database's writer
//! thread, which keeps the fsyncs off the async runtime). A write that produces domain events stages
//! them with [`Tx::stage_event`] so they commit atomically with the rows (the transactional
//! outbox); [`EmbeddedDb`] is also the [`Outbox`] the relay drains.
//!
//! **Group commit.** Writes go to one writer thread per database, which takes every write
//! waiting when it gets to them (up to [`GROUP_MAX`]) and commits each in its own transaction,
//! so one that fails aborts alone. All but the last commit without an fsync (redb's
//! `Durability::None`); the last one's fsync makes the whole group durable, and only then does
//! any caller of the group hear back. Concurrent writers therefore share one fsync instead of
//! paying one each, and a lone writer pays exactly what it did before.
//!
//! A reader may see a grouped write a moment before its fsync: should the process die in that
//! moment, the write is lost although someone saw it, and its caller, who never heard back,
//! retries. The outbox is the exception, because what leaves it cannot be taken back: the relay
//! only ever reads events whose fsync has completed.
//!
//! **Backups.** [`open_under`] finds the databases this process has open in a data directory,
//! and [`EmbeddedDb::hold_writes`] parks a database's writer thread after an fsync, so the file
//! stays exactly as it is on disk while reads go on: [`crate::backup`] holds every file's writes
//! at once and copies them, which is one consistent cut across the files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prost::Message as _;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase as _, ReadableTable as _,
    TableDefinition, WriteTransaction,
};
use tokio::sync::Notify;
use twtr_proto::events::v1::Envelope;

use crate::outbox::{Outbox, OutboxKey, PendingEvent};
use crate::page::PageRequest;
use crate::store::{PendingPurge, StoreError};

/// Events waiting to be published, by a sequence assigned inside the transaction that stored
/// them (redb serializes write transactions, so sequence order is commit order).
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The outbox's next sequence, kept so that sequences never repeat, even once the outbox has
/// been emptied: the relay's durable watermark (see [`Shared::durable_seq`]) relies on it.
const OUTBOX_NEXT: TableDefinition<(), u64> = TableDefinition::new("outbox_next");

macro_rules! from_redb_errors {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                Self::backend(redb::Error::from(err))
            }
        }
    )*};
}
from_redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The most writes committed under one fsync.
pub const GROUP_MAX: usize = 128;

/// Memory redb may use to cache each database file's pages (its read cache and its write
/// buffer together). Its default (1 GiB per file) let a process with five files grow past a
/// gigabyte after a bulk load. Under the benchmark two files outgrow any such cache (the feeds
/// file, hundreds of MB, and the tweets file): each holds its whole cache, so this is the
/// largest share of the all-in-one process's memory. 64 MiB took the process to 313–320 MB at
/// peak, 32 MiB to 234 MB with the same throughput in the same sitting (feed reads, posts and
/// fan-out within run-to-run noise; `docs/bench/2026-12-03-cache.md`): reads that miss it are
/// served by the kernel's page cache, which the machine shares and can reclaim.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A handle to one redb database file; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    /// The directory the file is in, canonical, for [`open_under`].
    dir: PathBuf,
    shared: Arc<Shared>,
    /// The writer thread and the way to it; taken on drop, to close the database for good
    /// before the handle is gone (a test may open the same file right after).
    writer: Option<(mpsc::Sender<Job>, JoinHandle<()>)>,
}

/// What the writer thread and the handles share.
struct Shared {
    /// Woken after every fsync that made staged events durable, so the relay publishes without
    /// polling.
    outbox_changed: Notify,
    /// The highest outbox sequence known to be on disk: the relay reads no further.
    durable_seq: AtomicU64,
    /// Groups committed (fsyncs), for the tests that check writes share them.
    groups: AtomicU64,
}

/// One caller's write, run by the writer thread at the durability it is given.
type Job = Box<dyn FnOnce(&Database, Durability) -> Done + Send>;

/// A write the writer thread has run: whether it committed, what it staged, and how to tell
/// its caller once the group's fsync is done (`Some` error if that fsync failed).
struct Done {
    committed: bool,
    staged_up_to: Option<u64>,
    reply: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((jobs, thread)) = self.writer.take() {
            drop(jobs); // the writer finishes the writes in hand, then stops
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedDb {
    /// Opens (or creates) the database at `path`, creating its parent directory (both private
    /// to this user, see [`crate::files`]), and runs
    /// `create_tables` so that every table exists before the first read.
    pub fn open(
        path: &Path,
        create_tables: impl FnOnce(&Tx<'_>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::files::private_dir(parent).map_err(StoreError::backend)?;
        }
        // Created empty with mode 0600 (redb initializes an empty file), or tightened: a store
        // holds password hashes and private data.
        crate::files::private_file(path).map_err(StoreError::backend)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        let durable_seq = {
            let tx = Tx::new(&txn);
            txn.open_table(OUTBOX_NEXT)?;
            let outbox = txn.open_table(OUTBOX)?;
            let last = outbox.last()?.map_or(0, |(seq, _)| seq.value());
            drop(outbox);
            create_tables(&tx)?;
            last
        };
        txn.commit()?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            outbox_changed: Notify::new(),
            durable_seq: AtomicU64::new(durable_seq),
            groups: AtomicU64::new(0),
        });
        let (jobs, queue) = mpsc::channel();
        let thread = {
            let (db, shared) = (Arc::clone(&db), Arc::clone(&shared));
            let name = path
                .file_stem()
                .map_or_else(|| "redb".to_owned(), |s| s.to_string_lossy().into_owned());
            std::thread::Builder::new()
                .name(format!("{name}-writer"))
                .spawn(move || write_groups(&db, &queue, &shared))
                .map_err(StoreError::backend)?
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let inner = Arc::new(Inner {
            db,
            path: path.to_owned(),
            dir: dir.canonicalize().unwrap_or_else(|_| dir.to_owned()),
            shared,
            writer: Some((jobs, thread)),
        });
        let mut open = OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|db| db.strong_count() > 0);
        open.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Makes every commit so far durable, then parks the writer thread until the returned
    /// guard is dropped: until then the file on disk is exactly the last commit, and stays so
    /// (reads go on; writes wait in the queue). Blocks until the writer gets to it, behind the
    /// writes already queued. For [`crate::backup`], which copies the file meanwhile.
    pub fn hold_writes(&self) -> Result<WritesHeld, StoreError> {
        let (parked, is_parked) = mpsc::channel::<Result<(), String>>();
        let (release, released) = mpsc::channel::<()>();
        let job: Job = Box::new(move |db, _| {
            let _ = parked.send(sync(db).map_err(|err| err.to_string()));
            // Returns when the guard's sender is dropped.
            let _ = released.recv();
            Done {
                committed: false,
                staged_up_to: None,
                reply: Box::new(|_| {}),
            }
        });
        let gone = || {
            StoreError::backend(std::io::Error::other(
                "the database's writer thread is gone",
            ))
        };
        let writer = self.inner.writer.as_ref().map(|(jobs, _)| jobs);
        if writer.is_none_or(|jobs| jobs.send(job).is_err()) {
            return Err(gone());
        }
        match is_parked.recv() {
            Ok(Ok(())) => Ok(WritesHeld { _release: release }),
            Ok(Err(err)) => Err(StoreError::backend(std::io::Error::other(format!(
                "the fsync before holding writes failed: {err}"
            )))),
            Err(_) => Err(gone()),
        }
    }

    /// Runs `f` in one write transaction on the writer thread and commits it if `f` returns
    /// `Ok`; an `Err` aborts it and writes nothing. Returns once the commit is on disk.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |db, durability| {
            let outcome = run_write(db, durability, f);
            Done {
                committed: outcome.is_ok(),
                staged_up_to: outcome.as_ref().ok().and_then(|(_, staged)| *staged),
                reply: Box::new(move |sync_failed| {
                    let result = match (outcome, sync_failed) {
                        (Ok((value, _)), None) => Ok(value),
                        (Ok(_), Some(err)) | (Err(err), _) => Err(err),
                    };
                    let _ = answer.send(result);
                }),
            }
        });
        let writer = self.inner.writer.as_ref().map(|(jobs, _)| jobs);
        if writer.is_none_or(|jobs| jobs.send(job).is_err()) {
            return Err(StoreError::backend(std::io::Error::other(
                "the database's writer thread is gone",
            )));
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::backend(std::io::Error::other(
                "a write panicked and was rolled back",
            )))
        })
    }

    /// Whether the database answers: a read transaction begins (and its writer thread lives).
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.inner.writer.is_none() {
            return Err(StoreError::backend(std::io::Error::other(
                "the database's writer thread is gone",
            )));
        }
        self.read(|_| Ok(())).await
    }

    /// Runs `f` in one read transaction (a consistent snapshot), right here on the calling
    /// task.
    ///
    /// Reads used to hop to tokio's blocking pool, but a read is a few B-tree lookups in
    /// pages redb caches ([`CACHE_BYTES`]) or the kernel's page cache holds: microseconds,
    /// less than the hop itself, whose thread wake-ups and hand-offs took about 5% of a
    /// hydrated feed read's CPU (`docs/bench/2026-12-03-speed.md`). Every read here is
    /// bounded (a page, a batch of keys); a read that misses both caches waits on the disk
    /// in this task's thread, as the writes' fsyncs already do in the writer's.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let txn = self.inner.db.begin_read()?;
        f(&txn)
    }
}

/// Every database this process opened and still has open (a redb file can be open once per
/// process anyway), for [`open_under`].
static OPEN: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// The databases this process has open in `dir`, by file name.
pub fn open_under(dir: &Path) -> Vec<EmbeddedDb> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let open = OPEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut found: Vec<EmbeddedDb> = open
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|inner| inner.dir == dir && inner.writer.is_some())
        .map(|inner| EmbeddedDb { inner })
        .collect();
    found.sort_by(|a, b| a.inner.path.cmp(&b.inner.path));
    found
}

/// Writes held by [`EmbeddedDb::hold_writes`]; dropping it lets them go on.
pub struct WritesHeld {
    _release: mpsc::Sender<()>,
}

/// One write transaction at `durability`: `f`'s value and the last outbox sequence it staged.
fn run_write<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
) -> Result<(T, Option<u64>), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .map_err(StoreError::backend)?;
    let tx = Tx::new(&txn);
    let value = f(&tx)?;
    let staged = tx.last_staged.get();
    txn.commit()?;
    Ok((value, staged))
}

/// The writer thread: takes the writes waiting, commits them as one group (see the module
/// documentation), then answers their callers. Ends when every handle is gone.
fn write_groups(db: &Database, queue: &mpsc::Receiver<Job>, shared: &Shared) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let last = group.len() - 1;
        let mut done = Vec::with_capacity(group.len());
        for (i, job) in group.into_iter().enumerate() {
            let durability = if i == last {
                Durability::Immediate
            } else {
                Durability::None
            };
            // A write that panics is rolled back (its transaction drops) and its caller hears
            // so from the dropped answer; the others go on.
            if let Ok(finished) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(db, durability)))
            {
                done.push(finished);
            }
        }
        // The last write's fsync covers the group; if it aborted, an empty durable commit
        // stands in for it.
        let covered = done
            .last()
            .is_some_and(|d| d.committed && done.len() == last + 1);
        let sync_failed = if covered || !done.iter().any(|d| d.committed) {
            None
        } else {
            sync(db).err().map(|err| err.to_string())
        };
        shared.groups.fetch_add(1, Ordering::Relaxed);
        let staged = done
            .iter()
            .filter(|d| d.committed)
            .filter_map(|d| d.staged_up_to)
            .max();
        if sync_failed.is_none()
            && let Some(seq) = staged
        {
            shared.durable_seq.fetch_max(seq, Ordering::SeqCst);
            shared.outbox_changed.notify_one();
        }
        for finished in done {
            let failed = finished
                .committed
                .then_some(sync_failed.as_ref())
                .flatten()
                .map(|err| {
                    StoreError::backend(std::io::Error::other(format!(
                        "the group commit's fsync failed: {err}"
                    )))
                });
            (finished.reply)(failed);
        }
    }
}

/// An empty transaction committed durably: it makes every commit before it durable too.
fn sync(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::backend)?;
    txn.commit()?;
    Ok(())
}

impl EmbeddedDb {
    /// [`EmbeddedDb::read`] for code that is not async, such as opening a store.
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.inner.db.begin_read()?;
        f(&txn)
    }
}

/// A write transaction in progress, with the ability to stage events into the outbox.
pub struct Tx<'a> {
    txn: &'a WriteTransaction,
    /// The outbox sequence of the last event staged, if any.
    last_staged: std::cell::Cell<Option<u64>>,
}

impl<'a> Tx<'a> {
    fn new(txn: &'a WriteTransaction) -> Self {
        Self {
            txn,
            last_staged: std::cell::Cell::new(None),
        }
    }

    pub fn open_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<redb::Table<'_, K, V>, StoreError> {
        Ok(self.txn.open_table(table)?)
    }

    /// Deletes `table` and its rows, for a migration that moved them elsewhere; returns
    /// whether it existed.
    pub fn delete_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<bool, StoreError> {
        Ok(self.txn.delete_table(table)?)
    }

    /// Stores `event` in the outbox; it commits (or not) with the rest of the transaction.
    pub fn stage_event(&self, event: &Envelope) -> Result<(), StoreError> {
        let mut outbox = self.txn.open_table(OUTBOX)?;
        let mut next = self.txn.open_table(OUTBOX_NEXT)?;
        let after_last = outbox.last()?.map_or(1, |(seq, _)| seq.value() + 1);
        let seq = next
            .get(())?
            .map_or(after_last, |n| n.value().max(after_last));
        next.insert((), seq + 1)?;
        outbox.insert(seq, event.encode_to_vec().as_slice())?;
        self.last_staged.set(Some(seq));
        Ok(())
    }
}

#[async_trait]
impl Outbox for EmbeddedDb {
    async fn pending(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        // Only what is on disk: a grouped write is visible a moment before its fsync.
        let durable = self.inner.shared.durable_seq.load(Ordering::SeqCst);
        self.read(move |txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut events = Vec::new();
            for row in outbox.range(..=durable)?.take(max) {
                let (seq, body) = row?;
                events.push(PendingEvent {
                    key: OutboxKey {
                        shard: 0,
                        seq: seq.value(),
                    },
                    event: Envelope::decode(body.value())?,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn remove(&self, keys: Vec<OutboxKey>) -> Result<(), StoreError> {
        self.write(move |tx| {
            let mut outbox = tx.open_table(OUTBOX)?;
            for key in keys {
                outbox.remove(key.seq)?;
            }
            Ok(())
        })
        .await
    }

    async fn changed(&self) {
        self.inner.shared.outbox_changed.notified().await;
    }
}

/// Reads one page of IDs from a table keyed by `(partition, id)`, such as a user's feed or an
/// author's tweets. Returns up to `limit + 1` keys in reading order, for [`crate::Page::from_scan`].
pub fn scan_page<V: redb::Value + 'static>(
    table: &impl redb::ReadableTable<(u64, u64), V>,
    partition: u64,
    request: &PageRequest,
) -> Result<Vec<u64>, StoreError> {
    let upper = request.before.unwrap_or(u64::MAX);
    let take = request.limit.get() + 1;
    let mut ids = Vec::with_capacity(take);
    match request.since {
        Some(since) => {
            let lower = since.saturating_add(1);
            if lower >= upper {
                return Ok(ids);
            }
            for row in table
                .range((partition, lower)..(partition, upper))?
                .take(take)
            {
                ids.push(row?.0.value().1);
            }
        }
        None => {
            for row in table
                .range((partition, 0)..(partition, upper))?
                .rev()
                .take(take)
            {
                ids.push(row?.0.value().1);
            }
        }
    }
    Ok(ids)
}

/// The deleted accounts of an embedded store, as [`crate::cql::DeletedAccounts`] keeps them on
/// CQL: the accounts the users service deleted, which writes that would add to one refuse, and
/// those whose purge is not done yet. One transaction records both and one removes a finished
/// purge, so no removed row is ever read.
#[derive(Debug, Clone, Copy)]
pub struct DeletedAccounts {
    /// The name of account -> (): deleted.
    gone: &'static str,
    /// The name of account -> (): deleted, its purge not done.
    purges: &'static str,
}

impl DeletedAccounts {
    /// The two tables, by name.
    pub const fn new(gone: &'static str, purges: &'static str) -> Self {
        Self { gone, purges }
    }

    fn gone(self) -> TableDefinition<'static, u64, ()> {
        TableDefinition::new(self.gone)
    }

    fn purges(self) -> TableDefinition<'static, u64, ()> {
        TableDefinition::new(self.purges)
    }

    /// Makes the tables, for [`EmbeddedDb::open`].
    pub fn create(&self, tx: &Tx<'_>) -> Result<(), StoreError> {
        tx.open_table(self.gone())?;
        tx.open_table(self.purges())?;
        Ok(())
    }

    /// Whether `user`'s account is deleted, inside the write transaction `tx` (so no write can
    /// land after the deletion is recorded).
    pub fn is_gone_in(&self, tx: &Tx<'_>, user: u64) -> Result<bool, StoreError> {
        Ok(tx.open_table(self.gone())?.get(user)?.is_some())
    }

    /// Records that `user`'s account is deleted and queues its purge, unless it was recorded
    /// already. Idempotent.
    pub async fn forget(&self, db: &EmbeddedDb, user: u64) -> Result<(), StoreError> {
        let this = *self;
        db.write(move |tx| {
            let mut gone = tx.open_table(this.gone())?;
            if gone.get(user)?.is_none() {
                gone.insert(user, ())?;
                tx.open_table(this.purges())?.insert(user, ())?;
            }
            Ok(())
        })
        .await
    }

    /// Whether `user`'s account is deleted.
    pub async fn is_gone(&self, db: &EmbeddedDb, user: u64) -> Result<bool, StoreError> {
        let gone = self.gone();
        db.read(move |txn| Ok(txn.open_table(gone)?.get(user)?.is_some()))
            .await
    }

    /// Up to `max` purges not done yet.
    pub async fn pending(
        &self,
        db: &EmbeddedDb,
        max: usize,
    ) -> Result<Vec<PendingPurge>, StoreError> {
        let purges = self.purges();
        db.read(move |txn| {
            txn.open_table(purges)?
                .iter()?
                .take(max)
                .map(|entry| {
                    Ok(PendingPurge {
                        user: entry?.0.value(),
                        slot: 0,
                    })
                })
                .collect()
        })
        .await
    }

    /// Marks `purge` (one of [`DeletedAccounts::pending`]'s entries) done.
    pub async fn done(&self, db: &EmbeddedDb, purge: PendingPurge) -> Result<(), StoreError> {
        let purges = self.purges();
        db.write(move |tx| {
            tx.open_table(purges)?.remove(purge.user)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::pending_ids;
    use crate::page::{Limit, Page};

    const ITEMS: TableDefinition<(u64, u64), ()> = TableDefinition::new("items");

    async fn db_with_items(dir: &Path, partition: u64, ids: &[u64]) -> EmbeddedDb {
        let db = EmbeddedDb::open(&dir.join("t.redb"), |tx| {
            tx.open_table(ITEMS)?;
            Ok(())
        })
        .unwrap();
        let ids = ids.to_vec();
        db.write(move |tx| {
            let mut table = tx.open_table(ITEMS)?;
            for id in ids {
                table.insert((partition, id), ())?;
            }
            // Another partition on either side must never leak into a page.
            table.insert((partition - 1, 5), ())?;
            table.insert((partition + 1, 5), ())?;
            Ok(())
        })
        .await
        .unwrap();
        db
    }

    async fn page(db: &EmbeddedDb, request: PageRequest) -> Page<u64> {
        db.read(move |txn| {
            let table = txn.open_table(ITEMS)?;
            let ids = scan_page(&table, 7, &request)?;
            Ok(Page::from_scan(&request, ids, |id| *id))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn walking_pages_backwards_visits_every_item_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_items(dir.path(), 7, &[1, 2, 3, 4, 5, 6, 7]).await;
        let limit = Limit::parse(Some(3)).unwrap();
        let mut request = PageRequest::first(limit);
        let mut seen = Vec::new();
        loop {
            let page = page(&db, request).await;
            seen.extend(page.items);
            match page.next {
                Some(next) => request.before = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    }

    #[tokio::test]
    async fn polling_forward_never_skips() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_items(dir.path(), 7, &[1, 2, 3, 4, 5, 6, 7]).await;
        let limit = Limit::parse(Some(2)).unwrap();
        let mut since = 2;
        let mut seen = Vec::new();
        loop {
            let page = page(
                &db,
                PageRequest {
                    before: None,
                    since: Some(since),
                    limit,
                },
            )
            .await;
            let Some(newest) = page.items.first().copied() else {
                break;
            };
            seen.extend(page.items.into_iter().rev());
            since = newest;
        }
        assert_eq!(seen, vec![3, 4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn an_aborted_write_leaves_no_trace_and_stages_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_items(dir.path(), 7, &[]).await;
        let result: Result<(), StoreError> = db
            .write(|tx| {
                tx.open_table(ITEMS)?.insert((7, 1), ())?;
                tx.stage_event(&Envelope {
                    event_id: 1,
                    ..Envelope::default()
                })?;
                Err(StoreError::Corrupt("abort on purpose".into()))
            })
            .await;
        assert!(result.is_err());
        assert!(
            page(&db, PageRequest::first(Limit::DEFAULT))
                .await
                .items
                .is_empty()
        );
        assert!(db.pending(10).await.unwrap().is_empty());
    }

    /// A write that parks the writer thread until `release` fires, after saying it started.
    fn parked_write(
        db: &EmbeddedDb,
        key: u64,
    ) -> (
        tokio::task::JoinHandle<Result<(), StoreError>>,
        tokio::sync::oneshot::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, has_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let db = db.clone();
        let write = tokio::spawn(async move {
            db.write(move |tx| {
                let _ = started.send(());
                let _ = released.recv();
                tx.open_table(ITEMS)?.insert((7, key), ())?;
                Ok(())
            })
            .await
        });
        (write, has_started, release)
    }

    #[tokio::test]
    async fn concurrent_writes_share_an_fsync_and_abort_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = EmbeddedDb::open(&path, |tx| {
            tx.open_table(ITEMS)?;
            Ok(())
        })
        .unwrap();
        // Hold the writer so the next writes queue up behind it and form one group.
        let (parked, started, release) = parked_write(&db, 1_000);
        started.await.unwrap();
        let before = db.inner.shared.groups.load(Ordering::Relaxed);
        let writes: Vec<_> = (1..=40u64)
            .map(|key| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |tx| {
                        tx.open_table(ITEMS)?.insert((7, key), ())?;
                        if key % 10 == 0 {
                            return Err(StoreError::Corrupt("this one aborts".into()));
                        }
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await; // all 40 queued
        release.send(()).unwrap();
        parked.await.unwrap().unwrap();
        for (key, write) in (1..=40u64).zip(writes) {
            assert_eq!(write.await.unwrap().is_ok(), key % 10 != 0, "write {key}");
        }
        let groups = db.inner.shared.groups.load(Ordering::Relaxed) - before;
        assert!(
            groups <= 2,
            "the parked write's group and the 40's: {groups} groups"
        );
        drop(db);
        let db = EmbeddedDb::open(&path, |_| Ok(())).unwrap();
        let stored = page(&db, PageRequest::first(Limit::parse(Some(100)).unwrap())).await;
        let expected: Vec<u64> = std::iter::once(1_000)
            .chain((1..=40).rev().filter(|key| key % 10 != 0))
            .collect();
        assert_eq!(
            stored.items, expected,
            "every committed write survived reopening"
        );
    }

    #[tokio::test]
    async fn the_relay_never_sees_an_event_before_its_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_items(dir.path(), 7, &[]).await;
        let (first, started, release_first) = parked_write(&db, 1);
        started.await.unwrap();
        // Queued behind it, one group: a write staging an event (committed without fsync),
        // then a write that parks before the group's fsync.
        let staging = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|tx| {
                    tx.stage_event(&Envelope {
                        event_id: 42,
                        ..Envelope::default()
                    })
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (last, last_started, release_last) = parked_write(&db, 2);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release_first.send(()).unwrap();
        first.await.unwrap().unwrap();
        last_started.await.unwrap();
        assert!(
            db.pending(10).await.unwrap().is_empty(),
            "the staged event is committed but not yet on disk"
        );
        release_last.send(()).unwrap();
        last.await.unwrap().unwrap();
        staging.await.unwrap().unwrap();
        assert_eq!(pending_ids(&db, 10).await.unwrap(), vec![42]);
    }

    #[tokio::test]
    async fn outbox_sequences_never_repeat_once_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_items(dir.path(), 7, &[]).await;
        let stage = |id| {
            let db = db.clone();
            async move {
                db.write(move |tx| {
                    tx.stage_event(&Envelope {
                        event_id: id,
                        ..Envelope::default()
                    })
                })
                .await
                .unwrap();
            }
        };
        stage(1).await;
        let first = db.pending(10).await.unwrap();
        db.remove(vec![first[0].key]).await.unwrap();
        stage(2).await;
        let second = db.pending(10).await.unwrap();
        assert_eq!(second.len(), 1);
        assert!(second[0].key.seq > first[0].key.seq);
    }

    #[tokio::test]
    async fn staged_events_are_durable_and_ordered_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = EmbeddedDb::open(&path, |_| Ok(())).unwrap();
            db.write(|tx| {
                for id in [30, 10, 20] {
                    tx.stage_event(&Envelope {
                        event_id: id,
                        ..Envelope::default()
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
        }
        let db = EmbeddedDb::open(&path, |_| Ok(())).unwrap();
        let pending = db.pending(10).await.unwrap();
        let ids: Vec<u64> = pending.iter().map(|p| p.event.event_id).collect();
        assert_eq!(ids, vec![30, 10, 20], "in the order they were staged");
        db.remove(vec![pending[0].key, pending[2].key])
            .await
            .unwrap();
        assert_eq!(pending_ids(&db, 10).await.unwrap(), vec![10]);
    }
}
