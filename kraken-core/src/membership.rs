//! The cluster join secret: who belongs to the platform.
//!
//! Every node of one platform shares a [`JoinSecret`]. It never travels on the network;
//! nodes prove they know it with HMAC-SHA256 [`Proof`]s bound to a context (a joining
//! node's id, an orchestrator's announcement), and other secrets (a broker password) are
//! derived from it with [`JoinSecret::derive`].
//!
//! The orchestrator keeps it in `<data dir>/join-secret` ([`SECRET_FILE`]), readable by its
//! owner only; its textual form is `ks1-` followed by 64 lowercase hex digits.

use crate::model::NodeId;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the join secret file in the data dir.
pub const SECRET_FILE: &str = "join-secret";

/// Prefix of the textual form; the digit is the format's version.
const PREFIX: &str = "ks1-";

/// Bytes of randomness in a secret.
const SECRET_BYTES: usize = 32;

/// Hex digits of an HMAC-SHA256 output.
const PROOF_HEX_LEN: usize = 64;

/// Domain separation: a proof made for one purpose is never valid for another.
const JOIN_CONTEXT: &[u8] = b"kraken-join\0";
const ANNOUNCE_CONTEXT: &[u8] = b"kraken-announce\0";
const DERIVE_CONTEXT: &[u8] = b"kraken-derive\0";

type HmacSha256 = Hmac<Sha256>;

/// What can go wrong with a join secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A text that is not a join secret. The text itself is not repeated: it may be a
    /// secret with a typo.
    #[error(
        "malformed join secret: {reason} (expected `ks1-` followed by 64 lowercase hex digits)"
    )]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The system's source of randomness failed.
    #[error("cannot generate a join secret: no randomness available: {0}")]
    Random(#[source] getrandom::Error),
    /// Reading or writing the secret file failed.
    #[error("cannot {action} the join secret file {}: {source}", path.display())]
    File {
        /// What was being done (`read`, `write`, ...).
        action: &'static str,
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The secret file is readable or writable by group or others.
    #[error(
        "the join secret file {path} is accessible by group or others (mode {mode:o}); make it private with `chmod 600 {path}`",
        path = path.display()
    )]
    InsecureFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file does not hold a join secret.
    #[error("the join secret file {} does not hold a join secret: {source}", path.display())]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: Box<MembershipError>,
    },
    /// The blocking file task did not finish.
    #[error("the join secret file task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// The secret shared by the nodes of one platform: 32 random bytes.
///
/// Its `Debug` form hides it; `Display` and [`JoinSecret::as_text`] give the textual form
/// (`ks1-` + 64 lowercase hex digits), which is what an operator copies to other machines.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecret([u8; SECRET_BYTES]);

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

impl fmt::Display for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&hex(&self.0))
    }
}

impl std::str::FromStr for JoinSecret {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, MembershipError> {
        Self::parse(s)
    }
}

impl JoinSecret {
    /// A fresh secret from the system's source of randomness.
    pub fn generate() -> Result<Self, MembershipError> {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(MembershipError::Random)?;
        Ok(JoinSecret(bytes))
    }

    /// Reads the textual form (`ks1-` + 64 lowercase hex digits). Surrounding whitespace,
    /// as left by copying and pasting, is ignored.
    pub fn parse(text: &str) -> Result<Self, MembershipError> {
        let malformed = |reason| MembershipError::Malformed { reason };
        let text = text.trim();
        let digits = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| malformed("it does not start with `ks1-`"))?;
        if digits.len() != 2 * SECRET_BYTES {
            return Err(malformed("it does not have 64 hex digits after `ks1-`"));
        }
        if digits.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed("its hex digits are not lowercase"));
        }
        let bytes = unhex::<SECRET_BYTES>(digits)
            .ok_or_else(|| malformed("it has characters that are not hex digits"))?;
        Ok(JoinSecret(bytes))
    }

    /// The textual form, `ks1-` followed by 64 lowercase hex digits.
    pub fn as_text(&self) -> String {
        self.to_string()
    }

    /// The secret kept in `<data_dir>/join-secret`, or `None` when there is no such file.
    /// A file accessible by group or others is refused rather than trusted.
    pub async fn load(data_dir: &Path) -> Result<Option<Self>, MembershipError> {
        let path = secret_path(data_dir);
        tokio::task::spawn_blocking(move || load(&path))
            .await
            .map_err(MembershipError::Task)?
    }

    /// Writes this secret to `<data_dir>/join-secret`, replacing any previous one. The file
    /// is private to its owner (mode 0600) from the start, and appears whole or not at all
    /// (written to a temporary file, then renamed).
    pub async fn store(&self, data_dir: &Path) -> Result<(), MembershipError> {
        let path = secret_path(data_dir);
        let text = format!("{self}\n");
        tokio::task::spawn_blocking(move || store(&path, &text))
            .await
            .map_err(MembershipError::Task)?
    }

    /// The secret kept in the data dir; generated and stored there when there is none yet.
    /// The flag says whether it was created now.
    pub async fn load_or_create(data_dir: &Path) -> Result<(Self, bool), MembershipError> {
        if let Some(secret) = Self::load(data_dir).await? {
            return Ok((secret, false));
        }
        let secret = Self::generate()?;
        secret.store(data_dir).await?;
        tracing::info!(path = %secret_path(data_dir).display(), "generated the join secret");
        Ok((secret, true))
    }

    /// Proves knowledge of this secret for `context`: HMAC-SHA256 of `context`.
    pub fn prove(&self, context: &[u8]) -> Proof {
        let mut mac = self.mac();
        mac.update(context);
        Proof(hex(&mac.finalize().into_bytes()))
    }

    /// Whether `proof` was made with this secret for `context`, compared in constant time.
    /// A proof that is not 64 hex digits is simply not valid.
    pub fn verify(&self, context: &[u8], proof: &Proof) -> bool {
        if proof.0.len() != PROOF_HEX_LEN {
            return false;
        }
        let Some(tag) = unhex::<{ PROOF_HEX_LEN / 2 }>(&proof.0) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(context);
        mac.verify_slice(&tag).is_ok()
    }

    /// The proof a node presents when it joins: it binds the node's id.
    pub fn join_proof(&self, node: &NodeId) -> Proof {
        self.prove(&join_context(node))
    }

    /// Whether `proof` is `node`'s join proof under this secret.
    pub fn verify_join(&self, node: &NodeId, proof: &Proof) -> bool {
        self.verify(&join_context(node), proof)
    }

    /// The proof an orchestrator attaches to its announcement: it binds the orchestrator's
    /// id and its epoch, so an old announcement cannot be replayed for a newer epoch.
    pub fn announcement_proof(&self, orchestrator: &NodeId, epoch: u64) -> Proof {
        self.prove(&announcement_context(orchestrator, epoch))
    }

    /// Whether `proof` is the announcement proof of `orchestrator` at `epoch`.
    pub fn verify_announcement(&self, orchestrator: &NodeId, epoch: u64, proof: &Proof) -> bool {
        self.verify(&announcement_context(orchestrator, epoch), proof)
    }

    /// A secret for `purpose` (e.g. `"broker-password"`), derived from this one: 64 lowercase
    /// hex digits, the same on every node that has the join secret.
    pub fn derive(&self, purpose: &str) -> String {
        let mut mac = self.mac();
        mac.update(DERIVE_CONTEXT);
        mac.update(purpose.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot be refused.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// A proof of knowledge of the join secret: an HMAC-SHA256 in lowercase hex, serialised as
/// a plain string. One received from elsewhere may be anything; it then fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proof(String);

impl Proof {
    /// The proof's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Proof {
    fn from(text: String) -> Self {
        Proof(text)
    }
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn join_context(node: &NodeId) -> Vec<u8> {
    [JOIN_CONTEXT, node.as_str().as_bytes()].concat()
}

fn announcement_context(orchestrator: &NodeId, epoch: u64) -> Vec<u8> {
    [
        ANNOUNCE_CONTEXT,
        orchestrator.as_str().as_bytes(),
        b"\0",
        epoch.to_string().as_bytes(),
    ]
    .concat()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `N` bytes from exactly `2 * N` hex digits (either case), or `None`.
fn unhex<const N: usize>(digits: &str) -> Option<[u8; N]> {
    let digits = digits.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(out)
}

/// The secret file's path under a data dir.
fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRET_FILE)
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MembershipError {
    let path = path.to_path_buf();
    move |source| MembershipError::File {
        action,
        path,
        source,
    }
}

fn load(path: &Path) -> Result<Option<JoinSecret>, MembershipError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(file_error("read", path)(err)),
    };
    check_private(path)?;
    JoinSecret::parse(&text)
        .map(Some)
        .map_err(|err| MembershipError::CorruptFile {
            path: path.to_path_buf(),
            source: Box::new(err),
        })
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), MembershipError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(file_error("inspect", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(MembershipError::InsecureFile {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), MembershipError> {
    Ok(())
}

fn store(path: &Path, content: &str) -> Result<(), MembershipError> {
    use std::io::Write;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| SECRET_FILE.to_owned());
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        // A leftover temporary file from an earlier crash keeps its mode: make sure.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(content.as_bytes())?;
        file.sync_all()
    };
    if let Err(err) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(file_error("write", &temp)(err));
    }
    if let Err(err) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(file_error("replace", path)(err));
    }
    // Make the rename itself durable; not every platform can open a directory.
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
