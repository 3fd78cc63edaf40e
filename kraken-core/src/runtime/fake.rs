//! A scripted, in-memory runtime for tests: [`FakeRuntime`].
//!
//! An app carries its own script in the `[env]` of its manifest, so a test that deploys it
//! gets the behaviour it asked for wherever the app lands:
//!
//! | variable | effect |
//! |---|---|
//! | [`BUILD_ERROR`] = message | `build` fails with that reason |
//! | [`START_ERROR`] = message | `start` fails with that reason |
//! | [`EXIT_AFTER_MS`] = n | the instance exits n ms after it started (with [`EXIT_CODE`], default 0) |
//! | [`OOM_AFTER_MS`] = n | the instance is killed for memory n ms after it started |
//! | [`LOG_LINES`] = n | `logs` yields `line 1` … `line n` on stdout |
//! | [`BUILD_DELAY_MS`] / [`START_DELAY_MS`] = n | `build` / `start` take n ms |
//!
//! Time is `tokio::time`, so tests with paused time control it. A malformed value fails the
//! build (and a start) with a reason naming the variable; nothing panics. A test can also
//! set the same variables for every app with [`FakeRuntime::set_override`].
//!
//! Each [`FakeRuntime::new`] is one host; clones share it, so a clone handed to a restarted
//! worker finds the instances started before (re-attach).

use super::{
    Artifact, BuildRequest, Capabilities, InstanceInfo, InstanceState, LogFollow, LogSink, Runtime,
    RuntimeError, StartSpec,
};
use crate::model::{
    DeploymentId, InstanceId, InstanceStats, LogLine, LogStream, NodeId, Timestamp,
};
use crate::util::lock;
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `build` fails with this variable's value as the reason.
pub const BUILD_ERROR: &str = "FAKE_BUILD_ERROR";
/// `start` fails with this variable's value as the reason.
pub const START_ERROR: &str = "FAKE_START_ERROR";
/// The instance exits this many milliseconds after it started.
pub const EXIT_AFTER_MS: &str = "FAKE_EXIT_AFTER_MS";
/// The exit code used with [`EXIT_AFTER_MS`] (default 0).
pub const EXIT_CODE: &str = "FAKE_EXIT_CODE";
/// The instance is OOM-killed this many milliseconds after it started.
pub const OOM_AFTER_MS: &str = "FAKE_OOM_AFTER_MS";
/// `logs` yields this many stdout lines, `line 1` to `line n`.
pub const LOG_LINES: &str = "FAKE_LOG_LINES";
/// `build` takes this many milliseconds.
pub const BUILD_DELAY_MS: &str = "FAKE_BUILD_DELAY_MS";
/// `start` takes this many milliseconds.
pub const START_DELAY_MS: &str = "FAKE_START_DELAY_MS";

/// The most log lines a script may ask for.
pub const MAX_FAKE_LOG_LINES: usize = 100_000;
/// Memory every fake instance reports using.
pub const FAKE_MEM_BYTES: u64 = 32 * 1024 * 1024;
/// CPU use every fake instance reports, in percent of one core.
pub const FAKE_CPU_PERCENT: f64 = 1.0;
/// Calls kept by [`FakeRuntime::calls`]; older ones are dropped first.
const MAX_CALLS: usize = 100_000;
/// First port handed out by [`FakeRuntime::with_unique_ports`].
const FIRST_UNIQUE_PORT: u16 = 20_000;

/// Unique ports are unique across every fake host of the process.
static NEXT_PORT: AtomicU16 = AtomicU16::new(FIRST_UNIQUE_PORT);

/// One call a [`FakeRuntime`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// [`Runtime::build`].
    Build {
        /// The deployment built.
        deployment: DeploymentId,
        /// Its generation.
        generation: u64,
    },
    /// [`Runtime::start`].
    Start {
        /// The deployment started.
        deployment: DeploymentId,
        /// Its generation.
        generation: u64,
        /// The node starting it.
        node: NodeId,
    },
    /// [`Runtime::stop`].
    Stop {
        /// The instance asked for.
        instance: InstanceId,
    },
    /// [`Runtime::status`].
    Status {
        /// The instance asked for.
        instance: InstanceId,
    },
    /// [`Runtime::list`].
    List,
    /// [`Runtime::logs`].
    Logs {
        /// The instance asked for.
        instance: InstanceId,
    },
    /// [`Runtime::stats`].
    Stats {
        /// The instance asked for.
        instance: InstanceId,
    },
    /// [`Runtime::remove_artifact`].
    RemoveArtifact {
        /// The artifact's id.
        artifact: String,
    },
}

/// What an app's script asks for.
#[derive(Debug, Clone, Default, PartialEq)]
struct Script {
    build_error: Option<String>,
    start_error: Option<String>,
    exit_after: Option<Duration>,
    exit_code: i32,
    oom_after: Option<Duration>,
    log_lines: usize,
    build_delay: Duration,
    start_delay: Duration,
}

impl Script {
    /// The manifest's `[env]` with `overrides` on top.
    fn parse(
        env: &BTreeMap<String, String>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Script, String> {
        let get = |key: &str| overrides.get(key).or_else(|| env.get(key));
        let millis = |key: &str| -> Result<Option<Duration>, String> {
            get(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| format!("{key}={v:?} is not a number of milliseconds"))
                })
                .transpose()
        };
        let exit_code = match get(EXIT_CODE) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<i32>()
                .map_err(|_| format!("{EXIT_CODE}={v:?} is not an exit code"))?,
        };
        let log_lines = match get(LOG_LINES) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_FAKE_LOG_LINES)
                .ok_or_else(|| {
                    format!("{LOG_LINES}={v:?} is not a number of lines up to {MAX_FAKE_LOG_LINES}")
                })?,
        };
        Ok(Script {
            build_error: get(BUILD_ERROR).cloned(),
            start_error: get(START_ERROR).cloned(),
            exit_after: millis(EXIT_AFTER_MS)?,
            exit_code,
            oom_after: millis(OOM_AFTER_MS)?,
            log_lines,
            build_delay: millis(BUILD_DELAY_MS)?.unwrap_or_default(),
            start_delay: millis(START_DELAY_MS)?.unwrap_or_default(),
        })
    }
}

/// One fake instance.
struct Instance {
    info: InstanceInfo,
    script: Script,
    started: Instant,
    /// Set by [`FakeRuntime::set_state`]; wins over the script.
    forced: Option<InstanceState>,
    /// Cancelled when stopped or forced out of `Running`: ends log followers.
    ended: CancellationToken,
}

impl Instance {
    /// When the script ends it, and how.
    fn scripted_end(&self) -> Option<(Instant, InstanceState)> {
        let oom = self
            .script
            .oom_after
            .map(|d| (self.started + d, InstanceState::OomKilled));
        let exit = self.script.exit_after.map(|d| {
            (
                self.started + d,
                InstanceState::Exited {
                    code: Some(self.script.exit_code),
                },
            )
        });
        match (oom, exit) {
            (Some(oom), Some(exit)) => Some(if oom.0 <= exit.0 { oom } else { exit }),
            (one, other) => one.or(other),
        }
    }

    fn state(&self, now: Instant) -> InstanceState {
        if let Some(forced) = &self.forced {
            return forced.clone();
        }
        match self.scripted_end() {
            Some((at, state)) if now >= at => state,
            _ => InstanceState::Running,
        }
    }
}

#[derive(Default)]
struct Host {
    calls: VecDeque<FakeCall>,
    instances: BTreeMap<InstanceId, Instance>,
    artifacts: BTreeSet<String>,
    overrides: BTreeMap<String, String>,
    unique_ports: bool,
}

/// A runtime that runs nothing and does what each app's script says (see the module).
///
/// Cheap to clone; clones are the same host.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    host: Arc<Mutex<Host>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.host();
        f.debug_struct("FakeRuntime")
            .field("instances", &host.instances.len())
            .field("artifacts", &host.artifacts.len())
            .finish_non_exhaustive()
    }
}

impl FakeRuntime {
    /// A new, empty host. Instances get the manifest's port.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives each instance its own port instead of the manifest's (unique across all fake
    /// hosts of the process), as when several instances of one app share a host.
    #[must_use]
    pub fn with_unique_ports(self) -> Self {
        self.host().unique_ports = true;
        self
    }

    fn host(&self) -> MutexGuard<'_, Host> {
        // Every update is a few inserts and removes: a panicking test thread leaves it usable.
        lock(&self.host)
    }

    fn record(&self, call: FakeCall) {
        let mut host = self.host();
        if host.calls.len() == MAX_CALLS {
            host.calls.pop_front();
        }
        host.calls.push_back(call);
    }

    /// Sets a script variable for every app, over what its manifest says.
    pub fn set_override(&self, key: &str, value: &str) {
        self.host().overrides.insert(key.into(), value.into());
    }

    /// Removes every override.
    pub fn clear_overrides(&self) {
        self.host().overrides.clear();
    }

    /// Every call received, oldest first (the last 100 000).
    pub fn calls(&self) -> Vec<FakeCall> {
        self.host().calls.iter().cloned().collect()
    }

    /// Forgets the calls received so far.
    pub fn clear_calls(&self) {
        self.host().calls.clear();
    }

    /// The instances that run now.
    pub fn running(&self) -> Vec<InstanceInfo> {
        let now = Instant::now();
        self.host()
            .instances
            .values()
            .filter(|i| i.state(now) == InstanceState::Running)
            .map(|i| i.info.clone())
            .collect()
    }

    /// Makes an instance crash, exit or run again, whatever its script says. `false` when
    /// there is no such instance.
    pub fn set_state(&self, instance: &InstanceId, state: InstanceState) -> bool {
        let mut host = self.host();
        let Some(inst) = host.instances.get_mut(instance) else {
            return false;
        };
        if state != InstanceState::Running {
            inst.ended.cancel();
        } else if inst.ended.is_cancelled() {
            inst.ended = CancellationToken::new();
        }
        inst.forced = Some(state);
        true
    }

    fn script(&self, env: &BTreeMap<String, String>) -> Result<Script, String> {
        Script::parse(env, &self.host().overrides)
    }

    fn not_found(instance: &InstanceId) -> RuntimeError {
        RuntimeError::NotFound {
            instance: instance.clone(),
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logs: true,
            stats: true,
            reattach: true,
            resource_limits: false,
            isolation: false,
        }
    }

    async fn build(&self, request: &BuildRequest, log: LogSink) -> Result<Artifact, RuntimeError> {
        self.record(FakeCall::Build {
            deployment: request.deployment.clone(),
            generation: request.generation,
        });
        let script = self
            .script(&request.manifest.env)
            .map_err(|reason| RuntimeError::BuildFailed { reason })?;
        tokio::time::sleep(script.build_delay).await;
        // Dropped rather than awaited when nobody reads: a test need not drain build logs.
        let _ = log.try_send(LogLine::new(
            LogStream::Build,
            format!(
                "fake build of {} generation {}",
                request.deployment, request.generation
            ),
        ));
        if let Some(reason) = script.build_error {
            return Err(RuntimeError::BuildFailed { reason });
        }
        let id = format!("fake:{}-{}", request.deployment, request.generation);
        self.host().artifacts.insert(id.clone());
        Ok(Artifact {
            id,
            deployment: request.deployment.clone(),
            generation: request.generation,
        })
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceInfo, RuntimeError> {
        self.record(FakeCall::Start {
            deployment: spec.artifact.deployment.clone(),
            generation: spec.artifact.generation,
            node: spec.node.clone(),
        });
        let failed = |reason: String| RuntimeError::StartFailed { reason };
        let script = self.script(&spec.manifest.env).map_err(failed)?;
        tokio::time::sleep(script.start_delay).await;
        if let Some(reason) = script.start_error.clone() {
            return Err(failed(reason));
        }
        let mut host = self.host();
        if !host.artifacts.contains(&spec.artifact.id) {
            return Err(failed(format!(
                "artifact {} was not built on this host",
                spec.artifact.id
            )));
        }
        let port = if host.unique_ports {
            NEXT_PORT.fetch_add(1, Ordering::Relaxed)
        } else {
            spec.manifest.config.port
        };
        let info = InstanceInfo {
            id: InstanceId::random(),
            deployment: spec.artifact.deployment.clone(),
            generation: spec.artifact.generation,
            node: spec.node.clone(),
            port: Some(port),
            started_at: Timestamp::now(),
        };
        host.instances.insert(
            info.id.clone(),
            Instance {
                info: info.clone(),
                script,
                started: Instant::now(),
                forced: None,
                ended: CancellationToken::new(),
            },
        );
        Ok(info)
    }

    async fn stop(&self, instance: &InstanceId, _timeout: Duration) -> Result<(), RuntimeError> {
        self.record(FakeCall::Stop {
            instance: instance.clone(),
        });
        if let Some(inst) = self.host().instances.remove(instance) {
            inst.ended.cancel();
        }
        Ok(())
    }

    async fn status(&self, instance: &InstanceId) -> Result<InstanceState, RuntimeError> {
        self.record(FakeCall::Status {
            instance: instance.clone(),
        });
        let now = Instant::now();
        self.host()
            .instances
            .get(instance)
            .map(|i| i.state(now))
            .ok_or_else(|| Self::not_found(instance))
    }

    async fn list(&self) -> Result<Vec<InstanceInfo>, RuntimeError> {
        self.record(FakeCall::List);
        Ok(self.running())
    }

    async fn logs(&self, instance: &InstanceId) -> Result<LogFollow, RuntimeError> {
        self.record(FakeCall::Logs {
            instance: instance.clone(),
        });
        let host = self.host();
        let inst = host
            .instances
            .get(instance)
            .ok_or_else(|| Self::not_found(instance))?;
        let lines: Vec<LogLine> = (1..=inst.script.log_lines)
            .map(|i| LogLine::new(LogStream::Stdout, format!("line {i}")))
            .collect();
        let ended = inst.ended.clone();
        let scripted_end = if inst.forced.is_some() {
            None
        } else {
            inst.scripted_end().map(|(at, _)| at)
        };
        drop(host);
        let until_end = async move {
            match scripted_end {
                Some(at) => tokio::select! {
                    () = ended.cancelled() => {}
                    () = tokio::time::sleep_until(at) => {}
                },
                None => ended.cancelled().await,
            }
        };
        let end = futures::stream::once(until_end).filter_map(|()| std::future::ready(None));
        Ok(Box::pin(futures::stream::iter(lines).chain(end)))
    }

    async fn stats(&self, instance: &InstanceId) -> Result<InstanceStats, RuntimeError> {
        self.record(FakeCall::Stats {
            instance: instance.clone(),
        });
        if !self.host().instances.contains_key(instance) {
            return Err(Self::not_found(instance));
        }
        Ok(InstanceStats {
            cpu_percent: FAKE_CPU_PERCENT,
            mem_bytes: FAKE_MEM_BYTES,
            mem_limit_bytes: None,
            at: Timestamp::now(),
        })
    }

    async fn remove_artifact(&self, artifact: &Artifact) -> Result<(), RuntimeError> {
        self.record(FakeCall::RemoveArtifact {
            artifact: artifact.id.clone(),
        });
        self.host().artifacts.remove(&artifact.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
