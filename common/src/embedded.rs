//! The embedded, durable storage engine: [redb], one database file per service under the data
//! directory. Every commit is fsynced before it returns, so a write that was acknowledged
//! survives a crash (`kill -9` included).
//!
//! Each service builds its embedded store on an [`EmbeddedDb`]: it declares its own tables and
//! runs its reads and writes through [`EmbeddedDb::read`] and [`EmbeddedDb::write`], which move
//! the blocking disk work off the async runtime. A write that produces domain events stages
//! them with [`Tx::stage_event`] so they commit atomically with the rows (the transactional
//! outbox); [`EmbeddedDb`] is also the [`Outbox`] the relay drains.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    WriteTransaction,
};
use tokio::sync::Notify;
use twtr_proto::events::v1::Envelope;

use crate::outbox::{Outbox, OutboxKey, PendingEvent};
use crate::page::PageRequest;
use crate::store::StoreError;

/// Events waiting to be published, by a sequence assigned inside the transaction that stored
/// them (redb serializes write transactions, so sequence order is commit order).
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

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

/// A handle to one redb database file; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Woken after every commit that staged events, so the relay publishes without polling.
    outbox_changed: Notify,
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedDb {
    /// Opens (or creates) the database at `path`, creating its parent directory, and runs
    /// `create_tables` so that every table exists before the first read.
    pub fn open(
        path: &Path,
        create_tables: impl FnOnce(&Tx<'_>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::backend)?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let tx = Tx::new(&txn);
            txn.open_table(OUTBOX)?;
            create_tables(&tx)?;
        }
        txn.commit()?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                outbox_changed: Notify::new(),
            }),
        })
    }

    /// Runs `f` in one write transaction on a blocking thread and commits it if `f` returns
    /// `Ok`; an `Err` aborts it and writes nothing.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let txn = inner.db.begin_write()?;
            let tx = Tx::new(&txn);
            let value = f(&tx)?;
            let staged_events = tx.staged.get() > 0;
            txn.commit()?;
            if staged_events {
                inner.outbox_changed.notify_one();
            }
            Ok(value)
        })
        .await?
    }

    /// Runs `f` in one read transaction (a consistent snapshot) on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let txn = inner.db.begin_read()?;
            f(&txn)
        })
        .await?
    }
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
    staged: std::cell::Cell<usize>,
}

impl<'a> Tx<'a> {
    fn new(txn: &'a WriteTransaction) -> Self {
        Self {
            txn,
            staged: std::cell::Cell::new(0),
        }
    }

    pub fn open_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<redb::Table<'_, K, V>, StoreError> {
        Ok(self.txn.open_table(table)?)
    }

    /// Stores `event` in the outbox; it commits (or not) with the rest of the transaction.
    pub fn stage_event(&self, event: &Envelope) -> Result<(), StoreError> {
        let mut outbox = self.txn.open_table(OUTBOX)?;
        let seq = outbox.last()?.map_or(1, |(seq, _)| seq.value() + 1);
        outbox.insert(seq, event.encode_to_vec().as_slice())?;
        self.staged.set(self.staged.get() + 1);
        Ok(())
    }
}

#[async_trait]
impl Outbox for EmbeddedDb {
    async fn pending(&self, max: usize) -> Result<Vec<PendingEvent>, StoreError> {
        self.read(move |txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut events = Vec::new();
            for row in outbox.iter()?.take(max) {
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
        self.inner.outbox_changed.notified().await;
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
