//! End-to-end with real processes: a Python app from a real git repository, deployed by a
//! single-node platform (orchestrator + worker in one agent, as `kraken up` runs it),
//! answers HTTP on its port; destroying it frees the port.
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/git.rs"]
mod git;

use cluster::{orchestrator_config, wait_status, wait_until, worker_config};
use git::{GitRepo, manifest};
use kraken_core::agent::Agent;
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::OrchestrationExecutor;
use kraken_core::executor::worker::WorkerExecutor;
use kraken_core::model::{NodeId, StatusKind};
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::state::{Database, StateConfig};
use kraken_core::transport::memory::MemoryBroker;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_answers_http_and_destroy_frees_its_port() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let repo = GitRepo::with_files(&[
        (
            "shipwreck.toml",
            &manifest(
                "hello-py",
                port,
                "python3 -m http.server $PORT --bind 127.0.0.1",
                &[("GREETING", "hi")],
            ),
        ),
        ("index.html", "<h1>hello from kraken</h1>\n"),
    ]);
    let db = Database::open(&data.path().join("orchestrator"), StateConfig::default())
        .await
        .unwrap();
    let agent = Agent::builder(NodeId::random())
        .transport(Arc::new(MemoryBroker::default().transport()))
        .runtime(Arc::new(ProcessRuntime::new(data.path().join("runtime"))))
        .config(NodeConfig {
            data_dir: Some(data.path().to_path_buf()),
            address: "127.0.0.1".into(),
            ..NodeConfig::default()
        })
        .executor(OrchestrationExecutor::new(
            Arc::clone(&db),
            orchestrator_config(),
        ))
        .executor(WorkerExecutor::new(worker_config()))
        .build()
        .unwrap()
        .spawn();

    let id = db.create_deployment(&repo.url(), "main").unwrap().id;
    let d = wait_status(&db, &id, StatusKind::Running, Duration::from_secs(30)).await;
    assert_eq!(
        d.port,
        Some(port),
        "the manifest port was free, so it is used"
    );
    assert_eq!(
        d.url.as_deref(),
        Some(format!("http://127.0.0.1:{port}/").as_str())
    );
    let mut body = None;
    wait_until(Duration::from_secs(15), || {
        body = http_get(port, "/index.html");
        body.is_some()
    })
    .await;
    let body = body.unwrap();
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(body.contains("hello from kraken"), "{body}");
    // The app's own output reaches the deployment log (http.server logs requests on stderr).
    wait_until(Duration::from_secs(15), || {
        db.logs(&id, None)
            .unwrap()
            .iter()
            .any(|l| l.text.contains("GET /index.html"))
    })
    .await;

    db.request_destroy(&id).unwrap();
    wait_status(&db, &id, StatusKind::Destroyed, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(10), || {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(
        http_get(port, "/").is_none(),
        "nothing answers on the port any more"
    );
    agent.shutdown().await.unwrap();
}
