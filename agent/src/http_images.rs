//! The node's image store through the agent's API, so that `cella images --agent URL`
//! needs a certificate, not root on the node:
//!
//! * `GET /api/v1/images`: every image (references, digest, size, pulled and last
//!   used, the leases holding it), most recently used first; needs `view(state)`.
//! * `POST /api/v1/images/pull` `{"reference"}`: pulls (or finds) the image with the
//!   agent's registry settings and answers with it as listed; needs `admin`.
//! * `POST /api/v1/images/remove` `{"reference"}`: removes a reference, or an image
//!   given as `sha256:…`; 409 while a task holds it; needs `admin`.
//! * `POST /api/v1/images/gc` `{"max_bytes"}`: removes unused images down to
//!   `max_bytes` (default: the agent's `--image-store-size`, as its own GC); needs
//!   `admin`.
//!
//! A caller without the permission gets 403 and the denial is logged and counted, as
//! for the rest of the API.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cella_image::{ImageError, ImageReference, PrepareOptions};
use cella_proto::acl::{Action, ViewKind};
use cella_proto::auth::Caller;
use serde::Deserialize;

use crate::http_state::{Api, error};

/// The lease a pull holds while it runs (it is released when the pull returns).
const PULL_LEASE_PREFIX: &str = "agent-pull:";

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/images", get(list))
        .route("/api/v1/images/pull", post(pull))
        .route("/api/v1/images/remove", post(remove))
        .route("/api/v1/images/gc", post(gc))
}

#[derive(Deserialize)]
struct ReferenceBody {
    reference: String,
}

#[derive(Deserialize, Default)]
struct GcBody {
    /// None: the store's size (`--image-store-size`).
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// The refusal (logged and counted) when the caller may not do `action`.
fn refusal(api: &Api, caller: &Caller, action: &Action<'_>, what: &str) -> Option<Response> {
    api.shared
        .access
        .check(&caller.identity, action, what)
        .err()
        .map(|d| error(StatusCode::FORBIDDEN, d.to_string()))
}

const VIEW_STATE: Action<'static> = Action::View {
    what: ViewKind::State,
    target: None,
};

fn image_error(e: &ImageError) -> Response {
    let status = match e {
        ImageError::Reference(_) | ImageError::InvalidLease { .. } => StatusCode::BAD_REQUEST,
        ImageError::NotFound { .. } => StatusCode::NOT_FOUND,
        ImageError::InUse { .. } => StatusCode::CONFLICT,
        ImageError::Fetch { .. } | ImageError::Manifest { .. } => StatusCode::BAD_GATEWAY,
        ImageError::Unpack { .. } | ImageError::LayerCheck { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Runs `f` with the store on the blocking pool (the store's calls block on files and
/// locks) and answers with its JSON.
async fn blocking<T: serde::Serialize + Send + 'static>(
    api: &Api,
    f: impl FnOnce(&cella_image::ImageStore) -> Result<T, ImageError> + Send + 'static,
) -> Response {
    let shared = api.shared.clone();
    match tokio::task::spawn_blocking(move || f(shared.images.store())).await {
        Ok(Ok(value)) => axum::Json(value).into_response(),
        Ok(Err(e)) => image_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(r) = refusal(&api, &caller, &VIEW_STATE, "GET /api/v1/images") {
        return r;
    }
    blocking(&api, cella_image::ImageStore::list).await
}

async fn pull(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    axum::Json(body): axum::Json<ReferenceBody>,
) -> Response {
    let what = format!("POST /api/v1/images/pull {}", body.reference);
    if let Some(r) = refusal(&api, &caller, &Action::Admin, &what) {
        return r;
    }
    let default_registry = &api
        .shared
        .images
        .store()
        .settings()
        .registries
        .default_registry;
    let reference = match ImageReference::parse(&body.reference, default_registry) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reference: {e}")),
    };
    let lease = format!("{PULL_LEASE_PREFIX}{}", uuid::Uuid::new_v4());
    // Held by the agent's process, and pulled on a task of its own: a client that
    // hangs up does not stop the pull half-way, and a lease the agent could not
    // release (it died) counts as released.
    let options = PrepareOptions {
        holder: cella_image::LeaseHolder::this_process().ok(),
        ..PrepareOptions::default()
    };
    let shared = api.shared.clone();
    let (pull_reference, pull_lease) = (reference.clone(), lease.clone());
    let pulled = tokio::spawn(async move {
        let store = shared.images.store();
        let pulled = store.prepare(&pull_reference, &pull_lease, &options).await;
        if pulled.is_ok() {
            let _ = store.release(&pull_lease);
        }
        pulled
    })
    .await;
    let digest = match pulled {
        Ok(Ok(image)) => image.digest,
        Ok(Err(e)) => return image_error(&e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    tracing::info!(principal = %caller.identity.principal(), image = %reference, %digest, "image pulled through the API");
    blocking(&api, move |store| {
        store
            .list()?
            .into_iter()
            .find(|i| i.digest == digest)
            .ok_or(ImageError::NotFound {
                reference: digest.to_string(),
            })
    })
    .await
}

async fn remove(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    axum::Json(body): axum::Json<ReferenceBody>,
) -> Response {
    let what = format!("POST /api/v1/images/remove {}", body.reference);
    if let Some(r) = refusal(&api, &caller, &Action::Admin, &what) {
        return r;
    }
    tracing::info!(principal = %caller.identity.principal(), image = %body.reference, "image removal through the API");
    blocking(&api, move |store| store.remove(&body.reference)).await
}

async fn gc(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Option<axum::Json<GcBody>>,
) -> Response {
    if let Some(r) = refusal(&api, &caller, &Action::Admin, "POST /api/v1/images/gc") {
        return r;
    }
    let max_bytes = body
        .and_then(|b| b.0.max_bytes)
        .unwrap_or(api.shared.images.store_size());
    blocking(&api, move |store| store.gc(max_bytes)).await
}
