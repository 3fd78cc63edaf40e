//! The units of work an agent runs: the [`Executor`] trait, the [`NodeContext`] every
//! executor gets, and the two executors every Kraken node is made of.
//!
//! - [`worker`]: deploys what the orchestrator sends, reports status, logs and stats.
//! - [`orchestrator`]: owns the state database, places deployments, watches nodes.
//!
//! An executor is driven by its agent: [`Executor::setup`] once, then
//! [`Executor::execute`] each time it is woken (through [`NodeContext::wake`]) or its
//! [`Executor::tick`] elapsed, then [`Executor::shutdown`]. Nothing spins: work that takes
//! time runs in tasks spawned on [`NodeContext::spawn`].

pub mod orchestrator;
pub mod probe;
pub mod worker;

use crate::model::{NodeId, PlatformInfo};
use crate::runtime::{Runtime, RuntimeError};
use crate::transport::{Transport, TransportError};
use async_trait::async_trait;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings every executor of a node shares.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the node keeps its state (`None`: nothing persisted, for tests and benches).
    pub data_dir: Option<PathBuf>,
    /// The address other machines reach this node on (host or IP), used in app URLs.
    pub address: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            address: "127.0.0.1".into(),
        }
    }
}

/// What an executor can reach: the node's identity, transport, runtime and settings.
///
/// Cheap to clone. Each executor gets its own clone whose [`wake`](Self::wake) wakes that
/// executor.
#[derive(Clone)]
pub struct NodeContext {
    /// This node.
    pub node: NodeId,
    /// How this node talks to the others.
    pub transport: Arc<dyn Transport>,
    /// How this node runs apps.
    pub runtime: Arc<dyn Runtime>,
    /// Shared settings.
    pub config: Arc<NodeConfig>,
    platform: watch::Sender<Option<PlatformInfo>>,
    waker: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("node", &self.node)
            .field("transport", &self.transport.name())
            .field("runtime", &self.runtime.name())
            .finish()
    }
}

impl NodeContext {
    /// A context for a node. The agent builds these; tests of a single executor may too.
    pub fn new(
        node: NodeId,
        transport: Arc<dyn Transport>,
        runtime: Arc<dyn Runtime>,
        config: NodeConfig,
    ) -> Self {
        NodeContext {
            node,
            transport,
            runtime,
            config: Arc::new(config),
            platform: watch::Sender::new(None),
            waker: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// A clone with its own waker, for another executor of the same node.
    pub fn for_executor(&self) -> Self {
        NodeContext {
            waker: Arc::new(Notify::new()),
            ..self.clone()
        }
    }

    /// Asks the agent to call this executor's `execute` soon. Wake-ups coalesce.
    pub fn wake(&self) {
        self.waker.notify_one();
    }

    /// A handle that wakes this executor, for tasks that outlive a borrow of the context.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.waker)
    }

    /// Resolves when the node shuts down.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns a task the agent waits for at shutdown.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(future)
    }

    /// The orchestrator this node follows, as last announced (or set by the orchestrator
    /// executor on its own node).
    pub fn platform(&self) -> Option<PlatformInfo> {
        self.platform.borrow().clone()
    }

    /// Watches the platform info.
    pub fn watch_platform(&self) -> watch::Receiver<Option<PlatformInfo>> {
        self.platform.subscribe()
    }

    /// Records who leads. Ignores announcements of an epoch older than the one known.
    pub fn set_platform(&self, info: PlatformInfo) -> bool {
        self.platform.send_if_modified(|current| match current {
            Some(known) if known.epoch > info.epoch || *known == info => false,
            _ => {
                *current = Some(info);
                true
            }
        })
    }

    /// The orchestrator epoch this node knows (0 before any announcement).
    pub fn epoch(&self) -> u64 {
        self.platform.borrow().as_ref().map_or(0, |p| p.epoch)
    }

    pub(crate) fn tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

/// An executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupFailure {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The runtime failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// The state could not be loaded or stored.
    #[error("state: {0}")]
    State(#[from] crate::state::StateError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// One run of [`Executor::execute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionFailure {
    /// Worth logging; the agent calls `execute` again.
    #[error("{0}")]
    Recoverable(String),
    /// The executor cannot go on; the agent shuts the node down.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// A unit of work a node runs. The seed's trait: `setup`, `execute`, plus `shutdown`.
///
/// ```
/// use async_trait::async_trait;
/// use kraken_core::executor::{Executor, ExecutionFailure, NodeContext, SetupFailure};
///
/// /// Counts how often it was executed.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// #[async_trait]
/// impl Executor for Counter {
///     fn name(&self) -> &str { "counter" }
///     async fn setup(&mut self, _: &NodeContext) -> Result<(), SetupFailure> { Ok(()) }
///     async fn execute(&mut self, _: &NodeContext) -> Result<(), ExecutionFailure> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
/// # let e: Box<dyn Executor> = Box::new(Counter::default());
/// # assert_eq!(e.name(), "counter");
/// ```
#[async_trait]
pub trait Executor: Send + 'static {
    /// A short name, for logs.
    fn name(&self) -> &str;

    /// Called once before the first `execute`: declare channels, start consumers.
    async fn setup(&mut self, ctx: &NodeContext) -> Result<(), SetupFailure>;

    /// Called on every wake-up and tick: look at the state and act on it. Must not block
    /// for long; long work goes to tasks spawned with [`NodeContext::spawn`].
    async fn execute(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure>;

    /// Called once when the node shuts down, after the last `execute`.
    async fn shutdown(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        let _ = ctx;
        Ok(())
    }

    /// The longest time between two `execute` calls when nothing wakes the executor.
    fn tick(&self) -> Duration {
        Duration::from_secs(1)
    }
}
