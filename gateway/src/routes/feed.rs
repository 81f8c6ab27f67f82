//! The caller's home feed: their tweets and those of whom they follow, retweets included; as
//! pages, and live.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use futures_util::Stream;
use twtr_common::auth;
use twtr_proto::feeds::v1::{GetFeedRequest, WatchFeedRequest};

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, PageParams};
use crate::openapi::{ErrorBody, PageQuery};
use crate::state::AppState;
use crate::streams;
use crate::upstream::rpc;
use crate::views::{self, Listed, PageView, TweetView};

#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "feed",
    summary = "The caller's home feed, newest first",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "a page of tweets from the caller and whom they follow", body = PageView<TweetView>),
    )
)]
pub(super) async fn feed(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    PageParams(page): PageParams,
) -> Result<Json<PageView<TweetView>>, ApiError> {
    let request = GetFeedRequest {
        user_id: me,
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    };
    let feed = state
        .up()
        .feeds
        .clone()
        .get_feed(rpc(request))
        .await?
        .into_inner();
    let tweets = views::tweets(state.up(), Some(me), Listed::Feed(feed.entries)).await?;
    Ok(Json(PageView::new(tweets, feed.next)))
}

/// The `Last-Event-ID` a client resumes with: at most this long (the cursors feeds issue are
/// far shorter).
const MAX_LAST_EVENT_ID: usize = 8 * 1024;

#[utoipa::path(
    get,
    path = "/v1/feed/stream",
    tag = "feed",
    summary = "The caller's home feed, live (Server-Sent Events)",
    description = "Pushes each new post that arrives in the caller's home feed, as a \
        `text/event-stream`: first a `ready` event (`{\"reset\": bool}`), then a `tweet` event \
        per item (the JSON of a feed page's items) and a `keep-alive` event after 15 s of \
        quiet, each with an `id`. To resume after a disconnection without a gap or a repeat, \
        reconnect with that `id` as `Last-Event-ID` (an EventSource does this on its own); \
        `reset: true` means it was older than the arrivals kept (a day), so reload the feed \
        page. Retweets and the backfill of a new follow reach the feed pages only. The stream \
        ends when the token expires or is revoked and when the server shuts down: reconnect. \
        At most `TWTR_FEED_STREAMS_PER_CALLER` streams per caller and `TWTR_FEED_STREAMS_MAX` \
        in all per gateway replica; past them, 429 with `Retry-After`.",
    security(("bearer" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "the `id` of the last event received, to resume after it"),
    ),
    responses(
        (status = 200, description = "the live feed, until the client leaves", content_type = "text/event-stream", body = String),
        (status = 400, description = "a `Last-Event-ID` this API did not send", body = ErrorBody),
    )
)]
pub(super) async fn feed_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    AuthenticatedUser(me): AuthenticatedUser,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let cursor = match headers.get("last-event-id") {
        None => String::new(),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|id| id.len() <= MAX_LAST_EVENT_ID)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID is not an id this API sent"))?
            .to_owned(),
    };
    // The extractor verified the token; the stream needs it again, and its expiry.
    let token = auth::bearer_token(&headers)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <token> header"))?
        .to_owned();
    let (verified, expires_at) = state
        .tokens()
        .verify_until(&token)
        .map_err(|_| ApiError::unauthenticated("invalid token"))?;
    let slot = state.streams().acquire(me)?;
    let mut request = rpc(WatchFeedRequest {
        user_id: me,
        cursor,
    });
    // A stream has no deadline: it lasts as long as the client stays.
    request.metadata_mut().remove("grpc-timeout");
    let upstream = state
        .up()
        .feeds
        .clone()
        .watch_feed(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::InvalidArgument => {
                ApiError::invalid("Last-Event-ID is not an id this API sent")
            }
            _ => ApiError::from(status),
        })?
        .into_inner();
    let left = (expires_at - twtr_common::clock::now_millis() / 1000).max(0) as u64;
    let viewer = streams::Viewer {
        user: me,
        token,
        verified,
        expires_at: tokio::time::Instant::now() + Duration::from_secs(left),
    };
    let events = streams::events(state, viewer, slot, upstream);
    // No keep-alive comments here: the upstream's keep-alive events carry the cursor.
    Ok(Sse::new(events))
}
