//! `kraken_core::source` against real git repositories created in temporary directories.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kraken_core::source::{Checkout, Git, Protocol, SourceError, validate_branch};
use tempfile::TempDir;

/// Runs git synchronously for test setup, with a fixed identity and no user or system config.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Kraken Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A bare repository (what Kraken fetches from) and a working clone used to push to it.
struct Remote {
    _root: TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        Remote::with_init(&[])
    }

    fn with_init(extra: &[&str]) -> Remote {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("origin.git");
        let work = root.path().join("work");
        let mut init = vec!["init", "--quiet", "--bare"];
        init.extend_from_slice(extra);
        init.push(bare.to_str().unwrap());
        git(root.path(), &init);
        let mut init = vec!["init", "--quiet"];
        init.extend_from_slice(extra);
        init.push(work.to_str().unwrap());
        git(root.path(), &init);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Remote {
            _root: root,
            bare,
            work,
        }
    }

    /// Commits `content` to `file` on `branch` (created from the current HEAD if new), pushes
    /// it, and returns the commit id.
    fn commit(&self, branch: &str, file: &str, content: &str) -> String {
        if git(&self.work, &["branch", "--list"]).is_empty() {
            // No commit yet: the first one goes on `branch`.
            git(&self.work, &["checkout", "--quiet", "-B", branch]);
        } else if git(&self.work, &["branch", "--list", branch]).is_empty() {
            git(&self.work, &["checkout", "--quiet", "-b", branch]);
        } else {
            git(&self.work, &["checkout", "--quiet", branch]);
        }
        let path = self.work.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        git(&self.work, &["add", "--", file]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn path(&self) -> String {
        self.bare.to_str().unwrap().to_owned()
    }

    fn rev_parse(&self, rev: &str) -> String {
        git(&self.bare, &["rev-parse", rev])
    }
}

fn read(checkout: &Checkout, file: &str) -> String {
    std::fs::read_to_string(checkout.dir.join(file)).unwrap()
}

fn is_shallow(dir: &Path) -> bool {
    git(dir, &["rev-parse", "--is-shallow-repository"]) == "true"
}

/// A fake git: a shell script in a temporary directory.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fake git that leaves a mark if it is ever run.
struct Tripwire {
    dir: TempDir,
    binary: PathBuf,
}

impl Tripwire {
    fn new() -> Tripwire {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ran");
        let binary = script(
            dir.path(),
            "git",
            &format!("touch '{}'\nexit 1", mark.display()),
        );
        Tripwire { dir, binary }
    }

    fn git(&self) -> Git {
        Git::new().with_binary(&self.binary)
    }

    fn fired(&self) -> bool {
        self.dir.path().join("ran").exists()
    }
}

fn dest_in(dir: &TempDir) -> PathBuf {
    dir.path().join("checkouts").join("app")
}

#[tokio::test]
async fn fetch_checks_out_the_branch_tip() {
    let remote = Remote::new();
    remote.commit("main", "app.py", "v1");
    let main = remote.commit("main", "app.py", "v2");
    let feature = remote.commit("feature/login", "login.py", "login");

    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let checkout = Git::new()
        .fetch(&remote.url(), "main", None, &dest)
        .await
        .unwrap();
    assert_eq!(
        checkout,
        Checkout {
            dir: dest.clone(),
            commit: main.clone(),
        }
    );
    assert_eq!(main, remote.rev_parse("refs/heads/main"));
    assert_eq!(read(&checkout, "app.py"), "v2");
    assert!(!dest.join("login.py").exists());
    assert!(dest.join(".git").is_dir());
    assert!(is_shallow(&dest), "the tip alone is fetched");

    let dest = out.path().join("feature");
    let checkout = Git::new()
        .fetch(&remote.url(), "feature/login", None, &dest)
        .await
        .unwrap();
    assert_eq!(checkout.commit, feature);
    assert_eq!(read(&checkout, "login.py"), "login");
}

#[tokio::test]
async fn fetch_from_a_plain_path_is_shallow_too() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let tip = remote.commit("main", "a.txt", "2");
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("app");
    let checkout = Git::new()
        .fetch(&remote.path(), "main", None, &dest)
        .await
        .unwrap();
    assert_eq!(checkout.commit, tip);
    assert_eq!(read(&checkout, "a.txt"), "2");
    assert!(is_shallow(&dest));
}

#[tokio::test]
async fn fetch_with_the_tip_commit_stays_shallow() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let tip = remote.commit("main", "a.txt", "2");
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("app");
    let checkout = Git::new()
        .fetch(&remote.url(), "main", Some(&tip), &dest)
        .await
        .unwrap();
    assert_eq!(checkout.commit, tip);
    assert!(is_shallow(&dest));
}

#[tokio::test]
async fn head_commit_matches_rev_parse() {
    let remote = Remote::new();
    let main = remote.commit("main", "a.txt", "main");
    let release = remote.commit("release/1.0", "a.txt", "release");
    let git = Git::new();
    for url in [remote.url(), remote.path()] {
        assert_eq!(git.head_commit(&url, "main").await.unwrap(), main);
        assert_eq!(git.head_commit(&url, "release/1.0").await.unwrap(), release);
    }
    assert_eq!(main, remote.rev_parse("main"));
}

#[tokio::test]
async fn head_commit_ignores_refs_that_only_end_with_the_name() {
    let remote = Remote::new();
    let main = remote.commit("main", "a.txt", "main");
    // `git ls-remote` would also list this ref for the pattern `refs/heads/main`.
    let nested = remote.commit("nested/refs/heads/main", "a.txt", "nested");
    remote.commit("x/refs/heads/gone", "a.txt", "gone");
    assert_ne!(main, nested);
    let git = Git::new();
    assert_eq!(git.head_commit(&remote.url(), "main").await.unwrap(), main);
    assert!(matches!(
        git.head_commit(&remote.url(), "gone").await,
        Err(SourceError::BranchNotFound { .. })
    ));
}

#[tokio::test]
async fn new_commits_change_the_head_and_old_commits_stay_reachable() {
    let remote = Remote::new();
    let first = remote.commit("main", "app.py", "v1");
    let git = Git::new();
    assert_eq!(git.head_commit(&remote.url(), "main").await.unwrap(), first);

    let second = remote.commit("main", "app.py", "v2");
    let third = remote.commit("main", "app.py", "v3");
    assert_ne!(first, third);
    assert_eq!(git.head_commit(&remote.url(), "main").await.unwrap(), third);

    let out = tempfile::tempdir().unwrap();
    for (i, (commit, content)) in [(&first, "v1"), (&second, "v2"), (&third, "v3")]
        .into_iter()
        .enumerate()
    {
        let dest = out.path().join(format!("c{i}"));
        let checkout = git
            .fetch(&remote.url(), "main", Some(commit), &dest)
            .await
            .unwrap();
        assert_eq!(&checkout.commit, commit);
        assert_eq!(read(&checkout, "app.py"), content);
        assert_eq!(git_head(&dest), *commit);
    }
    // Plain paths deepen the same way.
    let dest = out.path().join("path");
    let checkout = git
        .fetch(&remote.path(), "main", Some(&first), &dest)
        .await
        .unwrap();
    assert_eq!(checkout.commit, first);
    assert_eq!(read(&checkout, "app.py"), "v1");
}

fn git_head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn commits_not_on_the_branch_are_not_found() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "base");
    let other = remote.commit("other", "b.txt", "other");
    remote.commit("main", "a.txt", "main2");
    let git = Git::new();
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    for commit in [other.as_str(), missing] {
        match git.fetch(&remote.url(), "main", Some(commit), &dest).await {
            Err(SourceError::CommitNotFound { url, commit: c }) => {
                assert_eq!(url, remote.url());
                assert_eq!(c, commit);
            }
            other => panic!("{commit}: {other:?}"),
        }
        assert!(!dest.exists(), "a failed fetch leaves nothing behind");
    }
}

#[tokio::test]
async fn a_missing_repository_is_unavailable() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/nothing-here.git", root.path().display());
    let git = Git::new();
    match git.head_commit(&url, "main").await {
        Err(SourceError::RepositoryUnavailable { url: u, stderr }) => {
            assert_eq!(u, url);
            assert!(!stderr.is_empty());
            assert!(stderr.len() <= kraken_core::source::STDERR_LIMIT);
        }
        other => panic!("{other:?}"),
    }
    let dest = dest_in(&root);
    let err = git.fetch(&url, "main", None, &dest).await.unwrap_err();
    assert!(
        matches!(err, SourceError::RepositoryUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert!(!dest.exists());
    // The parent directories created for it may stay; the checkout itself must not.
    let path = root.path().join("nothing-here.git");
    let err = git
        .head_commit(path.to_str().unwrap(), "main")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::RepositoryUnavailable { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_branch_is_not_found() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let git = Git::new();
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    for url in [remote.url(), remote.path()] {
        match git.head_commit(&url, "nope").await {
            Err(SourceError::BranchNotFound { url: u, branch }) => {
                assert_eq!((u.as_str(), branch.as_str()), (url.as_str(), "nope"));
            }
            other => panic!("{other:?}"),
        }
        match git.fetch(&url, "nope", None, &dest).await {
            Err(SourceError::BranchNotFound { branch, .. }) => assert_eq!(branch, "nope"),
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists());
    }
}

#[tokio::test]
async fn an_empty_repository_has_no_branches() {
    let remote = Remote::new();
    let git = Git::new();
    assert!(matches!(
        git.head_commit(&remote.url(), "main").await,
        Err(SourceError::BranchNotFound { .. })
    ));
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    assert!(matches!(
        git.fetch(&remote.url(), "main", None, &dest).await,
        Err(SourceError::BranchNotFound { .. })
    ));
    assert!(!dest.exists());
}

#[tokio::test]
async fn invalid_branches_never_reach_git() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let tripwire = Tripwire::new();
    let git = tripwire.git();
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    for branch in [
        "--upload-pack=x",
        "--upload-pack=touch /tmp/kraken-pwned",
        "-x",
        "a..b",
        "a b",
        "refs/heads/x.lock",
        "",
        "HEAD",
        "a:b",
    ] {
        match git.head_commit(&remote.url(), branch).await {
            Err(SourceError::InvalidBranch { branch: b, .. }) => assert_eq!(b, branch),
            other => panic!("{branch:?}: {other:?}"),
        }
        match git.fetch(&remote.url(), branch, None, &dest).await {
            Err(SourceError::InvalidBranch { .. }) => {}
            other => panic!("{branch:?}: {other:?}"),
        }
        assert!(!dest.exists(), "{branch:?}");
        assert!(!out.path().join("checkouts").exists(), "{branch:?}");
    }
    assert!(!tripwire.fired(), "git must not run for an invalid branch");
}

#[tokio::test]
async fn invalid_urls_never_reach_git() {
    let tripwire = Tripwire::new();
    let git = tripwire.git();
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    for url in [
        "--upload-pack=touch /tmp/x",
        "--upload-pack=touch",
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh%20-c%20touch",
        "-oProxyCommand=touch /tmp/pwned",
        "-oProxyCommand=touch",
        "ssh://-oProxyCommand=touch%20x/repo",
        "git@-oProxyCommand=x:repo",
        "relative/repo",
        "",
        "ftp://example.org/repo",
    ] {
        match git.head_commit(url, "main").await {
            Err(SourceError::InvalidUrl { .. }) => {}
            other => panic!("{url:?}: {other:?}"),
        }
        match git.fetch(url, "main", None, &dest).await {
            Err(SourceError::InvalidUrl { .. }) => {}
            other => panic!("{url:?}: {other:?}"),
        }
        assert!(!out.path().join("checkouts").exists(), "{url:?}");
    }
    for commit in ["abc", "HEAD", "--upload-pack=x"] {
        match git
            .fetch("https://example.org/r.git", "main", Some(commit), &dest)
            .await
        {
            Err(SourceError::InvalidCommit { .. }) => {}
            other => panic!("{commit:?}: {other:?}"),
        }
    }
    assert!(!out.path().join("checkouts").exists());
    assert!(!tripwire.fired(), "git must not run for an invalid URL");
}

#[tokio::test]
async fn disallowed_protocols_are_refused() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let tripwire = Tripwire::new();
    let git = tripwire
        .git()
        .with_protocols([Protocol::Https, Protocol::Ssh]);
    for url in [remote.url(), remote.path()] {
        match git.head_commit(&url, "main").await {
            Err(SourceError::InvalidUrl { reason, .. }) => {
                assert!(reason.contains("file"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!tripwire.fired());
}

#[tokio::test]
async fn git_runs_with_a_safe_environment() {
    let bin = tempfile::tempdir().unwrap();
    let fake = script(
        bin.path(),
        "git",
        "echo \"$GIT_ALLOW_PROTOCOL|$GIT_TERMINAL_PROMPT|$GIT_ASKPASS|$GIT_CONFIG_NOSYSTEM|\
$GIT_PROTOCOL_FROM_USER|$LC_ALL|${SSH_ASKPASS-unset}|$*\" >&2\n\
         read -r line && echo \"stdin was not empty\" >&2\n\
         exit 128",
    );
    let git = Git::new()
        .with_binary(&fake)
        .with_protocols([Protocol::Https, Protocol::Ssh]);
    match git.head_commit("https://example.org/r.git", "main").await {
        Err(SourceError::RepositoryUnavailable { stderr, .. }) => assert_eq!(
            stderr,
            "https:ssh|0||1|0|C|unset|-c protocol.ext.allow=never -c init.defaultBranch=main \
             -c advice.detachedHead=false ls-remote --heads -- https://example.org/r.git \
             refs/heads/main"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn credentials_never_appear_in_errors() {
    let bin = tempfile::tempdir().unwrap();
    let echo = script(
        bin.path(),
        "git",
        "echo \"fatal: unable to access $*\" >&2\nexit 128",
    );
    let url = "https://kraken:s3cret@example.org/r.git";
    let git = Git::new().with_binary(&echo);
    let out = tempfile::tempdir().unwrap();
    for err in [
        git.head_commit(url, "main").await.unwrap_err(),
        git.fetch(url, "main", None, &dest_in(&out))
            .await
            .unwrap_err(),
    ] {
        match &err {
            SourceError::RepositoryUnavailable { url, stderr } => {
                assert_eq!(url, "https://***@example.org/r.git");
                assert!(stderr.contains("https://***@example.org/r.git"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
    }
    let sleeper = script(bin.path(), "slow-git", "exec sleep 30");
    let err = Git::new()
        .with_binary(&sleeper)
        .with_timeout(Duration::from_millis(100))
        .head_commit(url, "main")
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::TimedOut { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn slow_commands_time_out() {
    let bin = tempfile::tempdir().unwrap();
    let sleeper = script(bin.path(), "git", "exec sleep 30");
    let git = Git::new()
        .with_binary(&sleeper)
        .with_timeout(Duration::from_millis(200));
    let started = Instant::now();
    match git.head_commit("https://example.org/r.git", "main").await {
        Err(SourceError::TimedOut { command, after }) => {
            assert!(command.starts_with("git ls-remote"), "{command}");
            assert_eq!(after, Duration::from_millis(200));
        }
        other => panic!("{other:?}"),
    }
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    match git
        .fetch("https://example.org/r.git", "main", None, &dest)
        .await
    {
        Err(SourceError::TimedOut { command, .. }) => {
            assert!(command.starts_with("git clone"), "{command}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_tiny_timeout_stops_real_git() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let git = Git::new().with_timeout(Duration::from_millis(1));
    let err = git.head_commit(&remote.url(), "main").await.unwrap_err();
    assert!(matches!(err, SourceError::TimedOut { .. }), "{err:?}");
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let err = git
        .fetch(&remote.url(), "main", None, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::TimedOut { .. }), "{err:?}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn a_dropped_fetch_cleans_up() {
    let bin = tempfile::tempdir().unwrap();
    let sleeper = script(bin.path(), "git", "exec sleep 30");
    let git = Git::new().with_binary(&sleeper);
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let fetch = git.fetch("https://example.org/r.git", "main", None, &dest);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fetch)
            .await
            .is_err()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while dest.exists() {
        assert!(Instant::now() < deadline, "dest was not cleaned up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_missing_git_binary_is_a_spawn_error() {
    let git = Git::new().with_binary("/nonexistent/kraken-test/git");
    let err = git
        .head_commit("https://example.org/r.git", "main")
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Spawn { .. }), "{err:?}");
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let err = git
        .fetch("https://example.org/r.git", "main", None, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Spawn { .. }), "{err:?}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn failing_local_commands_report_git_failed() {
    // A fake git whose clone "succeeds" without creating a repository: the next command fails.
    let bin = tempfile::tempdir().unwrap();
    let fake = script(
        bin.path(),
        "git",
        "echo 'fatal: not a git repository' >&2\n\
         for a in \"$@\"; do [ \"$a\" = clone ] && exit 0; done\n\
         exit 128",
    );
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    match Git::new()
        .with_binary(&fake)
        .fetch("https://example.org/r.git", "main", None, &dest)
        .await
    {
        Err(SourceError::GitFailed {
            command,
            status,
            stderr,
        }) => {
            assert_eq!(command, "git rev-parse --verify HEAD");
            assert_eq!(status, Some(128));
            assert_eq!(stderr, "fatal: not a git repository");
        }
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists());
}

#[tokio::test]
async fn destination_rules() {
    let remote = Remote::new();
    let tip = remote.commit("main", "a.txt", "1");
    let git = Git::new();
    let out = tempfile::tempdir().unwrap();

    // A non-empty directory is refused and left alone.
    let full = out.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "keep").unwrap();
    let err = git
        .fetch(&remote.url(), "main", None, &full)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::Io { ref path, .. } if path == &full),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("keep.txt")).unwrap(),
        "keep"
    );

    // So is a file.
    let file = out.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = git
        .fetch(&remote.url(), "main", None, &file)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    // An empty directory is used, and stays (empty) after a failure.
    let empty = out.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = git
        .fetch(&remote.url(), "nope", None, &empty)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err:?}");
    assert!(empty.is_dir());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    let checkout = git
        .fetch(&remote.url(), "main", None, &empty)
        .await
        .unwrap();
    assert_eq!(checkout.commit, tip);

    // Missing parents are created.
    let deep = out.path().join("a/b/c/app");
    let checkout = git.fetch(&remote.url(), "main", None, &deep).await.unwrap();
    assert_eq!(read(&checkout, "a.txt"), "1");
}

#[tokio::test]
async fn sha256_repositories_work() {
    let remote = Remote::with_init(&["--object-format=sha256"]);
    remote.commit("main", "a.txt", "1");
    let tip = remote.commit("main", "a.txt", "2");
    assert_eq!(tip.len(), 64);
    let git = Git::new();
    assert_eq!(git.head_commit(&remote.url(), "main").await.unwrap(), tip);
    let out = tempfile::tempdir().unwrap();
    let dest = dest_in(&out);
    let checkout = git.fetch(&remote.url(), "main", None, &dest).await.unwrap();
    assert_eq!(checkout.commit, tip);
}

#[tokio::test]
async fn errors_read_well() {
    let remote = Remote::new();
    remote.commit("main", "a.txt", "1");
    let err = Git::new()
        .head_commit(&remote.url(), "nope")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("branch \"nope\" not found in {}", remote.url())
    );
    let err = Git::new().head_commit("ext::sh", "main").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid repository URL \"ext::sh\": the ext:: transport helper is not allowed"
    );
}

/// `validate_branch` accepts exactly what `git check-ref-format --branch` accepts, except that
/// it also refuses a leading `-` and the shorthand `@`.
#[test]
fn branch_validation_agrees_with_git() {
    const ALPHABET: [char; 30] = [
        'a', 'b', 'c', 'x', 'y', 'z', 'a', 'b', '0', '1', 'é', '.', '.', '/', '/', '-', '_', '@',
        '{', '}', '~', '^', ':', '\\', '*', '?', '[', ' ', '\t', 'k',
    ];
    let outside = tempfile::tempdir().unwrap();
    let git_accepts = |name: &str| {
        Command::new("git")
            .args(["check-ref-format", "--branch", name])
            .current_dir(outside.path())
            .env("GIT_CEILING_DIRECTORIES", outside.path())
            .output()
            .unwrap()
            .status
            .success()
    };
    let mut names: Vec<String> = [
        "main", "a/b", "a.lock", "a.lock/b", "a/b.lock", "lock", ".lock", "a..b", "a/./b", "a/.b",
        "@", "a@b", "@{", "a@{b", "HEAD", "head", "-", "a-", "a.", "a/", "/a", "a//b", "é/ü",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..400 {
        let mut name = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for _ in 0..=(state % 8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            name.push(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
        }
        names.push(name);
    }
    let mut accepted = 0;
    for name in &names {
        let ours = validate_branch(name).is_ok();
        if name.starts_with('-') || name == "@" {
            assert!(!ours, "{name:?}");
            continue;
        }
        assert_eq!(ours, git_accepts(name), "{name:?}");
        accepted += usize::from(ours);
    }
    // The generator must exercise both outcomes to mean anything.
    assert!(accepted > 20 && accepted < names.len() - 20, "{accepted}");
}
