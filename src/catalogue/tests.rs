//! Store tests on real SQLite files in temporary directories.

mod migrations;

use std::path::{Path, PathBuf};

use serde_json::json;

use super::sqlite::{SqliteStore, DB_FILE};
use super::store::{Store, StoreError};
use crate::feed::{ChangeBody, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Realm, ShardId, TenantId};

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join(DB_FILE)
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap()
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn tenant(id: &str, host: &str, realm: &str, placements: serde_json::Value) -> TenantDoc {
    serde_json::from_value(json!({"id": id, "hosts": [host], "realm": realm, "placements": placements}))
        .unwrap()
}

fn acme() -> TenantDoc {
    tenant(
        "acme",
        "acme.example.test",
        "us",
        json!({"jira": {"shard": "jira-us-east-1"}}),
    )
}

fn shard(id: &str, product: &str, regions: &[&str]) -> ShardDoc {
    serde_json::from_value(json!({"id": id, "product": product, "regions": regions})).unwrap()
}

fn realm(name: &str, regions: &[&str]) -> RealmDoc {
    serde_json::from_value(json!({"name": name, "regions": regions})).unwrap()
}

/// Realms us and eu; shards jira-us-east-1, jira-us-west-2, jira-eu-west-1, confluence-us-east-1.
async fn registry(store: &SqliteStore) {
    for r in [
        realm("us", &["us-east-1", "us-west-2"]),
        realm("eu", &["eu-west-1", "eu-central-1"]),
    ] {
        store.put_realm(r.name.clone(), r).await.unwrap();
    }
    for s in [
        shard("jira-us-east-1", "jira", &["us-east-1"]),
        shard("jira-us-west-2", "jira", &["us-west-2"]),
        shard("jira-eu-west-1", "jira", &["eu-west-1"]),
        shard("confluence-us-east-1", "confluence", &["us-east-1"]),
    ] {
        store.put_shard(s.id.clone(), s).await.unwrap();
    }
}

async fn seeded() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db(&dir));
    registry(&store).await;
    (dir, store)
}

/// Puts `doc` under its own id and returns the stored version.
async fn version_of_put(store: &SqliteStore, doc: TenantDoc) -> u64 {
    store
        .put_tenant(doc.id.clone(), doc, None)
        .await
        .unwrap()
        .doc
        .version
}

fn problems(err: StoreError) -> Vec<String> {
    match err {
        StoreError::Invalid(p) => p,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_start_at_one_and_guard_compare_and_set() {
    let (_dir, store) = seeded().await;
    let w = store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    assert_eq!((w.doc.version, w.created), (1, true));
    let w = store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    assert_eq!((w.doc.version, w.created), (2, false));

    let stale = store.put_tenant(tid("acme"), acme(), Some(1)).await.unwrap_err();
    assert!(
        matches!(stale, StoreError::VersionConflict { current: 2 }),
        "{stale:?}"
    );
    let w = store.put_tenant(tid("acme"), acme(), Some(2)).await.unwrap();
    assert_eq!(w.doc.version, 3);
    assert_eq!(store.get_tenant(&tid("acme")).await.unwrap(), w.doc);

    let initech = tenant("initech", "initech.example.test", "us", json!({}));
    let missing = store
        .put_tenant(tid("initech"), initech.clone(), Some(4))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::VersionConflict { current: 0 }),
        "{missing:?}"
    );
    // If-Match 0 means "create only if absent".
    let w = store.put_tenant(tid("initech"), initech, Some(0)).await.unwrap();
    assert_eq!(w.doc.version, 1);
}

#[tokio::test]
async fn delete_keeps_a_tombstone_so_versions_keep_rising() {
    let (_dir, store) = seeded().await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    let conflict = store.delete_tenant(&tid("acme"), Some(7)).await.unwrap_err();
    assert!(matches!(conflict, StoreError::VersionConflict { current: 1 }));
    assert_eq!(store.delete_tenant(&tid("acme"), Some(1)).await.unwrap(), 2);
    assert!(matches!(
        store.get_tenant(&tid("acme")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_tenant(&tid("acme"), None).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.list_tenants().await.unwrap().is_empty());

    // The host was released with the delete.
    let other = tenant("other", "acme.example.test", "us", json!({}));
    store.put_tenant(tid("other"), other, None).await.unwrap();
    store.delete_tenant(&tid("other"), None).await.unwrap();

    let w = store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    assert_eq!((w.doc.version, w.created), (3, true));
}

#[tokio::test]
async fn a_host_names_one_tenant_only() {
    let (_dir, store) = seeded().await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    let thief = tenant("globex", "acme.example.test", "us", json!({}));
    match store.put_tenant(tid("globex"), thief, None).await.unwrap_err() {
        StoreError::HostTaken { host, owner } => {
            assert_eq!(host.as_str(), "acme.example.test");
            assert_eq!(owner, tid("acme"));
        }
        other => panic!("expected HostTaken, got {other:?}"),
    }
    // Once acme lets the host go, globex may have it.
    let moved = tenant("acme", "new.acme.test", "us", json!({}));
    store.put_tenant(tid("acme"), moved, None).await.unwrap();
    let globex = tenant("globex", "acme.example.test", "us", json!({}));
    assert_eq!(version_of_put(&store, globex).await, 1);
}

#[tokio::test]
async fn validation_lists_every_problem() {
    let (_dir, store) = seeded().await;
    let mut doc = tenant(
        "acme",
        "acme.example.test",
        "mars",
        json!({"jira": {"shard": "jira-mars-1"}, "confluence": {"shard": "jira-us-east-1"}}),
    );
    doc.hosts.push(doc.hosts[0].clone());
    let found = problems(store.put_tenant(tid("other"), doc, None).await.unwrap_err());
    let expected = [
        "differs from other in the URL",
        "host acme.example.test is listed twice",
        "unknown realm mars",
        "jira: unknown shard jira-mars-1",
        "confluence: shard jira-us-east-1 serves jira",
    ];
    for e in expected {
        assert!(
            found.iter().any(|p| p.contains(e)),
            "{e:?} missing from {found:?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:?}");

    let eu_shard = tenant(
        "acme",
        "acme.example.test",
        "us",
        json!({"jira": {"shard": "jira-eu-west-1"}}),
    );
    let found = problems(store.put_tenant(tid("acme"), eu_shard, None).await.unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("eu-west-1 outside realm us"), "{found:?}");
}

#[tokio::test]
async fn shards_and_realms_cannot_break_their_tenants() {
    let (_dir, store) = seeded().await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    let sid = ShardId::new("jira-us-east-1").unwrap();

    let retyped = shard("jira-us-east-1", "confluence", &["us-east-1"]);
    let found = problems(store.put_shard(sid.clone(), retyped).await.unwrap_err());
    assert!(found.iter().any(|p| p.contains("tenant acme")), "{found:?}");
    let moved = shard("jira-us-east-1", "jira", &["eu-west-1"]);
    assert_eq!(
        problems(store.put_shard(sid.clone(), moved).await.unwrap_err()).len(),
        1
    );
    let shrunk = realm("us", &["us-west-2"]);
    let us = Realm::new("us").unwrap();
    let found = problems(store.put_realm(us.clone(), shrunk).await.unwrap_err());
    assert!(found[0].contains("outside realm us"), "{found:?}");

    assert!(matches!(store.delete_shard(&sid).await, Err(StoreError::InUse(m)) if m.contains("acme")));
    assert!(matches!(store.delete_realm(&us).await, Err(StoreError::InUse(m)) if m.contains("acme")));

    store.delete_tenant(&tid("acme"), None).await.unwrap();
    store.delete_shard(&sid).await.unwrap();
    assert!(matches!(store.get_shard(&sid).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.delete_shard(&sid).await,
        Err(StoreError::NotFound)
    ));
    store.delete_realm(&us).await.unwrap();
    assert_eq!(store.list_realms().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_log_is_dense_ordered_and_pages() {
    let (_dir, store) = seeded().await; // 2 realms + 4 shards: seqs 1..=6
    let mut head = store.subscribe();
    store.put_tenant(tid("acme"), acme(), None).await.unwrap(); // 7
    assert!(head.has_changed().unwrap());
    assert_eq!(*head.borrow_and_update(), 7);
    store.delete_tenant(&tid("acme"), None).await.unwrap(); // 8
    assert_eq!(store.head(), 8);

    let page = store.changes(0, 100).await.unwrap();
    assert_eq!(page.head, 8);
    let seqs: Vec<u64> = page.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(
        matches!(&page.changes[0].body, ChangeBody::Realm { name, doc: Some(_) } if name.as_str() == "us")
    );
    assert!(matches!(
        &page.changes[2].body,
        ChangeBody::Shard { doc: Some(_), .. }
    ));
    assert!(
        matches!(&page.changes[6].body, ChangeBody::Tenant { version: 1, doc: Some(d), .. } if d.version == 1)
    );
    assert!(matches!(
        &page.changes[7].body,
        ChangeBody::Tenant {
            version: 2,
            doc: None,
            ..
        }
    ));

    let page = store.changes(2, 3).await.unwrap();
    assert_eq!(page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(page.head, 8);
    assert!(store.changes(8, 10).await.unwrap().changes.is_empty());
}

#[tokio::test]
async fn rejected_writes_leave_no_change_and_no_state() {
    let (_dir, store) = seeded().await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap();
    let before = (
        store.changes(0, 100).await.unwrap(),
        store.list_tenants().await.unwrap(),
    );

    let thief = tenant("globex", "acme.example.test", "us", json!({}));
    assert!(store.put_tenant(tid("globex"), thief, None).await.is_err());
    let bad = tenant(
        "acme",
        "x.example.test",
        "eu",
        json!({"jira": {"shard": "jira-us-east-1"}}),
    );
    assert!(store.put_tenant(tid("acme"), bad, None).await.is_err());
    assert!(store.put_tenant(tid("acme"), acme(), Some(9)).await.is_err());
    assert!(store
        .delete_shard(&ShardId::new("jira-us-east-1").unwrap())
        .await
        .is_err());

    let after = (
        store.changes(0, 100).await.unwrap(),
        store.list_tenants().await.unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(store.head(), before.0.head);
    // No tombstone was left behind for the refused tenant: its first write is still version 1.
    let globex = tenant("globex", "globex.example.test", "us", json!({}));
    assert_eq!(version_of_put(&store, globex).await, 1);
}

#[tokio::test]
async fn a_write_failing_midway_rolls_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db(&dir));
    registry(&store).await;
    // Make the log refuse its next entry, so the tenant rows are written before the failure.
    let raw = rusqlite::Connection::open(db(&dir)).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON changes BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();

    let err = store.put_tenant(tid("acme"), acme(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Storage(_)), "{err:?}");
    assert_eq!(store.head(), 6);

    raw.execute_batch("DROP TRIGGER refuse;").unwrap();
    let hosts: i64 = raw
        .query_row("SELECT COUNT(*) FROM tenant_hosts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hosts, 0);
    assert!(matches!(
        store.get_tenant(&tid("acme")).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .put_tenant(tid("acme"), acme(), None)
            .await
            .unwrap()
            .doc
            .version,
        1
    );
    assert_eq!(store.head(), 7);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stored = {
        let store = open(&db(&dir));
        registry(&store).await;
        store.put_tenant(tid("acme"), acme(), None).await.unwrap();
        store.put_tenant(tid("acme"), acme(), None).await.unwrap().doc
    };
    let mode: String = rusqlite::Connection::open(db(&dir))
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    let store = open(&db(&dir));
    assert_eq!(store.head(), 8);
    assert_eq!(store.get_tenant(&tid("acme")).await.unwrap(), stored);
    assert_eq!(store.list_shards().await.unwrap().len(), 4);
    assert_eq!(store.changes(0, 100).await.unwrap().changes.len(), 8);
    // Versions and sequence numbers carry on from where they were.
    assert_eq!(store.delete_tenant(&tid("acme"), Some(2)).await.unwrap(), 3);
    assert_eq!(store.changes(8, 10).await.unwrap().changes[0].seq, 9);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&db(&dir)));
    let raw = rusqlite::Connection::open(db(&dir)).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    let err = SqliteStore::open(&db(&dir)).err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}
