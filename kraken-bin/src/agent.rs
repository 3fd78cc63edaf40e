//! `kraken agent`: a node that joins a platform, or starts one when it finds none.
//!
//! It looks for an orchestrator (mDNS, then the `--orchestrator` addresses, then, if asked,
//! a scan of the local /24), joins it with the join secret and runs as a worker that can
//! take over as orchestrator. Finding none, it becomes the orchestrator itself, on the
//! broker given with `--amqp` or a RabbitMQ broker it makes sure runs on this machine.

use crate::node::{self, RuntimeChoice};
use anyhow::{Context, Result, bail};
use clap::Args;
use kraken_core::agent::Agent;
use kraken_core::discovery::{self, DiscoveryConfig};
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::OrchestratorConfig;
use kraken_core::executor::rollover::{Lead, RolloverExecutor};
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::state::{Database, StateConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `kraken agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The platform's RabbitMQ broker: skip discovery, meet the orchestrator there (or become
    /// it, if none announces itself).
    #[arg(long, env = "KRAKEN_AMQP_URL", value_name = "URL")]
    pub amqp: Option<String>,
    /// Orchestrator HTTP addresses to try (`host:port`, repeatable) after mDNS.
    #[arg(
        long,
        env = "KRAKEN_ORCHESTRATOR",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub orchestrator: Vec<String>,
    /// Do not look for an orchestrator with mDNS (`_kraken._tcp`).
    #[arg(long)]
    pub no_mdns: bool,
    /// Last resort: probe `/ping` on this port of every host of this machine's /24.
    #[arg(long, value_name = "PORT")]
    pub scan: Option<u16>,
    /// Prefix of the broker's queue and exchange names: one per platform sharing a broker.
    #[arg(long, env = "KRAKEN_AMQP_PREFIX", default_value = "kraken")]
    pub amqp_prefix: String,
    /// Where this node keeps its state (default: the user's data directory). Several agents
    /// on one machine need one each.
    #[arg(long, env = "KRAKEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address other machines reach this one on, used in app URLs and for the broker.
    #[arg(long, env = "KRAKEN_ADDRESS", default_value = "127.0.0.1")]
    pub address: String,
    /// Where the HTTP API listens while this node is the orchestrator.
    #[arg(long, default_value = "0.0.0.0:8000", value_name = "HOST:PORT")]
    pub api_addr: std::net::SocketAddr,
    /// Runtime for apps.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Base images of the Docker runtime.
    #[command(flatten)]
    pub images: node::BaseImages,
    /// Join secret, failure detector and failover timeouts.
    #[command(flatten)]
    pub rollover: node::RolloverArgs,
    /// On Ctrl-C or SIGTERM, keep this node's apps running and its place in the platform (they are
    /// re-attached when the agent comes back within the node timeout) instead of leaving.
    #[arg(long)]
    pub keep_apps: bool,
}

/// Runs the node until Ctrl-C.
pub async fn run(args: AgentArgs) -> Result<()> {
    let data_dir = node::data_dir(args.data_dir.clone()).await?;
    let id = node::node_id(&data_dir).await?;

    // Where is the platform?
    let (amqp, secret, announced_broker) = match &args.amqp {
        Some(url) => {
            let secret = args.rollover.secret(&data_dir, true).await?;
            let others = node::broker_for_others(url, &args.address);
            (url.clone(), secret, Some(others))
        }
        None => {
            let found = discovery::find_orchestrator(&DiscoveryConfig {
                mdns: !args.no_mdns,
                addresses: args.orchestrator.clone(),
                scan: match (args.scan, local_ipv4(&args.address)) {
                    (Some(port), Some(ip)) => Some((ip, port)),
                    _ => None,
                },
                ..DiscoveryConfig::default()
            })
            .await;
            match found {
                Some(found) => {
                    let secret = args.rollover.secret(&data_dir, false).await?.context(
                        "joining needs the cluster join secret: pass --join-secret (it is printed by the first orchestrator)",
                    )?;
                    println!(
                        "kraken: found the orchestrator at {} ({:?})",
                        found.api_addr, found.via
                    );
                    let url = node::join(&found.api_addr, &id, &secret).await?;
                    (url, Some(secret), None)
                }
                None if !args.orchestrator.is_empty() => bail!(
                    "no orchestrator answered at {}; check the address, or leave --orchestrator out to start a platform here",
                    args.orchestrator.join(", ")
                ),
                None => {
                    println!("kraken: no orchestrator found: this node starts the platform");
                    let secret = args
                        .rollover
                        .secret(&data_dir, true)
                        .await?
                        .context("no join secret")?;
                    let local = crate::broker::ensure_local(&args.address, &secret).await?;
                    (local.url, Some(secret), Some(local.announced_url))
                }
            }
        }
    };

    let runtime = node::runtime(args.runtime, &data_dir, &id, &args.images).await?;
    let transport = node::transport(Some(&amqp), &args.amqp_prefix).await?;
    println!(
        "kraken: node {id}, runtime {}, broker {}",
        runtime.name(),
        node::redact(&amqp)
    );
    let db = Database::open(&data_dir.join("orchestrator"), StateConfig::default())
        .await
        .context("cannot open this node's copy of the orchestrator state")?;
    #[cfg(feature = "api")]
    let api = match &secret {
        Some(secret) => Some(
            kraken_core::api::ApiConfig::default()
                .bind(args.api_addr)
                .token(node::platform_token(secret)?),
        ),
        None => Some(kraken_core::api::ApiConfig::default().bind(args.api_addr)),
    };
    let rollover = RolloverExecutor::new(
        Arc::clone(&db),
        args.rollover.config(
            Lead::WhenAlone,
            OrchestratorConfig {
                broker_url: announced_broker,
                #[cfg(feature = "api")]
                api,
                ..OrchestratorConfig::default()
            },
        ),
    );
    let role = rollover.watch_role();
    let agent = Agent::builder(id.clone())
        .transport(transport)
        .runtime(runtime)
        .config(NodeConfig {
            data_dir: Some(data_dir),
            address: args.address,
            candidate: true,
            join_secret: secret,
        })
        .executor(rollover)
        .executor(WorkerExecutor::new(WorkerConfig {
            leave_on_shutdown: !args.keep_apps,
            ..WorkerConfig::default()
        }))
        .shutdown_grace(Duration::from_secs(30))
        .build()?;
    node::advertise_while_primary(role.clone(), id, agent.context().watch_platform());
    let mut roles = role;
    tokio::spawn(async move {
        while roles.changed().await.is_ok() {
            let now = roles.borrow_and_update().clone();
            println!("kraken: role {now:?}");
        }
    });
    agent
        .run(async {
            if let Err(err) = node::stop_signal().await {
                tracing::error!(cause = %err, "cannot listen for stop signals; stopping");
            }
        })
        .await?;
    Ok(())
}

/// The IPv4 address whose /24 is scanned: `--address` when it is one, else the address of
/// the interface the default route would use (no packet is sent).
fn local_ipv4(address: &str) -> Option<std::net::Ipv4Addr> {
    if let Ok(ip) = address.parse::<std::net::Ipv4Addr>()
        && !ip.is_loopback()
    {
        return Some(ip);
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => address.parse().ok(),
    }
}
