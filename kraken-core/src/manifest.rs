//! `shipwreck.toml`: types only (parser lands with the manifest module).
#![allow(missing_docs)]
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub const MANIFEST_FILE: &str = "shipwreck.toml";
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub app: AppSection,
    pub config: ConfigSection,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSection {
    pub name: String,
    pub version: String,
    pub author: Option<String>,
    pub endpoint: Option<String>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSection {
    pub port: u16,
    pub lang: Lang,
    pub run: Option<String>,
    pub build: Option<String>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Node,
    Python,
    Static,
    Custom,
}
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
}
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("missing")]
    Missing { path: std::path::PathBuf },
}
impl Manifest {
    pub fn parse(_text: &str) -> Result<Manifest, ManifestError> {
        Err(ManifestError::Missing {
            path: MANIFEST_FILE.into(),
        })
    }
    pub fn from_dir(dir: &std::path::Path) -> Result<Manifest, ManifestError> {
        Err(ManifestError::Missing {
            path: dir.join(MANIFEST_FILE),
        })
    }
}
