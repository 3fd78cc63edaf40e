//! [`DockerConfig`]: how the Docker runtime reaches the daemon, what it builds from and the
//! limits it applies.

use crate::manifest::Lang;
use std::time::Duration;

/// Public base image for Node apps.
pub const DEFAULT_NODE_IMAGE: &str = "node:20-alpine";
/// Public base image for Python apps.
pub const DEFAULT_PYTHON_IMAGE: &str = "python:3.12-slim";
/// Public base image for static sites: busybox brings `httpd`.
pub const DEFAULT_STATIC_IMAGE: &str = "busybox:stable";
/// Node label used when none is configured.
pub const DEFAULT_NODE_LABEL: &str = "local";

/// Configuration of the Docker runtime. Plain data with a loopback (local socket) default;
/// change it with the `#[must_use]` setters.
///
/// ```
/// use kraken_core::runtime::docker::DockerConfig;
/// use std::time::Duration;
///
/// let config = DockerConfig::default()
///     .node_label("node-1")
///     .python_image("registry.lan/python:3.12-slim")
///     .default_memory_mb(Some(256))
///     .build_timeout(Duration::from_secs(1800));
/// assert_eq!(config.node_label, "node-1");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// Daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`). `None` uses
    /// `DOCKER_HOST` when set, else the local socket.
    pub host: Option<String>,
    /// Base image for `lang = "node"`, passed to the build as `BASE_IMAGE`.
    pub node_image: String,
    /// Base image for `lang = "python"`, passed to the build as `BASE_IMAGE`.
    pub python_image: String,
    /// Base image for `lang = "static"`; it must provide busybox `httpd`.
    pub static_image: String,
    /// Memory limit (MiB) of an app whose manifest sets none; `None` for no limit.
    pub default_memory_mb: Option<u64>,
    /// CPU limit (cores) of an app whose manifest sets none; `None` for no limit.
    pub default_cpus: Option<f64>,
    /// How long a stop waits after SIGTERM before the daemon kills the container, when the
    /// caller gives no timeout of its own (zero).
    pub stop_timeout: Duration,
    /// Scopes everything this runtime owns: containers and images are labelled with it and
    /// [`list`](crate::runtime::Runtime::list) only reports containers carrying it. An agent
    /// sets it to its node id, so two agents sharing one daemon never see each other's apps.
    /// 1 to 128 characters of `[A-Za-z0-9._-]`.
    pub node_label: String,
    /// The longest a build may take, uploading the context included. Docker's client
    /// default (two minutes up to the response headers) is too short for real builds.
    pub build_timeout: Duration,
    /// Host address published ports bind to (`0.0.0.0`: every interface, so other machines
    /// of the LAN reach the apps).
    pub host_ip: String,
    /// Run the daemon's init (`docker-init`) as PID 1, so apps that do not handle SIGTERM
    /// themselves still stop promptly and zombies are reaped.
    pub init: bool,
    /// How long `start` watches a new container: one that ends within it is a failed start
    /// (a missing binary, a bad config) rather than a crash of a running app. The watch ends
    /// early once the app accepts connections on its port.
    pub start_grace: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            node_image: DEFAULT_NODE_IMAGE.to_owned(),
            python_image: DEFAULT_PYTHON_IMAGE.to_owned(),
            static_image: DEFAULT_STATIC_IMAGE.to_owned(),
            default_memory_mb: None,
            default_cpus: None,
            stop_timeout: Duration::from_secs(10),
            node_label: DEFAULT_NODE_LABEL.to_owned(),
            build_timeout: Duration::from_secs(30 * 60),
            host_ip: "0.0.0.0".to_owned(),
            init: true,
            start_grace: Duration::from_millis(500),
        }
    }
}

impl DockerConfig {
    /// Sets the daemon address.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the base image for Node apps.
    #[must_use]
    pub fn node_image(mut self, image: impl Into<String>) -> Self {
        self.node_image = image.into();
        self
    }

    /// Sets the base image for Python apps.
    #[must_use]
    pub fn python_image(mut self, image: impl Into<String>) -> Self {
        self.python_image = image.into();
        self
    }

    /// Sets the base image for static sites (it must provide busybox `httpd`).
    #[must_use]
    pub fn static_image(mut self, image: impl Into<String>) -> Self {
        self.static_image = image.into();
        self
    }

    /// Sets the memory limit of apps whose manifest sets none.
    #[must_use]
    pub fn default_memory_mb(mut self, mb: Option<u64>) -> Self {
        self.default_memory_mb = mb;
        self
    }

    /// Sets the CPU limit of apps whose manifest sets none.
    #[must_use]
    pub fn default_cpus(mut self, cpus: Option<f64>) -> Self {
        self.default_cpus = cpus;
        self
    }

    /// Sets the stop timeout used when a caller gives none.
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Sets the node label that scopes this runtime's containers.
    #[must_use]
    pub fn node_label(mut self, label: impl Into<String>) -> Self {
        self.node_label = label.into();
        self
    }

    /// Sets the longest a build may take.
    #[must_use]
    pub fn build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    /// Sets the host address published ports bind to.
    #[must_use]
    pub fn host_ip(mut self, ip: impl Into<String>) -> Self {
        self.host_ip = ip.into();
        self
    }

    /// Turns the init process (PID 1 forwarding signals) on or off.
    #[must_use]
    pub fn init(mut self, init: bool) -> Self {
        self.init = init;
        self
    }

    /// Sets how long `start` watches a new container for an early exit.
    #[must_use]
    pub fn start_grace(mut self, grace: Duration) -> Self {
        self.start_grace = grace;
        self
    }

    /// The base image for a language; `None` for `custom` (the repository's own Dockerfile
    /// says what it builds from).
    pub fn base_image(&self, lang: Lang) -> Option<&str> {
        match lang {
            Lang::Node => Some(&self.node_image),
            Lang::Python => Some(&self.python_image),
            Lang::Static => Some(&self.static_image),
            Lang::Custom => None,
        }
    }
}
