//! The `twtr.events.v1.DeadLetters` gRPC service: an operator's handle on one consumer queue's
//! dead letters, over whichever bus the process runs ([`EventBus::dead_letters`] and
//! [`EventBus::redrive`]). Every consuming service serves it for its own queue.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twtr_proto::events::v1::dead_letters_server::{self, DeadLettersServer};
use twtr_proto::events::v1::{
    DeadLetter as DeadLetterMessage, ListDeadLettersRequest, ListDeadLettersResponse,
    RedriveDeadLettersRequest, RedriveDeadLettersResponse,
};

use super::{BusError, EventBus};
use crate::clock;
use crate::error::error_chain;

/// Dead letters listed when a request does not say, and the most it may ask for.
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 1000;
/// Dead letters re-driven when a request does not say, and the most it may ask for.
const REDRIVE_DEFAULT: u32 = 1000;
const REDRIVE_MAX: u32 = 10_000;

/// Serves the dead letters of `queue` on `bus`.
pub struct DeadLetterAdmin {
    bus: Arc<dyn EventBus>,
    queue: String,
}

impl DeadLetterAdmin {
    pub fn server(bus: Arc<dyn EventBus>, queue: &str) -> DeadLettersServer<Self> {
        DeadLettersServer::new(Self {
            bus,
            queue: queue.to_owned(),
        })
    }
}

/// `limit` as asked (0: `default`), refused above `max`.
fn limit(asked: u32, default: u32, max: u32) -> Result<usize, Status> {
    match asked {
        0 => Ok(default as usize),
        n if n <= max => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "limit must be at most {max}, got {n}"
        ))),
    }
}

fn unavailable(err: &BusError) -> Status {
    tracing::warn!(error = %error_chain(err), "dead-letter request failed");
    Status::unavailable(format!("the event bus cannot answer: {err}"))
}

#[tonic::async_trait]
impl dead_letters_server::DeadLetters for DeadLetterAdmin {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let max = limit(request.into_inner().limit, LIST_DEFAULT, LIST_MAX)?;
        let dead = self
            .bus
            .dead_letters(&self.queue, max)
            .await
            .map_err(|err| unavailable(&err))?;
        let stamp = |ms: i64| (ms > 0).then(|| clock::to_timestamp(ms));
        let items = dead
            .into_iter()
            .map(|letter| {
                let event = letter.decode().ok();
                DeadLetterMessage {
                    undecodable_body: if event.is_some() {
                        Vec::new()
                    } else {
                        letter.body
                    },
                    event,
                    attempts: letter.attempts,
                    error: letter.error,
                    first_failed_at: stamp(letter.first_failed_at_ms),
                    dead_at: stamp(letter.dead_at_ms),
                }
            })
            .collect();
        Ok(Response::new(ListDeadLettersResponse {
            queue: self.queue.clone(),
            items,
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<RedriveDeadLettersRequest>,
    ) -> Result<Response<RedriveDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let max = limit(request.limit, REDRIVE_DEFAULT, REDRIVE_MAX)?;
        let moved = self
            .bus
            .redrive(&self.queue, max, &request.event_ids)
            .await
            .map_err(|err| unavailable(&err))?;
        tracing::info!(
            queue = self.queue,
            redriven = moved,
            "dead letters re-driven"
        );
        Ok(Response::new(RedriveDeadLettersResponse {
            redriven: u32::try_from(moved).unwrap_or(u32::MAX),
        }))
    }
}
