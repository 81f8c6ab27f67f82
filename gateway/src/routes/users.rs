//! Users: sign-up, the caller's own account (`/v1/users/me`: read, change, delete), and
//! anyone's profile by ID or username.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use twtr_common::ErrorCode;
use twtr_proto::users::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserByUsernameRequest, GetUserRequest,
    UpdateUserRequest,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{AuthenticatedUser, JsonBody, parse_id};
use crate::openapi::{ErrorBody, UserIdPath};
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, UserView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUserBody {
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
pub(super) async fn create_user(
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
    )
)]
pub(super) async fn me(
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
pub(super) struct UpdateMeBody {
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
pub(super) async fn update_me(
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
    state.up().authors.forget(me);
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
    )
)]
pub(super) async fn delete_me(
    State(state): State<AppState>,
    AuthenticatedUser(me): AuthenticatedUser,
) -> Result<StatusCode, ApiError> {
    let request = DeleteUserRequest { user_id: me };
    state.up().users.clone().delete_user(rpc(request)).await?;
    state.revocations().forget(me);
    state.up().authors.forget(me);
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
        (status = 404, description = "no such user", body = ErrorBody),
    )
)]
pub(super) async fn user_by_id(
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
pub(super) async fn user_by_username(
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
