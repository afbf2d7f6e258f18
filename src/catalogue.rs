//! The catalogue: the write side and source of truth. Tenants (compare-and-set per tenant
//! version), their hosts and placements, the shard registry and realms, and an ordered change
//! log with a dense global sequence that readers (TCS) tail from any position.
//!
//! - [`store`]: the storage boundary ([`Store`], [`StoreError`]).
//! - [`sqlite`]: the default store, one SQLite file in the data directory.
//! - [`validate`]: the catalogue's rules, shared by every store.
//! - [`router`]: the HTTP API over any store.

mod api;
pub mod sqlite;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use self::api::{router, DEFAULT_LIMIT, MAX_BODY, MAX_LIMIT, MAX_WAIT_MS};
pub use self::sqlite::SqliteStore;
pub use self::store::{Store, StoreError, Written};

/// Where the catalogue listens and keeps its file.
#[derive(Debug, Clone)]
pub struct CatalogueConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Directory holding `catalogue.db` (created if missing).
    pub data_dir: PathBuf,
}

/// Why the catalogue could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the catalogue store: {0}")]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// A catalogue with its store open and its listener bound, not yet serving: connections wait
/// in the backlog until [`Bound::serve`]. Its existence is the readiness signal.
pub struct Bound {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    store: SqliteStore,
}

/// Opens the store in `cfg.data_dir` and binds `cfg.listen` (port 0 picks a free port; see
/// [`Bound::addr`]).
pub async fn bind(cfg: CatalogueConfig) -> Result<Bound, CatalogueError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| CatalogueError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let path = cfg.data_dir.join(sqlite::DB_FILE);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(StoreError::storage)??;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| CatalogueError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(CatalogueError::Serve)?;
    Ok(Bound {
        listener,
        addr,
        store,
    })
}

impl Bound {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the API until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), CatalogueError> {
        tracing::info!(target: crate::stack::LISTENING, "catalogue listening on {}", self.addr);
        let app = api::app(Arc::new(self.store), shutdown.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(CatalogueError::Serve)
    }
}

/// Opens the store in `cfg.data_dir`, serves the API on `cfg.listen` until `shutdown` is
/// cancelled, then finishes the requests in flight.
pub async fn run(cfg: CatalogueConfig, shutdown: CancellationToken) -> Result<(), CatalogueError> {
    bind(cfg).await?.serve(shutdown).await
}

/// `tenant-edge catalogue`: the write-side service.
#[derive(Debug, clap::Args)]
pub struct CatalogueArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Directory holding catalogue.db.
    #[arg(long = "data", default_value = "./data/catalogue")]
    pub data_dir: PathBuf,
}

impl From<CatalogueArgs> for CatalogueConfig {
    fn from(args: CatalogueArgs) -> Self {
        CatalogueConfig {
            listen: args.listen,
            data_dir: args.data_dir,
        }
    }
}
