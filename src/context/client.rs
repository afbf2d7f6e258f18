//! HTTP client of the TCS regions an edge is configured with.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::feed::{HostLookup, ViewSnapshot};

/// One TCS region an edge may ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcsEndpoint {
    /// Region of this TCS (`us-east-1`).
    pub region: String,
    /// Base URL (`http://127.0.0.1:7101`).
    pub url: String,
    /// Bearer token of this edge as a consumer of the `ingress` view.
    pub token: String,
}

/// Why a TCS did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum TcsError {
    /// Connection, timeout or body error.
    #[error("tcs {region}: {source}")]
    Transport {
        /// The region asked.
        region: Arc<str>,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// An answer that is neither 200 nor 404.
    #[error("tcs {region}: unexpected status {status}")]
    Status {
        /// The region asked.
        region: Arc<str>,
        /// The status it answered.
        status: u16,
    },
    /// No region is configured.
    #[error("no tcs region configured")]
    NoRegions,
}

/// The answer of a lookup by host.
#[derive(Debug)]
pub enum Lookup {
    /// The host names a tenant.
    Found {
        /// Region that answered.
        region: Arc<str>,
        /// The answer.
        found: HostLookup,
    },
    /// No tenant has this host.
    NotFound,
}

/// A region's endpoint with its precomputed URLs and header.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) name: Arc<str>,
    pub(crate) base: String,
    pub(crate) auth: String,
}

/// Keeps one pooled, keep-alive HTTP client for every configured region, local region first.
#[derive(Debug)]
pub struct TcsClient {
    pub(crate) regions: Vec<Region>,
    pub(crate) http: reqwest::Client,
    pub(crate) stream_http: reqwest::Client,
}

impl TcsClient {
    /// Builds a client; `local` is asked first, then the other regions in order.
    pub fn new(endpoints: &[TcsEndpoint], local: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let mut regions: Vec<Region> = endpoints
            .iter()
            .map(|e| Region {
                name: e.region.as_str().into(),
                base: e.url.trim_end_matches('/').to_owned(),
                auth: format!("Bearer {}", e.token),
            })
            .collect();
        regions.sort_by_key(|r| &*r.name != local);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        // The change stream is long-lived: no overall timeout, only on connect.
        let stream_http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(TcsClient {
            regions,
            http,
            stream_http,
        })
    }

    /// Region names, local first.
    pub fn region_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.regions.iter().map(|r| &r.name)
    }

    /// Looks `host` up in the local region, then each other region until one answers.
    pub async fn lookup(&self, host: &str) -> Result<Lookup, TcsError> {
        let mut last = TcsError::NoRegions;
        for region in &self.regions {
            match self.lookup_in(region, host).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::warn!(error = %e, host, "tcs lookup failed, trying the next region");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn lookup_in(&self, region: &Region, host: &str) -> Result<Lookup, TcsError> {
        let url = format!("{}/v1/views/ingress/hosts/{host}", region.base);
        let transport = |source| TcsError::Transport {
            region: region.name.clone(),
            source,
        };
        let resp = self
            .http
            .get(url)
            .header("authorization", &region.auth)
            .send()
            .await
            .map_err(transport)?;
        match resp.status().as_u16() {
            200 => {
                let found = resp.json::<HostLookup>().await.map_err(transport)?;
                Ok(Lookup::Found {
                    region: region.name.clone(),
                    found,
                })
            }
            404 => Ok(Lookup::NotFound),
            status => Err(TcsError::Status {
                region: region.name.clone(),
                status,
            }),
        }
    }

    /// The whole `ingress` view of `region` at one sequence.
    pub(crate) async fn snapshot(&self, region: &Region) -> Result<ViewSnapshot, TcsError> {
        let url = format!("{}/v1/views/ingress/snapshot", region.base);
        let transport = |source| TcsError::Transport {
            region: region.name.clone(),
            source,
        };
        let resp = self
            .stream_http
            .get(url)
            .header("authorization", &region.auth)
            .send()
            .await;
        let resp = resp.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(TcsError::Status {
                region: region.name.clone(),
                status: resp.status().as_u16(),
            });
        }
        resp.json().await.map_err(transport)
    }
}
