//! The web UI in a real browser (Debian's `chromium` driven through `chromedriver`) against a
//! running single-node platform: orchestrator with its API and a worker on the process
//! runtime, deploying a real git repository that holds a small Python app.
//!
//! The test enters the API token, creates a deployment through the form, waits for its row to
//! read `Running` without reloading, opens its page and waits for a line the app printed in
//! the live log tail, destroys it through the confirmation dialog and waits for `Destroyed`.
//! Every page is checked for its content and screenshotted at 1440 and 360 CSS pixels wide
//! into `target/ui-screenshots/`, and the page must not have logged any error.
//!
//! ```text
//! apt-get install -y chromium chromium-driver     # or: bash .ci/browser.sh
//! cargo test -p kraken-core --features api,test-util --test ui_browser -- --ignored
//! ```
#![allow(clippy::unwrap_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/git.rs"]
mod git;

use cluster::orchestrator_config;
use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use git::{GitRepo, manifest};
use kraken_core::agent::{Agent, AgentHandle};
use kraken_core::api::{ApiConfig, ApiToken};
use kraken_core::executor::NodeConfig;
use kraken_core::executor::orchestrator::{OrchestrationExecutor, OrchestratorConfig};
use kraken_core::executor::worker::{WorkerConfig, WorkerExecutor};
use kraken_core::model::NodeId;
use kraken_core::runtime::process::ProcessRuntime;
use kraken_core::state::{Database, StateConfig};
use kraken_core::transport::memory::MemoryBroker;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "ui-test-token-0123456789abcdef";
/// What the app prints when it starts; the log tail must show it.
const HELLO: &str = "hello from the kraken ui test app";
const WIDE: (u32, u32) = (1440, 900);
const NARROW: (u32, u32) = (360, 780);
/// Longest a UI change may take to show.
const LIMIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `chromedriver` on a free local port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver runs (apt-get install chromium chromium-driver, or .ci/browser.sh)",
            );
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        };
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chromedriver command outside the W3C set: `goog/cdp/execute` runs a Chrome DevTools
/// command (to set the viewport: a headless window cannot be made narrower than 500 px),
/// `se/log` reads the browser's console log.
#[derive(Debug)]
struct Chromedriver {
    path: &'static str,
    body: Value,
}

impl Chromedriver {
    fn cdp(cmd: &str, params: Value) -> Self {
        Chromedriver {
            path: "goog/cdp/execute",
            body: json!({ "cmd": cmd, "params": params }),
        }
    }

    fn browser_log() -> Self {
        Chromedriver {
            path: "se/log",
            body: json!({ "type": "browser" }),
        }
    }
}

impl WebDriverCompatibleCommand for Chromedriver {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// The browser session and what the test checks through it.
struct Browser {
    client: Client,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver) -> Browser {
        let chrome = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                format!("--window-size={},{}", WIDE.0, WIDE.1),
            ],
        });
        if let Some(binary) = chrome {
            options["binary"] = json!(binary);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), options);
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a chromium session starts");
        let shots = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("ui-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let browser = Browser { client, shots };
        browser.viewport(WIDE.0, WIDE.1).await;
        browser
    }

    async fn viewport(&self, width: u32, height: u32) {
        self.client
            .issue_cmd(Chromedriver::cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            ))
            .await
            .unwrap();
        // Lets the page react to the resize (charts redraw to the new width).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Fails when the page logged an error (to the console, as seen by the page and by
    /// chromedriver: failed loads too) or shows one in its error list.
    async fn assert_no_errors(&self, page: &str) {
        let log = self
            .client
            .issue_cmd(Chromedriver::browser_log())
            .await
            .unwrap();
        let severe: Vec<&Value> = log
            .as_array()
            .map(|entries| entries.iter().filter(|e| e["level"] == "SEVERE").collect())
            .unwrap_or_default();
        assert!(
            severe.is_empty(),
            "{page}: the browser logged errors: {severe:?}"
        );
        let logged = self
            .js("return window.__krakenErrors || ['no error capture: index.html did not load'];")
            .await;
        assert_eq!(logged, json!([]), "{page}: the page logged errors");
        let shown = self
            .js("return [...document.querySelectorAll('#errors .error')].map(e => e.textContent);")
            .await;
        assert_eq!(shown, json!([]), "{page}: the page shows errors");
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(LIMIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Waits until the element's text satisfies `f`; returns it.
    async fn wait_text(&self, css: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = std::time::Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if f(&text) {
                    return text;
                }
                last = text;
            }
            if start.elapsed() > LIMIT {
                let errors = self.js("return [window.__krakenErrors, [...document.querySelectorAll('#errors .error')].map(e => e.textContent)];").await;
                panic!("{css}: expected {what}, last saw {last:?}; errors: {errors}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Follows a link of the main navigation, as a user does (no reload).
    async fn nav(&self, route: &str, title: &str) {
        self.find(&format!("nav a[data-route='{route}']"))
            .await
            .click()
            .await
            .unwrap();
        self.wait_text("main h1", title, |t| t == title).await;
    }

    /// Screenshots the whole page at both widths as `<name>-<width>.png`.
    async fn screenshots(&self, name: &str) {
        // The pointer rests on a blank margin, so that no link shows its hover style.
        let rest = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
            duration: None,
            x: 4.0,
            y: f64::from(NARROW.1 - 20),
        });
        self.client.perform_actions(rest).await.unwrap();
        for (width, height) in [WIDE, NARROW] {
            self.viewport(width, height).await;
            let full = self
                .js("return Math.ceil(document.documentElement.scrollHeight);")
                .await
                .as_u64()
                .unwrap_or(u64::from(height));
            let full = u32::try_from(full).unwrap().clamp(height, 6000);
            self.viewport(width, full).await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
            std::fs::write(self.shots.join(format!("{name}-{width}.png")), png).unwrap();
            let overflow = self
                .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
                .await;
            assert_eq!(
                overflow,
                json!(0),
                "{name} at {width} px: the page is wider than the window"
            );
        }
        self.viewport(WIDE.0, WIDE.1).await;
        self.assert_no_errors(name).await;
    }
}

/// One agent as `kraken up` runs it: orchestrator (serving the API) and worker on the
/// process runtime.
async fn platform(data: &Path) -> (AgentHandle, String) {
    let db = Database::open(&data.join("orchestrator"), StateConfig::default())
        .await
        .unwrap();
    let api = ApiConfig::default()
        .bind("127.0.0.1:0".parse().unwrap())
        .token(ApiToken::new(TOKEN).unwrap());
    let agent = Agent::builder(NodeId::parse("ui-node").unwrap())
        .transport(Arc::new(MemoryBroker::default().transport()))
        .runtime(Arc::new(ProcessRuntime::new(data.join("runtime"))))
        .config(NodeConfig {
            data_dir: Some(data.to_path_buf()),
            address: "127.0.0.1".into(),
            ..NodeConfig::default()
        })
        .executor(OrchestrationExecutor::new(
            Arc::clone(&db),
            OrchestratorConfig {
                api: Some(api),
                ..orchestrator_config()
            },
        ))
        .executor(WorkerExecutor::new(WorkerConfig {
            sysinfo_interval: Duration::from_millis(1000),
            stats_interval: Duration::from_millis(1000),
            log_flush: Duration::from_millis(100),
            stop_timeout: Duration::from_secs(3),
            ..WorkerConfig::default()
        }))
        .shutdown_grace(Duration::from_secs(5))
        .build()
        .unwrap()
        .spawn();
    let mut platform = agent.context().watch_platform();
    let info = tokio::time::timeout(
        LIMIT,
        platform.wait_for(|p| p.as_ref().is_some_and(|p| p.api_addr.is_some())),
    )
    .await
    .expect("the API starts")
    .unwrap()
    .clone()
    .unwrap();
    (agent, info.api_addr.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium"]
async fn the_ui_deploys_follows_and_destroys_an_app() {
    let data = tempfile::tempdir().unwrap();
    let app_port = free_port();
    let run = format!("echo '{HELLO}' && exec python3 -u -m http.server $PORT --bind 127.0.0.1");
    let repo = GitRepo::with_files(&[
        (
            "shipwreck.toml",
            &manifest("ui-test-app", app_port, &run, &[("GREETING", "hi")]),
        ),
        ("index.html", "<h1>hello</h1>\n"),
    ]);
    let (agent, addr) = platform(data.path()).await;
    let driver = Driver::start().await;
    let b = Browser::open(&driver).await;
    let base = format!("http://{addr}");

    // Overview: the one node and the orchestrator.
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.wait_text("main h1", "Overview", |t| t == "Overview")
        .await;
    b.wait_text("#node-count", "one node", |t| t == "1").await;
    b.wait_text("#health", "a health verdict", |t| {
        ["Healthy", "Degraded", "Unhealthy"].contains(&t)
    })
    .await;
    b.assert_no_errors("overview").await;

    // Settings: a wrong token is refused and the refusal shown; the right one is accepted.
    b.nav("settings", "Settings").await;
    let token = b.find("#token").await;
    token.send_keys("not-the-token").await.unwrap();
    b.find("#token-save").await.click().await.unwrap();
    b.wait_text("#token-error", "the refusal", |t| {
        t.contains("refuses this token")
    })
    .await;
    b.find("#token").await.send_keys(TOKEN).await.unwrap();
    b.find("#token-save").await.click().await.unwrap();
    b.wait_text("#token-status", "acceptance", |t| t.contains("accepted"))
        .await;
    b.assert_no_errors("settings").await;

    // Deployments: the form checks its input before sending anything.
    b.nav("deployments", "Deployments").await;
    b.find("#deploy-url")
        .await
        .send_keys("not a url")
        .await
        .unwrap();
    b.find("#deploy-submit").await.click().await.unwrap();
    b.wait_text("#deploy-url-error", "a URL complaint", |t| {
        t.contains("spaces")
    })
    .await;
    let branch = b.find("#deploy-branch").await;
    branch.clear().await.unwrap();
    branch.send_keys("bad..branch").await.unwrap();
    b.find("#deploy-submit").await.click().await.unwrap();
    b.wait_text("#deploy-branch-error", "a branch complaint", |t| {
        t.contains("..")
    })
    .await;
    let rows = b
        .js("return document.querySelectorAll('#deployment-rows tr').length;")
        .await;
    assert_eq!(rows, json!(0), "nothing was sent");

    // A real deployment through the form.
    let url = b.find("#deploy-url").await;
    url.clear().await.unwrap();
    url.send_keys(&repo.url()).await.unwrap();
    let branch = b.find("#deploy-branch").await;
    branch.clear().await.unwrap();
    branch.send_keys("main").await.unwrap();
    b.find("#deploy-submit").await.click().await.unwrap();
    let result = b
        .wait_text("#create-result", "the new id", |t| t.contains("dep-"))
        .await;
    let id = result
        .split_whitespace()
        .find(|w| w.starts_with("dep-"))
        .unwrap()
        .trim_end_matches('.')
        .to_owned();
    let row = format!("#deployment-rows tr[data-id='{id}']");
    b.wait_text(&format!("{row} .badge"), "Running", |t| t == "Running")
        .await;
    assert!(b.text(&format!("{row} .src")).await.contains(&repo.url()));

    // A repository whose manifest has a typo: the row turns Errored and says why.
    let broken = GitRepo::with_manifest(
        "[app]\nname = \"broken-app\"\n\n[config]\nprot = 8080\nlang = \"python\"\nrun = \"python3 app.py\"\n",
    );
    let url = b.find("#deploy-url").await;
    url.send_keys(&broken.url()).await.unwrap();
    b.find("#deploy-submit").await.click().await.unwrap();
    let result = b
        .wait_text("#create-result", "another id", |t| {
            t.contains("dep-") && !t.contains(&id)
        })
        .await;
    let broken_id = result
        .split_whitespace()
        .find(|w| w.starts_with("dep-"))
        .unwrap()
        .trim_end_matches('.')
        .to_owned();
    let broken_row = format!("#deployment-rows tr[data-id='{broken_id}']");
    b.wait_text(&format!("{broken_row} .badge"), "Errored", |t| {
        t == "Errored"
    })
    .await;
    b.wait_text(&format!("{broken_row} .reason"), "the reason", |t| {
        t.contains("prot")
    })
    .await;
    b.screenshots("deployments").await;

    // Its page: status, timeline, the log line the app printed, usage samples.
    b.find(&format!("{row} a.dep-link"))
        .await
        .click()
        .await
        .unwrap();
    b.wait_text("#detail-status", "Running", |t| t == "Running")
        .await;
    b.wait_text("main h1", "the app's name", |t| t == "ui-test-app")
        .await;
    b.wait_text("#log", "the app's greeting", |t| t.contains(HELLO))
        .await;
    b.wait_text("#timeline", "the status history", |t| {
        t.contains("DeploymentRequested") && t.contains("Running")
    })
    .await;
    b.wait_text("#facts", "the node", |t| t.contains("ui-node"))
        .await;
    // Some stats samples for the charts.
    tokio::time::sleep(Duration::from_secs(10)).await;
    b.screenshots("deployment").await;

    // Nodes: the node with its charts drawn from at least two samples.
    b.nav("nodes", "Nodes").await;
    b.wait_text("#nodes .node h2", "the node", |t| t.contains("ui-node"))
        .await;
    b.find("#nodes .node .chart path.line").await;
    b.wait_text("#nodes .node .deps", "its deployment", |t| {
        t.contains("ui-test-app")
    })
    .await;
    b.screenshots("nodes").await;

    // Overview again, now with a running deployment.
    b.nav("overview", "Overview").await;
    b.wait_text(
        "#status-counts li[data-status='Running'] strong",
        "one Running",
        |t| t == "1",
    )
    .await;
    b.wait_text(
        "#status-counts li[data-status='Errored'] strong",
        "one Errored",
        |t| t == "1",
    )
    .await;
    b.wait_text("#health", "degraded by the error", |t| t == "Degraded")
        .await;
    b.screenshots("overview").await;

    // Info, reached with the keyboard: focus the link, press Enter.
    b.js("document.querySelector(\"nav a[data-route='info']\").focus();")
        .await;
    b.find("nav a[data-route='info']")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    b.wait_text("main h1", "the info page", |t| {
        t == "Writing shipwreck.toml"
    })
    .await;
    b.wait_text("#panel-python", "the python example", |t| {
        t.contains("lang = \"python\"")
    })
    .await;
    b.screenshots("info").await;

    // Back to the deployment; destroy it, confirming in the dialog.
    b.client
        .goto(&format!("{base}/#/deployments/{id}"))
        .await
        .unwrap();
    b.wait_text("#detail-status", "Running", |t| t == "Running")
        .await;
    b.find("#destroy").await.click().await.unwrap();
    b.find("dialog.confirm #confirm-no")
        .await
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.text("#detail-status").await,
        "Running",
        "cancelling the dialog destroys nothing"
    );
    b.find("#destroy").await.click().await.unwrap();
    b.find("dialog.confirm #confirm-yes")
        .await
        .click()
        .await
        .unwrap();
    b.wait_text("#action-result", "the request", |t| {
        t.contains("Destroy requested")
    })
    .await;
    b.wait_text("#detail-status", "Destroyed", |t| t == "Destroyed")
        .await;
    b.wait_text("#timeline", "the destruction", |t| t.contains("Destroyed"))
        .await;
    b.assert_no_errors("deployment after destroy").await;

    b.nav("deployments", "Deployments").await;
    b.wait_text(&format!("{row} .badge"), "Destroyed", |t| t == "Destroyed")
        .await;
    b.assert_no_errors("deployments after destroy").await;

    b.client.close().await.unwrap();
    drop(driver);
    agent.shutdown().await.unwrap();
}
