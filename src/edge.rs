//! The edge proxy role: configuration, the per-snapshot state the request path reads, and the
//! tasks around it (route reload, health checks, change stream, admin listener, pingora server).
//!
//! Everything a request reads sits in one [`EdgeState`] behind one `ArcSwap`, rebuilt off the
//! hot path whenever the route snapshot changes: pools by shard, health settings, and metric
//! handles resolved per product.

mod admin;
pub mod conns;
pub mod h1;
pub mod limits;
mod pool;
mod proxy;
mod resets;
mod status;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::context::{
    self, CacheConfig, CacheService, CacheSettings, LookupConfig, TcsEndpoint, TenantCache,
};
use crate::metrics::{EdgeMetrics, RequestCounters, NO_PRODUCT};
use crate::routes::{RouteSnapshot, RouteStore};
use crate::tenant::{Region, ShardId, Sym};

pub use h1::Http1Config;
pub use pool::{backend_peer, Backend, BackendRegistry, HealthSettings, InFlight, ShardPool};
pub use proxy::{decide, place, target, Decision, EdgeProxy, Reject, RequestCtx, RequestView, Targeted};

/// The edge's configuration file (`tenant-edge proxy --config edge.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id in the fleet view (`GET /v1/fleet` on TCS, `ctl fleet`): letters,
    /// digits, `-`, `_`, `.`. Default: the host's name and the plain listener's port.
    #[serde(default)]
    pub id: Option<String>,
    /// How often the edge reports its id, version, applied sequence and cache size to its
    /// region's TCS (`POST /v1/fleet/edges/{id}`); 0 reports nothing.
    #[serde(default = "default_fleet_report_ms")]
    pub fleet_report_ms: u64,
    /// How changes reach the edge: the NDJSON stream (the default) or, with `kind = "sns"`,
    /// its own SQS queue subscribed to its region's topic (see [`crate::fanout::aws`]).
    #[serde(default)]
    pub fanout: crate::fanout::aws::FanoutConfig,
    /// The region this edge runs in, one of the `[[tcs]]` regions; its TCS is asked first.
    pub region: Region,
    /// Plain HTTP/1.1 listener.
    pub listen_http: SocketAddr,
    /// TLS listener (HTTP/2 via ALPN, and HTTP/1.1); needs `cert` and `key`.
    #[serde(default)]
    pub listen_https: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Admin listener: health, readiness, metrics, what the edge believes. Keep it on loopback.
    pub admin: SocketAddr,
    /// Route snapshot file, reloaded on change and on SIGHUP.
    pub routes: PathBuf,
    /// Worker threads of the proxy.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Run the workers as one work-stealing runtime (pingora's default) instead of one
    /// single-threaded runtime per thread, each serving its own connections as nginx's workers
    /// do. Off by default: measured 10-20% less CPU per request and steadier (`bench/README.md`).
    #[serde(default)]
    pub work_stealing: bool,
    /// Log one line per request.
    #[serde(default)]
    pub access_log: bool,
    /// Pass the shards' backend headers (`x-served-by`, and any `x-tenant-*`, `x-forwarded-*`,
    /// `forwarded`, `x-real-ip` in an answer) on to clients: for debugging only. Off, they
    /// are removed, so a client learns nothing of the fleet's layout.
    #[serde(default)]
    pub show_backend_headers: bool,
    /// The `Server` field of every answer (the edge's own and the shards'), replacing a
    /// shard's. Absent: no `Server` field at all (a shard's is a backend header, shown only
    /// with `show_backend_headers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// File the tenant-context cache is written to (periodically and on shutdown) and read
    /// back from at start, so a restart during a TCS outage still serves known tenants.
    /// Absent: off.
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// Seconds between writes of `cache_file`.
    #[serde(default = "default_cache_file_interval_secs")]
    pub cache_file_interval_secs: u64,
    /// At start, after reading `cache_file`, load the whole view from TCS before serving.
    #[serde(default)]
    pub prewarm: bool,
    /// Tenant-context cache sizes and lifetimes.
    #[serde(default)]
    pub cache: CacheConfig,
    /// How misses are fetched from TCS (hedging, limits) and how regions are judged.
    #[serde(default)]
    pub lookup: LookupConfig,
    /// The TCS regions to ask, with this edge's token for each.
    pub tcs: Vec<TcsEndpoint>,
    /// The lean HTTP/1.1 path: limits and timeouts.
    #[serde(default)]
    pub http1: Http1Config,
    /// On SIGTERM, how long requests in flight may take to finish before the edge stops
    /// anyway (milliseconds). Meanwhile `/readyz` fails and every answer closes its connection.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Caps on client connections (`[connections]`).
    #[serde(default)]
    pub connections: conns::ConnectionLimits,
    /// HTTP/2 limits (`[http2]`).
    #[serde(default)]
    pub http2: Http2Config,
    /// The Unix socket a binary upgrade hands the listening sockets over on: a new edge started
    /// with `--upgrade` waits on it, and this one, sent SIGQUIT, writes its cache file and
    /// passes its listeners there, then drains and exits. Keep it in a directory only the edge's
    /// user can write. Absent: no upgrades (SIGQUIT is ignored). With it, the admin listener is
    /// bound with `SO_REUSEPORT`, so old and new serve it side by side during the hand-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_sock: Option<PathBuf>,
}

/// `[http2]`: limits of a client's HTTP/2 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// A connection with no stream open for this long is closed (GOAWAY).
    pub idle_timeout_ms: u64,
    /// Streams a client may have open at once (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// Streams a client reset before the edge took them, pending at once; past it the
    /// connection is closed (the rapid-reset defence of the HTTP/2 library).
    pub max_pending_reset_streams: usize,
    /// Decoded size of a request's header list.
    pub max_header_list_bytes: u32,
    /// Stream resets (`RST_STREAM`) a client may send per second on one connection, on
    /// average over `reset_window_ms`: a burst of the rate times the window is allowed, and
    /// pacing above the rate overflows it however the resets are spread. Past it the
    /// connection is closed.
    pub max_resets_per_second: u32,
    /// The window the reset rate is measured over (milliseconds).
    pub reset_window_ms: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            idle_timeout_ms: 60_000,
            max_concurrent_streams: 100,
            max_pending_reset_streams: 20,
            max_header_list_bytes: 64 * 1024,
            max_resets_per_second: 20,
            reset_window_ms: 10_000,
        }
    }
}

impl Http2Config {
    /// Checks the values make sense.
    pub fn check(&self) -> Result<(), String> {
        if self.idle_timeout_ms == 0 || self.max_concurrent_streams == 0 || self.max_header_list_bytes < 1024
        {
            return Err(
                "idle_timeout_ms and max_concurrent_streams must be at least 1, max_header_list_bytes at least 1024"
                    .into(),
            );
        }
        if self.max_resets_per_second == 0 || self.reset_window_ms == 0 {
            return Err("max_resets_per_second and reset_window_ms must be at least 1".into());
        }
        Ok(())
    }

    /// The reset limit of [`resets::ResetGuard`].
    pub(crate) fn reset_limit(&self) -> resets::ResetLimit {
        resets::ResetLimit {
            per_second: self.max_resets_per_second,
            window: Duration::from_millis(self.reset_window_ms),
        }
    }
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

impl EdgeConfig {
    /// The id this edge reports under: `id`, else the host's name and the plain port.
    pub fn edge_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            let host = if host.is_empty() { "edge".to_owned() } else { host };
            format!("{host}-{}", self.listen_http.port())
        })
    }

    /// What its tenant cache is built from: the `ingress` view, read as this edge.
    pub fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            view: crate::tcs::INGRESS.to_owned(),
            region: self.region.to_string(),
            tcs: self.tcs.clone(),
            lookup: self.lookup.clone(),
            cache: self.cache.clone(),
            cache_file: self.cache_file.clone(),
            cache_file_interval: Duration::from_secs(self.cache_file_interval_secs),
            prewarm: self.prewarm,
        }
    }

    /// A config with every optional setting at its default (as a file that names only these).
    pub fn new(
        region: Region,
        listen_http: SocketAddr,
        admin: SocketAddr,
        routes: PathBuf,
        tcs: Vec<TcsEndpoint>,
    ) -> Self {
        EdgeConfig {
            id: None,
            fleet_report_ms: default_fleet_report_ms(),
            fanout: crate::fanout::aws::FanoutConfig::Stream,
            region,
            listen_http,
            listen_https: None,
            cert: None,
            key: None,
            admin,
            routes,
            threads: default_threads(),
            work_stealing: false,
            access_log: false,
            show_backend_headers: false,
            server: None,
            cache_file: None,
            cache_file_interval_secs: default_cache_file_interval_secs(),
            prewarm: false,
            cache: CacheConfig::default(),
            lookup: LookupConfig::default(),
            tcs,
            http1: Http1Config::default(),
            drain_timeout_ms: default_drain_timeout_ms(),
            connections: conns::ConnectionLimits::default(),
            http2: Http2Config::default(),
            upgrade_sock: None,
        }
    }
}

fn default_fleet_report_ms() -> u64 {
    5_000
}

fn default_threads() -> usize {
    2
}

fn default_cache_file_interval_secs() -> u64 {
    30
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The config file could not be read or parsed.
    #[error("edge config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The route snapshot is invalid.
    #[error(transparent)]
    Routes(#[from] crate::routes::RouteError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The TCS client could not be built.
    #[error("tcs client: {0}")]
    Client(#[from] crate::context::BuildError),
    /// A listener could not bind, or TLS files are unusable.
    #[error("{0}")]
    Listen(String),
    /// A config built in code (not read from a file) has problems, every one listed.
    #[error("edge config: {0}")]
    Invalid(String),
}

impl EdgeConfig {
    /// Reads and checks a TOML config file.
    pub fn load(path: &std::path::Path) -> Result<Self, EdgeError> {
        let err = |reason: String| EdgeError::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: EdgeConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.check().map_err(|problems| err(problems.join("; ")))?;
        Ok(cfg)
    }

    /// Every problem of the config, all at once (as the route file and the TCS config report).
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(id) = &self.id {
            let valid = (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                problems.push(format!("id {id:?}: 1 to 128 letters, digits, '-', '_' or '.'"));
            }
        }
        if let Some(sns) = self.fanout.sns() {
            problems.extend(sns.problems());
        }
        problems.extend(context::endpoint_problems(self.region.as_str(), &self.tcs));
        if self.listen_https.is_some() && (self.cert.is_none() || self.key.is_none()) {
            problems.push("listen_https needs cert and key".into());
        }
        if self.threads == 0 {
            problems.push("threads must be at least 1".into());
        }
        if self.cache_file_interval_secs == 0 {
            problems.push("cache_file_interval_secs must be at least 1".into());
        }
        if let Err(e) = self.http1.check() {
            problems.push(e);
        }
        if let Some(server) = &self.server {
            let visible = server.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if server.is_empty() || server.len() > 64 || !visible || server.trim() != server {
                problems.push(format!(
                    "server {server:?}: 1-64 visible ASCII characters, no leading or trailing space"
                ));
            }
        }
        if let Err(e) = self.connections.check() {
            problems.push(format!("[connections]: {e}"));
        }
        if let Err(e) = self.http2.check() {
            problems.push(format!("[http2]: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// What the request path reads, built once per route snapshot.
pub struct EdgeState {
    /// The route snapshot.
    pub routes: Arc<RouteSnapshot>,
    /// Health-check and ejection settings of this snapshot.
    pub health: HealthSettings,
    /// By shard id, hashed with foldhash: looked up once per request.
    pools: HashMap<ShardId, Arc<ShardPool>, foldhash::fast::RandomState>,
    /// The same pools by the shard's interned number ([`Sym`]), for the request path.
    by_sym: Vec<Option<Arc<ShardPool>>>,
    counters: Vec<RequestCounters>,
    latency: Vec<Histogram>,
    /// The tenants' rates and requests in flight (see [`limits`]), carried from snapshot to
    /// snapshot.
    pub(crate) limiter: Arc<limits::Limiter>,
    /// Requests refused by a limit, by product and [`limits::Limit`].
    limited: Vec<[prometheus::IntCounter; 2]>,
}

impl EdgeState {
    /// Builds pools (reusing known backends) and metric handles for `routes`.
    pub fn build(routes: Arc<RouteSnapshot>, registry: &BackendRegistry, metrics: &EdgeMetrics) -> Self {
        let pools = routes
            .shards
            .values()
            .map(|s| {
                let backends = s.backends.iter().map(|&addr| registry.get(addr)).collect();
                let mut pool = ShardPool::new(s.id.clone(), backends);
                pool.tenant_in_flight = s.tenant_in_flight;
                (s.id.clone(), Arc::new(pool))
            })
            .collect::<HashMap<_, _, _>>();
        let mut by_sym: Vec<Option<Arc<ShardPool>>> = Vec::new();
        for (id, pool) in &pools {
            let i = Sym::of(id.as_str()).index();
            if by_sym.len() <= i {
                by_sym.resize(i + 1, None);
            }
            by_sym[i] = Some(pool.clone());
        }
        let live: HashSet<SocketAddr> = routes
            .shards
            .values()
            .flat_map(|s| s.backends.iter().copied())
            .collect();
        registry.retain(&live);
        let names: Vec<&str> = routes
            .products
            .iter()
            .map(|p| p.name.as_str())
            .chain([NO_PRODUCT])
            .collect();
        let counters = names.iter().map(|n| metrics.request_counters(n)).collect();
        let latency = names
            .iter()
            .map(|n| metrics.upstream_latency.with_label_values(&[n]))
            .collect();
        let limited = names
            .iter()
            .map(|n| limits::Limit::NAMES.map(|l| metrics.limited.with_label_values(&[n, l])))
            .collect();
        EdgeState {
            health: health_settings(&routes),
            routes,
            pools,
            by_sym,
            counters,
            latency,
            limiter: Arc::default(),
            limited,
        }
    }

    /// Takes over what must survive a reload from the snapshot it replaces: the limits'
    /// estimators (a tenant's window and its requests in flight go on counting).
    pub fn carry_over(mut self, previous: &EdgeState) -> Self {
        self.limiter = previous.limiter.clone();
        self
    }

    /// Counts one request refused by `limit`.
    pub(crate) fn count_limited(&self, product: usize, limit: limits::Limit) {
        let i = product.min(self.limited.len() - 1);
        self.limited[i][limit as usize].inc();
    }

    /// The pool of a shard.
    pub fn pool(&self, shard: &str) -> Option<Arc<ShardPool>> {
        self.pools.get(shard).cloned()
    }

    /// The pool of the shard numbered `shard`.
    #[inline]
    pub fn pool_of(&self, shard: Sym) -> Option<&Arc<ShardPool>> {
        self.by_sym.get(shard.index()).and_then(Option::as_ref)
    }

    /// Every pool.
    pub fn pools(&self) -> Vec<Arc<ShardPool>> {
        self.pools.values().cloned().collect()
    }

    /// Counts one answered request.
    fn count(&self, product: Option<usize>, status: u16, upstream: Option<Duration>) {
        let i = product
            .filter(|&i| i < self.counters.len() - 1)
            .unwrap_or(self.counters.len() - 1);
        self.counters[i].count(status);
        if let Some(d) = upstream {
            self.latency[i].observe(d.as_secs_f64());
        }
    }
}

fn health_settings(routes: &RouteSnapshot) -> HealthSettings {
    let h = &routes.health_check;
    HealthSettings {
        path: h.path.clone(),
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
        eject_after: h.eject_after,
        eject_for: h.eject,
    }
}

/// State shared by the proxy, the admin listener and the background tasks.
pub(crate) struct Shared {
    pub(crate) state: ArcSwap<EdgeState>,
    pub(crate) cache: Arc<TenantCache>,
    /// The cache machinery (`cache` is its cache, held here too for the request path).
    pub(crate) service: Arc<CacheService>,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) routes: Arc<RouteStore>,
    pub(crate) registry: BackendRegistry,
    pub(crate) access_log: bool,
    /// See [`EdgeConfig::show_backend_headers`].
    pub(crate) show_backend_headers: bool,
    /// `server: <name>\r\n`, when [`EdgeConfig::server`] is set.
    pub(crate) server_line: Option<Box<[u8]>>,
    /// The same name as a header value, for the general path.
    pub(crate) server_value: Option<http::HeaderValue>,
    /// Requests in flight, and whether the edge is draining.
    pub(crate) drain: Drain,
    /// Client connections open, under their caps.
    pub(crate) conns: conns::Connections,
    /// Stream resets an HTTP/2 client may send (`[http2]`).
    pub(crate) resets: resets::ResetLimit,
    /// How long an HTTP/2 request body may go without a byte before the request is proxied
    /// (`[http1] body_timeout_ms`, the same for every listener).
    pub(crate) body_timeout: Duration,
}

/// The edge's drain: requests in flight, counted on both request paths, and whether a drain
/// has begun (then `/readyz` fails and every answer closes its connection).
#[derive(Debug, Default)]
pub(crate) struct Drain {
    draining: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Woken when the last request in flight ends during a drain.
    changed: tokio::sync::Notify,
}

/// One request in flight; dropped when it is answered (or abandoned).
pub(crate) struct Busy<'a>(&'a Drain);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Drain {
    /// Counts a request in flight until the guard drops.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.begin();
        Busy(self)
    }

    /// Counts a request in flight until [`Drain::end`] (for the general path, whose request
    /// context cannot borrow).
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Ends what [`Drain::begin`] counted.
    pub(crate) fn end(&self) {
        let before = self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if before == 1 && self.draining() {
            self.changed.notify_waiters();
        }
    }

    /// Whether a drain has begun.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Begins the drain.
    fn start(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Resolves once no request is in flight.
    async fn idle(&self) {
        crate::clock::when_notified(&self.changed, || {
            self.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0
        })
        .await;
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Runs the edge until `shutdown` is cancelled (or, after SIGQUIT, until a new edge took its
/// listeners over and it drained).
pub async fn run(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<(), EdgeError> {
    start(cfg, shutdown).await?.wait().await;
    Ok(())
}

/// [`run`], taking the listeners over from the running edge (`--upgrade`): it waits on
/// `upgrade_sock` until the old edge (sent SIGQUIT) passes them, restores the cache file the
/// old one wrote just before, and only then accepts.
pub async fn run_upgrade(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<(), EdgeError> {
    start_with(cfg, shutdown, true).await?.wait().await;
    Ok(())
}

/// A started edge: accepting on its proxy listeners, its admin API serving. Its existence is
/// the readiness signal; [`Started::wait`] runs it until shutdown.
#[must_use = "an edge runs until shutdown; `wait` joins it and its last cache file write"]
pub struct Started {
    /// The admin API's address (`/healthz`, `/readyz`, `/metrics`, `/admin/...`).
    pub admin: SocketAddr,
    /// The plain HTTP proxy listener's address (the port picked, for a port 0).
    pub http: SocketAddr,
    /// The HTTPS proxy listener's address.
    pub https: Option<SocketAddr>,
    ready: Ready,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    proxy: std::thread::JoinHandle<()>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// The fan-out consumer, which deletes its queue on the way out.
    fanout: Option<tokio::task::JoinHandle<()>>,
}

/// What an edge logs once it is ready (`/readyz`): it knows a tenant, or a change stream is live.
pub const READY_LINE: &str = "ready: tenants cached or a change stream live";

/// Resolves when the edge is ready, as `/readyz` judges it.
#[derive(Clone)]
struct Ready(Arc<Shared>);

impl Ready {
    async fn wait(&self) {
        self.0.service.wait_ready().await;
    }
}

impl Started {
    /// Resolves once the edge is ready (what `/readyz` answers 200 to): a tenant is cached or
    /// a change stream is live.
    pub async fn ready(&self) {
        self.ready.wait().await;
    }

    /// Waits for `shutdown`, then for the proxy's drain and the cache file's last write.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let proxy = self.proxy;
        if tokio::task::spawn_blocking(move || proxy.join()).await.is_err() {
            tracing::warn!("proxy thread did not stop cleanly");
        }
        self.admin_stop.cancel();
        if let Some(fanout) = self.fanout {
            // Its queue's deletion, bounded: an unreachable SQS must not hold the exit up.
            if tokio::time::timeout(Duration::from_secs(10), fanout)
                .await
                .is_err()
            {
                tracing::warn!("the fan-out consumer did not stop within 10 s");
            }
        }
        if let Some(writer) = self.writer {
            // The writer's last write, on cancellation, is the shutdown write: wait for it.
            if writer.await.is_err() {
                tracing::warn!("cache file writer did not stop cleanly");
            }
        }
    }
}

/// Builds the edge and starts it: returns once the proxy accepts and the admin API serves.
/// Every listener may be port 0: [`Started`] says where each is.
pub async fn start(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<Started, EdgeError> {
    start_with(cfg, shutdown, false).await
}

/// [`start`]; with `take_over`, the listeners come from the running edge (see [`run_upgrade`]).
pub async fn start_with(
    mut cfg: EdgeConfig,
    shutdown: CancellationToken,
    take_over: bool,
) -> Result<Started, EdgeError> {
    // A config read from a file was checked by `load`; one built in code (the stack, tests)
    // is held to the same rules here.
    cfg.check()
        .map_err(|problems| EdgeError::Invalid(problems.join("; ")))?;
    if take_over {
        let mut problems = Vec::new();
        if cfg.upgrade_sock.is_none() {
            problems.push("--upgrade needs upgrade_sock in the config".to_owned());
        }
        let ports = [Some(cfg.listen_http), cfg.listen_https, Some(cfg.admin)];
        if ports.iter().flatten().any(|a| a.port() == 0) {
            problems.push("--upgrade takes over fixed ports: no listener may be port 0".to_owned());
        }
        if !problems.is_empty() {
            return Err(EdgeError::Invalid(problems.join("; ")));
        }
    }
    // pingora binds the proxy listeners on its own thread: a port 0 is picked here first, and
    // held (bound, not listening) until pingora listens on it, so nothing else can take it.
    let held_http = reserve(&mut cfg.listen_http)?;
    let held_https = match &mut cfg.listen_https {
        Some(addr) => reserve(addr)?,
        None => None,
    };
    let mut server = server::new(&cfg, take_over);
    if take_over {
        tracing::info!(
            sock = %cfg.upgrade_sock.as_deref().unwrap_or(std::path::Path::new("")).display(),
            "waiting for the running edge's listeners (send it SIGQUIT)"
        );
        server = tokio::task::spawn_blocking(move || {
            // Exits the process when no listener arrives: nothing is served yet.
            server.bootstrap();
            server
        })
        .await
        .map_err(|e| EdgeError::Listen(format!("taking the listeners over: {e}")))?;
        tracing::info!("listeners taken over; restoring the cache before accepting");
    }
    let metrics = EdgeMetrics::new()?;
    let fds = conns::raise_fd_limit();
    let limits = cfg.connections.within_fds(fds);
    if limits != cfg.connections {
        tracing::warn!(
            open_files = fds,
            max_connections = limits.max_connections,
            max_connections_per_client = limits.max_connections_per_client,
            "connection caps lowered to what the open-file limit allows"
        );
    }
    let routes = Arc::new(RouteStore::load(&cfg.routes)?);
    // The cache file restored and the view prewarmed (as configured) before anything serves.
    let service = Arc::new(CacheService::build(cfg.cache_settings(), metrics.clone()).await?);
    let cache = service.cache.clone();
    let registry = BackendRegistry::default();
    let state = EdgeState::build(routes.load_full(), &registry, &metrics);
    let shared = Arc::new(Shared {
        state: ArcSwap::from_pointee(state),
        cache: cache.clone(),
        service: service.clone(),
        metrics: metrics.clone(),
        routes: routes.clone(),
        registry,
        access_log: cfg.access_log,
        show_backend_headers: cfg.show_backend_headers,
        server_line: cfg
            .server
            .as_ref()
            .map(|name| format!("server: {name}\r\n").into_bytes().into_boxed_slice()),
        // Checked as visible ASCII with the config.
        server_value: cfg
            .server
            .as_deref()
            .and_then(|n| http::HeaderValue::from_str(n).ok()),
        drain: Drain::default(),
        conns: conns::Connections::new(limits, Some(metrics.clone())),
        resets: cfg.http2.reset_limit(),
        body_timeout: Duration::from_millis(cfg.http1.body_timeout_ms),
    });
    let admin = bind_admin(cfg.admin, cfg.upgrade_sock.is_some())
        .map_err(|e| EdgeError::Listen(format!("admin {}: {e}", cfg.admin)))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| EdgeError::Listen(format!("admin {}: {e}", cfg.admin)))?;
    server::add_listeners(&mut server, &cfg, shared.clone(), take_over)?;
    // SIGQUIT: hand the listeners over to a new edge (`--upgrade`), then drain and exit.
    let upgrade = CancellationToken::new();
    spawn_upgrade_signal(&cfg, upgrade.clone(), shutdown.clone());

    routes.spawn_watcher(shutdown.clone());
    tokio::spawn(rebuild_on_reload(shared.clone(), shutdown.clone()));
    tokio::spawn(health_loop(shared.clone(), shutdown.clone()));
    let writer = service.spawn_upkeep(&shutdown);
    if cfg.fleet_report_ms > 0 {
        let local = cfg.tcs.iter().find(|t| t.region == cfg.region.as_str()).cloned();
        if let Some(local) = local {
            let report = context::FleetReporter {
                id: cfg.edge_id(),
                region: cfg.region.to_string(),
                tcs: local,
                every: Duration::from_millis(cfg.fleet_report_ms),
            };
            tokio::spawn(report.run(cache.clone(), service.stream.clone(), shutdown.clone()));
        }
    }
    let mut fanout_task = None;
    match cfg.fanout.sns() {
        Some(sns) => {
            let consumer = crate::fanout::consume::Consumer {
                config: sns.clone(),
                edge_id: cfg.edge_id(),
                region: Arc::from(cfg.region.as_str()),
                cache,
                status: service.stream.clone(),
                metrics,
            };
            fanout_task = Some(tokio::spawn(consumer.run(shutdown.clone())));
        }
        None => {
            service.spawn_follow(&shutdown);
        }
    }

    // Its own token, so a start that fails after this can stop the proxy alone.
    let proxy_stop = shutdown.child_token();
    let drain = Duration::from_millis(cfg.drain_timeout_ms);
    let proxy = server::start(
        server,
        shared.clone(),
        proxy_stop.clone(),
        upgrade,
        shutdown.clone(),
        drain,
    );
    // pingora binds its listeners on its own thread: the admin listener (and so `/readyz`)
    // answers only once the proxy's accept, so "ready" never means "connection refused".
    let listeners = [(cfg.listen_http, Probe::Connect)]
        .into_iter()
        .chain(cfg.listen_https.map(|a| (a, Probe::Bind)));
    for (addr, probe) in listeners {
        if !wait_listening(addr, probe, &shutdown).await {
            proxy_stop.cancel();
            let _ = tokio::task::spawn_blocking(move || proxy.join()).await;
            return Err(EdgeError::Listen(format!(
                "the proxy did not accept on {addr} within 30 s"
            )));
        }
    }
    // pingora listens on them now: the reservations may go.
    drop((held_http, held_https));
    // The admin API outlives the drain, so `/readyz` answers 503 while it runs.
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin::serve(admin, shared.clone(), admin_stop.clone()));
    tracing::info!(
        target: crate::stack::LISTENING,
        http = %cfg.listen_http,
        https = ?cfg.listen_https,
        admin = %admin_addr,
        region = %cfg.region,
        "edge listening"
    );
    let ready = Ready(shared);
    let logged = ready.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = logged.wait() => tracing::info!(target: crate::stack::LISTENING, "edge {READY_LINE}"),
        }
    });
    Ok(Started {
        admin_stop,
        admin: admin_addr,
        http: cfg.listen_http,
        https: cfg.listen_https,
        ready,
        shutdown,
        proxy,
        writer,
        fanout: fanout_task,
    })
}

/// Binds the admin listener; with `reuse_port` (upgrades configured) an edge taking over binds
/// it beside the old one, which lets go when it exits.
fn bind_admin(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    if !reuse_port {
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(std);
    }
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// On SIGQUIT, starts the hand-over to a new edge (when `upgrade_sock` is configured).
fn spawn_upgrade_signal(cfg: &EdgeConfig, upgrade: CancellationToken, shutdown: CancellationToken) {
    let configured = cfg.upgrade_sock.is_some();
    let mut quit = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGQUIT: no binary upgrades");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = quit.recv() => if got.is_none() { return },
            }
            if configured {
                tracing::info!("SIGQUIT: handing the listeners over to the new edge");
                upgrade.cancel();
                return;
            }
            tracing::error!("SIGQUIT ignored: no upgrade_sock configured");
        }
    });
}

/// Waits (up to 30 s) until `addr` accepts a connection; whether it did. (pingora binds on its
/// own thread and says nothing when it has.)
/// For a port 0: binds a socket on `addr`'s IP with a port of the kernel's choosing, writes
/// that port into `addr`, and returns the socket. Bound with `SO_REUSEADDR` and never
/// listening, it keeps every other socket off the port (a plain bind, another reservation,
/// an outgoing connection's source port) while letting pingora's listener, also
/// `SO_REUSEADDR`, bind and listen on it.
fn reserve(addr: &mut SocketAddr) -> Result<Option<tokio::net::TcpSocket>, EdgeError> {
    if addr.port() != 0 {
        return Ok(None);
    }
    let ip = addr.ip();
    reserve_exactly(addr)
        .map(Some)
        .map_err(|e| EdgeError::Listen(format!("reserving a port on {ip}: {e}")))
}

/// Binds a `SO_REUSEADDR` socket, not listening, to `addr`, and writes the address bound
/// into it (the port picked, for a port 0).
fn reserve_exactly(addr: &mut SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket.bind(*addr)?;
    *addr = socket.local_addr()?;
    Ok(socket)
}

/// How to tell that pingora listens on an address.
#[derive(Clone, Copy)]
enum Probe {
    /// Connect (and hang up): the accept itself works. For the plain listener, which takes a
    /// silent connection quietly.
    Connect,
    /// Bind a `SO_REUSEADDR` socket to it: refused once a socket listens there. For the TLS
    /// listener, which would log a failed handshake for every probe connection.
    Bind,
}

/// Waits until the proxy listens on `addr` (at most 30 s, or until shutdown).
async fn wait_listening(addr: SocketAddr, probe: Probe, shutdown: &CancellationToken) -> bool {
    let mut local = addr;
    if local.ip().is_unspecified() && matches!(probe, Probe::Connect) {
        local.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() {
        let listening = match probe {
            Probe::Connect => {
                let attempt = tokio::net::TcpStream::connect(local);
                matches!(
                    tokio::time::timeout(Duration::from_millis(200), attempt).await,
                    Ok(Ok(_))
                )
            }
            Probe::Bind => {
                let mut taken = local;
                matches!(reserve_exactly(&mut taken), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
            }
        };
        if listening {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Rebuilds [`EdgeState`] whenever the route store swaps in a new snapshot.
async fn rebuild_on_reload(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut updates = shared.routes.subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = updates.changed() => if changed.is_err() { return },
        }
        let routes = updates.borrow_and_update().clone();
        let version = routes.version.clone();
        let state =
            EdgeState::build(routes, &shared.registry, &shared.metrics).carry_over(&shared.state.load());
        shared.state.store(Arc::new(state));
        tracing::info!(version, "route snapshot applied");
    }
}

/// Probes every backend every `interval` of the current snapshot.
async fn health_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let http = match crate::http_client::build(crate::http_client::ClientOptions {
        max_idle_per_host: Some(1),
        ..Default::default()
    }) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the health-check client; active checks are off");
            return;
        }
    };
    loop {
        let state = shared.state.load_full();
        let pools = state.pools();
        pool::probe_all(&http, &pools, &state.health).await;
        for p in &pools {
            let healthy = i64::try_from(p.healthy_count()).unwrap_or(0);
            shared
                .metrics
                .healthy_backends
                .with_label_values(&[p.shard.as_str()])
                .set(healthy);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(state.health.interval) => {}
        }
    }
}

/// How the edge runs pingora: `threads` workers, work stealing or one runtime per thread, a
/// short shutdown. Public so that benchmarks run a bare pingora with exactly these settings.
pub fn server_conf(threads: usize, work_stealing: bool) -> pingora::server::configuration::ServerConf {
    pingora::server::configuration::ServerConf {
        threads,
        work_stealing,
        // The drain before it waits for requests in flight; this covers one accepted just
        // before the listeners closed.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(2),
        ..Default::default()
    }
}

mod server {
    //! The pingora server, run on its own thread with its own runtimes.

    use std::sync::Arc;

    use async_trait::async_trait;
    use pingora::listeners::tls::TlsSettings;
    use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
    use pingora::services::listening::Service;
    use tokio_util::sync::CancellationToken;

    use super::h1::H1App;
    use super::{EdgeConfig, EdgeError, EdgeProxy, Shared};

    /// Turns our cancellation token into pingora's shutdown signal, after a drain: once the
    /// token is cancelled, `/readyz` fails and every answer closes its connection, and pingora
    /// is told to stop only when no request is in flight, or when the drain timeout is up. pingora then stops accepting, gives stragglers its grace
    /// second, and stops its runtimes.
    /// With `upgrade` cancelled instead (SIGQUIT), the cache file is written at once, the
    /// drain begins (every answer closes its connection, so clients come back through the
    /// listeners, now shared with the new edge), and pingora passes the listeners to the new
    /// edge, keeps accepting beside it for a few seconds, then stops.
    struct TokenSignal {
        token: CancellationToken,
        upgrade: CancellationToken,
        shared: Arc<Shared>,
        timeout: std::time::Duration,
    }

    #[async_trait]
    impl ShutdownSignalWatch for TokenSignal {
        async fn recv(&self) -> ShutdownSignal {
            tokio::select! {
                () = self.token.cancelled() => {}
                () = self.upgrade.cancelled() => {
                    let written = self.shared.service.write_file_now().await;
                    self.shared.drain.start();
                    tracing::info!(
                        cache_file_written = written,
                        in_flight = self.shared.drain.in_flight(),
                        "handing the listeners over; draining"
                    );
                    return ShutdownSignal::GracefulUpgrade;
                }
            }
            let drain = &self.shared.drain;
            drain.start();
            tracing::info!(in_flight = drain.in_flight(), "draining");
            if tokio::time::timeout(self.timeout, drain.idle()).await.is_err() {
                tracing::warn!(
                    in_flight = drain.in_flight(),
                    timeout_ms = self.timeout.as_millis() as u64,
                    "drain timed out; stopping with requests in flight"
                );
            }
            ShutdownSignal::GracefulTerminate
        }
    }

    /// The server, before its listeners: with `take_over`, ready to receive them from the
    /// running edge (`bootstrap`).
    pub(super) fn new(cfg: &EdgeConfig, take_over: bool) -> Server {
        let mut conf = super::server_conf(cfg.threads, cfg.work_stealing);
        if let Some(sock) = &cfg.upgrade_sock {
            conf.upgrade_sock = sock.to_string_lossy().into_owned();
            // The operator sends SIGQUIT after starting the new edge: give them time.
            conf.upgrade_sock_connect_accept_max_retries = Some(30);
        }
        let opt = take_over.then(|| pingora::server::configuration::Opt {
            upgrade: true,
            ..Default::default()
        });
        Server::new_with_opt_and_conf(opt, conf)
    }

    /// Adds the proxy's listeners; fails early on busy ports (unless they were taken over) or
    /// bad TLS files.
    pub(super) fn add_listeners(
        server: &mut Server,
        cfg: &EdgeConfig,
        shared: Arc<Shared>,
        taken_over: bool,
    ) -> Result<(), EdgeError> {
        let check_free = |addr| if taken_over { Ok(()) } else { check_free(addr) };
        // The lean HTTP/1.1 path serves both listeners; the general proxy beside it takes
        // HTTP/2 and the requests the lean path hands over.
        let mut general = pingora::proxy::http_proxy(&server.configuration, EdgeProxy::new(shared.clone()));
        let h2 = &cfg.http2;
        let mut server_options = pingora::apps::HttpServerOptions::default();
        server_options.h2_idle_timeout = Some(std::time::Duration::from_millis(h2.idle_timeout_ms));
        general.server_options = Some(server_options);
        let mut options = pingora::protocols::http::v2::server::default_h2_options();
        options
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
            .max_header_list_size(h2.max_header_list_bytes);
        general.h2_options = Some(options);
        let app = H1App::new(shared, general, &cfg.http1);
        let mut service = Service::new("edge".to_string(), app);
        check_free(cfg.listen_http)?;
        service.add_tcp(&cfg.listen_http.to_string());
        if let (Some(addr), Some(cert), Some(key)) = (cfg.listen_https, &cfg.cert, &cfg.key) {
            check_free(addr)?;
            let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
            let loaded = pingora::tls::load_certs_and_key_files(&cert, &key);
            if !matches!(loaded, Ok(Some(_))) {
                return Err(EdgeError::Listen(format!(
                    "cannot load TLS certificate {cert} or key {key}"
                )));
            }
            let mut tls = TlsSettings::intermediate(&cert, &key)
                .map_err(|e| EdgeError::Listen(format!("tls settings: {e}")))?;
            tls.enable_h2();
            service.add_tls_with_settings(&addr.to_string(), None, tls);
        }
        server.add_service(service);
        Ok(())
    }

    /// pingora binds inside its own thread and exits the process on failure; check first so a
    /// busy port is a clear error instead.
    fn check_free(addr: std::net::SocketAddr) -> Result<(), EdgeError> {
        std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|e| EdgeError::Listen(format!("cannot listen on {addr}: {e}")))
    }

    /// Runs the server on its own thread until `shutdown`, then drains it (see
    /// [`TokenSignal`]) for at most `drain`; or until `upgrade`, then hands the listeners over,
    /// and once it has stopped cancels `edge` (the whole edge's shutdown): the old edge exits.
    pub(super) fn start(
        server: Server,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        upgrade: CancellationToken,
        edge: CancellationToken,
        drain: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(TokenSignal {
                    token: shutdown,
                    upgrade: upgrade.clone(),
                    shared,
                    timeout: drain,
                }),
            });
            if upgrade.is_cancelled() {
                edge.cancel();
            }
        })
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn load(text: &str) -> Result<EdgeConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        EdgeConfig::load(&path).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
region = "us-east-1"
listen_http = "127.0.0.1:8080"
admin = "127.0.0.1:9900"
routes = "routes/example.toml"

[[tcs]]
region = "us-east-1"
url = "http://127.0.0.1:7101"
token = "t"
"#;

    #[test]
    fn a_good_config_loads() {
        let cfg = load(GOOD).unwrap();
        assert_eq!(cfg.region.as_str(), "us-east-1");
    }

    #[test]
    fn limits_and_the_server_name_are_checked() {
        let cfg = load(&format!("server = \"tenant-edge\"\n{GOOD}")).unwrap();
        assert_eq!(cfg.server.as_deref(), Some("tenant-edge"));
        assert_eq!(cfg.connections, conns::ConnectionLimits::default());
        for bad in ["server = \"a\\nb\"", "server = \" padded \"", "server = \"\""] {
            let err = load(&format!("{bad}\n{GOOD}")).unwrap_err();
            assert!(err.contains("server"), "{bad}: {err}");
        }
        let err = load(&format!(
            "{GOOD}\n[connections]\nmax_connections = 0\n[http2]\nidle_timeout_ms = 0\n"
        ))
        .unwrap_err();
        assert!(err.contains("[connections]") && err.contains("[http2]"), "{err}");
    }

    /// A config built in code is held to the rules a file is: `start` refuses it before
    /// binding anything.
    #[tokio::test]
    async fn a_config_built_in_code_is_checked_at_start() {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let region = Region::new("eu-west-1").unwrap();
        let mut cfg = EdgeConfig::new(region, any, any, PathBuf::from("routes/dev.toml"), Vec::new());
        cfg.threads = 0;
        let err = match start(cfg, CancellationToken::new()).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an edge with no [[tcs]] and no threads started"),
        };
        for problem in [
            "at least one [[tcs]] region is needed",
            "threads must be at least 1",
        ] {
            assert!(err.contains(problem), "{problem:?} missing from: {err}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
region = "eu-west-1"
listen_http = "127.0.0.1:8080"
listen_https = "127.0.0.1:8443"
admin = "127.0.0.1:9900"
routes = "routes/example.toml"
threads = 0

[[tcs]]
region = "us-east-1"
url = "http://127.0.0.1:7101"
token = "t"

[[tcs]]
region = "us-east-1"
url = "http://127.0.0.1:7102"
token = "t"
"#;
        let err = load(text).unwrap_err();
        for problem in [
            "region \"eu-west-1\" is not one of the [[tcs]] regions (us-east-1, us-east-1)",
            "region \"us-east-1\" is listed twice",
            "listen_https needs cert and key",
            "threads must be at least 1",
        ] {
            assert!(err.contains(problem), "{problem:?} missing from: {err}");
        }
    }

    #[test]
    fn a_region_that_is_not_a_name_is_refused() {
        let err = load(&GOOD.replacen("region = \"us-east-1\"", "region = \"US East\"", 1)).unwrap_err();
        assert!(err.contains("invalid region"), "{err}");
    }
}
