//! End-to-end with Docker: an orchestrator node and a worker node running the Docker
//! runtime deploy apps from real git repositories. Needs a Docker daemon and the local test
//! images (`bash .ci/docker-test-images.sh`); ignored by default:
//!
//! ```sh
//! cargo test -p kraken-core --features docker,test-util --test docker_e2e -- --ignored
//! ```
#![cfg(feature = "docker")]
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/docker_images.rs"]
mod docker_images;
#[path = "support/git.rs"]
mod git;

use cluster::{Cluster, wait_status, wait_until};
use docker_images::{BUSYBOX, NODE, PYTHON};
use git::GitRepo;
use kraken_core::model::{DeploymentId, StatusKind};
use kraken_core::runtime::Runtime;
use kraken_core::runtime::docker::{DockerConfig, DockerRuntime, LABEL_DEPLOYMENT, LABEL_OWNER};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const DEPLOY: Duration = Duration::from_secs(120);

fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `docker <args>` output, whitespace-separated words.
fn docker_words(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn containers_of(id: &DeploymentId) -> Vec<String> {
    docker_words(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={LABEL_DEPLOYMENT}={id}"),
    ])
}

fn images_of(id: &DeploymentId) -> Vec<String> {
    docker_words(&[
        "images",
        "-q",
        "--filter",
        &format!("label={LABEL_DEPLOYMENT}={id}"),
    ])
}

/// Removes everything of a node label, and the named foreign containers, when dropped.
struct Cleanup {
    label: String,
    foreign: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_OWNER}={}", self.label);
        let mut containers = docker_words(&["ps", "-aq", "--filter", &filter]);
        containers.extend(self.foreign.iter().cloned());
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let images = docker_words(&["images", "-q", "--filter", &filter]);
        if !images.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&images)
                .output();
        }
    }
}

/// A cluster of an orchestrator and one Docker worker named `label`.
async fn docker_cluster(label: &str) -> (Cluster, Arc<DockerRuntime>) {
    for image in [BUSYBOX, PYTHON, NODE] {
        docker_images::ensure(image).await.unwrap();
    }
    let runtime = Arc::new(
        DockerRuntime::connect(
            DockerConfig::default()
                .node_label(label)
                .static_image(BUSYBOX)
                .python_image(PYTHON)
                .node_image(NODE)
                .host_ip("0.0.0.0"),
        )
        .unwrap(),
    );
    runtime.ping().await.unwrap();
    let mut cluster = Cluster::in_memory();
    cluster.add_worker(label, runtime.clone());
    cluster.wait_nodes(1).await;
    (cluster, runtime)
}

fn shipwreck(name: &str, lang: &str, port: u16, run: Option<&str>) -> String {
    let mut text = format!(
        "[app]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[config]\nport = {port}\nlang = \"{lang}\"\n"
    );
    if let Some(run) = run {
        text.push_str(&format!("run = \"{run}\"\n"));
    }
    text.push_str("\n[env]\nGREETING = \"hello through kraken\"\n\n[resources]\nmemory_mb = 64\n");
    text
}

struct AppCase {
    name: &'static str,
    repo: GitRepo,
    body: &'static str,
    log: &'static str,
}

fn apps() -> Vec<AppCase> {
    let static_site = GitRepo::with_files(&[
        ("shipwreck.toml", &shipwreck("site", "static", 8080, None)),
        ("index.html", "<h1>a static kraken</h1>\n"),
    ]);
    let python = GitRepo::with_files(&[
        (
            "shipwreck.toml",
            &shipwreck("py", "python", 8000, Some("python3 app.py")),
        ),
        (
            "app.py",
            "import http.server, os\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       self.send_response(200)\n\
             \x20       self.end_headers()\n\
             \x20       self.wfile.write(('python: ' + os.environ['GREETING']).encode())\n\
             print('python app up', flush=True)\n\
             http.server.HTTPServer(('', int(os.environ['PORT'])), H).serve_forever()\n",
        ),
    ]);
    let node = GitRepo::with_files(&[
        (
            "shipwreck.toml",
            &shipwreck("nd", "node", 3000, Some("node server.js")),
        ),
        (
            "server.js",
            "require('http').createServer((q, r) => r.end('node: ' + process.env.GREETING))\n\
             .listen(process.env.PORT, () => console.log('node app up'));\n",
        ),
    ]);
    let custom = GitRepo::with_files(&[
        ("shipwreck.toml", &shipwreck("own", "custom", 9000, None)),
        (
            "Dockerfile",
            &format!(
                "FROM {BUSYBOX}\nCOPY www /www\nCMD echo custom app up && exec httpd -f -p $PORT -h /www\n"
            ),
        ),
        ("www/index.html", "a custom kraken"),
    ]);
    vec![
        AppCase {
            name: "static",
            repo: static_site,
            body: "a static kraken",
            log: "",
        },
        AppCase {
            name: "python",
            repo: python,
            body: "python: hello through kraken",
            log: "python app up",
        },
        AppCase {
            name: "node",
            repo: node,
            body: "node: hello through kraken",
            log: "node app up",
        },
        AppCase {
            name: "custom",
            repo: custom,
            body: "a custom kraken",
            log: "custom app up",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker"]
async fn four_kinds_of_apps_run_report_and_are_destroyed_leaving_others_alone() {
    let label = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let mut cleanup = Cleanup {
        label: label.clone(),
        foreign: Vec::new(),
    };
    // A container that is not Kraken's, started by the test itself.
    let foreign = format!("not-kraken-{}", uuid::Uuid::new_v4().simple());
    let started = Command::new("docker")
        .args(["run", "-d", "--name", &foreign, BUSYBOX, "sleep", "300"])
        .output()
        .unwrap();
    assert!(started.status.success());
    cleanup.foreign.push(foreign.clone());

    let (cluster, runtime) = docker_cluster(&label).await;
    let db = cluster.db.clone();
    let cases = apps();
    let ids: Vec<DeploymentId> = cases
        .iter()
        .map(|c| db.create_deployment(&c.repo.url(), "main").unwrap().id)
        .collect();

    for (case, id) in cases.iter().zip(&ids) {
        let d = wait_status(&db, id, StatusKind::Running, DEPLOY).await;
        let port = d.port.expect("a published port");
        let mut response = None;
        wait_until(Duration::from_secs(30), || {
            response = http_get(port).filter(|r| r.starts_with("HTTP/1.") && r.contains(" 200"));
            response.is_some()
        })
        .await;
        assert!(
            response.unwrap().contains(case.body),
            "{} answers on {port}",
            case.name
        );
        // Build output and the app's own output reach the orchestrator.
        wait_until(Duration::from_secs(30), || {
            let logs = db.logs(id, None).unwrap();
            logs.iter().any(|l| l.text.contains("Successfully built"))
                && logs.iter().any(|l| l.text.contains(case.log))
        })
        .await;
        // So do resource samples.
        wait_until(Duration::from_secs(30), || {
            db.deployment(id)
                .unwrap()
                .stats
                .is_some_and(|s| s.mem_bytes > 0 && s.mem_limit_bytes == Some(64 << 20))
        })
        .await;
        assert_eq!(containers_of(id).len(), 1, "{}: one container", case.name);
    }
    assert_eq!(runtime.list().await.unwrap().len(), cases.len());

    for (case, id) in cases.iter().zip(&ids) {
        db.request_destroy(id).unwrap();
        wait_status(&db, id, StatusKind::Destroyed, DEPLOY).await;
        wait_until(Duration::from_secs(30), || {
            containers_of(id).is_empty() && images_of(id).is_empty()
        })
        .await;
        assert!(
            containers_of(id).is_empty(),
            "{}: container removed",
            case.name
        );
    }
    assert!(runtime.list().await.unwrap().is_empty());

    let running = docker_words(&["inspect", "-f", "{{.State.Running}}", &foreign]);
    assert_eq!(
        running,
        vec!["true"],
        "the container that is not Kraken's still runs"
    );
    cluster.shutdown().await;
    drop(cleanup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker"]
async fn a_restarted_worker_reattaches_its_containers() {
    let label = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = Cleanup {
        label: label.clone(),
        foreign: Vec::new(),
    };
    let (mut cluster, runtime) = docker_cluster(&label).await;
    let db = cluster.db.clone();
    let port = free_port();
    let repo = GitRepo::with_files(&[
        ("shipwreck.toml", &shipwreck("kept", "static", port, None)),
        ("index.html", "still here"),
    ]);
    let id = db.create_deployment(&repo.url(), "main").unwrap().id;
    let before = wait_status(&db, &id, StatusKind::Running, DEPLOY).await;
    assert_eq!(before.port, Some(port), "the manifest port was free");

    cluster.stop_worker(0).await;
    assert!(
        http_get(port).is_some_and(|r| r.contains("still here")),
        "apps keep running while their worker is down"
    );
    cluster.restart_worker(0);
    // The restarted worker reports it again; nothing was started twice.
    wait_until(Duration::from_secs(20), || {
        db.deployment(&id)
            .unwrap()
            .stats
            .is_some_and(|s| s.at > before.stats.map(|b| b.at).unwrap_or_default())
    })
    .await;
    let after = db.deployment(&id).unwrap();
    assert_eq!(after.status.kind(), StatusKind::Running);
    assert_eq!(after.instance, before.instance);
    assert_eq!(containers_of(&id).len(), 1, "no duplicate container");
    assert_eq!(runtime.list().await.unwrap().len(), 1);

    db.request_destroy(&id).unwrap();
    wait_status(&db, &id, StatusKind::Destroyed, DEPLOY).await;
    wait_until(Duration::from_secs(30), || containers_of(&id).is_empty()).await;
    assert!(http_get(port).is_none(), "nothing answers any more");
    cluster.shutdown().await;
}
