//! The runtime conformance suite: one generic function per behaviour that every
//! [`Runtime`] backend must have.
//!
//! A backend plugs in with a [`Backend`]: the runtime under test and an [`AppFixture`]
//! saying how to make, for that backend, the few apps the suite deploys. See
//! `tests/runtime_conformance.rs` for how the built-in backends are run through it.

use futures::StreamExt;
use kraken_core::manifest::{AppSection, ConfigSection, Lang, Manifest, Resources};
use kraken_core::model::{DeploymentId, InstanceId, LogLine, LogStream, NodeId};
use kraken_core::runtime::{
    Artifact, BuildRequest, InstanceInfo, InstanceState, Runtime, RuntimeError, StartSpec,
};
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// The longest any single step may take (a build, an app coming up, a log line showing).
pub const STEP: Duration = Duration::from_secs(30);
/// Grace period given to `stop`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// An app: its manifest and the files of its checkout.
#[derive(Debug, Clone)]
pub struct App {
    /// The manifest the runtime gets.
    pub manifest: Manifest,
    /// Files of the checkout, as (relative path, content).
    pub files: Vec<(String, String)>,
}

impl App {
    /// An app with no files besides its manifest.
    pub fn new(manifest: Manifest) -> Self {
        App {
            manifest,
            files: Vec::new(),
        }
    }

    /// Adds a file to the checkout.
    pub fn with_file(mut self, path: &str, content: &str) -> Self {
        self.files.push((path.into(), content.into()));
        self
    }

    /// Writes the checkout into a fresh temporary directory.
    pub fn checkout(&self) -> TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (path, content) in &self.files {
            let path = dir.path().join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("checkout directory");
            }
            std::fs::write(path, content).expect("checkout file");
        }
        dir
    }
}

/// The apps the suite deploys, as a backend makes them.
pub struct AppFixture {
    /// Writes `hello_output` to stdout, then serves HTTP on `$PORT` when `serves_http`.
    pub hello: App,
    /// A text `hello`'s log contains.
    pub hello_output: String,
    /// A text the build log of `hello` contains.
    pub build_output: String,
    /// Whether `hello` answers HTTP GET `/` with 200 on the port `start` returns.
    pub serves_http: bool,
    /// Starts fine, runs a while (past any start check of the backend), exits with code 3.
    pub exits_3: App,
    /// Fails as it starts; the reason of the failure contains `start_failure_text`.
    pub fails_to_start: App,
    /// A text the reason of `fails_to_start`'s failure contains.
    pub start_failure_text: String,
    /// Its build fails; the reason contains `build_failure_text`.
    pub build_fails: App,
    /// A text the reason of `build_fails`'s failure contains.
    pub build_failure_text: String,
}

/// A runtime under test, its apps, and whatever must live as long as the runtime (a state
/// directory, a daemon connection).
pub struct Backend {
    /// The runtime.
    pub runtime: Arc<dyn Runtime>,
    /// The apps it deploys.
    pub apps: AppFixture,
    /// Kept alive for the duration of the test.
    pub guard: Box<dyn Any + Send>,
}

/// A manifest with what the suite cares about.
pub fn manifest(
    name: &str,
    port: u16,
    run: Option<&str>,
    build: Option<&str>,
    env: &[(&str, &str)],
) -> Manifest {
    Manifest {
        app: AppSection {
            name: name.into(),
            version: "1.0.0".into(),
            author: None,
            endpoint: None,
        },
        config: ConfigSection {
            port,
            lang: Lang::Custom,
            run: run.map(str::to_owned),
            build: build.map(str::to_owned),
        },
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        resources: Resources::default(),
    }
}

/// A build's outcome.
pub struct Built {
    /// What it produced.
    pub artifact: Artifact,
    /// What it logged.
    pub log: Vec<LogLine>,
    /// The manifest it was built with.
    pub manifest: Manifest,
}

/// Builds `app` as a new deployment, collecting the build log. The checkout is deleted as
/// soon as `build` returns, as the worker does.
pub async fn build(rt: &dyn Runtime, app: &App) -> Result<Built, RuntimeError> {
    let checkout = app.checkout();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let request = BuildRequest {
        deployment: DeploymentId::random(),
        generation: 1,
        source_dir: checkout.path().to_path_buf(),
        manifest: app.manifest.clone(),
    };
    let built = tokio::time::timeout(STEP, rt.build(&request, tx))
        .await
        .expect("build finishes in time");
    drop(checkout);
    let log = collector.await.expect("build log collector");
    let artifact = built?;
    assert_eq!(artifact.deployment, request.deployment);
    assert_eq!(artifact.generation, 1);
    Ok(Built {
        artifact,
        log,
        manifest: app.manifest.clone(),
    })
}

/// What `start` gets for a build.
pub fn spec(built: &Built, node: &NodeId) -> StartSpec {
    StartSpec {
        node: node.clone(),
        artifact: built.artifact.clone(),
        manifest: built.manifest.clone(),
        env: BTreeMap::from([("KRAKEN_TEST".to_owned(), "1".to_owned())]),
    }
}

/// Builds and starts `app`.
pub async fn deploy(rt: &dyn Runtime, app: &App) -> (Built, InstanceInfo) {
    let built = build(rt, app).await.expect("build");
    let info = tokio::time::timeout(STEP, rt.start(&spec(&built, &NodeId::random())))
        .await
        .expect("start finishes in time")
        .expect("start");
    (built, info)
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET of `/` on 127.0.0.1: the whole response, head and body.
pub fn http_get(port: u16) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Retries [`http_get`] until the app answers 200, for at most [`STEP`]; the response.
pub async fn http_get_ok(port: u16) -> Option<String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let got = tokio::task::spawn_blocking(move || http_get(port)).await;
        if let Ok(Ok(response)) = got
            && response.lines().next().is_some_and(|l| l.contains(" 200"))
        {
            return Some(response);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a log follower until a line contains `text`, for at most [`STEP`].
pub async fn wait_for_line(
    logs: &mut kraken_core::runtime::LogFollow,
    text: &str,
) -> Option<LogLine> {
    tokio::time::timeout(STEP, async {
        while let Some(line) = logs.next().await {
            if line.text.contains(text) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn listed(list: &[InstanceInfo], id: &InstanceId) -> bool {
    list.iter().any(|i| &i.id == id)
}

/// Whether a path exists (for backends that leave files, e.g. checkouts).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The whole life of an app: build → start → running → logs → HTTP → stats → listed →
/// stop → gone → stop again → artifact removed.
pub async fn lifecycle(rt: Arc<dyn Runtime>, fx: &AppFixture) {
    let caps = rt.capabilities();
    let built = build(&*rt, &fx.hello).await.expect("build");
    assert!(
        built
            .log
            .iter()
            .any(|l| l.stream == LogStream::Build && l.text.contains(&fx.build_output)),
        "the build log has {:?}: {:?}",
        fx.build_output,
        built.log
    );

    let node = NodeId::random();
    let info = rt.start(&spec(&built, &node)).await.expect("start");
    assert_eq!(info.deployment, built.artifact.deployment);
    assert_eq!(info.generation, built.artifact.generation);
    assert_eq!(info.node, node);
    let port = info.port.expect("the app has a port");
    assert_eq!(
        rt.status(&info.id).await.expect("status"),
        InstanceState::Running
    );

    let mut logs = rt.logs(&info.id).await.expect("logs");
    let line = wait_for_line(&mut logs, &fx.hello_output).await;
    let line = line.unwrap_or_else(|| panic!("the log shows {:?}", fx.hello_output));
    assert_eq!(line.stream, LogStream::Stdout);

    if fx.serves_http {
        let response = http_get_ok(port).await;
        assert!(response.is_some(), "the app answers on port {port}");
    }

    if caps.stats {
        let stats = rt.stats(&info.id).await.expect("stats");
        assert!(stats.mem_bytes > 0, "{stats:?}");
        assert!(
            stats.cpu_percent.is_finite() && stats.cpu_percent >= 0.0,
            "{stats:?}"
        );
    }

    let list = rt.list().await.expect("list");
    let found = list.iter().find(|i| i.id == info.id).expect("listed");
    assert_eq!(found.deployment, info.deployment);
    assert_eq!(found.port, info.port);

    rt.stop(&info.id, STOP_TIMEOUT).await.expect("stop");
    assert!(!listed(&rt.list().await.expect("list"), &info.id));
    match rt.status(&info.id).await {
        Err(RuntimeError::NotFound { instance }) => assert_eq!(instance, info.id),
        Ok(InstanceState::Exited { .. }) => {}
        other => panic!("a stopped instance is gone or exited: {other:?}"),
    }
    let ended = tokio::time::timeout(STEP, async { while logs.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the log follower ends with the instance");

    rt.stop(&info.id, STOP_TIMEOUT)
        .await
        .expect("stopping again succeeds");
    rt.remove_artifact(&built.artifact)
        .await
        .expect("remove the artifact");
}

/// A start failure is an error carrying the app's reason, and leaves no instance.
pub async fn start_failure_is_reported(rt: Arc<dyn Runtime>, fx: &AppFixture) {
    let built = build(&*rt, &fx.fails_to_start).await.expect("build");
    match rt.start(&spec(&built, &NodeId::random())).await {
        Err(RuntimeError::StartFailed { reason }) => assert!(
            reason.contains(&fx.start_failure_text),
            "{reason:?} has {:?}",
            fx.start_failure_text
        ),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let list = rt.list().await.expect("list");
    assert!(
        !list
            .iter()
            .any(|i| i.deployment == built.artifact.deployment),
        "a failed start leaves no instance: {list:?}"
    );
    rt.remove_artifact(&built.artifact)
        .await
        .expect("remove the artifact");
}

/// A build failure is an error carrying the builder's output.
pub async fn build_failure_is_reported(rt: Arc<dyn Runtime>, fx: &AppFixture) {
    match build(&*rt, &fx.build_fails).await {
        Err(RuntimeError::BuildFailed { reason }) => assert!(
            reason.contains(&fx.build_failure_text),
            "{reason:?} has {:?}",
            fx.build_failure_text
        ),
        Err(other) => panic!("expected BuildFailed, got {other:?}"),
        Ok(built) => panic!("expected BuildFailed, built {:?}", built.artifact),
    }
}

/// An app that ends by itself is reported `Exited` with its code, and is no longer listed.
pub async fn exit_code_is_reported(rt: Arc<dyn Runtime>, fx: &AppFixture) {
    let (built, info) = deploy(&*rt, &fx.exits_3).await;
    let exited = eventually(STEP, || {
        let rt = rt.clone();
        let id = info.id.clone();
        async move { rt.status(&id).await.ok() == Some(InstanceState::Exited { code: Some(3) }) }
    })
    .await;
    assert!(
        exited,
        "status becomes Exited(3), is {:?}",
        rt.status(&info.id).await
    );
    assert!(!listed(&rt.list().await.expect("list"), &info.id));
    rt.stop(&info.id, STOP_TIMEOUT)
        .await
        .expect("stop an exited instance");
    assert!(matches!(
        rt.status(&info.id).await,
        Err(RuntimeError::NotFound { .. }) | Ok(InstanceState::Exited { .. })
    ));
    rt.remove_artifact(&built.artifact)
        .await
        .expect("remove the artifact");
}

/// Unknown instances: `NotFound` from every query, `Ok` from `stop`.
pub async fn unknown_instance_is_not_found(rt: Arc<dyn Runtime>) {
    let caps = rt.capabilities();
    let id = InstanceId::random();
    let is_not_found = |r: Result<(), RuntimeError>, supported: bool| match r {
        Err(RuntimeError::NotFound { instance }) => instance == id,
        Err(RuntimeError::Unsupported { .. }) => !supported,
        _ => false,
    };
    assert!(is_not_found(rt.status(&id).await.map(drop), true));
    assert!(is_not_found(rt.logs(&id).await.map(drop), caps.logs));
    assert!(is_not_found(rt.stats(&id).await.map(drop), caps.stats));
    rt.stop(&id, STOP_TIMEOUT)
        .await
        .expect("stopping an unknown instance succeeds");
    assert!(!listed(&rt.list().await.expect("list"), &id));
}

/// Every behaviour in turn, for a backend that wants a single test.
pub async fn run_all(backend: &Backend) {
    lifecycle(backend.runtime.clone(), &backend.apps).await;
    start_failure_is_reported(backend.runtime.clone(), &backend.apps).await;
    build_failure_is_reported(backend.runtime.clone(), &backend.apps).await;
    exit_code_is_reported(backend.runtime.clone(), &backend.apps).await;
    unknown_instance_is_not_found(backend.runtime.clone()).await;
}
