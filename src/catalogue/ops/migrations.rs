//! Tenant moves: creation with its checks, phase changes by compare-and-set, and the tenant
//! placement change each phase brings, written in the same transaction.

use super::{invalid_if, tenants, Rows};
use crate::catalogue::store::StoreError;
use crate::catalogue::validate::{migration_problems, phase_placement, region_delta};
use crate::feed::{ChangeBody, MigrationDoc, NewMigration, Phase, ShardDoc, TenantDoc};
use crate::tenant::Product;

/// The row number of a migration id `m-<n>`; anything else names no migration.
fn row_of(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("m-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// See [`crate::catalogue::Store::create_migration`].
pub(in crate::catalogue) async fn create(
    rows: &impl Rows,
    req: NewMigration,
    now_ms: u64,
) -> Result<MigrationDoc, StoreError> {
    if let Some(open) = rows.open_migration(&req.tenant, &req.product).await? {
        return Err(StoreError::MigrationOpen {
            id: format!("m-{open}"),
        });
    }
    let tenant = rows.tenant(&req.tenant).await?;
    let realm = match &tenant {
        Some(t) => rows.realm(&t.realm).await?,
        None => None,
    };
    let target = rows.shard(&req.to).await?;
    invalid_if(migration_problems(
        &req,
        tenant.as_ref(),
        realm.as_ref(),
        target.as_ref(),
    ))?;
    let (Some(tenant), Some(target)) = (tenant, target) else {
        return Err(StoreError::storage("validation passed without tenant or target"));
    };
    let source = source_shard(rows, &tenant, &req.product).await?;
    let (regions_to_add, regions_to_remove) = region_delta(&source, &target);
    let n = rows.next_migration().await?;
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
    rows.write_migration(n, &doc, true).await?;
    log(rows, &doc).await?;
    Ok(doc)
}

/// See [`crate::catalogue::Store::set_phase`].
pub(in crate::catalogue) async fn set_phase(
    rows: &impl Rows,
    id: &str,
    phase: Phase,
    if_match: Option<u64>,
    now_ms: u64,
) -> Result<MigrationDoc, StoreError> {
    let n = row_of(id).ok_or(StoreError::NotFound)?;
    let mut doc = rows.migration(n).await?.ok_or(StoreError::NotFound)?;
    tenants::check_if_match(if_match, doc.version)?;
    if !doc.phase.can_become(phase) {
        return Err(StoreError::Invalid(vec![format!(
            "migration {id} cannot go from {} to {phase}",
            doc.phase
        )]));
    }
    let tenant = rows.tenant(&doc.tenant).await?;
    let placement = phase_placement(&doc, phase, tenant.as_ref()).map_err(StoreError::Invalid)?;
    doc.phase = phase;
    doc.version += 1;
    doc.updated_ms = now_ms;
    rows.write_migration(n, &doc, phase.is_open()).await?;
    // The migration's change first: a reader seeing the tenant move knows why it moved.
    log(rows, &doc).await?;
    if let (Some(placement), Some(mut tenant)) = (placement, tenant) {
        let version = tenant.version;
        let tenant_id = tenant.id.clone();
        // The data's location moves with the placement, in the same write.
        let holder = rows.shard(&placement.shard).await?;
        if let Some(database) = holder.map(|s| s.database).filter(|d| !d.is_empty()) {
            let config = &mut tenant.products.entry(doc.product.clone()).or_default().config;
            config.extend(database);
        }
        tenant.placements.insert(doc.product.clone(), placement);
        tenants::put(rows, &tenant_id, tenant, Some(version)).await?;
    }
    Ok(doc)
}

/// See [`crate::catalogue::Store::get_migration`].
pub(in crate::catalogue) async fn get(rows: &impl Rows, id: &str) -> Result<MigrationDoc, StoreError> {
    let n = row_of(id).ok_or(StoreError::NotFound)?;
    rows.migration(n).await?.ok_or(StoreError::NotFound)
}

/// The shard `tenant`'s `product` is on now; validation made sure it has one.
async fn source_shard(
    rows: &impl Rows,
    tenant: &TenantDoc,
    product: &Product,
) -> Result<ShardDoc, StoreError> {
    let placement = tenant
        .placements
        .get(product)
        .ok_or_else(|| StoreError::storage("validation passed without a placement"))?;
    // The placement's foreign key keeps its shard registered.
    rows.shard(&placement.shard)
        .await?
        .ok_or_else(|| StoreError::storage(format!("placed on unregistered shard {}", placement.shard)))
}

async fn log(rows: &impl Rows, doc: &MigrationDoc) -> Result<u64, StoreError> {
    rows.append(&ChangeBody::Migration {
        id: doc.id.clone(),
        doc: doc.clone(),
    })
    .await
}
