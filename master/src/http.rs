//! The operator API (HTTP/JSON) and `/metrics`, on the same TLS port as gRPC.
//! Everything but `/health` needs a client certificate of the cluster CA.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::master::MasterHandle;
use crate::state::TaskJson;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub fn router(master: MasterHandle) -> Router {
    let authenticated = Router::new()
        .route("/api/v1/state", get(state))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/frameworks", get(frameworks))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/kill", post(kill))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(
            cella_proto::tls::require_principal,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(authenticated)
        .with_state(master)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn state(State(m): State<MasterHandle>) -> Response {
    match m.state().await {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        ),
    }
}

async fn agents(State(m): State<MasterHandle>) -> Response {
    match m.state().await {
        Some(s) => Json(s.agents).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        ),
    }
}

async fn frameworks(State(m): State<MasterHandle>) -> Response {
    match m.state().await {
        Some(s) => Json(s.frameworks).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        ),
    }
}

#[derive(Deserialize)]
struct TaskFilter {
    state: Option<String>,
    framework: Option<String>,
}

async fn tasks(State(m): State<MasterHandle>, Query(filter): Query<TaskFilter>) -> Response {
    let Some(s) = m.state().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        );
    };
    let wanted_state = filter.state.map(|s| s.to_ascii_uppercase());
    let tasks: Vec<TaskJson> = s
        .tasks
        .into_iter()
        .filter(|t| wanted_state.as_deref().is_none_or(|w| t.state == w))
        .filter(|t| {
            filter
                .framework
                .as_deref()
                .is_none_or(|f| t.framework_id == f)
        })
        .collect();
    Json(tasks).into_response()
}

async fn task(State(m): State<MasterHandle>, Path(id): Path<String>) -> Response {
    let Some(s) = m.state().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        );
    };
    match s.tasks.into_iter().find(|t| t.id == id) {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown task {id:?}")),
    }
}

async fn kill(State(m): State<MasterHandle>, Path(id): Path<String>) -> Response {
    match m.kill(id.clone()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "task_id": id, "kill": "sent" })),
        )
            .into_response(),
        Err(e) if e.starts_with("unknown task") => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn metrics(State(m): State<MasterHandle>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.metrics.encode(),
    )
        .into_response()
}
