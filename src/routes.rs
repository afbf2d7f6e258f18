//! Route snapshots (`routes/*.toml`): which path prefixes select which product, which shards
//! exist and where their backends listen, and how backends are health-checked.
//!
//! A file is parsed ([`schema`]), validated whole with every problem collected, and compiled
//! ([`build`]) into an immutable [`RouteSnapshot`]. The [`RouteStore`] holds the current snapshot
//! behind one `ArcSwap`, reloads it on file change or SIGHUP, and keeps the old one serving when
//! a new file is bad.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::tenant::{Product, Region, ShardId};

mod build;
mod path;
mod schema;
mod store;

pub use path::{normalize_path, PathError};
pub use schema::{HealthCheckToml, ProductToml, RoutesFile, ShardToml};
pub use store::RouteStore;

/// Why a route snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid snapshot; every problem found, one per entry.
    #[error("{}", problems.join("\n"))]
    Invalid {
        /// Each problem, saying where it is (`shards[2] (jira-x): backend "nope": ...`).
        problems: Vec<String>,
    },
}

impl RouteError {
    /// Every problem found (one entry for a read error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            RouteError::Read { .. } => vec![self.to_string()],
            RouteError::Invalid { problems } => problems.clone(),
        }
    }
}

/// Health-check settings shared by every backend pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Path probed with `GET` on each backend.
    pub path: String,
    /// Time between two probes of one backend.
    #[serde(rename = "interval_ms", serialize_with = "as_millis")]
    pub interval: Duration,
    /// Time a probe may take; always less than `interval`.
    #[serde(rename = "timeout_ms", serialize_with = "as_millis")]
    pub timeout: Duration,
    /// Consecutive successful probes before an unhealthy backend is healthy again.
    pub rise: u32,
    /// Consecutive failed probes before a healthy backend is unhealthy.
    pub fall: u32,
    /// How long a backend that fails fast is ejected by passive checks.
    #[serde(rename = "eject_ms", serialize_with = "as_millis")]
    pub eject: Duration,
    /// Consecutive connect failures before passive ejection.
    pub eject_after: u32,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A product and the path prefixes that select it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductRoute {
    /// The product name.
    pub name: Product,
    /// Position in [`RouteSnapshot::products`], so per-product state can live in a `Vec`.
    pub index: usize,
    /// Its prefixes, as written.
    pub prefixes: Vec<String>,
    /// Requests a second each tenant may send it (0: no limit); a tenant's own overrides.
    pub rate_limit_rps: u32,
    /// The name's interned number, matched against cache entries' placements.
    #[serde(skip)]
    pub sym: crate::tenant::Sym,
}

/// A shard of one product in one region, and the backends serving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// Shard id.
    pub id: ShardId,
    /// The product it serves.
    pub product: Product,
    /// Where it runs (and its home data region).
    pub region: Region,
    /// Every region holding its data, `region` first: one for most shards, several for a
    /// multi-region ("global") shard.
    pub data_regions: Vec<Region>,
    /// Its backends, in file order, without duplicates.
    pub backends: Vec<SocketAddr>,
    /// Requests one tenant may have in flight on it at once (0: no limit).
    pub tenant_in_flight: u32,
}

/// A validated, compiled route snapshot: immutable, cheap to read from every request.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    /// The file's `version` label, or a short hash of its contents.
    pub version: String,
    /// Products in file order; [`ProductRoute::index`] points here.
    pub products: Vec<ProductRoute>,
    /// Shards by id (look up with [`RouteSnapshot::shard`]).
    pub shards: HashMap<ShardId, Shard>,
    /// Health-check settings.
    pub health_check: HealthCheck,
    matcher: path::PathMatcher,
    /// Hash of the file contents, so a reload of an unchanged file swaps nothing.
    content_hash: u64,
}

/// The JSON shape of a snapshot served on `/admin/routes`.
#[derive(Serialize)]
struct SnapshotView<'a> {
    version: &'a str,
    health_check: &'a HealthCheck,
    products: &'a [ProductRoute],
    shards: BTreeMap<&'a str, &'a Shard>,
    match_order: Vec<MatchEntry<'a>>,
}

#[derive(Serialize)]
struct MatchEntry<'a> {
    prefix: &'a str,
    product: &'a str,
}

impl RouteSnapshot {
    /// Parses, validates and compiles a snapshot from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, RouteError> {
        build::build(text).map_err(|problems| RouteError::Invalid { problems })
    }

    /// Reads a file and compiles it (see [`RouteSnapshot::from_toml_str`]).
    pub fn load_file(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The shard with this id.
    pub fn shard(&self, id: &str) -> Option<&Shard> {
        self.shards.get(id)
    }

    /// The product whose prefix is the longest segment-boundary match for an already normalised
    /// path (see [`normalize_path`]); `None` when no prefix matches.
    pub fn match_path(&self, normalized_path: &str) -> Option<&ProductRoute> {
        self.matcher
            .find(normalized_path)
            .and_then(|i| self.products.get(i))
    }

    /// The product with this name.
    pub fn product(&self, name: &str) -> Option<&ProductRoute> {
        self.products.iter().find(|p| p.name.as_str() == name)
    }

    /// Total number of backends over every shard.
    pub fn backend_count(&self) -> usize {
        self.shards.values().map(|s| s.backends.len()).sum()
    }

    /// One line for humans: `ok: 2 products, 6 shards, 12 backends (version dev-1)`.
    pub fn summary(&self) -> String {
        format!(
            "ok: {} products, {} shards, {} backends (version {})",
            self.products.len(),
            self.shards.len(),
            self.backend_count(),
            self.version
        )
    }

    /// The snapshot as served on `/admin/routes`: shards sorted by id, prefixes in match order.
    pub fn to_json(&self) -> serde_json::Value {
        let view = SnapshotView {
            version: &self.version,
            health_check: &self.health_check,
            products: &self.products,
            shards: self.shards.iter().map(|(id, s)| (id.as_str(), s)).collect(),
            match_order: self.match_order(),
        };
        serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
    }

    fn match_order(&self) -> Vec<MatchEntry<'_>> {
        let entries = self.matcher.entries().iter();
        entries
            .filter_map(|(prefix, i)| {
                let product = self.products.get(*i)?;
                Some(MatchEntry {
                    prefix,
                    product: product.name.as_str(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
