//! [`Rows`] on a SQLite connection (inside the store's `BEGIN IMMEDIATE` transaction for
//! writes). Every method completes without suspending.

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use crate::catalogue::ops::{decode, encode, placement_of, Rows};
use crate::catalogue::store::StoreError;
use crate::catalogue::validate::PlacementOf;
use crate::feed::{Change, ChangeBody, ChangesPage, MigrationDoc, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Product, Realm, ShardId, TenantId};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // The disk is full (or the database file may grow no more): nothing was written,
            // the transaction rolled back; a retry once space is freed goes through (503).
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Unavailable(format!("disk full: {e}")),
            _ => StoreError::storage(e),
        }
    }
}

/// The rows of one SQLite connection.
pub(super) struct Sql<'c>(pub(super) &'c Connection);

impl Sql<'_> {
    /// The document a one-key `sql` selects, if any.
    fn one_doc<T: DeserializeOwned>(&self, sql: &str, key: &str) -> Result<Option<T>, StoreError> {
        let json: Option<String> = self
            .0
            .prepare_cached(sql)?
            .query_row([key], |r| r.get(0))
            .optional()?;
        json.as_deref().map(decode).transpose()
    }

    /// The values of the first column `sql` selects (with `key` as its one parameter when
    /// given), as strings.
    fn strings(&self, sql: &str, key: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let column = |r: &rusqlite::Row<'_>| r.get::<_, String>(0);
        let rows = match key {
            Some(key) => stmt.query_map([key], column)?.collect::<Result<_, _>>(),
            None => stmt.query_map([], column)?.collect::<Result<_, _>>(),
        };
        Ok(rows?)
    }

    /// Every document `sql` selects (one JSON column).
    fn docs<T: DeserializeOwned>(&self, sql: &str, key: Option<&str>) -> Result<Vec<T>, StoreError> {
        self.strings(sql, key)?.iter().map(|json| decode(json)).collect()
    }

    /// Placements selected by `sql` as `(tenant, product, JSON doc of the related entity)`.
    fn placements<T: DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Vec<PlacementOf<T>>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (tenant, product, json) = row?;
            placement_of(&tenant, &product, &json)
        })
        .collect()
    }

    fn run(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
        self.0.prepare_cached(sql)?.execute(params)?;
        Ok(())
    }
}

/// The newest sequence number of the log (0 when empty).
pub(super) fn head(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?)
}

/// The log's epoch (see [`ChangesPage::epoch`]).
pub(super) fn epoch(conn: &Connection) -> Result<String, StoreError> {
    Ok(conn.query_row("SELECT epoch FROM log_meta", [], |r| r.get(0))?)
}

/// Takes or renews lease `name` for `holder` until `now + ttl_ms` when it is free, expired or
/// already `holder`'s; `ttl_ms` 0 gives it up if it is `holder`'s.
pub(super) fn lease(
    conn: &Connection,
    name: &str,
    holder: &str,
    ttl_ms: u64,
    now: i64,
) -> Result<(), StoreError> {
    if ttl_ms == 0 {
        conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
            .execute(params![name, holder])?;
        return Ok(());
    }
    let until = now.saturating_add(i64::try_from(ttl_ms).map_err(StoreError::storage)?);
    conn.prepare_cached(
        "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
         WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4",
    )?
    .execute(params![name, holder, until, now])?;
    Ok(())
}

/// Who holds lease `name` at `now`.
pub(super) fn lease_state(
    conn: &Connection,
    name: &str,
    now: i64,
) -> Result<crate::feed::LeaseDoc, StoreError> {
    let row = conn
        .prepare_cached("SELECT holder, expires_ms FROM leases WHERE name = ?1 AND expires_ms > ?2")?
        .query_row(params![name, now], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    Ok(crate::catalogue::ops::lease_doc(name, row, now))
}

impl Rows for Sql<'_> {
    async fn tenant_version(&self, id: &TenantId) -> Result<(u64, bool), StoreError> {
        let row = self
            .0
            .prepare_cached("SELECT version, deleted FROM tenants WHERE id = ?1")?
            .query_row([id.as_str()], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, bool>(1)?)))
            .optional()?;
        Ok(row.map_or((0, false), |(version, deleted)| (version, !deleted)))
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantDoc>, StoreError> {
        self.one_doc(
            "SELECT doc FROM tenants WHERE id = ?1 AND deleted = 0",
            id.as_str(),
        )
    }

    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError> {
        self.one_doc(
            "SELECT t.doc FROM tenant_hosts h JOIN tenants t ON t.id = h.tenant
             WHERE h.host = ?1 AND t.deleted = 0",
            host.as_str(),
        )
    }

    async fn tenants(&self) -> Result<Vec<TenantDoc>, StoreError> {
        self.docs("SELECT doc FROM tenants WHERE deleted = 0 ORDER BY id", None)
    }

    async fn tenants_page(&self, after: &str, limit: usize) -> Result<Vec<TenantDoc>, StoreError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT doc FROM tenants WHERE deleted = 0 AND id > ?1 ORDER BY id LIMIT ?2")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = stmt
            .query_map(params![after, limit], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        docs.iter().map(|json| decode(json)).collect()
    }

    async fn host_owner(&self, host: &Host, except: &TenantId) -> Result<Option<TenantId>, StoreError> {
        let owner: Option<String> = self
            .0
            .prepare_cached("SELECT tenant FROM tenant_hosts WHERE host = ?1 AND tenant != ?2")?
            .query_row([host.as_str(), except.as_str()], |r| r.get(0))
            .optional()?;
        owner
            .map(|o| TenantId::new(&o).map_err(StoreError::storage))
            .transpose()
    }

    async fn write_tenant(&self, doc: &TenantDoc) -> Result<(), StoreError> {
        let id = doc.id.as_str();
        self.run(
            "INSERT INTO tenants (id, version, realm, doc, deleted) VALUES (?1, ?2, ?3, ?4, 0)
             ON CONFLICT (id) DO UPDATE SET
                 version = excluded.version, realm = excluded.realm, doc = excluded.doc, deleted = 0",
            params![id, doc.version, doc.realm.as_str(), encode(doc)?],
        )?;
        self.run("DELETE FROM tenant_hosts WHERE tenant = ?1", [id])?;
        self.run("DELETE FROM tenant_placements WHERE tenant = ?1", [id])?;
        let mut hosts = self
            .0
            .prepare_cached("INSERT INTO tenant_hosts (host, tenant) VALUES (?1, ?2)")?;
        for host in &doc.hosts {
            hosts.execute([host.as_str(), id])?;
        }
        let mut placements = self
            .0
            .prepare_cached("INSERT INTO tenant_placements (tenant, product, shard) VALUES (?1, ?2, ?3)")?;
        for (product, placement) in &doc.placements {
            placements.execute([id, product.as_str(), placement.shard.as_str()])?;
        }
        Ok(())
    }

    async fn tombstone_tenant(&self, id: &TenantId, version: u64) -> Result<(), StoreError> {
        self.run("DELETE FROM tenant_hosts WHERE tenant = ?1", [id.as_str()])?;
        self.run("DELETE FROM tenant_placements WHERE tenant = ?1", [id.as_str()])?;
        self.run(
            "UPDATE tenants SET version = ?2, realm = NULL, doc = NULL, deleted = 1 WHERE id = ?1",
            params![id.as_str(), version],
        )
    }

    async fn realm(&self, name: &Realm) -> Result<Option<RealmDoc>, StoreError> {
        self.one_doc("SELECT doc FROM realms WHERE name = ?1", name.as_str())
    }

    async fn realms(&self) -> Result<Vec<RealmDoc>, StoreError> {
        self.docs("SELECT doc FROM realms ORDER BY name", None)
    }

    async fn write_realm(&self, name: &Realm, doc: &RealmDoc) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO realms (name, doc) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            params![name.as_str(), encode(doc)?],
        )
    }

    async fn remove_realm(&self, name: &Realm) -> Result<(), StoreError> {
        self.run("DELETE FROM realms WHERE name = ?1", [name.as_str()])
    }

    async fn realm_users(&self, name: &Realm) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT id FROM tenants WHERE realm = ?1 AND deleted = 0 ORDER BY id",
            Some(name.as_str()),
        )
    }

    async fn placements_in_realm(&self, name: &Realm) -> Result<Vec<PlacementOf<ShardDoc>>, StoreError> {
        self.placements(
            "SELECT p.tenant, p.product, s.doc FROM tenant_placements p
             JOIN tenants t ON t.id = p.tenant JOIN shards s ON s.id = p.shard
             WHERE t.realm = ?1 ORDER BY p.tenant, p.product",
            name.as_str(),
        )
    }

    async fn shard(&self, id: &ShardId) -> Result<Option<ShardDoc>, StoreError> {
        self.one_doc("SELECT doc FROM shards WHERE id = ?1", id.as_str())
    }

    async fn shards(&self) -> Result<Vec<ShardDoc>, StoreError> {
        self.docs("SELECT doc FROM shards ORDER BY id", None)
    }

    async fn write_shard(&self, id: &ShardId, doc: &ShardDoc) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO shards (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            params![id.as_str(), encode(doc)?],
        )
    }

    async fn remove_shard(&self, id: &ShardId) -> Result<(), StoreError> {
        self.run("DELETE FROM shards WHERE id = ?1", [id.as_str()])
    }

    async fn shard_users(&self, id: &ShardId) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT DISTINCT tenant FROM tenant_placements WHERE shard = ?1 ORDER BY tenant",
            Some(id.as_str()),
        )
    }

    async fn placements_on_shard(&self, id: &ShardId) -> Result<Vec<PlacementOf<RealmDoc>>, StoreError> {
        self.placements(
            "SELECT p.tenant, p.product, r.doc FROM tenant_placements p
             JOIN tenants t ON t.id = p.tenant JOIN realms r ON r.name = t.realm
             WHERE p.shard = ?1 ORDER BY p.tenant, p.product",
            id.as_str(),
        )
    }

    async fn migration(&self, n: i64) -> Result<Option<MigrationDoc>, StoreError> {
        let json: Option<String> = self
            .0
            .prepare_cached("SELECT doc FROM migrations WHERE n = ?1")?
            .query_row([n], |r| r.get(0))
            .optional()?;
        json.as_deref().map(decode).transpose()
    }

    async fn migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError> {
        match tenant {
            None => self.docs("SELECT doc FROM migrations ORDER BY n DESC", None),
            Some(t) => self.docs(
                "SELECT doc FROM migrations WHERE tenant = ?1 ORDER BY n DESC",
                Some(t.as_str()),
            ),
        }
    }

    async fn open_migration(&self, tenant: &TenantId, product: &Product) -> Result<Option<i64>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT n FROM migrations WHERE tenant = ?1 AND product = ?2 AND open = 1")?
            .query_row([tenant.as_str(), product.as_str()], |r| r.get(0))
            .optional()?)
    }

    async fn next_migration(&self) -> Result<i64, StoreError> {
        Ok(self
            .0
            .query_row("SELECT COALESCE(MAX(n), 0) + 1 FROM migrations", [], |r| r.get(0))?)
    }

    async fn write_migration(&self, n: i64, doc: &MigrationDoc, open: bool) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO migrations (n, tenant, product, open, doc) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (n) DO UPDATE SET open = excluded.open, doc = excluded.doc",
            params![n, doc.tenant.as_str(), doc.product.as_str(), open, encode(doc)?],
        )
    }

    async fn append(&self, body: &ChangeBody) -> Result<u64, StoreError> {
        let seq = head(self.0)? + 1;
        self.run(
            "INSERT INTO changes (seq, body) VALUES (?1, ?2)",
            params![seq, encode(body)?],
        )?;
        Ok(seq)
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT seq, body FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?))
        })?;
        let changes = rows
            .map(|row| {
                let (seq, json) = row?;
                Ok(Change {
                    seq,
                    body: decode(&json)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ChangesPage {
            changes,
            head: head(self.0)?,
            epoch: epoch(self.0)?,
        })
    }
}
