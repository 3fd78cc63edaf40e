//! The app manifest, `shipwreck.toml`: parsing and validation.
//!
//! Every app that Kraken deploys carries a `shipwreck.toml` at the root of its repository. It
//! says what the app is called, how to build and start it, which port it listens on, which
//! environment it needs and how much of a machine it may use. The orchestrator reads it before
//! placing a deployment, so a mistake is reported to the user right away, with the line and
//! column of the offending value, instead of surfacing later as a failed build on some worker.
//!
//! # Reference
//!
//! ```toml
//! [app]
//! name = "hello"          # required
//! version = "1.0.0"       # optional, default "0.0.0"
//! author = "Ada"          # optional
//! endpoint = "/"          # optional
//!
//! [config]
//! port = 8080             # required
//! lang = "python"         # required: node | python | static | custom
//! run = "python3 app.py"  # required for node and python, optional for static and custom
//! build = "pip install -r requirements.txt"   # optional
//!
//! [env]                   # optional
//! GREETING = "hi"
//!
//! [resources]             # optional
//! memory_mb = 256
//! cpus = 0.5
//! ```
//!
//! ## `[app]` (required)
//!
//! | key | required | rule |
//! |---|---|---|
//! | `name` | yes | 1 to 63 characters from `a-z`, `0-9` and `-`, not starting or ending with `-`. The name becomes part of container names and host names, so it must be a valid DNS label. |
//! | `version` | no (default `"0.0.0"`) | 1 to 64 characters, no whitespace or control characters. |
//! | `author` | no | 1 to 256 characters, no control characters. |
//! | `endpoint` | no | The path users open in a browser, e.g. `"/"` or `"/app"`. Starts with `/`, at most 2048 characters, no whitespace or control characters. |
//!
//! ## `[config]` (required)
//!
//! | key | required | rule |
//! |---|---|---|
//! | `port` | yes | An integer from 1 to 65535: the port the app listens on inside its container. Kraken also passes it in the `PORT` environment variable. |
//! | `lang` | yes | `"node"`, `"python"`, `"static"` or `"custom"` (see [`Lang`]). With `"custom"` the repository root must also contain a `Dockerfile`. |
//! | `run` | for `node` and `python` | The command that starts the app, run by a shell. Must not be blank. For `static` the files are served as they are, for `custom` the `Dockerfile`'s own command is used when `run` is absent. |
//! | `build` | no | A command run once after the source is fetched, e.g. to install dependencies. Must not be blank. |
//!
//! Commands may span several lines (TOML multi-line strings) but must not contain NUL
//! characters, which no process can receive.
//!
//! ## `[env]` (optional)
//!
//! Environment variables for the app. Keys match `[A-Za-z_][A-Za-z0-9_]*`; values are strings
//! (write `WORKERS = "4"`, not `WORKERS = 4`) without NUL characters. `PORT` is reserved:
//! Kraken sets it from `config.port`.
//!
//! ## `[resources]` (optional)
//!
//! | key | rule |
//! |---|---|
//! | `memory_mb` | An integer from 4 to 1048576: the memory limit in MiB. |
//! | `cpus` | A number greater than 0 and at most 256: how many CPUs the app may use, e.g. `0.5`. |
//!
//! ## Errors
//!
//! Keys that are not listed here are rejected, so a typo such as `prot = 8080` is caught
//! instead of being ignored. The whole file may be at most [`MAX_MANIFEST_BYTES`] long.
//! Every error about the content names a 1-based line and column, and semantic errors also
//! name the field, for example:
//!
//! ```text
//! shipwreck.toml:4:8: config.port: must be between 1 and 65535, got 70000
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

/// The name of the manifest file at the root of an app's repository.
pub const MANIFEST_FILE: &str = "shipwreck.toml";

/// The largest manifest accepted, in bytes.
///
/// A manifest is a few hundred bytes; the bound keeps a hostile repository from making the
/// orchestrator read and parse an arbitrarily large file.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// The version given to an app whose manifest has no `app.version`.
pub const DEFAULT_VERSION: &str = "0.0.0";

/// The file that an app with `lang = "custom"` must have next to its manifest.
pub const DOCKERFILE: &str = "Dockerfile";

const NAME_MAX: usize = 63;
const VERSION_MAX: usize = 64;
const AUTHOR_MAX: usize = 256;
const ENDPOINT_MAX: usize = 2048;
const MEMORY_MB_MIN: i64 = 4;
const MEMORY_MB_MAX: i64 = 1_048_576;
const CPUS_MAX: f64 = 256.0;
/// How much of a user-supplied string is quoted back in an error message.
const QUOTE_MAX: usize = 40;

/// A parsed and validated `shipwreck.toml`.
///
/// Values of this type only come out of [`Manifest::parse`] and [`Manifest::from_dir`] already
/// checked, so code that receives one can rely on the rules in the [module docs](self).
/// (Deserializing one from JSON, e.g. from a stored deployment, does not re-validate.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The `[app]` table: who the app is.
    pub app: AppSection,
    /// The `[config]` table: how to build and start it.
    pub config: ConfigSection,
    /// The `[env]` table: environment variables for the app (never contains `PORT`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The `[resources]` table: limits for the app's container.
    #[serde(default)]
    pub resources: Resources,
}

/// The `[app]` table of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSection {
    /// The app's name, a DNS label (`[a-z0-9-]`, 1 to 63 characters).
    pub name: String,
    /// The app's version as the author writes it; [`DEFAULT_VERSION`] when not given.
    pub version: String,
    /// Who wrote the app, shown in the UI.
    pub author: Option<String>,
    /// The path users open, starting with `/`; the UI links to it.
    pub endpoint: Option<String>,
}

/// The `[config]` table of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSection {
    /// The port the app listens on inside its container (1 to 65535).
    pub port: u16,
    /// What kind of app this is, which decides how it is built and run.
    pub lang: Lang,
    /// The command that starts the app; always present for [`Lang::Node`] and [`Lang::Python`].
    pub run: Option<String>,
    /// A command run once after the source is fetched, before the app starts.
    pub build: Option<String>,
}

/// What kind of app a manifest describes.
///
/// The kind picks the recipe a worker uses to build and run the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// A Node.js app: `build` (e.g. `npm ci`) then `run` (e.g. `node server.js`).
    Node,
    /// A Python app: `build` (e.g. `pip install -r requirements.txt`) then `run`.
    Python,
    /// Static files served over HTTP as they are; `build` may generate them.
    Static,
    /// Anything else: the repository's own `Dockerfile` builds the image.
    Custom,
}

impl Lang {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Lang; 4] = [Lang::Node, Lang::Python, Lang::Static, Lang::Custom];

    /// The name used in `shipwreck.toml`, e.g. `"python"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Lang::Node => "node",
            Lang::Python => "python",
            Lang::Static => "static",
            Lang::Custom => "custom",
        }
    }

    /// Whether a manifest of this kind must say how to start the app (`config.run`).
    ///
    /// Static files need no process of their own and a custom image has its own command, so
    /// only the language runtimes need to be told what to run.
    pub const fn requires_run(self) -> bool {
        matches!(self, Lang::Node | Lang::Python)
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lang {
    type Err = ParseLangError;

    /// Parses the exact lowercase name used in `shipwreck.toml`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lang::ALL
            .into_iter()
            .find(|lang| lang.as_str() == s)
            .ok_or_else(|| ParseLangError {
                input: s.chars().take(QUOTE_MAX).collect(),
            })
    }
}

/// The error of parsing a [`Lang`] from a string that names no kind.
///
/// It is separate from [`ManifestError`] because parsing a bare name (e.g. a CLI flag) has no
/// file position to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lang {input:?}, expected one of: node, python, static, custom")]
pub struct ParseLangError {
    /// The rejected input, shortened if it was long.
    pub input: String,
}

/// The `[resources]` table of a manifest: limits for the app's container.
///
/// `None` leaves the limit to the worker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// The memory limit in MiB (4 to 1048576).
    pub memory_mb: Option<u64>,
    /// How many CPUs the app may use (greater than 0, at most 256).
    pub cpus: Option<f64>,
}

/// Why a manifest could not be read or accepted.
///
/// The `Display` form is meant for the user who wrote the manifest, e.g.
/// `shipwreck.toml:4:8: config.port: must be between 1 and 65535, got 70000`.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory has no manifest.
    #[error("{}: not found; every app needs a {MANIFEST_FILE} at the root of its repository", path.display())]
    Missing {
        /// Where the manifest was looked for.
        path: PathBuf,
    },
    /// The manifest (or the `Dockerfile` next to it) exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
    /// The manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{MANIFEST_FILE} is {size} bytes long; the limit is {limit} bytes")]
    TooLarge {
        /// The size of the manifest in bytes (at least `limit + 1`).
        size: usize,
        /// The largest size accepted.
        limit: usize,
    },
    /// The manifest is not valid TOML or does not have the manifest's shape (an unknown key,
    /// a value where a table belongs, ...).
    #[error("{MANIFEST_FILE}:{line}:{column}: {reason}")]
    Syntax {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What is wrong, as the TOML parser describes it.
        reason: String,
    },
    /// A value is present but not acceptable (out of range, wrong type, bad name, ...), or a
    /// required one is absent.
    #[error("{MANIFEST_FILE}:{line}:{column}: {field}: {reason}")]
    Invalid {
        /// The dotted path of the field, e.g. `config.port` or `env.PORT`.
        field: String,
        /// 1-based line of the offending value (of its table header when the value is absent).
        line: usize,
        /// 1-based column (in characters) of the offending value.
        column: usize,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// `config.lang` is `"custom"` but the repository has no `Dockerfile` next to the manifest.
    #[error(
        "{}: not found; config.lang = \"custom\" builds the app from the repository's own {DOCKERFILE}",
        path.display()
    )]
    MissingDockerfile {
        /// Where the `Dockerfile` was expected.
        path: PathBuf,
    },
}

impl ManifestError {
    /// The 1-based line and column the error points at, if it is about the manifest's content.
    ///
    /// Handy for a UI that highlights the offending spot.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ManifestError::Syntax { line, column, .. }
            | ManifestError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

const EXAMPLE_NODE: &str = r#"[app]
name = "hello-node"
version = "1.0.0"
author = "Ada"
endpoint = "/"

[config]
port = 3000
lang = "node"
build = "npm ci"
run = "node server.js"

[env]
NODE_ENV = "production"

[resources]
memory_mb = 256
cpus = 0.5
"#;

const EXAMPLE_PYTHON: &str = r#"[app]
name = "hello-python"
version = "1.0.0"
author = "Ada"
endpoint = "/"

[config]
port = 8080
lang = "python"
build = "pip install -r requirements.txt"
run = "python3 app.py"

[env]
GREETING = "hi"

[resources]
memory_mb = 256
cpus = 0.5
"#;

const EXAMPLE_STATIC: &str = r#"[app]
name = "hello-static"
version = "1.0.0"
endpoint = "/index.html"

[config]
port = 8080
lang = "static"

[resources]
memory_mb = 64
"#;

const EXAMPLE_CUSTOM: &str = r#"# The repository root also holds a Dockerfile that builds the app.
[app]
name = "hello-custom"
version = "1.0.0"
endpoint = "/"

[config]
port = 8000
lang = "custom"

[env]
RUST_LOG = "info"

[resources]
memory_mb = 512
cpus = 1
"#;

impl Manifest {
    /// Parses and validates the text of a `shipwreck.toml`.
    ///
    /// Checks, in this order: the size bound, TOML syntax, the manifest's shape (no unknown
    /// keys), then every field's rules. The first problem found is returned.
    ///
    /// ```
    /// use kraken_core::manifest::{Lang, Manifest};
    ///
    /// let manifest = Manifest::parse(Manifest::example(Lang::Python)).unwrap();
    /// assert_eq!(manifest.config.lang, Lang::Python);
    ///
    /// let err = Manifest::parse("[app]\nname = \"Hello\"\n").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "shipwreck.toml:2:8: app.name: may only contain lowercase letters a-z, digits 0-9 \
    ///      and '-', found 'H'"
    /// );
    /// ```
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: text.len(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let raw: RawManifest = toml::from_str(text).map_err(|err| {
            let span = err.span();
            let (line, column) = span
                .clone()
                .map_or((1, 1), |span| line_column(text, span.start));
            let mut reason = err.message().trim().to_owned();
            // The parser does not say which key is duplicated; its span covers the key.
            if reason == "duplicate key"
                && let Some(key) = span.and_then(|span| text.get(span))
            {
                reason = format!("duplicate key `{}`", key.trim());
            }
            ManifestError::Syntax {
                line,
                column,
                reason,
            }
        })?;
        Validator { text }.manifest(raw)
    }

    /// Reads and validates `dir/shipwreck.toml`.
    ///
    /// Besides what [`Manifest::parse`] checks, this needs a `Dockerfile` in `dir` when
    /// `config.lang` is `"custom"`. The manifest must be a regular file, not a symbolic link:
    /// the directory is usually a checkout of someone else's repository, and following a link
    /// could make Kraken read (and quote in an error) a file outside it.
    ///
    /// This uses blocking file I/O; call it from `tokio::task::spawn_blocking` in async code.
    pub fn from_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = read_bounded(&path)?;
        let text = std::str::from_utf8(&bytes).map_err(|err| {
            let valid = &bytes[..err.valid_up_to()];
            // The prefix is valid UTF-8 by definition; the fallback is never taken.
            let prefix = std::str::from_utf8(valid).unwrap_or_default();
            let (line, column) = line_column(prefix, prefix.len());
            ManifestError::Syntax {
                line,
                column,
                reason: "the file is not valid UTF-8".to_owned(),
            }
        })?;
        let manifest = Manifest::parse(text)?;
        if manifest.config.lang == Lang::Custom {
            let dockerfile = dir.join(DOCKERFILE);
            match std::fs::metadata(&dockerfile) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Err(ManifestError::MissingDockerfile { path: dockerfile }),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(ManifestError::MissingDockerfile { path: dockerfile });
                }
                Err(source) => {
                    return Err(ManifestError::Io {
                        path: dockerfile,
                        source,
                    });
                }
            }
        }
        Ok(manifest)
    }

    /// A complete, valid manifest for an app of the given kind.
    ///
    /// The UI and the docs show these as starting points, so they exercise most keys.
    pub fn example(lang: Lang) -> &'static str {
        match lang {
            Lang::Node => EXAMPLE_NODE,
            Lang::Python => EXAMPLE_PYTHON,
            Lang::Static => EXAMPLE_STATIC,
            Lang::Custom => EXAMPLE_CUSTOM,
        }
    }
}

/// Reads at most [`MAX_MANIFEST_BYTES`] + 1 bytes of a regular file that is not a symlink.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ManifestError> {
    let io_err = |source: io::Error| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link; the manifest must be a regular file",
            )));
        }
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ManifestError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => return Err(io_err(source)),
    }
    let file = open_no_follow(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        )));
    }
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            size,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size);
    // The file may grow after `metadata`; never read more than one byte past the limit.
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            size: bytes.len(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    Ok(bytes)
}

/// Opens a file for reading without following a final symlink and without blocking on a FIFO,
/// closing the gap between the `symlink_metadata` check and the open.
#[cfg(unix)]
fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Converts a byte offset into a 1-based line and a 1-based column counted in characters.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Quotes a user-supplied string for an error message, shortened to [`QUOTE_MAX`] characters.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == QUOTE_MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// Describes a TOML value for an error message: its type, and the value itself when short.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

type RawValue = Option<Spanned<Value>>;

/// The manifest as written, with positions, before validation.
///
/// Leaf values stay `toml::Value` so that a value of the wrong type is reported by field name
/// and position like any other invalid value, instead of as a generic type error.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a manifest: tables [app], [config], [env] and [resources]"
)]
struct RawManifest {
    app: Option<Spanned<RawApp>>,
    config: Option<Spanned<RawConfig>>,
    env: Option<RawEnv>,
    resources: Option<Spanned<RawResources>>,
}

/// The `[env]` table as written: entries in file order, with positions.
///
/// Deserialized by hand so that a value of the wrong shape is described as an `[env]` table
/// rather than as a generic map.
struct RawEnv(Vec<(Spanned<String>, Spanned<Value>)>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;

        impl<'de> serde::de::Visitor<'de> for EnvVisitor {
            type Value = RawEnv;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an [env] table of NAME = \"value\" entries")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawEnv, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(RawEnv(entries))
            }
        }

        deserializer.deserialize_map(EnvVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [app] table")]
struct RawApp {
    name: RawValue,
    version: RawValue,
    author: RawValue,
    endpoint: RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [config] table")]
struct RawConfig {
    port: RawValue,
    lang: RawValue,
    run: RawValue,
    build: RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [resources] table")]
struct RawResources {
    memory_mb: RawValue,
    cpus: RawValue,
}

/// Turns a [`RawManifest`] into a [`Manifest`], reporting positions against `text`.
struct Validator<'a> {
    text: &'a str,
}

impl Validator<'_> {
    fn invalid(&self, field: &str, offset: usize, reason: impl Into<String>) -> ManifestError {
        let (line, column) = line_column(self.text, offset);
        ManifestError::Invalid {
            field: field.to_owned(),
            line,
            column,
            reason: reason.into(),
        }
    }

    fn manifest(&self, raw: RawManifest) -> Result<Manifest, ManifestError> {
        let Some(app) = raw.app else {
            return Err(self.invalid("app", 0, "missing: add an [app] table with a `name`"));
        };
        let app = self.app(app)?;
        let Some(config) = raw.config else {
            return Err(self.invalid(
                "config",
                0,
                "missing: add a [config] table with `port` and `lang`",
            ));
        };
        let config = self.config(config)?;
        let env = match raw.env {
            Some(env) => self.env(env)?,
            None => BTreeMap::new(),
        };
        let resources = match raw.resources {
            Some(resources) => self.resources(resources.into_inner())?,
            None => Resources::default(),
        };
        Ok(Manifest {
            app,
            config,
            env,
            resources,
        })
    }

    /// The value of a string field, or an `Invalid` error naming the field.
    fn string(&self, field: &str, value: Spanned<Value>) -> Result<Spanned<String>, ManifestError> {
        let span = value.span();
        match value.into_inner() {
            Value::String(s) => Ok(Spanned::new(span, s)),
            other => Err(self.invalid(
                field,
                span.start,
                format!("must be a string, got {}", describe(&other)),
            )),
        }
    }

    fn app(&self, app: Spanned<RawApp>) -> Result<AppSection, ManifestError> {
        let header = app.span().start;
        let app = app.into_inner();

        let Some(name) = app.name else {
            return Err(self.invalid("app.name", header, "missing: every app needs a name"));
        };
        let name = self.string("app.name", name)?;
        if let Err(reason) = check_name(name.get_ref()) {
            return Err(self.invalid("app.name", name.span().start, reason));
        }

        let version = match app.version {
            Some(version) => {
                let version = self.string("app.version", version)?;
                if let Err(reason) = check_token(version.get_ref(), VERSION_MAX) {
                    return Err(self.invalid("app.version", version.span().start, reason));
                }
                version.into_inner()
            }
            None => DEFAULT_VERSION.to_owned(),
        };

        let author = match app.author {
            Some(author) => {
                let author = self.string("app.author", author)?;
                if let Err(reason) = check_author(author.get_ref()) {
                    return Err(self.invalid("app.author", author.span().start, reason));
                }
                Some(author.into_inner())
            }
            None => None,
        };

        let endpoint = match app.endpoint {
            Some(endpoint) => {
                let endpoint = self.string("app.endpoint", endpoint)?;
                if let Err(reason) = check_endpoint(endpoint.get_ref()) {
                    return Err(self.invalid("app.endpoint", endpoint.span().start, reason));
                }
                Some(endpoint.into_inner())
            }
            None => None,
        };

        Ok(AppSection {
            name: name.into_inner(),
            version,
            author,
            endpoint,
        })
    }

    fn config(&self, config: Spanned<RawConfig>) -> Result<ConfigSection, ManifestError> {
        let header = config.span().start;
        let config = config.into_inner();

        let Some(port) = config.port else {
            return Err(self.invalid(
                "config.port",
                header,
                "missing: give the port the app listens on (1-65535)",
            ));
        };
        let port_offset = port.span().start;
        let port = match port.into_inner() {
            Value::Integer(n) => u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
                self.invalid(
                    "config.port",
                    port_offset,
                    format!("must be between 1 and 65535, got {n}"),
                )
            })?,
            other => {
                return Err(self.invalid(
                    "config.port",
                    port_offset,
                    format!(
                        "must be an integer between 1 and 65535, got {}",
                        describe(&other)
                    ),
                ));
            }
        };

        let Some(lang) = config.lang else {
            return Err(self.invalid(
                "config.lang",
                header,
                "missing: set it to one of node, python, static, custom",
            ));
        };
        let lang = self.string("config.lang", lang)?;
        let lang_offset = lang.span().start;
        let lang = lang.get_ref().parse::<Lang>().map_err(|_| {
            self.invalid(
                "config.lang",
                lang_offset,
                format!(
                    "must be one of node, python, static, custom, got {}",
                    quote(lang.get_ref())
                ),
            )
        })?;

        let run = match config.run {
            Some(run) => Some(self.command("config.run", run)?),
            None if lang.requires_run() => {
                return Err(self.invalid(
                    "config.run",
                    header,
                    format!("missing: lang = \"{lang}\" needs the command that starts the app"),
                ));
            }
            None => None,
        };
        let build = match config.build {
            Some(build) => Some(self.command("config.build", build)?),
            None => None,
        };

        Ok(ConfigSection {
            port,
            lang,
            run,
            build,
        })
    }

    fn command(&self, field: &str, value: Spanned<Value>) -> Result<String, ManifestError> {
        let command = self.string(field, value)?;
        let offset = command.span().start;
        let command = command.into_inner();
        if command.trim().is_empty() {
            return Err(self.invalid(field, offset, "must not be blank"));
        }
        if command.contains('\0') {
            return Err(self.invalid(field, offset, "must not contain NUL characters"));
        }
        Ok(command)
    }

    fn env(&self, env: RawEnv) -> Result<BTreeMap<String, String>, ManifestError> {
        // Report problems in the order they appear in the file, not in key order.
        let mut entries = env.0;
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut out = BTreeMap::new();
        for (key, value) in entries {
            let field = format!("env.{}", key.get_ref());
            if let Err(reason) = check_env_key(key.get_ref()) {
                return Err(self.invalid(&field, key.span().start, reason));
            }
            let value_offset = value.span().start;
            let value = match value.into_inner() {
                Value::String(s) => s,
                other => {
                    let hint = match &other {
                        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => {
                            format!(" (quote it: {} = \"{}\")", key.get_ref(), other)
                        }
                        _ => String::new(),
                    };
                    return Err(self.invalid(
                        &field,
                        value_offset,
                        format!("must be a string, got {}{hint}", describe(&other)),
                    ));
                }
            };
            if value.contains('\0') {
                return Err(self.invalid(&field, value_offset, "must not contain NUL characters"));
            }
            out.insert(key.into_inner(), value);
        }
        Ok(out)
    }

    fn resources(&self, resources: RawResources) -> Result<Resources, ManifestError> {
        let memory_mb = match resources.memory_mb {
            Some(memory) => {
                let offset = memory.span().start;
                match memory.into_inner() {
                    Value::Integer(n) if (MEMORY_MB_MIN..=MEMORY_MB_MAX).contains(&n) => {
                        // The range check makes the value positive; the fallback is never taken.
                        Some(u64::try_from(n).unwrap_or_default())
                    }
                    Value::Integer(n) => {
                        return Err(self.invalid(
                            "resources.memory_mb",
                            offset,
                            format!("must be between {MEMORY_MB_MIN} and {MEMORY_MB_MAX}, got {n}"),
                        ));
                    }
                    other => {
                        return Err(self.invalid(
                            "resources.memory_mb",
                            offset,
                            format!(
                                "must be an integer (MiB) between {MEMORY_MB_MIN} and {MEMORY_MB_MAX}, got {}",
                                describe(&other)
                            ),
                        ));
                    }
                }
            }
            None => None,
        };
        let cpus = match resources.cpus {
            Some(cpus) => {
                let offset = cpus.span().start;
                let value = match cpus.into_inner() {
                    Value::Float(f) => f,
                    // Integers too large for an exact f64 are far out of range anyway.
                    Value::Integer(n) => n as f64,
                    other => {
                        return Err(self.invalid(
                            "resources.cpus",
                            offset,
                            format!(
                                "must be a number greater than 0 and at most 256, got {}",
                                describe(&other)
                            ),
                        ));
                    }
                };
                if !(value.is_finite() && value > 0.0 && value <= CPUS_MAX) {
                    return Err(self.invalid(
                        "resources.cpus",
                        offset,
                        format!("must be greater than 0 and at most 256, got {value}"),
                    ));
                }
                Some(value)
            }
            None => None,
        };
        Ok(Resources { memory_mb, cpus })
    }
}

/// `app.name`: a DNS label, because it ends up in container and host names.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "may only contain lowercase letters a-z, digits 0-9 and '-', found {}",
            quote(&bad.to_string()).replace('"', "'")
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "must be at most {NAME_MAX} characters long, got {}",
            name.len()
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

/// A single printable word, such as a version.
fn check_token(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let len = value.chars().count();
    if len > max {
        return Err(format!("must be at most {max} characters long, got {len}"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

fn check_author(author: &str) -> Result<(), String> {
    if author.trim().is_empty() {
        return Err("must not be blank; leave the key out instead".to_owned());
    }
    let len = author.chars().count();
    if len > AUTHOR_MAX {
        return Err(format!(
            "must be at most {AUTHOR_MAX} characters long, got {len}"
        ));
    }
    if author.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if !endpoint.starts_with('/') {
        return Err(format!(
            "must be a path starting with '/', got {}",
            quote(endpoint)
        ));
    }
    check_token(endpoint, ENDPOINT_MAX)
}

/// Environment variable names that every shell and runtime accepts.
fn check_env_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let valid = match chars.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    };
    if !valid {
        return Err(format!(
            "{} is not a valid variable name: use letters, digits and '_', not starting with a digit",
            quote(key)
        ));
    }
    if key == "PORT" {
        return Err("is reserved: Kraken sets PORT from config.port".to_owned());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A minimal valid manifest with `extra` appended.
    fn with(extra: &str) -> String {
        format!("[app]\nname = \"hello\"\n\n[config]\nport = 8080\nlang = \"static\"\n{extra}")
    }

    fn invalid(text: &str) -> (String, usize, usize, String) {
        match Manifest::parse(text) {
            Err(ManifestError::Invalid {
                field,
                line,
                column,
                reason,
            }) => (field, line, column, reason),
            other => panic!("expected Invalid for {text:?}, got {other:?}"),
        }
    }

    fn invalid_field(text: &str) -> String {
        invalid(text).0
    }

    fn syntax(text: &str) -> (usize, usize, String) {
        match Manifest::parse(text) {
            Err(ManifestError::Syntax {
                line,
                column,
                reason,
            }) => (line, column, reason),
            other => panic!("expected Syntax for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn examples_parse_with_their_lang() {
        for lang in Lang::ALL {
            let manifest = Manifest::parse(Manifest::example(lang)).unwrap();
            assert_eq!(manifest.config.lang, lang);
            assert!(!manifest.app.name.is_empty());
        }
    }

    #[test]
    fn full_python_manifest() {
        let text = r#"
[app]
name = "hello"
version = "1.0.0"
author = "Ada"
endpoint = "/"

[config]
port = 8080
lang = "python"
run = "python3 app.py"
build = "pip install -r requirements.txt"

[env]
GREETING = "hi"
_UNDERSCORE_1 = ""

[resources]
memory_mb = 256
cpus = 0.5
"#;
        let manifest = Manifest::parse(text).unwrap();
        assert_eq!(
            manifest,
            Manifest {
                app: AppSection {
                    name: "hello".into(),
                    version: "1.0.0".into(),
                    author: Some("Ada".into()),
                    endpoint: Some("/".into()),
                },
                config: ConfigSection {
                    port: 8080,
                    lang: Lang::Python,
                    run: Some("python3 app.py".into()),
                    build: Some("pip install -r requirements.txt".into()),
                },
                env: BTreeMap::from([
                    ("GREETING".to_owned(), "hi".to_owned()),
                    ("_UNDERSCORE_1".to_owned(), String::new()),
                ]),
                resources: Resources {
                    memory_mb: Some(256),
                    cpus: Some(0.5),
                },
            }
        );
    }

    #[test]
    fn minimal_manifests_per_lang() {
        for lang in Lang::ALL {
            let run = if lang.requires_run() {
                "run = \"start\"\n"
            } else {
                ""
            };
            let text = format!("[app]\nname = \"a\"\n[config]\nport = 1\nlang = \"{lang}\"\n{run}");
            let manifest = Manifest::parse(&text).unwrap();
            assert_eq!(manifest.config.lang, lang);
            assert_eq!(manifest.app.version, DEFAULT_VERSION);
            assert_eq!(manifest.app.author, None);
            assert_eq!(manifest.app.endpoint, None);
            assert_eq!(manifest.config.build, None);
            assert!(manifest.env.is_empty());
            assert_eq!(manifest.resources, Resources::default());
        }
    }

    #[test]
    fn inline_tables_and_dotted_keys_are_accepted() {
        let text = "app = { name = \"x\" }\nconfig.port = 80\nconfig.lang = \"node\"\nconfig.run = \"node .\"\nenv = { A = \"1\" }\n";
        let manifest = Manifest::parse(text).unwrap();
        assert_eq!(manifest.app.name, "x");
        assert_eq!(manifest.config.port, 80);
        assert_eq!(manifest.env["A"], "1");
    }

    #[test]
    fn run_is_required_for_node_and_python_only() {
        for lang in ["node", "python"] {
            let text = format!("[app]\nname = \"a\"\n[config]\nport = 1\nlang = \"{lang}\"\n");
            let (field, line, column, reason) = invalid(&text);
            assert_eq!(field, "config.run");
            // Points at the [config] header.
            assert_eq!((line, column), (3, 1));
            assert!(reason.contains(lang), "{reason}");
        }
        for blank in ["\"\"", "\"   \"", "\"\\n\""] {
            assert_eq!(
                invalid_field(&with(&format!("run = {blank}\n"))),
                "config.run"
            );
            assert_eq!(
                invalid_field(&with(&format!("build = {blank}\n"))),
                "config.build"
            );
        }
        assert_eq!(invalid_field(&with("run = \"a\\u0000b\"\n")), "config.run");
        assert_eq!(invalid_field(&with("build = 1\n")), "config.build");
        let multi = with("build = \"\"\"\nnpm ci\nnpm run build\n\"\"\"\n");
        assert_eq!(
            Manifest::parse(&multi).unwrap().config.build.unwrap(),
            "npm ci\nnpm run build\n"
        );
    }

    #[test]
    fn malformed_toml_is_a_syntax_error() {
        let cases = [
            "[app\nname = \"x\"\n",
            "[app]\nname = \"x\n",
            "[app]\nname = x\n",
            "[app]\nname = \"x\"\nname = \"y\"\n",
            "[app]\n[app]\n",
            "= 1\n",
            "[app]\nname = \"x\"\n[config]\nport = 80 80\n",
            "\u{0}",
        ];
        for text in cases {
            let (line, column, reason) = syntax(text);
            assert!(line >= 1 && column >= 1, "{text:?}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_section() {
        let cases = [
            ("bogus = 1\n[app]\nname = \"x\"\n".to_owned(), "bogus", 1, 1),
            (
                "[app]\nname = \"x\"\nnmae = \"y\"\n[config]\nport = 1\nlang = \"static\"\n"
                    .to_owned(),
                "nmae",
                3,
                1,
            ),
            (with("prot = 8080\n"), "prot", 7, 1),
            (with("[resources]\nmemory = 5\n"), "memory", 8, 1),
            (with("[extra]\nx = 1\n"), "extra", 7, 2),
        ];
        for (text, key, line, column) in cases {
            let (l, c, reason) = syntax(&text);
            assert!(reason.contains(key), "{reason:?} should name {key}");
            assert_eq!((l, c), (line, column), "{text:?}");
        }
    }

    #[test]
    fn missing_tables_and_fields() {
        assert_eq!(
            invalid_field("[config]\nport = 1\nlang = \"static\"\n"),
            "app"
        );
        assert_eq!(invalid_field("[app]\nname = \"x\"\n"), "config");
        assert_eq!(invalid_field(""), "app");
        assert_eq!(
            invalid_field("[app]\n[config]\nport = 1\nlang = \"static\"\n"),
            "app.name"
        );
        assert_eq!(
            invalid_field("[app]\nname = \"x\"\n[config]\nlang = \"static\"\n"),
            "config.port"
        );
        assert_eq!(
            invalid_field("[app]\nname = \"x\"\n[config]\nport = 1\n"),
            "config.lang"
        );
    }

    #[test]
    fn tables_of_the_wrong_shape_are_syntax_errors() {
        let (line, column, reason) = syntax("app = 5\n");
        assert_eq!((line, column), (1, 7));
        assert_eq!(reason, "invalid type: integer `5`, expected an [app] table");
        for text in [
            "[[app]]\nname = \"x\"\n".to_owned(),
            "[app]\nname = \"x\"\nconfig = 1\n".to_owned(),
            with("[[env]]\n"),
            with("resources = \"big\"\n"),
            with("[[resources]]\n"),
            "config = []\n".to_owned(),
        ] {
            let (_, _, reason) = syntax(&text);
            // Messages speak of tables, never of the parser's internal types.
            assert!(!reason.contains("Raw"), "{reason}");
        }
        for text in [with("[[env]]\n"), format!("env = 1\n{}", with(""))] {
            let (_, _, reason) = syntax(&text);
            assert!(reason.contains("expected an [env] table"), "{reason}");
        }
        let (line, column, reason) = syntax("[app]\nname = \"x\"\n name = \"y\"\n");
        assert_eq!(
            (line, column, reason.as_str()),
            (3, 2, "duplicate key `name`")
        );
        for text in [
            "[app]\nname = \"x\"\n[config]\nport = 1\nlang = \"static\"\n[env]\nA = \"1\"\nA = \"2\"\n",
            "[app]\nname = \"x\"\n[config]\nport = 1\nlang = \"static\"\n[env]\nA = \"1\"\n\"A\" = \"2\"\n",
        ] {
            let (_, _, reason) = syntax(text);
            assert!(reason.starts_with("duplicate key"), "{reason}");
        }
    }

    #[test]
    fn port_must_be_in_range() {
        for (value, reason) in [
            ("0", "must be between 1 and 65535, got 0"),
            ("70000", "must be between 1 and 65535, got 70000"),
            ("65536", "must be between 1 and 65535, got 65536"),
            ("-1", "must be between 1 and 65535, got -1"),
            (
                "\"80\"",
                "must be an integer between 1 and 65535, got the string \"80\"",
            ),
            ("80.5", "must be an integer between 1 and 65535, got 80.5"),
            (
                "true",
                "must be an integer between 1 and 65535, got the boolean true",
            ),
            (
                "[80]",
                "must be an integer between 1 and 65535, got an array",
            ),
        ] {
            let text =
                format!("[app]\nname = \"x\"\n[config]\nport = {value}\nlang = \"static\"\n");
            let (field, line, column, got) = invalid(&text);
            assert_eq!(field, "config.port");
            assert_eq!((line, column), (4, 8), "{value}");
            assert_eq!(got, reason);
        }
        for ok in ["1", "65535", "0x50", "8_080"] {
            let text = format!("[app]\nname = \"x\"\n[config]\nport = {ok}\nlang = \"static\"\n");
            Manifest::parse(&text).unwrap();
        }
    }

    #[test]
    fn display_names_file_position_field_and_reason() {
        let text = "[app]\nname = \"x\"\n[config]\nport = 70000\nlang = \"static\"\n";
        let err = Manifest::parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shipwreck.toml:4:8: config.port: must be between 1 and 65535, got 70000"
        );
        assert_eq!(err.position(), Some((4, 8)));
        let err = Manifest::parse(&with("prot = 1\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("shipwreck.toml:7:1: unknown field `prot`"),
            "{err}"
        );
    }

    #[test]
    fn bad_names() {
        let long = "a".repeat(64);
        let cases: [(&str, &str); 9] = [
            ("Hello", "lowercase"),
            ("hello_world", "'_'"),
            ("-hello", "start or end"),
            ("hello-", "start or end"),
            (&long, "at most 63"),
            ("", "empty"),
            ("héllo", "'é'"),
            ("a.b", "'.'"),
            ("a b", "' '"),
        ];
        for (name, hint) in cases {
            let text = format!("[app]\nname = \"{name}\"\n[config]\nport = 1\nlang = \"static\"\n");
            let (field, line, column, reason) = invalid(&text);
            assert_eq!(field, "app.name");
            assert_eq!((line, column), (2, 8));
            assert!(reason.contains(hint), "{name:?}: {reason}");
        }
        for ok in ["a", "0", "a-b", "123-abc", &"a".repeat(63)] {
            let text = format!("[app]\nname = \"{ok}\"\n[config]\nport = 1\nlang = \"static\"\n");
            assert_eq!(Manifest::parse(&text).unwrap().app.name, ok);
        }
        let text = "[app]\nname = 5\n[config]\nport = 1\nlang = \"static\"\n";
        assert_eq!(
            invalid(text).3,
            "must be a string, got 5",
            "a non-string name is reported by field"
        );
    }

    #[test]
    fn app_optional_fields() {
        let base = |line: &str| {
            format!("[app]\nname = \"x\"\n{line}\n[config]\nport = 1\nlang = \"static\"\n")
        };
        let manifest = Manifest::parse(&base("version = \"2.0.0-rc.1+build.5\"")).unwrap();
        assert_eq!(manifest.app.version, "2.0.0-rc.1+build.5");
        for bad in [
            "\"\"",
            "\"1 0\"",
            "\"1\\t0\"",
            "1",
            &format!("\"{}\"", "1".repeat(65)),
        ] {
            assert_eq!(
                invalid_field(&base(&format!("version = {bad}"))),
                "app.version"
            );
        }
        assert_eq!(
            Manifest::parse(&base("author = \"Ada Lovelace <ada@example.org>\""))
                .unwrap()
                .app
                .author
                .as_deref(),
            Some("Ada Lovelace <ada@example.org>")
        );
        for bad in [
            "\"\"",
            "\"  \"",
            "\"a\\nb\"",
            &format!("\"{}\"", "a".repeat(257)),
        ] {
            assert_eq!(
                invalid_field(&base(&format!("author = {bad}"))),
                "app.author"
            );
        }
        for ok in ["/", "/app", "/a/b?c=d"] {
            let manifest = Manifest::parse(&base(&format!("endpoint = \"{ok}\""))).unwrap();
            assert_eq!(manifest.app.endpoint.as_deref(), Some(ok));
        }
        for bad in ["\"\"", "\"app\"", "\"http://x/\"", "\"/a b\"", "1"] {
            assert_eq!(
                invalid_field(&base(&format!("endpoint = {bad}"))),
                "app.endpoint"
            );
        }
    }

    #[test]
    fn lang_values() {
        for bad in ["\"Python\"", "\"rust\"", "\"\"", "1"] {
            let text = format!("[app]\nname = \"x\"\n[config]\nport = 1\nlang = {bad}\n");
            let (field, line, column, _) = invalid(&text);
            assert_eq!(field, "config.lang");
            assert_eq!((line, column), (5, 8));
        }
        for lang in Lang::ALL {
            assert_eq!(lang.to_string().parse::<Lang>().unwrap(), lang);
            assert_eq!(
                serde_json::to_string(&lang).unwrap(),
                format!("\"{}\"", lang.as_str())
            );
        }
        let err = "PYTHON".parse::<Lang>().unwrap_err();
        assert_eq!(err.input, "PYTHON");
        assert!(err.to_string().contains("node, python, static, custom"));
    }

    #[test]
    fn env_rules() {
        let manifest =
            Manifest::parse(&with("[env]\nA = \"1\"\nb_2 = \"x y\"\n\"_Q\" = \"\"\n")).unwrap();
        assert_eq!(manifest.env.len(), 3);

        let (field, line, column, reason) = invalid(&with("[env]\nA = \"1\"\nPORT = \"80\"\n"));
        assert_eq!(field, "env.PORT");
        assert_eq!((line, column), (9, 1));
        assert!(reason.contains("reserved"), "{reason}");

        for bad in ["\"1A\"", "\"A-B\"", "\"A B\"", "\"\"", "\"É\""] {
            let text = with(&format!("[env]\n{bad} = \"x\"\n"));
            assert!(invalid_field(&text).starts_with("env."), "{bad}");
        }
        let (field, line, column, reason) = invalid(&with("[env]\nWORKERS = 4\n"));
        assert_eq!(field, "env.WORKERS");
        assert_eq!((line, column), (8, 11));
        assert!(reason.contains("WORKERS = \"4\""), "{reason}");
        assert_eq!(invalid_field(&with("[env]\nA.B = \"x\"\n")), "env.A");
        assert_eq!(invalid_field(&with("[env]\nA = \"\\u0000\"\n")), "env.A");
        // The first problem in file order is reported, not the first in key order.
        assert_eq!(invalid_field(&with("[env]\nZ = 1\nA = 1\n")), "env.Z");
    }

    #[test]
    fn resources_rules() {
        let ok = Manifest::parse(&with("[resources]\nmemory_mb = 4\ncpus = 256\n")).unwrap();
        assert_eq!(
            ok.resources,
            Resources {
                memory_mb: Some(4),
                cpus: Some(256.0)
            }
        );
        let ok = Manifest::parse(&with("[resources]\nmemory_mb = 1048576\ncpus = 0.01\n")).unwrap();
        assert_eq!(ok.resources.memory_mb, Some(1_048_576));
        for bad in ["3", "0", "-5", "1048577", "1.5", "\"256\""] {
            let text = with(&format!("[resources]\nmemory_mb = {bad}\n"));
            let (field, line, column, _) = invalid(&text);
            assert_eq!(field, "resources.memory_mb");
            assert_eq!((line, column), (8, 13));
        }
        for bad in [
            "0", "0.0", "-1", "256.5", "nan", "inf", "-inf", "\"1\"", "true",
        ] {
            let text = with(&format!("[resources]\ncpus = {bad}\n"));
            let (field, line, column, _) = invalid(&text);
            assert_eq!(field, "resources.cpus", "{bad}");
            assert_eq!((line, column), (8, 8));
        }
    }

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("abc", 2), (1, 3));
        assert_eq!(line_column("a\nbc", 2), (2, 1));
        assert_eq!(line_column("a\r\nbc", 4), (2, 2));
        assert_eq!(line_column("é = 1", 2), (1, 2));
        // Offsets inside a character or past the end are clamped.
        assert_eq!(line_column("é", 1), (1, 1));
        assert_eq!(line_column("ab", 10), (1, 3));

        // A value after a multi-byte comment on the same line.
        let text = "# café\n[app]\nname = \"x\"\n[config]\nlang = \"static\"\n  port  =   0\n";
        let (field, line, column, _) = invalid(text);
        assert_eq!((field.as_str(), line, column), ("config.port", 6, 13));
        let text =
            "[app]\nname = \"x\"\n[config]\nport = 1\nlang = \"static\"\n[env]\n  \"é\" = \"x\"\n";
        let (field, line, column, _) = invalid(text);
        assert_eq!((field.as_str(), line, column), ("env.é", 7, 3));
    }

    #[test]
    fn too_large() {
        let mut text = with("");
        text.push_str(&"#".repeat(MAX_MANIFEST_BYTES));
        match Manifest::parse(&text) {
            Err(ManifestError::TooLarge { size, limit }) => {
                assert_eq!(size, text.len());
                assert_eq!(limit, MAX_MANIFEST_BYTES);
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine.
        let mut text = with("");
        let pad = MAX_MANIFEST_BYTES - text.len();
        text.push_str(&"#".repeat(pad));
        Manifest::parse(&text).unwrap();
    }

    #[test]
    fn serde_json_round_trip() {
        for lang in Lang::ALL {
            let manifest = Manifest::parse(Manifest::example(lang)).unwrap();
            let json = serde_json::to_string(&manifest).unwrap();
            let back: Manifest = serde_json::from_str(&json).unwrap();
            assert_eq!(back, manifest);
        }
        let json = r#"{"app":{"name":"x","version":"1","author":null,"endpoint":null},
            "config":{"port":80,"lang":"static","run":null,"build":null}}"#;
        let manifest: Manifest = serde_json::from_str(json).unwrap();
        assert!(manifest.env.is_empty());
    }

    fn write_dir(manifest: Option<&str>, dockerfile: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = manifest {
            std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
        }
        if dockerfile {
            std::fs::write(dir.path().join(DOCKERFILE), "FROM scratch\n").unwrap();
        }
        dir
    }

    #[test]
    fn from_dir_reads_the_manifest() {
        let dir = write_dir(Some(Manifest::example(Lang::Python)), false);
        let manifest = Manifest::from_dir(dir.path()).unwrap();
        assert_eq!(
            manifest,
            Manifest::parse(Manifest::example(Lang::Python)).unwrap()
        );
    }

    #[test]
    fn from_dir_missing_manifest() {
        let dir = write_dir(None, true);
        match Manifest::from_dir(dir.path()) {
            Err(ManifestError::Missing { path }) => {
                assert_eq!(path, dir.path().join(MANIFEST_FILE));
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("nope");
        let err = Manifest::from_dir(&missing).unwrap_err();
        assert!(matches!(err, ManifestError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("not found"));
    }

    #[test]
    fn from_dir_custom_needs_a_dockerfile() {
        let dir = write_dir(Some(Manifest::example(Lang::Custom)), false);
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        match &err {
            ManifestError::MissingDockerfile { path } => {
                assert_eq!(path, &dir.path().join(DOCKERFILE));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("config.lang"), "{err}");

        // A directory named Dockerfile does not count.
        std::fs::create_dir(dir.path().join(DOCKERFILE)).unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, ManifestError::MissingDockerfile { .. }),
            "{err:?}"
        );

        let dir = write_dir(Some(Manifest::example(Lang::Custom)), true);
        assert_eq!(
            Manifest::from_dir(dir.path()).unwrap().config.lang,
            Lang::Custom
        );
        // Other kinds do not need one.
        let dir = write_dir(Some(Manifest::example(Lang::Node)), false);
        Manifest::from_dir(dir.path()).unwrap();
    }

    #[test]
    fn from_dir_reports_parse_errors() {
        let dir = write_dir(Some("[app]\nname = \"BAD\"\n"), false);
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { ref field, .. } if field == "app.name"));
    }

    #[test]
    fn from_dir_too_large_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join(MANIFEST_FILE)).unwrap();
        file.set_len(10 * 1024 * 1024).unwrap();
        match Manifest::from_dir(dir.path()) {
            Err(ManifestError::TooLarge { size, limit }) => {
                assert_eq!(size, 10 * 1024 * 1024);
                assert_eq!(limit, MAX_MANIFEST_BYTES);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn from_dir_rejects_invalid_utf8_with_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            b"[app]\nname = \"a\xffb\"\n".as_slice(),
        )
        .unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        match err {
            ManifestError::Syntax { line, column, .. } => assert_eq!((line, column), (2, 10)),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn from_dir_refuses_symlinks_and_non_files() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret.toml");
        std::fs::write(&target, Manifest::example(Lang::Static)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(MANIFEST_FILE)).unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Io { .. }), "{err:?}");
    }

    /// A small deterministic generator, so failures reproduce without extra dependencies.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutated examples never panic, and every position points inside the text.
    #[test]
    fn mutated_examples_never_panic_and_positions_are_in_range() {
        const PIECES: [&str; 16] = [
            "\"",
            "'",
            "[",
            "]",
            "=",
            "\n",
            "#",
            "\\",
            "{",
            "}",
            ",",
            ".",
            "é",
            "\u{0}",
            "-1",
            "[env]\nPORT = \"1\"\n",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..4000 {
            let mut text: Vec<char> = Manifest::example(Lang::ALL[round % 4]).chars().collect();
            for _ in 0..=rng.below(4) {
                let at = rng.below(text.len() + 1);
                match rng.below(3) {
                    0 if !text.is_empty() => {
                        text.remove(at.min(text.len() - 1));
                    }
                    1 => {
                        let piece = PIECES[rng.below(PIECES.len())];
                        for (i, c) in piece.chars().enumerate() {
                            text.insert(at + i, c);
                        }
                    }
                    _ => {
                        let c = char::from_u32(rng.below(0x80) as u32).unwrap();
                        text.insert(at, c);
                    }
                }
            }
            let text: String = text.into_iter().collect();
            match Manifest::parse(&text) {
                Ok(manifest) => {
                    assert!((1..=63).contains(&manifest.app.name.len()));
                    assert!(manifest.config.port >= 1);
                    assert!(!manifest.env.contains_key("PORT"));
                }
                Err(err) => {
                    let (line, column) = err.position().unwrap();
                    let lines: Vec<&str> = text.split('\n').collect();
                    assert!(line >= 1 && line <= lines.len(), "{err} in {text:?}");
                    let width = lines[line - 1].chars().count();
                    assert!(column >= 1 && column <= width + 1, "{err} in {text:?}");
                    assert!(err.to_string().starts_with("shipwreck.toml:"));
                }
            }
        }
    }
}
