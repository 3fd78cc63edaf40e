//! Several `kraken` processes over a real RabbitMQ: an orchestrator (`kraken up --amqp
//! --no-worker`) and two workers (`kraken agent --orchestrator <addr>`, which learn the
//! broker from the orchestrator's platform info). Each test uses its own queue prefix.
#![allow(clippy::unwrap_used)]

#[path = "../../kraken-core/tests/support/git.rs"]
mod git;
#[path = "support/http.rs"]
mod http;
#[path = "support/processes.rs"]
mod processes;

use git::GitRepo;
use processes::{Orchestrator, Worker, sleeper_manifest, wait_until};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

fn amqp_url() -> String {
    std::env::var("KRAKEN_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

/// An orchestrator and two workers, on a fresh queue prefix.
fn platform(dir: &std::path::Path) -> (Orchestrator, Vec<Worker>) {
    let prefix = format!("kraken-test-{}", uuid::Uuid::new_v4().simple());
    let url = amqp_url();
    let orchestrator = Orchestrator::start(
        dir,
        &[
            "--runtime",
            "process",
            "--no-worker",
            "--node-timeout-ms",
            "3000",
            "--amqp",
            &url,
            "--amqp-prefix",
            &prefix,
        ],
    );
    let secret = std::fs::read_to_string(dir.join("data").join("join-secret")).unwrap();
    let workers: Vec<Worker> = (0..2)
        .map(|i| {
            Worker::start(
                &dir.join(format!("worker-{i}")),
                &[
                    "--runtime",
                    "process",
                    "--orchestrator",
                    &orchestrator.addr,
                    "--no-mdns",
                    "--api-addr",
                    "127.0.0.1:0",
                    "--join-secret",
                    secret.trim(),
                    "--amqp-prefix",
                    &prefix,
                ],
            )
        })
        .collect();
    wait_until(Duration::from_secs(30), "both workers joined", || {
        orchestrator.json(&["nodes"]).as_array().map_or(0, Vec::len) == 2
    });
    (orchestrator, workers)
}

fn app(name: &str, extra: &str) -> GitRepo {
    GitRepo::with_manifest(&sleeper_manifest(name, extra))
}

/// A GraphQL query over plain HTTP (queries need no token by default).
fn graphql(addr: &str, query: &str) -> Value {
    http::graphql(addr, None, query)
}

fn deploy(orchestrator: &Orchestrator, url: &str) -> String {
    orchestrator.json(&["deploy", url])["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "needs rabbitmq"]
fn twenty_apps_run_spread_over_two_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (orchestrator, workers) = platform(dir.path());
    let repos: Vec<GitRepo> = (0..4).map(|i| app(&format!("multi-{i}"), "")).collect();
    let ids: Vec<String> = (0..20)
        .map(|i| deploy(&orchestrator, &repos[i % 4].url()))
        .collect();
    let mut running: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(120), "20 deployments Running", || {
        running = orchestrator
            .deployments()
            .into_iter()
            .filter(|d| d["status"] == "Running")
            .collect();
        running.len() == 20
    });
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for d in &running {
        assert!(ids.contains(&d["id"].as_str().unwrap().to_owned()));
        *per_node
            .entry(d["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for w in &workers {
        let n = per_node.get(&w.id).copied().unwrap_or(0);
        assert_eq!(n, 10, "worker {} runs {n} of 20: {per_node:?}", w.id);
    }
}

#[test]
#[ignore = "needs rabbitmq"]
fn a_worker_killed_mid_deploy_has_its_deployment_run_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (orchestrator, mut workers) = platform(dir.path());
    // The build takes a while, so the worker is killed in the middle of it.
    let repo = app("slow-build", "build = \"sleep 5\"\n");
    let id = deploy(&orchestrator, &repo.url());
    let mut building = Value::Null;
    wait_until(
        Duration::from_secs(60),
        "the deployment is building",
        || {
            building = orchestrator
                .deployments()
                .into_iter()
                .find(|d| d["id"] == id.as_str())
                .unwrap_or_default();
            building["status"] == "BuildingDeployment"
        },
    );
    let victim = building["node"].as_str().unwrap().to_owned();
    let i = workers.iter().position(|w| w.id == victim).unwrap();
    workers[i].kill();
    let survivor = workers[1 - i].id.clone();

    let mut done = Value::Null;
    wait_until(
        Duration::from_secs(90),
        "the deployment runs on the other worker",
        || {
            done = orchestrator
                .deployments()
                .into_iter()
                .find(|d| d["id"] == id.as_str())
                .unwrap_or_default();
            done["status"] == "Running" && done["node"] == survivor.as_str()
        },
    );
    assert_eq!(
        done["generation"], 2,
        "placed again as a new generation: {done}"
    );
    let full = graphql(
        &orchestrator.addr,
        &format!("{{ getDeployment(deploymentId: \"{id}\") {{ statusHistory {{ status }} }} }}"),
    );
    let history: Vec<&str> = full["data"]["getDeployment"]["statusHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history
            .iter()
            .filter(|s| **s == "DelegatingDeployment")
            .count(),
        2,
        "{history:?}"
    );
    assert_eq!(history.last(), Some(&"Running"));
    let nodes: Vec<String> = orchestrator
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(nodes, vec![survivor], "the killed worker was removed");
}
