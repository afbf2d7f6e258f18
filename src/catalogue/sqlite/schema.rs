//! Opening the SQLite file: durability settings and schema migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::catalogue::store::StoreError;

/// Migration `i` brings `PRAGMA user_version` from `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r"
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
",
    r"
-- Tenant moves. Never deleted, so `n` (the number in the id `m-<n>`) is never reused.
-- `open` is 1 until the migration is done or rolled back; the partial unique index backs
-- the explicit one-open-migration-per-product check.
CREATE TABLE migrations (
    n       INTEGER PRIMARY KEY,
    tenant  TEXT NOT NULL REFERENCES tenants(id),
    product TEXT NOT NULL,
    open    INTEGER NOT NULL,
    doc     TEXT NOT NULL
);
CREATE UNIQUE INDEX migrations_open ON migrations(tenant, product) WHERE open = 1;
CREATE INDEX migrations_tenant ON migrations(tenant, n);
",
    r"
-- The log's epoch: minted once, with the log; readers that see another one reload in full.
CREATE TABLE log_meta (
    epoch TEXT NOT NULL
);
INSERT INTO log_meta (epoch) VALUES (lower(hex(randomblob(16))));
",
    r"
-- Leases (the fan-out publisher's, one per region): one holder at a time until expires_ms
-- (unix ms, by the catalogue's clock).
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
",
];

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

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(conn: &Connection) -> usize {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_file_of_the_first_schema_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalogue.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO realms (name, doc) VALUES ('us', '{}')", [])
                .unwrap();
        }
        let conn = open(&path).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len());
        assert_eq!(MIGRATIONS.len(), 4);
        let realms: u32 = conn
            .query_row("SELECT COUNT(*) FROM realms", [], |r| r.get(0))
            .unwrap();
        assert_eq!(realms, 1, "the upgrade kept the data");
        let migrations: u32 = conn
            .query_row("SELECT COUNT(*) FROM migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(migrations, 0);
        drop(conn);
        // Opening an up-to-date file again runs nothing.
        assert_eq!(user_version(&open(&path).unwrap()), MIGRATIONS.len());
    }
}
