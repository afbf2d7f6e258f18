//! The admin listener: health, readiness, metrics, and what this edge believes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::clock::now_ms;
use crate::feed::ApiError;
use crate::metrics::EdgeMetrics;
use crate::tenant::Host;

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
        .route("/admin/tenants/{host}", get(tenant))
        .route("/admin/routes", get(routes))
        .route("/admin/regions", get(regions))
        .route("/admin/cache", get(cache))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Ready unless the edge knows nothing and hears from no TCS: an isolated edge that still
/// knows tenants keeps serving them, a blackholed empty one is taken out.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.drain.draining() {
        let body = json!({ "ready": false, "draining": true, "in_flight": shared.drain.in_flight() });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let knows = !shared.cache.is_empty();
    let live = shared.stream.any_live();
    let body = Json(
        json!({ "ready": knows || live, "cached_tenants": shared.cache.len(), "tcs_stream_live": live }),
    );
    if knows || live {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
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
    let now = now_ms();
    for region in &shared.stream.regions {
        let last = region.last_message_ms.load(Ordering::Relaxed);
        let age = if last == 0 {
            -1
        } else {
            i64::try_from(now.saturating_sub(last) / 1000).unwrap_or(i64::MAX)
        };
        m.stream_staleness.with_label_values(&[&region.name]).set(age);
    }
    ([("content-type", "text/plain; version=0.0.4")], m.render()).into_response()
}

async fn tenant(State(shared): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let Ok(host) = Host::parse(&raw) else {
        return ApiError::new(StatusCode::BAD_REQUEST, "malformed host").into_response();
    };
    match shared.cache.peek(host.as_str()) {
        Some(entry) => Json(json!({
            "host": host,
            "cached": true,
            "version": entry.record.version,
            "age_ms": entry.learnt_at.elapsed().as_millis() as u64,
            "origin": entry.origin,
            "region": &*entry.region,
            "context": &*entry.record,
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "host": host,
                "cached": false,
                "known_unknown": shared.cache.is_known_unknown(host.as_str()),
            })),
        )
            .into_response(),
    }
}

async fn routes(State(shared): State<Arc<Shared>>) -> Response {
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
    Json(json!({
        "version": state.routes.version,
        "routes": state.routes.to_json(),
        "backends": pools,
    }))
    .into_response()
}

/// Each TCS region as this edge sees it: trust, load, and its change stream.
async fn regions(State(shared): State<Arc<Shared>>) -> Response {
    let now = now_ms();
    let regions: Vec<serde_json::Value> = shared
        .cache
        .client()
        .region_report()
        .into_iter()
        .map(|mut r| {
            let stream = shared
                .stream
                .regions
                .iter()
                .find(|s| *s.name == *r["region"].as_str().unwrap_or(""));
            if let Some(s) = stream {
                let last = s.last_message_ms.load(Ordering::Relaxed);
                r["stream_connected"] = json!(s.connected.load(Ordering::Relaxed));
                r["stream_last_message_ms_ago"] = if last == 0 {
                    json!(null)
                } else {
                    json!(now.saturating_sub(last))
                };
            }
            r
        })
        .collect();
    let (hedges, hedges_refused) = shared.cache.client().hedge_counts();
    let fanout = &shared.stream.fanout;
    let fanout = match fanout.transport() {
        crate::context::Transport::Stream => json!({"transport": "stream"}),
        t => json!({
            "transport": if t == crate::context::Transport::Sqs { "sqs" } else { "stream-fallback" },
            "detail": fanout.detail(),
            "last_receive_ms_ago": fanout.since_receive_ms(),
            "tcs_head": fanout.tcs_head(),
        }),
    };
    Json(json!({
        "applied_seq": shared.stream.applied(),
        "fanout": fanout,
        "hedges": hedges,
        "hedges_refused_by_budget": hedges_refused,
        "regions": regions,
    }))
    .into_response()
}

/// What the cache holds and what the cache file did. Counting distinct tenants walks the
/// cache, so this costs more than the other admin answers on a large edge.
async fn cache(State(shared): State<Arc<Shared>>) -> Response {
    let walk = shared.clone();
    let tenants = tokio::task::spawn_blocking(move || walk.cache.records().len())
        .await
        .unwrap_or(0);
    Json(json!({
        "cached_hosts": shared.cache.len(),
        "cached_tenants": tenants,
        "applied_seq": shared.stream.applied(),
        "file": shared.file.report(),
    }))
    .into_response()
}
