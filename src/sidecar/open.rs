//! Opening a tenant's secrets once per version: the sidecar's answers, rendered with the
//! plaintext, kept in memory only.
//!
//! The tenant cache holds records as TCS serves them, sealed; the cache file is written from it
//! and so never holds a plaintext. On a lookup the sidecar asks [`Opener::open`] for the
//! record's answer: the first ask of a tenant version unwraps its data key (a key file, or a
//! KMS call), opens every secret and renders the record as JSON once; later asks are one map
//! read. Concurrent first asks share one opening. Unwrapped data keys are kept apart, by
//! tenant and wrapped key, so a new version of a known tenant opens without KMS: with KMS
//! unreachable, every tenant already opened keeps answering, and only one never opened (or
//! whose data key changed) answers 503.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

use crate::context::Hasher;
use crate::feed::{Secret, ViewProducts};
use crate::metrics::EdgeMetrics;
use crate::secrets::{secret_context, DataKeyBytes, MasterKeys, SecretError};
use crate::tenant::{Host, IngressRecord, TenantId};

/// How long an opened answer no one asks for stays in memory.
const ANSWER_IDLE: Duration = Duration::from_secs(600);
/// How long a failed opening is remembered, so that a tenant whose key will not unwrap does not
/// send one KMS call per request.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);
/// The longest an opening waits for the master key (KMS): past it, the tenant answers 503.
pub const UNWRAP_LIMIT: Duration = Duration::from_secs(3);

/// Why a tenant's answer could not be built: its answer is a 503, never a half-empty record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The record carries secrets and this sidecar has no master key.
    #[error("tenant {0} has secrets and this sidecar has no master key configured")]
    NoMasterKey(String),
    /// The record carries secrets but no data key.
    #[error("tenant {0} has secrets but no data key")]
    NoDataKey(String),
    /// The data key did not unwrap, or a secret did not open.
    #[error("tenant {tenant}: {reason}")]
    Secret {
        /// The tenant.
        tenant: String,
        /// Why (never a secret).
        reason: String,
    },
    /// The master key (KMS) did not answer in time.
    #[error("tenant {0}: the master key did not answer within {UNWRAP_LIMIT:?}")]
    Timeout(String),
}

/// One tenant version's answer: its record as JSON, secrets in plaintext.
pub struct Opened {
    /// The tenant version it renders.
    pub version: u64,
    /// A host of the tenant: how a placement asked by tenant id finds the cache entry.
    pub host: Host,
    /// The record rendered.
    pub json: Bytes,
    /// Secrets opened in it.
    pub secrets: usize,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("version", &self.version)
            .field("bytes", &self.json.len())
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// Opens records, once per tenant version.
pub struct Opener {
    keys: Option<Arc<MasterKeys>>,
    /// The latest version opened of each tenant, by tenant id.
    answers: Cache<String, Arc<Opened>, Hasher>,
    /// Unwrapped data keys, by a hash of tenant, master key and wrapped key (a collision could
    /// only make a secret fail to open: AES-GCM checks the key), as their bytes.
    data_keys: Cache<u64, Arc<DataKeyBytes>, Hasher>,
    /// Versions that did not open lately, by tenant id.
    failures: Cache<String, (u64, OpenError), Hasher>,
    metrics: EdgeMetrics,
}

impl Opener {
    /// An opener with `keys` (None: records with secrets answer 503), holding up to
    /// `capacity` answers and as many data keys.
    pub fn new(keys: Option<Arc<MasterKeys>>, capacity: u64, metrics: EdgeMetrics) -> Self {
        Opener {
            keys,
            answers: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(ANSWER_IDLE)
                .build_with_hasher(Hasher::default()),
            data_keys: Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(Hasher::default()),
            failures: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(FAILURE_MEMORY)
                .build_with_hasher(Hasher::default()),
            metrics,
        }
    }

    /// A host of tenant `id`, if this sidecar answered for it lately.
    pub async fn host_of(&self, id: &TenantId) -> Option<Host> {
        self.answers.get(id.as_str()).await.map(|o| o.host.clone())
    }

    /// The answer for `record`: opened now if this version never was. (Two first asks of one
    /// version at once may both open it; the data key, the dear part with KMS, is unwrapped
    /// once.)
    pub async fn open(&self, record: &Arc<IngressRecord>) -> Result<Arc<Opened>, OpenError> {
        let id = record.id.as_str();
        if let Some(opened) = self.answers.get(id).await {
            if opened.version == record.version {
                return Ok(opened);
            }
        }
        if let Some((version, failed)) = self.failures.get(id).await {
            if version == record.version {
                return Err(failed);
            }
        }
        let opened = self.open_now(record).await;
        let result = if opened.is_ok() { "ok" } else { "failed" };
        self.metrics.secret_opens.with_label_values(&[result]).inc();
        match opened {
            Ok(opened) => {
                let opened = Arc::new(opened);
                self.answers.insert(id.to_owned(), opened.clone()).await;
                Ok(opened)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a tenant's secrets did not open; it answers 503");
                self.failures
                    .insert(id.to_owned(), (record.version, e.clone()))
                    .await;
                Err(e)
            }
        }
    }

    /// Opens every secret of `record` and renders it, or fails whole.
    async fn open_now(&self, record: &IngressRecord) -> Result<Opened, OpenError> {
        let tenant = record.id.as_str();
        let secret_error = |reason: String| OpenError::Secret {
            tenant: tenant.to_owned(),
            reason,
        };
        let mut products = match record.products.as_deref() {
            Some(text) => Some(text.parse().map_err(|e| secret_error(format!("products: {e}")))?),
            None => None,
        };
        let sealed = products
            .iter()
            .flat_map(|products| products.values())
            .flat_map(|doc| doc.secrets.values())
            .filter(|s| matches!(s, Secret::Sealed(_)))
            .count();
        if sealed > 0 {
            // Kept as bytes (48 of them with the Arc, where the expanded key takes ~600),
            // expanded for this one opening.
            let data_key = self
                .data_key(record)
                .await?
                .key()
                .map_err(|e| secret_error(format!("data key: {e}")))?;
            for (product, doc) in products.iter_mut().flatten() {
                for (name, secret) in &mut doc.secrets {
                    let Secret::Sealed(s) = secret else { continue };
                    let context = secret_context(tenant, product.as_str(), name);
                    let plain = data_key
                        .open(&context, s)
                        .map_err(|e| secret_error(format!("secret {product}/{name}: {e}")))?;
                    let plain = String::from_utf8(plain)
                        .map_err(|_| secret_error(format!("secret {product}/{name} is not UTF-8")))?;
                    *secret = Secret::Plain(plain);
                }
            }
        }
        let open = IngressRecord {
            products: products.map(|p| Box::new(ViewProducts::new(&p))),
            // The wrapped key is of no use to a caller: it gets the secrets themselves.
            data_key: None,
            ..record.clone()
        };
        let json = serde_json::to_vec(&open).map_err(|e| OpenError::Secret {
            tenant: tenant.to_owned(),
            reason: format!("rendering: {e}"),
        })?;
        let host = record.hosts.first().cloned().ok_or_else(|| OpenError::Secret {
            tenant: tenant.to_owned(),
            reason: "a record without a host".into(),
        })?;
        Ok(Opened {
            version: record.version,
            host,
            json: Bytes::from(json),
            secrets: sealed,
        })
    }

    /// The tenant's data key, unwrapped once per wrapped key.
    async fn data_key(&self, record: &IngressRecord) -> Result<Arc<DataKeyBytes>, OpenError> {
        let tenant = record.id.as_str();
        let keys = self
            .keys
            .clone()
            .ok_or_else(|| OpenError::NoMasterKey(tenant.to_owned()))?;
        let wrapped = record
            .data_key
            .as_deref()
            .ok_or_else(|| OpenError::NoDataKey(tenant.to_owned()))?;
        let key = {
            use std::hash::BuildHasher;
            foldhash::quality::FixedState::with_seed(0x5eed_da7a).hash_one((
                tenant,
                &wrapped.key_id,
                &wrapped.wrapped,
            ))
        };
        self.data_keys
            .try_get_with(key, async move {
                match tokio::time::timeout(UNWRAP_LIMIT, keys.unwrap_key(tenant, wrapped)).await {
                    Ok(Ok(key)) => Ok(Arc::new(key.bytes())),
                    Ok(Err(e)) => Err(unwrap_error(tenant, &e)),
                    Err(_) => Err(OpenError::Timeout(tenant.to_owned())),
                }
            })
            .await
            .map_err(|e| OpenError::clone(&e))
    }

    /// Answers held, and the bytes they take (for `/admin/cache` and the memory numbers).
    pub fn held(&self) -> (u64, u64) {
        let mut bytes = 0u64;
        for (_, opened) in self.answers.iter() {
            bytes += opened.json.len() as u64;
        }
        (self.answers.entry_count(), bytes)
    }
}

fn unwrap_error(tenant: &str, e: &SecretError) -> OpenError {
    OpenError::Secret {
        tenant: tenant.to_owned(),
        reason: format!("data key: {e}"),
    }
}
