//! Real git repositories made by tests, served over `file://`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git repository in a temporary directory, with a `main` branch.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Kraken Test",
            "-c",
            "user.email=test@kraken.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl GitRepo {
    /// A repository whose first commit holds these files.
    pub fn with_files(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        let repo = GitRepo { dir };
        repo.commit(files, "initial");
        repo
    }

    /// A repository of an app with this `shipwreck.toml`.
    pub fn with_manifest(manifest: &str) -> Self {
        Self::with_files(&[("shipwreck.toml", manifest), ("README.md", "test app\n")])
    }

    /// Commits files (written relative to the root); returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let path = self.dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, content).unwrap();
        }
        git(self.dir.path(), &["add", "-A"]);
        git(
            self.dir.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// The commit `main` points at.
    pub fn head(&self) -> String {
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }

    /// `file://` URL of the repository.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Its directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// A manifest for an app called `name` of kind `lang` on `port`, with extra `[env]` lines.
pub fn manifest(name: &str, port: u16, run: &str, env: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[app]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[config]\nport = {port}\nlang = \"python\"\nrun = \"{run}\"\n"
    );
    if !env.is_empty() {
        text.push_str("\n[env]\n");
        for (k, v) in env {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
    }
    text
}
