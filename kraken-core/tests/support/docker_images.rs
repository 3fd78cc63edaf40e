//! Base images for the tests against a real Docker daemon. Nothing can be pulled, so they
//! are made locally by `.ci/docker-test-images.sh` (static busybox for static sites and
//! custom Dockerfiles, debootstrap'd Debian roots for Python and Node) and cached by tag.
//! CI runs the script before the tests; here it only runs when a tag is missing.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::Command;
use tokio::sync::Mutex;

/// `FROM scratch` plus Debian's static busybox: `sh`, `httpd`, coreutils.
pub const BUSYBOX: &str = "kraken-test/busybox:latest";
/// A minimal Debian with `python3`.
pub const PYTHON: &str = "kraken-test/python:latest";
/// A minimal Debian with `nodejs` (no npm).
pub const NODE: &str = "kraken-test/node:latest";

/// One maker at a time: tests of one binary run in parallel.
static MAKING: Mutex<()> = Mutex::const_new(());

/// The script that makes the images.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/docker-test-images.sh")
}

/// Whether the daemon has an image with this tag.
pub async fn exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Makes sure `image` (one of the constants above) exists, running the script for it when
/// it does not. A debootstrap takes a few minutes the first time.
pub async fn ensure(image: &str) -> Result<(), String> {
    if exists(image).await {
        return Ok(());
    }
    let _one_at_a_time = MAKING.lock().await;
    if exists(image).await {
        return Ok(());
    }
    let which = match image {
        BUSYBOX => "busybox",
        PYTHON => "python",
        NODE => "node",
        other => return Err(format!("no recipe for test image {other}")),
    };
    let out = Command::new("bash")
        .arg(script())
        .arg(which)
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", script().display()))?;
    if !out.status.success() || !exists(image).await {
        return Err(format!(
            "making {image} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// [`ensure`] for code that cannot await (a test fixture built synchronously). Blocks.
pub fn ensure_blocking(image: &str) -> Result<(), String> {
    let exists = |image: &str| {
        std::process::Command::new("docker")
            .args(["image", "inspect", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if exists(image) {
        return Ok(());
    }
    let which = image
        .strip_prefix("kraken-test/")
        .and_then(|rest| rest.split(':').next())
        .ok_or_else(|| format!("no recipe for test image {image}"))?;
    let out = std::process::Command::new("bash")
        .arg(script())
        .arg(which)
        .output()
        .map_err(|e| format!("running {}: {e}", script().display()))?;
    if !out.status.success() || !exists(image) {
        return Err(format!(
            "making {image} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Makes sure every test image exists.
pub async fn ensure_all() -> Result<(), String> {
    for image in [BUSYBOX, PYTHON, NODE] {
        ensure(image).await?;
    }
    Ok(())
}
