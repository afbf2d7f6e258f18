//! The sidecar's HTTP API: TCS's paths for the views it serves, answered from each view's
//! tenant cache with the secrets opened; `/healthz`, `/readyz` and `/metrics` open to anyone on
//! the machine, the rest for callers holding the service's TCS token.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::open::{OpenError, Opened, Opener};
use crate::context::{self, CacheService, Entry, Resolved};
use crate::feed::bearer::{bearer_token, constant_time_eq};
use crate::feed::{ApiError, HostBatch, PlacementLookup, MAX_HOST_BATCH};
use crate::tenant::{Host, HostError, NameError, Product, TenantId};

/// What the handlers share.
pub(super) struct Sidecar {
    /// The views served, the first one's admin endpoints at `/admin/*`.
    pub views: Vec<View>,
    /// The tokens a caller may present: the service's own, one per region.
    pub tokens: Vec<String>,
    /// Ends passed-through change streams at shutdown.
    pub shutdown: CancellationToken,
}

/// One view served: its cache and the answers opened from it.
pub(super) struct View {
    pub name: String,
    pub service: Arc<CacheService>,
    pub opener: Arc<Opener>,
}

/// Why a request failed; one JSON shape ([`ApiError`]) for all.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("this sidecar serves {ours}, not view {asked:?}")]
    OtherView { ours: String, asked: String },
    #[error("bad host {0:?}: {1}")]
    BadHost(String, HostError),
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("bad body: {0}")]
    BadBody(String),
    #[error("no tenant for host {0}")]
    UnknownHost(Host),
    #[error("tenant {0} has no {1} placement")]
    UnknownPlacement(TenantId, Product),
    /// No TCS could answer what the cache does not hold.
    #[error("{0}")]
    Unavailable(String),
    /// The tenant's secrets did not open.
    #[error(transparent)]
    Sealed(#[from] OpenError),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match &self {
            Failure::Unauthorized => StatusCode::UNAUTHORIZED,
            Failure::OtherView { .. } => StatusCode::FORBIDDEN,
            Failure::BadHost(..) | Failure::BadName(_) | Failure::BadQuery(_) | Failure::BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Failure::UnknownHost(_) | Failure::UnknownPlacement(..) => StatusCode::NOT_FOUND,
            Failure::Unavailable(_) | Failure::Sealed(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut resp = ApiError::new(status, self.to_string()).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// The sidecar's router.
pub(super) fn router(sidecar: Sidecar) -> Router {
    let sidecar = Arc::new(sidecar);
    // The first view's admin endpoints where the edge has them; with several views, every
    // view's under `/admin/views/{view}/` too.
    let mut admin = Router::new();
    if let Some(first) = sidecar.views.first() {
        admin = admin.merge(context::admin::router(first.service.clone()));
    }
    if sidecar.views.len() > 1 {
        for v in &sidecar.views {
            let prefix = format!("/admin/views/{}", v.name);
            admin = admin.merge(context::admin::router_at(&prefix, v.service.clone()));
        }
    }
    let guarded = Router::new()
        .route("/v1/views/{view}/hosts/{host}", get(lookup))
        .route("/v1/views/{view}/hosts", post(lookup_many))
        .route(
            "/v1/views/{view}/tenants/{id}/placements/{product}",
            get(placement),
        )
        .route("/v1/views/{view}/snapshot", get(snapshot))
        .route("/v1/views/{view}/changes", get(changes))
        .with_state(sidecar.clone())
        .merge(admin)
        .layer(middleware::from_fn_with_state(sidecar.clone(), authenticate));
    let open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(sidecar.clone());
    open.merge(guarded)
        .layer(middleware::from_fn_with_state(sidecar, count))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
}

/// Lets through a caller presenting one of the service's tokens (compared in constant time,
/// every one of them, so timing tells nothing).
async fn authenticate(State(s): State<Arc<Sidecar>>, req: Request, next: Next) -> Response {
    let held = bearer_token(req.headers()).is_some_and(|token| {
        let mut found = false;
        for t in &s.tokens {
            found |= constant_time_eq(t.as_bytes(), token);
        }
        found
    });
    if held {
        next.run(req).await
    } else {
        Failure::Unauthorized.into_response()
    }
}

/// Counts every answer by endpoint and status.
async fn count(State(s): State<Arc<Sidecar>>, req: Request, next: Next) -> Response {
    let endpoint = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/v1/views/{view}/hosts/{host}") => "lookup",
        Some("/v1/views/{view}/hosts") => "batch",
        Some("/v1/views/{view}/tenants/{id}/placements/{product}") => "placement",
        Some("/v1/views/{view}/snapshot") => "snapshot",
        Some("/v1/views/{view}/changes") => "changes",
        Some(p) if p.starts_with("/admin/") => "admin",
        Some(_) => "health",
        None => "other",
    };
    // Counted with the view asked for when it is served, else with the first.
    let view = req
        .uri()
        .path()
        .strip_prefix("/v1/views/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|asked| s.views.iter().position(|v| v.name == asked))
        .unwrap_or(0);
    let resp = next.run(req).await;
    let Some(v) = s.views.get(view) else { return resp };
    v.service
        .metrics
        .sidecar_requests
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

impl Sidecar {
    /// The view `asked` for, if served (403 when not).
    fn view(&self, asked: &str) -> Result<&View, Failure> {
        self.views.iter().find(|v| v.name == asked).ok_or_else(|| {
            let names: Vec<String> = self.views.iter().map(|v| format!("{:?}", v.name)).collect();
            Failure::OtherView {
                ours: format!("view {}", names.join(", ")),
                asked: asked.to_owned(),
            }
        })
    }
}

impl View {
    /// The cached entry of `host` (a hit, or one coalesced fill).
    async fn resolve(&self, host: &Host) -> Result<Arc<Entry>, Failure> {
        match self.service.cache.resolve(host.as_str()).await {
            Ok(Resolved::Found(entry)) => Ok(entry),
            Ok(Resolved::Unknown) => Err(Failure::UnknownHost(host.clone())),
            Err(e) => Err(Failure::Unavailable(e.to_string())),
        }
    }

    /// The answer of `host`: its record with the secrets opened.
    async fn answer(&self, host: &Host) -> Result<Arc<Opened>, Failure> {
        let entry = self.resolve(host).await?;
        Ok(self.opener.open(&entry.record).await?)
    }

    /// The sequence answers are current to: what the change stream applied.
    fn seq(&self) -> u64 {
        self.service.stream.applied()
    }
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"seq": .., "record": ..}` with the record as opened (the shape of TCS's lookup).
fn lookup_body(seq: u64, opened: &Opened, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"record\":");
    out.extend_from_slice(&opened.json);
    out.push(b'}');
}

async fn lookup(
    State(s): State<Arc<Sidecar>>,
    Path((view, raw_host)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let v = s.view(&view)?;
    let host = Host::parse(&raw_host).map_err(|e| Failure::BadHost(raw_host.clone(), e))?;
    let opened = v.answer(&host).await?;
    let mut body = Vec::with_capacity(opened.json.len() + 32);
    lookup_body(v.seq(), &opened, &mut body);
    Ok(json(body))
}

/// Many hosts in one request, in order, `null` for an unknown or invalid host; a 503 as a
/// whole when any known tenant cannot be answered.
async fn lookup_many(
    State(s): State<Arc<Sidecar>>,
    Path(view): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let v = s.view(&view)?;
    let batch: HostBatch = serde_json::from_slice(&body).map_err(|e| Failure::BadBody(e.to_string()))?;
    if batch.hosts.len() > MAX_HOST_BATCH {
        return Err(Failure::BadBody(format!(
            "{} hosts; at most {MAX_HOST_BATCH} per request",
            batch.hosts.len()
        )));
    }
    let answers = futures::future::join_all(batch.hosts.iter().map(|raw| async {
        let Ok(host) = Host::parse(raw) else {
            return Ok(None);
        };
        match v.answer(&host).await {
            Ok(opened) => Ok(Some(opened)),
            Err(Failure::UnknownHost(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }))
    .await;
    let seq = v.seq();
    let mut out = b"{\"results\":[".to_vec();
    for (i, answer) in answers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match answer? {
            Some(opened) => lookup_body(seq, &opened, &mut out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json(out))
}

/// Where one product of a tenant lives, by tenant id: from the cache when it holds the tenant
/// (learnt from a lookup), else from TCS.
async fn placement(
    State(s): State<Arc<Sidecar>>,
    Path((view, raw_id, raw_product)): Path<(String, String, String)>,
) -> Result<Response, Failure> {
    let v = s.view(&view)?;
    let id = TenantId::new(&raw_id)?;
    let product = Product::new(&raw_product)?;
    if let Some(host) = v.opener.host_of(&id).await {
        if let Ok(entry) = v.resolve(&host).await {
            let record = &entry.record;
            if record.id == id {
                let p = record
                    .placement(product.as_str())
                    .ok_or_else(|| Failure::UnknownPlacement(id.clone(), product.clone()))?;
                let answer = PlacementLookup {
                    tenant: record.id.clone(),
                    product: product.clone(),
                    shard: p.shard.clone(),
                    state: p.state,
                    version: record.version,
                    seq: v.seq(),
                };
                let body = serde_json::to_vec(&answer).map_err(|e| Failure::Unavailable(e.to_string()))?;
                return Ok(json(body));
            }
        }
    }
    let rest = format!("/tenants/{id}/placements/{product}");
    let resp = forward(&s, v, &rest, false).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(Failure::UnknownPlacement(id, product));
    }
    Ok(resp)
}

async fn snapshot(State(s): State<Arc<Sidecar>>, Path(view): Path<String>) -> Result<Response, Failure> {
    let v = s.view(&view)?;
    forward(&s, v, "/snapshot", true).await
}

#[derive(Debug, Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
}

async fn changes(
    State(s): State<Arc<Sidecar>>,
    Path(view): Path<String>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let v = s.view(&view)?;
    let Query(q) = query.map_err(|e| Failure::BadQuery(e.body_text()))?;
    forward(&s, v, &format!("/changes?after={}", q.after), true).await
}

/// TCS's answer to `GET /v1/views/{view}{rest}`, streamed through (a change stream until
/// this sidecar shuts down).
async fn forward(s: &Sidecar, v: &View, rest: &str, long_lived: bool) -> Result<Response, Failure> {
    let resp = v
        .service
        .cache
        .client()
        .forward(rest, long_lived)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = resp.headers().get(name.as_str()) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.insert(name, v);
            }
        }
    }
    let body = resp
        .bytes_stream()
        .take_until(s.shutdown.clone().cancelled_owned());
    Ok((status, headers, axum::body::Body::from_stream(body)).into_response())
}

async fn readyz(State(s): State<Arc<Sidecar>>) -> Response {
    match s.views.as_slice() {
        [one] => context::admin::readiness(&one.service),
        views => {
            let named: Vec<(&str, &CacheService)> =
                views.iter().map(|v| (v.name.as_str(), &*v.service)).collect();
            context::admin::readiness_of(&named)
        }
    }
}

async fn metrics(State(s): State<Arc<Sidecar>>) -> Response {
    let services: Vec<&CacheService> = s.views.iter().map(|v| &*v.service).collect();
    context::admin::metrics_of(&services)
}
