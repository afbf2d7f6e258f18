//! HTTP client of the TCS regions an edge is configured with: hedged lookups over kept-open,
//! multiplexed (HTTP/2) connections, with a per-region in-flight limit.
//!
//! A miss asks the local region and one random other region, at once or after a hedge delay;
//! the first valid answer wins and the other request is dropped (its stream is reset). A `404`
//! counts only from a region the trust checks ([`super::trust`]) have not flagged, so an
//! emptied table cannot make the edge believe tenants are gone. Lookups to one region that
//! pile up share requests ([`super::batch`]). With a single region there is nobody to race or
//! agree with: a miss asks it directly.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::batch::Batcher;
use crate::feed::{HostLookup, ViewSnapshot};

/// One TCS region an edge may ask.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcsEndpoint {
    /// Region of this TCS (`us-east-1`).
    pub region: String,
    /// Base URL (`http://127.0.0.1:7101`).
    pub url: String,
    /// Bearer token of this edge as a consumer of the `ingress` view.
    pub token: String,
}

// The token is a secret: keep it out of logs and panic messages (as `ConsumerConfig` does).
impl std::fmt::Debug for TcsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcsEndpoint")
            .field("region", &self.region)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// How misses are fetched and regions judged (`[lookup]` in the edge config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Timeout of one lookup in one region, in milliseconds.
    pub timeout_ms: u64,
    /// Delay before the second region is asked; 0 asks both at once.
    pub hedge_delay_ms: u64,
    /// With a hedge delay, hedges may add at most this share of lookups (percent).
    pub hedge_budget_percent: u32,
    /// How long a trusted `404` waits for a racing region that may still find the host.
    pub agree_wait_ms: u64,
    /// Lookups in flight per region beyond which that region is skipped (shed).
    pub max_in_flight_per_region: usize,
    /// Hosts that must exist: a region answering `404` for one is distrusted.
    pub canaries: Vec<String>,
    /// Period of the canary and 404-ratio checks, in milliseconds.
    pub check_interval_ms: u64,
    /// A region whose share of `404`s exceeds the lowest other region's by this much is
    /// distrusted (0.0-1.0).
    pub not_found_tolerance: f64,
    /// Lookups a region must have answered in a period before its 404 share is judged.
    pub min_samples: u64,
    /// Entries older than this are refreshed in the background while they keep serving.
    pub refresh_after_secs: u64,
    /// Most hosts one batched lookup request carries.
    pub batch_max_hosts: usize,
    /// Batched lookup requests out at once per region and per proxy thread (each thread has
    /// its own queue and connection); lookups arriving while all are out wait for the next one.
    pub batches_in_flight: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            timeout_ms: 1000,
            hedge_delay_ms: 0,
            hedge_budget_percent: 10,
            agree_wait_ms: 50,
            max_in_flight_per_region: 256,
            canaries: Vec::new(),
            check_interval_ms: 2000,
            not_found_tolerance: 0.2,
            min_samples: 20,
            refresh_after_secs: 300,
            batch_max_hosts: 64,
            batches_in_flight: 4,
        }
    }
}

/// What went wrong underneath a [`TcsError::Transport`], shared by every lookup of a batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a TCS did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TcsError {
    /// Connection, timeout or body error.
    #[error("tcs {region}: {source}")]
    Transport {
        /// The region asked.
        region: Arc<str>,
        /// The underlying error (shared by every lookup of a batch).
        source: Cause,
    },
    /// An answer that is neither 200 nor 404.
    #[error("tcs {region}: unexpected status {status}")]
    Status {
        /// The region asked.
        region: Arc<str>,
        /// The status it answered.
        status: u16,
    },
    /// A `404` from a region that is not trusted.
    #[error("tcs {region}: 404 from a distrusted region")]
    Distrusted {
        /// The region asked.
        region: Arc<str>,
    },
    /// An answer older than the version the caller needs.
    #[error("tcs {region}: version {version} is older than needed")]
    Stale {
        /// The region asked.
        region: Arc<str>,
        /// The version it answered.
        version: u64,
    },
    /// Every region is at its in-flight limit, or none is configured.
    #[error("no tcs region has capacity")]
    NoCapacity,
    /// An answer that does not fit the question.
    #[error("tcs {region}: {reason}")]
    Protocol {
        /// The region asked.
        region: Arc<str>,
        /// What was wrong.
        reason: &'static str,
    },
    /// The lookup's batch was dropped unanswered (its runtime shut down).
    #[error("tcs {region}: lookup abandoned")]
    Abandoned {
        /// The region asked.
        region: Arc<str>,
    },
}

/// The answer of a lookup by host.
#[derive(Debug)]
pub enum Lookup {
    /// The host names a tenant.
    Found {
        /// Region that answered.
        region: Arc<str>,
        /// The answer.
        found: HostLookup,
    },
    /// No tenant has this host (said by a trusted region).
    NotFound,
}

/// How far a region is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Trust {
    /// Answers are believed.
    Trusted = 0,
    /// It said `404` for a canary host that must exist.
    CanaryMissing = 1,
    /// Its share of `404`s departs from the other regions'.
    NotFoundRatio = 2,
    /// It does not answer its health check.
    Unreachable = 3,
}

impl Trust {
    fn from_u8(v: u8) -> Trust {
        match v {
            0 => Trust::Trusted,
            1 => Trust::CanaryMissing,
            2 => Trust::NotFoundRatio,
            _ => Trust::Unreachable,
        }
    }
}

/// A region's endpoint, precomputed URLs and header, and its live counters.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) name: Arc<str>,
    pub(crate) base: String,
    pub(crate) auth: String,
    trust: AtomicU8,
    in_flight: AtomicUsize,
    /// Lookups and `404`s in the current judging period (reset by the trust checks).
    pub(crate) window_lookups: AtomicU64,
    pub(crate) window_not_found: AtomicU64,
    /// Lookups skipped because the region was at its in-flight limit.
    pub(crate) shed: AtomicU64,
    /// How long its last health ping took, in microseconds (0: none answered yet).
    ping_us: AtomicU64,
    batcher: Batcher,
}

impl Region {
    /// Whether this region's `404`s are believed.
    pub(crate) fn trust(&self) -> Trust {
        Trust::from_u8(self.trust.load(Ordering::Relaxed))
    }

    pub(crate) fn set_trust(&self, trust: Trust) -> Trust {
        Trust::from_u8(self.trust.swap(trust as u8, Ordering::Relaxed))
    }

    /// Lookups in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a lookup in flight to a region until dropped.
struct Slot<'a>(&'a Region);

impl<'a> Slot<'a> {
    fn take(region: &'a Region, limit: usize) -> Option<Slot<'a>> {
        let taken = region
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot(region)),
            Err(_) => {
                region.shed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bounds the extra lookups that delayed hedges add: each primary lookup earns a fraction of a
/// hedge, each hedge spends one (in thousandths), saved up to ten hedges.
#[derive(Debug)]
struct HedgeBudget {
    milli_tokens: AtomicI64,
    earn: i64,
}

impl HedgeBudget {
    const COST: i64 = 1000;
    const CAP: i64 = 10 * Self::COST;

    fn new(percent: u32) -> Self {
        HedgeBudget {
            milli_tokens: AtomicI64::new(Self::CAP),
            earn: i64::from(percent) * 10,
        }
    }

    fn earn(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.earn).min(Self::CAP))
            });
    }

    fn spend(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= Self::COST).then_some(t - Self::COST)
            })
            .is_ok()
    }
}

/// What one region said.
pub(crate) enum Answer {
    Found(HostLookup),
    NotFound,
}

/// Every problem of a `[[tcs]]` list for a process running in `region`: none listed, `region`
/// not among them, a region named twice or not a name.
pub fn endpoint_problems(region: &str, tcs: &[TcsEndpoint]) -> Vec<String> {
    let mut problems = Vec::new();
    if tcs.is_empty() {
        problems.push("at least one [[tcs]] region is needed".to_owned());
    } else if !tcs.iter().any(|t| t.region == region) {
        problems.push(format!(
            "region {:?} is not one of the [[tcs]] regions ({})",
            region,
            tcs.iter()
                .map(|t| t.region.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tcs {
        if let Err(e) = crate::tenant::Region::new(&t.region) {
            problems.push(format!("[[tcs]]: {e}"));
        }
        if !seen.insert(t.region.as_str()) {
            problems.push(format!("[[tcs]]: region {:?} is listed twice", t.region));
        }
    }
    problems
}

/// A [`TcsClient`] that could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be built (TLS roots, resolver).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A region's URL does not parse.
    #[error("tcs {region}: {url:?} is not a URL: {reason}")]
    Url {
        /// The region.
        region: String,
        /// The configured URL.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// Asks regions for tenant contexts: lookups go through each region's batch queue (which keeps
/// its own HTTP/2 connection on the thread it runs on); `http` carries the health pings, and is
/// what a queue falls back to if it cannot build its own client.
#[derive(Debug)]
pub struct TcsClient {
    pub(crate) regions: Vec<Region>,
    /// For health pings (lookups have each region's own connection, in `batch`).
    pub(crate) http: reqwest::Client,
    pub(crate) stream_http: reqwest::Client,
    pub(crate) config: LookupConfig,
    /// The view asked (`ingress` for the edge; a product's view for its service).
    pub(crate) view: Arc<str>,
    budget: HedgeBudget,
    /// Hedges sent, and hedges the budget refused.
    pub(crate) hedges: AtomicU64,
    pub(crate) hedges_refused: AtomicU64,
}

impl TcsClient {
    /// Builds a client of the `ingress` view; `local` is asked first.
    pub fn new(endpoints: &[TcsEndpoint], local: &str, config: LookupConfig) -> Result<Self, BuildError> {
        Self::for_view(endpoints, local, config, crate::tcs::INGRESS)
    }

    /// Builds a client of view `view` (lookups, batches, snapshot and change stream all go to
    /// `/v1/views/{view}/...`); `local` is asked first.
    pub fn for_view(
        endpoints: &[TcsEndpoint],
        local: &str,
        config: LookupConfig,
        view: &str,
    ) -> Result<Self, BuildError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = crate::http_client::build(crate::http_client::ClientOptions {
            connect_timeout: timeout,
            timeout: Some(timeout),
            ..Default::default()
        })?;
        // The change stream is long-lived: no overall timeout, only on connect.
        let stream_http = crate::http_client::build(crate::http_client::ClientOptions {
            connect_timeout: timeout,
            ..Default::default()
        })?;
        let mut regions = endpoints
            .iter()
            .map(|e| -> Result<Region, BuildError> {
                let name: Arc<str> = e.region.as_str().into();
                let base = e.url.trim_end_matches('/').to_owned();
                let auth = format!("Bearer {}", e.token);
                let batcher = Batcher::new(
                    timeout,
                    &format!("{base}/v1/views/{view}"),
                    &auth,
                    name.clone(),
                    config.batch_max_hosts,
                    config.batches_in_flight,
                )?;
                Ok(Region {
                    name,
                    base,
                    auth,
                    trust: AtomicU8::new(Trust::Trusted as u8),
                    in_flight: AtomicUsize::new(0),
                    window_lookups: AtomicU64::new(0),
                    window_not_found: AtomicU64::new(0),
                    shed: AtomicU64::new(0),
                    ping_us: AtomicU64::new(0),
                    batcher,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        regions.sort_by_key(|r| &*r.name != local);
        let budget = HedgeBudget::new(config.hedge_budget_percent);
        Ok(TcsClient {
            regions,
            http,
            stream_http,
            config,
            view: view.into(),
            budget,
            hedges: AtomicU64::new(0),
            hedges_refused: AtomicU64::new(0),
        })
    }

    /// Region names, local first.
    pub fn region_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.regions.iter().map(|r| &r.name)
    }

    /// The order to ask regions in: the local one, then a random other (both trusted when
    /// possible), then the rest; distrusted regions last (their `Found` is still good).
    fn candidates(&self) -> Vec<usize> {
        let (trusted, distrusted): (Vec<usize>, Vec<usize>) =
            (0..self.regions.len()).partition(|&i| self.regions[i].trust() == Trust::Trusted);
        let mut order = Vec::with_capacity(self.regions.len());
        for mut group in [trusted, distrusted] {
            // Index 0 is the local region, if it is in this group; keep it first.
            let start = usize::from(group.first() == Some(&0));
            group[start..].shuffle(&mut rand::thread_rng());
            order.extend(group);
        }
        order
    }

    /// Looks `host` up: hedged across two regions, more on failure; see the module docs.
    /// An answer older than `min_version` is stale (that region lags) and another region is
    /// asked instead.
    pub async fn lookup(&self, host: &str, min_version: u64) -> Result<Lookup, TcsError> {
        if self.regions.len() == 1 {
            return self.lookup_alone(host, min_version).await;
        }
        let order = self.candidates();
        let limit = self.config.max_in_flight_per_region;
        let mut pending = FuturesUnordered::new();
        let mut next = order.iter().copied();
        let mut launch = |pending: &mut FuturesUnordered<_>| {
            for i in next.by_ref() {
                if let Some(slot) = Slot::take(&self.regions[i], limit) {
                    pending.push(self.ask(i, host, slot));
                    return true;
                }
            }
            false
        };
        if !launch(&mut pending) {
            return Err(TcsError::NoCapacity);
        }
        self.budget.earn();
        let delay = Duration::from_millis(self.config.hedge_delay_ms);
        let hedge = tokio::time::sleep(delay);
        tokio::pin!(hedge);
        // With no delay the hedge goes out now: even `sleep(0)` waits for the timer's next
        // millisecond tick. (A single region never gets here: see `lookup_alone`.)
        let mut hedge_armed = !delay.is_zero();
        if delay.is_zero() && launch(&mut pending) {
            self.hedges.fetch_add(1, Ordering::Relaxed);
        }
        let mut believed_not_found = false;
        let mut agree_deadline = None;
        let mut last_err = TcsError::NoCapacity;
        loop {
            let agree_wait = async {
                match agree_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                answer = pending.next(), if !pending.is_empty() => match answer {
                    Some((i, Ok(Answer::Found(found)))) if found.record.version >= min_version => {
                        return Ok(Lookup::Found { region: self.regions[i].name.clone(), found });
                    }
                    Some((i, Ok(Answer::Found(found)))) => {
                        last_err = TcsError::Stale { region: self.regions[i].name.clone(), version: found.record.version };
                        if !believed_not_found { launch(&mut pending); }
                    }
                    Some((i, Ok(Answer::NotFound))) if self.regions[i].trust() == Trust::Trusted => {
                        believed_not_found = true;
                        let wait = Duration::from_millis(self.config.agree_wait_ms);
                        agree_deadline.get_or_insert(tokio::time::Instant::now() + wait);
                    }
                    Some((i, Ok(Answer::NotFound))) => {
                        last_err = TcsError::Distrusted { region: self.regions[i].name.clone() };
                        if !believed_not_found { launch(&mut pending); }
                    }
                    Some((_, Err(e))) => {
                        tracing::debug!(error = %e, host, "tcs lookup failed");
                        last_err = e;
                        if !believed_not_found { launch(&mut pending); }
                    }
                    None => {}
                },
                () = &mut hedge, if hedge_armed => {
                    hedge_armed = false;
                    if self.budget.spend() {
                        if launch(&mut pending) {
                            self.hedges.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        self.hedges_refused.fetch_add(1, Ordering::Relaxed);
                    }
                },
                () = agree_wait => return Ok(Lookup::NotFound),
            }
            if pending.is_empty() {
                return if believed_not_found {
                    Ok(Lookup::NotFound)
                } else {
                    Err(last_err)
                };
            }
        }
    }

    /// [`Self::lookup`] with a single region: nobody to hedge to, nobody to agree with, so one
    /// question and its answer, without the racing machinery (a few thousand instructions a
    /// miss, which an edge with one TCS region pays on every miss).
    async fn lookup_alone(&self, host: &str, min_version: u64) -> Result<Lookup, TcsError> {
        let region = &self.regions[0];
        let slot = Slot::take(region, self.config.max_in_flight_per_region).ok_or(TcsError::NoCapacity)?;
        let answer = self.ask(0, host, slot).await.1.inspect_err(|e| {
            tracing::debug!(error = %e, host, "tcs lookup failed");
        })?;
        match answer {
            Answer::Found(found) if found.record.version >= min_version => Ok(Lookup::Found {
                region: region.name.clone(),
                found,
            }),
            Answer::Found(found) => Err(TcsError::Stale {
                region: region.name.clone(),
                version: found.record.version,
            }),
            Answer::NotFound if region.trust() == Trust::Trusted => Ok(Lookup::NotFound),
            Answer::NotFound => Err(TcsError::Distrusted {
                region: region.name.clone(),
            }),
        }
    }

    /// Asks one region; the slot is held until the answer (or the drop of a losing request).
    async fn ask(&self, i: usize, host: &str, slot: Slot<'_>) -> (usize, Result<Answer, TcsError>) {
        let region = &self.regions[i];
        let answer = region.batcher.lookup(host).await;
        drop(slot);
        // The 404 share the trust checks judge counts real lookups only, not canary probes.
        if let Ok(a) = &answer {
            region.window_lookups.fetch_add(1, Ordering::Relaxed);
            if matches!(a, Answer::NotFound) {
                region.window_not_found.fetch_add(1, Ordering::Relaxed);
            }
        }
        (i, answer)
    }

    /// Whether `region` knows `host` (for canary checks): `Some(true)` found, `Some(false)`
    /// a `404`, `None` no answer.
    pub(crate) async fn probe(&self, region: &Region, host: &str) -> Option<bool> {
        match region.batcher.lookup(host).await {
            Ok(Answer::Found(_)) => Some(true),
            Ok(Answer::NotFound) => Some(false),
            Err(_) => None,
        }
    }

    /// Whether `region` answers its health check.
    pub(crate) async fn ping(&self, region: &Region) -> bool {
        let url = format!("{}/healthz", region.base);
        let started = std::time::Instant::now();
        let up = self
            .http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            region.ping_us.store(us.max(1), Ordering::Relaxed);
        }
        up
    }

    /// Each region's trust and counters, for `/admin/regions`.
    pub fn region_report(&self) -> Vec<serde_json::Value> {
        self.regions
            .iter()
            .map(|r| {
                serde_json::json!({
                    "region": &*r.name,
                    "trust": r.trust(),
                    "in_flight": r.in_flight(),
                    "shed": r.shed.load(Ordering::Relaxed),
                    "ping_ms": match r.ping_us.load(Ordering::Relaxed) {
                        0 => serde_json::Value::Null,
                        us => serde_json::json!(us as f64 / 1000.0),
                    },
                })
            })
            .collect()
    }

    /// Hedges sent, and hedges the budget refused.
    pub fn hedge_counts(&self) -> (u64, u64) {
        (
            self.hedges.load(Ordering::Relaxed),
            self.hedges_refused.load(Ordering::Relaxed),
        )
    }

    /// `GET /v1/views/{view}{rest}` on the regions in turn (local first, trusted first), for
    /// what the cache does not hold (the sidecar's pass-through): the first answer that is a
    /// success or a 404, else the last failure. `long_lived` (a snapshot, a change stream) has
    /// no overall timeout, only the connect's.
    pub async fn forward(&self, rest: &str, long_lived: bool) -> Result<reqwest::Response, TcsError> {
        let http = if long_lived { &self.stream_http } else { &self.http };
        let mut last = TcsError::NoCapacity;
        for i in self.candidates() {
            let region = &self.regions[i];
            let url = format!("{}/v1/views/{}{rest}", region.base, self.view);
            match http.get(url).header("authorization", &region.auth).send().await {
                Ok(resp) if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Ok(resp)
                }
                Ok(resp) => {
                    last = TcsError::Status {
                        region: region.name.clone(),
                        status: resp.status().as_u16(),
                    }
                }
                Err(source) => {
                    last = TcsError::Transport {
                        region: region.name.clone(),
                        source: Arc::new(source),
                    }
                }
            }
        }
        Err(last)
    }

    /// The whole view of `region` at one sequence.
    pub(crate) async fn snapshot(&self, region: &Region) -> Result<ViewSnapshot, TcsError> {
        let url = format!("{}/v1/views/{}/snapshot", region.base, self.view);
        let transport = |source: reqwest::Error| TcsError::Transport {
            region: region.name.clone(),
            source: Arc::new(source),
        };
        let resp = self
            .stream_http
            .get(url)
            .header("authorization", &region.auth)
            .send()
            .await;
        let resp = resp.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(TcsError::Status {
                region: region.name.clone(),
                status: resp.status().as_u16(),
            });
        }
        resp.json().await.map_err(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_budget_caps_extra_lookups() {
        let budget = HedgeBudget::new(10);
        // Starts with ten saved hedges.
        assert_eq!((0..20).filter(|_| budget.spend()).count(), 10);
        // Then one hedge per ten lookups.
        let granted = (0..100)
            .filter(|_| {
                budget.earn();
                budget.spend()
            })
            .count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn in_flight_limit_sheds() {
        let client = TcsClient::new(
            &[TcsEndpoint {
                region: "a".into(),
                url: "http://127.0.0.1:9".into(),
                token: "t".into(),
            }],
            "a",
            LookupConfig::default(),
        )
        .unwrap();
        let region = &client.regions[0];
        let first = Slot::take(region, 1);
        assert!(first.is_some());
        assert!(Slot::take(region, 1).is_none());
        assert_eq!(region.shed.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(Slot::take(region, 1).is_some());
    }

    #[test]
    fn local_region_first_distrusted_last() {
        let endpoint = |r: &str| TcsEndpoint {
            region: r.into(),
            url: "http://127.0.0.1:9".into(),
            token: "t".into(),
        };
        let client = TcsClient::new(
            &[endpoint("b"), endpoint("a"), endpoint("c")],
            "a",
            LookupConfig::default(),
        )
        .unwrap();
        assert_eq!(&*client.regions[0].name, "a");
        for _ in 0..20 {
            assert_eq!(client.candidates()[0], 0);
        }
        client.regions[0].set_trust(Trust::CanaryMissing);
        for _ in 0..20 {
            assert_eq!(client.candidates()[2], 0);
        }
    }

    #[test]
    fn a_tcs_url_that_cannot_be_used_is_refused_at_start() {
        for (url, why) in [
            ("https://127.0.0.1:9", "only http://"),
            ("127.0.0.1:9", "invalid"),
            ("http://", "invalid"),
        ] {
            let endpoint = TcsEndpoint {
                region: "a".into(),
                url: url.into(),
                token: "t".into(),
            };
            let err = TcsClient::new(&[endpoint], "a", LookupConfig::default())
                .err()
                .unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(
                matches!(&err, BuildError::Url { .. }) && err.to_string().contains(why),
                "{url}: {err}"
            );
        }
    }
}
