#![allow(clippy::unwrap_used)]
use super::*;
use crate::manifest::{AppSection, ConfigSection, Lang, Manifest, Resources};

fn manifest(env: &[(&str, &str)]) -> Manifest {
    Manifest {
        app: AppSection {
            name: "scripted".into(),
            version: "1".into(),
            author: None,
            endpoint: None,
        },
        config: ConfigSection {
            port: 8080,
            lang: Lang::Custom,
            run: None,
            build: None,
        },
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        resources: Resources::default(),
    }
}

async fn deploy(rt: &FakeRuntime, env: &[(&str, &str)]) -> Result<InstanceInfo, RuntimeError> {
    let manifest = manifest(env);
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let artifact = rt
        .build(
            &BuildRequest {
                deployment: DeploymentId::random(),
                generation: 1,
                source_dir: "/nonexistent".into(),
                manifest: manifest.clone(),
            },
            tx,
        )
        .await?;
    rt.start(&StartSpec {
        node: NodeId::random(),
        artifact,
        manifest,
        env: BTreeMap::new(),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn scripted_exit_and_oom_follow_paused_time() {
    let rt = FakeRuntime::new();
    let exits = deploy(&rt, &[(EXIT_AFTER_MS, "5000"), (EXIT_CODE, "3")])
        .await
        .unwrap();
    let ooms = deploy(&rt, &[(OOM_AFTER_MS, "1000"), (EXIT_AFTER_MS, "9000")])
        .await
        .unwrap();
    assert_eq!(rt.status(&exits.id).await.unwrap(), InstanceState::Running);
    assert_eq!(rt.running().len(), 2);
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert_eq!(rt.status(&ooms.id).await.unwrap(), InstanceState::OomKilled);
    tokio::time::advance(Duration::from_millis(4000)).await;
    assert_eq!(
        rt.status(&exits.id).await.unwrap(),
        InstanceState::Exited { code: Some(3) }
    );
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delays_use_tokio_time() {
    let rt = FakeRuntime::new();
    let before = Instant::now();
    deploy(&rt, &[(BUILD_DELAY_MS, "3000"), (START_DELAY_MS, "2000")])
        .await
        .unwrap();
    assert!(before.elapsed() >= Duration::from_millis(5000));
}

#[tokio::test]
async fn malformed_scripts_fail_the_build_with_the_variable_named() {
    let rt = FakeRuntime::new();
    for (key, value) in [
        (EXIT_AFTER_MS, "soon"),
        (EXIT_CODE, "x"),
        (LOG_LINES, "-1"),
        (LOG_LINES, "100000000"),
        (BUILD_DELAY_MS, "1.5"),
    ] {
        match deploy(&rt, &[(key, value)]).await {
            Err(RuntimeError::BuildFailed { reason }) => assert!(reason.contains(key)),
            other => panic!("{key}={value}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn overrides_apply_to_every_app_and_calls_are_recorded() {
    let rt = FakeRuntime::new();
    rt.set_override(START_ERROR, "no luck");
    match deploy(&rt, &[]).await {
        Err(RuntimeError::StartFailed { reason }) => assert_eq!(reason, "no luck"),
        other => panic!("{other:?}"),
    }
    rt.clear_overrides();
    let info = deploy(&rt, &[]).await.unwrap();
    let calls = rt.calls();
    assert!(matches!(calls[0], FakeCall::Build { generation: 1, .. }));
    assert!(matches!(calls[1], FakeCall::Start { .. }));
    assert_eq!(calls.len(), 4);
    rt.stop(&info.id, Duration::ZERO).await.unwrap();
    assert_eq!(
        rt.calls().last(),
        Some(&FakeCall::Stop {
            instance: info.id.clone()
        })
    );
}

#[tokio::test]
async fn clones_share_the_host_and_new_hosts_do_not() {
    let rt = FakeRuntime::new().with_unique_ports();
    let a = deploy(&rt, &[]).await.unwrap();
    let b = deploy(&rt, &[]).await.unwrap();
    assert_ne!(a.port, b.port);
    let restarted: Arc<dyn Runtime> = Arc::new(rt.clone());
    assert_eq!(restarted.list().await.unwrap().len(), 2);
    assert!(FakeRuntime::new().list().await.unwrap().is_empty());
}

#[tokio::test]
async fn logs_end_when_the_instance_is_stopped_or_crashes() {
    let rt = FakeRuntime::new();
    let info = deploy(&rt, &[(LOG_LINES, "2")]).await.unwrap();
    let mut logs = rt.logs(&info.id).await.unwrap();
    assert_eq!(logs.next().await.unwrap().text, "line 1");
    assert_eq!(logs.next().await.unwrap().text, "line 2");
    let pending = tokio::time::timeout(Duration::from_millis(20), logs.next()).await;
    assert!(pending.is_err(), "follows until the instance ends");
    assert!(rt.set_state(&info.id, InstanceState::Exited { code: Some(1) }));
    assert!(logs.next().await.is_none());
    assert_eq!(
        rt.status(&info.id).await.unwrap(),
        InstanceState::Exited { code: Some(1) }
    );
    rt.stop(&info.id, Duration::ZERO).await.unwrap();
    assert!(!rt.set_state(&info.id, InstanceState::Running));
}
