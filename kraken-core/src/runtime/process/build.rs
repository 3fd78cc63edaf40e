//! Running a manifest's `build` command over an artifact directory.

use super::logs::LineSplitter;
use super::{ERROR_LINES, Exit, base_env, check_env, os, quote_output};
use crate::model::{LogLine, LogStream};
use crate::runtime::{LogSink, RuntimeError};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::debug;

/// How long a finished build's output is still read: a process the build left behind may
/// hold the pipes open.
const BUILD_DRAIN: Duration = Duration::from_secs(2);

/// Kills a build's process group when the build ends or is abandoned.
struct BuildGroup {
    pid: u32,
    start_ticks: Option<u64>,
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        if os::identify(os::read_stat(self.pid), self.start_ticks) != os::Identity::Foreign {
            // Nothing left to kill is the usual case.
            let _ = os::signal_group(self.pid, libc::SIGKILL);
        }
    }
}

/// Runs a build command in `dir`, streaming its output into `log`.
pub(super) async fn run(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    log: &LogSink,
) -> Result<(), RuntimeError> {
    check_env(env).map_err(|reason| RuntimeError::BuildFailed { reason })?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_clear()
        .envs(base_env())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| RuntimeError::BuildFailed {
        reason: format!("cannot run the build command: {e}"),
    })?;
    let group = child.id().map(|pid| BuildGroup {
        pid,
        start_ticks: os::read_stat(pid).map(|s| s.start_ticks),
    });
    let (tx, mut rx) = mpsc::channel(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, tx.clone()));
    }
    drop(tx);
    let mut tail = VecDeque::new();
    let status = {
        let wait = child.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(text) => forward(text, log, &mut tail).await,
                    None => break wait.await,
                },
                status = &mut wait => break status,
            }
        }
    };
    let drain = async {
        while let Some(text) = rx.recv().await {
            forward(text, log, &mut tail).await;
        }
    };
    if tokio::time::timeout(BUILD_DRAIN, drain).await.is_err() {
        debug!("the build left a process holding its output open");
    }
    drop(group);
    let status = status.map_err(|source| RuntimeError::Io {
        context: "waiting for the build command".into(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    Err(RuntimeError::BuildFailed {
        reason: format!(
            "the build command `{script}` ended with {}{}",
            Exit::from(status),
            quote_output(tail.iter())
        ),
    })
}

/// Reads a build pipe line by line into `tx`.
async fn pump(mut reader: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut buf = vec![0; 8192];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                splitter.push(&buf[..n], &mut lines);
                for line in lines.drain(..) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    if let Some(line) = splitter.finish() {
        let _ = tx.send(line).await;
    }
}

/// Hands a build output line to the sink, keeping the last ones for an error message.
async fn forward(text: String, log: &LogSink, tail: &mut VecDeque<String>) {
    if tail.len() == ERROR_LINES {
        tail.pop_front();
    }
    tail.push_back(text.clone());
    // A build goes on when nobody listens to its output.
    let _ = log.send(LogLine::new(LogStream::Build, text)).await;
}
