//! Migrations in the store: creation checks, legal phases, compare-and-set, and the tenant
//! placement change written with each phase, atomically and in log order.

use serde_json::json;

use super::{acme, conformance, problems, seeded, shard, tenant, tid, Fixture, Kind};
use crate::catalogue::store::{Store, StoreError};
use crate::feed::{Change, ChangeBody, MigrationDoc, NewMigration, Phase, TenantDoc};
use crate::tenant::{Host, PlacementState, Product, Region, ShardId};

fn req(tenant: &str, product: &str, to: &str) -> NewMigration {
    NewMigration {
        tenant: tid(tenant),
        product: Product::new(product).unwrap(),
        to: ShardId::new(to).unwrap(),
    }
}

fn regions(names: &[&str]) -> Vec<Region> {
    names.iter().map(|r| Region::new(r).unwrap()).collect()
}

/// The seeded registry plus acme on jira-us-east-1 (tenant version 1).
async fn with_acme(kind: Kind) -> Fixture {
    let store = seeded(kind).await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    store
}

async fn plan(store: &dyn Store, to: &str) -> MigrationDoc {
    store.create_migration(req("acme", "jira", to)).await.unwrap()
}

async fn acme_now(store: &dyn Store) -> TenantDoc {
    store.get_tenant(&tid("acme")).await.unwrap()
}

/// acme's jira placement as `(shard, state)`.
async fn jira_of(store: &dyn Store) -> (String, PlacementState) {
    let doc = acme_now(store).await;
    let p = &doc.placements["jira"];
    (p.shard.to_string(), p.state)
}

async fn log_after(store: &dyn Store, after: u64) -> Vec<Change> {
    store.changes(after, 100).await.unwrap().changes
}

async fn a_new_migration_is_planned_with_its_region_delta_and_logged(kind: Kind) {
    let store = with_acme(kind).await;
    let head = store.head();
    let m = plan(&*store, "jira-us-west-2").await;
    assert_eq!(m.id, "m-1");
    assert_eq!((m.phase, m.version), (Phase::Planned, 1));
    assert_eq!(
        (m.from.as_str(), m.to.as_str()),
        ("jira-us-east-1", "jira-us-west-2")
    );
    assert_eq!(m.regions_to_add, regions(&["us-west-2"]));
    assert_eq!(m.regions_to_remove, regions(&["us-east-1"]));
    assert_eq!(m.created_ms, m.updated_ms);
    assert!(m.created_ms > 0);
    assert_eq!(store.get_migration("m-1").await.unwrap(), m);

    let log = log_after(&*store, head).await;
    assert_eq!(log.len(), 1, "creating touches no tenant: {log:?}");
    assert_eq!(
        log[0].body,
        ChangeBody::Migration {
            id: m.id.clone(),
            doc: m
        }
    );
    assert_eq!(
        jira_of(&*store).await,
        ("jira-us-east-1".into(), PlacementState::Active)
    );
    assert_eq!(acme_now(&*store).await.version, 1);
}

async fn one_open_migration_per_tenant_product(kind: Kind) {
    let store = seeded(kind).await;
    let both = tenant(
        "acme",
        "acme.example.test",
        "us",
        json!({"jira": {"shard": "jira-us-east-1"}, "confluence": {"shard": "confluence-us-east-1"}}),
    );
    store.put_tenant(tid("acme"), both, None).await.unwrap();
    store
        .put_shard(
            ShardId::new("confluence-us-west-2").unwrap(),
            shard("confluence-us-west-2", "confluence", &["us-west-2"]),
        )
        .await
        .unwrap();
    let first = plan(&*store, "jira-us-west-2").await;
    let head = store.head();
    let again = store
        .create_migration(req("acme", "jira", "jira-us-west-2"))
        .await;
    assert!(
        matches!(&again, Err(StoreError::MigrationOpen { id }) if id == "m-1"),
        "{again:?}"
    );
    assert_eq!(store.head(), head, "a refused migration writes nothing");
    // Another product of the same tenant moves independently.
    let other = store
        .create_migration(req("acme", "confluence", "confluence-us-west-2"))
        .await
        .unwrap();
    assert_eq!(other.id, "m-2");
    // Closed (rolled back), the product can be moved again.
    store.set_phase(&first.id, Phase::RolledBack, None).await.unwrap();
    assert_eq!(plan(&*store, "jira-us-west-2").await.id, "m-3");
}

async fn invalid_migrations_are_refused_with_every_reason(kind: Kind) {
    let store = with_acme(kind).await;
    let initech = tenant("initech", "initech.example.test", "us", json!({}));
    store.put_tenant(tid("initech"), initech, None).await.unwrap();
    let head = store.head();
    let cases = [
        (req("nobody", "jira", "jira-us-west-2"), "unknown tenant nobody"),
        (
            req("initech", "jira", "jira-us-west-2"),
            "tenant initech has no jira placement",
        ),
        (
            req("acme", "jira", "jira-nowhere-1"),
            "unknown shard jira-nowhere-1",
        ),
        (
            req("acme", "jira", "confluence-us-east-1"),
            "shard confluence-us-east-1 serves confluence, not jira",
        ),
        (
            req("acme", "jira", "jira-eu-west-1"),
            "shard jira-eu-west-1 has data in eu-west-1 outside realm us",
        ),
        (
            req("acme", "jira", "jira-us-east-1"),
            "already on shard jira-us-east-1",
        ),
    ];
    for (r, expected) in cases {
        let found = problems(store.create_migration(r.clone()).await.unwrap_err());
        assert!(found.iter().any(|p| p.contains(expected)), "{r:?}: {found:?}");
    }
    assert_eq!(store.head(), head);
    assert!(store.list_migrations(None).await.unwrap().is_empty());
}

async fn each_phase_changes_the_tenant_in_the_same_write(kind: Kind) {
    let store = with_acme(kind).await;
    let m = plan(&*store, "jira-us-west-2").await;
    let steps = [
        (Phase::Frozen, Some(("jira-us-east-1", PlacementState::Frozen))),
        (Phase::Copying, None),
        (Phase::Switched, Some(("jira-us-west-2", PlacementState::Active))),
        (Phase::Cleaning, None),
        (Phase::Done, None),
    ];
    let mut tenant_version = 1;
    for (i, (phase, placement)) in steps.into_iter().enumerate() {
        let head = store.head();
        let doc = store.set_phase(&m.id, phase, None).await.unwrap();
        assert_eq!((doc.phase, doc.version), (phase, i as u64 + 2));
        assert!(doc.updated_ms >= doc.created_ms);
        let log = log_after(&*store, head).await;
        assert_eq!(
            log[0].body,
            ChangeBody::Migration {
                id: m.id.clone(),
                doc
            }
        );
        match placement {
            Some((shard, state)) => {
                tenant_version += 1;
                assert_eq!(log.len(), 2, "{phase}: {log:?}");
                let ChangeBody::Tenant {
                    version,
                    doc: Some(t),
                    ..
                } = &log[1].body
                else {
                    panic!("{phase}: second change is not the tenant: {log:?}");
                };
                assert_eq!((*version, t.version), (tenant_version, tenant_version));
                assert_eq!(t.placements["jira"].shard.as_str(), shard);
                assert_eq!(jira_of(&*store).await, (shard.to_owned(), state));
            }
            None => assert_eq!(log.len(), 1, "{phase} touches no tenant: {log:?}"),
        }
    }
    assert_eq!(acme_now(&*store).await.version, tenant_version);
    // Done closes it: the tenant's jira can move again (back, now).
    assert_eq!(
        plan(&*store, "jira-us-east-1").await.from.as_str(),
        "jira-us-west-2"
    );
}

async fn a_rollback_brings_the_tenant_back_active_on_the_source(kind: Kind) {
    let paths: [&[Phase]; 3] = [&[], &[Phase::Frozen], &[Phase::Frozen, Phase::Copying]];
    for path in paths {
        let store = with_acme(kind).await;
        let m = plan(&*store, "jira-us-west-2").await;
        for &p in path {
            store.set_phase(&m.id, p, None).await.unwrap();
        }
        let before = path.last().copied().unwrap_or(Phase::Planned);
        assert_eq!(store.get_migration(&m.id).await.unwrap().phase, before);
        let head = store.head();
        let doc = store.set_phase(&m.id, Phase::RolledBack, None).await.unwrap();
        assert_eq!(doc.phase, Phase::RolledBack);
        let log = log_after(&*store, head).await;
        assert_eq!(log.len(), 2, "{before}: {log:?}");
        assert!(matches!(log[0].body, ChangeBody::Migration { .. }));
        assert!(matches!(log[1].body, ChangeBody::Tenant { .. }));
        assert_eq!(
            jira_of(&*store).await,
            ("jira-us-east-1".into(), PlacementState::Active)
        );
    }
}

async fn illegal_transitions_are_refused_and_change_nothing(kind: Kind) {
    let store = with_acme(kind).await;
    let m = plan(&*store, "jira-us-west-2").await;
    let illegal = |from: Phase, to: Phase| format!("cannot go from {from} to {to}");
    for to in [Phase::Planned, Phase::Copying, Phase::Switched, Phase::Done] {
        let head = store.head();
        let found = problems(store.set_phase(&m.id, to, None).await.unwrap_err());
        assert!(found[0].contains(&illegal(Phase::Planned, to)), "{found:?}");
        assert_eq!(store.head(), head);
    }
    for p in [Phase::Frozen, Phase::Copying, Phase::Switched] {
        store.set_phase(&m.id, p, None).await.unwrap();
    }
    let before = (
        store.get_migration(&m.id).await.unwrap(),
        acme_now(&*store).await,
        store.head(),
    );
    for to in [Phase::RolledBack, Phase::Frozen, Phase::Switched, Phase::Done] {
        let found = problems(store.set_phase(&m.id, to, None).await.unwrap_err());
        assert!(found[0].contains(&illegal(Phase::Switched, to)), "{found:?}");
    }
    let after = (
        store.get_migration(&m.id).await.unwrap(),
        acme_now(&*store).await,
        store.head(),
    );
    assert_eq!(after, before);
    assert!(matches!(
        store.set_phase("m-99", Phase::Frozen, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_migration("acme").await,
        Err(StoreError::NotFound)
    ));
}

async fn phase_changes_compare_and_set_on_the_migration_version(kind: Kind) {
    let store = with_acme(kind).await;
    let m = plan(&*store, "jira-us-west-2").await;
    let head = store.head();
    let stale = store.set_phase(&m.id, Phase::Frozen, Some(2)).await.unwrap_err();
    assert!(
        matches!(stale, StoreError::VersionConflict { current: 1 }),
        "{stale:?}"
    );
    assert_eq!(store.head(), head);
    assert_eq!(jira_of(&*store).await.1, PlacementState::Active);
    let frozen = store.set_phase(&m.id, Phase::Frozen, Some(1)).await.unwrap();
    assert_eq!(frozen.version, 2);
    // A second writer holding version 1 loses, even for a legal step from its view.
    let late = store
        .set_phase(&m.id, Phase::RolledBack, Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(late, StoreError::VersionConflict { current: 2 }),
        "{late:?}"
    );
}

async fn a_switch_the_tenant_cannot_take_rolls_back_whole(kind: Kind) {
    let store = with_acme(kind).await;
    let m = plan(&*store, "jira-us-west-2").await;
    store.set_phase(&m.id, Phase::Frozen, None).await.unwrap();
    store.set_phase(&m.id, Phase::Copying, None).await.unwrap();
    // The target stops serving jira while the copy runs: switching to it must fail whole.
    let to = ShardId::new("jira-us-west-2").unwrap();
    store
        .put_shard(to.clone(), shard("jira-us-west-2", "confluence", &["us-west-2"]))
        .await
        .unwrap();
    let before = (
        store.get_migration(&m.id).await.unwrap(),
        acme_now(&*store).await,
        store.head(),
    );
    let found = problems(store.set_phase(&m.id, Phase::Switched, None).await.unwrap_err());
    assert!(found.iter().any(|p| p.contains("serves confluence")), "{found:?}");
    let after = (
        store.get_migration(&m.id).await.unwrap(),
        acme_now(&*store).await,
        store.head(),
    );
    assert_eq!(
        after, before,
        "neither the migration nor the tenant nor the log moved"
    );
    assert_eq!(after.0.phase, Phase::Copying);
    // Rolling back is still possible.
    store.set_phase(&m.id, Phase::RolledBack, None).await.unwrap();
    assert_eq!(
        jira_of(&*store).await,
        ("jira-us-east-1".into(), PlacementState::Active)
    );
}

async fn freezing_needs_the_tenant_still_on_the_source(kind: Kind) {
    let store = with_acme(kind).await;
    let m = plan(&*store, "jira-us-west-2").await;
    let mut moved = acme();
    moved.placements.get_mut("jira").unwrap().shard = ShardId::new("jira-us-west-2").unwrap();
    store.put_tenant(tid("acme"), moved, None).await.unwrap();
    let found = problems(store.set_phase(&m.id, Phase::Frozen, None).await.unwrap_err());
    assert!(
        found[0].contains("is on shard jira-us-west-2, not on jira-us-east-1"),
        "{found:?}"
    );
    // A deleted tenant can still have its migration rolled back (nothing to restore).
    store.delete_tenant(&tid("acme"), None).await.unwrap();
    let head = store.head();
    store.set_phase(&m.id, Phase::RolledBack, None).await.unwrap();
    assert_eq!(log_after(&*store, head).await.len(), 1);
}

async fn overlapping_shards_add_and_remove_only_the_difference(kind: Kind) {
    let store = with_acme(kind).await;
    let global = ShardId::new("jira-us-global").unwrap();
    store
        .put_shard(
            global,
            shard("jira-us-global", "jira", &["us-west-2", "us-east-1"]),
        )
        .await
        .unwrap();
    let out = plan(&*store, "jira-us-global").await;
    assert_eq!(out.regions_to_add, regions(&["us-west-2"]));
    assert!(out.regions_to_remove.is_empty());
    for p in [
        Phase::Frozen,
        Phase::Copying,
        Phase::Switched,
        Phase::Cleaning,
        Phase::Done,
    ] {
        store.set_phase(&out.id, p, None).await.unwrap();
    }
    let back = plan(&*store, "jira-us-east-1").await;
    assert!(back.regions_to_add.is_empty());
    assert_eq!(back.regions_to_remove, regions(&["us-west-2"]));
}

async fn migrations_list_newest_first_and_filter_by_tenant(kind: Kind) {
    let store = with_acme(kind).await;
    let globex = tenant(
        "globex",
        "globex.example.test",
        "us",
        json!({"jira": {"shard": "jira-us-east-1"}}),
    );
    store.put_tenant(tid("globex"), globex, None).await.unwrap();
    let a = plan(&*store, "jira-us-west-2").await;
    let g = store
        .create_migration(req("globex", "jira", "jira-us-west-2"))
        .await
        .unwrap();
    let ids = |docs: Vec<MigrationDoc>| docs.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_migrations(None).await.unwrap()),
        [g.id.clone(), a.id.clone()]
    );
    assert_eq!(
        ids(store.list_migrations(Some(&tid("acme"))).await.unwrap()),
        [a.id]
    );
    assert!(store
        .list_migrations(Some(&tid("nobody")))
        .await
        .unwrap()
        .is_empty());
}

async fn a_host_finds_its_live_tenant(kind: Kind) {
    let store = with_acme(kind).await;
    let host = Host::parse("acme.example.test").unwrap();
    assert_eq!(
        store.tenant_by_host(&host).await.unwrap(),
        Some(acme_now(&*store).await)
    );
    let nobody = Host::parse("nobody.example.test").unwrap();
    assert_eq!(store.tenant_by_host(&nobody).await.unwrap(), None);
    store.delete_tenant(&tid("acme"), None).await.unwrap();
    assert_eq!(store.tenant_by_host(&host).await.unwrap(), None);
}

async fn the_switch_moves_the_data_location_in_the_same_write(kind: Kind) {
    let store = with_acme(kind).await;
    for (id, regions) in [
        ("jira-us-east-1", ["us-east-1"]),
        ("jira-us-west-2", ["us-west-2"]),
    ] {
        let mut doc = shard(id, "jira", &regions);
        doc.database = json!({"db_host": format!("{id}.db.internal")})
            .as_object()
            .unwrap()
            .clone();
        store.put_shard(doc.id.clone(), doc).await.unwrap();
    }
    let mut acme = acme_now(&*store).await;
    let version = acme.version;
    acme.products = serde_json::from_value(json!({"jira": {"config": {"db": "acme_jira"}}})).unwrap();
    store.put_tenant(tid("acme"), acme, Some(version)).await.unwrap();
    let config = |doc: &TenantDoc| doc.products[&Product::new("jira").unwrap()].config.clone();
    let m = plan(&*store, "jira-us-west-2").await;
    for p in [Phase::Frozen, Phase::Copying] {
        store.set_phase(&m.id, p, None).await.unwrap();
    }
    let head = store.head();
    store.set_phase(&m.id, Phase::Switched, None).await.unwrap();
    let log = log_after(&*store, head).await;
    assert_eq!(
        log.len(),
        2,
        "the migration's change and one tenant write: {log:?}"
    );
    let ChangeBody::Tenant { doc: Some(doc), .. } = &log[1].body else {
        panic!("{log:?}");
    };
    assert_eq!(doc.placements["jira"].shard.as_str(), "jira-us-west-2");
    let moved = config(doc);
    assert_eq!(moved["db_host"], "jira-us-west-2.db.internal");
    assert_eq!(moved["db"], "acme_jira", "the rest of the config stays");
    assert_eq!(config(&acme_now(&*store).await), moved);
    for p in [Phase::Cleaning, Phase::Done] {
        store.set_phase(&m.id, p, None).await.unwrap();
    }

    // A rollback (of a new move, before its switch) writes the source's location back.
    let back = plan(&*store, "jira-us-east-1").await;
    store.set_phase(&back.id, Phase::Frozen, None).await.unwrap();
    store.set_phase(&back.id, Phase::RolledBack, None).await.unwrap();
    assert_eq!(
        config(&acme_now(&*store).await)["db_host"],
        "jira-us-west-2.db.internal"
    );
}

conformance!(
    the_switch_moves_the_data_location_in_the_same_write,
    a_new_migration_is_planned_with_its_region_delta_and_logged,
    one_open_migration_per_tenant_product,
    invalid_migrations_are_refused_with_every_reason,
    each_phase_changes_the_tenant_in_the_same_write,
    a_rollback_brings_the_tenant_back_active_on_the_source,
    illegal_transitions_are_refused_and_change_nothing,
    phase_changes_compare_and_set_on_the_migration_version,
    a_switch_the_tenant_cannot_take_rolls_back_whole,
    freezing_needs_the_tenant_still_on_the_source,
    overlapping_shards_add_and_remove_only_the_difference,
    migrations_list_newest_first_and_filter_by_tenant,
    a_host_finds_its_live_tenant,
);
