//! `tenant-edge sidecar`: the edge's tenant cache for any service, on localhost.
//!
//! A product service asks its sidecar what it would ask TCS, at the same paths
//! (`/v1/views/{view}/hosts/{host}`, `.../hosts` in a batch, `.../tenants/{id}/placements/{product}`,
//! `.../snapshot`, `.../changes`) with the same token: adopting it is a change of base URL. The
//! lookups are served from the same machinery as the edge's ([`crate::context::CacheService`]):
//! hedged multi-region misses, coalescing, the pushed change stream with gap resync, suspicion
//! with canaries and 404 consensus, the cache file, prewarm. Unlike TCS's, its answers carry
//! the tenant's secrets opened ([`open`]): once per tenant version, in memory only. A tenant
//! whose secrets do not open answers 503, never a record without them.
//!
//! The bulk endpoints (snapshot, change stream) and a placement by tenant id the cache cannot
//! answer are passed through to TCS (local region first), sealed as TCS serves them.

mod api;
pub mod open;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::context::{CacheConfig, CacheService, CacheSettings, LookupConfig, TcsEndpoint};
use crate::metrics::EdgeMetrics;
use crate::secrets::KeySettings;
use crate::tenant::Region;

/// The sidecar's configuration file (`tenant-edge sidecar --config sidecar.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// The view it serves (a product's, such as `jira`); its `[[tcs]]` tokens must read it.
    /// Either this or `views`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// The views it serves, for a service reading several (its tokens must read every one):
    /// each has a cache of its own, as if each had a sidecar. Either this or `view`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
    /// The region it runs in, one of the `[[tcs]]` regions; its TCS is asked first.
    pub region: Region,
    /// Where it listens: loopback only (its answers carry secrets in plaintext).
    pub listen: SocketAddr,
    /// The TCS regions, with the service's token for each. Callers present one of these tokens.
    pub tcs: Vec<TcsEndpoint>,
    /// The master keys that open the view's secrets; absent, a tenant with secrets answers 503.
    #[serde(default)]
    pub secrets: Option<KeySettings>,
    /// Its cache file (ciphertext only), as the edge's `cache_file`; with several views, one
    /// file per view, named after it (`sidecar.cache` -> `sidecar.jira.cache`).
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// Seconds between writes of `cache_file`.
    #[serde(default = "default_cache_file_interval_secs")]
    pub cache_file_interval_secs: u64,
    /// At start, load the whole view from TCS before serving.
    #[serde(default)]
    pub prewarm: bool,
    /// Cache sizes and lifetimes, as the edge's `[cache]`.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Hedging and region judgement, as the edge's `[lookup]`.
    #[serde(default)]
    pub lookup: LookupConfig,
    /// Threads serving (`tenant-edge sidecar`): 1 runs everything on one thread; the default,
    /// 2, measured lower latency at 1 000 and 10 000 lookups a second (`bench/README.md`).
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_threads() -> usize {
    2
}

fn default_cache_file_interval_secs() -> u64 {
    30
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The config is unreadable or wrong (every problem listed).
    #[error("sidecar config {path}: {reason}")]
    Config {
        /// The file (empty for a config built in code).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The master keys could not be read.
    #[error("sidecar master key: {0}")]
    Keys(#[from] crate::secrets::SecretError),
    /// The TCS client could not be built.
    #[error("tcs client: {0}")]
    Client(#[from] crate::context::BuildError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl SidecarConfig {
    /// A config with every optional setting at its default.
    pub fn new(view: &str, region: Region, listen: SocketAddr, tcs: Vec<TcsEndpoint>) -> Self {
        SidecarConfig {
            view: Some(view.to_owned()),
            views: Vec::new(),
            region,
            listen,
            tcs,
            secrets: None,
            cache_file: None,
            cache_file_interval_secs: default_cache_file_interval_secs(),
            prewarm: false,
            cache: CacheConfig::default(),
            lookup: LookupConfig::default(),
            threads: default_threads(),
        }
    }

    /// Reads and checks a TOML config file.
    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let err = |reason: String| SidecarError::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: SidecarConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.check().map_err(|problems| err(problems.join("; ")))?;
        Ok(cfg)
    }

    /// Every problem of the config, at once.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        match (&self.view, self.views.is_empty()) {
            (Some(_), false) => problems.push("view and views: give one of them".into()),
            (None, true) => problems.push("no view: give view (or views) to serve".into()),
            _ => {}
        }
        let served = self.served();
        for (i, view) in served.iter().enumerate() {
            if let Err(e) = crate::tenant::Product::new(view) {
                problems.push(format!("view {view:?}: {e}"));
            }
            if view == crate::tcs::INGRESS {
                problems.push("view \"ingress\" is the edge's; a sidecar serves a product's view".into());
            }
            if served[..i].contains(view) {
                problems.push(format!("view {view:?} named twice"));
            }
        }
        if !self.listen.ip().is_loopback() {
            problems.push(format!(
                "listen {}: a sidecar answers with secrets in plaintext and listens on loopback only",
                self.listen
            ));
        }
        problems.extend(crate::context::endpoint_problems(self.region.as_str(), &self.tcs));
        if !(1..=64).contains(&self.threads) {
            problems.push(format!("threads {}: 1 to 64", self.threads));
        }
        if self.cache_file_interval_secs == 0 {
            problems.push("cache_file_interval_secs must be at least 1".into());
        }
        if let Some(keys) = &self.secrets {
            problems.extend(keys.problems());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The views served, in the order given.
    pub fn served(&self) -> Vec<String> {
        self.view.iter().chain(&self.views).cloned().collect()
    }

    /// The cache file of `view`: `cache_file` itself with one view, else named after the view.
    fn cache_file_of(&self, view: &str) -> Option<PathBuf> {
        let file = self.cache_file.as_ref()?;
        if self.served().len() == 1 {
            return Some(file.clone());
        }
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match file.extension() {
            Some(ext) => format!("{stem}.{view}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{view}"),
        };
        Some(file.with_file_name(name))
    }

    fn cache_settings(&self, view: &str) -> CacheSettings {
        CacheSettings {
            view: view.to_owned(),
            region: self.region.to_string(),
            tcs: self.tcs.clone(),
            lookup: self.lookup.clone(),
            cache: self.cache.clone(),
            cache_file: self.cache_file_of(view),
            cache_file_interval: Duration::from_secs(self.cache_file_interval_secs),
            prewarm: self.prewarm,
        }
    }
}

/// A started sidecar, serving.
#[must_use = "a sidecar runs until shutdown; `wait` joins it and its last cache file write"]
pub struct Started {
    /// Where it listens (the port picked, for a port 0).
    pub addr: SocketAddr,
    /// The cache machinery of its (first) view.
    pub service: Arc<CacheService>,
    /// Every view's, by name, in the config's order.
    pub services: Vec<(String, Arc<CacheService>)>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Started {
    /// Resolves once `/readyz` would answer 200: every view has a tenant cached or a live
    /// change stream.
    pub async fn ready(&self) {
        for (_, service) in &self.services {
            service.wait_ready().await;
        }
    }

    /// Waits for `shutdown`, then for the server and the cache files' last writes.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        if self.server.await.is_err() {
            tracing::warn!("sidecar server did not stop cleanly");
        }
        for writer in self.writers {
            if writer.await.is_err() {
                tracing::warn!("cache file writer did not stop cleanly");
            }
        }
    }
}

/// Runs the sidecar until `shutdown`.
pub async fn run(cfg: SidecarConfig, shutdown: CancellationToken) -> Result<(), SidecarError> {
    start(cfg, shutdown).await?.wait().await;
    Ok(())
}

/// Builds the sidecar and starts it: returns once it listens.
pub async fn start(cfg: SidecarConfig, shutdown: CancellationToken) -> Result<Started, SidecarError> {
    cfg.check().map_err(|problems| SidecarError::Config {
        path: PathBuf::new(),
        reason: problems.join("; "),
    })?;
    let served = cfg.served();
    let keys = match &cfg.secrets {
        Some(settings) => Some(Arc::new(settings.load().await?)),
        None => {
            tracing::warn!(views = ?served, "no [secrets] master key: a tenant with secrets answers 503");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| SidecarError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SidecarError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let mut views = Vec::with_capacity(served.len());
    let mut writers = Vec::new();
    for view in &served {
        // One view: the metrics as the edge's; several: each set labelled with its view.
        let label = (served.len() > 1).then_some(("view", view.as_str()));
        let metrics = EdgeMetrics::labelled(label)?;
        let service = Arc::new(CacheService::build(cfg.cache_settings(view), metrics.clone()).await?);
        writers.extend(service.spawn_upkeep(&shutdown));
        service.spawn_follow(&shutdown);
        views.push(api::View {
            name: view.clone(),
            service,
            opener: Arc::new(open::Opener::new(keys.clone(), cfg.cache.max_entries, metrics)),
        });
    }
    let services: Vec<(String, Arc<CacheService>)> = views
        .iter()
        .map(|v| (v.name.clone(), v.service.clone()))
        .collect();
    let app = api::router(api::Sidecar {
        views,
        tokens: cfg.tcs.iter().map(|t| t.token.clone()).collect(),
        shutdown: shutdown.clone(),
    });
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "sidecar listener failed");
        }
    });
    tracing::info!(
        target: crate::stack::LISTENING,
        region = %cfg.region,
        "sidecar {} listening on {addr}",
        served.join(",")
    );
    let Some(service) = services.first().map(|(_, s)| s.clone()) else {
        unreachable!("a checked config serves a view");
    };
    Ok(Started {
        addr,
        service,
        services,
        shutdown,
        server,
        writers,
    })
}

#[cfg(test)]
mod tests;
