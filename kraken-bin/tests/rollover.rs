//! Rollover with real processes over a real RabbitMQ: `kraken agent` nodes, each with its
//! own data dir and API port on loopback, one becoming the orchestrator; then the
//! orchestrator or its standby is SIGKILLed, or the orchestrator is cut off from the broker.
//! Figures (failover and detection times) are printed for docs/rollover.md.
#![allow(clippy::unwrap_used)]

#[path = "../../kraken-core/tests/support/git.rs"]
mod git;
#[path = "support/http.rs"]
mod http;
#[path = "support/processes.rs"]
mod processes;

use git::GitRepo;
use http::{create_deployment, http};
use kraken_core::membership::JoinSecret;
use processes::{Worker, free_port, is_app_process, one_at_a_time, sleeper_manifest, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn amqp_url() -> String {
    std::env::var("KRAKEN_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

struct Platform {
    secret: JoinSecret,
    token: String,
    prefix: String,
    dir: PathBuf,
    nodes: Vec<Node>,
}

struct Node {
    worker: Worker,
    api: String,
}

impl Node {
    fn health(&self) -> Option<Value> {
        http(
            &self.api,
            "GET",
            &format!("/health/{}", self.worker.id),
            None,
            None,
        )
        .map(|(_, v)| v)
    }
    fn is_primary(&self) -> bool {
        self.health().is_some_and(|h| h["role"] == "primary")
    }
    fn accepting(&self) -> bool {
        self.health().is_some_and(|h| h["accepting"] == true)
    }
}

impl Platform {
    fn new(dir: &Path) -> Platform {
        let secret = JoinSecret::generate().unwrap();
        Platform {
            token: secret.derive("api-token"),
            secret,
            prefix: format!("kraken-test-{}", uuid::Uuid::new_v4().simple()),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
        }
    }

    fn start(&mut self, secret: &str) -> usize {
        let i = self.nodes.len();
        let api = format!("127.0.0.1:{}", free_port());
        let url = amqp_url();
        let worker = Worker::start(
            &self.dir.join(format!("node-{i}")),
            &[
                "--runtime",
                "process",
                "--amqp",
                &url,
                "--amqp-prefix",
                &self.prefix,
                "--api-addr",
                &api,
                "--join-secret",
                secret,
                "--no-mdns",
            ],
        );
        self.nodes.push(Node { worker, api });
        i
    }

    fn primary(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.worker.alive() && n.is_primary())
    }

    fn graphql(&self, node: usize, query: &str) -> Value {
        http::graphql(&self.nodes[node].api, Some(&self.token), query)
    }

    fn candidates(&self, node: usize) -> Vec<String> {
        self.graphql(node, "{ getPlatform { candidates } }")["data"]["getPlatform"]["candidates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn deployments(&self, node: usize) -> Vec<Value> {
        self.graphql(
            node,
            "{ getDeployments { id status node statusHistory { status } } }",
        )["data"]["getDeployments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.worker.id == id).unwrap()
    }

    /// A platform of `n` nodes: node 0 leads, the others join.
    fn with_nodes(dir: &Path, n: usize) -> Platform {
        let mut p = Platform::new(dir);
        let secret = p.secret.as_text();
        p.start(&secret);
        wait_until(Duration::from_secs(60), "the first node leads", || {
            p.nodes[0].accepting()
        });
        for _ in 1..n {
            p.start(&secret);
        }
        wait_until(
            Duration::from_secs(60),
            "every node joined and a standby is ready",
            || {
                p.graphql(0, "{ getNodes { id } }")["data"]["getNodes"]
                    .as_array()
                    .map_or(0, Vec::len)
                    == n
                    && p.candidates(0).len() == n
                    && p.nodes[0].accepting()
            },
        );
        p
    }
}

fn app(name: &str) -> GitRepo {
    GitRepo::with_manifest(&sleeper_manifest(name, ""))
}

/// App processes (`sleep 600`) whose working directory is under `dir`.
fn app_processes(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            is_app_process(&e.file_name().to_string_lossy()) && cwd.starts_with(&dir)
        })
        .count()
}

#[test]
#[ignore = "needs rabbitmq"]
fn sigkill_of_the_orchestrator_with_50_deployments_in_flight() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::with_nodes(dir.path(), 4);
    let standby = p.index_of(&p.candidates(0)[1]);
    let repos: Vec<GitRepo> = (0..5).map(|i| app(&format!("roll-{i}"))).collect();
    let mut ids = Vec::new();
    for i in 0..50 {
        let v = p.graphql(0, &create_deployment(&repos[i % 5].url()));
        ids.push(
            v["data"]["createDeployment"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_owned(),
        );
    }
    let in_flight = p
        .deployments(0)
        .iter()
        .filter(|d| d["status"] != "Running")
        .count();

    // SIGKILL the orchestrator; watch the standby's API.
    p.nodes[0].worker.kill();
    let killed = Instant::now();
    let mut serving = None;
    let mut accepting = None;
    while accepting.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the standby did not take over"
        );
        if serving.is_none() && p.nodes[standby].is_primary() {
            serving = Some(killed.elapsed());
        }
        if p.nodes[standby].accepting() {
            accepting = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (serving, accepting) = (serving.unwrap_or(accepting.unwrap()), accepting.unwrap());
    // Detection: the lost node's deployments are placed again (a note in their log).
    let detected = Instant::now();
    let mut detection = None;
    let mut running = Vec::new();
    wait_until(
        Duration::from_secs(180),
        "all 50 Running on the new orchestrator",
        || {
            let all = p.deployments(standby);
            if detection.is_none()
                && all.iter().any(|d| {
                    d["statusHistory"].as_array().is_some_and(|h| {
                        h.iter()
                            .filter(|c| c["status"] == "DelegatingDeployment")
                            .count()
                            > 1
                    })
                })
            {
                detection = Some(detected.elapsed() + accepting);
            }
            running = all
                .into_iter()
                .filter(|d| d["status"] == "Running")
                .collect();
            running.len() == 50
        },
    );
    println!(
        "figures: {in_flight} of 50 in flight at the kill; failover: API serving {serving:?}, accepting changes {accepting:?}; node-loss detection (kill → first redeploy) {detection:?}"
    );
    // None lost, none duplicated: the same 50 ids, each once, and 50 app processes.
    let mut seen: Vec<String> = running
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    // The killed node's own apps outlive its agent (the process runtime detaches them so a
    // restarted agent re-attaches them); the living nodes run exactly one per deployment.
    let living: Vec<PathBuf> = (1..4)
        .map(|i| dir.path().join(format!("node-{i}")))
        .collect();
    wait_until(
        Duration::from_secs(60),
        "exactly one app process per deployment",
        || living.iter().map(|d| app_processes(d)).sum::<usize>() == 50,
    );
    // No false positive under the load of 50 deployments on this machine: the only node
    // ever declared lost, by any orchestrator, is the killed one.
    for i in 0..4 {
        let log = std::fs::read_to_string(p.dir.join(format!("node-{i}")).join("agent.log"))
            .unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("node lost")) {
            assert!(
                line.contains(&p.nodes[0].worker.id),
                "node-{i} declared a living node lost: {line}"
            );
        }
    }
    // The full history is visible at the new address: what the orchestrator recorded
    // (request, validation, placement) and what the worker reported (building, deploying,
    // running), for every deployment.
    for d in &running {
        let kinds: Vec<&str> = d["statusHistory"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["status"].as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"DeploymentRequested"), "{d}");
        for step in [
            "ValidatingDeploymentData",
            "DelegatingDeployment",
            "BuildingDeployment",
            "Deploying",
        ] {
            assert!(kinds.contains(&step), "no {step}: {d}");
        }
        assert_eq!(kinds.last(), Some(&"Running"), "{d}");
    }
    // The new orchestrator accepts work.
    let v = p.graphql(standby, &create_deployment(&repos[0].url()));
    assert!(v["data"]["createDeployment"].is_string(), "{v}");
}

#[test]
#[ignore = "needs rabbitmq"]
fn after_the_standby_dies_a_new_one_is_chosen_and_survives_the_primary() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::with_nodes(dir.path(), 4);
    let repo = app("survivor");
    for _ in 0..6 {
        let v = p.graphql(0, &create_deployment(&repo.url()));
        assert!(v["data"]["createDeployment"].is_string(), "{v}");
    }
    wait_until(Duration::from_secs(120), "6 Running", || {
        p.deployments(0)
            .iter()
            .filter(|d| d["status"] == "Running")
            .count()
            == 6
    });
    let first = p.index_of(&p.candidates(0)[1]);
    let on_first: Vec<String> = p
        .deployments(0)
        .iter()
        .filter(|d| d["node"] == p.nodes[first].worker.id.as_str())
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    p.nodes[first].worker.kill();
    let killed = Instant::now();
    if !on_first.is_empty() {
        wait_until(
            Duration::from_secs(30),
            "the lost worker's apps placed again",
            || {
                p.deployments(0).iter().any(|d| {
                    on_first.iter().any(|id| d["id"] == id.as_str())
                        && d["statusHistory"].as_array().is_some_and(|h| {
                            h.iter()
                                .filter(|c| c["status"] == "DelegatingDeployment")
                                .count()
                                > 1
                        })
                })
            },
        );
        println!(
            "figures: worker loss detection (kill → redeploy started): {:?}",
            killed.elapsed()
        );
    }
    let mut second = first;
    wait_until(
        Duration::from_secs(30),
        "a new standby chosen and accepting again",
        || {
            let c = p.candidates(0);
            if c.len() >= 2 && c[1] != p.nodes[first].worker.id {
                second = p.index_of(&c[1]);
            }
            second != first && p.nodes[0].accepting()
        },
    );
    // Let the new standby take its copy, then kill the primary.
    std::thread::sleep(Duration::from_secs(2));
    p.nodes[0].worker.kill();
    wait_until(Duration::from_secs(30), "the second standby leads", || {
        p.nodes[second].accepting()
    });
    assert_eq!(p.primary(), Some(second));
    wait_until(
        Duration::from_secs(120),
        "the 6 deployments run again",
        || {
            let all = p.deployments(second);
            all.len() == 6 && all.iter().all(|d| d["status"] == "Running")
        },
    );
    let v = p.graphql(second, &create_deployment(&repo.url()));
    assert!(v["data"]["createDeployment"].is_string(), "{v}");
}

#[test]
#[ignore = "needs rabbitmq"]
fn a_node_with_the_wrong_join_secret_is_refused_and_logged() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::with_nodes(dir.path(), 2);
    let wrong = JoinSecret::generate().unwrap().as_text();
    // Over the broker: its heartbeats are ignored and the refusal logged.
    let intruder = p.start(&wrong);
    std::thread::sleep(Duration::from_secs(4));
    let nodes = p.graphql(0, "{ getNodes { id } }")["data"]["getNodes"].clone();
    assert!(
        !nodes.to_string().contains(&p.nodes[intruder].worker.id),
        "{nodes}"
    );
    let log = std::fs::read_to_string(p.dir.join("node-0").join("agent.log")).unwrap();
    assert!(
        log.contains("join secret") && log.contains(&p.nodes[intruder].worker.id),
        "{log}"
    );
    // Over HTTP: `kraken agent --orchestrator` with the wrong secret exits with an error.
    let out = processes::command(&dir.path().join("cli.json"))
        .args([
            "agent",
            "--no-mdns",
            "--orchestrator",
            &p.nodes[0].api,
            "--join-secret",
            &wrong,
            "--data-dir",
        ])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("join secret"),
        "{stderr}"
    );
}
