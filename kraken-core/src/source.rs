//! Getting an app's source: a git URL and branch become a checkout and a commit id.
//!
//! Kraken drives the `git` command-line program (present on every node) through
//! [`tokio::process`], so no git library is linked and every transport git supports (HTTPS with
//! the node's credential helpers, SSH with its keys, local paths) works as the operator set it up.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use kraken_core::source::{Git, SourceError};
//!
//! # async fn deploy() -> Result<(), SourceError> {
//! let git = Git::new().with_timeout(Duration::from_secs(300));
//! let url = "https://example.org/hello.git";
//! // Cheap: asks the server for the branch tip without cloning.
//! let head = git.head_commit(url, "main").await?;
//! // Pinning the commit makes the checkout match what was looked up, even if the branch
//! // moves in between.
//! let checkout = git
//!     .fetch(url, "main", Some(&head), Path::new("/var/lib/kraken/src/hello"))
//!     .await?;
//! assert_eq!(checkout.commit, head);
//! # Ok(())
//! # }
//! ```
//!
//! # Safety
//!
//! URLs and branch names come from users, and git has a long history of option-injection and
//! transport tricks, so [`Git`]:
//!
//! * validates every URL ([`validate_url`]), branch ([`validate_branch`]) and commit id
//!   ([`validate_commit`]) before running anything, rejecting leading `-`, whitespace, control
//!   characters, `ext::`-style transport helpers and hosts that look like options;
//! * allows only the protocols it was configured with ([`Git::with_protocols`]), both in its own
//!   check and through `GIT_ALLOW_PROTOCOL`, and passes `-c protocol.ext.allow=never`;
//! * puts `--` before user input on every command line;
//! * never lets git or ssh prompt: stdin is `/dev/null`, `GIT_TERMINAL_PROMPT=0`, an empty
//!   `GIT_ASKPASS`, `SSH_ASKPASS_REQUIRE=never`, and `ssh -o BatchMode=yes` unless the operator set
//!   `GIT_SSH_COMMAND` or `GIT_SSH` themselves;
//! * ignores the system git configuration (`GIT_CONFIG_NOSYSTEM=1`) and any `GIT_DIR`-style
//!   variables inherited from the agent's environment;
//! * bounds every command by a timeout ([`Git::with_timeout`]) and kills it when the timeout
//!   fires or the future is dropped; keeps only the last [`STDERR_LIMIT`] bytes of its stderr;
//! * clones with `--no-local`, so a local path is read through git's transport (which honours
//!   the shallow depth and the protocol rules) rather than by hard-linking its object files.
//!
//! Killing git on timeout does not reach helper processes it started (ssh, a remote helper):
//! they see their pipes close and exit on their own.

use crate::util::redact;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How long one git command may run before it is killed, unless [`Git::with_timeout`] says
/// otherwise. Generous, because a first clone over a slow link can take a while.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest repository URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The longest branch name accepted, in bytes (a common file-name limit, since git stores
/// branches as files).
pub const MAX_BRANCH_LEN: usize = 255;

/// How many bytes from the end of a git command's stderr are kept for error messages.
pub const STDERR_LIMIT: usize = 2048;

/// How much of a command's stdout is kept; the commands used print one line or a few refs.
const STDOUT_LIMIT: usize = 1024 * 1024;

/// How long to keep reading a command's pipes after it exited: a helper it started may still
/// hold them open, and its last words are worth waiting for only briefly.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// How long to wait for a killed command to be reaped; SIGKILL cannot be ignored, so this is
/// only a backstop.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How much of a rejected URL or branch is quoted back in an error.
const QUOTE_LIMIT: usize = 256;

/// Environment variables that would point git at another repository than the one it is
/// working on; an agent started from a git hook, for one, inherits them.
const REPOSITORY_ENV: [&str; 8] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CONFIG_PARAMETERS",
];

/// A transport git may use to reach a repository.
///
/// The names match git's own (`protocol.<name>.allow`, `GIT_ALLOW_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A repository on the node's file system: `file://` URLs and absolute paths.
    File,
    /// The unauthenticated git daemon protocol: `git://`.
    Git,
    /// SSH: `ssh://` URLs and the scp-like `user@host:path`.
    Ssh,
    /// Plain HTTP: `http://`.
    Http,
    /// HTTPS: `https://`.
    Https,
}

impl Protocol {
    /// Every protocol, the default set of a [`Git`].
    pub const ALL: [Protocol; 5] = [
        Protocol::File,
        Protocol::Git,
        Protocol::Ssh,
        Protocol::Http,
        Protocol::Https,
    ];

    /// git's name for the protocol.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::File => "file",
            Protocol::Git => "git",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an app's source could not be looked up or fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repository URL is malformed, unsafe, or uses a protocol that is not allowed.
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (shortened if it was very long).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The branch name is not a valid (or safe) git branch name.
    #[error("invalid branch name {branch:?}: {reason}")]
    InvalidBranch {
        /// The branch as given (shortened if it was very long).
        branch: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The commit id is not a full hexadecimal object id.
    #[error("invalid commit id {commit:?}: expected 40 or 64 lowercase hexadecimal digits")]
    InvalidCommit {
        /// The id as given (shortened if it was very long).
        commit: String,
    },
    /// The repository exists but has no such branch.
    #[error("branch {branch:?} not found in {url}")]
    BranchNotFound {
        /// The repository.
        url: String,
        /// The missing branch.
        branch: String,
    },
    /// The commit does not exist in the repository or is not on the requested branch.
    #[error("commit {commit} is not on the requested branch of {url}")]
    CommitNotFound {
        /// The repository.
        url: String,
        /// The commit that was asked for.
        commit: String,
    },
    /// git could not talk to the repository: it does not exist, access was denied, or the
    /// network failed. `stderr` holds git's own explanation.
    #[error("repository {url} is unavailable: {stderr}")]
    RepositoryUnavailable {
        /// The repository.
        url: String,
        /// The end of git's stderr, trimmed.
        stderr: String,
    },
    /// A local git command failed unexpectedly.
    #[error("`{command}` failed ({}): {stderr}", describe_status(*status))]
    GitFailed {
        /// The command line, without the safety options Kraken adds.
        command: String,
        /// The exit code, `None` when git was killed by a signal.
        status: Option<i32>,
        /// The end of git's stderr, trimmed.
        stderr: String,
    },
    /// A git command ran longer than the configured timeout and was killed.
    #[error("`{command}` timed out after {after:?}")]
    TimedOut {
        /// The command line, without the safety options Kraken adds.
        command: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The git program could not be started, typically because it is not installed.
    #[error("cannot run git: {source}")]
    Spawn {
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// The checkout directory could not be prepared or cleaned up.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory concerned.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
}

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// A source tree checked out from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The directory holding the working tree (and its `.git`).
    pub dir: PathBuf,
    /// The full id of the commit checked out.
    pub commit: String,
}

/// Runs the `git` program on behalf of Kraken, safely (see the [module docs](self)).
///
/// Cheap to clone; holds only configuration.
#[derive(Debug, Clone)]
pub struct Git {
    binary: PathBuf,
    timeout: Duration,
    protocols: Vec<Protocol>,
}

impl Default for Git {
    fn default() -> Self {
        Git {
            binary: PathBuf::from("git"),
            timeout: DEFAULT_TIMEOUT,
            protocols: Protocol::ALL.to_vec(),
        }
    }
}

impl Git {
    /// `git` from `PATH`, a [`DEFAULT_TIMEOUT`] per command, every [`Protocol`] allowed.
    pub fn new() -> Self {
        Git::default()
    }

    /// Sets how long each git command may run before it is killed.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the git program to run, e.g. an absolute path when `PATH` is not trusted.
    #[must_use]
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Sets which protocols repositories may be reached with.
    ///
    /// An operator may, for instance, drop [`Protocol::File`] so that users cannot deploy
    /// repositories that happen to lie on a worker's disk.
    #[must_use]
    pub fn with_protocols(mut self, protocols: impl IntoIterator<Item = Protocol>) -> Self {
        self.protocols = Vec::new();
        for protocol in protocols {
            if !self.protocols.contains(&protocol) {
                self.protocols.push(protocol);
            }
        }
        self
    }

    /// The git program that is run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The timeout of each git command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The protocols repositories may be reached with.
    pub fn protocols(&self) -> &[Protocol] {
        &self.protocols
    }

    /// Validates `url` and checks that its protocol is allowed.
    pub fn check_url(&self, url: &str) -> Result<Protocol, SourceError> {
        let protocol = url_protocol(url)?;
        if self.protocols.contains(&protocol) {
            Ok(protocol)
        } else {
            Err(SourceError::InvalidUrl {
                url: display_url(url),
                reason: format!("the {protocol} protocol is not allowed on this platform"),
            })
        }
    }

    /// The id of the commit at the tip of `branch` in the repository at `url`, without
    /// cloning it (`git ls-remote`). Used to notice that a deployment has new commits.
    pub async fn head_commit(&self, url: &str, branch: &str) -> Result<String, SourceError> {
        self.check_url(url)?;
        validate_branch(branch)?;
        let refname = format!("refs/heads/{branch}");
        let output = self
            .run(None, &["ls-remote", "--heads", "--", url, refname.as_str()])
            .await?;
        if !output.status.success() {
            return Err(SourceError::RepositoryUnavailable {
                url: display_url(url),
                stderr: output.stderr,
            });
        }
        // ls-remote matches patterns against the end of ref names, so
        // `refs/heads/x/refs/heads/main` would match too: insist on the exact name.
        output
            .stdout
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(id, name)| *name == refname && validate_commit(id).is_ok())
            .map(|(id, _)| id.to_owned())
            .ok_or_else(|| SourceError::BranchNotFound {
                url: display_url(url),
                branch: branch.to_owned(),
            })
    }

    /// Clones `branch` of the repository at `url` into `dest` and checks out `commit` (the tip
    /// of the branch when `None`).
    ///
    /// `dest` must not exist or be an empty directory; missing parent directories are
    /// created. The clone is shallow (one commit) and is deepened only when an older commit is
    /// asked for; that commit must be reachable from the branch, otherwise the result is
    /// [`SourceError::CommitNotFound`]. On any failure, including the future being dropped,
    /// whatever was written to `dest` is removed (an empty `dest` that existed before is left
    /// empty).
    pub async fn fetch(
        &self,
        url: &str,
        branch: &str,
        commit: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, SourceError> {
        self.check_url(url)?;
        validate_branch(branch)?;
        if let Some(commit) = commit {
            validate_commit(commit)?;
        }
        let existed = prepare_dest(dest).await?;
        let mut guard = CleanupGuard {
            dest: dest.to_path_buf(),
            existed,
            armed: true,
        };
        match self.clone_and_checkout(url, branch, commit, dest).await {
            Ok(checkout) => {
                guard.armed = false;
                Ok(checkout)
            }
            Err(err) => {
                // The error that caused the cleanup matters more than a failed cleanup.
                let _ = clean_dest(dest.to_path_buf(), existed).await;
                guard.armed = false;
                Err(err)
            }
        }
    }

    async fn clone_and_checkout(
        &self,
        url: &str,
        branch: &str,
        commit: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, SourceError> {
        let output = self
            .run(
                None,
                &[
                    OsStr::new("clone"),
                    OsStr::new("--quiet"),
                    OsStr::new("--no-local"),
                    OsStr::new("--depth"),
                    OsStr::new("1"),
                    OsStr::new("--single-branch"),
                    OsStr::new("--no-tags"),
                    OsStr::new("--no-recurse-submodules"),
                    OsStr::new("--branch"),
                    OsStr::new(branch),
                    OsStr::new("--"),
                    OsStr::new(url),
                    dest.as_os_str(),
                ],
            )
            .await?;
        if !output.status.success() {
            // LC_ALL=C keeps this message in English.
            return Err(if output.stderr.contains("not found in upstream") {
                SourceError::BranchNotFound {
                    url: display_url(url),
                    branch: branch.to_owned(),
                }
            } else {
                SourceError::RepositoryUnavailable {
                    url: display_url(url),
                    stderr: output.stderr,
                }
            });
        }

        let head = self.rev_parse_head(dest).await?;
        let Some(commit) = commit.filter(|&c| c != head) else {
            return Ok(Checkout {
                dir: dest.to_path_buf(),
                commit: head,
            });
        };
        let not_found = || SourceError::CommitNotFound {
            url: display_url(url),
            commit: commit.to_owned(),
        };

        let shallow = self
            .run_ok(Some(dest), &["rev-parse", "--is-shallow-repository"])
            .await?;
        if shallow.trim() == "true" {
            let output = self
                .run(
                    Some(dest),
                    &[
                        "fetch",
                        "--quiet",
                        "--unshallow",
                        "--no-tags",
                        "--no-recurse-submodules",
                        "origin",
                    ],
                )
                .await?;
            if !output.status.success() {
                return Err(SourceError::RepositoryUnavailable {
                    url: display_url(url),
                    stderr: output.stderr,
                });
            }
        }

        let object = format!("{commit}^{{commit}}");
        let exists = self
            .run(Some(dest), &["cat-file", "-e", "--", object.as_str()])
            .await?;
        if !exists.status.success() {
            return Err(not_found());
        }
        let tip = format!("refs/remotes/origin/{branch}");
        let ancestor = self
            .run(
                Some(dest),
                &["merge-base", "--is-ancestor", "--", commit, tip.as_str()],
            )
            .await?;
        match ancestor.status.code() {
            Some(0) => {}
            Some(1) => return Err(not_found()),
            status => {
                return Err(SourceError::GitFailed {
                    command: ancestor.command,
                    status,
                    stderr: ancestor.stderr,
                });
            }
        }
        self.run_ok(
            Some(dest),
            &[
                "checkout",
                "--quiet",
                "--detach",
                "--no-recurse-submodules",
                commit,
                "--",
            ],
        )
        .await?;
        let head = self.rev_parse_head(dest).await?;
        Ok(Checkout {
            dir: dest.to_path_buf(),
            commit: head,
        })
    }

    async fn rev_parse_head(&self, repo: &Path) -> Result<String, SourceError> {
        let args = ["rev-parse", "--verify", "HEAD"];
        let stdout = self.run_ok(Some(repo), &args).await?;
        let id = stdout.trim();
        validate_commit(id)
            .map(|()| id.to_owned())
            .map_err(|_| SourceError::GitFailed {
                command: command_line(&args),
                status: Some(0),
                stderr: format!("unexpected output {:?}", shorten(id)),
            })
    }

    /// Runs a command that is expected to succeed and returns its stdout.
    async fn run_ok<S: AsRef<OsStr>>(
        &self,
        cwd: Option<&Path>,
        args: &[S],
    ) -> Result<String, SourceError> {
        let output = self.run(cwd, args).await?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(SourceError::GitFailed {
                command: output.command,
                status: output.status.code(),
                stderr: output.stderr,
            })
        }
    }

    /// Runs one git command with the safety settings, the timeout and bounded output capture.
    async fn run<S: AsRef<OsStr>>(
        &self,
        cwd: Option<&Path>,
        args: &[S],
    ) -> Result<Output, SourceError> {
        let command = redact(&command_line(args));
        let mut cmd = self.command(cwd, args);
        match run_captured(&mut cmd, self.timeout).await {
            Ok(Some((status, stdout, stderr))) => Ok(Output {
                command,
                status,
                stdout,
                stderr,
            }),
            Ok(None) => Err(SourceError::TimedOut {
                command,
                after: self.timeout,
            }),
            Err(source) => Err(SourceError::Spawn { source }),
        }
    }

    fn command<S: AsRef<OsStr>>(&self, cwd: Option<&Path>, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "-c",
            "protocol.ext.allow=never",
            // Keeps clone's stderr free of the hint about the initial branch name.
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ]);
        cmd.args(args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let allowed: Vec<&str> = self.protocols.iter().map(|p| p.as_str()).collect();
        for name in REPOSITORY_ENV {
            cmd.env_remove(name);
        }
        cmd.env("GIT_ALLOW_PROTOCOL", allowed.join(":"))
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env_remove("SSH_ASKPASS")
            .env("LC_ALL", "C");
        if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
            cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// What a finished git command produced.
struct Output {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Spawns `cmd` and collects its exit status, the head of its stdout and the tail of its
/// stderr; `None` if it did not finish within `timeout` (counted from before the spawn).
///
/// A command that times out is killed and reaped before this returns, so a caller that then
/// removes the files it was writing does not race with it. The child is also killed if this
/// future is dropped (`kill_on_drop`).
async fn run_captured(
    cmd: &mut Command,
    timeout: Duration,
) -> io::Result<Option<(ExitStatus, String, String)>> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = {
        let reading = async {
            tokio::join!(
                read_head(stdout, &mut out, STDOUT_LIMIT),
                read_tail(stderr, &mut err, STDERR_LIMIT),
            );
        };
        tokio::pin!(reading);
        let mut read_all = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status?,
                () = &mut reading, if !read_all => read_all = true,
                () = &mut deadline => {
                    // Errors mean the child is already gone, which is what is wanted.
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
                    return Ok(None);
                }
            }
        };
        if !read_all {
            // Whatever is still buffered arrives at once; a helper that outlives git and keeps
            // the pipes open must not hold us up.
            let _ = tokio::time::timeout(PIPE_GRACE, &mut reading).await;
        }
        status
    };
    let stdout = String::from_utf8_lossy(&out).into_owned();
    let stderr = redact(&String::from_utf8_lossy(&err));
    Ok(Some((status, stdout, tidy_stderr(stderr.as_bytes()))))
}

/// Reads `reader` to the end, keeping its first `limit` bytes.
async fn read_head<R: AsyncRead + Unpin>(reader: Option<R>, buf: &mut Vec<u8>, limit: usize) {
    let Some(mut reader) = reader else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Reads `reader` to the end, keeping its last `limit` bytes.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, buf: &mut Vec<u8>, limit: usize) {
    let Some(mut reader) = reader else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // Trim in batches so a chatty command costs linear time.
                if buf.len() > 2 * limit + chunk.len() {
                    buf.drain(..buf.len() - limit);
                }
            }
        }
    }
    if buf.len() > limit {
        buf.drain(..buf.len() - limit);
    }
}

/// Turns the kept tail of stderr into a message: valid UTF-8, at most [`STDERR_LIMIT`] bytes,
/// without surrounding whitespace.
fn tidy_stderr(tail: &[u8]) -> String {
    let text = String::from_utf8_lossy(tail);
    let mut text = text.trim();
    while text.len() > STDERR_LIMIT {
        // The lossy conversion may have grown the text; drop whole characters from the front.
        let mut cut = text.len() - STDERR_LIMIT;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = &text[cut..];
    }
    text.to_owned()
}

/// The command line shown in errors: `git` and the arguments, without the safety options.
fn command_line<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut line = String::from("git");
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Checks that `dest` can receive a clone; returns whether it already existed (empty).
async fn prepare_dest(dest: &Path) -> Result<bool, SourceError> {
    let io_err = |source: io::Error| SourceError::Io {
        path: dest.to_path_buf(),
        source,
    };
    match tokio::fs::symlink_metadata(dest).await {
        Ok(meta) if meta.is_dir() => {
            let mut entries = tokio::fs::read_dir(dest).await.map_err(io_err)?;
            if entries.next_entry().await.map_err(io_err)?.is_some() {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the checkout directory is not empty",
                )));
            }
            Ok(true)
        }
        Ok(_) => Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the checkout path exists and is not a directory",
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(dest).await.map_err(io_err)?;
            Ok(false)
        }
        Err(source) => Err(io_err(source)),
    }
}

/// Removes what a failed fetch wrote to `dest`, leaving an empty directory if one was there.
async fn clean_dest(dest: PathBuf, existed: bool) -> io::Result<()> {
    tokio::task::spawn_blocking(move || clean_dest_blocking(&dest, existed))
        .await
        .map_err(io::Error::other)?
}

fn clean_dest_blocking(dest: &Path, existed: bool) -> io::Result<()> {
    // A helper process of a killed git (index-pack, say) may still add a file while the tree
    // is being removed, making a directory non-empty again; try again a few times.
    let mut attempts = 0;
    loop {
        match std::fs::remove_dir_all(dest) {
            Ok(()) => break,
            Err(err) if err.kind() == io::ErrorKind::NotFound => break,
            Err(_) if attempts < 3 => attempts += 1,
            Err(err) => return Err(err),
        }
    }
    if existed {
        std::fs::create_dir(dest)?;
    }
    Ok(())
}

/// Cleans up `dest` if a fetch is abandoned midway (its future dropped).
struct CleanupGuard {
    dest: PathBuf,
    existed: bool,
    armed: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let dest = std::mem::take(&mut self.dest);
        let existed = self.existed;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                // Removing a tree blocks; never do it on an async worker thread.
                drop(handle.spawn_blocking(move || clean_dest_blocking(&dest, existed)));
            }
            Err(_) => {
                let _ = clean_dest_blocking(&dest, existed);
            }
        }
    }
}

/// A URL as shown in errors: credentials masked, length bounded.
fn display_url(url: &str) -> String {
    shorten(&redact(url))
}

/// Shortens user input quoted back in an error.
fn shorten(s: &str) -> String {
    if s.len() <= QUOTE_LIMIT {
        return s.to_owned();
    }
    let mut cut = QUOTE_LIMIT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Checks that `url` names a repository in a form Kraken accepts.
///
/// Accepted: `https://`, `http://`, `ssh://`, `git://` and `file://` URLs, the scp-like
/// `[user@]host:path`, and absolute local paths. Rejected: empty or longer than
/// [`MAX_URL_LEN`] bytes, a leading `-` (git would read it as an option), whitespace or control
/// characters, transport helpers such as `ext::` (which run arbitrary commands), other schemes,
/// relative paths, and user or host parts starting with `-` (ssh would read them as options).
pub fn validate_url(url: &str) -> Result<(), SourceError> {
    url_protocol(url).map(|_| ())
}

/// Validates `url` (see [`validate_url`]) and tells which protocol git would use for it.
pub fn url_protocol(url: &str) -> Result<Protocol, SourceError> {
    let bad = |reason: &str| SourceError::InvalidUrl {
        url: display_url(url),
        reason: reason.to_owned(),
    };
    if url.is_empty() {
        return Err(bad("must not be empty"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("must be at most {MAX_URL_LEN} bytes long")));
    }
    if url.starts_with('-') {
        return Err(bad("must not start with '-'"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace or control characters"));
    }
    if let Some(helper) = transport_helper(url) {
        return Err(bad(&format!(
            "the {helper}:: transport helper is not allowed"
        )));
    }
    const SCHEMES: [(&str, Protocol); 5] = [
        ("https://", Protocol::Https),
        ("http://", Protocol::Http),
        ("ssh://", Protocol::Ssh),
        ("git://", Protocol::Git),
        ("file://", Protocol::File),
    ];
    for (prefix, protocol) in SCHEMES {
        if let Some(rest) = url.strip_prefix(prefix) {
            check_hierarchical(protocol, rest).map_err(|reason| bad(&reason))?;
            return Ok(protocol);
        }
    }
    if url.contains("://") {
        return Err(bad(
            "unsupported scheme; use https://, http://, ssh://, git://, file://, \
             user@host:path or an absolute path",
        ));
    }
    if url.starts_with('/') {
        return Ok(Protocol::File);
    }
    check_scp_like(url).map_err(|reason| bad(&reason))?;
    Ok(Protocol::Ssh)
}

/// The helper name of git's `<helper>::<address>` syntax, if `url` uses it.
fn transport_helper(url: &str) -> Option<&str> {
    let end = url
        .char_indices()
        .find(|&(i, c)| {
            let scheme_char = if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
            };
            !scheme_char
        })
        .map_or(url.len(), |(i, _)| i);
    (end > 0 && url[end..].starts_with("::")).then(|| &url[..end])
}

/// Checks the part of a `scheme://` URL after the `//`.
fn check_hierarchical(protocol: Protocol, rest: &str) -> Result<(), String> {
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if protocol == Protocol::File {
        if !(authority.is_empty() || authority == "localhost") {
            return Err(
                "a file:// URL must name a local path, e.g. file:///srv/app.git".to_owned(),
            );
        }
        if path.len() <= 1 {
            return Err("must name a repository path".to_owned());
        }
        return Ok(());
    }
    let host_port = match authority.rsplit_once('@') {
        Some((user, host_port)) => {
            if user.is_empty() || user.starts_with('-') {
                return Err("the user name must not be empty or start with '-'".to_owned());
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("unterminated '[' in the host".to_owned());
        };
        check_host(address, true)?;
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return Err("unexpected text after ']' in the host".to_owned()),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if !host_port.starts_with('[') {
        check_host(host, false)?;
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port {port:?}"));
    }
    if path.len() <= 1 {
        return Err("must name a repository path after the host".to_owned());
    }
    Ok(())
}

/// Checks a host name (or, `bracketed`, an IPv6 address from inside `[...]`).
fn check_host(host: &str, bracketed: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host must not be empty".to_owned());
    }
    if host.starts_with('-') {
        return Err("the host must not start with '-'".to_owned());
    }
    let valid = if bracketed {
        host.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ':' | '.' | '%'))
    } else {
        host.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '%' | '~'))
    };
    if valid {
        Ok(())
    } else {
        Err(format!("invalid host {:?}", shorten(host)))
    }
}

/// Checks the scp-like `[user@]host:path` form that git treats as SSH.
fn check_scp_like(url: &str) -> Result<(), String> {
    const NOT_A_URL: &str = "not a URL: use https://, http://, ssh://, git://, file://, \
                             user@host:path or an absolute path (relative paths are not allowed)";
    let first_colon = url.find(':').ok_or(NOT_A_URL)?;
    let first_bracket = url.find('[').unwrap_or(usize::MAX);
    // git reads anything with a '/' before the first ':' as a local path.
    let separator = first_colon.min(first_bracket);
    if url[..separator].contains('/') {
        return Err(NOT_A_URL.to_owned());
    }
    let (user, host_path) = match url[..separator].find('@') {
        Some(at) => (Some(&url[..at]), &url[at + 1..]),
        None => (None, url),
    };
    if let Some(user) = user
        && (user.is_empty() || user.starts_with('-'))
    {
        return Err("the user name must not be empty or start with '-'".to_owned());
    }
    let path = if let Some(bracketed) = host_path.strip_prefix('[') {
        let (address, after) = bracketed
            .split_once(']')
            .ok_or("unterminated '[' in the host")?;
        check_host(address, true)?;
        after
            .strip_prefix(':')
            .ok_or("expected ':' after the bracketed host")?
    } else {
        let (host, path) = host_path.split_once(':').ok_or(NOT_A_URL)?;
        check_host(host, false)?;
        path
    };
    if path.is_empty() {
        return Err("must name a repository path after ':'".to_owned());
    }
    if path.starts_with('-') {
        return Err("the path must not start with '-'".to_owned());
    }
    Ok(())
}

/// Checks that `branch` is a valid git branch name that cannot be mistaken for an option.
///
/// These are the rules of `git check-ref-format --branch`, applied here so that no git
/// command ever sees a bad name: not empty, at most [`MAX_BRANCH_LEN`] bytes, no leading `-`,
/// not `@` or `HEAD`, no `..`, `@{` or `//`, no control characters, space or any of
/// `~ ^ : ? * [ \`, not starting or ending with `/`, not ending with `.`, and no `/`-separated
/// component starting with `.` or ending with `.lock`.
pub fn validate_branch(branch: &str) -> Result<(), SourceError> {
    let bad = |reason: String| SourceError::InvalidBranch {
        branch: shorten(branch),
        reason,
    };
    if branch.is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if branch.len() > MAX_BRANCH_LEN {
        return Err(bad(format!("must be at most {MAX_BRANCH_LEN} bytes long")));
    }
    if branch.starts_with('-') {
        return Err(bad("must not start with '-'".to_owned()));
    }
    if branch == "@" || branch == "HEAD" {
        return Err(bad(format!("{branch:?} is not a branch name")));
    }
    if let Some(c) = branch
        .chars()
        .find(|&c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err(bad(format!("must not contain {c:?}")));
    }
    for sequence in ["..", "@{", "//"] {
        if branch.contains(sequence) {
            return Err(bad(format!("must not contain {sequence:?}")));
        }
    }
    if branch.starts_with('/') || branch.ends_with('/') {
        return Err(bad("must not start or end with '/'".to_owned()));
    }
    if branch.ends_with('.') {
        return Err(bad("must not end with '.'".to_owned()));
    }
    for component in branch.split('/') {
        if component.starts_with('.') {
            return Err(bad(format!(
                "the component {component:?} must not start with '.'"
            )));
        }
        if component.ends_with(".lock") {
            return Err(bad(format!(
                "the component {component:?} must not end with \".lock\""
            )));
        }
    }
    Ok(())
}

/// Checks that `commit` is a full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
///
/// Abbreviated ids are refused because they can become ambiguous as a repository grows.
pub fn validate_commit(commit: &str) -> Result<(), SourceError> {
    let hex = commit
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && (commit.len() == 40 || commit.len() == 64) {
        Ok(())
    } else {
        Err(SourceError::InvalidCommit {
            commit: shorten(commit),
        })
    }
}

/// Where deployments get their source from: a branch head lookup and a checkout.
///
/// [`Git`] is the implementation Kraken uses; the trait lets a library user plug in another
/// source (an artifact store, a tarball server) and lets tests and benches take the source
/// out of the measurement.
#[async_trait::async_trait]
pub trait Fetcher: Send + Sync + 'static {
    /// The commit `branch` of `url` points at, without a checkout.
    async fn head_commit(&self, url: &str, branch: &str) -> Result<String, SourceError>;

    /// Checks `branch` of `url` out into `dest` (at `commit` when given).
    async fn fetch(
        &self,
        url: &str,
        branch: &str,
        commit: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, SourceError>;
}

#[async_trait::async_trait]
impl Fetcher for Git {
    async fn head_commit(&self, url: &str, branch: &str) -> Result<String, SourceError> {
        Git::head_commit(self, url, branch).await
    }

    async fn fetch(
        &self,
        url: &str,
        branch: &str,
        commit: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, SourceError> {
        Git::fetch(self, url, branch, commit, dest).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url_ok(url: &str) -> Protocol {
        match url_protocol(url) {
            Ok(protocol) => protocol,
            Err(err) => panic!("{url:?} should be accepted: {err}"),
        }
    }

    fn url_reason(url: &str) -> String {
        match url_protocol(url) {
            Err(SourceError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url:?} should be rejected, got {other:?}"),
        }
    }

    #[test]
    fn accepted_urls() {
        for (url, protocol) in [
            ("https://github.com/org/repo.git", Protocol::Https),
            ("https://github.com/org/repo", Protocol::Https),
            (
                "https://user:token@example.org:8443/a/b.git",
                Protocol::Https,
            ),
            ("http://192.168.1.10/repo.git", Protocol::Http),
            ("http://[::1]:8080/repo.git", Protocol::Http),
            ("ssh://git@example.org/org/repo.git", Protocol::Ssh),
            ("ssh://git@example.org:2222/~/repo.git", Protocol::Ssh),
            ("git://example.org/repo.git", Protocol::Git),
            ("file:///srv/git/app.git", Protocol::File),
            ("file://localhost/srv/git/app.git", Protocol::File),
            ("/srv/git/app.git", Protocol::File),
            ("/srv/git/my:app", Protocol::File),
            ("git@github.com:org/repo.git", Protocol::Ssh),
            ("github.com:org/repo.git", Protocol::Ssh),
            ("git@[::1]:repo.git", Protocol::Ssh),
            ("git@host:/abs/path", Protocol::Ssh),
            ("https://example.org/dépôt.git", Protocol::Https),
        ] {
            assert_eq!(url_ok(url), protocol, "{url}");
            validate_url(url).unwrap();
        }
    }

    #[test]
    fn rejected_urls() {
        let long = format!("https://example.org/{}", "a".repeat(MAX_URL_LEN));
        for (url, hint) in [
            ("", "empty"),
            (long.as_str(), "at most"),
            ("--upload-pack=touch /tmp/x", "'-'"),
            ("--upload-pack=touch", "'-'"),
            ("-oProxyCommand=touch /tmp/pwned", "'-'"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh", "ext:: transport"),
            ("fd::17", "fd:: transport"),
            ("host::path", "host:: transport"),
            ("https://exa mple.org/r", "whitespace"),
            ("https://example.org/r\n", "whitespace"),
            ("https://example.org/r\u{7f}", "control"),
            ("https://example.org/\u{0}", "control"),
            ("ssh://-oProxyCommand=touch%20x/repo", "host"),
            ("ssh://-oProxyCommand=x@host/repo", "user"),
            ("ssh://git@-host/repo", "host"),
            ("ssh://host:22x/repo", "port"),
            ("ssh://host:/repo", "port"),
            ("https://", "host"),
            ("https://example.org", "path"),
            ("https://example.org/", "path"),
            ("https://[::1/repo", "'['"),
            ("https://ex$ample.org/repo", "host"),
            ("ftp://example.org/repo", "unsupported scheme"),
            ("HTTPS://example.org/repo", "unsupported scheme"),
            ("git+ssh://example.org/repo", "unsupported scheme"),
            ("file://host/srv/repo", "local path"),
            ("file://", "path"),
            ("relative/path", "relative"),
            ("repo.git", "relative"),
            ("./repo", "relative"),
            ("-host:path", "'-'"),
            ("git@-host:path", "host"),
            ("@host:path", "user"),
            ("host:-path", "path"),
            ("host:", "path"),
            ("git@[::1]repo", "':'"),
        ] {
            let reason = url_reason(url);
            assert!(
                reason.contains(hint),
                "{url:?}: {reason:?} should mention {hint:?}"
            );
        }
    }

    #[test]
    fn url_errors_quote_a_bounded_url() {
        let url = format!("-{}", "é".repeat(3000));
        match url_protocol(&url) {
            Err(SourceError::InvalidUrl { url: quoted, .. }) => {
                assert!(quoted.len() <= QUOTE_LIMIT + '…'.len_utf8());
                assert!(quoted.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocols_can_be_restricted() {
        let git = Git::new().with_protocols([Protocol::Https, Protocol::Https]);
        assert_eq!(git.protocols(), &[Protocol::Https]);
        assert_eq!(
            git.check_url("https://example.org/r").unwrap(),
            Protocol::Https
        );
        for url in ["file:///srv/r", "/srv/r", "git@host:r", "git://h/r"] {
            match git.check_url(url) {
                Err(SourceError::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains("not allowed"), "{reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn valid_branches() {
        for branch in [
            "main",
            "feature/login",
            "release-1.0",
            "v1.2.3",
            "a/b/c",
            "fix_42",
            "UPPER",
            "héllo",
            "x.lockx",
            "a@b",
            "x.y",
            &"a".repeat(MAX_BRANCH_LEN),
        ] {
            validate_branch(branch).unwrap_or_else(|err| panic!("{branch:?}: {err}"));
        }
    }

    #[test]
    fn invalid_branches() {
        let long = "a".repeat(MAX_BRANCH_LEN + 1);
        for (branch, hint) in [
            ("", "empty"),
            (long.as_str(), "at most"),
            ("--upload-pack=x", "'-'"),
            ("-x", "'-'"),
            ("a..b", "\"..\""),
            ("a b", "' '"),
            ("refs/heads/x.lock", ".lock"),
            ("x.lock/y", ".lock"),
            ("@", "not a branch"),
            ("HEAD", "not a branch"),
            ("a@{1}", "\"@{\""),
            ("a//b", "\"//\""),
            ("/a", "'/'"),
            ("a/", "'/'"),
            ("a.", "'.'"),
            (".a", "'.'"),
            ("a/.b", "'.'"),
            ("a~1", "'~'"),
            ("a^", "'^'"),
            ("a:b", "':'"),
            ("a?", "'?'"),
            ("a*", "'*'"),
            ("a[b", "'['"),
            ("a\\b", "'\\\\'"),
            ("a\tb", "'\\t'"),
            ("a\u{7f}", "'\\u{7f}'"),
            ("a\nb", "'\\n'"),
        ] {
            match validate_branch(branch) {
                Err(SourceError::InvalidBranch { reason, .. }) => {
                    assert!(
                        reason.contains(hint),
                        "{branch:?}: {reason:?} should mention {hint}"
                    );
                }
                other => panic!("{branch:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn commits() {
        validate_commit(&"a".repeat(40)).unwrap();
        validate_commit("0123456789abcdef0123456789abcdef01234567").unwrap();
        validate_commit(&"f".repeat(64)).unwrap();
        for bad in [
            "",
            "abc123",
            &"A".repeat(40),
            &"g".repeat(40),
            &"a".repeat(39),
            &"a".repeat(41),
            &"a".repeat(63),
            "--upload-pack=0123456789abcdef0123456789abc",
            "HEAD",
        ] {
            assert!(
                matches!(validate_commit(bad), Err(SourceError::InvalidCommit { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn builder_settings() {
        let git = Git::new();
        assert_eq!(git.binary(), Path::new("git"));
        assert_eq!(git.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(git.protocols(), &Protocol::ALL);
        let git = git
            .with_timeout(Duration::from_secs(5))
            .with_binary("/usr/bin/git");
        assert_eq!(git.binary(), Path::new("/usr/bin/git"));
        assert_eq!(git.timeout(), Duration::from_secs(5));
        let allowed: Vec<String> = Protocol::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(allowed, ["file", "git", "ssh", "http", "https"]);
    }

    #[tokio::test]
    async fn tails_and_heads_are_bounded() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut tail = Vec::new();
        read_tail(Some(data.as_slice()), &mut tail, 1000).await;
        assert_eq!(tail, &data[data.len() - 1000..]);
        let mut head = Vec::new();
        read_head(Some(data.as_slice()), &mut head, 1000).await;
        assert_eq!(head, &data[..1000]);
        let mut none = Vec::new();
        read_tail(None::<&[u8]>, &mut none, 10).await;
        assert!(none.is_empty());
    }

    #[test]
    fn stderr_is_tidied() {
        assert_eq!(tidy_stderr(b"  fatal: nope\n\n"), "fatal: nope");
        let long = "é".repeat(STDERR_LIMIT);
        let tidied = tidy_stderr(long.as_bytes());
        assert!(tidied.len() <= STDERR_LIMIT);
        assert!(tidied.chars().all(|c| c == 'é'));
        // A tail cut in the middle of a character becomes a replacement character.
        assert_eq!(tidy_stderr(&"é".as_bytes()[1..]), "\u{fffd}");
    }

    #[test]
    fn credentials_are_masked() {
        for (text, masked) in [
            (
                "https://user:s3cret@example.org/r.git",
                "https://***@example.org/r.git",
            ),
            (
                "https://ghp_token@example.org/r",
                "https://***@example.org/r",
            ),
            ("http://a:b@h:80/r", "http://***@h:80/r"),
            ("ssh://git:pw@host/r", "ssh://git:***@host/r"),
            ("ssh://git@host/r", "ssh://git@host/r"),
            ("https://example.org/a@b", "https://example.org/a@b"),
            (
                "fatal: unable to access 'https://u:p@h/r/': refused",
                "fatal: unable to access 'https://***@h/r/': refused",
            ),
            (
                "git clone -- https://u:p@h/r d and https://x:y@z",
                "git clone -- https://***@h/r d and https://***@z",
            ),
            ("no urls here", "no urls here"),
            ("://", "://"),
            ("é://é:é@é", "é://é:***@é"),
        ] {
            assert_eq!(redact(text), masked, "{text}");
        }
        match url_protocol("https://u:s3cret@example.org") {
            Err(SourceError::InvalidUrl { url, .. }) => assert_eq!(url, "https://***@example.org"),
            other => panic!("{other:?}"),
        }
        let git = Git::new().with_protocols([Protocol::Ssh]);
        let err = git.check_url("https://u:s3cret@example.org/r").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn error_messages() {
        let err = SourceError::GitFailed {
            command: "git rev-parse HEAD".into(),
            status: Some(128),
            stderr: "fatal: bad".into(),
        };
        assert_eq!(
            err.to_string(),
            "`git rev-parse HEAD` failed (exit status 128): fatal: bad"
        );
        let err = SourceError::GitFailed {
            command: "git x".into(),
            status: None,
            stderr: String::new(),
        };
        assert!(err.to_string().contains("killed by a signal"));
        assert_eq!(
            command_line(&["clone", "--", "u"]),
            "git clone -- u".to_owned()
        );
    }
}
