//! The process runtime: runs an app's `run` command as a child process of the worker.
//!
//! Everything it creates lives under its state directory:
//!
//! ```text
//! <state_dir>/artifacts/<deployment>-<generation>/   a copy of the checkout, built in place
//! <state_dir>/instances/<instance>/meta.json         the instance: info, pid, start time
//! <state_dir>/instances/<instance>/stdout.log        the app's output, size-bounded
//! <state_dir>/instances/<instance>/stderr.log
//! ```
//!
//! An app runs in its own process group with its output going to files, not pipes: it
//! outlives a restart of the worker, and the next worker finds it again from `meta.json`
//! (its pid and the start time of that pid, so that a reused pid is never taken for it).
//! There is no isolation and there are no resource limits: apps run as the worker's user.
//! The runtime reads `/proc`, so it runs on Linux.

mod build;
mod copy;
mod logs;
mod os;

use self::logs::{KeepConfig, LogHub, STDERR_FILE, STDOUT_FILE};
use super::{
    Artifact, BuildRequest, Capabilities, InstanceInfo, InstanceState, LogFollow, LogSink, Runtime,
    RuntimeError, StartSpec,
};
use crate::model::{InstanceId, InstanceStats, LogLine, LogStream, Timestamp};
use crate::util::lock;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const RUNTIME: &str = "process";
const META_FILE: &str = "meta.json";
/// How often `stop` looks whether the process group is gone.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long `stop` waits for a group to vanish after SIGKILL before reporting an error.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Output lines quoted in a failure reason.
const ERROR_LINES: usize = 20;
/// Longest output line quoted in a failure reason, in bytes.
const ERROR_LINE_LEN: usize = 300;
/// The worker's environment variables an app sees; everything else comes from the manifest.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// An instance directory without a readable `meta.json` is left alone this long: it may be
/// a start in progress.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Settings of a [`ProcessRuntime`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// Size in bytes past which an instance's `stdout.log` or `stderr.log` is emptied, once
    /// its new lines were read. Bounds the disk an app's output takes.
    pub log_cap_bytes: u64,
    /// How often the log files of an instance are read for new lines.
    pub log_poll_interval: Duration,
    /// How long `start` watches a new process: one that ends within it is a failed start
    /// (a missing binary, a bad config) rather than a crash of a running app.
    pub start_grace: Duration,
    /// Recent lines kept per instance and replayed to each new log follower.
    pub log_tail_lines: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            log_cap_bytes: 8 * 1024 * 1024,
            log_poll_interval: Duration::from_millis(200),
            start_grace: Duration::from_millis(500),
            log_tail_lines: 1000,
        }
    }
}

/// Runs apps as child processes: builds by copying the checkout and running the manifest's
/// `build` command in the copy, starts the manifest's `run` command with `sh -c`.
///
/// One runtime owns one state directory. A new runtime over the directory of an earlier one
/// (after a restart of the worker) re-attaches the instances that still run.
///
/// ```no_run
/// use kraken_core::runtime::{Runtime, process::ProcessRuntime};
/// use std::sync::Arc;
///
/// # async fn restarted_worker() -> Result<(), kraken_core::runtime::RuntimeError> {
/// let runtime: Arc<dyn Runtime> =
///     Arc::new(ProcessRuntime::new("/var/lib/kraken/process").log_cap_bytes(1 << 20));
/// // The apps the previous worker started are still there.
/// for instance in runtime.list().await? {
///     println!("{} answers on port {:?}", instance.id, instance.port);
/// }
/// # Ok(())
/// # }
/// ```
pub struct ProcessRuntime {
    /// Root of everything this runtime creates; absolute, since artifact ids are paths.
    state_dir: PathBuf,
    config: ProcessConfig,
    /// Instances started or re-attached by this runtime value, so that exit codes, log
    /// followers and CPU samples persist between calls.
    instances: Mutex<HashMap<InstanceId, Arc<Tracked>>>,
    /// Cancelled on drop: ends the log keepers (the apps keep running).
    shutdown: CancellationToken,
}

impl fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("state_dir", &self.state_dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What `meta.json` records about an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceMeta {
    info: InstanceInfo,
    /// The `sh` running the app; also the id of its process group.
    pid: u32,
    /// Start time of `pid` in clock ticks since boot, to tell it from a later process
    /// that got the same pid.
    start_ticks: Option<u64>,
    /// The artifact directory it runs in.
    artifact: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => f.write_str("an unknown status"),
        }
    }
}

/// How to tell whether an instance still runs.
#[derive(Debug, Clone)]
enum Liveness {
    /// Started by this runtime value: the task that reaps the child reports its exit.
    Child(watch::Receiver<Option<Exit>>),
    /// Re-attached: only the pid and its start time are known.
    Adopted { pid: u32, start_ticks: Option<u64> },
}

impl Liveness {
    async fn state(&self) -> InstanceState {
        match self {
            Liveness::Child(exit) => match *exit.borrow() {
                Some(exit) => InstanceState::Exited { code: exit.code },
                None => InstanceState::Running,
            },
            Liveness::Adopted { pid, start_ticks } => {
                match os::identify(os::read_stat_async(*pid).await, *start_ticks) {
                    os::Identity::Alive => InstanceState::Running,
                    os::Identity::Gone | os::Identity::Foreign => {
                        InstanceState::Exited { code: None }
                    }
                }
            }
        }
    }

    async fn is_running(&self) -> bool {
        self.state().await == InstanceState::Running
    }
}

/// An instance this runtime value knows.
struct Tracked {
    meta: InstanceMeta,
    dir: PathBuf,
    liveness: Liveness,
    logs: Arc<LogHub>,
    /// Ends the log keeper.
    keeper: CancellationToken,
    /// CPU use is a difference between two samples. One `System` per instance, so that
    /// the interval of the host's CPU time matches that of the instance's processes.
    sampler: Arc<Mutex<Option<System>>>,
}

impl Tracked {
    /// Whether the process group may be signalled: not when the pid now belongs to another
    /// process. A leader that is gone leaves its group id reserved while members of the
    /// group live, so signalling the group then reaches only those members.
    async fn owns_group(&self) -> bool {
        os::identify(
            os::read_stat_async(self.meta.pid).await,
            self.meta.start_ticks,
        ) != os::Identity::Foreign
    }

    /// SIGKILL to the group, unless its pid went to another process meanwhile.
    async fn kill(&self) -> Result<(), RuntimeError> {
        if self.owns_group().await {
            kill_group(self.meta.pid).await
        } else {
            Ok(())
        }
    }
}

impl ProcessRuntime {
    /// A runtime keeping its artifacts and instances under `state_dir` (created when
    /// needed; a relative path is made absolute against the current directory).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        ProcessRuntime {
            state_dir: std::path::absolute(&state_dir).unwrap_or(state_dir),
            config: ProcessConfig::default(),
            instances: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        }
    }

    /// Replaces all settings.
    #[must_use]
    pub fn with_config(mut self, config: ProcessConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets [`ProcessConfig::log_cap_bytes`].
    #[must_use]
    pub fn log_cap_bytes(mut self, bytes: u64) -> Self {
        self.config.log_cap_bytes = bytes;
        self
    }

    /// Sets [`ProcessConfig::log_poll_interval`].
    #[must_use]
    pub fn log_poll_interval(mut self, interval: Duration) -> Self {
        self.config.log_poll_interval = interval;
        self
    }

    /// Sets [`ProcessConfig::start_grace`].
    #[must_use]
    pub fn start_grace(mut self, grace: Duration) -> Self {
        self.config.start_grace = grace;
        self
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The settings.
    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    /// Where the files of an instance live: `meta.json`, `stdout.log`, `stderr.log`.
    pub fn instance_dir(&self, instance: &InstanceId) -> PathBuf {
        self.instances_dir().join(instance.as_str())
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.state_dir.join("artifacts")
    }

    fn instances_dir(&self) -> PathBuf {
        self.state_dir.join("instances")
    }

    fn instances(&self) -> MutexGuard<'_, HashMap<InstanceId, Arc<Tracked>>> {
        // Every update is one insert or remove: a panic elsewhere leaves the map consistent.
        lock(&self.instances)
    }

    /// The directory of an artifact, when it is one of this runtime's.
    fn artifact_dir(&self, artifact: &Artifact) -> Option<PathBuf> {
        let path = Path::new(&artifact.id);
        (path.parent() == Some(self.artifacts_dir().as_path()) && path.file_name().is_some())
            .then(|| path.to_path_buf())
    }

    /// Registers an instance and starts its log keeper, unless it is known already.
    fn track(&self, meta: InstanceMeta, liveness: Liveness) -> Arc<Tracked> {
        let mut instances = self.instances();
        if let Some(known) = instances.get(&meta.info.id) {
            return known.clone();
        }
        let dir = self.instance_dir(&meta.info.id);
        let hub = Arc::new(LogHub::new(self.config.log_tail_lines));
        let keeper = self.shutdown.child_token();
        tokio::spawn(logs::keep(
            hub.clone(),
            dir.clone(),
            liveness.clone(),
            keeper.clone(),
            KeepConfig {
                cap: self.config.log_cap_bytes,
                interval: self.config.log_poll_interval,
            },
        ));
        let tracked = Arc::new(Tracked {
            meta,
            dir,
            liveness,
            logs: hub,
            keeper,
            sampler: Arc::default(),
        });
        instances.insert(tracked.meta.info.id.clone(), tracked.clone());
        tracked
    }

    /// An instance known to this value, or one whose files an earlier runtime left.
    async fn lookup(&self, instance: &InstanceId) -> Result<Option<Arc<Tracked>>, RuntimeError> {
        if let Some(known) = self.instances().get(instance).cloned() {
            return Ok(Some(known));
        }
        match read_meta(&self.instance_dir(instance)).await? {
            Some(meta) if meta.info.id == *instance => Ok(Some(self.adopt(meta))),
            _ => Ok(None),
        }
    }

    fn adopt(&self, meta: InstanceMeta) -> Arc<Tracked> {
        let liveness = Liveness::Adopted {
            pid: meta.pid,
            start_ticks: meta.start_ticks,
        };
        debug!(instance = %meta.info.id, pid = meta.pid, "re-attached instance");
        self.track(meta, liveness)
    }

    /// Forgets an instance and deletes its files.
    async fn discard(&self, tracked: &Tracked) -> Result<(), RuntimeError> {
        tracked.keeper.cancel();
        self.instances().remove(&tracked.meta.info.id);
        remove_dir(&tracked.dir).await
    }

    /// SIGTERM to the group, SIGKILL after `timeout`; returns once no process of it runs.
    async fn terminate(&self, tracked: &Tracked, timeout: Duration) -> Result<(), RuntimeError> {
        if !tracked.owns_group().await {
            return Ok(());
        }
        let pgid = tracked.meta.pid;
        if let Err(e) = os::signal_group(pgid, libc::SIGTERM) {
            warn!(instance = %tracked.meta.info.id, pgid, cause = %e, "cannot send SIGTERM");
        }
        let deadline = Instant::now() + timeout;
        while group_alive(pgid).await {
            if Instant::now() >= deadline {
                return tracked.kill().await;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
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
        let artifacts = self.artifacts_dir();
        let dest = artifacts.join(format!("{}-{}", request.deployment, request.generation));
        let Some(id) = dest.to_str().map(str::to_owned) else {
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!("state directory {} is not UTF-8", self.state_dir.display()),
            });
        };
        match tokio::fs::metadata(&request.source_dir).await {
            Ok(meta) if meta.is_dir() => {}
            _ => {
                return Err(RuntimeError::BuildFailed {
                    reason: format!(
                        "source directory {} does not exist",
                        request.source_dir.display()
                    ),
                });
            }
        }
        tokio::fs::create_dir_all(&artifacts)
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("creating {}", artifacts.display()),
                source,
            })?;
        // A rebuild of the same generation (a retry) starts from a clean copy.
        remove_dir(&dest).await?;
        let (from, to) = (request.source_dir.clone(), dest.clone());
        let copied = tokio::task::spawn_blocking(move || copy::copy_tree(&from, &to))
            .await
            .map_err(|e| RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!("copying the source failed: {e}"),
            })?;
        let report = match copied {
            Ok(report) => report,
            Err(source) => {
                remove_dir(&dest).await?;
                return Err(RuntimeError::Io {
                    context: format!(
                        "copying {} to {}",
                        request.source_dir.display(),
                        dest.display()
                    ),
                    source,
                });
            }
        };
        for skipped in report.skipped {
            warn!(deployment = %request.deployment, entry = %skipped, "left out of the artifact");
            let line = LogLine::new(LogStream::Build, format!("left out: {skipped}"));
            let _ = log.send(line).await;
        }
        if let Some(script) = &request.manifest.config.build
            && let Err(e) = build::run(script, &dest, &request.manifest.env, &log).await
        {
            remove_dir(&dest).await?;
            return Err(e);
        }
        info!(
            deployment = %request.deployment,
            generation = request.generation,
            artifact = %id,
            files = report.files,
            "built"
        );
        Ok(Artifact {
            id,
            deployment: request.deployment.clone(),
            generation: request.generation,
        })
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceInfo, RuntimeError> {
        let failed = |reason: String| RuntimeError::StartFailed { reason };
        let Some(run) = spec
            .manifest
            .config
            .run
            .as_deref()
            .filter(|run| !run.trim().is_empty())
        else {
            return Err(failed(
                "the manifest has no `run` command, which the process runtime needs".into(),
            ));
        };
        let Some(artifact_dir) = self.artifact_dir(&spec.artifact) else {
            return Err(failed(format!(
                "artifact {} was not built by this runtime",
                spec.artifact.id
            )));
        };
        if !tokio::fs::metadata(&artifact_dir)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(failed(format!(
                "artifact directory {} is missing: build again",
                artifact_dir.display()
            )));
        }
        check_env(&spec.manifest.env).map_err(failed)?;
        check_env(&spec.env).map_err(failed)?;
        let taken: Vec<u16> = self
            .instances()
            .values()
            .filter_map(|t| t.meta.info.port)
            .collect();
        let port = pick_port(spec.manifest.config.port, &taken).await?;

        let id = InstanceId::random();
        let dir = self.instance_dir(&id);
        let io = |context: &str| {
            let context = format!("{context} in {}", dir.display());
            move |source| RuntimeError::Io { context, source }
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("creating the instance directory"))?;
        let stdout = open_log(&dir.join(STDOUT_FILE))
            .await
            .map_err(io("opening stdout.log"))?;
        let stderr = open_log(&dir.join(STDERR_FILE))
            .await
            .map_err(io("opening stderr.log"))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(run)
            .current_dir(&artifact_dir)
            .env_clear()
            .envs(base_env())
            .envs(&spec.manifest.env)
            .envs(&spec.env)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            // The app outlives the worker: dropping the handle must not kill it.
            .kill_on_drop(false);
        let spawned = command.spawn();
        let (mut child, pid) = match spawned {
            Ok(child) => match child.id() {
                Some(pid) => (child, pid),
                None => {
                    remove_dir(&dir).await?;
                    return Err(failed("the process vanished as it was started".into()));
                }
            },
            Err(e) => {
                remove_dir(&dir).await?;
                return Err(failed(format!("cannot run `sh`: {e}")));
            }
        };
        let start_ticks = os::read_stat_async(pid).await.map(|s| s.start_ticks);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit::from(status),
                Err(e) => {
                    warn!(pid, cause = %e, "cannot wait for an app process");
                    Exit {
                        code: None,
                        signal: None,
                    }
                }
            };
            exit_tx.send_replace(Some(exit));
        });
        let info = InstanceInfo {
            id: id.clone(),
            deployment: spec.artifact.deployment.clone(),
            generation: spec.artifact.generation,
            node: spec.node.clone(),
            port: Some(port),
            started_at: Timestamp::now(),
        };
        let meta = InstanceMeta {
            info: info.clone(),
            pid,
            start_ticks,
            artifact: spec.artifact.id.clone(),
        };
        let written = write_meta(&dir, &meta).await;
        let tracked = self.track(meta, Liveness::Child(exit_rx.clone()));
        if let Err(e) = written {
            let _ = tracked.kill().await;
            self.discard(&tracked).await?;
            return Err(e);
        }
        info!(
            instance = %id,
            deployment = %info.deployment,
            generation = info.generation,
            pid,
            port,
            "started"
        );

        let mut exit = exit_rx;
        let early = tokio::select! {
            () = tokio::time::sleep(self.config.start_grace) => None,
            ended = exit.wait_for(Option::is_some) => ended.ok().and_then(|e| *e),
        };
        if let Some(exit) = early {
            let output = last_output(&dir).await;
            if let Err(e) = tracked.kill().await {
                warn!(instance = %id, cause = %e, "cannot clean up after a failed start");
            }
            self.discard(&tracked).await?;
            return Err(failed(format!(
                "`{run}` ended with {exit} right after it started{output}"
            )));
        }
        Ok(info)
    }

    async fn stop(&self, instance: &InstanceId, timeout: Duration) -> Result<(), RuntimeError> {
        let Some(tracked) = self.lookup(instance).await? else {
            return Ok(());
        };
        self.terminate(&tracked, timeout).await?;
        self.discard(&tracked).await?;
        info!(instance = %instance, "stopped");
        Ok(())
    }

    async fn status(&self, instance: &InstanceId) -> Result<InstanceState, RuntimeError> {
        let not_found = || RuntimeError::NotFound {
            instance: instance.clone(),
        };
        let tracked = self.lookup(instance).await?.ok_or_else(not_found)?;
        if !tokio::fs::try_exists(&tracked.dir).await.unwrap_or(true) {
            // Stopped through another runtime value over the same directory.
            tracked.keeper.cancel();
            self.instances().remove(instance);
            return Err(not_found());
        }
        Ok(tracked.liveness.state().await)
    }

    async fn list(&self) -> Result<Vec<InstanceInfo>, RuntimeError> {
        let dir = self.instances_dir();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("listing {}", dir.display()),
                    source,
                });
            }
        };
        let mut live = Vec::new();
        loop {
            let entry = entries
                .next_entry()
                .await
                .map_err(|source| RuntimeError::Io {
                    context: format!("listing {}", dir.display()),
                    source,
                })?;
            let Some(entry) = entry else { break };
            // Only directories named like instance ids are ours.
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| InstanceId::parse(name).ok())
            else {
                continue;
            };
            let known = self.instances().get(&id).cloned();
            let tracked = match known {
                Some(tracked) => tracked,
                None => match read_meta(&entry.path()).await {
                    Ok(Some(meta)) if meta.info.id == id => {
                        let identity =
                            os::identify(os::read_stat_async(meta.pid).await, meta.start_ticks);
                        if identity != os::Identity::Alive {
                            info!(instance = %id, "removing an instance that ended while no worker watched it");
                            remove_dir(&entry.path()).await?;
                            continue;
                        }
                        self.adopt(meta)
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        if is_stale(&entry).await {
                            info!(instance = %id, "removing an instance directory without metadata");
                            remove_dir(&entry.path()).await?;
                        }
                        continue;
                    }
                },
            };
            if tracked.liveness.is_running().await {
                live.push(tracked.meta.info.clone());
            }
        }
        live.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(live)
    }

    async fn logs(&self, instance: &InstanceId) -> Result<LogFollow, RuntimeError> {
        let tracked = self
            .lookup(instance)
            .await?
            .ok_or_else(|| RuntimeError::NotFound {
                instance: instance.clone(),
            })?;
        Ok(tracked.logs.follow())
    }

    async fn stats(&self, instance: &InstanceId) -> Result<InstanceStats, RuntimeError> {
        let tracked = self
            .lookup(instance)
            .await?
            .ok_or_else(|| RuntimeError::NotFound {
                instance: instance.clone(),
            })?;
        let owned = tracked.owns_group().await;
        let pgid = tracked.meta.pid;
        let sampler = tracked.sampler.clone();
        let sample = tokio::task::spawn_blocking(move || {
            let members = if owned {
                os::group_members(pgid)
            } else {
                Vec::new()
            };
            sample_group(&sampler, &members)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (cpu_percent, mem_bytes) = sample.map_err(|reason| RuntimeError::Backend {
            runtime: RUNTIME,
            reason: format!("cannot sample instance {instance}: {reason}"),
        })?;
        Ok(InstanceStats {
            cpu_percent,
            mem_bytes,
            mem_limit_bytes: None,
            at: Timestamp::now(),
        })
    }

    async fn remove_artifact(&self, artifact: &Artifact) -> Result<(), RuntimeError> {
        let Some(dir) = self.artifact_dir(artifact) else {
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!(
                    "refusing to remove {}: not under {}",
                    artifact.id,
                    self.artifacts_dir().display()
                ),
            });
        };
        remove_dir(&dir).await?;
        debug!(artifact = %artifact.id, "removed artifact");
        Ok(())
    }
}

/// Sums CPU and resident memory over `members`, refreshing them in `sampler`.
fn sample_group(sampler: &Mutex<Option<System>>, members: &[u32]) -> Result<(f64, u64), String> {
    let mut guard = lock(sampler);
    let system = match &mut *guard {
        Some(system) => system,
        empty => empty.insert(System::new().map_err(|e| e.to_string())?),
    };
    let members: Vec<Pid> = members.iter().map(|pid| Pid::from_u32(*pid)).collect();
    // Refreshing the processes seen before as well drops the dead ones from the sampler.
    let mut refresh: Vec<Pid> = system.processes().keys().copied().collect();
    refresh.extend(&members);
    refresh.sort_unstable();
    refresh.dedup();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&refresh),
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    Ok(members
        .iter()
        .filter_map(|pid| system.process(*pid))
        .fold((0.0, 0), |(cpu, mem), p| {
            (cpu + f64::from(p.cpu_usage()), mem + p.memory())
        }))
}

/// SIGKILL to the group, then waits (bounded) for it to vanish.
async fn kill_group(pgid: u32) -> Result<(), RuntimeError> {
    if let Err(e) = os::signal_group(pgid, libc::SIGKILL) {
        warn!(pgid, cause = %e, "cannot send SIGKILL");
    }
    let deadline = Instant::now() + KILL_WAIT;
    while group_alive(pgid).await {
        if Instant::now() >= deadline {
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!("process group {pgid} still runs after SIGKILL"),
            });
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    Ok(())
}

async fn group_alive(pgid: u32) -> bool {
    tokio::task::spawn_blocking(move || os::group_alive(pgid))
        .await
        .unwrap_or(false)
}

/// The manifest port when it is free on all interfaces, otherwise a free ephemeral port.
/// Ports in `taken` (given to instances that may not listen yet) count as used.
async fn pick_port(wanted: u16, taken: &[u16]) -> Result<u16, RuntimeError> {
    if wanted != 0
        && !taken.contains(&wanted)
        && TcpListener::bind((Ipv4Addr::UNSPECIFIED, wanted))
            .await
            .is_ok()
    {
        return Ok(wanted);
    }
    let failed = |e: std::io::Error| RuntimeError::StartFailed {
        reason: format!("no free port: {e}"),
    };
    let mut port = 0;
    // The kernel hands out ephemeral ports in turn, so a taken one is rarely drawn twice.
    for _ in 0..16 {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .map_err(failed)?;
        port = listener.local_addr().map_err(failed)?.port();
        if !taken.contains(&port) {
            break;
        }
    }
    if wanted != 0 {
        info!(
            wanted,
            port, "the manifest port is taken, using another one"
        );
    }
    Ok(port)
}

/// The environment every command starts from.
fn base_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter_map(|key| Some((key.to_string(), std::env::var(key).ok()?)))
        .collect();
    if !env.iter().any(|(key, _)| key == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// Refuses variables the OS cannot pass on.
fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!("invalid environment variable name {key:?}"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {key} contains a NUL byte"));
        }
    }
    Ok(())
}

async fn open_log(path: &Path) -> std::io::Result<Stdio> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    Ok(Stdio::from(file.into_std().await))
}

async fn read_meta(dir: &Path) -> Result<Option<InstanceMeta>, RuntimeError> {
    let path = dir.join(META_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) => {
                warn!(file = %path.display(), cause = %e, "unreadable instance metadata");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RuntimeError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Writes `meta.json` whole or not at all (a temporary file renamed over it).
async fn write_meta(dir: &Path, meta: &InstanceMeta) -> Result<(), RuntimeError> {
    let path = dir.join(META_FILE);
    let io = |source| RuntimeError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let json = serde_json::to_vec_pretty(meta).map_err(|e| io(e.into()))?;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    tokio::fs::write(&tmp, json).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)
}

async fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RuntimeError::Io {
            context: format!("removing {}", dir.display()),
            source,
        }),
    }
}

async fn is_stale(entry: &tokio::fs::DirEntry) -> bool {
    entry
        .metadata()
        .await
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// The last lines the app wrote (stderr, or stdout when stderr is empty), for a reason.
async fn last_output(dir: &Path) -> String {
    let (err, out) = (dir.join(STDERR_FILE), dir.join(STDOUT_FILE));
    let lines = tokio::task::spawn_blocking(move || {
        let lines = logs::tail_lines(&err, ERROR_LINES);
        if lines.is_empty() {
            logs::tail_lines(&out, ERROR_LINES)
        } else {
            lines
        }
    })
    .await
    .unwrap_or_default();
    quote_output(lines.iter())
}

/// `"; last output:\n  line\n  line"`, or nothing when there was no output.
fn quote_output<'a>(lines: impl Iterator<Item = &'a String>) -> String {
    let mut quoted = String::new();
    for line in lines {
        let mut cut = line.len().min(ERROR_LINE_LEN);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        quoted.push_str("\n  ");
        quoted.push_str(&line[..cut]);
    }
    if quoted.is_empty() {
        quoted
    } else {
        format!("; last output:{quoted}")
    }
}

#[cfg(test)]
mod tests;
