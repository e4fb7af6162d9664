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

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query};
use axum::http::request::Parts;
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

/// A request that failed: the status, and the message of the JSON error body.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::Error {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn denied(d: &Denied) -> ApiError {
    error(StatusCode::FORBIDDEN, d.to_string())
}

fn unavailable() -> ApiError {
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
            master.config.authenticator.clone(),
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

/// What every authenticated handler starts from: the master and the caller that the
/// authentication middleware let through.
struct Api {
    m: MasterHandle,
    caller: Caller,
}

impl FromRequestParts<MasterHandle> for Api {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        master: &MasterHandle,
    ) -> Result<Self, ApiError> {
        let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request passed no authentication",
            )
        })?;
        Ok(Api {
            m: master.clone(),
            caller,
        })
    }
}

impl Api {
    /// Checks a permission (logged and counted if denied) for the request `what`.
    fn require(&self, action: &Action<'_>, what: &str) -> Result<(), ApiError> {
        self.m
            .config
            .authorizer
            .check(&self.caller.identity, action, what)
            .map_err(|d| denied(&d))
    }

    /// Checks a permission that covers a whole endpoint, on no particular target.
    fn require_view(&self, what: ViewKind, request: &str) -> Result<(), ApiError> {
        self.require(&Action::View { what, target: None }, request)
    }

    /// The master's state, or the answer that it is shutting down.
    async fn state(&self) -> Result<api::State, ApiError> {
        self.m.state().await.ok_or_else(unavailable)
    }

    /// `task` as the caller may see it: `None` if it may not see the task, without its
    /// usage if it may not see that.
    fn visible(
        &self,
        owners: &BTreeMap<String, (String, String)>,
        mut task: api::Task,
    ) -> Option<api::Task> {
        let (owner, role) = owners.get(&task.framework_id).cloned().unwrap_or_default();
        let target = Some(Target {
            owner: &owner,
            role: &role,
        });
        let may = |what| {
            self.m
                .config
                .authorizer
                .allows(&self.caller.identity, &Action::View { what, target })
        };
        if !may(ViewKind::Tasks) {
            return None;
        }
        if !may(ViewKind::Usage) {
            task.usage = None;
        }
        Some(task)
    }

    fn visible_tasks(&self, s: &api::State) -> Vec<api::Task> {
        let owners = targets(s);
        s.tasks
            .iter()
            .filter_map(|t| self.visible(&owners, t.clone()))
            .collect()
    }
}

/// What a handler answers: its view, or the refusal or error that stopped it.
type Answer = Result<Response, ApiError>;

/// The owner and role of every framework, to decide what a caller may see of tasks.
fn targets(s: &api::State) -> BTreeMap<String, (String, String)> {
    s.frameworks
        .iter()
        .map(|f| (f.id.clone(), (f.principal.clone(), f.role.clone())))
        .collect()
}

async fn state(api: Api) -> Answer {
    api.require_view(ViewKind::State, "GET /api/v1/state")?;
    let mut s = api.state().await?;
    s.tasks = api.visible_tasks(&s);
    Ok(Json(s).into_response())
}

async fn agents(api: Api) -> Answer {
    api.require_view(ViewKind::State, "GET /api/v1/agents")?;
    Ok(Json(api.state().await?.agents).into_response())
}

/// Every framework with `view(state)`; otherwise the caller's own.
async fn frameworks(api: Api) -> Answer {
    let s = api.state().await?;
    let all = api.m.config.authorizer.allows(
        &api.caller.identity,
        &Action::View {
            what: ViewKind::State,
            target: None,
        },
    );
    let principal = api.caller.principal();
    let frameworks: Vec<api::Framework> = s
        .frameworks
        .into_iter()
        .filter(|f| all || f.principal == principal)
        .collect();
    Ok(Json(frameworks).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFilter {
    state: Option<String>,
    framework: Option<String>,
}

async fn tasks(api: Api, Query(filter): Query<TaskFilter>) -> Answer {
    let wanted_state = filter
        .state
        .as_deref()
        .map(parse_state)
        .transpose()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let s = api.state().await?;
    let tasks: Vec<api::Task> = api
        .visible_tasks(&s)
        .into_iter()
        .filter(|t| wanted_state.is_none_or(|w| w == t.state))
        .filter(|t| {
            filter
                .framework
                .as_deref()
                .is_none_or(|f| t.framework_id == f)
        })
        .collect();
    Ok(Json(tasks).into_response())
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

fn unknown_task(id: &str) -> ApiError {
    error(StatusCode::NOT_FOUND, format!("unknown task {id:?}"))
}

async fn task(api: Api, Path(id): Path<String>) -> Answer {
    let s = api.state().await?;
    let owners = targets(&s);
    let t = s
        .tasks
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| unknown_task(&id))?;
    let (owner, role) = owners.get(&t.framework_id).cloned().unwrap_or_default();
    let view = Action::View {
        what: ViewKind::Tasks,
        target: Some(Target {
            owner: &owner,
            role: &role,
        }),
    };
    api.require(&view, &format!("GET /api/v1/tasks/{id}"))?;
    match api.visible(&owners, t) {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(error(
            StatusCode::FORBIDDEN,
            format!("task {id:?} is not visible"),
        )),
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
async fn task_usage(api: Api, Path(id): Path<String>, Query(params): Query<UsageParams>) -> Answer {
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
        (Err(e), _) | (_, Err(e)) => return Err(error(StatusCode::BAD_REQUEST, e)),
    };
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let query = UsageQuery {
        since_ns: since.map_or(0, |s| cella_proto::time::now_ns().saturating_sub(nanos(s))),
        resolution_ns: resolution.map(nanos),
    };
    let answer = api
        .m
        .task_usage(id.clone(), query)
        .await
        .ok_or_else(unavailable)?
        .ok_or_else(|| unknown_task(&id))?;
    let target = Some(Target {
        owner: &answer.owner,
        role: &answer.role,
    });
    let what = format!("GET /api/v1/tasks/{id}/usage");
    for kind in [ViewKind::Tasks, ViewKind::Usage] {
        api.require(&Action::View { what: kind, target }, &what)?;
    }
    Ok(Json(answer.view).into_response())
}

fn operator_error(e: OperatorError) -> ApiError {
    match e {
        OperatorError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        OperatorError::Conflict(m) => error(StatusCode::CONFLICT, m),
        OperatorError::Denied(d) => denied(&d),
        OperatorError::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        OperatorError::Unavailable => unavailable(),
    }
}

/// The answer to an operator command the master accepted: `202 Accepted` with `body`.
fn accepted(body: serde_json::Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillParams {
    /// Seconds between SIGTERM and SIGKILL, instead of the task's kill policy.
    grace_period_secs: Option<f64>,
}

async fn kill(api: Api, Path(id): Path<String>, Query(params): Query<KillParams>) -> Answer {
    let grace = params.grace_period_secs;
    if let Some(g) = grace.filter(|g| !cella_proto::validate::is_grace_period(*g)) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("grace_period_secs={g}: give seconds from 0 (SIGKILL at once) upwards"),
        ));
    }
    let policy = grace.map(|g| v1::KillPolicy {
        grace_period_secs: Some(g),
    });
    api.m
        .kill(id.clone(), policy, api.caller.identity)
        .await
        .map_err(operator_error)?;
    Ok(accepted(
        serde_json::json!({ "task_id": id, "kill": "sent" }),
    ))
}

async fn teardown(api: Api, Path(id): Path<String>) -> Answer {
    api.m
        .teardown(id.clone(), api.caller.identity)
        .await
        .map_err(operator_error)?;
    Ok(accepted(
        serde_json::json!({ "framework_id": id, "teardown": "done" }),
    ))
}

/// `/metrics` in the format the client's `Accept` asks for (OpenMetrics, else the
/// Prometheus text format).
async fn metrics(api: Api, headers: HeaderMap) -> Answer {
    api.require_view(ViewKind::State, "GET /metrics")?;
    Ok(cella_proto::exposition::response(
        &headers,
        api.m.metrics.encode(),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
}

/// `GET /api/v1/audit`: the audit log's records of a period, as JSON lines exactly as
/// stored (so their hashes can be checked); needs `view(audit)`.
async fn audit(api: Api, Query(q): Query<AuditQuery>) -> Answer {
    api.require_view(ViewKind::Audit, "GET /api/v1/audit")?;
    let log = api
        .m
        .config
        .audit
        .clone()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "this master keeps no audit log"))?;
    let now = cella_proto::time::now_ns();
    let parse = |key: &str, t: &Option<String>| {
        t.as_deref()
            .map(|s| crate::audit::report::parse_time(s, now))
            .transpose()
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{key}: {e}")))
    };
    let period = crate::audit::report::Period {
        since_ns: parse("since", &q.since)?,
        until_ns: parse("until", &q.until)?,
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::audit::report::export(log.dir(), period, false, &mut out).map(|_| out)
    })
    .await;
    match read {
        Ok(Ok(body)) => Ok(([("content-type", "application/jsonl")], body).into_response()),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err(unavailable()),
    }
}
