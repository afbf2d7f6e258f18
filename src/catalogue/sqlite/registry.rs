//! Shard and realm writes. A change to either must keep every tenant that uses it valid, and
//! neither can be deleted while a tenant uses it.
//!
//! Each function runs inside the caller's `BEGIN IMMEDIATE` transaction.

use rusqlite::{params, Connection};

use super::rows::{self, append, encode, invalid_if};
use crate::catalogue::store::{StoreError, Written};
use crate::catalogue::validate::{realm_problems, shard_problems, PlacementOf};
use crate::feed::{ChangeBody, RealmDoc, ShardDoc};
use crate::tenant::{Product, Realm, ShardId, TenantId};

/// See [`crate::catalogue::Store::put_shard`].
pub(super) fn put_shard(
    conn: &Connection,
    id: &ShardId,
    doc: ShardDoc,
) -> Result<Written<ShardDoc>, StoreError> {
    let uses = placements_with(
        conn,
        "SELECT p.tenant, p.product, r.doc FROM tenant_placements p
         JOIN tenants t ON t.id = p.tenant JOIN realms r ON r.name = t.realm
         WHERE p.shard = ?1 ORDER BY p.tenant, p.product",
        id.as_str(),
    )?;
    invalid_if(shard_problems(id, &doc, &uses))?;
    let created = rows::shard(conn, id.as_str())?.is_none();
    conn.prepare_cached(
        "INSERT INTO shards (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
    )?
    .execute(params![id.as_str(), encode(&doc)?])?;
    append(
        conn,
        &ChangeBody::Shard {
            id: id.clone(),
            doc: Some(doc.clone()),
        },
    )?;
    Ok(Written { doc, created })
}

/// See [`crate::catalogue::Store::delete_shard`].
pub(super) fn delete_shard(conn: &Connection, id: &ShardId) -> Result<(), StoreError> {
    if rows::shard(conn, id.as_str())?.is_none() {
        return Err(StoreError::NotFound);
    }
    let users = rows::names(
        conn,
        "SELECT DISTINCT tenant FROM tenant_placements WHERE shard = ?1 ORDER BY tenant",
        id.as_str(),
    )?;
    in_use(&format!("shard {id}"), &users)?;
    conn.prepare_cached("DELETE FROM shards WHERE id = ?1")?
        .execute([id.as_str()])?;
    append(
        conn,
        &ChangeBody::Shard {
            id: id.clone(),
            doc: None,
        },
    )?;
    Ok(())
}

/// See [`crate::catalogue::Store::put_realm`].
pub(super) fn put_realm(
    conn: &Connection,
    name: &Realm,
    doc: RealmDoc,
) -> Result<Written<RealmDoc>, StoreError> {
    let uses = placements_with(
        conn,
        "SELECT p.tenant, p.product, s.doc FROM tenant_placements p
         JOIN tenants t ON t.id = p.tenant JOIN shards s ON s.id = p.shard
         WHERE t.realm = ?1 ORDER BY p.tenant, p.product",
        name.as_str(),
    )?;
    invalid_if(realm_problems(name, &doc, &uses))?;
    let created = rows::realm(conn, name.as_str())?.is_none();
    conn.prepare_cached(
        "INSERT INTO realms (name, doc) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
    )?
    .execute(params![name.as_str(), encode(&doc)?])?;
    append(
        conn,
        &ChangeBody::Realm {
            name: name.clone(),
            doc: Some(doc.clone()),
        },
    )?;
    Ok(Written { doc, created })
}

/// See [`crate::catalogue::Store::delete_realm`].
pub(super) fn delete_realm(conn: &Connection, name: &Realm) -> Result<(), StoreError> {
    if rows::realm(conn, name.as_str())?.is_none() {
        return Err(StoreError::NotFound);
    }
    let users = rows::names(
        conn,
        "SELECT id FROM tenants WHERE realm = ?1 AND deleted = 0 ORDER BY id",
        name.as_str(),
    )?;
    in_use(&format!("realm {name}"), &users)?;
    conn.prepare_cached("DELETE FROM realms WHERE name = ?1")?
        .execute([name.as_str()])?;
    append(
        conn,
        &ChangeBody::Realm {
            name: name.clone(),
            doc: None,
        },
    )?;
    Ok(())
}

/// Placements selected by `sql` as `(tenant, product, JSON doc of the related entity)`.
fn placements_with<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    key: &str,
) -> Result<Vec<PlacementOf<T>>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (tenant, product, json) = row?;
        Ok(PlacementOf {
            tenant: TenantId::new(&tenant).map_err(StoreError::storage)?,
            product: Product::new(&product).map_err(StoreError::storage)?,
            with: rows::decode(&json)?,
        })
    })
    .collect()
}

fn in_use(what: &str, users: &[String]) -> Result<(), StoreError> {
    if users.is_empty() {
        Ok(())
    } else {
        Err(StoreError::InUse(format!(
            "{what} is used by tenants {}",
            users.join(", ")
        )))
    }
}
