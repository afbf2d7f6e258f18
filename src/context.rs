//! The edge's embedded tenant-context cache: the seeds' TCS sidecar, in process.
//!
//! A request almost never leaves the process to learn where to go: contexts are cached by
//! normalised host in a lock-free map (`known`), misses coalesce into one fetch from TCS (several
//! fetches share one batched request, `batch`), and the TCS change stream
//! pushes every change so entries stay fresh without expiring. Unknown hosts live in a separate
//! small negative cache, so a flood of random hosts cannot evict known tenants.

pub mod admin;
mod batch;
mod client;
mod fleet;
mod known;
pub mod persist;
mod service;
mod stream;
mod trust;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};

use moka::future::Cache;
use serde::{Deserialize, Serialize};

use crate::feed::ViewSnapshot;
use crate::metrics::EdgeMetrics;
use crate::tenant::{Host, IngressRecord, Sym};

pub use client::{
    endpoint_problems, BuildError, Cause, Lookup, LookupConfig, TcsClient, TcsEndpoint, TcsError, Trust,
};
pub use fleet::FleetReporter;
pub use service::{CacheService, CacheSettings};
pub use stream::{follow, FanoutStatus, RegionStatus, StreamStatus, Transport};
pub use trust::{check_once, watch_regions};

/// Sizes and lifetimes of the caches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most tenant contexts held.
    pub max_entries: u64,
    /// Age after which a context is dropped even when no TCS can confirm it; 0 (the default)
    /// never drops by age. Freshness comes from the change stream and `refresh_after_secs`, so
    /// an age limit only makes an edge forget tenants during a long TCS outage.
    pub ttl_secs: u64,
    /// Most unknown hosts remembered.
    pub negative_max_entries: u64,
    /// How long an unknown host is remembered.
    pub negative_ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 1_000_000,
            ttl_secs: 0,
            negative_max_entries: 10_000,
            negative_ttl_secs: 5,
        }
    }
}

/// Where a cached context came from, for `/admin/tenants/{host}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Fetched on a miss.
    Fetch,
    /// Pushed by the change stream.
    Stream,
    /// Loaded from a bulk snapshot during a resync.
    Snapshot,
    /// Read back from this edge's cache file at start.
    File,
}

/// One cached tenant context.
#[derive(Debug)]
pub struct Entry {
    /// The routing facts.
    pub record: Arc<IngressRecord>,
    /// When this edge learnt it.
    pub learnt_at: Instant,
    /// How it learnt it.
    pub origin: Origin,
    /// Region of the TCS that told it.
    pub region: Arc<str>,
    /// `x-tenant-id` and `x-tenant-context-version` as header values, built once per entry so
    /// that forwarding a request formats nothing.
    pub id_header: http::HeaderValue,
    /// See `id_header`.
    pub version_header: http::HeaderValue,
    /// The placements as interned numbers (product, shard, frozen) with the tenant's own rate
    /// limit for the product (0: the route file's), for the request path: matched without
    /// reading the record's names. `None` past [`FAST_PLACEMENTS`] products.
    fast: Option<FastPlacements>,
    /// The tenant's key in the edge's limiters: its id hashed once, the same for every version.
    pub limit_key: u64,
    /// When a request last used it, in ms after `learnt_at` (for the idle sweep).
    last_used_ms: AtomicU64,
    /// Hits sampled, one in [`SAMPLE_EVERY`] per thread, for the hottest tenants of the status
    /// page: a hit writes the entry this rarely.
    sampled: AtomicU64,
}

/// One hit in this many (per thread) is counted on its entry.
pub const SAMPLE_EVERY: u32 = 64;

thread_local! {
    static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Up to [`FAST_PLACEMENTS`] placements as (product, shard, frozen, the tenant's rate limit)
/// by interned number, and how many are set.
type FastPlacements = ([(Sym, Sym, bool, u32); FAST_PLACEMENTS], u8);

/// Where an entry places a product: the shard by interned number, whether it is frozen, and
/// the tenant's own rate limit for the product (0: none of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The shard.
    pub shard: Sym,
    /// Writes are paused (a move).
    pub frozen: bool,
    /// Requests a second the tenant may send the product; 0: the route file's default.
    pub rate_limit: u32,
}

/// Products per tenant whose placements an entry keeps as interned numbers.
pub const FAST_PLACEMENTS: usize = 4;

/// How often a hit records the entry's last use, at most.
const TOUCH_EVERY_MS: u64 = 1000;

impl Entry {
    /// An entry for `record`, learnt now.
    pub fn new(record: IngressRecord, origin: Origin, region: Arc<str>) -> Self {
        Self::learnt_at(record, origin, region, Instant::now())
    }

    /// An entry for `record`, learnt at `learnt_at`.
    pub fn learnt_at(record: IngressRecord, origin: Origin, region: Arc<str>, learnt_at: Instant) -> Self {
        // Tenant ids are validated names: always a valid header value.
        let id_header = http::HeaderValue::from_str(record.id.as_str())
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        let version_header = http::HeaderValue::from(record.version);
        let fast = (record.placements.len() <= FAST_PLACEMENTS).then(|| {
            let mut table = [(Sym::NONE, Sym::NONE, false, 0); FAST_PLACEMENTS];
            for (slot, (product, p)) in table.iter_mut().zip(record.placements.iter()) {
                *slot = (
                    Sym::of(product.as_str()),
                    Sym::of(p.shard.as_str()),
                    p.state == crate::tenant::PlacementState::Frozen,
                    record.rate_limits.get(product).copied().unwrap_or(0),
                );
            }
            (table, record.placements.len() as u8)
        });
        let limit_key = limit_key(record.id.as_str());
        Entry {
            record: Arc::new(record),
            learnt_at,
            origin,
            region,
            id_header,
            version_header,
            fast,
            limit_key,
            last_used_ms: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
        }
    }

    /// Counts one hit in [`SAMPLE_EVERY`] of this thread's.
    #[inline]
    fn sample(&self) {
        HITS.with(|hits| {
            let n = hits.get().wrapping_add(1);
            hits.set(n);
            if n % SAMPLE_EVERY == 0 {
                self.sampled.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Marks the entry used at `age`. Writes at most once a second (the sweep's idle times need
    /// no finer), so that a hit leaves the entry's cache line clean: with many tenants that
    /// line is cold, and hits on several cores would fight over it.
    #[inline]
    fn touch(&self, age: Duration) {
        let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_used_ms.load(Ordering::Relaxed);
        if ms >= last + TOUCH_EVERY_MS || ms < last {
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// The shard holding `product`, whether it is frozen and the tenant's own rate limit for
    /// it, by interned numbers; the record is read only for tenants with more products than
    /// the entry keeps.
    #[inline]
    pub fn placement_of(&self, product: Sym, name: &str) -> Option<Placed> {
        match &self.fast {
            Some((table, len)) => table[..usize::from(*len)]
                .iter()
                .find(|(p, ..)| *p == product)
                .map(|&(_, shard, frozen, rate_limit)| Placed {
                    shard,
                    frozen,
                    rate_limit,
                }),
            None => self.record.placement(name).map(|p| Placed {
                shard: Sym::of(p.shard.as_str()),
                frozen: p.state == crate::tenant::PlacementState::Frozen,
                rate_limit: self
                    .record
                    .rate_limits
                    .iter()
                    .find(|(p, _)| p.as_str() == name)
                    .map_or(0, |(_, &rps)| rps),
            }),
        }
    }

    /// When a request last used it, as an age.
    fn last_used(&self) -> Duration {
        Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed))
    }
}

/// A tenant's key in the edge's limiters: a fixed hash of its id, so every entry and version of
/// the tenant counts together.
fn limit_key(id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x7e4a_17c3).hash_one(id)
}

/// The answer for one host.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// The host names a tenant.
    Found(Arc<Entry>),
    /// TCS says no tenant has this host.
    Unknown,
}

/// No trusted TCS could answer a miss: the edge must answer 503, never 404.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no tenant context service answered: {0}")]
pub struct Unavailable(pub String);

/// What a fill produced when it did not produce an entry.
#[derive(Debug, thiserror::Error)]
enum FillError {
    #[error("unknown host")]
    NotFound,
    #[error(transparent)]
    Tcs(#[from] TcsError),
}

/// One fill in flight, awaited by every request that missed the same host.
type PendingFill = Shared<BoxFuture<'static, FillOutcome>>;

/// How `pending` holds a fill: numbered, and without keeping it alive.
type WeakFill = WeakShared<BoxFuture<'static, FillOutcome>>;

/// The fills in flight by host.
type Fills = HashMap<Box<str>, (u64, WeakFill), Hasher>;

/// What a fill ends with, shared by its waiters.
type FillOutcome = Result<Arc<Entry>, Arc<FillError>>;

/// Takes a fill out of `pending` when it ends or is dropped, unless a newer fill of the host
/// has taken its place.
struct LeavePending {
    cache: TenantCache,
    host: Box<str>,
    id: u64,
}

impl Drop for LeavePending {
    fn drop(&mut self) {
        let mut pending = self
            .cache
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.get(&*self.host).is_some_and(|(id, _)| *id == self.id) {
            pending.remove(&*self.host);
        }
    }
}

/// The latest version the change stream saw for a host, kept briefly to close the race between
/// a fill in flight and a newer pushed change.
#[derive(Debug, Clone)]
struct Seen {
    version: u64,
    entry: Option<Arc<Entry>>,
}

/// How every map keyed by host hashes: seeded per map, and a few times cheaper than the
/// standard SipHash on a host name (a miss hashes its host in four maps).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// The cache of tenant contexts by normalised host. Cloning is cheap and shares the caches.
#[derive(Clone)]
pub struct TenantCache {
    known: Arc<known::Known>,
    negative: Cache<String, (), Hasher>,
    recent: Cache<String, Seen, Hasher>,
    /// Fills in flight by host, so that misses for one host make one fetch.
    pending: Arc<Mutex<Fills>>,
    /// Numbers the fills, so that one leaving `pending` never takes a newer one's place.
    fills: Arc<AtomicU64>,
    /// Hosts with a background refresh in flight or recently failed, so a hot stale entry is
    /// refreshed once, and at most every 30 s while TCS cannot answer.
    refreshing: moka::sync::Cache<String, (), Hasher>,
    refresh_after: Duration,
    client: Arc<TcsClient>,
    metrics: EdgeMetrics,
}

impl TenantCache {
    /// Creates empty caches that fill from `client`.
    pub fn new(config: &CacheConfig, client: Arc<TcsClient>, metrics: EdgeMetrics) -> Self {
        Self::with_capacity(config, client, metrics, 0)
    }

    /// [`TenantCache::new`] with room for `hosts` entries from the start, so that restoring a
    /// million hosts never rehashes what is already there.
    pub fn with_capacity(
        config: &CacheConfig,
        client: Arc<TcsClient>,
        metrics: EdgeMetrics,
        hosts: u64,
    ) -> Self {
        TenantCache {
            known: Arc::new(known::Known::new(config, hosts)),
            negative: Cache::builder()
                .max_capacity(config.negative_max_entries)
                .time_to_live(Duration::from_secs(config.negative_ttl_secs))
                .build_with_hasher(Hasher::default()),
            recent: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build_with_hasher(Hasher::default()),
            pending: Arc::default(),
            fills: Arc::default(),
            refreshing: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build_with_hasher(Hasher::default()),
            refresh_after: Duration::from_secs(client.config.refresh_after_secs),
            client,
            metrics,
        }
    }

    /// The hot path: on a hit, calls `f` with the cached entry, lent rather than cloned, and
    /// starts a background refresh when the entry is older than `refresh_after`. `None` on a
    /// miss: then [`Self::resolve`].
    #[inline]
    pub fn with_hit<R>(&self, host: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        let (answer, stale) = self.known.with(host, |entry, age| {
            entry.sample();
            (f(entry), age >= self.refresh_after)
        })?;
        self.metrics.cache_hits.inc();
        if stale {
            self.refresh_in_background(host);
        }
        Some(answer)
    }

    /// Resolves a normalised host: a hit, a negative hit, or one coalesced fetch from TCS.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, Unavailable> {
        if let Some(entry) = self.with_hit(host, Arc::clone) {
            return Ok(Resolved::Found(entry));
        }
        self.resolve_missed(host).await
    }

    /// [`TenantCache::resolve`] for a caller whose own [`TenantCache::with_hit`] just missed:
    /// the negative cache, then one coalesced fill (a lookup of an absent host is the dearest
    /// kind in the map, so it is not repeated).
    pub async fn resolve_missed(&self, host: &str) -> Result<Resolved, Unavailable> {
        if self.negative.contains_key(host) {
            self.metrics.negative_hits.inc();
            return Ok(Resolved::Unknown);
        }
        self.metrics.cache_misses.inc();
        match self.pending_fill(host).await {
            Ok(entry) => Ok(Resolved::Found(entry)),
            Err(e) => match &*e {
                FillError::NotFound => Ok(Resolved::Unknown),
                FillError::Tcs(_) => Err(Unavailable(e.to_string())),
            },
        }
    }

    /// The fill in flight for `host`, or a new one. The fill runs inside the futures of the
    /// requests waiting for it (whichever is polled drives it), not as a task of its own: a
    /// task per miss cost an allocation and a wake-up more than the lookup itself. `pending`
    /// holds only a weak handle, so a fill every waiter gave up is dropped (its batch slot
    /// skipped if not yet sent) and leaves nothing behind; the next miss starts afresh.
    fn pending_fill(&self, host: &str) -> PendingFill {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fill) = pending.get(host).and_then(|(_, weak)| weak.upgrade()) {
            return fill;
        }
        // A fill caches its answer before it leaves `pending`: one that ended since the caller
        // missed has left it here, and must not be fetched again.
        let settled = match self.known.peek(host) {
            Some(entry) => Some(Ok(entry)),
            None if self.negative.contains_key(host) => Some(Err(Arc::new(FillError::NotFound))),
            None => None,
        };
        if let Some(outcome) = settled {
            return futures::future::ready(outcome).boxed().shared();
        }
        let id = self.fills.fetch_add(1, Ordering::Relaxed);
        let leave = LeavePending {
            cache: self.clone(),
            host: host.into(),
            id,
        };
        let fill = async move {
            let this = &leave.cache;
            let outcome = this.fill(&leave.host).await;
            match &outcome {
                Ok(_) => {}
                Err(FillError::NotFound) => this.negative.insert(leave.host.to_string(), ()).await,
                Err(_) => this.metrics.fill_failures.inc(),
            }
            drop(leave);
            outcome.map_err(Arc::new)
        }
        .boxed()
        .shared();
        if let Some(weak) = fill.downgrade() {
            pending.insert(host.into(), (id, weak));
        }
        fill
    }

    /// Fetches `host`, caches the answer unless a newer version is held, and prefers what the
    /// change stream saw meanwhile when that is newer still.
    async fn fill(&self, host: &str) -> Result<Arc<Entry>, FillError> {
        let filled = self.fill_at_least(host, 0).await?;
        self.put_if_not_older(host, &filled);
        Ok(self.reconcile(host, filled).await)
    }

    async fn fill_at_least(&self, host: &str, min_version: u64) -> Result<Arc<Entry>, FillError> {
        let started = Instant::now();
        let answer = self.client.lookup(host, min_version).await;
        self.metrics.fill_latency.observe(started.elapsed().as_secs_f64());
        match answer? {
            Lookup::Found { region, found } => Ok(Arc::new(Entry::new(found.record, Origin::Fetch, region))),
            Lookup::NotFound => Err(FillError::NotFound),
        }
    }

    /// Drops what is cached for `host` and fetches it again, accepting only `min_version` or
    /// newer (a shard said the tenant moved at that version). Not coalesced: it is rare, and a
    /// coalesced fill already in flight may predate the move.
    pub async fn refetch(&self, host: &str, min_version: u64) -> Result<Resolved, Unavailable> {
        self.known.remove(host);
        match self.fill_at_least(host, min_version).await {
            Ok(entry) => {
                self.put_if_not_older(host, &entry);
                Ok(Resolved::Found(entry))
            }
            Err(FillError::NotFound) => Ok(Resolved::Unknown),
            Err(e) => Err(Unavailable(e.to_string())),
        }
    }

    /// Starts one background refresh of `host` unless one ran lately. The stale entry keeps
    /// serving meanwhile; a failed refresh leaves it in place. Outside a tokio runtime (a
    /// benchmark's plain thread) there is nothing to run it on, and the entry just serves.
    fn refresh_in_background(&self, host: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.refreshing.entry_by_ref(host).or_insert(()).is_fresh() {
            return;
        }
        let this = self.clone();
        let host = host.to_owned();
        rt.spawn(async move {
            match this.client.lookup(&host, 0).await {
                Ok(Lookup::Found { region, found }) => {
                    let entry = Entry::new(found.record, Origin::Fetch, region);
                    this.put_if_not_older(&host, &Arc::new(entry));
                    this.refreshing.invalidate(&host);
                }
                Ok(Lookup::NotFound) => {
                    this.known.remove(&host);
                    this.refreshing.invalidate(&host);
                }
                // Left in `refreshing` until it expires: the next try waits that long.
                Err(e) => tracing::debug!(host, error = %e, "background refresh failed; keeping the entry"),
            }
        });
    }

    /// Caches `entry` unless a newer version is held; the same version replaces (it renews
    /// the age).
    fn put_if_not_older(&self, host: &str, entry: &Arc<Entry>) {
        let version = entry.record.version;
        self.known.write(host, entry, true, |held| held <= version);
    }

    /// Caches `entry` unless the same or a newer version is held.
    fn put_if_newer(&self, host: &str, entry: &Arc<Entry>) {
        let version = entry.record.version;
        self.known.write(host, entry, true, |held| held < version);
    }

    /// A fill may have raced a newer pushed change: prefer what the stream saw, if newer.
    async fn reconcile(&self, host: &str, filled: Arc<Entry>) -> Arc<Entry> {
        match self.recent.get(host).await {
            Some(seen) if seen.version > filled.record.version => match seen.entry {
                Some(newer) => {
                    self.put_if_newer(host, &newer);
                    newer
                }
                None => {
                    let version = seen.version;
                    self.known.remove_if(host, |held| held < version);
                    filled
                }
            },
            _ => filled,
        }
    }

    /// The TCS client this cache fills from.
    pub fn client(&self) -> &Arc<TcsClient> {
        &self.client
    }

    /// What this edge holds for `host`, without fetching or marking it used (for `/admin`).
    pub fn peek(&self, host: &str) -> Option<Arc<Entry>> {
        self.known.peek(host)
    }

    /// Whether `host` is remembered as unknown.
    pub fn is_known_unknown(&self, host: &str) -> bool {
        self.negative.contains_key(host)
    }

    /// The `n` tenants with the most sampled hits (each hit sampled one in [`SAMPLE_EVERY`]),
    /// summed over their hosts, most first. Walks the cache: for the admin pages, off the
    /// request path.
    pub fn hottest(&self, n: usize) -> Vec<(crate::tenant::TenantId, u64)> {
        let mut by_tenant: HashMap<crate::tenant::TenantId, u64> = HashMap::new();
        self.known.for_each(|_, entry| {
            let hits = entry.sampled.load(Ordering::Relaxed);
            if hits > 0 {
                *by_tenant.entry(entry.record.id.clone()).or_default() += hits;
            }
        });
        let mut top: Vec<_> = by_tenant.into_iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Sweeps of the cache and the entries they dropped.
    pub fn sweep_counts(&self) -> (u64, u64) {
        (
            self.known.sweeps.load(Ordering::Relaxed),
            self.known.swept.load(Ordering::Relaxed),
        )
    }

    /// Every cached tenant with a frozen placement (a move under way), by id, with the frozen
    /// products. Walks the cache.
    pub fn frozen(&self) -> Vec<(crate::tenant::TenantId, Vec<crate::tenant::Product>)> {
        let mut found: std::collections::BTreeMap<crate::tenant::TenantId, Vec<crate::tenant::Product>> =
            std::collections::BTreeMap::new();
        self.known.for_each(|_, entry| {
            let frozen: Vec<_> = entry
                .record
                .placements
                .iter()
                .filter(|(_, p)| p.state == crate::tenant::PlacementState::Frozen)
                .map(|(product, _)| product.clone())
                .collect();
            if !frozen.is_empty() {
                found.insert(entry.record.id.clone(), frozen);
            }
        });
        found.into_iter().collect()
    }

    /// Number of cached hosts.
    pub fn len(&self) -> u64 {
        self.known.len() as u64
    }

    /// Whether the cache holds no context.
    pub fn is_empty(&self) -> bool {
        self.known.len() == 0
    }

    /// Whether the cache holds no context and fetches none: then a gap in the change stream
    /// leaves nothing to repair.
    pub fn holds_nothing(&self) -> bool {
        self.is_empty()
            && self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
    }

    /// Applies a pushed record: every cached host of it gets the new version (when newer), hosts
    /// it lost are dropped, and none of its hosts stays in the negative cache. Hosts this edge does
    /// not hold are left out: a change to a cold tenant must not evict a hot one (loading
    /// everything is what [`Self::restore`] is for, at start).
    pub async fn apply_upsert(
        &self,
        record: IngressRecord,
        removed: &[Host],
        region: &Arc<str>,
        origin: Origin,
    ) {
        let entry = Arc::new(Entry::new(record, origin, region.clone()));
        let version = entry.record.version;
        for host in &entry.record.hosts {
            let seen = Seen {
                version,
                entry: Some(entry.clone()),
            };
            self.recent.insert(host.as_str().into(), seen).await;
            self.negative.invalidate(host.as_str()).await;
            self.known
                .write(host.as_str(), &entry, false, |held| held < version);
        }
        for host in removed {
            self.known.remove_if(host.as_str(), |held| held < version);
        }
    }

    /// Applies a pushed delete of a tenant at `version`.
    pub async fn apply_delete(&self, hosts: &[Host], version: u64) {
        for host in hosts {
            self.recent
                .insert(host.as_str().into(), Seen { version, entry: None })
                .await;
            self.known.remove_if(host.as_str(), |held| held < version);
        }
    }

    /// Drops whatever is cached for `host` (positive and negative).
    pub async fn forget(&self, host: &str) {
        self.known.remove(host);
        self.negative.invalidate(host).await;
    }

    /// Repairs the cache from a whole snapshot: hosts get newer versions, cached hosts the
    /// snapshot no longer has are dropped, negatives are cleared. After a gap in the change stream
    /// only hosts already held (or being filled) are updated (`load_absent` false): a snapshot of
    /// a million tenants must not build a million entries to keep a hundred thousand; a start-up
    /// prewarm loads every host (`load_absent` true).
    pub async fn resync(&self, snapshot: ViewSnapshot, region: &Arc<str>, load_absent: bool) {
        // What is held now and not in the snapshot is stale: `unseen` ends as exactly that.
        let mut unseen: HashSet<Box<str>> = HashSet::with_capacity(self.known.len());
        self.known.for_each(|host, _| {
            unseen.insert(host.into());
        });
        if load_absent {
            for host in snapshot.records.iter().flat_map(|r| &r.hosts) {
                unseen.remove(host.as_str());
            }
            self.restore(snapshot.records, region, Origin::Snapshot).await;
        } else {
            // A fill in flight may bring an older version than the snapshot's: its host goes
            // through `apply_upsert` too, which leaves what the fill must defer to in `recent`.
            let filling: HashSet<Box<str>> = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            for record in snapshot.records {
                let mut wanted = false;
                for host in &record.hosts {
                    wanted |= unseen.remove(host.as_str()) | filling.contains(host.as_str());
                }
                if wanted {
                    self.apply_upsert(record, &[], region, Origin::Snapshot).await;
                }
            }
        }
        for host in unseen {
            self.known.remove(&host);
        }
        self.negative.invalidate_all();
    }
}

/// Test helpers shared with the TCS tests: catalogue change builders, a TCS on loopback.
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
