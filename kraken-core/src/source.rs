//! Placeholder: the git source module lands separately.
#![allow(missing_docs)]
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone, Default)]
pub struct Git;
impl Git {
    pub fn new() -> Self {
        Git
    }
    #[must_use]
    pub fn with_timeout(self, _d: Duration) -> Self {
        self
    }
    pub async fn head_commit(&self, url: &str, branch: &str) -> Result<String, SourceError> {
        Err(SourceError::BranchNotFound {
            url: url.into(),
            branch: branch.into(),
        })
    }
    pub async fn fetch(
        &self,
        url: &str,
        branch: &str,
        _commit: Option<&str>,
        _dest: &Path,
    ) -> Result<Checkout, SourceError> {
        Err(SourceError::BranchNotFound {
            url: url.into(),
            branch: branch.into(),
        })
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit: String,
}
pub fn validate_url(_url: &str) -> Result<(), SourceError> {
    Ok(())
}
pub fn validate_branch(_b: &str) -> Result<(), SourceError> {
    Ok(())
}
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("branch {branch} not found in {url}")]
    BranchNotFound { url: String, branch: String },
}
