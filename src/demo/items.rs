//! The items API: per-tenant JSON items, the tenant named by `x-tenant-id`.
//!
//! Every handler checks the tenant's fences in the same transaction as its read or write, so a
//! write is either refused or committed before a freeze, never after it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::store::{self, StoredItem};
use super::{method_not_allowed, tenant_of, DemoState, Failure};
use crate::tenant::TenantId;

/// The largest item body accepted.
pub(super) const MAX_BODY: usize = 1024 * 1024;
/// The longest item id accepted.
const MAX_ID: usize = 64;

/// An item as the API shows it.
#[derive(Debug, Serialize)]
struct Item {
    id: String,
    tenant: TenantId,
    body: Value,
}

impl Item {
    fn new(tenant: &TenantId, stored: StoredItem) -> Self {
        Item {
            id: stored.id,
            tenant: tenant.clone(),
            body: stored.body,
        }
    }
}

/// `/items` and `/items/{id}`.
pub(super) fn routes() -> Router<Arc<DemoState>> {
    Router::new()
        .route("/items", get(list).post(create).fallback(method_not_allowed))
        .route(
            "/items/{id}",
            get(read).put(replace).delete(remove).fallback(method_not_allowed),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// An item id: 1-64 of ASCII letters, digits, `-` and `_`, so ids are safe in paths and logs.
pub(super) fn check_id(id: &str) -> Result<(), Failure> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Failure::BadRequest(format!(
            "item id {id:?}: use 1-{MAX_ID} of A-Z, a-z, 0-9, '-' and '_'"
        )))
    }
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, Failure> {
    let bytes = body.map_err(|r| Failure::Rejected(r.status(), r.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::BadRequest(format!("malformed JSON: {e}")))
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn create(
    State(state): State<Arc<DemoState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let tenant = tenant_of(&headers)?;
    let item = StoredItem {
        id: new_id(),
        body: parse_body(body)?,
    };
    let id = item.id.clone();
    state
        .store
        .write_everywhere(tenant, move |tx, db, t| store::upsert(tx, db, t, &item))
        .await?;
    let location = [(header::LOCATION, format!("/items/{id}"))];
    Ok((
        StatusCode::CREATED,
        location,
        Json(serde_json::json!({ "id": id })),
    )
        .into_response())
}

async fn list(State(state): State<Arc<DemoState>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    let tenant = tenant_of(&headers)?;
    let t = tenant.clone();
    let stored = state
        .store
        .read(move |c| {
            store::fences(c, &t)?.check(false)?;
            store::list(c, store::HOME, &t)
        })
        .await?;
    let items: Vec<Item> = stored.into_iter().map(|s| Item::new(&tenant, s)).collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn read(
    State(state): State<Arc<DemoState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Item>, Failure> {
    let tenant = tenant_of(&headers)?;
    let t = tenant.clone();
    let stored = state
        .store
        .read(move |c| {
            store::fences(c, &t)?.check(false)?;
            store::get(c, store::HOME, &t, &id)
        })
        .await?;
    stored
        .map(|s| Json(Item::new(&tenant, s)))
        .ok_or(Failure::NotFound)
}

async fn replace(
    State(state): State<Arc<DemoState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Item>, Failure> {
    let tenant = tenant_of(&headers)?;
    check_id(&id)?;
    let item = StoredItem {
        id,
        body: parse_body(body)?,
    };
    let stored = item.clone();
    state
        .store
        .write_everywhere(tenant.clone(), move |tx, db, t| store::upsert(tx, db, t, &stored))
        .await?;
    Ok(Json(Item::new(&tenant, item)))
}

async fn remove(
    State(state): State<Arc<DemoState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Failure> {
    let tenant = tenant_of(&headers)?;
    state
        .store
        .write_everywhere(tenant, move |tx, db, t| store::delete(tx, db, t, &id).map(drop))
        .await?;
    // Deleting an absent item succeeds too: DELETE is idempotent, and a replayed one must not
    // turn into an error.
    Ok(StatusCode::NO_CONTENT)
}
