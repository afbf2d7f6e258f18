//! The catalogue's rules, as pure functions over documents, so that every store checks the same
//! things. Each returns every problem it finds; an empty list means the write may go ahead.

use std::collections::{BTreeMap, BTreeSet};

use crate::feed::{MigrationDoc, NewMigration, Phase, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Placement, PlacementState, Product, Realm, Region, ShardId, TenantId};

/// One placement of a tenant, with the stored document a shard or realm change must stay
/// compatible with: the tenant's realm when a shard changes, the placement's shard when a realm
/// changes.
#[derive(Debug, Clone)]
pub struct PlacementOf<T> {
    /// The tenant.
    pub tenant: TenantId,
    /// The product placed.
    pub product: Product,
    /// The related document.
    pub with: T,
}

/// Problems of tenant `doc` written at URL id `id`; `realm` and `shards` are what the store
/// holds for the realm and the shards the document names (absent when unknown).
pub fn tenant_problems(
    id: &TenantId,
    doc: &TenantDoc,
    realm: Option<&RealmDoc>,
    shards: &BTreeMap<ShardId, ShardDoc>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.id != *id {
        problems.push(format!("id {} in the body differs from {id} in the URL", doc.id));
    }
    let mut seen = BTreeSet::new();
    for host in &doc.hosts {
        if !seen.insert(host) {
            problems.push(format!("host {host} is listed twice"));
        }
    }
    if realm.is_none() {
        problems.push(format!("unknown realm {}", doc.realm));
    }
    for (product, placement) in &doc.placements {
        match shards.get(&placement.shard) {
            None => problems.push(format!("{product}: unknown shard {}", placement.shard)),
            Some(shard) => problems.extend(placement_problems(product, shard, realm)),
        }
    }
    for (product, &rps) in &doc.rate_limits {
        if !doc.placements.contains_key(product) {
            problems.push(format!("rate_limits: {product} is not placed for this tenant"));
        }
        if !(1..=MAX_RATE_LIMIT).contains(&rps) {
            problems.push(format!(
                "rate_limits: {product}: 1 to {MAX_RATE_LIMIT} requests a second"
            ));
        }
    }
    problems
}

/// The highest per-tenant rate limit a tenant may be given (requests a second).
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Problems of shard `doc` written at URL id `id`, given every placement now on it.
pub fn shard_problems(id: &ShardId, doc: &ShardDoc, uses: &[PlacementOf<RealmDoc>]) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.id != *id {
        problems.push(format!("id {} in the body differs from {id} in the URL", doc.id));
    }
    problems.extend(region_list_problems("shard", &doc.regions));
    for u in uses {
        let found = placement_problems(&u.product, doc, Some(&u.with));
        problems.extend(found.into_iter().map(|p| format!("tenant {}: {p}", u.tenant)));
    }
    problems
}

/// Problems of realm `doc` written at URL name `name`, given every placement of its tenants.
pub fn realm_problems(name: &Realm, doc: &RealmDoc, uses: &[PlacementOf<ShardDoc>]) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.name != *name {
        problems.push(format!(
            "name {} in the body differs from {name} in the URL",
            doc.name
        ));
    }
    problems.extend(region_list_problems("realm", &doc.regions));
    for u in uses {
        let found = placement_problems(&u.product, &u.with, Some(doc));
        problems.extend(found.into_iter().map(|p| format!("tenant {}: {p}", u.tenant)));
    }
    problems
}

/// Problems of moving `req.product` of `req.tenant` to shard `req.to`, given what the store
/// holds: the live tenant, its realm and the target shard (each absent when unknown).
pub fn migration_problems(
    req: &NewMigration,
    tenant: Option<&TenantDoc>,
    realm: Option<&RealmDoc>,
    target: Option<&ShardDoc>,
) -> Vec<String> {
    let Some(tenant) = tenant else {
        return vec![format!("unknown tenant {}", req.tenant)];
    };
    let mut problems = Vec::new();
    match tenant.placements.get(&req.product) {
        None => problems.push(format!("tenant {} has no {} placement", req.tenant, req.product)),
        Some(p) if p.shard == req.to => problems.push(format!(
            "tenant {}'s {} is already on shard {}",
            req.tenant, req.product, req.to
        )),
        Some(_) => {}
    }
    match target {
        None => problems.push(format!("unknown shard {}", req.to)),
        Some(shard) => problems.extend(placement_problems(&req.product, shard, realm)),
    }
    problems
}

/// The regions a move from `source` to `target` adds (the target has them, the source not)
/// and removes (the source has them, the target not), each sorted.
pub fn region_delta(source: &ShardDoc, target: &ShardDoc) -> (Vec<Region>, Vec<Region>) {
    let from: BTreeSet<&Region> = source.regions.iter().collect();
    let to: BTreeSet<&Region> = target.regions.iter().collect();
    let add = to.difference(&from).map(|r| (*r).clone()).collect();
    let remove = from.difference(&to).map(|r| (*r).clone()).collect();
    (add, remove)
}

/// The placement `m.product` of `tenant` gets when `m` enters `phase`: `None` when the phase
/// leaves the tenant alone. Freezing and switching need the tenant still on `m.from`; a
/// rollback of a tenant that is gone (or lost the product) has nothing to restore, so it
/// must not be refused: a migration can always be closed before the switch.
pub fn phase_placement(
    m: &MigrationDoc,
    phase: Phase,
    tenant: Option<&TenantDoc>,
) -> Result<Option<Placement>, Vec<String>> {
    let current = tenant.and_then(|t| t.placements.get(&m.product));
    let (shard, state) = match phase {
        Phase::Frozen => (&m.from, PlacementState::Frozen),
        Phase::Switched => (&m.to, PlacementState::Active),
        Phase::RolledBack if current.is_none() => return Ok(None),
        Phase::RolledBack => (&m.from, PlacementState::Active),
        Phase::Planned | Phase::Copying | Phase::Cleaning | Phase::Done => return Ok(None),
    };
    match current {
        None => Err(vec![format!("tenant {} no longer has {}", m.tenant, m.product)]),
        Some(p) if p.shard != m.from && phase != Phase::RolledBack => Err(vec![format!(
            "tenant {}'s {} is on shard {}, not on {}",
            m.tenant, m.product, p.shard, m.from
        )]),
        Some(_) => Ok(Some(Placement {
            shard: shard.clone(),
            state,
        })),
    }
}

/// Whether `shard` may hold `product` for a tenant of `realm` (unchecked when the realm is
/// unknown: that is reported once, on its own).
fn placement_problems(product: &Product, shard: &ShardDoc, realm: Option<&RealmDoc>) -> Vec<String> {
    let mut problems = Vec::new();
    if shard.product != *product {
        problems.push(format!(
            "{product}: shard {} serves {}, not {product}",
            shard.id, shard.product
        ));
    }
    if let Some(realm) = realm {
        let outside: Vec<&str> = shard
            .regions
            .iter()
            .filter(|r| !realm.regions.contains(r))
            .map(Region::as_str)
            .collect();
        if !outside.is_empty() {
            problems.push(format!(
                "{product}: shard {} has data in {} outside realm {}",
                shard.id,
                outside.join(", "),
                realm.name
            ));
        }
    }
    problems
}

fn region_list_problems(what: &str, regions: &[Region]) -> Vec<String> {
    let mut problems = Vec::new();
    if regions.is_empty() {
        problems.push(format!("a {what} needs at least one region"));
    }
    let mut seen = BTreeSet::new();
    for r in regions {
        if !seen.insert(r) {
            problems.push(format!("region {r} is listed twice"));
        }
    }
    problems
}
