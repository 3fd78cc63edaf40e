//! `kraken agent`: a worker node that joins a platform.

use crate::node::{self, RuntimeChoice};
use anyhow::{Result, bail};
use clap::Args;
use kraken_core::agent::Agent;
use kraken_core::executor::NodeConfig;
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use std::path::PathBuf;

/// Arguments of `kraken agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The platform's RabbitMQ broker.
    #[arg(
        long,
        env = "KRAKEN_AMQP_URL",
        value_name = "URL",
        conflicts_with = "orchestrator"
    )]
    pub amqp: Option<String>,
    /// The orchestrator's HTTP address (`host:port`): the broker URL is asked from it.
    #[arg(long, env = "KRAKEN_ORCHESTRATOR", value_name = "ADDR")]
    pub orchestrator: Option<String>,
    /// Prefix of the broker's queue and exchange names: one per platform sharing a broker.
    #[arg(long, env = "KRAKEN_AMQP_PREFIX", default_value = "kraken")]
    pub amqp_prefix: String,
    /// Where this node keeps its state (default: the user's data directory). Several agents
    /// on one machine need one each.
    #[arg(long, env = "KRAKEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address other machines reach this one on, used in app URLs.
    #[arg(long, env = "KRAKEN_ADDRESS", default_value = "127.0.0.1")]
    pub address: String,
    /// Runtime for apps.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Base images of the Docker runtime.
    #[command(flatten)]
    pub images: node::BaseImages,
}

/// Runs a worker until Ctrl-C.
pub async fn run(args: AgentArgs) -> Result<()> {
    let amqp = match (args.amqp, args.orchestrator.as_deref()) {
        (Some(url), _) => url,
        (None, Some(addr)) => node::broker_from_orchestrator(addr).await?,
        (None, None) => bail!(
            "kraken agent needs the platform: --orchestrator <host:port> or --amqp <url> \
             (or KRAKEN_ORCHESTRATOR / KRAKEN_AMQP_URL)"
        ),
    };
    let amqp = amqp.as_str();
    let data_dir = node::data_dir(args.data_dir).await?;
    let id = node::node_id(&data_dir).await?;
    let runtime = node::runtime(args.runtime, &data_dir, &id, &args.images).await?;
    let transport = node::transport(Some(amqp), &args.amqp_prefix).await?;
    println!(
        "kraken: worker {id}, runtime {}, broker {}",
        runtime.name(),
        node::redact(amqp)
    );
    let agent = Agent::builder(id)
        .transport(transport)
        .runtime(runtime)
        .config(NodeConfig {
            data_dir: Some(data_dir),
            address: args.address,
        })
        .executor(WorkerExecutor::new(WorkerConfig::default()))
        .build()?;
    agent
        .run(async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(cause = %err, "cannot listen for Ctrl-C; stopping");
            }
        })
        .await?;
    Ok(())
}
