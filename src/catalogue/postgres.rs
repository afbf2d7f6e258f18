//! The PostgreSQL store, for a catalogue that must outlive one machine: several catalogue
//! processes may serve one database at once, and a libpq-style connection string naming
//! several hosts with `target_session_attrs=read-write` follows a failover without a restart.
//!
//! - Every write is one transaction that first locks the one row of `log_head`, so writers are
//!   serialised (as SQLite's `BEGIN IMMEDIATE` serialises them) and the log is dense and in
//!   commit order: a reader that sees seq N committed has every seq below it.
//! - Each write transaction also calls `pg_notify`, delivered on commit to every catalogue
//!   instance's listener, which wakes its long-polls. Notifications are lost across a
//!   reconnect, so the listener re-reads the head after connecting and every second as a floor.
//! - A database that cannot be reached (down, failing over, refusing connections) makes every
//!   call fail with [`StoreError::Unavailable`] (503 with `Retry-After`), never a driver message;
//!   the pool reconnects by itself.

mod rows;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::rows::Pg;

use crate::catalogue::ops::{self, Rows};
use crate::catalogue::store::{Store, StoreError, Written};
use crate::clock::{now_ms, Backoff};
use crate::feed::{
    error_chain, ChangesPage, LeaseDoc, MigrationDoc, NewMigration, Phase, RealmDoc, ShardDoc, TenantDoc,
};
use crate::tenant::{Host, Realm, ShardId, TenantId};

/// The channel every write notifies on commit, with the new head as its payload.
pub(crate) const CHANNEL: &str = "tenant_edge_catalogue_log";
/// How often the listener re-reads the head even when no notification came.
const FLOOR: Duration = Duration::from_secs(1);
/// Connections per catalogue instance.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection (and a connection for the server) before 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between the listener's failed connection attempts.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// A [`Store`] on a PostgreSQL database. Cloning shares the pool and the listener.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    head: watch::Sender<u64>,
    /// Stops the listener when the last clone is dropped.
    _listener: DropGuard,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

/// Where a connection string points, without its password: for error messages and logs.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl PgStore {
    /// Connects to the database `url` names (a libpq-style connection string or URL), brings
    /// its schema up to date and starts the listener. An unreachable server fails here, with an
    /// error naming the hosts tried.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(vec![format!("connection string: {e}")]))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("tenant-edge catalogue");
        let target = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(StoreError::storage)?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {target}: {}",
                error_chain(&e)
            ))
        })?;
        schema::migrate(&mut client).await?;
        let (head, _) = Pg::new(&client).head().await?;
        drop(client);
        let stop = CancellationToken::new();
        let head = watch::Sender::new(head);
        tokio::spawn(listen(config, head.clone(), stop.clone()));
        tracing::info!(%target, "catalogue store: PostgreSQL");
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                head,
                _listener: stop.drop_guard(),
            }),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            other => unavailable(&other),
        })
    }

    /// Publishes a head this instance committed or heard of; these only move it forward (the
    /// listener's own reads set it as it is).
    fn publish(&self, head: u64) {
        publish(&self.inner.head, head);
    }
}

fn publish(sender: &watch::Sender<u64>, head: u64) {
    sender.send_if_modified(|h| {
        let newer = head > *h;
        if newer {
            *h = head;
        }
        newer
    });
}

/// Runs `$body` (an expression using `$rows`, a [`Rows`] on the transaction) in one write
/// transaction: the `log_head` row locked first, the commit notified to every instance.
macro_rules! write {
    ($store:expr, |$rows:ident| $body:expr) => {{
        let store = $store;
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT 1 FROM log_head FOR UPDATE", &[]).await?;
        let $rows = &Pg::new(&tx);
        let out = $body.await?;
        // Every write appends at least one change, whose notification is queued with it.
        let head = $rows.appended();
        tx.commit().await?;
        store.publish(head);
        Ok(out)
    }};
}

/// Runs `$body` (an expression using `$rows`, a [`Rows`] on a pooled connection).
macro_rules! read {
    ($store:expr, |$rows:ident| $body:expr) => {{
        let client = $store.client().await?;
        let $rows = &Pg::new(&client);
        $body.await
    }};
}

#[async_trait]
impl Store for PgStore {
    async fn put_tenant(
        &self,
        id: TenantId,
        doc: TenantDoc,
        if_match: Option<u64>,
    ) -> Result<Written<TenantDoc>, StoreError> {
        write!(self, |r| ops::tenants::put(r, &id, doc, if_match))
    }

    async fn put_tenants(&self, docs: Vec<TenantDoc>) -> Result<usize, StoreError> {
        write!(self, |r| ops::tenants::put_all(r, docs))
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<TenantDoc, StoreError> {
        read!(self, |r| r.tenant(id))?.ok_or(StoreError::NotFound)
    }

    async fn delete_tenant(&self, id: &TenantId, if_match: Option<u64>) -> Result<u64, StoreError> {
        write!(self, |r| ops::tenants::delete(r, id, if_match))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantDoc>, StoreError> {
        read!(self, |r| r.tenants())
    }

    async fn list_tenants_page(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantDoc>, StoreError> {
        let after = after.map_or("", TenantId::as_str);
        read!(self, |r| r.tenants_page(after, limit))
    }

    async fn put_shard(&self, id: ShardId, doc: ShardDoc) -> Result<Written<ShardDoc>, StoreError> {
        write!(self, |r| ops::registry::put_shard(r, &id, doc))
    }

    async fn get_shard(&self, id: &ShardId) -> Result<ShardDoc, StoreError> {
        read!(self, |r| r.shard(id))?.ok_or(StoreError::NotFound)
    }

    async fn delete_shard(&self, id: &ShardId) -> Result<(), StoreError> {
        write!(self, |r| ops::registry::delete_shard(r, id))
    }

    async fn list_shards(&self) -> Result<Vec<ShardDoc>, StoreError> {
        read!(self, |r| r.shards())
    }

    async fn put_realm(&self, name: Realm, doc: RealmDoc) -> Result<Written<RealmDoc>, StoreError> {
        write!(self, |r| ops::registry::put_realm(r, &name, doc))
    }

    async fn get_realm(&self, name: &Realm) -> Result<RealmDoc, StoreError> {
        read!(self, |r| r.realm(name))?.ok_or(StoreError::NotFound)
    }

    async fn delete_realm(&self, name: &Realm) -> Result<(), StoreError> {
        write!(self, |r| ops::registry::delete_realm(r, name))
    }

    async fn list_realms(&self) -> Result<Vec<RealmDoc>, StoreError> {
        read!(self, |r| r.realms())
    }

    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError> {
        read!(self, |r| r.tenant_by_host(host))
    }

    async fn create_migration(&self, req: NewMigration) -> Result<MigrationDoc, StoreError> {
        write!(self, |r| ops::migrations::create(r, req, now_ms()))
    }

    async fn get_migration(&self, id: &str) -> Result<MigrationDoc, StoreError> {
        read!(self, |r| ops::migrations::get(r, id))
    }

    async fn list_migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError> {
        read!(self, |r| r.migrations(tenant))
    }

    async fn set_phase(
        &self,
        id: &str,
        phase: Phase,
        if_match: Option<u64>,
    ) -> Result<MigrationDoc, StoreError> {
        write!(self, |r| ops::migrations::set_phase(
            r,
            id,
            phase,
            if_match,
            now_ms()
        ))
    }

    async fn mint_epoch(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "UPDATE log_head SET epoch = replace(gen_random_uuid()::text, '-', '') RETURNING epoch",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<LeaseDoc, StoreError> {
        let client = self.client().await?;
        // By the database's clock, the same for every catalogue instance.
        const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
        if ttl_ms == 0 {
            client
                .execute(
                    "DELETE FROM leases WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await?;
        } else {
            let ttl = i64::try_from(ttl_ms).map_err(StoreError::storage)?;
            client
                .execute(
                    &format!(
                        "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, {NOW} + $3)
                         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                         WHERE leases.holder = excluded.holder OR leases.expires_ms <= {NOW}"
                    ),
                    &[&name, &holder, &ttl],
                )
                .await?;
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT {NOW}, (SELECT holder FROM leases WHERE name = $1 AND expires_ms > {NOW}),
                            (SELECT expires_ms FROM leases WHERE name = $1 AND expires_ms > {NOW})"
                ),
                &[&name],
            )
            .await?;
        let now: i64 = row.try_get(0)?;
        let held = match (
            row.try_get::<_, Option<String>>(1)?,
            row.try_get::<_, Option<i64>>(2)?,
        ) {
            (Some(holder), Some(until)) => Some((holder, until)),
            _ => None,
        };
        Ok(ops::lease_doc(name, held, now))
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError> {
        read!(self, |r| r.changes(after, limit))
    }

    fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }
}

/// Follows the log's head on its own connection: `LISTEN` for commits of every instance,
/// the head re-read after each (re)connect and every [`FLOOR`], until `stop`.
async fn listen(config: tokio_postgres::Config, head: watch::Sender<u64>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = follow(&config, &head, &mut failures) => r,
        };
        if let Err(e) = result {
            failures = failures.saturating_add(1);
            let delay = BACKOFF.delay(failures);
            tracing::warn!(error = %e, failures, "catalogue store: lost the log listener; reconnecting");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// One connection's worth of [`listen`]; returns when the connection fails.
async fn follow(
    config: &tokio_postgres::Config,
    head: &watch::Sender<u64>,
    failures: &mut u32,
) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().parse::<u64>().ok()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *failures = 0;
    loop {
        // After the LISTEN: a commit between the two is seen by one or the other.
        let now: i64 = client
            .query_one("SELECT seq FROM log_head", &[])
            .await?
            .try_get(0)?;
        publish(head, u64::try_from(now).map_err(StoreError::storage)?);
        let floor = tokio::time::sleep(FLOOR);
        tokio::pin!(floor);
        loop {
            tokio::select! {
                n = notified.recv() => match n {
                    Some(Some(seq)) => publish(head, seq),
                    Some(None) => break,
                    None => return Err(StoreError::Unavailable("the listener's connection closed".into())),
                },
                () = &mut floor => break,
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            unavailable(&e)
        } else {
            StoreError::storage(e)
        }
    }
}

/// Whether `e` says the server cannot serve now (rather than that the request was wrong):
/// a lost or refused connection, a server shutting down or starting, a read-only standby,
/// too many connections.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exception
                || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || code.starts_with("53") // insufficient resources (too many connections)
                || code == "25006" // read-only transaction: a standby
        }
        None => {
            let text = e.to_string();
            [
                "error communicating",
                "error connecting",
                "timeout waiting",
                "connection closed",
            ]
            .iter()
            .any(|p| text.starts_with(p))
        }
    }
}

/// [`StoreError::Unavailable`] for `e`, which is logged with its causes; the API's answer
/// carries no driver message.
fn unavailable(e: &dyn std::error::Error) -> StoreError {
    tracing::warn!(error = %error_chain(e), "catalogue store unavailable");
    StoreError::Unavailable("the catalogue's database cannot be reached; retry".into())
}
