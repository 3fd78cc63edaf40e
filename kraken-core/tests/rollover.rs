//! Rollover in one process: nodes running the rollover executor on one memory broker, the
//! fake runtime, real git repositories. A node is "cut off" by closing its transport.
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/git.rs"]
mod git;

use cluster::{orchestrator_config, wait_status, wait_until, worker_config};
use git::{GitRepo, manifest};
use kraken_core::agent::{Agent, AgentHandle};
use kraken_core::executor::NodeConfig;
use kraken_core::executor::rollover::{Lead, Role, RolloverConfig, RolloverExecutor};
use kraken_core::executor::worker::WorkerExecutor;
use kraken_core::membership::JoinSecret;
use kraken_core::model::{NodeId, StatusKind};
use kraken_core::runtime::Runtime;
use kraken_core::runtime::fake::{FakeCall, FakeRuntime};
use kraken_core::state::{Database, StateConfig, StateError};
use kraken_core::transport::memory::{MemoryBroker, MemoryTransport};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(20);

struct Node {
    id: NodeId,
    db: Arc<Database>,
    role: watch::Receiver<Role>,
    transport: MemoryTransport,
    fake: Arc<FakeRuntime>,
    handle: AgentHandle,
}

fn start(broker: &MemoryBroker, name: &str, lead: Lead, worker: bool, secret: &JoinSecret) -> Node {
    let id = NodeId::parse(name).unwrap();
    let db = Database::in_memory(StateConfig::default());
    let transport = broker.transport();
    let fake = Arc::new(FakeRuntime::new().with_unique_ports());
    let rollover = RolloverExecutor::new(
        Arc::clone(&db),
        RolloverConfig {
            lead,
            startup_wait: Duration::ZERO,
            orchestrator: orchestrator_config(),
            ..RolloverConfig::default()
        },
    );
    let role = rollover.watch_role();
    let mut builder = Agent::builder(id.clone())
        .transport(Arc::new(transport.clone()))
        .runtime(fake.clone() as Arc<dyn Runtime>)
        .config(NodeConfig {
            candidate: true,
            join_secret: Some(secret.clone()),
            ..NodeConfig::default()
        })
        .shutdown_grace(Duration::from_secs(2))
        .executor(rollover);
    if worker {
        builder = builder.executor(WorkerExecutor::new(worker_config()));
    }
    let handle = builder.build().unwrap().spawn();
    Node {
        id,
        db,
        role,
        transport,
        fake,
        handle,
    }
}

fn starts(fake: &FakeRuntime) -> usize {
    fake.calls()
        .iter()
        .filter(|c| matches!(c, FakeCall::Start { .. }))
        .count()
}

async fn wait_role(node: &Node, want: impl Fn(&Role) -> bool) -> Role {
    let mut role = node.role.clone();
    tokio::time::timeout(LIMIT, role.wait_for(|r| want(r)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} never reached the role; it is {:?}",
                node.id,
                *node.role.borrow()
            )
        })
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_with_every_deployment_and_no_two_accept_at_once() {
    let broker = MemoryBroker::default();
    let secret = JoinSecret::generate().unwrap();
    let a = start(&broker, "node-a", Lead::WhenAlone, false, &secret);
    assert_eq!(
        wait_role(&a, |r| matches!(r, Role::Primary(_))).await,
        Role::Primary(1)
    );
    let b = start(&broker, "node-b", Lead::OnlyByFailover, true, &secret);
    wait_role(&b, |r| *r == Role::Standby).await;
    let c = start(&broker, "node-c", Lead::OnlyByFailover, true, &secret);
    wait_until(LIMIT, || a.db.accepting() && a.db.nodes().len() == 2).await;

    let repo = GitRepo::with_manifest(&manifest("app", 8080, "serve", &[]));
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(a.db.create_deployment(&repo.url(), "main").unwrap().id);
        // Confirmed by the standby before a client would get its answer.
        a.db.replicated(Duration::from_secs(5)).await.unwrap();
    }
    for id in &ids {
        wait_status(&a.db, id, StatusKind::Running, LIMIT).await;
    }
    let before = starts(&b.fake) + starts(&c.fake);
    assert_eq!(before, 10);
    // Let the standby catch up with the last reports.
    wait_until(LIMIT, || {
        ids.iter().all(|id| {
            b.db.deployment(id)
                .is_some_and(|d| d.status.kind() == StatusKind::Running)
        })
    })
    .await;

    // Cut the primary off. Sample who accepts changes until the standby leads.
    a.transport.close();
    let cut = tokio::time::Instant::now();
    let mut both = 0;
    let mut a_stopped = None;
    loop {
        let (aa, ba) = (a.db.accepting(), b.db.accepting());
        if aa && ba {
            both += 1;
        }
        if !aa && a_stopped.is_none() {
            a_stopped = Some(cut.elapsed());
        }
        if ba {
            break;
        }
        assert!(cut.elapsed() < LIMIT, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took_over = cut.elapsed();
    assert_eq!(both, 0, "two nodes accepted changes at the same time");
    let a_stopped = a_stopped.unwrap();
    assert!(
        a_stopped < took_over,
        "the old primary stopped accepting ({a_stopped:?}) before the standby took over ({took_over:?})"
    );
    assert_eq!(*b.role.borrow(), Role::Primary(2));
    assert!(!a.db.accepting());
    assert!(matches!(
        a.db.create_deployment(&repo.url(), "main"),
        Err(StateError::NotLeader { .. })
    ));

    // Every deployment is there with its history, still running where it ran.
    for id in &ids {
        let (old, new) = (a.db.deployment(id).unwrap(), b.db.deployment(id).unwrap());
        assert_eq!(new.status.kind(), StatusKind::Running);
        assert_eq!(new.instance, old.instance);
        assert_eq!(new.history, old.history);
        assert_eq!(b.db.logs(id, None).unwrap(), a.db.logs(id, None).unwrap());
    }
    // The new primary makes the last candidate its standby and goes on deploying.
    wait_role(&c, |r| *r == Role::Standby).await;
    let id = b.db.create_deployment(&repo.url(), "main").unwrap().id;
    wait_status(&b.db, &id, StatusKind::Running, LIMIT).await;
    assert_eq!(b.db.deployment(&id).unwrap().generation, 1);
    // Nothing was started again: the running apps were kept.
    assert_eq!(starts(&b.fake) + starts(&c.fake), before + 1);
    for id in &ids {
        assert_eq!(
            b.db.deployment(id).unwrap().status.kind(),
            StatusKind::Running
        );
    }

    for n in [a, b, c] {
        n.handle.shutdown().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stops_hands_over_at_once() {
    let broker = MemoryBroker::default();
    let secret = JoinSecret::generate().unwrap();
    let a = start(&broker, "node-a", Lead::WhenAlone, false, &secret);
    wait_role(&a, |r| matches!(r, Role::Primary(_))).await;
    let b = start(&broker, "node-b", Lead::OnlyByFailover, true, &secret);
    wait_role(&b, |r| *r == Role::Standby).await;
    wait_until(LIMIT, || a.db.accepting() && b.db.deployments().is_empty()).await;
    let repo = GitRepo::with_manifest(&manifest("app", 8080, "serve", &[]));
    let id = a.db.create_deployment(&repo.url(), "main").unwrap().id;
    a.db.replicated(Duration::from_secs(5)).await.unwrap();
    wait_status(&a.db, &id, StatusKind::Running, LIMIT).await;

    let stopped = tokio::time::Instant::now();
    a.handle.shutdown().await.unwrap();
    wait_role(&b, |r| matches!(r, Role::Primary(2))).await;
    // Reported, not asserted: the standby does not wait for the failover timeout.
    println!("figures: graceful handover in {:?}", stopped.elapsed());
    wait_until(LIMIT, || b.db.accepting()).await;
    assert_eq!(
        b.db.deployment(&id).unwrap().status.kind(),
        StatusKind::Running
    );
    b.handle.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_join_secret_is_refused() {
    let broker = MemoryBroker::default();
    let secret = JoinSecret::generate().unwrap();
    let a = start(&broker, "node-a", Lead::WhenAlone, false, &secret);
    wait_role(&a, |r| matches!(r, Role::Primary(_))).await;
    let good = start(&broker, "node-good", Lead::OnlyByFailover, true, &secret);
    let intruder = start(
        &broker,
        "node-bad",
        Lead::OnlyByFailover,
        true,
        &JoinSecret::generate().unwrap(),
    );
    wait_until(LIMIT, || a.db.node(&good.id).is_some()).await;
    // Many heartbeats later, the intruder is still unknown, never standby, never given work.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.db.node(&intruder.id).is_none());
    assert_eq!(*intruder.role.borrow(), Role::Follower);
    let repo = GitRepo::with_manifest(&manifest("app", 8080, "serve", &[]));
    for _ in 0..4 {
        let id = a.db.create_deployment(&repo.url(), "main").unwrap().id;
        let d = wait_status(&a.db, &id, StatusKind::Running, LIMIT).await;
        assert_eq!(d.node.as_ref(), Some(&good.id));
    }
    assert_eq!(starts(&intruder.fake), 0);
    // The intruder does not follow the real orchestrator either (its announcements do not
    // prove the intruder's secret), so it never claims a deployment.
    assert!(intruder.handle.context().platform().is_none());
    for n in [a, good, intruder] {
        n.handle.shutdown().await.ok();
    }
}
