//! What the process runtime does beyond the conformance suite: ports, process groups,
//! re-attach after a restart, bounded logs, build output, resource samples.
#![allow(clippy::unwrap_used)]

mod support;

use futures::StreamExt;
use kraken_core::model::{InstanceId, LogStream};
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::runtime::{Artifact, InstanceState, Runtime, RuntimeError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::runtime_suite::{
    App, STEP, build, deploy, eventually, http_get_ok, manifest, spec, wait_for_line,
};
use tempfile::TempDir;

fn runtime() -> (ProcessRuntime, TempDir) {
    let state = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(state.path()).log_poll_interval(Duration::from_millis(50));
    (rt, state)
}

fn app(run: &str) -> App {
    App::new(manifest("proc", 0, Some(run), None, &[]))
}

/// Whether a process is gone: no such pid, or only its zombie (an orphan's zombie lingers
/// until init reaps it).
fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Reads a pid an app wrote into its artifact directory, waiting for it to appear.
async fn read_pid(artifact: &Artifact, file: &str) -> u32 {
    let path = Path::new(&artifact.id).join(file);
    let mut pid = None;
    for _ in 0..200 {
        if let Ok(text) = tokio::fs::read_to_string(&path).await
            && let Ok(p) = text.trim().parse()
        {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pid.unwrap_or_else(|| panic!("{} holds a pid", path.display()))
}

fn log_file(rt: &ProcessRuntime, id: &InstanceId, name: &str) -> PathBuf {
    rt.instance_dir(id).join(name)
}

#[tokio::test]
async fn a_taken_manifest_port_falls_back_to_a_free_one() {
    let (rt, _state) = runtime();
    let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let server = App::new(manifest(
        "http",
        taken_port,
        Some("exec python3 -m http.server --bind 0.0.0.0 \"$PORT\""),
        None,
        &[],
    ))
    .with_file("index.html", "fallback works\n");
    let (_, info) = deploy(&rt, &server).await;
    let port = info.port.unwrap();
    assert_ne!(port, taken_port);
    let response = http_get_ok(port)
        .await
        .expect("the app answers on the new port");
    assert!(response.contains("fallback works"), "{response}");
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
    drop(taken);
}

#[tokio::test]
async fn the_manifest_port_is_used_when_free() {
    let (rt, _state) = runtime();
    let free = std::net::TcpListener::bind(("0.0.0.0", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sleeper = App::new(manifest("p", free, Some("exec sleep 30"), None, &[]));
    let (_, info) = deploy(&rt, &sleeper).await;
    assert_eq!(info.port, Some(free));
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let (rt, _state) = runtime();
    let (built, info) = deploy(
        &rt,
        &app("echo $$ > sh.pid; sleep 300 & echo $! > bg.pid; sleep 300"),
    )
    .await;
    let sh = read_pid(&built.artifact, "sh.pid").await;
    let background = read_pid(&built.artifact, "bg.pid").await;
    assert!(!pid_gone(sh) && !pid_gone(background));
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
    assert!(pid_gone(sh), "the shell is gone");
    assert!(pid_gone(background), "its background child is gone too");
    assert!(
        !rt.instance_dir(&info.id).exists(),
        "the instance files are gone"
    );
    assert!(matches!(
        rt.status(&info.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_timeout() {
    let (rt, _state) = runtime();
    let (built, info) = deploy(
        &rt,
        &app("trap '' TERM; echo $$ > sh.pid; while :; do sleep 1; done"),
    )
    .await;
    let sh = read_pid(&built.artifact, "sh.pid").await;
    let started = std::time::Instant::now();
    rt.stop(&info.id, Duration::from_millis(500)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(pid_gone(sh), "SIGTERM was ignored, SIGKILL was not");
}

#[tokio::test]
async fn a_new_runtime_reattaches_to_running_instances() {
    let state = tempfile::tempdir().unwrap();
    let first = ProcessRuntime::new(state.path());
    let (built, info) = deploy(
        &first,
        &app("echo $$ > sh.pid; echo attached; exec sleep 60"),
    )
    .await;
    let pid = read_pid(&built.artifact, "sh.pid").await;
    // The worker restarts: the runtime value goes, the app stays.
    drop(first);
    assert!(!pid_gone(pid));

    let second = ProcessRuntime::new(state.path());
    let listed = second.list().await.unwrap();
    assert_eq!(listed, vec![info.clone()]);
    assert_eq!(
        second.status(&info.id).await.unwrap(),
        InstanceState::Running
    );
    let mut logs = second.logs(&info.id).await.unwrap();
    assert!(wait_for_line(&mut logs, "attached").await.is_some());
    let stats = second.stats(&info.id).await.unwrap();
    assert!(stats.mem_bytes > 0);

    second.stop(&info.id, Duration::from_secs(5)).await.unwrap();
    assert!(pid_gone(pid));
    assert!(second.list().await.unwrap().is_empty());
    assert!(logs.next().await.is_none(), "the follower ends");
}

#[tokio::test]
async fn instances_that_died_unwatched_are_cleaned_up() {
    let state = tempfile::tempdir().unwrap();
    let first = ProcessRuntime::new(state.path());
    let (built, info) = deploy(&first, &app("echo $$ > sh.pid; exec sleep 60")).await;
    let pid = read_pid(&built.artifact, "sh.pid").await;
    drop(first);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(eventually(STEP, || async move { pid_gone(pid) }).await);

    let second = ProcessRuntime::new(state.path());
    assert!(second.list().await.unwrap().is_empty());
    assert!(
        !second.instance_dir(&info.id).exists(),
        "the files of a dead instance are removed"
    );
    assert!(matches!(
        second.status(&info.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_app_gets_its_environment_and_little_else() {
    let (rt, _state) = runtime();
    let env_app = App::new(manifest(
        "env",
        0,
        Some(
            "echo \"FROM_MANIFEST=$FROM_MANIFEST TEST=$KRAKEN_TEST PORT=$PORT\"; env; exec sleep 30",
        ),
        None,
        &[("FROM_MANIFEST", "yes please")],
    ));
    let (_, info) = deploy(&rt, &env_app).await;
    let port = info.port.unwrap();
    let mut logs = rt.logs(&info.id).await.unwrap();
    let line = wait_for_line(&mut logs, "FROM_MANIFEST=").await.unwrap();
    assert_eq!(
        line.text,
        format!("FROM_MANIFEST=yes please TEST=1 PORT={port}")
    );
    let env_file = std::fs::read_to_string(log_file(&rt, &info.id, "stdout.log")).unwrap();
    assert!(
        !env_file.contains("CARGO"),
        "the worker's environment is not passed on: {env_file}"
    );
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn logs_stay_bounded_while_followers_see_the_lines() {
    const CAP: u64 = 64 * 1024;
    let state = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(state.path())
        .log_cap_bytes(CAP)
        .log_poll_interval(Duration::from_millis(50));
    // About 2 MiB in bursts, then a last line, then quiet.
    let chatty = app("python3 -c 'import sys, time\n\
         for i in range(4000):\n    print(f\"{i:06d} \" + \"x\" * 500)\n    \
         i % 20 == 0 and (sys.stdout.flush(), time.sleep(0.005))\n\
         print(\"all done\", flush=True)'; exec sleep 60");
    let (_, info) = deploy(&rt, &chatty).await;
    let stdout = log_file(&rt, &info.id, "stdout.log");
    let mut logs = rt.logs(&info.id).await.unwrap();
    let mut seen = 0;
    let mut largest = 0;
    let done = tokio::time::timeout(STEP, async {
        while let Some(line) = logs.next().await {
            largest = largest.max(std::fs::metadata(&stdout).map(|m| m.len()).unwrap_or(0));
            if line.text == "all done" {
                return true;
            }
            seen += 1;
        }
        false
    })
    .await;
    assert_eq!(done, Ok(true), "the last line arrives");
    assert!(seen >= 1000, "followers see the output, saw {seen} lines");
    assert!(
        largest < 1024 * 1024,
        "the file is emptied as it grows: {largest}"
    );
    let settled = eventually(STEP, || {
        let stdout = stdout.clone();
        async move { std::fs::metadata(&stdout).map(|m| m.len()).unwrap_or(0) <= CAP }
    })
    .await;
    assert!(settled, "once quiet the file is under the cap");
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_failing_build_reports_its_exit_code_and_output() {
    let (rt, _state) = runtime();
    let failing = App::new(manifest(
        "broken",
        0,
        Some("true"),
        Some("echo compiling; echo 'error[E0425]: cannot find value' >&2; exit 7"),
        &[],
    ));
    match build(&rt, &failing).await {
        Err(RuntimeError::BuildFailed { reason }) => {
            assert!(reason.contains("exit code 7"), "{reason}");
            assert!(
                reason.contains("error[E0425]: cannot find value"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected BuildFailed, got {other:?}"),
        Ok(built) => panic!("expected BuildFailed, built {:?}", built.artifact),
    }
    let artifacts = rt.state_dir().join("artifacts");
    let left: Vec<_> = std::fs::read_dir(&artifacts).unwrap().collect();
    assert!(left.is_empty(), "a failed build leaves no artifact");
}

#[tokio::test]
async fn build_output_is_streamed_and_the_copy_leaves_git_out() {
    let (rt, _state) = runtime();
    let project = App::new(manifest(
        "project",
        0,
        Some("exec sleep 30"),
        Some("echo one; echo two >&2; ls -a > listing.txt"),
        &[],
    ))
    .with_file("src/main.txt", "code")
    .with_file(".git/HEAD", "ref: refs/heads/main");
    let built = build(&rt, &project).await.unwrap();
    let texts: Vec<&str> = built
        .log
        .iter()
        .filter(|l| l.stream == LogStream::Build)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        texts.contains(&"one") && texts.contains(&"two"),
        "{texts:?}"
    );
    let dir = Path::new(&built.artifact.id);
    assert!(dir.starts_with(rt.state_dir().join("artifacts")));
    assert_eq!(
        std::fs::read_to_string(dir.join("src/main.txt")).unwrap(),
        "code"
    );
    let listing = std::fs::read_to_string(dir.join("listing.txt")).unwrap();
    assert!(!listing.contains(".git"), "{listing}");
    rt.remove_artifact(&built.artifact).await.unwrap();
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_start_needs_a_run_command_and_an_own_artifact() {
    let (rt, _state) = runtime();
    let no_run = App::new(manifest("norun", 0, None, None, &[]));
    let built = build(&rt, &no_run).await.unwrap();
    let node = kraken_core::model::NodeId::random();
    match rt.start(&spec(&built, &node)).await {
        Err(RuntimeError::StartFailed { reason }) => assert!(reason.contains("`run`"), "{reason}"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let mut foreign = spec(&built, &node);
    foreign.manifest.config.run = Some("true".into());
    foreign.artifact.id = "/tmp".into();
    assert!(matches!(
        rt.start(&foreign).await,
        Err(RuntimeError::StartFailed { .. })
    ));
    assert!(matches!(
        rt.remove_artifact(&foreign.artifact).await,
        Err(RuntimeError::Backend { .. })
    ));
    assert!(Path::new("/tmp").exists());
}

#[tokio::test]
async fn stats_measure_a_busy_app() {
    let (rt, _state) = runtime();
    let (_, info) = deploy(&rt, &app("while :; do :; done")).await;
    let mut busiest = 0.0_f64;
    for _ in 0..10 {
        let stats = rt.stats(&info.id).await.unwrap();
        assert!(stats.mem_bytes > 0);
        assert_eq!(stats.mem_limit_bytes, None);
        busiest = busiest.max(stats.cpu_percent);
        if busiest > 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(busiest > 10.0, "a busy loop uses CPU: {busiest}");
    rt.stop(&info.id, Duration::from_secs(5)).await.unwrap();
}
