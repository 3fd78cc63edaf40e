//! The REST routes: ping, health, logs (read, follow, delete), platform, metrics, OpenAPI.

use super::auth::Caller;
use super::core::Core;
use super::time::rfc3339;
use super::{assets, metrics};
use crate::model::{DeploymentId, InvalidId, LogLine, NodeId, StatusKind};
use crate::state::{StateError, StateEvent};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, broadcast};

/// Why a REST request was refused. Answered as JSON `{"error": "...", "code": "..."}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestError {
    /// An id in the path is not a safe identifier.
    #[error(transparent)]
    BadId(#[from] InvalidId),
    /// A query parameter is malformed.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// No deployment (or log) with this id.
    #[error("no deployment {0}")]
    UnknownDeployment(DeploymentId),
    /// No node with this id.
    #[error("no node {0}")]
    UnknownNode(NodeId),
    /// The token is missing or wrong.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Too many streams are open.
    #[error("too many open streams ({0}); try again later")]
    TooManyStreams(usize),
    /// The state could not be changed.
    #[error(transparent)]
    State(#[from] StateError),
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    code: &'static str,
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            RestError::BadId(_) | RestError::BadQuery(_) => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            RestError::UnknownDeployment(_)
            | RestError::UnknownNode(_)
            | RestError::State(StateError::UnknownNode(_)) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            RestError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            RestError::TooManyStreams(_) => (StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_STREAMS"),
            RestError::State(StateError::NotLeader { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "NOT_LEADER")
            }
            RestError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                code,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(crate) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/index.html") }))
        .route("/ping", get(|| async { "pong" }))
        .route("/health/{node_id}", get(health))
        .route("/log/{deployment_id}", get(log).delete(delete_log))
        .route("/platform", get(platform))
        .route("/join", post(join))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
}

/// Refuses reads without the token when the configuration asks for it.
fn check_read(core: &Core, headers: &HeaderMap) -> Result<(), RestError> {
    if !core.config.require_token_for_queries {
        return Ok(());
    }
    let caller = Caller::from_headers(&core.token, headers);
    if caller.is_authenticated() {
        Ok(())
    } else {
        Err(RestError::Unauthorized(caller.refusal()))
    }
}

#[derive(Serialize)]
struct Health {
    node: String,
    /// 0 primary, 1 standby, higher observers; `null` for a node without a rollover rank.
    rank: Option<u32>,
    /// `primary`, `standby`, `observer` or `worker`.
    role: &'static str,
    epoch: u64,
    /// Whether this orchestrator accepts changes now (false on a standby, a demoted or a
    /// fenced primary); only meaningful for the orchestrator's own id.
    accepting: bool,
}

async fn health(
    State(core): State<Arc<Core>>,
    Path(raw): Path<String>,
) -> Result<Json<Health>, RestError> {
    let id = NodeId::parse(&raw)?;
    let is_orchestrator = core.platform().orchestrator.as_deref() == Some(id.as_str());
    let rank = match core.db.node(&id) {
        Some(node) if node.rank != u32::MAX => Some(node.rank),
        Some(_) | None if is_orchestrator => Some(0),
        Some(_) => None,
        None => return Err(RestError::UnknownNode(id)),
    };
    let role = match rank {
        Some(0) => "primary",
        Some(1) => "standby",
        Some(_) => "observer",
        None => "worker",
    };
    Ok(Json(Health {
        node: id.to_string(),
        rank,
        role,
        epoch: core.db.epoch(),
        accepting: is_orchestrator && core.db.accepting(),
    }))
}

#[derive(Debug, Deserialize)]
struct JoinRequest {
    node: String,
    proof: Option<String>,
}

#[derive(Serialize)]
struct Joined {
    orchestrator: Option<String>,
    epoch: u64,
    broker_url: Option<String>,
}

/// `POST /join {"node": id, "proof": hmac}`: a node asks to join. With a join secret, the
/// proof must match (else 403, logged); the answer holds the broker URL with its password.
async fn join(
    State(core): State<Arc<Core>>,
    Json(request): Json<JoinRequest>,
) -> Result<Response, RestError> {
    let node = NodeId::parse(&request.node)?;
    if let Some(verifier) = &core.node.join_verifier
        && !verifier.verify_join(&node, request.proof.as_deref())
    {
        return Ok((
                StatusCode::FORBIDDEN,
                Json(ErrorBody {
                    error: format!(
                        "node {node} refused: wrong or missing join secret (it is printed by the first orchestrator and kept in its data dir, file join-secret)"
                    ),
                    code: "FORBIDDEN",
                }),
            )
                .into_response());
    }
    let info = core.node.platform_info();
    tracing::info!(node = %node, "node joins");
    Ok(Json(Joined {
        orchestrator: info.as_ref().map(|i| i.orchestrator.to_string()),
        epoch: core.db.epoch(),
        broker_url: info.and_then(|i| i.broker_url),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    /// Only the newest N lines.
    tail: Option<usize>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    follow: bool,
}

/// `<rfc3339 time> [<stream>] <text>\n`
fn format_line(line: &LogLine, out: &mut String) {
    out.push_str(&rfc3339(line.at));
    out.push_str(" [");
    out.push_str(&line.stream.to_string());
    out.push_str("] ");
    out.push_str(&line.text);
    out.push('\n');
}

fn format_lines(lines: &[LogLine]) -> String {
    let mut out = String::with_capacity(lines.iter().map(|l| l.text.len() + 40).sum());
    for line in lines {
        format_line(line, &mut out);
    }
    out
}

fn text_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn log(
    State(core): State<Arc<Core>>,
    Path(raw): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    check_read(&core, &headers)?;
    let id = DeploymentId::parse(&raw)?;
    let Query(query) = query.map_err(|e| RestError::BadQuery(e.body_text()))?;
    if !query.follow {
        let lines = core
            .db
            .logs(&id, query.tail)
            .ok_or_else(|| RestError::UnknownDeployment(id.clone()))?;
        return Ok(text_response(Body::from(format_lines(&lines))));
    }
    let permit = Arc::clone(&core.streams)
        .try_acquire_owned()
        .map_err(|_| RestError::TooManyStreams(core.config.max_streams))?;
    let (lines, events) = core
        .db
        .logs_and_subscribe(&id, query.tail)
        .ok_or_else(|| RestError::UnknownDeployment(id.clone()))?;
    let head = futures::stream::once(futures::future::ready(Ok::<_, std::convert::Infallible>(
        Bytes::from(format_lines(&lines)),
    )));
    let gone = core
        .db
        .deployment(&id)
        .is_none_or(|d| d.status.kind() == StatusKind::Destroyed);
    if gone {
        return Ok(text_response(Body::from_stream(head)));
    }
    let follow = Follow {
        id,
        events,
        done: false,
        _permit: permit,
    };
    let rest = futures::stream::unfold(follow, |mut f| async move {
        f.next().await.map(|chunk| (chunk, f))
    })
    .map(|chunk| Ok::<_, std::convert::Infallible>(Bytes::from(chunk)))
    .take_until(core.stop.clone().cancelled_owned())
    .take_until(tokio::time::sleep(core.config.max_stream_time));
    Ok(text_response(Body::from_stream(head.chain(rest))))
}

/// New lines of one deployment's log, until it is destroyed.
struct Follow {
    id: DeploymentId,
    events: broadcast::Receiver<StateEvent>,
    done: bool,
    /// Held as long as the stream is open.
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        loop {
            match self.events.recv().await {
                Ok(StateEvent::Log { id, lines }) if id == self.id => {
                    return Some(format_lines(&lines));
                }
                Ok(StateEvent::Deployment { id, status, .. })
                    if id == self.id && status.kind() == StatusKind::Destroyed =>
                {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(deployment = %self.id, missed, "a log follower fell behind");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

#[derive(Serialize)]
struct Deleted {
    deleted: bool,
}

async fn delete_log(
    State(core): State<Arc<Core>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Deleted>, RestError> {
    let caller = Caller::from_headers(&core.token, &headers);
    if !caller.is_authenticated() {
        return Err(RestError::Unauthorized(caller.refusal()));
    }
    let id = DeploymentId::parse(&raw)?;
    if core.db.logs(&id, Some(0)).is_none() {
        return Err(RestError::UnknownDeployment(id));
    }
    let deleted = core.db.delete_log(&id).await?;
    tracing::info!(deployment = %id, deleted, "log deleted through the API");
    Ok(Json(Deleted { deleted }))
}

async fn platform(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    check_read(&core, &headers)?;
    Ok(Json(core.platform()).into_response())
}

async fn metrics_text(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    check_read(&core, &headers)?;
    let mut response = Response::new(Body::from(metrics::render(&core)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

async fn openapi() -> Response {
    let mut response = Response::new(Body::from(assets::OPENAPI));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogStream, Timestamp};

    #[test]
    fn lines_are_formatted_with_time_and_stream() {
        let line = LogLine {
            at: Timestamp(0),
            stream: LogStream::Build,
            text: "step 1".into(),
        };
        assert_eq!(
            format_lines(&[line]),
            "1970-01-01T00:00:00.000Z [build] step 1\n"
        );
    }
}
