//! The HTTP and websocket handlers of `/graphql`, and GraphiQL.

use super::context::coded;
use super::schema::{KrakenSchema, schema};
use crate::api::auth::Caller;
use crate::api::core::Core;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::{BatchRequest, Data, Result};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::header::{CONTENT_TYPE, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::StreamExt;
use std::sync::Arc;

/// Most operations in one batched request.
const MAX_BATCH: usize = 16;

/// `/graphql` (queries and mutations by POST, subscriptions or GraphiQL by GET) and
/// `/graphiql`.
pub(crate) fn routes(core: &Arc<Core>) -> Router<Arc<Core>> {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphiql", get(graphiql))
        .layer(Extension(schema(core)))
}

fn graphql_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/graphql-response+json"),
    );
    response
}

/// The refusal of a request without the token when queries need it too.
fn refuse_closed(core: &Core, caller: Caller) -> Option<Response> {
    (core.config.require_token_for_queries && !caller.is_authenticated()).then(|| {
        graphql_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            caller.refusal(),
        )
    })
}

/// Reads a request body of at most `limit` bytes. A larger one is read on and dropped (up
/// to [`DRAIN_LIMIT`](crate::api::server::DRAIN_LIMIT)) so the client, still sending, gets the 413
/// answer instead of a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        graphql_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("the body is larger than {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // Over the hard limit or the client went away.
            return Err(if total > limit {
                too_large()
            } else {
                graphql_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "the body could not be read",
                )
            });
        };
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buffer.extend_from_slice(&chunk);
        } else {
            buffer = Vec::new();
        }
    }
    if total > limit {
        Err(too_large())
    } else {
        Ok(Bytes::from(buffer))
    }
}

async fn graphql_post(
    State(core): State<Arc<Core>>,
    Extension(schema): Extension<KrakenSchema>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = Caller::from_headers(&core.token, &headers);
    if let Some(refused) = refuse_closed(&core, caller) {
        return refused;
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return graphql_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_REQUEST",
            "send the GraphQL request as JSON with `Content-Type: application/json`",
        );
    }
    let body = match read_body(body, core.config.body_limit).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("not a GraphQL request: {err}"),
            );
        }
    };
    if let BatchRequest::Batch(requests) = &batch
        && requests.len() > MAX_BATCH
    {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("a batch holds at most {MAX_BATCH} operations"),
        );
    }
    GraphQLResponse::from(schema.execute_batch(batch.data(caller)).await).into_response()
}

/// A websocket upgrade for subscriptions, or GraphiQL for a browser.
async fn graphql_get(
    State(core): State<Arc<Core>>,
    Extension(schema): Extension<KrakenSchema>,
    request: Request,
) -> Response {
    if !request.headers().contains_key(UPGRADE) {
        return graphiql().await.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(status) => {
            return (
                status,
                "use the graphql-transport-ws or graphql-ws websocket subprotocol",
            )
                .into_response();
        }
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let header_caller = Caller::from_headers(&core.token, &parts.headers);
    let limit = core.config.body_limit;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let stop = core.stop.clone();
            let token = core.token.clone();
            let required = core.config.require_token_for_queries;
            let connection = GraphQLWebSocket::new_with_pair(sink, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let caller = match init_token(&payload) {
                        Some(presented) => Caller::from_token(&token, Some(presented)),
                        None => header_caller,
                    };
                    if required && !caller.is_authenticated() {
                        return Err(coded("UNAUTHENTICATED", caller.refusal()));
                    }
                    let mut data = Data::default();
                    data.insert(caller);
                    Ok(data)
                })
                .serve();
            tokio::select! {
                () = connection => {}
                () = stop.cancelled() => {}
            }
        })
}

/// The token in a `connection_init` payload: `{"Authorization": "Bearer t"}` or
/// `{"token": "t"}` (key case ignored).
fn init_token(payload: &serde_json::Value) -> Option<&str> {
    let object = payload.as_object()?;
    object.iter().find_map(|(key, value)| {
        let text = value.as_str()?;
        if key.eq_ignore_ascii_case("authorization") {
            let (scheme, token) = text.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        } else if key.eq_ignore_ascii_case("token") || key.eq_ignore_ascii_case("authToken") {
            Some(text)
        } else {
            None
        }
    })
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .title("Kraken GraphiQL")
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_payload_tokens() {
        let t = serde_json::json!({ "Authorization": "Bearer abc" });
        assert_eq!(init_token(&t), Some("abc"));
        assert_eq!(init_token(&serde_json::json!({ "token": "x" })), Some("x"));
        assert_eq!(init_token(&serde_json::json!({ "other": "x" })), None);
        assert_eq!(init_token(&serde_json::Value::Null), None);
    }
}
