//! Mover hooks (`/mover/...`), called by the migration orchestrator: freeze and unfreeze a
//! tenant, export its items, import them on another shard, release the tenant (the moved
//! fence) and delete its items. Every hook is idempotent, so the orchestrator can resume a move
//! by calling the hook of the recorded phase again.
//!
//! Operator-only in a real deployment; on the shard's one listener here, for the demo.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::items::{check_id, MAX_BODY};
use super::store::{self, Fences, StoredItem};
use super::{method_not_allowed, DemoState, Failure};
use crate::tenant::TenantId;

/// An import carries a whole tenant: allow many full-size items.
const MAX_IMPORT: usize = 256 * MAX_BODY;

/// `{"tenant"}`: the body of freeze, unfreeze and delete, and the query of export.
#[derive(Debug, Deserialize)]
struct TenantOnly {
    tenant: TenantId,
}

/// `{"tenant", "version"}`: the body of release.
#[derive(Debug, Deserialize)]
struct Release {
    tenant: TenantId,
    version: u64,
}

/// `{"tenant", "items": [{"id", "body"}]}`: what export answers and import takes.
#[derive(Debug, Serialize, Deserialize)]
struct Export {
    tenant: TenantId,
    items: Vec<StoredItem>,
}

/// What every state-changing hook answers: the tenant's state on this shard afterwards.
#[derive(Debug, Serialize)]
struct HookAnswer {
    tenant: TenantId,
    frozen: bool,
    moved: Option<u64>,
    items: u64,
}

/// The hooks, under `/mover`.
pub(super) fn routes() -> Router<Arc<DemoState>> {
    Router::new()
        .route("/freeze", post(freeze).fallback(method_not_allowed))
        .route("/unfreeze", post(unfreeze).fallback(method_not_allowed))
        .route("/release", post(release).fallback(method_not_allowed))
        .route("/delete", post(delete).fallback(method_not_allowed))
        .route("/import", post(import).fallback(method_not_allowed))
        .route("/export", get(export).fallback(method_not_allowed))
        .fallback(|| async { Failure::NotFound })
        .layer(DefaultBodyLimit::max(MAX_IMPORT))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    body.map(|Json(b)| b)
        .map_err(|r| Failure::Rejected(r.status(), r.body_text()))
}

/// Runs `change` in one transaction and answers the tenant's state after it.
async fn hook<F>(state: &DemoState, tenant: TenantId, change: F) -> Result<Json<HookAnswer>, Failure>
where
    F: FnOnce(&rusqlite::Connection, &TenantId) -> Result<(), Failure> + Send + 'static,
{
    state
        .store
        .write(move |tx| {
            change(tx, &tenant)?;
            let Fences { frozen, moved } = store::fences(tx, &tenant)?;
            let items = store::count(tx, &tenant)?;
            Ok(Json(HookAnswer {
                tenant,
                frozen,
                moved,
                items,
            }))
        })
        .await
}

async fn freeze(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<TenantOnly>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    hook(&state, body(b)?.tenant, store::freeze).await
}

async fn unfreeze(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<TenantOnly>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    hook(&state, body(b)?.tenant, store::unfreeze).await
}

async fn release(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<Release>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    let Release { tenant, version } = body(b)?;
    hook(&state, tenant, move |c, t| store::release(c, t, version)).await
}

/// Deletes the tenant's items; the fences stay, so a released tenant keeps answering 421.
async fn delete(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<TenantOnly>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    hook(&state, body(b)?.tenant, |c, t| store::delete_all(c, t).map(drop)).await
}

/// Upserts the items and clears the tenant's fences: it lives here now (or again).
async fn import(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<Export>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    let Export { tenant, items } = body(b)?;
    for item in &items {
        check_id(&item.id)?;
    }
    hook(&state, tenant, move |c, t| {
        for item in &items {
            store::upsert(c, t, item)?;
        }
        store::clear_fences(c, t)
    })
    .await
}

/// Every item of the tenant, whatever its fences: export runs while the tenant is frozen.
async fn export(
    State(state): State<Arc<DemoState>>,
    q: Result<Query<TenantOnly>, QueryRejection>,
) -> Result<Json<Export>, Failure> {
    let Query(TenantOnly { tenant }) = q.map_err(|r| Failure::Rejected(r.status(), r.body_text()))?;
    state
        .store
        .read(move |c| {
            let items = store::list(c, &tenant)?;
            Ok(Json(Export { tenant, items }))
        })
        .await
}
