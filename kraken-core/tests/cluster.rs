//! End-to-end: one orchestrator and three workers in one process, on the in-memory
//! transport and the fake runtime, deploying from real git repositories.
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/git.rs"]
mod git;

use bytes::Bytes;
use cluster::{Cluster, wait_status, wait_until};
use git::{GitRepo, manifest};
use kraken_core::model::{DeploymentId, DeploymentStatus, NodeId, StatusKind};
use kraken_core::runtime::Runtime;
use kraken_core::runtime::fake::{FakeCall, FakeRuntime};
use kraken_core::state::{Database, StateConfig, StateError};
use kraken_core::transport::{Transport, TransportExt};
use kraken_core::wire::{self, Envelope};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

async fn three_workers() -> (Cluster, Vec<Arc<FakeRuntime>>) {
    let mut cluster = Cluster::in_memory();
    let mut fakes = Vec::new();
    for i in 0..3 {
        let fake = Arc::new(FakeRuntime::new());
        cluster.add_worker(&format!("worker-{i}"), fake.clone() as Arc<dyn Runtime>);
        fakes.push(fake);
    }
    cluster.wait_nodes(3).await;
    (cluster, fakes)
}

fn starts(fake: &FakeRuntime) -> usize {
    fake.calls()
        .iter()
        .filter(|c| matches!(c, FakeCall::Start { .. }))
        .count()
}

/// `n` deployments of `repo`, once all of them run.
async fn deploy_running(cluster: &Cluster, repo: &GitRepo, n: usize) -> Vec<DeploymentId> {
    let ids: Vec<_> = (0..n)
        .map(|_| {
            cluster
                .db
                .create_deployment(&repo.url(), "main")
                .unwrap()
                .id
        })
        .collect();
    for id in &ids {
        wait_status(&cluster.db, id, StatusKind::Running, LIMIT).await;
    }
    ids
}

fn app(name: &str) -> GitRepo {
    GitRepo::with_manifest(&manifest(name, 8080, "python3 -m http.server $PORT", &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_deployments_run_spread_over_the_workers() {
    let (cluster, fakes) = three_workers().await;
    let repos: Vec<GitRepo> = (0..3).map(|i| app(&format!("app-{i}"))).collect();
    let ids: Vec<_> = (0..30)
        .map(|i| {
            cluster
                .db
                .create_deployment(&repos[i % 3].url(), "main")
                .unwrap()
                .id
        })
        .collect();
    let mut per_node: HashMap<NodeId, usize> = HashMap::new();
    for id in &ids {
        let d = wait_status(&cluster.db, id, StatusKind::Running, LIMIT).await;
        let repo = repos.iter().find(|r| r.url() == d.source_url).unwrap();
        assert_eq!(
            d.commit.as_deref(),
            Some(repo.head().as_str()),
            "deployed the branch head"
        );
        assert!(
            d.port.is_some() && d.url.is_some() && d.instance.is_some(),
            "running deployments report where: {d:?}"
        );
        *per_node.entry(d.node.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "every worker got deployments: {per_node:?}"
    );
    for (node, count) in &per_node {
        assert_eq!(*count, 10, "{node} got {count} of 30: {per_node:?}");
    }
    let total: usize = fakes.iter().map(|f| f.running().len()).sum();
    assert_eq!(total, 30, "exactly one instance per deployment");
    // The history of each records the whole path.
    let d = cluster.db.deployment(&ids[0]).unwrap();
    let path: Vec<StatusKind> = d.history.iter().map(|c| c.status.kind()).collect();
    assert_eq!(path.first(), Some(&StatusKind::DeploymentRequested));
    assert!(path.contains(&StatusKind::ValidatingDeploymentData));
    assert!(path.contains(&StatusKind::RetrievingApplicationData));
    assert!(path.contains(&StatusKind::DelegatingDeployment));
    assert_eq!(path.last(), Some(&StatusKind::Running));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_runs_the_new_commit_and_stops_the_old_instance() {
    let (cluster, fakes) = three_workers().await;
    let repo = app("web");
    let first = repo.head();
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    let d = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    assert_eq!(d.commit.as_deref(), Some(first.as_str()));
    let old_instance = d.instance.clone().unwrap();

    // Nothing new on the branch: a redeploy request goes back to Running, same instance.
    cluster.db.request_redeploy(&id).unwrap();
    wait_until(LIMIT, || {
        let d = cluster.db.deployment(&id).unwrap();
        d.status == DeploymentStatus::Running && d.history.len() > 8
    })
    .await;
    assert_eq!(
        cluster.db.deployment(&id).unwrap().instance.as_ref(),
        Some(&old_instance)
    );

    let second = repo.commit(&[("index.html", "v2")], "v2");
    cluster.db.request_redeploy(&id).unwrap();
    wait_until(LIMIT, || {
        cluster.db.deployment(&id).unwrap().commit.as_deref() == Some(second.as_str())
    })
    .await;
    let d = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    assert_eq!(d.generation, 2);
    assert_ne!(d.instance.as_ref(), Some(&old_instance));
    let running: Vec<_> = fakes
        .iter()
        .flat_map(|f| f.running())
        .filter(|i| i.deployment == id)
        .collect();
    assert_eq!(
        running.len(),
        1,
        "the old instance was stopped: {running:?}"
    );
    assert_eq!(running[0].generation, 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_ends_in_destroyed_with_the_instance_gone() {
    let (cluster, fakes) = three_workers().await;
    let repo = app("gone");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    assert_eq!(fakes.iter().map(|f| f.running().len()).sum::<usize>(), 1);
    cluster.db.request_destroy(&id).unwrap();
    let d = wait_status(&cluster.db, &id, StatusKind::Destroyed, LIMIT).await;
    let path: Vec<StatusKind> = d.history.iter().map(|c| c.status.kind()).collect();
    assert!(
        path.ends_with(&[
            StatusKind::DestructionRequested,
            StatusKind::DelegatingDestruction,
            StatusKind::DestructionInProgress,
            StatusKind::Destroyed
        ]),
        "{path:?}"
    );
    assert_eq!(fakes.iter().map(|f| f.running().len()).sum::<usize>(), 0);
    // Destroying again is refused and changes nothing.
    assert!(matches!(
        cluster.db.request_destroy(&id),
        Err(StateError::Transition(_))
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_has_its_deployments_placed_on_the_others() {
    let (mut cluster, _fakes) = three_workers().await;
    let repo = app("moving");
    let ids = deploy_running(&cluster, &repo, 6).await;
    let lost = cluster.workers[0].id.clone();
    let on_lost: Vec<_> = ids
        .iter()
        .filter(|id| cluster.db.deployment(id).unwrap().node.as_ref() == Some(&lost))
        .cloned()
        .collect();
    assert_eq!(on_lost.len(), 2);
    cluster.stop_worker(0).await;
    wait_until(LIMIT, || cluster.db.node(&lost).is_none()).await;
    for id in &on_lost {
        wait_until(LIMIT, || {
            let d = cluster.db.deployment(id).unwrap();
            d.status == DeploymentStatus::Running && d.node.as_ref() != Some(&lost)
        })
        .await;
        let d = cluster.db.deployment(id).unwrap();
        assert_eq!(d.generation, 2, "placed again as a new generation");
    }
    for id in &ids {
        assert_ne!(
            cluster.db.deployment(id).unwrap().node.as_ref(),
            Some(&lost)
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_worker_has_its_stale_instances_stopped() {
    let (mut cluster, fakes) = three_workers().await;
    let repo = app("stale");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    let d = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    let first = cluster
        .workers
        .iter()
        .position(|w| Some(&w.id) == d.node.as_ref())
        .unwrap();
    cluster.stop_worker(first).await;
    wait_until(LIMIT, || {
        let d = cluster.db.deployment(&id).unwrap();
        d.status == DeploymentStatus::Running && d.generation == 2
    })
    .await;
    // The old node still runs generation 1 (it only lost contact); when it comes back it
    // re-attaches it, reports it, and is told to stop it.
    assert_eq!(fakes[first].running().len(), 1);
    cluster.restart_worker(first);
    wait_until(LIMIT, || fakes[first].running().is_empty()).await;
    let total: usize = fakes.iter().map(|f| f.running().len()).sum();
    assert_eq!(total, 1, "one instance in the whole cluster");
    assert_eq!(
        cluster.db.deployment(&id).unwrap().status,
        DeploymentStatus::Running
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_the_same_message_twice_changes_nothing() {
    let (cluster, fakes) = three_workers().await;
    let repo = app("twice");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    let d = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    let node = d.node.clone().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(cluster.broker.transport());

    // A worker report delivered twice (same envelope, same message id).
    let report = Envelope::new(
        node.clone(),
        1,
        wire::DeploymentMessage {
            deployment: id.clone(),
            generation: d.generation,
            node: node.clone(),
            status: DeploymentStatus::Errored("late duplicate".into()),
            port: None,
            url: None,
            instance: None,
            stats: None,
            earlier: Vec::new(),
        },
    );
    transport.send(&wire::DEPLOYMENT, &report).await.unwrap();
    wait_status(&cluster.db, &id, StatusKind::Errored, LIMIT).await;
    let history = cluster.db.deployment(&id).unwrap().history.len();
    transport.send(&wire::DEPLOYMENT, &report).await.unwrap();

    // A work order delivered twice: the worker deploys once.
    let starts_before = fakes.iter().map(|f| starts(f)).sum::<usize>();
    let order = cluster.db.deployment(&id).unwrap();
    let work = Envelope::new(
        NodeId::parse("orchestrator").unwrap(),
        1,
        wire::WorkRequestMessage::RequestDeployment(Box::new(wire::DeploymentOrder {
            deployment: id.clone(),
            generation: 7,
            source_url: order.source_url.clone(),
            branch: order.branch.clone(),
            commit: order.commit.clone().unwrap(),
            manifest: order.manifest.clone().unwrap(),
        })),
    );
    let queue = wire::work_channel(&node);
    transport.send(&queue, &work).await.unwrap();
    transport.send(&queue, &work).await.unwrap();
    wait_until(LIMIT, || {
        fakes.iter().map(|f| starts(f)).sum::<usize>() > starts_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fakes.iter().map(|f| starts(f)).sum::<usize>(),
        starts_before + 1,
        "one start for two deliveries"
    );
    assert_eq!(
        cluster.db.deployment(&id).unwrap().history.len(),
        history,
        "the duplicate report was absorbed"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_end_errored_with_a_reason_and_leave_others_alone() {
    let (cluster, _fakes) = three_workers().await;
    let good = app("good");
    let cases: Vec<(GitRepo, &str)> = vec![
        (
            GitRepo::with_manifest("[app\nname = \"x\""),
            "shipwreck.toml",
        ),
        (
            GitRepo::with_manifest(&(manifest("x", 80, "true", &[]) + "\n[extra]\nfoo = 1\n")),
            "extra",
        ),
        (
            GitRepo::with_manifest(
                &manifest("x", 80, "true", &[]).replace("port = 80", "port = 70000"),
            ),
            "port",
        ),
        (
            GitRepo::with_files(&[("README.md", "no manifest")]),
            "shipwreck.toml",
        ),
    ];
    let ok = cluster
        .db
        .create_deployment(&good.url(), "main")
        .unwrap()
        .id;
    let mut ids: Vec<_> = cases
        .iter()
        .map(|(r, _)| cluster.db.create_deployment(&r.url(), "main").unwrap().id)
        .collect();
    let missing_repo = "file:///nonexistent/kraken/repository";
    ids.push(
        cluster
            .db
            .create_deployment(missing_repo, "main")
            .unwrap()
            .id,
    );
    let missing_branch = cluster
        .db
        .create_deployment(&good.url(), "no-such-branch")
        .unwrap()
        .id;
    ids.push(missing_branch);
    let expected: Vec<&str> = cases
        .iter()
        .map(|(_, e)| *e)
        .chain(["nonexistent", "no-such-branch"])
        .collect();
    for (id, needle) in ids.iter().zip(expected) {
        let d = wait_status(&cluster.db, id, StatusKind::Errored, LIMIT).await;
        let reason = d.status.error_reason().unwrap();
        assert!(
            reason.contains(needle),
            "reason {reason:?} should mention {needle:?}"
        );
        assert!(d.node.is_none(), "a bad deployment is never placed");
    }
    wait_status(&cluster.db, &ok, StatusKind::Running, LIMIT).await;

    // Option-looking URLs and branches are refused before anything is stored.
    let before = cluster.db.deployments().len();
    for (url, branch) in [
        (
            good.url(),
            "--upload-pack=touch /tmp/kraken-pwned".to_owned(),
        ),
        (
            "--upload-pack=touch /tmp/kraken-pwned".to_owned(),
            "main".to_owned(),
        ),
        (
            "ext::sh -c touch% /tmp/kraken-pwned".to_owned(),
            "main".to_owned(),
        ),
    ] {
        let err = cluster.db.create_deployment(&url, &branch).unwrap_err();
        assert!(matches!(err, StateError::InvalidRequest(_)), "{err}");
    }
    assert_eq!(cluster.db.deployments().len(), before);
    assert!(!std::path::Path::new("/tmp/kraken-pwned").exists());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_channel_is_rejected_and_consumers_keep_running() {
    let (cluster, _fakes) = three_workers().await;
    let transport: Arc<dyn Transport> = Arc::new(cluster.broker.transport());
    let mut channels = vec![
        wire::SYSINFO.spec().clone(),
        wire::DEPLOYMENT.spec().clone(),
        wire::LOG.spec().clone(),
        wire::PLATFORM.spec().clone(),
    ];
    for w in &cluster.workers {
        channels.push(wire::work_channel(&w.id).spec().clone());
    }
    let mut wrong_version = serde_json::to_value(Envelope::new(NodeId::random(), 1, ())).unwrap();
    wrong_version["version"] = serde_json::json!(99);
    let payloads = [
        Bytes::from_static(b"\x00\xff garbage"),
        Bytes::from_static(b"{\"not\": \"an envelope\"}"),
        Bytes::from(serde_json::to_vec(&wrong_version).unwrap()),
        Bytes::from(vec![b'x'; wire::MAX_MESSAGE_BYTES + 10]),
    ];
    for ch in &channels {
        for p in &payloads {
            transport.publish(ch, p.clone()).await.unwrap();
        }
    }
    // Everything still works afterwards.
    let repo = app("after-garbage");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    for ch in &channels {
        if ch.kind == wire::ChannelKind::Queue {
            assert_eq!(
                cluster.broker.depth(&ch.name),
                0,
                "garbage on {} was consumed",
                ch.name
            );
        }
    }
    assert!(cluster.broker.dead_letters() >= (payloads.len() * (channels.len() - 1)) as u64);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_the_runtime_are_reported() {
    let (cluster, _fakes) = three_workers().await;
    let build = GitRepo::with_manifest(&manifest(
        "b",
        80,
        "true",
        &[("FAKE_BUILD_ERROR", "compiler exploded")],
    ));
    let start = GitRepo::with_manifest(&manifest(
        "s",
        80,
        "true",
        &[("FAKE_START_ERROR", "port in use")],
    ));
    let exits = GitRepo::with_manifest(&manifest(
        "e",
        80,
        "true",
        &[("FAKE_EXIT_AFTER_MS", "300"), ("FAKE_EXIT_CODE", "3")],
    ));
    let b = cluster
        .db
        .create_deployment(&build.url(), "main")
        .unwrap()
        .id;
    let s = cluster
        .db
        .create_deployment(&start.url(), "main")
        .unwrap()
        .id;
    let e = cluster
        .db
        .create_deployment(&exits.url(), "main")
        .unwrap()
        .id;
    for (id, needle) in [
        (&b, "compiler exploded"),
        (&s, "port in use"),
        (&e, "code 3"),
    ] {
        let d = wait_status(&cluster.db, id, StatusKind::Errored, LIMIT).await;
        assert!(
            d.status.error_reason().unwrap().contains(needle),
            "{:?}",
            d.status
        );
    }
    let exited = cluster.db.deployment(&e).unwrap();
    assert!(
        exited
            .history
            .iter()
            .any(|c| c.status == DeploymentStatus::Running),
        "it ran before it exited"
    );
    // An errored deployment can be retried (and fails the same way here).
    cluster.db.request_redeploy(&b).unwrap();
    wait_until(LIMIT, || cluster.db.deployment(&b).unwrap().generation == 2).await;
    wait_status(&cluster.db, &b, StatusKind::Errored, LIMIT).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reach_the_orchestrator() {
    let (cluster, _fakes) = three_workers().await;
    let repo = GitRepo::with_manifest(&manifest("chatty", 80, "true", &[("FAKE_LOG_LINES", "5")]));
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    wait_until(LIMIT, || {
        cluster
            .db
            .logs(&id, None)
            .unwrap()
            .iter()
            .filter(|l| l.text.starts_with("line "))
            .count()
            >= 5
    })
    .await;
    let text: Vec<String> = cluster
        .db
        .logs(&id, None)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        text.iter().any(|t| t.contains("validated chatty")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("running at")), "{text:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_orchestrator_has_every_deployment_and_its_history_back() {
    let data = tempfile::tempdir().unwrap();
    let repo = app("durable");
    let fake = Arc::new(FakeRuntime::new());
    let (id, history) = {
        let db = Database::open(data.path(), StateConfig::default())
            .await
            .unwrap();
        let mut cluster = Cluster::new(Arc::clone(&db));
        cluster.add_worker("worker-0", fake.clone() as Arc<dyn Runtime>);
        cluster.wait_nodes(1).await;
        let id = db.create_deployment(&repo.url(), "main").unwrap().id;
        let d = wait_status(&db, &id, StatusKind::Running, LIMIT).await;
        cluster.shutdown().await;
        db.flush().await.unwrap();
        (id, d.history)
    };
    let db = reopen(data.path()).await;
    let d = db.deployment(&id).unwrap();
    assert_eq!(d.status, DeploymentStatus::Running);
    assert_eq!(d.history, history);
    assert!(
        db.logs(&id, None)
            .unwrap()
            .iter()
            .any(|l| l.text.contains("running at"))
    );
    // And the platform carries on with it: the worker comes back, it stays Running, and a
    // destroy still works.
    let instance = d.instance.clone().unwrap();
    let mut cluster = Cluster::new(Arc::clone(&db));
    // The orchestrator is up before the worker reports: it must wait for it, not re-place.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.add_worker("worker-0", fake.clone() as Arc<dyn Runtime>);
    cluster.wait_nodes(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = db.deployment(&id).unwrap();
    assert_eq!(
        (d.generation, d.status.clone()),
        (1, DeploymentStatus::Running),
        "{:?}",
        d.history
    );
    assert_eq!(
        fake.running()
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>(),
        vec![instance]
    );
    db.request_destroy(&id).unwrap();
    wait_status(&db, &id, StatusKind::Destroyed, LIMIT).await;
    assert!(fake.running().is_empty());
    cluster.shutdown().await;
}

/// Opens the database again once the previous holder let go of the file.
async fn reopen(path: &std::path::Path) -> Arc<Database> {
    for _ in 0..100 {
        if let Ok(db) = Database::open(path, StateConfig::default()).await {
            return db;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the state file stayed locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ignore_work_from_an_older_epoch() {
    let (cluster, fakes) = three_workers().await;
    let repo = app("epochs");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    let d = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    let node = d.node.clone().unwrap();
    let w = cluster.workers.iter().position(|w| w.id == node).unwrap();
    // The worker has heard the orchestrator announce epoch 1.
    wait_until(LIMIT, || {
        cluster.workers[w]
            .handle
            .as_ref()
            .unwrap()
            .context()
            .epoch()
            == 1
    })
    .await;
    let starts_before = starts(&fakes[w]);
    let transport: Arc<dyn Transport> = Arc::new(cluster.broker.transport());
    let order = |epoch: u64, generation: u64| {
        Envelope::new(
            NodeId::parse("old-orchestrator").unwrap(),
            epoch,
            wire::WorkRequestMessage::RequestDeployment(Box::new(wire::DeploymentOrder {
                deployment: id.clone(),
                generation,
                source_url: d.source_url.clone(),
                branch: d.branch.clone(),
                commit: d.commit.clone().unwrap(),
                manifest: d.manifest.clone().unwrap(),
            })),
        )
    };
    transport
        .send(&wire::work_channel(&node), &order(0, 50))
        .await
        .unwrap();
    // A current-epoch order sent after it shows the stale one was consumed, not started.
    transport
        .send(&wire::work_channel(&node), &order(1, 51))
        .await
        .unwrap();
    wait_until(LIMIT, || {
        fakes[w].running().iter().any(|i| i.generation == 51)
    })
    .await;
    assert_eq!(
        starts(&fakes[w]),
        starts_before + 1,
        "only the current epoch's order ran"
    );
    assert!(
        fakes[w]
            .calls()
            .iter()
            .all(|c| !matches!(c, FakeCall::Build { generation: 50, .. }))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_has_its_deployments_moved_and_is_removed() {
    let (cluster, fakes) = three_workers().await;
    let repo = app("drained");
    let ids = deploy_running(&cluster, &repo, 6).await;
    let drained = cluster.workers[0].id.clone();
    let on_drained: Vec<_> = ids
        .iter()
        .map(|id| cluster.db.deployment(id).unwrap())
        .filter(|d| d.node.as_ref() == Some(&drained))
        .collect();
    assert_eq!(on_drained.len(), 2);

    cluster.db.request_drain(&drained).unwrap();
    assert_eq!(cluster.db.draining(), vec![drained.clone()]);
    assert!(cluster.db.node(&drained).unwrap().draining);
    for d in &on_drained {
        wait_until(LIMIT, || {
            let now = cluster.db.deployment(&d.id).unwrap();
            now.status == DeploymentStatus::Running && now.node.as_ref() != Some(&drained)
        })
        .await;
        assert_eq!(
            cluster.db.deployment(&d.id).unwrap().generation,
            2,
            "placed again as a new generation"
        );
    }
    wait_until(LIMIT, || cluster.db.node(&drained).is_none()).await;
    assert!(cluster.db.draining().is_empty());
    // Its old instances are stopped: the stops are under way when the node is removed, and
    // under load they can finish just after.
    wait_until(LIMIT, || fakes[0].running().is_empty()).await;
    assert!(fakes[0].running().is_empty(), "{:?}", fakes[0].running());
    let stopped: Vec<_> = fakes[0]
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            FakeCall::Stop { instance, .. } => Some(instance),
            _ => None,
        })
        .collect();
    for d in &on_drained {
        let old = d.instance.clone().unwrap();
        assert!(stopped.contains(&old), "{old} not stopped: {stopped:?}");
    }
    for id in &ids {
        let d = cluster.db.deployment(id).unwrap();
        assert_eq!(d.status, DeploymentStatus::Running);
        assert_ne!(d.node.as_ref(), Some(&drained));
    }
    let total: usize = fakes.iter().map(|f| f.running().len()).sum();
    assert_eq!(total, 6, "one instance per deployment");

    // Its agent keeps reporting, for longer than the node timeout: it stays out.
    assert!(cluster.workers[0].handle.is_some());
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        assert!(
            cluster.db.node(&drained).is_none(),
            "the drained node came back"
        );
        assert_eq!(cluster.db.nodes().len(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fakes[0].running().is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_unknown_node_is_refused_and_changes_nothing() {
    let (cluster, _fakes) = three_workers().await;
    let repo = app("stays");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    let before = wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    let unknown = NodeId::parse("no-such-node").unwrap();
    assert!(matches!(
        cluster.db.request_drain(&unknown),
        Err(StateError::UnknownNode(n)) if n == unknown
    ));
    assert!(cluster.db.draining().is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.db.nodes().len(), 3);
    assert!(cluster.db.nodes().iter().all(|n| !n.draining));
    let after = cluster.db.deployment(&id).unwrap();
    assert_eq!(
        (after.status, after.generation, after.node),
        (before.status, before.generation, before.node)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_keeps_its_deployments_when_no_other_node_can_take_them() {
    let mut cluster = Cluster::in_memory();
    let fake = Arc::new(FakeRuntime::new());
    let only = cluster.add_worker("worker-0", fake.clone() as Arc<dyn Runtime>);
    cluster.wait_nodes(1).await;
    let repo = app("alone");
    let id = cluster
        .db
        .create_deployment(&repo.url(), "main")
        .unwrap()
        .id;
    wait_status(&cluster.db, &id, StatusKind::Running, LIMIT).await;
    cluster.db.request_drain(&only).unwrap();
    let note = "no other node to move it to";
    wait_until(LIMIT, || {
        cluster
            .db
            .logs(&id, None)
            .unwrap()
            .iter()
            .any(|l| l.text == note)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = cluster.db.deployment(&id).unwrap();
    assert_eq!(
        (d.status, d.generation, d.node.as_ref()),
        (DeploymentStatus::Running, 1, Some(&only))
    );
    assert_eq!(fake.running().len(), 1);
    assert!(cluster.db.node(&only).unwrap().draining);
    let notes = cluster
        .db
        .logs(&id, None)
        .unwrap()
        .iter()
        .filter(|l| l.text == note)
        .count();
    assert_eq!(notes, 1, "said once");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_do_not_follow_a_claim_that_backs_off() {
    let (cluster, _fakes) = three_workers().await;
    // A node claims the role with a higher epoch, then hears the orchestrator and backs off
    // (it never announces as orchestrator). Workers must keep taking the orchestrator's
    // orders, stamped with its own, lower epoch.
    let transport: Arc<dyn Transport> = Arc::new(cluster.broker.transport());
    let claimant = NodeId::parse("node-claimant").unwrap();
    let claim = Envelope::new(
        claimant.clone(),
        99,
        wire::PlatformMessage {
            info: kraken_core::model::PlatformInfo {
                orchestrator: claimant,
                epoch: 99,
                api_addr: None,
                broker_url: None,
                candidates: Vec::new(),
            },
            proof: None,
            resigning: false,
            claim: true,
        },
    );
    transport.send(&wire::PLATFORM, &claim).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in &cluster.workers {
        assert_eq!(w.handle.as_ref().unwrap().context().epoch(), 1, "{}", w.id);
    }
    let ids = deploy_running(&cluster, &app("after-claim"), 3).await;
    assert_eq!(ids.len(), 3);
    cluster.shutdown().await;
}
