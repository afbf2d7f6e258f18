//! Opening the SQLite file: durability settings and schema migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::catalogue::store::StoreError;

/// Migration `i` brings `PRAGMA user_version` from `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE realms (
    name TEXT PRIMARY KEY,
    doc  TEXT NOT NULL
);
CREATE TABLE shards (
    id  TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
-- A deleted tenant keeps its row (deleted = 1, no realm, no doc) so its version keeps rising
-- when it is created again: readers apply only newer versions.
CREATE TABLE tenants (
    id      TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    realm   TEXT REFERENCES realms(name),
    doc     TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tenants_realm ON tenants(realm);
CREATE TABLE tenant_hosts (
    host   TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id)
);
CREATE INDEX tenant_hosts_tenant ON tenant_hosts(tenant);
-- The placements of live tenants, so that shard and realm writes find their users and a
-- referenced shard cannot be deleted (the foreign key backs the explicit check).
CREATE TABLE tenant_placements (
    tenant  TEXT NOT NULL REFERENCES tenants(id),
    product TEXT NOT NULL,
    shard   TEXT NOT NULL REFERENCES shards(id),
    PRIMARY KEY (tenant, product)
);
CREATE INDEX tenant_placements_shard ON tenant_placements(shard);
CREATE TABLE changes (
    seq  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
"];

/// Opens (creating if needed) the catalogue database at `path` and brings its schema up to date.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    // Another process (a backup, an operator's sqlite3 shell) may hold the lock briefly.
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::storage(format!("journal_mode is {mode}, not wal")));
    }
    // FULL: a commit that returned is on disk, so an acknowledged write survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let Some(pending) = MIGRATIONS.get(version..) else {
        return Err(StoreError::storage(format!(
            "catalogue schema version {version} is newer than this binary's {}",
            MIGRATIONS.len()
        )));
    };
    for sql in pending {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}
