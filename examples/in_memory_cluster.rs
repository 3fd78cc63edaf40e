//! An orchestrator and three workers in one process, deploying a sample app.
//!
//! Run it with `cargo run -p kraken-examples --example in_memory_cluster` (needs `git` and
//! `python3`). It makes a git repository holding a tiny Python web app, starts four nodes on
//! one in-memory broker — an orchestrator and three workers, each worker with its own
//! process runtime — deploys three copies of the app (on ports 8081-8083: the workers share
//! this one machine), prints where each copy runs and what it answers, then destroys them.

use anyhow::{Context, Result, bail};
use kraken_core::agent::Agent;
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::{OrchestrationExecutor, OrchestratorConfig};
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::model::{NodeId, StatusKind};
use kraken_core::runtime::fake::FakeRuntime;
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::state::{Database, StateConfig};
use kraken_core::transport::memory::MemoryBroker;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=Kraken Example",
            "-c",
            "user.email=example@kraken.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .context("git must be installed")?;
    if !status.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// A repository with a Python app that says which port it serves.
fn sample_app(dir: &Path, port: u16) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("shipwreck.toml"),
        format!(
            "[app]\nname = \"hello\"\nversion = \"1.0.0\"\n\n[config]\nport = {port}\nlang = \"python\"\nrun = \"python3 app.py\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("app.py"),
        "import http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
                 body = f\"hello from port {os.environ['PORT']}\\n\".encode()\n        \
                 self.send_response(200); self.end_headers(); self.wfile.write(body)\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
    )?;
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "hello"])?;
    Ok(format!("file://{}", dir.display()))
}

fn get(url: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().last().unwrap_or_default().to_owned())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let work = tempfile::tempdir()?;
    let urls: Vec<String> = (0..3)
        .map(|i| sample_app(&work.path().join(format!("repo-{i}")), 8081 + i))
        .collect::<Result<_>>()?;

    let broker = MemoryBroker::default();
    let db = Database::in_memory(StateConfig::default());
    let orchestrator = Agent::builder(NodeId::parse("orchestrator")?)
        .transport(Arc::new(broker.transport()))
        // The orchestrator node runs no apps itself here.
        .runtime(Arc::new(FakeRuntime::new()))
        .executor(OrchestrationExecutor::new(
            Arc::clone(&db),
            OrchestratorConfig::default(),
        ))
        .build()?
        .spawn();
    let mut workers = Vec::new();
    for i in 0..3 {
        let data = work.path().join(format!("worker-{i}"));
        let agent = Agent::builder(NodeId::parse(&format!("worker-{i}"))?)
            .transport(Arc::new(broker.transport()))
            .runtime(Arc::new(ProcessRuntime::new(data.join("runtime"))))
            .config(NodeConfig {
                data_dir: Some(data),
                address: "127.0.0.1".into(),
                ..NodeConfig::default()
            })
            .executor(WorkerExecutor::new(WorkerConfig::default()))
            .build()?
            .spawn();
        workers.push(agent);
    }
    while db.nodes().len() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("3 workers joined");

    let ids: Vec<_> = urls
        .iter()
        .map(|url| db.create_deployment(url, "main").map(|d| d.id))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        loop {
            let d = db.deployment(id).context("deployment exists")?;
            match d.status.kind() {
                StatusKind::Running => {
                    let url = d.url.clone().unwrap_or_default();
                    let node = d.node.map(|n| n.to_string()).unwrap_or_default();
                    // The app may need a moment to open its socket.
                    let mut answer = String::new();
                    for _ in 0..50 {
                        if let Ok(a) = get(&url) {
                            answer = a;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    println!("{id} runs on {node} at {url}: {answer}");
                    if !answer.contains(&format!("port {}", d.port.unwrap_or_default())) {
                        bail!("{id} did not answer on its own port");
                    }
                    break;
                }
                StatusKind::Errored => bail!("{id} failed: {}", d.status),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    for id in &ids {
        db.request_destroy(id)?;
    }
    while !ids.iter().all(|id| {
        db.deployment(id)
            .is_some_and(|d| d.status.kind() == StatusKind::Destroyed)
    }) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("all destroyed");
    for w in workers {
        w.shutdown().await?;
    }
    orchestrator.shutdown().await?;
    Ok(())
}
