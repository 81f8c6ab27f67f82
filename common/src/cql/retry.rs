//! What the driver does when one attempt of a statement fails: [`StoreRetryPolicy`].
//!
//! The driver's own default (modelled on the DataStax Java driver's) already moves an idempotent
//! statement to the next node when a connection breaks or a node says it is overloaded or
//! bootstrapping. Three failures that a node dying or restarting causes are not covered by it,
//! and this policy adds them:
//!
//! - **a logged batch whose batchlog write timed out** (`WriteTimeout` with write type
//!   `BATCH_LOG`). The coordinator writes the batchlog to two other nodes of its data center
//!   before it applies anything, and picks them among the nodes its failure detector still
//!   believes alive. For the 10 to 20 seconds a killed node takes to be convicted, a three-node
//!   data center has no choice but to pick it, and the batchlog write times out. None of the
//!   batch's writes were sent, but the batchlog may have reached the live node, which replays it
//!   later: so only an idempotent batch goes again, to the next node, a few times within the
//!   request timeout (the stores' unconditional batches are idempotent). The default retries it
//!   once, on the same node, which picks the same dead node again.
//! - **a read that timed out** (`ReadTimeout`) because a replica the coordinator asked died
//!   before answering. Reads are idempotent; another coordinator picks its replicas afresh. Once.
//! - **a node that refused the request** (`Overloaded`): a node shutting down answers every
//!   request it gets meanwhile with it ("Server is shutting down"), as does one shedding load.
//!   It refused before doing anything, so any statement goes to the next node, a lightweight
//!   transaction included (the default moves only idempotent ones, so a rolling restart failed
//!   sign-ups).
//!
//! Everything else follows the default: a statement that might have been applied is retried only
//! when it is idempotent ([`Keyspace::prepare`](super::Keyspace::prepare) marks which are); a
//! lightweight transaction never is (its second attempt could see its own first one and report
//! "not applied"): its caller reads back and decides ([`Lwt::Unknown`](super::Lwt::Unknown)).

use scylla::errors::{DbError, RequestAttemptError, WriteType};
use scylla::policies::retry::{RequestInfo, RetryDecision, RetryPolicy, RetrySession};
use scylla::statement::Consistency;

/// How many times a batch whose batchlog write timed out is tried again (each attempt costs the
/// server's write timeout; the request timeout bounds them all).
const BATCHLOG_RETRIES: u8 = 3;

/// The retry policy of every twtr session (see the [module docs](self)).
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreRetryPolicy;

impl RetryPolicy for StoreRetryPolicy {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(Attempts::default())
    }
}

/// What one statement has used up so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Attempts {
    unavailable: bool,
    read_timeout: bool,
    write_timeout: bool,
    batchlog: u8,
}

impl RetrySession for Attempts {
    fn decide_should_retry(&mut self, request: RequestInfo) -> RetryDecision {
        self.decide(request.error, request.is_idempotent, request.consistency)
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

impl Attempts {
    fn decide(
        &mut self,
        error: &RequestAttemptError,
        idempotent: bool,
        consistency: Consistency,
    ) -> RetryDecision {
        use RetryDecision::{DontRetry, RetryNextTarget, RetrySameTarget};
        // A read at SERIAL is a Paxos round of its own; its caller decides, as for any LWT.
        if consistency.is_serial() {
            return DontRetry;
        }
        let next_if_idempotent = if idempotent {
            RetryNextTarget(None)
        } else {
            DontRetry
        };
        match error {
            // Sent, perhaps applied, then the node went away: kill -9, a crash, a network cut.
            RequestAttemptError::BrokenConnectionError(_) => next_if_idempotent,
            // Every stream of the connection is taken: nothing was sent.
            RequestAttemptError::UnableToAllocStreamId => RetryNextTarget(None),
            RequestAttemptError::DbError(db_error, _) => match db_error {
                // Refused up front, nothing done: shutting down, or shedding load.
                DbError::Overloaded => RetryNextTarget(None),
                // Something went wrong while doing it: perhaps done in part.
                DbError::ServerError | DbError::TruncateError => next_if_idempotent,
                // The coordinator thinks too few replicas are alive to even try (its failure
                // detector may be behind or ahead of the others'); nothing was applied.
                DbError::Unavailable { .. } if !self.unavailable => {
                    self.unavailable = true;
                    RetryNextTarget(None)
                }
                DbError::IsBootstrapping => RetryNextTarget(None),
                // Enough replicas answered but only with digests: the data is there, ask again
                // (the driver's default, kept).
                DbError::ReadTimeout {
                    received,
                    required,
                    data_present: false,
                    ..
                } if received >= required && !self.read_timeout => {
                    self.read_timeout = true;
                    RetrySameTarget(None)
                }
                // Too few replicas answered in time: one of them died mid-read. Another
                // coordinator asks replicas afresh.
                DbError::ReadTimeout { .. } if idempotent && !self.read_timeout => {
                    self.read_timeout = true;
                    RetryNextTarget(None)
                }
                // The batchlog comes before any of the batch's writes, none of which was sent;
                // a copy of the batchlog on a live node may still replay it later.
                DbError::WriteTimeout {
                    write_type: WriteType::BatchLog,
                    ..
                } if idempotent && self.batchlog < BATCHLOG_RETRIES => {
                    self.batchlog += 1;
                    RetryNextTarget(None)
                }
                // A plain write that reached too few replicas in time: perhaps applied on some.
                // Idempotent ones go again once, elsewhere (the driver's default does not, to
                // spare an overloaded cluster; one retry keeps that bounded).
                DbError::WriteTimeout {
                    write_type: WriteType::Simple | WriteType::Batch | WriteType::UnloggedBatch,
                    ..
                } if idempotent && !self.write_timeout => {
                    self.write_timeout = true;
                    RetryNextTarget(None)
                }
                _ => DontRetry,
            },
            _ => DontRetry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::OperationType;

    fn db(error: DbError) -> RequestAttemptError {
        RequestAttemptError::DbError(error, String::new())
    }

    fn write_timeout(write_type: WriteType) -> RequestAttemptError {
        db(DbError::WriteTimeout {
            consistency: Consistency::LocalQuorum,
            received: 1,
            required: 2,
            write_type,
        })
    }

    fn read_timeout(received: i32, data_present: bool) -> RequestAttemptError {
        db(DbError::ReadTimeout {
            consistency: Consistency::LocalQuorum,
            received,
            required: 2,
            data_present,
        })
    }

    fn decide(
        attempts: &mut Attempts,
        error: &RequestAttemptError,
        idempotent: bool,
    ) -> RetryDecision {
        attempts.decide(error, idempotent, Consistency::LocalQuorum)
    }

    #[test]
    fn a_timed_out_batchlog_goes_to_the_next_node_a_few_times_when_idempotent() {
        let mut attempts = Attempts::default();
        let error = write_timeout(WriteType::BatchLog);
        for _ in 0..BATCHLOG_RETRIES {
            assert_eq!(
                decide(&mut attempts, &error, true),
                RetryDecision::RetryNextTarget(None)
            );
        }
        assert_eq!(
            decide(&mut attempts, &error, true),
            RetryDecision::DontRetry
        );
        assert_eq!(
            decide(&mut Attempts::default(), &error, false),
            RetryDecision::DontRetry,
            "a batchlog copy on a live node may replay it: not again unless idempotent"
        );
    }

    #[test]
    fn a_lightweight_transaction_is_never_retried() {
        let mut attempts = Attempts::default();
        assert_eq!(
            decide(&mut attempts, &write_timeout(WriteType::Cas), false),
            RetryDecision::DontRetry
        );
        assert_eq!(
            attempts.decide(&read_timeout(1, false), true, Consistency::LocalSerial),
            RetryDecision::DontRetry,
            "a read at LOCAL_SERIAL is a Paxos round"
        );
    }

    #[test]
    fn reads_that_timed_out_go_to_the_next_node_once() {
        let mut attempts = Attempts::default();
        assert_eq!(
            decide(&mut attempts, &read_timeout(1, false), true),
            RetryDecision::RetryNextTarget(None)
        );
        assert_eq!(
            decide(&mut attempts, &read_timeout(1, false), true),
            RetryDecision::DontRetry
        );
        let mut attempts = Attempts::default();
        assert_eq!(
            decide(&mut attempts, &read_timeout(2, false), true),
            RetryDecision::RetrySameTarget(None),
            "only digests came back: the data is there"
        );
    }

    #[test]
    fn writes_that_may_have_been_applied_are_retried_only_when_idempotent() {
        let error = write_timeout(WriteType::Simple);
        assert_eq!(
            decide(&mut Attempts::default(), &error, false),
            RetryDecision::DontRetry
        );
        let mut attempts = Attempts::default();
        assert_eq!(
            decide(&mut attempts, &error, true),
            RetryDecision::RetryNextTarget(None)
        );
        assert_eq!(
            decide(&mut attempts, &error, true),
            RetryDecision::DontRetry
        );
        let failed = db(DbError::ServerError);
        assert_eq!(
            decide(&mut Attempts::default(), &failed, false),
            RetryDecision::DontRetry
        );
        assert_eq!(
            decide(&mut Attempts::default(), &failed, true),
            RetryDecision::RetryNextTarget(None)
        );
    }

    #[test]
    fn a_refusal_goes_to_the_next_node_whatever_the_statement() {
        let refused = db(DbError::Overloaded);
        assert_eq!(
            decide(&mut Attempts::default(), &refused, false),
            RetryDecision::RetryNextTarget(None),
            "a node shutting down did nothing with it"
        );
    }

    #[test]
    fn unavailable_goes_to_the_next_node_once() {
        let mut attempts = Attempts::default();
        let error = db(DbError::Unavailable {
            consistency: Consistency::LocalQuorum,
            required: 2,
            alive: 1,
        });
        assert_eq!(
            decide(&mut attempts, &error, false),
            RetryDecision::RetryNextTarget(None)
        );
        assert_eq!(
            decide(&mut attempts, &error, false),
            RetryDecision::DontRetry
        );
    }

    #[test]
    fn errors_no_other_node_would_answer_differently_are_not_retried() {
        for error in [
            db(DbError::SyntaxError),
            db(DbError::Invalid),
            db(DbError::WriteFailure {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                numfailures: 1,
                write_type: WriteType::Simple,
            }),
            db(DbError::ReadFailure {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                numfailures: 1,
                data_present: false,
            }),
            db(DbError::FunctionFailure {
                keyspace: String::new(),
                function: String::new(),
                arg_types: Vec::new(),
            }),
            db(DbError::RateLimitReached {
                op_type: OperationType::Write,
                rejected_by_coordinator: true,
            }),
        ] {
            assert_eq!(
                decide(&mut Attempts::default(), &error, true),
                RetryDecision::DontRetry,
                "{error}"
            );
        }
    }
}
