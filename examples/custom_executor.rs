//! A user-defined executor added to a node, next to Kraken's own worker.
//!
//! Run it with `cargo run -p kraken-examples --example custom_executor`. The node runs
//! Kraken's orchestrator and worker executors plus `Inventory`, an executor of our own that,
//! on every tick, lists what the node's runtime runs and which orchestrator it follows. It
//! stops after a few seconds.

use anyhow::Result;
use kraken_core::agent::Agent;
use kraken_core::async_trait;
use kraken_core::executor::orchestrator::{OrchestrationExecutor, OrchestratorConfig};
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::executor::{ExecutionFailure, Executor, NodeContext, SetupFailure};
use kraken_core::model::NodeId;
use kraken_core::runtime::fake::FakeRuntime;
use kraken_core::state::{Database, StateConfig};
use kraken_core::transport::memory::MemoryBroker;
use std::sync::Arc;
use std::time::Duration;

/// Reports the node's instances now and then.
struct Inventory {
    runs: u64,
}

#[async_trait]
impl Executor for Inventory {
    fn name(&self) -> &str {
        "inventory"
    }

    async fn setup(&mut self, ctx: &NodeContext) -> Result<(), SetupFailure> {
        println!(
            "inventory: watching node {} ({} runtime)",
            ctx.node,
            ctx.runtime.name()
        );
        Ok(())
    }

    async fn execute(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        self.runs += 1;
        let instances = ctx
            .runtime
            .list()
            .await
            .map_err(|e| ExecutionFailure::Recoverable(e.to_string()))?;
        let leader = ctx.platform().map_or("nobody yet".to_owned(), |p| {
            format!("{} (epoch {})", p.orchestrator, p.epoch)
        });
        println!(
            "inventory #{}: {} instance(s), following {leader}",
            self.runs,
            instances.len()
        );
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        println!("inventory: ran {} times", self.runs);
        Ok(())
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(500)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let broker = MemoryBroker::default();
    let agent = Agent::builder(NodeId::parse("custom-node")?)
        .transport(Arc::new(broker.transport()))
        .runtime(Arc::new(FakeRuntime::new()))
        .executor(OrchestrationExecutor::new(
            Database::in_memory(StateConfig::default()),
            OrchestratorConfig::default(),
        ))
        .executor(WorkerExecutor::new(WorkerConfig::default()))
        .executor(Inventory { runs: 0 })
        .build()?;
    agent
        .run(tokio::time::sleep(Duration::from_secs(2)))
        .await?;
    Ok(())
}
