//! What the node running the API tells it about itself, given by whoever starts the API so
//! that the API needs nothing from the executors.

use crate::model::{NodeId, PlatformInfo};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Decides whether a node asking to join (`POST /join`) proves that it knows the cluster's
/// join secret.
///
/// Closures `Fn(&NodeId, Option<&str>) -> bool` implement it.
///
/// ```
/// use kraken_core::api::JoinVerifier;
/// use kraken_core::model::NodeId;
///
/// let open = |_: &NodeId, _: Option<&str>| true;
/// assert!(open.verify_join(&NodeId::parse("n1").unwrap(), None));
/// ```
pub trait JoinVerifier: Send + Sync {
    /// Whether `proof` (absent when the node sent none) shows that `node` knows the secret.
    fn verify_join(&self, node: &NodeId, proof: Option<&str>) -> bool;
}

impl<F> JoinVerifier for F
where
    F: Fn(&NodeId, Option<&str>) -> bool + Send + Sync,
{
    fn verify_join(&self, node: &NodeId, proof: Option<&str>) -> bool {
        self(node, proof)
    }
}

/// What the node running the API tells about itself (for `getPlatform`, `/platform`,
/// `getPlatformServices`, `/join` and the address the API announces). Every part is
/// optional: an API given none serves the database alone.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct NodeFacts {
    /// Who leads the platform, as the node last learnt it.
    pub platform: Option<watch::Receiver<Option<PlatformInfo>>>,
    /// The node's address on the LAN: announced in place of an unspecified bind address.
    pub address: Option<String>,
    /// The node's data dir: where the API token is kept when the settings give none.
    pub data_dir: Option<PathBuf>,
    /// The name of the node's runtime (a service of the platform).
    pub runtime: Option<&'static str>,
    /// The name of the node's transport (a service of the platform).
    pub transport: Option<&'static str>,
    /// Checks the join secret of nodes asking to join; without one, every node may join.
    pub join_verifier: Option<Arc<dyn JoinVerifier>>,
}

impl fmt::Debug for NodeFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeFacts")
            .field("platform", &self.platform.is_some())
            .field("address", &self.address)
            .field("data_dir", &self.data_dir)
            .field("runtime", &self.runtime)
            .field("transport", &self.transport)
            .field("join_verifier", &self.join_verifier.is_some())
            .finish()
    }
}

impl NodeFacts {
    /// Sets [`platform`](Self::platform).
    #[must_use]
    pub fn platform(mut self, platform: watch::Receiver<Option<PlatformInfo>>) -> Self {
        self.platform = Some(platform);
        self
    }
    /// Sets [`address`](Self::address).
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
    /// Sets [`data_dir`](Self::data_dir) (`None`: the node keeps no files).
    #[must_use]
    pub fn data_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.data_dir = dir;
        self
    }
    /// Sets [`runtime`](Self::runtime).
    #[must_use]
    pub fn runtime(mut self, name: &'static str) -> Self {
        self.runtime = Some(name);
        self
    }
    /// Sets [`transport`](Self::transport).
    #[must_use]
    pub fn transport(mut self, name: &'static str) -> Self {
        self.transport = Some(name);
        self
    }
    /// Sets [`join_verifier`](Self::join_verifier).
    #[must_use]
    pub fn join_verifier(mut self, verifier: impl JoinVerifier + 'static) -> Self {
        self.join_verifier = Some(Arc::new(verifier));
        self
    }

    /// The platform info as last learnt.
    pub(crate) fn platform_info(&self) -> Option<PlatformInfo> {
        self.platform.as_ref().and_then(|p| p.borrow().clone())
    }
}
