//! Reactions to a tweet: like and retweet, and their undoing, each idempotent.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use twtr_proto::tweets::v1::TweetActionRequest;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, parse_id};
use crate::openapi::{ErrorBody, TweetIdPath};
use crate::state::AppState;
use crate::upstream::rpc;

/// What a caller does to someone's tweet.
#[derive(Debug, Clone, Copy)]
enum Act {
    Like,
    Unlike,
    Retweet,
    Unretweet,
}

/// Like, unlike, retweet or unretweet: 204 whether or not the call changed anything (each is
/// idempotent); 404 for an unknown or deleted tweet.
async fn act(state: &AppState, me: u64, id: &str, act: Act) -> Result<StatusCode, ApiError> {
    let tweet_id = parse_id(id, "tweet id")?;
    let request = rpc(TweetActionRequest {
        tweet_id,
        user_id: me,
    });
    let mut tweets = state.up().tweets.clone();
    match act {
        Act::Like => tweets.like_tweet(request).await?,
        Act::Unlike => tweets.unlike_tweet(request).await?,
        Act::Retweet => tweets.retweet(request).await?,
        Act::Unretweet => tweets.unretweet(request).await?,
    };
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/tweets/{id}/like",
    tag = "tweets",
    summary = "Like a tweet (idempotent)",
    security(("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 204, description = "done"),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn like(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    act(&state, me, &id, Act::Like).await
}

#[utoipa::path(
    delete,
    path = "/v1/tweets/{id}/like",
    tag = "tweets",
    summary = "Unlike a tweet (idempotent)",
    security(("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 204, description = "done"),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn unlike(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    act(&state, me, &id, Act::Unlike).await
}

#[utoipa::path(
    post,
    path = "/v1/tweets/{id}/retweet",
    tag = "tweets",
    summary = "Retweet a tweet (idempotent)",
    security(("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 204, description = "done"),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn retweet(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    act(&state, me, &id, Act::Retweet).await
}

#[utoipa::path(
    delete,
    path = "/v1/tweets/{id}/retweet",
    tag = "tweets",
    summary = "Undo a retweet (idempotent)",
    security(("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 204, description = "done"),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn unretweet(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    act(&state, me, &id, Act::Unretweet).await
}
