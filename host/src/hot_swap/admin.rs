//! The admin endpoint: `GET /module` answers the status (active, staged,
//! swaps, refusals); `POST /module` asks for a swap, to `{"path": "..."}`
//! or, with an empty body, to the active module's file again, and answers
//! once the candidate is staged (202), unchanged (200) or refused (422,
//! with the reason).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::World;

use super::{Answer, Request, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    path: std::path::PathBuf,
}

struct Admin<W: World> {
    shared: Arc<Shared<W>>,
    requests: mpsc::UnboundedSender<Request>,
}

pub(super) async fn serve<W: World>(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared<W>>,
    requests: mpsc::UnboundedSender<Request>,
) {
    let app = axum::Router::new()
        .route("/module", get(status::<W>).post(swap::<W>))
        .with_state(Arc::new(Admin { shared, requests }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "admin endpoint stopped");
    }
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
