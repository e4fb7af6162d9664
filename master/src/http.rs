//! The operator API (HTTP/JSON) and `/metrics`, on the same TLS port as gRPC.
//!
//! Everything but `/health` needs an authenticated caller: a client certificate of the
//! cluster CA, a bearer token or HTTP basic credentials
//! ([`cella_proto::auth::require_caller`]). Each handler then asks the authorizer
//! (permissions in `docs/api.md`): whole views need `view(state)`; task lists show the
//! tasks the caller may see (its own, or by `view(tasks)`), with usage figures only where
//! it may see them (`view(usage)`); kill and teardown are decided by the actor, which
//! knows whose the task or framework is.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cella_proto::acl::{Action, Denied, Target, ViewKind};
use cella_proto::api;
use cella_proto::auth::{Caller, require_caller};
use cella_proto::v1::TaskState;
use serde::Deserialize;

use crate::master::{MasterHandle, OperatorError};

/// The largest request body the API reads (it takes none today; this bounds what a
/// peer can make it buffer).
const MAX_BODY_BYTES: usize = 64 << 10;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(api::Error {
            error: message.into(),
        }),
    )
        .into_response()
}

fn denied(d: &Denied) -> Response {
    error(StatusCode::FORBIDDEN, d.to_string())
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the master is shutting down",
    )
}

pub fn router(master: MasterHandle) -> Router {
    let authenticated = Router::new()
        .route("/api/v1/state", get(state))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/frameworks", get(frameworks))
        .route("/api/v1/frameworks/{id}/teardown", post(teardown))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/kill", post(kill))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            master.authenticator.clone(),
            require_caller,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(master)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Checks a permission that covers a whole endpoint (logged and counted if denied):
/// the answer to give instead, if denied.
fn refusal(m: &MasterHandle, caller: &Caller, action: &Action<'_>, what: &str) -> Option<Response> {
    m.authorizer
        .check(&caller.identity, action, what)
        .err()
        .map(|d| denied(&d))
}

/// The owner and role of every framework, to decide what a caller may see of tasks.
fn targets(s: &api::State) -> BTreeMap<String, (String, String)> {
    s.frameworks
        .iter()
        .map(|f| (f.id.clone(), (f.principal.clone(), f.role.clone())))
        .collect()
}

/// `task` as `caller` may see it: `None` if it may not see the task, without its
/// usage if it may not see that.
fn visible(
    m: &MasterHandle,
    caller: &Caller,
    owners: &BTreeMap<String, (String, String)>,
    mut task: api::Task,
) -> Option<api::Task> {
    let (owner, role) = owners.get(&task.framework_id).cloned().unwrap_or_default();
    let target = Some(Target {
        owner: &owner,
        role: &role,
    });
    let may = |what| {
        m.authorizer
            .allows(&caller.identity, &Action::View { what, target })
    };
    if !may(ViewKind::Tasks) {
        return None;
    }
    if !may(ViewKind::Usage) {
        task.usage = None;
    }
    Some(task)
}

fn visible_tasks(m: &MasterHandle, caller: &Caller, s: &api::State) -> Vec<api::Task> {
    let owners = targets(s);
    s.tasks
        .iter()
        .filter_map(|t| visible(m, caller, &owners, t.clone()))
        .collect()
}

async fn state(State(m): State<MasterHandle>, Extension(caller): Extension<Caller>) -> Response {
    let view = Action::View {
        what: ViewKind::State,
        target: None,
    };
    if let Some(r) = refusal(&m, &caller, &view, "GET /api/v1/state") {
        return r;
    }
    let Some(mut s) = m.state().await else {
        return unavailable();
    };
    s.tasks = visible_tasks(&m, &caller, &s);
    Json(s).into_response()
}

async fn agents(State(m): State<MasterHandle>, Extension(caller): Extension<Caller>) -> Response {
    let view = Action::View {
        what: ViewKind::State,
        target: None,
    };
    if let Some(r) = refusal(&m, &caller, &view, "GET /api/v1/agents") {
        return r;
    }
    match m.state().await {
        Some(s) => Json(s.agents).into_response(),
        None => unavailable(),
    }
}

/// Every framework with `view(state)`; otherwise the caller's own.
async fn frameworks(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let Some(s) = m.state().await else {
        return unavailable();
    };
    let all = m.authorizer.allows(
        &caller.identity,
        &Action::View {
            what: ViewKind::State,
            target: None,
        },
    );
    let principal = caller.principal();
    let frameworks: Vec<api::Framework> = s
        .frameworks
        .into_iter()
        .filter(|f| all || f.principal == principal)
        .collect();
    Json(frameworks).into_response()
}

#[derive(Deserialize)]
struct TaskFilter {
    state: Option<String>,
    framework: Option<String>,
}

async fn tasks(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<TaskFilter>,
) -> Response {
    let Some(s) = m.state().await else {
        return unavailable();
    };
    // A name that is no state matches no task.
    let wanted_state = filter
        .state
        .map(|s| TaskState::from_name(&s.to_ascii_uppercase()));
    let tasks: Vec<api::Task> = visible_tasks(&m, &caller, &s)
        .into_iter()
        .filter(|t| wanted_state.is_none_or(|w| w == Some(t.state)))
        .filter(|t| {
            filter
                .framework
                .as_deref()
                .is_none_or(|f| t.framework_id == f)
        })
        .collect();
    Json(tasks).into_response()
}

async fn task(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let Some(s) = m.state().await else {
        return unavailable();
    };
    let owners = targets(&s);
    let Some(t) = s.tasks.into_iter().find(|t| t.id == id) else {
        return error(StatusCode::NOT_FOUND, format!("unknown task {id:?}"));
    };
    let (owner, role) = owners.get(&t.framework_id).cloned().unwrap_or_default();
    let view = Action::View {
        what: ViewKind::Tasks,
        target: Some(Target {
            owner: &owner,
            role: &role,
        }),
    };
    if let Some(r) = refusal(&m, &caller, &view, &format!("GET /api/v1/tasks/{id}")) {
        return r;
    }
    match visible(&m, &caller, &owners, t) {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::FORBIDDEN, format!("task {id:?} is not visible")),
    }
}

fn operator_error(e: OperatorError) -> Response {
    match e {
        OperatorError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        OperatorError::Conflict(m) => error(StatusCode::CONFLICT, m),
        OperatorError::Denied(d) => denied(&d),
        OperatorError::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        OperatorError::Unavailable => unavailable(),
    }
}

async fn kill(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match m.kill(id.clone(), caller.identity).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "task_id": id, "kill": "sent" })),
        )
            .into_response(),
        Err(e) => operator_error(e),
    }
}

async fn teardown(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match m.teardown(id.clone(), caller.identity).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "framework_id": id, "teardown": "done" })),
        )
            .into_response(),
        Err(e) => operator_error(e),
    }
}

async fn metrics(State(m): State<MasterHandle>, Extension(caller): Extension<Caller>) -> Response {
    let view = Action::View {
        what: ViewKind::State,
        target: None,
    };
    if let Some(r) = refusal(&m, &caller, &view, "GET /metrics") {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.metrics.encode(),
    )
        .into_response()
}
