//! Backend pools: health (active checks and passive ejection) and the choice of a backend by
//! least outstanding requests among two random candidates.
//!
//! A [`Backend`] outlives route snapshots: pools are rebuilt on every reload, but a backend with
//! the same address keeps its health and its in-flight count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::clock::now_ms;
use crate::tenant::ShardId;

/// How backends are checked and ejected (from the route snapshot's `[health_check]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Path probed with `GET`.
    pub path: String,
    /// Time between two probes of a backend.
    pub interval: Duration,
    /// A probe slower than this fails.
    pub timeout: Duration,
    /// Consecutive good probes to become healthy.
    pub rise: u32,
    /// Consecutive bad probes to become unhealthy.
    pub fall: u32,
    /// Consecutive connection failures of real requests before a passive ejection.
    pub eject_after: u32,
    /// How long a passively ejected backend is left alone.
    pub eject_for: Duration,
}

/// One backend process, shared by every snapshot that names its address.
#[derive(Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    peer: HttpPeer,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    connect_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    probe_streak: AtomicU32,
}

/// How the edge connects to a backend: plain HTTP/1.1, a 1 s connect timeout (2 s with retries),
/// idle pooled connections closed after 60 s.
pub fn backend_peer(addr: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(1));
    peer.options.total_connection_timeout = Some(Duration::from_secs(2));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            peer: backend_peer(addr),
            // Healthy until a probe says otherwise, so a fresh edge serves at once.
            healthy: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probe_streak: AtomicU32::new(0),
        }
    }

    /// The pingora peer to connect to this backend.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// Healthy by the last probes and not passively ejected.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// [`Backend::usable`] now, reading the clock only while an ejection is recorded (and
    /// clearing it once over), so that picking among healthy backends reads no clock.
    fn usable_now(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now_ms() {
            return false;
        }
        let _ = self
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    /// Whether the active checks consider it healthy.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests in flight to it.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Marks one request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A real request could not connect: after `eject_after` in a row, eject it for a while.
    pub fn connect_failed(&self, settings: &HealthSettings) {
        let failures = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= settings.eject_after {
            let until = now_ms() + settings.eject_for.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.connect_failures.store(0, Ordering::Relaxed);
            tracing::warn!(backend = %self.addr, "backend failing fast: ejected for {:?}", settings.eject_for);
        }
    }

    /// A real request connected.
    pub fn connected(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records one probe result; flips health after `rise` good or `fall` bad probes in a row.
    /// The streak counts good probes as positive and bad ones as negative.
    fn probed(&self, ok: bool, settings: &HealthSettings) {
        let streak = self.probe_streak.load(Ordering::Relaxed) as i32;
        let streak = match (ok, streak >= 0) {
            (true, true) => streak + 1,
            (true, false) => 1,
            (false, true) => -1,
            (false, false) => streak - 1,
        };
        self.probe_streak.store(streak as u32, Ordering::Relaxed);
        let was = self.healthy.load(Ordering::Relaxed);
        if !was && streak >= settings.rise as i32 {
            self.healthy.store(true, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            tracing::info!(backend = %self.addr, "backend healthy");
        } else if was && -streak >= settings.fall as i32 {
            self.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(backend = %self.addr, "backend unhealthy");
        }
    }
}

/// One request in flight to a backend; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends of one shard.
#[derive(Debug)]
pub struct ShardPool {
    /// The shard.
    pub shard: ShardId,
    /// The shard id as an `x-tenant-shard` header value, built once per snapshot.
    pub shard_header: http::HeaderValue,
    /// Its backends, in route-file order.
    pub backends: Vec<Arc<Backend>>,
    /// Requests one tenant may have in flight on it (0: no limit).
    pub tenant_in_flight: u32,
}

impl ShardPool {
    /// A pool of `backends` for `shard`.
    pub fn new(shard: ShardId, backends: Vec<Arc<Backend>>) -> Self {
        // Shard ids are validated names: always a valid header value.
        let shard_header = http::HeaderValue::from_str(shard.as_str())
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        ShardPool {
            shard,
            shard_header,
            backends,
            tenant_in_flight: 0,
        }
    }
}

impl ShardPool {
    /// Least outstanding requests of two random usable backends, skipping those whose bit is set
    /// in `tried`. Returns the backend's index too, for the caller's `tried` mask.
    pub fn pick(&self, tried: u64) -> Option<(usize, &Arc<Backend>)> {
        let n = self.backends.len();
        let ok = |i: usize| (i >= 64 || tried & (1 << i) == 0) && self.backends[i].usable_now();
        let (a, b) = match n {
            0 => return None,
            1 => (0, 0),
            _ => {
                let a = rand::random::<usize>() % n;
                (a, (a + 1 + rand::random::<usize>() % (n - 1)) % n)
            }
        };
        let chosen = match (ok(a), ok(b)) {
            (true, true) if self.backends[b].outstanding() < self.backends[a].outstanding() => Some(b),
            (true, _) => Some(a),
            (false, true) => Some(b),
            (false, false) => (0..n).map(|k| (a + k) % n).find(|&i| ok(i)),
        };
        chosen.map(|i| (i, &self.backends[i]))
    }

    /// Backends that are healthy now.
    pub fn healthy_count(&self) -> usize {
        let now = now_ms();
        self.backends.iter().filter(|b| b.usable(now)).count()
    }
}

/// Every backend this edge has known, by address, so health survives route reloads.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: Mutex<HashMap<SocketAddr, Arc<Backend>>>,
}

impl BackendRegistry {
    /// The backend at `addr`, created on first sight.
    pub fn get(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr)
            .or_insert_with(|| Arc::new(Backend::new(addr)))
            .clone()
    }

    /// Forgets backends no pool uses any more.
    pub fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|addr, _| live.contains(addr));
    }
}

/// Probes every backend of `pools` once, concurrently, and records the results.
pub async fn probe_all(http: &reqwest::Client, pools: &[Arc<ShardPool>], settings: &HealthSettings) {
    let mut seen = std::collections::HashSet::new();
    let probes = pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter(|b| seen.insert(b.addr))
        .map(|b| async {
            let url = format!("http://{}{}", b.addr, settings.path);
            let ok = match http.get(url).timeout(settings.timeout).send().await {
                Ok(resp) => resp.status().is_success(),
                Err(_) => false,
            };
            b.probed(ok, settings);
        });
    futures::future::join_all(probes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            rise: 2,
            fall: 2,
            eject_after: 2,
            eject_for: Duration::from_secs(60),
        }
    }

    fn pool(n: u16) -> ShardPool {
        let reg = BackendRegistry::default();
        ShardPool::new(
            ShardId::new("s").unwrap(),
            (0..n)
                .map(|i| reg.get(SocketAddr::from(([127, 0, 0, 1], 1000 + i))))
                .collect(),
        )
    }

    #[test]
    fn picks_less_loaded_of_two() {
        let p = pool(2);
        let _busy: Vec<_> = (0..5).map(|_| p.backends[0].begin()).collect();
        for _ in 0..50 {
            assert_eq!(p.pick(0).unwrap().0, 1);
        }
    }

    #[test]
    fn in_flight_guard_counts() {
        let p = pool(1);
        let g = p.backends[0].begin();
        assert_eq!(p.backends[0].outstanding(), 1);
        drop(g);
        assert_eq!(p.backends[0].outstanding(), 0);
    }

    #[test]
    fn skips_tried_and_unhealthy() {
        let p = pool(3);
        let s = settings();
        p.backends[0].probed(false, &s);
        p.backends[0].probed(false, &s);
        assert!(!p.backends[0].healthy());
        for _ in 0..50 {
            assert_eq!(p.pick(0b100).unwrap().0, 1);
        }
        assert!(p.pick(0b110).is_none());
        p.backends[0].probed(true, &s);
        assert!(!p.backends[0].healthy(), "rise needs two good probes");
        p.backends[0].probed(true, &s);
        assert!(p.backends[0].healthy());
    }

    #[test]
    fn ejects_after_repeated_connect_failures() {
        let p = pool(2);
        let s = settings();
        p.backends[1].connect_failed(&s);
        assert!(p.backends[1].usable(now_ms()));
        p.backends[1].connect_failed(&s);
        assert!(!p.backends[1].usable(now_ms()));
        assert_eq!(p.healthy_count(), 1);
        for _ in 0..50 {
            assert_eq!(p.pick(0).unwrap().0, 0);
        }
    }

    #[test]
    fn registry_keeps_state_across_rebuilds() {
        let reg = BackendRegistry::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let a = reg.get(addr);
        let _g = a.begin();
        assert_eq!(reg.get(addr).outstanding(), 1);
    }
}
