//! What an operator sees of a running command on its admin listener
//! (`--admin-listen`): `GET /metrics` (Prometheus), `GET /health/live` and
//! `GET /health/ready` (200 or 503, with the reasons as JSON). The hot-swap
//! endpoint (`/module`) shares the listener and its token; the health
//! routes answer without it, as orchestrators' probes call them bare.

pub mod health;
pub mod lag;
pub mod metrics;
pub mod progress;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::secret::Secret;

/// An admin listener's routes: `guarded` (a command's own, such as
/// `/module`) and `/metrics` need the token when one is set; `/health/live`
/// and `/health/ready` answer every caller, as orchestrators' probes call
/// them bare.
pub fn admin_routes<S: Clone + Send + Sync + 'static>(
    guarded: axum::Router<S>,
    token: Option<Secret>,
) -> axum::Router<S> {
    guarded
        .route("/metrics", get(render_metrics))
        .layer(axum::middleware::from_fn_with_state(Arc::new(token), authorized))
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/health/ready", get(ready))
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "admin endpoint stopped");
    }
}

/// An admin listener with metrics and health only, for a command that swaps
/// no modules (the backfill). Beyond loopback only with a token.
pub async fn listen(addr: SocketAddr, token: Option<Secret>) -> Result<(), String> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--admin-listen {addr} is beyond loopback: set {} (or {}_FILE) to guard it with a token",
            crate::config::ADMIN_TOKEN_VAR,
            crate::config::ADMIN_TOKEN_VAR
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin-listen {addr}: {e}"))?;
    tracing::info!(%addr, token = token.is_some(), "admin endpoint listening: GET /metrics, GET /health/live, GET /health/ready");
    tokio::spawn(serve(listener, admin_routes(axum::Router::new(), token)));
    Ok(())
}

/// Lets a request through when no token is set or it carries the token
/// (`Authorization: Bearer <token>`); 401 otherwise.
async fn authorized(State(token): State<Arc<Option<Secret>>>, request: Request, next: Next) -> Response {
    let Some(token) = token.as_ref() else {
        return next.run(request).await;
    };
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if offered.is_some_and(|offered| same_secret(offered.as_bytes(), token.expose().as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "status": "unauthorized", "reason": "this endpoint needs its bearer token" })),
    )
        .into_response()
}

/// Compares in time that depends on the lengths only, not on where the
/// bytes first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics::render(),
    )
}

async fn ready() -> impl IntoResponse {
    let readiness = health::readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
