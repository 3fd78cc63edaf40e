//! Copying a checkout into an artifact directory without ever leaving the source tree.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// What a copy did besides copying.
#[derive(Debug, Default)]
pub(super) struct CopyReport {
    /// Regular files copied.
    pub files: u64,
    /// Entries left out, each with the reason (for the build log).
    pub skipped: Vec<String>,
}

/// Copies the tree at `src` into `dest` (which must not exist).
///
/// `.git` entries are left out. Regular files and directories are copied; symbolic links
/// are copied as links only when they resolve inside the copy (first checked on the link
/// text, then on the copy itself, which also catches chains of links); other links and
/// special files are left out and reported. Nothing outside `src` is ever read.
pub(super) fn copy_tree(src: &Path, dest: &Path) -> io::Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut links = Vec::new();
    fs::create_dir(dest)?;
    // An explicit stack rather than recursion: checkouts can be deep.
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel_dir) = dirs.pop() {
        for entry in fs::read_dir(src.join(&rel_dir))? {
            let entry = entry?;
            let name = entry.file_name();
            if name == ".git" {
                continue;
            }
            let rel = rel_dir.join(&name);
            let to = dest.join(&rel);
            // `file_type` does not follow links.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                fs::create_dir(&to)?;
                dirs.push(rel);
            } else if kind.is_file() {
                fs::copy(entry.path(), &to)?;
                report.files += 1;
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path())?;
                if lexically_inside(&rel_dir, &target) {
                    std::os::unix::fs::symlink(&target, &to)?;
                    links.push(rel);
                } else {
                    report.skipped.push(format!(
                        "{} -> {}: the link points outside the source tree",
                        rel.display(),
                        target.display()
                    ));
                }
            } else {
                report
                    .skipped
                    .push(format!("{}: not a regular file", rel.display()));
            }
        }
    }
    prune_links(dest, links, &mut report)?;
    Ok(report)
}

/// Whether a link in directory `dir` (relative to the root) with text `target` stays under
/// the root when read literally.
fn lexically_inside(dir: &Path, target: &Path) -> bool {
    let mut depth = dir.components().count();
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Removes copied links that do not resolve inside `dest`. A link's text can stay inside
/// while a chain through other links leaves the tree, so each link is resolved for real;
/// removing one link can break another, hence the loop until nothing changes.
fn prune_links(dest: &Path, mut links: Vec<PathBuf>, report: &mut CopyReport) -> io::Result<()> {
    let root = fs::canonicalize(dest)?;
    loop {
        let before = links.len();
        let mut failure = None;
        links.retain(|rel| {
            let path = dest.join(rel);
            match fs::canonicalize(&path) {
                Ok(real) if real.starts_with(&root) => true,
                _ => {
                    if let Err(e) = fs::remove_file(&path) {
                        failure.get_or_insert(e);
                    }
                    report.skipped.push(format!(
                        "{}: the link is dangling or resolves outside the source tree",
                        rel.display()
                    ));
                    false
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if links.len() == before {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lexical_check() {
        assert!(lexically_inside(Path::new(""), Path::new("a/b")));
        assert!(lexically_inside(Path::new("x"), Path::new("../a")));
        assert!(lexically_inside(Path::new("x"), Path::new("./..")));
        assert!(!lexically_inside(Path::new(""), Path::new("..")));
        assert!(!lexically_inside(Path::new("x"), Path::new("../../a")));
        assert!(!lexically_inside(Path::new("x"), Path::new("a/../../..")));
        assert!(!lexically_inside(Path::new(""), Path::new("/etc/passwd")));
    }

    #[test]
    fn copies_files_and_inner_links_and_nothing_outside() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "secret").unwrap();
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("sub/deep")).unwrap();
        fs::create_dir_all(s.join(".git/objects")).unwrap();
        fs::write(s.join(".git/HEAD"), "ref").unwrap();
        fs::write(s.join("app.sh"), "echo hi").unwrap();
        fs::write(s.join("sub/deep/data.txt"), "data").unwrap();
        symlink("sub/deep/data.txt", s.join("inner")).unwrap();
        symlink("../app.sh", s.join("sub/up")).unwrap();
        symlink(outside.path().join("secret"), s.join("absolute")).unwrap();
        symlink("../../escape", s.join("sub/escape")).unwrap();
        // Each link reads as inside, but together they leave the tree.
        symlink("..", s.join("sub/parent")).unwrap();
        symlink("parent/..", s.join("sub/chain")).unwrap();
        symlink("missing", s.join("dangling")).unwrap();

        let dest_root = tempfile::tempdir().unwrap();
        let d = dest_root.path().join("artifact");
        let report = copy_tree(s, &d).unwrap();

        assert_eq!(report.files, 2);
        assert!(!d.join(".git").exists());
        assert_eq!(fs::read_to_string(d.join("app.sh")).unwrap(), "echo hi");
        assert_eq!(fs::read_to_string(d.join("inner")).unwrap(), "data");
        assert_eq!(fs::read_to_string(d.join("sub/up")).unwrap(), "echo hi");
        assert!(fs::symlink_metadata(d.join("inner")).unwrap().is_symlink());
        assert!(d.join("sub/parent").exists(), "points at the root: inside");
        for gone in ["absolute", "sub/escape", "sub/chain", "dangling"] {
            assert!(
                fs::symlink_metadata(d.join(gone)).is_err(),
                "{gone} must not be copied"
            );
            assert!(
                report.skipped.iter().any(|s| s.starts_with(gone)),
                "{gone} must be reported: {:?}",
                report.skipped
            );
        }
    }
}
