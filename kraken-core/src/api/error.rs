//! What can go wrong starting or running the API.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong starting or running the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the API server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The token file could not be read or written.
    #[error("API token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A token given by the operator is not acceptable.
    #[error("invalid API token: {0}")]
    InvalidToken(&'static str),
    /// The system's random source failed.
    #[error("cannot generate an API token: {0}")]
    Random(String),
}
