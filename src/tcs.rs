//! The Tenant Context Service (TCS), the read side: tails the catalogue's change log in order,
//! materialises per-consumer views (only `ingress` so far), answers lookups by host and streams
//! view changes to subscribers (edges).
//!
//! - [`config`]: the TOML configuration.
//! - [`view`]: the materialised `ingress` view and its event ring.
//! - [`tail`]: the catalogue tailer.
//! - [`snapshot`]: the view snapshot file (atomic writes, read back at start).
//! - [`api`]: the HTTP API.
//! - [`faults`]: fault injection for tests and demos (`/admin/faults`).
//! - [`metrics`]: Prometheus metrics, one registry per instance.

pub mod api;
pub mod config;
pub mod faults;
pub mod fleet;
pub mod metrics;
pub mod snapshot;
pub mod standalone;
pub mod tail;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ConsumerConfig, TcsConfig};
use faults::FaultSwitch;
use metrics::TcsMetrics;
use tail::{TailStatus, Tailer};
use view::IngressView;

/// Name of the `ingress` view: routing facts only, never secrets. Every TCS serves it; others
/// are declared in the config (`[[views]]`).
pub const INGRESS: &str = "ingress";

/// Why TCS could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum TcsError {
    /// The configuration file could not be read.
    #[error("reading {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is not valid TOML for [`TcsConfig`].
    #[error("parsing {path}: {message}")]
    ParseConfig {
        /// The file (empty when parsed from text).
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The configuration parsed but is inconsistent.
    #[error("invalid configuration {path}: {}", problems.join("; "))]
    InvalidConfig {
        /// The file (empty when parsed from text).
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP client could not be built.
    #[error("catalogue client: {0}")]
    Client(#[from] crate::feed::ClientError),
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

impl TcsError {
    /// Names the configuration file in a parse or validation error.
    pub(crate) fn at(self, file: &std::path::Path) -> Self {
        match self {
            TcsError::ParseConfig { message, .. } => TcsError::ParseConfig {
                path: file.to_owned(),
                message,
            },
            TcsError::InvalidConfig { problems, .. } => TcsError::InvalidConfig {
                path: file.to_owned(),
                problems,
            },
            other => other,
        }
    }
}

/// A configured consumer, as the API checks it.
pub type Consumer = ConsumerConfig;

/// What a TCS logs once [`Tcs::ready`] resolves: its view trails the catalogue by at most
/// `max_lag` (what `/readyz` checks).
pub const READY_LINE: &str = "ready: the view is within max_lag of the catalogue";

/// One TCS instance: its views, tail status, consumers and metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tcs(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: TcsConfig,
    views: BTreeMap<String, Arc<IngressView>>,
    status: Arc<TailStatus>,
    metrics: TcsMetrics,
    faults: FaultSwitch,
    fleet: fleet::Edges,
}

impl Tcs {
    /// An instance with empty views; nothing runs until it is served (or the caller drives
    /// the views itself, as tests do).
    pub fn new(config: TcsConfig) -> Result<Self, TcsError> {
        Self::with_capacities(
            config,
            view::DEFAULT_RING_CAPACITY,
            view::DEFAULT_CHANNEL_CAPACITY,
        )
    }

    /// Like [`Tcs::new`], with views that retain `ring` events for resuming subscribers and
    /// let a live subscriber trail by `channel` events before it is told to resync.
    pub fn with_capacities(config: TcsConfig, ring: usize, channel: usize) -> Result<Self, TcsError> {
        if config.allow_faults && config.admin_token.as_deref().is_none_or(|t| t.len() < 16) {
            return Err(TcsError::InvalidConfig {
                path: std::path::PathBuf::new(),
                problems: vec!["allow_faults needs an admin_token of 16 or more characters".into()],
            });
        }
        let metrics = TcsMetrics::new(config.region.as_str())?;
        let mut views: BTreeMap<String, Arc<IngressView>> = BTreeMap::new();
        views.insert(INGRESS.to_owned(), Arc::new(IngressView::new(ring, channel)));
        for v in &config.views {
            let projection = view::Projection {
                products: v.products.clone(),
                secrets: v.secrets,
            };
            views.insert(
                v.name.clone(),
                Arc::new(IngressView::projecting(ring, channel, projection)),
            );
        }
        let faults = FaultSwitch::new(config.allow_faults);
        let fleet = fleet::Edges::new(Duration::from_secs(config.fleet_expiry_secs));
        Ok(Self(Arc::new(Inner {
            fleet,
            config,
            views,
            status: Arc::default(),
            metrics,
            faults,
        })))
    }

    /// The configuration this instance runs with.
    pub fn config(&self) -> &TcsConfig {
        &self.0.config
    }

    /// The view called `name`, if this TCS serves it.
    pub fn view(&self, name: &str) -> Option<Arc<IngressView>> {
        self.0.views.get(name).cloned()
    }

    /// The `ingress` view.
    pub fn ingress(&self) -> Arc<IngressView> {
        // `new` always builds it, so the default is never taken.
        self.view(INGRESS).unwrap_or_default()
    }

    /// The views beside `ingress`, with the snapshot file of each.
    fn other_views(&self) -> Vec<(Arc<IngressView>, PathBuf)> {
        self.0
            .views
            .iter()
            .filter(|(name, _)| name.as_str() != INGRESS)
            .map(|(name, view)| {
                (
                    Arc::clone(view),
                    snapshot::path_of_view(&self.0.config.snapshot, name),
                )
            })
            .collect()
    }

    /// What the tailer knows about the catalogue.
    pub fn status(&self) -> &Arc<TailStatus> {
        &self.0.status
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &TcsMetrics {
        &self.0.metrics
    }

    /// The injected faults (settable only when `allow_faults` is on).
    pub fn faults(&self) -> &FaultSwitch {
        &self.0.faults
    }

    /// The edges that report to this TCS (`/v1/fleet`).
    pub fn fleet(&self) -> &fleet::Edges {
        &self.0.fleet
    }

    /// The configured consumers.
    pub fn consumers(&self) -> &[Consumer] {
        &self.0.config.consumers
    }

    /// `Ok((seq, head))` when the tailer polled recently and every view is within `max_lag`
    /// of the catalogue head; otherwise why not.
    pub fn readiness(&self) -> Result<(u64, u64), String> {
        let status = &self.0.status;
        match status.since_last_ok() {
            None => return Err("no successful catalogue poll yet".to_owned()),
            Some(age) if age > api::READY_POLL_AGE => {
                return Err(format!("last successful catalogue poll {}s ago", age.as_secs()))
            }
            Some(_) => {}
        }
        let head = status.head();
        let seq = self.ingress().seq();
        if head < seq {
            // A page never holds changes past its head, so the view came from another log
            // (a snapshot kept across a catalogue reset): it may hold tenants that do not exist.
            return Err(format!("catalogue head {head} is behind the view's seq {seq}"));
        }
        let lag = head - seq;
        if lag > self.0.config.max_lag {
            return Err(format!(
                "view at seq {seq} trails catalogue head {head} by {lag} (max {})",
                self.0.config.max_lag
            ));
        }
        Ok((seq, head))
    }

    /// Resolves once [`Self::readiness`] holds: what an in-process starter waits on instead of
    /// polling `/readyz` (the tailer wakes it once each poll's page is applied).
    pub async fn ready(&self) {
        crate::clock::when_notified(self.0.status.polled(), || self.readiness().is_ok()).await;
    }

    /// Brings the seq, head and lag gauges up to date (called before each scrape).
    pub fn refresh_gauges(&self) {
        let m = &self.0.metrics;
        let head = self.0.status.head();
        m.head.set(gauge(head));
        m.faults_active.set(i64::from(self.0.faults.active().is_some()));
        for (name, view) in &self.0.views {
            let seq = view.seq();
            m.applied_seq.with_label_values(&[name]).set(gauge(seq));
            m.lag
                .with_label_values(&[name])
                .set(gauge(head.saturating_sub(seq)));
        }
    }

    /// Serves the API alone on `listener` until `shutdown` is cancelled: no tailer, no snapshot
    /// file, for a view filled by hand (`ingress().apply`), as unit tests and benches do.
    pub async fn serve_api(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let app = api::router(self, shutdown.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Loads the snapshot file, then serves on `listener` with the tailer and the snapshot
    /// writer running, until `shutdown` is cancelled; writes the snapshot on the way out. The
    /// role's way in is [`bind`], then [`Bound::serve`].
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), TcsError> {
        let cfg = &self.0.config;
        let ingress = self.ingress();
        let on_disk = match snapshot::load(&cfg.snapshot) {
            Some(snap) => {
                tracing::info!(
                    seq = snap.seq,
                    tenants = snap.records.len(),
                    "view snapshot loaded"
                );
                let seq = snap.seq;
                ingress.restore(snap);
                seq
            }
            None => 0,
        };
        let others = self.other_views();
        let mut written = Vec::new();
        for (view, path) in &others {
            // A view whose file is missing or behind `ingress` is caught up by the tailer
            // before it polls (from the log, up to where `ingress` is).
            let seq = match snapshot::load(path) {
                Some(snap) if snap.seq <= on_disk => {
                    let seq = snap.seq;
                    view.restore(snap);
                    seq
                }
                _ => 0,
            };
            written.push(seq);
        }
        let tailer = Tailer::new(
            crate::feed::CatalogueClient::new(&cfg.catalogue)?.with_token(cfg.catalogue_token.clone()),
            Arc::clone(&ingress),
            Arc::clone(&self.0.status),
            self.0.metrics.clone(),
        )
        .with_others(others.iter().map(|(v, _)| Arc::clone(v)).collect())
        .with_pause(self.0.faults.pause_watch());
        // Background tasks stop with the server even if serving fails.
        let tasks = shutdown.child_token();
        let tail_task = tokio::spawn(tailer.run(tasks.clone()));
        let writer = tokio::spawn(snapshot::run_writer(
            ingress,
            cfg.snapshot.clone(),
            on_disk,
            tasks.clone(),
        ));
        let other_writers: Vec<_> = others
            .into_iter()
            .zip(written)
            .map(|((view, path), seq)| tokio::spawn(snapshot::run_writer(view, path, seq, tasks.clone())))
            .collect();
        let addr = listener.local_addr().map_err(TcsError::Serve)?;
        let publisher = match cfg.fanout.sns() {
            Some(sns) => {
                let publisher = crate::fanout::publish::Publisher {
                    config: sns.clone(),
                    region: cfg.region.to_string(),
                    // Unique among the region's nodes, and new with each process.
                    holder: format!("{}-{addr}-{}", cfg.region, std::process::id()),
                    catalogue: crate::feed::CatalogueClient::new(&cfg.catalogue)?
                        .with_token(cfg.catalogue_token.clone()),
                    view: self.ingress(),
                    metrics: self.0.metrics.clone(),
                };
                Some(tokio::spawn(publisher.run(tasks.clone())))
            }
            None => None,
        };
        tracing::info!(target: crate::stack::LISTENING, "tcs {} listening on {addr}", cfg.region);
        let me = self.clone();
        let ready_log = tasks.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = ready_log.cancelled() => {}
                () = me.ready() => tracing::info!(
                    target: crate::stack::LISTENING,
                    "tcs {}: {}",
                    me.0.config.region,
                    READY_LINE
                ),
            }
        });
        let app = api::router(self.clone(), shutdown.clone());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(TcsError::Serve);
        tasks.cancel();
        // The writer's last act is the final snapshot; a panicked task has nothing to add.
        let _ = tail_task.await;
        let _ = writer.await;
        for w in other_writers {
            let _ = w.await;
        }
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        served
    }
}

/// Prometheus integer gauges are `i64`; sequences never get near the limit.
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A TCS node with its listener bound, not yet serving: connections wait in the backlog until
/// [`Bound::serve`]. Its existence is the readiness signal of the socket; `/readyz` says when the
/// view has caught up with the catalogue.
pub struct Bound {
    tcs: Tcs,
    listener: TcpListener,
    addr: std::net::SocketAddr,
}

/// Checks `cfg` and binds `cfg.listen` (port 0 picks a free port; see [`Bound::addr`]).
pub async fn bind(cfg: TcsConfig) -> Result<Bound, TcsError> {
    // Checked again for a config built in code (the stack, tests), as `from_toml` checks one
    // read from a file.
    cfg.validate()?;
    let addr = cfg.listen;
    let tcs = Tcs::new(cfg)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TcsError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(TcsError::Serve)?;
    Ok(Bound { tcs, listener, addr })
}

impl Bound {
    /// The address the API listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The node, for in-process callers (metrics, faults, the view).
    pub fn tcs(&self) -> &Tcs {
        &self.tcs
    }

    /// Serves until `shutdown` is cancelled: the snapshot file loaded, the tailer and the
    /// snapshot writer running, the snapshot written on the way out.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), TcsError> {
        self.tcs.serve(self.listener, shutdown).await
    }
}

/// Binds `cfg.listen` and serves until `shutdown` is cancelled (see [`Bound::serve`]).
pub async fn run(cfg: TcsConfig, shutdown: CancellationToken) -> Result<(), TcsError> {
    bind(cfg).await?.serve(shutdown).await
}

#[cfg(test)]
mod tests;
