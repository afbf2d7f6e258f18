//! Tenant writes: compare-and-set versions, tombstones, host ownership, placements.

use std::collections::{BTreeMap, HashMap};

use super::Rows;
use crate::catalogue::store::{StoreError, Written};
use crate::catalogue::validate::tenant_problems;
use crate::feed::{ChangeBody, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Realm, ShardId, TenantId};

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
    // Independent reads, asked at once (pipelined on one PostgreSQL connection).
    let ((version, live), realm, shards, owners) = futures::try_join!(
        rows.tenant_version(id),
        rows.realm(&doc.realm),
        futures::future::try_join_all(doc.placements.values().map(|p| rows.shard(&p.shard))),
        futures::future::try_join_all(doc.hosts.iter().map(|h| rows.host_owner(h, id))),
    )?;
    check_if_match(if_match, if live { version } else { 0 })?;
    let shards: BTreeMap<ShardId, ShardDoc> =
        shards.into_iter().flatten().map(|s| (s.id.clone(), s)).collect();
    super::invalid_if(tenant_problems(id, &doc, realm.as_ref(), &shards))?;
    for (host, owner) in doc.hosts.iter().zip(owners) {
        if let Some(owner) = owner {
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

/// See [`crate::catalogue::Store::put_tenants`]: each document as [`put`] without `If-Match`
/// would be, in order, with the same rules and the same changes; a broken rule names the index
/// and id of its document. The store is asked once per batch (versions, the owners of the
/// batch's hosts, each realm and shard once) and written in bulk, so an import costs a few
/// statements per batch rather than a dozen per tenant.
pub(in crate::catalogue) async fn put_all(
    rows: &impl Rows,
    docs: Vec<TenantDoc>,
) -> Result<usize, StoreError> {
    let n = docs.len();
    let ids: Vec<&TenantId> = docs.iter().map(|d| &d.id).collect();
    let mut versions = rows.tenant_versions(&ids).await?;
    let hosts: Vec<&Host> = docs.iter().flat_map(|d| &d.hosts).collect();
    let mut owners = rows.host_owners(&hosts).await?;
    // The hosts of `owners` by tenant, so a tenant's rewrite releases them.
    let mut held: HashMap<TenantId, Vec<Host>> = HashMap::new();
    for (host, owner) in &owners {
        held.entry(owner.clone()).or_default().push(host.clone());
    }
    let mut realms = HashMap::new();
    let mut shards = HashMap::new();
    let mut finals: HashMap<TenantId, usize> = HashMap::with_capacity(n);
    let mut changes = Vec::with_capacity(n);
    let mut written = Vec::with_capacity(n);
    for (i, mut doc) in docs.into_iter().enumerate() {
        let id = doc.id.clone();
        let named = |e: StoreError| match e {
            StoreError::Invalid(problems) => StoreError::Invalid(
                problems
                    .into_iter()
                    .map(|p| format!("tenants[{i}] ({id}): {p}"))
                    .collect(),
            ),
            // Conflicts name the host and its owner already.
            other => other,
        };
        let (version, _) = versions.get(&id).copied().unwrap_or((0, false));
        validate_cached(rows, &id, &doc, &mut realms, &mut shards)
            .await
            .map_err(named)?;
        for host in &doc.hosts {
            if let Some(owner) = owners.get(host).filter(|o| **o != id) {
                return Err(StoreError::HostTaken {
                    host: host.clone(),
                    owner: owner.clone(),
                });
            }
        }
        for host in held.remove(&id).unwrap_or_default() {
            owners.remove(&host);
        }
        for host in &doc.hosts {
            owners.insert(host.clone(), id.clone());
        }
        held.insert(id.clone(), doc.hosts.clone());
        doc.version = version + 1;
        versions.insert(id.clone(), (doc.version, true));
        changes.push(ChangeBody::Tenant {
            id: id.clone(),
            version: doc.version,
            doc: Some(doc.clone()),
        });
        finals.insert(id, written.len());
        written.push(doc);
    }
    // A tenant named twice is written once, as its last document.
    let mut last: Vec<usize> = finals.into_values().collect();
    last.sort_unstable();
    let docs: Vec<&TenantDoc> = last.iter().map(|&i| &written[i]).collect();
    rows.write_tenants(&docs).await?;
    rows.append_all(&changes).await?;
    Ok(n)
}

/// The checks of [`put`] with the batch's realms and shards looked up once each.
async fn validate_cached(
    rows: &impl Rows,
    id: &TenantId,
    doc: &TenantDoc,
    realms: &mut HashMap<Realm, Option<RealmDoc>>,
    shards: &mut HashMap<ShardId, Option<ShardDoc>>,
) -> Result<(), StoreError> {
    if !realms.contains_key(&doc.realm) {
        realms.insert(doc.realm.clone(), rows.realm(&doc.realm).await?);
    }
    let mut found: BTreeMap<ShardId, ShardDoc> = BTreeMap::new();
    for placement in doc.placements.values() {
        if !shards.contains_key(&placement.shard) {
            shards.insert(placement.shard.clone(), rows.shard(&placement.shard).await?);
        }
        if let Some(Some(shard)) = shards.get(&placement.shard) {
            found.insert(placement.shard.clone(), shard.clone());
        }
    }
    let realm = realms.get(&doc.realm).and_then(Option::as_ref);
    super::invalid_if(tenant_problems(id, doc, realm, &found))
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
