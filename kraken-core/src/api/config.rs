//! The API's settings.

use std::net::SocketAddr;
use std::time::Duration;

use super::auth::ApiToken;

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
