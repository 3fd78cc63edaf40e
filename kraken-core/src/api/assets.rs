//! Embedded files: the web UI (every file under `src/api/ui/`, listed by the build script)
//! and the OpenAPI document.

use axum::Json;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The UI's files: (URL path, content).
const UI: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The OpenAPI 3 document of the REST routes.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serves a UI file for `GET`/`HEAD` of its path; anything else is 404. The path is only
/// compared with the embedded table, never used to open a file.
pub(crate) async fn serve(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if (method == Method::GET || method == Method::HEAD)
        && let Some((name, content)) = UI.iter().find(|(name, _)| *name == path)
    {
        let mut response = Response::new(Body::from(*content));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let body =
        serde_json::json!({ "error": format!("no route {method} {path}"), "code": "NOT_FOUND" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ui_has_an_index_and_the_openapi_document_parses() {
        assert!(UI.iter().any(|(name, _)| *name == "/index.html"));
        assert!(
            UI.iter()
                .all(|(name, _)| name.starts_with('/') && !name.contains(".."))
        );
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(content_type("/a/b.css"), "text/css; charset=utf-8");
    }
}
