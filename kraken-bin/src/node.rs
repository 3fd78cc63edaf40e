//! What every kind of node needs: its data dir, its id, a runtime and a transport.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use kraken_core::model::NodeId;
use kraken_core::runtime::Runtime;
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::transport::Transport;
use kraken_core::transport::memory::MemoryBroker;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub async fn transport(amqp: Option<&str>) -> Result<Arc<dyn Transport>> {
    match amqp {
        None => Ok(Arc::new(MemoryBroker::default().transport())),
        Some(url) => amqp_transport(url).await,
    }
}

#[cfg(feature = "amqp")]
async fn amqp_transport(url: &str) -> Result<Arc<dyn Transport>> {
    use kraken_core::transport::amqp::{AmqpConfig, AmqpTransport};
    let transport = AmqpTransport::connect(AmqpConfig::default().url(url))
        .await
        .with_context(|| format!("cannot connect to the broker at {}", redact(url)))?;
    Ok(Arc::new(transport))
}

#[cfg(not(feature = "amqp"))]
async fn amqp_transport(_url: &str) -> Result<Arc<dyn Transport>> {
    anyhow::bail!("this build of kraken has no RabbitMQ transport")
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

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
