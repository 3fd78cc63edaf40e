//! The worker: deploys what the orchestrator sends it, and reports.
//!
//! It consumes its work queue (`work.<node-id>`); for each order it fetches the source at
//! the exact commit, builds it with the node's runtime, replaces the older generation of
//! the same deployment if it runs one, starts the new one and reports every status change
//! on `deployment`, build and app output on `log`, and its node's resources and instances
//! on `sysinfo`. A work request is acknowledged only once it is handled (the app runs or
//! its failure was reported), so a worker that dies mid-deploy gets it again.
//!
//! After a restart it re-attaches the instances its runtime still runs and keeps reporting
//! them; the orchestrator tells it to stop those it no longer wants.

use super::probe::{SysinfoProbe, SystemProbe};
use super::{ExecutionFailure, Executor, NodeContext, SetupFailure};
use crate::model::{DeploymentId, DeploymentStatus, InstanceId, LogLine, LogStream, Timestamp};
use crate::runtime::{Artifact, BuildRequest, InstanceInfo, InstanceState, LogFollow, StartSpec};
use crate::source::{Fetcher, Git};
use crate::transport::{Received, TransportExt};
use crate::util::{Backoff, lock};
use crate::wire::{
    self, DeploymentMessage, DeploymentOrder, Envelope, InstanceReport, LogMessage, Message,
    SysinfoMessage, WorkRequestMessage,
};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Settings of a worker.
#[derive(Clone)]
pub struct WorkerConfig {
    /// How often the node reports its resources and instances (its heartbeat).
    pub sysinfo_interval: Duration,
    /// How often each instance's CPU/RAM is sampled and reported.
    pub stats_interval: Duration,
    /// Most deployments built at the same time; more wait (unacknowledged) in the queue.
    pub max_parallel_deployments: usize,
    /// Grace time given to an app to stop before it is killed.
    pub stop_timeout: Duration,
    /// Where checkouts are made (default: `<data dir>/work`, or a temporary directory).
    pub work_dir: Option<PathBuf>,
    /// How sources are fetched (git by default).
    pub source: Arc<dyn Fetcher>,
    /// Where node stats come from.
    pub probe: Arc<dyn SystemProbe>,
    /// Most log lines sent in one message.
    pub log_batch_lines: usize,
    /// Longest a log line waits before it is sent.
    pub log_flush: Duration,
    /// On a graceful stop, leave the platform: tell the orchestrator (which places this
    /// node's apps elsewhere at once instead of waiting for the node timeout) and stop the
    /// apps. Off, a stopped worker's apps keep running and are re-attached when it comes
    /// back within the node timeout.
    pub leave_on_shutdown: bool,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("sysinfo_interval", &self.sysinfo_interval)
            .field("max_parallel_deployments", &self.max_parallel_deployments)
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            sysinfo_interval: Duration::from_millis(500),
            stats_interval: Duration::from_secs(5),
            max_parallel_deployments: 2,
            stop_timeout: Duration::from_secs(10),
            work_dir: None,
            source: Arc::new(Git::new()),
            probe: Arc::new(SysinfoProbe::default()),
            log_batch_lines: 200,
            log_flush: Duration::from_millis(200),
            leave_on_shutdown: false,
        }
    }
}

struct Tracked {
    info: InstanceInfo,
    artifact: Option<Artifact>,
    url: Option<String>,
    logs: Option<tokio::task::AbortHandle>,
}

struct InProgress {
    generation: u64,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Shared {
    instances: HashMap<DeploymentId, Tracked>,
    /// Instances being stopped: still reported in heartbeats until they are gone, so the
    /// orchestrator does not take this node for empty while they still run.
    stopping: HashMap<InstanceId, InstanceInfo>,
    /// The statuses reported for each deployment's newest generation here, with when,
    /// sent along with every later report (see [`DeploymentMessage::earlier`]).
    reported: HashMap<DeploymentId, (u64, Vec<(DeploymentStatus, Timestamp)>)>,
    in_progress: HashMap<DeploymentId, InProgress>,
    seen: HashSet<wire::MessageId>,
    seen_order: VecDeque<wire::MessageId>,
}

const SEEN_CAPACITY: usize = 8_192;

/// Deployments remembered so, beyond which only those this node runs or builds are kept.
const MAX_REPORTED_DEPLOYMENTS: usize = 4_096;

impl Shared {
    fn first_delivery(&mut self, id: wire::MessageId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN_CAPACITY
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Deploys what the orchestrator sends to this node. See the module docs.
pub struct WorkerExecutor {
    config: WorkerConfig,
    /// Woken when another orchestrator takes over: report everything at once.
    new_leader: Arc<tokio::sync::Notify>,
    shared: Arc<Mutex<Shared>>,
    permits: Arc<Semaphore>,
    last_stats: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for WorkerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerExecutor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkerExecutor {
    /// A worker with these settings.
    pub fn new(config: WorkerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_parallel_deployments.max(1)));
        WorkerExecutor {
            config,
            new_leader: Arc::new(tokio::sync::Notify::new()),
            shared: Arc::new(Mutex::new(Shared::default())),
            permits,
            last_stats: None,
        }
    }
}

/// What a running worker needs in its tasks.
#[derive(Clone)]
struct Worker {
    ctx: NodeContext,
    config: WorkerConfig,
    shared: Arc<Mutex<Shared>>,
    work_dir: PathBuf,
}

impl Worker {
    fn envelope<M: Message>(&self, body: M) -> Envelope<M> {
        Envelope::new(self.ctx.node.clone(), self.ctx.epoch(), body)
    }

    /// Sends a status report. Status is at-least-once: a failed send is retried for a while.
    async fn report(
        &self,
        deployment: &DeploymentId,
        generation: u64,
        status: DeploymentStatus,
        tracked: Option<(&InstanceInfo, Option<&str>)>,
    ) {
        let earlier = {
            let mut shared = lock(&self.shared);
            let terminal = matches!(status, DeploymentStatus::Destroyed);
            let entry = shared
                .reported
                .entry(deployment.clone())
                .or_insert_with(|| (generation, Vec::new()));
            if entry.0 != generation {
                *entry = (generation, Vec::new());
            }
            let earlier: Vec<_> = entry
                .1
                .iter()
                .filter(|(s, _)| *s != status)
                .cloned()
                .collect();
            if !entry.1.iter().any(|(s, _)| *s == status) && entry.1.len() < wire::MAX_EARLIER {
                entry.1.push((status.clone(), Timestamp::now()));
            }
            if terminal {
                shared.reported.remove(deployment);
            }
            if shared.reported.len() > MAX_REPORTED_DEPLOYMENTS {
                // Bounded: forget the deployments this node no longer runs or builds.
                let Shared {
                    reported,
                    instances,
                    in_progress,
                    ..
                } = &mut *shared;
                reported.retain(|id, _| instances.contains_key(id) || in_progress.contains_key(id));
            }
            earlier
        };
        let msg = DeploymentMessage {
            deployment: deployment.clone(),
            generation,
            node: self.ctx.node.clone(),
            status,
            port: tracked.and_then(|(i, _)| i.port),
            url: tracked.and_then(|(_, u)| u.map(str::to_owned)),
            instance: tracked.map(|(i, _)| i.id.clone()),
            stats: None,
            earlier,
        };
        self.send_report(msg).await;
    }

    async fn send_report(&self, msg: DeploymentMessage) {
        let envelope = self.envelope(msg);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 1..=8 {
            match self.ctx.transport.send(&wire::DEPLOYMENT, &envelope).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(deployment = %envelope.body.deployment, attempt, cause = %err, "could not send a status report");
                    backoff.wait().await;
                }
            }
        }
        tracing::error!(deployment = %envelope.body.deployment, status = %envelope.body.status, "status report dropped after retries");
    }

    async fn note(&self, deployment: &DeploymentId, generation: u64, text: String) {
        let batch = LogMessage {
            deployment: deployment.clone(),
            generation,
            lines: vec![LogLine::new(LogStream::System, text)],
        };
        if let Err(err) = self
            .ctx
            .transport
            .send(&wire::LOG, &self.envelope(batch))
            .await
        {
            tracing::debug!(cause = %err, "log line dropped");
        }
    }

    /// Sends log lines in batches until the stream ends. Logs are best effort: a batch
    /// that cannot be sent is dropped with a warning rather than blocking the app.
    async fn forward_logs(self, deployment: DeploymentId, generation: u64, mut lines: LogFollow) {
        let mut batch = Vec::new();
        loop {
            let flush = tokio::time::sleep(self.config.log_flush);
            tokio::pin!(flush);
            let done = loop {
                tokio::select! {
                    next = lines.next() => match next {
                        Some(line) => {
                            batch.push(line);
                            if batch.len() >= self.config.log_batch_lines { break false; }
                        }
                        None => break true,
                    },
                    () = &mut flush => break false,
                }
            };
            if !batch.is_empty() {
                let msg = LogMessage {
                    deployment: deployment.clone(),
                    generation,
                    lines: std::mem::take(&mut batch),
                };
                if let Err(err) = self
                    .ctx
                    .transport
                    .send(&wire::LOG, &self.envelope(msg))
                    .await
                {
                    tracing::warn!(deployment = %deployment, cause = %err, "log batch dropped");
                }
            }
            if done {
                return;
            }
        }
    }

    fn follow_logs(&self, info: &InstanceInfo) -> Option<tokio::task::AbortHandle> {
        if !self.ctx.runtime.capabilities().logs {
            return None;
        }
        let this = self.clone();
        let (deployment, generation, id) =
            (info.deployment.clone(), info.generation, info.id.clone());
        let handle = tokio::spawn(async move {
            match this.ctx.runtime.logs(&id).await {
                Ok(stream) => this.forward_logs(deployment, generation, stream).await,
                Err(err) => tracing::warn!(instance = %id, cause = %err, "cannot follow logs"),
            }
        });
        Some(handle.abort_handle())
    }

    fn url_for(&self, port: Option<u16>, endpoint: Option<&str>) -> Option<String> {
        port.map(|p| {
            format!(
                "http://{}:{}{}",
                self.ctx.config.address,
                p,
                endpoint.unwrap_or("/")
            )
        })
    }

    async fn stop_instance(&self, tracked: Tracked) {
        let id = tracked.info.id.clone();
        lock(&self.shared)
            .stopping
            .insert(id.clone(), tracked.info.clone());
        if let Some(handle) = tracked.logs {
            handle.abort();
        }
        if let Err(err) = self
            .ctx
            .runtime
            .stop(&tracked.info.id, self.config.stop_timeout)
            .await
        {
            tracing::warn!(instance = %tracked.info.id, cause = %err, "could not stop instance");
        }
        lock(&self.shared).stopping.remove(&id);
        if let Some(artifact) = tracked.artifact
            && let Err(err) = self.ctx.runtime.remove_artifact(&artifact).await
        {
            tracing::warn!(artifact = %artifact.id, cause = %err, "could not remove artifact");
        }
    }

    async fn handle(&self, received: Received<WorkRequestMessage>, permits: Arc<Semaphore>) {
        let envelope = &received.envelope;
        let known = self.ctx.epoch();
        if envelope.epoch < known {
            tracing::warn!(epoch = envelope.epoch, known, sender = %envelope.sender, "ignoring work from an older orchestrator epoch");
            received.settle().await;
            return;
        }
        if !lock(&self.shared).first_delivery(envelope.id) {
            received.settle().await;
            return;
        }
        match envelope.body.clone() {
            WorkRequestMessage::RequestDeployment(order) => self.accept(*order, received, permits),
            WorkRequestMessage::CancelDeployment {
                deployment,
                generation,
            } => {
                self.cancel(&deployment, generation).await;
                received.settle().await;
            }
        }
    }

    fn accept(
        &self,
        order: DeploymentOrder,
        received: Received<WorkRequestMessage>,
        permits: Arc<Semaphore>,
    ) {
        let cancel = {
            let mut shared = lock(&self.shared);
            let running = shared
                .instances
                .get(&order.deployment)
                .map(|t| (t.info.clone(), t.url.clone()));
            if let Some((info, url)) = running.filter(|(i, _)| i.generation >= order.generation) {
                // Already done (a duplicate order): say so again, idempotently.
                drop(shared);
                let this = self.clone();
                tokio::spawn(async move {
                    this.report(
                        &order.deployment,
                        info.generation,
                        DeploymentStatus::Running,
                        Some((&info, url.as_deref())),
                    )
                    .await;
                    received.settle().await;
                });
                return;
            }
            if let Some(p) = shared.in_progress.get(&order.deployment) {
                if p.generation >= order.generation {
                    drop(shared);
                    tokio::spawn(received.settle());
                    return;
                }
                p.cancel.cancel();
            }
            let cancel = self.ctx.shutdown().child_token();
            shared.in_progress.insert(
                order.deployment.clone(),
                InProgress {
                    generation: order.generation,
                    cancel: cancel.clone(),
                },
            );
            cancel
        };
        let this = self.clone();
        self.ctx.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let (deployment, generation) = (order.deployment.clone(), order.generation);
            let outcome = tokio::select! {
                r = this.deploy(&order) => Some(r),
                () = cancel.cancelled() => None,
            };
            {
                let mut shared = lock(&this.shared);
                if shared.in_progress.get(&deployment).is_some_and(|p| p.generation == generation) {
                    shared.in_progress.remove(&deployment);
                }
            }
            match outcome {
                Some(Ok(())) => {}
                Some(Err(reason)) => {
                    tracing::warn!(deployment = %deployment, generation, reason = %reason, "deployment failed");
                    this.note(&deployment, generation, format!("deployment failed: {reason}")).await;
                    this.report(&deployment, generation, DeploymentStatus::Errored(reason), None).await;
                }
                None if this.ctx.shutdown().is_cancelled() => {
                    // Shutting down mid-deploy: leave the order unacknowledged so it is
                    // delivered again.
                    drop(received);
                    return;
                }
                None => tracing::info!(deployment = %deployment, generation, "deployment superseded or cancelled"),
            }
            received.settle().await;
        });
    }

    async fn deploy(&self, order: &DeploymentOrder) -> Result<(), String> {
        let (id, generation) = (&order.deployment, order.generation);
        self.report(id, generation, DeploymentStatus::BuildingDeployment, None)
            .await;
        self.note(
            id,
            generation,
            format!(
                "fetching {} ({}) at {}",
                order.source_url, order.branch, order.commit
            ),
        )
        .await;
        let checkout_dir = self.work_dir.join(format!(
            "{id}-{generation}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let checkout = self
            .config
            .source
            .fetch(
                &order.source_url,
                &order.branch,
                Some(&order.commit),
                &checkout_dir,
            )
            .await
            .map_err(|e| format!("cannot fetch the source: {e}"));
        let built = match checkout {
            Ok(checkout) => {
                let (tx, rx) = tokio::sync::mpsc::channel(256);
                let forward = tokio::spawn(self.clone().forward_logs(
                    id.clone(),
                    generation,
                    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
                ));
                let request = BuildRequest {
                    deployment: id.clone(),
                    generation,
                    source_dir: checkout.dir.clone(),
                    manifest: order.manifest.clone(),
                };
                let built = self
                    .ctx
                    .runtime
                    .build(&request, tx)
                    .await
                    .map_err(|e| e.to_string());
                // The build's sender is gone: the forwarder flushes and ends.
                let _ = forward.await;
                built
            }
            Err(e) => Err(e),
        };
        remove_dir(checkout_dir).await;
        let artifact = built?;
        self.report(id, generation, DeploymentStatus::Deploying, None)
            .await;
        let previous = lock(&self.shared).instances.remove(id);
        if let Some(previous) = previous {
            self.note(
                id,
                generation,
                format!("stopping generation {}", previous.info.generation),
            )
            .await;
            self.stop_instance(previous).await;
        }
        let spec = StartSpec {
            node: self.ctx.node.clone(),
            artifact: artifact.clone(),
            manifest: order.manifest.clone(),
            env: BTreeMap::new(),
        };
        let info = match self.ctx.runtime.start(&spec).await {
            Ok(info) => info,
            Err(e) => {
                if let Err(err) = self.ctx.runtime.remove_artifact(&artifact).await {
                    tracing::warn!(cause = %err, "could not remove artifact");
                }
                return Err(e.to_string());
            }
        };
        let url = self.url_for(info.port, order.manifest.app.endpoint.as_deref());
        let logs = self.follow_logs(&info);
        lock(&self.shared).instances.insert(
            id.clone(),
            Tracked {
                info: info.clone(),
                artifact: Some(artifact),
                url: url.clone(),
                logs,
            },
        );
        self.note(
            id,
            generation,
            format!("running at {}", url.as_deref().unwrap_or("(no port)")),
        )
        .await;
        self.report(
            id,
            generation,
            DeploymentStatus::Running,
            Some((&info, url.as_deref())),
        )
        .await;
        Ok(())
    }

    async fn cancel(&self, deployment: &DeploymentId, generation: u64) {
        let tracked = {
            let mut shared = lock(&self.shared);
            if let Some(p) = shared.in_progress.get(deployment)
                && p.generation <= generation
            {
                p.cancel.cancel();
            }
            let tracked = match shared.instances.get(deployment) {
                Some(t) if t.info.generation <= generation => shared.instances.remove(deployment),
                _ => None,
            };
            // Reported as stopping from now on (the reports below take a while), not as gone.
            if let Some(t) = &tracked {
                shared.stopping.insert(t.info.id.clone(), t.info.clone());
            }
            tracked
        };
        self.report(
            deployment,
            generation,
            DeploymentStatus::DestructionInProgress,
            None,
        )
        .await;
        if let Some(tracked) = tracked {
            self.stop_instance(tracked).await;
        }
        self.report(deployment, generation, DeploymentStatus::Destroyed, None)
            .await;
    }

    /// Tells a new orchestrator every instance this node runs (their status, port, URL), so
    /// that it converges without waiting for the next stats sample.
    async fn report_all(&self) {
        let running: Vec<(InstanceInfo, Option<String>)> = lock(&self.shared)
            .instances
            .values()
            .map(|t| (t.info.clone(), t.url.clone()))
            .collect();
        for (info, url) in running {
            self.report(
                &info.deployment,
                info.generation,
                DeploymentStatus::Running,
                Some((&info, url.as_deref())),
            )
            .await;
        }
    }

    async fn heartbeat(&self, leaving: bool) {
        let stats = self.config.probe.sample().await;
        let instances = {
            let shared = lock(&self.shared);
            shared
                .instances
                .values()
                .map(|t| &t.info)
                .chain(shared.stopping.values())
                .map(|info| InstanceReport {
                    deployment: info.deployment.clone(),
                    generation: info.generation,
                    instance: info.id.clone(),
                    port: info.port,
                })
                .collect()
        };
        let msg = SysinfoMessage {
            node: self.ctx.node.clone(),
            address: self.ctx.config.address.clone(),
            stats,
            instances,
            leaving,
            candidate: self.ctx.config.candidate,
            proof: self.ctx.config.join_proof(&self.ctx.node),
        };
        if let Err(err) = self
            .ctx
            .transport
            .send(&wire::SYSINFO, &self.envelope(msg))
            .await
        {
            tracing::warn!(cause = %err, "could not send node stats");
        }
    }
}

async fn remove_dir(dir: PathBuf) {
    let result = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await;
    if let Ok(Err(err)) = result {
        tracing::warn!(cause = %err, "could not remove a checkout");
    }
}

impl WorkerExecutor {
    fn worker(&self, ctx: &NodeContext) -> Worker {
        let work_dir = self
            .config
            .work_dir
            .clone()
            .unwrap_or_else(|| match &ctx.config.data_dir {
                Some(dir) => dir.join("work"),
                None => std::env::temp_dir().join(format!("kraken-work-{}", ctx.node)),
            });
        Worker {
            ctx: ctx.clone(),
            config: self.config.clone(),
            shared: Arc::clone(&self.shared),
            work_dir,
        }
    }
}

#[async_trait]
impl Executor for WorkerExecutor {
    fn name(&self) -> &str {
        "worker"
    }

    async fn setup(&mut self, ctx: &NodeContext) -> Result<(), SetupFailure> {
        let worker = self.worker(ctx);
        tokio::fs::create_dir_all(&worker.work_dir)
            .await
            .map_err(|e| {
                SetupFailure::Other(format!("cannot create {}: {e}", worker.work_dir.display()))
            })?;

        // Re-attach what the runtime still runs for this node.
        let mine: Vec<InstanceInfo> = ctx
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|i| i.node == ctx.node)
            .collect();
        for info in mine {
            tracing::info!(deployment = %info.deployment, instance = %info.id, "re-attached instance");
            let logs = worker.follow_logs(&info);
            let url = worker.url_for(info.port, None);
            let mut shared = lock(&self.shared);
            // Two instances of one deployment (a crash between start and stop): keep the
            // newest, the orchestrator reaps the other through the sysinfo report.
            match shared.instances.get(&info.deployment) {
                Some(t) if t.info.generation >= info.generation => {}
                _ => {
                    shared.instances.insert(
                        info.deployment.clone(),
                        Tracked {
                            info,
                            artifact: None,
                            url,
                            logs,
                        },
                    );
                }
            }
        }

        let mut platform = ctx.announcements().await?;
        let mut work = ctx.transport.listen(&wire::work_channel(&ctx.node)).await?;
        let shutdown = ctx.shutdown();
        let platform_ctx = ctx.clone();
        let new_leader = Arc::clone(&self.new_leader);
        let stop = shutdown.clone();
        ctx.spawn(async move {
            while let Some(message) = platform.next_until(&stop).await {
                let info = message.info;
                let before = platform_ctx.platform();
                if platform_ctx.set_platform(info.clone())
                    && before.is_none_or(|b| b.orchestrator != info.orchestrator || b.epoch != info.epoch)
                {
                    tracing::info!(orchestrator = %info.orchestrator, epoch = info.epoch, "following the orchestrator");
                    new_leader.notify_one();
                }
            }
        });
        let permits = Arc::clone(&self.permits);
        let consumer = worker.clone();
        let stop = shutdown.clone();
        ctx.spawn(async move {
            loop {
                let Some(received) = work.next_until(&stop).await else {
                    return;
                };
                consumer.handle(received, Arc::clone(&permits)).await;
            }
        });
        let beat = worker.clone();
        let interval = self.config.sysinfo_interval;
        let new_leader = Arc::clone(&self.new_leader);
        let stop = shutdown;
        ctx.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => beat.heartbeat(false).await,
                    () = new_leader.notified() => {
                        beat.heartbeat(false).await;
                        beat.report_all().await;
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(())
    }

    async fn execute(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        let worker = self.worker(ctx);
        let instances: Vec<(DeploymentId, InstanceId)> = lock(&self.shared)
            .instances
            .iter()
            .map(|(d, t)| (d.clone(), t.info.id.clone()))
            .collect();
        let sample_stats = ctx.runtime.capabilities().stats
            && self
                .last_stats
                .is_none_or(|t| t.elapsed() >= self.config.stats_interval);
        if sample_stats {
            self.last_stats = Some(tokio::time::Instant::now());
        }
        for (deployment, instance) in instances {
            let ended = match ctx.runtime.status(&instance).await {
                Ok(InstanceState::Running) => None,
                Ok(InstanceState::Exited { code: Some(code) }) => {
                    Some(format!("the app exited with code {code}"))
                }
                Ok(InstanceState::Exited { code: None }) => {
                    Some("the app was killed by a signal".to_owned())
                }
                Ok(InstanceState::OomKilled) => {
                    Some("the app was killed: out of memory".to_owned())
                }
                Err(crate::runtime::RuntimeError::NotFound { .. }) => {
                    Some("the app's instance disappeared".to_owned())
                }
                Err(err) => {
                    tracing::warn!(instance = %instance, cause = %err, "cannot read instance status");
                    None
                }
            };
            if let Some(reason) = ended {
                let tracked = {
                    let mut shared = lock(&self.shared);
                    match shared.instances.get(&deployment) {
                        Some(t) if t.info.id == instance => shared.instances.remove(&deployment),
                        _ => None,
                    }
                };
                if let Some(tracked) = tracked {
                    let generation = tracked.info.generation;
                    worker.note(&deployment, generation, reason.clone()).await;
                    worker.stop_instance(tracked).await;
                    worker
                        .report(
                            &deployment,
                            generation,
                            DeploymentStatus::Errored(reason),
                            None,
                        )
                        .await;
                }
                continue;
            }
            if sample_stats && let Ok(stats) = ctx.runtime.stats(&instance).await {
                let current = lock(&self.shared)
                    .instances
                    .get(&deployment)
                    .map(|t| (t.info.clone(), t.url.clone()));
                if let Some((info, url)) = current {
                    let msg = DeploymentMessage {
                        deployment: deployment.clone(),
                        generation: info.generation,
                        node: ctx.node.clone(),
                        status: DeploymentStatus::Running,
                        port: info.port,
                        url,
                        instance: Some(info.id.clone()),
                        stats: Some(stats),
                        earlier: Vec::new(),
                    };
                    if let Err(err) = ctx
                        .transport
                        .send(&wire::DEPLOYMENT, &worker.envelope(msg))
                        .await
                    {
                        tracing::debug!(cause = %err, "stats sample dropped");
                    }
                }
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        if self.config.leave_on_shutdown {
            // Leave: the orchestrator places the apps elsewhere now; stop them here.
            let worker = self.worker(ctx);
            worker.heartbeat(true).await;
            let tracked: Vec<Tracked> = lock(&self.shared)
                .instances
                .drain()
                .map(|(_, t)| t)
                .collect();
            tracing::info!(
                apps = tracked.len(),
                "leaving the platform: stopping this node's apps"
            );
            for t in tracked {
                worker.stop_instance(t).await;
            }
            return Ok(());
        }
        // Apps keep running: a restarted worker re-attaches them. Only the log followers of
        // this process end.
        for tracked in lock(&self.shared).instances.values_mut() {
            if let Some(handle) = tracked.logs.take() {
                handle.abort();
            }
        }
        Ok(())
    }
}
