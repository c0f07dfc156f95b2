//! The admin endpoint: `GET /module` answers the status (active, staged,
//! swaps, refusals); `POST /module` asks for a swap, to `{"path": "..."}`
//! (inside the modules directory, see `modules_dir`) or, with an empty
//! body, to the active module's file again, and answers once the candidate
//! is staged (202), unchanged (200) or refused (422, with the reason).
//!
//! With a token (`SLUICE_ADMIN_TOKEN`), every request must carry it as
//! `Authorization: Bearer <token>` (401 otherwise). At most
//! `MAX_PENDING_SWAPS` swap requests wait at once; more get 429.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::runtime::World;
use crate::secret::Secret;

use super::modules_dir::ModulesDir;
use super::{Answer, Request, Shared};

/// Swap requests from the endpoint that may wait at once: each one compiles
/// a module of up to 256 MiB.
const MAX_PENDING_SWAPS: usize = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    path: std::path::PathBuf,
}

pub(super) struct Admin<W: World> {
    shared: Arc<Shared<W>>,
    requests: mpsc::UnboundedSender<Request>,
    modules: ModulesDir,
    token: Option<Secret>,
    pending: Semaphore,
}

impl<W: World> Admin<W> {
    pub(super) fn new(
        shared: Arc<Shared<W>>,
        requests: mpsc::UnboundedSender<Request>,
        modules: ModulesDir,
        token: Option<Secret>,
    ) -> Self {
        Self {
            shared,
            requests,
            modules,
            token,
            pending: Semaphore::new(MAX_PENDING_SWAPS),
        }
    }
}

pub(super) async fn serve<W: World>(listener: tokio::net::TcpListener, admin: Admin<W>) {
    let token = admin.token.clone();
    let module = axum::Router::new().route("/module", get(status::<W>).post(swap::<W>));
    let app = crate::ops::admin_routes(module, token).with_state(Arc::new(admin));
    crate::ops::serve(listener, app).await;
}

async fn status<W: World>(State(admin): State<Arc<Admin<W>>>) -> Json<Value> {
    Json(json!(admin.shared.lock().status))
}

async fn swap<W: World>(State(admin): State<Arc<Admin<W>>>, body: Bytes) -> (StatusCode, Json<Value>) {
    let path = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<SwapBody>(&body) {
            Ok(body) => Some(body.path),
            Err(e) => {
                let reason = format!("expected an empty body or {{\"path\": \"<module file>\"}}: {e}");
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "status": "bad request", "reason": reason })),
                );
            }
        }
    };
    let path = match path
        .map(|p| admin.modules.resolve(&p).map_err(|reason| (p, reason)))
        .transpose()
    {
        Ok(path) => path,
        Err((requested, reason)) => {
            let reason = super::stager::refuse(&admin.shared, requested, "admin", reason);
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "status": "refused", "reason": reason })),
            );
        }
    };
    let Ok(_pending) = admin.pending.try_acquire() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(
                json!({ "status": "busy", "reason": format!("{MAX_PENDING_SWAPS} swap requests are waiting already") }),
            ),
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = Request {
        path,
        trigger: "admin",
        reply: Some(reply),
    };
    if admin.requests.send(request).is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "stopping", "reason": "the job is stopping" })),
        );
    }
    match answer.await {
        Ok(Answer::Staged(module)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "staged", "module": module })),
        ),
        Ok(Answer::Unchanged(module)) => (StatusCode::OK, Json(json!({ "status": "unchanged", "module": module }))),
        Ok(Answer::Refused(reason)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "status": "refused", "reason": reason })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "stopping", "reason": "the job is stopping" })),
        ),
    }
}
