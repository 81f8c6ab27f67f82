//! Request parsing that fails with a clear 4xx in the API's JSON error shape, never a 5xx.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use twtr_common::tokens::TokenError;
use twtr_common::{ErrorCode, Limit, PageRequest, auth};

use crate::error::ApiError;
use crate::state::AppState;

/// The user who sent the request: the user ID in a valid, unexpired bearer token. The
/// signature is verified here, with no round trip; revocation (a deleted account, a changed
/// password) is checked against the users service's answer of the last few seconds (see
/// [`crate::revocation`]). (The services see the same token as a `twtr_common::auth::Caller`.)
///
/// A route that needs a user takes `AuthenticatedUser`: no token is a 401. A public route that
/// shows more to a known user (`liked_by_me`, ...) takes `Option<AuthenticatedUser>`: no
/// `Authorization` header is `None`, but a header that is there must hold a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedUser(pub u64);

impl AuthenticatedUser {
    /// The user of the request's bearer token, `None` with no `Authorization` header.
    async fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Option<Self>, ApiError> {
        let token = match auth::bearer_token(headers) {
            Ok(None) => return Ok(None),
            Ok(Some(token)) => token,
            Err(auth::NotBearer) => {
                return Err(ApiError::unauthenticated(
                    "Authorization header must be Bearer <token>",
                ));
            }
        };
        let verified = state.tokens().verify(token).map_err(|err| match err {
            TokenError::Expired => ApiError::unauthenticated("token has expired, log in again"),
            _ => ApiError::unauthenticated("invalid token"),
        })?;
        state.revocations().check(verified).await?;
        // The services check who acts from this same token (see `twtr_common::auth`).
        crate::upstream::forward_token(token);
        Ok(Some(Self(verified.user_id)))
    }
}

impl FromRequestParts<AppState> for AuthenticatedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::from_headers(&parts.headers, state)
            .await?
            .ok_or_else(|| {
                ApiError::unauthenticated("missing Authorization: Bearer <token> header")
            })
    }
}

impl OptionalFromRequestParts<AppState> for AuthenticatedUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        Self::from_headers(&parts.headers, state).await
    }
}

/// A JSON request body, always an object. Malformed JSON, another type, a wrong shape or unknown
/// fields are a 400 that says what is wrong; a body over the size limit is a 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        // The body must arrive by the request's deadline: a client sending it slowly (on
        // purpose or not) would otherwise hold its in-flight slot for as long as it likes.
        let read = axum::Json::<Box<RawValue>>::from_request(request, state);
        let read = match crate::upstream::deadline() {
            Some(deadline) => tokio::time::timeout_at(deadline, read).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body did not arrive in time",
                )
            })?,
            None => read.await,
        };
        let raw = match read {
            Ok(axum::Json(raw)) => raw,
            Err(rejection) if rejection.status().as_u16() == 413 => {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is over {} bytes", state.body_limit()),
                ));
            }
            Err(rejection) => return Err(ApiError::invalid(rejection.body_text())),
        };
        // Every body this API takes is an object. serde would otherwise read a struct from an
        // array too, field by field in order (`[null, null]` as a PATCH that changes nothing).
        if !raw.get().starts_with('{') {
            return Err(ApiError::invalid("the request body must be a JSON object"));
        }
        axum::Json::<T>::from_bytes(raw.get().as_bytes())
            .map(|axum::Json(value)| Self(value))
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))
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
    use std::time::Duration;

    use axum::http::Request as HttpRequest;
    use twtr_common::tokens::{TokenSigner, TokenVerifier, generate_key_pair};

    use super::*;
    use crate::upstream::{UpstreamUrls, Upstreams};

    /// A state whose services are nowhere (their channels connect lazily), and a token signed
    /// by other keys than it trusts.
    fn state_and_foreign_token() -> (AppState, String) {
        let nowhere = "http://127.0.0.1:1".to_owned();
        let urls = UpstreamUrls {
            users: nowhere.clone(),
            tweets: nowhere.clone(),
            followers: nowhere.clone(),
            feeds: nowhere,
        };
        let (_, trusted) = generate_key_pair().unwrap();
        let (foreign, _) = generate_key_pair().unwrap();
        let verifier = TokenVerifier::from_pems(&[trusted]).unwrap();
        let signer = TokenSigner::from_pem(&foreign, Duration::from_secs(60)).unwrap();
        let state = AppState::new(Upstreams::connect(&urls, None).unwrap(), verifier, 1024);
        (state, signer.issue(42, 0).unwrap().token)
    }

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = HttpRequest::get("/x");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn no_header_is_a_401_or_none_and_a_bad_one_is_always_a_401() {
        let (state, foreign) = state_and_foreign_token();
        let required = <AuthenticatedUser as FromRequestParts<AppState>>::from_request_parts;
        let optional =
            <AuthenticatedUser as OptionalFromRequestParts<AppState>>::from_request_parts;

        let err = required(&mut parts(None), &state).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        assert!(err.message.contains("missing"), "{}", err.message);
        assert_eq!(optional(&mut parts(None), &state).await, Ok(None));

        // A header that is sent must hold a valid bearer token, on either kind of route.
        let foreign = format!("Bearer {foreign}");
        for (header, says) in [
            ("Basic dXNlcjpwYXNz", "must be Bearer"),
            ("Bearer not-a-token", "invalid token"),
            (foreign.as_str(), "invalid token"),
        ] {
            let err = required(&mut parts(Some(header)), &state)
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthenticated, "{header}");
            assert!(err.message.contains(says), "{header}: {}", err.message);
            let err = optional(&mut parts(Some(header)), &state)
                .await
                .unwrap_err();
            assert!(err.message.contains(says), "{header}: {}", err.message);
        }
    }

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

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        name: Option<String>,
        bio: Option<String>,
    }

    async fn body(content_type: Option<&str>, body: &str) -> Result<Patch, ApiError> {
        let (state, _) = state_and_foreign_token();
        let mut request = HttpRequest::patch("/x");
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        let request = request
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        JsonBody::<Patch>::from_request(request, &state)
            .await
            .map(|b| b.0)
    }

    #[tokio::test]
    async fn a_body_must_be_a_json_object_of_the_known_fields() {
        let json = Some("application/json");
        let read = body(json, " \n {\"name\": \"ada\"} ").await.unwrap();
        assert_eq!(
            read,
            Patch {
                name: Some("ada".into()),
                bio: None
            }
        );
        let read = body(Some("application/merge-patch+json"), "{}")
            .await
            .unwrap();
        assert_eq!(
            read,
            Patch {
                name: None,
                bio: None
            }
        );

        // serde alone reads a struct from an array, field by field: schemathesis sent a PATCH
        // of `[null, null, null, null]` and it was answered 200.
        for (content_type, sent, says) in [
            (json, "[null, null]", "JSON object"),
            (json, "[]", "JSON object"),
            (json, "null", "JSON object"),
            (json, "\"name\"", "JSON object"),
            (json, "{\"name\": 1}", "name"),
            (json, "{\"id\": \"1\"}", "unknown field"),
            (json, "{\"name\": \"ada\"} x", "trailing"),
            (json, "{", "EOF"),
            (None, "{}", "Content-Type"),
            (Some("text/plain"), "{}", "Content-Type"),
        ] {
            let err = body(content_type, sent).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{sent}");
            assert!(err.message.contains(says), "{sent}: {}", err.message);
        }
    }
}
