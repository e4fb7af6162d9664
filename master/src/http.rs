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
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cella_proto::acl::{Action, Denied, Target, ViewKind};
use cella_proto::api;
use cella_proto::auth::{Caller, require_caller};
use cella_proto::v1::{self, TaskState};
use serde::Deserialize;

use crate::master::{MasterHandle, OperatorError, UsageQuery};

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
        .route("/api/v1/tasks/{id}/usage", get(task_usage))
        .route("/api/v1/tasks/{id}/kill", post(kill))
        .route("/metrics", get(metrics))
        .route("/api/v1/audit", get(audit))
        .layer(axum::middleware::from_fn_with_state(
            master.authenticator.clone(),
            require_caller,
        ));
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(master)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /`: what this is and where to go on (no authentication, like `/health`).
async fn index() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "service": "cella-master",
        "version": env!("CARGO_PKG_VERSION"),
        "about": "The master of a Cella cluster. Schedulers use the gRPC service \
                  cella.v1.SchedulerService on this port; operators use the HTTP JSON API \
                  below, or the `cella` command.",
        "api": [
            "GET /health",
            "GET /api/v1/state",
            "GET /api/v1/agents",
            "GET /api/v1/frameworks",
            "POST /api/v1/frameworks/{id}/teardown",
            "GET /api/v1/tasks?state=STATE&framework=ID",
            "GET /api/v1/tasks/{id}",
            "GET /api/v1/tasks/{id}/usage?since=DURATION&resolution=DURATION",
            "POST /api/v1/tasks/{id}/kill?grace_period_secs=SECONDS",
            "GET /metrics",
            "GET /api/v1/audit?since=TIME&until=TIME",
        ],
        "docs": "docs/api.md in Cella's source; /usr/share/doc/cella/api.md where the \
                 Debian package is installed",
    }))
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
#[serde(deny_unknown_fields)]
struct TaskFilter {
    state: Option<String>,
    framework: Option<String>,
}

async fn tasks(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<TaskFilter>,
) -> Response {
    let wanted_state = match filter.state.as_deref().map(parse_state).transpose() {
        Ok(state) => state,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(s) = m.state().await else {
        return unavailable();
    };
    let tasks: Vec<api::Task> = visible_tasks(&m, &caller, &s)
        .into_iter()
        .filter(|t| wanted_state.is_none_or(|w| w == t.state))
        .filter(|t| {
            filter
                .framework
                .as_deref()
                .is_none_or(|f| t.framework_id == f)
        })
        .collect();
    Json(tasks).into_response()
}

/// A task state named in a query (any case, with or without `TASK_`).
fn parse_state(name: &str) -> Result<TaskState, String> {
    let upper = name.to_ascii_uppercase();
    TaskState::from_name(upper.strip_prefix("TASK_").unwrap_or(&upper)).ok_or_else(|| {
        let valid: Vec<&str> = TaskState::all()
            .filter(|s| *s != TaskState::Unspecified)
            .map(TaskState::name)
            .collect();
        format!(
            "state={name:?} is no task state; use one of {}",
            valid.join(", ")
        )
    })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    /// Only samples of this last stretch of time (`10m`).
    since: Option<String>,
    /// Samples folded into buckets this long (`1m`).
    resolution: Option<String>,
}

/// `GET /api/v1/tasks/{id}/usage`: authorized as viewing the task and its usage.
async fn task_usage(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<UsageParams>,
) -> Response {
    let duration = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| cella_proto::time::parse_duration(v).map_err(|e| format!("{key}={v:?}: {e}")))
            .transpose()
    };
    let (since, resolution) = match (
        duration("since", &params.since),
        duration("resolution", &params.resolution),
    ) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let query = UsageQuery {
        since_ns: since.map_or(0, |s| cella_proto::time::now_ns().saturating_sub(nanos(s))),
        resolution_ns: resolution.map(nanos),
    };
    let Some(answer) = m.task_usage(id.clone(), query).await else {
        return unavailable();
    };
    let Some(answer) = answer else {
        return error(StatusCode::NOT_FOUND, format!("unknown task {id:?}"));
    };
    let target = Some(Target {
        owner: &answer.owner,
        role: &answer.role,
    });
    let what = format!("GET /api/v1/tasks/{id}/usage");
    for kind in [ViewKind::Tasks, ViewKind::Usage] {
        let view = Action::View { what: kind, target };
        if let Some(r) = refusal(&m, &caller, &view, &what) {
            return r;
        }
    }
    Json(answer.view).into_response()
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillParams {
    /// Seconds between SIGTERM and SIGKILL, instead of the task's kill policy.
    grace_period_secs: Option<f64>,
}

async fn kill(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<KillParams>,
) -> Response {
    let grace = params.grace_period_secs;
    if let Some(g) = grace.filter(|g| !cella_proto::validate::is_grace_period(*g)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("grace_period_secs={g}: give seconds from 0 (SIGKILL at once) upwards"),
        );
    }
    let policy = grace.map(|g| v1::KillPolicy {
        grace_period_secs: Some(g),
    });
    match m.kill(id.clone(), policy, caller.identity).await {
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

/// `/metrics` in the format the client's `Accept` asks for (OpenMetrics, else the
/// Prometheus text format).
async fn metrics(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let view = Action::View {
        what: ViewKind::State,
        target: None,
    };
    if let Some(r) = refusal(&m, &caller, &view, "GET /metrics") {
        return r;
    }
    cella_proto::exposition::response(&headers, m.metrics.encode())
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
}

/// `GET /api/v1/audit`: the audit log's records of a period, as JSON lines exactly as
/// stored (so their hashes can be checked); needs `view(audit)`.
async fn audit(
    State(m): State<MasterHandle>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let view = Action::View {
        what: ViewKind::Audit,
        target: None,
    };
    if let Some(r) = refusal(&m, &caller, &view, "GET /api/v1/audit") {
        return r;
    }
    let Some(log) = m.audit.clone() else {
        return error(StatusCode::NOT_FOUND, "this master keeps no audit log");
    };
    let now = cella_proto::time::now_ns();
    let parse = |t: &Option<String>| {
        t.as_deref()
            .map(|s| crate::audit::report::parse_time(s, now))
            .transpose()
    };
    let period = match (parse(&q.since), parse(&q.until)) {
        (Ok(since_ns), Ok(until_ns)) => crate::audit::report::Period { since_ns, until_ns },
        (Err(e), _) => return error(StatusCode::BAD_REQUEST, format!("since: {e}")),
        (_, Err(e)) => return error(StatusCode::BAD_REQUEST, format!("until: {e}")),
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::audit::report::export(log.dir(), period, false, &mut out).map(|_| out)
    })
    .await;
    match read {
        Ok(Ok(body)) => ([("content-type", "application/jsonl")], body).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => unavailable(),
    }
}
