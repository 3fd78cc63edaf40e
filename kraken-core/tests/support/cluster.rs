//! An in-process platform: one orchestrator node and N worker nodes on one memory broker.
#![allow(dead_code, clippy::unwrap_used)]

use kraken_core::agent::{Agent, AgentHandle};
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::{OrchestrationExecutor, OrchestratorConfig};
use kraken_core::executor::probe::StaticProbe;
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::model::{Deployment, DeploymentId, NodeId, NodeStats, StatusKind};
use kraken_core::runtime::Runtime;
use kraken_core::state::{Database, StateConfig};
use kraken_core::transport::memory::{MemoryBroker, MemoryTransport};
use std::sync::Arc;
use std::time::Duration;

/// Timings short enough for tests.
pub fn orchestrator_config() -> OrchestratorConfig {
    OrchestratorConfig {
        node_timeout: Duration::from_millis(1500),
        announce_interval: Duration::from_millis(200),
        tick: Duration::from_millis(100),
        orphan_retry: Duration::from_millis(500),
        ..OrchestratorConfig::default()
    }
}

pub fn worker_config() -> WorkerConfig {
    WorkerConfig {
        sysinfo_interval: Duration::from_millis(150),
        stats_interval: Duration::from_millis(300),
        max_parallel_deployments: 4,
        stop_timeout: Duration::from_secs(2),
        probe: Arc::new(StaticProbe(NodeStats {
            hostname: "test".into(),
            ram_total_mb: 8192,
            ram_free_mb: 4096,
            ram_used_mb: 4096,
            cpus: 4,
            ..NodeStats::default()
        })),
        log_flush: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

pub struct WorkerNode {
    pub id: NodeId,
    pub runtime: Arc<dyn Runtime>,
    pub transport: MemoryTransport,
    pub handle: Option<AgentHandle>,
}

pub struct Cluster {
    pub broker: MemoryBroker,
    pub db: Arc<Database>,
    pub orchestrator: Option<AgentHandle>,
    pub workers: Vec<WorkerNode>,
}

impl Cluster {
    /// Starts an orchestrator node (orchestrator only) over `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self::with_config(db, orchestrator_config())
    }

    /// Starts an orchestrator node (orchestrator only) over `db` with these settings.
    pub fn with_config(db: Arc<Database>, config: OrchestratorConfig) -> Self {
        let broker = MemoryBroker::default();
        let orchestrator = Agent::builder(NodeId::parse("orchestrator").unwrap())
            .transport(Arc::new(broker.transport()))
            .runtime(Arc::new(kraken_core::runtime::fake::FakeRuntime::new()))
            .executor(OrchestrationExecutor::new(Arc::clone(&db), config))
            .shutdown_grace(Duration::from_secs(5))
            .build()
            .unwrap()
            .spawn();
        Cluster {
            broker,
            db,
            orchestrator: Some(orchestrator),
            workers: Vec::new(),
        }
    }

    pub fn in_memory() -> Self {
        Self::new(Database::in_memory(StateConfig::default()))
    }

    /// Adds a worker node running `runtime`.
    pub fn add_worker(&mut self, name: &str, runtime: Arc<dyn Runtime>) -> NodeId {
        let id = NodeId::parse(name).unwrap();
        let transport = self.broker.transport();
        let handle = self.start_worker(&id, Arc::clone(&runtime), transport.clone());
        self.workers.push(WorkerNode {
            id: id.clone(),
            runtime,
            transport,
            handle: Some(handle),
        });
        id
    }

    fn start_worker(
        &self,
        id: &NodeId,
        runtime: Arc<dyn Runtime>,
        transport: MemoryTransport,
    ) -> AgentHandle {
        Agent::builder(id.clone())
            .transport(Arc::new(transport))
            .runtime(runtime)
            .config(NodeConfig::default())
            .executor(WorkerExecutor::new(worker_config()))
            .shutdown_grace(Duration::from_secs(5))
            .build()
            .unwrap()
            .spawn()
    }

    /// Stops worker `i` gracefully (its apps keep running in its runtime).
    pub async fn stop_worker(&mut self, i: usize) {
        if let Some(h) = self.workers[i].handle.take() {
            h.shutdown().await.unwrap();
        }
        self.workers[i].transport.close();
    }

    /// Restarts worker `i` on the same runtime (re-attach).
    pub fn restart_worker(&mut self, i: usize) {
        let transport = self.broker.transport();
        let w = &self.workers[i];
        let handle = self.start_worker(&w.id, Arc::clone(&w.runtime), transport.clone());
        self.workers[i].transport = transport;
        self.workers[i].handle = Some(handle);
    }

    /// Waits until `n` nodes are registered.
    pub async fn wait_nodes(&self, n: usize) {
        wait_until(Duration::from_secs(10), || self.db.nodes().len() == n).await;
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        if let Some(o) = self.orchestrator.take() {
            o.shutdown().await.unwrap();
        }
    }
}

/// Polls `f` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the deployment reaches `kind` (panics with its history otherwise).
pub async fn wait_status(
    db: &Database,
    id: &DeploymentId,
    kind: StatusKind,
    limit: Duration,
) -> Deployment {
    let start = tokio::time::Instant::now();
    loop {
        let d = db.deployment(id).unwrap();
        if d.status.kind() == kind {
            return d;
        }
        if start.elapsed() > limit {
            let history: Vec<String> = d.history.iter().map(|c| c.status.to_string()).collect();
            let logs: Vec<String> = db
                .logs(id, Some(20))
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.text)
                .collect();
            panic!(
                "{id} did not reach {kind:?} within {limit:?}; history: {history:?}; logs: {logs:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
