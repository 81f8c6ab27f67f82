//! The one JSON error shape: `{"error": {"code": "not_found", "message": "..."}}`, with the HTTP
//! status that the shared [`ErrorCode`] table gives.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use twtr_common::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

/// A service's gRPC status, told to the HTTP caller. Server-side failures keep their details in
/// the logs.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_grpc(status.code());
        let message = match code {
            ErrorCode::Internal => {
                tracing::error!(grpc_code = ?status.code(), message = status.message(), "upstream failed");
                "internal error".to_owned()
            }
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded => {
                tracing::warn!(grpc_code = ?status.code(), message = status.message(), "upstream unavailable");
                "a backend service is unavailable, try again".to_owned()
            }
            _ => status.message().to_owned(),
        };
        Self { code, message }
    }
}

/// 405 for a known route called with the wrong method, in the same JSON shape. HTTP-only: no
/// service ever returns it, so it has no row in the error-code table.
pub fn method_not_allowed() -> Response {
    let body = Body {
        error: Detail {
            code: "method_not_allowed",
            message: "this route does not accept that method",
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Body {
            error: Detail {
                code: self.code.as_str(),
                message: &self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_keep_their_meaning_over_http() {
        let cases = [
            (tonic::Code::InvalidArgument, 400),
            (tonic::Code::Unauthenticated, 401),
            (tonic::Code::PermissionDenied, 403),
            (tonic::Code::NotFound, 404),
            (tonic::Code::AlreadyExists, 409),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::Internal, 500),
        ];
        for (grpc, http) in cases {
            let response = ApiError::from(tonic::Status::new(grpc, "m")).into_response();
            assert_eq!(response.status().as_u16(), http, "{grpc:?}");
        }
    }

    #[test]
    fn internal_details_are_not_leaked() {
        let err = ApiError::from(tonic::Status::internal("disk /dev/sda1 on fire"));
        assert_eq!(err.message, "internal error");
        let err = ApiError::from(tonic::Status::not_found("user not found"));
        assert_eq!(err.message, "user not found");
    }
}
