//! Typed messages, their [`Envelope`], the [`Channel`]s they travel on, and the codec.
//!
//! Every message travels inside an envelope that says which format version it is, who sent
//! it, under which orchestrator epoch and when. The codec is JSON with a size limit: decoding
//! garbage, an unknown version or an oversized payload is an error, never a panic.

use crate::manifest::Manifest;
use crate::model::{
    DeploymentId, DeploymentStatus, InstanceId, InstanceStats, LogLine, NodeId, NodeStats,
    PlatformInfo, Timestamp,
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// The largest encoded message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Unique id of one message, used to drop duplicates of an at-least-once delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        MessageId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message with the metadata every message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u16,
    /// Unique id, for de-duplication.
    pub id: MessageId,
    /// The node that sent it.
    pub sender: NodeId,
    /// The orchestrator epoch the sender knew; orders from an older epoch are ignored.
    pub epoch: u64,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// How long it stays meaningful, in milliseconds; `None` for ever.
    pub ttl_ms: Option<u64>,
    /// The message itself.
    pub body: M,
}

impl<M> Envelope<M> {
    /// Wraps `body`, stamped now with a fresh id.
    pub fn new(sender: NodeId, epoch: u64, body: M) -> Self {
        Envelope {
            version: FORMAT_VERSION,
            id: MessageId::random(),
            sender,
            epoch,
            sent_at: Timestamp::now(),
            ttl_ms: None,
            body,
        }
    }

    /// Sets a time to live.
    #[must_use]
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl_ms = Some(ttl.as_millis() as u64);
        self
    }

    /// Whether the message outlived its ttl at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.ttl_ms
            .is_some_and(|ttl| now.as_millis() > self.sent_at.as_millis().saturating_add(ttl))
    }
}

/// A message type that travels on a [`Channel`].
pub trait Message: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {}

/// How a channel distributes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelKind {
    /// Each message goes to one consumer and waits in the queue until one takes it
    /// (work, status, logs).
    Queue,
    /// Each message goes to every current subscriber; nobody listening, nobody gets it
    /// (platform announcements).
    Broadcast,
}

/// An untyped channel: what a [`Transport`](crate::transport::Transport) needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelSpec {
    /// Its name (queue or exchange name for brokers).
    pub name: Cow<'static, str>,
    /// How it distributes messages.
    pub kind: ChannelKind,
}

impl fmt::Display for ChannelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A channel that carries messages of type `M`.
pub struct Channel<M> {
    spec: ChannelSpec,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for Channel<M> {
    fn clone(&self) -> Self {
        Channel {
            spec: self.spec.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Channel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.spec.name)
    }
}

impl<M> Channel<M> {
    /// A channel with a fixed name.
    pub const fn fixed(name: &'static str, kind: ChannelKind) -> Self {
        Channel {
            spec: ChannelSpec {
                name: Cow::Borrowed(name),
                kind,
            },
            _message: PhantomData,
        }
    }

    /// A channel with a computed name.
    pub fn named(name: String, kind: ChannelKind) -> Self {
        Channel {
            spec: ChannelSpec {
                name: Cow::Owned(name),
                kind,
            },
            _message: PhantomData,
        }
    }

    /// The untyped description of this channel.
    pub fn spec(&self) -> &ChannelSpec {
        &self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Node stats, worker → orchestrator.
pub const SYSINFO: Channel<SysinfoMessage> = Channel::fixed("sysinfo", ChannelKind::Queue);
/// Deployment status and container stats, worker → orchestrator.
pub const DEPLOYMENT: Channel<DeploymentMessage> = Channel::fixed("deployment", ChannelKind::Queue);
/// Build and app log lines, worker → orchestrator.
pub const LOG: Channel<LogMessage> = Channel::fixed("log", ChannelKind::Queue);
/// Who leads, orchestrator → all.
pub const PLATFORM: Channel<PlatformMessage> = Channel::fixed("platform", ChannelKind::Broadcast);

/// The work queue of one node, orchestrator → that worker.
pub fn work_channel(node: &NodeId) -> Channel<WorkRequestMessage> {
    Channel::named(format!("work.{node}"), ChannelKind::Queue)
}

/// One instance a worker runs, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The deployment it belongs to.
    pub deployment: DeploymentId,
    /// The generation it was started for.
    pub generation: u64,
    /// The runtime's instance id.
    pub instance: InstanceId,
    /// Published host port.
    pub port: Option<u16>,
}

/// Periodic report of a worker: it is alive, its resources, what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SysinfoMessage {
    /// The reporting node.
    pub node: NodeId,
    /// The address other machines reach it on.
    pub address: String,
    /// Its resources.
    pub stats: NodeStats,
    /// The instances it runs, so the orchestrator can spot orphans and re-attach.
    pub instances: Vec<InstanceReport>,
    /// True when the node is shutting down gracefully: remove it at once.
    pub leaving: bool,
    /// True when the node can take over as orchestrator (it runs the rollover executor):
    /// only such nodes are made standby.
    #[serde(default)]
    pub candidate: bool,
    /// Proof that the node knows the cluster join secret (hex HMAC of its id), when the
    /// platform has one.
    #[serde(default)]
    pub proof: Option<String>,
}
impl Message for SysinfoMessage {}

/// A deployment's status as the worker running it sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentMessage {
    /// The deployment.
    pub deployment: DeploymentId,
    /// The generation this report is about; reports of older generations are ignored.
    pub generation: u64,
    /// The reporting node.
    pub node: NodeId,
    /// The status reached.
    pub status: DeploymentStatus,
    /// Host port, once running.
    pub port: Option<u16>,
    /// URL, once running.
    pub url: Option<String>,
    /// Instance id, once started.
    pub instance: Option<InstanceId>,
    /// Resource use sample.
    pub stats: Option<InstanceStats>,
    /// The statuses this node reported before `status` for this generation, oldest first,
    /// with when it reached them (a few at most). An orchestrator that missed one of those
    /// reports (it went to an orchestrator that died) records the step from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<(DeploymentStatus, Timestamp)>,
}
impl Message for DeploymentMessage {}

/// How many [`DeploymentMessage::earlier`] statuses a worker sends, and an orchestrator reads.
pub const MAX_EARLIER: usize = 8;

/// A batch of log lines of one deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogMessage {
    /// The deployment.
    pub deployment: DeploymentId,
    /// The generation that produced them.
    pub generation: u64,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
}
impl Message for LogMessage {}

/// Everything a worker needs to deploy an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentOrder {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its generation; a worker replaces an older generation it runs.
    pub generation: u64,
    /// Git URL.
    pub source_url: String,
    /// Git branch.
    pub branch: String,
    /// The exact commit to deploy.
    pub commit: String,
    /// The validated manifest.
    pub manifest: Manifest,
}

/// An order from the orchestrator to one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkRequestMessage {
    /// Build and run this (replacing an older generation of it).
    RequestDeployment(Box<DeploymentOrder>),
    /// Stop and remove every instance of this deployment up to `generation`.
    CancelDeployment {
        /// The deployment.
        deployment: DeploymentId,
        /// The newest generation to cancel.
        generation: u64,
    },
}
impl Message for WorkRequestMessage {}

/// The orchestrator's announcement of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformMessage {
    /// Who leads and where.
    pub info: PlatformInfo,
    /// Proof that the announcer knows the cluster join secret (hex HMAC of its id and
    /// epoch), when the platform has one. Nodes ignore announcements without a valid one.
    #[serde(default)]
    pub proof: Option<String>,
    /// True when the orchestrator is stopping gracefully: its standby takes over at once
    /// instead of waiting for the failover timeout.
    #[serde(default)]
    pub resigning: bool,
    /// True for a node about to take over (a standby whose primary fell silent, or a node
    /// that found no orchestrator at start): it backs off if it hears an orchestrator that
    /// is still there. Nodes do not follow claims; orchestrators do not yield to them.
    #[serde(default)]
    pub claim: bool,
}
impl Message for PlatformMessage {}

/// The replication stream of one standby, primary → that standby.
pub fn replica_channel(node: &NodeId) -> Channel<ReplicationMessage> {
    Channel::named(format!("replica.{node}"), ChannelKind::Queue)
}

/// Acknowledgements of a primary's standby, standby → that primary.
pub fn replica_ack_channel(primary: &NodeId) -> Channel<ReplicaAck> {
    Channel::named(format!("replica-ack.{primary}"), ChannelKind::Queue)
}

/// Log lines of one deployment, in a replication message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The deployment.
    pub deployment: DeploymentId,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// What the primary sends its standby: its whole state in parts, then every change.
///
/// Every message carries `ping`, a counter the standby echoes in its [`ReplicaAck`]: the
/// primary holds its lease (the right to accept changes) only while acknowledgements of
/// recent pings come back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicationMessage {
    /// One part of a full copy of the state at sequence number `seq`; the standby replaces
    /// its state when the `last` part of snapshot `snapshot` arrived.
    Snapshot {
        /// The primary's epoch.
        epoch: u64,
        /// Echoed in the acknowledgement.
        ping: u64,
        /// Which snapshot (parts of an older one are dropped).
        snapshot: u64,
        /// Part number, from 0.
        part: u32,
        /// True on the final part.
        last: bool,
        /// The change sequence number the snapshot is at.
        seq: u64,
        /// Deployments in this part.
        deployments: Vec<crate::model::Deployment>,
        /// Logs in this part.
        logs: Vec<LogBatch>,
    },
    /// Changes from sequence number `from` (exclusive) to `to` (inclusive), possibly in
    /// several parts; the standby is at `to` once the `last` part is applied. An empty
    /// delta with `from == to` is a heartbeat.
    Delta {
        /// The primary's epoch.
        epoch: u64,
        /// Echoed in the acknowledgement.
        ping: u64,
        /// The sequence number the standby must be at.
        from: u64,
        /// The sequence number reached after the last part.
        to: u64,
        /// True on the final part.
        last: bool,
        /// Deployments changed (their whole new state).
        deployments: Vec<crate::model::Deployment>,
        /// Log lines appended.
        logs: Vec<LogBatch>,
        /// Logs deleted.
        deleted_logs: Vec<DeploymentId>,
    },
}
impl Message for ReplicationMessage {}

/// A standby's answer to a [`ReplicationMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// The standby.
    pub standby: NodeId,
    /// The primary it answers.
    pub primary: NodeId,
    /// The primary's epoch it answers.
    pub epoch: u64,
    /// The ping of the message answered.
    pub ping: u64,
    /// The sequence number the standby has applied (0 before its first snapshot).
    pub applied: u64,
    /// True when the standby has no complete copy (new, or it saw a gap): send a snapshot.
    pub resync: bool,
    /// Proof of the join secret (hex HMAC of the standby's id), when the platform has one.
    #[serde(default)]
    pub proof: Option<String>,
}
impl Message for ReplicaAck {}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Written by an incompatible version of Kraken.
    #[error("message format version {found} is not supported (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u16,
    },
    /// Not a message of the expected type.
    #[error("malformed {expected} message: {reason}")]
    Malformed {
        /// The type expected.
        expected: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Could not be serialised.
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Encodes an envelope.
pub fn encode<M: Message>(envelope: &Envelope<M>) -> Result<Bytes, WireError> {
    let bytes = serde_json::to_vec(envelope).map_err(WireError::Encode)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(Bytes::from(bytes))
}

/// Decodes an envelope of `M`, checking size and version.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<Envelope<M>, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    match serde_json::from_slice::<Envelope<M>>(bytes) {
        Ok(env) if env.version == FORMAT_VERSION => Ok(env),
        Ok(env) => Err(WireError::UnsupportedVersion {
            found: u64::from(env.version),
            supported: FORMAT_VERSION,
        }),
        Err(err) => {
            // Tell an envelope of another version apart from garbage.
            #[derive(Deserialize)]
            struct VersionOnly {
                version: u64,
            }
            match serde_json::from_slice::<VersionOnly>(bytes) {
                Ok(v) if v.version != u64::from(FORMAT_VERSION) => {
                    Err(WireError::UnsupportedVersion {
                        found: v.version,
                        supported: FORMAT_VERSION,
                    })
                }
                _ => Err(WireError::Malformed {
                    expected: short_type_name::<M>(),
                    reason: err.to_string(),
                }),
            }
        }
    }
}

fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::LogStream;

    fn log_env() -> Envelope<LogMessage> {
        Envelope::new(
            NodeId::random(),
            3,
            LogMessage {
                deployment: DeploymentId::random(),
                generation: 1,
                lines: vec![LogLine::new(LogStream::Stdout, "hello")],
            },
        )
    }

    #[test]
    fn round_trip() {
        let env = log_env();
        let back: Envelope<LogMessage> = decode(&encode(&env).unwrap()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [
            &b""[..],
            b"\xff\xfe",
            b"{}",
            b"null",
            b"[1,2]",
            br#"{"version":1}"#,
        ] {
            let err = decode::<LogMessage>(bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Malformed {
                        expected: "LogMessage",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn wrong_type_is_malformed() {
        let bytes = encode(&log_env()).unwrap();
        assert!(matches!(
            decode::<SysinfoMessage>(&bytes),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn other_version_is_refused() {
        let mut env = log_env();
        env.version = 7;
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            decode::<LogMessage>(&bytes),
            Err(WireError::UnsupportedVersion { found: 7, .. })
        ));
        // A future version whose body we cannot even parse is still reported as a version issue.
        let future = br#"{"version":2,"something":"else"}"#;
        assert!(matches!(
            decode::<LogMessage>(future),
            Err(WireError::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn oversized_is_refused_both_ways() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<LogMessage>(&big),
            Err(WireError::TooLarge { .. })
        ));
        let mut env = log_env();
        env.body.lines = (0..200)
            .map(|_| LogLine::new(LogStream::Stdout, "x".repeat(8000)))
            .collect();
        assert!(matches!(encode(&env), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn ttl_expiry() {
        let env = log_env().with_ttl(std::time::Duration::from_secs(1));
        assert!(!env.is_expired(env.sent_at));
        assert!(env.is_expired(Timestamp(env.sent_at.as_millis() + 1001)));
        assert!(!log_env().is_expired(Timestamp(u64::MAX)));
    }
}
