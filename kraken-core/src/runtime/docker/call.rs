//! Calls to the daemon: time limits and error mapping.

use super::RUNTIME;
use crate::runtime::RuntimeError;
use bollard::errors::Error as DockerError;
use std::future::Future;
use std::time::Duration;

/// The longest an ordinary API call (inspect, create, list, ...) may take.
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed or timed-out daemon call.
pub(super) enum Failure {
    Docker(DockerError),
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Docker(e) => write!(f, "{e}"),
            Failure::Timeout(d) => write!(f, "the daemon did not answer within {d:?}"),
        }
    }
}

impl From<Failure> for RuntimeError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Docker(e) => backend(e),
            timeout @ Failure::Timeout(_) => RuntimeError::Backend {
                runtime: RUNTIME,
                reason: timeout.to_string(),
            },
        }
    }
}

/// Runs a daemon call with a time limit.
pub(super) async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Failure::Docker),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

pub(super) fn backend(err: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend {
        runtime: RUNTIME,
        reason: err.to_string(),
    }
}

pub(super) fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
