//! What an operator sees of a running command on its admin listener
//! (`--admin-listen`): `GET /metrics` (Prometheus), `GET /health/live` and
//! `GET /health/ready` (200 or 503, with the reasons as JSON). The hot-swap
//! endpoint (`/module`) shares the listener and its token; the health
//! routes answer without it, as orchestrators' probes call them bare.

pub mod health;
pub mod lag;
pub mod metrics;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// `/metrics`: needs the listener's token when one is set.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/metrics", get(render_metrics))
}

/// `/health/live` and `/health/ready`: open to every caller.
pub fn health_routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/health/ready", get(ready))
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
