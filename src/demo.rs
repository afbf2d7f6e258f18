//! Demo shard backends: real HTTP servers standing in for a product shard in the dev stack and
//! in tests.
//!
//! A shard keeps per-tenant items (`items`) in SQLite files per data region, shared by all its
//! backends and by the shards of the same product in the same region (`store`), honours ownership fences set by the mover hooks (`mover`), and answers every
//! other request except `GET /healthz` with JSON naming the shard and backend and echoing what
//! the edge forwarded (tenant, method, path, the internal headers), so tests can see exactly
//! where a request landed and what it carried. Every answer carries
//! `x-served-by: <shard>/<backend>`.

mod context;
mod items;
mod jobs;
mod mover;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::feed::ApiError;
use crate::tenant::{NameError, Product, Region, ShardId, TenantId};
use store::ShardStore;

pub use context::{db_host, fingerprint, Database, SidecarLink};

/// What a demo shard backend calls itself, where it listens and where its shard keeps data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoShardConfig {
    /// The shard it stands in for (`jira-us-east-1`).
    pub shard: String,
    /// The backend's name inside the shard (`b1`).
    pub backend: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// The product it serves (names its region data files).
    pub product: Product,
    /// The regions holding its data, home region first (see `store`).
    pub regions: Vec<Region>,
    /// Directory of the shard's fence file (`shard-<shard>.db`) and of the region data files
    /// (`data-<product>-<region>.db`), shared by the shard's backends and by shards of the same
    /// product in the same regions.
    pub data_dir: PathBuf,
    /// The bearer token the mover hooks (`/mover/...`) ask for.
    pub mover_token: Option<String>,
    /// Without a token, leave the hooks open (loopback only); else a shard without a token
    /// does not start.
    pub allow_unauthenticated: bool,
    /// Its product's sidecar: every tenant request is checked against the tenant context it
    /// holds, which names the tenant's database and credential; queued jobs re-check there.
    pub sidecar: Option<SidecarLink>,
}

/// Why a demo shard could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Binding or serving failed.
    #[error("demo shard: {0}")]
    Io(#[from] std::io::Error),
    /// The shard id cannot name a database file.
    #[error(transparent)]
    Shard(#[from] NameError),
    /// A shard keeps data in at least one region.
    #[error("demo shard: no data region given")]
    NoRegions,
    /// No mover token, and open hooks not asked for (or asked for off loopback).
    #[error("demo shard: the mover hooks need a token (--mover-token-file), or --allow-unauthenticated on loopback (listening on {0})")]
    OpenMover(SocketAddr),
    /// The sidecar's client could not be built.
    #[error("demo shard: sidecar client: {0}")]
    Sidecar(#[from] reqwest::Error),
    /// The shard's database could not be opened.
    #[error("shard database {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

/// The header naming who answered.
const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// The header of a 421: the catalogue version an edge must fetch at least.
const TENANT_MOVED: HeaderName = HeaderName::from_static("tenant-moved");
/// The header carrying the tenant, set by the edge.
const TENANT_ID: &str = "x-tenant-id";

/// Per-server state shared by the handlers.
struct DemoState {
    shard: String,
    backend: String,
    served_by: HeaderValue,
    store: ShardStore,
    mover_token: Option<String>,
    sidecar: Option<context::Sidecar>,
    /// Where every shard's files are (a re-routed job goes into its shard's file).
    data_dir: PathBuf,
}

/// Why a request was refused; one JSON answer ([`ApiError`]) per variant.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Bad input: missing tenant, malformed JSON, a bad id.
    #[error("{0}")]
    BadRequest(String),
    /// An extractor's rejection (body too large, wrong content type, ...).
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// No such item.
    #[error("no such item")]
    NotFound,
    /// A method the path does not serve.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The tenant is frozen for a move: writes wait.
    #[error("tenant is frozen for a move; retry shortly")]
    Frozen,
    /// The tenant lives elsewhere since this catalogue version.
    #[error("tenant moved; fetch catalogue version {0} or later")]
    Moved(u64),
    /// The tenant's context (its database, its credential) is not to be had now.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Internal(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match &self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Rejected(status, _) => *status,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Failure::Frozen | Failure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Moved(_) => StatusCode::MISDIRECTED_REQUEST,
            Failure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && !matches!(self, Failure::Frozen | Failure::Unavailable(_)) {
            tracing::error!(error = %self, "demo shard request failed");
        }
        let mut resp = ApiError::new(status, self.to_string()).into_response();
        match self {
            Failure::Frozen | Failure::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Failure::Moved(version) => {
                resp.headers_mut()
                    .insert(TENANT_MOVED, HeaderValue::from(version));
            }
            _ => {}
        }
        resp
    }
}

/// The JSON 405 of a known path asked with a method it does not serve.
async fn method_not_allowed() -> Failure {
    Failure::MethodNotAllowed
}

/// The tenant a request is for: the `x-tenant-id` header the edge sets.
fn tenant_of(headers: &HeaderMap) -> Result<TenantId, Failure> {
    let raw = headers
        .get(TENANT_ID)
        .ok_or_else(|| Failure::BadRequest("missing x-tenant-id header".into()))?;
    let raw = raw
        .to_str()
        .map_err(|_| Failure::BadRequest("x-tenant-id is not text".into()))?;
    TenantId::new(raw).map_err(|e| Failure::BadRequest(e.to_string()))
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
    /// The tenant's database, as the sidecar told (with a sidecar only).
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<Database>,
}

/// A demo shard backend with its database open and its listener bound, not yet serving:
/// connections wait in the backlog until [`Bound::serve`]. Its existence is the readiness signal.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<DemoState>,
}

/// Binds `cfg.listen` (port 0 picks a free port; see [`Bound::addr`]) and opens (creating if
/// needed) the shard's database.
pub async fn bind(cfg: DemoShardConfig) -> Result<Bound, DemoError> {
    let shard = ShardId::new(&cfg.shard)?;
    if cfg.regions.is_empty() {
        return Err(DemoError::NoRegions);
    }
    if cfg.mover_token.is_none() && !(cfg.allow_unauthenticated && cfg.listen.ip().is_loopback()) {
        return Err(DemoError::OpenMover(cfg.listen));
    }
    // The socket first: a taken port leaves no files behind.
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let path = store::db_path(&cfg.data_dir, &shard);
    let store = open_store(
        cfg.data_dir.clone(),
        path,
        cfg.product.clone(),
        cfg.regions.clone(),
    )
    .await?;
    let served_by = HeaderValue::try_from(format!("{}/{}", cfg.shard, cfg.backend))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let sidecar = match cfg.sidecar {
        Some(link) => Some(context::Sidecar::new(link, cfg.product.clone(), &cfg.shard)?),
        None => None,
    };
    let state = Arc::new(DemoState {
        shard: cfg.shard,
        backend: cfg.backend,
        served_by,
        store,
        mover_token: cfg.mover_token,
        sidecar,
        data_dir: cfg.data_dir,
    });
    Ok(Bound {
        listener,
        addr,
        state,
    })
}

impl Bound {
    /// The address the backend listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), DemoError> {
        tracing::info!(
            target: crate::stack::LISTENING,
            "demo shard {}/{} listening on {}",
            self.state.shard,
            self.state.backend,
            self.addr
        );
        tokio::spawn(jobs::work(self.state.clone(), shutdown.clone()));
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}

/// Binds `cfg.listen` and serves until `shutdown` is cancelled.
pub async fn run(cfg: DemoShardConfig, shutdown: CancellationToken) -> Result<(), DemoError> {
    bind(cfg).await?.serve(shutdown).await
}

/// Creates the data directory and opens the shard's database, off the async threads.
async fn open_store(
    dir: PathBuf,
    path: PathBuf,
    product: Product,
    regions: Vec<Region>,
) -> Result<ShardStore, DemoError> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        ShardStore::open(&path, &product, &regions).map_err(|source| DemoError::Store { path, source })
    })
    .await
    .map_err(std::io::Error::other)?
}

fn router(state: Arc<DemoState>) -> Router {
    // Every tenant request is checked against the sidecar's context first (with a sidecar).
    let tenant = Router::new()
        .route("/ws/echo", get(ws_echo))
        .merge(items::routes())
        .merge(jobs::routes())
        .fallback(echo)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), context::check));
    Router::new()
        // Only GET is the health check; anything else on /healthz is echoed like any path.
        .route("/healthz", get(healthz).fallback(echo))
        .nest(
            "/mover",
            mover::routes().route_layer(middleware::from_fn_with_state(Arc::clone(&state), mover_only)),
        )
        .merge(tenant)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), served_by))
        .with_state(state)
}

async fn served_by(State(state): State<Arc<DemoState>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(SERVED_BY, state.served_by.clone());
    resp
}

/// The mover hooks move and delete a tenant's data: with a token configured, only its holder
/// (the orchestrator) may call them.
async fn mover_only(State(state): State<Arc<DemoState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.mover_token else {
        return next.run(req).await;
    };
    if crate::feed::bearer::bears(req.headers(), token) {
        next.run(req).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "the mover token is needed").into_response()
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// A WebSocket that echoes every text message back, prefixed with the tenant the edge named
/// on the upgrade request (`-` for none): proves the upgrade went through the edge as a tunnel.
async fn ws_echo(ws: axum::extract::ws::WebSocketUpgrade, headers: HeaderMap) -> Response {
    use axum::extract::ws::Message;
    let tenant = headers
        .get(TENANT_ID)
        .map_or_else(|| "-".to_owned(), |v| lossy(v.as_bytes()));
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(text) => Message::Text(format!("{tenant}: {}", text.as_str()).into()),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// Echoes any other request, once the tenant's fences (if it names one) let it through.
async fn echo(
    State(state): State<Arc<DemoState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    database: Option<axum::Extension<Database>>,
) -> Result<Json<serde_json::Value>, Failure> {
    // Without a (valid) tenant there is no fence to honour: the echo shows what arrived.
    if let Ok(tenant) = tenant_of(&headers) {
        let unsafe_method = !method.is_safe();
        state
            .store
            .read(move |c| store::fences(c, &tenant)?.check(unsafe_method))
            .await?;
    }
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let echo = Echo {
        shard: &state.shard,
        backend: &state.backend,
        tenant: headers.get(TENANT_ID).map(|v| lossy(v.as_bytes())),
        method: method.as_str(),
        path,
        headers: forwarded_headers(&headers),
        database: database.map(|axum::Extension(d)| d),
    };
    Ok(Json(
        serde_json::to_value(echo).unwrap_or(serde_json::Value::Null),
    ))
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
