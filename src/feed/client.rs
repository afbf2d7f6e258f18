//! The typed client of the catalogue API, for `ctl`, the dev stack, the TCS tailer and tests.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    ApiError, ChangesPage, MigrationDoc, NewMigration, Phase, PhaseChange, RealmDoc, ShardDoc, TenantDoc,
};
use crate::tenant::{Host, Product, Realm, ShardId, TenantId};

/// Time allowed for one request, long polls aside.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A long poll is answered within its wait; this long past it the connection is presumed dead.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);

/// Why a catalogue call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The catalogue answered with an error status; `ApiError::status` is the HTTP status.
    #[error("{} {}", .0.status, .0.reason)]
    Api(ApiError),
    /// No answer: refused, reset, timed out (or the client to ask with could not be built).
    #[error("cannot reach the catalogue at {url}: {source}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// An answer that does not follow the contract.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.status),
            _ => None,
        }
    }
}

/// Tenants per bulk-import request by default: a few hundred KiB, well under the catalogue's
/// body limit.
pub const IMPORT_BATCH: u32 = 5_000;

/// The most bytes of documents one import request carries: under the catalogue's request body
/// limit (1 MiB) with room for the array around them. Documents with secrets and config are a
/// few hundred bytes, so a full [`IMPORT_BATCH`] of them would not fit.
pub const IMPORT_BATCH_BYTES: usize = 900 * 1024;

/// Why a bulk import of JSON lines stopped. Batches before the failing one are written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line could not be read, or is not a tenant document.
    #[error("line {line}: {detail}")]
    Line {
        /// Its number, from 1.
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// The catalogue refused or did not answer a batch.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a bulk import answered.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Imported {
    /// Tenants written.
    pub written: usize,
    /// The change log's head after the write.
    pub head: u64,
}

/// A client of one catalogue (`http://127.0.0.1:7000`).
#[derive(Debug, Clone)]
pub struct CatalogueClient {
    http: reqwest::Client,
    base: String,
    /// The bearer token sent with every request (see `catalogue::auth`).
    token: Option<String>,
}

impl CatalogueClient {
    /// A client of the catalogue at `base_url` (scheme, host and port; no path needed).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let http = crate::http_client::default_client().map_err(|source| ClientError::Unreachable {
            url: base.clone(),
            source,
        })?;
        Ok(CatalogueClient {
            http,
            base,
            token: None,
        })
    }

    /// The token it presents, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client, presenting `token` (when given) with every request.
    #[must_use]
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Creates or replaces `doc.id`; with `if_match`, only if its version is that.
    pub async fn put_tenant(&self, doc: &TenantDoc, if_match: Option<u64>) -> Result<TenantDoc, ClientError> {
        let req = self.request(Method::PUT, &format!("/v1/tenants/{}", doc.id));
        self.json(with_if_match(req.json(doc), if_match)).await
    }

    /// Creates or replaces every tenant of `docs` in one catalogue transaction (all or
    /// nothing); the number written and the log head after it.
    pub async fn put_tenants(&self, docs: &[TenantDoc]) -> Result<Imported, ClientError> {
        self.json(self.request(Method::POST, "/v1/tenants").json(docs))
            .await
    }

    /// Imports tenant documents from `lines`, one JSON object a line (blank lines skipped),
    /// `batch` documents a request (fewer when they would pass [`IMPORT_BATCH_BYTES`]), each
    /// all or nothing; `progress` hears the total written after each batch. Returns the total
    /// written.
    pub async fn import_lines(
        &self,
        lines: impl std::io::BufRead,
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, ImportError> {
        let batch = batch.max(1);
        let (mut docs, mut bytes, mut written) = (Vec::with_capacity(batch), 0, 0);
        for (n, line) in lines.lines().enumerate() {
            let bad = |detail: String| ImportError::Line { line: n + 1, detail };
            let line = line.map_err(|e| bad(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let doc = serde_json::from_str::<TenantDoc>(&line).map_err(|e| bad(e.to_string()))?;
            // Counted as it will be sent (defaults written out make a document longer than its
            // line). A document alone over the budget still goes, alone: the catalogue says why.
            let size = serde_json::to_vec(&doc).map_err(|e| bad(e.to_string()))?.len() + 1;
            if !docs.is_empty() && bytes + size > IMPORT_BATCH_BYTES {
                written += self.put_tenants(&docs).await?.written;
                (docs, bytes) = (Vec::with_capacity(batch), 0);
                progress(written);
            }
            bytes += size;
            docs.push(doc);
            if docs.len() == batch {
                written += self.put_tenants(&docs).await?.written;
                (docs, bytes) = (Vec::with_capacity(batch), 0);
                progress(written);
            }
        }
        if !docs.is_empty() {
            written += self.put_tenants(&docs).await?.written;
            progress(written);
        }
        Ok(written)
    }

    /// The tenant `id`.
    pub async fn get_tenant(&self, id: &TenantId) -> Result<TenantDoc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/tenants/{id}")))
            .await
    }

    /// Deletes tenant `id` and returns the version of the delete.
    pub async fn delete_tenant(&self, id: &TenantId, if_match: Option<u64>) -> Result<u64, ClientError> {
        let req = self.request(Method::DELETE, &format!("/v1/tenants/{id}"));
        let resp = self.send(with_if_match(req, if_match)).await?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok());
        etag.map(|t| t.trim_matches('"'))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| protocol(&resp, "no version in the ETag of a delete"))
    }

    /// Every tenant.
    pub async fn list_tenants(&self) -> Result<Vec<TenantDoc>, ClientError> {
        // Page by page, so neither side holds a million documents in one answer.
        let mut all = Vec::new();
        loop {
            let page = self
                .tenants_page(all.last().map(|d: &TenantDoc| &d.id), super::MAX_PAGE)
                .await?;
            let full = page.len() == super::MAX_PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// At most `limit` tenants by id, from the first after `after`.
    pub async fn tenants_page(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<TenantDoc>, ClientError> {
        let mut req = self
            .request(Method::GET, "/v1/tenants")
            .query(&[("limit", limit.to_string())]);
        if let Some(after) = after {
            req = req.query(&[("after", after.as_str())]);
        }
        self.json(req).await
    }

    /// The tenant owning `host`, if any.
    pub async fn tenant_by_host(&self, host: &Host) -> Result<Option<TenantDoc>, ClientError> {
        let req = self
            .request(Method::GET, "/v1/tenants")
            .query(&[("host", host.as_str())]);
        let found: Vec<TenantDoc> = self.json(req).await?;
        Ok(found.into_iter().next())
    }

    /// Records a move of `tenant`'s `product` to shard `to`, in phase `planned`.
    pub async fn create_migration(
        &self,
        tenant: &TenantId,
        product: &Product,
        to: &ShardId,
    ) -> Result<MigrationDoc, ClientError> {
        let body = NewMigration {
            tenant: tenant.clone(),
            product: product.clone(),
            to: to.clone(),
        };
        self.json(self.request(Method::POST, "/v1/migrations").json(&body))
            .await
    }

    /// The migration `id`.
    pub async fn get_migration(&self, id: &str) -> Result<MigrationDoc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/migrations/{id}")))
            .await
    }

    /// Every migration (of `tenant` when given), newest first.
    pub async fn list_migrations(&self, tenant: Option<&TenantId>) -> Result<Vec<MigrationDoc>, ClientError> {
        let mut req = self.request(Method::GET, "/v1/migrations");
        if let Some(t) = tenant {
            req = req.query(&[("tenant", t.as_str())]);
        }
        self.json(req).await
    }

    /// Moves migration `id` to `phase`; with `if_match`, only if its version is that.
    pub async fn set_phase(
        &self,
        id: &str,
        phase: Phase,
        if_match: Option<u64>,
    ) -> Result<MigrationDoc, ClientError> {
        let req = self
            .request(Method::PUT, &format!("/v1/migrations/{id}/phase"))
            .json(&PhaseChange { phase });
        self.json(with_if_match(req, if_match)).await
    }

    /// Creates or replaces shard `doc.id`.
    pub async fn put_shard(&self, doc: &ShardDoc) -> Result<ShardDoc, ClientError> {
        self.put(&format!("/v1/shards/{}", doc.id), doc).await
    }

    /// The shard `id`.
    pub async fn get_shard(&self, id: &ShardId) -> Result<ShardDoc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/shards/{id}")))
            .await
    }

    /// Deletes shard `id`.
    pub async fn delete_shard(&self, id: &ShardId) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/shards/{id}")))
            .await?;
        Ok(())
    }

    /// Every shard.
    pub async fn list_shards(&self) -> Result<Vec<ShardDoc>, ClientError> {
        self.json(self.request(Method::GET, "/v1/shards")).await
    }

    /// Creates or replaces realm `doc.name`.
    pub async fn put_realm(&self, doc: &RealmDoc) -> Result<RealmDoc, ClientError> {
        self.put(&format!("/v1/realms/{}", doc.name), doc).await
    }

    /// The realm `name`.
    pub async fn get_realm(&self, name: &Realm) -> Result<RealmDoc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/realms/{name}")))
            .await
    }

    /// Deletes realm `name`.
    pub async fn delete_realm(&self, name: &Realm) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/realms/{name}")))
            .await?;
        Ok(())
    }

    /// Every realm.
    pub async fn list_realms(&self) -> Result<Vec<RealmDoc>, ClientError> {
        self.json(self.request(Method::GET, "/v1/realms")).await
    }

    /// Over one page of tenants (after `after`; `limit` of them, or the catalogue's default),
    /// re-wraps every data key still wrapped by a previous master key (admin). The answer's
    /// `next` is where the following page starts.
    pub async fn rotate_keys(
        &self,
        after: Option<&TenantId>,
        limit: Option<usize>,
    ) -> Result<super::Rotated, ClientError> {
        let mut req = self.request(Method::POST, "/v1/keys/rotate");
        if let Some(after) = after {
            req = req.query(&[("after", after.as_str())]);
        }
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit.to_string())]);
        }
        self.json(req).await
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms` (0 gives it up); answers who
    /// holds it now.
    pub async fn lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<super::LeaseDoc, ClientError> {
        let body = super::LeaseRequest {
            holder: holder.to_owned(),
            ttl_ms,
        };
        self.json(
            self.request(Method::PUT, &format!("/v1/leases/{name}"))
                .json(&body),
        )
        .await
    }

    /// Changes after `after` (at most `limit`, the server's default when `None`); when there
    /// are none, the catalogue waits up to `wait_ms` for one.
    pub async fn changes(
        &self,
        after: u64,
        limit: Option<usize>,
        wait_ms: Option<u64>,
    ) -> Result<ChangesPage, ClientError> {
        let mut query = vec![("after", after.to_string())];
        query.extend(limit.map(|l| ("limit", l.to_string())));
        query.extend(wait_ms.map(|w| ("wait_ms", w.to_string())));
        let timeout = wait_ms.map_or(REQUEST_TIMEOUT, |w| Duration::from_millis(w) + LONG_POLL_MARGIN);
        let req = self
            .request(Method::GET, "/v1/changes")
            .query(&query)
            .timeout(timeout);
        self.json(req).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn put<T: Serialize + DeserializeOwned>(&self, path: &str, doc: &T) -> Result<T, ClientError> {
        self.json(self.request(Method::PUT, path).json(doc)).await
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let url = resp.url().to_string();
        resp.json().await.map_err(|e| ClientError::Protocol {
            url,
            detail: e.to_string(),
        })
    }

    /// Sends `req`; a non-success status becomes [`ClientError::Api`].
    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Unreachable {
            url: source
                .url()
                .map_or_else(|| self.base.clone(), ToString::to_string),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(ClientError::Api(api_error(resp).await))
    }
}

fn with_if_match(req: RequestBuilder, if_match: Option<u64>) -> RequestBuilder {
    match if_match {
        Some(v) => req.header(reqwest::header::IF_MATCH, format!("\"{v}\"")),
        None => req,
    }
}

/// The error body of `resp`, or one made from its status when it carries none.
async fn api_error(resp: Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|_| ApiError {
        status: status.as_u16(),
        reason: if text.is_empty() { reason(status) } else { text },
        request_id: None,
    })
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_owned()
}

fn protocol(resp: &Response, detail: &str) -> ClientError {
    ClientError::Protocol {
        url: resp.url().to_string(),
        detail: detail.to_owned(),
    }
}
