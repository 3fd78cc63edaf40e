//! Composition: an [`Agent`] is one node — a transport, a runtime and the executors it
//! runs — built with [`Agent::builder`] and run until a shutdown signal.
//!
//! ```no_run
//! use kraken_core::agent::Agent;
//! use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
//! use kraken_core::model::NodeId;
//! use kraken_core::runtime::process::ProcessRuntime;
//! use kraken_core::transport::memory::MemoryBroker;
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), kraken_core::agent::AgentError> {
//! let broker = MemoryBroker::default();
//! let agent = Agent::builder(NodeId::random())
//!     .transport(Arc::new(broker.transport()))
//!     .runtime(Arc::new(ProcessRuntime::new("/tmp/kraken-runtime")))
//!     .executor(WorkerExecutor::new(WorkerConfig::default()))
//!     .build()?;
//! agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use crate::executor::{ExecutionFailure, Executor, NodeConfig, NodeContext, SetupFailure};
use crate::model::NodeId;
use crate::runtime::Runtime;
use crate::transport::Transport;
use crate::util::lock;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an agent could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A required part was not given to the builder.
    #[error("the agent needs a {0}")]
    Missing(&'static str),
    /// An executor's setup failed.
    #[error("executor {executor} could not start: {source}")]
    Setup {
        /// Which executor.
        executor: String,
        /// Why.
        #[source]
        source: SetupFailure,
    },
    /// An executor failed fatally.
    #[error("executor {executor} failed: {reason}")]
    Fatal {
        /// Which executor.
        executor: String,
        /// Why.
        reason: String,
    },
}

/// Builds an [`Agent`].
#[must_use]
pub struct AgentBuilder {
    node: NodeId,
    transport: Option<Arc<dyn Transport>>,
    runtime: Option<Arc<dyn Runtime>>,
    config: NodeConfig,
    executors: Vec<Box<dyn Executor>>,
    grace: Duration,
}

impl AgentBuilder {
    /// The transport this node talks through.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }
    /// The runtime this node runs apps with.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }
    /// Shared node settings.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }
    /// Adds an executor. Executors are set up in the order they are added.
    pub fn executor(mut self, executor: impl Executor) -> Self {
        self.executors.push(Box::new(executor));
        self
    }
    /// Adds a boxed executor.
    pub fn boxed_executor(mut self, executor: Box<dyn Executor>) -> Self {
        self.executors.push(executor);
        self
    }
    /// How long shutdown waits for work in flight before giving up on it (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// The agent.
    pub fn build(self) -> Result<Agent, AgentError> {
        let transport = self.transport.ok_or(AgentError::Missing("transport"))?;
        let runtime = self.runtime.ok_or(AgentError::Missing("runtime"))?;
        let ctx = NodeContext::new(self.node, transport, runtime, self.config);
        Ok(Agent {
            ctx,
            executors: self.executors,
            grace: self.grace,
        })
    }
}

/// One node: its context and executors.
pub struct Agent {
    ctx: NodeContext,
    executors: Vec<Box<dyn Executor>>,
    grace: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.executors.iter().map(|e| e.name()).collect();
        f.debug_struct("Agent")
            .field("ctx", &self.ctx)
            .field("executors", &names)
            .finish()
    }
}

impl Agent {
    /// Starts building a node with this id.
    pub fn builder(node: NodeId) -> AgentBuilder {
        AgentBuilder {
            node,
            transport: None,
            runtime: None,
            config: NodeConfig::default(),
            executors: Vec::new(),
            grace: Duration::from_secs(30),
        }
    }

    /// The node's context (id, transport, runtime, platform info).
    pub fn context(&self) -> &NodeContext {
        &self.ctx
    }

    /// Sets up every executor, then runs them until `shutdown` resolves or one fails
    /// fatally; then stops consuming, lets work in flight finish (within the grace time)
    /// and calls every executor's `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let Agent {
            ctx,
            executors,
            grace,
        } = self;
        let stop = ctx.shutdown();
        let mut running = Vec::new();
        for mut executor in executors {
            let ectx = ctx.for_executor();
            if let Err(source) = executor.setup(&ectx).await {
                stop.cancel();
                ctx.tracker().close();
                let _ = tokio::time::timeout(grace, ctx.tracker().wait()).await;
                return Err(AgentError::Setup {
                    executor: executor.name().to_owned(),
                    source,
                });
            }
            running.push((executor, ectx));
        }
        tracing::info!(node = %ctx.node, transport = ctx.transport.name(), runtime = ctx.runtime.name(), "agent running");
        let fatal = CancellationToken::new();
        let failure: Arc<std::sync::Mutex<Option<AgentError>>> = Arc::default();
        let mut loops = Vec::new();
        for (executor, ectx) in running {
            loops.push(tokio::spawn(drive(
                executor,
                ectx,
                stop.clone(),
                fatal.clone(),
                Arc::clone(&failure),
            )));
        }
        tokio::select! {
            () = shutdown => tracing::info!(node = %ctx.node, "shutting down"),
            () = fatal.cancelled() => tracing::error!(node = %ctx.node, "an executor failed; shutting down"),
        }
        stop.cancel();
        for handle in loops {
            if let Err(err) = handle.await {
                tracing::error!(cause = %err, "an executor task panicked");
            }
        }
        let tracker = ctx.tracker();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(node = %ctx.node, ?grace, "work still in flight after the grace time was abandoned");
        }
        let failed = lock(&failure).take();
        failed.map_or(Ok(()), Err)
    }

    /// Runs the agent in a task and returns a handle to stop it.
    pub fn spawn(self) -> AgentHandle {
        let ctx = self.ctx.clone();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let join = tokio::spawn(self.run(async move { signal.cancelled().await }));
        AgentHandle { ctx, stop, join }
    }
}

/// Drives one executor: `execute` on every wake-up or tick, `shutdown` at the end.
async fn drive(
    mut executor: Box<dyn Executor>,
    ctx: NodeContext,
    stop: CancellationToken,
    fatal: CancellationToken,
    failure: Arc<std::sync::Mutex<Option<AgentError>>>,
) {
    let waker = ctx.waker();
    loop {
        match executor.execute(&ctx).await {
            Ok(()) => {}
            Err(ExecutionFailure::Recoverable(reason)) => {
                tracing::warn!(executor = executor.name(), reason = %reason, "execute failed; will retry");
            }
            Err(ExecutionFailure::Fatal(reason)) => {
                tracing::error!(executor = executor.name(), reason = %reason, "executor failed");
                *lock(&failure) = Some(AgentError::Fatal {
                    executor: executor.name().to_owned(),
                    reason,
                });
                fatal.cancel();
                break;
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = waker.notified() => {}
            () = tokio::time::sleep(executor.tick()) => {}
        }
    }
    if let Err(err) = executor.shutdown(&ctx).await {
        tracing::warn!(executor = executor.name(), cause = %err, "shutdown failed");
    }
}

/// A running agent (from [`Agent::spawn`]).
#[derive(Debug)]
pub struct AgentHandle {
    ctx: NodeContext,
    stop: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl AgentHandle {
    /// The node's context.
    pub fn context(&self) -> &NodeContext {
        &self.ctx
    }
    /// Signals the agent to stop (gracefully); see [`wait`](Self::wait).
    pub fn stop(&self) {
        self.stop.cancel();
    }
    /// Waits for the agent to end.
    pub async fn wait(self) -> Result<(), AgentError> {
        match self.join.await {
            Ok(result) => result,
            Err(err) => Err(AgentError::Fatal {
                executor: "agent".into(),
                reason: err.to_string(),
            }),
        }
    }
    /// Stops and waits.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        self.stop();
        self.wait().await
    }
    /// Whether the agent ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}
