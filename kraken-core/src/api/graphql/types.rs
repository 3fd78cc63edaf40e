//! The object types: deployments, nodes, logs, manifests, the platform.

use super::context::core;
use crate::api::core::{Core, PlatformView, ServiceView};
use crate::api::time::rfc3339;
use crate::model::{
    Deployment, DeploymentId, DeploymentStatus, LogLine, Node, NodeId, StatusChange,
};
use async_graphql::{Context, Object, Result};

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// One entry of a deployment's status history.
struct StatusChangeObject(StatusChange);

#[Object(name = "StatusChange")]
impl StatusChangeObject {
    /// The status name, e.g. `Running`.
    async fn status(&self) -> &'static str {
        self.0.status.kind().as_str()
    }
    /// When it was entered, RFC 3339 (UTC).
    async fn time(&self) -> String {
        rfc3339(self.0.at)
    }
    /// When it was entered, in milliseconds since the Unix epoch.
    async fn time_ms(&self) -> u64 {
        self.0.at.as_millis()
    }
    /// The reason, for `Errored`.
    async fn reason(&self) -> Option<&str> {
        self.0.status.error_reason()
    }
    /// The deploy attempt it belongs to.
    async fn generation(&self) -> u64 {
        self.0.generation
    }
}

/// One line of a deployment's log.
pub(crate) struct LogLineObject(pub(super) LogLine);

#[Object(name = "LogLine")]
impl LogLineObject {
    /// When it was produced, RFC 3339 (UTC).
    async fn time(&self) -> String {
        rfc3339(self.0.at)
    }
    /// `build`, `stdout`, `stderr` or `kraken` (Kraken's own notes).
    async fn stream(&self) -> String {
        self.0.stream.to_string()
    }
    /// The text, without the line break.
    async fn text(&self) -> &str {
        &self.0.text
    }
}

/// The validated `shipwreck.toml` of a deployment (environment values are not shown).
struct ManifestObject(crate::manifest::Manifest);

#[Object(name = "Manifest")]
impl ManifestObject {
    /// The app's name.
    async fn name(&self) -> &str {
        &self.0.app.name
    }
    /// The app's version.
    async fn version(&self) -> &str {
        &self.0.app.version
    }
    /// Who wrote it.
    async fn author(&self) -> Option<&str> {
        self.0.app.author.as_deref()
    }
    /// The path users open.
    async fn endpoint(&self) -> Option<&str> {
        self.0.app.endpoint.as_deref()
    }
    /// The port the app listens on.
    async fn port(&self) -> u16 {
        self.0.config.port
    }
    /// `node`, `python`, `static` or `custom`.
    async fn lang(&self) -> &'static str {
        self.0.config.lang.as_str()
    }
    /// The start command.
    async fn run(&self) -> Option<&str> {
        self.0.config.run.as_deref()
    }
    /// The build command.
    async fn build(&self) -> Option<&str> {
        self.0.config.build.as_deref()
    }
    /// Names of the environment variables set for the app.
    async fn env_keys(&self) -> Vec<&str> {
        self.0.env.keys().map(String::as_str).collect()
    }
    /// Memory limit in MiB.
    async fn memory_mb(&self) -> Option<u64> {
        self.0.resources.memory_mb
    }
    /// CPU limit.
    async fn cpus(&self) -> Option<f64> {
        self.0.resources.cpus
    }
}

/// A deployment. `status` is the status it is in (in a subscription: the status the event
/// is about); the other fields are its state when read.
pub(crate) struct DeploymentObject {
    d: Deployment,
    status: DeploymentStatus,
}

impl DeploymentObject {
    pub(super) fn new(d: Deployment) -> Self {
        let status = d.status.clone();
        DeploymentObject { d, status }
    }

    /// `d` as it is now, shown in `status` (the status an event is about).
    pub(super) fn with_status(d: Deployment, status: DeploymentStatus) -> Self {
        DeploymentObject { d, status }
    }
}

#[Object(name = "Deployment")]
impl DeploymentObject {
    /// Its id.
    async fn id(&self) -> &str {
        self.d.id.as_str()
    }
    /// The git URL of the source.
    async fn src_url(&self) -> &str {
        &self.d.source_url
    }
    /// The git branch.
    async fn git_branch(&self) -> &str {
        &self.d.branch
    }
    /// The app's version from its manifest.
    async fn version(&self) -> Option<&str> {
        self.d.manifest.as_ref().map(|m| m.app.version.as_str())
    }
    /// The commit deployed.
    async fn commit(&self) -> Option<&str> {
        self.d.commit.as_deref()
    }
    /// The host port the app answers on.
    async fn port(&self) -> Option<u16> {
        self.d.port
    }
    /// The status name, e.g. `Running` or `Errored`.
    async fn status(&self) -> &'static str {
        self.status.kind().as_str()
    }
    /// The built artifact's size in bytes, when the runtime reports it (none does yet).
    async fn size(&self) -> Option<u64> {
        None
    }
    /// Memory used, in MiB.
    async fn mem_mb(&self) -> Option<f64> {
        self.d.stats.map(|s| s.mem_bytes as f64 / MIB)
    }
    /// Memory limit, in MiB (the runtime's, else the manifest's).
    async fn max_mem_mb(&self) -> Option<f64> {
        self.d
            .stats
            .and_then(|s| s.mem_limit_bytes)
            .map(|b| b as f64 / MIB)
            .or_else(|| {
                self.d
                    .manifest
                    .as_ref()
                    .and_then(|m| m.resources.memory_mb)
                    .map(|mb| mb as f64)
            })
    }
    /// CPU use in percent of one core.
    async fn cpu_usage(&self) -> Option<f64> {
        self.d.stats.map(|s| s.cpu_percent)
    }
    /// Every status entered, oldest first.
    async fn status_history(&self) -> Vec<StatusChangeObject> {
        self.d
            .history
            .iter()
            .cloned()
            .map(StatusChangeObject)
            .collect()
    }
    /// The URL the running app answers on.
    async fn results_url(&self) -> Option<&str> {
        self.d.url.as_deref()
    }
    /// The git URL given to `createDeployment`.
    async fn deployment_url(&self) -> &str {
        &self.d.source_url
    }
    /// The id of the node it is placed on.
    async fn node(&self) -> Option<&str> {
        self.d.node.as_ref().map(NodeId::as_str)
    }
    /// Why it failed, when `Errored`.
    async fn error_reason(&self) -> Option<&str> {
        self.status.error_reason()
    }
    /// The deploy attempt: bumped on every placement or redeploy.
    async fn generation(&self) -> u64 {
        self.d.generation
    }
    /// The app's name from its manifest.
    async fn app_name(&self) -> Option<&str> {
        self.d.app_name()
    }
    /// The URL the running app answers on (same as `resultsUrl`).
    async fn app_url(&self) -> Option<&str> {
        self.d.url.as_deref()
    }
    /// When it was requested, RFC 3339 (UTC).
    async fn created_at(&self) -> String {
        rfc3339(self.d.created_at)
    }
    /// The validated manifest.
    async fn manifest(&self) -> Option<ManifestObject> {
        self.d.manifest.clone().map(ManifestObject)
    }
    /// The newest `tail` lines of its log (default 100).
    #[graphql(complexity = "5 * child_complexity")]
    async fn logs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] tail: usize,
    ) -> Result<Vec<LogLineObject>> {
        let lines = core(ctx)?
            .db
            .logs(&self.d.id, Some(tail))
            .unwrap_or_default();
        Ok(lines.into_iter().map(LogLineObject).collect())
    }
    /// The node it is placed on.
    async fn placed_on(&self, ctx: &Context<'_>) -> Result<Option<NodeObject>> {
        let core = core(ctx)?;
        Ok(self
            .d
            .node
            .as_ref()
            .and_then(|n| core.db.node(n))
            .map(|n| NodeObject::new(core, n)))
    }
}

/// A node of the platform.
pub(crate) struct NodeObject {
    n: Node,
    is_orchestrator: bool,
}

impl NodeObject {
    pub(super) fn new(core: &Core, n: Node) -> Self {
        let is_orchestrator = core.platform().orchestrator.as_deref() == Some(n.id.as_str());
        NodeObject { n, is_orchestrator }
    }

    fn rank(&self) -> Option<u32> {
        if self.n.rank != u32::MAX {
            Some(self.n.rank)
        } else if self.is_orchestrator {
            Some(0)
        } else {
            None
        }
    }
}

#[Object(name = "Node")]
impl NodeObject {
    /// Its id.
    async fn id(&self) -> &str {
        self.n.id.as_str()
    }
    /// A short description of the machine.
    async fn model(&self) -> &str {
        &self.n.stats.model
    }
    /// The address other machines reach it on.
    async fn addr(&self) -> &str {
        &self.n.address
    }
    /// Its rollover rank: 0 primary orchestrator, 1 standby, higher observers; null for a
    /// node that may not take over.
    async fn orchestration_priority(&self) -> Option<u32> {
        self.rank()
    }
    /// Seconds since the machine booted.
    async fn uptime(&self) -> u64 {
        self.n.stats.uptime_s
    }
    /// Free memory, MiB.
    async fn ram_free(&self) -> u64 {
        self.n.stats.ram_free_mb
    }
    /// Used memory, MiB.
    async fn ram_used(&self) -> u64 {
        self.n.stats.ram_used_mb
    }
    /// Load average over 5 minutes.
    async fn load_avg5(&self) -> f64 {
        self.n.stats.load_avg[1]
    }
    /// Used memory in percent of total.
    async fn current_ram_percent(&self) -> f64 {
        self.n.stats.ram_percent()
    }
    /// When it last reported, RFC 3339 (UTC).
    async fn update_time(&self) -> String {
        rfc3339(self.n.last_seen)
    }
    /// Ids of the deployments placed on it.
    async fn deployments(&self) -> Vec<&str> {
        self.n
            .deployments
            .iter()
            .map(DeploymentId::as_str)
            .collect()
    }
    /// Host name.
    async fn hostname(&self) -> &str {
        &self.n.stats.hostname
    }
    /// Logical CPUs.
    async fn cpus(&self) -> u32 {
        self.n.stats.cpus
    }
    /// CPU use in percent.
    async fn cpu_percent(&self) -> f64 {
        self.n.stats.cpu_percent
    }
    /// Total memory, MiB.
    async fn ram_total(&self) -> u64 {
        self.n.stats.ram_total_mb
    }
    /// Load average over 1 minute.
    async fn load_avg1(&self) -> f64 {
        self.n.stats.load_avg[0]
    }
    /// Load average over 15 minutes.
    async fn load_avg15(&self) -> f64 {
        self.n.stats.load_avg[2]
    }
    /// When it joined, RFC 3339 (UTC).
    async fn joined_at(&self) -> String {
        rfc3339(self.n.joined_at)
    }
    /// Whether it is being drained: it gets no new work, its deployments move to other
    /// nodes, then it is removed.
    async fn draining(&self) -> bool {
        self.n.draining
    }
    /// The deployments placed on it.
    #[graphql(complexity = "10 * child_complexity")]
    async fn deployment_details(&self, ctx: &Context<'_>) -> Result<Vec<DeploymentObject>> {
        let core = core(ctx)?;
        Ok(self
            .n
            .deployments
            .iter()
            .filter_map(|id| core.db.deployment(id))
            .map(DeploymentObject::new)
            .collect())
    }
}

/// Who leads the platform.
pub(super) struct PlatformObject(pub(super) PlatformView);

#[Object(name = "Platform")]
impl PlatformObject {
    /// The orchestrator's node id.
    async fn orchestrator(&self) -> Option<&str> {
        self.0.orchestrator.as_deref()
    }
    /// The orchestrator epoch.
    async fn epoch(&self) -> u64 {
        self.0.epoch
    }
    /// `host:port` of this API.
    async fn api_addr(&self) -> Option<&str> {
        self.0.api_addr.as_deref()
    }
    /// The broker URL a joining worker connects to, when the transport uses one.
    async fn broker_url(&self) -> Option<&str> {
        self.0.broker_url.as_deref()
    }
    /// Nodes allowed to take over, in order.
    async fn candidates(&self) -> &[String] {
        &self.0.candidates
    }
}

/// A service the platform offers.
pub(super) struct ServiceObject(pub(super) ServiceView);

#[Object(name = "PlatformService")]
impl ServiceObject {
    /// `api`, `transport` or `runtime`.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What kind: `http` for the API, the transport's name (`memory`, `amqp`), the
    /// orchestrator node's runtime (`process`, `docker`, ...).
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Where to reach it, when it is reached over the network.
    async fn address(&self) -> Option<&str> {
        self.0.address.as_deref()
    }
}
