//! Running apps: the object-safe [`Runtime`] trait and its backends.
//!
//! The method set follows what a driver of a cluster scheduler needs: build, start, stop,
//! status, logs, stats, and listing the instances it owns so that a restarted worker
//! re-attaches them. Optional operations have default bodies returning
//! [`RuntimeError::Unsupported`]; [`Runtime::capabilities`] says which ones a backend has.
//!
//! - `process`: runs the manifest's `run` command as a child process (always built).
//! - `docker`: builds an image and runs a container (feature `docker`).
//! - `fake`: a scripted runtime for tests (feature `test-util`).

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod fake;
pub mod process;

use crate::manifest::Manifest;
use crate::model::{DeploymentId, InstanceId, InstanceStats, LogLine, NodeId, Timestamp};
use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

#[cfg(feature = "docker")]
#[cfg_attr(docsrs, doc(cfg(feature = "docker")))]
pub mod docker;

/// Where a runtime sends build output. Bounded: a runtime awaits (or drops lines) when the
/// receiver is slow, it never buffers without limit.
pub type LogSink = tokio::sync::mpsc::Sender<LogLine>;

/// A followed log: the lines of an instance as they come. Ends when the instance ends.
pub type LogFollow = Pin<Box<dyn Stream<Item = LogLine> + Send>>;

/// What a backend can do beyond the required operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// [`Runtime::logs`] works.
    pub logs: bool,
    /// [`Runtime::stats`] works.
    pub stats: bool,
    /// [`Runtime::list`] finds instances started before a restart of the worker.
    pub reattach: bool,
    /// Memory and CPU limits from the manifest are enforced.
    pub resource_limits: bool,
    /// Apps are isolated from the host (containers).
    pub isolation: bool,
}

/// Build an app from its checkout.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its generation.
    pub generation: u64,
    /// The checkout. It belongs to the caller and may be deleted once `build` returns: a
    /// runtime that needs the files keeps its own copy.
    pub source_dir: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
}

/// What a build produced (an image, a prepared directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The backend's reference to it (image id, directory path).
    pub id: String,
    /// The deployment it was built for.
    pub deployment: DeploymentId,
    /// The generation it was built for.
    pub generation: u64,
}

/// Start an instance of a built artifact.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The node starting it (recorded on the instance so a worker finds its own).
    pub node: NodeId,
    /// The artifact to run.
    pub artifact: Artifact,
    /// The manifest (port, run command, env, resources).
    pub manifest: Manifest,
    /// Extra environment on top of the manifest's `[env]`.
    pub env: BTreeMap<String, String>,
}

/// A running (or once running) instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Its id.
    pub id: InstanceId,
    /// The deployment it belongs to.
    pub deployment: DeploymentId,
    /// The generation it was started for.
    pub generation: u64,
    /// The node that started it.
    pub node: NodeId,
    /// The host port the app answers on: the manifest's port, or a free one when that
    /// was taken.
    pub port: Option<u16>,
    /// When it started.
    pub started_at: Timestamp,
}

/// What an instance is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// It runs.
    Running,
    /// It ended by itself, with this exit code when there is one.
    Exited {
        /// The exit code, `None` when killed by a signal.
        code: Option<i32>,
    },
    /// The kernel killed it for using too much memory.
    OomKilled,
}

/// What can go wrong running apps.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The backend does not implement this operation.
    #[error("the {runtime} runtime does not support {operation}")]
    Unsupported {
        /// The backend.
        runtime: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// The build failed; `reason` carries the builder's own error text.
    #[error("build failed: {reason}")]
    BuildFailed {
        /// What the builder said.
        reason: String,
    },
    /// The instance could not be started.
    #[error("start failed: {reason}")]
    StartFailed {
        /// Why.
        reason: String,
    },
    /// No such instance (or not one of ours).
    #[error("no instance {instance}")]
    NotFound {
        /// The instance asked for.
        instance: InstanceId,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend (daemon, OS) failed.
    #[error("{runtime} runtime: {reason}")]
    Backend {
        /// The backend.
        runtime: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Builds and runs apps.
///
/// Object-safe, used as `Arc<dyn Runtime>`. Implementations must only ever touch instances
/// and artifacts they created themselves.
///
/// ```
/// use kraken_core::async_trait;
/// use kraken_core::model::{InstanceId, Timestamp};
/// use kraken_core::runtime::*;
///
/// /// Pretends to run everything, instantly.
/// struct Pretend;
///
/// #[async_trait]
/// impl Runtime for Pretend {
///     fn name(&self) -> &'static str { "pretend" }
///     fn capabilities(&self) -> Capabilities { Capabilities::default() }
///     async fn build(&self, req: &BuildRequest, _log: LogSink) -> Result<Artifact, RuntimeError> {
///         Ok(Artifact { id: "nothing".into(), deployment: req.deployment.clone(), generation: req.generation })
///     }
///     async fn start(&self, spec: &StartSpec) -> Result<InstanceInfo, RuntimeError> {
///         Ok(InstanceInfo {
///             id: InstanceId::random(),
///             deployment: spec.artifact.deployment.clone(),
///             generation: spec.artifact.generation,
///             node: spec.node.clone(),
///             port: Some(spec.manifest.config.port),
///             started_at: Timestamp::now(),
///         })
///     }
///     async fn stop(&self, _: &InstanceId, _: std::time::Duration) -> Result<(), RuntimeError> { Ok(()) }
///     async fn status(&self, _: &InstanceId) -> Result<InstanceState, RuntimeError> { Ok(InstanceState::Running) }
///     async fn list(&self) -> Result<Vec<InstanceInfo>, RuntimeError> { Ok(vec![]) }
/// }
/// # let r: std::sync::Arc<dyn Runtime> = std::sync::Arc::new(Pretend);
/// # assert!(matches!(futures::executor::block_on(r.stats(&InstanceId::random())), Err(RuntimeError::Unsupported { .. })));
/// ```
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name of the backend (`process`, `docker`, `fake`), for logs and the API.
    fn name(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Builds an artifact from a checkout, streaming build output into `log`.
    async fn build(&self, request: &BuildRequest, log: LogSink) -> Result<Artifact, RuntimeError>;

    /// Starts an instance. The app must be reachable on the returned port.
    async fn start(&self, spec: &StartSpec) -> Result<InstanceInfo, RuntimeError>;

    /// Stops an instance (gracefully, then forcibly after `timeout`) and removes it.
    /// Stopping an instance that is already gone succeeds.
    async fn stop(&self, instance: &InstanceId, timeout: Duration) -> Result<(), RuntimeError>;

    /// What the instance is doing.
    async fn status(&self, instance: &InstanceId) -> Result<InstanceState, RuntimeError>;

    /// Every instance this runtime started on this node and that still exists, including
    /// those started before a restart of the worker (when `capabilities().reattach`).
    async fn list(&self) -> Result<Vec<InstanceInfo>, RuntimeError>;

    /// Follows the instance's output, from its recent past on.
    async fn logs(&self, instance: &InstanceId) -> Result<LogFollow, RuntimeError> {
        let _ = instance;
        Err(RuntimeError::Unsupported {
            runtime: self.name(),
            operation: "logs",
        })
    }

    /// A resource use sample.
    async fn stats(&self, instance: &InstanceId) -> Result<InstanceStats, RuntimeError> {
        let _ = instance;
        Err(RuntimeError::Unsupported {
            runtime: self.name(),
            operation: "stats",
        })
    }

    /// Removes an artifact that no instance uses any more.
    async fn remove_artifact(&self, artifact: &Artifact) -> Result<(), RuntimeError> {
        let _ = artifact;
        Ok(())
    }
}
