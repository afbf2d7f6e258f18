//! The conformance suite: every rule of the catalogue's stores, run against each store, so
//! neither can drift from the other: SQLite on a file in a temporary directory, PostgreSQL on
//! a real server this test binary starts (one per process, a fresh database per test).

mod migrations;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::postgres::PgStore;
use super::sqlite::{SqliteStore, DB_FILE};
use super::store::{Store, StoreError};
use crate::feed::{ChangeBody, RealmDoc, ShardDoc, TenantDoc};
use crate::stack::postgres::PgServer;
use crate::tenant::{Realm, ShardId, TenantId};

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sqlite,
    Postgres,
}

/// A store under test, with what it takes to open it again or reach it behind its back.
pub(super) struct Fixture {
    kind: Kind,
    /// SQLite: the temporary directory of the file.
    dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the database's URL.
    url: String,
    store: Arc<dyn Store>,
}

impl std::ops::Deref for Fixture {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

impl Fixture {
    /// An empty store of `kind`.
    pub(super) async fn new(kind: Kind) -> Self {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join(DB_FILE)).unwrap();
                Fixture {
                    kind,
                    dir: Some(dir),
                    url: String::new(),
                    store: Arc::new(store),
                }
            }
            Kind::Postgres => {
                let url = PgServer::shared().unwrap().fresh_database().unwrap();
                let store = PgStore::connect(&url).await.unwrap();
                Fixture {
                    kind,
                    dir: None,
                    url,
                    store: Arc::new(store),
                }
            }
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join(DB_FILE)
    }

    /// Another instance of the same store (a second catalogue process, or a restart).
    pub(super) async fn open_again(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self.kind {
            Kind::Sqlite => Arc::new(SqliteStore::open(&self.db())?),
            Kind::Postgres => Arc::new(PgStore::connect(&self.url).await?),
        })
    }

    /// A connection of its own to the PostgreSQL database, behind the store's back.
    async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Runs `sqlite` or `postgres` (statements) on the database behind the store's back.
    pub(super) async fn raw(&self, sqlite: &str, postgres: &str) {
        match self.kind {
            Kind::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .execute_batch(sqlite)
                .unwrap(),
            Kind::Postgres => self.pg().await.batch_execute(postgres).await.unwrap(),
        }
    }

    /// The one number `sql` selects, behind the store's back.
    pub(super) async fn count(&self, sql: &str) -> i64 {
        match self.kind {
            Kind::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Kind::Postgres => self.pg().await.query_one(sql, &[]).await.unwrap().get(0),
        }
    }
}

/// Runs each named test (an `async fn(Kind)`) once per store.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Postgres).await
            })*
        }
    };
}
pub(super) use conformance;

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
async fn registry(store: &dyn Store) {
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

/// A store of `kind` holding the [`registry`] (log seqs 1..=6).
async fn seeded(kind: Kind) -> Fixture {
    let store = Fixture::new(kind).await;
    registry(&*store).await;
    store
}

/// Puts `doc` under its own id and returns the stored version.
async fn version_of_put(store: &dyn Store, doc: TenantDoc) -> u64 {
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

async fn versions_start_at_one_and_guard_compare_and_set(kind: Kind) {
    let store = seeded(kind).await;
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

async fn delete_keeps_a_tombstone_so_versions_keep_rising(kind: Kind) {
    let store = seeded(kind).await;
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

async fn a_host_names_one_tenant_only(kind: Kind) {
    let store = seeded(kind).await;
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
    assert_eq!(version_of_put(&*store, globex).await, 1);
}

async fn validation_lists_every_problem(kind: Kind) {
    let store = seeded(kind).await;
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

async fn shards_and_realms_cannot_break_their_tenants(kind: Kind) {
    let store = seeded(kind).await;
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

async fn the_log_is_dense_ordered_and_pages(kind: Kind) {
    let store = seeded(kind).await; // 2 realms + 4 shards: seqs 1..=6
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

async fn rejected_writes_leave_no_change_and_no_state(kind: Kind) {
    let store = seeded(kind).await;
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
    assert_eq!(version_of_put(&*store, globex).await, 1);
}

async fn a_write_failing_midway_rolls_back_whole(kind: Kind) {
    let store = seeded(kind).await;
    // Make the log refuse its next entry, so the tenant rows are written before the failure.
    store
        .raw(
            "CREATE TRIGGER refuse BEFORE INSERT ON changes BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON changes FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await;

    let err = store.put_tenant(tid("acme"), acme(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Storage(_)), "{err:?}");
    assert_eq!(store.head(), 6);

    store
        .raw("DROP TRIGGER refuse;", "DROP TRIGGER refuse ON changes;")
        .await;
    assert_eq!(store.count("SELECT COUNT(*) FROM tenant_hosts").await, 0);
    assert_eq!(store.count("SELECT COUNT(*) FROM tenants").await, 0);
    assert!(matches!(
        store.get_tenant(&tid("acme")).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(version_of_put(&*store, acme()).await, 1);
    assert_eq!(store.head(), 7);
}

async fn everything_survives_a_reopen(kind: Kind) {
    let fixture = seeded(kind).await;
    fixture.put_tenant(tid("acme"), acme(), None).await.unwrap();
    let stored = fixture.put_tenant(tid("acme"), acme(), None).await.unwrap().doc;
    let epoch = fixture.changes(0, 1).await.unwrap().epoch;
    assert!(epoch.len() >= 16, "an epoch is minted with the log: {epoch:?}");

    let store = fixture.open_again().await.unwrap();
    assert_eq!(store.head(), 8);
    let reopened = store.changes(0, 100).await.unwrap().epoch;
    assert_eq!(reopened, epoch, "the epoch is the log's, not the process's");
    assert_eq!(store.get_tenant(&tid("acme")).await.unwrap(), stored);
    assert_eq!(store.list_shards().await.unwrap().len(), 4);
    let page = store.changes(0, 100).await.unwrap();
    assert_eq!(page.changes.len(), 8);
    // Versions and sequence numbers carry on from where they were.
    assert_eq!(store.delete_tenant(&tid("acme"), Some(2)).await.unwrap(), 3);
    assert_eq!(store.changes(8, 10).await.unwrap().changes[0].seq, 9);

    // After a restore the operator mints a new epoch: same log, readers told to reload.
    let minted = store.mint_epoch().await.unwrap();
    assert_ne!(minted, epoch);
    let page = store.changes(0, 100).await.unwrap();
    assert_eq!((page.epoch, page.head, page.changes.len()), (minted, 9, 9));
}

async fn a_newer_schema_is_refused(kind: Kind) {
    let store = Fixture::new(kind).await;
    store
        .raw(
            "PRAGMA user_version = 99;",
            "UPDATE schema_version SET version = 99;",
        )
        .await;
    let err = store.open_again().await.err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// Two instances of one store (two catalogue processes on one file or database), each with
/// writers in parallel: the log has no gap and no duplicate, and holds every acknowledged
/// write once, in the order of each tenant's versions.
async fn concurrent_writers_keep_the_log_dense(kind: Kind) {
    const WRITERS: usize = 4;
    const WRITES: usize = 25;
    let first = seeded(kind).await;
    let second = first.open_again().await.unwrap();
    let instances: [Arc<dyn Store>; 2] = [Arc::clone(&first.store), second];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, store) in instances.iter().enumerate() {
        for w in 0..WRITERS {
            let store = Arc::clone(store);
            tasks.spawn(async move {
                let id = format!("t-{i}-{w}");
                let mut acked = Vec::new();
                for n in 0..WRITES {
                    let doc = tenant(&id, &format!("{id}-{n}.example.test"), "us", json!({}));
                    let w = store.put_tenant(tid(&id), doc, None).await.unwrap();
                    acked.push((id.clone(), w.doc.version));
                }
                acked
            });
        }
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acked.extend(done.unwrap());
    }
    assert_eq!(acked.len(), 2 * WRITERS * WRITES);

    let page = first.changes(0, 10_000).await.unwrap();
    let seqs: Vec<u64> = page.changes.iter().map(|c| c.seq).collect();
    let total = 6 + acked.len() as u64;
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "dense, ordered, no duplicate"
    );
    assert_eq!(page.head, total);
    let mut logged = Vec::new();
    for change in &page.changes[6..] {
        match &change.body {
            ChangeBody::Tenant { id, version, .. } => logged.push((id.to_string(), *version)),
            other => panic!("unexpected change {other:?}"),
        }
    }
    // Each tenant's versions appear in the log in order, 1..=WRITES, each once.
    for i in 0..2 {
        for w in 0..WRITERS {
            let id = format!("t-{i}-{w}");
            let versions: Vec<u64> = logged.iter().filter(|(t, _)| *t == id).map(|(_, v)| *v).collect();
            assert_eq!(versions, (1..=WRITES as u64).collect::<Vec<_>>(), "{id}");
        }
    }
    acked.sort();
    logged.sort();
    assert_eq!(acked, logged, "every acknowledged write is in the log once");
}

/// A bulk import is all or nothing, and means what the same puts one by one would: a tenant
/// may release a host another document of the batch then takes, a tenant named twice gets two
/// versions and two changes, and a broken rule names its document.
async fn bulk_import_is_all_or_nothing_and_sequential(kind: Kind) {
    let store = seeded(kind).await;
    store.put_tenant(tid("acme"), acme(), None).await.unwrap(); // seq 7, acme v1
    let before = store.changes(0, 100).await.unwrap();

    let mut bad = tenant("bad", "bad.example.test", "mars", json!({}));
    bad.hosts.clear();
    let refused = [
        vec![
            tenant("a", "a.example.test", "us", json!({})),
            tenant("b", "b.example.test", "us", json!({})),
            bad,
        ],
        vec![
            tenant("c", "c.example.test", "us", json!({})),
            tenant("thief", "acme.example.test", "us", json!({})),
        ],
        vec![
            tenant("d", "same.example.test", "us", json!({})),
            tenant("e", "same.example.test", "us", json!({})),
        ],
    ];
    let errors: Vec<StoreError> = {
        let mut errors = Vec::new();
        for batch in refused {
            errors.push(store.put_tenants(batch).await.unwrap_err());
        }
        errors
    };
    assert!(
        matches!(&errors[0], StoreError::Invalid(p) if p.iter().any(|p| p.starts_with("tenants[2] (bad): unknown realm mars"))),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(&errors[1], StoreError::HostTaken { owner, .. } if *owner == tid("acme")),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], StoreError::HostTaken { owner, .. } if *owner == tid("d")),
        "{:?}",
        errors[2]
    );
    assert_eq!(
        store.changes(0, 100).await.unwrap(),
        before,
        "nothing of a refused batch"
    );
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);

    let moved = tenant(
        "acme",
        "new.acme.test",
        "us",
        json!({"jira": {"shard": "jira-us-east-1"}}),
    );
    let batch = vec![
        moved.clone(),
        tenant("globex", "acme.example.test", "us", json!({})),
        tenant("twice", "one.example.test", "us", json!({})),
        tenant(
            "twice",
            "two.example.test",
            "us",
            json!({"jira": {"shard": "jira-us-west-2"}}),
        ),
    ];
    assert_eq!(store.put_tenants(batch).await.unwrap(), 4);
    let page = store.changes(7, 100).await.unwrap();
    let logged: Vec<(String, u64)> = page
        .changes
        .iter()
        .map(|c| match &c.body {
            ChangeBody::Tenant { id, version, .. } => (id.to_string(), *version),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [("acme", 2), ("globex", 1), ("twice", 1), ("twice", 2)];
    assert_eq!(logged, expected.map(|(id, v)| (id.to_owned(), v)));
    assert_eq!(page.head, 11);
    let twice = store.get_tenant(&tid("twice")).await.unwrap();
    assert_eq!((twice.version, twice.hosts[0].as_str()), (2, "two.example.test"));
    assert_eq!(twice.placements["jira"].shard.as_str(), "jira-us-west-2");
    let host = |h: &str| crate::tenant::Host::parse(h).unwrap();
    assert_eq!(
        store
            .tenant_by_host(&host("acme.example.test"))
            .await
            .unwrap()
            .unwrap()
            .id,
        tid("globex")
    );
    assert_eq!(
        store
            .tenant_by_host(&host("new.acme.test"))
            .await
            .unwrap()
            .unwrap()
            .id,
        tid("acme")
    );
    assert!(store
        .tenant_by_host(&host("one.example.test"))
        .await
        .unwrap()
        .is_none());
    // The placement rows follow the last document: the west shard is in use, the east one by acme only.
    let west = ShardId::new("jira-us-west-2").unwrap();
    assert!(matches!(store.delete_shard(&west).await, Err(StoreError::InUse(m)) if m.contains("twice")));
}

/// A lease has one holder until it expires or is given up, renews for its holder only, and
/// appends nothing to the log.
async fn a_lease_has_one_holder_until_it_expires(kind: Kind) {
    let f = Fixture::new(kind).await;
    let store = &*f;
    let head = store.head();
    let a = store.lease("fanout-us", "tcs-a", 60_000).await.unwrap();
    assert!(a.held_by("tcs-a"), "{a:?}");
    assert!(a.expires_in_ms > 59_000 && a.expires_in_ms <= 60_000, "{a:?}");
    let b = store.lease("fanout-us", "tcs-b", 60_000).await.unwrap();
    assert!(
        !b.held_by("tcs-b") && b.held_by("tcs-a"),
        "another's live lease is kept: {b:?}"
    );
    // Another name is another lease.
    assert!(store
        .lease("fanout-eu", "tcs-b", 60_000)
        .await
        .unwrap()
        .held_by("tcs-b"));
    // The holder renews; releasing is for the holder only.
    assert!(store
        .lease("fanout-us", "tcs-a", 60_000)
        .await
        .unwrap()
        .held_by("tcs-a"));
    assert!(store
        .lease("fanout-us", "tcs-b", 0)
        .await
        .unwrap()
        .held_by("tcs-a"));
    let released = store.lease("fanout-us", "tcs-a", 0).await.unwrap();
    assert_eq!((released.holder.as_str(), released.expires_in_ms), ("", 0));
    assert!(store
        .lease("fanout-us", "tcs-b", 50)
        .await
        .unwrap()
        .held_by("tcs-b"));
    // Expired: free for anyone.
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert!(store
        .lease("fanout-us", "tcs-a", 60_000)
        .await
        .unwrap()
        .held_by("tcs-a"));
    assert_eq!(store.head(), head, "a lease is not a change");
}

async fn tenants_page_by_id_past_deleted_ones(kind: Kind) {
    let store = seeded(kind).await;
    // Written out of order; ids that sort differently by bytes and by a natural language's
    // collation ("a-b" < "a0" < "ab" by bytes).
    let ids = ["t-09", "ab", "t-01", "a0", "a-b", "t-10", "t-05"];
    for id in ids {
        let doc = tenant(id, &format!("{id}.example.test"), "us", json!({}));
        store.put_tenant(tid(id), doc, None).await.unwrap();
    }
    store.delete_tenant(&tid("t-05"), None).await.unwrap();
    let all: Vec<TenantId> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(all.len(), 6);
    // Page by page, two at a time, each after the last id of the one before: every live
    // tenant once, in the order of the whole list, the tombstone skipped.
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list_tenants_page(paged.last(), 2).await.unwrap();
        pages += 1;
        let full = page.len() == 2;
        paged.extend(page.into_iter().map(|d| d.id));
        if !full {
            break;
        }
    }
    assert_eq!(paged, all);
    assert_eq!(pages, 4, "three full pages and an empty one");
    // One large page is the whole list; a page after the last id is empty.
    let ids_of = |docs: Vec<TenantDoc>| docs.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids_of(store.list_tenants_page(None, 100).await.unwrap()), all);
    assert!(store.list_tenants_page(all.last(), 100).await.unwrap().is_empty());
}

conformance!(
    tenants_page_by_id_past_deleted_ones,
    a_lease_has_one_holder_until_it_expires,
    bulk_import_is_all_or_nothing_and_sequential,
    versions_start_at_one_and_guard_compare_and_set,
    delete_keeps_a_tombstone_so_versions_keep_rising,
    a_host_names_one_tenant_only,
    validation_lists_every_problem,
    shards_and_realms_cannot_break_their_tenants,
    the_log_is_dense_ordered_and_pages,
    rejected_writes_leave_no_change_and_no_state,
    a_write_failing_midway_rolls_back_whole,
    everything_survives_a_reopen,
    a_newer_schema_is_refused,
    concurrent_writers_keep_the_log_dense,
);

#[tokio::test]
async fn sqlite_keeps_its_file_in_wal_mode() {
    let store = Fixture::new(Kind::Sqlite).await;
    let mode: String = rusqlite::Connection::open(store.db())
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
