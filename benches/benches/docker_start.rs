//! Starting a prebuilt image until it answers HTTP 200: the Docker runtime's `start` against
//! `docker run` of the same image with the same port mapping, in the same run.
//!
//! ```sh
//! bash .ci/docker-test-images.sh busybox   # the local base image (nothing is pulled)
//! cargo bench -p kraken-benches --bench docker_start
//! ```
//!
//! Both sides run the same container: the image built once by the runtime (a static site
//! served by busybox httpd), `--init`, the manifest's port published on a free host port.
//! The time runs from the call (`Runtime::start`, or spawning the `docker` CLI) until a GET
//! answers 200, polled the same way for both; removing the container is not timed. The
//! ratio of the medians is printed at the end. Without a Docker daemon the bench says so and
//! measures nothing.

#[path = "../../kraken-core/tests/support/docker_images.rs"]
mod docker_images;

use criterion::{Criterion, SamplingMode};
use kraken_core::manifest::{AppSection, ConfigSection, Lang, Manifest, Resources};
use kraken_core::model::{DeploymentId, NodeId};
use kraken_core::runtime::docker::{DockerConfig, DockerRuntime};
use kraken_core::runtime::{Artifact, BuildRequest, Runtime, StartSpec};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const CONTAINER_PORT: u16 = 8080;
const POLL: Duration = Duration::from_millis(5);
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Every measured duration, per side, for the ratio printed at the end.
static KRAKEN: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
static CLI: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

struct Setup {
    runtime: DockerRuntime,
    node: NodeId,
    artifact: Artifact,
    manifest: Manifest,
    label: String,
}

fn manifest() -> Manifest {
    Manifest {
        app: AppSection {
            name: "bench-site".into(),
            version: "1.0.0".into(),
            author: None,
            endpoint: None,
        },
        config: ConfigSection {
            port: CONTAINER_PORT,
            lang: Lang::Static,
            run: None,
            build: None,
        },
        env: BTreeMap::new(),
        resources: Resources::default(),
    }
}

async fn setup() -> Result<Setup, String> {
    docker_images::ensure(docker_images::BUSYBOX).await?;
    let label = format!("bench-{}", std::process::id());
    let config = DockerConfig::default()
        .node_label(&label)
        .static_image(docker_images::BUSYBOX);
    let runtime = DockerRuntime::connect(config).map_err(|e| e.to_string())?;
    runtime.ping().await.map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("index.html"), "bench").map_err(|e| e.to_string())?;
    let manifest = manifest();
    let request = BuildRequest {
        deployment: DeploymentId::random(),
        generation: 1,
        source_dir: dir.path().to_path_buf(),
        manifest: manifest.clone(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let artifact = runtime
        .build(&request, tx)
        .await
        .map_err(|e| e.to_string())?;
    let _ = drain.await;
    Ok(Setup {
        node: NodeId::parse(&label).map_err(|e| e.to_string())?,
        runtime,
        artifact,
        manifest,
        label,
    })
}

async fn answers_200(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok()
        && head.starts_with(b"HTTP/1.")
        && &head[9..12] == b"200"
}

async fn wait_200(port: u16) {
    let deadline = Instant::now() + READY_LIMIT;
    while !answers_200(port).await {
        assert!(Instant::now() < deadline, "port {port} never answered 200");
        tokio::time::sleep(POLL).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_080)
}

/// One `Runtime::start` until 200; the stop is not timed.
async fn kraken_once(s: &Setup) -> Duration {
    let mut manifest = s.manifest.clone();
    manifest.config.port = CONTAINER_PORT;
    let spec = StartSpec {
        node: s.node.clone(),
        artifact: s.artifact.clone(),
        manifest,
        env: BTreeMap::new(),
    };
    let began = Instant::now();
    let info = s.runtime.start(&spec).await.expect("start");
    wait_200(info.port.expect("a port")).await;
    let took = began.elapsed();
    s.runtime
        .stop(&info.id, Duration::from_secs(5))
        .await
        .expect("stop");
    took
}

/// One `docker run` of the same image with the same mapping until 200; the removal is not
/// timed.
async fn cli_once(s: &Setup) -> Duration {
    let name = format!("kraken-bench-cli-{}", uuid_like());
    let port = free_port();
    let began = Instant::now();
    let out = Command::new("docker")
        .args(["run", "-d", "--init", "--name", &name])
        .args(["-p", &format!("0.0.0.0:{port}:{CONTAINER_PORT}")])
        .args(["-e", &format!("PORT={CONTAINER_PORT}")])
        .arg(&s.artifact.id)
        .output()
        .await
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_200(port).await;
    let took = began.elapsed();
    let _ = Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .await;
    took
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn median(samples: &[Duration]) -> Option<Duration> {
    let mut v = samples.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, s: &Setup) {
    let mut group = c.benchmark_group("docker_start_until_http_200");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    // Interleaved order would be fairer still, but criterion runs one function at a time;
    // both run back to back in the same process on the same image.
    group.bench_function("kraken_runtime_start", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let took = kraken_once(s).await;
                KRAKEN.lock().map(|mut v| v.push(took)).ok();
                total += took;
            }
            total
        })
    });
    group.bench_function("docker_run_cli", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let took = cli_once(s).await;
                CLI.lock().map(|mut v| v.push(took)).ok();
                total += took;
            }
            total
        })
    });
    group.finish();
}

fn main() {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docker_start: no tokio runtime: {e}");
            return;
        }
    };
    let s = match rt.block_on(setup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("docker_start: skipped, Docker is not usable here: {e}");
            return;
        }
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rt, &s);
    c.final_summary();

    let kraken = KRAKEN.lock().map(|v| v.clone()).unwrap_or_default();
    let cli = CLI.lock().map(|v| v.clone()).unwrap_or_default();
    if let (Some(k), Some(d)) = (median(&kraken), median(&cli)) {
        println!(
            "docker_start: median until HTTP 200: kraken start {:.1} ms ({} runs), docker run {:.1} ms ({} runs), ratio {:.2}x",
            k.as_secs_f64() * 1e3,
            kraken.len(),
            d.as_secs_f64() * 1e3,
            cli.len(),
            k.as_secs_f64() / d.as_secs_f64()
        );
    }

    let _ = rt.block_on(s.runtime.remove_artifact(&s.artifact));
    // Anything left by an interrupted run of this process.
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -aq --filter label=io.kraken.owner={0} | xargs -r docker rm -f; docker images -q --filter label=io.kraken.owner={0} | xargs -r docker rmi -f",
            s.label
        ))
        .output();
}
