//! The public timeline: everyone's tweets, newest first.

use axum::Json;
use axum::extract::State;
use twtr_proto::tweets::v1::GetPublicTimelineRequest;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, PageParams};
use crate::openapi::PageQuery;
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, PageView, TweetView};

#[utoipa::path(
    get,
    path = "/v1/timeline",
    tag = "tweets",
    summary = "Everyone's tweets, newest first",
    security((), ("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
    )
)]
pub(super) async fn timeline(
    State(state): State<AppState>,
    viewer: Option<AuthenticatedUser>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<TweetView>>, ApiError> {
    let request = GetPublicTimelineRequest {
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    };
    let page = state
        .up()
        .tweets
        .clone()
        .get_public_timeline(rpc(request))
        .await?
        .into_inner();
    let viewer = viewer.map(|AuthenticatedUser(id)| id);
    Ok(Json(views::tweet_page(state.up(), viewer, page).await?))
}
