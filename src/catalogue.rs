//! The catalogue: the write side and source of truth. Tenants (compare-and-set per tenant
//! version), their hosts and placements, the shard registry and realms, and an ordered change
//! log with a dense global sequence that readers (TCS) tail from any position.
//!
//! - [`store`]: the storage boundary ([`Store`], [`StoreError`]).
//! - [`sqlite`]: the default store, one SQLite file in the data directory.
//! - [`validate`]: the catalogue's rules, shared by every store.
//! - [`router`]: the HTTP API over any store.

mod api;
pub mod auth;
mod ops;
pub mod postgres;
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
pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;
pub use self::store::{Store, StoreError, Written};

/// Which store holds the catalogue.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// One SQLite file, `catalogue.db` in the data directory (the embedded default).
    #[default]
    Sqlite,
    /// A PostgreSQL database: a libpq-style connection string (`postgres://user@host/db`, or
    /// `host=a,b port=5432 dbname=c target_session_attrs=read-write`). Several catalogue
    /// processes may serve one database; a multi-host string follows a failover.
    Postgres(String),
}

impl std::str::FromStr for StoreConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sqlite" {
            Ok(StoreConfig::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") || s.contains('=') {
            s.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
            Ok(StoreConfig::Postgres(s.to_owned()))
        } else {
            Err(
                "expected `sqlite` or a PostgreSQL connection string (postgres://... or key=value pairs)"
                    .into(),
            )
        }
    }
}

/// A connection string may hold a password: only where it points is ever shown.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite => f.write_str("Sqlite"),
            StoreConfig::Postgres(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(cfg) => write!(f, "Postgres({})", postgres::describe(&cfg)),
                Err(_) => f.write_str("Postgres(?)"),
            },
        }
    }
}

/// Where the catalogue listens and keeps its data.
#[derive(Debug, Clone)]
pub struct CatalogueConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Directory holding `catalogue.db` (created if missing; unused with PostgreSQL).
    pub data_dir: PathBuf,
    /// The store: SQLite in `data_dir` (default) or PostgreSQL.
    pub store: StoreConfig,
    /// The token file (see [`auth`]); without one the catalogue starts only with
    /// `allow_unauthenticated`, on loopback.
    pub tokens: Option<PathBuf>,
    /// Serve without tokens (loopback only).
    pub allow_unauthenticated: bool,
    /// Mint a new epoch for the change log before serving: after restoring the store from a
    /// backup, so every TCS reloads in full rather than trust sequence numbers.
    pub new_log_epoch: bool,
    /// The master key file that wraps every tenant's data key (created owner-only if absent);
    /// default `<data_dir>/master.key`. Unused with `kms`.
    pub master_key: Option<PathBuf>,
    /// A KMS key as the master key instead of the file.
    pub kms: Option<KmsConfig>,
    /// Master key files data keys may still be wrapped with (during a rotation: `POST
    /// /v1/keys/rotate` moves them to the current key).
    pub previous_master_keys: Vec<PathBuf>,
}

pub use crate::secrets::KmsConfig;

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
    /// No usable token file, or an open API asked for off loopback.
    #[error("{0}")]
    Auth(String),
}

/// A catalogue with its store open and its listener bound, not yet serving: connections wait
/// in the backlog until [`Bound::serve`]. Its existence is the readiness signal.
pub struct Bound {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    store: Arc<dyn Store>,
    access: auth::Access,
    master: Arc<crate::secrets::MasterKeys>,
}

/// Opens the store in `cfg.data_dir` and binds `cfg.listen` (port 0 picks a free port; see
/// [`Bound::addr`]).
pub async fn bind(cfg: CatalogueConfig) -> Result<Bound, CatalogueError> {
    let access = match (&cfg.tokens, cfg.allow_unauthenticated) {
        (Some(path), _) => {
            let file = auth::TokenFile::load(path).map_err(CatalogueError::Auth)?;
            auth::Access::Tokens(file.tokens.into())
        }
        (None, true) if cfg.listen.ip().is_loopback() => auth::Access::Open,
        (None, true) => {
            return Err(CatalogueError::Auth(format!(
                "--allow-unauthenticated is for loopback only, not {}",
                cfg.listen
            )))
        }
        (None, false) => {
            return Err(CatalogueError::Auth(
                "no token file: give --tokens FILE (or --allow-unauthenticated, on loopback)".into(),
            ))
        }
    };
    let store = open_store(&cfg).await?;
    let master = match &cfg.kms {
        Some(kms) => kms
            .master_key()
            .await
            .map_err(|e| CatalogueError::Auth(e.to_string()))?,
        None => {
            let key_file = cfg
                .master_key
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("master.key"));
            if let Some(dir) = key_file.parent() {
                std::fs::create_dir_all(dir).map_err(|source| CatalogueError::DataDir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            crate::secrets::MasterKey::load_or_create(&key_file)
                .map_err(|e| CatalogueError::Auth(e.to_string()))?
        }
    };
    let previous = cfg
        .previous_master_keys
        .iter()
        .map(|path| crate::secrets::MasterKey::load_existing(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CatalogueError::Auth(e.to_string()))?;
    if cfg.new_log_epoch {
        let epoch = store.mint_epoch().await?;
        tracing::warn!(%epoch, "minted a new change-log epoch: every TCS reloads its view in full");
    }
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
        access,
        master: Arc::new(crate::secrets::MasterKeys::new(master, previous)),
    })
}

/// Opens the store `cfg` names (creating the data directory for SQLite).
async fn open_store(cfg: &CatalogueConfig) -> Result<Arc<dyn Store>, CatalogueError> {
    match &cfg.store {
        StoreConfig::Sqlite => {
            std::fs::create_dir_all(&cfg.data_dir).map_err(|source| CatalogueError::DataDir {
                path: cfg.data_dir.clone(),
                source,
            })?;
            let path = cfg.data_dir.join(sqlite::DB_FILE);
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(StoreError::storage)??;
            Ok(Arc::new(store))
        }
        StoreConfig::Postgres(url) => Ok(Arc::new(PgStore::connect(url).await?)),
    }
}

impl Bound {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the API until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), CatalogueError> {
        tracing::info!(target: crate::stack::LISTENING, "catalogue listening on {}", self.addr);
        if matches!(self.access, auth::Access::Open) {
            tracing::warn!("serving without authentication (loopback only)");
        }
        let app = api::app(self.store, shutdown.clone(), self.access, Some(self.master));
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
    /// The store: `sqlite` (catalogue.db in --data), or a PostgreSQL connection string
    /// (`postgres://user@host:5432/db`, or `host=a,b dbname=c target_session_attrs=read-write`
    /// to follow a failover). Prefer the environment variable for a string with a password.
    #[arg(
        long,
        env = "TENANT_EDGE_CATALOGUE_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub store: StoreConfig,
    /// Token file: `[[tokens]]` with `name`, `token` and `scopes` (read, write, migrate,
    /// admin), readable by its owner only.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Serve without authentication; refused unless the listen address is loopback.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Mint a new epoch for the change log before serving. Give it once after restoring the
    /// store from a backup: every TCS then reloads its view in full instead of trusting
    /// sequence numbers that may now name other changes.
    #[arg(long)]
    pub new_log_epoch: bool,
    /// The master key file wrapping the tenants' data keys (32 bytes, owner-only; created
    /// when absent). Default: `<data-dir>/master.key`.
    #[arg(long)]
    pub master_key: Option<PathBuf>,
    /// A KMS key (id, alias or ARN) as the master key instead of the file; credentials from
    /// the standard AWS chain.
    #[arg(long, env = "TENANT_EDGE_KMS_KEY_ID", conflicts_with = "master_key")]
    pub kms_key_id: Option<String>,
    /// The KMS key's region (default: the ARN's, else `AWS_REGION`).
    #[arg(long, requires = "kms_key_id")]
    pub kms_region: Option<String>,
    /// Another KMS endpoint than AWS's (an emulator, a VPC endpoint).
    #[arg(long, requires = "kms_key_id")]
    pub kms_endpoint: Option<String>,
    /// A master key file data keys may still be wrapped with, during a rotation (repeatable).
    #[arg(long = "previous-master-key")]
    pub previous_master_keys: Vec<PathBuf>,
}

impl From<CatalogueArgs> for CatalogueConfig {
    fn from(args: CatalogueArgs) -> Self {
        CatalogueConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            store: args.store,
            tokens: args.tokens,
            allow_unauthenticated: args.allow_unauthenticated,
            new_log_epoch: args.new_log_epoch,
            master_key: args.master_key,
            kms: args.kms_key_id.map(|key_id| KmsConfig {
                key_id,
                region: args.kms_region,
                endpoint: args.kms_endpoint,
            }),
            previous_master_keys: args.previous_master_keys,
        }
    }
}
