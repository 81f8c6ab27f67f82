//! Token revocation at the gateway, without an RPC per request.
//!
//! A token is signed, so the gateway can verify it alone; what it cannot know alone is whether
//! the account was deleted, or its password changed, after the token was issued. The users
//! service answers that (`GetTokenStates`: is the account live, what is its token generation),
//! and the gateway remembers each answer for [`FRESH_FOR`]. So a revoked token stops working
//! within that time, and a busy user costs one small RPC per period, not one per request. If the
//! users service cannot be reached (unavailable or timed out, and only then: never when it
//! refused the question), an answer up to [`STALE_FOR`] old is used rather than failing every
//! request.
//!
//! The questions are batched: while one `GetTokenStates` is in flight, the users asked about
//! meanwhile wait together and go out in the next one, at most [`MAX_BATCH`] at a time (the users
//! service's limit). Under load a call answers many requests (and the same user asked twice is
//! asked once); a lone request waits for nobody.
//!
//! [`MAX_BATCH`]: twtr_common::page::MAX_BATCH

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::transport::Channel;
use twtr_common::tokens::Verified;
use twtr_common::{ErrorCode, lock};
use twtr_proto::users::v1::GetTokenStatesRequest;
use twtr_proto::users::v1::users_service_client::UsersServiceClient;

use crate::error::ApiError;
use crate::upstream::rpc;

/// How long an answer is trusted: the most a revoked token keeps working.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// How long an answer may stand in while the users service is unreachable.
const STALE_FOR: Duration = Duration::from_secs(60);
/// Answers kept at most (a few MB); beyond it, stale ones are dropped first.
const CAPACITY: usize = 100_000;
/// Users asked about in one call at most: the users service's own limit, the one constant both
/// sides share (512 here once made every call of a burst a refusal).
const BATCH_MAX: usize = twtr_common::page::MAX_BATCH;
/// How long one batched call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct State {
    active: bool,
    generation: u64,
    fetched: Instant,
}

type Answer = Result<State, tonic::Status>;

/// Cheap to clone: every clone shares the answers and the batch.
#[derive(Clone)]
pub struct Revocations {
    shared: Arc<Shared>,
}

struct Shared {
    users: UsersServiceClient<Channel>,
    states: Mutex<HashMap<u64, State>>,
    asking: Mutex<Asking>,
}

/// The users waiting for the next call, and whether a call is under way.
#[derive(Default)]
struct Asking {
    waiting: HashMap<u64, Vec<oneshot::Sender<Answer>>>,
    calling: bool,
}

impl Revocations {
    pub fn new(users: UsersServiceClient<Channel>) -> Self {
        Self {
            shared: Arc::new(Shared {
                users,
                states: Mutex::new(HashMap::new()),
                asking: Mutex::new(Asking::default()),
            }),
        }
    }

    fn cached(&self, user_id: u64) -> Option<State> {
        lock(&self.shared.states).get(&user_id).copied()
    }

    /// Forgets what is known about `user_id`, so the next request asks again: called by the
    /// gateway that handled a password change or deletion, which therefore takes effect at once
    /// there (and within [`FRESH_FOR`] on the other replicas).
    pub fn forget(&self, user_id: u64) {
        lock(&self.shared.states).remove(&user_id);
    }

    /// Accepts the caller of a verified token unless their account is gone or the token
    /// predates their last password change.
    pub async fn check(&self, token: Verified) -> Result<(), ApiError> {
        let cached = self.cached(token.user_id);
        let state = match cached {
            Some(state) if state.fetched.elapsed() < FRESH_FOR => state,
            _ => match self.fetch(token.user_id).await {
                Ok(state) => state,
                Err(err) => match cached {
                    Some(state) if unreachable(&err) && state.fetched.elapsed() < STALE_FOR => {
                        tracing::warn!(
                            user_id = token.user_id,
                            "users service unreachable; checking the token against an older answer"
                        );
                        state
                    }
                    _ => return Err(err.into()),
                },
            },
        };
        if !state.active {
            return Err(ApiError::unauthenticated("this account no longer exists"));
        }
        if token.generation < state.generation {
            return Err(ApiError::unauthenticated(
                "this token was revoked (the password changed); log in again",
            ));
        }
        Ok(())
    }

    /// Asks the users service about `user_id`, in the next batch.
    async fn fetch(&self, user_id: u64) -> Answer {
        let (answer, answered) = oneshot::channel();
        let start_calling = {
            let mut asking = lock(&self.shared.asking);
            asking.waiting.entry(user_id).or_default().push(answer);
            !std::mem::replace(&mut asking.calling, true)
        };
        if start_calling {
            tokio::spawn(Arc::clone(&self.shared).call_while_asked());
        }
        answered
            .await
            .unwrap_or_else(|_| Err(tonic::Status::internal("the revocation check was dropped")))
    }
}

/// Whether a failed `GetTokenStates` means the users service could not answer (down, broken
/// connection, overloaded, timed out), when an older answer may stand in. Any other failure is
/// an answer (a refusal, a bug) and must not be papered over with a stale state: that once let a
/// revoked token through when every call of a burst was refused.
pub(crate) fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        ErrorCode::from_status(status),
        ErrorCode::Unavailable | ErrorCode::DeadlineExceeded
    )
}

impl Shared {
    /// Calls `GetTokenStates` for everyone waiting, again and again until nobody is.
    async fn call_while_asked(self: Arc<Self>) {
        loop {
            let batch: Vec<(u64, Vec<oneshot::Sender<Answer>>)> = {
                let mut asking = lock(&self.asking);
                if asking.waiting.is_empty() {
                    asking.calling = false;
                    return;
                }
                let users: Vec<u64> = asking.waiting.keys().take(BATCH_MAX).copied().collect();
                users
                    .into_iter()
                    .filter_map(|user| asking.waiting.remove_entry(&user))
                    .collect()
            };
            let ids = batch.iter().map(|(user, _)| *user).collect();
            let answers = self.call(ids).await;
            for (user, waiters) in batch {
                let answer = answers.as_ref().map_err(Clone::clone).map(|states| {
                    // A user the service does not know is not active.
                    states.get(&user).copied().unwrap_or(State {
                        active: false,
                        generation: 0,
                        fetched: Instant::now(),
                    })
                });
                if let Ok(state) = answer {
                    self.remember(user, state);
                }
                for waiter in waiters {
                    let _ = waiter.send(answer.clone());
                }
            }
        }
    }

    async fn call(&self, user_ids: Vec<u64>) -> Result<HashMap<u64, State>, tonic::Status> {
        let mut request = rpc(GetTokenStatesRequest { user_ids });
        request.set_timeout(CALL_TIMEOUT);
        let response = self
            .users
            .clone()
            .get_token_states(request)
            .await?
            .into_inner();
        let fetched = Instant::now();
        Ok(response
            .states
            .into_iter()
            .map(|s| {
                let state = State {
                    active: s.active,
                    generation: s.generation,
                    fetched,
                };
                (s.user_id, state)
            })
            .collect())
    }

    fn remember(&self, user_id: u64, state: State) {
        let mut states = lock(&self.states);
        if states.len() >= CAPACITY {
            states.retain(|_, s| s.fetched.elapsed() < FRESH_FOR);
            if states.len() >= CAPACITY {
                states.clear();
            }
        }
        states.insert(user_id, state);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use twtr_common::page::MAX_BATCH;

    use super::*;
    use crate::fake_users::{self, FakeUsers};

    async fn serve(fake: Arc<FakeUsers>) -> Revocations {
        Revocations::new(fake_users::serve(fake).await)
    }

    fn token(user_id: u64, generation: u64) -> Verified {
        Verified {
            user_id,
            generation,
        }
    }

    /// An answer old enough to be asked again, as if fetched `FRESH_FOR` ago.
    fn remember_old(revocations: &Revocations, user_id: u64, generation: u64) {
        let fetched = Instant::now()
            .checked_sub(FRESH_FOR + Duration::from_millis(100))
            .unwrap();
        revocations.shared.remember(
            user_id,
            State {
                active: true,
                generation,
                fetched,
            },
        );
    }

    /// The security pass: a burst batched 512 users per call against a limit of 500, and every
    /// such call was refused.
    #[tokio::test]
    async fn a_burst_is_asked_in_batches_the_users_service_accepts() {
        let fake = Arc::new(FakeUsers::default());
        let revocations = serve(Arc::clone(&fake)).await;
        let mut checks = tokio::task::JoinSet::new();
        for user in 1..=3 * MAX_BATCH as u64 {
            let revocations = revocations.clone();
            checks.spawn(async move { revocations.check(token(user, 0)).await });
        }
        while let Some(answer) = checks.join_next().await {
            assert!(answer.unwrap().is_ok());
        }
        let largest = fake.largest_batch.load(Ordering::SeqCst);
        assert!((1..=MAX_BATCH).contains(&largest), "{largest}");
    }

    /// A refusal is an answer, not an outage: no older state stands in for it.
    #[tokio::test]
    async fn an_older_answer_stands_in_only_when_the_users_service_is_unreachable() {
        let fake = Arc::new(FakeUsers::default());
        let revocations = serve(Arc::clone(&fake)).await;
        for (code, stands_in) in [
            (tonic::Code::Unavailable, true),
            (tonic::Code::DeadlineExceeded, true),
            (tonic::Code::InvalidArgument, false),
            (tonic::Code::Internal, false),
            (tonic::Code::PermissionDenied, false),
        ] {
            *lock(&fake.failing) = Some(code);
            remember_old(&revocations, 7, 0);
            let answer = revocations.check(token(7, 0)).await;
            assert_eq!(answer.is_ok(), stands_in, "{code:?}: {answer:?}");
        }
        // Once the service answers again, a revoked token is refused.
        *lock(&fake.failing) = None;
        fake.generation.store(5, Ordering::SeqCst);
        remember_old(&revocations, 7, 0);
        assert!(revocations.check(token(7, 0)).await.is_err());
        assert!(revocations.check(token(7, 5)).await.is_ok());
    }
}
