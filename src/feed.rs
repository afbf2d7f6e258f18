//! Wire formats of the catalogue's documents and of the two ordered change streams: the
//! catalogue's change log (read by TCS) and a TCS view's change stream (read by edges).
//!
//! Both streams are ordered by the catalogue's global sequence number, so a reader can resume
//! from any position and detect what it missed. Beside them, [`client`]: the one typed client
//! of the catalogue API (`ctl`, the dev stack, the TCS tailer and the tests all use it).

pub mod bearer;
pub mod client;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use self::client::{CatalogueClient, ClientError, ImportError, Imported};

use crate::tenant::{
    Host, IngressRecord, Placement, PlacementState, Product, Realm, Region, ShardId, TenantId,
};

/// A tenant as the catalogue stores it (`PUT /v1/tenants/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDoc {
    /// Tenant id; must equal the id in the URL.
    pub id: TenantId,
    /// Hosts naming the tenant; unique across tenants.
    pub hosts: Vec<Host>,
    /// Realm the tenant's data must stay in.
    pub realm: Realm,
    /// Product -> placement; each shard must serve that product inside the realm.
    #[serde(default)]
    pub placements: BTreeMap<Product, Placement>,
    /// Product -> what that product's service needs for this tenant: free-form `config` (the
    /// database's name and host) and named `secrets`, written in plaintext and stored only
    /// sealed with the tenant's data key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub products: BTreeMap<Product, ProductDoc>,
    /// Product -> the requests per second this tenant may send it through an edge, instead of
    /// the product's default in the route file (its noisy-neighbour limit). Carried in the
    /// `ingress` view.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<Product, u32>,
    /// The tenant's data key, wrapped by the catalogue's master key (set by the catalogue when
    /// the tenant has secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<crate::secrets::WrappedKey>,
    /// Stored version; ignored on input (use `If-Match`), set on output.
    #[serde(default)]
    pub version: u64,
}

/// One product's configuration and secrets for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductDoc {
    /// Free-form settings (`{"db": "acme_jira", "db_host": "..."}`).
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Named secrets: plaintext strings on the way in, sealed values once stored.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

/// A view's products in a record (product -> [`ProductDoc`]), kept as their compact JSON.
///
/// A record is cached by the million (TCS's views, a sidecar's cache) and read rarely: only the
/// sidecar opens it, once per tenant version. As parsed maps, one product with a two-field
/// config cost about 2 KB (a `BTreeMap` of one or two entries still allocates a whole node);
/// as its text, the bytes of the text. Built from parsed, checked documents (deserializing
/// goes through the typed map, so what is held is always well-formed), parsed back with
/// [`ViewProducts::parse`], written out as it is.
#[derive(Clone)]
pub struct ViewProducts(Box<serde_json::value::RawValue>);

impl ViewProducts {
    /// The text of `products`.
    pub fn new(products: &BTreeMap<Product, ProductDoc>) -> Self {
        // Maps of strings and JSON values always render.
        match serde_json::value::to_raw_value(products) {
            Ok(raw) => ViewProducts(raw),
            Err(e) => unreachable!("a product map did not render: {e}"),
        }
    }

    /// The products, parsed.
    pub fn parse(&self) -> Result<BTreeMap<Product, ProductDoc>, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for ViewProducts {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for ViewProducts {}

// The text may hold opened secrets (a sidecar's answer): never in a log line.
impl std::fmt::Debug for ViewProducts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ViewProducts({} bytes)", self.0.get().len())
    }
}

impl Serialize for ViewProducts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ViewProducts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through the typed map, whatever the deserializer (a tagged frame buffers its content),
        // so only well-formed products are held.
        let products = BTreeMap::<Product, ProductDoc>::deserialize(deserializer)?;
        Ok(ViewProducts::new(&products))
    }
}

/// A secret as written (plaintext) or as stored (sealed with the tenant's data key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// Sealed: what the catalogue stores and serves.
    Sealed(crate::secrets::Sealed),
    /// Plaintext, as a client writes it; the catalogue seals it before storing.
    Plain(String),
}

// A plaintext secret never reaches a log line or a panic message.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Sealed(s) => s.fmt(f),
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

impl TenantDoc {
    /// The routing facts of this tenant, as the `ingress` view carries them.
    pub fn ingress(&self) -> IngressRecord {
        IngressRecord {
            id: self.id.clone(),
            version: self.version,
            realm: self.realm.clone(),
            hosts: self.hosts.clone(),
            placements: (&self.placements).into(),
            rate_limits: self.rate_limits.clone(),
            products: None,
            data_key: None,
        }
    }

    /// The tenant as a view projects it: the routing facts, `products`' config, and their
    /// secrets (still sealed) with the wrapped data key when `secrets`. An empty `products` is
    /// the `ingress` view's record.
    pub fn project(&self, products: &[Product], secrets: bool) -> IngressRecord {
        let mut record = self.ingress();
        if products.is_empty() {
            return record;
        }
        let chosen: BTreeMap<Product, ProductDoc> = self
            .products
            .iter()
            .filter(|(p, _)| products.contains(p))
            .map(|(p, doc)| {
                let mut doc = doc.clone();
                if !secrets {
                    doc.secrets.clear();
                }
                (p.clone(), doc)
            })
            .collect();
        let has_secrets = chosen.values().any(|d| !d.secrets.is_empty());
        record.products = Some(Box::new(ViewProducts::new(&chosen)));
        if has_secrets {
            record.data_key = self.data_key.clone().map(Box::new);
        }
        record
    }
}

/// A shard in the registry (`PUT /v1/shards/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardDoc {
    /// Shard id; must equal the id in the URL.
    pub id: ShardId,
    /// The one product this shard serves.
    pub product: Product,
    /// Regions holding the shard's data (a "global" shard has several).
    pub regions: Vec<Region>,
    /// Base URL of the shard's mover hooks (`http://127.0.0.1:9100`), for tenant moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover: Option<String>,
    /// Where the data of a tenant placed here lives (`{"db_host": "..."}`): written into the
    /// tenant's product `config` by a move's switch (and by a rollback, the source's), in the
    /// same catalogue write as the placement, so a service reading its view finds a moved
    /// tenant's data at the target. No secrets here: they belong to the tenant.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub database: serde_json::Map<String, serde_json::Value>,
}

/// A realm: the regions a tenant's data may live in (`PUT /v1/realms/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealmDoc {
    /// Realm name; must equal the name in the URL.
    pub name: Realm,
    /// Regions of the realm.
    pub regions: Vec<Region>,
}

/// What one catalogue change touched. `doc: None` means the entity was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeBody {
    /// A tenant was written or deleted; `version` is the version after the change.
    Tenant {
        /// Tenant id.
        id: TenantId,
        /// Version after the change (a delete bumps it too).
        version: u64,
        /// The new document, or `None` when deleted.
        doc: Option<TenantDoc>,
    },
    /// A shard was written or deleted.
    Shard {
        /// Shard id.
        id: ShardId,
        /// The new document, or `None` when deleted.
        doc: Option<ShardDoc>,
    },
    /// A realm was written or deleted.
    Realm {
        /// Realm name.
        name: Realm,
        /// The new document, or `None` when deleted.
        doc: Option<RealmDoc>,
    },
    /// A migration was created or changed phase (migrations are never deleted).
    Migration {
        /// Migration id (`m-1`).
        id: String,
        /// The document after the change.
        doc: MigrationDoc,
    },
}

/// The phase of a tenant move: `planned -> frozen -> copying -> switched -> cleaning -> done`,
/// or `rolled_back` from any phase before `switched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Recorded; nothing has happened yet.
    Planned,
    /// The tenant's placement is frozen: writes get 503 while the move runs.
    Frozen,
    /// Data is being copied to the target shard.
    Copying,
    /// The tenant's placement names the target shard.
    Switched,
    /// The source shard's copy is being deleted.
    Cleaning,
    /// Finished.
    Done,
    /// Abandoned before the switch: the tenant is back, active, on the source shard.
    RolledBack,
}

impl Phase {
    /// Whether a migration may move from `self` to `to`.
    pub fn can_become(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Planned, Frozen)
                | (Frozen, Copying)
                | (Copying, Switched)
                | (Switched, Cleaning)
                | (Cleaning, Done)
                | (Planned | Frozen | Copying, RolledBack)
        )
    }

    /// Whether the migration is still open (neither done nor rolled back).
    pub fn is_open(self) -> bool {
        !matches!(self, Phase::Done | Phase::RolledBack)
    }

    /// The wire name (`rolled_back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Frozen => "frozen",
            Phase::Copying => "copying",
            Phase::Switched => "switched",
            Phase::Cleaning => "cleaning",
            Phase::Done => "done",
            Phase::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move of one tenant's product from shard `from` to shard `to` (`/v1/migrations/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationDoc {
    /// Migration id, `m-<n>`.
    pub id: String,
    /// The tenant moved.
    pub tenant: TenantId,
    /// The product moved.
    pub product: Product,
    /// The shard the tenant's product was on when the migration was created.
    pub from: ShardId,
    /// The shard it moves to.
    pub to: ShardId,
    /// Where the move stands.
    pub phase: Phase,
    /// Starts at 1, bumped by every phase change (`If-Match` compares it).
    pub version: u64,
    /// Regions `to` has and `from` lacks: the only ones the copy writes to (sorted).
    pub regions_to_add: Vec<Region>,
    /// Regions `from` has and `to` lacks: the only ones the clean-up deletes from (sorted).
    pub regions_to_remove: Vec<Region>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time of the last phase change, milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// Body of `POST /v1/migrations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    /// The tenant to move.
    pub tenant: TenantId,
    /// The product to move.
    pub product: Product,
    /// The target shard.
    pub to: ShardId,
}

/// Body of `PUT /v1/migrations/{id}/phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseChange {
    /// The phase to move to.
    pub phase: Phase,
}

/// One entry of the catalogue's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Global sequence number: dense, strictly increasing, assigned in the write's transaction.
    pub seq: u64,
    /// What changed.
    #[serde(flatten)]
    pub body: ChangeBody,
}

/// Answer to `GET /v1/changes?after=SEQ&limit=N&wait_ms=MS`.
///
/// `changes` holds entries with `seq > after` in order (at most `limit`); when none exist yet the
/// catalogue waits up to `wait_ms` for one before answering with an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// The changes, in sequence order.
    pub changes: Vec<Change>,
    /// The newest sequence number in the log when the page was read.
    pub head: u64,
    /// The log's epoch, minted when the log was created (or restored): sequence numbers of
    /// one epoch mean nothing in another, so a reader that sees a new epoch reloads in full.
    #[serde(default)]
    pub epoch: String,
}

/// A lease in the catalogue's store: at most one holder of `name` at a time, until
/// `expires_in_ms` from the answer (`PUT /v1/leases/{name}`, body [`LeaseRequest`]). The wide
/// fan-out's publisher of a region holds one, so that one TCS node of the region publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseDoc {
    /// The lease's name.
    pub name: String,
    /// Who holds it now (empty: nobody).
    pub holder: String,
    /// How much longer the holder holds it, in ms (0 when nobody does).
    pub expires_in_ms: u64,
}

impl LeaseDoc {
    /// Whether `holder` holds the lease.
    pub fn held_by(&self, holder: &str) -> bool {
        !holder.is_empty() && self.holder == holder && self.expires_in_ms > 0
    }
}

/// Body of `PUT /v1/leases/{name}`: take or renew the lease for `ttl_ms` when it is free,
/// expired or already `holder`'s; `ttl_ms` 0 gives it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who asks (`[A-Za-z0-9._:-]`, 1 to 128 characters).
    pub holder: String,
    /// For how long, at most [`MAX_LEASE_MS`]; 0 releases.
    pub ttl_ms: u64,
}

/// Answer to `POST /v1/keys/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// Data keys wrapped again with the current master key.
    pub rewrapped: usize,
    /// Tenants written meanwhile (compare-and-set lost): run the rotation again.
    pub left: usize,
    /// The current master key's id.
    pub key_id: String,
    /// The last tenant of this page when more may follow: the next page starts after it.
    /// `None`: the rotation has been through every tenant.
    #[serde(default)]
    pub next: Option<TenantId>,
}

/// The most tenants one page covers (`GET /v1/tenants?limit=`, `POST /v1/keys/rotate?limit=`).
pub const MAX_PAGE: usize = 10_000;

/// How many tenants a page of the key rotation covers when the request does not say.
pub const ROTATE_PAGE: usize = 1_000;

/// The longest lease the catalogue grants.
pub const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

/// Body of `POST /v1/views/ingress/hosts` on a TCS: many host lookups in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBatch {
    /// Normalised hosts, at most [`MAX_HOST_BATCH`].
    pub hosts: Vec<String>,
}

/// The most hosts one [`HostBatch`] may hold.
pub const MAX_HOST_BATCH: usize = 1024;

/// Answer to `POST /v1/views/ingress/hosts`: one entry per host asked, in order; `null` for a
/// host no tenant has (or that is not a valid host name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBatchAnswer {
    /// What each host names.
    pub results: Vec<Option<HostLookup>>,
}

/// Answer to `GET /v1/views/ingress/hosts/{host}` on a TCS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLookup {
    /// The sequence the view was current to when it answered.
    pub seq: u64,
    /// The tenant naming that host.
    pub record: IngressRecord,
}

/// Answer to `GET /v1/views/{view}/tenants/{id}/placements/{product}` on a TCS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementLookup {
    /// Tenant id.
    pub tenant: TenantId,
    /// Product.
    pub product: Product,
    /// The shard holding the product's data.
    pub shard: ShardId,
    /// Whether writes are allowed.
    pub state: PlacementState,
    /// The tenant's catalogue version.
    pub version: u64,
    /// The sequence the view was current to when it answered.
    pub seq: u64,
}

/// Answer to `GET /v1/views/ingress/snapshot` on a TCS: the whole view at one sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSnapshot {
    /// The sequence the view was current to.
    pub seq: u64,
    /// The epoch of the catalogue log that sequence belongs to (see [`ChangesPage::epoch`]);
    /// empty when not known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Every tenant in the view.
    pub records: Vec<IngressRecord>,
}

/// The longest line a change-stream reader holds: far above any event (a record is a few
/// hundred bytes), so only a broken or hostile peer reaches it.
pub const MAX_STREAM_LINE: usize = 16 << 20;

/// Splits an NDJSON byte stream into lines as its chunks arrive. Each byte is scanned once, a
/// line may span chunks, and a partial line longer than the limit is an error instead of
/// memory without bound.
#[derive(Debug)]
pub struct Lines {
    buf: bytes::BytesMut,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max: usize,
}

/// A line grew past [`Lines`]' limit without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stream line grew past {0} bytes without ending")]
pub struct LineTooLong(pub usize);

impl Lines {
    /// A reader of lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Lines {
            buf: bytes::BytesMut::new(),
            scanned: 0,
            max,
        }
    }

    /// Appends a chunk as it arrived.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its `\n`, `None` until one is complete.
    pub fn next_line(&mut self) -> Result<Option<bytes::BytesMut>, LineTooLong> {
        match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            Some(i) => {
                let mut line = self.buf.split_to(self.scanned + i + 1);
                line.truncate(line.len() - 1);
                self.scanned = 0;
                Ok(Some(line))
            }
            None if self.buf.len() > self.max => Err(LineTooLong(self.max)),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }
}

/// One line of a TCS view's change stream (`GET /v1/views/ingress/changes?after=SEQ`, NDJSON).
///
/// `prev` is the sequence of the previous event this view emitted. A subscriber that holds
/// everything up to `last` has missed nothing when `prev <= last`; otherwise it has a gap and
/// must resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewEvent {
    /// A tenant was created or changed. `removed_hosts` no longer name it.
    Upsert {
        /// Catalogue sequence of this change.
        seq: u64,
        /// Sequence of the previous event of this view.
        prev: u64,
        /// The whole new record.
        record: IngressRecord,
        /// Hosts the previous version had and this one has not.
        #[serde(default)]
        removed_hosts: Vec<Host>,
    },
    /// A tenant was deleted; `hosts` were its hosts.
    Delete {
        /// Catalogue sequence of this change.
        seq: u64,
        /// Sequence of the previous event of this view.
        prev: u64,
        /// Tenant id.
        id: TenantId,
        /// Version of the delete.
        version: u64,
        /// Hosts that named the tenant.
        hosts: Vec<Host>,
    },
    /// Nothing new; the view is current to `seq`. Sent periodically so readers can measure lag.
    Heartbeat {
        /// The view's applied sequence.
        seq: u64,
        /// The sequence of the view's newest event.
        last_event: u64,
    },
    /// `after` is older than the stream's memory: load the snapshot, then subscribe again.
    Resync {
        /// The view's applied sequence.
        seq: u64,
    },
}

impl ViewEvent {
    /// The sequence this event brings a reader up to.
    pub fn seq(&self) -> u64 {
        match self {
            ViewEvent::Upsert { seq, .. }
            | ViewEvent::Delete { seq, .. }
            | ViewEvent::Heartbeat { seq, .. }
            | ViewEvent::Resync { seq } => *seq,
        }
    }
}

/// The JSON body of every error answer, in one shape everywhere: the catalogue, TCS, demo shard
/// and edge admin APIs answer `{"status", "reason"}`, and the proxy's own answers add the
/// request's id (rendered without allocating by the proxy; a test holds the two alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong, for a human.
    pub reason: String,
    /// The request's id, on the proxy's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    /// The body of a `status` answer saying `reason`.
    pub fn new(status: http::StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status: status.as_u16(),
            reason: reason.into(),
            request_id: None,
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    /// A 500's reason is the server's business (storage errors, paths): the body says only
    /// that it was internal; whoever made the error logs its detail.
    fn into_response(mut self) -> axum::response::Response {
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        if status == http::StatusCode::INTERNAL_SERVER_ERROR {
            self.reason = "internal error".to_owned();
        }
        (
            status,
            [(http::header::CACHE_CONTROL, "no-store")],
            axum::Json(self),
        )
            .into_response()
    }
}

/// Body of `POST /v1/fleet/edges/{id}` on a TCS: what an edge reports of itself, every few
/// seconds, so operators can see which edges are behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetReport {
    /// The edge's region.
    pub region: String,
    /// The edge's build version.
    pub version: String,
    /// The last catalogue sequence the edge applied.
    pub applied_seq: u64,
    /// Tenant hosts the edge holds.
    pub cache_entries: u64,
}

/// One edge in `GET /v1/fleet`: its latest report and how far behind the view's head it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEdge {
    /// The edge's id.
    pub id: String,
    /// Its latest report.
    #[serde(flatten)]
    pub report: FleetReport,
    /// Sequences behind the TCS's view.
    pub lag_seqs: u64,
    /// How long the view has held a change the edge has not applied (0 when caught up).
    pub lag_seconds: f64,
    /// Seconds since the edge last reported.
    pub last_heard_seconds: f64,
}

/// Answer to `GET /v1/fleet`: every edge heard from recently, the laggards first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// The TCS's region.
    pub region: String,
    /// The sequence its view is current to.
    pub head: u64,
    /// The edges, most behind first.
    pub edges: Vec<FleetEdge>,
}

/// `e` and its sources, one after another: driver and `reqwest` errors say "error sending
/// request" or "db error" and keep the cause (refused, reset, timed out) in their sources; an
/// operator's log line needs the cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_are_bounded() {
        let mut lines = Lines::new(16);
        lines.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        lines.push(b":2}\n\n");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        lines.push(&[b'x'; 17]);
        assert_eq!(lines.next_line(), Err(LineTooLong(16)));
    }

    #[test]
    fn a_views_products_are_held_as_checked_text() {
        // Inside a tagged event (its content buffered first), with spaces to drop.
        let json = r#"{"type":"upsert","seq":3,"prev":1,"record":{"id":"acme","version":2,"realm":"us",
            "hosts":["acme.example.test"],"placements":{"jira":{"shard":"jira-1"}},
            "products":{ "jira" : {"config": {"db": "acme_jira"}, "secrets": {"pw": "hunter2"}}}}}"#;
        let ViewEvent::Upsert { record, .. } = serde_json::from_str(json).unwrap() else {
            panic!("not an upsert");
        };
        let products = record.products.as_deref().unwrap();
        assert_eq!(
            products.as_str(),
            r#"{"jira":{"config":{"db":"acme_jira"},"secrets":{"pw":"hunter2"}}}"#
        );
        let parsed = products.parse().unwrap();
        assert_eq!(parsed[&Product::new("jira").unwrap()].config["db"], "acme_jira");
        assert_eq!(&ViewProducts::new(&parsed), products);
        // Written out as held, and never in a debug line.
        let out = serde_json::to_string(&record).unwrap();
        assert!(out.contains(products.as_str()), "{out}");
        assert!(!format!("{record:?}").contains("hunter2"));
        // What would not be a product map is refused on the way in.
        for bad in [r#"{"jira":{"configs":{}}}"#, r#"{"Not A Product":{}}"#, r#"[1]"#] {
            assert!(serde_json::from_str::<ViewProducts>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn change_round_trips() {
        let json = r#"{"seq":7,"kind":"tenant","id":"acme","version":2,"doc":null}"#;
        let change: Change = serde_json::from_str(json).unwrap();
        assert_eq!(change.seq, 7);
        assert!(matches!(
            change.body,
            ChangeBody::Tenant {
                version: 2,
                doc: None,
                ..
            }
        ));
        let back: Change = serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
        assert_eq!(back, change);
    }

    #[test]
    fn tenant_doc_rejects_unknown_fields_and_bad_names() {
        let ok = r#"{"id":"acme","hosts":["ACME.example.test"],"realm":"us","placements":{"jira":{"shard":"jira-us-east-1"}}}"#;
        let doc: TenantDoc = serde_json::from_str(ok).unwrap();
        assert_eq!(doc.hosts[0].as_str(), "acme.example.test");
        assert_eq!(doc.version, 0);
        let extra = r#"{"id":"acme","hosts":[],"realm":"us","colour":"red"}"#;
        assert!(serde_json::from_str::<TenantDoc>(extra).is_err());
        let bad = r#"{"id":"Acme!","hosts":[],"realm":"us"}"#;
        assert!(serde_json::from_str::<TenantDoc>(bad).is_err());
    }

    #[test]
    fn view_event_tags() {
        let ev = ViewEvent::Heartbeat {
            seq: 4,
            last_event: 3,
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(json, r#"{"type":"heartbeat","seq":4,"last_event":3}"#);
        assert_eq!(serde_json::from_str::<ViewEvent>(&json).unwrap().seq(), 4);
    }

    #[test]
    fn migration_change_and_phases_round_trip() {
        let json = r#"{"seq":9,"kind":"migration","id":"m-1","doc":{"id":"m-1","tenant":"acme",
            "product":"jira","from":"jira-us-east-1","to":"jira-us-west-2","phase":"rolled_back",
            "version":3,"regions_to_add":["us-west-2"],"regions_to_remove":["us-east-1"],
            "created_ms":1,"updated_ms":2}}"#;
        let change: Change = serde_json::from_str(json).unwrap();
        let ChangeBody::Migration { id, doc } = &change.body else {
            panic!("not a migration: {change:?}");
        };
        assert_eq!(
            (id.as_str(), doc.phase, doc.version),
            ("m-1", Phase::RolledBack, 3)
        );
        let back: Change = serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
        assert_eq!(back, change);
        assert_eq!(
            serde_json::to_string(&Phase::RolledBack).unwrap(),
            format!("\"{}\"", Phase::RolledBack)
        );
    }

    #[test]
    fn only_forward_steps_and_early_rollbacks_are_legal() {
        use Phase::*;
        let all = [Planned, Frozen, Copying, Switched, Cleaning, Done, RolledBack];
        let legal: Vec<(Phase, Phase)> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.can_become(b))
            .collect();
        assert_eq!(
            legal,
            [
                (Planned, Frozen),
                (Planned, RolledBack),
                (Frozen, Copying),
                (Frozen, RolledBack),
                (Copying, Switched),
                (Copying, RolledBack),
                (Switched, Cleaning),
                (Cleaning, Done),
            ]
        );
        assert_eq!(
            all.iter().filter(|p| !p.is_open()).collect::<Vec<_>>(),
            [&Done, &RolledBack]
        );
    }

    #[test]
    fn shard_mover_is_optional_and_omitted_when_absent() {
        let plain: ShardDoc =
            serde_json::from_str(r#"{"id":"s-1","product":"jira","regions":["us-east-1"]}"#).unwrap();
        assert_eq!(plain.mover, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("mover"));
        let hooked: ShardDoc = serde_json::from_str(
            r#"{"id":"s-1","product":"jira","regions":["us-east-1"],"mover":"http://127.0.0.1:9100"}"#,
        )
        .unwrap();
        assert_eq!(hooked.mover.as_deref(), Some("http://127.0.0.1:9100"));
    }
}
