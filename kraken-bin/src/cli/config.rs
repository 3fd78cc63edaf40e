//! The CLI's saved settings: the orchestrator address and token `kraken up` wrote, kept in
//! `<config dir>/kraken/cli.json` (or `$KRAKEN_CLI_CONFIG`) readable by the owner only.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `kraken up` saves for the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// `host:port` of the orchestrator's API.
    pub orchestrator: Option<String>,
    /// The API token.
    pub token: Option<String>,
}

/// Where the CLI config lives: `$KRAKEN_CLI_CONFIG`, else the user's config dir.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KRAKEN_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    directories::ProjectDirs::from("", "", "kraken").map(|d| d.config_dir().join("cli.json"))
}

/// The saved config; empty when there is none.
pub fn load() -> Result<SavedConfig> {
    let Some(path) = path() else {
        return Ok(SavedConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid CLI config", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SavedConfig::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Saves `config` (owner-only permissions, replaced atomically); returns where.
pub fn save(config: &SavedConfig) -> Result<PathBuf> {
    let path =
        path().context("cannot find a config directory for this user; set KRAKEN_CLI_CONFIG")?;
    write_private(&path, &serde_json::to_vec_pretty(config)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // A leftover from an interrupted save might have other permissions: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cli.json");
        let config = SavedConfig {
            orchestrator: Some("127.0.0.1:8000".into()),
            token: Some("t".repeat(64)),
        };
        write_private(&path, &serde_json::to_vec(&config).unwrap()).unwrap();
        let back: SavedConfig =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
