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
    #[arg(long, env = "KRAKEN_AMQP_URL", value_name = "URL")]
    pub amqp: Option<String>,
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
    let Some(amqp) = args.amqp.as_deref() else {
        bail!("kraken agent needs the platform's broker: --amqp <url> (or KRAKEN_AMQP_URL)");
    };
    let data_dir = node::data_dir(args.data_dir).await?;
    let id = node::node_id(&data_dir).await?;
    let runtime = node::runtime(args.runtime, &data_dir, &id, &args.images).await?;
    let transport = node::transport(Some(amqp)).await?;
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
