//! The cache machinery as one piece: the TCS client of one view, the tenant cache, its change
//! stream status and its cache file, built and warmed the same way for every process that
//! embeds it (the edge, for `ingress`; the sidecar, for a product's view).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::persist::{self, FileStatus};
use super::{BuildError, CacheConfig, LookupConfig, StreamStatus, TcsClient, TcsEndpoint, TenantCache};
use crate::metrics::EdgeMetrics;

/// What the cache machinery is built from: the parts of the edge's and the sidecar's configs
/// that are the same.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The view read (`ingress` for the edge).
    pub view: String,
    /// The region this process runs in: its TCS is asked first.
    pub region: String,
    /// The TCS regions, with this process's token for each.
    pub tcs: Vec<TcsEndpoint>,
    /// Hedging, limits, how regions are judged.
    pub lookup: LookupConfig,
    /// Sizes and lifetimes.
    pub cache: CacheConfig,
    /// The cache file (written periodically and at shutdown, read back at start).
    pub cache_file: Option<PathBuf>,
    /// Between writes of `cache_file`.
    pub cache_file_interval: Duration,
    /// Load the whole view from TCS at start, before serving.
    pub prewarm: bool,
}

/// The cache and what keeps it fresh and tells about it.
pub struct CacheService {
    /// The cache of tenant contexts by host.
    pub cache: Arc<TenantCache>,
    /// The change stream's state.
    pub stream: Arc<StreamStatus>,
    /// What the cache file did.
    pub file: Arc<FileStatus>,
    /// The metrics the cache, the client and the stream count in.
    pub metrics: EdgeMetrics,
    settings: CacheSettings,
}

impl CacheService {
    /// Builds the client and an empty cache with room for `hosts`; nothing is read or fetched.
    pub fn new(settings: CacheSettings, metrics: EdgeMetrics, hosts: u64) -> Result<Self, BuildError> {
        let client = TcsClient::for_view(
            &settings.tcs,
            &settings.region,
            settings.lookup.clone(),
            &settings.view,
        )?;
        let client = Arc::new(client);
        let stream = Arc::new(StreamStatus::new(&client));
        let cache = TenantCache::with_capacity(&settings.cache, client, metrics.clone(), hosts);
        Ok(CacheService {
            cache: Arc::new(cache),
            stream,
            file: Arc::new(FileStatus::new(settings.cache_file.clone())),
            metrics,
            settings,
        })
    }

    /// Builds the client and the cache (sized to the cache file, read first), restores the
    /// file and prewarms, as configured. Neither of those can fail the start: a process that
    /// cannot warm up fills on demand.
    pub async fn build(settings: CacheSettings, metrics: EdgeMetrics) -> Result<Self, BuildError> {
        let file = match &settings.cache_file {
            Some(path) => persist::read_file(path).await,
            None => None,
        };
        let hosts = file.as_ref().map_or(0, |f| f.hosts);
        let prewarm = settings.prewarm;
        let service = Self::new(settings, metrics, hosts)?;
        if let Some(file) = file {
            persist::restore(&service.cache, &service.stream, file, &service.file).await;
        }
        if prewarm {
            persist::prewarm(&service.cache, &service.stream, &service.file).await;
        }
        Ok(service)
    }

    /// Starts the upkeep that is the same everywhere: the regions' trust checks and the cache
    /// file's writer. Returns the writer: await it after `shutdown` for the last write.
    pub fn spawn_upkeep(&self, shutdown: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        tokio::spawn(super::watch_regions(
            self.cache.client().clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        self.settings.cache_file.clone().map(|path| {
            tokio::spawn(persist::write_periodically(
                self.cache.clone(),
                self.stream.clone(),
                path,
                self.settings.cache_file_interval,
                self.file.clone(),
                shutdown.clone(),
            ))
        })
    }

    /// Follows the view's change stream until `shutdown` (the edge may take its changes from
    /// the wide fan-out instead).
    pub fn spawn_follow(&self, shutdown: &CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(super::follow(
            self.cache.clone(),
            self.stream.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ))
    }

    /// Ready unless it knows nothing and hears from no TCS: a process cut off from TCS that
    /// still knows tenants keeps serving them, a blackholed empty one is taken out.
    pub fn ready(&self) -> bool {
        !self.cache.is_empty() || self.stream.any_live()
    }

    /// Resolves once [`CacheService::ready`] would say so. Before that only a fill (a request)
    /// or a stream message can cache a tenant: the stream's liveness is what is waited for
    /// (a cache file or a prewarm filled the cache before this was built).
    pub async fn wait_ready(&self) {
        if self.cache.is_empty() {
            self.stream.live().await;
        }
    }

    /// Writes the cache file now (when one is configured): what a new process taking over
    /// from this one reads. Whether a file was written.
    pub async fn write_file_now(&self) -> bool {
        match &self.settings.cache_file {
            Some(path) => persist::write_now(&self.cache, &self.stream, path, &self.file).await,
            None => false,
        }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }
}
