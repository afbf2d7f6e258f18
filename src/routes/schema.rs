//! The serde schema of a route snapshot file, exactly as written in TOML.
//!
//! Kept apart from the validated model ([`super::RouteSnapshot`]): names and addresses are plain
//! strings here so that validation can report every bad one, instead of serde stopping at the
//! first. It is also what a tool writes a route file from (the stack moves a template's
//! backends onto the ports it picked, a test points a shard at its own backend).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RouteError;

/// A whole `routes/*.toml` file (the default: an empty one, for a stack with neither shards
/// nor edges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Optional label; defaults to a short hash of the file contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Active and passive health-check settings.
    #[serde(default)]
    pub health_check: HealthCheckToml,
    /// Products and the path prefixes that select them.
    #[serde(default)]
    pub products: Vec<ProductToml>,
    /// Shards and their backends.
    #[serde(default)]
    pub shards: Vec<ShardToml>,
}

/// `[health_check]`: every field optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckToml {
    /// Path probed on every backend.
    pub path: String,
    /// Between probes of a backend.
    pub interval_ms: u64,
    /// A probe slower than this failed.
    pub timeout_ms: u64,
    /// Probes in a row that make a backend healthy.
    pub rise: u64,
    /// Probes in a row that make it unhealthy.
    pub fall: u64,
    /// How long request failures keep it out.
    pub eject_ms: u64,
    /// Request failures in a row that eject it.
    pub eject_after: u64,
}

impl Default for HealthCheckToml {
    fn default() -> Self {
        Self {
            path: "/healthz".to_owned(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 2,
            eject_ms: 5000,
            eject_after: 3,
        }
    }
}

/// `[[products]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProductToml {
    /// Product name.
    pub name: String,
    /// Path prefixes that select it.
    pub prefixes: Vec<String>,
    /// Requests a second each tenant may send this product (a tenant's own `rate_limits` in
    /// the catalogue overrides it); over it, 429. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
}

/// `[[shards]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardToml {
    /// Shard id.
    pub id: String,
    /// The product it serves.
    pub product: String,
    /// Where it runs.
    pub region: String,
    /// Regions holding the shard's data; default: `region` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_regions: Vec<String>,
    /// Backend addresses (`IP:port`).
    pub backends: Vec<String>,
    /// Requests one tenant may have in flight on this shard at once, so that no tenant takes
    /// the shard's whole backend pool; over it, 429. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_in_flight: Option<u32>,
}

impl RoutesFile {
    /// Reads a route file as written, unvalidated (a template; [`super::RouteSnapshot`]
    /// validates).
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            path: path.to_owned(),
            source,
        })?;
        ::toml::from_str(&text).map_err(|e| RouteError::Invalid {
            problems: vec![format!("{}: {}", path.display(), e.message())],
        })
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> String {
        // Strings, integers, arrays and tables only: every value has a TOML form.
        ::toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the file at `path` whole ([`crate::durable::replace_file`]), so a watcher of
    /// `path` never reads half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let text = self.to_toml();
        crate::durable::replace_file(path, |f| {
            f.write_all(text.as_bytes())
                .map_err(crate::durable::step("writing", path))
        })
        .map_err(std::io::Error::other)
    }

    /// The shard `id`, to change its backends.
    pub fn shard_mut(&mut self, id: &str) -> Option<&mut ShardToml> {
        self.shards.iter_mut().find(|s| s.id == id)
    }
}
