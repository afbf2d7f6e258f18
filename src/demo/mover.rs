//! Mover hooks (`/mover/...`), called by the migration orchestrator: freeze and unfreeze a
//! tenant, export its items, import them on another shard, release the tenant (the moved
//! fence) and delete its items. Every hook is idempotent, so the orchestrator can resume a move
//! by calling the hook of the recorded phase again.
//!
//! Import and delete act on data regions: copy adds data to the regions a move adds, clean
//! removes it from the regions a move drops (`"regions"`, default: every region of the shard).
//! `GET /mover/regions?tenant=` says how many items the tenant has in each region.
//!
//! Operator-only in a real deployment; on the shard's one listener here, for the demo.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::items::{check_id, MAX_BODY};
use super::store::{self, Fences, StoredItem};
use super::{method_not_allowed, DemoState, Failure};
use crate::tenant::{Region, TenantId};

/// An import carries a whole tenant: allow many full-size items.
const MAX_IMPORT: usize = 256 * MAX_BODY;

/// `{"tenant"}`: the body of freeze and unfreeze, and the query of export and regions.
#[derive(Debug, Deserialize)]
struct TenantOnly {
    tenant: TenantId,
}

/// `{"tenant", "regions"?}`: the body of delete.
#[derive(Debug, Deserialize)]
struct InRegions {
    tenant: TenantId,
    /// The data regions to act on; every region of the shard when absent.
    regions: Option<Vec<Region>>,
}

/// `{"tenant", "version"}`: the body of release.
#[derive(Debug, Deserialize)]
struct Release {
    tenant: TenantId,
    version: u64,
}

/// `{"tenant", "items": [{"id", "body"}], "regions"?}`: what export answers and import takes
/// (import writes to `regions`, every region of the shard when absent).
#[derive(Debug, Serialize, Deserialize)]
struct Export {
    tenant: TenantId,
    items: Vec<StoredItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regions: Option<Vec<Region>>,
}

/// What every state-changing hook answers: the tenant's state on this shard afterwards, with
/// its item count in each data region (`items`: the home region's).
#[derive(Debug, Serialize)]
struct HookAnswer {
    tenant: TenantId,
    frozen: bool,
    moved: Option<u64>,
    items: u64,
    regions: BTreeMap<Region, u64>,
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
        .route("/regions", get(regions).fallback(method_not_allowed))
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
    let regions = state.store.regions().to_vec();
    state
        .store
        .write(move |tx| {
            change(tx, &tenant)?;
            let Fences { frozen, moved } = store::fences(tx, &tenant)?;
            let counted = counts(tx, &regions, &tenant)?;
            Ok(Json(HookAnswer {
                tenant,
                frozen,
                moved,
                items: counted.first().map_or(0, |(_, n)| *n),
                regions: counted.into_iter().collect(),
            }))
        })
        .await
}

/// The tenant's item count in each of `regions` (the shard's, home first).
fn counts(
    c: &rusqlite::Connection,
    regions: &[Region],
    tenant: &TenantId,
) -> Result<Vec<(Region, u64)>, Failure> {
    regions
        .iter()
        .enumerate()
        .map(|(i, r)| Ok((r.clone(), store::count(c, &store::schema(i), tenant)?)))
        .collect()
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

/// Deletes the tenant's items from the given regions; the fences stay, so a released tenant
/// keeps answering 421.
async fn delete(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<InRegions>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    let InRegions { tenant, regions } = body(b)?;
    let dbs = state.store.schemas(regions.as_deref())?;
    hook(&state, tenant, move |c, t| {
        dbs.iter()
            .try_for_each(|db| store::delete_all(c, db, t).map(drop))
    })
    .await
}

/// Upserts the items into the given regions and clears the tenant's fences: it lives here now
/// (or again). With no regions (a move between shards that share every region) only the fences
/// change.
async fn import(
    State(state): State<Arc<DemoState>>,
    b: Result<Json<Export>, JsonRejection>,
) -> Result<Json<HookAnswer>, Failure> {
    let Export {
        tenant,
        items,
        regions,
    } = body(b)?;
    for item in &items {
        check_id(&item.id)?;
    }
    let dbs = state.store.schemas(regions.as_deref())?;
    hook(&state, tenant, move |c, t| {
        for db in &dbs {
            for item in &items {
                store::upsert(c, db, t, item)?;
            }
        }
        store::clear_fences(c, t)
    })
    .await
}

/// The tenant's item count in each data region of the shard.
async fn regions(
    State(state): State<Arc<DemoState>>,
    q: Result<Query<TenantOnly>, QueryRejection>,
) -> Result<Json<BTreeMap<Region, u64>>, Failure> {
    let Query(TenantOnly { tenant }) = q.map_err(|r| Failure::Rejected(r.status(), r.body_text()))?;
    let regions = state.store.regions().to_vec();
    state
        .store
        .read(move |c| Ok(Json(counts(c, &regions, &tenant)?.into_iter().collect())))
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
            let items = store::list(c, store::HOME, &tenant)?;
            Ok(Json(Export {
                tenant,
                items,
                regions: None,
            }))
        })
        .await
}
