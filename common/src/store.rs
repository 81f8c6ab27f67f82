//! Vocabulary shared by every storage backend (embedded and CQL alike). Store traits live with
//! the service that owns them; what they have in common lives here.

use crate::ErrorCode;

/// A storage failure. Domain outcomes (a taken username, a missing row) are not errors: store
/// methods return them as values.
///
/// Whether a failure is worth retrying is part of the error: [`StoreError::is_transient`]. A
/// service answers a transient failure with `UNAVAILABLE` (HTTP 503: try again), and an event
/// consumer retries it with backoff; a permanent one is a bug or damaged data (500, and a
/// consumer dead-letters the event at once with the reason).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or is unreachable (a node down, a timeout, overload); the operation
    /// may succeed if retried.
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A write lost to another record that already holds its key (a Snowflake ID minted twice,
    /// which only a misconfigured worker number can cause). Nothing was written; a retry with a
    /// fresh ID succeeds.
    #[error("write conflicted: {0}")]
    Conflict(String),
    /// A stored record could not be read back.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend(_) | Self::Conflict(_) => true,
            Self::Corrupt(_) => false,
        }
    }

    /// The error code a service answers with: a transient failure is `Unavailable` (retry),
    /// a permanent one `Internal`.
    pub fn error_code(&self) -> ErrorCode {
        if self.is_transient() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        }
    }
}

/// A deleted account whose purge is pending, as a store's `pending_purges` lists it: the
/// service purges `user`, then hands the entry back to the store's `purge_done` unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingPurge {
    pub user: u64,
    /// Where the store keeps the entry (on CQL, the hour of the deletion, see
    /// [`crate::cql::purges`]; 0 on the embedded stores). The store's business, not the caller's.
    pub slot: i64,
}

impl From<prost::DecodeError> for StoreError {
    fn from(err: prost::DecodeError) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::backend(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_conflicts_are_retried_corruption_is_not() {
        let down = StoreError::backend(std::io::Error::other("node down"));
        assert!(down.is_transient());
        assert_eq!(down.error_code(), ErrorCode::Unavailable);
        let conflict = StoreError::Conflict("tweet id 7 is taken".into());
        assert_eq!(conflict.error_code(), ErrorCode::Unavailable);
        let corrupt = StoreError::Corrupt("short row".into());
        assert!(!corrupt.is_transient());
        assert_eq!(corrupt.error_code(), ErrorCode::Internal);
    }
}
