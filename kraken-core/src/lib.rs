//! # Kraken
//!
//! Kraken turns the spare machines on a LAN into one small app platform. Every machine runs
//! the same agent; one of them is the orchestrator, all of them are workers. A user gives a
//! git URL and branch whose root holds a `shipwreck.toml`; the orchestrator validates it,
//! picks the least-loaded worker, and that worker builds and runs the app.
//!
//! This crate is the library: compose your own orchestrators and workers, or plug in your
//! own [`executor::Executor`], [`transport::Transport`] and [`runtime::Runtime`].
//!
//! # Layout
//!
//! - [`model`]: ids, nodes, deployments and the deployment state machine.
//! - [`manifest`]: `shipwreck.toml`, parsed and validated with line/column errors.
//! - [`source`]: git URL + branch → checkout + commit; remote head lookup.
//! - [`wire`]: typed messages, their envelope, channels and the codec.
//! - [`transport`]: the `Transport` trait; `memory` always, `amqp` with feature `amqp`.
//! - [`runtime`]: the `Runtime` trait; `process` always, `docker` with feature `docker`,
//!   `fake` with feature `test-util`.
//! - [`executor`]: the `Executor` trait and node context; the `worker` and `orchestrator`
//!   executors.
//! - [`membership`]: the cluster join secret, kept in the data dir; HMAC proofs that a
//!   node knows it; secrets derived from it.
//! - `discovery` (feature `discovery`): finding an orchestrator on the LAN: mDNS, given
//!   addresses, an opt-in subnet scan.
//! - [`state`]: the orchestrator's database: deployments, nodes, logs, persisted.
//! - `api` (feature `api`): the orchestrator's HTTP API: REST, GraphQL, metrics, UI files.
//! - [`util`]: the shared small helpers: a poison-tolerant lock, backoff, credential redaction.
//! - [`agent`]: composition: a builder that takes transport, runtime and executors and runs
//!   them until shutdown.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The attribute the crate's async traits are written with; implement
/// [`executor::Executor`], [`transport::Transport`] or [`runtime::Runtime`] with
/// `#[kraken_core::async_trait]` without a dependency of your own.
pub use async_trait::async_trait;

pub mod agent;
#[cfg(feature = "api")]
#[cfg_attr(docsrs, doc(cfg(feature = "api")))]
pub mod api;
#[cfg(feature = "discovery")]
#[cfg_attr(docsrs, doc(cfg(feature = "discovery")))]
pub mod discovery;
pub mod executor;
pub mod manifest;
pub mod membership;
pub mod model;
pub mod runtime;
pub mod source;
pub mod state;
pub mod transport;
pub mod util;
pub mod wire;
