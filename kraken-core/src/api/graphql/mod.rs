//! The GraphQL schema (the original platform's names, plus extras), its HTTP and websocket
//! handlers and GraphiQL.
//!
//! Mapping of the original fields: `status` is the status name (`Running`, `Errored`, ...);
//! `time` fields are RFC 3339 text in UTC with milliseconds (`timeMs` gives epoch
//! milliseconds); `srcUrl` and `deploymentUrl` are both the git URL given to
//! `createDeployment` (the original's argument name); `resultsUrl` (and `appUrl`) is the URL
//! the running app answers on; `memMb`, `maxMemMb` and `cpuUsage` come from the latest
//! resource sample; `size` is the built artifact's size in bytes when a runtime reports it,
//! which none does yet, so it is null; `node` is the id of the node the deployment is placed
//! on; node figures are in MiB, seconds and percent.

mod context;
mod http;
mod mutation;
mod query;
mod schema;
mod subscription;
mod types;

pub(crate) use http::routes;
pub use schema::sdl;
