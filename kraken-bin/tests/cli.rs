//! The real `kraken` binary end to end: `kraken up` with the process runtime in the
//! background, then every client command against it, deploying a real Python app from a
//! real git repository.
#![allow(clippy::unwrap_used)]

#[path = "../../kraken-core/tests/support/git.rs"]
mod git;

use git::{GitRepo, manifest};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KRAKEN: &str = env!("CARGO_BIN_EXE_kraken");

/// A `kraken up` running in the background, with its own data dir and CLI config.
struct Up {
    child: Child,
    /// Holds `data/`, `cli.json` and `up.log`.
    dir: PathBuf,
    addr: String,
    token: String,
}

/// A `kraken` command with none of the user's settings.
fn command(config: &Path) -> Command {
    let mut cmd = Command::new(KRAKEN);
    cmd.env("KRAKEN_CLI_CONFIG", config)
        .env_remove("KRAKEN_API_TOKEN")
        .env_remove("KRAKEN_ORCHESTRATOR")
        .env_remove("KRAKEN_DATA_DIR")
        .env("RUST_LOG", "warn");
    cmd
}

impl Up {
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Up {
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        let mut cmd = command(&dir.join("cli.json"));
        cmd.args([
            "up",
            "--runtime",
            "process",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the announcements, then keeps draining so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut token) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while addr.is_none() || token.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
                panic!("kraken up did not announce its API; its log:\n{log}")
            });
            if let Some(a) = line.strip_prefix("kraken: API at http://") {
                addr = Some(a.to_owned());
            }
            if let Some(t) = line.strip_prefix("kraken: API token ") {
                token = Some(t.to_owned());
            }
        }
        Up {
            child,
            dir: dir.to_path_buf(),
            addr: addr.unwrap(),
            token: token.unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cli.json")
    }

    /// Runs `kraken <args>` with the config `kraken up` saved.
    fn kraken(&self, args: &[&str]) -> Output {
        command(&self.config()).args(args).output().unwrap()
    }

    /// Runs `kraken <args>`, expects success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kraken(args);
        assert!(
            out.status.success(),
            "kraken {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Destroys every deployment (so no app outlives the test), then stops `kraken up`.
    fn stop(&mut self) {
        if let Ok(out) = command(&self.config()).args(["--json", "ls"]).output()
            && let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&out.stdout)
        {
            for d in list {
                if let Some(id) = d["id"].as_str() {
                    let _ = command(&self.config())
                        .args(["rm", id, "--wait", "--timeout", "60"])
                        .output();
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_command_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    let port = free_port();
    let repo = GitRepo::with_files(&[
        (
            "shipwreck.toml",
            &manifest(
                "hello-cli",
                port,
                "python3 -m http.server $PORT --bind 127.0.0.1",
                &[],
            ),
        ),
        ("index.html", "<h1>hello from the kraken CLI</h1>\n"),
    ]);
    let url = repo.url();

    // deploy --wait: progress, then the app's URL.
    let out = up.ok(&["deploy", &url, "--branch", "main", "--wait"]);
    let app_url = format!("http://127.0.0.1:{port}/");
    assert!(out.contains(&format!("is running at {app_url}")), "{out}");
    assert!(
        out.contains("==> BuildingDeployment") && out.contains("==> Running"),
        "{out}"
    );
    let mut body = None;
    wait_until(Duration::from_secs(15), || {
        body = http_get(port, "/index.html");
        body.is_some()
    });
    let body = body.unwrap();
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(body.contains("hello from the kraken CLI"));

    // ls, in both forms.
    let list = up.json(&["ls"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["status"], "Running");
    assert_eq!(list[0]["resultsUrl"], app_url.as_str());
    assert_eq!(list[0]["commit"], repo.head());
    let table = up.ok(&["ls"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("hello-cli") && row.contains("Running") && row.contains(&app_url),
        "{table}"
    );
    // Columns are aligned: every cell of the STATUS column starts where its header does.
    let column = header.find("STATUS").unwrap();
    assert_eq!(row.find("Running"), Some(column), "{table}");

    // nodes and status.
    let nodes = up.json(&["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["deployments"][0], id.as_str());
    let table = up.ok(&["nodes"]);
    assert!(
        table.contains("orchestrator") && table.contains("127.0.0.1"),
        "{table}"
    );
    let status = up.json(&["status"]);
    assert_eq!(status["nodes"], 1);
    assert_eq!(status["deployments"]["Running"], 1);
    assert_eq!(status["platform"]["apiAddr"], up.addr.as_str());
    let text = up.ok(&["status"]);
    assert!(text.contains("deployments  1 (1 Running)"), "{text}");
    assert!(text.contains(&format!("http://{}", up.addr)), "{text}");

    // logs: all, the tail, JSON lines, and following.
    let logs = up.ok(&["logs", &id]);
    assert!(
        logs.contains(&format!("[kraken] running at {app_url}")),
        "{logs}"
    );
    let tail = up.ok(&["logs", &id, "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    for line in up.ok(&["--json", "logs", &id, "--tail", "5"]).lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert!(line["time"].as_str().unwrap().ends_with('Z') && line["stream"].is_string());
    }
    let mut follow = command(&up.config())
        .args(["logs", &id, "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the kept line comes first"
    );
    // The app logs each request on stderr; a new request shows up in the follow.
    assert!(http_get(port, "/follow-check").is_some());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen = line.contains("GET /follow-check");
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "a new log line reached `kraken logs -f`");

    // redeploy after a new commit.
    let second = repo.commit(&[("index.html", "<h1>second</h1>\n")], "second");
    let out = up.ok(&["redeploy", &id, "--wait"]);
    assert!(
        out.contains("==> UpdateRequested") && out.contains("is running at"),
        "{out}"
    );
    let list = up.json(&["ls"]);
    assert_eq!(list[0]["commit"], second);
    assert_eq!(list[0]["generation"], 2);
    wait_until(Duration::from_secs(15), || {
        http_get(port, "/index.html").is_some_and(|b| b.contains("second"))
    });

    // A wrong or missing token changes nothing.
    let out = up.kraken(&["--token", "wrong-token-0123456789", "rm", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("wrong API token"), "{}", stderr(&out));
    let empty = dir.path().join("empty.json");
    let out = command(&empty)
        .args(["--orchestrator", &up.addr, "redeploy", &id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing API token"),
        "{}",
        stderr(&out)
    );
    assert_eq!(up.json(&["ls"])[0]["status"], "Running");

    // Exit codes: unreachable 3, usage 2, failed 1.
    let out = up.kraken(&["--orchestrator", "127.0.0.1:1", "ls"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach the orchestrator"));
    let out = command(&empty).arg("ls").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "no orchestrator known: {}",
        stderr(&out)
    );
    assert_eq!(up.kraken(&["ls", "--bogus"]).status.code(), Some(2));
    let out = up.kraken(&["logs", "dep-nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no deployment dep-nobody"));
    let out = up.kraken(&["nodes", "drain", "node-bogus"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no node node-bogus"),
        "{}",
        stderr(&out)
    );
    let orchestrator = nodes[0]["id"].as_str().unwrap();
    let out = up.kraken(&["nodes", "drain", orchestrator, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be drained"),
        "{}",
        stderr(&out)
    );
    assert_eq!(up.kraken(&["nodes", "drain"]).status.code(), Some(2));
    assert_eq!(up.json(&["nodes"])[0]["draining"], false);
    let out = up.kraken(&["logs", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid DeploymentId"),
        "{}",
        stderr(&out)
    );
    let out = up.kraken(&["deploy", "not a url"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid request"), "{}", stderr(&out));
    // A deployment that fails: exit 1 with the reason.
    let broken = GitRepo::with_files(&[("README.md", "no manifest here\n")]);
    let out = up.kraken(&["deploy", &broken.url(), "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("failed: ") && stderr(&out).contains("shipwreck.toml"),
        "{}",
        stderr(&out)
    );

    // rm: the app is gone and its port is free.
    let out = up.ok(&["rm", &id, "--wait"]);
    assert!(out.contains(&format!("{id} destroyed")), "{out}");
    wait_until(Duration::from_secs(15), || {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    assert!(http_get(port, "/").is_none());
    let out = up.ok(&["rm", &id]);
    assert!(out.contains("already being destroyed"), "{out}");
    assert!(
        up.json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] != id.as_str()),
        "ls hides destroyed ones"
    );
    assert_eq!(up.json(&["ls", "--all"]).as_array().unwrap().len(), 2);
    up.stop();
}

#[test]
fn the_token_is_generated_once_kept_private_and_can_be_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Up::start(dir.path(), &[]);
    let token = first.token.clone();
    assert_eq!(token.len(), 64);
    // Derived from the join secret, so every orchestrator of the platform accepts it.
    let file = dir.path().join("data/join-secret");
    let secret = std::fs::read_to_string(&file).unwrap();
    let parsed = kraken_core::membership::JoinSecret::parse(&secret).unwrap();
    assert_eq!(parsed.derive("api-token"), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(first.config())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(first.config()).unwrap()).unwrap();
    assert_eq!(saved["token"], token.as_str());
    assert_eq!(saved["orchestrator"], first.addr.as_str());
    first.stop();

    // Restarted: the same token.
    let mut again = Up::start(dir.path(), &[]);
    assert_eq!(again.token, token);
    again.stop();

    // Given by the environment: used, not written over the kept one.
    let mut given = Up::start(
        dir.path(),
        &[("KRAKEN_API_TOKEN", "an-operator-chosen-token")],
    );
    assert_eq!(given.token, "an-operator-chosen-token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
    let out = given.kraken(&["--token", "an-operator-chosen-token", "deploy", "not a url"]);
    assert!(
        stderr(&out).contains("invalid request"),
        "authenticated, then refused for the URL: {}",
        stderr(&out)
    );
    let out = given.kraken(&["--token", &token, "deploy", "not a url"]);
    assert!(
        stderr(&out).contains("wrong API token"),
        "the kept token is not the one in use: {}",
        stderr(&out)
    );
    given.stop();
}
