//! Lightweight transactions (`... IF ...`) and conditional batches: what one did, and how a
//! caller that lost to a concurrent writer tries again.
//!
//! - [`lwt`] reads the outcome of one from its execution, as an [`Lwt`]: applied, not applied
//!   (with the row that made its condition fail), or unknown (a Paxos round that timed out may
//!   or may not have taken effect). Every store reads its lightweight transactions through it,
//!   so each caller decides in one `match` what an unknown outcome means for it: a read-back
//!   that settles it, or a failure ([`Lwt::applied`]).
//! - [`Retries`] counts the attempts a caller loses to concurrent writers of the same row and
//!   pauses between them by [`backoff`], the one backoff of every contended CQL write; it gives
//!   up with [`Contended`] once its attempts are spent.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

use scylla::errors::{DbError, ExecutionError, RequestAttemptError, WriteType};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use super::CqlError;
use crate::store::StoreError;

/// What a lightweight transaction (or a conditional batch) did.
#[derive(Debug)]
pub enum Lwt {
    /// Its condition held: it took effect.
    Applied,
    /// Its condition failed: it took no effect. The row holds the values that made it fail.
    NotApplied(LwtRow),
    /// It failed without telling whether it took effect: a write timeout in its Paxos round
    /// (contention, or a slow replica), no answer in time, or its coordinator gone
    /// mid-request. A caller that can reads back what is there, and maybe tries again.
    Unknown(OutcomeUnknown),
}

impl Lwt {
    /// Whether it took effect, for a caller that has no read-back to settle an unknown outcome
    /// with: an unknown outcome is then the driver's error (transient, so retried upstream).
    pub fn applied(self) -> Result<bool, CqlError> {
        match self {
            Self::Applied => Ok(true),
            Self::NotApplied(_) => Ok(false),
            Self::Unknown(unknown) => Err(unknown.into()),
        }
    }
}

/// A lightweight transaction that timed out: the driver's error, kept for the log and for the
/// callers that fail on it.
#[derive(Debug, thiserror::Error)]
#[error("lightweight transaction outcome unknown")]
pub struct OutcomeUnknown(#[source] Box<ExecutionError>);

impl From<OutcomeUnknown> for CqlError {
    fn from(unknown: OutcomeUnknown) -> Self {
        Self::Execution(unknown.0)
    }
}

impl From<OutcomeUnknown> for StoreError {
    fn from(unknown: OutcomeUnknown) -> Self {
        CqlError::from(unknown).into()
    }
}

/// The columns of a refused lightweight transaction's result besides `[applied]`, by name:
/// what the condition saw (who holds a lease, which tweet holds an ID). By name, because
/// Cassandra and ScyllaDB return different column sets; null columns are left out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LwtRow(HashMap<String, CqlValue>);

impl LwtRow {
    /// The value of `column`; `None` when it is null or not in the result.
    pub fn get(&self, column: &str) -> Option<&CqlValue> {
        self.0.get(column)
    }
}

/// The outcome of a lightweight transaction (or conditional batch) from its execution: an
/// [`Lwt`], or the error when it failed for another reason than an unknown outcome.
pub fn lwt(result: Result<QueryResult, ExecutionError>) -> Result<Lwt, CqlError> {
    let result = match result {
        Ok(result) => result,
        Err(err) if outcome_unknown(&err) => {
            tracing::debug!(error = %err, "lightweight transaction timed out");
            return Ok(Lwt::Unknown(OutcomeUnknown(Box::new(err))));
        }
        Err(err) => return Err(err.into()),
    };
    let rows = result.into_rows_result()?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let row: Row = rows.first_row()?;
    let mut columns: HashMap<String, CqlValue> = names
        .into_iter()
        .zip(row.columns)
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    match columns.remove("[applied]") {
        Some(CqlValue::Boolean(true)) => Ok(Lwt::Applied),
        Some(CqlValue::Boolean(false)) => Ok(Lwt::NotApplied(LwtRow(columns))),
        None => Err(CqlError::UnexpectedResult(
            "no [applied] column: not a lightweight transaction".to_owned(),
        )),
        Some(other) => Err(CqlError::UnexpectedResult(format!(
            "[applied] is {other:?}, not a boolean"
        ))),
    }
}

/// Whether a lightweight transaction failed without telling whether it took effect: a write
/// timeout in its Paxos round (contention, or a slow replica), no answer in time, or its
/// coordinator gone mid-request (killed, or cut off). Anything else is a real failure.
fn outcome_unknown(err: &ExecutionError) -> bool {
    matches!(
        err,
        ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(
                    DbError::WriteTimeout {
                        write_type: WriteType::Cas,
                        ..
                    },
                    _,
                ) | RequestAttemptError::BrokenConnectionError(_)
            )
    )
}

/// The first pause of [`backoff`]'s ceiling, which doubles per attempt lost up to
/// [`BACKOFF_CEILING`].
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The most [`backoff`] ever pauses.
pub const BACKOFF_CEILING: Duration = Duration::from_millis(160);

/// The pause after the `lost`-th attempt lost to concurrent writers (counting from 1): random
/// below a ceiling that doubles with each loss, from 5 ms up to [`BACKOFF_CEILING`] ("full
/// jitter"). Random, so that contenders stop colliding in step; growing, so that many of them
/// spread out instead of queueing up on one Paxos round after another.
pub fn backoff(lost: u32) -> Duration {
    let doublings = lost.saturating_sub(1).min(16);
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_CEILING);
    let ceiling_us = u64::try_from(ceiling.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    // A hasher of fresh random keys: a random number without a dependency for it.
    let random = RandomState::new().hash_one(lost);
    Duration::from_micros(random % ceiling_us)
}

/// One caller's attempts at a write that concurrent writers of the same row can make it lose
/// (a lightweight transaction refused, or whose outcome is unknown): counts them, pauses by
/// [`backoff`] between them, and gives up once `max` are lost.
#[derive(Debug)]
pub struct Retries {
    what: &'static str,
    max: u32,
    lost: u32,
}

impl Retries {
    /// Up to `max` attempts at a write of `what` (named in the error when they are spent).
    pub fn new(what: &'static str, max: u32) -> Self {
        Self { what, max, lost: 0 }
    }

    /// One more attempt lost: pauses before the next, or fails once this was the last.
    pub async fn lost(&mut self) -> Result<(), Contended> {
        self.lost += 1;
        if self.lost >= self.max {
            return Err(Contended {
                what: self.what,
                attempts: self.lost,
            });
        }
        tokio::time::sleep(backoff(self.lost)).await;
        Ok(())
    }
}

/// A write kept losing to concurrent writers of its row for all its attempts; the caller may
/// try again.
#[derive(Debug, thiserror::Error)]
#[error("{what} stayed contended for {attempts} attempts; try again")]
pub struct Contended {
    pub what: &'static str,
    pub attempts: u32,
}

impl From<Contended> for StoreError {
    fn from(contended: Contended) -> Self {
        Self::backend(contended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_stays_below_it() {
        for lost in 1..40 {
            let ceiling = (BACKOFF_FIRST * 2u32.pow(lost.min(10) - 1)).min(BACKOFF_CEILING);
            for _ in 0..50 {
                assert!(backoff(lost) < ceiling, "attempt {lost}");
            }
        }
        // Random: a hundred pauses after the sixth loss are not all alike.
        let pauses: std::collections::HashSet<Duration> = (0..100).map(|_| backoff(6)).collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_give_up_after_their_last_attempt() {
        let mut retries = Retries::new("a test row", 3);
        assert!(retries.lost().await.is_ok());
        assert!(retries.lost().await.is_ok());
        let contended = retries.lost().await.unwrap_err();
        assert_eq!(contended.attempts, 3);
        assert!(contended.to_string().contains("a test row"));
        assert!(StoreError::from(contended).is_transient());
    }
}
