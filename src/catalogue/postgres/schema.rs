//! The PostgreSQL schema and its versioned migrations, applied at start under an advisory
//! lock so that catalogue instances starting together apply each one once.

use deadpool_postgres::GenericClient;

use crate::catalogue::store::StoreError;

/// Migration `i` brings `schema_version` from `i` to `i + 1`. Append, never edit.
///
/// Keys are `COLLATE "C"` so that lists come back in byte order, as SQLite's do, whatever the
/// database's locale.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE realms (
    name TEXT COLLATE "C" PRIMARY KEY,
    doc  TEXT NOT NULL
);
CREATE TABLE shards (
    id  TEXT COLLATE "C" PRIMARY KEY,
    doc TEXT NOT NULL
);
-- A deleted tenant keeps its row (deleted, no realm, no doc) so its version keeps rising when
-- it is created again: readers apply only newer versions.
CREATE TABLE tenants (
    id      TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL,
    realm   TEXT COLLATE "C" REFERENCES realms(name),
    doc     TEXT,
    deleted BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX tenants_realm ON tenants(realm);
CREATE TABLE tenant_hosts (
    host   TEXT COLLATE "C" PRIMARY KEY,
    tenant TEXT COLLATE "C" NOT NULL REFERENCES tenants(id)
);
CREATE INDEX tenant_hosts_tenant ON tenant_hosts(tenant);
CREATE TABLE tenant_placements (
    tenant  TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    product TEXT COLLATE "C" NOT NULL,
    shard   TEXT COLLATE "C" NOT NULL REFERENCES shards(id),
    PRIMARY KEY (tenant, product)
);
CREATE INDEX tenant_placements_shard ON tenant_placements(shard);
-- The log. Sequence numbers come from log_head, whose one row every write transaction locks
-- first: writers are serialised, so numbers are handed out in commit order and a reader that
-- sees seq N committed has every seq below it (a sequence object would hand them out in the
-- order transactions start, and a reader could pass a number still in flight).
CREATE TABLE changes (
    seq  BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE log_head (
    one   BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq   BIGINT NOT NULL,
    epoch TEXT NOT NULL
);
INSERT INTO log_head (seq, epoch) VALUES (0, replace(gen_random_uuid()::text, '-', ''));
-- Tenant moves, never deleted, so `n` (the number in the id `m-<n>`) is never reused. The
-- partial unique index backs the one-open-migration-per-product check.
CREATE TABLE migrations (
    n       BIGINT PRIMARY KEY,
    tenant  TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    product TEXT COLLATE "C" NOT NULL,
    open    BOOLEAN NOT NULL,
    doc     TEXT NOT NULL
);
CREATE UNIQUE INDEX migrations_open ON migrations(tenant, product) WHERE open;
CREATE INDEX migrations_tenant ON migrations(tenant, n);
"#,
    r#"
-- Leases (the fan-out publisher's, one per region): one holder at a time until expires_ms
-- (unix ms, by the database's clock, the same for every catalogue instance).
CREATE TABLE leases (
    name       TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#,
];

/// The advisory lock key of schema migrations (any constant the catalogue alone uses).
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74;

/// Brings the schema up to date; refuses a database whose schema is newer than this binary.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await?;
    let version: i32 = match tx.query_opt("SELECT version FROM schema_version", &[]).await? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let done = usize::try_from(version).map_err(StoreError::storage)?;
    let Some(pending) = MIGRATIONS.get(done..) else {
        return Err(StoreError::storage(format!(
            "catalogue schema version {version} is newer than this binary's {}",
            MIGRATIONS.len()
        )));
    };
    for sql in pending {
        tx.batch_execute(sql).await?;
    }
    let now = i32::try_from(MIGRATIONS.len()).map_err(StoreError::storage)?;
    tx.execute("UPDATE schema_version SET version = $1", &[&now])
        .await?;
    tx.commit().await?;
    Ok(())
}
