//! The TCS configuration file (TOML): where to listen, which catalogue to tail, where to keep
//! the view snapshot, and which consumers may read which views.
//!
//! ```toml
//! region = "us-east-1"
//! listen = "127.0.0.1:7101"
//! catalogue = "http://127.0.0.1:7000"
//! snapshot = "./data/tcs-us-east-1.json"   # view snapshot file
//! max_lag = 100                             # readiness: at most this far behind the head
//! allow_faults = false
//! [[consumers]]
//! name = "edge"
//! token = "dev-edge-token"
//! views = ["ingress"]
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TcsError;
use crate::tenant::Region;

/// Readiness allows the view to trail the catalogue head by this many sequences by default.
pub const DEFAULT_MAX_LAG: u64 = 100;

/// A TCS instance's configuration, as read from its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcsConfig {
    /// Region this TCS serves (`us-east-1`); used in logs and metrics.
    pub region: Region,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Base URL of the catalogue (`http://127.0.0.1:7000`).
    pub catalogue: String,
    /// The bearer token the tailer presents to the catalogue (a `read` token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_token: Option<String>,
    /// The view snapshot file, written atomically and read back at start.
    pub snapshot: PathBuf,
    /// Readiness: the view may trail the catalogue head by at most this many sequences.
    #[serde(default = "default_max_lag")]
    pub max_lag: u64,
    /// Whether `/admin/faults` may inject faults at run time (see [`super::faults`]).
    #[serde(default)]
    pub allow_faults: bool,
    /// The bearer token `/admin/faults` asks for; required with `allow_faults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Who may read which views.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// An edge that has not reported for this long leaves `/v1/fleet`.
    #[serde(default = "default_fleet_expiry_secs")]
    pub fleet_expiry_secs: u64,
    /// How view changes reach edges: the NDJSON stream only (the default), or also SNS, with
    /// `kind = "sns"`: the region's nodes compete for a lease in the catalogue, and its holder
    /// publishes (see [`crate::fanout::publish`]).
    #[serde(default)]
    pub fanout: crate::fanout::aws::FanoutConfig,
    /// Views beside `ingress`, one per consuming product: each carries some products' config
    /// and, with `secrets`, their secrets still sealed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewConfig>,
}

/// One view beside `ingress` (`[[views]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Its name in the API (`/v1/views/{name}/...`): 1 to 64 of `[a-z0-9-]`, not `ingress`.
    pub name: String,
    /// The products whose config it carries.
    pub products: Vec<crate::tenant::Product>,
    /// Whether it carries their secrets (sealed) and the tenant's wrapped data key.
    #[serde(default)]
    pub secrets: bool,
}

fn default_fleet_expiry_secs() -> u64 {
    60
}

fn default_max_lag() -> u64 {
    DEFAULT_MAX_LAG
}

/// One consumer of TCS views, identified by a bearer token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Name, for logs.
    pub name: String,
    /// Bearer token the consumer presents in `Authorization`.
    pub token: String,
    /// The views it may read.
    pub views: Vec<String>,
}

// Tokens are secrets: keep them out of logs and panic messages.
impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("views", &self.views)
            .finish()
    }
}

impl ConsumerConfig {
    /// Consumer `name`, presenting `token`, reading `views`.
    pub fn new(name: &str, token: &str, views: &[&str]) -> Self {
        ConsumerConfig {
            name: name.to_owned(),
            token: token.to_owned(),
            views: views.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

impl TcsConfig {
    /// A node of `region` on `listen`, tailing the catalogue at `catalogue`, its view snapshot
    /// in `snapshot`, read by `consumers`; readiness lag and faults at their defaults (as a file
    /// that names only these).
    pub fn new(
        region: Region,
        listen: SocketAddr,
        catalogue: &str,
        snapshot: PathBuf,
        consumers: Vec<ConsumerConfig>,
    ) -> Self {
        TcsConfig {
            region,
            listen,
            catalogue: catalogue.to_owned(),
            catalogue_token: None,
            snapshot,
            max_lag: DEFAULT_MAX_LAG,
            allow_faults: false,
            admin_token: None,
            consumers,
            fleet_expiry_secs: default_fleet_expiry_secs(),
            fanout: crate::fanout::aws::FanoutConfig::Stream,
            views: Vec::new(),
        }
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, TcsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TcsError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.at(path))
    }

    /// Parses and validates a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, TcsError> {
        let cfg: TcsConfig = toml::from_str(text).map_err(|e| TcsError::ParseConfig {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: collects every problem instead of stopping at the first.
    pub fn validate(&self) -> Result<(), TcsError> {
        let mut problems = Vec::new();
        if let Err(e) = reqwest::Url::parse(&self.catalogue) {
            problems.push(format!("catalogue {:?}: {e}", self.catalogue));
        }
        if let Some(sns) = self.fanout.sns() {
            problems.extend(sns.problems());
        }
        let mut views: Vec<&str> = vec![super::INGRESS];
        for v in &self.views {
            let ok = (1..=64).contains(&v.name.len())
                && v.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                problems.push(format!("view {:?}: a name of 1 to 64 of [a-z0-9-]", v.name));
            } else if views.contains(&v.name.as_str()) {
                problems.push(format!("view {:?} is declared twice (or is ingress)", v.name));
            }
            if v.products.is_empty() {
                problems.push(format!("view {:?} names no product", v.name));
            }
            views.push(&v.name);
        }
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        for c in &self.consumers {
            check_consumer(c, &views, &mut names, &mut tokens, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TcsError::InvalidConfig {
                path: PathBuf::new(),
                problems,
            })
        }
    }
}

fn check_consumer<'a>(
    c: &'a ConsumerConfig,
    views: &[&str],
    names: &mut HashSet<&'a str>,
    tokens: &mut HashSet<&'a str>,
    problems: &mut Vec<String>,
) {
    if c.name.is_empty() {
        problems.push("a consumer has an empty name".to_owned());
    } else if !names.insert(&c.name) {
        problems.push(format!("consumer {:?} is configured twice", c.name));
    }
    if c.token.trim().is_empty() {
        problems.push(format!("consumer {:?} has an empty token", c.name));
    } else if !tokens.insert(&c.token) {
        // Never print the token itself.
        problems.push(format!("consumer {:?} reuses another consumer's token", c.name));
    }
    for view in &c.views {
        if !views.contains(&view.as_str()) {
            problems.push(format!(
                "consumer {:?}: unknown view {view:?} (known: {})",
                c.name,
                views.join(", ")
            ));
        }
    }
}
