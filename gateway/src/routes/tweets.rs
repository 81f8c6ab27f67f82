//! Tweets: the caller posts or deletes one; anyone reads one, or a user's tweets.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use twtr_common::ErrorCode;
use twtr_proto::tweets::v1::{
    CreateTweetRequest, DeleteTweetRequest, GetTweetRequest, ListUserTweetsRequest,
};
use twtr_proto::users::v1::GetUserRequest;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, JsonBody, PageParams, parse_id};
use crate::openapi::{ErrorBody, IdempotencyKeyHeader, PageQuery, TweetIdPath, UserIdPath};
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, PageView, TweetView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTweetBody {
    /// 1 to 280 characters, counted after NFC normalization and trimming.
    #[schema(min_length = 1, example = "hello, twtr")]
    text: String,
}

/// The header that makes a post safe to retry (the tweets service keeps the key's first tweet).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[utoipa::path(
    post,
    path = "/v1/tweets",
    tag = "tweets",
    summary = "Post a tweet",
    security(("bearer" = [])),
    params(IdempotencyKeyHeader),
    request_body = CreateTweetBody,
    responses(
        (status = 201, description = "the tweet (or, for a repeated Idempotency-Key, the first one)", body = TweetView),
        (status = 400, description = "empty or over 280 characters, or a bad Idempotency-Key", body = ErrorBody),
        (status = 404, description = "the Idempotency-Key's first tweet was deleted since", body = ErrorBody),
    )
)]
pub(super) async fn create_tweet(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateTweetBody>,
) -> Result<(StatusCode, Json<TweetView>), ApiError> {
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => String::new(),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters")
            })?
            .to_owned(),
    };
    let mentions = views::mentions(state.up(), &body.text).await?;
    let fresh = idempotency_key.is_empty();
    let request = CreateTweetRequest {
        author_id: me,
        text: body.text,
        idempotency_key,
        mentions,
    };
    let tweet = state
        .up()
        .tweets
        .clone()
        .create_tweet(rpc(request))
        .await?
        .into_inner();
    // With a key, the answer may be the first attempt's tweet, liked or retweeted since.
    let view = if fresh {
        views::new_tweet(state.up(), tweet).await?
    } else {
        views::tweet(state.up(), Some(me), tweet).await?
    }
    .ok_or_else(|| ApiError::new(ErrorCode::Internal, "hydration lost an item"))?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    get,
    path = "/v1/tweets/{id}",
    tag = "tweets",
    summary = "A tweet",
    security((), ("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 200, description = "the tweet (with the caller's flags when a token is sent)", body = TweetView),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn tweet_by_id(
    State(state): State<AppState>,
    viewer: Option<AuthenticatedUser>,
    Path(id): Path<String>,
) -> Result<Json<TweetView>, ApiError> {
    let tweet_id = parse_id(&id, "tweet id")?;
    let tweet = state
        .up()
        .tweets
        .clone()
        .get_tweet(rpc(GetTweetRequest { tweet_id }))
        .await?
        .into_inner();
    let viewer = viewer.map(|AuthenticatedUser(id)| id);
    // A tweet whose author is gone is gone too.
    views::tweet(state.up(), viewer, tweet)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("tweet not found"))
}

#[utoipa::path(
    delete,
    path = "/v1/tweets/{id}",
    tag = "tweets",
    summary = "Delete one of the caller's tweets",
    security(("bearer" = [])),
    params(TweetIdPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 403, description = "the caller is not the author", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
pub(super) async fn delete_tweet(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tweet_id = parse_id(&id, "tweet id")?;
    let request = DeleteTweetRequest {
        tweet_id,
        caller_id: me,
    };
    state.up().tweets.clone().delete_tweet(rpc(request)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/tweets",
    tag = "tweets",
    summary = "A user's tweets, newest first",
    security((), ("bearer" = [])),
    params(UserIdPath, PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn user_tweets(
    State(state): State<AppState>,
    viewer: Option<AuthenticatedUser>,
    Path(id): Path<String>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<TweetView>>, ApiError> {
    let author_id = parse_id(&id, "user id")?;
    let (mut users, mut tweets) = (state.up().users.clone(), state.up().tweets.clone());
    let request = ListUserTweetsRequest {
        author_id,
        before: page.before,
        since: page.since,
        limit: page.limit.get() as u32,
    };
    let (_, page) = tokio::try_join!(
        users.get_user(rpc(GetUserRequest { user_id: author_id })),
        tweets.list_user_tweets(rpc(request)),
    )?;
    let page = page.into_inner();
    let viewer = viewer.map(|AuthenticatedUser(id)| id);
    Ok(Json(views::tweet_page(state.up(), viewer, page).await?))
}
