//! The orchestrator's HTTP API: REST routes, GraphQL (queries, mutations and subscriptions
//! over websocket) with GraphiQL, Prometheus metrics and the web UI's files.
//!
//! The API never acts on the platform itself: it writes requests into the [`Database`]
//! (`create_deployment`, `request_redeploy`, `request_destroy`, `delete_log`) and reads it;
//! the orchestration executor does the rest. The orchestrator starts it in its `setup` when
//! [`OrchestratorConfig::api`](crate::executor::orchestrator::OrchestratorConfig::api) is
//! set (see [`start`]), so the API lives wherever the orchestrator role lives. Embedders can
//! also serve a database on their own listener with [`serve`].
//!
//! ```no_run
//! use kraken_core::api::{ApiConfig, ApiState, ApiToken, serve};
//! use kraken_core::state::{Database, StateConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::in_memory(StateConfig::default());
//! let config = ApiConfig::default().token(ApiToken::new("a-token-of-16-chars-or-more")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! serve(listener, ApiState::new(db, config)?, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! # Routes
//!
//! | route | what |
//! |---|---|
//! | `GET /` | redirect to `/index.html` |
//! | `GET /index.html`, other UI files | the web UI (files under `src/api/ui/`, embedded at build time) |
//! | `GET /ping` | `pong` |
//! | `GET /health/{node_id}` | `{node, rank, role, epoch}` |
//! | `GET /log/{deployment_id}` | the log as text; `?tail=N`, `?follow=true` |
//! | `DELETE /log/{deployment_id}` | deletes the log (token required) |
//! | `GET /platform` | who leads, its epoch, API address, broker URL |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | an OpenAPI 3 document of the REST routes |
//! | `POST /graphql` | GraphQL queries and mutations |
//! | `GET /graphql` | GraphQL subscriptions over websocket (`graphql-transport-ws`, `graphql-ws`); GraphiQL for a browser |
//! | `GET /graphiql` | GraphiQL |
//!
//! # Authentication
//!
//! Every mutation and every log deletion needs `Authorization: Bearer <token>` with the
//! platform's [`ApiToken`]; queries, subscriptions and REST reads are open unless
//! [`ApiConfig::require_token_for_queries`] is set. Over websocket the token may also be
//! sent in the `connection_init` payload as `{"Authorization": "Bearer <token>"}` or
//! `{"token": "<token>"}`. A missing or wrong token gives HTTP 401 on REST routes and a
//! GraphQL error whose `extensions.code` is `UNAUTHENTICATED`; nothing is changed.
//!
//! # Limits
//!
//! Request bodies are limited ([`ApiConfig::body_limit`], 413 beyond), requests time out
//! ([`ApiConfig::request_timeout`], 408), GraphQL queries are limited in depth and
//! complexity, and open streams (log follows and subscriptions) are limited in number
//! ([`ApiConfig::max_streams`], 503 beyond) and in lifetime ([`ApiConfig::max_stream_time`]).

mod assets;
mod auth;
mod graphql;
mod metrics;
mod rest;
mod time;

pub use auth::ApiToken;
pub use graphql::sdl;

use crate::executor::NodeContext;
use crate::model::PlatformInfo;
use crate::state::Database;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Settings of the HTTP API. Build with `ApiConfig::default()` and the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Where to listen. Default `0.0.0.0:8000`: every interface, so the LAN reaches it.
    pub bind: SocketAddr,
    /// The token mutations need. `None`: the orchestrator loads (or creates) the one in
    /// `<data dir>/api-token`; without a data dir a random one nobody knows is used, which
    /// leaves the API read-only.
    pub token: Option<ApiToken>,
    /// Whether queries, subscriptions and REST reads need the token too (default: open on
    /// the LAN).
    pub require_token_for_queries: bool,
    /// Largest request body in bytes (default 1 MiB); larger ones get 413.
    pub body_limit: usize,
    /// Longest time to produce a response's head (default 30 s); longer gives 408. Streams
    /// (log follows, websockets) are bounded by `max_stream_time` instead.
    pub request_timeout: Duration,
    /// Deepest GraphQL selection nesting accepted (default 16).
    pub max_depth: usize,
    /// Highest GraphQL query complexity accepted (default 2000; a field costs 1, list
    /// fields of deployments or nodes cost 10 times their selection).
    pub max_complexity: usize,
    /// Most log follows and GraphQL subscriptions open at once (default 256).
    pub max_streams: usize,
    /// Longest life of one log follow or subscription (default 24 h); clients reconnect.
    pub max_stream_time: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8000)),
            token: None,
            require_token_for_queries: false,
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_depth: 16,
            max_complexity: 2000,
            max_streams: 256,
            max_stream_time: Duration::from_secs(24 * 3600),
        }
    }
}

impl ApiConfig {
    /// Sets [`bind`](Self::bind).
    #[must_use]
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Sets [`token`](Self::token).
    #[must_use]
    pub fn token(mut self, token: ApiToken) -> Self {
        self.token = Some(token);
        self
    }
    /// Sets [`require_token_for_queries`](Self::require_token_for_queries).
    #[must_use]
    pub fn require_token_for_queries(mut self, required: bool) -> Self {
        self.require_token_for_queries = required;
        self
    }
    /// Sets [`body_limit`](Self::body_limit).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
    /// Sets [`request_timeout`](Self::request_timeout).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets [`max_depth`](Self::max_depth).
    #[must_use]
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
    /// Sets [`max_complexity`](Self::max_complexity).
    #[must_use]
    pub fn max_complexity(mut self, complexity: usize) -> Self {
        self.max_complexity = complexity;
        self
    }
    /// Sets [`max_streams`](Self::max_streams).
    #[must_use]
    pub fn max_streams(mut self, streams: usize) -> Self {
        self.max_streams = streams;
        self
    }
    /// Sets [`max_stream_time`](Self::max_stream_time).
    #[must_use]
    pub fn max_stream_time(mut self, time: Duration) -> Self {
        self.max_stream_time = time;
        self
    }
}

/// What can go wrong starting or running the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the API server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The token file could not be read or written.
    #[error("API token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A token given by the operator is not acceptable.
    #[error("invalid API token: {0}")]
    InvalidToken(&'static str),
    /// The system's random source failed.
    #[error("cannot generate an API token: {0}")]
    Random(String),
}

/// What the node running the API tells about itself (for `getPlatform`, `/platform`,
/// `getPlatformServices`).
#[derive(Debug, Clone, Default)]
struct NodeFacts {
    platform: Option<watch::Receiver<Option<PlatformInfo>>>,
    /// The node's settings (the join secret `/join` checks).
    config: Option<Arc<crate::executor::NodeConfig>>,
    runtime: Option<&'static str>,
    transport: Option<&'static str>,
}

/// Everything the API serves from: the database, its settings and token, and what it knows
/// about the node it runs on. Build it with [`ApiState::new`], give it to [`serve`].
#[derive(Debug, Clone)]
pub struct ApiState {
    db: Arc<Database>,
    config: ApiConfig,
    token: ApiToken,
    node: NodeFacts,
}

impl ApiState {
    /// State over `db`. Uses `config.token`, or generates a random token (see
    /// [`token`](Self::token)).
    pub fn new(db: Arc<Database>, config: ApiConfig) -> Result<Self, ApiError> {
        let token = match &config.token {
            Some(token) => token.clone(),
            None => ApiToken::generate()?,
        };
        Ok(ApiState {
            db,
            config,
            token,
            node: NodeFacts::default(),
        })
    }

    /// Takes the platform info, runtime and transport names from the node this API runs on.
    #[must_use]
    pub fn with_node(mut self, ctx: &NodeContext) -> Self {
        self.node = NodeFacts {
            platform: Some(ctx.watch_platform()),
            config: Some(Arc::clone(&ctx.config)),
            runtime: Some(ctx.runtime.name()),
            transport: Some(ctx.transport.name()),
        };
        self
    }

    /// The token mutations need.
    pub fn token(&self) -> &ApiToken {
        &self.token
    }
}

/// What handlers and resolvers share while the server runs.
#[derive(Debug)]
struct Core {
    db: Arc<Database>,
    config: ApiConfig,
    token: ApiToken,
    node: NodeFacts,
    /// The address the server listens on.
    local_addr: OnceLock<SocketAddr>,
    /// Cancelled when the server shuts down: ends follows and websockets, so that graceful
    /// shutdown does not wait for clients that never leave.
    stop: CancellationToken,
    /// One permit per open stream.
    streams: Arc<Semaphore>,
}

impl Core {
    fn new(state: ApiState) -> Self {
        let streams = Arc::new(Semaphore::new(state.config.max_streams.max(1)));
        Core {
            db: state.db,
            config: state.config,
            token: state.token,
            node: state.node,
            local_addr: OnceLock::new(),
            stop: CancellationToken::new(),
            streams,
        }
    }

    /// The platform info as the node knows it, with the current epoch and API address.
    fn platform(&self) -> PlatformView {
        let info = self.node.platform.as_ref().and_then(|p| p.borrow().clone());
        let local = self.local_addr.get().map(ToString::to_string);
        match info {
            Some(info) => PlatformView {
                orchestrator: Some(info.orchestrator.to_string()),
                epoch: self.db.epoch().max(info.epoch),
                api_addr: info.api_addr.or(local),
                broker_url: info.broker_url.as_deref().map(crate::util::redact),
                candidates: info.candidates.iter().map(ToString::to_string).collect(),
            },
            None => PlatformView {
                orchestrator: None,
                epoch: self.db.epoch(),
                api_addr: local,
                broker_url: None,
                candidates: Vec::new(),
            },
        }
    }

    /// The services the platform offers, for `getPlatformServices`.
    fn services(&self) -> Vec<ServiceView> {
        let platform = self.platform();
        let mut services = vec![ServiceView {
            name: "api".into(),
            kind: "http".into(),
            address: platform.api_addr.as_ref().map(|a| format!("http://{a}")),
        }];
        if let Some(transport) = self.node.transport {
            services.push(ServiceView {
                name: "transport".into(),
                kind: transport.into(),
                address: platform.broker_url.clone(),
            });
        }
        if let Some(runtime) = self.node.runtime {
            services.push(ServiceView {
                name: "runtime".into(),
                kind: runtime.into(),
                address: None,
            });
        }
        services
    }
}

/// The platform as the API shows it (`/platform`, `getPlatform`).
#[derive(Debug, Clone, serde::Serialize)]
struct PlatformView {
    orchestrator: Option<String>,
    epoch: u64,
    api_addr: Option<String>,
    broker_url: Option<String>,
    candidates: Vec<String>,
}

/// One service of the platform (`getPlatformServices`).
#[derive(Debug, Clone, serde::Serialize)]
struct ServiceView {
    name: String,
    kind: String,
    address: Option<String>,
}

/// Serves the API on `listener` until `shutdown` resolves; then stops accepting, ends open
/// streams and waits for requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let local = listener.local_addr().map_err(ApiError::Serve)?;
    let core = Arc::new(Core::new(state));
    let _ = core.local_addr.set(local);
    metrics::install(core.stop.clone());
    let app = app(Arc::clone(&core));
    tracing::info!(addr = %local, "API listening");
    let stop = core.stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
        .map_err(ApiError::Serve)
}

/// Starts the API of an orchestrator: resolves the token (`config.token`, else
/// `<data dir>/api-token`), binds `config.bind`, serves in a task of the node that ends when
/// the node shuts down. Returns the address to announce (`host:port`, with the node's
/// address in place of an unspecified bind address).
pub async fn start(
    config: ApiConfig,
    db: Arc<Database>,
    ctx: &NodeContext,
) -> Result<String, ApiError> {
    let token = match (&config.token, &ctx.config.data_dir) {
        (Some(token), _) => token.clone(),
        (None, Some(dir)) => ApiToken::load_or_create(dir).await?,
        (None, None) => {
            tracing::warn!("no API token configured and no data dir: mutations are refused");
            ApiToken::generate()?
        }
    };
    let bind = config.bind;
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| ApiError::Bind { addr: bind, source })?;
    let local = listener.local_addr().map_err(ApiError::Serve)?;
    let advertised = if local.ip().is_unspecified() {
        let host = &ctx.config.address;
        if host.contains(':') {
            format!("[{host}]:{}", local.port())
        } else {
            format!("{host}:{}", local.port())
        }
    } else {
        local.to_string()
    };
    let state = ApiState::new(db, config.token(token))?.with_node(ctx);
    let stop = ctx.shutdown();
    ctx.spawn(async move {
        if let Err(err) = serve(listener, state, async move { stop.cancelled().await }).await {
            tracing::error!(cause = %err, "the API stopped");
        }
    });
    Ok(advertised)
}

/// Bodies up to this size (or the body limit, if larger) are read to their end even when
/// over the body limit, so that the client gets its 413 instead of a reset connection;
/// larger ones are cut off at once.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

fn app(core: Arc<Core>) -> Router {
    let limit = core.config.body_limit;
    let timeout = core.config.request_timeout;
    rest::routes()
        .merge(graphql::routes(&core))
        .fallback(assets::serve)
        .with_state(core)
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(DRAIN_LIMIT.max(limit)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
}
