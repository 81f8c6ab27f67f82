//! Token revocation at the gateway, without an RPC per request.
//!
//! A token is signed, so the gateway can verify it alone; what it cannot know alone is whether
//! the account was deleted, or its password changed, after the token was issued. The users
//! service answers that (`GetTokenStates`: is the account live, what is its token generation),
//! and the gateway remembers each answer for [`FRESH_FOR`]. So a revoked token stops working
//! within that time, and a busy user costs one small RPC per period, not one per request. If the
//! users service cannot be reached, an answer up to [`STALE_FOR`] old is used rather than
//! failing every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use twtr_common::tokens::Verified;
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

#[derive(Debug, Clone, Copy)]
struct State {
    active: bool,
    generation: u64,
    fetched: Instant,
}

pub struct Revocations {
    users: UsersServiceClient<Channel>,
    states: Mutex<HashMap<u64, State>>,
}

impl Revocations {
    pub fn new(users: UsersServiceClient<Channel>) -> Self {
        Self {
            users,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, user_id: u64) -> Option<State> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user_id)
            .copied()
    }

    fn remember(&self, user_id: u64, state: State) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= CAPACITY {
            states.retain(|_, s| s.fetched.elapsed() < FRESH_FOR);
            if states.len() >= CAPACITY {
                states.clear();
            }
        }
        states.insert(user_id, state);
    }

    /// Forgets what is known about `user_id`, so the next request asks again: called by the
    /// gateway that handled a password change or deletion, which therefore takes effect at once
    /// there (and within [`FRESH_FOR`] on the other replicas).
    pub fn forget(&self, user_id: u64) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&user_id);
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
                    Some(state) if state.fetched.elapsed() < STALE_FOR => {
                        tracing::warn!(
                            user_id = token.user_id,
                            "users service unreachable; checking the token against an older answer"
                        );
                        state
                    }
                    _ => return Err(err),
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

    async fn fetch(&self, user_id: u64) -> Result<State, ApiError> {
        let request = GetTokenStatesRequest {
            user_ids: vec![user_id],
        };
        let response = self
            .users
            .clone()
            .get_token_states(rpc(request))
            .await?
            .into_inner();
        let state = response
            .states
            .into_iter()
            .find(|s| s.user_id == user_id)
            .map_or(
                State {
                    active: false,
                    generation: 0,
                    fetched: Instant::now(),
                },
                |s| State {
                    active: s.active,
                    generation: s.generation,
                    fetched: Instant::now(),
                },
            );
        self.remember(user_id, state);
        Ok(state)
    }
}
