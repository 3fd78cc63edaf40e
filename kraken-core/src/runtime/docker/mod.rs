//! The Docker runtime (feature `docker`): builds an image from the app's checkout and runs it
//! as a container, through the daemon's API ([bollard]).
//!
//! - Build: the checkout (without `.git`) is streamed to the daemon as the build context,
//!   with the Dockerfile of the manifest's `lang` from `dockerfiles/` (embedded in the
//!   binary; `custom` uses the repository's own `Dockerfile`) and the base image of
//!   [`DockerConfig`] as the `BASE_IMAGE` build argument. Output goes to the log sink line
//!   by line; a builder error becomes [`RuntimeError::BuildFailed`] with its text. Images are
//!   tagged `kraken/<app>:<deployment>-<generation>`.
//! - Run: containers are named `kraken-<deployment>-<generation>`, publish the manifest's
//!   port on the same host port when it is free (another one otherwise), get the manifest's
//!   environment, `PORT`, and memory and CPU limits, and are never restarted by the daemon.
//! - Start check: `start` watches the new container until the app accepts connections or
//!   [`DockerConfig::start_grace`] is over; a container that ends before is a
//!   [`RuntimeError::StartFailed`] with its exit code and last output, and is removed.
//! - Re-attach: [`Runtime::list`] reports the running containers of the node label, read
//!   back from their labels (host port included), so a new runtime value after a restart
//!   of the worker manages them again. A container that ended while no runtime watched it
//!   is removed on the way.
//! - Stats: memory from one read, CPU % between two reads of the container's CPU counters,
//!   as `docker stats` computes it.
//! - Ownership: every container and image carries [`LABEL_MANAGED`] and [`LABEL_OWNER`] (the
//!   configured node label). Only objects carrying both (with this runtime's node label) are
//!   ever listed, stopped or removed; nothing is pruned.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kraken_core::runtime::RuntimeError> {
//! use kraken_core::runtime::Runtime;
//! use kraken_core::runtime::docker::{DockerConfig, DockerRuntime};
//!
//! let docker = DockerRuntime::connect(DockerConfig::default().node_label("node-1"))?;
//! docker.ping().await?; // is a daemon there?
//! for instance in docker.list().await? {
//!     println!("{} runs {} on port {:?}", instance.id, instance.deployment, instance.port);
//! }
//! # Ok(())
//! # }
//! ```

mod call;
mod config;
mod context;
mod convert;
mod image;

pub use config::{
    DEFAULT_NODE_IMAGE, DEFAULT_NODE_LABEL, DEFAULT_PYTHON_IMAGE, DEFAULT_STATIC_IMAGE,
    DockerConfig,
};
pub use convert::{
    LABEL_APP, LABEL_CONTAINER_PORT, LABEL_DEPLOYMENT, LABEL_GENERATION, LABEL_HOST_PORT,
    LABEL_MANAGED, LABEL_NODE, LABEL_OWNER, LABEL_STARTED_AT,
};

use crate::manifest::Lang;
use crate::model::{DeploymentId, InstanceId, InstanceStats, LogStream, NodeId, Timestamp};
use crate::runtime::{
    Artifact, BuildRequest, Capabilities, InstanceInfo, InstanceState, LogFollow, LogSink, Runtime,
    RuntimeError, StartSpec,
};
use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCpuStats, ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummary, ContainerSummaryStateEnum, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use call::{API_TIMEOUT, Failure, backend, status_code, within};
use futures::{StreamExt, future, stream};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

const RUNTIME: &str = "docker";
/// The longest [`DockerRuntime::ping`] waits for the daemon.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Host ports tried before `start` gives up on port conflicts.
const PORT_ATTEMPTS: usize = 4;
/// Log lines replayed from the past when following an instance's output.
const LOG_TAIL: &str = "1000";

/// Builds and runs apps as Docker containers. See the [module documentation](self).
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// Address published ports bind to, parsed once from the configuration.
    host_ip: IpAddr,
    /// Set once the API version has been agreed with the daemon. The daemon may be older
    /// than the client (it refuses newer API versions), so the first call negotiates.
    negotiated: OnceCell<()>,
    /// Containers this runtime value started or saw running: when one of them ends, its
    /// caller is watching it, so it stays until stopped. A container that ended while no
    /// runtime watched it (before a restart of the worker) is removed by `list`.
    watched: Mutex<HashSet<String>>,
    /// The last CPU counters read per container: the next `stats` computes CPU use over the
    /// time since, from a one-shot read that does not wait.
    cpu_samples: Mutex<HashMap<String, ContainerCpuStats>>,
}

/// What a container id refers to, as far as this runtime may know.
enum Lookup {
    /// No such container (any more).
    Gone,
    /// It exists but is not this runtime's: never touched.
    Foreign,
    /// One of ours.
    Ours(Box<ContainerInspectResponse>),
}

impl DockerRuntime {
    /// Prepares a client for the daemon at `config.host` (`DOCKER_HOST`, else the local
    /// socket). Does not contact the daemon: see [`DockerRuntime::ping`].
    pub fn connect(config: DockerConfig) -> Result<Self, RuntimeError> {
        // The label ends up in a Dockerfile and in label filters: plain identifiers only.
        if NodeId::parse(&config.node_label).is_err() {
            return Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!(
                    "node label {:?} must be 1-128 characters of [A-Za-z0-9._-]",
                    config.node_label
                ),
            });
        }
        let host_ip: IpAddr = config.host_ip.parse().map_err(|_| RuntimeError::Backend {
            runtime: RUNTIME,
            reason: format!("host_ip {:?} is not an IP address", config.host_ip),
        })?;
        let docker = match &config.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(backend)?;
        // The client's own timeout covers a request up to its response headers, which for a
        // build includes uploading the context; every call is bounded by its own timeout
        // below, so this one only has to be longer than the longest of them.
        let docker = docker.with_timeout(config.build_timeout + API_TIMEOUT);
        Ok(DockerRuntime {
            docker,
            config,
            host_ip,
            negotiated: OnceCell::new(),
            watched: Mutex::new(HashSet::new()),
            cpu_samples: Mutex::new(HashMap::new()),
        })
    }

    /// Checks that the daemon answers (within 10 seconds), so that an agent can tell
    /// whether Docker is there before choosing it.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        let check = async {
            self.ready().await?;
            self.docker.ping().await.map_err(backend)?;
            Ok(())
        };
        match tokio::time::timeout(PING_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::Backend {
                runtime: RUNTIME,
                reason: format!("the daemon did not answer within {PING_TIMEOUT:?}"),
            }),
        }
    }

    /// The configuration this runtime was made with.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// Agrees on the API version with the daemon, once.
    async fn ready(&self) -> Result<(), RuntimeError> {
        self.negotiated
            .get_or_try_init(|| async {
                let docker = within(API_TIMEOUT, self.docker.clone().negotiate_version()).await?;
                debug!(api = %docker.client_version(), "docker API version agreed");
                Ok::<(), RuntimeError>(())
            })
            .await
            .map(|_| ())
    }

    fn cpu_samples(&self) -> MutexGuard<'_, HashMap<String, ContainerCpuStats>> {
        self.cpu_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watched(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding it.
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches a just-started container for [`DockerConfig::start_grace`]: `Some(reason)`
    /// when it ended within it (with its exit code and last output), `None` once it
    /// accepts connections on its port or the grace period is over.
    async fn early_exit(&self, id: &str, port: u16) -> Result<Option<String>, RuntimeError> {
        let deadline = tokio::time::Instant::now() + self.config.start_grace;
        let mut address: Option<IpAddr> = None;
        loop {
            let container = within(API_TIMEOUT, self.docker.inspect_container(id, None))
                .await
                .map_err(RuntimeError::from)?;
            let state = container.state.unwrap_or_default();
            if state.running != Some(true) {
                let code = state
                    .exit_code
                    .map_or_else(|| "no code".to_owned(), |c| format!("code {c}"));
                let oom = if state.oom_killed == Some(true) {
                    " (killed for using too much memory)"
                } else {
                    ""
                };
                let output = self.last_output(id).await;
                return Ok(Some(format!(
                    "the container exited with {code}{oom} right after it started{output}"
                )));
            }
            if address.is_none() {
                address = container
                    .network_settings
                    .and_then(|n| n.networks)
                    .into_iter()
                    .flat_map(|n| n.into_values())
                    .find_map(|e| e.ip_address.and_then(|ip| ip.parse().ok()));
            }
            // The container's own address, not the published port: Docker's proxy accepts
            // connections on the host port before the app listens. Where the container's
            // address is not reachable from here, the grace period decides.
            if let Some(ip) = address {
                let probe = tokio::net::TcpStream::connect((ip, port));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), probe).await {
                    return Ok(None);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines a container wrote, as `: line; line` (empty when it wrote none).
    async fn last_output(&self, id: &str) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("10")
            .build();
        let frames: Vec<_> = match tokio::time::timeout(
            API_TIMEOUT,
            self.docker.logs(id, Some(options)).collect::<Vec<_>>(),
        )
        .await
        {
            Ok(frames) => frames,
            Err(_) => return String::new(),
        };
        let lines: Vec<String> = frames
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|frame| {
                String::from_utf8_lossy(&frame.into_bytes())
                    .lines()
                    .map(str::trim_end)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!(": {}", lines.join("; "))
        }
    }

    /// Whether labels mark an object as this runtime's.
    fn owns(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.is_some_and(|l| {
            l.get(LABEL_MANAGED).is_some_and(|v| v == "true")
                && l.get(LABEL_OWNER) == Some(&self.config.node_label)
        })
    }

    async fn lookup(&self, instance: &InstanceId) -> Result<Lookup, RuntimeError> {
        self.ready().await?;
        match within(
            API_TIMEOUT,
            self.docker.inspect_container(instance.as_str(), None),
        )
        .await
        {
            Ok(c) if self.owns(c.config.as_ref().and_then(|c| c.labels.as_ref())) => {
                Ok(Lookup::Ours(Box::new(c)))
            }
            Ok(_) => Ok(Lookup::Foreign),
            Err(Failure::Docker(e)) if status_code(&e) == Some(404) => Ok(Lookup::Gone),
            Err(e) => Err(e.into()),
        }
    }

    /// The container of `instance`, when it exists and is ours.
    async fn owned(&self, instance: &InstanceId) -> Result<ContainerInspectResponse, RuntimeError> {
        match self.lookup(instance).await? {
            Lookup::Ours(c) => Ok(*c),
            Lookup::Gone | Lookup::Foreign => Err(RuntimeError::NotFound {
                instance: instance.clone(),
            }),
        }
    }

    /// Whether `port` can be bound on the publishing address right now.
    async fn port_is_free(&self, port: u16) -> bool {
        tokio::net::TcpListener::bind((self.host_ip, port))
            .await
            .is_ok()
    }

    /// A port the system considers free (asked by binding port 0).
    async fn ephemeral_port(&self) -> Result<u16, RuntimeError> {
        let listener = tokio::net::TcpListener::bind((self.host_ip, 0))
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("finding a free port on {}", self.host_ip),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| RuntimeError::Io {
                context: "reading the address of a probe socket".into(),
                source,
            })?
            .port();
        Ok(port)
    }

    fn container_body(
        &self,
        spec: &StartSpec,
        host_port: u16,
        started_at: Timestamp,
    ) -> ContainerCreateBody {
        let manifest = &spec.manifest;
        let container_port = manifest.config.port;
        let mut env = manifest.env.clone();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("PORT".to_owned(), container_port.to_string());
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_OWNER.to_owned(), self.config.node_label.clone()),
            (LABEL_NODE.to_owned(), spec.node.to_string()),
            (
                LABEL_DEPLOYMENT.to_owned(),
                spec.artifact.deployment.to_string(),
            ),
            (
                LABEL_GENERATION.to_owned(),
                spec.artifact.generation.to_string(),
            ),
            (LABEL_APP.to_owned(), manifest.app.name.clone()),
            (LABEL_HOST_PORT.to_owned(), host_port.to_string()),
            (LABEL_CONTAINER_PORT.to_owned(), container_port.to_string()),
            (
                LABEL_STARTED_AT.to_owned(),
                started_at.as_millis().to_string(),
            ),
        ]);

        let port_key = format!("{container_port}/tcp");
        let memory = manifest
            .resources
            .memory_mb
            .or(self.config.default_memory_mb)
            .map(|mb| i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX));
        let nano_cpus = manifest
            .resources
            .cpus
            .or(self.config.default_cpus)
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(|c| (c * 1e9) as i64);
        let host_config = HostConfig {
            port_bindings: Some(HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(self.host_ip.to_string()),
                    host_port: Some(host_port.to_string()),
                }]),
            )])),
            memory,
            // Equal to the memory limit: no swap, so the limit is the limit.
            memory_swap: memory,
            nano_cpus,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(self.config.init),
            ..Default::default()
        };
        // The built-in Dockerfiles bake `run` into the image; a custom one has its own
        // command, which the manifest's `run` replaces when given.
        let (entrypoint, cmd) = match (&manifest.config.lang, &manifest.config.run) {
            (Lang::Custom, Some(run)) => (
                Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
                Some(vec![run.clone()]),
            ),
            _ => (None, None),
        };
        ContainerCreateBody {
            image: Some(spec.artifact.id.clone()),
            entrypoint,
            cmd,
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Handles a container already bearing the name `start` wants: ours and running for the
    /// same deployment and generation is the instance asked for (a repeated order); ours but
    /// stopped is removed so it can be made again; someone else's is left alone.
    async fn adopt_existing(
        &self,
        name: &str,
        spec: &StartSpec,
    ) -> Result<Option<InstanceInfo>, RuntimeError> {
        let existing = match within(API_TIMEOUT, self.docker.inspect_container(name, None)).await {
            Ok(c) => c,
            Err(Failure::Docker(e)) if status_code(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let labels = existing.config.as_ref().and_then(|c| c.labels.as_ref());
        if !self.owns(labels) {
            return Err(RuntimeError::StartFailed {
                reason: format!("a container named {name} exists and is not Kraken's"),
            });
        }
        let running = existing
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let id = existing.id.clone().unwrap_or_else(|| name.to_owned());
        if running
            && let Some(info) = labels.and_then(|l| info_from_labels(&id, l, None, None))
            && info.deployment == spec.artifact.deployment
            && info.generation == spec.artifact.generation
        {
            info!(instance = %info.id, deployment = %info.deployment, "instance already running");
            self.watched().insert(id);
            return Ok(Some(info));
        }
        debug!(container = %id, "removing a container of the same name");
        self.remove_container(&id).await?;
        Ok(None)
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match within(API_TIMEOUT, self.docker.remove_container(id, Some(options))).await {
            Ok(()) => Ok(()),
            // Already gone, or its removal already under way.
            Err(Failure::Docker(e)) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logs: true,
            stats: true,
            reattach: true,
            resource_limits: true,
            isolation: true,
        }
    }

    async fn build(&self, request: &BuildRequest, log: LogSink) -> Result<Artifact, RuntimeError> {
        self.build_image(request, log).await
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceInfo, RuntimeError> {
        self.ready().await?;
        let deployment = &spec.artifact.deployment;
        let generation = spec.artifact.generation;
        let name = convert::container_name(deployment, generation);
        if let Some(running) = self.adopt_existing(&name, spec).await? {
            return Ok(running);
        }

        let wanted = spec.manifest.config.port;
        let mut last_conflict = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let host_port = if attempt == 0 && self.port_is_free(wanted).await {
                wanted
            } else {
                self.ephemeral_port().await?
            };
            let started_at = Timestamp::now();
            let body = self.container_body(spec, host_port, started_at);
            let options = CreateContainerOptionsBuilder::new().name(&name).build();
            let created = within(
                API_TIMEOUT,
                self.docker.create_container(Some(options), body),
            )
            .await
            .map_err(|e| RuntimeError::StartFailed {
                reason: e.to_string(),
            })?;
            for warning in &created.warnings {
                warn!(deployment = %deployment, warning = %warning, "docker warning on create");
            }
            self.watched().insert(created.id.clone());
            match within(API_TIMEOUT, self.docker.start_container(&created.id, None)).await {
                Ok(()) => {
                    if let Some(reason) = self.early_exit(&created.id, wanted).await? {
                        self.remove_container(&created.id).await?;
                        self.watched().remove(&created.id);
                        warn!(deployment = %deployment, cause = %reason, "the app did not start");
                        return Err(RuntimeError::StartFailed { reason });
                    }
                    let id = InstanceId::parse(&created.id).map_err(|e| RuntimeError::Backend {
                        runtime: RUNTIME,
                        reason: e.to_string(),
                    })?;
                    info!(
                        deployment = %deployment,
                        generation,
                        instance = %id,
                        host_port,
                        container_port = wanted,
                        "container started"
                    );
                    return Ok(InstanceInfo {
                        id,
                        deployment: deployment.clone(),
                        generation,
                        node: spec.node.clone(),
                        port: Some(host_port),
                        started_at,
                    });
                }
                Err(err) => {
                    self.remove_container(&created.id).await?;
                    self.watched().remove(&created.id);
                    let text = err.to_string();
                    if is_port_conflict(&text) {
                        warn!(deployment = %deployment, host_port, cause = %text, "host port taken, trying another");
                        last_conflict = text;
                        continue;
                    }
                    return Err(RuntimeError::StartFailed { reason: text });
                }
            }
        }
        Err(RuntimeError::StartFailed {
            reason: format!("no free host port after {PORT_ATTEMPTS} attempts: {last_conflict}"),
        })
    }

    /// Stops the container (SIGTERM, then SIGKILL after `timeout`; a zero timeout means the
    /// configured [`DockerConfig::stop_timeout`]) and removes it with its anonymous volumes.
    async fn stop(&self, instance: &InstanceId, timeout: Duration) -> Result<(), RuntimeError> {
        let container = match self.lookup(instance).await? {
            Lookup::Gone => return Ok(()),
            Lookup::Foreign => {
                warn!(instance = %instance, "refusing to stop a container Kraken does not own");
                return Err(RuntimeError::NotFound {
                    instance: instance.clone(),
                });
            }
            Lookup::Ours(c) => c,
        };
        let id = container.id.clone().unwrap_or_else(|| instance.to_string());
        let timeout = if timeout.is_zero() {
            self.config.stop_timeout
        } else {
            timeout
        };
        let secs = i32::try_from(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        match within(
            timeout + API_TIMEOUT,
            self.docker.stop_container(&id, Some(options)),
        )
        .await
        {
            Ok(()) => {}
            // 304: already stopped; 404: gone meanwhile.
            Err(Failure::Docker(e)) if matches!(status_code(&e), Some(304 | 404)) => {}
            Err(e) => return Err(e.into()),
        }
        self.remove_container(&id).await?;
        self.watched().remove(&id);
        self.cpu_samples().remove(&id);
        info!(instance = %instance, "container stopped and removed");
        Ok(())
    }

    async fn status(&self, instance: &InstanceId) -> Result<InstanceState, RuntimeError> {
        let container = self.owned(instance).await?;
        let state = container.state.unwrap_or_default();
        if state.oom_killed == Some(true) {
            return Ok(InstanceState::OomKilled);
        }
        let running = state.running == Some(true)
            || matches!(
                state.status,
                Some(
                    ContainerStateStatusEnum::RUNNING
                        | ContainerStateStatusEnum::PAUSED
                        | ContainerStateStatusEnum::RESTARTING
                )
            );
        if running {
            return Ok(InstanceState::Running);
        }
        // Created but never started has no exit code.
        let code = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => None,
            _ => state.exit_code.and_then(|c| i32::try_from(c).ok()),
        };
        Ok(InstanceState::Exited { code })
    }

    /// The running containers of this runtime's node label. A container of the label that
    /// ended while no runtime watched it (it ended before this runtime value saw it run) is
    /// removed on the way, its exit code logged; one that ended while watched stays until
    /// `stop`, for `status` to report.
    async fn list(&self) -> Result<Vec<InstanceInfo>, RuntimeError> {
        self.ready().await?;
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_OWNER}={}", self.config.node_label),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = within(API_TIMEOUT, self.docker.list_containers(Some(options)))
            .await
            .map_err(RuntimeError::from)?;
        let mut live = Vec::new();
        for container in containers {
            if !self.owns(container.labels.as_ref()) {
                continue;
            }
            let Some(id) = container.id.clone() else {
                continue;
            };
            let running = matches!(
                container.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::PAUSED
                )
            );
            if !running {
                if !self.watched().contains(&id) {
                    info!(
                        container = %id,
                        state = ?container.state,
                        status = ?container.status,
                        "removing a container that ended while no worker watched it"
                    );
                    self.remove_container(&id).await?;
                    self.cpu_samples().remove(&id);
                }
                continue;
            }
            match info_from_summary(&container) {
                Some(info) => {
                    self.watched().insert(id);
                    live.push(info);
                }
                None => {
                    warn!(container = %id, "skipping a Kraken container with unreadable labels")
                }
            }
        }
        Ok(live)
    }

    /// Follows stdout and stderr, starting with the last 1000 lines, each stamped with the
    /// time Docker recorded it. Ends when the container stops.
    async fn logs(&self, instance: &InstanceId) -> Result<LogFollow, RuntimeError> {
        let container = self.owned(instance).await?;
        let id = container.id.unwrap_or_else(|| instance.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(LOG_TAIL)
            .build();
        let instance = instance.clone();
        let lines = self
            .docker
            .logs(&id, Some(options))
            .take_while(move |item| {
                if let Err(err) = item {
                    debug!(instance = %instance, cause = %err, "log stream ended");
                }
                future::ready(item.is_ok())
            })
            .filter_map(|item| future::ready(item.ok()))
            .flat_map(|output| {
                let lines = match output {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        convert::log_lines(LogStream::Stdout, &message)
                    }
                    LogOutput::StdErr { message } => {
                        convert::log_lines(LogStream::Stderr, &message)
                    }
                    LogOutput::StdIn { .. } => Vec::new(),
                };
                stream::iter(lines)
            });
        Ok(Box::pin(lines))
    }

    /// One sample: memory in use without reclaimable cache, the limit when one is set, and
    /// CPU % as `docker stats` computes it, over the time since the previous sample of this
    /// instance (a one-shot read that does not wait). The first sample of an instance lets
    /// the daemon take two readings a second apart instead.
    async fn stats(&self, instance: &InstanceId) -> Result<InstanceStats, RuntimeError> {
        let container = self.owned(instance).await?;
        let id = container.id.clone().unwrap_or_else(|| instance.to_string());
        let previous = self.cpu_samples().get(&id).cloned();
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(previous.is_some())
            .build();
        let sample = within(API_TIMEOUT, async {
            match self.docker.stats(&id, Some(options)).next().await {
                Some(result) => result,
                None => Err(DockerError::DockerStreamError {
                    error: "the daemon sent no stats".into(),
                }),
            }
        })
        .await
        .map_err(RuntimeError::from)?;
        let current = sample.cpu_stats.clone().unwrap_or_default();
        let cpu_percent = match previous.as_ref().or(sample.precpu_stats.as_ref()) {
            Some(before) => convert::cpu_percent(&current, before),
            None => 0.0,
        };
        self.cpu_samples().insert(id, current);
        let limit = container
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .filter(|m| *m > 0)
            .and_then(|m| u64::try_from(m).ok());
        Ok(InstanceStats {
            cpu_percent,
            mem_bytes: sample
                .memory_stats
                .as_ref()
                .map(convert::memory_used)
                .unwrap_or(0),
            mem_limit_bytes: limit,
            at: Timestamp::now(),
        })
    }

    /// Removes the image built for the artifact's deployment and generation. Refuses an
    /// image that is not this runtime's or that a container (anyone's) still uses; an
    /// image already gone is fine. Only Kraken's own tags are removed: an image someone
    /// else also tagged stays.
    async fn remove_artifact(&self, artifact: &Artifact) -> Result<(), RuntimeError> {
        self.remove_image(artifact).await
    }
}

/// Whether a start failure is another process holding the host port (the daemon's words
/// differ between its proxy and its port allocator).
fn is_port_conflict(text: &str) -> bool {
    text.contains("port is already allocated") || text.contains("address already in use")
}

/// An instance from a container's labels. `fallback_port` is used when the host-port label
/// is missing; `created_secs` when the start-time label is.
fn info_from_labels(
    id: &str,
    labels: &HashMap<String, String>,
    fallback_port: Option<u16>,
    created_secs: Option<i64>,
) -> Option<InstanceInfo> {
    let deployment = DeploymentId::parse(labels.get(LABEL_DEPLOYMENT)?).ok()?;
    let generation = labels.get(LABEL_GENERATION)?.parse().ok()?;
    let node = NodeId::parse(labels.get(LABEL_NODE)?).ok()?;
    let port = labels
        .get(LABEL_HOST_PORT)
        .and_then(|p| p.parse().ok())
        .or(fallback_port);
    let started_at = labels
        .get(LABEL_STARTED_AT)
        .and_then(|t| t.parse().ok())
        .map(Timestamp)
        .or_else(|| {
            created_secs
                .and_then(|s| u64::try_from(s).ok())
                .map(|s| Timestamp(s.saturating_mul(1000)))
        })
        .unwrap_or_default();
    Some(InstanceInfo {
        id: InstanceId::parse(id).ok()?,
        deployment,
        generation,
        node,
        port,
        started_at,
    })
}

fn info_from_summary(c: &ContainerSummary) -> Option<InstanceInfo> {
    let labels = c.labels.as_ref()?;
    let container_port: Option<u16> = labels
        .get(LABEL_CONTAINER_PORT)
        .and_then(|p| p.parse().ok());
    let published = c.ports.iter().flatten().find_map(|p| {
        (Some(p.private_port) == container_port)
            .then_some(p.public_port)
            .flatten()
    });
    info_from_labels(c.id.as_deref()?, labels, published, c.created)
}

#[cfg(test)]
mod tests;
