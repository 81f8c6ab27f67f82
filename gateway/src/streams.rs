//! Live feeds at the edge (`GET /v1/feed/stream`): the slots that bound them, and the
//! Server-Sent Events a feeds service's `WatchFeed` messages become.
//!
//! A stream holds no in-flight slot and has no deadline (it lasts as long as the client
//! stays); what bounds it is [`StreamSlots`] (per gateway and per caller), the caller's token
//! (the stream ends when it expires or is revoked), the gateway's shutdown, and the upstream's
//! keep-alives (a stream whose feeds replica falls silent for [`UPSTREAM_SILENCE`] ends, so the
//! client reconnects to a live one).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use tonic::Streaming;
use twtr_common::tokens::Verified;
use twtr_proto::feeds::v1::WatchFeedResponse;

use crate::error::ApiError;
use crate::limits::StreamLimits;
use crate::state::AppState;
use crate::upstream;
use crate::views::{self, Listed};

/// How long a stream waits for its feeds replica, which sends a keep-alive at least every 15 s
/// (`TWTR_FEED_STREAM_KEEPALIVE_MS`, at most 30 s), before it ends.
pub const UPSTREAM_SILENCE: Duration = Duration::from_secs(60);
/// How long to wait before trying again after a 429 for too many streams.
const RETRY_AFTER_SECS: u64 = 5;

/// The live feeds one gateway serves, in all and per caller.
#[derive(Debug)]
pub struct StreamSlots {
    limits: StreamLimits,
    total: AtomicUsize,
    per_caller: Mutex<HashMap<u64, usize>>,
}

/// One stream's slot; freed when dropped (the stream ended, or its client went).
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    caller: u64,
}

impl StreamSlots {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            total: AtomicUsize::new(0),
            per_caller: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more stream of `caller`, or a 429 that says which limit is reached.
    pub fn acquire(self: &Arc<Self>, caller: u64) -> Result<StreamSlot, ApiError> {
        let mut per_caller = twtr_common::lock(&self.per_caller);
        let held = per_caller.get(&caller).copied().unwrap_or(0);
        if held >= self.limits.per_caller {
            return Err(ApiError::rate_limited(
                format!(
                    "you have {held} live feeds open on this server, the most allowed; close one"
                ),
                RETRY_AFTER_SECS,
            ));
        }
        if self.total.load(Ordering::Relaxed) >= self.limits.total {
            return Err(ApiError::rate_limited(
                "this server streams as many live feeds as it can; retry later",
                RETRY_AFTER_SECS,
            ));
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        per_caller.insert(caller, held + 1);
        twtr_common::metrics::live_streams(self.total.load(Ordering::Relaxed));
        Ok(StreamSlot {
            slots: Arc::clone(self),
            caller,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut per_caller = twtr_common::lock(&self.slots.per_caller);
        if let Some(held) = per_caller.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                per_caller.remove(&self.caller);
            }
        }
        let open = self.slots.total.fetch_sub(1, Ordering::Relaxed) - 1;
        twtr_common::metrics::live_streams(open);
    }
}

/// Who a stream is for: the caller, their token (forwarded with every hydration) and when it
/// expires.
pub struct Viewer {
    pub user: u64,
    pub token: String,
    pub verified: Verified,
    pub expires_at: tokio::time::Instant,
}

/// The events of one live feed: `ready` (its first, with `{"reset": bool}`), then `tweet` for
/// each new item of the home feed (the JSON of a feed page's items) and `keep-alive` when
/// quiet, each with the `id` to resume after it. Ends at shutdown, when the token expires or is
/// revoked, when the upstream ends or falls silent, or with an `error` event when an item
/// cannot be shown (the client resumes from the last `id` and gets it again).
pub fn events(
    state: AppState,
    viewer: Viewer,
    slot: StreamSlot,
    upstream: Streaming<WatchFeedResponse>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        run(&state, &viewer, upstream, &tx).await;
        drop(slot);
    });
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

async fn run(
    state: &AppState,
    viewer: &Viewer,
    mut upstream: Streaming<WatchFeedResponse>,
    tx: &tokio::sync::mpsc::Sender<Event>,
) {
    let mut first = true;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(UPSTREAM_SILENCE, upstream.message()) => message,
            () = state.shutdown().cancelled() => return,
            () = tokio::time::sleep_until(viewer.expires_at) => return,
            () = tx.closed() => return,
        };
        let message = match message {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), "the live feed's upstream ended");
                return;
            }
            Err(_) => {
                tracing::warn!("the live feed's upstream fell silent; ending the stream");
                return;
            }
        };
        // Revocation holds for streams too: checked at every message (a keep-alive at least
        // every few seconds), against the same cache as requests.
        if state.revocations().check(viewer.verified).await.is_err() {
            return;
        }
        let event = match message.entry {
            None if first => Event::default()
                .event("ready")
                .data(format!("{{\"reset\":{}}}", message.reset)),
            None => Event::default().event("keep-alive").data("{}"),
            Some(entry) => {
                let shown = upstream::scope(upstream::DEFAULT_REQUEST_TIMEOUT, async {
                    upstream::forward_token(&viewer.token);
                    views::tweets(state.up(), Some(viewer.user), Listed::Feed(vec![entry])).await
                })
                .await;
                match shown {
                    Ok(mut items) => match items.pop() {
                        Some(item) => match Event::default().event("tweet").json_data(item) {
                            Ok(event) => event,
                            Err(_) => return,
                        },
                        // Deleted since it arrived: nothing to show, but the cursor moves on.
                        None => Event::default().event("keep-alive").data("{}"),
                    },
                    Err(err) => {
                        let body = serde_json::json!({
                            "error": { "code": err.code.as_str(), "message": err.message }
                        });
                        let _ = tx
                            .send(Event::default().event("error").data(body.to_string()))
                            .await;
                        return;
                    }
                }
            }
        };
        first = false;
        if tx.send(event.id(message.cursor)).await.is_err() {
            return;
        }
    }
}
