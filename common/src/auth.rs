//! Who is calling a service: the internal boundary of the mesh.
//!
//! The gateway verifies a user's bearer token and forwards it, unchanged, in the gRPC metadata
//! `authorization: Bearer <token>`. Every gRPC server checks it again here with the public keys
//! (no round trip), so a process that can reach a service's port cannot act as any user by
//! filling in an id: a call that acts as a user (posting, following, deleting an account,
//! reading a home feed) must carry a valid token *of that user*. Calls that act as nobody
//! (reads such as `GetTweet`, `BatchGetUsers`, sign-up and login) stay open, so services can
//! call each other's reads and operators can use `grpcurl` without a token; `twtr token` mints
//! one for the calls that need it.
//!
//! Revocation (a deleted account, a changed password) is checked by the gateway and by the
//! users service, which owns the token generation: its acting calls take the token with
//! [`acting_token`] and refuse one older than the account's generation. The other services
//! check signature, expiry and subject; their own rules still apply on top (the tweets service
//! refuses posts by an account it knows is deleted).
//!
//! The pieces: [`bearer_token`] reads the token out of `authorization` (the gateway reads its
//! users' requests with it too); [`CallerLayer`] (a tower layer every gRPC server runs, see
//! [`crate::grpc`]) verifies the token when there is one and records a [`Caller`] in the
//! request's extensions; a service adapter calls [`acting_as`] before doing anything on a
//! user's behalf.
//!
//! Which keys a server verifies with is a dependency of the service, handed to its runtime
//! ([`crate::runtime::ServiceRuntime::verifying`]); a server given no keys verifies nothing, so
//! every call that acts as a user is refused (fail closed).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::tokens::{TokenError, TokenVerifier, Verified};

/// The metadata key that carries the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// Who made a call, as the server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The call carried a valid token of this user.
    User(u64),
    /// The call carried no token.
    Anonymous,
}

/// Refuses the call unless it carries a valid token of `user_id`: for every call that acts as,
/// or reads the private data of, that user.
pub fn acting_as<T>(request: &tonic::Request<T>, user_id: u64) -> Result<(), tonic::Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller::User(id)) if *id == user_id => Ok(()),
        Some(Caller::User(id)) => Err(tonic::Status::permission_denied(format!(
            "the token is user {id}'s; this call acts as user {user_id}"
        ))),
        Some(Caller::Anonymous) | None => Err(tonic::Status::unauthenticated(format!(
            "this call acts as user {user_id}: send that user's token \
             (metadata `authorization: Bearer <token>`; `twtr token --user {user_id}` makes one)"
        ))),
    }
}

/// Like [`acting_as`], and returns what the token says, for the service that owns the token
/// generation (the users service) to check it against the account's: a token issued before a
/// password change is signed and unexpired, yet revoked.
pub fn acting_token<T>(
    request: &tonic::Request<T>,
    user_id: u64,
) -> Result<Verified, tonic::Status> {
    acting_as(request, user_id)?;
    request
        .extensions()
        .get::<Verified>()
        .copied()
        .ok_or_else(|| tonic::Status::unauthenticated("the call's token was not verified"))
}

/// An `authorization` header (or metadata entry) that is there but is not `Bearer <token>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBearer;

/// The token in `authorization: Bearer <token>`, not yet verified; `None` when there is no
/// `authorization` at all. HTTP headers and gRPC metadata are both an [`http::HeaderMap`], so
/// the gateway (for its users' requests) and every gRPC server (for the token the gateway
/// forwards) read the header here, the same way.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, NotBearer> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| Some(token.trim()))
        .ok_or(NotBearer)
}

/// Tower layer for gRPC servers: verifies the caller's token, if the call has one, and records
/// the [`Caller`]. A token that does not verify is refused at once (`UNAUTHENTICATED`), whatever
/// the method. With no keys, every token is refused.
#[derive(Clone, Default)]
pub struct CallerLayer {
    keys: Option<Arc<TokenVerifier>>,
}

impl std::fmt::Debug for CallerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerLayer")
            .field("verifies", &self.keys.is_some())
            .finish()
    }
}

impl CallerLayer {
    pub fn new(keys: Option<Arc<TokenVerifier>>) -> Self {
        Self { keys }
    }

    /// The verified token of the call, `None` when it carries none.
    fn caller<B>(&self, request: &http::Request<B>) -> Result<Option<Verified>, tonic::Status> {
        let token = match bearer_token(request.headers()) {
            Ok(None) => return Ok(None),
            Ok(Some(token)) => token,
            Err(NotBearer) => {
                return Err(tonic::Status::unauthenticated(
                    "authorization metadata must be `Bearer <token>`",
                ));
            }
        };
        let keys = self.keys.as_ref().ok_or_else(|| {
            tonic::Status::unauthenticated("this server has no keys to verify tokens with")
        })?;
        match keys.verify(token) {
            Ok(verified) => Ok(Some(verified)),
            Err(TokenError::Expired) => Err(tonic::Status::unauthenticated("token has expired")),
            Err(_) => Err(tonic::Status::unauthenticated("invalid token")),
        }
    }
}

impl<S> tower::Layer<S> for CallerLayer {
    type Service = CallerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallerService<S> {
    inner: S,
    layer: CallerLayer,
}

impl<S> std::fmt::Debug for CallerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerService")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for CallerService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.layer.caller(&request) {
            Ok(verified) => {
                let caller = verified.map_or(Caller::Anonymous, |v| Caller::User(v.user_id));
                request.extensions_mut().insert(caller);
                if let Some(verified) = verified {
                    request.extensions_mut().insert(verified);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(method = %request.uri().path(), reason = status.message(), "call refused: bad token");
                let response = status.into_http::<RB>();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer as _, ServiceExt as _};

    use super::*;
    use crate::tokens::{TokenSigner, generate_key_pair};

    fn keys() -> (TokenSigner, TokenVerifier) {
        let (private, public) = generate_key_pair().unwrap();
        (
            TokenSigner::from_pem(&private, Duration::from_secs(60)).unwrap(),
            TokenVerifier::from_pems(&[public]).unwrap(),
        )
    }

    /// Runs a request with `authorization` (if any) through the layer; returns the caller the
    /// service saw, or the gRPC status the layer answered with.
    async fn through(layer: &CallerLayer, authorization: Option<&str>) -> Result<Caller, String> {
        let seen = tower::service_fn(|request: http::Request<()>| async move {
            let mut response = http::Response::new(String::new());
            if let Some(caller) = request.extensions().get::<Caller>() {
                response.extensions_mut().insert(*caller);
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut request = http::Request::builder().uri("/svc/Method");
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = layer
            .layer(seen)
            .oneshot(request.body(()).unwrap())
            .await
            .unwrap();
        match response.headers().get("grpc-status") {
            Some(code) => Err(format!(
                "{}: {}",
                code.to_str().unwrap(),
                response.headers()["grpc-message"].to_str().unwrap()
            )),
            None => Ok(*response.extensions().get::<Caller>().expect("a caller")),
        }
    }

    #[tokio::test]
    async fn a_valid_token_names_the_caller_and_no_token_is_anonymous() {
        let (signer, verifier) = keys();
        let layer = CallerLayer::new(Some(Arc::new(verifier)));
        let token = signer.issue(42, 0).unwrap().token;
        assert_eq!(
            through(&layer, Some(&format!("Bearer {token}"))).await,
            Ok(Caller::User(42))
        );
        assert_eq!(through(&layer, None).await, Ok(Caller::Anonymous));
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_before_the_service_runs() {
        let (_, verifier) = keys();
        let (other_signer, _) = keys();
        let layer = CallerLayer::new(Some(Arc::new(verifier)));
        let forged = other_signer.issue(42, 0).unwrap().token;
        for bad in [
            format!("Bearer {forged}"),
            "Bearer not-a-token".to_owned(),
            "Basic dXNlcjpwYXNz".to_owned(),
        ] {
            let refused = through(&layer, Some(&bad)).await.unwrap_err();
            assert!(
                refused.starts_with("16:"),
                "UNAUTHENTICATED for {bad}: {refused}"
            );
        }
        // A server without keys accepts no token at all.
        let (signer, _) = keys();
        let token = signer.issue(42, 0).unwrap().token;
        let refused = through(&CallerLayer::new(None), Some(&format!("Bearer {token}")))
            .await
            .unwrap_err();
        assert!(refused.starts_with("16:"), "{refused}");
    }

    #[test]
    fn a_bearer_token_is_read_from_authorization_or_refused() {
        let headers = |value: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = value {
                headers.insert(AUTHORIZATION, value.parse().unwrap());
            }
            headers
        };
        assert_eq!(bearer_token(&headers(None)), Ok(None));
        assert_eq!(
            bearer_token(&headers(Some("Bearer abc.def.ghi"))),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(
            bearer_token(&headers(Some("Bearer  abc "))),
            Ok(Some("abc"))
        );
        for not_bearer in ["Basic dXNlcjpwYXNz", "bearer abc", "Bearer", "abc", ""] {
            assert_eq!(
                bearer_token(&headers(Some(not_bearer))),
                Err(NotBearer),
                "{not_bearer:?}"
            );
        }
    }

    #[test]
    fn acting_as_needs_that_users_token() {
        let request = |caller: Option<Caller>| {
            let mut request = tonic::Request::new(());
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            request
        };
        assert!(acting_as(&request(Some(Caller::User(7))), 7).is_ok());
        let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();
        assert_eq!(
            code(acting_as(&request(Some(Caller::User(8))), 7)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(acting_as(&request(Some(Caller::Anonymous)), 7)),
            tonic::Code::Unauthenticated
        );
        // A server that never ran the layer fails closed.
        assert_eq!(
            code(acting_as(&request(None), 7)),
            tonic::Code::Unauthenticated
        );
    }
}
