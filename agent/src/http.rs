//! The agent's HTTPS API (TLS with the agent's certificate, `--http-listen`):
//!
//! * `GET /`: what this is, its endpoints and where the docs are; no authentication.
//! * `GET /health`: no authentication.
//! * `GET /metrics`: Prometheus text.
//! * `GET /api/v1/containers`: tasks with their latest usage (JSON).
//! * `GET /api/v1/tasks/{id}/files/{name}?offset=N&length=M`: a chunk of a file in
//!   the task's sandbox (for `cella logs`).
//! * `/api/v1/images…`: the node's image store ([`crate::http_images`]).
//!
//! The state handlers share, and the JSON error answer, are in [`crate::http_state`].
//!
//! All but `/` and `/health` need an authenticated caller (a client certificate of the
//! cluster CA, or a token or password of `--credentials`), and a permission of the
//! access policy ([`crate::policy::access`]): `view(state)` for `/metrics`, and for a
//! task's data `view(tasks)` (containers) or `view(sandbox)` (files), granted for the
//! task's framework role, or the task being the caller's own.
//!
//! # File reads
//!
//! `name` is a path relative to the sandbox; absolute paths and `..` are refused, and
//! the file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` relative to the sandbox directory, so no symlink a task
//! creates can lead outside it. Only regular files are read.
//!
//! The answer is `{"data", "offset", "length", "next_offset", "size", "eof"}`:
//! `data` is text (UTF-8). A chunk never ends inside a UTF-8 character: up to 3
//! trailing bytes of an incomplete character are left for the next read, so a
//! follower that asks again from `next_offset` reassembles valid text exactly. Bytes
//! that are not UTF-8 at all are replaced by U+FFFD (logs are text; binary files
//! are not what this endpoint is for). `length` is the number of file bytes the
//! chunk covers; `size` the file's size when it was read; `eof` whether the chunk
//! reaches it. `length` defaults to 64 KiB and is capped at 1 MiB; an `offset`
//! beyond the end gives empty data.

use std::io::Read;
use std::path::{Component, Path};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use cella_containerizer::safe_open::{OpenError, Refused};
use cella_proto::acl::{Action, Target, ViewKind};
use cella_proto::auth::{Caller, require_caller};

use crate::state::lock;

const DEFAULT_LENGTH: u64 = 64 << 10;
const MAX_LENGTH: u64 = 1 << 20;

pub use crate::http_state::{Api, error};

pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = cella_proto::tls::serve(listener, tls, router(api), shutdown).await {
        tracing::error!("the HTTP API stopped: {e}");
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/containers", get(containers))
        .route("/api/v1/tasks/{id}/files/{*name}", get(read_file))
        .merge(crate::http_images::routes())
        .layer(axum::middleware::from_fn_with_state(
            api.auth.clone(),
            require_caller,
        ));
    let routes = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .merge(protected)
        .with_state(api);
    cella_proto::http_errors::with_json_errors(routes)
}

/// `GET /`: what this is and where to go on (no authentication, like `/health`).
async fn index() -> Response {
    axum::Json(serde_json::json!({
        "service": "cella-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "about": "A Cella agent: it runs the tasks its master sends it. Schedulers and \
                  operators talk to the master; this HTTP JSON API shows this node's \
                  tasks, their usage and their sandbox files (`cella logs` reads them).",
        "api": [
            "GET /health",
            "GET /api/v1/containers",
            "GET /api/v1/tasks/{id}/files/{name}?offset=N&length=M",
            "GET /metrics",
        ],
        "docs": "docs/api.md in Cella's source; /usr/share/doc/cella/api.md where the \
                 Debian package is installed",
    }))
    .into_response()
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "agent_id": api.shared.agent_id(),
        "master_connected": api.updates.is_connected(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// `/metrics` in the format the client's `Accept` asks for (OpenMetrics, else the
/// Prometheus text format).
async fn metrics(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
) -> Response {
    let view = Action::View {
        what: ViewKind::State,
        target: None,
    };
    if let Err(d) = api
        .shared
        .access
        .check(&caller.identity, &view, "GET /metrics")
    {
        return error(StatusCode::FORBIDDEN, d.to_string());
    }
    api.shared.update_task_gauges();
    cella_proto::exposition::response(&headers, api.shared.metrics.encode())
}

#[derive(Serialize)]
struct ContainerJson {
    task_id: String,
    framework_id: String,
    name: String,
    state: &'static str,
    pid: i32,
    sandbox: String,
    resources: Option<cella_proto::v1::Resources>,
    usage: Option<cella_proto::v1::TaskUsage>,
}

/// The tasks running here that the caller may see.
async fn containers(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let access = &api.shared.access;
    let tasks = lock(&api.shared.tasks);
    let mut out: Vec<ContainerJson> = tasks
        .iter()
        .filter(|(_, t)| t.running.is_some())
        .filter(|(_, t)| {
            let view = Action::View {
                what: ViewKind::Tasks,
                target: Some(Target {
                    owner: &t.principal,
                    role: &t.role,
                }),
            };
            access.allows(&caller.identity, &view)
        })
        .map(|(id, t)| ContainerJson {
            task_id: id.clone(),
            framework_id: t.framework_id.clone(),
            name: t.info.name.clone(),
            state: t.state.name(),
            pid: t.pid,
            sandbox: t.sandbox.display().to_string(),
            resources: t.info.resources,
            usage: t.usage.clone(),
        })
        .collect();
    drop(tasks);
    out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    axum::Json(out).into_response()
}

#[derive(Deserialize)]
struct ReadQuery {
    offset: Option<u64>,
    length: Option<u64>,
}

/// A chunk of a sandbox file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileChunk {
    pub data: String,
    pub offset: u64,
    pub length: u64,
    pub next_offset: u64,
    pub size: u64,
    pub eof: bool,
}

/// Checks a sandbox-relative path: not empty, not absolute, no `..`.
pub fn check_relative(name: &str) -> Result<&Path, String> {
    let path = Path::new(name);
    if name.is_empty() || name.contains('\0') {
        return Err("give a file name, e.g. stdout".into());
    }
    if path.is_absolute() {
        return Err(format!(
            "{name:?} is absolute: give a path relative to the task's sandbox, e.g. stdout"
        ));
    }
    if path.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return Err(format!(
            "{name:?} contains '..': only files inside the task's sandbox can be read"
        ));
    }
    Ok(path)
}

async fn read_file(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Response {
    let rel = match check_relative(&name) {
        Ok(p) => p.to_path_buf(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if cella_containerizer::TaskId::new(id.clone()).is_err() {
        return error(StatusCode::BAD_REQUEST, format!("invalid task id {id:?}"));
    }
    // Tasks still held, or ended and forgotten: the sandbox directory stays (whose it
    // was is then unknown, and only a grant of view(sandbox) for every role reads it).
    let (sandbox, owner, role) = lock(&api.shared.tasks)
        .get(&id)
        .map(|t| (t.sandbox.clone(), t.principal.clone(), t.role.clone()))
        .unwrap_or_else(|| (api.shared.sandbox_dir(&id), String::new(), String::new()));
    let view = Action::View {
        what: ViewKind::Sandbox,
        target: Some(Target {
            owner: &owner,
            role: &role,
        }),
    };
    let what = format!("reading {name} of task {id}");
    if let Err(d) = api.shared.access.check(&caller.identity, &view, &what) {
        return error(StatusCode::FORBIDDEN, d.to_string());
    }
    let offset = q.offset.unwrap_or(0);
    let length = q.length.unwrap_or(DEFAULT_LENGTH).min(MAX_LENGTH);
    let result =
        tokio::task::spawn_blocking(move || read_chunk(&sandbox, &rel, offset, length)).await;
    match result {
        Ok(Ok(chunk)) => axum::Json(chunk).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn read_chunk(
    sandbox: &Path,
    rel: &Path,
    offset: u64,
    length: u64,
) -> Result<FileChunk, (StatusCode, String)> {
    let shown = rel.display().to_string();
    // Never a link, FIFO, socket or device node the task put in place of a file.
    let mut file = cella_containerizer::safe_open::open_regular_beneath(sandbox, rel).map_err(
        |e| match e {
            // A directory is a wrong request; anything else the task planted is refused.
            OpenError::Refused(r @ Refused::Directory) => {
                (StatusCode::BAD_REQUEST, format!("{shown} {}", r.describe()))
            }
            OpenError::Refused(r) => (StatusCode::FORBIDDEN, format!("{shown} {}", r.describe())),
            OpenError::Io(e) => match e.raw_os_error() {
                Some(libc::ENOENT) => (
                    StatusCode::NOT_FOUND,
                    format!("{shown}: no such file in the task's sandbox"),
                ),
                Some(libc::ENOSYS) => (
                    StatusCode::NOT_IMPLEMENTED,
                    "this kernel lacks openat2 (Linux 5.6+): sandbox files cannot be read safely"
                        .into(),
                ),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, format!("{shown}: {e}")),
            },
        },
    )?;
    let meta = file
        .metadata()
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{shown}: {e}")))?;
    let size = meta.len();
    let mut buf = Vec::new();
    if offset < size {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{shown}: {e}")))?;
        file.take(length.min(size - offset))
            .read_to_end(&mut buf)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{shown}: {e}")))?;
    }
    let read = u64::try_from(buf.len()).unwrap_or(0);
    let reached_end = offset.saturating_add(read) >= size;
    let keep = if reached_end {
        buf.len()
    } else {
        utf8_complete_prefix(&buf)
    };
    buf.truncate(keep);
    let covered = u64::try_from(keep).unwrap_or(0);
    let start = offset.min(size);
    Ok(FileChunk {
        data: String::from_utf8_lossy(&buf).into_owned(),
        offset: start,
        length: covered,
        next_offset: start + covered,
        size,
        eof: start + covered >= size,
    })
}

/// The length of `buf` without a trailing incomplete UTF-8 sequence (at most 3
/// bytes are held back; invalid bytes elsewhere are left to lossy decoding).
pub fn utf8_complete_prefix(buf: &[u8]) -> usize {
    let n = buf.len();
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let need = if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            return n; // ASCII or invalid: nothing to hold back
        };
        return if back < need { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert!(check_relative("stdout").is_ok());
        assert!(check_relative("logs/app.log").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utf8_boundaries() {
        let s = "héllo €".as_bytes();
        assert_eq!(utf8_complete_prefix(s), s.len());
        assert_eq!(utf8_complete_prefix(&s[..s.len() - 1]), s.len() - 3);
        assert_eq!(utf8_complete_prefix(&s[..2]), 1);
        assert_eq!(utf8_complete_prefix(b""), 0);
        assert_eq!(utf8_complete_prefix(b"\xff"), 1);
    }

    #[test]
    fn chunks_and_confinement() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sb");
        std::fs::create_dir(&sandbox).unwrap();
        std::fs::write(sandbox.join("stdout"), "hi €\n").unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), sandbox.join("link")).unwrap();
        std::os::unix::fs::symlink("stdout", sandbox.join("inner-link")).unwrap();
        std::fs::create_dir(sandbox.join("d")).unwrap();

        let c = read_chunk(&sandbox, Path::new("stdout"), 0, 100).unwrap();
        assert_eq!(c.data, "hi €\n");
        assert!(c.eof);
        assert_eq!(c.size, 7);
        // Cut inside "€": the partial character waits for the next read.
        let c = read_chunk(&sandbox, Path::new("stdout"), 0, 5).unwrap();
        assert_eq!((c.data.as_str(), c.next_offset, c.eof), ("hi ", 3, false));
        let c = read_chunk(&sandbox, Path::new("stdout"), 3, 5).unwrap();
        assert_eq!(c.data, "€\n");
        let c = read_chunk(&sandbox, Path::new("stdout"), 100, 5).unwrap();
        assert_eq!((c.data.as_str(), c.offset, c.eof), ("", 7, true));

        let (status, _) = read_chunk(&sandbox, Path::new("link"), 0, 10).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = read_chunk(&sandbox, Path::new("inner-link"), 0, 10).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = read_chunk(&sandbox, Path::new("../secret"), 0, 10).unwrap_err();
        assert_ne!(status, StatusCode::OK);
        let (status, _) = read_chunk(&sandbox, Path::new("nope"), 0, 10).unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = read_chunk(&sandbox, Path::new("d"), 0, 10).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
