//! The shard's durable store, modelled on how the seeds' shards keep data in regions.
//!
//! - `shard-<id>.db`: the shard's fences (who it still owns), shared by every backend of the
//!   shard, so ownership belongs to the shard and not to a backend.
//! - `data-<product>-<region>.db`: one product's items in one region, shared by every shard of
//!   the product whose data spans that region. A multi-region shard writes each item to every
//!   one of its regions and reads from its home region (the first). Moving a tenant between
//!   overlapping shards therefore copies only into the regions the target adds and deletes only
//!   from the regions it drops: the data in shared regions is already where it must be.
//!
//! One connection per process opens the shard file and attaches the region files (`r0` is the
//! home region). WAL with `synchronous=FULL` everywhere: an acknowledged write is on disk in
//! every region. Writes are `BEGIN IMMEDIATE` transactions that check the tenant's fences
//! first, so a freeze committed by any backend stops every later write on every backend: an
//! export taken after the freeze holds every write that was acknowledged. In WAL mode SQLite
//! commits each attached file atomically but not the set as one: a crash in the middle of a
//! commit can leave one region with a write that was never acknowledged (as with any
//! replication that acknowledges after every replica). rusqlite blocks, so every call runs on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, DatabaseName, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Failure;
use crate::tenant::{Product, Region, ShardId, TenantId};

/// A region file's schema, created in attached schema `{db}`.
const ITEMS: &str = r"
CREATE TABLE IF NOT EXISTS {db}.items (
    tenant TEXT NOT NULL,
    id     TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
";

/// The shard file's schema.
const SCHEMA: &str = r"
-- kind is 'frozen' (unsafe methods refused) or 'moved' (everything refused; version is the
-- catalogue version that no longer places the tenant here).
CREATE TABLE IF NOT EXISTS fences (
    tenant  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, kind)
);
";

/// The fence file of `shard` inside `dir`.
pub(super) fn db_path(dir: &Path, shard: &ShardId) -> PathBuf {
    dir.join(format!("shard-{shard}.db"))
}

/// The items file of `product` in `region` inside `dir`.
pub(super) fn region_path(dir: &Path, product: &Product, region: &Region) -> PathBuf {
    dir.join(format!("data-{product}-{region}.db"))
}

/// The attached schema of the home region, where reads and exports go.
pub(super) const HOME: &str = "r0";

/// The attached schema holding data region number `i` of the shard (`r0`: home).
pub(super) fn schema(i: usize) -> String {
    format!("r{i}")
}

/// One stored item: its id and the JSON body as posted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredItem {
    /// Item id.
    pub id: String,
    /// The posted JSON.
    pub body: Value,
}

/// What refuses requests for a tenant, if anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Fences {
    /// Unsafe methods are refused.
    pub frozen: bool,
    /// Every request is refused: the tenant lives elsewhere since this catalogue version.
    pub moved: Option<u64>,
}

impl Fences {
    /// Refuses a request when a fence says so: moved beats frozen, frozen only stops writes.
    pub fn check(self, unsafe_method: bool) -> Result<(), Failure> {
        match self.moved {
            Some(version) => Err(Failure::Moved(version)),
            None if self.frozen && unsafe_method => Err(Failure::Frozen),
            None => Ok(()),
        }
    }
}

/// One connection on the shard's files, shared by the handlers of one process.
#[derive(Clone)]
pub(super) struct ShardStore {
    conn: Arc<Mutex<Connection>>,
    /// The data regions, home first; region `i` is attached as [`schema`]`(i)`.
    regions: Arc<[Region]>,
    /// Their schema names, built once.
    schemas: Arc<[String]>,
}

impl ShardStore {
    /// Opens (creating if needed) the fence file at `path` and the items file of each of
    /// `regions` for `product` beside it. Blocks.
    pub fn open(path: &Path, product: &Product, regions: &[Region]) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open(path)?;
        // The shard's other backend, and other shards in the same regions, write to the same files.
        conn.busy_timeout(Duration::from_secs(5))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (i, region) in regions.iter().enumerate() {
            let file = region_path(dir, product, region);
            conn.execute(
                "ATTACH DATABASE ?1 AS ?2",
                params![file.to_string_lossy(), schema(i)],
            )?;
        }
        // Both backends open the file at once when a shard starts. Switching it to WAL takes an
        // exclusive lock, and SQLite answers BUSY at once there instead of waiting for the busy
        // handler: retry the setup for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match setup(&conn, regions.len()) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                done => break done?,
            }
        }
        Ok(ShardStore {
            conn: Arc::new(Mutex::new(conn)),
            regions: regions.into(),
            schemas: (0..regions.len()).map(schema).collect(),
        })
    }

    /// The data regions, home first.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The schemas of `wanted` (all regions when `None`); an error names a region this shard
    /// does not keep data in.
    pub fn schemas(&self, wanted: Option<&[Region]>) -> Result<Vec<String>, Failure> {
        let Some(wanted) = wanted else {
            return Ok(self.schemas.to_vec());
        };
        wanted
            .iter()
            .map(|r| {
                let i =
                    self.regions.iter().position(|mine| mine == r).ok_or_else(|| {
                        Failure::BadRequest(format!("{r} is not a data region of this shard"))
                    })?;
                Ok(self.schemas[i].clone())
            })
            .collect()
    }

    /// One write for `tenant` applied in every data region, in one transaction, once the
    /// tenant's fences allow writes: how a multi-region shard keeps its regions alike.
    pub async fn write_everywhere<F>(&self, tenant: TenantId, f: F) -> Result<(), Failure>
    where
        F: Fn(&Connection, &str, &TenantId) -> Result<(), Failure> + Send + 'static,
    {
        let dbs = Arc::clone(&self.schemas);
        self.write(move |tx| {
            fences(tx, &tenant)?.check(true)?;
            dbs.iter().try_for_each(|db| f(tx, db, &tenant))
        })
        .await
    }

    /// Runs `f` on the connection, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&lock(&conn)))
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when `f` succeeds.
    pub async fn write<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&conn);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic mid-call dropped its transaction, which rolled back: the connection is sound.
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fences of `tenant`.
pub(super) fn fences(c: &Connection, tenant: &TenantId) -> Result<Fences, Failure> {
    let mut stmt = c.prepare_cached("SELECT kind, version FROM fences WHERE tenant = ?1")?;
    let mut rows = stmt.query(params![tenant.as_str()])?;
    let mut out = Fences::default();
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let version: i64 = row.get(1)?;
        match kind.as_str() {
            "frozen" => out.frozen = true,
            "moved" => out.moved = Some(u64::try_from(version).unwrap_or(0)),
            _ => {}
        }
    }
    Ok(out)
}

/// Sets the frozen fence (idempotent).
pub(super) fn freeze(c: &Connection, tenant: &TenantId) -> Result<(), Failure> {
    c.execute(
        "INSERT OR IGNORE INTO fences (tenant, kind) VALUES (?1, 'frozen')",
        params![tenant.as_str()],
    )?;
    Ok(())
}

/// Clears the frozen fence (idempotent); a moved fence stays.
pub(super) fn unfreeze(c: &Connection, tenant: &TenantId) -> Result<(), Failure> {
    c.execute(
        "DELETE FROM fences WHERE tenant = ?1 AND kind = 'frozen'",
        params![tenant.as_str()],
    )?;
    Ok(())
}

/// Sets the moved fence; its version only moves forward, so a late retry of an older release
/// cannot lower it.
pub(super) fn release(c: &Connection, tenant: &TenantId, version: u64) -> Result<(), Failure> {
    let version = i64::try_from(version).map_err(|_| Failure::BadRequest("version too large".into()))?;
    c.execute(
        "INSERT INTO fences (tenant, kind, version) VALUES (?1, 'moved', ?2)
         ON CONFLICT (tenant, kind) DO UPDATE SET version = max(version, excluded.version)",
        params![tenant.as_str(), version],
    )?;
    Ok(())
}

/// Clears every fence of `tenant`: it lives here (again).
pub(super) fn clear_fences(c: &Connection, tenant: &TenantId) -> Result<(), Failure> {
    c.execute("DELETE FROM fences WHERE tenant = ?1", params![tenant.as_str()])?;
    Ok(())
}

/// Every item of `tenant` in schema `db`, oldest first.
pub(super) fn list(c: &Connection, db: &str, tenant: &TenantId) -> Result<Vec<StoredItem>, Failure> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT id, body FROM {db}.items WHERE tenant = ?1 ORDER BY rowid"
    ))?;
    let rows = stmt.query_map(params![tenant.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body): (String, String) = row?;
        out.push(StoredItem { id, body: raw(body)? });
    }
    Ok(out)
}

/// The item `id` of `tenant` in schema `db`, if any.
pub(super) fn get(
    c: &Connection,
    db: &str,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<StoredItem>, Failure> {
    let body: Option<String> = c
        .prepare_cached(&format!(
            "SELECT body FROM {db}.items WHERE tenant = ?1 AND id = ?2"
        ))?
        .query_row(params![tenant.as_str(), id], |row| row.get(0))
        .optional()?;
    body.map(|body| {
        Ok(StoredItem {
            id: id.into(),
            body: raw(body)?,
        })
    })
    .transpose()
}

/// Creates or replaces one item in schema `db`.
pub(super) fn upsert(c: &Connection, db: &str, tenant: &TenantId, item: &StoredItem) -> Result<(), Failure> {
    c.prepare_cached(&format!(
        "INSERT INTO {db}.items (tenant, id, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body"
    ))?
    .execute(params![tenant.as_str(), item.id, item.body.to_string()])?;
    Ok(())
}

/// Deletes one item from schema `db`; returns whether it existed.
pub(super) fn delete(c: &Connection, db: &str, tenant: &TenantId, id: &str) -> Result<bool, Failure> {
    let n = c.execute(
        &format!("DELETE FROM {db}.items WHERE tenant = ?1 AND id = ?2"),
        params![tenant.as_str(), id],
    )?;
    Ok(n > 0)
}

/// Deletes every item of `tenant` from schema `db`; returns how many there were.
pub(super) fn delete_all(c: &Connection, db: &str, tenant: &TenantId) -> Result<usize, Failure> {
    Ok(c.execute(
        &format!("DELETE FROM {db}.items WHERE tenant = ?1"),
        params![tenant.as_str()],
    )?)
}

/// How many items `tenant` has in schema `db`.
pub(super) fn count(c: &Connection, db: &str, tenant: &TenantId) -> Result<u64, Failure> {
    let n: i64 = c.query_row(
        &format!("SELECT count(*) FROM {db}.items WHERE tenant = ?1"),
        params![tenant.as_str()],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn raw(body: String) -> Result<Value, Failure> {
    serde_json::from_str(&body).map_err(|e| Failure::Internal(format!("stored body: {e}")))
}

/// WAL, FULL sync and the schemas of the shard file and of `regions` attached region files;
/// idempotent.
fn setup(conn: &Connection, regions: usize) -> Result<(), rusqlite::Error> {
    let schemas: Vec<String> = (0..regions).map(schema).collect();
    let dbs = std::iter::once(DatabaseName::Main).chain(schemas.iter().map(|s| DatabaseName::Attached(s)));
    for db in dbs {
        conn.pragma_update(Some(db), "journal_mode", "WAL")?;
        // FULL: a write that was acknowledged survives a crash or a power cut.
        conn.pragma_update(Some(db), "synchronous", "FULL")?;
    }
    for s in &schemas {
        conn.execute_batch(&ITEMS.replace("{db}", s))?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(super::jobs::SCHEMA)?;
    // Files of the one-file-per-shard layout kept items beside the fences: they move to the
    // home region once.
    let legacy: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'items'",
        [],
        |row| row.get(0),
    )?;
    if legacy {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT OR IGNORE INTO r0.items (tenant, id, body) SELECT tenant, id, body FROM main.items;
             DROP TABLE main.items;
             COMMIT;",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn two_backends_opening_a_new_file_at_once_both_succeed() {
        for _ in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("shard-s.db");
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                let opens: Vec<_> = (0..2)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            let regions = [
                                Region::new("us-east-1").unwrap(),
                                Region::new("us-west-2").unwrap(),
                            ];
                            ShardStore::open(&path, &Product::new("jira").unwrap(), &regions).map(drop)
                        })
                    })
                    .collect();
                for open in opens {
                    open.join().unwrap().unwrap();
                }
            });
        }
    }

    #[test]
    fn items_of_a_one_file_shard_move_to_its_home_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-s.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE items (tenant TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                                 PRIMARY KEY (tenant, id));
             INSERT INTO items VALUES ('acme', 'a', '1'), ('acme', 'b', '2');",
        )
        .unwrap();
        drop(old);
        let regions = [Region::new("us-east-1").unwrap()];
        let store = ShardStore::open(&path, &Product::new("jira").unwrap(), &regions).unwrap();
        let conn = lock(&store.conn);
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(count(&conn, HOME, &acme).unwrap(), 2);
        drop(conn);
        drop(store);
        // Opening again finds nothing left to move and keeps the items.
        let store = ShardStore::open(&path, &Product::new("jira").unwrap(), &regions).unwrap();
        assert_eq!(count(&lock(&store.conn), HOME, &acme).unwrap(), 2);
    }
}
