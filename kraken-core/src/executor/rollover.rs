//! Rollover: which node orchestrates, and taking over when it is lost.
//!
//! Every node that may orchestrate runs a [`RolloverExecutor`] (next to its worker). It is
//! a *follower* of the orchestrator it hears on the `platform` channel, the *standby* when
//! the orchestrator's announcements name it second in their candidates, or the *primary*,
//! running an [`OrchestrationExecutor`] over the node's database.
//!
//! - **Start.** A node that hears no orchestrator within `startup_wait` claims the role
//!   (a claim announcement), waits `claim_window` for an orchestrator to speak up, and
//!   becomes primary with epoch + 1.
//! - **Standby.** The primary streams its database to the standby
//!   ([`replication`](super::replication)); the standby applies it to its own database
//!   (on disk with a data dir) and acknowledges every message.
//! - **Failover.** A standby with a complete copy whose primary is silent for
//!   `failover_timeout` (or that announced it resigns) claims with epoch + 1, waits
//!   `claim_window`, and takes over with the copy. Workers follow the newer epoch and
//!   ignore orders of the older one; running apps stay where they are.
//! - **No split brain.** The primary accepts changes only under a lease that ends before
//!   the standby's failover timeout; a primary that hears a newer epoch stops and becomes
//!   a follower (a worker, if the node runs one).

use super::orchestrator::{OrchestrationExecutor, OrchestratorConfig, announce};
use super::replication::ReplicationConfig;
use super::{ExecutionFailure, Executor, NodeContext, SetupFailure};
use crate::model::{Deployment, DeploymentId, LogLine, NodeId, PlatformInfo};
use crate::state::{Database, Part};
use crate::transport::TransportExt;
use crate::util::lock;
use crate::wire::{self, Envelope, ReplicaAck, ReplicationMessage};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When a node takes the orchestrator role without a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// At once, without listening first (a platform of one process).
    Now,
    /// When no orchestrator was heard within the startup wait.
    WhenAlone,
    /// Only by failover, as the standby.
    OnlyByFailover,
}

/// Settings of rollover.
#[derive(Debug, Clone)]
pub struct RolloverConfig {
    /// A standby whose primary is silent this long takes over. Longer than the lease.
    pub failover_timeout: Duration,
    /// How long a starting node listens for an orchestrator before it claims the role.
    pub startup_wait: Duration,
    /// How long a claim waits for an orchestrator that is still there to speak up.
    pub claim_window: Duration,
    /// When this node leads without a failover.
    pub lead: Lead,
    /// The orchestrator this node runs when it leads (its API, node timeout, ...). Its
    /// `replication` is filled with the defaults when `None`.
    pub orchestrator: OrchestratorConfig,
}

impl Default for RolloverConfig {
    fn default() -> Self {
        RolloverConfig {
            failover_timeout: Duration::from_secs(1),
            startup_wait: Duration::from_millis(1500),
            claim_window: Duration::from_millis(500),
            lead: Lead::WhenAlone,
            orchestrator: OrchestratorConfig::default(),
        }
    }
}

/// The role a node plays, as [`RolloverExecutor::watch_role`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Follows the orchestrator (or has not heard one yet).
    Follower,
    /// Keeps a copy of the orchestrator's state, ready to take over.
    Standby,
    /// Claimed the role and waits for objections.
    Claiming,
    /// The orchestrator, at this epoch.
    Primary(u64),
}

enum Acting {
    Follower,
    Standby,
    Claiming {
        since: Instant,
        epoch: u64,
        /// The primary this claim takes over from, silent since then.
        silent: Option<(NodeId, Instant)>,
    },
    Primary {
        orchestrator: Box<OrchestrationExecutor>,
        ctx: NodeContext,
        token: CancellationToken,
    },
}

/// The newest orchestrator heard.
#[derive(Default, Clone)]
struct Heard {
    leader: Option<PlatformInfo>,
    at: Option<Instant>,
    resigning: bool,
}

struct Assembly {
    snapshot: u64,
    next_part: u32,
    seq: u64,
    deployments: Vec<Deployment>,
    logs: BTreeMap<DeploymentId, Vec<LogLine>>,
}

/// The standby's copy.
#[derive(Default)]
struct Replica {
    primary: Option<NodeId>,
    epoch: u64,
    applied: u64,
    complete: bool,
    assembling: Option<Assembly>,
    last_contact: Option<Instant>,
}

/// Takes the orchestrator role when the platform needs one. See the module docs.
pub struct RolloverExecutor {
    config: RolloverConfig,
    db: Arc<Database>,
    acting: Acting,
    heard: Arc<Mutex<Heard>>,
    replica: Arc<Mutex<Replica>>,
    primary_flag: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    role: watch::Sender<Role>,
}

impl std::fmt::Debug for RolloverExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloverExecutor")
            .field("config", &self.config)
            .field("role", &*self.role.borrow())
            .finish_non_exhaustive()
    }
}

impl RolloverExecutor {
    /// A node that orchestrates over `db` when it leads. `db` is also where a standby keeps
    /// its copy, so it should be the node's own (persistent with a data dir).
    pub fn new(db: Arc<Database>, config: RolloverConfig) -> Self {
        let mut config = config;
        config
            .orchestrator
            .replication
            .get_or_insert_with(ReplicationConfig::default);
        RolloverExecutor {
            config,
            db,
            acting: Acting::Follower,
            heard: Arc::default(),
            replica: Arc::default(),
            primary_flag: Arc::default(),
            started: Instant::now(),
            role: watch::Sender::new(Role::Follower),
        }
    }

    /// Watches this node's role.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    fn set_role(&self, role: Role) {
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }

    fn refuse(&self, what: &str, leader: Option<&PlatformInfo>) {
        self.db.set_accepting(Some((
            what.to_owned(),
            leader.and_then(|l| l.api_addr.clone()),
        )));
    }

    /// The epoch a takeover uses: one more than any this node knows.
    fn next_epoch(&self) -> u64 {
        let heard = lock(&self.heard).leader.as_ref().map_or(0, |l| l.epoch);
        let replica = lock(&self.replica).epoch;
        self.db.epoch().max(heard).max(replica) + 1
    }

    /// Announces a claim; the node becomes primary after the claim window unless an
    /// orchestrator speaks up.
    async fn claim(&mut self, ctx: &NodeContext, silent: Option<(NodeId, Instant)>) {
        let epoch = self.next_epoch();
        let info = PlatformInfo {
            orchestrator: ctx.node.clone(),
            epoch,
            api_addr: None,
            broker_url: ctx.transport.broker_url(),
            candidates: Vec::new(),
        };
        if !announce(ctx, info, true, false).await {
            tracing::warn!("cannot announce a claim (is the broker reachable?); will retry");
            return;
        }
        tracing::info!(epoch, "claiming the orchestrator role");
        self.acting = Acting::Claiming {
            since: Instant::now(),
            epoch,
            silent,
        };
        self.set_role(Role::Claiming);
    }

    async fn promote(&mut self, ctx: &NodeContext, epoch: u64, silent: Option<(NodeId, Instant)>) {
        self.db.set_epoch(epoch);
        if let Err(err) = self.db.flush().await {
            tracing::error!(cause = %err, "cannot persist the new epoch; not taking over");
            self.acting = Acting::Follower;
            self.set_role(Role::Follower);
            return;
        }
        let token = ctx.shutdown().child_token();
        let octx = ctx.scoped(token.clone());
        let mut orchestrator = Box::new(OrchestrationExecutor::new(
            Arc::clone(&self.db),
            self.config.orchestrator.clone(),
        ));
        if let Some((node, at)) = silent {
            orchestrator.heard_last(node, at);
        }
        self.primary_flag
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(err) = orchestrator.setup(&octx).await {
            tracing::error!(cause = %err, "cannot start the orchestrator; will retry");
            token.cancel();
            self.primary_flag
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.acting = Acting::Follower;
            self.set_role(Role::Follower);
            return;
        }
        tracing::info!(epoch, "this node is the orchestrator");
        *lock(&self.replica) = Replica::default();
        self.acting = Acting::Primary {
            orchestrator,
            ctx: octx,
            token,
        };
        self.set_role(Role::Primary(epoch));
        ctx.wake();
    }

    async fn demote(&mut self, ctx: &NodeContext, leader: PlatformInfo) {
        let acting = std::mem::replace(&mut self.acting, Acting::Follower);
        if let Acting::Primary {
            mut orchestrator,
            ctx: octx,
            token,
        } = acting
        {
            token.cancel();
            if let Err(err) = orchestrator.shutdown(&octx).await {
                tracing::warn!(cause = %err, "the orchestrator did not stop cleanly");
            }
        }
        self.primary_flag
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.db.track_changes(false);
        self.db.require_replication(false);
        self.refuse("this node is no longer the orchestrator", Some(&leader));
        tracing::warn!(orchestrator = %leader.orchestrator, epoch = leader.epoch, "demoted: following the newer orchestrator");
        ctx.set_platform(leader);
        self.set_role(Role::Follower);
    }
}

/// Applies replication messages to the node's database and acknowledges them.
struct Applier {
    db: Arc<Database>,
    heard: Arc<Mutex<Heard>>,
    replica: Arc<Mutex<Replica>>,
    primary_flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Applier {
    /// Handles one message; returns the acknowledgement to send.
    async fn apply(&self, me: &NodeId, env: &Envelope<ReplicationMessage>) -> Option<ReplicaAck> {
        if self.primary_flag.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let sender = env.sender.clone();
        let (epoch, ping) = match &env.body {
            ReplicationMessage::Snapshot { epoch, ping, .. }
            | ReplicationMessage::Delta { epoch, ping, .. } => (*epoch, *ping),
        };
        // A primary older than the newest orchestrator heard was replaced: confirming its
        // state would give it a lease.
        if lock(&self.heard)
            .leader
            .as_ref()
            .is_some_and(|l| epoch < l.epoch)
        {
            return None;
        }
        let snapshot = {
            let mut r = lock(&self.replica);
            if r.primary.as_ref() != Some(&sender) || epoch < r.epoch {
                if epoch < r.epoch {
                    return None;
                }
                *r = Replica {
                    primary: Some(sender.clone()),
                    epoch,
                    ..Replica::default()
                };
            }
            r.epoch = epoch;
            r.last_contact = Some(Instant::now());
            match env.body.clone() {
                ReplicationMessage::Snapshot {
                    snapshot,
                    part,
                    last,
                    seq,
                    deployments,
                    logs,
                    ..
                } => {
                    if part == 0 {
                        r.assembling = Some(Assembly {
                            snapshot,
                            next_part: 0,
                            seq,
                            deployments: Vec::new(),
                            logs: BTreeMap::new(),
                        });
                    }
                    match r.assembling.as_mut() {
                        Some(a) if a.snapshot == snapshot && a.next_part == part => {
                            a.next_part += 1;
                            a.deployments.extend(deployments);
                            for batch in logs {
                                a.logs
                                    .entry(batch.deployment)
                                    .or_default()
                                    .extend(batch.lines);
                            }
                        }
                        _ => r.assembling = None,
                    }
                    if last { r.assembling.take() } else { None }
                }
                ReplicationMessage::Delta {
                    from,
                    to,
                    last,
                    deployments,
                    logs,
                    deleted_logs,
                    ..
                } => {
                    if r.complete && from == r.applied {
                        self.db.apply_part(
                            epoch,
                            Part {
                                deployments,
                                logs,
                                deleted_logs,
                            },
                        );
                        if last {
                            r.applied = to;
                        }
                    } else if r.complete && to <= r.applied {
                        // A duplicate.
                    } else if r.complete {
                        tracing::warn!(
                            applied = r.applied,
                            from,
                            "gap in the replication stream; asking for a snapshot"
                        );
                        r.complete = false;
                    }
                    None
                }
            }
        };
        if let Some(a) = snapshot {
            let seq = a.seq;
            match self.db.apply_snapshot(epoch, a.deployments, a.logs).await {
                Ok(()) => {
                    let mut r = lock(&self.replica);
                    r.applied = seq;
                    r.complete = true;
                    tracing::info!(primary = %sender, seq, "standby copy complete");
                }
                Err(err) => {
                    tracing::error!(cause = %err, "cannot store the snapshot");
                    lock(&self.replica).complete = false;
                }
            }
        }
        let r = lock(&self.replica);
        Some(ReplicaAck {
            standby: me.clone(),
            primary: sender,
            epoch,
            ping,
            applied: r.applied,
            resync: !r.complete,
            proof: None,
        })
    }
}

#[async_trait]
impl Executor for RolloverExecutor {
    fn name(&self) -> &str {
        "rollover"
    }

    async fn setup(&mut self, ctx: &NodeContext) -> Result<(), SetupFailure> {
        self.started = Instant::now();
        self.refuse("this node is not the orchestrator (yet)", None);

        // The newest orchestrator heard (claims are not followed).
        let mut platform = ctx.announcements().await?;
        let (heard, me, waker, stop) = (
            Arc::clone(&self.heard),
            ctx.node.clone(),
            ctx.waker(),
            ctx.shutdown(),
        );
        ctx.spawn(async move {
            while let Some(message) = platform.next_until(&stop).await {
                if message.info.orchestrator == me {
                    continue;
                }
                let mut h = lock(&heard);
                if h.leader
                    .as_ref()
                    .is_none_or(|l| message.info.epoch >= l.epoch)
                {
                    h.leader = Some(message.info);
                    h.at = Some(Instant::now());
                    h.resigning = message.resigning;
                    drop(h);
                    waker.notify_one();
                }
            }
        });

        // The replication stream, should this node be made standby.
        let mut stream = ctx
            .transport
            .listen(&wire::replica_channel(&ctx.node))
            .await?;
        let applier = Applier {
            db: Arc::clone(&self.db),
            heard: Arc::clone(&self.heard),
            replica: Arc::clone(&self.replica),
            primary_flag: Arc::clone(&self.primary_flag),
        };
        let (me, stop, actx) = (ctx.node.clone(), ctx.shutdown(), ctx.clone());
        ctx.spawn(async move {
            loop {
                let Some(received) = stream.next_until(&stop).await else {
                    return;
                };
                if let Some(mut ack) = applier.apply(&me, &received.envelope).await {
                    ack.proof = actx.config.join_proof(&me);
                    let channel = wire::replica_ack_channel(&ack.primary);
                    let env = Envelope::new(me.clone(), ack.epoch, ack);
                    if let Err(err) = actx.transport.send(&channel, &env).await {
                        tracing::debug!(cause = %err, "replica ack not sent");
                    }
                }
                received.settle().await;
            }
        });
        Ok(())
    }

    async fn execute(&mut self, ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        let now = Instant::now();
        if let Acting::Primary {
            orchestrator,
            ctx: octx,
            ..
        } = &mut self.acting
        {
            if let Some(leader) = orchestrator.superseded() {
                self.demote(ctx, leader).await;
                return Ok(());
            }
            return orchestrator.execute(octx).await;
        }
        let heard = lock(&self.heard).clone();
        if let Acting::Claiming {
            since,
            epoch,
            ref silent,
        } = self.acting
        {
            let silent = silent.clone();
            if heard.at.is_some_and(|at| at > since) && !heard.resigning {
                tracing::info!("an orchestrator answered: not taking over");
                self.acting = Acting::Follower;
                self.set_role(Role::Follower);
            } else if now.duration_since(since) >= self.config.claim_window {
                self.promote(ctx, epoch, silent).await;
            }
            return Ok(());
        }
        match &heard.leader {
            Some(leader) => {
                let designated = leader.candidates.get(1) == Some(&ctx.node);
                match (&self.acting, designated) {
                    (Acting::Follower, true) => {
                        tracing::info!(orchestrator = %leader.orchestrator, "this node is the standby");
                        self.acting = Acting::Standby;
                        self.set_role(Role::Standby);
                        self.refuse("this node is the standby", Some(leader));
                    }
                    (Acting::Standby, false) => {
                        tracing::info!("this node is no longer the standby");
                        self.acting = Acting::Follower;
                        self.set_role(Role::Follower);
                        self.refuse("this node is not the orchestrator", Some(leader));
                    }
                    (Acting::Follower, false) => {
                        self.refuse("this node is not the orchestrator", Some(leader));
                    }
                    _ => {}
                }
                if matches!(self.acting, Acting::Standby) {
                    let (complete, contact) = {
                        let r = lock(&self.replica);
                        (r.complete, r.last_contact)
                    };
                    let last = contact.max(heard.at).unwrap_or(self.started);
                    let silent = now.duration_since(last);
                    if complete && (heard.resigning || silent > self.config.failover_timeout) {
                        tracing::warn!(orchestrator = %leader.orchestrator, silent_ms = silent.as_millis() as u64, resigned = heard.resigning, "the orchestrator is gone; taking over");
                        // A primary that resigned may leave its apps to be re-attached;
                        // a silent one is gone since its last word.
                        let gone = (!heard.resigning).then(|| (leader.orchestrator.clone(), last));
                        self.claim(ctx, gone).await;
                    }
                }
            }
            None => match self.config.lead {
                Lead::Now => {
                    let epoch = self.next_epoch();
                    self.promote(ctx, epoch, None).await;
                }
                Lead::WhenAlone if now.duration_since(self.started) >= self.config.startup_wait => {
                    self.claim(ctx, None).await;
                }
                Lead::WhenAlone | Lead::OnlyByFailover => {}
            },
        }
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &NodeContext) -> Result<(), ExecutionFailure> {
        let acting = std::mem::replace(&mut self.acting, Acting::Follower);
        if let Acting::Primary {
            mut orchestrator,
            ctx: octx,
            token,
        } = acting
        {
            orchestrator.resign(&octx).await;
            token.cancel();
            // It flushes the database.
            return orchestrator.shutdown(&octx).await;
        }
        // A standby's or follower's copy.
        self.db
            .flush()
            .await
            .map_err(|e| ExecutionFailure::Recoverable(e.to_string()))
    }

    fn tick(&self) -> Duration {
        match &self.acting {
            Acting::Primary { orchestrator, .. } => orchestrator.tick(),
            _ => Duration::from_millis(100),
        }
    }
}
