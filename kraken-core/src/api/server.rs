//! The server: binds, builds the router over a [`Core`] and serves until told to stop.

use super::auth::ApiToken;
use super::config::ApiConfig;
use super::core::Core;
use super::error::ApiError;
use super::facts::NodeFacts;
use super::state::ApiState;
use super::{assets, graphql, metrics, rest};
use crate::state::Database;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Bodies up to this size (or the body limit, if larger) are read to their end even when
/// over the body limit, so that the client gets its 413 instead of a reset connection;
/// larger ones are cut off at once.
pub(crate) const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// A bound API server: [`local_addr`](Self::local_addr) is known at once, and
/// [`run`](Self::run) is the future that serves, for the caller to spawn or await.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: ApiState,
    local: SocketAddr,
}

impl Server {
    /// A server for a node: resolves the token (`config.token`, else
    /// `<data dir>/api-token`, else a random one nobody knows, which leaves the API
    /// read-only), binds `config.bind` and serves `db` with what `node` tells.
    pub async fn bind(
        config: ApiConfig,
        db: Arc<Database>,
        node: NodeFacts,
    ) -> Result<Self, ApiError> {
        let token = match (&config.token, &node.data_dir) {
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
        let state = ApiState::new(db, config.token(token))?.with_node(node);
        Self::new(listener, state)
    }

    /// A server of `state` on a listener the caller opened.
    pub fn new(listener: TcpListener, state: ApiState) -> Result<Self, ApiError> {
        let local = listener.local_addr().map_err(ApiError::Serve)?;
        Ok(Server {
            listener,
            state,
            local,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address to announce (`host:port`): the listening address, with the node's
    /// [`address`](NodeFacts::address) in place of an unspecified one.
    pub fn advertised_addr(&self) -> String {
        match &self.state.node.address {
            Some(host) if self.local.ip().is_unspecified() => {
                if host.contains(':') {
                    format!("[{host}]:{}", self.local.port())
                } else {
                    format!("{host}:{}", self.local.port())
                }
            }
            _ => self.local.to_string(),
        }
    }

    /// Serves until `shutdown` resolves; then stops accepting, ends open streams and waits
    /// for requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        let core = Arc::new(Core::new(self.state, self.local));
        metrics::install(core.stop.clone());
        let app = app(Arc::clone(&core));
        tracing::info!(addr = %self.local, "API listening");
        let stop = core.stop.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.cancel();
            })
            .await
            .map_err(ApiError::Serve)
    }
}

/// Serves the API on `listener` until `shutdown` resolves; then stops accepting, ends open
/// streams and waits for requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    Server::new(listener, state)?.run(shutdown).await
}

/// The router: REST, GraphQL and the UI's files behind the body limit, timeout and tracing
/// layers.
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
