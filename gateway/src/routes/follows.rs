//! The follow graph: the caller follows or unfollows a user; anyone reads a user's followers
//! and following.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use twtr_proto::followers::v1::{
    FollowRequest, ListFollowsRequest, SuggestFollowsRequest, UnfollowRequest,
};
use twtr_proto::users::v1::GetUserRequest;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, PageParams, parse_id};
use crate::openapi::{ErrorBody, PageQuery, UserIdPath};
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, PageView, UserView};

#[utoipa::path(
    post,
    path = "/v1/users/{id}/follow",
    tag = "follows",
    summary = "Follow a user (idempotent)",
    security(("bearer" = [])),
    params(UserIdPath),
    responses(
        (status = 204, description = "the caller follows the user"),
        (status = 400, description = "the ID is not a decimal ID, or is the caller's", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn follow(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let followee_id = parse_id(&id, "user id")?;
    let request = FollowRequest {
        follower_id: me,
        followee_id,
    };
    state.up().followers.clone().follow(rpc(request)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete,
    path = "/v1/users/{id}/follow",
    tag = "follows",
    summary = "Unfollow a user (idempotent)",
    security(("bearer" = [])),
    params(UserIdPath),
    responses(
        (status = 204, description = "the caller does not follow the user"),
        (status = 400, description = "the ID is not a decimal ID, or is the caller's", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn unfollow(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let followee_id = parse_id(&id, "user id")?;
    if followee_id == me {
        return Err(ApiError::invalid("you cannot unfollow yourself"));
    }
    let request = UnfollowRequest {
        follower_id: me,
        followee_id,
    };
    let removed = state
        .up()
        .followers
        .clone()
        .unfollow(rpc(request))
        .await?
        .into_inner()
        .removed;
    if !removed {
        // Nothing to undo is fine, but only for a user who exists.
        let lookup = GetUserRequest {
            user_id: followee_id,
        };
        state.up().users.clone().get_user(rpc(lookup)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Which list of a user a page is from.
#[derive(Debug, Clone, Copy)]
enum FollowList {
    Followers,
    Following,
}

/// A page of a user's followers or following, newest follow first, as hydrated users; 404 for
/// an unknown or deleted user. Four RPCs whatever the page size: the list, one users batch
/// (with the list's owner, for the 404), and the two count batches.
async fn follow_list(
    state: &AppState,
    id: &str,
    page: twtr_common::PageRequest,
    list: FollowList,
) -> Result<Json<PageView<UserView>>, ApiError> {
    let user_id = parse_id(id, "user id")?;
    let request = rpc(ListFollowsRequest {
        user_id,
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    });
    let mut followers = state.up().followers.clone();
    let page = match list {
        FollowList::Followers => followers.list_followers(request).await?,
        FollowList::Following => followers.list_following(request).await?,
    }
    .into_inner();
    let listed = page.entries.iter().map(|entry| entry.user_id).collect();
    let users = views::listed_users(state.up(), user_id, listed)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(Json(PageView::new(users, page.next)))
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/followers",
    tag = "follows",
    summary = "Who follows a user, newest first",
    params(UserIdPath, PageQuery),
    responses(
        (status = 200, description = "a page of users", body = PageView<UserView>),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn followers(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<UserView>>, ApiError> {
    follow_list(&state, &id, page, FollowList::Followers).await
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/following",
    tag = "follows",
    summary = "Whom a user follows, newest first",
    params(UserIdPath, PageQuery),
    responses(
        (status = 200, description = "a page of users", body = PageView<UserView>),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn following(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<UserView>>, ApiError> {
    follow_list(&state, &id, page, FollowList::Following).await
}

/// `?limit=` of the suggestions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SuggestionsQuery {
    /// How many suggestions (1 to 50, default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 50)]
    limit: Option<String>,
}

/// Someone the caller might follow.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestionView {
    pub user: UserView,
    /// How many of the people the caller follows (of their 100 newest follows) follow them.
    pub followed_by: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestionsView {
    pub items: Vec<SuggestionView>,
}

#[utoipa::path(
    get,
    path = "/v1/users/me/suggestions",
    tag = "follows",
    summary = "People the caller might follow: followed by the people they follow",
    description = "Ranked by how many of the people the caller follows follow them, then by \
        follower count; never the caller, anyone they follow, or a deleted account. Bounded \
        work: the caller's 100 newest follows, and the 100 newest follows of each of those.",
    security(("bearer" = [])),
    params(SuggestionsQuery),
    responses(
        (status = 200, description = "the suggestions, best first", body = SuggestionsView),
        (status = 400, description = "a bad limit", body = ErrorBody),
    )
)]
pub(super) async fn suggestions(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    query: Result<Query<SuggestionsQuery>, QueryRejection>,
) -> Result<Json<SuggestionsView>, ApiError> {
    // A query axum cannot read (`?limit=1&limit=2`) gets the API's JSON 400, not axum's text.
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    // 0 asks the followers service for its default.
    let limit = super::discovery::parse_limit(query.limit.as_deref(), 0, 50)?;
    let suggested = state
        .up()
        .followers
        .clone()
        .suggest_follows(rpc(SuggestFollowsRequest { user_id: me, limit }))
        .await?
        .into_inner()
        .suggestions;
    let listed = suggested.iter().map(|s| s.user_id).collect();
    // The caller is the list's owner: a deleted caller is a 404, as for their own lists.
    let users = views::listed_users(state.up(), me, listed)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    let support: std::collections::HashMap<u64, u32> = suggested
        .iter()
        .map(|s| (s.user_id, s.followed_by))
        .collect();
    let items = users
        .into_iter()
        .map(|user| {
            let followed_by = user
                .id
                .parse()
                .ok()
                .and_then(|id: u64| support.get(&id).copied())
                .unwrap_or_default();
            SuggestionView { user, followed_by }
        })
        .collect();
    Ok(Json(SuggestionsView { items }))
}
