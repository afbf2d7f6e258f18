//! Demo shard backends: real HTTP servers standing in for a product shard in the dev stack and
//! in tests.
//!
//! Every request except `GET /healthz` is answered with JSON naming the shard and backend and
//! echoing what the edge forwarded (tenant, method, path, the internal headers), so tests can
//! see exactly where a request landed and what it carried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a demo shard backend calls itself and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoShardConfig {
    /// The shard it stands in for (`jira-us-east-1`).
    pub shard: String,
    /// The backend's name inside the shard (`b1`).
    pub backend: String,
    /// Listen address.
    pub listen: SocketAddr,
}

/// Per-server state shared by the handlers.
///
/// The seam for per-tenant data: a later items store goes here, and its routes into [`router`].
#[derive(Debug)]
struct DemoState {
    shard: String,
    backend: String,
}

/// The JSON echo of one request.
#[derive(Debug, Serialize)]
struct Echo<'a> {
    shard: &'a str,
    backend: &'a str,
    tenant: Option<String>,
    method: &'a str,
    path: &'a str,
    headers: BTreeMap<String, String>,
}

/// Binds `cfg.listen` and serves until `shutdown` is cancelled.
pub async fn run(cfg: DemoShardConfig, shutdown: CancellationToken) -> Result<(), std::io::Error> {
    let listener = TcpListener::bind(cfg.listen).await?;
    serve(listener, cfg, shutdown).await
}

/// Serves on an already bound listener until `shutdown` is cancelled (for callers that bind
/// port 0 and need the address first).
pub async fn serve(
    listener: TcpListener,
    cfg: DemoShardConfig,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let addr = listener.local_addr()?;
    tracing::info!("demo shard {}/{} listening on {addr}", cfg.shard, cfg.backend);
    let state = Arc::new(DemoState {
        shard: cfg.shard,
        backend: cfg.backend,
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn router(state: Arc<DemoState>) -> Router {
    Router::new()
        // Only GET is the health check; anything else on /healthz is echoed like any path.
        .route("/healthz", get(healthz).fallback(echo))
        .fallback(echo)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn echo(
    State(state): State<Arc<DemoState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let echo = Echo {
        shard: &state.shard,
        backend: &state.backend,
        tenant: headers.get("x-tenant-id").map(|v| lossy(v.as_bytes())),
        method: method.as_str(),
        path,
        headers: forwarded_headers(&headers),
    };
    Json(serde_json::to_value(echo).unwrap_or(serde_json::Value::Null))
}

/// The headers the edge is responsible for, by lowercase name; repeated ones joined by `, `.
fn forwarded_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let ours =
            name.starts_with("x-tenant-") || name.starts_with("x-forwarded-") || name == "x-request-id";
        if ours {
            let value = lossy(value.as_bytes());
            out.entry(name.to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    out
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests;
