//! The primary's side of rollover: it streams its database to one standby and holds a
//! *lease*, the right to accept changes, only while recent messages are confirmed.
//!
//! - The standby gets a snapshot in parts, then every change ([`crate::wire::ReplicationMessage`]);
//!   a round is sent on every change and at least every `heartbeat`.
//! - Each message carries a ping; the standby's [`crate::wire::ReplicaAck`] echoes it.
//!   With a ready standby (it applied a snapshot), the lease runs until `lease` after the
//!   sending of the newest acknowledged ping. Without one, the lease comes from the broker:
//!   `lease` after the start of the newest confirmed platform announcement.
//! - The lease (600 ms by default) is shorter than the standby's failover timeout (1 s),
//!   so a primary that lost contact stops accepting changes before its standby takes over.

use super::NodeContext;
use crate::model::NodeId;
use crate::state::Database;
use crate::transport::TransportExt;
use crate::util::lock;
use crate::wire::{self, Envelope, ReplicaAck, ReplicationMessage};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Settings of the standby copy and the lease.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// How long a confirmation lets the primary accept changes. Must be shorter than the
    /// standby's failover timeout.
    pub lease: Duration,
    /// The longest time between two messages to the standby.
    pub heartbeat: Duration,
    /// Size of one replication message, in bytes of JSON (well below the wire limit).
    pub part_bytes: usize,
    /// After its lease lapsed (it lost the broker, or its standby), a primary takes a lease
    /// from the broker again only once it heard its own announcements come back for this
    /// long without a gap: long enough to hear an orchestrator that took over meanwhile
    /// (it announces every few hundred milliseconds) and to stand down instead.
    pub rejoin: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            lease: Duration::from_millis(600),
            heartbeat: Duration::from_millis(150),
            part_bytes: 256 * 1024,
            rejoin: Duration::from_secs(1),
        }
    }
}

#[derive(Default)]
struct State {
    standby: Option<NodeId>,
    /// The standby applied a snapshot and acknowledges changes.
    ready: bool,
    need_snapshot: bool,
    snapshot_id: u64,
    /// The sequence number of the last snapshot sent, and the ping of its last part.
    snapshot_seq: u64,
    snapshot_ping: u64,
    /// The sequence number the standby will be at after what was sent.
    sent_seq: u64,
    ping: u64,
    pings: VecDeque<(u64, Instant)>,
    lease_until: Option<Instant>,
    /// This primary's own announcements heard back on the platform channel without a gap
    /// longer than the lease: since when, and the newest.
    heard_back: Option<(Instant, Instant)>,
    /// Why the primary must not accept changes whatever the lease (another took over).
    superseded: Option<(String, Option<String>)>,
}

impl State {
    fn next_ping(&mut self) -> u64 {
        self.ping += 1;
        self.pings.push_back((self.ping, Instant::now()));
        while self.pings.len() > 4096 {
            self.pings.pop_front();
        }
        self.ping
    }

    fn sent_at(&self, ping: u64) -> Option<Instant> {
        self.pings
            .iter()
            .find(|(p, _)| *p == ping)
            .map(|(_, at)| *at)
    }

    fn extend_lease(&mut self, from: Instant, lease: Duration) {
        let until = from + lease;
        if self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
        }
    }
}

/// The primary's replication and lease. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Replication {
    config: ReplicationConfig,
    db: Arc<Database>,
    state: Arc<Mutex<State>>,
    /// Re-evaluates whether changes are accepted.
    evaluate: Arc<Notify>,
    send_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Replication {
    pub(crate) fn new(config: ReplicationConfig, db: Arc<Database>) -> Self {
        Replication {
            config,
            db,
            state: Arc::default(),
            evaluate: Arc::new(Notify::new()),
            send_lock: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The designated standby.
    pub(crate) fn standby(&self) -> Option<NodeId> {
        self.lock().standby.clone()
    }

    /// Designates `standby` (or none). A new standby gets a snapshot first and gives no
    /// lease until it applied it. Returns the previous standby when it changed.
    pub(crate) fn designate(&self, standby: Option<NodeId>) -> Option<Option<NodeId>> {
        let mut s = self.lock();
        if s.standby == standby {
            return None;
        }
        let old = std::mem::replace(&mut s.standby, standby.clone());
        s.ready = false;
        s.need_snapshot = standby.is_some();
        s.snapshot_ping = 0;
        drop(s);
        self.db.require_replication(false);
        self.db.track_changes(standby.is_some());
        self.db.replication_wake().notify_one();
        self.evaluate.notify_one();
        tracing::info!(standby = ?standby.as_ref().map(NodeId::as_str), "standby designated");
        Some(old)
    }

    /// Refuses changes from now on, whatever the lease: another orchestrator took over, or
    /// this one is stopping.
    pub(crate) fn supersede(&self, reason: String, leader: Option<String>) {
        self.lock().superseded = Some((reason, leader));
        self.evaluate.notify_one();
    }

    /// A confirmed announcement started at `started`: the broker is reachable. Gives a
    /// lease when there is no ready standby, and the lease has not lapsed since the last
    /// one (or there was none yet), or this primary listened long enough since it lapsed
    /// (see [`ReplicationConfig::rejoin`]).
    pub(crate) fn announced(&self, started: Instant) {
        let mut s = self.lock();
        if s.ready {
            return;
        }
        let unbroken = s.lease_until.is_some_and(|until| started <= until);
        let listened = s.heard_back.is_some_and(|(since, newest)| {
            started.saturating_duration_since(since) >= self.config.rejoin
                && started.saturating_duration_since(newest) <= self.config.lease
        });
        // The first lease needs no listening: the claim listened.
        if s.lease_until.is_none() || unbroken || listened {
            s.extend_lease(started, self.config.lease);
            drop(s);
            self.evaluate.notify_one();
        }
    }

    /// This primary's own announcement came back through the platform channel at `at`:
    /// its subscription works, so it would hear another orchestrator's too.
    pub(crate) fn heard_own(&self, at: Instant) {
        let mut s = self.lock();
        s.heard_back = match s.heard_back {
            Some((since, newest)) if at.saturating_duration_since(newest) <= self.config.lease => {
                Some((since, at))
            }
            _ => Some((at, at)),
        };
    }

    /// Why changes are refused now (`None`: accepted), and until when the answer holds.
    fn refusal(&self, now: Instant) -> (Option<(String, Option<String>)>, Option<Instant>) {
        let s = self.lock();
        if let Some(superseded) = &s.superseded {
            return (Some(superseded.clone()), None);
        }
        match s.lease_until {
            Some(until) if until > now => (None, Some(until)),
            _ => {
                let reason = if s.ready {
                    "the standby stopped confirming the state (this node may be cut off)"
                } else {
                    "the broker did not confirm this node's announcements (this node may be cut off)"
                };
                (Some((reason.to_owned(), None)), None)
            }
        }
    }

    /// Handles a standby's acknowledgement.
    fn on_ack(&self, ack: &ReplicaAck) {
        let mut s = self.lock();
        if s.standby.as_ref() != Some(&ack.standby) {
            return;
        }
        if ack.resync {
            // Only if it saw what came after the newest snapshot and still has no copy.
            if ack.ping > s.snapshot_ping && !s.need_snapshot {
                tracing::info!(standby = %ack.standby, "the standby asks for a snapshot");
                s.need_snapshot = true;
                s.ready = false;
                drop(s);
                self.db.require_replication(false);
                self.db.replication_wake().notify_one();
                self.evaluate.notify_one();
            }
            return;
        }
        let was_ready = s.ready;
        if ack.applied >= s.snapshot_seq && s.snapshot_ping > 0 && ack.ping >= s.snapshot_ping {
            s.ready = true;
        }
        if !s.ready {
            return;
        }
        if let Some(sent) = s.sent_at(ack.ping) {
            s.extend_lease(sent, self.config.lease);
        }
        drop(s);
        if !was_ready {
            tracing::info!(standby = %ack.standby, "the standby holds a complete copy");
            self.db.require_replication(true);
        }
        self.db.confirm_replicated(ack.applied);
        self.evaluate.notify_one();
    }

    /// Starts the sender, the acknowledgement consumer and the lease keeper, all ending
    /// with `ctx`'s shutdown token.
    pub(crate) async fn start(
        &self,
        ctx: &NodeContext,
    ) -> Result<(), crate::transport::TransportError> {
        let mut acks = ctx
            .transport
            .listen(&wire::replica_ack_channel(&ctx.node))
            .await?;
        let (this, me, epoch, stop) = (
            self.clone(),
            ctx.node.clone(),
            self.db.epoch(),
            ctx.shutdown(),
        );
        let config = ctx.config.clone();
        ctx.spawn(async move {
            loop {
                let Some(received) = acks.next_until(&stop).await else {
                    return;
                };
                let ack = &received.envelope.body;
                if ack.primary == me
                    && ack.epoch == epoch
                    && config.verify_join(&ack.standby, ack.proof.as_deref())
                {
                    this.on_ack(ack);
                }
                received.settle().await;
            }
        });

        let (this, stop) = (self.clone(), ctx.shutdown());
        ctx.spawn(async move {
            loop {
                let (refusal, until) = this.refusal(Instant::now());
                this.db.set_accepting(refusal);
                let expiry = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    () = this.evaluate.notified() => {}
                    () = tokio::time::sleep_until(expiry) => {}
                    () = stop.cancelled() => return,
                }
            }
        });

        let (this, sender_ctx, stop) = (self.clone(), ctx.clone(), ctx.shutdown());
        let wake = self.db.replication_wake();
        ctx.spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(this.config.heartbeat) => {}
                    () = stop.cancelled() => return,
                }
                this.round(&sender_ctx).await;
            }
        });
        Ok(())
    }

    /// Sends what the standby lacks: a snapshot, or the changes since the last round (an
    /// empty batch is the heartbeat).
    pub(crate) async fn round(&self, ctx: &NodeContext) {
        let _guard = self.send_lock.lock().await;
        let (standby, need_snapshot, sent_seq) = {
            let s = self.lock();
            (s.standby.clone(), s.need_snapshot, s.sent_seq)
        };
        let Some(standby) = standby else { return };
        let epoch = self.db.epoch();
        let mut messages = Vec::new();
        if need_snapshot {
            let (seq, parts) = self.db.snapshot(self.config.part_bytes);
            let mut s = self.lock();
            s.need_snapshot = false;
            s.snapshot_id += 1;
            s.sent_seq = seq;
            s.snapshot_seq = seq;
            let count = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let ping = s.next_ping();
                let last = i + 1 == count;
                if last {
                    s.snapshot_ping = ping;
                }
                messages.push(ReplicationMessage::Snapshot {
                    epoch,
                    ping,
                    snapshot: s.snapshot_id,
                    part: u32::try_from(i).unwrap_or(u32::MAX),
                    last,
                    seq,
                    deployments: part.deployments,
                    logs: part.logs,
                });
            }
            tracing::debug!(standby = %standby, parts = count, seq, "sending a snapshot");
        } else {
            let Some(changes) = self.db.take_changes(sent_seq, self.config.part_bytes) else {
                self.lock().need_snapshot = true;
                self.db.replication_wake().notify_one();
                return;
            };
            let mut s = self.lock();
            s.sent_seq = changes.to;
            let count = changes.parts.len();
            for (i, part) in changes.parts.into_iter().enumerate() {
                messages.push(ReplicationMessage::Delta {
                    epoch,
                    ping: s.next_ping(),
                    from: changes.from,
                    to: changes.to,
                    last: i + 1 == count,
                    deployments: part.deployments,
                    logs: part.logs,
                    deleted_logs: part.deleted_logs,
                });
            }
        }
        let channel = wire::replica_channel(&standby);
        for message in messages {
            let envelope = Envelope::new(ctx.node.clone(), epoch, message);
            if let Err(err) = ctx.transport.send(&channel, &envelope).await {
                tracing::warn!(standby = %standby, cause = %err, "replication message not sent; the standby will get a snapshot");
                self.lock().need_snapshot = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;

    fn replication() -> Replication {
        Replication::new(
            ReplicationConfig::default(),
            Database::in_memory(StateConfig::default()),
        )
    }

    fn leased(r: &Replication, now: Instant) -> bool {
        r.refusal(now).0.is_none()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_confirmed_announcement_gives_a_lease_that_lapses() {
        let r = replication();
        let t0 = Instant::now();
        assert!(!leased(&r, t0), "no lease before any confirmation");
        r.announced(t0);
        assert!(leased(&r, t0 + Duration::from_millis(599)));
        assert!(!leased(&r, t0 + Duration::from_millis(601)));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_lapse_the_broker_gives_a_lease_only_after_listening() {
        let r = replication();
        let t0 = Instant::now();
        r.announced(t0);
        // Cut off for 3 s: the lease lapses. The broker confirms again at t0 + 3 s, and
        // this primary hears its own announcements back from then on, every 250 ms.
        let back = t0 + Duration::from_secs(3);
        let mut t = back;
        while t < back + Duration::from_millis(900) {
            r.heard_own(t);
            r.announced(t);
            assert!(!leased(&r, t), "leased {:?} after the heal", t - back);
            t += Duration::from_millis(250);
        }
        // A full `rejoin` of listening without hearing another orchestrator: leased again.
        r.heard_own(t);
        t += Duration::from_millis(250);
        r.heard_own(t);
        r.announced(t);
        assert!(leased(&r, t));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_in_hearing_itself_restarts_the_listening() {
        let r = replication();
        let t0 = Instant::now();
        r.announced(t0);
        let back = t0 + Duration::from_secs(3);
        r.heard_own(back);
        // Heard nothing for longer than the lease (its subscription was down), then again.
        let again = back + Duration::from_millis(900);
        r.heard_own(again);
        r.announced(again + Duration::from_millis(200));
        assert!(!leased(&r, again + Duration::from_millis(200)));
        r.heard_own(again + Duration::from_millis(500));
        r.heard_own(again + Duration::from_millis(1000));
        r.announced(again + Duration::from_millis(1000));
        assert!(leased(&r, again + Duration::from_millis(1000)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_superseded_primary_never_gets_a_lease() {
        let r = replication();
        let t0 = Instant::now();
        r.supersede("orchestrator b took over (epoch 2)".into(), None);
        r.heard_own(t0);
        r.announced(t0);
        r.heard_own(t0 + Duration::from_secs(2));
        r.announced(t0 + Duration::from_secs(2));
        assert!(!leased(&r, t0 + Duration::from_secs(2)));
    }
}
