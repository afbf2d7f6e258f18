//! The admin listener: health, readiness, metrics, and what this edge believes (the answers
//! about its tenant cache are the sidecar's too: [`crate::context::admin`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::context;
use crate::feed::ApiError;
use crate::metrics::EdgeMetrics;

/// Serves the admin API on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(super::status::page))
        .route("/admin/routes", get(routes))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(shared.clone())
        .merge(context::admin::router(shared.service.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Ready unless the edge drains, or knows nothing and hears from no TCS (see
/// [`crate::context::CacheService::ready`]).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.drain.draining() {
        let body = json!({ "ready": false, "draining": true, "in_flight": shared.drain.in_flight() });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    context::admin::readiness(&shared.service)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    EdgeMetrics::sync_counter(
        &m.route_reloads.with_label_values(&["ok"]),
        shared.routes.reloads_ok(),
    );
    EdgeMetrics::sync_counter(
        &m.route_reloads.with_label_values(&["failed"]),
        shared.routes.reloads_failed(),
    );
    context::admin::metrics(&shared.service)
}

async fn routes(State(shared): State<Arc<Shared>>) -> Response {
    Json(routes_json(&shared)).into_response()
}

/// `/admin/routes`: the route snapshot and each shard's backends.
pub(super) fn routes_json(shared: &Shared) -> serde_json::Value {
    let state = shared.state.load_full();
    let pools: serde_json::Map<String, serde_json::Value> = state
        .pools()
        .iter()
        .map(|p| {
            let backends = p
                .backends
                .iter()
                .map(|b| json!({ "addr": b.addr, "healthy": b.healthy(), "outstanding": b.outstanding() }))
                .collect::<Vec<_>>();
            (p.shard.to_string(), json!(backends))
        })
        .collect();
    json!({
        "version": state.routes.version,
        "routes": state.routes.to_json(),
        "backends": pools,
    })
}
