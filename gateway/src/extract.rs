//! Request parsing that fails with a clear 4xx in the API's JSON error shape, never a 5xx.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use twtr_common::tokens::TokenError;
use twtr_common::{ErrorCode, Limit, PageRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller: the user ID in a valid, unexpired bearer token. The signature is
/// verified here, with no round trip; revocation (a deleted account, a changed password) is
/// checked against the users service's answer of the last few seconds (see
/// [`crate::revocation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub u64);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated("missing Authorization: Bearer <token> header")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("Authorization header must be Bearer <token>")
            })?;
        let verified = state.tokens().verify(token).map_err(|err| match err {
            TokenError::Expired => ApiError::unauthenticated("token has expired, log in again"),
            _ => ApiError::unauthenticated("invalid token"),
        })?;
        state.revocations().check(verified).await?;
        // The services check who acts from this same token (see `twtr_common::auth`).
        crate::upstream::forward_token(token);
        Ok(Caller(verified.user_id))
    }
}

/// The caller when the request carries a token (which must then be valid), `None` when it
/// carries none: for public routes that show more to a known caller (`liked_by_me`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeCaller(pub Option<u64>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.headers.contains_key(AUTHORIZATION) {
            let Caller(me) = Caller::from_request_parts(parts, state).await?;
            Ok(Self(Some(me)))
        } else {
            Ok(Self(None))
        }
    }
}

/// A JSON request body. Malformed JSON, a wrong shape or unknown fields are a 400 that says what
/// is wrong; a body over the size limit is a 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status().as_u16() == 413 => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is over {} bytes", state.body_limit()),
            )),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// Parses an ID from a URL path. IDs are decimal 64-bit integers.
pub fn parse_id(raw: &str, what: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .map_err(|_| ApiError::invalid(format!("{what} must be a decimal ID, got {raw:?}")))
}

/// `?limit=&before=&since=`, parsed into a [`PageRequest`].
#[derive(Debug, Clone, Copy)]
pub struct PageParams(pub PageRequest);

#[derive(Debug, Deserialize)]
struct RawPage {
    limit: Option<String>,
    before: Option<String>,
    since: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawPage>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
        let limit = match raw.limit {
            None => None,
            Some(text) => Some(text.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit must be between 1 and {}, got {text:?}",
                    Limit::MAX
                ))
            })?),
        };
        let limit = Limit::parse(limit).map_err(|err| ApiError::invalid(err.to_string()))?;
        let cursor =
            |name: &str, value: Option<String>| value.map(|v| parse_id(&v, name)).transpose();
        Ok(Self(PageRequest {
            before: cursor("before", raw.before)?,
            since: cursor("since", raw.since)?,
            limit,
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;

    use super::*;

    async fn page(query: &str) -> Result<PageRequest, ApiError> {
        let request = HttpRequest::get(format!("/x?{query}")).body(()).unwrap();
        let (mut parts, ()) = request.into_parts();
        PageParams::from_request_parts(&mut parts, &())
            .await
            .map(|p| p.0)
    }

    #[tokio::test]
    async fn page_params_default_and_parse() {
        let p = page("").await.unwrap();
        assert_eq!((p.before, p.since, p.limit), (None, None, Limit::DEFAULT));
        let p = page("limit=5&before=123&since=7").await.unwrap();
        assert_eq!((p.before, p.since, p.limit.get()), (Some(123), Some(7), 5));
    }

    #[tokio::test]
    async fn bad_page_params_are_400s_that_say_why() {
        for (query, needle) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=ten", "limit"),
            ("before=abc", "before"),
            ("since=-1", "since"),
        ] {
            let err = page(query).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{query}");
            assert!(err.message.contains(needle), "{query}: {}", err.message);
        }
    }

    #[test]
    fn ids_must_be_decimal() {
        assert_eq!(parse_id("42", "id"), Ok(42));
        assert!(parse_id("4x2", "id").is_err());
        assert!(parse_id("", "id").is_err());
        assert!(parse_id("18446744073709551616", "id").is_err());
    }
}
