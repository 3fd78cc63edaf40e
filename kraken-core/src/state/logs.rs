//! Deployment logs: a bounded ring in memory per deployment, mirrored to files under the
//! data dir with a size bound (one rotated file kept).

use crate::model::{DeploymentId, LogLine};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Bounds of the log store.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Bytes of text kept in memory per deployment.
    pub memory_bytes_per_deployment: usize,
    /// Bytes per log file before it is rotated (so at most twice this on disk).
    pub file_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            memory_bytes_per_deployment: 256 * 1024,
            file_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Default)]
pub(crate) struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// Lines not yet written to disk.
    pending: Vec<LogLine>,
}

impl Ring {
    fn push(&mut self, line: LogLine, limit: usize, persist: bool) {
        self.bytes += line.text.len();
        if persist {
            self.pending.push(line.clone());
            // The writer is behind: keep the newest lines only, like the ring itself.
            if self.pending.len() > 10_000 {
                self.pending.drain(..5_000);
            }
        }
        self.lines.push_back(line);
        while self.bytes > limit {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.text.len(),
                None => break,
            }
        }
    }
}

pub(crate) struct LogStore {
    limits: LogLimits,
    dir: Option<PathBuf>,
    rings: HashMap<DeploymentId, Ring>,
}

impl LogStore {
    pub(crate) fn new(limits: LogLimits, dir: Option<PathBuf>) -> Self {
        LogStore {
            limits,
            dir,
            rings: HashMap::new(),
        }
    }

    pub(crate) fn append(&mut self, id: &DeploymentId, lines: impl IntoIterator<Item = LogLine>) {
        let persist = self.dir.is_some();
        let limit = self.limits.memory_bytes_per_deployment;
        let ring = self.rings.entry(id.clone()).or_default();
        for line in lines {
            ring.push(line, limit, persist);
        }
    }

    pub(crate) fn tail(&self, id: &DeploymentId, n: Option<usize>) -> Vec<LogLine> {
        let Some(ring) = self.rings.get(id) else {
            return Vec::new();
        };
        let skip = n.map_or(0, |n| ring.lines.len().saturating_sub(n));
        ring.lines.iter().skip(skip).cloned().collect()
    }

    pub(crate) fn ids(&self) -> Vec<DeploymentId> {
        let mut ids: Vec<_> = self.rings.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn contains(&self, id: &DeploymentId) -> bool {
        self.rings.contains_key(id)
    }

    /// Forgets a deployment's log in memory; the files are removed by [`delete_files`].
    pub(crate) fn remove(&mut self, id: &DeploymentId) -> bool {
        self.rings.remove(id).is_some()
    }

    pub(crate) fn take_pending(&mut self) -> Vec<(DeploymentId, Vec<LogLine>)> {
        self.rings
            .iter_mut()
            .filter(|(_, r)| !r.pending.is_empty())
            .map(|(id, r)| (id.clone(), std::mem::take(&mut r.pending)))
            .collect()
    }

    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub(crate) fn limits(&self) -> LogLimits {
        self.limits
    }

    /// Loads the newest lines of every log file (blocking; called at start-up).
    pub(crate) fn load(&mut self) -> std::io::Result<()> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let Ok(id) = DeploymentId::parse(stem) else {
                continue;
            };
            let limit = self.limits.memory_bytes_per_deployment;
            let ring = self.rings.entry(id).or_default();
            for file in [path.with_extension("log.1"), path.clone()] {
                let Ok(f) = std::fs::File::open(&file) else {
                    continue;
                };
                for line in std::io::BufReader::new(f).lines() {
                    // A torn last line after a crash is skipped, not fatal.
                    if let Ok(parsed) = serde_json::from_str::<LogLine>(&line?) {
                        ring.push(parsed, limit, false);
                    }
                }
            }
        }
        Ok(())
    }
}

fn file_of(dir: &Path, id: &DeploymentId) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// Appends lines to a deployment's log file, rotating it past the size bound (blocking).
pub(crate) fn write_lines(
    dir: &Path,
    id: &DeploymentId,
    lines: &[LogLine],
    limits: LogLimits,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = file_of(dir, id);
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= limits.file_bytes {
        std::fs::rename(&path, path.with_extension("log.1"))?;
    }
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?,
    );
    for line in lines {
        serde_json::to_writer(&mut out, line).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Removes a deployment's log files (blocking). The id is a checked [`DeploymentId`], so
/// the paths stay inside `dir`.
pub(crate) fn delete_files(dir: &Path, id: &DeploymentId) -> std::io::Result<()> {
    let path = file_of(dir, id);
    for p in [path.with_extension("log.1"), path] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::LogStream;

    #[test]
    fn ring_is_bounded_by_bytes() {
        let limits = LogLimits {
            memory_bytes_per_deployment: 100,
            file_bytes: 1000,
        };
        let mut store = LogStore::new(limits, None);
        let id = DeploymentId::random();
        store.append(
            &id,
            (0..50).map(|i| LogLine::new(LogStream::Stdout, format!("line {i:04}"))),
        );
        let tail = store.tail(&id, None);
        assert_eq!(tail.len(), 11, "11 lines of 9 bytes fit in 100");
        assert_eq!(tail.last().unwrap().text, "line 0049");
        assert_eq!(store.tail(&id, Some(3)).len(), 3);
    }

    #[test]
    fn files_rotate_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            memory_bytes_per_deployment: 1 << 20,
            file_bytes: 2_000,
        };
        let id = DeploymentId::random();
        for i in 0..100 {
            write_lines(
                dir.path(),
                &id,
                &[LogLine::new(LogStream::Stdout, format!("line {i}"))],
                limits,
            )
            .unwrap();
        }
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 2 * 2_000 + 200, "disk use bounded, got {total}");
        let mut store = LogStore::new(limits, Some(dir.path().to_path_buf()));
        store.load().unwrap();
        let lines = store.tail(&id, None);
        assert_eq!(lines.last().unwrap().text, "line 99");
        assert!(lines.len() < 100, "the oldest rotated-out lines are gone");
        delete_files(dir.path(), &id).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
