//! The one JSON error shape: `{"error": {"code": "not_found", "message": "..."}}`, with the HTTP
//! status that the shared [`ErrorCode`] table gives.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use twtr_common::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds the caller should wait before retrying (`Retry-After`); always set on a 429.
    pub retry_after: Option<u64>,
}

/// What a 429 says to wait when the limit that was hit does not know better.
const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 429: the caller may try again after `retry_after_secs` (at least one second).
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(ErrorCode::RateLimited, message)
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

/// How long a 503 from a service tells the caller to wait before retrying.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// A service's gRPC status, told to the HTTP caller. Server-side failures keep their details in
/// the logs; an unavailable service (or a broken connection to one) is a 503 with
/// `Retry-After`, since the caller's retry is the way through.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = match ErrorCode::from_status(&status) {
            // A call cut short as the request's deadline passed (its connection dropped by the
            // client-side timeout, say) failed because of the deadline, not the service.
            ErrorCode::Unavailable if crate::upstream::deadline_passed() => {
                ErrorCode::DeadlineExceeded
            }
            code => code,
        };
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
        let retry_after = (code == ErrorCode::Unavailable).then_some(UNAVAILABLE_RETRY_AFTER_SECS);
        Self {
            retry_after,
            ..Self::new(code, message)
        }
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
        let retry_after = match (self.retry_after, self.code) {
            (Some(secs), _) => Some(secs),
            (None, ErrorCode::RateLimited) => Some(DEFAULT_RETRY_AFTER_SECS),
            (None, _) => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
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
            (tonic::Code::ResourceExhausted, 429),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::DeadlineExceeded, 504),
            (tonic::Code::Cancelled, 504),
            (tonic::Code::Internal, 500),
        ];
        for (grpc, http) in cases {
            let response = ApiError::from(tonic::Status::new(grpc, "m")).into_response();
            assert_eq!(response.status().as_u16(), http, "{grpc:?}");
        }
    }

    #[test]
    fn a_429_always_says_when_to_retry() {
        let upstream = ApiError::from(tonic::Status::resource_exhausted("quota")).into_response();
        assert_eq!(upstream.status().as_u16(), 429);
        assert_eq!(upstream.headers()[RETRY_AFTER], "1");
        let limited = ApiError::rate_limited("slow down", 7).into_response();
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
        let other = ApiError::not_found("gone").into_response();
        assert!(other.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn internal_details_are_not_leaked() {
        let err = ApiError::from(tonic::Status::internal("disk /dev/sda1 on fire"));
        assert_eq!(err.message, "internal error");
        let err = ApiError::from(tonic::Status::not_found("user not found"));
        assert_eq!(err.message, "user not found");
    }
}
