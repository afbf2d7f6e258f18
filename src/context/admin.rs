//! What a process embedding the cache tells its operator: the admin answers that are the same on
//! the edge and the sidecar (`/admin/tenants/{host}`, `/admin/regions`, `/admin/cache`), its
//! readiness and its metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::service::CacheService;
use crate::clock::now_ms;
use crate::feed::ApiError;
use crate::tenant::Host;

/// `/admin/tenants/{host}`, `/admin/regions` and `/admin/cache` on `service`.
pub fn router(service: Arc<CacheService>) -> Router {
    router_at("/admin", service)
}

/// [`router`]'s endpoints under `prefix` (`{prefix}/tenants/{host}`, `{prefix}/regions`,
/// `{prefix}/cache`): a sidecar serving several views has a set per view.
pub fn router_at(prefix: &str, service: Arc<CacheService>) -> Router {
    Router::new()
        .route(&format!("{prefix}/tenants/{{host}}"), get(tenant))
        .route(&format!("{prefix}/regions"), get(regions))
        .route(&format!("{prefix}/cache"), get(cache))
        .with_state(service)
}

/// What `/readyz` says of one cache: whether it is ready (it knows a tenant or hears TCS),
/// and its body.
fn ready_state(service: &CacheService) -> (bool, serde_json::Value) {
    let knows = !service.cache.is_empty();
    let live = service.stream.any_live();
    let body =
        json!({ "ready": knows || live, "cached_tenants": service.cache.len(), "tcs_stream_live": live });
    (knows || live, body)
}

/// `/readyz`'s answer: 200 when [`CacheService::ready`], else 503, with what it knows.
pub fn readiness(service: &CacheService) -> Response {
    let (ready, body) = ready_state(service);
    ready_answer(ready, body)
}

/// `/readyz` of several caches (a sidecar's views, by name): ready when every one is, with
/// each one's state under `views`.
pub fn readiness_of(services: &[(&str, &CacheService)]) -> Response {
    let mut ready = true;
    let mut views = serde_json::Map::new();
    for (name, service) in services {
        let (one, body) = ready_state(service);
        ready &= one;
        views.insert((*name).to_owned(), body);
    }
    ready_answer(ready, json!({ "ready": ready, "views": views }))
}

fn ready_answer(ready: bool, body: serde_json::Value) -> Response {
    if ready {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `/metrics`: the gauges read at scrape time brought up to date, then every metric.
pub fn metrics(service: &CacheService) -> Response {
    metrics_of(&[service])
}

/// `/metrics` of several caches, each with its own (labelled) metrics, as one exposition.
pub fn metrics_of(services: &[&CacheService]) -> Response {
    for service in services {
        refresh_gauges(service);
    }
    let sets: Vec<&crate::metrics::EdgeMetrics> = services.iter().map(|s| &s.metrics).collect();
    let text = crate::metrics::EdgeMetrics::render_all(&sets);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// The gauges read at scrape time.
fn refresh_gauges(service: &CacheService) {
    let m = &service.metrics;
    let now = now_ms();
    for region in &service.stream.regions {
        let last = region.last_message_ms.load(Ordering::Relaxed);
        let age = if last == 0 {
            -1
        } else {
            i64::try_from(now.saturating_sub(last) / 1000).unwrap_or(i64::MAX)
        };
        m.stream_staleness.with_label_values(&[&region.name]).set(age);
    }
}

async fn tenant(State(service): State<Arc<CacheService>>, Path(raw): Path<String>) -> Response {
    let Ok(host) = Host::parse(&raw) else {
        return ApiError::new(StatusCode::BAD_REQUEST, "malformed host").into_response();
    };
    match service.cache.peek(host.as_str()) {
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
                "known_unknown": service.cache.is_known_unknown(host.as_str()),
            })),
        )
            .into_response(),
    }
}

/// Each TCS region as this process sees it: trust, load, and its change stream.
async fn regions(State(service): State<Arc<CacheService>>) -> Response {
    Json(regions_json(&service)).into_response()
}

/// `/admin/regions`: each region's trust, ping and change stream, and the fan-out's state.
pub fn regions_json(service: &CacheService) -> serde_json::Value {
    let now = now_ms();
    let client = service.cache.client();
    let regions: Vec<serde_json::Value> = client
        .region_report()
        .into_iter()
        .map(|mut r| {
            let stream = service
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
    let (hedges, hedges_refused) = client.hedge_counts();
    let fanout = &service.stream.fanout;
    let fanout = match fanout.transport() {
        super::Transport::Stream => json!({"transport": "stream"}),
        t => json!({
            "transport": if t == super::Transport::Sqs { "sqs" } else { "stream-fallback" },
            "detail": fanout.detail(),
            "last_receive_ms_ago": fanout.since_receive_ms(),
            "tcs_head": fanout.tcs_head(),
        }),
    };
    json!({
        "view": &*client.view,
        "applied_seq": service.stream.applied(),
        "fanout": fanout,
        "hedges": hedges,
        "hedges_refused_by_budget": hedges_refused,
        "regions": regions,
    })
}

/// What the cache holds and what the cache file did. Counting distinct tenants walks the
/// cache, so this costs more than the other admin answers on a large cache.
async fn cache(State(service): State<Arc<CacheService>>) -> Response {
    Json(cache_json(&service).await).into_response()
}

/// `/admin/cache`: what the cache holds, how often it hits, its sweeps, what the cache file did.
pub async fn cache_json(service: &Arc<CacheService>) -> serde_json::Value {
    let walk = service.clone();
    let tenants = tokio::task::spawn_blocking(move || walk.cache.records().len())
        .await
        .unwrap_or(0);
    let m = &service.metrics;
    let (hits, misses) = (m.cache_hits.get(), m.cache_misses.get());
    let (sweeps, swept) = service.cache.sweep_counts();
    json!({
        "cached_hosts": service.cache.len(),
        "cached_tenants": tenants,
        "hits": hits,
        "misses": misses,
        "negative_hits": m.negative_hits.get(),
        "hit_ratio": if hits + misses == 0 { None } else { Some(hits as f64 / (hits + misses) as f64) },
        "sweeps": sweeps,
        "swept": swept,
        "applied_seq": service.stream.applied(),
        "file": service.file.report(),
    })
}
