//! `kraken up`: a whole platform in one process.

#[cfg(feature = "api")]
use crate::cli::config::SavedConfig;
use crate::node::{self, RuntimeChoice};
use anyhow::{Context, Result};
use clap::Args;
use kraken_core::agent::Agent;
#[cfg(feature = "api")]
use kraken_core::api::{ApiConfig, ApiToken};
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::OrchestratorConfig;
use kraken_core::executor::rollover::{Lead, RolloverExecutor};
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::model::{DeploymentId, StatusKind};
use kraken_core::state::{Database, StateConfig, StateEvent};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `kraken up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where Kraken keeps its state (default: the user's data directory).
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
    /// Deploy this git repository right away.
    #[arg(long, value_name = "GIT_URL")]
    pub deploy: Option<String>,
    /// Branch of `--deploy`.
    #[arg(long, default_value = "main", requires = "deploy")]
    pub branch: String,
    /// A RabbitMQ broker for a platform of several machines (`kraken agent --amqp` joins it);
    /// without it the platform is this process only.
    #[arg(long, env = "KRAKEN_AMQP_URL", value_name = "URL")]
    pub amqp: Option<String>,
    /// Prefix of the broker's queue and exchange names: one per platform sharing a broker.
    #[arg(long, env = "KRAKEN_AMQP_PREFIX", default_value = "kraken")]
    pub amqp_prefix: String,
    /// Start (or use) a RabbitMQ broker on this machine, so that other machines can join
    /// with `kraken agent --orchestrator <this machine>`.
    #[arg(long, conflicts_with = "amqp")]
    pub local_broker: bool,
    /// Run no apps on this machine: orchestrate only (workers join with `kraken agent`).
    #[arg(long)]
    pub no_worker: bool,
    /// Join secret, failure detector and failover timeouts.
    #[command(flatten)]
    pub rollover: node::RolloverArgs,
    /// Where the HTTP API listens (0.0.0.0 = every interface; port 0 = any free port).
    #[cfg(feature = "api")]
    #[arg(long, default_value = "0.0.0.0:8000", value_name = "HOST:PORT")]
    pub api_addr: std::net::SocketAddr,
    /// The API token to require [default: the one in <data dir>/api-token, generated at
    /// first start]
    #[cfg(feature = "api")]
    #[arg(
        long,
        env = "KRAKEN_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
    /// Require the token for reads too (queries, logs, metrics), not only for changes.
    #[cfg(feature = "api")]
    #[arg(long)]
    pub require_token_for_queries: bool,
}

/// Runs the platform until Ctrl-C. `token` is the global `--token`, used when
/// `--api-token` is not given.
pub async fn run(args: UpArgs, token: Option<String>) -> Result<()> {
    let data_dir = node::data_dir(args.data_dir).await?;
    let node = node::node_id(&data_dir).await?;
    let runtime = node::runtime(args.runtime, &data_dir, &node, &args.images).await?;
    let secret = args
        .rollover
        .secret(&data_dir, true)
        .await?
        .context("no join secret")?;
    let (amqp, announced_broker) = if args.local_broker {
        let local = crate::broker::ensure_local(&args.address, &secret).await?;
        (Some(local.url), Some(local.announced_url))
    } else {
        let others = args
            .amqp
            .as_deref()
            .map(|url| node::broker_for_others(url, &args.address));
        (args.amqp.clone(), others)
    };
    let transport = node::transport(amqp.as_deref(), &args.amqp_prefix).await?;
    let db = Database::open(&data_dir.join("orchestrator"), StateConfig::default())
        .await
        .context("cannot open the orchestrator state")?;
    let config = NodeConfig {
        data_dir: Some(data_dir.clone()),
        address: args.address.clone(),
        candidate: true,
        join_secret: Some(secret.clone()),
    };
    #[cfg(feature = "api")]
    let token = match args.api_token.as_ref().or(token.as_ref()) {
        Some(token) => ApiToken::new(token).context("--api-token / KRAKEN_API_TOKEN")?,
        None => node::platform_token(&secret)?,
    };
    #[cfg(not(feature = "api"))]
    let _ = token;
    // Alone in this process: lead at once. On a broker: lead unless an orchestrator is there.
    let lead = if amqp.is_some() {
        Lead::WhenAlone
    } else {
        Lead::Now
    };
    let orchestrator = RolloverExecutor::new(
        Arc::clone(&db),
        args.rollover.config(
            lead,
            OrchestratorConfig {
                broker_url: announced_broker,
                #[cfg(feature = "api")]
                api: Some(
                    ApiConfig::default()
                        .bind(args.api_addr)
                        .token(token.clone())
                        .require_token_for_queries(args.require_token_for_queries),
                ),
                ..OrchestratorConfig::default()
            },
        ),
    );
    let role = orchestrator.watch_role();
    let mut builder = Agent::builder(node.clone())
        .transport(Arc::clone(&transport))
        .runtime(Arc::clone(&runtime))
        .config(config)
        .executor(orchestrator);
    if !args.no_worker {
        builder = builder.executor(WorkerExecutor::new(WorkerConfig::default()));
    }
    let agent = builder.build()?;

    println!("kraken: node {node}");
    println!("kraken: data dir {}", data_dir.display());
    println!(
        "kraken: runtime {}, transport {}",
        runtime.name(),
        transport.name()
    );
    println!("kraken: {} deployment(s) known", db.deployments().len());

    let handle = agent.spawn();
    node::advertise_while_primary(role, node.clone(), handle.context().watch_platform());
    #[cfg(feature = "api")]
    let handle = {
        let Some(addr) = api_address(&handle).await else {
            return handle
                .shutdown()
                .await
                .context("the platform could not start");
        };
        // Saved before it is announced, so whoever reads the announcement can use the CLI.
        let saved = SavedConfig {
            orchestrator: Some(addr.clone()),
            token: Some(token.as_str().to_owned()),
        };
        let saved = crate::cli::config::save(&saved);
        println!("kraken: API at http://{addr}");
        println!("kraken: API token {}", token.as_str());
        println!(
            "kraken: other machines join with: kraken agent --orchestrator {addr} --join-secret {}",
            secret.as_text()
        );
        match saved {
            Ok(path) => println!(
                "kraken: the kraken CLI on this machine uses it (saved in {})",
                path.display()
            ),
            Err(err) => eprintln!("kraken: warning: {err:#}"),
        }
        handle
    };
    if let Some(url) = &args.deploy {
        let deployment = db
            .create_deployment(url, &args.branch)
            .context("cannot deploy")?;
        println!(
            "kraken: deploying {url} ({}) as {}",
            args.branch, deployment.id
        );
        tokio::spawn(follow(Arc::clone(&db), deployment.id));
    }
    tokio::select! {
        r = node::stop_signal() => r?,
        () = async { while !handle.is_finished() { tokio::time::sleep(std::time::Duration::from_millis(200)).await } } => {}
    }
    println!("kraken: stopping (apps keep running; `kraken up` again re-attaches them)");
    handle.shutdown().await?;
    Ok(())
}

/// The API address the orchestrator announces once its API serves; `None` if the agent
/// stopped first (its error says why).
#[cfg(feature = "api")]
async fn api_address(handle: &kraken_core::agent::AgentHandle) -> Option<String> {
    let mut platform = handle.context().watch_platform();
    let served = platform.wait_for(|p| p.as_ref().is_some_and(|p| p.api_addr.is_some()));
    let stopped = async {
        while !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        info = served => info.ok().and_then(|p| p.as_ref().and_then(|p| p.api_addr.clone())),
        () = stopped => None,
    }
}

/// Prints a deployment's progress and log until it runs or fails.
async fn follow(db: Arc<Database>, id: DeploymentId) {
    let mut events = db.subscribe();
    loop {
        match events.recv().await {
            Ok(StateEvent::Deployment {
                id: ref changed,
                ref status,
                ..
            }) if *changed == id => {
                println!("kraken: {id}: {status}");
                match status.kind() {
                    StatusKind::Running => {
                        if let Some(url) = db.deployment(&id).and_then(|d| d.url) {
                            println!("kraken: {id} is running at {url}");
                        }
                        return;
                    }
                    StatusKind::Errored | StatusKind::Destroyed => return,
                    _ => {}
                }
            }
            Ok(StateEvent::Log {
                id: ref changed,
                ref lines,
            }) if *changed == id => {
                for line in lines {
                    println!("  [{}] {}", line.stream, line.text);
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
