//! The storage boundary of the catalogue: what any backing store (SQLite today, Postgres when
//! the catalogue must be highly available) offers the HTTP API.
//!
//! Every write validates, changes the state and appends its [`Change`](crate::feed::Change) to the log in one
//! transaction, so the log and the state never disagree.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::feed::{ChangesPage, LeaseDoc, MigrationDoc, NewMigration, Phase, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Host, Realm, ShardId, TenantId};

/// Why a store operation failed. The HTTP API maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such tenant, shard or realm (404).
    #[error("not found")]
    NotFound,
    /// `If-Match` named another version than the current one (409). `current` is 0 when the
    /// tenant does not exist.
    #[error("version conflict: the current version is {current}")]
    VersionConflict {
        /// The version the tenant has now.
        current: u64,
    },
    /// A host of the document already names another tenant (409).
    #[error("host {host} belongs to tenant {owner}")]
    HostTaken {
        /// The contested host.
        host: Host,
        /// The tenant holding it.
        owner: TenantId,
    },
    /// The document breaks the catalogue's rules (422); every problem found is listed.
    #[error("invalid document: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The shard or realm is still referenced by tenants and cannot be deleted (409).
    #[error("{0}")]
    InUse(String),
    /// The tenant's product already has a migration that is neither done nor rolled back (409).
    #[error("migration {id} of this tenant's product is still open")]
    MigrationOpen {
        /// The open migration.
        id: String,
    },
    /// The backing store cannot be reached now (503 with `Retry-After`): the database is
    /// down, failing over, or refusing connections. Nothing was written, or the write's
    /// outcome is unknown and a retry by compare-and-set is safe.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backing store failed (500).
    #[error("storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps any error of the backing store.
    pub fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Storage(e.into())
    }
}

/// The outcome of a put: the stored document and whether it was created (rather than replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// The document as stored (for tenants, with its new `version`).
    pub doc: T,
    /// True when nothing live existed under that id before (a re-created tenant counts too).
    pub created: bool,
}

/// A catalogue store: tenants with compare-and-set versions, the shard registry, realms, and
/// the ordered change log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces tenant `id` with `doc` (whose `version` is ignored).
    ///
    /// With `if_match`, the write happens only when the tenant's current version equals it (a
    /// missing tenant has version 0). The stored version starts at 1 and rises by one per write,
    /// across deletes.
    async fn put_tenant(
        &self,
        id: TenantId,
        doc: TenantDoc,
        if_match: Option<u64>,
    ) -> Result<Written<TenantDoc>, StoreError>;
    /// Creates or replaces every tenant of `docs` in one transaction, each as
    /// [`Store::put_tenant`] without `If-Match` would; all or nothing. A rule broken names the
    /// index and id of its document. Returns how many were written.
    async fn put_tenants(&self, docs: Vec<TenantDoc>) -> Result<usize, StoreError>;
    /// The live tenant `id`.
    async fn get_tenant(&self, id: &TenantId) -> Result<TenantDoc, StoreError>;
    /// Deletes tenant `id` (keeping a tombstone) and returns the version of the delete.
    async fn delete_tenant(&self, id: &TenantId, if_match: Option<u64>) -> Result<u64, StoreError>;
    /// Every live tenant, ordered by id.
    async fn list_tenants(&self) -> Result<Vec<TenantDoc>, StoreError>;
    /// At most `limit` live tenants, ordered by id, from the first after `after` (from the
    /// first of all without it): one page of [`Store::list_tenants`].
    async fn list_tenants_page(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantDoc>, StoreError>;

    /// Creates or replaces shard `id`; tenants placed on it must stay valid.
    async fn put_shard(&self, id: ShardId, doc: ShardDoc) -> Result<Written<ShardDoc>, StoreError>;
    /// The shard `id`.
    async fn get_shard(&self, id: &ShardId) -> Result<ShardDoc, StoreError>;
    /// Deletes shard `id`; refused with [`StoreError::InUse`] while a tenant is placed on it.
    async fn delete_shard(&self, id: &ShardId) -> Result<(), StoreError>;
    /// Every shard, ordered by id.
    async fn list_shards(&self) -> Result<Vec<ShardDoc>, StoreError>;

    /// Creates or replaces realm `name`; tenants in it must stay valid.
    async fn put_realm(&self, name: Realm, doc: RealmDoc) -> Result<Written<RealmDoc>, StoreError>;
    /// The realm `name`.
    async fn get_realm(&self, name: &Realm) -> Result<RealmDoc, StoreError>;
    /// Deletes realm `name`; refused with [`StoreError::InUse`] while a tenant is in it.
    async fn delete_realm(&self, name: &Realm) -> Result<(), StoreError>;
    /// Every realm, ordered by name.
    async fn list_realms(&self) -> Result<Vec<RealmDoc>, StoreError>;

    /// The live tenant owning `host`, if any.
    async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, StoreError>;

    /// Records a migration in phase `planned` (version 1), with the regions the copy adds and
    /// the clean-up removes computed from the two shards. Refused with
    /// [`StoreError::MigrationOpen`] while another migration of the tenant's product is open,
    /// and with [`StoreError::Invalid`] when the tenant, product or target do not fit.
    async fn create_migration(&self, req: NewMigration) -> Result<MigrationDoc, StoreError>;
    /// The migration `id` (`m-<n>`).
    async fn get_migration(&self, id: &str) -> Result<MigrationDoc, StoreError>;
    /// Every migration (of `tenant` when given), newest first.
    async fn list_migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, StoreError>;
    /// Moves migration `id` to `phase` (only along [`Phase::can_become`], else
    /// [`StoreError::Invalid`]); with `if_match`, only if its version is that. The tenant's
    /// placement changes in the same transaction (frozen: state frozen; switched: on `to`,
    /// active; rolled back: on `from`, active), and the log gets the migration change, then
    /// the tenant change.
    async fn set_phase(
        &self,
        id: &str,
        phase: Phase,
        if_match: Option<u64>,
    ) -> Result<MigrationDoc, StoreError>;

    /// Mints a new epoch for the log (after the store was restored from a backup, so that
    /// every reader reloads in full instead of trusting sequence numbers) and returns it.
    async fn mint_epoch(&self) -> Result<String, StoreError>;
    /// Takes or renews lease `name` for `holder` for `ttl_ms` when it is free, expired or
    /// already `holder`'s; `ttl_ms` 0 gives it up (if `holder`'s). Returns who holds it now,
    /// by the store's own clock. Not a change: nothing is appended to the log.
    async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<LeaseDoc, StoreError>;
    /// Up to `limit` changes with `seq > after`, in order, and the head when they were read.
    async fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, StoreError>;
    /// The newest sequence number in the log (0 when empty).
    fn head(&self) -> u64;
    /// A receiver of the head, updated after every committed write (for long-polls).
    fn subscribe(&self) -> watch::Receiver<u64>;
}
