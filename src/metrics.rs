//! Prometheus metrics of the edge.
//!
//! Each edge owns its own [`Registry`], so several edges (or an edge and TCS nodes) can live in
//! one process. Handles that the request path touches are resolved once, when a route snapshot
//! is built ([`RequestCounters`]), never per request.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Status classes a response is counted under; index with [`status_class`].
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Product label used when a request never matched a product (bad host, unknown path).
pub const NO_PRODUCT: &str = "none";

/// Index of a status code's class in [`STATUS_CLASSES`].
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// A counter bumped on the hot path by every worker thread: one cache-padded cell per shard, so
/// threads do not bounce one cache line between cores; summed when scraped.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    cells: [crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>; 16],
}

impl ShardedCounter {
    /// Adds one, on this thread's cell.
    #[inline]
    pub fn inc(&self) {
        self.cells[shard_index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The total over every cell.
    pub fn get(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// This thread's cell index, assigned round-robin on first use.
fn shard_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % 16;
    }
    INDEX.with(|i| *i)
}

/// Every metric the edge exports.
#[derive(Clone)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Requests answered, by status class and product.
    pub requests: IntCounterVec,
    /// Time from sending the request upstream to the end of the response, by product.
    pub upstream_latency: HistogramVec,
    /// Tenant-context cache hits, exported as `tenant_cache_hits_total` at scrape time.
    pub cache_hits: std::sync::Arc<ShardedCounter>,
    cache_hits_export: IntCounter,
    /// Tenant-context cache misses (a fetch from TCS followed, possibly coalesced).
    pub cache_misses: IntCounter,
    /// Hits in the negative cache (known-unknown hosts).
    pub negative_hits: IntCounter,
    /// Latency of a cache fill from TCS.
    pub fill_latency: Histogram,
    /// Cache fills that failed because no TCS answered.
    pub fill_failures: IntCounter,
    /// Route snapshot reloads, by result (`ok`, `failed`).
    pub route_reloads: IntCounterVec,
    /// Seconds since the last message (event or heartbeat) on each region's change stream.
    pub stream_staleness: IntGaugeVec,
    /// Last catalogue sequence applied from the change stream.
    pub stream_seq: IntGauge,
    /// Change-stream events applied to the cache, by kind (`upsert`, `delete`, `resync`).
    pub stream_events: IntCounterVec,
    /// Fan-out messages read from SQS, by result (`applied`, `duplicate`, `buffered`,
    /// `malformed`).
    pub fanout_messages: IntCounterVec,
    /// View events applied from fan-out messages.
    pub fanout_events_applied: IntCounter,
    /// SQS requests made, by operation (what an idle edge costs).
    pub fanout_sqs_requests: IntCounterVec,
    /// Repairs from TCS while on the fan-out, by reason (`gap`, `behind`, `start`).
    pub fanout_repairs: IntCounterVec,
    /// 1 for the transport carrying changes now (`sqs`, `stream`), 0 for the other.
    pub fanout_transport: IntGaugeVec,
    /// Backends currently considered healthy, by shard.
    pub healthy_backends: IntGaugeVec,
    /// Connection failures to backends (each may trigger a retry on another backend).
    pub upstream_connect_failures: IntCounter,
    /// Answers "tenant moved" (421) from shards, by outcome: `replayed` (rerouted and sent
    /// again), `rejected` (not replayable: 503), `unresolved` (no newer context to be had: 503).
    pub tenant_moved: IntCounterVec,
    /// Trust in each TCS region: 0 trusted, 1 canary missing, 2 404 ratio, 3 unreachable.
    pub region_trust: IntGaugeVec,
    /// Client connections open now (every listener).
    pub connections_open: IntGauge,
    /// Client connections refused at the cap, by `reason` (`total`, `per_client`).
    pub connections_refused: IntCounterVec,
    /// HTTP/2 connections closed for sending stream resets over the limit.
    pub http2_reset_floods: IntCounter,
    /// HTTP/2 requests not proxied because the client had reset the stream already.
    pub http2_reset_unproxied: IntCounter,
    /// Requests refused by a tenant limit (429), by product and limit (`rate`, `in_flight`):
    /// per-product totals, so the label set stays bounded however many tenants there are.
    pub limited: IntCounterVec,
    /// The sidecar's API requests, by endpoint and status code.
    pub sidecar_requests: IntCounterVec,
    /// The sidecar's openings of a tenant's secrets (one per tenant version), by result (`ok`,
    /// `failed`).
    pub secret_opens: IntCounterVec,
}

/// Requests counters for one product, one per status class, resolved ahead of time.
#[derive(Clone)]
pub struct RequestCounters(pub [IntCounter; 6]);

impl RequestCounters {
    /// Counts one response with `status`.
    pub fn count(&self, status: u16) {
        self.0[status_class(status)].inc();
    }
}

impl EdgeMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::labelled(None)
    }

    /// [`EdgeMetrics::new`] with `label` (name, value) on every series: one set per view in a
    /// sidecar serving several ([`EdgeMetrics::render_all`] writes them out together).
    pub fn labelled(label: Option<(&str, &str)>) -> Result<Self, prometheus::Error> {
        let labels = label.map(|(k, v)| std::iter::once((k.to_owned(), v.to_owned())).collect());
        let registry = Registry::new_custom(Some("tenant_edge".into()), labels)?;
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = EdgeMetrics {
            requests: IntCounterVec::new(
                Opts::new("requests_total", "Requests answered, by status class and product"),
                &["status", "product"],
            )?,
            upstream_latency: HistogramVec::new(
                HistogramOpts::new("upstream_latency_seconds", "Upstream response time by product")
                    .buckets(latency_buckets.clone()),
                &["product"],
            )?,
            cache_hits: Default::default(),
            cache_hits_export: IntCounter::new("tenant_cache_hits_total", "Tenant-context cache hits")?,
            cache_misses: IntCounter::new("tenant_cache_misses_total", "Tenant-context cache misses")?,
            negative_hits: IntCounter::new(
                "tenant_cache_negative_hits_total",
                "Requests answered from the negative (unknown host) cache",
            )?,
            // Fills are sub-millisecond on a healthy network: finer buckets at the low end.
            fill_latency: Histogram::with_opts(
                HistogramOpts::new("tenant_cache_fill_seconds", "Latency of a cache fill from TCS")
                    .buckets([&[0.0001, 0.00025][..], &latency_buckets].concat()),
            )?,
            fill_failures: IntCounter::new(
                "tenant_cache_fill_failures_total",
                "Cache fills that failed because no TCS answered",
            )?,
            route_reloads: IntCounterVec::new(
                Opts::new("route_reloads_total", "Route snapshot reloads by result"),
                &["result"],
            )?,
            stream_staleness: IntGaugeVec::new(
                Opts::new(
                    "tcs_stream_staleness_seconds",
                    "Seconds since the last message on a region's TCS change stream",
                ),
                &["region"],
            )?,
            stream_seq: IntGauge::new("tcs_stream_seq", "Last catalogue sequence applied from TCS")?,
            stream_events: IntCounterVec::new(
                Opts::new("tcs_stream_events_total", "Change-stream events applied, by kind"),
                &["kind"],
            )?,
            fanout_messages: IntCounterVec::new(
                Opts::new(
                    "fanout_messages_total",
                    "Fan-out messages read from SQS, by result",
                ),
                &["result"],
            )?,
            fanout_events_applied: IntCounter::new(
                "fanout_events_applied_total",
                "View events applied from fan-out messages",
            )?,
            fanout_sqs_requests: IntCounterVec::new(
                Opts::new("fanout_sqs_requests_total", "SQS requests made, by operation"),
                &["op"],
            )?,
            fanout_repairs: IntCounterVec::new(
                Opts::new(
                    "fanout_repairs_total",
                    "Repairs from TCS on the fan-out, by reason",
                ),
                &["reason"],
            )?,
            fanout_transport: IntGaugeVec::new(
                Opts::new("fanout_transport", "1 for the transport carrying changes now"),
                &["transport"],
            )?,
            healthy_backends: IntGaugeVec::new(
                Opts::new("healthy_backends", "Backends considered healthy, by shard"),
                &["shard"],
            )?,
            upstream_connect_failures: IntCounter::new(
                "upstream_connect_failures_total",
                "Connection failures to backends",
            )?,
            tenant_moved: IntCounterVec::new(
                Opts::new(
                    "tenant_moved_total",
                    "421 tenant-moved answers from shards, by outcome",
                ),
                &["outcome"],
            )?,
            region_trust: IntGaugeVec::new(
                Opts::new(
                    "tcs_region_trust",
                    "TCS region trust: 0 trusted, 1 canary missing, 2 404 ratio departs, 3 unreachable",
                ),
                &["region"],
            )?,
            connections_open: IntGauge::new("connections_open", "Client connections open now")?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "connections_refused_total",
                    "Client connections refused at the cap, by reason (total, per_client)",
                ),
                &["reason"],
            )?,
            http2_reset_floods: IntCounter::new(
                "http2_reset_floods_total",
                "HTTP/2 connections closed for sending stream resets over the limit",
            )?,
            http2_reset_unproxied: IntCounter::new(
                "http2_reset_unproxied_total",
                "HTTP/2 requests not proxied because the client had reset the stream already",
            )?,
            limited: IntCounterVec::new(
                Opts::new(
                    "limited_total",
                    "Requests refused by a tenant limit, by product and limit",
                ),
                &["product", "limit"],
            )?,
            sidecar_requests: IntCounterVec::new(
                Opts::new(
                    "sidecar_requests_total",
                    "Sidecar API requests, by endpoint and status code",
                ),
                &["endpoint", "status"],
            )?,
            secret_opens: IntCounterVec::new(
                Opts::new(
                    "secret_opens_total",
                    "Openings of a tenant version's secrets by the sidecar, by result",
                ),
                &["result"],
            )?,
            registry,
        };
        m.register_all()?;
        Ok(m)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.requests.clone()))?;
        r.register(Box::new(self.upstream_latency.clone()))?;
        r.register(Box::new(self.cache_hits_export.clone()))?;
        r.register(Box::new(self.cache_misses.clone()))?;
        r.register(Box::new(self.negative_hits.clone()))?;
        r.register(Box::new(self.fill_latency.clone()))?;
        r.register(Box::new(self.fill_failures.clone()))?;
        r.register(Box::new(self.route_reloads.clone()))?;
        r.register(Box::new(self.stream_staleness.clone()))?;
        r.register(Box::new(self.stream_seq.clone()))?;
        r.register(Box::new(self.stream_events.clone()))?;
        r.register(Box::new(self.fanout_messages.clone()))?;
        r.register(Box::new(self.fanout_events_applied.clone()))?;
        r.register(Box::new(self.fanout_sqs_requests.clone()))?;
        r.register(Box::new(self.fanout_repairs.clone()))?;
        r.register(Box::new(self.fanout_transport.clone()))?;
        r.register(Box::new(self.healthy_backends.clone()))?;
        r.register(Box::new(self.upstream_connect_failures.clone()))?;
        r.register(Box::new(self.region_trust.clone()))?;
        r.register(Box::new(self.tenant_moved.clone()))?;
        r.register(Box::new(self.connections_open.clone()))?;
        r.register(Box::new(self.connections_refused.clone()))?;
        r.register(Box::new(self.http2_reset_floods.clone()))?;
        r.register(Box::new(self.http2_reset_unproxied.clone()))?;
        r.register(Box::new(self.limited.clone()))?;
        r.register(Box::new(self.sidecar_requests.clone()))?;
        r.register(Box::new(self.secret_opens.clone()))?;
        Ok(())
    }

    /// The request counters of `product`, resolved once per snapshot.
    pub fn request_counters(&self, product: &str) -> RequestCounters {
        RequestCounters(STATUS_CLASSES.map(|class| self.requests.with_label_values(&[class, product])))
    }

    /// Brings a counter that mirrors an external monotonic count up to `total`.
    pub fn sync_counter(counter: &IntCounter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        Self::render_all(&[self])
    }

    /// The metrics of several sets (each [`EdgeMetrics::labelled`] apart) as one exposition:
    /// each family once, with every set's series in it.
    pub fn render_all(sets: &[&EdgeMetrics]) -> String {
        let mut families: Vec<prometheus::proto::MetricFamily> = Vec::new();
        for m in sets {
            Self::sync_counter(&m.cache_hits_export, m.cache_hits.get());
            for mut family in m.registry.gather() {
                match families.iter_mut().find(|f| f.name() == family.name()) {
                    Some(known) => known.mut_metric().extend(family.take_metric()),
                    None => families.push(family),
                }
            }
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format except on invalid metric names,
        // which are all static here.
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(503)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "other");
        assert_eq!(STATUS_CLASSES[status_class(600)], "other");
    }

    #[test]
    fn counts_render() {
        let m = EdgeMetrics::new().unwrap();
        m.request_counters("jira").count(404);
        EdgeMetrics::sync_counter(&m.route_reloads.with_label_values(&["failed"]), 3);
        let text = m.render();
        assert!(
            text.contains(r#"tenant_edge_requests_total{product="jira",status="4xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tenant_edge_route_reloads_total{result="failed"} 3"#),
            "{text}"
        );
    }
}
