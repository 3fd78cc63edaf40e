//! What every kind of node needs: its data dir, its id, a runtime and a transport.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use kraken_core::executor::orchestrator::OrchestratorConfig;
use kraken_core::executor::rollover::{Lead, Role, RolloverConfig};
use kraken_core::membership::JoinSecret;
use kraken_core::model::NodeId;
use kraken_core::runtime::Runtime;
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::transport::Transport;
use kraken_core::transport::memory::MemoryBroker;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use kraken_core::util::redact;

/// Which runtime runs the apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// Docker when its daemon answers, else processes.
    Auto,
    /// Child processes running the manifest's `run` command.
    Process,
    /// Docker containers.
    Docker,
}

/// The data dir given, or the user's default one; created if missing.
pub async fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match given {
        Some(d) => d,
        None => directories::ProjectDirs::from("", "", "kraken")
            .map(|d| d.data_dir().to_path_buf())
            .context("cannot find a data directory for this user; pass --data-dir")?,
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    Ok(dir)
}

/// The node id is kept in the data dir so that a restarted agent is the same node and
/// re-attaches its apps. Several agents on one machine need several data dirs.
pub async fn node_id(data_dir: &Path) -> Result<NodeId> {
    let path = data_dir.join("node-id");
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => {
            NodeId::parse(text.trim()).with_context(|| format!("{} is corrupt", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId::random();
            tokio::fs::write(&path, id.as_str())
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Membership and rollover settings, shared by `kraken up` and `kraken agent`.
#[derive(Debug, Clone, Args)]
pub struct RolloverArgs {
    /// The cluster join secret [default: the one in <data dir>/join-secret; `kraken up` and a
    /// first agent generate it]. Joining an existing platform needs it.
    #[arg(
        long,
        env = "KRAKEN_JOIN_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub join_secret: Option<String>,
    /// Milliseconds without news from a node before its apps are placed elsewhere.
    #[arg(long, default_value_t = 2500, value_name = "MS")]
    pub node_timeout_ms: u64,
    /// Milliseconds without news from the orchestrator before its standby takes over.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub failover_timeout_ms: u64,
}

impl RolloverArgs {
    /// The join secret given, or the one stored in the data dir, or (with `create`) a new one
    /// stored there. The flag's or stored secret is saved in the data dir for next time.
    pub async fn secret(&self, data_dir: &Path, create: bool) -> Result<Option<JoinSecret>> {
        if let Some(text) = &self.join_secret {
            let secret = JoinSecret::parse(text).context("--join-secret / KRAKEN_JOIN_SECRET")?;
            if JoinSecret::load(data_dir).await?.as_ref() != Some(&secret) {
                secret.store(data_dir).await?;
            }
            return Ok(Some(secret));
        }
        if create {
            let (secret, created) = JoinSecret::load_or_create(data_dir).await?;
            if created {
                println!(
                    "kraken: generated the cluster join secret (kept in {}); other machines join with --join-secret {}",
                    data_dir
                        .join(kraken_core::membership::SECRET_FILE)
                        .display(),
                    secret.as_text()
                );
            }
            return Ok(Some(secret));
        }
        Ok(JoinSecret::load(data_dir).await?)
    }

    /// The rollover executor's settings around an orchestrator configuration.
    pub fn config(&self, lead: Lead, orchestrator: OrchestratorConfig) -> RolloverConfig {
        RolloverConfig {
            failover_timeout: Duration::from_millis(self.failover_timeout_ms.max(100)),
            lead,
            orchestrator: OrchestratorConfig {
                node_timeout: Duration::from_millis(self.node_timeout_ms.max(500)),
                ..orchestrator
            },
            ..RolloverConfig::default()
        }
    }
}

/// The API token every orchestrator of the platform accepts: derived from the join secret,
/// so that it stays the same after a failover.
#[cfg(feature = "api")]
pub fn platform_token(secret: &JoinSecret) -> Result<kraken_core::api::ApiToken> {
    Ok(kraken_core::api::ApiToken::new(
        &secret.derive("api-token"),
    )?)
}

/// Advertises the API on mDNS while this node is the orchestrator.
pub fn advertise_while_primary(
    mut role: tokio::sync::watch::Receiver<Role>,
    node: NodeId,
    api: tokio::sync::watch::Receiver<Option<kraken_core::model::PlatformInfo>>,
) {
    tokio::spawn(async move {
        let mut _advertised = None;
        loop {
            let epoch = match &*role.borrow_and_update() {
                Role::Primary(epoch) => Some(*epoch),
                _ => None,
            };
            let port = api
                .borrow()
                .as_ref()
                .and_then(|p| p.api_addr.as_ref())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            _advertised = match (epoch, port) {
                (Some(epoch), Some(port)) => match kraken_core::discovery::advertise(
                    &node,
                    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    port,
                    epoch,
                ) {
                    Ok(ad) => Some(ad),
                    Err(err) => {
                        tracing::info!(cause = %err, "not advertised on mDNS");
                        None
                    }
                },
                _ => None,
            };
            if role.changed().await.is_err() {
                return;
            }
            // Give the API a moment to start after a promotion.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// What the Docker runtime builds apps from.
#[derive(Debug, Clone, Args)]
#[cfg_attr(not(feature = "docker"), allow(dead_code))]
pub struct BaseImages {
    /// Base image of Node apps (Docker runtime).
    #[arg(long, env = "KRAKEN_NODE_IMAGE", default_value = "node:20-alpine")]
    pub node_image: String,
    /// Base image of Python apps (Docker runtime).
    #[arg(long, env = "KRAKEN_PYTHON_IMAGE", default_value = "python:3.12-slim")]
    pub python_image: String,
    /// Base image of static sites, with busybox `httpd` (Docker runtime).
    #[arg(long, env = "KRAKEN_STATIC_IMAGE", default_value = "busybox:stable")]
    pub static_image: String,
}

/// The runtime asked for, saying on stdout why it was chosen; `Auto` picks Docker when its
/// daemon answers. Docker is scoped to this node's id, so the containers of other agents on
/// the same daemon are never touched.
pub async fn runtime(
    choice: RuntimeChoice,
    data_dir: &Path,
    node: &NodeId,
    images: &BaseImages,
) -> Result<Arc<dyn Runtime>> {
    let process =
        || -> Arc<dyn Runtime> { Arc::new(ProcessRuntime::new(data_dir.join("runtime"))) };
    match choice {
        RuntimeChoice::Process => Ok(process()),
        RuntimeChoice::Docker => docker_runtime(node, images)
            .await
            .context("--runtime docker: the Docker daemon is not usable"),
        RuntimeChoice::Auto => match docker_runtime(node, images).await {
            Ok(docker) => {
                println!("kraken: the Docker daemon answers: apps run in containers");
                Ok(docker)
            }
            Err(err) => {
                println!("kraken: no Docker ({err:#}): apps run as processes");
                Ok(process())
            }
        },
    }
}

#[cfg(feature = "docker")]
async fn docker_runtime(node: &NodeId, images: &BaseImages) -> Result<Arc<dyn Runtime>> {
    use kraken_core::runtime::docker::{DockerConfig, DockerRuntime};
    let config = DockerConfig::default()
        .node_label(node.as_str())
        .node_image(&images.node_image)
        .python_image(&images.python_image)
        .static_image(&images.static_image);
    let docker = DockerRuntime::connect(config)?;
    docker.ping().await?;
    Ok(Arc::new(docker))
}

#[cfg(not(feature = "docker"))]
async fn docker_runtime(_node: &NodeId, _images: &BaseImages) -> Result<Arc<dyn Runtime>> {
    anyhow::bail!("this build of kraken has no Docker runtime (feature `docker`)")
}

/// The transport: a RabbitMQ broker when a URL is given, else the in-memory broker (which
/// only reaches nodes of this process).
pub async fn transport(amqp: Option<&str>, prefix: &str) -> Result<Arc<dyn Transport>> {
    match amqp {
        None => Ok(Arc::new(MemoryBroker::default().transport())),
        Some(url) => amqp_transport(url, prefix).await,
    }
}

/// Joins the orchestrator at `addr` (`POST /join` with the proof of the join secret) and
/// returns the broker URL it gives.
pub async fn join(addr: &str, node: &NodeId, secret: &JoinSecret) -> Result<String> {
    let base = if addr.contains("://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{addr}")
    };
    let url = format!("{base}/join");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .post(&url)
        .json(&serde_json::json!({ "node": node.as_str(), "proof": secret.join_proof(node).as_str() }))
        .send()
        .await
        .with_context(|| format!("cannot reach the orchestrator at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer like a Kraken orchestrator"))?;
    if status == reqwest::StatusCode::FORBIDDEN {
        bail!(
            "the orchestrator at {base} refused this node: {}",
            body.get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("wrong join secret")
        );
    }
    if !status.is_success() {
        bail!("the orchestrator at {url} answered {status}");
    }
    body.get("broker_url")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .with_context(|| {
            format!("the orchestrator at {base} uses no broker (it was started without one)")
        })
}

#[cfg(feature = "amqp")]
async fn amqp_transport(url: &str, prefix: &str) -> Result<Arc<dyn Transport>> {
    use kraken_core::transport::amqp::{AmqpConfig, AmqpTransport};
    // Queues nobody used for this long are deleted by the broker, so a platform gone for
    // good (or a test's) leaves nothing behind. Off by default.
    let expiry = match std::env::var("KRAKEN_AMQP_QUEUE_EXPIRY_SECS") {
        Ok(text) => Some(Duration::from_secs(text.trim().parse().with_context(
            || {
                format!(
                    "KRAKEN_AMQP_QUEUE_EXPIRY_SECS must be a whole number of seconds, not {text:?}"
                )
            },
        )?)),
        Err(_) => None,
    };
    let config = AmqpConfig::default()
        .url(url)
        .prefix(prefix)
        .queue_expiry(expiry);
    let transport = AmqpTransport::connect(config)
        .await
        .with_context(|| format!("cannot connect to the broker at {}", redact(url)))?;
    Ok(Arc::new(transport))
}

#[cfg(not(feature = "amqp"))]
async fn amqp_transport(_url: &str, _prefix: &str) -> Result<Arc<dyn Transport>> {
    anyhow::bail!("this build of kraken has no RabbitMQ transport")
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (`kill`, systemd, `docker stop`): both stop the
/// node gracefully.
pub async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

/// The broker URL told to joining nodes (over `/join`, which checks their join secret, and
/// on the broker's `platform` channel; `/platform` shows it without its password): `url`
/// with its credentials, a loopback host replaced by this machine's `address` so that other
/// machines can use it.
pub fn broker_for_others(url: &str, address: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    // `amqp` is not a scheme the URL parser knows, so its host comes as text.
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let remote = address
        .parse::<std::net::IpAddr>()
        .map_or(!address.eq_ignore_ascii_case("localhost"), |ip| {
            !ip.is_loopback()
        });
    if loopback && remote && parsed.set_host(Some(address)).is_ok() {
        parsed.to_string()
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{broker_for_others, redact};

    #[test]
    fn joining_nodes_get_the_credentials_and_a_reachable_host() {
        assert_eq!(
            broker_for_others("amqp://kraken:pw@10.0.0.2:5672/%2f", "10.0.0.9"),
            "amqp://kraken:pw@10.0.0.2:5672/%2f"
        );
        assert_eq!(
            broker_for_others("amqp://kraken:pw@127.0.0.1:5672/%2f", "10.0.0.9"),
            "amqp://kraken:pw@10.0.0.9:5672/%2f"
        );
        assert_eq!(
            broker_for_others("amqp://localhost/%2f", "192.168.1.4"),
            "amqp://192.168.1.4/%2f"
        );
        // Nothing better to offer: left as it is.
        assert_eq!(
            broker_for_others("amqp://127.0.0.1:5672/%2f", "127.0.0.1"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(broker_for_others("not a url", "10.0.0.9"), "not a url");
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("amqp://kraken:secret@10.0.0.2:5672/%2f"),
            "amqp://kraken:***@10.0.0.2:5672/%2f"
        );
        assert_eq!(
            redact("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
    }
}
