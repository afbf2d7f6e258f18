//! The TCS HTTP API (axum): host lookups (one, or a batch), placement lookups by tenant id (for the move
//! orchestrator), view snapshots and the NDJSON change stream for
//! authorised consumers, plus `/healthz`, `/readyz` and `/metrics`, and `/admin/faults` when
//! fault injection is allowed. Injected faults touch only the `/v1/views/...` routes.

mod stream;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::faults::{self, Faults, Injected};
use super::view::{Held, IngressView, SharedSnapshot};
use super::{fleet, INGRESS};
use super::{Consumer, Tcs};
use crate::feed::bearer::{bearer_token, constant_time_eq};
use crate::feed::{ApiError, FleetReport, HostBatch, PlacementLookup, MAX_HOST_BATCH};
use crate::tenant::{Host, HostError, NameError, Product, TenantId};

/// The answer readiness needs: no successful poll for this long means the view may be stale.
pub const READY_POLL_AGE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct AppState {
    tcs: Tcs,
    shutdown: CancellationToken,
}

/// The API router of `tcs`. Change streams end when `shutdown` is cancelled, so a graceful
/// shutdown is not held up by subscribers that never hang up.
pub fn router(tcs: Tcs, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/v1/views/{view}/hosts/{host}", get(lookup))
        .route("/v1/views/{view}/hosts", post(lookup_many))
        .route(
            "/v1/views/{view}/tenants/{id}/placements/{product}",
            get(placement),
        )
        .route("/v1/views/{view}/snapshot", get(snapshot))
        .route("/v1/views/{view}/changes", get(changes))
        .route("/v1/fleet", get(fleet))
        .route("/v1/fleet/edges/{id}", post(report_edge))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            tcs: tcs.clone(),
            shutdown,
        })
        .merge(faults::admin_router(tcs))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
}

/// Why an API request failed; one place maps every failure to a status and an [`ApiError`].
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// No bearer token, or one no consumer holds.
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// The consumer may not read this view.
    #[error("consumer {consumer:?} may not read view {view:?}")]
    Forbidden {
        /// The consumer's name.
        consumer: String,
        /// The view asked for.
        view: String,
    },
    /// No such view.
    #[error("no view {0:?}")]
    UnknownView(String),
    /// No tenant has this host.
    #[error("no tenant for host {0}")]
    UnknownHost(Host),
    /// No tenant has this id, or it does not have this product.
    #[error("tenant {0} has no {1} placement")]
    UnknownPlacement(TenantId, Product),
    /// A name in the path is not valid.
    #[error("{0}")]
    BadName(#[from] NameError),
    /// The host in the path is not a valid host name.
    #[error("bad host {0:?}: {1}")]
    BadHost(String, HostError),
    /// Malformed query string.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// Malformed request body.
    #[error("bad body: {0}")]
    BadBody(String),
    /// An injected fault (see [`faults`]).
    #[error(transparent)]
    Injected(#[from] Injected),
    /// Something on our side failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// Full for now (503): too many edges reporting.
    #[error("{0}")]
    Busy(String),
}

impl ApiFailure {
    fn status(&self) -> StatusCode {
        match self {
            ApiFailure::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiFailure::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiFailure::UnknownView(_) | ApiFailure::UnknownHost(_) | ApiFailure::UnknownPlacement(..) => {
                StatusCode::NOT_FOUND
            }
            ApiFailure::BadHost(..)
            | ApiFailure::BadQuery(_)
            | ApiFailure::BadBody(_)
            | ApiFailure::BadName(_) => StatusCode::BAD_REQUEST,
            ApiFailure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiFailure::Injected(_) | ApiFailure::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, ApiFailure::Injected(_)) {
            tracing::error!(error = %self, "tcs request failed");
        }
        let mut resp = ApiError::new(status, self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// 401 before 403 before 404: an unauthenticated caller learns nothing about views.
fn authorize(tcs: &Tcs, headers: &HeaderMap, view: &str) -> Result<Arc<IngressView>, ApiFailure> {
    let token = bearer_token(headers).ok_or(ApiFailure::Unauthorized)?;
    let consumer = find_consumer(tcs.consumers(), token).ok_or(ApiFailure::Unauthorized)?;
    let found = tcs
        .view(view)
        .ok_or_else(|| ApiFailure::UnknownView(view.to_owned()))?;
    if !consumer.views.iter().any(|v| v == view) {
        return Err(ApiFailure::Forbidden {
            consumer: consumer.name.clone(),
            view: view.to_owned(),
        });
    }
    Ok(found)
}

/// `POST /v1/fleet/edges/{id}`: an edge's report of itself, with its token as a consumer of
/// the `ingress` view; answered with `{"head", "last_event"}`, the view's position (a
/// heartbeat, in effect: an edge that applied `last_event` has missed nothing up to `head`).
async fn report_edge(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiFailure> {
    authorize(&app.tcs, &headers, INGRESS)?;
    let report: FleetReport =
        serde_json::from_slice(&body).map_err(|e| ApiFailure::BadBody(format!("not a fleet report: {e}")))?;
    match app.tcs.fleet().report(&id, report) {
        // The answer says where the view is: an edge fed by the fan-out learns from it that it
        // missed something, even when no message reaches it.
        Ok(()) => {
            let (head, last_event) = app.tcs.ingress().position();
            Ok(axum::Json(serde_json::json!({ "head": head, "last_event": last_event })).into_response())
        }
        Err(e @ fleet::ReportError::BadId) => Err(ApiFailure::BadBody(e.to_string())),
        Err(e @ fleet::ReportError::Full) => Err(ApiFailure::Busy(e.to_string())),
    }
}

/// `GET /v1/fleet`: every edge heard from, the laggards first. For the admin token (the
/// operator's) or any consumer's.
async fn fleet(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiFailure> {
    let token = bearer_token(&headers).ok_or(ApiFailure::Unauthorized)?;
    let admin = app
        .tcs
        .config()
        .admin_token
        .as_deref()
        .is_some_and(|a| constant_time_eq(a.as_bytes(), token));
    if !admin && find_consumer(app.tcs.consumers(), token).is_none() {
        return Err(ApiFailure::Unauthorized);
    }
    let tcs = &app.tcs;
    let fleet = tcs
        .fleet()
        .fleet(tcs.config().region.as_str(), tcs.ingress().seq(), tcs.status());
    let metrics = tcs.metrics();
    metrics
        .fleet_edges
        .set(i64::try_from(fleet.edges.len()).unwrap_or(i64::MAX));
    metrics
        .fleet_max_lag_seconds
        .set(fleet.edges.first().map_or(0.0, |e| e.lag_seconds));
    Ok(json_response(StatusCode::OK, &fleet))
}

/// Injected latency and errors, before anything else; the faults in force for the rest of
/// the request. Without faults this is one `ArcSwap` load.
async fn inject(tcs: &Tcs) -> Result<Option<Faults>, ApiFailure> {
    Ok(tcs.faults().before_answer(&tcs.metrics().fault_errors).await?)
}

fn emptied(faults: Option<Faults>) -> bool {
    faults.is_some_and(|f| f.empty)
}

/// Looks at every consumer and every byte whatever matches, so timing reveals no token prefix.
fn find_consumer<'a>(consumers: &'a [Consumer], token: &[u8]) -> Option<&'a Consumer> {
    let mut found = None;
    for c in consumers {
        if constant_time_eq(c.token.as_bytes(), token) {
            found = Some(c);
        }
    }
    found
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiFailure::Internal(e.to_string()).into_response(),
    }
}

/// Serialises exactly like [`crate::feed::HostLookup`], the record from its JSON rendered
/// when the view took it.
#[derive(Serialize)]
struct LookupRef<'a> {
    seq: u64,
    record: &'a Held,
}

async fn lookup(
    State(app): State<AppState>,
    Path((view_name, raw_host)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let faults = inject(&app.tcs).await?;
    let view = authorize(&app.tcs, &headers, &view_name)?;
    let host = Host::parse(&raw_host).map_err(|e| ApiFailure::BadHost(raw_host.clone(), e))?;
    let lookups = &app.tcs.metrics().lookups;
    let found = if emptied(faults) { None } else { view.lookup(&host) };
    match found {
        Some((seq, held)) => {
            lookups.with_label_values(&[&view_name, "hit"]).inc();
            Ok(json_response(StatusCode::OK, &LookupRef { seq, record: &held }))
        }
        None => {
            lookups.with_label_values(&[&view_name, "miss"]).inc();
            Err(ApiFailure::UnknownHost(host))
        }
    }
}

/// Serialises exactly like [`crate::feed::HostBatchAnswer`] without copying the shared records.
#[derive(Serialize)]
struct BatchRef<'a> {
    results: Vec<Option<LookupRef<'a>>>,
}

/// Many host lookups in one request (what an edge sends when misses pile up): one entry per
/// host, in order, `null` for an unknown or invalid host. All are read at one view sequence.
async fn lookup_many(
    State(app): State<AppState>,
    Path(view_name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiFailure> {
    let faults = inject(&app.tcs).await?;
    let view = authorize(&app.tcs, &headers, &view_name)?;
    let batch: HostBatch = serde_json::from_slice(&body).map_err(|e| ApiFailure::BadBody(e.to_string()))?;
    if batch.hosts.len() > MAX_HOST_BATCH {
        return Err(ApiFailure::BadBody(format!(
            "{} hosts; at most {MAX_HOST_BATCH} per request",
            batch.hosts.len()
        )));
    }
    let hosts: Vec<Option<Host>> = batch.hosts.iter().map(|h| Host::parse(h).ok()).collect();
    let (seq, found) = if emptied(faults) {
        (view.seq(), vec![None; hosts.len()])
    } else {
        view.lookup_many(hosts.iter().map(Option::as_ref))
    };
    let hits = found.iter().filter(|r| r.is_some()).count();
    app.tcs
        .metrics()
        .lookup_batches
        .with_label_values(&[&view_name])
        .inc();
    let lookups = &app.tcs.metrics().lookups;
    lookups
        .with_label_values(&[&view_name, "hit"])
        .inc_by(hits as u64);
    lookups
        .with_label_values(&[&view_name, "miss"])
        .inc_by((found.len() - hits) as u64);
    let results = found
        .iter()
        .map(|r| r.as_ref().map(|held| LookupRef { seq, record: held }))
        .collect();
    Ok(json_response(StatusCode::OK, &BatchRef { results }))
}

/// Where one product of one tenant lives, by tenant id: what a move orchestrator checks.
async fn placement(
    State(app): State<AppState>,
    Path((view_name, raw_id, raw_product)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let faults = inject(&app.tcs).await?;
    let view = authorize(&app.tcs, &headers, &view_name)?;
    let id = TenantId::new(&raw_id)?;
    let product = Product::new(&raw_product)?;
    let found = if emptied(faults) {
        None
    } else {
        view.tenant(id.as_str())
    };
    let answer = found.and_then(|(seq, held)| {
        let record = &held.record;
        let p = record.placement(product.as_str())?;
        Some(PlacementLookup {
            tenant: record.id.clone(),
            product: product.clone(),
            shard: p.shard.clone(),
            state: p.state,
            version: record.version,
            seq,
        })
    });
    match answer {
        Some(a) => Ok(json_response(StatusCode::OK, &a)),
        None => Err(ApiFailure::UnknownPlacement(id, product)),
    }
}

async fn snapshot(
    State(app): State<AppState>,
    Path(view_name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let faults = inject(&app.tcs).await?;
    let view = authorize(&app.tcs, &headers, &view_name)?;
    app.tcs.metrics().snapshots.with_label_values(&[&view_name]).inc();
    if emptied(faults) {
        let none = SharedSnapshot {
            seq: view.seq(),
            epoch: view.epoch(),
            records: Vec::new(),
        };
        return Ok(json_response(StatusCode::OK, &none));
    }
    Ok(json_response(StatusCode::OK, &view.snapshot()))
}

#[derive(Debug, Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
}

async fn changes(
    State(app): State<AppState>,
    Path(view_name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    // `empty` does not apply: an emptied table sends no deletes.
    inject(&app.tcs).await?;
    let view = authorize(&app.tcs, &headers, &view_name)?;
    let Query(q) = query.map_err(|e| ApiFailure::BadQuery(e.body_text()))?;
    let guard = stream::SubscriberGuard::new(app.tcs.metrics().subscribers.clone());
    let body = stream::change_stream(view, q.after, app.shutdown.clone(), guard);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    seq: u64,
    head: u64,
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.tcs.readiness() {
        Ok((seq, head)) => json_response(
            StatusCode::OK,
            &Ready {
                ready: true,
                seq,
                head,
            },
        ),
        Err(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    app.tcs.refresh_gauges();
    match app.tcs.metrics().render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => ApiFailure::Internal(e.to_string()).into_response(),
    }
}
