//! The domain: ids, nodes, deployments and the deployment state machine.
//!
//! Everything here is plain data (serde-serialisable) so that it can be persisted by the
//! orchestrator, sent on the wire and shown by the API without conversions.

use crate::manifest::Manifest;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(format!(concat!($prefix, "{}"), uuid::Uuid::new_v4().simple()))
            }
            /// Wraps an existing id after checking it is a safe identifier: 1 to 128 characters
            /// of `[A-Za-z0-9._-]`, not starting with `.` or `-`. Ids end up in queue names,
            /// file names and labels, so nothing else is accepted.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if is_safe_id(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { kind: stringify!($name), value: truncate_for_display(s) })
                }
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// Identifies a node (one agent). Stable across restarts of that agent.
    NodeId,
    "node-"
);
string_id!(
    /// Identifies a deployment for its whole life, across redeploys.
    DeploymentId,
    "dep-"
);
string_id!(
    /// Identifies one running instance (a process or container) of a deployment.
    InstanceId,
    "inst-"
);

fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn truncate_for_display(s: &str) -> String {
    s.chars().take(64).collect()
}

/// An id that is not a safe identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} {value:?}: ids are 1-128 characters of [A-Za-z0-9._-] not starting with '.' or '-'"
)]
pub struct InvalidId {
    /// Which kind of id was expected.
    pub kind: &'static str,
    /// The offending value (truncated).
    pub value: String,
}

/// Milliseconds since the Unix epoch. Wall-clock time: only for display and history, never
/// for timeouts (those use `tokio::time`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }
    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
    /// How long ago this was, relative to `now` (zero if in the future).
    pub fn elapsed_since(self, now: Timestamp) -> Duration {
        Duration::from_millis(now.0.saturating_sub(self.0))
    }
}

/// The life of a deployment. The names are the original platform's, kept for API clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason")]
pub enum DeploymentStatus {
    /// A user asked for it; nothing done yet.
    DeploymentRequested,
    /// The orchestrator checks the URL and branch and resolves the commit.
    ValidatingDeploymentData,
    /// The orchestrator fetches the source and validates `shipwreck.toml`.
    RetrievingApplicationData,
    /// A worker was chosen and the work request sent to it.
    DelegatingDeployment,
    /// The worker fetches and builds the app.
    BuildingDeployment,
    /// The worker starts the app.
    Deploying,
    /// The app runs.
    Running,
    /// Something failed; the reason says what.
    Errored(String),
    /// A redeploy was asked for (a new commit may be on the branch).
    UpdateRequested,
    /// A user asked to destroy it.
    DestructionRequested,
    /// The destroy order was sent to the worker running it.
    DelegatingDestruction,
    /// The worker stops and removes it.
    DestructionInProgress,
    /// Gone. Terminal.
    Destroyed,
}

/// The status without its payload, for counting, matching and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum StatusKind {
    DeploymentRequested,
    ValidatingDeploymentData,
    RetrievingApplicationData,
    DelegatingDeployment,
    BuildingDeployment,
    Deploying,
    Running,
    Errored,
    UpdateRequested,
    DestructionRequested,
    DelegatingDestruction,
    DestructionInProgress,
    Destroyed,
}

impl StatusKind {
    /// Every kind, in life-cycle order.
    pub const ALL: [StatusKind; 13] = [
        StatusKind::DeploymentRequested,
        StatusKind::ValidatingDeploymentData,
        StatusKind::RetrievingApplicationData,
        StatusKind::DelegatingDeployment,
        StatusKind::BuildingDeployment,
        StatusKind::Deploying,
        StatusKind::Running,
        StatusKind::Errored,
        StatusKind::UpdateRequested,
        StatusKind::DestructionRequested,
        StatusKind::DelegatingDestruction,
        StatusKind::DestructionInProgress,
        StatusKind::Destroyed,
    ];

    /// The original platform's name, e.g. `DeploymentRequested`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::DeploymentRequested => "DeploymentRequested",
            StatusKind::ValidatingDeploymentData => "ValidatingDeploymentData",
            StatusKind::RetrievingApplicationData => "RetrievingApplicationData",
            StatusKind::DelegatingDeployment => "DelegatingDeployment",
            StatusKind::BuildingDeployment => "BuildingDeployment",
            StatusKind::Deploying => "Deploying",
            StatusKind::Running => "Running",
            StatusKind::Errored => "Errored",
            StatusKind::UpdateRequested => "UpdateRequested",
            StatusKind::DestructionRequested => "DestructionRequested",
            StatusKind::DelegatingDestruction => "DelegatingDestruction",
            StatusKind::DestructionInProgress => "DestructionInProgress",
            StatusKind::Destroyed => "Destroyed",
        }
    }
}

impl fmt::Display for StatusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeploymentStatus {
    /// The status without its payload.
    pub fn kind(&self) -> StatusKind {
        match self {
            DeploymentStatus::DeploymentRequested => StatusKind::DeploymentRequested,
            DeploymentStatus::ValidatingDeploymentData => StatusKind::ValidatingDeploymentData,
            DeploymentStatus::RetrievingApplicationData => StatusKind::RetrievingApplicationData,
            DeploymentStatus::DelegatingDeployment => StatusKind::DelegatingDeployment,
            DeploymentStatus::BuildingDeployment => StatusKind::BuildingDeployment,
            DeploymentStatus::Deploying => StatusKind::Deploying,
            DeploymentStatus::Running => StatusKind::Running,
            DeploymentStatus::Errored(_) => StatusKind::Errored,
            DeploymentStatus::UpdateRequested => StatusKind::UpdateRequested,
            DeploymentStatus::DestructionRequested => StatusKind::DestructionRequested,
            DeploymentStatus::DelegatingDestruction => StatusKind::DelegatingDestruction,
            DeploymentStatus::DestructionInProgress => StatusKind::DestructionInProgress,
            DeploymentStatus::Destroyed => StatusKind::Destroyed,
        }
    }

    /// The reason of an `Errored` status.
    pub fn error_reason(&self) -> Option<&str> {
        match self {
            DeploymentStatus::Errored(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the deployment is on its way to running or running: it needs a node.
    pub fn is_active(&self) -> bool {
        matches!(
            self.kind(),
            StatusKind::DelegatingDeployment
                | StatusKind::BuildingDeployment
                | StatusKind::Deploying
                | StatusKind::Running
        )
    }

    /// Whether the deployment is being torn down or is gone.
    pub fn is_destroying(&self) -> bool {
        matches!(
            self.kind(),
            StatusKind::DestructionRequested
                | StatusKind::DelegatingDestruction
                | StatusKind::DestructionInProgress
                | StatusKind::Destroyed
        )
    }

    /// Whether `self → next` is a legal transition.
    ///
    /// Forward skips inside the worker's part of the pipeline (e.g. `BuildingDeployment →
    /// Running`) are legal because status messages may arrive out of order or be lost to a
    /// crash; moving back is legal only where the protocol does it (a node lost sends an
    /// active deployment back to `DelegatingDeployment`; a redeploy goes through
    /// `UpdateRequested`).
    pub fn can_transition_to(&self, next: &DeploymentStatus) -> bool {
        use StatusKind as K;
        let (from, to) = (self.kind(), next.kind());
        if to == K::Errored {
            // Anything still alive can fail; a failure can be refined with a new reason.
            return !matches!(from, K::Destroyed) && self != next;
        }
        if to == K::DestructionRequested {
            return !matches!(
                from,
                K::DestructionRequested
                    | K::DelegatingDestruction
                    | K::DestructionInProgress
                    | K::Destroyed
            );
        }
        match from {
            K::DeploymentRequested => matches!(to, K::ValidatingDeploymentData),
            K::ValidatingDeploymentData => matches!(to, K::RetrievingApplicationData),
            K::RetrievingApplicationData => matches!(to, K::DelegatingDeployment),
            K::DelegatingDeployment => matches!(
                to,
                K::DelegatingDeployment | K::BuildingDeployment | K::Deploying | K::Running
            ),
            K::BuildingDeployment => {
                matches!(to, K::DelegatingDeployment | K::Deploying | K::Running)
            }
            K::Deploying => matches!(to, K::DelegatingDeployment | K::Running),
            K::Running => matches!(to, K::UpdateRequested | K::DelegatingDeployment),
            K::Errored => matches!(to, K::UpdateRequested),
            // Back to Running when the branch head has not moved.
            K::UpdateRequested => matches!(to, K::ValidatingDeploymentData | K::Running),
            K::DestructionRequested => matches!(to, K::DelegatingDestruction | K::Destroyed),
            K::DelegatingDestruction => {
                matches!(
                    to,
                    K::DelegatingDestruction | K::DestructionInProgress | K::Destroyed
                )
            }
            K::DestructionInProgress => matches!(to, K::Destroyed),
            K::Destroyed => false,
        }
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeploymentStatus::Errored(reason) => write!(f, "Errored: {reason}"),
            other => f.write_str(other.kind().as_str()),
        }
    }
}

/// An illegal status transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deployment {deployment}: illegal transition {from} -> {to}")]
pub struct TransitionError {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its status before.
    pub from: StatusKind,
    /// The status that was refused.
    pub to: StatusKind,
}

/// One entry of a deployment's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The status entered.
    pub status: DeploymentStatus,
    /// When it was entered.
    pub at: Timestamp,
    /// Which generation (deploy or redeploy attempt) it belongs to.
    pub generation: u64,
}

/// Resource use of one running instance.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct InstanceStats {
    /// CPU use in percent of one core (may exceed 100 on several cores).
    pub cpu_percent: f64,
    /// Memory used, in bytes.
    pub mem_bytes: u64,
    /// Memory limit in bytes, when the runtime enforces one.
    pub mem_limit_bytes: Option<u64>,
    /// When the sample was taken.
    pub at: Timestamp,
}

/// The most history entries kept per deployment; older entries are dropped first, the first
/// entry is always kept.
pub const MAX_HISTORY: usize = 256;

/// A deployment: one app from one git branch, for its whole life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id.
    pub id: DeploymentId,
    /// Bumped on every (re)placement or redeploy; worker reports carry it so stale ones are
    /// ignored.
    pub generation: u64,
    /// Git URL of the source.
    pub source_url: String,
    /// Git branch of the source.
    pub branch: String,
    /// The commit deployed (resolved during validation).
    pub commit: Option<String>,
    /// The validated manifest, once retrieved.
    pub manifest: Option<Manifest>,
    /// The node it is placed on.
    pub node: Option<NodeId>,
    /// Current status.
    pub status: DeploymentStatus,
    /// Every status entered, oldest first (bounded by [`MAX_HISTORY`]).
    pub history: Vec<StatusChange>,
    /// Host port the app answers on, once running.
    pub port: Option<u16>,
    /// URL the app answers on, once running.
    pub url: Option<String>,
    /// The runtime's instance id, once started.
    pub instance: Option<InstanceId>,
    /// Latest resource use sample.
    pub stats: Option<InstanceStats>,
    /// When it was requested.
    pub created_at: Timestamp,
}

impl Deployment {
    /// A new deployment in `DeploymentRequested`.
    pub fn new(id: DeploymentId, source_url: String, branch: String, at: Timestamp) -> Self {
        let status = DeploymentStatus::DeploymentRequested;
        Deployment {
            id,
            generation: 1,
            source_url,
            branch,
            commit: None,
            manifest: None,
            node: None,
            history: vec![StatusChange {
                status: status.clone(),
                at,
                generation: 1,
            }],
            status,
            port: None,
            url: None,
            instance: None,
            stats: None,
            created_at: at,
        }
    }

    /// Moves to `next` if the transition is legal, recording it in the history.
    pub fn transition(
        &mut self,
        next: DeploymentStatus,
        at: Timestamp,
    ) -> Result<(), TransitionError> {
        if !self.status.can_transition_to(&next) {
            return Err(TransitionError {
                deployment: self.id.clone(),
                from: self.status.kind(),
                to: next.kind(),
            });
        }
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(StatusChange {
            status: next.clone(),
            at,
            generation: self.generation,
        });
        self.status = next;
        Ok(())
    }

    /// The app's name from its manifest, if known.
    pub fn app_name(&self) -> Option<&str> {
        self.manifest.as_ref().map(|m| m.app.name.as_str())
    }
}

/// A node's resource figures, as reported by its worker.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Host name.
    pub hostname: String,
    /// A short description of the machine (OS, CPU) for display.
    pub model: String,
    /// Number of logical CPUs.
    pub cpus: u32,
    /// Global CPU use in percent (0-100).
    pub cpu_percent: f64,
    /// Total memory in MiB.
    pub ram_total_mb: u64,
    /// Used memory in MiB.
    pub ram_used_mb: u64,
    /// Free (available) memory in MiB.
    pub ram_free_mb: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load_avg: [f64; 3],
    /// Seconds since the machine booted.
    pub uptime_s: u64,
}

impl NodeStats {
    /// Used memory in percent of total.
    pub fn ram_percent(&self) -> f64 {
        if self.ram_total_mb == 0 {
            0.0
        } else {
            self.ram_used_mb as f64 * 100.0 / self.ram_total_mb as f64
        }
    }
}

/// A node as the orchestrator knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Address other machines reach it on (host or IP), for app URLs.
    pub address: String,
    /// Latest stats reported.
    pub stats: NodeStats,
    /// When it was last heard from.
    pub last_seen: Timestamp,
    /// When it joined.
    pub joined_at: Timestamp,
    /// Rollover rank: 0 primary orchestrator, 1 standby, higher observers.
    pub rank: u32,
    /// Deployments placed on it (derived from the deployments table, filled for display).
    pub deployments: Vec<DeploymentId>,
    /// Whether it is being drained: it gets no new work and is removed once its
    /// deployments moved to other nodes.
    #[serde(default)]
    pub draining: bool,
}

/// Who leads the platform and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// The orchestrator's node.
    pub orchestrator: NodeId,
    /// Its epoch: bumped on every promotion; orders from older epochs are ignored.
    pub epoch: u64,
    /// Its HTTP API address (`host:port`), when it serves one.
    pub api_addr: Option<String>,
    /// The broker URL nodes should connect to, when the transport uses one.
    pub broker_url: Option<String>,
    /// Nodes allowed to take over, in order.
    pub candidates: Vec<NodeId>,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Output of the build (fetch, image build).
    Build,
    /// The app's standard output.
    Stdout,
    /// The app's standard error.
    Stderr,
    /// Kraken's own notes about the deployment (status changes, errors).
    System,
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogStream::Build => "build",
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "kraken",
        })
    }
}

/// The longest log line kept, in bytes; longer lines are cut (on a character boundary).
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// One line of a deployment's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was produced.
    pub at: Timestamp,
    /// Where it came from.
    pub stream: LogStream,
    /// The text, without the line break, at most [`MAX_LOG_LINE`] bytes.
    pub text: String,
}

impl LogLine {
    /// A line stamped now, cut to [`MAX_LOG_LINE`].
    pub fn new(stream: LogStream, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        LogLine {
            at: Timestamp::now(),
            stream,
            text,
        }
    }
}

#[cfg(test)]
mod tests;
