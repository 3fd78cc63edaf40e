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
pub mod replication;
pub mod rollover;
pub mod worker;

use crate::model::{NodeId, PlatformInfo};
use crate::runtime::{Runtime, RuntimeError};
use crate::transport::{Transport, TransportError};
use crate::util::lock;
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
    /// Whether this node can take over as orchestrator (it runs a
    /// [`RolloverExecutor`](rollover::RolloverExecutor)); only such nodes are made standby.
    pub candidate: bool,
    /// The cluster join secret. With one, this node proves it in its reports and
    /// announcements and ignores nodes and orchestrators that do not.
    pub join_secret: Option<crate::membership::JoinSecret>,
}

impl NodeConfig {
    /// This node's proof of the join secret, for its reports.
    pub fn join_proof(&self, node: &NodeId) -> Option<String> {
        self.join_secret
            .as_ref()
            .map(|s| s.join_proof(node).as_str().to_owned())
    }

    /// This node's proof of the join secret for an announcement of `orchestrator` at `epoch`.
    pub fn announcement_proof(&self, orchestrator: &NodeId, epoch: u64) -> Option<String> {
        self.join_secret.as_ref().map(|s| {
            s.announcement_proof(orchestrator, epoch)
                .as_str()
                .to_owned()
        })
    }

    /// Whether `proof` shows that `node` knows the join secret (always true on a platform
    /// without one). A refusal is logged.
    pub fn verify_join(&self, node: &NodeId, proof: Option<&str>) -> bool {
        let Some(secret) = &self.join_secret else {
            return true;
        };
        let ok = proof.is_some_and(|p| secret.verify_join(node, &p.to_owned().into()));
        if !ok {
            refused(node, "a node without the cluster join secret was refused");
        }
        ok
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            address: "127.0.0.1".into(),
            candidate: false,
            join_secret: None,
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

/// The `platform` channel as nodes follow it: each announcement acknowledged at once,
/// those without a valid proof of the join secret dropped (and logged), claims dropped
/// (a claim is not an orchestrator yet: nobody follows it).
pub struct Announcements {
    sub: crate::transport::TypedSubscription<crate::wire::PlatformMessage>,
    ctx: NodeContext,
}

impl Announcements {
    /// The next announcement to follow, or `None` once the transport is closed or `stop`
    /// is cancelled.
    pub async fn next_until(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<crate::wire::PlatformMessage> {
        loop {
            let received = self.sub.next_until(stop).await?;
            let message = received.envelope.body.clone();
            received.settle().await;
            if !message.claim && self.ctx.verify_announcement(&message) {
                return Some(message);
            }
        }
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

    /// A clone whose [`shutdown`](Self::shutdown) token is `token` (a child of the node's):
    /// for a role that starts and stops while the node runs, like the orchestrator role of
    /// a node that can be promoted and demoted. It wakes the same executor.
    pub fn scoped(&self, token: CancellationToken) -> Self {
        NodeContext {
            shutdown: token,
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

    /// The announcements on the `platform` channel a node follows (see [`Announcements`]).
    pub async fn announcements(&self) -> Result<Announcements, TransportError> {
        use crate::transport::TransportExt;
        Ok(Announcements {
            sub: self.transport.listen(&crate::wire::PLATFORM).await?,
            ctx: self.clone(),
        })
    }

    /// Whether an announcement proves the join secret (always, on a platform without one).
    /// A refused one is logged.
    pub fn verify_announcement(&self, message: &crate::wire::PlatformMessage) -> bool {
        let Some(secret) = &self.config.join_secret else {
            return true;
        };
        let info = &message.info;
        let ok = message.proof.as_ref().is_some_and(|p| {
            secret.verify_announcement(&info.orchestrator, info.epoch, &p.clone().into())
        });
        if !ok {
            refused(
                &info.orchestrator,
                "an orchestrator announcement without the cluster join secret was ignored",
            );
        }
        ok
    }

    /// The orchestrator epoch this node knows (0 before any announcement).
    pub fn epoch(&self) -> u64 {
        self.platform.borrow().as_ref().map_or(0, |p| p.epoch)
    }

    pub(crate) fn tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

/// Logs a refusal, at most once a minute per node (a refused node keeps trying).
fn refused(node: &NodeId, what: &str) {
    static LAST: std::sync::Mutex<Option<std::collections::HashMap<NodeId, std::time::Instant>>> =
        std::sync::Mutex::new(None);
    let mut last = lock(&LAST);
    let map = last.get_or_insert_with(Default::default);
    let now = std::time::Instant::now();
    if map
        .get(node)
        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
    {
        return;
    }
    if map.len() > 1024 {
        map.clear();
    }
    map.insert(node.clone(), now);
    tracing::warn!(node = %node, "{what}: wrong or missing join secret");
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
/// use kraken_core::async_trait;
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
