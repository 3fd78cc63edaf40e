//! What every kind of node needs: its data dir, its id, a runtime and a transport.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
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

/// The runtime asked for; `Auto` picks Docker when its daemon answers.
pub async fn runtime(choice: RuntimeChoice, data_dir: &Path) -> Result<Arc<dyn Runtime>> {
    let process =
        || -> Arc<dyn Runtime> { Arc::new(ProcessRuntime::new(data_dir.join("runtime"))) };
    match choice {
        RuntimeChoice::Process => Ok(process()),
        RuntimeChoice::Docker => bail!("this build of kraken has no Docker runtime"),
        RuntimeChoice::Auto => Ok(process()),
    }
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
    bail!("this build of kraken has no RabbitMQ transport")
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
