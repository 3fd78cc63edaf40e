//! The orchestrator's state database.

/// State failures.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
}
