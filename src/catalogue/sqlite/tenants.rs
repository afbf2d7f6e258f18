//! Tenant writes: compare-and-set versions, tombstones, host ownership, placements.
//!
//! Each function runs inside the caller's `BEGIN IMMEDIATE` transaction and appends its change
//! there; an `Err` rolls everything back.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{self, append, encode};
use crate::catalogue::store::{StoreError, Written};
use crate::catalogue::validate::tenant_problems;
use crate::feed::{ChangeBody, ShardDoc, TenantDoc};
use crate::tenant::{Host, ShardId, TenantId};

/// The tenant's stored version (kept by tombstones) and whether it is live; `(0, false)` when
/// it never existed.
fn version_of(conn: &Connection, id: &TenantId) -> Result<(u64, bool), StoreError> {
    let row = conn
        .prepare_cached("SELECT version, deleted FROM tenants WHERE id = ?1")?
        .query_row([id.as_str()], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, bool>(1)?)))
        .optional()?;
    Ok(row.map_or((0, false), |(version, deleted)| (version, !deleted)))
}

/// `VersionConflict` unless `if_match` is absent or equals `current`.
pub(super) fn check_if_match(if_match: Option<u64>, current: u64) -> Result<(), StoreError> {
    match if_match {
        Some(expected) if expected != current => Err(StoreError::VersionConflict { current }),
        _ => Ok(()),
    }
}

/// See [`crate::catalogue::Store::put_tenant`].
pub(super) fn put(
    conn: &Connection,
    id: &TenantId,
    mut doc: TenantDoc,
    if_match: Option<u64>,
) -> Result<Written<TenantDoc>, StoreError> {
    let (version, live) = version_of(conn, id)?;
    check_if_match(if_match, if live { version } else { 0 })?;
    validate(conn, id, &doc)?;
    check_hosts(conn, id, &doc.hosts)?;
    doc.version = version + 1;
    conn.prepare_cached(
        "INSERT INTO tenants (id, version, realm, doc, deleted) VALUES (?1, ?2, ?3, ?4, 0)
         ON CONFLICT (id) DO UPDATE SET
             version = excluded.version, realm = excluded.realm, doc = excluded.doc, deleted = 0",
    )?
    .execute(params![
        id.as_str(),
        doc.version,
        doc.realm.as_str(),
        encode(&doc)?
    ])?;
    unlink(conn, id)?;
    link(conn, &doc)?;
    append(
        conn,
        &ChangeBody::Tenant {
            id: id.clone(),
            version: doc.version,
            doc: Some(doc.clone()),
        },
    )?;
    Ok(Written { doc, created: !live })
}

/// See [`crate::catalogue::Store::delete_tenant`].
pub(super) fn delete(conn: &Connection, id: &TenantId, if_match: Option<u64>) -> Result<u64, StoreError> {
    let (version, live) = version_of(conn, id)?;
    if !live {
        return Err(StoreError::NotFound);
    }
    check_if_match(if_match, version)?;
    let version = version + 1;
    unlink(conn, id)?;
    conn.prepare_cached(
        "UPDATE tenants SET version = ?2, realm = NULL, doc = NULL, deleted = 1 WHERE id = ?1",
    )?
    .execute(params![id.as_str(), version])?;
    append(
        conn,
        &ChangeBody::Tenant {
            id: id.clone(),
            version,
            doc: None,
        },
    )?;
    Ok(version)
}

/// The live tenant `id`.
pub(super) fn get(conn: &Connection, id: &TenantId) -> Result<TenantDoc, StoreError> {
    find(conn, id)?.ok_or(StoreError::NotFound)
}

/// The live tenant `id`, if any.
pub(super) fn find(conn: &Connection, id: &TenantId) -> Result<Option<TenantDoc>, StoreError> {
    rows::one_doc(
        conn,
        "SELECT doc FROM tenants WHERE id = ?1 AND deleted = 0",
        id.as_str(),
    )
}

/// The live tenant owning `host`, if any.
pub(super) fn by_host(conn: &Connection, host: &Host) -> Result<Option<TenantDoc>, StoreError> {
    rows::one_doc(
        conn,
        "SELECT t.doc FROM tenant_hosts h JOIN tenants t ON t.id = h.tenant
         WHERE h.host = ?1 AND t.deleted = 0",
        host.as_str(),
    )
}

/// Every live tenant, by id.
pub(super) fn list(conn: &Connection) -> Result<Vec<TenantDoc>, StoreError> {
    rows::all_docs(conn, "SELECT doc FROM tenants WHERE deleted = 0 ORDER BY id")
}

fn validate(conn: &Connection, id: &TenantId, doc: &TenantDoc) -> Result<(), StoreError> {
    let realm = rows::realm(conn, doc.realm.as_str())?;
    let mut shards: BTreeMap<ShardId, ShardDoc> = BTreeMap::new();
    for placement in doc.placements.values() {
        if let Some(shard) = rows::shard(conn, placement.shard.as_str())? {
            shards.insert(placement.shard.clone(), shard);
        }
    }
    let problems = tenant_problems(id, doc, realm.as_ref(), &shards);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(problems))
    }
}

fn check_hosts(conn: &Connection, id: &TenantId, hosts: &[Host]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT tenant FROM tenant_hosts WHERE host = ?1 AND tenant != ?2")?;
    for host in hosts {
        let owner: Option<String> = stmt
            .query_row([host.as_str(), id.as_str()], |r| r.get(0))
            .optional()?;
        if let Some(owner) = owner {
            let owner = TenantId::new(&owner).map_err(StoreError::storage)?;
            return Err(StoreError::HostTaken {
                host: host.clone(),
                owner,
            });
        }
    }
    Ok(())
}

/// Drops the tenant's host and placement rows.
fn unlink(conn: &Connection, id: &TenantId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM tenant_hosts WHERE tenant = ?1")?
        .execute([id.as_str()])?;
    conn.prepare_cached("DELETE FROM tenant_placements WHERE tenant = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Writes the host and placement rows of `doc`; the host primary key refuses a second owner.
fn link(conn: &Connection, doc: &TenantDoc) -> Result<(), StoreError> {
    let mut hosts = conn.prepare_cached("INSERT INTO tenant_hosts (host, tenant) VALUES (?1, ?2)")?;
    for host in &doc.hosts {
        hosts.execute([host.as_str(), doc.id.as_str()])?;
    }
    let mut placements =
        conn.prepare_cached("INSERT INTO tenant_placements (tenant, product, shard) VALUES (?1, ?2, ?3)")?;
    for (product, placement) in &doc.placements {
        placements.execute([doc.id.as_str(), product.as_str(), placement.shard.as_str()])?;
    }
    Ok(())
}
