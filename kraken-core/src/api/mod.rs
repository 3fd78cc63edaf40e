//! The orchestrator's HTTP API: REST routes, GraphQL (queries, mutations and subscriptions
//! over websocket) with GraphiQL, Prometheus metrics and the web UI's files.
//!
//! The API never acts on the platform itself: it writes requests into the
//! [`Database`](crate::state::Database)
//! (`create_deployment`, `request_redeploy`, `request_destroy`, `delete_log`) and reads it;
//! the orchestration executor does the rest. It knows nothing of executors either: it is
//! given a database, the settings, and the [`NodeFacts`] of the node it runs on (platform
//! info, address, data dir, the join secret check), and [`Server::bind`] returns a bound
//! server whose [`run`](Server::run) future the caller spawns. The orchestrator does so in
//! its `setup` when its `OrchestratorConfig::api` is set, so the API lives wherever the
//! orchestrator role lives. Embedders can also serve a database on their own listener with
//! [`serve`].
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
mod config;
mod core;
mod error;
mod facts;
mod graphql;
mod metrics;
mod rest;
mod server;
mod state;
mod time;

pub use auth::ApiToken;
pub use config::ApiConfig;
pub use error::ApiError;
pub use facts::{JoinVerifier, NodeFacts};
pub use graphql::sdl;
pub use server::{Server, serve};
pub use state::ApiState;
