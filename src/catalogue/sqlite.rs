//! The SQLite store: one file (`catalogue.db`) in WAL mode with `synchronous=FULL`, one
//! connection behind a mutex (write rates of a catalogue are low), every write one
//! `BEGIN IMMEDIATE` transaction that also appends its change to the log.
//!
//! rusqlite blocks, so every operation runs on tokio's blocking pool.

mod rows;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::watch;

use self::rows::Sql;
use crate::catalogue::ops::{self, Rows};
use crate::catalogue::store::{Store, StoreError, Written};
use crate::clock::now_ms;
use crate::feed::{ChangesPage, LeaseDoc, MigrationDoc, NewMigration, Phase, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Realm, ShardId, TenantId};

/// The file name of the catalogue database inside its data directory.
pub const DB_FILE: &str = "catalogue.db";

/// A [`Store`] on one SQLite file. Cloning shares the connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    head: watch::Sender<u64>,
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`. Blocks: call it from a
    /// blocking context or before the runtime is busy.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = schema::open(path)?;
        let head = rows::head(&conn)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                head: watch::Sender::new(head),
            }),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Sql<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&Sql(&inner.lock())))
            .await
            .map_err(StoreError::storage)?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, commits when it succeeds, then publishes
    /// the new head. An error rolls the whole write back, its change included.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Sql<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&Sql(&tx))?;
            let head = rows::head(&tx)?;
            tx.commit()?;
            // Still under the mutex, so heads are published in commit order.
            inner.head.send_replace(head);
            Ok(out)
        })
        .await
        .map_err(StoreError::storage)?
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-write dropped its transaction, which rolled it back: the connection
        // itself is still sound.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_tenant(
        &self,
        id: TenantId,
        doc: TenantDoc,
        if_match: Option<u64>,
    ) -> Result<Written<TenantDoc>, StoreError> {
        self.write(move |r| now(ops::tenants::put(r, &id, doc, if_match)))
            .await
    }

    async fn put_tenants(&self, docs: Vec<TenantDoc>) -> Result<usize, StoreError> {
        self.write(move |r| now(ops::tenants::put_all(r, docs))).await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<TenantDoc, StoreError> {
        let id = id.clone();
        self.read(move |r| now(r.tenant(&id))?.ok_or(StoreError::NotFound))
            .await
    }

    async fn delete_tenant(&self, id: &TenantId, if_match: Option<u64>) -> Result<u64, StoreError> {
        let id = id.clone();
        self.write(move |r| now(ops::tenants::delete(r, &id, if_match)))
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantDoc>, StoreError> {
        self.read(|r| now(r.tenants())).await
    }

    async fn list_tenants_page(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantDoc>, StoreError> {
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        self.read(move |r| now(r.tenants_page(&after, limit))).await
    }

    async fn put_shard(&self, id: ShardId, doc: ShardDoc) -> Result<Written<ShardDoc>, StoreError> {
        self.write(move |r| now(ops::registry::put_shard(r, &id, doc)))
            .await
    }

    async fn get_shard(&self, id: &ShardId) -> Result<ShardDoc, StoreError> {
        let id = id.clone();
        self.read(move |r| now(r.shard(&id))?.ok_or(StoreError::NotFound))
            .await
    }

    async fn delete_shard(&self, id: &ShardId) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |r| now(ops::registry::delete_shard(r, &id)))
            .await
    }

    async fn list_shards(&self) -> Result<Vec<ShardDoc>, StoreError> {
        self.read(|r| now(r.shards())).await
    }

    async fn put_realm(&self, name: Realm, doc: RealmDoc) -> Result<Written<RealmDoc>, StoreError> {
        self.write(move |r| now(ops::registry::put_realm(r, &name, doc)))
            .await
    }

    async fn get_realm(&self, name: &Realm) -> Result<RealmDoc, StoreError> {
        let name = name.clone();
        self.read(move |r| now(r.realm(&name))?.ok_or(StoreError::NotFound))
            .await
    }

    async fn delete_realm(&self, name: &Realm) -> Result<(), StoreError> {
        let name = name.clone();
        self.write(move |r| now(ops::registry::delete_realm(r, &name)))
            .await
    }

    async fn list_realms(&self) -> Result<Vec<RealmDoc>, StoreError> {
        self.read(|r| now(r.realms())).await
    }

    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError> {
        let host = host.clone();
        self.read(move |r| now(r.tenant_by_host(&host))).await
    }

    async fn create_migration(&self, req: NewMigration) -> Result<MigrationDoc, StoreError> {
        self.write(move |r| now(ops::migrations::create(r, req, now_ms())))
            .await
    }

    async fn get_migration(&self, id: &str) -> Result<MigrationDoc, StoreError> {
        let id = id.to_owned();
        self.read(move |r| now(ops::migrations::get(r, &id))).await
    }

    async fn list_migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError> {
        let tenant = tenant.cloned();
        self.read(move |r| now(r.migrations(tenant.as_ref()))).await
    }

    async fn set_phase(
        &self,
        id: &str,
        phase: Phase,
        if_match: Option<u64>,
    ) -> Result<MigrationDoc, StoreError> {
        let id = id.to_owned();
        self.write(move |r| now(ops::migrations::set_phase(r, &id, phase, if_match, now_ms())))
            .await
    }

    async fn mint_epoch(&self) -> Result<String, StoreError> {
        self.write(|r| {
            r.0.execute("UPDATE log_meta SET epoch = lower(hex(randomblob(16)))", [])?;
            rows::epoch(r.0)
        })
        .await
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<LeaseDoc, StoreError> {
        let inner = Arc::clone(&self.inner);
        let (name, holder) = (name.to_owned(), holder.to_owned());
        // Not through `write`: a lease appends nothing, so the head is not published again.
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = i64::try_from(now_ms()).map_err(StoreError::storage)?;
            rows::lease(&tx, &name, &holder, ttl_ms, now)?;
            let doc = rows::lease_state(&tx, &name, now)?;
            tx.commit()?;
            Ok(doc)
        })
        .await
        .map_err(StoreError::storage)?
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError> {
        self.read(move |r| now(r.changes(after, limit))).await
    }

    fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }
}

/// Runs one of [`Rows`]' futures over SQLite, which complete without suspending, to its end on
/// this (blocking-pool) thread.
fn now<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}
