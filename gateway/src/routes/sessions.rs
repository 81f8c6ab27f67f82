//! Sessions: logging in, which returns a bearer token and the user.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use twtr_common::{ErrorCode, clock};
use twtr_proto::users::v1::LoginRequest;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use crate::upstream::rpc;
use crate::views::{self, SessionView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSessionBody {
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
        (status = 401, description = "wrong username or password", body = ErrorBody),
    )
)]
pub(super) async fn create_session(
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
