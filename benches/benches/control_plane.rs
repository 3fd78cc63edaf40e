//! Control-plane speed: how fast the orchestrator validates, places and gets deployments
//! Running on 100 simulated workers (fake runtime, in-memory transport, a source that
//! needs no git), and the request→Running latency of each deployment.
//!
//! Run: `cargo bench -p kraken-benches --bench control_plane`. Besides criterion's timing
//! of a batch, it prints placements per second and latency percentiles of a 1,000
//! deployment run.

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use kraken_core::agent::{Agent, AgentHandle};
use kraken_core::executor::orchestrator::{OrchestrationExecutor, OrchestratorConfig};
use kraken_core::executor::probe::StaticProbe;
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::model::{DeploymentId, NodeId, NodeStats, StatusKind};
use kraken_core::runtime::fake::FakeRuntime;
use kraken_core::source::{Checkout, Fetcher, SourceError};
use kraken_core::state::{Database, StateConfig, StateEvent};
use kraken_core::transport::memory::MemoryBroker;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 100;
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A source that writes a manifest instead of cloning: git is not what is measured.
struct StaticSource;

#[async_trait]
impl Fetcher for StaticSource {
    async fn head_commit(&self, _url: &str, _branch: &str) -> Result<String, SourceError> {
        Ok(COMMIT.to_owned())
    }
    async fn fetch(
        &self,
        _url: &str,
        _branch: &str,
        _commit: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, SourceError> {
        let io = |source| SourceError::Io {
            path: dest.to_path_buf(),
            source,
        };
        tokio::fs::create_dir_all(dest).await.map_err(io)?;
        tokio::fs::write(
            dest.join("shipwreck.toml"),
            "[app]\nname = \"bench\"\n\n[config]\nport = 8080\nlang = \"python\"\nrun = \"true\"\n",
        )
        .await
        .map_err(io)?;
        Ok(Checkout {
            dir: dest.to_path_buf(),
            commit: COMMIT.to_owned(),
        })
    }
}

struct Platform {
    db: Arc<Database>,
    agents: Vec<AgentHandle>,
}

async fn platform() -> Platform {
    let broker = MemoryBroker::default();
    let db = Database::in_memory(StateConfig::default());
    let source: Arc<dyn Fetcher> = Arc::new(StaticSource);
    let mut agents = vec![
        Agent::builder(NodeId::random())
            .transport(Arc::new(broker.transport()))
            .runtime(Arc::new(FakeRuntime::new()))
            .executor(OrchestrationExecutor::new(
                Arc::clone(&db),
                OrchestratorConfig {
                    source: Arc::clone(&source),
                    node_timeout: Duration::from_secs(30),
                    max_parallel_validations: 64,
                    ..OrchestratorConfig::default()
                },
            ))
            .build()
            .expect("orchestrator")
            .spawn(),
    ];
    let probe = Arc::new(StaticProbe(NodeStats {
        ram_total_mb: 4096,
        ram_free_mb: 2048,
        cpus: 4,
        ..NodeStats::default()
    }));
    for _ in 0..WORKERS {
        agents.push(
            Agent::builder(NodeId::random())
                .transport(Arc::new(broker.transport()))
                .runtime(Arc::new(FakeRuntime::new()))
                .executor(WorkerExecutor::new(WorkerConfig {
                    source: Arc::clone(&source),
                    probe: probe.clone(),
                    sysinfo_interval: Duration::from_secs(2),
                    stats_interval: Duration::from_secs(3600),
                    max_parallel_deployments: 8,
                    ..WorkerConfig::default()
                }))
                .build()
                .expect("worker")
                .spawn(),
        );
    }
    while db.nodes().len() < WORKERS {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Platform { db, agents }
}

/// Creates `n` deployments at once and waits until all run. Returns the time that took and
/// each deployment's request→Running latency.
async fn batch(db: &Arc<Database>, n: usize) -> (Duration, Vec<Duration>) {
    let mut events = db.subscribe();
    let start = Instant::now();
    let mut requested: HashMap<DeploymentId, Instant> = HashMap::new();
    for _ in 0..n {
        let d = db
            .create_deployment("https://git.example/app.git", "main")
            .expect("create");
        requested.insert(d.id, Instant::now());
    }
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        match events.recv().await {
            Ok(StateEvent::Deployment { id, status, .. })
                if status.kind() == StatusKind::Running =>
            {
                if let Some(at) = requested.remove(&id) {
                    latencies.push(at.elapsed());
                }
            }
            Ok(StateEvent::Deployment { id, status, .. })
                if status.kind() == StatusKind::Errored =>
            {
                panic!("{id} failed: {status}");
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Fall back to reading the state for what was missed.
                for (id, _) in requested.clone() {
                    if db
                        .deployment(&id)
                        .is_some_and(|d| d.status.kind() == StatusKind::Running)
                        && let Some(at) = requested.remove(&id)
                    {
                        latencies.push(at.elapsed());
                    }
                }
            }
            Err(e) => panic!("events closed: {e}"),
        }
    }
    (start.elapsed(), latencies)
}

async fn destroy_all(db: &Arc<Database>) {
    let ids: Vec<DeploymentId> = db
        .deployments()
        .into_iter()
        .filter(|d| d.status.kind() == StatusKind::Running)
        .map(|d| d.id)
        .collect();
    for id in &ids {
        let _ = db.request_destroy(id);
    }
    while db
        .deployments()
        .iter()
        .any(|d| d.status.kind() != StatusKind::Destroyed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let p = rt.block_on(platform());

    // The figures of the note: one run of 1,000 deployments.
    let (elapsed, mut latencies) = rt.block_on(batch(&p.db, 1000));
    latencies.sort();
    println!(
        "control plane, {WORKERS} workers, 1000 deployments: {:.0} placements/s (all Running in {:.2?}); request→Running p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        1000.0 / elapsed.as_secs_f64(),
        elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    rt.block_on(destroy_all(&p.db));

    // Latency of one request at a time (no queueing behind other deployments).
    let mut alone = Vec::new();
    for _ in 0..200 {
        let (_, l) = rt.block_on(batch(&p.db, 1));
        alone.extend(l);
    }
    alone.sort();
    println!(
        "control plane, {WORKERS} workers, 200 sequential deployments: request→Running p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        alone[alone.len() - 1],
    );
    rt.block_on(destroy_all(&p.db));

    let mut group = c.benchmark_group("control_plane");
    group.sample_size(10);
    group.bench_function("100_deployments_to_running_on_100_workers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (elapsed, _) = rt.block_on(batch(&p.db, 100));
                total += elapsed;
                rt.block_on(destroy_all(&p.db));
            }
            total
        });
    });
    group.finish();
    rt.block_on(async {
        for a in p.agents {
            let _ = a.shutdown().await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
