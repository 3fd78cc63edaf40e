//! API speed: `getDeployments` (the original platform's query) with 10,000 deployments in
//! the database, over HTTP on loopback. The deployments are written straight into an
//! in-memory database (no workers): what is measured is the API.
//!
//! Run: `cargo bench -p kraken-benches --bench api`. Besides criterion's timing it prints
//! the p50 and p99 latency of 100 sequential requests and the response size.

use criterion::{Criterion, criterion_group, criterion_main};
use kraken_core::api::{ApiConfig, ApiState, serve};
use kraken_core::manifest::Manifest;
use kraken_core::model::{DeploymentStatus, InstanceStats, NodeId, Timestamp};
use kraken_core::state::{Database, StateConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEPLOYMENTS: usize = 10_000;
const SAMPLES: usize = 100;
const QUERY: &str = "{ getDeployments { id srcUrl version commit status memMb maxMemMb cpuUsage size port statusHistory { status time } resultsUrl deploymentUrl node } }";

/// A database holding `n` running deployments spread over 10 nodes, each with a manifest,
/// a commit, a port, a URL, stats and a full status history.
fn database(n: usize) -> Arc<Database> {
    let db = Database::in_memory(StateConfig::default());
    let manifest = Manifest::parse(
        "[app]\nname = \"bench\"\nversion = \"1.2.3\"\n\n[config]\nport = 8080\nlang = \"python\"\nrun = \"python3 app.py\"\n",
    )
    .expect("manifest");
    let nodes: Vec<NodeId> = (0..10)
        .map(|i| NodeId::parse(&format!("node-{i}")).expect("id"))
        .collect();
    for i in 0..n {
        let d = db
            .create_deployment(&format!("https://git.example/team/app-{i}.git"), "main")
            .expect("create");
        let node = nodes[i % nodes.len()].clone();
        let manifest = manifest.clone();
        db.update(&d.id, move |d| {
            let now = Timestamp::now();
            for status in [
                DeploymentStatus::ValidatingDeploymentData,
                DeploymentStatus::RetrievingApplicationData,
                DeploymentStatus::DelegatingDeployment,
                DeploymentStatus::BuildingDeployment,
                DeploymentStatus::Deploying,
                DeploymentStatus::Running,
            ] {
                d.transition(status, now).expect("legal");
            }
            d.commit = Some(format!("{i:040x}"));
            d.manifest = Some(manifest);
            d.node = Some(node);
            let port = 20_000 + (i % 40_000) as u16;
            d.port = Some(port);
            d.url = Some(format!("http://192.168.1.{}:{port}/", 10 + i % 10));
            d.stats = Some(InstanceStats {
                cpu_percent: 1.5,
                mem_bytes: 48 << 20,
                mem_limit_bytes: Some(256 << 20),
                at: now,
            });
        });
    }
    db
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn request(http: &reqwest::Client, url: &str) -> usize {
    let response = http
        .post(url)
        .json(&serde_json::json!({ "query": QUERY }))
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "HTTP {}", response.status());
    let body = response.bytes().await.expect("body");
    assert!(
        !body.starts_with(b"{\"errors\""),
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    body.len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = database(DEPLOYMENTS);
    let stop = tokio_util::sync::CancellationToken::new();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = ApiState::new(Arc::clone(&db), ApiConfig::default()).expect("state");
        let signal = stop.clone();
        tokio::spawn(serve(
            listener,
            state,
            async move { signal.cancelled().await },
        ));
        format!("http://{addr}/graphql")
    });
    let http = reqwest::Client::new();

    // The figures of the note.
    let (size, mut latencies) = rt.block_on(async {
        let size = request(&http, &url).await; // warm-up
        let mut latencies = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            request(&http, &url).await;
            latencies.push(start.elapsed());
        }
        (size, latencies)
    });
    latencies.sort();
    println!(
        "getDeployments, {DEPLOYMENTS} deployments, {SAMPLES} requests over HTTP on loopback: p50 {:.2?}, p99 {:.2?}, max {:.2?}; response {:.1} MB",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        size as f64 / 1e6
    );

    let mut group = c.benchmark_group("api");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("getDeployments_10k", |b| {
        b.to_async(&rt).iter(|| request(&http, &url))
    });
    group.finish();
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
