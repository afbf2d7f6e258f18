//! `/v1/migrations`: tenant moves, created with their checks and advanced one phase at a time
//! by compare-and-set on the migration's version.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::extract::{Doc, Id, IfMatch, Params};
use super::{etag, Answer, AppState, Failure};
use crate::feed::{MigrationDoc, NewMigration, PhaseChange};
use crate::tenant::TenantId;

/// `POST /v1/migrations`: 201 with the new migration in phase `planned`.
pub(super) async fn create(State(s): State<AppState>, Doc(req): Doc<NewMigration>) -> Answer {
    let doc = s.store.create_migration(req).await?;
    Ok((StatusCode::CREATED, etag(doc.version), Json(doc)).into_response())
}

/// `GET /v1/migrations/{id}`.
pub(super) async fn get_one(State(s): State<AppState>, Id(id): Id<String>) -> Answer {
    let doc = s.store.get_migration(&id).await?;
    Ok((etag(doc.version), Json(doc)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    tenant: Option<TenantId>,
}

/// `GET /v1/migrations[?tenant=ID]`: newest first.
pub(super) async fn list(
    State(s): State<AppState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Vec<MigrationDoc>>, Failure> {
    Ok(Json(s.store.list_migrations(q.tenant.as_ref()).await?))
}

/// `PUT /v1/migrations/{id}/phase` with an optional `If-Match` on the migration's version.
pub(super) async fn set_phase(
    State(s): State<AppState>,
    Id(id): Id<String>,
    IfMatch(if_match): IfMatch,
    Doc(change): Doc<PhaseChange>,
) -> Answer {
    let doc = s.store.set_phase(&id, change.phase, if_match).await?;
    Ok((etag(doc.version), Json(doc)).into_response())
}
