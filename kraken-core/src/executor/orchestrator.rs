//! The orchestrator: owns the [`Database`], places deployments and watches nodes.
//!
//! Consumers of `sysinfo`, `deployment` and `log` write what workers observe into the
//! database; the API writes what users ask. [`OrchestrationExecutor::execute`] then
//! reconciles, level-triggered and idempotently:
//!
//! - `DeploymentRequested` → validate (URL, branch, head commit, `shipwreck.toml`) in a
//!   task → `DelegatingDeployment`;
//! - `DelegatingDeployment` → place on the least-loaded live node (fewest active
//!   deployments, then most free RAM, then least CPU) → send the order;
//! - `UpdateRequested` → look up the branch head; redeploy if it moved (or after an error);
//! - `DestructionRequested` → tell the worker → it reports `Destroyed`;
//! - a node silent past the node timeout is removed and its deployments placed again with
//!   a new generation; instances a node reports that nobody wants any more are stopped;
//! - a node being drained gets no new work; its deployments are placed again on other
//!   nodes the same way, and once it runs nothing it is removed. Its reports are then
//!   ignored (except to stop instances it still runs) until it leaves or falls silent.

use super::{ExecutionFailure, Executor, NodeContext, SetupFailure};
use crate::manifest::Manifest;
use crate::model::{
    Deployment, DeploymentId, DeploymentStatus, NodeId, PlatformInfo, StatusKind, Timestamp,
};
use crate::source::{Fetcher, Git};
use crate::state::{Database, ReportOutcome};
use crate::transport::{Received, TransportExt};
use crate::util::lock;
use crate::wire::{
    self, DeploymentOrder, Envelope, InstanceReport, Message, PlatformMessage, WorkRequestMessage,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of the orchestrator.
#[derive(Clone)]
pub struct OrchestratorConfig {
    /// A node not heard from for this long is removed and its deployments placed again.
    pub node_timeout: Duration,
    /// How often the orchestrator announces itself on the `platform` channel.
    pub announce_interval: Duration,
    /// The longest time between two reconciliations when nothing happens.
    pub tick: Duration,
    /// How often an unwanted instance is told to stop again while a node keeps reporting it.
    pub orphan_retry: Duration,
    /// How sources are looked up and fetched for validation (git by default).
    pub source: Arc<dyn Fetcher>,
    /// Where validation checkouts are made (default: `<data dir>/validate` or a temporary
    /// directory).
    pub work_dir: Option<PathBuf>,
    /// Most validations (git fetches) at the same time.
    pub max_parallel_validations: usize,
    /// The HTTP API address announced to nodes (default: the address the API serves on).
    pub api_addr: Option<String>,
    /// The broker URL announced to nodes (default: the one the transport connected to).
    pub broker_url: Option<String>,
    /// Serve the HTTP API from this orchestrator (started in `setup`, stopped with the node).
    #[cfg(feature = "api")]
    pub api: Option<crate::api::ApiConfig>,
    /// Keep a standby copy and accept changes only under a lease (see
    /// [`replication`](super::replication)); `None`: no standby, changes always accepted
    /// (a platform whose orchestrator never moves).
    pub replication: Option<super::replication::ReplicationConfig>,
}

impl std::fmt::Debug for OrchestratorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorConfig")
            .field("node_timeout", &self.node_timeout)
            .field("announce_interval", &self.announce_interval)
            .field("tick", &self.tick)
            .field("work_dir", &self.work_dir)
            .field("api_addr", &self.api_addr)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            node_timeout: Duration::from_millis(2500),
            announce_interval: Duration::from_millis(250),
            tick: Duration::from_millis(500),
            orphan_retry: Duration::from_secs(10),
            source: Arc::new(Git::new()),
            work_dir: None,
            max_parallel_validations: 4,
            api_addr: None,
            broker_url: None,
            #[cfg(feature = "api")]
            api: None,
            replication: None,
        }
    }
}

#[derive(Default)]
struct Observed {
    /// When each node was last heard from (monotonic time, for the timeout).
    last_heard: HashMap<NodeId, Instant>,
    /// The instances each node last said it runs.
    instances: HashMap<NodeId, Vec<InstanceReport>>,
    /// Nodes that announced they leave.
    leaving: Vec<NodeId>,
    /// Nodes that can take over as orchestrator.
    candidates: std::collections::HashSet<NodeId>,
    /// When each node was first heard from, for a stable order of candidates.
    first_seen: HashMap<NodeId, Instant>,
    /// Drained and removed nodes, with when they last reported. They are not added again
    /// until they leave (a restart of their agent) or stay silent past the node timeout.
    drained: HashMap<NodeId, Instant>,
}

impl Observed {
    /// Forgets a node's liveness and place among the candidates (not what it runs).
    fn forget(&mut self, node: &NodeId) {
        self.last_heard.remove(node);
        self.candidates.remove(node);
        self.first_seen.remove(node);
    }
}

/// Places and watches deployments. See the module docs.
pub struct OrchestrationExecutor {
    db: Arc<Database>,
    config: OrchestratorConfig,
    observed: Arc<Mutex<Observed>>,
    validations: HashMap<DeploymentId, JoinHandle<()>>,
    validation_permits: Arc<Semaphore>,
    /// The last order sent per deployment (node, generation), so it is sent once.
    delegated: HashMap<DeploymentId, (NodeId, u64)>,
    /// When a stop was last sent for an unwanted instance (node, deployment, generation).
    orphans_told: HashMap<(NodeId, DeploymentId, u64), Instant>,
    /// Deployments told there is no worker to place them on (told once).
    waiting: HashSet<DeploymentId>,
    /// Deployments on a draining node told there is no other node to move them to (once).
    stranded: HashSet<DeploymentId>,
    /// The standby copy and the lease, when configured.
    replication: Option<super::replication::Replication>,
    /// What is announced on the `platform` channel (kept current by `execute`).
    announced: Arc<Mutex<PlatformInfo>>,
    /// Set when another orchestrator with a newer epoch announced itself.
    superseded: Arc<Mutex<Option<PlatformInfo>>>,
}

impl std::fmt::Debug for OrchestrationExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationExecutor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrchestrationExecutor {
    /// An orchestrator over `db`.
    pub fn new(db: Arc<Database>, config: OrchestratorConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_parallel_validations.max(1)));
        let replication = config
            .replication
            .clone()
            .map(|r| super::replication::Replication::new(r, Arc::clone(&db)));
        OrchestrationExecutor {
            replication,
            announced: Arc::new(Mutex::new(PlatformInfo {
                orchestrator: NodeId::random(),
                epoch: 0,
                api_addr: None,
                broker_url: None,
                candidates: Vec::new(),
            })),
            superseded: Arc::default(),
            db,
            config,
            observed: Arc::new(Mutex::new(Observed::default())),
            validations: HashMap::new(),
            validation_permits: permits,
            delegated: HashMap::new(),
            orphans_told: HashMap::new(),
            waiting: HashSet::new(),
            stranded: HashSet::new(),
        }
    }

    /// The database it reconciles.
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Stops gracefully as primary: sends the standby what it lacks, then announces that
    /// this orchestrator resigns so that the standby takes over at once.
    pub async fn resign(&mut self, ctx: &NodeContext) {
        let Some(replication) = &self.replication else {
            return;
        };
        if replication.standby().is_none() || self.superseded().is_some() {
            return;
        }
        // Refused for good (the lease keeper would otherwise accept again on the next
        // acknowledgement), and at once, before the last round takes the changes.
        let stopping = "the orchestrator is stopping";
        replication.supersede(stopping.into(), None);
        self.db.set_accepting(Some((stopping.into(), None)));
        replication.round(ctx).await;
        let info = lock(&self.announced).clone();
        if announce(ctx, info, false, true).await {
            tracing::info!("resigned: the standby takes over");
        }
    }

    /// Tells an orchestrator taking over that `node` (the primary before it, silent since
    /// `at`) was last heard at `at`: unlike the other nodes holding deployments, it is not
    /// presumed alive for a whole node timeout from now, so its apps are placed again one
    /// node timeout after its last word. Call before `setup`.
    pub fn heard_last(&mut self, node: NodeId, at: Instant) {
        lock(&self.observed).last_heard.insert(node, at);
    }

    /// The orchestrator that took over from this one (it announced a newer epoch), if any:
    /// this one then refuses changes and should stop.
    pub fn superseded(&self) -> Option<PlatformInfo> {
        lock(&self.superseded).clone()
    }

    fn platform_info(&self, ctx: &NodeContext) -> PlatformInfo {
        PlatformInfo {
            orchestrator: ctx.node.clone(),
            epoch: self.db.epoch(),
            api_addr: self.config.api_addr.clone(),
            broker_url: self
                .config
                .broker_url
                .clone()
                .or_else(|| ctx.transport.broker_url()),
            candidates: Vec::new(),
        }
    }

    /// Chooses the standby (the longest-known live candidate, kept while it lives), sets
    /// the ranks and what is announced.
    async fn update_roles(&mut self, ctx: &NodeContext, alive: &[NodeId]) {
        let mut info = self.platform_info(ctx);
        if let Some(replication) = &self.replication {
            let mut candidates: Vec<(Instant, NodeId)> = {
                let o = lock(&self.observed);
                alive
                    .iter()
                    .filter(|n| **n != ctx.node && o.candidates.contains(*n))
                    .map(|n| {
                        (
                            o.first_seen.get(n).copied().unwrap_or_else(Instant::now),
                            n.clone(),
                        )
                    })
                    .collect()
            };
            candidates.sort();
            let mut order: Vec<NodeId> = candidates.into_iter().map(|(_, n)| n).collect();
            let standby = match replication.standby() {
                Some(current) if order.contains(&current) => Some(current),
                _ => order.first().cloned(),
            };
            if let Some(s) = &standby {
                order.retain(|n| n != s);
                order.insert(0, s.clone());
            }
            // A fenced primary may be the one cut off: the queues are another's by now.
            if let Some(Some(old)) = replication.designate(standby)
                && self.db.accepting()
                && let Err(err) = ctx
                    .transport
                    .delete(wire::replica_channel(&old).spec())
                    .await
            {
                tracing::debug!(node = %old, cause = %err, "could not delete the old standby's queue");
            }
            for node in self.db.nodes() {
                let rank = if node.id == ctx.node {
                    0
                } else {
                    order
                        .iter()
                        .position(|n| *n == node.id)
                        .map_or(u32::MAX, |i| u32::try_from(i + 1).unwrap_or(u32::MAX))
                };
                if node.rank != rank {
                    self.db.set_rank(&node.id, rank);
                }
            }
            info.candidates = std::iter::once(ctx.node.clone()).chain(order).collect();
        }
        let mut announced = lock(&self.announced);
        if *announced != info {
            *announced = info.clone();
            drop(announced);
            ctx.set_platform(info);
        }
    }

    fn work_dir(&self, ctx: &NodeContext) -> PathBuf {
        self.config
            .work_dir
            .clone()
            .unwrap_or_else(|| match &ctx.config.data_dir {
                Some(dir) => dir.join("validate"),
                None => std::env::temp_dir().join(format!("kraken-validate-{}", ctx.node)),
            })
    }

    fn spawn_validation(&mut self, ctx: &NodeContext, d: &Deployment) {
        if self
            .validations
            .get(&d.id)
            .is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let task = Validation {
            db: Arc::clone(&self.db),
            source: Arc::clone(&self.config.source),
            work_dir: self.work_dir(ctx),
            id: d.id.clone(),
            permits: Arc::clone(&self.validation_permits),
        };
        let handle = ctx.spawn(task.run());
        self.validations.insert(d.id.clone(), handle);
    }

    async fn send(&self, ctx: &NodeContext, node: &NodeId, order: WorkRequestMessage) -> bool {
        let envelope = Envelope::new(ctx.node.clone(), self.db.epoch(), order);
        match ctx
            .transport
            .send(&wire::work_channel(node), &envelope)
            .await
        {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(node = %node, cause = %err, "could not send work; will retry");
                false
            }
        }
    }

    /// Removes nodes that timed out or left; returns the live ones.
    async fn check_nodes(&mut self, ctx: &NodeContext) -> Vec<NodeId> {
        if let Some(replication) = &self.replication
            && let Some(standby) = replication.standby()
            && lock(&self.observed).leaving.contains(&standby)
        {
            // It left on purpose: it will not take over, so the broker's word is enough
            // for a lease until the next standby holds a copy.
            tracing::info!(node = %standby, "the standby left");
            replication.designate(None);
        }
        let now = Instant::now();
        let lost: Vec<NodeId> = {
            let mut o = lock(&self.observed);
            let mut lost: Vec<NodeId> = std::mem::take(&mut o.leaving);
            lost.extend(
                o.last_heard
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) > self.config.node_timeout)
                    .map(|(n, _)| n.clone()),
            );
            for n in &lost {
                o.forget(n);
                o.instances.remove(n);
            }
            let silent: Vec<NodeId> = o
                .drained
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > self.config.node_timeout)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &silent {
                o.drained.remove(n);
                o.instances.remove(n);
            }
            lost
        };
        // Fenced, this orchestrator may be the one cut off, not the nodes: it forgets them
        // (so that a lost standby is replaced) but leaves their queues to whoever leads.
        let fenced = !self.db.accepting();
        for node in lost {
            if self.db.remove_node(&node).is_some() {
                tracing::warn!(node = %node, "node lost; its deployments will be placed again");
                if fenced {
                    continue;
                }
                if let Err(err) = ctx.transport.delete(wire::work_channel(&node).spec()).await {
                    tracing::debug!(node = %node, cause = %err, "could not delete the work queue");
                }
            }
        }
        let mut live: Vec<NodeId> = lock(&self.observed).last_heard.keys().cloned().collect();
        live.sort();
        live
    }

    async fn reconcile(&mut self, ctx: &NodeContext) {
        let alive = self.check_nodes(ctx).await;
        self.update_roles(ctx, &alive).await;
        if !self.db.accepting() {
            // Fenced: another node may be taking over. Change nothing, send nothing.
            return;
        }
        let deployments = self.db.deployments();
        let free_ram: HashMap<NodeId, (u64, f64)> = self
            .db
            .nodes()
            .into_iter()
            .map(|n| (n.id.clone(), (n.stats.ram_free_mb, n.stats.cpu_percent)))
            .collect();
        let draining: HashSet<NodeId> = self.db.draining().into_iter().collect();
        // Placement candidates: live nodes that reported and are not being drained. A node
        // only presumed alive after a restart of the orchestrator gets no new work until it
        // reports.
        let mut load: BTreeMap<NodeId, usize> = alive
            .iter()
            .filter(|n| free_ram.contains_key(*n) && !draining.contains(*n))
            .map(|n| (n.clone(), 0))
            .collect();
        for d in &deployments {
            if let Some(node) = &d.node
                && (d.status.is_active() || d.status.kind() == StatusKind::UpdateRequested)
                && let Some(count) = load.get_mut(node)
            {
                *count += 1;
            }
        }
        let live: HashSet<NodeId> = alive.iter().cloned().collect();
        let is_alive = |n: &Option<NodeId>| n.as_ref().is_some_and(|n| live.contains(n));
        let is_draining = |n: &Option<NodeId>| n.as_ref().is_some_and(|n| draining.contains(n));

        // Work orders are sent after the pass, once the standby has the placements that
        // explain them: a worker's reports then always match the state a new primary takes
        // over with (a report for a placement it never heard of would be dropped as stale).
        let mut orders: Vec<((NodeId, u64), DeploymentOrder)> = Vec::new();
        for d in &deployments {
            match d.status.kind() {
                StatusKind::DeploymentRequested => {
                    if self
                        .db
                        .transition(&d.id, DeploymentStatus::ValidatingDeploymentData)
                        .is_ok()
                    {
                        self.spawn_validation(ctx, d);
                    }
                }
                StatusKind::ValidatingDeploymentData
                | StatusKind::RetrievingApplicationData
                | StatusKind::UpdateRequested => self.spawn_validation(ctx, d),
                StatusKind::DelegatingDeployment => {
                    let node = if is_alive(&d.node) && (!is_draining(&d.node) || load.is_empty()) {
                        d.node.clone()
                    } else {
                        let chosen = place(&load, &free_ram);
                        if let Some(n) = &chosen {
                            let replaced = d.node.is_some();
                            self.db.update(&d.id, |d| {
                                d.node = Some(n.clone());
                                if replaced {
                                    d.generation += 1;
                                }
                            });
                            if let Some(c) = load.get_mut(n) {
                                *c += 1;
                            }
                            if let Some(from) = d.node.as_ref().filter(|_| is_draining(&d.node)) {
                                self.db
                                    .note(&d.id, format!("node {from} is drained; moving it"));
                            }
                            self.waiting.remove(&d.id);
                        } else if self.waiting.insert(d.id.clone()) {
                            self.db.note(&d.id, "waiting for a worker to place it on");
                        }
                        chosen
                    };
                    let Some(node) = node else { continue };
                    let Some(current) = self.db.deployment(&d.id) else {
                        continue;
                    };
                    if current.status.kind() != StatusKind::DelegatingDeployment {
                        continue;
                    }
                    let key = (node.clone(), current.generation);
                    if self.delegated.get(&d.id) == Some(&key) {
                        continue;
                    }
                    let (Some(commit), Some(manifest)) =
                        (current.commit.clone(), current.manifest.clone())
                    else {
                        // Validated data missing (should not happen): validate again.
                        let _ = self.db.transition(
                            &d.id,
                            DeploymentStatus::Errored(
                                "validated data missing; redeploy to retry".into(),
                            ),
                        );
                        continue;
                    };
                    let order = DeploymentOrder {
                        deployment: d.id.clone(),
                        generation: current.generation,
                        source_url: current.source_url.clone(),
                        branch: current.branch.clone(),
                        commit,
                        manifest,
                    };
                    orders.push((key, order));
                }
                StatusKind::BuildingDeployment | StatusKind::Deploying | StatusKind::Running => {
                    if !is_alive(&d.node) {
                        self.place_again(ctx, d, |lost| {
                            format!("node {lost} lost; placing it again")
                        });
                    } else if is_draining(&d.node) {
                        if !load.is_empty() {
                            self.stranded.remove(&d.id);
                            self.place_again(ctx, d, |drained| {
                                format!("node {drained} is drained; moving it")
                            });
                        } else if self.stranded.insert(d.id.clone()) {
                            self.db.note(&d.id, "no other node to move it to");
                        }
                    }
                }
                StatusKind::DestructionRequested => {
                    if let Some(node) = d.node.clone().filter(|_| is_alive(&d.node)) {
                        let cancel = WorkRequestMessage::CancelDeployment {
                            deployment: d.id.clone(),
                            generation: d.generation,
                        };
                        if self.send(ctx, &node, cancel).await {
                            let _ = self
                                .db
                                .transition(&d.id, DeploymentStatus::DelegatingDestruction);
                        }
                    } else {
                        let _ = self.db.transition(&d.id, DeploymentStatus::Destroyed);
                    }
                }
                StatusKind::DelegatingDestruction | StatusKind::DestructionInProgress => {
                    if !is_alive(&d.node) {
                        let _ = self.db.transition(&d.id, DeploymentStatus::Destroyed);
                    }
                }
                StatusKind::Errored | StatusKind::Destroyed => {
                    self.delegated.remove(&d.id);
                    if d.status.kind() == StatusKind::Errored && is_draining(&d.node) {
                        // Nothing to move; a redeploy places it on another node.
                        self.db.update(&d.id, |d| d.node = None);
                    }
                }
            }
        }
        if !orders.is_empty() {
            if let Err(err) = self.db.replicated(DURABLE_WAIT).await {
                tracing::debug!(cause = %err, "placements not confirmed by the standby");
            }
            if !self.db.accepting() {
                // Fenced meanwhile: the orders wait for the next pass (or the next primary).
                orders.clear();
            }
            for ((node, generation), order) in orders {
                let id = order.deployment.clone();
                if self
                    .send(
                        ctx,
                        &node,
                        WorkRequestMessage::RequestDeployment(Box::new(order)),
                    )
                    .await
                {
                    self.db
                        .note(&id, format!("placed on {node} (generation {generation})"));
                    self.delegated.insert(id, (node, generation));
                }
            }
        }
        self.stranded.retain(|id| {
            deployments
                .iter()
                .any(|d| d.id == *id && is_draining(&d.node))
        });
        self.reap_orphans(ctx, &deployments).await;
        self.remove_drained(&draining);
        self.validations.retain(|_, h| !h.is_finished());
    }

    /// Takes a deployment off its node to place it again with a new generation; the note
    /// says why (given the node it leaves).
    fn place_again(&self, ctx: &NodeContext, d: &Deployment, why: impl FnOnce(&NodeId) -> String) {
        let from = d.node.clone();
        self.db.update(&d.id, |d| {
            if d.transition(DeploymentStatus::DelegatingDeployment, Timestamp::now())
                .is_ok()
            {
                d.node = None;
                d.generation += 1;
                d.port = None;
                d.url = None;
                d.instance = None;
            }
        });
        if let Some(from) = from {
            self.db.note(&d.id, why(&from));
        }
        ctx.wake();
    }

    /// Removes the draining nodes that run nothing any more: no deployment is placed on
    /// them and their last report lists no instance.
    fn remove_drained(&self, draining: &HashSet<NodeId>) {
        for node in draining {
            let placed = self
                .db
                .node(node)
                .is_some_and(|n| !n.deployments.is_empty());
            if placed {
                continue;
            }
            {
                let mut o = lock(&self.observed);
                if o.instances.get(node).is_some_and(|i| !i.is_empty()) {
                    continue;
                }
                o.forget(node);
                o.drained.insert(node.clone(), Instant::now());
            }
            if self.db.remove_node(node).is_some() {
                tracing::info!(node = %node, "node {node} drained and removed; restart its agent to join again");
            }
        }
    }

    /// Tells nodes to stop instances nobody wants: destroyed or unknown deployments,
    /// deployments now placed elsewhere, older generations of a running deployment.
    async fn reap_orphans(&mut self, ctx: &NodeContext, deployments: &[Deployment]) {
        let by_id: HashMap<&DeploymentId, &Deployment> =
            deployments.iter().map(|d| (&d.id, d)).collect();
        let reports: Vec<(NodeId, InstanceReport)> = lock(&self.observed)
            .instances
            .iter()
            .flat_map(|(n, rs)| rs.iter().map(move |r| (n.clone(), r.clone())))
            .collect();
        let now = Instant::now();
        for (node, r) in reports {
            let unwanted = match by_id.get(&r.deployment) {
                None => true,
                Some(d) => {
                    d.status.kind() == StatusKind::Destroyed
                        || d.node.as_ref() != Some(&node)
                        || (r.generation < d.generation && d.status.kind() == StatusKind::Running)
                }
            };
            if !unwanted {
                continue;
            }
            let key = (node.clone(), r.deployment.clone(), r.generation);
            if self
                .orphans_told
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < self.config.orphan_retry)
            {
                continue;
            }
            tracing::info!(node = %node, deployment = %r.deployment, generation = r.generation, "stopping an instance nobody wants");
            let cancel = WorkRequestMessage::CancelDeployment {
                deployment: r.deployment.clone(),
                generation: r.generation,
            };
            if self.send(ctx, &node, cancel).await {
                self.orphans_told.insert(key, now);
            }
        }
        let retry = self.config.orphan_retry;
        self.orphans_told
            .retain(|_, t| now.duration_since(*t) < retry * 4);
    }
}

/// Sends one announcement; true when the transport confirmed it.
pub(crate) async fn announce(
    ctx: &NodeContext,
    info: PlatformInfo,
    claim: bool,
    resigning: bool,
) -> bool {
    let proof = ctx
        .config
        .announcement_proof(&info.orchestrator, info.epoch);
    let epoch = info.epoch;
    let message = PlatformMessage {
        info,
        proof,
        resigning,
        claim,
    };
    let env = Envelope::new(ctx.node.clone(), epoch, message);
    match ctx.transport.send(&wire::PLATFORM, &env).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(cause = %err, "platform announcement failed");
            false
        }
    }
}

/// The least-loaded live node: fewest active deployments, then most free RAM, then least
/// CPU use, then id (so placement is deterministic).
fn place(
    load: &BTreeMap<NodeId, usize>,
    resources: &HashMap<NodeId, (u64, f64)>,
) -> Option<NodeId> {
    load.iter()
        .min_by(|(a, la), (b, lb)| {
            let (ra, ca) = resources.get(*a).copied().unwrap_or((0, 0.0));
            let (rb, cb) = resources.get(*b).copied().unwrap_or((0, 0.0));
            la.cmp(lb)
                .then(rb.cmp(&ra))
                .then(ca.total_cmp(&cb))
                .then(a.cmp(b))
        })
        .map(|(n, _)| n.clone())
}

/// Validation (and redeploy check) of one deployment, run as a task. Every write is
/// guarded by the status and generation it expects, so a destroy requested meanwhile wins.
struct Validation {
    db: Arc<Database>,
    source: Arc<dyn Fetcher>,
    work_dir: PathBuf,
    id: DeploymentId,
    permits: Arc<Semaphore>,
}

impl Validation {
    fn fail(&self, generation: u64, reason: String) {
        tracing::info!(deployment = %self.id, reason = %reason, "deployment rejected");
        self.db.note(&self.id, format!("error: {reason}"));
        self.db.update(&self.id, |d| {
            if d.generation == generation && !d.status.is_destroying() {
                let _ = d.transition(DeploymentStatus::Errored(reason), Timestamp::now());
            }
        });
    }

    /// Moves from `from` to `to` if the deployment is still at `generation` and `from`.
    fn step(
        &self,
        generation: u64,
        from: StatusKind,
        to: DeploymentStatus,
        f: impl FnOnce(&mut Deployment),
    ) -> bool {
        self.db
            .update(&self.id, |d| {
                if d.generation != generation || d.status.kind() != from {
                    return false;
                }
                f(d);
                d.transition(to, Timestamp::now()).is_ok()
            })
            .unwrap_or(false)
    }

    async fn run(self) {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return;
        };
        let Some(d) = self.db.deployment(&self.id) else {
            return;
        };
        let head = match self.source.head_commit(&d.source_url, &d.branch).await {
            Ok(head) => head,
            Err(e) => {
                return self.fail(
                    d.generation,
                    format!("cannot read branch {}: {e}", d.branch),
                );
            }
        };
        let generation = match d.status.kind() {
            StatusKind::UpdateRequested => {
                let previous = d.history.iter().rev().nth(1).map(|c| c.status.kind());
                if d.commit.as_deref() == Some(head.as_str())
                    && previous == Some(StatusKind::Running)
                {
                    self.db.note(
                        &self.id,
                        format!(
                            "branch {} is still at {head}: nothing to redeploy",
                            d.branch
                        ),
                    );
                    self.step(
                        d.generation,
                        StatusKind::UpdateRequested,
                        DeploymentStatus::Running,
                        |_| {},
                    );
                    return;
                }
                self.db.note(&self.id, format!("redeploying {head}"));
                let next = d.generation + 1;
                let moved = self.db.update(&self.id, |d| {
                    if d.status.kind() != StatusKind::UpdateRequested {
                        return false;
                    }
                    d.generation = next;
                    d.transition(DeploymentStatus::ValidatingDeploymentData, Timestamp::now())
                        .is_ok()
                });
                if moved != Some(true) {
                    return;
                }
                next
            }
            StatusKind::ValidatingDeploymentData | StatusKind::RetrievingApplicationData => {
                d.generation
            }
            _ => return,
        };
        if !self.step(
            generation,
            StatusKind::ValidatingDeploymentData,
            DeploymentStatus::RetrievingApplicationData,
            |d| {
                d.commit = Some(head.clone());
            },
        ) {
            // Already retrieving (a restart of the orchestrator mid-validation) or superseded.
            let still = self.db.deployment(&self.id).is_some_and(|d| {
                d.generation == generation
                    && d.status.kind() == StatusKind::RetrievingApplicationData
            });
            if !still {
                return;
            }
            self.db.update(&self.id, |d| d.commit = Some(head.clone()));
        }
        let dir = self.work_dir.join(format!(
            "{}-{generation}-{}",
            self.id,
            uuid::Uuid::new_v4().simple()
        ));
        let manifest = match self
            .source
            .fetch(&d.source_url, &d.branch, Some(&head), &dir)
            .await
        {
            Ok(checkout) => {
                let root = checkout.dir.clone();
                tokio::task::spawn_blocking(move || Manifest::from_dir(&root))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(format!("cannot fetch the source: {e}")),
        };
        let cleanup = dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(cleanup)).await;
        match manifest {
            Ok(manifest) => {
                let name = manifest.app.name.clone();
                if self.step(
                    generation,
                    StatusKind::RetrievingApplicationData,
                    DeploymentStatus::DelegatingDeployment,
                    |d| {
                        d.manifest = Some(manifest);
                    },
                ) {
                    self.db
                        .note(&self.id, format!("validated {name} at {head}"));
                }
            }
            Err(reason) => self.fail(generation, reason),
        }
    }
}

/// How long a worker report waits for the standby's confirmation before it is acknowledged
/// anyway (the standby is then being replaced, and changes are refused meanwhile).
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// Runs a consumer of one channel until shutdown. With a `gate`, takes messages only while
/// it is true (a fenced orchestrator leaves them in the queue for the next one). With
/// `durable`, a message is acknowledged only once the standby confirmed what handling it
/// changed in that database: if this orchestrator dies first, the broker delivers it again
/// to the next one, so no status change (and no history entry) is lost with it.
fn consume<M: Message, F>(
    ctx: &NodeContext,
    mut sub: crate::transport::TypedSubscription<M>,
    mut gate: Option<tokio::sync::watch::Receiver<bool>>,
    durable: Option<Arc<Database>>,
    mut handle: F,
) where
    F: FnMut(&Envelope<M>) + Send + 'static,
{
    let stop = ctx.shutdown();
    // Acknowledges in order once confirmed; bounded like the broker's prefetch. On
    // shutdown, what is still waiting stays unacknowledged for the next orchestrator.
    let acker = durable.map(|db| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Instant, Received<M>)>(64);
        let (acker_db, acker_stop) = (Arc::clone(&db), ctx.shutdown());
        ctx.spawn(async move {
            loop {
                let next = tokio::select! {
                    n = rx.recv() => n,
                    () = acker_stop.cancelled() => None,
                };
                let Some((seq, deadline, received)) = next else {
                    return;
                };
                let confirmed = tokio::select! {
                    c = acker_db.replicated_to(seq, deadline) => c,
                    () = acker_stop.cancelled() => return,
                };
                if !confirmed && !acker_db.accepting() {
                    // Fenced meanwhile: another orchestrator may be taking over, so the
                    // report goes back to the queue for it.
                    if let Err(err) = received.nack(true).await {
                        tracing::debug!(cause = %err, "could not return a report");
                    }
                    continue;
                }
                if !confirmed {
                    tracing::debug!(
                        "the standby did not confirm a report in time; acknowledging it"
                    );
                }
                received.settle().await;
            }
        });
        (db, tx)
    });
    let kind = std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    let handled = metrics::counter!("kraken_messages_handled_total", "message" => kind);
    ctx.spawn(async move {
        loop {
            if let Some(gate) = gate.as_mut() {
                tokio::select! {
                    r = gate.wait_for(|open| *open) => if r.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
            let Some(received) = sub.next_until(&stop).await else {
                return;
            };
            if gate.as_ref().is_some_and(|g| !*g.borrow()) {
                // Fenced while waiting for it: left for the next orchestrator.
                if let Err(err) = received.nack(true).await {
                    tracing::debug!(cause = %err, "could not return a message");
                }
                continue;
            }
            handle(&received.envelope);
            handled.increment(1);
            match &acker {
                Some((db, tx)) => {
                    let waiting = (db.seq(), Instant::now() + DURABLE_WAIT, received);
                    if tx.send(waiting).await.is_err() {
                        // Stopping: left unacknowledged, delivered again to the next one.
                        return;
                    }
                }
                None => received.settle().await,
            }
        }
    });
}

#[async_trait]
impl Executor for OrchestrationExecutor {
    fn name(&self) -> &str {
        "orchestrator"
    }

    async fn setup(&mut self, ctx: &NodeContext) -> Result<(), SetupFailure> {
        if self.db.epoch() == 0 {
            self.db.set_epoch(1);
        }
        // Nodes holding deployments when the state was saved are presumed alive for one
        // node timeout, so a restarted orchestrator waits for their reports instead of
        // placing everything again.
        {
            let now = Instant::now();
            let mut o = lock(&self.observed);
            for d in self.db.deployments() {
                if let Some(node) = d.node.filter(|_| d.status.kind() != StatusKind::Destroyed) {
                    o.last_heard.entry(node).or_insert(now);
                }
            }
        }
        #[cfg(feature = "api")]
        if let Some(api) = self.config.api.clone() {
            let node = Arc::clone(&ctx.config);
            let facts = crate::api::NodeFacts::default()
                .platform(ctx.watch_platform())
                .address(node.address.clone())
                .data_dir(node.data_dir.clone())
                .runtime(ctx.runtime.name())
                .transport(ctx.transport.name())
                .join_verifier(move |id: &NodeId, proof: Option<&str>| node.verify_join(id, proof));
            let server = crate::api::Server::bind(api, Arc::clone(&self.db), facts)
                .await
                .map_err(|e| SetupFailure::Other(format!("API: {e}")))?;
            self.config.api_addr.get_or_insert(server.advertised_addr());
            let stop = ctx.shutdown();
            ctx.spawn(async move {
                if let Err(err) = server.run(stop.cancelled_owned()).await {
                    tracing::error!(cause = %err, "the API stopped");
                }
            });
        }
        let info = self.platform_info(ctx);
        *lock(&self.announced) = info.clone();
        ctx.set_platform(info);
        if self.replication.is_some() {
            // Until the lease says otherwise.
            self.db
                .set_accepting(Some(("the orchestrator is starting".into(), None)));
        }
        tracing::info!(node = %ctx.node, epoch = self.db.epoch(), "orchestrator starting");

        let gate = self.replication.as_ref().map(|_| self.db.watch_accepting());
        let durable = self.replication.as_ref().map(|_| Arc::clone(&self.db));
        let db = Arc::clone(&self.db);
        consume(
            ctx,
            ctx.transport.listen(&wire::DEPLOYMENT).await?,
            gate.clone(),
            durable.clone(),
            move |env| {
                let outcome = db.apply_report(env.id, &env.body);
                if matches!(outcome, ReportOutcome::Illegal) {
                    tracing::debug!(deployment = %env.body.deployment, status = %env.body.status, "ignored an out-of-order report");
                }
            },
        );
        let db = Arc::clone(&self.db);
        consume(
            ctx,
            ctx.transport.listen(&wire::LOG).await?,
            gate,
            durable,
            move |env| {
                db.append_logs(env.id, &env.body);
            },
        );
        let db = Arc::clone(&self.db);
        let seen = Arc::clone(&self.observed);
        let node_config = Arc::clone(&ctx.config);
        consume(
            ctx,
            ctx.transport.listen(&wire::SYSINFO).await?,
            None,
            None,
            move |env| {
                let report = &env.body;
                if !node_config.verify_join(&report.node, report.proof.as_deref()) {
                    return;
                }
                let mut o = lock(&seen);
                if let Some(heard) = o.drained.get_mut(&report.node) {
                    // Drained: not added again, but what it still runs is stopped.
                    if report.leaving {
                        o.drained.remove(&report.node);
                        o.instances.remove(&report.node);
                    } else {
                        *heard = Instant::now();
                        o.instances
                            .insert(report.node.clone(), report.instances.clone());
                    }
                    return;
                }
                if report.candidate {
                    o.candidates.insert(report.node.clone());
                } else {
                    o.candidates.remove(&report.node);
                }
                o.first_seen
                    .entry(report.node.clone())
                    .or_insert_with(Instant::now);
                if report.leaving {
                    o.leaving.push(report.node.clone());
                    o.last_heard.remove(&report.node);
                    return;
                }
                o.last_heard.insert(report.node.clone(), Instant::now());
                o.instances
                    .insert(report.node.clone(), report.instances.clone());
                drop(o);
                if db.record_sysinfo(report) {
                    tracing::info!(node = %report.node, address = %report.address, "node joined");
                }
            },
        );

        // Wake the reconciler on every change of the state.
        let changed = self.db.changed();
        let waker = ctx.waker();
        let stop = ctx.shutdown();
        ctx.spawn(async move {
            loop {
                tokio::select! {
                    () = changed.notified() => waker.notify_one(),
                    () = stop.cancelled() => return,
                }
            }
        });

        // Follow other orchestrators' announcements: one with a newer epoch (or the same
        // epoch and a smaller id) takes over from this one.
        let mut platform = ctx.announcements().await?;
        let (me, db, superseded, replication, waker, stop) = (
            ctx.node.clone(),
            Arc::clone(&self.db),
            Arc::clone(&self.superseded),
            self.replication.clone(),
            ctx.waker(),
            ctx.shutdown(),
        );
        ctx.spawn(async move {
            while let Some(message) = platform.next_until(&stop).await {
                let info = message.info;
                let mine = db.epoch();
                if info.orchestrator == me {
                    if info.epoch == mine
                        && let Some(replication) = &replication
                    {
                        replication.heard_own(Instant::now());
                    }
                    continue;
                }
                if message.resigning
                    || !(info.epoch > mine || (info.epoch == mine && info.orchestrator < me))
                {
                    continue;
                }
                tracing::warn!(orchestrator = %info.orchestrator, epoch = info.epoch, mine, "another orchestrator took over; this one stops");
                let refusal = (
                    format!("orchestrator {} took over (epoch {})", info.orchestrator, info.epoch),
                    info.api_addr.clone(),
                );
                match &replication {
                    Some(replication) => replication.supersede(refusal.0, refusal.1),
                    None => db.set_accepting(Some(refusal)),
                }
                *lock(&superseded) = Some(info);
                waker.notify_one();
            }
        });

        if let Some(replication) = &self.replication {
            replication.start(ctx).await?;
        }

        // Announce who leads, now and then, so late joiners learn it. A confirmed
        // announcement shows the broker is reachable (a lease without a ready standby).
        let (announced, every, stop, replication, announce_ctx) = (
            Arc::clone(&self.announced),
            self.config.announce_interval,
            ctx.shutdown(),
            self.replication.clone(),
            ctx.clone(),
        );
        ctx.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let info = lock(&announced).clone();
                        let started = Instant::now();
                        if announce(&announce_ctx, info, false, false).await
                            && let Some(replication) = &replication
                        {
                            replication.announced(started);
                        }
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(())
    }

    async fn execute(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        let started = Instant::now();
        self.reconcile(ctx).await;
        metrics::histogram!("kraken_reconcile_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        self.db
            .flush()
            .await
            .map_err(|e| ExecutionFailure::Recoverable(e.to_string()))
    }

    fn tick(&self) -> Duration {
        self.config.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_prefers_fewest_deployments_then_free_ram() {
        let (a, b, c) = (
            NodeId::parse("a").ok(),
            NodeId::parse("b").ok(),
            NodeId::parse("c").ok(),
        );
        let (Some(a), Some(b), Some(c)) = (a, b, c) else {
            panic!("ids")
        };
        let load: BTreeMap<NodeId, usize> = [(a.clone(), 2), (b.clone(), 1), (c.clone(), 1)].into();
        let res: HashMap<NodeId, (u64, f64)> = [
            (a.clone(), (9000, 0.0)),
            (b.clone(), (1000, 0.0)),
            (c.clone(), (2000, 50.0)),
        ]
        .into();
        assert_eq!(place(&load, &res), Some(c.clone()));
        let even: BTreeMap<NodeId, usize> = [(a.clone(), 0), (b.clone(), 0)].into();
        assert_eq!(place(&even, &res), Some(a));
        assert_eq!(place(&BTreeMap::new(), &res), None);
    }
}
