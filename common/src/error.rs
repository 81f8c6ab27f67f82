//! The one error-code table.
//!
//! Every service error enum implements [`ServiceError`], naming an [`ErrorCode`]. The code fixes
//! the gRPC status a service returns and the HTTP status and JSON `code` the gateway answers
//! with, so a gRPC status maps to HTTP in exactly one place: [`ErrorCode::from_grpc`] followed by
//! [`ErrorCode::http_status`].

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
    /// The request body is over the size limit.
    PayloadTooLarge,
    /// A dependency (another service, the store, the bus) is down or overloaded; retry later.
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
            Self::PayloadTooLarge => Code::ResourceExhausted,
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
            Self::PayloadTooLarge => 413,
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
            Code::ResourceExhausted => Self::PayloadTooLarge,
            Code::Unavailable | Code::Aborted => Self::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Self::DeadlineExceeded,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                Self::Internal
            }
        }
    }

    /// Every code, for exhaustive tests.
    pub const ALL: [Self; 9] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PayloadTooLarge,
        Self::Unavailable,
        Self::DeadlineExceeded,
        Self::Internal,
    ];
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
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code, "{code:?}");
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

    #[test]
    fn unknown_grpc_failures_are_internal() {
        assert_eq!(ErrorCode::from_grpc(Code::Unknown), ErrorCode::Internal);
        assert_eq!(
            ErrorCode::from_grpc(Code::Unimplemented),
            ErrorCode::Internal
        );
    }
}
