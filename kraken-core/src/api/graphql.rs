//! The GraphQL schema (the original platform's names, plus extras), its HTTP and websocket
//! handlers and GraphiQL.
//!
//! Mapping of the original fields: `status` is the status name (`Running`, `Errored`, ...);
//! `time` fields are RFC 3339 text in UTC with milliseconds (`timeMs` gives epoch
//! milliseconds); `srcUrl` and `deploymentUrl` are both the git URL given to
//! `createDeployment` (the original's argument name); `resultsUrl` (and `appUrl`) is the URL
//! the running app answers on; `memMb`, `maxMemMb` and `cpuUsage` come from the latest
//! resource sample; `size` is the built artifact's size in bytes when a runtime reports it,
//! which none does yet, so it is null; `node` is the id of the node the deployment is placed
//! on; node figures are in MiB, seconds and percent.

use super::auth::Caller;
use super::time::rfc3339;
use super::{Core, PlatformView, ServiceView};
use crate::model::{
    Deployment, DeploymentId, DeploymentStatus, LogLine, Node, NodeId, StatusChange, StatusKind,
};
use crate::state::{StateError, StateEvent};
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::{
    BatchRequest, Context, Data, Error, ErrorExtensions, Guard, Object, Result, Schema,
    Subscription,
};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::header::{CONTENT_TYPE, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

/// The schema type.
pub(crate) type KrakenSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Most operations in one batched request.
const MAX_BATCH: usize = 16;

const MIB: f64 = 1024.0 * 1024.0;

pub(crate) fn schema(core: &Arc<Core>) -> KrakenSchema {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .data(Arc::clone(core))
        .limit_depth(core.config.max_depth)
        .limit_complexity(core.config.max_complexity)
        .finish()
}

/// The schema in GraphQL SDL (for documentation and client code generation).
pub fn sdl() -> String {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .finish()
        .sdl()
}

pub(crate) fn routes(core: &Arc<Core>) -> Router<Arc<Core>> {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphiql", get(graphiql))
        .layer(Extension(schema(core)))
}

// ----- errors -----

fn coded(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

fn parse_deployment(raw: &str) -> Result<DeploymentId> {
    DeploymentId::parse(raw).map_err(|e| coded("BAD_USER_INPUT", e.to_string()))
}

fn parse_node(raw: &str) -> Result<NodeId> {
    NodeId::parse(raw).map_err(|e| coded("BAD_USER_INPUT", e.to_string()))
}

fn unknown_deployment(id: &DeploymentId) -> Error {
    coded("NOT_FOUND", format!("no deployment {id}"))
}

/// Waits until the standby confirmed the change just made, so that an accepted change
/// survives a failover (at once without a standby).
async fn replicated(ctx: &Context<'_>) -> Result<()> {
    core(ctx)?
        .db
        .replicated(std::time::Duration::from_secs(5))
        .await
        .map_err(state_error)
}

fn state_error(err: StateError) -> Error {
    match &err {
        StateError::UnknownDeployment(id) => unknown_deployment(id),
        StateError::UnknownNode(_) => coded("NOT_FOUND", err.to_string()),
        StateError::InvalidRequest(_) => coded("BAD_USER_INPUT", err.to_string()),
        StateError::Transition(_) => coded("CONFLICT", err.to_string()),
        StateError::Full { .. } => coded("RESOURCE_EXHAUSTED", err.to_string()),
        StateError::NotLeader { .. } => coded("NOT_LEADER", err.to_string()),
        StateError::NotReplicated(_) => coded("UNAVAILABLE", err.to_string()),
        StateError::Storage { .. } | StateError::Locked { .. } => {
            coded("INTERNAL", err.to_string())
        }
    }
}

fn core<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Core>> {
    ctx.data::<Arc<Core>>()
}

/// Mutations and log deletion need the platform's token.
struct TokenRequired;

impl Guard for TokenRequired {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let caller = ctx
            .data_opt::<Caller>()
            .copied()
            .unwrap_or(Caller::Anonymous);
        if caller.is_authenticated() {
            Ok(())
        } else {
            Err(coded("UNAUTHENTICATED", caller.refusal()))
        }
    }
}

// ----- types -----

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
pub(crate) struct LogLineObject(LogLine);

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
    fn new(d: Deployment) -> Self {
        let status = d.status.clone();
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
    fn new(core: &Core, n: Node) -> Self {
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
struct PlatformObject(PlatformView);

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
struct ServiceObject(ServiceView);

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

// ----- roots -----

/// Reads.
pub(crate) struct Query;

#[Object]
impl Query {
    /// One deployment.
    async fn get_deployment(
        &self,
        ctx: &Context<'_>,
        deployment_id: String,
    ) -> Result<DeploymentObject> {
        let id = parse_deployment(&deployment_id)?;
        core(ctx)?
            .db
            .deployment(&id)
            .map(DeploymentObject::new)
            .ok_or_else(|| unknown_deployment(&id))
    }

    /// Every deployment, oldest id first.
    #[graphql(complexity = "10 * child_complexity")]
    async fn get_deployments(&self, ctx: &Context<'_>) -> Result<Vec<DeploymentObject>> {
        Ok(core(ctx)?
            .db
            .deployments()
            .into_iter()
            .map(DeploymentObject::new)
            .collect())
    }

    /// One node.
    async fn get_node(&self, ctx: &Context<'_>, node_id: String) -> Result<NodeObject> {
        let id = parse_node(&node_id)?;
        let core = core(ctx)?;
        core.db
            .node(&id)
            .map(|n| NodeObject::new(core, n))
            .ok_or_else(|| coded("NOT_FOUND", format!("no node {id}")))
    }

    /// Every node.
    #[graphql(complexity = "10 * child_complexity")]
    async fn get_nodes(&self, ctx: &Context<'_>) -> Result<Vec<NodeObject>> {
        let core = core(ctx)?;
        Ok(core
            .db
            .nodes()
            .into_iter()
            .map(|n| NodeObject::new(core, n))
            .collect())
    }

    /// Who leads the platform.
    async fn get_platform(&self, ctx: &Context<'_>) -> Result<PlatformObject> {
        Ok(PlatformObject(core(ctx)?.platform()))
    }

    /// Ids of the deployments that have a log.
    async fn get_available_logs(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        Ok(core(ctx)?
            .db
            .log_ids()
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    /// The platform's services: this API, the transport (with its broker URL), the runtime.
    async fn get_platform_services(&self, ctx: &Context<'_>) -> Result<Vec<ServiceObject>> {
        Ok(core(ctx)?
            .services()
            .into_iter()
            .map(ServiceObject)
            .collect())
    }
}

/// Requests. Each needs the token.
pub(crate) struct Mutation;

#[Object]
impl Mutation {
    /// Deploys `gitBranch` of the repository at `deploymentUrl`; returns the new deployment's
    /// id. The URL and branch are checked first.
    #[graphql(guard = "TokenRequired")]
    async fn create_deployment(
        &self,
        ctx: &Context<'_>,
        deployment_url: String,
        git_branch: String,
    ) -> Result<String> {
        let d = core(ctx)?
            .db
            .create_deployment(&deployment_url, &git_branch)
            .map_err(state_error)?;
        replicated(ctx).await?;
        tracing::info!(deployment = %d.id, branch = %git_branch, "deployment requested through the API");
        Ok(d.id.to_string())
    }

    /// Asks for a redeploy: the branch head is looked up and deployed if it moved (or
    /// always after an error). False if a redeploy is already pending.
    #[graphql(guard = "TokenRequired")]
    async fn poll_redeploy(&self, ctx: &Context<'_>, deployment_id: String) -> Result<bool> {
        let id = parse_deployment(&deployment_id)?;
        let db = &core(ctx)?.db;
        let d = db.deployment(&id).ok_or_else(|| unknown_deployment(&id))?;
        if d.status.kind() == StatusKind::UpdateRequested {
            return Ok(false);
        }
        db.request_redeploy(&id).map_err(|e| match e {
            StateError::Transition(t) => coded(
                "CONFLICT",
                format!("deployment {id} is {}: a redeploy can be asked for when it is Running or Errored", t.from),
            ),
            other => state_error(other),
        })?;
        replicated(ctx).await?;
        Ok(true)
    }

    /// Destroys a deployment. False if it is already being destroyed or gone.
    #[graphql(guard = "TokenRequired")]
    async fn cancel_deployment(&self, ctx: &Context<'_>, deployment_id: String) -> Result<bool> {
        let id = parse_deployment(&deployment_id)?;
        let db = &core(ctx)?.db;
        let d = db.deployment(&id).ok_or_else(|| unknown_deployment(&id))?;
        if d.status.is_destroying() {
            return Ok(false);
        }
        db.request_destroy(&id).map_err(state_error)?;
        replicated(ctx).await?;
        tracing::info!(deployment = %id, "destroy requested through the API");
        Ok(true)
    }

    /// Drains a node: its deployments are placed on other nodes, then it is removed from
    /// the platform. True once the drain is recorded (also when it was already draining).
    #[graphql(guard = "TokenRequired")]
    async fn drain_node(&self, ctx: &Context<'_>, node_id: String) -> Result<bool> {
        let id = parse_node(&node_id)?;
        let core = core(ctx)?;
        if core.platform().orchestrator.as_deref() == Some(id.as_str()) {
            return Err(coded(
                "CONFLICT",
                format!("node {id} is the orchestrator: it cannot be drained"),
            ));
        }
        core.db.request_drain(&id).map_err(state_error)?;
        tracing::info!(node = %id, "drain requested through the API");
        Ok(true)
    }

    /// Deletes a deployment's log (in memory and on disk). False if it had none.
    #[graphql(guard = "TokenRequired")]
    async fn delete_log(&self, ctx: &Context<'_>, log_id: String) -> Result<bool> {
        let id = parse_deployment(&log_id)?;
        let db = &core(ctx)?.db;
        if db.logs(&id, Some(0)).is_none() {
            return Err(coded("NOT_FOUND", format!("no log {id}")));
        }
        let deleted = db.delete_log(&id).await.map_err(state_error)?;
        tracing::info!(deployment = %id, deleted, "log deleted through the API");
        Ok(deleted)
    }
}

/// Live changes, over websocket.
pub(crate) struct SubscriptionRoot;

/// Holds a stream permit and ends with the server.
fn bounded<S: Stream + Send + 'static>(
    core: &Core,
    permit: OwnedSemaphorePermit,
    stream: S,
) -> impl Stream<Item = S::Item> + use<S> {
    stream
        .map(move |item| {
            let _held = &permit;
            item
        })
        .take_until(core.stop.clone().cancelled_owned())
        .take_until(tokio::time::sleep(core.config.max_stream_time))
}

fn permit(core: &Core) -> Result<OwnedSemaphorePermit> {
    Arc::clone(&core.streams).try_acquire_owned().map_err(|_| {
        coded(
            "RESOURCE_EXHAUSTED",
            format!(
                "too many open streams ({}); try again later",
                core.config.max_streams
            ),
        )
    })
}

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Each status change of one deployment (or of every deployment, without an id). Ends
    /// when that deployment is destroyed.
    async fn deployment_changed(
        &self,
        ctx: &Context<'_>,
        deployment_id: Option<String>,
    ) -> Result<impl Stream<Item = DeploymentObject> + use<>> {
        let core = Arc::clone(core(ctx)?);
        let only = deployment_id.as_deref().map(parse_deployment).transpose()?;
        let permit = permit(&core)?;
        let events = core.db.subscribe();
        // A deployment already destroyed is sent once, as it is; nothing more will happen.
        let mut gone = None;
        if let Some(id) = &only {
            let d = core
                .db
                .deployment(id)
                .ok_or_else(|| unknown_deployment(id))?;
            if d.status.kind() == StatusKind::Destroyed {
                gone = Some(DeploymentObject::new(d));
            }
        }
        let done = gone.is_some();
        let db = Arc::clone(&core.db);
        let rest = futures::stream::unfold((events, done), move |(mut events, done)| {
            let db = Arc::clone(&db);
            let only = only.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match events.recv().await {
                        Ok(StateEvent::Deployment { id, status, .. })
                            if only.as_ref().is_none_or(|o| *o == id) =>
                        {
                            let Some(d) = db.deployment(&id) else {
                                continue;
                            };
                            let last = only.is_some() && status.kind() == StatusKind::Destroyed;
                            return Some((DeploymentObject { d, status }, (events, last)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "a deployment subscriber fell behind");
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(bounded(
            &core,
            permit,
            futures::stream::iter(gone).chain(rest),
        ))
    }

    /// New lines of a deployment's log (after the newest `tail` kept ones, default none).
    /// Ends when the deployment is destroyed.
    async fn log_lines(
        &self,
        ctx: &Context<'_>,
        deployment_id: String,
        #[graphql(default = 0)] tail: usize,
    ) -> Result<impl Stream<Item = LogLineObject> + use<>> {
        let core = Arc::clone(core(ctx)?);
        let id = parse_deployment(&deployment_id)?;
        let permit = permit(&core)?;
        let (head, events) = core
            .db
            .logs_and_subscribe(&id, Some(tail))
            .ok_or_else(|| unknown_deployment(&id))?;
        let head = futures::stream::iter(head);
        // Nothing more comes for a deployment already destroyed (or of which only a log is left).
        let gone = core
            .db
            .deployment(&id)
            .is_none_or(|d| d.status.kind() == StatusKind::Destroyed);
        let rest = futures::stream::unfold((events, id, gone), |(mut events, id, gone)| async move {
            if gone {
                return None;
            }
            loop {
                match events.recv().await {
                    Ok(StateEvent::Log { id: of, lines }) if of == id => {
                        return Some((lines, (events, id, false)));
                    }
                    Ok(StateEvent::Deployment { id: of, status, .. })
                        if of == id && status.kind() == StatusKind::Destroyed =>
                    {
                        return None;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(deployment = %id, missed, "a log subscriber fell behind");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(bounded(&core, permit, head.chain(rest).map(LogLineObject)))
    }
}

// ----- HTTP -----

fn graphql_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/graphql-response+json"),
    );
    response
}

/// The refusal of a request without the token when queries need it too.
fn refuse_closed(core: &Core, caller: Caller) -> Option<Response> {
    (core.config.require_token_for_queries && !caller.is_authenticated()).then(|| {
        graphql_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            caller.refusal(),
        )
    })
}

/// Reads a request body of at most `limit` bytes. A larger one is read on and dropped (up
/// to [`DRAIN_LIMIT`](super::DRAIN_LIMIT)) so the client, still sending, gets the 413
/// answer instead of a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        graphql_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("the body is larger than {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // Over the hard limit or the client went away.
            return Err(if total > limit {
                too_large()
            } else {
                graphql_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "the body could not be read",
                )
            });
        };
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buffer.extend_from_slice(&chunk);
        } else {
            buffer = Vec::new();
        }
    }
    if total > limit {
        Err(too_large())
    } else {
        Ok(Bytes::from(buffer))
    }
}

async fn graphql_post(
    State(core): State<Arc<Core>>,
    Extension(schema): Extension<KrakenSchema>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = Caller::from_headers(&core.token, &headers);
    if let Some(refused) = refuse_closed(&core, caller) {
        return refused;
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return graphql_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_REQUEST",
            "send the GraphQL request as JSON with `Content-Type: application/json`",
        );
    }
    let body = match read_body(body, core.config.body_limit).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("not a GraphQL request: {err}"),
            );
        }
    };
    if let BatchRequest::Batch(requests) = &batch
        && requests.len() > MAX_BATCH
    {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("a batch holds at most {MAX_BATCH} operations"),
        );
    }
    GraphQLResponse::from(schema.execute_batch(batch.data(caller)).await).into_response()
}

/// A websocket upgrade for subscriptions, or GraphiQL for a browser.
async fn graphql_get(
    State(core): State<Arc<Core>>,
    Extension(schema): Extension<KrakenSchema>,
    request: Request,
) -> Response {
    if !request.headers().contains_key(UPGRADE) {
        return graphiql().await.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(status) => {
            return (
                status,
                "use the graphql-transport-ws or graphql-ws websocket subprotocol",
            )
                .into_response();
        }
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let header_caller = Caller::from_headers(&core.token, &parts.headers);
    let limit = core.config.body_limit;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let stop = core.stop.clone();
            let token = core.token.clone();
            let required = core.config.require_token_for_queries;
            let connection = GraphQLWebSocket::new_with_pair(sink, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let caller = match init_token(&payload) {
                        Some(presented) => Caller::from_token(&token, Some(presented)),
                        None => header_caller,
                    };
                    if required && !caller.is_authenticated() {
                        return Err(coded("UNAUTHENTICATED", caller.refusal()));
                    }
                    let mut data = Data::default();
                    data.insert(caller);
                    Ok(data)
                })
                .serve();
            tokio::select! {
                () = connection => {}
                () = stop.cancelled() => {}
            }
        })
}

/// The token in a `connection_init` payload: `{"Authorization": "Bearer t"}` or
/// `{"token": "t"}` (key case ignored).
fn init_token(payload: &serde_json::Value) -> Option<&str> {
    let object = payload.as_object()?;
    object.iter().find_map(|(key, value)| {
        let text = value.as_str()?;
        if key.eq_ignore_ascii_case("authorization") {
            let (scheme, token) = text.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        } else if key.eq_ignore_ascii_case("token") || key.eq_ignore_ascii_case("authToken") {
            Some(text)
        } else {
            None
        }
    })
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .title("Kraken GraphiQL")
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_keeps_the_original_names() {
        let sdl = sdl();
        for name in [
            "getDeployment(deploymentId: String!): Deployment!",
            "getDeployments: [Deployment!]!",
            "getNode(nodeId: String!): Node!",
            "getNodes: [Node!]!",
            "getPlatform: Platform!",
            "getAvailableLogs: [String!]!",
            "getPlatformServices: [PlatformService!]!",
            "createDeployment(deploymentUrl: String!, gitBranch: String!): String!",
            "pollRedeploy(deploymentId: String!): Boolean!",
            "cancelDeployment(deploymentId: String!): Boolean!",
            "deleteLog(logId: String!): Boolean!",
            "drainNode(nodeId: String!): Boolean!",
            "draining: Boolean!",
            "deploymentChanged(deploymentId: String): Deployment!",
            "loadAvg5: Float!",
            "statusHistory: [StatusChange!]!",
        ] {
            assert!(sdl.contains(name), "{name} missing from:\n{sdl}");
        }
    }

    #[test]
    fn init_payload_tokens() {
        let t = serde_json::json!({ "Authorization": "Bearer abc" });
        assert_eq!(init_token(&t), Some("abc"));
        assert_eq!(init_token(&serde_json::json!({ "token": "x" })), Some("x"));
        assert_eq!(init_token(&serde_json::json!({ "other": "x" })), None);
        assert_eq!(init_token(&serde_json::Value::Null), None);
    }
}
