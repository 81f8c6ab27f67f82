//! Counts that move exactly once per op, however often the op is tried: a count kept in a static
//! column of its partition, beside a ledger of the ops applied to it (one clustering row per op,
//! `IF NOT EXISTS`, living [`LEDGER_TTL`]). The tweets service counts an author's tweets and a
//! tweet's likes and retweets this way, the followers service a user's followers and following;
//! `cql/tweets/001_init.cql` explains the shape.
//!
//! An op is applied by one conditional batch on the partition: its ledger row `IF NOT EXISTS`
//! and `SET <count> = <read + delta> IF <count> = <read>`. A concurrent op on the same partition
//! makes it lose (or its Paxos round time out, outcome unknown): it reads the ledger and the
//! count again and tries again, pausing by the one [`backoff`](super::backoff) of contended
//! writes, until the ledger shows the op applied. So anyone may apply an op again (a retry, a
//! call finishing another's change, the service consuming the op's event back) while its ledger
//! row lives.

use std::time::Duration;

use futures_util::future::try_join;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::{CqlError, Keyspace, Lwt, Retries, logged_batch, lwt};
use crate::clock;
use crate::store::StoreError;

/// How long a ledger row lives (the `USING TTL` of its insert): far longer than any retry, so
/// an op applied again within a repair window always finds its row.
pub const LEDGER_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// How many times an op is tried against concurrent ops on the same count before it fails (and
/// its caller, or the event it announced consumed back, tries again).
pub const COUNT_ATTEMPTS: u32 = 64;

/// Where one count lives: its table (`<key> bigint, op text, applied_at timestamp` as primary
/// key and ledger, the count a static `bigint`), its key column and its count column.
#[derive(Debug, Clone, Copy)]
pub struct CountColumn {
    /// What is counted, for errors (`"tweet count of author"`).
    pub what: &'static str,
    pub table: &'static str,
    pub key: &'static str,
    pub count: &'static str,
}

/// One count column and its ledger in one keyspace (see the [module docs](self)).
pub struct CountLedger {
    ks: Keyspace,
    what: &'static str,
    /// The ledger row `IF NOT EXISTS` and `SET <count> = ? IF <count> = ?`.
    apply: Batch,
    /// `SELECT DISTINCT <key>, <count>`: the static row only, never the ledger.
    read: PreparedStatement,
    /// Whether an op's ledger row is there.
    select_op: PreparedStatement,
}

impl std::fmt::Debug for CountLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountLedger")
            .field("keyspace", &self.ks.name())
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl CountLedger {
    /// Prepares the statements of `column` in `ks`.
    pub async fn new(ks: &Keyspace, column: CountColumn) -> Result<Self, CqlError> {
        let CountColumn {
            what,
            table,
            key,
            count,
        } = column;
        let ttl = LEDGER_TTL.as_secs();
        let record = ks
            .prepare(&format!(
                "INSERT INTO {{ks}}.{table} ({key}, op, applied_at) VALUES (?, ?, ?) \
                 IF NOT EXISTS USING TTL {ttl}"
            ))
            .await?;
        let set = ks
            .prepare(&format!(
                "UPDATE {{ks}}.{table} SET {count} = ? WHERE {key} = ? IF {count} = ?"
            ))
            .await?;
        Ok(Self {
            apply: logged_batch([&record, &set]),
            read: ks
                .prepare(&format!(
                    "SELECT DISTINCT {key}, {count} FROM {{ks}}.{table} WHERE {key} = ?"
                ))
                .await?,
            select_op: ks
                .prepare(&format!(
                    "SELECT op FROM {{ks}}.{table} WHERE {key} = ? AND op = ?"
                ))
                .await?,
            ks: ks.clone(),
            what,
        })
    }

    /// Moves the count of `key` by `delta` under the op key `op`, once: a no-op when the ledger
    /// shows `op` applied (by an earlier attempt, maybe one whose outcome its caller never
    /// learned). Compare-and-set, so a concurrent op on the same count is never lost.
    pub async fn apply(&self, key: i64, op: &str, delta: i64) -> Result<(), StoreError> {
        let mut retries = Retries::new(self.what, COUNT_ATTEMPTS);
        loop {
            let (applied, current) = try_join(self.applied(key, op), self.read(key)).await?;
            if applied {
                return Ok(());
            }
            let values = (
                (key, op, CqlTimestamp(clock::now_millis())),
                (current.unwrap_or(0) + delta, key, current),
            );
            match lwt(self.ks.session().batch(&self.apply, values).await)? {
                Lwt::Applied => return Ok(()),
                // Another op moved the count first, or Paxos rounds that collided timed out
                // (outcome unknown): the ledger, read again, settles it.
                Lwt::NotApplied(_) | Lwt::Unknown(_) => {
                    if let Err(contended) = retries.lost().await {
                        tracing::warn!(key, op, "{contended}");
                        return Err(contended.into());
                    }
                }
            }
        }
    }

    /// Whether `op` has moved the count of `key` (while its ledger row lives).
    pub async fn applied(&self, key: i64, op: &str) -> Result<bool, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.select_op, (key, op))
            .await?
            .into_rows_result()?;
        Ok(rows.rows_num() > 0)
    }

    /// The stored count of `key`: `None` when no op ever moved it.
    pub async fn read(&self, key: i64) -> Result<Option<i64>, StoreError> {
        let rows = self
            .ks
            .session()
            .execute_unpaged(&self.read, (key,))
            .await?
            .into_rows_result()?;
        Ok(rows
            .maybe_first_row::<(i64, Option<i64>)>()?
            .and_then(|(_, count)| count))
    }
}
