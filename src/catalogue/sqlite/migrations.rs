//! Tenant moves: creation with its checks, phase changes by compare-and-set, and the tenant
//! placement change each phase brings, written in the same transaction.
//!
//! Each function runs inside the caller's `BEGIN IMMEDIATE` transaction and appends its
//! changes there; an `Err` rolls everything back.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{self, append, encode, invalid_if};
use super::tenants;
use crate::catalogue::store::StoreError;
use crate::catalogue::validate::{migration_problems, phase_placement, region_delta};
use crate::feed::{ChangeBody, MigrationDoc, NewMigration, Phase, ShardDoc, TenantDoc};
use crate::tenant::{Product, TenantId};

/// The row number of a migration id `m-<n>`; anything else names no migration.
fn row_of(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("m-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// See [`crate::catalogue::Store::create_migration`].
pub(super) fn create(conn: &Connection, req: NewMigration, now_ms: u64) -> Result<MigrationDoc, StoreError> {
    if let Some(open) = open_of(conn, &req.tenant, &req.product)? {
        return Err(StoreError::MigrationOpen { id: open });
    }
    let tenant = tenants::find(conn, &req.tenant)?;
    let realm = match &tenant {
        Some(t) => rows::realm(conn, t.realm.as_str())?,
        None => None,
    };
    let target = rows::shard(conn, req.to.as_str())?;
    invalid_if(migration_problems(
        &req,
        tenant.as_ref(),
        realm.as_ref(),
        target.as_ref(),
    ))?;
    let (Some(tenant), Some(target)) = (tenant, target) else {
        return Err(StoreError::storage("validation passed without tenant or target"));
    };
    let source = source_shard(conn, &tenant, &req.product)?;
    let (regions_to_add, regions_to_remove) = region_delta(&source, &target);
    let n: i64 = conn.query_row("SELECT COALESCE(MAX(n), 0) + 1 FROM migrations", [], |r| r.get(0))?;
    let doc = MigrationDoc {
        id: format!("m-{n}"),
        tenant: req.tenant,
        product: req.product,
        from: source.id,
        to: req.to,
        phase: Phase::Planned,
        version: 1,
        regions_to_add,
        regions_to_remove,
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    conn.prepare_cached("INSERT INTO migrations (n, tenant, product, open, doc) VALUES (?1, ?2, ?3, 1, ?4)")?
        .execute(params![
            n,
            doc.tenant.as_str(),
            doc.product.as_str(),
            encode(&doc)?
        ])?;
    log(conn, &doc)?;
    Ok(doc)
}

/// See [`crate::catalogue::Store::set_phase`].
pub(super) fn set_phase(
    conn: &Connection,
    id: &str,
    phase: Phase,
    if_match: Option<u64>,
    now_ms: u64,
) -> Result<MigrationDoc, StoreError> {
    let mut doc = get(conn, id)?;
    tenants::check_if_match(if_match, doc.version)?;
    if !doc.phase.can_become(phase) {
        return Err(StoreError::Invalid(vec![format!(
            "migration {id} cannot go from {} to {phase}",
            doc.phase
        )]));
    }
    let tenant = tenants::find(conn, &doc.tenant)?;
    let placement = phase_placement(&doc, phase, tenant.as_ref()).map_err(StoreError::Invalid)?;
    doc.phase = phase;
    doc.version += 1;
    doc.updated_ms = now_ms;
    let n = row_of(id).ok_or(StoreError::NotFound)?;
    conn.prepare_cached("UPDATE migrations SET open = ?2, doc = ?3 WHERE n = ?1")?
        .execute(params![n, phase.is_open(), encode(&doc)?])?;
    // The migration's change first: a reader seeing the tenant move knows why it moved.
    log(conn, &doc)?;
    if let (Some(placement), Some(mut tenant)) = (placement, tenant) {
        let version = tenant.version;
        let tenant_id = tenant.id.clone();
        tenant.placements.insert(doc.product.clone(), placement);
        tenants::put(conn, &tenant_id, tenant, Some(version))?;
    }
    Ok(doc)
}

/// See [`crate::catalogue::Store::get_migration`].
pub(super) fn get(conn: &Connection, id: &str) -> Result<MigrationDoc, StoreError> {
    let n = row_of(id).ok_or(StoreError::NotFound)?;
    let json: Option<String> = conn
        .prepare_cached("SELECT doc FROM migrations WHERE n = ?1")?
        .query_row([n], |r| r.get(0))
        .optional()?;
    rows::decode(&json.ok_or(StoreError::NotFound)?)
}

/// See [`crate::catalogue::Store::list_migrations`].
pub(super) fn list(conn: &Connection, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError> {
    match tenant {
        None => rows::all_docs(conn, "SELECT doc FROM migrations ORDER BY n DESC"),
        Some(t) => {
            let docs = rows::names(
                conn,
                "SELECT doc FROM migrations WHERE tenant = ?1 ORDER BY n DESC",
                t.as_str(),
            )?;
            docs.iter().map(|json| rows::decode(json)).collect()
        }
    }
}

/// The id of the open migration of `tenant`'s `product`, if any.
fn open_of(conn: &Connection, tenant: &TenantId, product: &Product) -> Result<Option<String>, StoreError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT n FROM migrations WHERE tenant = ?1 AND product = ?2 AND open = 1")?
        .query_row([tenant.as_str(), product.as_str()], |r| r.get(0))
        .optional()?;
    Ok(n.map(|n| format!("m-{n}")))
}

/// The shard `tenant`'s `product` is on now; validation made sure it has one.
fn source_shard(conn: &Connection, tenant: &TenantDoc, product: &Product) -> Result<ShardDoc, StoreError> {
    let placement = tenant
        .placements
        .get(product)
        .ok_or_else(|| StoreError::storage("validation passed without a placement"))?;
    // The placement's foreign key keeps its shard registered.
    rows::shard(conn, placement.shard.as_str())?
        .ok_or_else(|| StoreError::storage(format!("placed on unregistered shard {}", placement.shard)))
}

fn log(conn: &Connection, doc: &MigrationDoc) -> Result<u64, StoreError> {
    append(
        conn,
        &ChangeBody::Migration {
            id: doc.id.clone(),
            doc: doc.clone(),
        },
    )
}
