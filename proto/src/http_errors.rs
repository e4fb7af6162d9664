//! Every error answer of the HTTP APIs is JSON (`{"error": "…"}`, [`crate::api::Error`]):
//! the handlers write their own, and this middleware turns the ones the HTTP stack
//! writes itself (404 for an unknown path, 405 for a wrong method, 400 for a query
//! string that does not parse, 413 for a body that is too large) into the same form.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api;

/// The most of a plain-text error body that is read to build the JSON one.
const MAX_TEXT_BYTES: usize = 16 << 10;

/// `router` with [`json_errors`] around it as a whole. A layer on the router itself
/// would wrap each route inside axum's method dispatch, which adds the `Allow` header
/// of a 405 only after such a layer has run.
pub fn with_json_errors(router: Router) -> Router {
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(json_errors))
}

/// Middleware (see [`with_json_errors`]): error answers that are not JSON become JSON
/// that says what was wrong; a 405 names the methods the path takes.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_TEXT_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no such endpoint: {path} (GET / lists them)"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(|v| format!("; use {}", v.replace(',', ", ")))
                .unwrap_or_default();
            format!("{method} is not allowed on {path}{allowed}")
        }
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    let body = serde_json::to_vec(&api::Error { error: message }).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}
