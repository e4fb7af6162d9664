//! What every handler of the agent's HTTPS API works with: the shared state it shows,
//! and the JSON error answer. Its own module so that the API's route modules
//! ([`crate::http`], [`crate::http_images`]) share it without importing each other.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cella_proto::auth::Authenticator;

use crate::state::Shared;
use crate::status_updates::StatusUpdateManager;

/// What the API shows: the shared state, and whether updates can reach the master.
pub struct Api {
    pub shared: Arc<Shared>,
    pub updates: Arc<StatusUpdateManager>,
    pub auth: Arc<Authenticator>,
}

/// A JSON error answer: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}
