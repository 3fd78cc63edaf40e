//! Kraken processes started by tests: an orchestrator (`kraken up`) and workers
//! (`kraken agent`), each with its own data dir, killed when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KRAKEN: &str = env!("CARGO_BIN_EXE_kraken");

/// A `kraken` command with none of the user's settings.
pub fn command(config: &Path) -> Command {
    command_via(&[], config)
}

/// `kraken` run through `wrapper` (e.g. `ip netns exec <ns>`), with none of the user's
/// settings.
pub fn command_via(wrapper: &[&str], config: &Path) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(KRAKEN);
            cmd
        }
        None => Command::new(KRAKEN),
    };
    cmd.env("KRAKEN_CLI_CONFIG", config)
        .env_remove("KRAKEN_API_TOKEN")
        .env_remove("KRAKEN_ORCHESTRATOR")
        .env_remove("KRAKEN_DATA_DIR")
        .env_remove("KRAKEN_AMQP_URL")
        .env("RUST_LOG", "warn")
        // The broker deletes what a test's platform leaves, once unused for two minutes.
        .env("KRAKEN_AMQP_QUEUE_EXPIRY_SECS", "120");
    cmd
}

/// Polls `f` every 100 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The orchestrator process.
pub struct Orchestrator {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: String,
}

impl Orchestrator {
    /// `kraken up <args> --api-addr 127.0.0.1:0 --data-dir <dir>/data`; waits for its API.
    pub fn start(dir: &Path, args: &[&str]) -> Orchestrator {
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        let mut child = command(&dir.join("cli.json"))
            .arg("up")
            .args(args)
            .args(["--api-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
                panic!("kraken up did not announce its API; its log:\n{log}")
            });
            if let Some(a) = line.strip_prefix("kraken: API at http://") {
                break a.to_owned();
            }
        };
        Orchestrator {
            child,
            dir: dir.to_path_buf(),
            addr,
        }
    }

    /// Runs `kraken <args>` with the CLI config `kraken up` saved.
    pub fn kraken(&self, args: &[&str]) -> Output {
        command(&self.dir.join("cli.json"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `kraken --json <args>`, expecting success.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.kraken(&all);
        assert!(
            out.status.success(),
            "kraken {all:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every deployment, as `kraken --json ls` shows it.
    pub fn deployments(&self) -> Vec<Value> {
        self.json(&["ls"]).as_array().cloned().unwrap_or_default()
    }

    /// Destroys every deployment, then stops the process.
    pub fn stop(&mut self) {
        for d in self.deployments() {
            if let Some(id) = d["id"].as_str() {
                let _ = self.kraken(&["rm", id, "--wait", "--timeout", "60"]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker process.
pub struct Worker {
    pub child: Child,
    pub id: String,
}

impl Worker {
    /// `kraken agent <args> --data-dir <dir>`; its node id is read from its data dir.
    pub fn start(dir: &Path, args: &[&str]) -> Worker {
        Worker::start_via(&[], dir, args)
    }

    /// The same, run through `wrapper` (e.g. `ip netns exec <ns>`, which execs the agent,
    /// so the child is the agent itself).
    pub fn start_via(wrapper: &[&str], dir: &Path, args: &[&str]) -> Worker {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = command_via(wrapper, &dir.join("cli.json"))
            .arg("agent")
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut id = String::new();
        wait_until(
            Duration::from_secs(30),
            "the agent wrote its node id",
            || {
                id = std::fs::read_to_string(dir.join("node-id")).unwrap_or_default();
                !id.is_empty()
            },
        );
        Worker { child, id }
    }

    /// Whether the agent process still exists (a killed one is reaped by [`kill`](Self::kill),
    /// but its id stays, so this looks in /proc).
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.child.id())).exists()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tests that start whole platforms hold this, so that a test binary runs one of them at a
/// time: the failure detector's timings are part of what they check.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port free at the time of the call (for an agent's API).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The manifest of a test app that only sleeps (`exec sleep 600`): cheap to run many of, and
/// found among the processes by [`is_app_process`]. `extra` is appended (more tables).
pub fn sleeper_manifest(name: &str, extra: &str) -> String {
    format!(
        "[app]\nname = \"{name}\"\n\n[config]\nport = 9300\nlang = \"python\"\nrun = \"exec sleep 600\"\n{extra}"
    )
}

/// Whether process `pid` is a test app of [`sleeper_manifest`].
pub fn is_app_process(pid: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .starts_with(b"sleep\x00600")
}
