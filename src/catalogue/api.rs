//! The catalogue's HTTP API (see the contract in the design): tenants with compare-and-set,
//! the shard registry, realms, tenant moves (`migrations`), and the long-polled change log.
//!
//! Status codes: 201 created / 200 replaced, 404 unknown, 409 version conflict, host owned by
//! another tenant or entity still in use, 422 invalid document (every problem listed), 400
//! malformed JSON, path, query or `If-Match`, 413 body over 1 MiB. Every error is a JSON
//! [`ApiError`], produced in one place: [`Failure`]'s `IntoResponse`.

mod extract;
mod migrations;
mod seal;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::extract::{Doc, Id, IfMatch, Params};
use crate::catalogue::store::{Store, StoreError, Written};
use crate::feed::{ApiError, ChangesPage, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Realm, ShardId, TenantId};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

/// Largest body of a bulk import (`POST /v1/tenants`): tens of thousands of tenants.
pub const MAX_IMPORT: usize = 64 << 20;
/// Changes per page when the reader names no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` honoured.
pub const MAX_LIMIT: usize = 10_000;
/// Longest `wait_ms` honoured.
pub const MAX_WAIT_MS: u64 = 30_000;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    /// Wraps the tenants' data keys; without one, secrets are refused.
    master: Option<Arc<crate::secrets::MasterKeys>>,
    /// Cancelled at shutdown, so long-polls answer at once instead of holding it up.
    shutdown: CancellationToken,
    /// Long-polls parked right now (readers tailing an idle log), shown by `/healthz`.
    waiting: Arc<AtomicUsize>,
}

/// Counts one parked long-poll for as long as it lives.
struct Parked(Arc<AtomicUsize>);

impl Parked {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Parked(Arc::clone(count))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The catalogue API over `store`, for in-process use (tests), open to `access`.
pub fn router(store: Arc<dyn Store>, access: super::auth::Access) -> Router {
    app(store, CancellationToken::new(), access, None)
}

/// The API whose long-polls end when `shutdown` is cancelled.
pub(super) fn app(
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    access: super::auth::Access,
    master: Option<Arc<crate::secrets::MasterKeys>>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/tenants",
            get(list_tenants)
                .post(import_tenants)
                .layer(DefaultBodyLimit::max(MAX_IMPORT)),
        )
        .route(
            "/v1/tenants/{id}",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        )
        .route("/v1/shards", get(list_shards))
        .route(
            "/v1/shards/{id}",
            get(get_shard).put(put_shard).delete(delete_shard),
        )
        .route("/v1/realms", get(list_realms))
        .route(
            "/v1/realms/{name}",
            get(get_realm).put(put_realm).delete(delete_realm),
        )
        .route("/v1/migrations", get(migrations::list).post(migrations::create))
        .route("/v1/migrations/{id}", get(migrations::get_one))
        .route("/v1/migrations/{id}/phase", put(migrations::set_phase))
        .route("/v1/changes", get(changes))
        .route("/v1/leases/{name}", put(put_lease))
        .route("/v1/keys/rotate", axum::routing::post(rotate_keys))
        .fallback(|| async { Failure::Http(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            Failure::Http(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(access, super::auth::check))
        .with_state(AppState {
            store,
            master,
            shutdown,
            waiting: Arc::default(),
        })
}

/// Everything a handler can fail with; the one place errors become responses.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is wrong (status and message given).
    #[error("{1}")]
    Http(StatusCode, String),
}

impl Failure {
    fn bad_request(message: String) -> Self {
        Failure::Http(StatusCode::BAD_REQUEST, message)
    }

    fn status(&self) -> StatusCode {
        match self {
            Failure::Http(status, _) => *status,
            Failure::Store(e) => match e {
                StoreError::NotFound => StatusCode::NOT_FOUND,
                StoreError::VersionConflict { .. }
                | StoreError::HostTaken { .. }
                | StoreError::InUse(_)
                | StoreError::MigrationOpen { .. } => StatusCode::CONFLICT,
                StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "catalogue request failed");
        }
        let mut response = ApiError::new(status, self.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

type Answer = Result<Response, Failure>;

fn etag(version: u64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{version}\""))]
}

fn written<T: Serialize>(w: Written<T>) -> (StatusCode, Json<T>) {
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(w.doc))
}

/// Versions exist only for tenants; a precondition we cannot check must not be ignored.
fn no_if_match(IfMatch(v): IfMatch) -> Result<(), Failure> {
    match v {
        Some(_) => Err(Failure::bad_request("If-Match applies to tenants only".into())),
        None => Ok(()),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    head: u64,
    waiting: usize,
}

async fn healthz(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        head: s.store.head(),
        waiting: s.waiting.load(Ordering::Relaxed),
    })
}

async fn put_tenant(
    State(s): State<AppState>,
    Id(id): Id<TenantId>,
    IfMatch(if_match): IfMatch,
    Doc(mut doc): Doc<TenantDoc>,
) -> Answer {
    seal::seal(&*s.store, s.master.as_deref(), &id, &mut doc).await?;
    let w = s.store.put_tenant(id, doc, if_match).await?;
    Ok((etag(w.doc.version), written(w)).into_response())
}

/// What a bulk import answers.
#[derive(Serialize)]
struct Imported {
    written: usize,
    head: u64,
}

/// `POST /v1/tenants`: a JSON array of tenant documents, written in one transaction.
async fn import_tenants(State(s): State<AppState>, Doc(mut docs): Doc<Vec<TenantDoc>>) -> Answer {
    for doc in &mut docs {
        let id = doc.id.clone();
        seal::seal(&*s.store, s.master.as_deref(), &id, doc).await?;
    }
    let written = s.store.put_tenants(docs).await?;
    Ok(Json(Imported {
        written,
        head: s.store.head(),
    })
    .into_response())
}

async fn get_tenant(State(s): State<AppState>, Id(id): Id<TenantId>) -> Answer {
    let doc = s.store.get_tenant(&id).await?;
    Ok((etag(doc.version), Json(doc)).into_response())
}

async fn delete_tenant(
    State(s): State<AppState>,
    Id(id): Id<TenantId>,
    IfMatch(if_match): IfMatch,
) -> Answer {
    let version = s.store.delete_tenant(&id, if_match).await?;
    Ok((StatusCode::NO_CONTENT, etag(version)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsQuery {
    host: Option<Host>,
    after: Option<TenantId>,
    limit: Option<usize>,
}

/// A page of tenants by id: those after `after` (from the first without it), at most `limit`.
/// (Its fields are repeated in each query rather than flattened: a flattened struct would take
/// every value of a query string as text, and would let unknown keys through.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<TenantId>,
    limit: Option<usize>,
}

impl PageQuery {
    /// The page's size: `limit`, 1 to [`crate::feed::MAX_PAGE`], else `default`.
    fn limit(&self, default: usize) -> Result<usize, Failure> {
        match self.limit {
            None => Ok(default),
            Some(n) if (1..=crate::feed::MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(Failure::Http(
                StatusCode::BAD_REQUEST,
                format!("limit {n}: a page holds 1 to {} tenants", crate::feed::MAX_PAGE),
            )),
        }
    }

    fn is_given(&self) -> bool {
        self.after.is_some() || self.limit.is_some()
    }
}

/// `GET /v1/tenants`: every tenant, or a page of them by id (`?after=ID&limit=N`, at most
/// [`crate::feed::MAX_PAGE`]; the next page starts after the last id of a full one), or with
/// `?host=H` the one owning H (or none).
async fn list_tenants(
    State(s): State<AppState>,
    Params(q): Params<TenantsQuery>,
) -> Result<Json<Vec<TenantDoc>>, Failure> {
    let page = PageQuery {
        after: q.after,
        limit: q.limit,
    };
    Ok(Json(match q.host {
        Some(_) if page.is_given() => {
            return Err(Failure::Http(
                StatusCode::BAD_REQUEST,
                "host names one tenant: it takes no after or limit".into(),
            ))
        }
        Some(host) => s.store.tenant_by_host(&host).await?.into_iter().collect(),
        None if page.is_given() => {
            let limit = page.limit(crate::feed::MAX_PAGE)?;
            s.store.list_tenants_page(page.after.as_ref(), limit).await?
        }
        None => s.store.list_tenants().await?,
    }))
}

async fn put_shard(
    State(s): State<AppState>,
    Id(id): Id<ShardId>,
    m: IfMatch,
    Doc(doc): Doc<ShardDoc>,
) -> Answer {
    no_if_match(m)?;
    Ok(written(s.store.put_shard(id, doc).await?).into_response())
}

async fn get_shard(State(s): State<AppState>, Id(id): Id<ShardId>) -> Result<Json<ShardDoc>, Failure> {
    Ok(Json(s.store.get_shard(&id).await?))
}

async fn delete_shard(
    State(s): State<AppState>,
    Id(id): Id<ShardId>,
    m: IfMatch,
) -> Result<StatusCode, Failure> {
    no_if_match(m)?;
    s.store.delete_shard(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_shards(State(s): State<AppState>) -> Result<Json<Vec<ShardDoc>>, Failure> {
    Ok(Json(s.store.list_shards().await?))
}

async fn put_realm(
    State(s): State<AppState>,
    Id(name): Id<Realm>,
    m: IfMatch,
    Doc(doc): Doc<RealmDoc>,
) -> Answer {
    no_if_match(m)?;
    Ok(written(s.store.put_realm(name, doc).await?).into_response())
}

/// `POST /v1/keys/rotate` (admin): over one page of tenants by id (`?after=ID&limit=N`,
/// [`crate::feed::ROTATE_PAGE`] by default), every data key wrapped by a previous master key is
/// wrapped again by the current one, a change per tenant, no secret rewritten. The answer's
/// `next` says where the next page starts; `null` once every tenant has been seen.
async fn rotate_keys(State(s): State<AppState>, Params(page): Params<PageQuery>) -> Answer {
    let Some(master) = s.master.as_deref() else {
        return Err(Failure::Http(
            StatusCode::CONFLICT,
            "this catalogue has no master key".into(),
        ));
    };
    let limit = page.limit(crate::feed::ROTATE_PAGE)?;
    let (rewrapped, left, next) = seal::rotate(&*s.store, master, page.after.as_ref(), limit).await?;
    tracing::info!(rewrapped, left, key = %master.current().id(), next = next.as_ref().map(TenantId::as_str), "data keys re-wrapped");
    Ok(Json(crate::feed::Rotated {
        rewrapped,
        left,
        key_id: master.current().id().to_owned(),
        next,
    })
    .into_response())
}

/// `PUT /v1/leases/{name}`: takes, renews or (`ttl_ms` 0) gives up a lease; 200 with who
/// holds it now, whoever that is (the caller compares the holder with itself).
async fn put_lease(
    State(s): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Doc(req): Doc<crate::feed::LeaseRequest>,
) -> Result<Json<crate::feed::LeaseDoc>, Failure> {
    let ok = |v: &str| {
        (1..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    };
    if !ok(&name) || !ok(&req.holder) {
        return Err(Failure::bad_request(
            "lease names and holders are 1 to 128 of [A-Za-z0-9._:-]".into(),
        ));
    }
    if req.ttl_ms > crate::feed::MAX_LEASE_MS {
        return Err(Failure::bad_request(format!(
            "ttl_ms {} is over the limit of {}",
            req.ttl_ms,
            crate::feed::MAX_LEASE_MS
        )));
    }
    Ok(Json(s.store.lease(&name, &req.holder, req.ttl_ms).await?))
}

async fn get_realm(State(s): State<AppState>, Id(name): Id<Realm>) -> Result<Json<RealmDoc>, Failure> {
    Ok(Json(s.store.get_realm(&name).await?))
}

async fn delete_realm(
    State(s): State<AppState>,
    Id(name): Id<Realm>,
    m: IfMatch,
) -> Result<StatusCode, Failure> {
    no_if_match(m)?;
    s.store.delete_realm(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_realms(State(s): State<AppState>) -> Result<Json<Vec<RealmDoc>>, Failure> {
    Ok(Json(s.store.list_realms().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// `GET /v1/changes`: when nothing follows `after`, waits (up to `wait_ms`) for the next commit.
async fn changes(
    State(s): State<AppState>,
    Params(q): Params<ChangesQuery>,
) -> Result<Json<ChangesPage>, Failure> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    // Subscribed before reading: a commit landing between the read and the wait still wakes us.
    let mut head = s.store.subscribe();
    let page = s.store.changes(q.after, limit).await?;
    if !page.changes.is_empty() || wait.is_zero() {
        return Ok(Json(page));
    }
    let after = q.after;
    let _parked = Parked::new(&s.waiting);
    let newer = async move { head.wait_for(|h| *h > after).await.is_ok() };
    tokio::select! {
        _ = tokio::time::timeout(wait, newer) => {}
        () = s.shutdown.cancelled() => {}
    }
    Ok(Json(s.store.changes(after, limit).await?))
}
