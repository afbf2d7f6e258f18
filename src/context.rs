//! The edge's embedded tenant-context cache: the seeds' TCS sidecar, in process.
//!
//! A request almost never leaves the process to learn where to go: contexts are cached by
//! normalised host in moka, misses coalesce into one fetch from TCS, and the TCS change stream
//! pushes every change so entries stay fresh without expiring. Unknown hosts live in a separate
//! small negative cache, so a flood of random hosts cannot evict known tenants.

mod client;
pub mod persist;
mod stream;
mod trust;

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::Op;
use serde::{Deserialize, Serialize};

use crate::feed::ViewSnapshot;
use crate::metrics::EdgeMetrics;
use crate::tenant::{Host, IngressRecord};

pub use client::{Lookup, LookupConfig, TcsClient, TcsEndpoint, TcsError, Trust};
pub use stream::{follow, now_ms, RegionStatus, StreamStatus};
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
}

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
        Entry {
            record: Arc::new(record),
            learnt_at,
            origin,
            region,
            id_header,
            version_header,
        }
    }
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

/// The latest version the change stream saw for a host, kept briefly to close the race between
/// a fill in flight and a newer pushed change.
#[derive(Debug, Clone)]
struct Seen {
    version: u64,
    entry: Option<Arc<Entry>>,
}

/// The cache of tenant contexts by normalised host. Cloning is cheap and shares the caches.
#[derive(Clone)]
pub struct TenantCache {
    positive: Cache<String, Arc<Entry>>,
    negative: Cache<String, ()>,
    recent: Cache<String, Seen>,
    /// Hosts with a background refresh in flight, so a hot stale entry is refreshed once.
    refreshing: Cache<String, ()>,
    refresh_after: Duration,
    client: Arc<TcsClient>,
    metrics: EdgeMetrics,
}

/// The cache of known tenants, sized for `initial` hosts up front.
fn positive_cache(config: &CacheConfig, initial: u64) -> Cache<String, Arc<Entry>> {
    let mut builder = Cache::builder().max_capacity(config.max_entries);
    if config.ttl_secs > 0 {
        builder = builder.time_to_live(Duration::from_secs(config.ttl_secs));
    }
    if initial > 0 {
        builder = builder.initial_capacity(usize::try_from(initial.min(config.max_entries)).unwrap_or(0));
    }
    builder.build()
}

impl TenantCache {
    /// Creates empty caches that fill from `client`.
    pub fn new(config: &CacheConfig, client: Arc<TcsClient>, metrics: EdgeMetrics) -> Self {
        TenantCache {
            positive: positive_cache(config, 0),
            negative: Cache::builder()
                .max_capacity(config.negative_max_entries)
                .time_to_live(Duration::from_secs(config.negative_ttl_secs))
                .build(),
            recent: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            refreshing: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            refresh_after: Duration::from_secs(client.config.refresh_after_secs),
            client,
            metrics,
        }
    }

    /// Resolves a normalised host: a hit, a negative hit, or one coalesced fetch from TCS.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, Unavailable> {
        if let Some(entry) = self.positive.get(host).await {
            self.metrics.cache_hits.inc();
            if entry.learnt_at.elapsed() >= self.refresh_after {
                self.refresh_in_background(host).await;
            }
            return Ok(Resolved::Found(entry));
        }
        if self.negative.contains_key(host) {
            self.metrics.negative_hits.inc();
            return Ok(Resolved::Unknown);
        }
        self.metrics.cache_misses.inc();
        match self.positive.try_get_with_by_ref(host, self.fill(host)).await {
            Ok(entry) => Ok(Resolved::Found(self.reconcile(host, entry).await)),
            Err(e) => match &*e {
                FillError::NotFound => {
                    self.negative.insert(host.into(), ()).await;
                    Ok(Resolved::Unknown)
                }
                FillError::Tcs(_) => {
                    self.metrics.fill_failures.inc();
                    Err(Unavailable(e.to_string()))
                }
            },
        }
    }

    async fn fill(&self, host: &str) -> Result<Arc<Entry>, FillError> {
        self.fill_at_least(host, 0).await
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
        self.positive.invalidate(host).await;
        match self.fill_at_least(host, min_version).await {
            Ok(entry) => {
                self.put_if_not_older(host, entry.clone()).await;
                Ok(Resolved::Found(entry))
            }
            Err(FillError::NotFound) => Ok(Resolved::Unknown),
            Err(e) => Err(Unavailable(e.to_string())),
        }
    }

    /// Starts one background refresh of `host` unless one is already running. The stale entry
    /// keeps serving meanwhile; a failed refresh leaves it in place.
    async fn refresh_in_background(&self, host: &str) {
        if !self.refreshing.entry_by_ref(host).or_insert(()).await.is_fresh() {
            return;
        }
        let this = self.clone();
        let host = host.to_owned();
        tokio::spawn(async move {
            match this.client.lookup(&host, 0).await {
                Ok(Lookup::Found { region, found }) => {
                    let entry = Entry::new(found.record, Origin::Fetch, region);
                    this.put_if_not_older(&host, Arc::new(entry)).await;
                }
                Ok(Lookup::NotFound) => this.positive.invalidate(&host).await,
                Err(e) => tracing::debug!(host, error = %e, "background refresh failed; keeping the entry"),
            }
            this.refreshing.invalidate(&host).await;
        });
    }

    /// Like [`Self::put_if_newer`], but the same version replaces too (it renews the age).
    async fn put_if_not_older(&self, host: &str, entry: Arc<Entry>) {
        let version = entry.record.version;
        self.positive
            .entry_by_ref(host)
            .and_compute_with(|held| async move {
                match held {
                    Some(held) if held.value().record.version > version => Op::Nop,
                    _ => Op::Put(entry),
                }
            })
            .await;
    }

    /// A fill may have raced a newer pushed change: prefer what the stream saw, if newer.
    async fn reconcile(&self, host: &str, filled: Arc<Entry>) -> Arc<Entry> {
        match self.recent.get(host).await {
            Some(seen) if seen.version > filled.record.version => match seen.entry {
                Some(newer) => {
                    self.put_if_newer(host, newer.clone()).await;
                    newer
                }
                None => {
                    self.positive.invalidate(host).await;
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

    /// What this edge holds for `host`, without fetching (for `/admin`).
    pub async fn peek(&self, host: &str) -> Option<Arc<Entry>> {
        self.positive.get(host).await
    }

    /// Whether `host` is remembered as unknown.
    pub fn is_known_unknown(&self, host: &str) -> bool {
        self.negative.contains_key(host)
    }

    /// Number of cached contexts (approximate, as moka counts).
    pub fn len(&self) -> u64 {
        self.positive.entry_count()
    }

    /// Whether the cache holds no context.
    pub fn is_empty(&self) -> bool {
        self.positive.iter().next().is_none()
    }

    /// Inserts `entry` for `host` unless the cache already holds the same or a newer version.
    async fn put_if_newer(&self, host: &str, entry: Arc<Entry>) {
        let version = entry.record.version;
        self.positive
            .entry_by_ref(host)
            .and_compute_with(|held| async move {
                match held {
                    Some(held) if held.value().record.version >= version => Op::Nop,
                    _ => Op::Put(entry),
                }
            })
            .await;
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
        for host in &entry.record.hosts {
            let seen = Seen {
                version: entry.record.version,
                entry: Some(entry.clone()),
            };
            self.recent.insert(host.as_str().into(), seen).await;
            self.negative.invalidate(host.as_str()).await;
            self.update_if_cached(host.as_str(), entry.clone()).await;
        }
        for host in removed {
            self.drop_if_older(host.as_str(), entry.record.version).await;
        }
    }

    /// Applies a pushed delete of a tenant at `version`.
    pub async fn apply_delete(&self, hosts: &[Host], version: u64) {
        for host in hosts {
            self.recent
                .insert(host.as_str().into(), Seen { version, entry: None })
                .await;
            self.drop_if_older(host.as_str(), version).await;
        }
    }

    /// Replaces a cached entry for `host` with a newer version; an absent host stays absent.
    async fn update_if_cached(&self, host: &str, entry: Arc<Entry>) {
        let version = entry.record.version;
        self.positive
            .entry_by_ref(host)
            .and_compute_with(|held| async move {
                match held {
                    Some(held) if held.value().record.version < version => Op::Put(entry),
                    _ => Op::Nop,
                }
            })
            .await;
    }

    async fn drop_if_older(&self, host: &str, version: u64) {
        self.positive
            .entry_by_ref(host)
            .and_compute_with(|held| async move {
                match held {
                    Some(held) if held.value().record.version < version => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// Drops whatever is cached for `host` (positive and negative).
    pub async fn forget(&self, host: &str) {
        self.positive.invalidate(host).await;
        self.negative.invalidate(host).await;
    }

    /// Repairs the cache from a whole snapshot: hosts get newer versions, cached hosts the
    /// snapshot no longer has are dropped, negatives are cleared. After a gap in the change stream
    /// only hosts already held are updated (`load_absent` false); a start-up prewarm loads
    /// every host (`load_absent` true).
    pub async fn resync(&self, snapshot: ViewSnapshot, region: &Arc<str>, load_absent: bool) {
        let live: std::collections::HashSet<String> = snapshot
            .records
            .iter()
            .flat_map(|r| r.hosts.iter().map(|h| h.as_str().to_owned()))
            .collect();
        if load_absent {
            self.restore(snapshot.records, region, Origin::Snapshot).await;
        } else {
            for record in snapshot.records {
                self.apply_upsert(record, &[], region, Origin::Snapshot).await;
            }
        }
        let stale: Vec<String> = self
            .positive
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !live.contains(k.as_str()))
            .map(|k| (*k).clone())
            .collect();
        for host in stale {
            self.positive.invalidate(&host).await;
        }
        self.negative.invalidate_all();
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
