//! The build context: the app's checkout as a tar stream (without `.git`), plus the
//! Dockerfile chosen by the manifest's `lang`.
//!
//! The archive is written on a blocking thread into a bounded channel, so a large checkout
//! is never held in memory whole and the async threads never touch the file system.

use crate::manifest::Lang;
use bytes::Bytes;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Name of the Dockerfile Kraken adds to the context: the language's (or, for `custom`, the
/// repository's own) with Kraken's `LABEL` line appended. The built-in Dockerfiles remove it
/// from the image again.
pub const KRAKEN_DOCKERFILE: &str = ".kraken.Dockerfile";
/// Name of a repository's own Dockerfile (`lang = "custom"`).
pub const CUSTOM_DOCKERFILE: &str = "Dockerfile";

/// Chunks sent to the daemon; the channel holds a few of them.
const CHUNK: usize = 64 * 1024;
const CHANNEL_CHUNKS: usize = 8;

/// The embedded Dockerfile for a language; `None` for `custom`.
pub fn embedded_dockerfile(lang: Lang) -> Option<&'static str> {
    match lang {
        Lang::Node => Some(include_str!("../../../dockerfiles/node.Dockerfile")),
        Lang::Python => Some(include_str!("../../../dockerfiles/python.Dockerfile")),
        Lang::Static => Some(include_str!("../../../dockerfiles/static.Dockerfile")),
        Lang::Custom => None,
    }
}

/// The stream of tar bytes for the daemon.
pub type ContextStream = tokio_stream::wrappers::ReceiverStream<Result<Bytes, io::Error>>;

/// The longest repository Dockerfile accepted (`custom`).
pub const MAX_DOCKERFILE: u64 = 1 << 20;

/// The Dockerfile to build with: `base` plus one `LABEL` instruction carrying `labels`.
///
/// One instruction, not the build API's `labels` option: the classic builder commits one
/// layer per label given that way, about a second each on slow storage. Label values must
/// be plain identifiers (checked by the caller), so no quoting rules of the Dockerfile's
/// escape character come into play.
pub fn with_labels(base: &str, labels: &[(&str, &str)]) -> String {
    let mut text = base.trim_end().to_owned();
    text.push_str("\nLABEL");
    for (key, value) in labels {
        text.push_str(&format!(" {key}=\"{value}\""));
    }
    text.push('\n');
    text
}

/// Starts writing the context of `source_dir` plus `dockerfile`, stored as
/// [`KRAKEN_DOCKERFILE`] (a file of that name in the checkout is left out). Returns the
/// byte stream and the writer task, which reports the archive's size or why it could not be
/// written.
pub fn stream_context(
    source_dir: PathBuf,
    dockerfile: String,
) -> (ContextStream, JoinHandle<io::Result<u64>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let task = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            written: 0,
        };
        let result = write_context(&mut writer, &source_dir, &dockerfile)
            .and_then(|()| writer.flush().map(|()| writer.written));
        if let Err(err) = &result {
            // Make the upload fail instead of sending a truncated archive as if complete.
            let _ = tx.blocking_send(Err(io::Error::new(err.kind(), err.to_string())));
        }
        result
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

fn write_context<W: Write>(out: W, source_dir: &Path, dockerfile: &str) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    // Symlinks stay symlinks: following them could pull files from outside the checkout.
    tar.follow_symlinks(false);
    // Fixed owners and times: the same checkout gives the same archive, so Docker's build
    // cache is reused across redeploys of an unchanged app.
    tar.mode(tar::HeaderMode::Deterministic);
    append_dir(&mut tar, source_dir, Path::new(""))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, KRAKEN_DOCKERFILE, dockerfile.as_bytes())?;
    tar.into_inner()?.flush()
}

/// Appends the entries of `root/rel` recursively, in name order, skipping `.git` folders and
/// a file clashing with Kraken's own Dockerfile.
fn append_dir<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", dir.display())))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let rel_path = rel.join(&name);
        if rel_path == Path::new(KRAKEN_DOCKERFILE) {
            continue;
        }
        let file_type = entry.file_type()?;
        let path = entry.path();
        if file_type.is_dir() {
            tar.append_dir(&rel_path, &path)?;
            append_dir(tar, root, &rel_path)?;
        } else if file_type.is_file() || file_type.is_symlink() {
            tar.append_path_with_name(&path, &rel_path)?;
        }
        // Sockets, fifos and devices are not part of an app's source.
    }
    Ok(())
}

/// A `Write` that sends fixed-size chunks into the channel, blocking (on its own thread)
/// while the daemon is slower than the disk.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
    written: u64,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.written += chunk.len() as u64;
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the daemon stopped reading the build context",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn context_skips_git_and_adds_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("index.html"), "hi").unwrap();
        std::fs::write(dir.path().join(KRAKEN_DOCKERFILE), "FROM evil").unwrap();
        // Big enough to need several chunks.
        std::fs::write(dir.path().join("big.bin"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();

        let dockerfile = with_labels(
            embedded_dockerfile(Lang::Static).unwrap(),
            &[("io.kraken.managed", "true"), ("io.kraken.owner", "n1")],
        );
        assert!(
            dockerfile.ends_with("\nLABEL io.kraken.managed=\"true\" io.kraken.owner=\"n1\"\n")
        );
        let (stream, task) = stream_context(dir.path().to_path_buf(), dockerfile);
        let chunks: Vec<_> = stream.collect().await;
        let size = task.await.unwrap().unwrap();
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(bytes.len() as u64, size);

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == KRAKEN_DOCKERFILE {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                assert!(text.contains("ARG BASE_IMAGE"), "ours, not the repo's file");
            }
            if name == "link" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
            }
            names.push(name);
        }
        assert!(names.iter().all(|n| !n.starts_with(".git")), "{names:?}");
        for want in ["index.html", "sub/a.txt", "big.bin", KRAKEN_DOCKERFILE] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} in {names:?}"
            );
        }
        assert_eq!(
            names.iter().filter(|n| *n == KRAKEN_DOCKERFILE).count(),
            1,
            "the repo's file of the same name is left out"
        );
    }

    #[tokio::test]
    async fn a_missing_directory_fails_the_stream() {
        let (stream, task) =
            stream_context(PathBuf::from("/nonexistent/kraken-test"), String::new());
        let chunks: Vec<_> = stream.collect().await;
        assert!(chunks.iter().any(|c| c.is_err()));
        assert!(task.await.unwrap().is_err());
    }

    #[test]
    fn every_builtin_lang_has_a_dockerfile_with_a_base_image_arg() {
        for lang in [Lang::Node, Lang::Python, Lang::Static] {
            let text = embedded_dockerfile(lang).unwrap();
            assert!(text.contains("ARG BASE_IMAGE="), "{lang:?}");
            assert!(text.contains("RUN_CMD"), "{lang:?}");
        }
        assert!(embedded_dockerfile(Lang::Custom).is_none());
    }
}
