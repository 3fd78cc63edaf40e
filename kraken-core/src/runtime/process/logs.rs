//! An instance's output: files its process appends to, one keeper task per instance that
//! reads them, keeps their size bounded and fans new lines out to followers.

use super::Liveness;
use crate::model::{LogLine, LogStream, MAX_LOG_LINE};
use crate::runtime::LogFollow;
use crate::util::lock;
use futures::StreamExt;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

/// The app's standard output, in its instance directory.
pub(super) const STDOUT_FILE: &str = "stdout.log";
/// The app's standard error, in its instance directory.
pub(super) const STDERR_FILE: &str = "stderr.log";

/// The most bytes read from one file per poll. A file that grew more than this since the
/// last poll is skipped ahead: what lies before is lost, memory stays bounded.
const MAX_READ: u64 = 1024 * 1024;
/// Lines buffered for followers that read slower than the app writes; a follower further
/// behind skips lines.
const FOLLOW_BUFFER: usize = 1024;

/// Cuts a byte stream into lines of at most [`MAX_LOG_LINE`] bytes.
#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    buf: Vec<u8>,
    /// The current line was too long and already emitted: drop bytes up to its end.
    discarding: bool,
}

impl LineSplitter {
    /// Feeds bytes; complete lines are appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<String>) {
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            let (chunk, rest, ends_line) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.discarding {
                let room = MAX_LOG_LINE.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    out.push(self.take());
                    self.discarding = true;
                }
            }
            if ends_line {
                if self.discarding {
                    self.discarding = false;
                } else {
                    out.push(self.take());
                }
            }
        }
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.discarding = false;
        (!self.buf.is_empty()).then(|| self.take())
    }

    /// Drops everything up to the next line break (after skipping ahead mid-line).
    fn resync(&mut self) {
        self.buf.clear();
        self.discarding = true;
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if line.ends_with('\r') {
            line.pop();
        }
        line
    }
}

/// The recent lines of an instance and the channel that carries new ones to followers.
pub(super) struct LogHub {
    state: Mutex<HubState>,
}

struct HubState {
    tail: VecDeque<LogLine>,
    tail_cap: usize,
    /// `None` once the keeper ended: followers get the tail and end.
    live: Option<broadcast::Sender<LogLine>>,
}

impl LogHub {
    /// An open hub keeping the last `tail_cap` lines.
    pub fn new(tail_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        LogHub {
            state: Mutex::new(HubState {
                tail: VecDeque::new(),
                tail_cap,
                live: Some(tx),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // Every update is a few pushes and pops: a panic elsewhere leaves it consistent.
        lock(&self.state)
    }

    /// Records lines and hands them to the followers.
    fn publish(&self, lines: Vec<LogLine>) {
        let mut state = self.state();
        for line in lines {
            if let Some(tx) = &state.live {
                // No follower is not an error.
                let _ = tx.send(line.clone());
            }
            state.tail.push_back(line);
            while state.tail.len() > state.tail_cap {
                state.tail.pop_front();
            }
        }
    }

    /// Ends every follower once it has read what was published.
    fn close(&self) {
        self.state().live = None;
    }

    /// The recent lines, then the new ones as they come, until the hub closes. Taken under
    /// the lock so that no line is missed or seen twice between the two.
    pub fn follow(&self) -> LogFollow {
        let state = self.state();
        let recent: Vec<LogLine> = state.tail.iter().cloned().collect();
        let live = state.live.as_ref().map(|tx| tx.subscribe());
        drop(state);
        let recent = futures::stream::iter(recent);
        match live {
            Some(rx) => Box::pin(
                recent.chain(BroadcastStream::new(rx).filter_map(|r| std::future::ready(r.ok()))),
            ),
            None => Box::pin(recent),
        }
    }
}

/// Reads one log file from where it left off.
struct Follower {
    path: PathBuf,
    stream: LogStream,
    offset: u64,
    splitter: LineSplitter,
}

impl Follower {
    fn new(path: PathBuf, stream: LogStream) -> Self {
        Follower {
            path,
            stream,
            offset: 0,
            splitter: LineSplitter::default(),
        }
    }

    /// Reads what is new; empties the file once it is past `cap`. `Ok(None)`: the file is gone.
    fn poll(&mut self, cap: u64) -> io::Result<Option<Vec<LogLine>>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut lines = Vec::new();
        let len = self.read_new(&mut file, &mut lines)?;
        if len > cap {
            // Read once more right before emptying so that only what the app writes
            // between these two calls is lost. The app opened the file with O_APPEND: its
            // next write lands at the new end.
            self.read_new(&mut file, &mut lines)?;
            OpenOptions::new()
                .write(true)
                .open(&self.path)?
                .set_len(0)?;
            self.offset = 0;
        }
        Ok(Some(
            lines
                .into_iter()
                .map(|text| LogLine::new(self.stream, text))
                .collect(),
        ))
    }

    /// Appends the complete lines written since the last read; returns the file length.
    fn read_new(&mut self, file: &mut File, out: &mut Vec<String>) -> io::Result<u64> {
        let len = file.metadata()?.len();
        if len < self.offset {
            // Emptied (by a keeper of an earlier run, or by hand): start over.
            self.offset = 0;
            self.splitter.resync();
        }
        if len - self.offset > MAX_READ {
            self.offset = len - MAX_READ;
            self.splitter.resync();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.by_ref()
            .take(len - self.offset)
            .read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.splitter.push(&buf, out);
        Ok(len)
    }

    fn finish(&mut self) -> Option<LogLine> {
        self.splitter
            .finish()
            .map(|text| LogLine::new(self.stream, text))
    }
}

/// Settings of a keeper.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeepConfig {
    /// Size past which a log file is emptied.
    pub cap: u64,
    /// Time between polls.
    pub interval: Duration,
}

/// Follows an instance's log files until the instance ends, the keeper is cancelled or
/// the files disappear; then closes the hub.
pub(super) async fn keep(
    hub: Arc<LogHub>,
    dir: PathBuf,
    liveness: Liveness,
    cancel: CancellationToken,
    config: KeepConfig,
) {
    let mut followers = Some(vec![
        Follower::new(dir.join(STDOUT_FILE), LogStream::Stdout),
        Follower::new(dir.join(STDERR_FILE), LogStream::Stderr),
    ]);
    loop {
        // Asked before reading, so that the last read sees everything an ended process wrote.
        let ended = !liveness.is_running().await;
        let Some(mut current) = followers.take() else {
            break;
        };
        let polled = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            let mut present = false;
            for follower in &mut current {
                match follower.poll(config.cap) {
                    Ok(Some(new)) => {
                        present = true;
                        lines.extend(new);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        present = true;
                        tracing::warn!(file = %follower.path.display(), cause = %e, "cannot read log file");
                    }
                }
            }
            (current, lines, present)
        })
        .await;
        let Ok((mut current, lines, present)) = polled else {
            break;
        };
        hub.publish(lines);
        if ended || !present {
            hub.publish(current.iter_mut().filter_map(Follower::finish).collect());
            break;
        }
        followers = Some(current);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
    hub.close();
}

/// The last `n` lines of a file (reading at most its last 64 KiB), for error messages.
pub(super) fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let mut splitter = LineSplitter::default();
    if start > 0 {
        splitter.resync();
    }
    let mut lines = Vec::new();
    splitter.push(&buf, &mut lines);
    lines.extend(splitter.finish());
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_across_chunks_and_strips_cr() {
        assert_eq!(
            split(&[b"a\r\nb", b"c\n\nd"]),
            vec!["a".to_owned(), "bc".into(), "".into(), "d".into()]
        );
        assert_eq!(split(&[b"\xffx\n"]), vec!["\u{fffd}x".to_owned()]);
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_dropped() {
        let long = vec![b'x'; MAX_LOG_LINE * 2 + 5];
        let out = split(&[&long[..100], &long[100..], b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LOG_LINE);
        assert_eq!(out[1], "next");
    }

    #[test]
    fn follower_reads_new_lines_and_truncates_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut f = Follower::new(path.clone(), LogStream::Stdout);
        use std::io::Write;
        writer.write_all(b"one\ntw").unwrap();
        let texts = |v: Vec<LogLine>| v.into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(texts(f.poll(1000).unwrap().unwrap()), vec!["one"]);
        writer.write_all(b"o\n").unwrap();
        writer.write_all(&[b'z'; 2000]).unwrap();
        writer.write_all(b"\n").unwrap();
        let lines = texts(f.poll(1000).unwrap().unwrap());
        assert_eq!(lines[0], "two");
        assert_eq!(lines[1].len(), 2000);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "emptied past the cap"
        );
        writer.write_all(b"after\n").unwrap();
        assert_eq!(texts(f.poll(1000).unwrap().unwrap()), vec!["after"]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            6,
            "appends at the new end"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(f.poll(1000).unwrap().is_none());
    }

    #[test]
    fn tail_lines_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("err.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_lines(&path, 2), vec!["line 98", "line 99"]);
        assert!(tail_lines(&dir.path().join("none"), 2).is_empty());
    }

    #[tokio::test]
    async fn hub_replays_the_tail_then_follows_until_closed() {
        let hub = LogHub::new(2);
        hub.publish(
            ["a", "b", "c"]
                .into_iter()
                .map(|t| LogLine::new(LogStream::Stdout, t))
                .collect(),
        );
        let follow = hub.follow();
        hub.publish(vec![LogLine::new(LogStream::Stderr, "d")]);
        hub.close();
        let seen: Vec<String> = follow.map(|l| l.text).collect().await;
        assert_eq!(seen, vec!["b", "c", "d"]);
        let late: Vec<String> = hub.follow().map(|l| l.text).collect().await;
        assert_eq!(late, vec!["c", "d"]);
    }
}
