//! The serde schema of a route snapshot file, exactly as written in TOML.
//!
//! Kept apart from the validated model ([`super::RouteSnapshot`]): names and addresses are plain
//! strings here so that validation can report every bad one, instead of serde stopping at the
//! first.

use serde::Deserialize;

/// A whole `routes/*.toml` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutesFile {
    /// Optional label; defaults to a short hash of the file contents.
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthCheckToml {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u64,
    pub fall: u64,
    pub eject_ms: u64,
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductToml {
    pub name: String,
    pub prefixes: Vec<String>,
}

/// `[[shards]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShardToml {
    pub id: String,
    pub product: String,
    pub region: String,
    /// Regions holding the shard's data; default: `region` alone.
    #[serde(default)]
    pub data_regions: Vec<String>,
    pub backends: Vec<String>,
}
