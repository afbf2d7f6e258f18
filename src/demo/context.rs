//! The shard as a real consumer of its product's view: every tenant request is checked against
//! the tenant context its sidecar holds, which also says where the tenant's data lives and with
//! which credential.
//!
//! A request the edge sends names the tenant (`x-tenant-id`), its host (`x-forwarded-host`)
//! and the context version it routed by (`x-tenant-context-version`). The shard looks the host
//! up in the sidecar and refuses, as defence in depth behind the edge:
//! - a host the view gives to another tenant, or a tenant it places on another shard while the
//!   view is at least as new as the edge's context: `421` with `tenant-moved: <version>`, so the
//!   edge fetches that version and routes again (a view older than the edge's is the sidecar
//!   lagging by a moment: the edge's newer context stands);
//! - a tenant whose data location (`db_host` in the product's config) is not this shard's
//!   database: `503`, as the data is not here;
//! - no answer from the sidecar: `503` (no credential, no database).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{DemoState, Failure, TENANT_ID};
use crate::feed::{HostLookup, PlacementLookup, Secret};
use crate::tenant::{Product, TenantId};

/// The edge's normalised host of the request.
const FORWARDED_HOST: &str = "x-forwarded-host";
/// The context version the edge routed by.
const CONTEXT_VERSION: &str = "x-tenant-context-version";

/// The database host a shard's data lives on (the demo's convention, which the stack writes
/// into each shard's `database` in the catalogue).
pub fn db_host(shard: &str) -> String {
    format!("{shard}.db.internal")
}

/// Where a shard finds its sidecar.
#[derive(Clone, PartialEq, Eq)]
pub struct SidecarLink {
    /// Its base URL (`http://127.0.0.1:7201`).
    pub url: String,
    /// The product service's token (its sidecar's callers present the TCS token).
    pub token: String,
}

impl std::fmt::Debug for SidecarLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarLink")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The sidecar client of a shard.
pub(super) struct Sidecar {
    link: SidecarLink,
    http: reqwest::Client,
    product: Product,
    shard: String,
    db_host: String,
}

/// Where a request's tenant keeps its data, as the sidecar said (shown in the echo and as
/// `x-tenant-database`; the credential only as a fingerprint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Database {
    /// The database name (`db` in the product's config).
    pub name: Option<String>,
    /// Its host (`db_host`).
    pub host: Option<String>,
    /// The first 8 bytes of the SHA-256 of the `db_password` secret, in hex.
    pub credential: Option<String>,
    /// The tenant context version it came from.
    pub version: u64,
}

impl Sidecar {
    pub(super) fn new(link: SidecarLink, product: Product, shard: &str) -> Result<Self, reqwest::Error> {
        let http = crate::http_client::build(crate::http_client::ClientOptions {
            connect_timeout: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        })?;
        Ok(Sidecar {
            link,
            http,
            product,
            shard: shard.to_owned(),
            db_host: db_host(shard),
        })
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, Failure> {
        self.http
            .get(format!("{}/v1/views/{}{path}", self.link.url, self.product))
            .bearer_auth(&self.link.token)
            .send()
            .await
            .map_err(|e| Failure::Unavailable(format!("sidecar: {e}")))
    }

    /// The database of `tenant` reached through `host`, once the view agrees it is here.
    pub(super) async fn check(
        &self,
        tenant: &TenantId,
        host: &str,
        edge_version: u64,
    ) -> Result<Database, Failure> {
        let resp = self.get(&format!("/hosts/{host}")).await?;
        let lookup: HostLookup = match resp.status().as_u16() {
            200 => resp
                .json()
                .await
                .map_err(|e| Failure::Unavailable(format!("sidecar answer: {e}")))?,
            404 => {
                return Err(Failure::Unavailable(format!(
                    "the {} view has no tenant for host {host}",
                    self.product
                )))
            }
            status => return Err(Failure::Unavailable(format!("sidecar answered {status}"))),
        };
        let record = lookup.record;
        let newer_or_same = record.version >= edge_version;
        if record.id != *tenant {
            return Err(Failure::Unavailable(format!(
                "host {host} names tenant {} in the {} view, not {tenant}",
                record.id, self.product
            )));
        }
        let placed_here = record
            .placement(self.product.as_str())
            .is_some_and(|p| p.shard.as_str() == self.shard);
        if !placed_here && newer_or_same {
            return Err(Failure::Moved(record.version));
        }
        let products = match record.products.as_deref().map(|p| p.parse()).transpose() {
            Ok(products) => products.unwrap_or_default(),
            Err(e) => return Err(Failure::Unavailable(format!("sidecar answer's products: {e}"))),
        };
        let doc = products.get(&self.product);
        let text = |key: &str| {
            doc.and_then(|d| d.config.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let host_of_data = text("db_host");
        if placed_here && host_of_data.as_deref().is_some_and(|h| h != self.db_host) {
            return Err(Failure::Unavailable(format!(
                "tenant {tenant}'s data is on {}, not on this shard's {}",
                host_of_data.unwrap_or_default(),
                self.db_host
            )));
        }
        let credential = doc
            .and_then(|d| d.secrets.get("db_password"))
            .map(|secret| match secret {
                Secret::Plain(p) => Ok(fingerprint(p)),
                Secret::Sealed(_) => Err(Failure::Unavailable(
                    "the sidecar answered a sealed credential".into(),
                )),
            })
            .transpose()?;
        Ok(Database {
            name: text("db"),
            host: host_of_data,
            credential,
            version: record.version,
        })
    }

    /// Where `tenant`'s product lives now, by tenant id (the queued work's re-check); `None`
    /// when the tenant or its product is gone.
    pub(super) async fn placement(&self, tenant: &TenantId) -> Result<Option<PlacementLookup>, Failure> {
        let resp = self
            .get(&format!("/tenants/{tenant}/placements/{}", self.product))
            .await?;
        match resp.status().as_u16() {
            200 => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| Failure::Unavailable(format!("sidecar answer: {e}"))),
            404 => Ok(None),
            status => Err(Failure::Unavailable(format!("sidecar answered {status}"))),
        }
    }
}

/// The first 8 bytes of the SHA-256 of `secret`, in hex: shows which credential was used
/// without showing it.
pub fn fingerprint(secret: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a tenant request against the sidecar (when the shard has one) before it is handled;
/// the database found rides in the request's extensions and the answer's `x-tenant-database`.
pub(super) async fn check(State(state): State<Arc<DemoState>>, mut req: Request, next: Next) -> Response {
    let Some(sidecar) = &state.sidecar else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let Some(tenant) = tenant_header(headers) else {
        // No tenant, no context: the handler refuses or echoes as before.
        return next.run(req).await;
    };
    let Some(host) = headers.get(FORWARDED_HOST).and_then(|v| v.to_str().ok()) else {
        return Failure::BadRequest("a tenant request without x-forwarded-host".into()).into_response();
    };
    let edge_version = headers
        .get(CONTEXT_VERSION)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let database = match sidecar.check(&tenant, host, edge_version).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let shown = format!(
        "{}@{}",
        database.name.as_deref().unwrap_or("-"),
        database.host.as_deref().unwrap_or("-")
    );
    req.extensions_mut().insert(database);
    let mut resp = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&shown) {
        resp.headers_mut().insert("x-tenant-database", v);
    }
    resp
}

fn tenant_header(headers: &HeaderMap) -> Option<TenantId> {
    TenantId::new(headers.get(TENANT_ID)?.to_str().ok()?).ok()
}
