//! The Docker runtime against a real daemon. Every test needs Docker and is ignored by
//! default; run them with
//!
//! ```sh
//! bash .ci/docker-test-images.sh   # once: the local base images (cached by tag)
//! cargo test -p kraken-core --features docker --test docker_runtime -- --ignored
//! ```
//!
//! Each test uses its own node label, so tests running in parallel never see each other's
//! containers, and removes everything it made when it ends, failed or not.
#![cfg(feature = "docker")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/docker_images.rs"]
mod docker_images;

use docker_images::{BUSYBOX, NODE, PYTHON};
use futures::StreamExt;
use kraken_core::manifest::{AppSection, ConfigSection, Lang, Manifest, Resources};
use kraken_core::model::{DeploymentId, InstanceId, LogLine, LogStream, NodeId};
use kraken_core::runtime::docker::{DockerConfig, DockerRuntime, LABEL_OWNER};
use kraken_core::runtime::{
    Artifact, BuildRequest, InstanceInfo, InstanceState, Runtime, RuntimeError, StartSpec,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

const HTTP_WAIT: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(5);

/// A runtime with its own node label, removing whatever carries that label (and the
/// foreign containers the test registered) when dropped.
struct Fixture {
    runtime: DockerRuntime,
    label: String,
    node: NodeId,
    foreign: Vec<String>,
}

impl Fixture {
    async fn new(images: &[&str]) -> Fixture {
        for image in images {
            docker_images::ensure(image).await.unwrap();
        }
        let label = format!("test-{}", uuid::Uuid::new_v4().simple());
        let runtime = DockerRuntime::connect(config(&label)).unwrap();
        runtime.ping().await.expect("a Docker daemon answers");
        Fixture {
            runtime,
            node: NodeId::parse(&label).unwrap(),
            label,
            foreign: Vec::new(),
        }
    }

    /// A second runtime on the same label, as after a restart of the worker.
    fn reconnect(&self) -> DockerRuntime {
        DockerRuntime::connect(config(&self.label)).unwrap()
    }

    async fn build(&self, name: &str, manifest: &Manifest, dir: &Path) -> (Artifact, Vec<LogLine>) {
        let request = BuildRequest {
            deployment: DeploymentId::parse(&format!("dep-{name}-{}", &self.label[5..13])).unwrap(),
            generation: 1,
            source_dir: dir.to_path_buf(),
            manifest: manifest.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let collector = tokio::spawn(collect(rx));
        let built = self.runtime.build(&request, tx).await;
        let lines = collector.await.unwrap();
        match built {
            Ok(artifact) => (artifact, lines),
            Err(e) => panic!("build of {name} failed: {e}\n{}", texts(&lines)),
        }
    }

    async fn start(&self, artifact: &Artifact, manifest: &Manifest) -> InstanceInfo {
        self.runtime
            .start(&self.spec(artifact, manifest))
            .await
            .expect("start")
    }

    fn spec(&self, artifact: &Artifact, manifest: &Manifest) -> StartSpec {
        StartSpec {
            node: self.node.clone(),
            artifact: artifact.clone(),
            manifest: manifest.clone(),
            env: BTreeMap::from([("FROM_SPEC".to_owned(), "yes".to_owned())]),
        }
    }

    /// Starts a container Kraken did not create (a sleeping busybox), named for cleanup.
    async fn foreign_container(&mut self, labels: &[&str]) -> String {
        let name = format!("not-kraken-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", &name]);
        for label in labels {
            cmd.args(["--label", label]);
        }
        cmd.args([BUSYBOX, "sleep", "300"]);
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.foreign.push(name.clone());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Best effort, and blocking on purpose: the test is over.
        let filter = format!("label={LABEL_OWNER}={}", self.label);
        let ids = |args: &[&str]| -> Vec<String> {
            StdCommand::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut containers = ids(&["ps", "-aq", "--filter", &filter]);
        containers.extend(self.foreign.iter().cloned());
        if !containers.is_empty() {
            let _ = StdCommand::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let images = ids(&["images", "-q", "--filter", &filter]);
        if !images.is_empty() {
            let _ = StdCommand::new("docker")
                .args(["rmi", "-f"])
                .args(&images)
                .output();
        }
    }
}

fn config(label: &str) -> DockerConfig {
    DockerConfig::default()
        .node_label(label)
        .static_image(BUSYBOX)
        .python_image(PYTHON)
        .node_image(NODE)
        .stop_timeout(STOP)
}

fn manifest(name: &str, lang: Lang, port: u16, run: Option<&str>) -> Manifest {
    Manifest {
        app: AppSection {
            name: name.to_owned(),
            version: "1.0.0".to_owned(),
            author: None,
            endpoint: None,
        },
        config: ConfigSection {
            port,
            lang,
            run: run.map(str::to_owned),
            build: None,
        },
        env: BTreeMap::from([("GREETING".to_owned(), "hello from the manifest".to_owned())]),
        resources: Resources {
            memory_mb: Some(64),
            cpus: Some(0.5),
        },
    }
}

fn source(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    // A .git folder that must not reach the image.
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    dir
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<LogLine>) -> Vec<LogLine> {
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    lines
}

fn texts(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// GET `path` on 127.0.0.1:`port`: the status code and the body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Waits until `port` answers 200 and returns the body.
async fn wait_http_200(port: u16, path: &str) -> String {
    let deadline = Instant::now() + HTTP_WAIT;
    loop {
        if let Some((200, body)) = http_get(port, path).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered 200 on port {port} within {HTTP_WAIT:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(
    runtime: &DockerRuntime,
    id: &InstanceId,
    done: impl Fn(&InstanceState) -> bool,
) -> InstanceState {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = runtime.status(id).await.unwrap();
        if done(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "still {state:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the instance's logs until a line contains `needle`.
async fn wait_log(runtime: &DockerRuntime, id: &InstanceId, needle: &str) -> LogLine {
    let mut follow = runtime.logs(id).await.unwrap();
    let found = timeout(Duration::from_secs(20), async {
        while let Some(line) = follow.next().await {
            if line.text.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        other => panic!("no log line with {needle:?} ({other:?})"),
    }
}

async fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn container_running(id: &str) -> bool {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", id])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// A free port on every interface, released again.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Build, start, HTTP 200 with `expect` in the body, a log line containing `log_needle`,
/// stats, list, stop, remove the image: the whole life of one app.
async fn lifecycle(
    fx: &Fixture,
    name: &str,
    manifest: Manifest,
    dir: &Path,
    expect: &str,
    log_needle: &str,
) {
    let (artifact, build_log) = fx.build(name, &manifest, dir).await;
    assert!(!build_log.is_empty(), "build output reaches the sink");
    assert!(build_log.iter().all(|l| l.stream == LogStream::Build));

    let info = fx.start(&artifact, &manifest).await;
    assert_eq!(info.deployment, artifact.deployment);
    assert_eq!(info.node, fx.node);
    let port = info.port.expect("a published port");
    let body = wait_http_200(port, "/").await;
    assert!(body.contains(expect), "{name}: body {body:?}");

    let line = wait_log(&fx.runtime, &info.id, log_needle).await;
    assert!(line.at.as_millis() > 0);

    let stats = fx.runtime.stats(&info.id).await.unwrap();
    assert!(stats.mem_bytes > 0, "{stats:?}");
    assert_eq!(stats.mem_limit_bytes, Some(64 << 20));
    assert!(stats.cpu_percent >= 0.0);

    let listed = fx.runtime.list().await.unwrap();
    assert_eq!(
        listed,
        vec![info.clone()],
        "list reports exactly this instance"
    );
    assert_eq!(
        fx.runtime.status(&info.id).await.unwrap(),
        InstanceState::Running
    );

    fx.runtime.stop(&info.id, STOP).await.unwrap();
    assert!(
        !docker_ok(&["container", "inspect", info.id.as_str()]).await,
        "container removed"
    );
    assert!(matches!(
        fx.runtime.status(&info.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
    fx.runtime
        .stop(&info.id, STOP)
        .await
        .expect("stop is idempotent");
    assert!(fx.runtime.list().await.unwrap().is_empty());

    fx.runtime.remove_artifact(&artifact).await.unwrap();
    assert!(
        !docker_ok(&["image", "inspect", &artifact.id]).await,
        "image removed"
    );
    fx.runtime
        .remove_artifact(&artifact)
        .await
        .expect("removing twice is fine");
}

#[tokio::test]
#[ignore = "needs docker"]
async fn static_site_is_served_by_busybox_httpd() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[
        ("index.html", "<h1>static kraken</h1>\n"),
        ("css/site.css", "h1{}"),
    ]);
    let manifest = manifest("Static Site", Lang::Static, free_port(), None);
    // busybox httpd -v logs every request on stderr.
    lifecycle(
        &fx,
        "static",
        manifest,
        dir.path(),
        "static kraken",
        "response:200",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs docker"]
async fn python_app_runs_its_command() {
    let fx = Fixture::new(&[PYTHON]).await;
    let app = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("python says " + os.environ["GREETING"] + " " + os.environ["FROM_SPEC"]).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
print("python listening on", os.environ["PORT"])
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
"#;
    let dir = source(&[("app.py", app)]);
    let manifest = manifest("py-app", Lang::Python, free_port(), Some("python3 app.py"));
    lifecycle(
        &fx,
        "python",
        manifest,
        dir.path(),
        "python says hello from the manifest yes",
        "python listening on",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs docker"]
async fn node_app_runs_its_command() {
    let fx = Fixture::new(&[NODE]).await;
    let app = r#"
const http = require('http');
const port = process.env.PORT;
http.createServer((req, res) => {
  console.error('node request ' + req.url);
  res.end('node says ' + process.env.GREETING);
}).listen(port, () => console.log('node listening on ' + port));
"#;
    let dir = source(&[("server.js", app)]);
    let manifest = manifest("node-app", Lang::Node, free_port(), Some("node server.js"));
    lifecycle(
        &fx,
        "node",
        manifest,
        dir.path(),
        "node says hello from the manifest",
        "node listening on",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs docker"]
async fn custom_dockerfile_is_used_as_is() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dockerfile = format!(
        "FROM {BUSYBOX}\nARG PORT=8080\nENV PORT=$PORT\nCOPY www /www\nCMD httpd -f -v -p $PORT -h /www\n"
    );
    let dir = source(&[
        ("Dockerfile", &dockerfile),
        ("www/index.html", "custom kraken"),
    ]);
    let manifest = manifest("custom", Lang::Custom, free_port(), None);
    lifecycle(
        &fx,
        "custom",
        manifest,
        dir.path(),
        "custom kraken",
        "response:200",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs docker"]
async fn containers_that_are_not_ours_are_never_touched() {
    let mut fx = Fixture::new(&[BUSYBOX]).await;
    let plain = fx.foreign_container(&[]).await;
    // Claims to be Kraken's, but for another node label.
    let other_node = fx
        .foreign_container(&["io.kraken.managed=true", "io.kraken.owner=someone-else"])
        .await;

    let dir = source(&[("index.html", "ours")]);
    let manifest = manifest("ours", Lang::Static, free_port(), None);
    lifecycle(
        &fx,
        "ours",
        manifest.clone(),
        dir.path(),
        "ours",
        "response:200",
    )
    .await;

    for id in [&plain, &other_node] {
        let instance = InstanceId::parse(id).unwrap();
        assert!(matches!(
            fx.runtime.stop(&instance, STOP).await,
            Err(RuntimeError::NotFound { .. })
        ));
        assert!(matches!(
            fx.runtime.status(&instance).await,
            Err(RuntimeError::NotFound { .. })
        ));
        assert!(matches!(
            fx.runtime.logs(&instance).await,
            Err(RuntimeError::NotFound { .. })
        ));
        assert!(matches!(
            fx.runtime.stats(&instance).await,
            Err(RuntimeError::NotFound { .. })
        ));
        assert!(container_running(id).await, "{id} still runs");
    }
    let listed = fx.runtime.list().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // An image that is not Kraken's is refused, and stays.
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", BUSYBOX])
        .output()
        .await
        .unwrap();
    let busybox_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let not_ours = Artifact {
        id: busybox_id,
        deployment: DeploymentId::random(),
        generation: 1,
    };
    assert!(fx.runtime.remove_artifact(&not_ours).await.is_err());
    assert!(docker_ok(&["image", "inspect", BUSYBOX]).await);
}

#[tokio::test]
#[ignore = "needs docker"]
async fn a_failing_build_reports_the_builders_message() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let request = |dir: &Path| BuildRequest {
        deployment: DeploymentId::random(),
        generation: 1,
        source_dir: dir.to_path_buf(),
        manifest: manifest("broken", Lang::Custom, 8080, None),
    };

    let failing_step = source(&[(
        "Dockerfile",
        &format!("FROM {BUSYBOX}\nRUN echo about to fail && exit 7\n"),
    )]);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let lines = tokio::spawn(collect(rx));
    let err = fx
        .runtime
        .build(&request(failing_step.path()), tx)
        .await
        .unwrap_err();
    let lines = lines.await.unwrap();
    match &err {
        RuntimeError::BuildFailed { reason } => {
            assert!(reason.contains("returned a non-zero code: 7"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(texts(&lines).contains("about to fail"), "{}", texts(&lines));

    let bad_syntax = source(&[("Dockerfile", &format!("FROM {BUSYBOX}\nFROBNICATE all\n"))]);
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    match fx.runtime.build(&request(bad_syntax.path()), tx).await {
        Err(RuntimeError::BuildFailed { reason }) => {
            assert!(
                reason.to_lowercase().contains("unknown instruction"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }

    let no_dockerfile = source(&[("index.html", "x")]);
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    match fx.runtime.build(&request(no_dockerfile.path()), tx).await {
        Err(RuntimeError::BuildFailed { reason }) => {
            assert!(reason.contains("Dockerfile"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs docker"]
async fn an_exit_code_is_reported() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "x")]);
    let manifest = manifest(
        "exits",
        Lang::Static,
        free_port(),
        Some("echo leaving soon; sleep 1; echo leaving; exit 3"),
    );
    let (artifact, _) = fx.build("exits", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    let state = wait_state(&fx.runtime, &info.id, |s| *s != InstanceState::Running).await;
    assert_eq!(state, InstanceState::Exited { code: Some(3) });
    // Its output is still there after the end, and the follow ends by itself.
    let follow = fx.runtime.logs(&info.id).await.unwrap();
    let lines: Vec<LogLine> = timeout(Duration::from_secs(10), follow.collect())
        .await
        .expect("the follow of an exited container ends");
    assert!(
        lines
            .iter()
            .any(|l| l.text == "leaving" && l.stream == LogStream::Stdout),
        "{lines:?}"
    );
    assert!(
        fx.runtime.list().await.unwrap().is_empty(),
        "an ended instance is not listed"
    );
    // Still there for its watcher, until stopped.
    assert_eq!(
        fx.runtime.status(&info.id).await.unwrap(),
        InstanceState::Exited { code: Some(3) }
    );

    // After a restart of the worker nobody watches it: the new runtime's list removes it.
    let restarted = fx.reconnect();
    assert!(restarted.list().await.unwrap().is_empty());
    assert!(!docker_ok(&["container", "inspect", info.id.as_str()]).await);
    fx.runtime.stop(&info.id, STOP).await.unwrap();
    fx.runtime.remove_artifact(&artifact).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn an_app_that_dies_at_once_fails_its_start() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "x")]);
    let manifest = manifest(
        "dies",
        Lang::Static,
        free_port(),
        Some("echo 'fatal: no config file' >&2; exit 2"),
    );
    let (artifact, _) = fx.build("dies", &manifest, dir.path()).await;
    match fx.runtime.start(&fx.spec(&artifact, &manifest)).await {
        Err(RuntimeError::StartFailed { reason }) => {
            assert!(reason.contains("code 2"), "{reason}");
            assert!(reason.contains("fatal: no config file"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.runtime.list().await.unwrap().is_empty());
    let name = format!("kraken-{}-1", artifact.deployment);
    assert!(
        !docker_ok(&["container", "inspect", &name]).await,
        "nothing left behind"
    );
    fx.runtime.remove_artifact(&artifact).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn an_oom_kill_is_reported() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "x")]);
    // Doubles a string until the 8 MB limit is hit; after a second, so that the start
    // itself succeeds.
    let hog = "sleep 1; x=a; while true; do x=$x$x; done";
    let mut manifest = manifest("hog", Lang::Static, free_port(), Some(hog));
    manifest.resources.memory_mb = Some(8);
    let (artifact, _) = fx.build("hog", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    let state = wait_state(&fx.runtime, &info.id, |s| *s != InstanceState::Running).await;
    assert_eq!(state, InstanceState::OomKilled);
    fx.runtime.stop(&info.id, STOP).await.unwrap();

    // At once: a failed start that says why.
    let mut at_once = manifest.clone();
    at_once.config.port = free_port();
    at_once.config.run = Some("x=a; while true; do x=$x$x; done".into());
    let (artifact2, _) = fx.build("hog-now", &at_once, dir.path()).await;
    match fx.runtime.start(&fx.spec(&artifact2, &at_once)).await {
        Err(RuntimeError::StartFailed { reason }) => {
            assert!(reason.contains("too much memory"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    fx.runtime.remove_artifact(&artifact).await.unwrap();
    fx.runtime.remove_artifact(&artifact2).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn a_taken_port_gets_another_one_that_answers() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let squatter = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let dir = source(&[("index.html", "moved")]);
    let manifest = manifest("moved", Lang::Static, taken, None);
    let (artifact, _) = fx.build("moved", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    let port = info.port.unwrap();
    assert_ne!(port, taken);
    assert!(wait_http_200(port, "/").await.contains("moved"));
    let listed = fx.runtime.list().await.unwrap();
    assert_eq!(listed[0].port, Some(port), "the chosen port is recorded");
    drop(squatter);
    fx.runtime.stop(&info.id, STOP).await.unwrap();
    fx.runtime.remove_artifact(&artifact).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn a_new_runtime_reattaches_running_instances() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "still here")]);
    let manifest = manifest("reattach", Lang::Static, free_port(), None);
    let (artifact, _) = fx.build("reattach", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    wait_http_200(info.port.unwrap(), "/").await;

    // The worker restarts: a new connection with the same node label.
    let restarted = fx.reconnect();
    let listed = restarted.list().await.unwrap();
    assert_eq!(listed, vec![info.clone()]);
    assert_eq!(
        restarted.status(&info.id).await.unwrap(),
        InstanceState::Running
    );

    // The same order again (messages arrive at least once): the same instance, no duplicate.
    let again = restarted
        .start(&fx.spec(&artifact, &manifest))
        .await
        .unwrap();
    assert_eq!(again.id, info.id);
    assert_eq!(again.port, info.port);
    assert_eq!(restarted.list().await.unwrap().len(), 1);

    // Another node's runtime on the same daemon sees nothing and may touch nothing.
    let stranger = DockerRuntime::connect(config("someone-else")).unwrap();
    assert!(
        stranger
            .list()
            .await
            .unwrap()
            .iter()
            .all(|i| i.id != info.id)
    );
    assert!(matches!(
        stranger.stop(&info.id, STOP).await,
        Err(RuntimeError::NotFound { .. })
    ));

    restarted.stop(&info.id, STOP).await.unwrap();
    assert!(fx.runtime.list().await.unwrap().is_empty());
    assert!(restarted.list().await.unwrap().is_empty());
    restarted.remove_artifact(&artifact).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn an_image_in_use_is_not_removed() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "busy")]);
    let manifest = manifest("busy", Lang::Static, free_port(), None);
    let (artifact, _) = fx.build("busy", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    assert!(fx.runtime.remove_artifact(&artifact).await.is_err());
    assert!(docker_ok(&["image", "inspect", &artifact.id]).await);
    fx.runtime.stop(&info.id, STOP).await.unwrap();
    fx.runtime.remove_artifact(&artifact).await.unwrap();
    assert!(!docker_ok(&["image", "inspect", &artifact.id]).await);
}

#[tokio::test]
#[ignore = "needs docker"]
async fn cpu_use_is_measured_between_samples_within_the_limit() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dir = source(&[("index.html", "x")]);
    // Half a CPU, fully used.
    let manifest = manifest(
        "burn",
        Lang::Static,
        free_port(),
        Some("while :; do :; done"),
    );
    let (artifact, _) = fx.build("burn", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    let first = fx.runtime.stats(&info.id).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    let second = fx.runtime.stats(&info.id).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_millis(800),
        "a later sample does not wait for the daemon's second reading: {:?}",
        began.elapsed()
    );
    for sample in [first, second] {
        assert!(
            (25.0..=75.0).contains(&sample.cpu_percent),
            "about 50 % of one core: {sample:?}"
        );
    }
    fx.runtime.stop(&info.id, STOP).await.unwrap();
    fx.runtime.remove_artifact(&artifact).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker"]
async fn a_custom_images_command_is_replaced_by_the_manifests_run() {
    let fx = Fixture::new(&[BUSYBOX]).await;
    let dockerfile =
        format!("FROM {BUSYBOX}\nCOPY www /www\nENTRYPOINT [\"false\"]\nCMD [\"exit 9\"]\n");
    let dir = source(&[("Dockerfile", &dockerfile), ("www/index.html", "run wins")]);
    let manifest = manifest(
        "custom-run",
        Lang::Custom,
        free_port(),
        Some("echo run from the manifest; exec httpd -f -p $PORT -h /www"),
    );
    let (artifact, _) = fx.build("custom-run", &manifest, dir.path()).await;
    let info = fx.start(&artifact, &manifest).await;
    assert!(
        wait_http_200(info.port.unwrap(), "/")
            .await
            .contains("run wins")
    );
    wait_log(&fx.runtime, &info.id, "run from the manifest").await;
    fx.runtime.stop(&info.id, STOP).await.unwrap();
    fx.runtime.remove_artifact(&artifact).await.unwrap();
}
