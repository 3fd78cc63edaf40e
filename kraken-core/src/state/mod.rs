//! The orchestrator's database: the one source of truth of the platform.
//!
//! Consumers and the API only write requests ("deploy this", "destroy that") and
//! observations ("node n is alive", "deployment d runs") into it; the orchestration
//! executor reads it and acts, level-triggered, until the world matches. Every change wakes
//! the executor and is published as a [`StateEvent`] for live views.
//!
//! With a data dir, deployments and the epoch are written to a redb file and logs to
//! bounded files by a background writer that batches changes; a restarted orchestrator
//! gets everything back.

mod logs;
mod replica;
mod store;

pub use logs::LogLimits;
pub use replica::{Changes, Part};

use crate::model::{
    Deployment, DeploymentId, DeploymentStatus, LogLine, Node, NodeId, StatusKind, Timestamp,
    TransitionError,
};
use crate::source;
use crate::util::lock;
use crate::wire::{DeploymentMessage, LogMessage, MAX_EARLIER, MessageId, SysinfoMessage};
use logs::LogStore;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use store::Store;
use tokio::sync::{Notify, broadcast};

/// What can go wrong with the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No deployment with this id.
    #[error("no deployment {0}")]
    UnknownDeployment(DeploymentId),
    /// No node with this id.
    #[error("no node {0}")]
    UnknownNode(NodeId),
    /// The request is not valid (bad URL or branch, ...); nothing was changed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The deployment is not in a state that allows this.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Too many deployments.
    #[error("the platform already holds {limit} deployments")]
    Full {
        /// The limit.
        limit: usize,
    },
    /// The state file is held by another open database (in this process or another one).
    #[error("state file {path} is in use by another Kraken orchestrator")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// This node does not accept changes: it is not the acting orchestrator (a standby, a
    /// demoted primary, or a primary that lost contact with its standby). Ask the leader.
    #[error("this node does not accept changes now: {reason}{}", leader.as_ref().map(|l| format!(" (the orchestrator is at {l})")).unwrap_or_default())]
    NotLeader {
        /// Why.
        reason: String,
        /// The API address of the orchestrator, when known.
        leader: Option<String>,
    },
    /// The change was made here but the standby did not confirm a copy in time: it may or
    /// may not survive a failover. Check before retrying.
    #[error(
        "the change was not confirmed by the standby within {0:?}; check its state before retrying"
    )]
    NotReplicated(Duration),
    /// The storage failed.
    #[error("state storage {path}: {reason}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// A change, for live views (API subscriptions, UI). Lossy for slow receivers: they get a
/// `Lagged` error and should re-read the state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateEvent {
    /// A deployment was created or changed status.
    Deployment {
        /// Which.
        id: DeploymentId,
        /// Its status now.
        status: DeploymentStatus,
        /// Its generation.
        generation: u64,
    },
    /// Log lines were appended.
    Log {
        /// Which deployment.
        id: DeploymentId,
        /// The new lines.
        lines: Vec<LogLine>,
    },
    /// A node joined, reported or is being drained.
    Node {
        /// Which.
        id: NodeId,
    },
    /// A node was removed (timed out or left).
    NodeRemoved {
        /// Which.
        id: NodeId,
    },
}

/// What became of a worker's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Applied: the status moved.
    Transitioned,
    /// Applied: same status, fields (stats, port) updated.
    Updated,
    /// This message was handled before.
    Duplicate,
    /// For another generation or node: ignored.
    Stale,
    /// Unknown deployment: ignored.
    Unknown,
    /// The status change is not legal from the current status: ignored.
    Illegal,
}

/// Limits and settings of the database.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Most deployments held (destroyed ones included until deleted).
    pub max_deployments: usize,
    /// Log bounds.
    pub logs: LogLimits,
    /// How long the writer waits to batch changes before writing them.
    pub flush_delay: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_deployments: 100_000,
            logs: LogLimits::default(),
            flush_delay: Duration::from_millis(20),
        }
    }
}

const SEEN_CAPACITY: usize = 65_536;

/// Message ids handled recently, to absorb duplicate deliveries.
#[derive(Default)]
struct Seen {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Seen {
    /// Records `id`; false if it was there already.
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

struct Inner {
    deployments: BTreeMap<DeploymentId, Deployment>,
    nodes: BTreeMap<NodeId, Node>,
    /// Nodes asked to be drained: they get no new work and are removed once empty.
    draining: BTreeSet<NodeId>,
    logs: LogStore,
    seen: Seen,
    epoch: u64,
    dirty: HashSet<DeploymentId>,
    epoch_dirty: bool,
    /// Change sequence number: bumped on every change a standby must copy.
    seq: u64,
    /// Changes not yet sent to the standby, when one follows this database.
    replication: Option<replica::Pending>,
    /// Why changes are refused (`None`: accepted), and where the leader is.
    refusal: Option<(String, Option<String>)>,
}

/// The orchestrator's state. Share it as `Arc<Database>` between the orchestration
/// executor, the API and tests.
pub struct Database {
    inner: Mutex<Inner>,
    config: StateConfig,
    changed: Arc<Notify>,
    events: broadcast::Sender<StateEvent>,
    store: Option<Arc<Store>>,
    persist: Arc<Notify>,
    /// Serialises writers so a flush waits for one in progress.
    write_lock: tokio::sync::Mutex<()>,
    /// Whether changes are accepted (see [`Database::set_accepting`]).
    accepting: tokio::sync::watch::Sender<bool>,
    /// The sequence number the standby confirmed, and whether one must confirm changes.
    replicated: tokio::sync::watch::Sender<(u64, bool)>,
    /// Woken when there are changes to send to the standby.
    replication_wake: Arc<Notify>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("persistent", &self.store.is_some())
            .finish()
    }
}

impl Database {
    /// A database that keeps nothing on disk (tests, benches, throw-away platforms).
    pub fn in_memory(config: StateConfig) -> Arc<Self> {
        Arc::new(Self::with(config, None, None))
    }

    /// Opens (or creates) the database under `data_dir`: `state.redb` and `logs/`. Starts
    /// the background writer, which ends when the database is dropped.
    pub async fn open(data_dir: &Path, config: StateConfig) -> Result<Arc<Self>, StateError> {
        let dir = data_dir.to_path_buf();
        let limits = config.logs;
        let (store, loaded, logs) = tokio::task::spawn_blocking(move || {
            let store = open_store(&dir.join("state.redb"))?;
            let loaded = store.load()?;
            let mut logs = LogStore::new(limits, Some(dir.join("logs")));
            logs.load().map_err(|e| StateError::Storage {
                path: dir.join("logs"),
                reason: e.to_string(),
            })?;
            Ok::<_, StateError>((store, loaded, logs))
        })
        .await
        .map_err(|e| StateError::Storage {
            path: data_dir.to_path_buf(),
            reason: e.to_string(),
        })??;
        let db = Arc::new(Self::with(config, Some(Arc::new(store)), Some(logs)));
        {
            let mut inner = db.lock();
            for d in loaded.deployments {
                inner.deployments.insert(d.id.clone(), d);
            }
            inner.epoch = loaded.epoch.unwrap_or(0);
        }
        tokio::spawn(writer(
            Arc::downgrade(&db),
            Arc::clone(&db.persist),
            db.config.flush_delay,
        ));
        Ok(db)
    }

    fn with(config: StateConfig, store: Option<Arc<Store>>, logs: Option<LogStore>) -> Self {
        let logs = logs.unwrap_or_else(|| LogStore::new(config.logs, None));
        Database {
            inner: Mutex::new(Inner {
                deployments: BTreeMap::new(),
                nodes: BTreeMap::new(),
                draining: BTreeSet::new(),
                logs,
                seen: Seen::default(),
                epoch: 0,
                dirty: HashSet::new(),
                epoch_dirty: false,
                seq: 0,
                replication: None,
                refusal: None,
            }),
            config,
            changed: Arc::new(Notify::new()),
            events: broadcast::channel(4096).0,
            store,
            persist: Arc::new(Notify::new()),
            write_lock: tokio::sync::Mutex::new(()),
            accepting: tokio::sync::watch::Sender::new(true),
            replicated: tokio::sync::watch::Sender::new((0, false)),
            replication_wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the state consistent, so a panic elsewhere while
        // holding the lock does not make it unusable.
        lock(&self.inner)
    }

    fn touched(&self, inner: &mut Inner, id: &DeploymentId) {
        if self.store.is_some() {
            inner.dirty.insert(id.clone());
            self.persist.notify_one();
        }
        inner.seq += 1;
        if let Some(pending) = inner.replication.as_mut() {
            pending.deployments.insert(id.clone());
            self.replication_wake.notify_one();
        }
        self.changed.notify_one();
    }

    /// Records appended log lines for the standby.
    fn logged(&self, inner: &mut Inner, id: &DeploymentId, lines: &[LogLine]) {
        inner.seq += 1;
        if let Some(pending) = inner.replication.as_mut() {
            pending.add_logs(id, lines);
            self.replication_wake.notify_one();
        }
    }

    /// Refuses a change when this database does not accept changes.
    fn check_accepting(inner: &Inner) -> Result<(), StateError> {
        match &inner.refusal {
            None => Ok(()),
            Some((reason, leader)) => Err(StateError::NotLeader {
                reason: reason.clone(),
                leader: leader.clone(),
            }),
        }
    }

    /// Whether changes are accepted: true unless [`set_accepting`](Self::set_accepting)
    /// said otherwise (a standby, a fenced or demoted primary).
    pub fn accepting(&self) -> bool {
        *self.accepting.borrow()
    }

    /// Watches [`accepting`](Self::accepting).
    pub fn watch_accepting(&self) -> tokio::sync::watch::Receiver<bool> {
        self.accepting.subscribe()
    }

    /// Accepts changes (`None`) or refuses them with a reason and the leader's API address.
    /// Requests (create, redeploy, destroy, drain, log deletion) are refused with
    /// [`StateError::NotLeader`] while refused.
    pub fn set_accepting(&self, refusal: Option<(String, Option<String>)>) {
        let accepting = refusal.is_none();
        self.lock().refusal = refusal;
        self.accepting.send_if_modified(|a| {
            let changed = *a != accepting;
            *a = accepting;
            changed
        });
    }

    fn emit(&self, event: StateEvent) {
        // No receiver is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// Notified on every change of the state (coalesced).
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Live changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    // ----- requests (API, CLI) -----

    /// Records a request to deploy `branch` of `url`. The URL and branch are checked first;
    /// a bad one changes nothing.
    pub fn create_deployment(&self, url: &str, branch: &str) -> Result<Deployment, StateError> {
        source::validate_url(url).map_err(|e| StateError::InvalidRequest(e.to_string()))?;
        source::validate_branch(branch).map_err(|e| StateError::InvalidRequest(e.to_string()))?;
        let mut inner = self.lock();
        Self::check_accepting(&inner)?;
        if inner.deployments.len() >= self.config.max_deployments {
            return Err(StateError::Full {
                limit: self.config.max_deployments,
            });
        }
        let d = Deployment::new(
            DeploymentId::random(),
            url.to_owned(),
            branch.to_owned(),
            Timestamp::now(),
        );
        inner.deployments.insert(d.id.clone(), d.clone());
        self.touched(&mut inner, &d.id);
        drop(inner);
        self.emit(StateEvent::Deployment {
            id: d.id.clone(),
            status: d.status.clone(),
            generation: d.generation,
        });
        Ok(d)
    }

    /// Asks for a redeploy: the orchestrator looks up the branch head and deploys it if it
    /// moved (or always, after an error).
    pub fn request_redeploy(&self, id: &DeploymentId) -> Result<(), StateError> {
        Self::check_accepting(&self.lock())?;
        self.transition(id, DeploymentStatus::UpdateRequested)
    }

    /// Asks for a deployment to be destroyed.
    pub fn request_destroy(&self, id: &DeploymentId) -> Result<(), StateError> {
        Self::check_accepting(&self.lock())?;
        self.transition(id, DeploymentStatus::DestructionRequested)
    }

    /// Asks for a node to be drained: its deployments are placed on other nodes, then it is
    /// removed from the platform. Asking again for a node being drained changes nothing.
    pub fn request_drain(&self, node: &NodeId) -> Result<(), StateError> {
        let mut inner = self.lock();
        Self::check_accepting(&inner)?;
        if !inner.nodes.contains_key(node) {
            return Err(StateError::UnknownNode(node.clone()));
        }
        inner.draining.insert(node.clone());
        drop(inner);
        self.changed.notify_one();
        self.emit(StateEvent::Node { id: node.clone() });
        Ok(())
    }

    // ----- reads -----

    /// One deployment.
    pub fn deployment(&self, id: &DeploymentId) -> Option<Deployment> {
        self.lock().deployments.get(id).cloned()
    }

    /// Every deployment, ordered by id.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.lock().deployments.values().cloned().collect()
    }

    /// Calls `f` on every deployment without copying them.
    pub fn with_deployments<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &Deployment>) -> R,
    ) -> R {
        let inner = self.lock();
        let mut it = inner.deployments.values();
        f(&mut it)
    }

    /// Number of deployments per status.
    pub fn count_by_status(&self) -> BTreeMap<StatusKind, usize> {
        let inner = self.lock();
        let mut counts = BTreeMap::new();
        for d in inner.deployments.values() {
            *counts.entry(d.status.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// Every known node, with the deployments placed on it filled in.
    pub fn nodes(&self) -> Vec<Node> {
        let inner = self.lock();
        inner
            .nodes
            .values()
            .map(|n| with_deployments(&inner, n))
            .collect()
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<Node> {
        let inner = self.lock();
        inner.nodes.get(id).map(|n| with_deployments(&inner, n))
    }

    /// The nodes being drained, ordered by id.
    pub fn draining(&self) -> Vec<NodeId> {
        self.lock().draining.iter().cloned().collect()
    }

    /// The newest `tail` log lines of a deployment (all kept lines if `None`); `None` when
    /// there is no such log.
    pub fn logs(&self, id: &DeploymentId, tail: Option<usize>) -> Option<Vec<LogLine>> {
        let inner = self.lock();
        (inner.logs.contains(id) || inner.deployments.contains_key(id))
            .then(|| inner.logs.tail(id, tail))
    }

    /// The newest `tail` lines of a deployment's log (all kept lines if `None`) and a
    /// subscription to what comes next, taken together so that no line is missed or seen
    /// twice in between. `None` when there is no such log.
    pub fn logs_and_subscribe(
        &self,
        id: &DeploymentId,
        tail: Option<usize>,
    ) -> Option<(Vec<LogLine>, broadcast::Receiver<StateEvent>)> {
        let inner = self.lock();
        // Log events are sent while the lock is held, so every line appended after this
        // read reaches the receiver and none before it does.
        let receiver = self.events.subscribe();
        (inner.logs.contains(id) || inner.deployments.contains_key(id))
            .then(|| (inner.logs.tail(id, tail), receiver))
    }

    /// Deployments that have a log.
    pub fn log_ids(&self) -> Vec<DeploymentId> {
        self.lock().logs.ids()
    }

    /// Deletes a deployment's log, in memory and on disk. False if there was none.
    pub async fn delete_log(&self, id: &DeploymentId) -> Result<bool, StateError> {
        let (existed, dir) = {
            let mut inner = self.lock();
            Self::check_accepting(&inner)?;
            inner.seq += 1;
            if let Some(pending) = inner.replication.as_mut() {
                // Lines not sent yet are gone with the log; what comes after follows the
                // delete (the standby applies deletes first).
                pending.logs.retain(|b| b.deployment != *id);
                pending.deleted_logs.push(id.clone());
                self.replication_wake.notify_one();
            }
            (
                inner.logs.remove(id),
                inner.logs.dir().map(Path::to_path_buf),
            )
        };
        if let Some(dir) = dir {
            let id = id.clone();
            let path = dir.clone();
            let _guard = self.write_lock.lock().await;
            tokio::task::spawn_blocking(move || logs::delete_files(&dir, &id))
                .await
                .map_err(|e| StateError::Storage {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|e| StateError::Storage {
                    path,
                    reason: e.to_string(),
                })?;
        }
        Ok(existed)
    }

    /// The orchestrator epoch.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    // ----- the orchestrator's side -----

    /// Sets the epoch (persisted).
    pub fn set_epoch(&self, epoch: u64) {
        let mut inner = self.lock();
        inner.seq += 1;
        inner.epoch = epoch;
        inner.epoch_dirty = true;
        self.persist.notify_one();
    }

    /// Moves a deployment to `next` if legal.
    pub fn transition(&self, id: &DeploymentId, next: DeploymentStatus) -> Result<(), StateError> {
        self.update(id, |d| d.transition(next, Timestamp::now()))
            .ok_or_else(|| StateError::UnknownDeployment(id.clone()))?
            .map_err(StateError::from)
    }

    /// Changes a deployment in place. Returns `None` for an unknown id.
    pub fn update<R>(&self, id: &DeploymentId, f: impl FnOnce(&mut Deployment) -> R) -> Option<R> {
        let mut inner = self.lock();
        let d = inner.deployments.get_mut(id)?;
        let before = (d.status.clone(), d.generation);
        let result = f(d);
        let after = (d.status.clone(), d.generation);
        self.touched(&mut inner, id);
        drop(inner);
        if before != after {
            self.emit(StateEvent::Deployment {
                id: id.clone(),
                status: after.0,
                generation: after.1,
            });
        }
        Some(result)
    }

    /// Records a message id; false if it was handled before.
    pub fn first_delivery(&self, id: MessageId) -> bool {
        self.lock().seen.insert(id)
    }

    /// Applies a worker's report about a deployment.
    pub fn apply_report(&self, message: MessageId, report: &DeploymentMessage) -> ReportOutcome {
        let mut inner = self.lock();
        if !inner.seen.insert(message) {
            return ReportOutcome::Duplicate;
        }
        let Some(d) = inner.deployments.get_mut(&report.deployment) else {
            return ReportOutcome::Unknown;
        };
        if report.generation != d.generation || d.node.as_ref() != Some(&report.node) {
            return ReportOutcome::Stale;
        }
        let outcome = if d.status == report.status {
            ReportOutcome::Updated
        } else {
            // The steps the report lists after the status known here were reported to an
            // orchestrator that died before this one had them: recorded first, at the
            // times the worker reached them (never before the newest entry).
            // Only as many as a worker sends: a longer list cannot flush the real history.
            let earlier = &report.earlier[report.earlier.len().saturating_sub(MAX_EARLIER)..];
            let mut next = d.clone();
            let missed: &[(DeploymentStatus, Timestamp)] = match earlier
                .iter()
                .position(|(s, _)| *s == next.status)
            {
                Some(i) => &earlier[i + 1..],
                None if next.status.kind() == crate::model::StatusKind::DelegatingDeployment => {
                    earlier
                }
                None => &[],
            };
            for (step, at) in missed {
                // An illegal step is refused by `transition` and changes nothing.
                let newest = next.history.last().map_or(*at, |h| h.at);
                let _ = next.transition(step.clone(), (*at).max(newest));
            }
            if next
                .transition(report.status.clone(), Timestamp::now())
                .is_err()
            {
                return ReportOutcome::Illegal;
            }
            *d = next;
            ReportOutcome::Transitioned
        };
        let only_stats = outcome == ReportOutcome::Updated
            && report.port.is_none_or(|p| d.port == Some(p))
            && report
                .url
                .as_ref()
                .is_none_or(|u| d.url.as_ref() == Some(u))
            && report
                .instance
                .as_ref()
                .is_none_or(|i| d.instance.as_ref() == Some(i));
        if report.port.is_some() {
            d.port = report.port;
        }
        if report.url.is_some() {
            d.url.clone_from(&report.url);
        }
        if report.instance.is_some() {
            d.instance.clone_from(&report.instance);
        }
        if report.stats.is_some() {
            d.stats = report.stats;
        }
        if only_stats {
            // A usage sample (every few seconds per app): shown, not persisted nor copied
            // to the standby; the next sample replaces it anyway.
            return outcome;
        }
        let event = StateEvent::Deployment {
            id: d.id.clone(),
            status: d.status.clone(),
            generation: d.generation,
        };
        let id = d.id.clone();
        self.touched(&mut inner, &id);
        drop(inner);
        if outcome == ReportOutcome::Transitioned {
            self.emit(event);
        }
        outcome
    }

    /// Records a node's report. Returns true when the node is new.
    pub fn record_sysinfo(&self, report: &SysinfoMessage) -> bool {
        let mut inner = self.lock();
        let now = Timestamp::now();
        let new = !inner.nodes.contains_key(&report.node);
        let node = inner
            .nodes
            .entry(report.node.clone())
            .or_insert_with(|| Node {
                id: report.node.clone(),
                address: report.address.clone(),
                stats: report.stats.clone(),
                last_seen: now,
                joined_at: now,
                rank: u32::MAX,
                deployments: Vec::new(),
                draining: false,
            });
        node.address.clone_from(&report.address);
        node.stats = report.stats.clone();
        node.last_seen = now;
        drop(inner);
        self.changed.notify_one();
        self.emit(StateEvent::Node {
            id: report.node.clone(),
        });
        new
    }

    /// Sets a node's rollover rank.
    pub fn set_rank(&self, id: &NodeId, rank: u32) {
        if let Some(n) = self.lock().nodes.get_mut(id) {
            n.rank = rank;
        }
    }

    /// Forgets a node (and that it was being drained).
    pub fn remove_node(&self, id: &NodeId) -> Option<Node> {
        let removed = {
            let mut inner = self.lock();
            inner.draining.remove(id);
            inner.nodes.remove(id)
        };
        if removed.is_some() {
            self.changed.notify_one();
            self.emit(StateEvent::NodeRemoved { id: id.clone() });
        }
        removed
    }

    /// Appends a batch of log lines, once per message id. Lines of unknown deployments or
    /// of another generation than the current one are kept too (they explain what
    /// happened), but lines for deployments never created are dropped.
    pub fn append_logs(&self, message: MessageId, batch: &LogMessage) -> bool {
        let mut inner = self.lock();
        if !inner.seen.insert(message) || !inner.deployments.contains_key(&batch.deployment) {
            return false;
        }
        inner
            .logs
            .append(&batch.deployment, batch.lines.iter().cloned());
        self.logged(&mut inner, &batch.deployment, &batch.lines);
        if self.store.is_some() {
            self.persist.notify_one();
        }
        // Sent under the lock: see `logs_and_subscribe`.
        self.emit(StateEvent::Log {
            id: batch.deployment.clone(),
            lines: batch.lines.clone(),
        });
        drop(inner);
        true
    }

    /// Appends Kraken's own note to a deployment's log.
    pub fn note(&self, id: &DeploymentId, text: impl Into<String>) {
        let line = LogLine::new(crate::model::LogStream::System, text);
        let mut inner = self.lock();
        if !inner.deployments.contains_key(id) {
            return;
        }
        inner.logs.append(id, [line.clone()]);
        self.logged(&mut inner, id, std::slice::from_ref(&line));
        if self.store.is_some() {
            self.persist.notify_one();
        }
        // Sent under the lock: see `logs_and_subscribe`.
        self.emit(StateEvent::Log {
            id: id.clone(),
            lines: vec![line],
        });
        drop(inner);
    }

    /// Writes every pending change to disk now (no-op without a data dir).
    pub async fn flush(&self) -> Result<(), StateError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let _guard = self.write_lock.lock().await;
        let (upserts, epoch, log_batches, log_dir, limits) = {
            let mut inner = self.lock();
            let dirty: Vec<DeploymentId> = inner.dirty.drain().collect();
            let upserts: Vec<Deployment> = dirty
                .iter()
                .filter_map(|id| inner.deployments.get(id).cloned())
                .collect();
            let epoch = std::mem::take(&mut inner.epoch_dirty).then_some(inner.epoch);
            let batches = inner.logs.take_pending();
            (
                upserts,
                epoch,
                batches,
                inner.logs.dir().map(Path::to_path_buf),
                inner.logs.limits(),
            )
        };
        if upserts.is_empty() && epoch.is_none() && log_batches.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            store.write(&upserts, &[], epoch)?;
            if let Some(dir) = log_dir {
                for (id, lines) in &log_batches {
                    logs::write_lines(&dir, id, lines, limits).map_err(|e| {
                        StateError::Storage {
                            path: dir.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                }
            }
            Ok::<_, StateError>(())
        })
        .await
        .map_err(|e| StateError::Storage {
            path: PathBuf::from("state.redb"),
            reason: e.to_string(),
        })?
    }
}

fn with_deployments(inner: &Inner, node: &Node) -> Node {
    let mut n = node.clone();
    n.deployments = inner
        .deployments
        .values()
        .filter(|d| {
            d.node.as_ref() == Some(&node.id) && !matches!(d.status, DeploymentStatus::Destroyed)
        })
        .map(|d| d.id.clone())
        .collect();
    n.draining = inner.draining.contains(&node.id);
    n
}

/// Opens the state file, waiting up to two seconds for a previous holder in this process to
/// let go (its background writer may be finishing a last write); another process holding
/// it is reported as [`StateError::Locked`]. Blocking: called from `spawn_blocking`.
fn open_store(path: &Path) -> Result<Store, StateError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Store::open(path) {
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Writes batched changes until the database is dropped.
async fn writer(db: Weak<Database>, wake: Arc<Notify>, delay: Duration) {
    loop {
        wake.notified().await;
        tokio::time::sleep(delay).await;
        // Hold the database only while writing, so dropping it closes the file.
        let Some(db) = db.upgrade() else { return };
        if let Err(err) = db.flush().await {
            tracing::error!(cause = %err, "could not persist the orchestrator state; will retry on the next change");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::LogStream;

    fn report(d: &Deployment, node: &NodeId, status: DeploymentStatus) -> DeploymentMessage {
        DeploymentMessage {
            deployment: d.id.clone(),
            generation: d.generation,
            node: node.clone(),
            status,
            port: Some(8080),
            url: None,
            instance: None,
            stats: None,
            earlier: Vec::new(),
        }
    }

    fn placed(db: &Database, node: &NodeId) -> Deployment {
        let d = db.create_deployment("file:///srv/app", "main").unwrap();
        for s in [
            DeploymentStatus::ValidatingDeploymentData,
            DeploymentStatus::RetrievingApplicationData,
            DeploymentStatus::DelegatingDeployment,
        ] {
            db.transition(&d.id, s).unwrap();
        }
        db.update(&d.id, |d| d.node = Some(node.clone()));
        db.deployment(&d.id).unwrap()
    }

    #[test]
    fn steps_missed_with_a_previous_orchestrator_are_recorded_from_a_later_report() {
        let db = Database::in_memory(StateConfig::default());
        let node = NodeId::random();
        let d = placed(&db, &node);
        let kinds = |db: &Database| -> Vec<StatusKind> {
            db.deployment(&d.id)
                .unwrap()
                .history
                .iter()
                .map(|h| h.status.kind())
                .collect()
        };
        let (t1, t2) = (Timestamp::now(), Timestamp(Timestamp::now().0 + 5));
        let steps = vec![
            (DeploymentStatus::BuildingDeployment, t1),
            (DeploymentStatus::Deploying, t2),
        ];
        // Placed here, Building and Deploying went to an orchestrator that died.
        let mut running = report(&d, &node, DeploymentStatus::Running);
        running.earlier = steps.clone();
        assert_eq!(
            db.apply_report(MessageId::random(), &running),
            ReportOutcome::Transitioned
        );
        let after = db.deployment(&d.id).unwrap();
        assert_eq!(
            kinds(&db)[kinds(&db).len() - 4..],
            [
                StatusKind::DelegatingDeployment,
                StatusKind::BuildingDeployment,
                StatusKind::Deploying,
                StatusKind::Running
            ]
        );
        assert_eq!(
            after.history[after.history.len() - 2].at,
            t2.max(after.history[after.history.len() - 3].at)
        );
        // The same report again, or a late one of a step already recorded: nothing added.
        let len = kinds(&db).len();
        assert_eq!(
            db.apply_report(MessageId::random(), &running),
            ReportOutcome::Updated
        );
        let mut late = report(&d, &node, DeploymentStatus::Deploying);
        late.earlier = steps[..1].to_vec();
        assert_eq!(
            db.apply_report(MessageId::random(), &late),
            ReportOutcome::Illegal
        );
        assert_eq!(kinds(&db).len(), len);

        // Known up to Building: only what came after it is added.
        let e = placed(&db, &node);
        db.transition(&e.id, DeploymentStatus::BuildingDeployment)
            .unwrap();
        let mut running = report(&e, &node, DeploymentStatus::Running);
        running.earlier = steps;
        assert_eq!(
            db.apply_report(MessageId::random(), &running),
            ReportOutcome::Transitioned
        );
        let history: Vec<StatusKind> = db
            .deployment(&e.id)
            .unwrap()
            .history
            .iter()
            .map(|h| h.status.kind())
            .collect();
        assert_eq!(
            history[history.len() - 3..],
            [
                StatusKind::BuildingDeployment,
                StatusKind::Deploying,
                StatusKind::Running
            ]
        );
    }

    #[test]
    fn a_usage_sample_is_shown_but_neither_persisted_nor_replicated() {
        let db = Database::in_memory(StateConfig::default());
        let node = NodeId::random();
        let d = placed(&db, &node);
        db.apply_report(
            MessageId::random(),
            &report(&d, &node, DeploymentStatus::Running),
        );
        db.track_changes(true);
        let seq = db.seq();
        let mut sample = report(&d, &node, DeploymentStatus::Running);
        sample.stats = Some(crate::model::InstanceStats {
            mem_bytes: 1 << 20,
            ..crate::model::InstanceStats::default()
        });
        assert_eq!(
            db.apply_report(MessageId::random(), &sample),
            ReportOutcome::Updated
        );
        assert_eq!(db.deployment(&d.id).unwrap().stats, sample.stats);
        assert_eq!(db.seq(), seq, "nothing to copy to the standby");
        // A changed port is a change.
        let mut moved = sample.clone();
        moved.port = Some(9999);
        db.apply_report(MessageId::random(), &moved);
        assert!(db.seq() > seq);
    }

    #[test]
    fn a_report_with_a_long_list_of_earlier_steps_reads_only_the_last_few() {
        let db = Database::in_memory(StateConfig::default());
        let node = NodeId::random();
        let d = placed(&db, &node);
        let before = db.deployment(&d.id).unwrap().history.len();
        let mut running = report(&d, &node, DeploymentStatus::Running);
        running.earlier = (0..10_000)
            .map(|i| {
                let s = if i % 2 == 0 {
                    DeploymentStatus::BuildingDeployment
                } else {
                    DeploymentStatus::Deploying
                };
                (s, Timestamp::now())
            })
            .collect();
        assert_eq!(
            db.apply_report(MessageId::random(), &running),
            ReportOutcome::Transitioned
        );
        let after = db.deployment(&d.id).unwrap().history;
        assert!(after.len() <= before + MAX_EARLIER + 1, "{}", after.len());
        assert_eq!(after[0].status.kind(), StatusKind::DeploymentRequested);
    }

    #[test]
    fn reports_are_idempotent_and_checked() {
        let db = Database::in_memory(StateConfig::default());
        let node = NodeId::random();
        let d = placed(&db, &node);
        let msg = MessageId::random();
        let running = report(&d, &node, DeploymentStatus::Running);
        assert_eq!(db.apply_report(msg, &running), ReportOutcome::Transitioned);
        let history = db.deployment(&d.id).unwrap().history.len();
        assert_eq!(db.apply_report(msg, &running), ReportOutcome::Duplicate);
        assert_eq!(
            db.apply_report(MessageId::random(), &running),
            ReportOutcome::Updated
        );
        assert_eq!(
            db.deployment(&d.id).unwrap().history.len(),
            history,
            "no duplicate history entry"
        );
        let mut stale = report(&d, &node, DeploymentStatus::Errored("old".into()));
        stale.generation = 0;
        assert_eq!(
            db.apply_report(MessageId::random(), &stale),
            ReportOutcome::Stale
        );
        let other = report(&d, &NodeId::random(), DeploymentStatus::Errored("x".into()));
        assert_eq!(
            db.apply_report(MessageId::random(), &other),
            ReportOutcome::Stale
        );
        let back = report(&d, &node, DeploymentStatus::BuildingDeployment);
        assert_eq!(
            db.apply_report(MessageId::random(), &back),
            ReportOutcome::Illegal
        );
        assert_eq!(
            db.deployment(&d.id).unwrap().status,
            DeploymentStatus::Running
        );
        assert_eq!(db.deployment(&d.id).unwrap().port, Some(8080));
    }

    #[test]
    fn bad_requests_change_nothing() {
        let db = Database::in_memory(StateConfig::default());
        assert!(matches!(
            db.request_destroy(&DeploymentId::random()),
            Err(StateError::UnknownDeployment(_))
        ));
        let d = db.create_deployment("file:///srv/app", "main").unwrap();
        assert!(matches!(
            db.request_redeploy(&d.id),
            Err(StateError::Transition(_))
        ));
        assert_eq!(db.deployments().len(), 1);
        assert_eq!(db.deployment(&d.id).unwrap().history.len(), 1);
    }

    #[test]
    fn drain_requests_are_checked_and_forgotten_with_the_node() {
        let db = Database::in_memory(StateConfig::default());
        let node = NodeId::random();
        assert!(matches!(
            db.request_drain(&node),
            Err(StateError::UnknownNode(n)) if n == node
        ));
        db.record_sysinfo(&SysinfoMessage {
            node: node.clone(),
            address: "10.0.0.2".into(),
            stats: crate::model::NodeStats::default(),
            instances: Vec::new(),
            leaving: false,
            candidate: false,
            proof: None,
        });
        assert!(!db.node(&node).unwrap().draining);
        db.set_accepting(Some(("standby".into(), None)));
        assert!(matches!(
            db.request_drain(&node),
            Err(StateError::NotLeader { .. })
        ));
        assert!(db.draining().is_empty());
        db.set_accepting(None);
        db.request_drain(&node).unwrap();
        db.request_drain(&node).unwrap();
        assert_eq!(db.draining(), vec![node.clone()]);
        assert!(db.nodes()[0].draining);
        db.remove_node(&node);
        assert!(db.draining().is_empty());
    }

    #[test]
    fn full_database_refuses() {
        let db = Database::in_memory(StateConfig {
            max_deployments: 2,
            ..StateConfig::default()
        });
        db.create_deployment("file:///a", "main").unwrap();
        db.create_deployment("file:///a", "main").unwrap();
        assert!(matches!(
            db.create_deployment("file:///a", "main"),
            Err(StateError::Full { limit: 2 })
        ));
    }

    #[test]
    fn logs_deduplicated_and_bounded_to_known_deployments() {
        let db = Database::in_memory(StateConfig::default());
        let d = db.create_deployment("file:///a", "main").unwrap();
        let batch = LogMessage {
            deployment: d.id.clone(),
            generation: 1,
            lines: vec![LogLine::new(LogStream::Stdout, "hi")],
        };
        let id = MessageId::random();
        assert!(db.append_logs(id, &batch));
        assert!(!db.append_logs(id, &batch));
        assert_eq!(db.logs(&d.id, None).unwrap().len(), 1);
        let unknown = LogMessage {
            deployment: DeploymentId::random(),
            ..batch
        };
        assert!(!db.append_logs(MessageId::random(), &unknown));
        assert!(db.logs(&unknown.deployment, None).is_none());
    }

    #[tokio::test]
    async fn a_state_file_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Database::open(dir.path(), StateConfig::default())
            .await
            .unwrap();
        let err = Database::open(dir.path(), StateConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (id, history) = {
            let db = Database::open(dir.path(), StateConfig::default())
                .await
                .unwrap();
            let d = db.create_deployment("file:///srv/app", "main").unwrap();
            db.transition(&d.id, DeploymentStatus::ValidatingDeploymentData)
                .unwrap();
            db.note(&d.id, "validating");
            db.set_epoch(7);
            db.flush().await.unwrap();
            (d.id.clone(), db.deployment(&d.id).unwrap().history)
        };
        let db = Database::open(dir.path(), StateConfig::default())
            .await
            .unwrap();
        let d = db.deployment(&id).unwrap();
        assert_eq!(d.status, DeploymentStatus::ValidatingDeploymentData);
        assert_eq!(d.history, history);
        assert_eq!(db.epoch(), 7);
        assert_eq!(db.logs(&id, None).unwrap()[0].text, "validating");
        assert!(db.delete_log(&id).await.unwrap());
        assert!(!db.delete_log(&id).await.unwrap());
    }

    #[tokio::test]
    async fn background_writer_persists_without_explicit_flush() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let db = Database::open(dir.path(), StateConfig::default())
                .await
                .unwrap();
            let id = db.create_deployment("file:///srv/app", "main").unwrap().id;
            // The writer batches for `flush_delay`; wait for the file to have it.
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if db.lock().dirty.is_empty() {
                    break;
                }
            }
            while Arc::strong_count(&db) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            id
        };
        let db = Database::open(dir.path(), StateConfig::default())
            .await
            .unwrap();
        assert!(db.deployment(&id).is_some());
    }
}
