//! Tenant writes: compare-and-set versions, tombstones, host ownership, placements.

use std::collections::BTreeMap;

use super::Rows;
use crate::catalogue::store::{StoreError, Written};
use crate::catalogue::validate::tenant_problems;
use crate::feed::{ChangeBody, ShardDoc, TenantDoc};
use crate::tenant::{ShardId, TenantId};

/// `VersionConflict` unless `if_match` is absent or equals `current`.
pub(in crate::catalogue) fn check_if_match(if_match: Option<u64>, current: u64) -> Result<(), StoreError> {
    match if_match {
        Some(expected) if expected != current => Err(StoreError::VersionConflict { current }),
        _ => Ok(()),
    }
}

/// See [`crate::catalogue::Store::put_tenant`].
pub(in crate::catalogue) async fn put(
    rows: &impl Rows,
    id: &TenantId,
    mut doc: TenantDoc,
    if_match: Option<u64>,
) -> Result<Written<TenantDoc>, StoreError> {
    let (version, live) = rows.tenant_version(id).await?;
    check_if_match(if_match, if live { version } else { 0 })?;
    validate(rows, id, &doc).await?;
    for host in &doc.hosts {
        if let Some(owner) = rows.host_owner(host, id).await? {
            return Err(StoreError::HostTaken {
                host: host.clone(),
                owner,
            });
        }
    }
    doc.version = version + 1;
    rows.write_tenant(&doc).await?;
    rows.append(&ChangeBody::Tenant {
        id: id.clone(),
        version: doc.version,
        doc: Some(doc.clone()),
    })
    .await?;
    Ok(Written { doc, created: !live })
}

/// See [`crate::catalogue::Store::put_tenants`]: each document as [`put`] without `If-Match`;
/// a broken rule names the index and id of its document.
pub(in crate::catalogue) async fn put_all(
    rows: &impl Rows,
    docs: Vec<TenantDoc>,
) -> Result<usize, StoreError> {
    let n = docs.len();
    for (i, doc) in docs.into_iter().enumerate() {
        let id = doc.id.clone();
        put(rows, &id, doc, None).await.map_err(|e| match e {
            StoreError::Invalid(problems) => StoreError::Invalid(
                problems
                    .into_iter()
                    .map(|p| format!("tenants[{i}] ({id}): {p}"))
                    .collect(),
            ),
            // Conflicts name the host and its owner already.
            other => other,
        })?;
    }
    Ok(n)
}

/// See [`crate::catalogue::Store::delete_tenant`].
pub(in crate::catalogue) async fn delete(
    rows: &impl Rows,
    id: &TenantId,
    if_match: Option<u64>,
) -> Result<u64, StoreError> {
    let (version, live) = rows.tenant_version(id).await?;
    if !live {
        return Err(StoreError::NotFound);
    }
    check_if_match(if_match, version)?;
    let version = version + 1;
    rows.tombstone_tenant(id, version).await?;
    rows.append(&ChangeBody::Tenant {
        id: id.clone(),
        version,
        doc: None,
    })
    .await?;
    Ok(version)
}

async fn validate(rows: &impl Rows, id: &TenantId, doc: &TenantDoc) -> Result<(), StoreError> {
    let realm = rows.realm(&doc.realm).await?;
    let mut shards: BTreeMap<ShardId, ShardDoc> = BTreeMap::new();
    for placement in doc.placements.values() {
        if let Some(shard) = rows.shard(&placement.shard).await? {
            shards.insert(placement.shard.clone(), shard);
        }
    }
    super::invalid_if(tenant_problems(id, doc, realm.as_ref(), &shards))
}
