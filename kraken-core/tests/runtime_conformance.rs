//! Every runtime backend through the same conformance suite (`support/runtime_suite.rs`).
//!
//! A backend is a function returning a [`Backend`]: the runtime and an [`AppFixture`] with
//! the apps the suite deploys, written for that backend. `conformance!` turns it into one
//! test per behaviour; extra attributes go to every test, so a backend that needs a service
//! is added with, e.g.:
//!
//! ```text
//! conformance!(docker, docker_backend(), #[ignore = "needs docker"]);
//! ```
#![allow(clippy::unwrap_used)]

mod support;

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

/// The whole suite in one go still passes on a runtime that has served earlier tests.
#[tokio::test]
async fn fake_runtime_runs_the_whole_suite_in_one_go() {
    suite::run_all(&fake_backend()).await;
}
