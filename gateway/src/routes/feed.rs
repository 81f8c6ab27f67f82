//! The caller's home feed: their tweets and those of whom they follow, retweets included.

use axum::Json;
use axum::extract::State;
use twtr_proto::feeds::v1::GetFeedRequest;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, PageParams};
use crate::openapi::PageQuery;
use crate::state::AppState;
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
