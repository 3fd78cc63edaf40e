//! Every runtime backend through the same conformance suite (`support/runtime_suite.rs`).
//!
//! A backend is a function returning a [`Backend`]: the runtime and an [`AppFixture`] with
//! the apps the suite deploys, written for that backend. `conformance!` turns it into one
//! test per behaviour; extra attributes go to every test, so a backend that needs a service
//! is added with, e.g.:
//!
//! ```text
//! conformance!(docker_runtime, docker::backend(), #[ignore = "needs docker"]);
//! ```
#![allow(clippy::unwrap_used)]

mod support;

#[cfg(feature = "docker")]
#[path = "support/docker_images.rs"]
mod docker_images;

use kraken_core::runtime::fake::{self, FakeRuntime};
use kraken_core::runtime::process::ProcessRuntime;
use std::sync::Arc;
use std::time::Duration;
use support::runtime_suite::{self as suite, App, AppFixture, Backend, manifest};

/// One test per behaviour of the suite, for one backend.
macro_rules! conformance {
    ($name:ident, $backend:expr $(, #[$attr:meta])*) => {
        mod $name {
            use super::*;

            #[tokio::test]
            $(#[$attr])*
            async fn lifecycle() {
                let backend: Backend = $backend;
                suite::lifecycle(backend.runtime.clone(), &backend.apps).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn start_failure_is_reported() {
                let backend: Backend = $backend;
                suite::start_failure_is_reported(backend.runtime.clone(), &backend.apps).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn build_failure_is_reported() {
                let backend: Backend = $backend;
                suite::build_failure_is_reported(backend.runtime.clone(), &backend.apps).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn exit_code_is_reported() {
                let backend: Backend = $backend;
                suite::exit_code_is_reported(backend.runtime.clone(), &backend.apps).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn unknown_instance_is_not_found() {
                let backend: Backend = $backend;
                suite::unknown_instance_is_not_found(backend.runtime.clone()).await;
            }
        }
    };
}

conformance!(fake_runtime, fake_backend());
conformance!(process_runtime, process_backend());
#[cfg(feature = "docker")]
conformance!(docker_runtime, docker::backend(), #[ignore = "needs docker"]);

/// The fake runtime, with apps scripted through their `[env]`.
fn fake_backend() -> Backend {
    let app = |env: &[(&str, &str)]| App::new(manifest("scripted", 8080, None, None, env));
    Backend {
        runtime: Arc::new(FakeRuntime::new()),
        apps: AppFixture {
            hello: app(&[(fake::LOG_LINES, "3")]),
            hello_output: "line 2".into(),
            build_output: "fake build".into(),
            serves_http: false,
            exits_3: app(&[(fake::EXIT_AFTER_MS, "200"), (fake::EXIT_CODE, "3")]),
            fails_to_start: app(&[(fake::START_ERROR, "fatal: no config")]),
            start_failure_text: "fatal: no config".into(),
            build_fails: app(&[(fake::BUILD_ERROR, "error: boom")]),
            build_failure_text: "error: boom".into(),
        },
        guard: Box::new(()),
    }
}

/// Real child processes under a temporary state directory. Port 0 in the manifests: tests
/// run in parallel, each app gets a free port of its own.
fn process_backend() -> Backend {
    let state = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(state.path()).log_poll_interval(Duration::from_millis(50));
    let app = |run: &str, build: Option<&str>| App::new(manifest("proc", 0, Some(run), build, &[]));
    Backend {
        runtime: Arc::new(runtime),
        apps: AppFixture {
            hello: app(
                "echo hello from kraken; exec python3 -m http.server --bind 0.0.0.0 \"$PORT\"",
                Some("echo building; test -f index.html"),
            )
            .with_file("index.html", "<h1>kraken</h1>\n"),
            hello_output: "hello from kraken".into(),
            build_output: "building".into(),
            serves_http: true,
            exits_3: app("echo running; sleep 2; exit 3", None),
            fails_to_start: app("echo 'fatal: no config' >&2; exit 2", None),
            start_failure_text: "fatal: no config".into(),
            build_fails: app(
                "true",
                Some("echo compiling; echo 'error: boom' >&2; exit 7"),
            ),
            build_failure_text: "error: boom".into(),
        },
        guard: Box::new(state),
    }
}

/// The Docker runtime, on a node label of its own per test (tests run in parallel), with
/// apps as repositories with their own Dockerfile (`lang = "custom"`, the suite's manifest)
/// on the locally made busybox image. Everything carrying the label is removed when the
/// test ends.
#[cfg(feature = "docker")]
mod docker {
    use super::docker_images;
    use super::*;
    use kraken_core::runtime::docker::{DockerConfig, DockerRuntime, LABEL_OWNER};

    /// Removes the containers and images of one node label.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let script = format!(
                "docker ps -aq --filter label={LABEL_OWNER}={0} | xargs -r docker rm -f -v; \
                 docker images -q --filter label={LABEL_OWNER}={0} | xargs -r docker rmi -f",
                self.0
            );
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output();
        }
    }

    fn app(dockerfile_tail: &str) -> App {
        let dockerfile = format!("FROM {}\n{dockerfile_tail}\n", docker_images::BUSYBOX);
        App::new(manifest("docker-suite", 8080, None, None, &[]))
            .with_file("Dockerfile", &dockerfile)
    }

    pub fn backend() -> Backend {
        docker_images::ensure_blocking(docker_images::BUSYBOX).unwrap();
        let label = format!("suite-{}", uuid::Uuid::new_v4().simple());
        let runtime = DockerRuntime::connect(DockerConfig::default().node_label(&label)).unwrap();
        Backend {
            runtime: Arc::new(runtime),
            apps: AppFixture {
                hello: app("RUN echo building the hello app\n\
                     COPY index.html /www/index.html\n\
                     CMD echo hello from kraken && exec httpd -f -p 8080 -h /www")
                .with_file("index.html", "<h1>kraken</h1>\n"),
                hello_output: "hello from kraken".into(),
                build_output: "building the hello app".into(),
                serves_http: true,
                exits_3: app("CMD echo running; sleep 2; exit 3"),
                fails_to_start: app("CMD echo 'fatal: no config' >&2; exit 2"),
                start_failure_text: "fatal: no config".into(),
                build_fails: app("RUN echo compiling && exit 7"),
                build_failure_text: "returned a non-zero code: 7".into(),
            },
            guard: Box::new(Cleanup(label)),
        }
    }
}

/// The whole suite in one go still passes on a runtime that has served earlier tests.
#[tokio::test]
async fn fake_runtime_runs_the_whole_suite_in_one_go() {
    suite::run_all(&fake_backend()).await;
}
