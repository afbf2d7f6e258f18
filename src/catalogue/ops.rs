//! The catalogue's writes, written once over [`Rows`], the row-level operations a store offers
//! inside one transaction. Every store (SQLite, PostgreSQL) implements [`Rows`] and runs these
//! functions in its own transaction, so the rules (compare-and-set, host ownership, the shard
//! and realm checks, migrations) and the order of the changes they log cannot drift apart.
//!
//! Each function runs inside the caller's write transaction and appends its changes there; an
//! `Err` rolls everything back.

pub(super) mod migrations;
pub(super) mod registry;
pub(super) mod tenants;

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::catalogue::store::StoreError;
use crate::catalogue::validate::PlacementOf;
use crate::feed::{ChangeBody, ChangesPage, MigrationDoc, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Product, Realm, ShardId, TenantId};

/// The row-level reads and writes of a catalogue store, inside one transaction (or, for the
/// reads of the API, on one connection). Writers hold the store's write lock for the whole
/// transaction, so a read here sees every write committed before it.
///
/// SQLite's implementation never suspends (its futures complete at their first poll, on the
/// blocking pool); PostgreSQL's awaits the server.
#[allow(
    async_fn_in_trait,
    reason = "crate-private; every caller names the concrete store"
)]
pub(crate) trait Rows {
    /// The tenant's stored version (kept by tombstones) and whether it is live; `(0, false)`
    /// when it never existed.
    async fn tenant_version(&self, id: &TenantId) -> Result<(u64, bool), StoreError>;
    /// The live tenant `id`, if any.
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantDoc>, StoreError>;
    /// The live tenant owning `host`, if any.
    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError>;
    /// Every live tenant, by id.
    async fn tenants(&self) -> Result<Vec<TenantDoc>, StoreError>;
    /// At most `limit` live tenants with ids after `after` (from the first with `""`), by id.
    async fn tenants_page(&self, after: &str, limit: usize) -> Result<Vec<TenantDoc>, StoreError>;
    /// The tenant other than `except` that owns `host`, if any.
    async fn host_owner(&self, host: &Host, except: &TenantId) -> Result<Option<TenantId>, StoreError>;
    /// Writes `doc` as the live tenant (its version included) and replaces its host and
    /// placement rows; a host another tenant holds is refused by the store's unique key.
    async fn write_tenant(&self, doc: &TenantDoc) -> Result<(), StoreError>;
    /// Marks tenant `id` deleted at `version` and drops its host and placement rows.
    async fn tombstone_tenant(&self, id: &TenantId, version: u64) -> Result<(), StoreError>;

    /// The realm `name`, if registered.
    async fn realm(&self, name: &Realm) -> Result<Option<RealmDoc>, StoreError>;
    /// Every realm, by name.
    async fn realms(&self) -> Result<Vec<RealmDoc>, StoreError>;
    /// Creates or replaces realm `name`.
    async fn write_realm(&self, name: &Realm, doc: &RealmDoc) -> Result<(), StoreError>;
    /// Deletes realm `name`.
    async fn remove_realm(&self, name: &Realm) -> Result<(), StoreError>;
    /// The live tenants in realm `name`, by id.
    async fn realm_users(&self, name: &Realm) -> Result<Vec<String>, StoreError>;
    /// Every placement of a tenant in realm `name`, with the placement's shard.
    async fn placements_in_realm(&self, name: &Realm) -> Result<Vec<PlacementOf<ShardDoc>>, StoreError>;

    /// The shard `id`, if registered.
    async fn shard(&self, id: &ShardId) -> Result<Option<ShardDoc>, StoreError>;
    /// Every shard, by id.
    async fn shards(&self) -> Result<Vec<ShardDoc>, StoreError>;
    /// Creates or replaces shard `id`.
    async fn write_shard(&self, id: &ShardId, doc: &ShardDoc) -> Result<(), StoreError>;
    /// Deletes shard `id`.
    async fn remove_shard(&self, id: &ShardId) -> Result<(), StoreError>;
    /// The tenants placed on shard `id`, by id.
    async fn shard_users(&self, id: &ShardId) -> Result<Vec<String>, StoreError>;
    /// Every placement on shard `id`, with the tenant's realm.
    async fn placements_on_shard(&self, id: &ShardId) -> Result<Vec<PlacementOf<RealmDoc>>, StoreError>;

    /// The migration numbered `n` (`m-<n>`), if any.
    async fn migration(&self, n: i64) -> Result<Option<MigrationDoc>, StoreError>;
    /// Every migration (of `tenant` when given), newest first.
    async fn migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError>;
    /// The number of the open migration of `tenant`'s `product`, if any.
    async fn open_migration(&self, tenant: &TenantId, product: &Product) -> Result<Option<i64>, StoreError>;
    /// The number the next migration gets (numbers are never reused).
    async fn next_migration(&self) -> Result<i64, StoreError>;
    /// Writes migration `n` (creating it when new); `open` backs the one-open-move rule.
    async fn write_migration(&self, n: i64, doc: &MigrationDoc, open: bool) -> Result<(), StoreError>;

    /// Appends `body` to the log with the next sequence number.
    async fn append(&self, body: &ChangeBody) -> Result<u64, StoreError>;

    /// [`Rows::tenant_version`] of each of `ids` that exists (bulk imports ask once).
    async fn tenant_versions(&self, ids: &[&TenantId]) -> Result<HashMap<TenantId, (u64, bool)>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            let v = self.tenant_version(id).await?;
            if v != (0, false) {
                found.insert((*id).clone(), v);
            }
        }
        Ok(found)
    }
    /// The owner of each of `hosts` that has one (bulk imports ask once).
    async fn host_owners(&self, hosts: &[&Host]) -> Result<HashMap<Host, TenantId>, StoreError> {
        let mut found = HashMap::new();
        for host in hosts {
            if let Some(doc) = self.tenant_by_host(host).await? {
                found.insert((*host).clone(), doc.id);
            }
        }
        Ok(found)
    }
    /// [`Rows::write_tenant`] for each of `docs` (distinct ids).
    async fn write_tenants(&self, docs: &[&TenantDoc]) -> Result<(), StoreError> {
        for doc in docs {
            self.write_tenant(doc).await?;
        }
        Ok(())
    }
    /// [`Rows::append`] for each of `bodies`, in order; returns the last seq.
    async fn append_all(&self, bodies: &[ChangeBody]) -> Result<u64, StoreError> {
        let mut last = 0;
        for body in bodies {
            last = self.append(body).await?;
        }
        Ok(last)
    }
    /// Up to `limit` changes after `after`, with the head and the log's epoch.
    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError>;
}

/// Decodes a JSON column; a document that no longer parses means the store is damaged.
/// A lease's answer from its row (holder and expiry), if it is held.
pub(super) fn lease_doc(name: &str, row: Option<(String, i64)>, now: i64) -> crate::feed::LeaseDoc {
    let (holder, expires_in_ms) = row.map_or((String::new(), 0), |(holder, until)| {
        (holder, u64::try_from(until.saturating_sub(now)).unwrap_or(0))
    });
    crate::feed::LeaseDoc {
        name: name.to_owned(),
        holder,
        expires_in_ms,
    }
}

pub(super) fn decode<T: DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(StoreError::storage)
}

/// Encodes a document for a JSON column.
pub(super) fn encode<T: Serialize>(doc: &T) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(StoreError::storage)
}

/// `Invalid` carrying `problems`, unless there are none.
pub(super) fn invalid_if(problems: Vec<String>) -> Result<(), StoreError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(problems))
    }
}

/// A placement row as `(tenant, product, JSON of the related document)`, checked.
pub(super) fn placement_of<T: DeserializeOwned>(
    tenant: &str,
    product: &str,
    json: &str,
) -> Result<PlacementOf<T>, StoreError> {
    Ok(PlacementOf {
        tenant: TenantId::new(tenant).map_err(StoreError::storage)?,
        product: Product::new(product).map_err(StoreError::storage)?,
        with: decode(json)?,
    })
}
