//! Copying the database to a standby: the primary records what changed since it last sent
//! (deployment ids, appended log lines, deleted logs) and sends their current state in
//! size-bounded parts; a standby applies snapshots and changes to its own database.
//!
//! Every change bumps a sequence number. A standby acknowledges the number it reached;
//! [`Database::replicated`] lets a request wait for that before it answers, so a change a
//! client saw accepted survives a failover.

use super::{Database, StateError, logs};
use crate::model::{Deployment, DeploymentId, LogLine};
use crate::wire::LogBatch;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// Most log lines waiting for the standby; beyond this the standby gets a snapshot.
const MAX_PENDING_LINES: usize = 100_000;

/// Changes not yet sent to the standby.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) deployments: HashSet<DeploymentId>,
    pub(super) logs: Vec<LogBatch>,
    lines: usize,
    pub(super) deleted_logs: Vec<DeploymentId>,
    overflow: bool,
}

impl Pending {
    pub(super) fn add_logs(&mut self, id: &DeploymentId, lines: &[LogLine]) {
        if self.overflow {
            return;
        }
        self.lines += lines.len();
        if self.lines > MAX_PENDING_LINES {
            self.overflow = true;
            self.logs.clear();
            return;
        }
        match self.logs.last_mut() {
            Some(last) if last.deployment == *id => last.lines.extend_from_slice(lines),
            _ => self.logs.push(LogBatch {
                deployment: id.clone(),
                lines: lines.to_vec(),
            }),
        }
    }
}

/// One part of a snapshot or of a batch of changes, small enough for one message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Part {
    /// Deployments (their whole state).
    pub deployments: Vec<Deployment>,
    /// Log lines.
    pub logs: Vec<LogBatch>,
    /// Logs deleted.
    pub deleted_logs: Vec<DeploymentId>,
}

/// What changed from sequence number `from` to `to`, in parts.
#[derive(Debug)]
pub struct Changes {
    /// The sequence number the standby must be at.
    pub from: u64,
    /// The sequence number after these changes.
    pub to: u64,
    /// The parts (at least one, possibly empty: a heartbeat).
    pub parts: Vec<Part>,
}

/// Splits deployments and log lines into parts of about `max_bytes` of JSON each.
struct Splitter {
    max_bytes: usize,
    parts: Vec<Part>,
    current: Part,
    bytes: usize,
}

impl Splitter {
    fn new(max_bytes: usize) -> Self {
        Splitter {
            max_bytes: max_bytes.max(4096),
            parts: Vec::new(),
            current: Part::default(),
            bytes: 0,
        }
    }

    fn room(&mut self, size: usize) {
        if self.bytes > 0 && self.bytes + size > self.max_bytes {
            self.parts.push(std::mem::take(&mut self.current));
            self.bytes = 0;
        }
        self.bytes += size;
    }

    fn deployment(&mut self, d: Deployment) {
        let size = serde_json::to_vec(&d).map_or(4096, |v| v.len());
        self.room(size);
        self.current.deployments.push(d);
    }

    fn lines(&mut self, id: &DeploymentId, lines: Vec<LogLine>) {
        for line in lines {
            let size = line.text.len() + 96;
            self.room(size);
            match self.current.logs.last_mut() {
                Some(last) if last.deployment == *id => last.lines.push(line),
                _ => self.current.logs.push(LogBatch {
                    deployment: id.clone(),
                    lines: vec![line],
                }),
            }
        }
    }

    fn finish(mut self) -> Vec<Part> {
        self.parts.push(self.current);
        self.parts
    }
}

impl Database {
    /// The change sequence number.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Starts (or stops) recording changes for a standby. Starting drops what was recorded:
    /// the standby gets a [`snapshot`](Self::snapshot) first.
    pub(crate) fn track_changes(&self, on: bool) {
        self.lock().replication = on.then(Pending::default);
    }

    /// Wakes whoever sends changes to the standby.
    pub(crate) fn replication_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.replication_wake)
    }

    /// Takes the changes recorded since the last call, in parts of about `max_bytes`.
    /// `None` when too many piled up (or nothing is recorded): send a snapshot instead.
    pub(crate) fn take_changes(&self, from: u64, max_bytes: usize) -> Option<Changes> {
        let mut inner = self.lock();
        let pending = inner.replication.as_mut()?;
        if pending.overflow {
            return None;
        }
        let pending = std::mem::take(pending);
        let to = inner.seq;
        let mut split = Splitter::new(max_bytes);
        let mut ids: Vec<_> = pending.deployments.into_iter().collect();
        ids.sort();
        for id in ids {
            if let Some(d) = inner.deployments.get(&id) {
                split.deployment(d.clone());
            }
        }
        for batch in pending.logs {
            split.lines(&batch.deployment, batch.lines);
        }
        let mut parts = split.finish();
        if let Some(last) = parts.last_mut() {
            last.deleted_logs = pending.deleted_logs;
        }
        Some(Changes { from, to, parts })
    }

    /// The whole state (deployments and the logs kept in memory) at a sequence number, in
    /// parts of about `max_bytes`. Restarts the recording of changes from that number.
    pub(crate) fn snapshot(&self, max_bytes: usize) -> (u64, Vec<Part>) {
        let mut inner = self.lock();
        inner.replication = Some(Pending::default());
        let mut split = Splitter::new(max_bytes);
        for d in inner.deployments.values() {
            split.deployment(d.clone());
        }
        for id in inner.logs.ids() {
            split.lines(&id, inner.logs.tail(&id, None));
        }
        (inner.seq, split.finish())
    }

    /// Makes requests wait for the standby's confirmation ([`replicated`](Self::replicated))
    /// or not (no standby).
    pub(crate) fn require_replication(&self, required: bool) {
        self.replicated.send_if_modified(|(_, r)| {
            let changed = *r != required;
            *r = required;
            changed
        });
    }

    /// Records that the standby has every change up to `seq`.
    pub(crate) fn confirm_replicated(&self, seq: u64) {
        self.replicated.send_if_modified(|(confirmed, _)| {
            let changed = seq > *confirmed;
            *confirmed = (*confirmed).max(seq);
            changed
        });
    }

    /// Waits until the standby confirmed every change made so far (at once when no
    /// standby must confirm), up to `timeout`.
    pub async fn replicated(&self, timeout: Duration) -> Result<(), StateError> {
        if self
            .replicated_to(self.seq(), tokio::time::Instant::now() + timeout)
            .await
        {
            Ok(())
        } else {
            Err(StateError::NotReplicated(timeout))
        }
    }

    /// Waits until the standby confirmed every change up to `seq` (see [`seq`](Self::seq);
    /// at once when no standby must confirm), until `deadline`. True when it did.
    pub async fn replicated_to(&self, seq: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.replicated.subscribe();
        let done = rx.wait_for(|(confirmed, required)| !required || *confirmed >= seq);
        matches!(tokio::time::timeout_at(deadline, done).await, Ok(Ok(_)))
    }

    /// Replaces the whole state with a snapshot from the primary (a standby's database):
    /// deployments not in it are removed, logs replaced, the epoch taken. Written to disk
    /// before it returns.
    pub(crate) async fn apply_snapshot(
        &self,
        epoch: u64,
        deployments: Vec<Deployment>,
        logs: BTreeMap<DeploymentId, Vec<LogLine>>,
    ) -> Result<(), StateError> {
        let _guard = self.write_lock.lock().await;
        let (removed, stale_logs, dir) = {
            let inner = self.lock();
            let keep: HashSet<&DeploymentId> = deployments.iter().map(|d| &d.id).collect();
            let removed: Vec<DeploymentId> = inner
                .deployments
                .keys()
                .filter(|id| !keep.contains(id))
                .cloned()
                .collect();
            let mut stale: HashSet<DeploymentId> = inner.logs.ids().into_iter().collect();
            stale.extend(logs.keys().cloned());
            (
                removed,
                stale.into_iter().collect::<Vec<_>>(),
                inner.logs.dir().map(Path::to_path_buf),
            )
        };
        if let Some(store) = self.store.clone() {
            let (upserts, gone) = (deployments.clone(), removed.clone());
            let files = stale_logs.clone();
            tokio::task::spawn_blocking(move || {
                store.write(&upserts, &gone, Some(epoch))?;
                if let Some(dir) = dir {
                    for id in &files {
                        logs::delete_files(&dir, id).map_err(|e| StateError::Storage {
                            path: dir.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                }
                Ok::<_, StateError>(())
            })
            .await
            .map_err(|e| StateError::Storage {
                path: "state.redb".into(),
                reason: e.to_string(),
            })??;
        }
        let mut inner = self.lock();
        inner.deployments = deployments.into_iter().map(|d| (d.id.clone(), d)).collect();
        inner.epoch = epoch;
        inner.epoch_dirty = false;
        for id in &stale_logs {
            inner.logs.remove(id);
        }
        for (id, lines) in logs {
            inner.logs.append(&id, lines);
        }
        drop(inner);
        if self.store.is_some() {
            self.persist.notify_one();
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Applies one part of a batch of changes from the primary (a standby's database).
    pub(crate) fn apply_part(&self, epoch: u64, part: Part) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            inner.epoch = epoch;
            inner.epoch_dirty = true;
        }
        for d in part.deployments {
            let id = d.id.clone();
            inner.deployments.insert(id.clone(), d);
            if self.store.is_some() {
                inner.dirty.insert(id);
            }
        }
        // Deletes first: the primary drops unsent lines of a log it deletes, so the lines
        // of a part came after its deletes.
        for id in &part.deleted_logs {
            inner.logs.remove(id);
        }
        for batch in part.logs {
            inner.logs.append(&batch.deployment, batch.lines);
        }
        drop(inner);
        if self.store.is_some() {
            self.persist.notify_one();
        }
        self.changed.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::LogStream;
    use crate::state::StateConfig;
    use crate::wire::MessageId;

    fn copy(parts: Vec<Part>, into: &Database) {
        for part in parts {
            into.apply_part(1, part);
        }
    }

    #[tokio::test]
    async fn a_standby_copy_follows_snapshot_then_changes() {
        let primary = Database::in_memory(StateConfig::default());
        let a = primary.create_deployment("file:///a", "main").unwrap();
        primary.note(&a.id, "hello");
        primary.track_changes(true);
        let (seq, parts) = primary.snapshot(64 * 1024);
        assert_eq!(seq, primary.seq());

        let standby = Database::in_memory(StateConfig::default());
        let mut deployments = Vec::new();
        let mut logs: BTreeMap<DeploymentId, Vec<LogLine>> = BTreeMap::new();
        for part in parts {
            deployments.extend(part.deployments);
            for b in part.logs {
                logs.entry(b.deployment).or_default().extend(b.lines);
            }
        }
        standby.apply_snapshot(1, deployments, logs).await.unwrap();
        assert_eq!(standby.deployments(), primary.deployments());
        assert_eq!(standby.logs(&a.id, None).unwrap()[0].text, "hello");

        let b = primary.create_deployment("file:///b", "main").unwrap();
        primary.request_destroy(&a.id).unwrap();
        primary.append_logs(
            MessageId::random(),
            &crate::wire::LogMessage {
                deployment: b.id.clone(),
                generation: 1,
                lines: vec![LogLine::new(LogStream::Stdout, "b-line")],
            },
        );
        let changes = primary.take_changes(seq, 64 * 1024).unwrap();
        assert_eq!((changes.from, changes.to), (seq, primary.seq()));
        copy(changes.parts, &standby);
        assert_eq!(standby.deployments(), primary.deployments());
        assert_eq!(standby.logs(&b.id, None).unwrap()[0].text, "b-line");

        // Nothing new: an empty batch (a heartbeat) at the same number.
        let idle = primary.take_changes(primary.seq(), 64 * 1024).unwrap();
        assert_eq!(idle.from, idle.to);
        assert_eq!(idle.parts, vec![Part::default()]);
    }

    #[tokio::test]
    async fn lines_written_after_a_log_was_deleted_survive_on_the_standby() {
        let primary = Database::in_memory(StateConfig::default());
        let a = primary.create_deployment("file:///a", "main").unwrap();
        primary.note(&a.id, "before");
        primary.track_changes(true);
        let seq = primary.seq();
        let standby = Database::in_memory(StateConfig::default());
        standby
            .apply_snapshot(1, primary.deployments(), BTreeMap::new())
            .await
            .unwrap();
        primary.note(&a.id, "deleted with the log");
        assert!(primary.delete_log(&a.id).await.unwrap());
        primary.note(&a.id, "after");
        copy(
            primary.take_changes(seq, 64 * 1024).unwrap().parts,
            &standby,
        );
        let texts = |db: &Database| -> Vec<String> {
            db.logs(&a.id, None)
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.text)
                .collect()
        };
        assert_eq!(texts(&primary), vec!["after".to_owned()]);
        assert_eq!(texts(&standby), texts(&primary));
    }

    #[test]
    fn big_changes_are_split_into_bounded_parts() {
        let db = Database::in_memory(StateConfig::default());
        db.track_changes(true);
        let d = db.create_deployment("file:///a", "main").unwrap();
        for i in 0..2000 {
            db.note(&d.id, format!("line {i} {}", "x".repeat(200)));
        }
        let changes = db.take_changes(0, 64 * 1024).unwrap();
        assert!(changes.parts.len() > 4, "{} parts", changes.parts.len());
        let lines: usize = changes
            .parts
            .iter()
            .flat_map(|p| &p.logs)
            .map(|b| b.lines.len())
            .sum();
        assert_eq!(lines, 2000);
        for part in &changes.parts {
            let size: usize = part
                .logs
                .iter()
                .flat_map(|b| &b.lines)
                .map(|l| l.text.len() + 96)
                .sum();
            assert!(size <= 64 * 1024 + 400, "part of {size} bytes");
        }
    }

    #[tokio::test]
    async fn requests_wait_for_the_standby_and_refusals_change_nothing() {
        let db = Database::in_memory(StateConfig::default());
        // No standby: nothing to wait for.
        db.replicated(Duration::from_millis(10)).await.unwrap();
        db.require_replication(true);
        db.create_deployment("file:///a", "main").unwrap();
        assert!(matches!(
            db.replicated(Duration::from_millis(20)).await,
            Err(StateError::NotReplicated(_))
        ));
        db.confirm_replicated(db.seq());
        db.replicated(Duration::from_millis(10)).await.unwrap();

        db.set_accepting(Some(("a standby".into(), Some("10.0.0.1:8000".into()))));
        let err = db.create_deployment("file:///b", "main").unwrap_err();
        assert!(err.to_string().contains("10.0.0.1:8000"), "{err}");
        assert_eq!(db.deployments().len(), 1);
        db.set_accepting(None);
        db.create_deployment("file:///b", "main").unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_replaces_a_persistent_copy_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let stale_id = {
            let db = Database::open(dir.path(), StateConfig::default())
                .await
                .unwrap();
            let stale = db.create_deployment("file:///old", "main").unwrap();
            db.note(&stale.id, "old line");
            db.flush().await.unwrap();
            let source = Database::in_memory(StateConfig::default());
            let fresh = source.create_deployment("file:///new", "main").unwrap();
            db.apply_snapshot(
                9,
                vec![fresh.clone()],
                [(
                    fresh.id.clone(),
                    vec![LogLine::new(LogStream::System, "new")],
                )]
                .into(),
            )
            .await
            .unwrap();
            db.flush().await.unwrap();
            stale.id
        };
        let db = Database::open(dir.path(), StateConfig::default())
            .await
            .unwrap();
        assert_eq!(db.epoch(), 9);
        assert_eq!(db.deployments().len(), 1);
        assert!(db.deployment(&stale_id).is_none());
        assert!(db.logs(&stale_id, None).is_none());
        let id = db.deployments()[0].id.clone();
        assert_eq!(db.logs(&id, None).unwrap()[0].text, "new");
    }
}
