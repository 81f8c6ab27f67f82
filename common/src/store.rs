//! Vocabulary shared by every storage backend (embedded and CQL alike). Store traits live with
//! the service that owns them; what they have in common lives here.

/// A storage failure. Domain outcomes (a taken username, a missing row) are not errors: store
/// methods return them as values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or is unreachable; the operation may succeed if retried.
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record could not be read back.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }
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
