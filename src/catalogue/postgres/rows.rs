//! [`Rows`] on a PostgreSQL connection: inside a write transaction (which holds the
//! `log_head` row lock) or on a pooled connection for the API's reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::GenericClient;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::catalogue::ops::{decode, encode, placement_of, Rows};
use crate::catalogue::store::StoreError;
use crate::catalogue::validate::PlacementOf;
use crate::feed::{Change, ChangeBody, ChangesPage, MigrationDoc, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Product, Realm, ShardId, TenantId};

/// The rows of one PostgreSQL client or transaction, and the last seq it appended.
pub(super) struct Pg<'c, C> {
    client: &'c C,
    appended: AtomicU64,
}

impl<'c, C> Pg<'c, C> {
    pub(super) fn new(client: &'c C) -> Self {
        Pg {
            client,
            appended: AtomicU64::new(0),
        }
    }

    /// The seq of the last change appended through these rows (0 if none).
    pub(super) fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// A `u64` as PostgreSQL's `BIGINT`.
pub(super) fn big(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(StoreError::storage)
}

/// A `BIGINT` column read back as the `u64` it was written from.
fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(StoreError::storage)
}

impl<C: GenericClient> Pg<'_, C> {
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.client.prepare_cached(sql).await?;
        Ok(self.client.query(&stmt, params).await?)
    }

    async fn opt(&self, sql: &str, params: Params<'_>) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let stmt = self.client.prepare_cached(sql).await?;
        Ok(self.client.query_opt(&stmt, params).await?)
    }

    async fn run(&self, sql: &str, params: Params<'_>) -> Result<(), StoreError> {
        let stmt = self.client.prepare_cached(sql).await?;
        self.client.execute(&stmt, params).await?;
        Ok(())
    }

    /// The document (first column, JSON) of the row `sql` selects, if any.
    async fn one_doc<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<T>, StoreError> {
        match self.opt(sql, params).await? {
            Some(row) => Ok(Some(decode(row.try_get::<_, &str>(0)?)?)),
            None => Ok(None),
        }
    }

    /// The first column of every row `sql` selects, as strings.
    async fn strings(&self, sql: &str, params: Params<'_>) -> Result<Vec<String>, StoreError> {
        self.rows(sql, params)
            .await?
            .iter()
            .map(|row| Ok(row.try_get::<_, String>(0)?))
            .collect()
    }

    /// Every document (first column, JSON) `sql` selects.
    async fn docs<T: DeserializeOwned>(&self, sql: &str, params: Params<'_>) -> Result<Vec<T>, StoreError> {
        self.rows(sql, params)
            .await?
            .iter()
            .map(|row| decode(row.try_get::<_, &str>(0)?))
            .collect()
    }

    /// Placements selected by `sql` as `(tenant, product, JSON doc of the related entity)`.
    async fn placements<T: DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Vec<PlacementOf<T>>, StoreError> {
        self.rows(sql, &[&key])
            .await?
            .iter()
            .map(|row| placement_of(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            .collect()
    }

    /// The log's head and epoch.
    pub(super) async fn head(&self) -> Result<(u64, String), StoreError> {
        let row = self
            .opt("SELECT seq, epoch FROM log_head", &[])
            .await?
            .ok_or_else(|| StoreError::storage("log_head has no row"))?;
        Ok((unsigned(row.try_get(0)?)?, row.try_get(1)?))
    }
}

impl<C: GenericClient> Rows for Pg<'_, C> {
    async fn tenant_version(&self, id: &TenantId) -> Result<(u64, bool), StoreError> {
        match self
            .opt(
                "SELECT version, deleted FROM tenants WHERE id = $1",
                &[&id.as_str()],
            )
            .await?
        {
            Some(row) => Ok((unsigned(row.try_get(0)?)?, !row.try_get::<_, bool>(1)?)),
            None => Ok((0, false)),
        }
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantDoc>, StoreError> {
        self.one_doc(
            "SELECT doc FROM tenants WHERE id = $1 AND NOT deleted",
            &[&id.as_str()],
        )
        .await
    }

    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError> {
        self.one_doc(
            "SELECT t.doc FROM tenant_hosts h JOIN tenants t ON t.id = h.tenant
             WHERE h.host = $1 AND NOT t.deleted",
            &[&host.as_str()],
        )
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantDoc>, StoreError> {
        self.docs("SELECT doc FROM tenants WHERE NOT deleted ORDER BY id", &[])
            .await
    }

    async fn tenants_page(&self, after: &str, limit: usize) -> Result<Vec<TenantDoc>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.docs(
            "SELECT doc FROM tenants WHERE NOT deleted AND id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
    }

    async fn host_owner(&self, host: &Host, except: &TenantId) -> Result<Option<TenantId>, StoreError> {
        match self
            .opt(
                "SELECT tenant FROM tenant_hosts WHERE host = $1 AND tenant <> $2",
                &[&host.as_str(), &except.as_str()],
            )
            .await?
        {
            Some(row) => Ok(Some(
                TenantId::new(row.try_get::<_, &str>(0)?).map_err(StoreError::storage)?,
            )),
            None => Ok(None),
        }
    }

    async fn write_tenant(&self, doc: &TenantDoc) -> Result<(), StoreError> {
        let id = doc.id.as_str();
        let (version, realm, json) = (big(doc.version)?, doc.realm.as_str(), encode(doc)?);
        let row: [&(dyn ToSql + Sync); 4] = [&id, &version, &realm, &json];
        let of_tenant: [&(dyn ToSql + Sync); 1] = [&id];
        // Sent together (pipelined), executed in order; the inserts after the deletes.
        futures::try_join!(
            self.run(
                "INSERT INTO tenants (id, version, realm, doc, deleted) VALUES ($1, $2, $3, $4, false)
                 ON CONFLICT (id) DO UPDATE SET
                     version = excluded.version, realm = excluded.realm, doc = excluded.doc, deleted = false",
                &row,
            ),
            self.run("DELETE FROM tenant_hosts WHERE tenant = $1", &of_tenant),
            self.run("DELETE FROM tenant_placements WHERE tenant = $1", &of_tenant),
        )?;
        let hosts: Vec<&str> = doc.hosts.iter().map(Host::as_str).collect();
        let products: Vec<&str> = doc.placements.keys().map(Product::as_str).collect();
        let shards: Vec<&str> = doc.placements.values().map(|p| p.shard.as_str()).collect();
        let host_rows: [&(dyn ToSql + Sync); 2] = [&hosts, &id];
        let placement_rows: [&(dyn ToSql + Sync); 3] = [&id, &products, &shards];
        futures::try_join!(
            self.run(
                "INSERT INTO tenant_hosts (host, tenant) SELECT h, $2 FROM unnest($1::text[]) AS h",
                &host_rows,
            ),
            self.run(
                "INSERT INTO tenant_placements (tenant, product, shard)
                 SELECT $1, p, s FROM unnest($2::text[], $3::text[]) AS u(p, s)",
                &placement_rows,
            ),
        )?;
        Ok(())
    }

    async fn tombstone_tenant(&self, id: &TenantId, version: u64) -> Result<(), StoreError> {
        let id = id.as_str();
        self.run("DELETE FROM tenant_hosts WHERE tenant = $1", &[&id])
            .await?;
        self.run("DELETE FROM tenant_placements WHERE tenant = $1", &[&id])
            .await?;
        self.run(
            "UPDATE tenants SET version = $2, realm = NULL, doc = NULL, deleted = true WHERE id = $1",
            &[&id, &big(version)?],
        )
        .await
    }

    async fn realm(&self, name: &Realm) -> Result<Option<RealmDoc>, StoreError> {
        self.one_doc("SELECT doc FROM realms WHERE name = $1", &[&name.as_str()])
            .await
    }

    async fn realms(&self) -> Result<Vec<RealmDoc>, StoreError> {
        self.docs("SELECT doc FROM realms ORDER BY name", &[]).await
    }

    async fn write_realm(&self, name: &Realm, doc: &RealmDoc) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO realms (name, doc) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            &[&name.as_str(), &encode(doc)?],
        )
        .await
    }

    async fn remove_realm(&self, name: &Realm) -> Result<(), StoreError> {
        self.run("DELETE FROM realms WHERE name = $1", &[&name.as_str()])
            .await
    }

    async fn realm_users(&self, name: &Realm) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT id FROM tenants WHERE realm = $1 AND NOT deleted ORDER BY id",
            &[&name.as_str()],
        )
        .await
    }

    async fn placements_in_realm(&self, name: &Realm) -> Result<Vec<PlacementOf<ShardDoc>>, StoreError> {
        self.placements(
            "SELECT p.tenant, p.product, s.doc FROM tenant_placements p
             JOIN tenants t ON t.id = p.tenant JOIN shards s ON s.id = p.shard
             WHERE t.realm = $1 ORDER BY p.tenant, p.product",
            name.as_str(),
        )
        .await
    }

    async fn shard(&self, id: &ShardId) -> Result<Option<ShardDoc>, StoreError> {
        self.one_doc("SELECT doc FROM shards WHERE id = $1", &[&id.as_str()])
            .await
    }

    async fn shards(&self) -> Result<Vec<ShardDoc>, StoreError> {
        self.docs("SELECT doc FROM shards ORDER BY id", &[]).await
    }

    async fn write_shard(&self, id: &ShardId, doc: &ShardDoc) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO shards (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            &[&id.as_str(), &encode(doc)?],
        )
        .await
    }

    async fn remove_shard(&self, id: &ShardId) -> Result<(), StoreError> {
        self.run("DELETE FROM shards WHERE id = $1", &[&id.as_str()])
            .await
    }

    async fn shard_users(&self, id: &ShardId) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT DISTINCT tenant FROM tenant_placements WHERE shard = $1 ORDER BY tenant",
            &[&id.as_str()],
        )
        .await
    }

    async fn placements_on_shard(&self, id: &ShardId) -> Result<Vec<PlacementOf<RealmDoc>>, StoreError> {
        self.placements(
            "SELECT p.tenant, p.product, r.doc FROM tenant_placements p
             JOIN tenants t ON t.id = p.tenant JOIN realms r ON r.name = t.realm
             WHERE p.shard = $1 ORDER BY p.tenant, p.product",
            id.as_str(),
        )
        .await
    }

    async fn migration(&self, n: i64) -> Result<Option<MigrationDoc>, StoreError> {
        self.one_doc("SELECT doc FROM migrations WHERE n = $1", &[&n])
            .await
    }

    async fn migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError> {
        match tenant {
            None => self.docs("SELECT doc FROM migrations ORDER BY n DESC", &[]).await,
            Some(t) => {
                self.docs(
                    "SELECT doc FROM migrations WHERE tenant = $1 ORDER BY n DESC",
                    &[&t.as_str()],
                )
                .await
            }
        }
    }

    async fn open_migration(&self, tenant: &TenantId, product: &Product) -> Result<Option<i64>, StoreError> {
        match self
            .opt(
                "SELECT n FROM migrations WHERE tenant = $1 AND product = $2 AND open",
                &[&tenant.as_str(), &product.as_str()],
            )
            .await?
        {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn next_migration(&self) -> Result<i64, StoreError> {
        let row = self
            .opt("SELECT COALESCE(MAX(n), 0) + 1 FROM migrations", &[])
            .await?
            .ok_or_else(|| StoreError::storage("an aggregate returned no row"))?;
        Ok(row.try_get(0)?)
    }

    async fn write_migration(&self, n: i64, doc: &MigrationDoc, open: bool) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO migrations (n, tenant, product, open, doc) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (n) DO UPDATE SET open = excluded.open, doc = excluded.doc",
            &[
                &n,
                &doc.tenant.as_str(),
                &doc.product.as_str(),
                &open,
                &encode(doc)?,
            ],
        )
        .await
    }

    async fn append(&self, body: &ChangeBody) -> Result<u64, StoreError> {
        // The row is locked already (the write began by locking it); this takes the number and
        // queues its notification, delivered to every instance on commit.
        let json = encode(body)?;
        let seq = self
            .opt(
                "UPDATE log_head SET seq = seq + 1 RETURNING seq, pg_notify($1, (seq)::text)::text",
                &[&super::CHANNEL],
            )
            .await?;
        let seq: i64 = seq
            .ok_or_else(|| StoreError::storage("log_head has no row"))?
            .try_get(0)?;
        self.run("INSERT INTO changes (seq, body) VALUES ($1, $2)", &[&seq, &json])
            .await?;
        let seq = unsigned(seq)?;
        self.appended.fetch_max(seq, Ordering::Relaxed);
        Ok(seq)
    }

    async fn tenant_versions(&self, ids: &[&TenantId]) -> Result<HashMap<TenantId, (u64, bool)>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        self.rows(
            "SELECT id, version, deleted FROM tenants WHERE id = ANY($1::text[])",
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| {
            let id = TenantId::new(row.try_get::<_, &str>(0)?).map_err(StoreError::storage)?;
            Ok((id, (unsigned(row.try_get(1)?)?, !row.try_get::<_, bool>(2)?)))
        })
        .collect()
    }

    async fn host_owners(&self, hosts: &[&Host]) -> Result<HashMap<Host, TenantId>, StoreError> {
        let hosts: Vec<&str> = hosts.iter().map(|h| h.as_str()).collect();
        self.rows(
            "SELECT host, tenant FROM tenant_hosts WHERE host = ANY($1::text[])",
            &[&hosts],
        )
        .await?
        .iter()
        .map(|row| {
            let host = Host::parse(row.try_get::<_, &str>(0)?).map_err(StoreError::storage)?;
            let owner = TenantId::new(row.try_get::<_, &str>(1)?).map_err(StoreError::storage)?;
            Ok((host, owner))
        })
        .collect()
    }

    async fn write_tenants(&self, docs: &[&TenantDoc]) -> Result<(), StoreError> {
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        let versions = docs
            .iter()
            .map(|d| big(d.version))
            .collect::<Result<Vec<_>, _>>()?;
        let realms: Vec<&str> = docs.iter().map(|d| d.realm.as_str()).collect();
        let json = docs.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        self.run(
            "INSERT INTO tenants (id, version, realm, doc, deleted)
             SELECT id, version, realm, doc, false
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS u(id, version, realm, doc)
             ON CONFLICT (id) DO UPDATE SET
                 version = excluded.version, realm = excluded.realm, doc = excluded.doc, deleted = false",
            &[&ids, &versions, &realms, &json],
        )
        .await?;
        self.run("DELETE FROM tenant_hosts WHERE tenant = ANY($1::text[])", &[&ids])
            .await?;
        self.run(
            "DELETE FROM tenant_placements WHERE tenant = ANY($1::text[])",
            &[&ids],
        )
        .await?;
        let (mut hosts, mut owners) = (Vec::new(), Vec::new());
        let (mut tenants, mut products, mut shards) = (Vec::new(), Vec::new(), Vec::new());
        for doc in docs {
            for host in &doc.hosts {
                hosts.push(host.as_str());
                owners.push(doc.id.as_str());
            }
            for (product, placement) in &doc.placements {
                tenants.push(doc.id.as_str());
                products.push(product.as_str());
                shards.push(placement.shard.as_str());
            }
        }
        self.run(
            "INSERT INTO tenant_hosts (host, tenant) SELECT * FROM unnest($1::text[], $2::text[])",
            &[&hosts, &owners],
        )
        .await?;
        self.run(
            "INSERT INTO tenant_placements (tenant, product, shard)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            &[&tenants, &products, &shards],
        )
        .await
    }

    async fn append_all(&self, bodies: &[ChangeBody]) -> Result<u64, StoreError> {
        let n = i64::try_from(bodies.len()).map_err(StoreError::storage)?;
        let row = self
            .opt(
                "UPDATE log_head SET seq = seq + $1 RETURNING seq, pg_notify($2, (seq)::text)::text",
                &[&n, &super::CHANNEL],
            )
            .await?
            .ok_or_else(|| StoreError::storage("log_head has no row"))?;
        let last: i64 = row.try_get(0)?;
        let seqs: Vec<i64> = (last - n + 1..=last).collect();
        let json = bodies.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        self.run(
            "INSERT INTO changes (seq, body) SELECT * FROM unnest($1::bigint[], $2::text[])",
            &[&seqs, &json],
        )
        .await?;
        let last = unsigned(last)?;
        self.appended.fetch_max(last, Ordering::Relaxed);
        Ok(last)
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError> {
        let limit = i64::try_from(limit).map_err(StoreError::storage)?;
        let changes = self
            .rows(
                "SELECT seq, body FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&big(after)?, &limit],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(Change {
                    seq: unsigned(row.try_get(0)?)?,
                    body: decode(row.try_get::<_, &str>(1)?)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Read after the page, so the head is at least its last seq.
        let (head, epoch) = self.head().await?;
        Ok(ChangesPage { changes, head, epoch })
    }
}
