//! [`Core`]: what handlers and resolvers share while a server runs, and the views of the
//! platform they answer with.

use super::auth::ApiToken;
use super::config::ApiConfig;
use super::facts::NodeFacts;
use super::state::ApiState;
use crate::state::Database;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What handlers and resolvers share while the server runs.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) db: Arc<Database>,
    pub(crate) config: ApiConfig,
    pub(crate) token: ApiToken,
    pub(crate) node: NodeFacts,
    /// The address the server listens on.
    pub(crate) local_addr: SocketAddr,
    /// Cancelled when the server shuts down: ends follows and websockets, so that graceful
    /// shutdown does not wait for clients that never leave.
    pub(crate) stop: CancellationToken,
    /// One permit per open stream.
    pub(crate) streams: Arc<Semaphore>,
}

impl Core {
    pub(crate) fn new(state: ApiState, local_addr: SocketAddr) -> Self {
        let streams = Arc::new(Semaphore::new(state.config.max_streams.max(1)));
        Core {
            db: state.db,
            config: state.config,
            token: state.token,
            node: state.node,
            local_addr,
            stop: CancellationToken::new(),
            streams,
        }
    }

    /// The platform info as the node knows it, with the current epoch and API address.
    pub(crate) fn platform(&self) -> PlatformView {
        let local = Some(self.local_addr.to_string());
        match self.node.platform_info() {
            Some(info) => PlatformView {
                orchestrator: Some(info.orchestrator.to_string()),
                epoch: self.db.epoch().max(info.epoch),
                api_addr: info.api_addr.or(local),
                broker_url: info.broker_url.as_deref().map(crate::util::redact),
                candidates: info.candidates.iter().map(ToString::to_string).collect(),
            },
            None => PlatformView {
                orchestrator: None,
                epoch: self.db.epoch(),
                api_addr: local,
                broker_url: None,
                candidates: Vec::new(),
            },
        }
    }

    /// The services the platform offers, for `getPlatformServices`.
    pub(crate) fn services(&self) -> Vec<ServiceView> {
        let platform = self.platform();
        let mut services = vec![ServiceView {
            name: "api".into(),
            kind: "http".into(),
            address: platform.api_addr.as_ref().map(|a| format!("http://{a}")),
        }];
        if let Some(transport) = self.node.transport {
            services.push(ServiceView {
                name: "transport".into(),
                kind: transport.into(),
                address: platform.broker_url.clone(),
            });
        }
        if let Some(runtime) = self.node.runtime {
            services.push(ServiceView {
                name: "runtime".into(),
                kind: runtime.into(),
                address: None,
            });
        }
        services
    }
}

/// The platform as the API shows it (`/platform`, `getPlatform`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PlatformView {
    pub(crate) orchestrator: Option<String>,
    pub(crate) epoch: u64,
    pub(crate) api_addr: Option<String>,
    pub(crate) broker_url: Option<String>,
    pub(crate) candidates: Vec<String>,
}

/// One service of the platform (`getPlatformServices`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ServiceView {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) address: Option<String>,
}
