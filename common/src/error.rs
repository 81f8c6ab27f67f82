//! The one error-code table.
//!
//! Every service error enum implements [`ServiceError`], naming an [`ErrorCode`]. The code fixes
//! the gRPC status a service returns and the HTTP status and JSON `code` the gateway answers
//! with, so a gRPC status maps to HTTP in exactly one place: [`ErrorCode::from_status`] (or
//! [`ErrorCode::from_grpc`] for a bare code) followed by [`ErrorCode::http_status`].

use tonic::Code;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or breaks a rule (text too long, bad username, ...).
    InvalidArgument,
    /// No valid credentials or token.
    Unauthenticated,
    /// Authenticated, but the target is not the caller's.
    PermissionDenied,
    /// The target does not exist.
    NotFound,
    /// A uniqueness rule was hit (username taken).
    AlreadyExists,
    /// The request body is over the size limit. Edge-only: the gateway answers it before any
    /// service sees the request; a service never returns it.
    PayloadTooLarge,
    /// The request did not arrive in time: its body was still being sent when its deadline
    /// passed (a client too slow, or one holding a slot on purpose). Edge-only.
    RequestTimeout,
    /// The request's path and query are over the edge's length limit. Edge-only.
    UriTooLong,
    /// The caller sent too many requests; retry after a while (`Retry-After` over HTTP). Over
    /// gRPC it is `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// A dependency (another service, the store, the bus) is down, or this process is
    /// overloaded and shed the request; retry later.
    Unavailable,
    /// The caller's deadline passed before the work finished.
    DeadlineExceeded,
    /// A bug or an unexpected failure; details are logged, never returned.
    Internal,
}

impl ErrorCode {
    /// The gRPC status code a service returns for this error.
    pub const fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            // A service that gets an over-large message refuses it as an invalid argument.
            Self::PayloadTooLarge | Self::UriTooLong => Code::InvalidArgument,
            Self::RequestTimeout => Code::DeadlineExceeded,
            Self::RateLimited => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
        }
    }

    /// The HTTP status the gateway answers with.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
            Self::Internal => 500,
        }
    }

    /// The machine-readable `code` in the gateway's JSON error body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::UriTooLong => "uri_too_long",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Internal => "internal",
        }
    }

    /// Reads a gRPC status code returned by a service back into an error code.
    pub const fn from_grpc(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                Self::InvalidArgument
            }
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            // A quota or a limit of the callee (not a body size: that never leaves the edge).
            Code::ResourceExhausted => Self::RateLimited,
            Code::Unavailable | Code::Aborted => Self::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Self::DeadlineExceeded,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                Self::Internal
            }
        }
    }

    /// Reads a status a call returned back into an error code. A call whose connection broke
    /// (the service was killed or restarted mid-call) reaches the caller as `UNKNOWN` or
    /// `CANCELLED` with the transport failure as its source: that is `Unavailable` (retry), not
    /// a bug in the service nor a deadline, since the call may or may not have taken effect and
    /// every write here is idempotent or keyed.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code = status.code();
        if matches!(code, Code::Unknown | Code::Cancelled | Code::Internal)
            && broke_in_transport(status)
        {
            return Self::Unavailable;
        }
        Self::from_grpc(code)
    }

    /// Codes only the gateway answers with, which no gRPC status reads back into.
    pub const fn edge_only(self) -> bool {
        matches!(
            self,
            Self::PayloadTooLarge | Self::RequestTimeout | Self::UriTooLong
        )
    }

    /// Every code, for exhaustive tests.
    pub const ALL: [Self; 12] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PayloadTooLarge,
        Self::RequestTimeout,
        Self::UriTooLong,
        Self::RateLimited,
        Self::Unavailable,
        Self::DeadlineExceeded,
        Self::Internal,
    ];
}

/// Whether `status` stands for a connection that failed rather than an answer of the service.
fn broke_in_transport(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() || err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    // tonic names a failed connection by this message when it keeps no source.
    status.message() == "transport error"
}

/// A service's error type: it names its [`ErrorCode`], and its `Display` is the message a caller
/// sees (except for [`ErrorCode::Internal`], whose details stay in the logs).
pub trait ServiceError: std::error::Error + Sized {
    fn error_code(&self) -> ErrorCode;

    /// Converts the error into the gRPC status a service returns.
    fn to_status(&self) -> tonic::Status {
        let code = self.error_code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %error_chain(self), "internal error");
            return tonic::Status::internal("internal error");
        }
        tonic::Status::new(code.grpc_code(), self.to_string())
    }
}

/// Renders an error and its sources as one line, for logs.
pub fn error_chain(err: &(dyn std::error::Error + '_)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_grpc_round_trip() {
        for code in ErrorCode::ALL.into_iter().filter(|c| !c.edge_only()) {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code, "{code:?}");
        }
    }

    #[test]
    fn exhaustion_means_retry_later_never_a_body_size() {
        assert_eq!(
            ErrorCode::from_grpc(Code::ResourceExhausted),
            ErrorCode::RateLimited
        );
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
        // Every gRPC code reads into a code a service can return.
        let every_grpc_code = (0..=16).map(Code::from_i32);
        for grpc in every_grpc_code {
            assert!(!ErrorCode::from_grpc(grpc).edge_only(), "{grpc:?}");
        }
    }

    #[test]
    fn json_codes_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code:?}");
        }
    }

    #[test]
    fn client_errors_are_4xx_and_server_errors_5xx() {
        for code in ErrorCode::ALL {
            let status = code.http_status();
            let server_side = matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::DeadlineExceeded | ErrorCode::Internal
            );
            assert_eq!(status >= 500, server_side, "{code:?} -> {status}");
            assert!((400..600).contains(&status));
        }
    }

    /// A server that accepts each connection and drops it at once, as a process killed
    /// mid-call does: the call fails in transport, which is retryable.
    #[tokio::test]
    async fn a_connection_that_breaks_is_unavailable_not_internal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = tonic::client::Grpc::new(channel);
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/test.Gone/Call");
        let status = match client.ready().await {
            Err(err) => tonic::Status::from_error(Box::new(err)),
            Ok(()) => client
                .unary(tonic::Request::new(()), path, codec)
                .await
                .unwrap_err(),
        };
        assert_eq!(
            ErrorCode::from_status(&status),
            ErrorCode::Unavailable,
            "{status:?}"
        );
        // The same codes answered by a service are still a bug and a deadline.
        assert_eq!(
            ErrorCode::from_status(&tonic::Status::unknown("it broke")),
            ErrorCode::Internal
        );
        assert_eq!(
            ErrorCode::from_status(&tonic::Status::cancelled("too late")),
            ErrorCode::DeadlineExceeded
        );
    }

    #[test]
    fn unknown_grpc_failures_are_internal() {
        assert_eq!(ErrorCode::from_grpc(Code::Unknown), ErrorCode::Internal);
        assert_eq!(
            ErrorCode::from_grpc(Code::Unimplemented),
            ErrorCode::Internal
        );
    }
}
