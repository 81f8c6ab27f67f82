//! One handler per route of the public API (see DESIGN.md, "Edge API"). Each reads top to
//! bottom: parse the input, call the owning service(s), hydrate, respond.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use twtr_common::{ErrorCode, clock};
use twtr_proto::feeds::v1::GetFeedRequest;
use twtr_proto::followers::v1::{FollowRequest, ListFollowsRequest, UnfollowRequest};
use twtr_proto::tweets::v1::{
    CreateTweetRequest, DeleteTweetRequest, GetPublicTimelineRequest, GetTweetRequest,
    ListUserTweetsRequest, TweetActionRequest,
};
use twtr_proto::users::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserByUsernameRequest, GetUserRequest, LoginRequest,
    UpdateUserRequest,
};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, JsonBody, PageParams, parse_id};
use crate::openapi::{ApiDoc, ErrorBody, IdempotencyKeyHeader, PageQuery, TweetIdPath, UserIdPath};
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, Listed, PageView, SessionView, TweetView, UserView};

/// The API's routes (under `/v1`), each documented by its handler's `#[utoipa::path]`, which
/// `routes!` also takes the path and method from (see [`crate::openapi`]); handlers of one path
/// go in one `routes!`. [`crate::app::router`] puts the edge's limits around them.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_user))
        .routes(routes!(create_session))
        .routes(routes!(me, update_me, delete_me))
        .routes(routes!(user_by_username))
        .routes(routes!(user_by_id))
        .routes(routes!(follow, unfollow))
        .routes(routes!(followers))
        .routes(routes!(following))
        .routes(routes!(user_tweets))
        .routes(routes!(create_tweet))
        .routes(routes!(tweet_by_id, delete_tweet))
        .routes(routes!(like, unlike))
        .routes(routes!(retweet, unretweet))
        .routes(routes!(timeline))
        .routes(routes!(feed))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    /// 3 to 15 of `A-Za-z0-9_`, unique ignoring case.
    #[schema(pattern = "^[A-Za-z0-9_]{3,15}$", example = "alice")]
    username: String,
    #[schema(min_length = 8, max_length = 128, example = "wonderland")]
    password: String,
    /// At most 50 characters (after NFC and trimming); empty or missing: the username.
    #[serde(default)]
    display_name: String,
    /// At most 160 characters (after NFC and trimming).
    #[serde(default)]
    bio: String,
}

#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    summary = "Sign up",
    request_body = CreateUserBody,
    responses(
        (status = 201, description = "the new user", body = UserView),
        (status = 400, description = "invalid username, password, display name or bio", body = ErrorBody),
        (status = 409, description = "the username is taken", body = ErrorBody),
    )
)]
async fn create_user(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let request = CreateUserRequest {
        username: body.username,
        password: body.password,
        display_name: body.display_name,
        bio: body.bio,
    };
    let user = state
        .up()
        .users
        .clone()
        .create_user(rpc(request))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(views::new_user(user))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSessionBody {
    username: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "users",
    summary = "Log in",
    request_body = CreateSessionBody,
    responses(
        (status = 200, description = "a session: its bearer token and the user", body = SessionView),
        (status = 400, description = "malformed body", body = ErrorBody),
        (status = 401, description = "wrong username or password", body = ErrorBody),
    )
)]
async fn create_session(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateSessionBody>,
) -> Result<Json<SessionView>, ApiError> {
    let request = LoginRequest {
        username: body.username,
        password: body.password,
    };
    let session = state
        .up()
        .users
        .clone()
        .login(rpc(request))
        .await?
        .into_inner();
    let user = session
        .user
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "login returned no user"))?;
    let user = views::user(state.up(), user).await?;
    Ok(Json(SessionView {
        token: session.token,
        expires_at: clock::rfc3339(session.expires_at.as_ref().map_or(0, clock::from_timestamp)),
        user,
    }))
}

async fn user_view(state: &AppState, user_id: u64) -> Result<UserView, ApiError> {
    let user = state
        .up()
        .users
        .clone()
        .get_user(rpc(GetUserRequest { user_id }))
        .await?
        .into_inner();
    views::user(state.up(), user).await
}

#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    summary = "The caller",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the caller", body = UserView),
        (status = 401, description = "no valid token", body = ErrorBody),
    )
)]
async fn me(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
) -> Result<Json<UserView>, ApiError> {
    match user_view(&state, me).await {
        Err(err) if err.code == ErrorCode::NotFound => {
            Err(ApiError::unauthenticated("this account no longer exists"))
        }
        other => other.map(Json),
    }
}

/// Only the fields sent change. A new password needs the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateMeBody {
    /// At most 50 characters; empty: the username.
    display_name: Option<String>,
    /// At most 160 characters.
    bio: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    password: Option<String>,
    current_password: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/v1/users/me",
    tag = "users",
    summary = "Change the caller's profile or password",
    security(("bearer" = [])),
    request_body = UpdateMeBody,
    responses(
        (status = 200, description = "the updated user", body = UserView),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token, or a wrong current password", body = ErrorBody),
    )
)]
async fn update_me(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    JsonBody(body): JsonBody<UpdateMeBody>,
) -> Result<Json<UserView>, ApiError> {
    let password_changes = body.password.is_some();
    let request = UpdateUserRequest {
        user_id: me,
        display_name: body.display_name,
        bio: body.bio,
        password: body.password,
        current_password: body.current_password,
    };
    let user = state
        .up()
        .users
        .clone()
        .update_user(rpc(request))
        .await?
        .into_inner();
    if password_changes {
        state.revocations().forget(me);
    }
    Ok(Json(views::user(state.up(), user).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/users/me",
    tag = "users",
    summary = "Delete the caller's account",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted; its tokens stop working"),
        (status = 401, description = "no valid token", body = ErrorBody),
    )
)]
async fn delete_me(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
) -> Result<StatusCode, ApiError> {
    let request = DeleteUserRequest { user_id: me };
    state.up().users.clone().delete_user(rpc(request)).await?;
    state.revocations().forget(me);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    summary = "A user",
    params(UserIdPath),
    responses(
        (status = 200, description = "the user", body = UserView),
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn user_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let id = parse_id(&id, "user id")?;
    user_view(&state, id).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/users/by-username/{username}",
    tag = "users",
    summary = "A user, by username (ignoring case)",
    params(("username" = String, Path, description = "the username")),
    responses(
        (status = 200, description = "the user", body = UserView),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn user_by_username(
    State(state): State<AppState>,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .up()
        .users
        .clone()
        .get_user_by_username(rpc(GetUserByUsernameRequest { username }))
        .await?
        .into_inner();
    Ok(Json(views::user(state.up(), user).await?))
}

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
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn follow(
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
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn unfollow(
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
        (status = 400, description = "a bad ID or page parameter", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn followers(
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
        (status = 400, description = "a bad ID or page parameter", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn following(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PageParams(page): PageParams,
) -> Result<Json<PageView<UserView>>, ApiError> {
    follow_list(&state, &id, page, FollowList::Following).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTweetBody {
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
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "the Idempotency-Key's first tweet was deleted since", body = ErrorBody),
    )
)]
async fn create_tweet(
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
    let request = CreateTweetRequest {
        author_id: me,
        text: body.text,
        idempotency_key,
    };
    let tweet = state
        .up()
        .tweets
        .clone()
        .create_tweet(rpc(request))
        .await?
        .into_inner();
    let view = views::tweet(state.up(), Some(me), tweet)
        .await?
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "an invalid token", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn tweet_by_id(
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
    get,
    path = "/v1/users/{id}/tweets",
    tag = "tweets",
    summary = "A user's tweets, newest first",
    security((), ("bearer" = [])),
    params(UserIdPath, PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
        (status = 400, description = "a bad ID or page parameter", body = ErrorBody),
        (status = 401, description = "an invalid token", body = ErrorBody),
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
async fn user_tweets(
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
    let tweets = views::tweets(state.up(), viewer, Listed::Tweets(page.tweets)).await?;
    Ok(Json(PageView::new(tweets, page.next)))
}

#[utoipa::path(
    get,
    path = "/v1/timeline",
    tag = "tweets",
    summary = "Everyone's tweets, newest first",
    security((), ("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "a page of tweets", body = PageView<TweetView>),
        (status = 400, description = "a bad page parameter", body = ErrorBody),
        (status = 401, description = "an invalid token", body = ErrorBody),
    )
)]
async fn timeline(
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
    let tweets = views::tweets(state.up(), viewer, Listed::Tweets(page.tweets)).await?;
    Ok(Json(PageView::new(tweets, page.next)))
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "the caller is not the author", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn delete_tweet(
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn like(
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn unlike(
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn retweet(
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
        (status = 400, description = "the ID is not a decimal ID", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    )
)]
async fn unretweet(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    act(&state, me, &id, Act::Unretweet).await
}

#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "feed",
    summary = "The caller's home feed, newest first",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "a page of tweets from the caller and whom they follow", body = PageView<TweetView>),
        (status = 400, description = "a bad page parameter", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
    )
)]
async fn feed(
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
