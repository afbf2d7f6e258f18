//! Prometheus metrics of one TCS instance, in a registry of its own so that several TCS (the
//! dev stack runs two regions) can live in one process.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The metric handles of one TCS instance; cheap to clone (handles are shared).
#[derive(Debug, Clone)]
pub struct TcsMetrics {
    registry: Registry,
    /// Applied catalogue sequence, per view (`tcs_applied_seq`).
    pub applied_seq: prometheus::IntGaugeVec,
    /// Newest catalogue sequence seen by the tailer (`tcs_catalogue_head`).
    pub head: IntGauge,
    /// `head - applied seq`, per view (`tcs_lag`).
    pub lag: prometheus::IntGaugeVec,
    /// Events emitted, by view and type (`tcs_events_total`).
    pub events: IntCounterVec,
    /// Host lookups, by view and result `hit`/`miss` (`tcs_lookups_total`).
    pub lookups: IntCounterVec,
    /// Batched lookup requests, by view (`tcs_lookup_batches_total`); lookups per batch is
    /// the lookups they answered over this.
    pub lookup_batches: IntCounterVec,
    /// Bulk snapshots served, by view (`tcs_snapshots_total`): each is the whole view, so a
    /// rise across a fleet is a resync storm.
    pub snapshots: IntCounterVec,
    /// Failed catalogue polls (`tcs_tail_errors_total`).
    pub tail_errors: IntCounter,
    /// Open change-stream subscriptions (`tcs_subscribers`).
    pub subscribers: IntGauge,
    /// 1 while any injected fault is set (`tcs_faults_active`).
    pub faults_active: IntGauge,
    /// View requests answered 503 by an injected fault (`tcs_fault_errors_total`).
    pub fault_errors: IntCounter,
    /// Edges heard from within the expiry (`tcs_fleet_edges`), as of the last fleet report.
    pub fleet_edges: IntGauge,
    /// The most any of them is behind, in seconds (`tcs_fleet_max_lag_seconds`).
    pub fleet_max_lag_seconds: prometheus::Gauge,
    /// Fan-out messages published to SNS, by result (`ok`, `failed`: retried).
    pub fanout_published: IntCounterVec,
    /// `PublishBatch` calls made, by result.
    pub fanout_calls: IntCounterVec,
    /// View events per published batch.
    pub fanout_batch_events: prometheus::Histogram,
    /// 1 while this node holds its region's publisher lease.
    pub fanout_leader: IntGauge,
}

impl TcsMetrics {
    /// Creates and registers every metric, labelled with the TCS `region`.
    pub fn new(region: &str) -> Result<Self, prometheus::Error> {
        let labels = std::iter::once(("region".to_owned(), region.to_owned())).collect();
        let registry = Registry::new_custom(Some("tcs".to_owned()), Some(labels))?;
        let m = Self {
            applied_seq: prometheus::IntGaugeVec::new(
                Opts::new("applied_seq", "Catalogue sequence applied to the view"),
                &["view"],
            )?,
            head: IntGauge::new("catalogue_head", "Newest catalogue sequence seen")?,
            lag: prometheus::IntGaugeVec::new(
                Opts::new("lag", "Catalogue head minus applied sequence"),
                &["view"],
            )?,
            events: IntCounterVec::new(
                Opts::new("events_total", "View events emitted"),
                &["view", "type"],
            )?,
            lookups: IntCounterVec::new(
                Opts::new("lookups_total", "Host lookups answered"),
                &["view", "result"],
            )?,
            lookup_batches: IntCounterVec::new(
                Opts::new("lookup_batches_total", "Batched lookup requests answered"),
                &["view"],
            )?,
            snapshots: IntCounterVec::new(Opts::new("snapshots_total", "Bulk snapshots served"), &["view"])?,
            tail_errors: IntCounter::new("tail_errors_total", "Failed catalogue polls")?,
            subscribers: IntGauge::new("subscribers", "Open change-stream subscriptions")?,
            faults_active: IntGauge::new("faults_active", "1 while any injected fault is set")?,
            fault_errors: IntCounter::new(
                "fault_errors_total",
                "View requests answered 503 by an injected fault",
            )?,
            fleet_edges: IntGauge::new("fleet_edges", "Edges heard from within the expiry")?,
            fleet_max_lag_seconds: prometheus::Gauge::new(
                "fleet_max_lag_seconds",
                "The most any reporting edge is behind the view, in seconds",
            )?,
            fanout_published: IntCounterVec::new(
                Opts::new(
                    "fanout_published_total",
                    "Fan-out messages published to SNS, by result",
                ),
                &["result"],
            )?,
            fanout_calls: IntCounterVec::new(
                Opts::new("fanout_publish_calls_total", "SNS PublishBatch calls, by result"),
                &["result"],
            )?,
            fanout_batch_events: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new("fanout_batch_events", "View events per published batch")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0]),
            )?,
            fanout_leader: IntGauge::new(
                "fanout_leader",
                "1 while this node holds its region's publisher lease",
            )?,
            registry,
        };
        m.register_all()?;
        Ok(m)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.applied_seq.clone()))?;
        r.register(Box::new(self.head.clone()))?;
        r.register(Box::new(self.lag.clone()))?;
        r.register(Box::new(self.events.clone()))?;
        r.register(Box::new(self.lookups.clone()))?;
        r.register(Box::new(self.lookup_batches.clone()))?;
        r.register(Box::new(self.snapshots.clone()))?;
        r.register(Box::new(self.tail_errors.clone()))?;
        r.register(Box::new(self.subscribers.clone()))?;
        r.register(Box::new(self.faults_active.clone()))?;
        r.register(Box::new(self.fault_errors.clone()))?;
        r.register(Box::new(self.fleet_edges.clone()))?;
        r.register(Box::new(self.fleet_max_lag_seconds.clone()))?;
        r.register(Box::new(self.fanout_published.clone()))?;
        r.register(Box::new(self.fanout_calls.clone()))?;
        r.register(Box::new(self.fanout_batch_events.clone()))?;
        r.register(Box::new(self.fanout_leader.clone()))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}
