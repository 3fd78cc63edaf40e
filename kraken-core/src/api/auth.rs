//! The API token: generated once, kept in the data dir with owner-only permissions, checked
//! in constant time.

use super::error::ApiError;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the token file in the data dir.
pub const TOKEN_FILE: &str = "api-token";

/// Bytes of randomness in a generated token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// The secret that mutations need, sent as `Authorization: Bearer <token>`. Its `Debug` form
/// hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Arc<str>);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A fresh token: 32 random bytes from the system's source, as 64 hex digits.
    pub fn generate() -> Result<Self, ApiError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| ApiError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(ApiToken(hex.into()))
    }

    /// A token chosen by the operator: 16 to 512 visible ASCII characters (no spaces).
    pub fn new(text: &str) -> Result<Self, ApiError> {
        if text.len() < 16 {
            return Err(ApiError::InvalidToken("a token has at least 16 characters"));
        }
        if text.len() > 512 {
            return Err(ApiError::InvalidToken("a token has at most 512 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::InvalidToken(
                "a token is made of visible ASCII characters, without spaces",
            ));
        }
        Ok(ApiToken(text.into()))
    }

    /// The token kept in `<data_dir>/api-token`; generated and written there (mode 0600)
    /// when the file does not exist yet. A file readable by others is made private.
    pub async fn load_or_create(data_dir: &Path) -> Result<Self, ApiError> {
        let path = token_path(data_dir);
        let file = path.clone();
        tokio::task::spawn_blocking(move || load_or_create(&file))
            .await
            .map_err(|e| ApiError::TokenFile {
                path,
                reason: e.to_string(),
            })?
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, compared in constant time.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

fn token_error(path: &Path, err: impl fmt::Display) -> ApiError {
    ApiError::TokenFile {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

fn load_or_create(path: &Path) -> Result<ApiToken, ApiError> {
    match read_token(path) {
        Ok(token) => return Ok(token),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(token_error(path, err)),
    }
    let token = ApiToken::generate()?;
    match write_private(path, &format!("{}\n", token.as_str())) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the API token");
            Ok(token)
        }
        // Another process wrote it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            read_token(path).map_err(|e| token_error(path, e))
        }
        Err(err) => Err(token_error(path, err)),
    }
}

fn read_token(path: &Path) -> std::io::Result<ApiToken> {
    let text = std::fs::read_to_string(path)?;
    make_private(path)?;
    ApiToken::new(text.trim())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(unix)]
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the API token file was readable by others; made it private");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Creates `path` (failing if it exists) readable and writable by the owner only.
pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

/// Equal lengths are compared byte by byte without an early exit; the length of the
/// expected token is not a secret (generated ones are always 64 digits).
fn constant_time_eq(expected: &[u8], candidate: &[u8]) -> bool {
    if expected.len() != candidate.len() {
        return false;
    }
    let diff = expected
        .iter()
        .zip(candidate)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// What a request presented as its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No token.
    Anonymous,
    /// A token that is not the platform's.
    WrongToken,
    /// The platform's token.
    Authenticated,
}

impl Caller {
    /// Judges a presented token (`None`: none presented).
    pub(crate) fn from_token(token: &ApiToken, presented: Option<&str>) -> Self {
        match presented {
            None => Caller::Anonymous,
            Some(t) if token.matches(t) => Caller::Authenticated,
            Some(_) => Caller::WrongToken,
        }
    }

    /// Judges the `Authorization: Bearer` header of a request.
    pub(crate) fn from_headers(token: &ApiToken, headers: &HeaderMap) -> Self {
        Self::from_token(token, bearer(headers))
    }

    /// Whether the caller presented the platform's token.
    pub(crate) fn is_authenticated(self) -> bool {
        self == Caller::Authenticated
    }

    /// Why this caller is refused (only meaningful when not authenticated).
    pub(crate) fn refusal(self) -> &'static str {
        match self {
            Caller::WrongToken => "wrong API token",
            _ => {
                "missing API token: send `Authorization: Bearer <token>` (the token is printed by `kraken up` and kept in <data dir>/api-token)"
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. A header that is there but is
/// not a bearer token counts as a wrong token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?;
    let text = value.to_str().unwrap_or("");
    let token = text
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    Some(token)
}

/// The token file path under a data dir (for messages).
pub(crate) fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_hex() {
        let (a, b) = (ApiToken::generate().unwrap(), ApiToken::generate().unwrap());
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(
            format!("{a:?}"),
            "ApiToken(..)",
            "Debug does not show the secret"
        );
    }

    #[test]
    fn operator_tokens_are_checked() {
        assert!(ApiToken::new("short").is_err());
        assert!(ApiToken::new("has a space in it ......").is_err());
        assert!(ApiToken::new(&"x".repeat(513)).is_err());
        let t = ApiToken::new("0123456789abcdef").unwrap();
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches(""));
    }

    #[test]
    fn bearer_headers_are_parsed() {
        let token = ApiToken::new("0123456789abcdef").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(Caller::from_headers(&token, &headers), Caller::Anonymous);
        headers.insert(AUTHORIZATION, "Bearer 0123456789abcdef".parse().unwrap());
        assert_eq!(
            Caller::from_headers(&token, &headers),
            Caller::Authenticated
        );
        headers.insert(AUTHORIZATION, "bearer  0123456789abcdef ".parse().unwrap());
        assert_eq!(
            Caller::from_headers(&token, &headers),
            Caller::Authenticated
        );
        headers.insert(AUTHORIZATION, "Basic 0123456789abcdef".parse().unwrap());
        assert_eq!(Caller::from_headers(&token, &headers), Caller::WrongToken);
        headers.insert(AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(Caller::from_headers(&token, &headers), Caller::WrongToken);
    }

    #[tokio::test]
    async fn the_token_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = ApiToken::load_or_create(dir.path()).await.unwrap();
        let again = ApiToken::load_or_create(dir.path()).await.unwrap();
        assert_eq!(first, again, "the same token across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = token_path(dir.path());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            ApiToken::load_or_create(dir.path()).await.unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "made private again");
        }
        std::fs::write(token_path(dir.path()), "bad\n").unwrap();
        assert!(
            ApiToken::load_or_create(dir.path()).await.is_err(),
            "a corrupt file is an error, not replaced"
        );
    }
}
