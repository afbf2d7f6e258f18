//! The request path: one `impl ProxyHttp`, each phase a short dispatcher.
//!
//! `request_filter` resolves Host -> tenant -> product -> placement and rejects early;
//! `upstream_peer` picks a backend of the shard; `upstream_request_filter` rewrites headers;
//! `fail_to_proxy` turns errors into JSON answers; `logging` does metrics and the access log.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use super::limits::{self, Admission};
use super::pool::{InFlight, ShardPool};
use super::{EdgeState, Shared};
use crate::context::{Entry, Resolved, TenantCache, Unavailable};
use crate::routes::{normalize_path, ProductRoute};
use crate::tenant::{normalize_host, MAX_HOST_LEN};

/// How long a client should wait before retrying a 503 of ours, in seconds.
pub(super) const RETRY_AFTER_OUTAGE: &str = "1";
pub(super) const RETRY_AFTER_FROZEN: &str = "2";

/// The edge proxy; everything it reads per request sits behind one `ArcSwap` in [`Shared`].
pub struct EdgeProxy {
    pub(crate) shared: Arc<Shared>,
    request_ids: RequestIds,
}

impl EdgeProxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        EdgeProxy {
            shared,
            request_ids: RequestIds::new(),
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    state: Option<Arc<EdgeState>>,
    request_id: Option<HeaderValue>,
    product: Option<usize>,
    tenant: Option<Arc<Entry>>,
    pool: Option<Arc<ShardPool>>,
    host: Option<HeaderValue>,
    rewritten_path: Option<String>,
    in_flight: Option<InFlight>,
    /// The request's place among its tenant's requests in flight on the shard.
    admission: Option<Admission>,
    tried: u64,
    upstream_started: Option<Instant>,
    /// Replays after a shard said the tenant moved (at most one).
    replays: u8,
    /// The answer to give when a failure was decided by us mid-proxy (see `fail_to_proxy`).
    reject: Option<Reject>,
    /// Counts the request in flight for the drain until the context drops.
    counted: Option<Counted>,
}

/// A request of the general path counted in flight ([`crate::edge::Drain`]) until dropped.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.drain.end();
    }
}

/// Why the edge answered itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// The status answered.
    pub status: u16,
    /// The reason, in the JSON body.
    pub reason: &'static str,
    /// `Retry-After`, for 503s a client should retry.
    pub retry_after: Option<&'static str>,
}

/// What the decision reads of a request, borrowed from whichever parser read it: pingora's
/// (HTTP/2, and the HTTP/1 requests the lean path hands over) or the lean HTTP/1 path's.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'r> {
    /// The value of the `Host` field.
    pub host: Option<&'r [u8]>,
    /// There was more than one `Host` field.
    pub hosts_repeated: bool,
    /// The authority of an absolute-form target, or HTTP/2's `:authority`.
    pub authority: Option<&'r [u8]>,
    /// The path of the target.
    pub path: &'r str,
    /// Its query, without the `?`.
    pub query: Option<&'r str>,
}

impl<'r> RequestView<'r> {
    /// The view of a pingora request header.
    pub fn of(req: &'r RequestHeader) -> Self {
        let mut hosts = req.headers.get_all(HOST).iter();
        let host = hosts.next().map(HeaderValue::as_bytes);
        RequestView {
            host,
            hosts_repeated: hosts.next().is_some(),
            authority: req.uri.authority().map(|a| a.as_str().as_bytes()),
            path: req.uri.path(),
            query: req.uri.query(),
        }
    }
}

/// What steps 1-2 decide: the normalised host, the product by path, and the path to forward
/// when normalising changed it.
pub type Targeted<'b, 's> = (&'b str, &'s ProductRoute, Option<String>);

/// What [`decide`] came to, beyond the target.
#[derive(Debug)]
pub enum Decision<T> {
    /// A cache hit, placed and admitted by the tenant's limits: the shard's pool, the
    /// admission (hold it until the request ends), and what the caller kept of the entry.
    Placed(Arc<ShardPool>, Admission, T),
    /// Not cached: the caller goes on with [`decide_missed`] (the one step with I/O).
    Missed,
}

/// The per-request decision, steps 1-4 without I/O, as both request paths make it (and the
/// allocation test and the micro benchmark measure it): [`target`], then on a cache hit
/// [`place`] on the borrowed entry, keeping of it what `keep` takes.
pub fn decide<'s, 'b, T>(
    state: &'s EdgeState,
    cache: &TenantCache,
    req: &RequestView<'b>,
    method: &http::Method,
    buf: &'b mut [u8; MAX_HOST_LEN],
    keep: impl FnOnce(&Arc<Entry>) -> T,
) -> Result<(Targeted<'b, 's>, Decision<T>), Reject> {
    let (host, product, rewritten) = target(state, req, buf)?;
    let placed = cache.with_hit(host, |entry| {
        place(state, product, entry, method).map(|(pool, admission)| (pool, admission, keep(entry)))
    });
    let decision = match placed {
        Some(placed) => {
            let (pool, admission, kept) = placed?;
            Decision::Placed(pool, admission, kept)
        }
        None => Decision::Missed,
    };
    Ok(((host, product, rewritten), decision))
}

/// The rest of the decision after [`decide`] said [`Decision::Missed`]: resolve `host` (the one
/// step with I/O), then place what was found, or answer what [`found`] says.
pub async fn decide_missed(
    state: &EdgeState,
    cache: &TenantCache,
    host: &str,
    product: &ProductRoute,
    method: &http::Method,
) -> Result<(Arc<ShardPool>, Admission, Arc<Entry>), Reject> {
    let entry = found(host, cache.resolve_missed(host).await)?;
    let (pool, admission) = place(state, product, &entry, method)?;
    Ok((pool, admission, entry))
}

/// Steps 1-2 of the request path, without I/O: the normalised host (the request's own bytes when
/// already normal, else in `buf`), the product by path, and the path to forward when
/// normalising changed it.
pub fn target<'s, 'b>(
    state: &'s EdgeState,
    req: &RequestView<'b>,
    buf: &'b mut [u8; MAX_HOST_LEN],
) -> Result<Targeted<'b, 's>, Reject> {
    let host = request_host(req, buf)?;
    let path = normalize_path(req.path).map_err(|_| reject(400, "malformed path"))?;
    let product = state
        .routes
        .match_path(&path)
        .ok_or(reject(404, "no product serves this path"))?;
    let rewritten = match &path {
        Cow::Owned(p) => Some(with_query(p, req.query)),
        Cow::Borrowed(_) => None,
    };
    Ok((host, product, rewritten))
}

/// Step 4, without I/O: the pool of the shard holding `entry`'s `product`, if `method` may go
/// there now, the shard has a healthy backend and the tenant is within its limits (429 when
/// not).
pub fn place(
    state: &EdgeState,
    product: &ProductRoute,
    entry: &Entry,
    method: &http::Method,
) -> Result<(Arc<ShardPool>, Admission), Reject> {
    // By interned numbers: no name of the tenant's record is read or compared.
    let placed = entry
        .placement_of(product.sym, product.name.as_str())
        .ok_or(reject(404, "product not provisioned for this tenant"))?;
    let shard = placed.shard;
    if placed.frozen && !is_safe(method) {
        return Err(Reject {
            status: 503,
            reason: "tenant is being moved; writes are paused",
            retry_after: Some(RETRY_AFTER_FROZEN),
        });
    }
    let pool = state.pool_of(shard).ok_or(reject(503, "shard has no route"))?;
    // Decided here rather than in `upstream_peer`, so the answer keeps the connection open.
    if pool.pick(0).is_none() {
        return Err(Reject {
            status: 503,
            reason: "no healthy backend for the shard",
            retry_after: Some(RETRY_AFTER_OUTAGE),
        });
    }
    let admission = state
        .limiter
        .admit(product, entry, placed, pool)
        .map_err(|limit| {
            state.count_limited(product.index, limit);
            limits::refused(limit)
        })?;
    Ok((pool.clone(), admission))
}

pub(super) const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject {
        status,
        reason,
        retry_after: None,
    }
}

/// Request ids: a random per-process prefix and a counter, 24 hex digits.
///
/// Each thread takes [`ID_BATCH`] numbers at a time and writes them into one shared buffer, so
/// that an id costs no allocation: the request, the upstream header and the answer share it.
pub(super) struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

const ID_LEN: usize = 24;
const ID_BATCH: usize = 64;

/// One thread's ids written ahead.
struct IdBatch {
    prefix: u32,
    text: Bytes,
    next: usize,
}

thread_local! {
    static ID_BATCHES: std::cell::RefCell<Option<IdBatch>> = const { std::cell::RefCell::new(None) };
}

impl RequestIds {
    pub(super) fn new() -> Self {
        RequestIds {
            prefix: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    pub(super) fn next(&self) -> HeaderValue {
        ID_BATCHES.with_borrow_mut(|batch| {
            let batch = match batch {
                Some(b) if b.prefix == self.prefix && b.next < ID_BATCH => b,
                _ => batch.insert(self.batch()),
            };
            let at = batch.next * ID_LEN;
            batch.next += 1;
            // Hex digits are always a valid header value.
            HeaderValue::from_maybe_shared(batch.text.slice(at..at + ID_LEN))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
    }

    fn batch(&self) -> IdBatch {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let first = self.counter.fetch_add(ID_BATCH as u64, Ordering::Relaxed);
        let mut text = Vec::with_capacity(ID_LEN * ID_BATCH);
        for n in first..first + ID_BATCH as u64 {
            let bits = (u128::from(self.prefix) << 64) | u128::from(n);
            text.extend((0..ID_LEN).map(|i| HEX[((bits >> (4 * (ID_LEN - 1 - i))) & 0xf) as usize]));
        }
        IdBatch {
            prefix: self.prefix,
            text: Bytes::from(text),
            next: 0,
        }
    }
}

impl EdgeProxy {
    /// Steps 1-4 of the request path; fills `ctx` or says why not.
    async fn route(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let req = session.req_header();
        let mut buf = [0u8; MAX_HOST_LEN];
        let state = self.shared.state.load_full();
        let cache = &self.shared.cache;
        let ((host, product, rewritten), decision) = decide(
            &state,
            cache,
            &RequestView::of(req),
            &req.method,
            &mut buf,
            Arc::clone,
        )?;
        ctx.product = Some(product.index);
        ctx.rewritten_path = rewritten;
        let (pool, admission, entry) = match decision {
            Decision::Placed(pool, admission, entry) => (pool, admission, entry),
            Decision::Missed => decide_missed(&state, cache, host, product, &req.method).await?,
        };
        ctx.admission = Some(admission);
        // The request's own value when it is already normalised (the common case): no copy.
        ctx.host = match req.headers.get(HOST) {
            Some(v) if v.as_bytes() == host.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(host).ok(),
        };
        ctx.pool = Some(pool);
        ctx.tenant = Some(entry);
        ctx.state = Some(state);
        Ok(())
    }

    /// A shard answered 421 `tenant-moved: V`: drop the tenant's context, fetch version V or
    /// newer, re-route, and replay once when the request is idempotent and has no body. Anything
    /// else becomes 503 + Retry-After, so that a client retries rather than writes twice.
    async fn on_tenant_moved(&self, session: &Session, ctx: &mut RequestCtx, version: u64) -> Result<()> {
        let rerouted = if ctx.replays == 0 {
            self.reroute(ctx, &session.req_header().method, version).await
        } else {
            false
        };
        let replayable =
            rerouted && is_idempotent(&session.req_header().method) && has_no_body(session.req_header());
        let outcome = match (rerouted, replayable) {
            (true, true) => "replayed",
            (true, false) => "rejected",
            (false, _) => "unresolved",
        };
        self.shared
            .metrics
            .tenant_moved
            .with_label_values(&[outcome])
            .inc();
        if replayable {
            ctx.replays += 1;
            let mut e = Error::explain(
                ErrorType::Custom("TenantMoved"),
                "shard says the tenant moved; replaying",
            );
            e.set_retry(true);
            return Err(e);
        }
        ctx.reject = Some(Reject {
            status: 503,
            reason: "tenant moved; retry the request",
            retry_after: Some(RETRY_AFTER_FROZEN),
        });
        let mut e = Error::explain(HTTPStatus(503), "shard says the tenant moved");
        e.set_retry(false);
        Err(e)
    }

    /// Refetches the context at `version` or newer and points `ctx` at the new shard's pool.
    /// False when no newer context names another shard that may take the request now.
    async fn reroute(&self, ctx: &mut RequestCtx, method: &http::Method, version: u64) -> bool {
        let (Some(host), Some(product), Some(state), Some(old)) =
            (ctx.host.clone(), ctx.product, ctx.state.clone(), ctx.pool.clone())
        else {
            return false;
        };
        let Ok(host) = host.to_str() else { return false };
        let Some((entry, pool, admission)) =
            relocate(&self.shared, &state, host, product, &old, version, method).await
        else {
            return false;
        };
        ctx.admission = Some(admission);
        ctx.in_flight = None;
        ctx.tried = 0;
        ctx.pool = Some(pool);
        ctx.tenant = Some(entry);
        true
    }

    /// Writes a small JSON error answer.
    async fn respond(&self, session: &mut Session, ctx: &RequestCtx, r: Reject) -> Result<()> {
        let id = ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut body = Vec::with_capacity(96);
        error_json(&mut body, r, id);
        let body = Bytes::from(body);
        let mut resp = ResponseHeader::build(r.status, Some(5))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        if let Some(after) = r.retry_after {
            resp.insert_header("retry-after", after)?;
        }
        if let Some(server) = self.shared.server_value.clone() {
            resp.insert_header(http::header::SERVER, server)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// After a shard's 421 `tenant-moved: V`: the tenant's context at version V or newer, and the
/// pool of the shard it now names, through the same checks as the first placement ([`place`]:
/// the freeze, a healthy backend). None when no newer context names another shard that may
/// take the request now.
pub(super) async fn relocate(
    shared: &Shared,
    state: &EdgeState,
    host: &str,
    product: usize,
    old: &ShardPool,
    version: u64,
    method: &http::Method,
) -> Option<(Arc<Entry>, Arc<ShardPool>, Admission)> {
    let entry = match shared.cache.refetch(host, version).await {
        Ok(Resolved::Found(entry)) => entry,
        Ok(Resolved::Unknown) | Err(_) => return None,
    };
    let product = state.routes.products.get(product)?;
    let (pool, admission) = place(state, product, &entry, method).ok()?;
    (pool.shard != old.shard).then_some((entry, pool, admission))
}

/// The entry a resolve found, or what both paths answer instead: 404 for a host no tenant has,
/// 503 with `Retry-After` when no TCS could say.
fn found(host: &str, resolved: Result<Resolved, Unavailable>) -> Result<Arc<Entry>, Reject> {
    match resolved {
        Ok(Resolved::Found(entry)) => Ok(entry),
        Ok(Resolved::Unknown) => Err(reject(404, "unknown host")),
        Err(e) => {
            tracing::warn!(host, error = %e, "tenant context unavailable");
            Err(Reject {
                status: 503,
                reason: "tenant context unavailable",
                retry_after: Some(RETRY_AFTER_OUTAGE),
            })
        }
    }
}

/// The JSON body of every answer the edge gives itself: `{"status","reason","request_id"}`.
pub(super) fn error_json(out: &mut Vec<u8>, r: Reject, request_id: &str) {
    use std::io::Write;
    // Reasons are static text without quotes; request ids are hex.
    let _ = write!(
        out,
        r#"{{"status":{},"reason":"{}","request_id":"{}"}}"#,
        r.status, r.reason, request_id
    );
}

/// The normalised host of a request: one `Host` header, or the authority of an absolute-form
/// URI / h2 `:authority`; both present must agree.
fn request_host<'b>(req: &RequestView<'b>, buf: &'b mut [u8; MAX_HOST_LEN]) -> Result<&'b str, Reject> {
    if req.hosts_repeated {
        return Err(reject(400, "more than one Host header"));
    }
    let raw = match (req.host, req.authority) {
        (Some(h), Some(a)) => {
            let mut other = [0u8; MAX_HOST_LEN];
            let a = normalize_host(a, &mut other).map_err(|_| reject(400, "malformed authority"))?;
            let h = normalize_host(h, buf).map_err(|_| reject(400, "malformed Host header"))?;
            return if a == h {
                Ok(h)
            } else {
                Err(reject(400, "Host header and authority differ"))
            };
        }
        (Some(h), None) => h,
        (None, Some(a)) => a,
        (None, None) => return Err(reject(400, "missing Host header")),
    };
    normalize_host(raw, buf).map_err(|_| reject(400, "malformed Host header"))
}

/// An address as a header value, formatted on the stack (IPv4 by hand: `fmt` costs more than
/// the rest of the header work).
pub(super) fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    // 45 bytes hold any IPv6 address in text.
    let mut buf = [0u8; 45];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        std::net::IpAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

pub(super) fn is_idempotent(method: &http::Method) -> bool {
    is_safe(method) || matches!(*method, http::Method::PUT | http::Method::DELETE)
}

/// Whether the request carries no body, so it can be sent again as it was.
fn has_no_body(req: &RequestHeader) -> bool {
    let length = req.headers.get(http::header::CONTENT_LENGTH);
    !req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && length.is_none_or(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) == Some(0))
}

fn is_safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Removes every client-supplied header that names one of the edge's own (see
/// [`super::h1::parse::internal`]: `x-tenant-*`, `x-forwarded-*`, `forwarded`, `x-real-ip`,
/// spelt with `-` or `_`): only the edge may set them.
fn strip_internal_headers(headers: &mut HeaderMap) {
    remove_where(headers, |name| {
        super::h1::parse::internal(name.as_str().as_bytes())
    });
}

/// Removes the backend headers from an answer (see [`EdgeConfig::show_backend_headers`]).
///
/// [`EdgeConfig::show_backend_headers`]: crate::edge::EdgeConfig::show_backend_headers
fn strip_backend_headers(headers: &mut HeaderMap) {
    remove_where(headers, |name| {
        name == "x-served-by" || super::h1::parse::internal(name.as_str().as_bytes())
    });
}

fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    // Almost no message carries one: look before collecting.
    if !headers.keys().any(&drop) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| drop(n)).cloned().collect();
    for name in names {
        headers.remove(&name);
    }
}

/// Writes the fields that say who the client is, as the edge saw it, each ending in CRLF:
/// `x-forwarded-for` (when the client has an IP), `x-forwarded-proto`, `x-real-ip` and
/// `forwarded` (RFC 7239: `for=`, quoted and bracketed for IPv6, and `proto=`). Rendered once
/// per connection by the lean path, per request by the general one.
pub(super) fn render_forwarded(client: Option<std::net::IpAddr>, tls: bool, out: &mut Vec<u8>) {
    let proto: &[u8] = if tls { b"https" } else { b"http" };
    let ip = client.map(ip_header);
    if let Some(ip) = &ip {
        for part in [&b"x-forwarded-for: "[..], ip.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    for part in [&b"x-forwarded-proto: "[..], proto, b"\r\n"] {
        out.extend_from_slice(part);
    }
    if let Some(ip) = &ip {
        for part in [&b"x-real-ip: "[..], ip.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"forwarded: ");
    forwarded_pairs(client, ip.as_ref(), proto, out);
    out.extend_from_slice(b"\r\n");
}

/// The value of `forwarded`: `for=` (when the client has an IP; `ip` is its text) and
/// `proto=`.
fn forwarded_pairs(
    client: Option<std::net::IpAddr>,
    ip: Option<&HeaderValue>,
    proto: &[u8],
    out: &mut Vec<u8>,
) {
    if let (Some(addr), Some(ip)) = (client, ip) {
        let (open, close): (&[u8], &[u8]) = if addr.is_ipv6() {
            (b"\"[", b"]\"")
        } else {
            (b"", b"")
        };
        for part in [&b"for="[..], open, ip.as_bytes(), close, b";"] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"proto=");
    out.extend_from_slice(proto);
}

/// The `forwarded` value of [`render_forwarded`], as a header value.
fn forwarded_value(
    client: Option<std::net::IpAddr>,
    ip: Option<&HeaderValue>,
    tls: bool,
) -> Option<HeaderValue> {
    let mut text = Vec::with_capacity(64);
    forwarded_pairs(client, ip, if tls { b"https" } else { b"http" }, &mut text);
    HeaderValue::from_bytes(&text).ok()
}

// The names the edge adds, parsed once: a custom name built from a string allocates.
const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
const X_TENANT_CONTEXT_VERSION: HeaderName = HeaderName::from_static("x-tenant-context-version");
const X_TENANT_SHARD: HeaderName = HeaderName::from_static("x-tenant-shard");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers the edge adds to a forwarded request, at most.
const ADDED_HEADERS: usize = 9;

/// Runs `edit` on a request's headers as a plain `HeaderMap`.
///
/// pingora's `RequestHeader` keeps a second map with each name's original case, and every
/// insert through it parses the name again and writes both maps; for the seven headers the
/// edge adds that was a fifth of the proxy's work per request. Taking the parts out drops the
/// case map (names go upstream in lower case, as HTTP/2 sends them anyway) and lets the map
/// grow once. The request line is kept: a target that is not UTF-8 is put back byte for byte.
fn edit_request_headers(req: &mut RequestHeader, edit: impl FnOnce(&mut HeaderMap)) {
    let raw = (!req.raw_path_is_utf8()).then(|| req.raw_path().to_vec());
    let end_stream = req.send_end_stream();
    // A request without headers stands in while the parts are out; it allocates nothing.
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        // The bytes were a valid target when they arrived.
        let _ = req.set_raw_path(&raw);
    }
    if let Some(end) = end_stream {
        req.set_send_end_stream(end);
    }
}

/// Runs `edit` on a response's headers as a plain `HeaderMap` (see [`edit_request_headers`]);
/// the status line gets the standard reason phrase.
fn edit_response_headers(resp: &mut ResponseHeader, edit: impl FnOnce(&mut HeaderMap)) {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if super::resets::reset_by_client(&mut session.downstream_session) {
            // Nobody is waiting for the answer: nothing reaches a shard, nothing is written.
            self.shared.metrics.http2_reset_unproxied.inc();
            return Ok(true);
        }
        self.shared.drain.begin();
        ctx.counted = Some(Counted(self.shared.clone()));
        if self.shared.drain.draining() {
            // An HTTP/1 client is told to go elsewhere after this answer (HTTP/2 gets GOAWAY).
            session.set_keepalive(None);
        }
        ctx.request_id = Some(self.request_ids.next());
        if let Err(r) = self.route(session, ctx).await {
            self.respond(session, ctx, r).await?;
            return Ok(true);
        }
        match super::resets::read_early_body(&mut session.downstream_session, self.shared.body_timeout).await
        {
            Ok(()) => Ok(false),
            Err(super::resets::EarlyBody::Reset) => {
                self.shared.metrics.http2_reset_unproxied.inc();
                Ok(true)
            }
            Err(super::resets::EarlyBody::Stalled) => {
                let r = Reject {
                    status: 408,
                    reason: "request body not received in time",
                    retry_after: None,
                };
                self.respond(session, ctx, r).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no shard chosen"))?;
        let (index, backend) = pool
            .pick(ctx.tried)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no healthy backend for the shard"))?;
        if index < 64 {
            ctx.tried |= 1 << index;
        }
        let peer = backend.peer();
        ctx.in_flight = Some(backend.begin());
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared.metrics.upstream_connect_failures.inc();
        if let (Some(flight), Some(state)) = (ctx.in_flight.take(), &ctx.state) {
            flight.backend().connect_failed(&state.health);
        }
        // Nothing reached the backend: try another one while any is left untried.
        let untried = ctx.pool.as_ref().is_some_and(|p| p.pick(ctx.tried).is_some());
        e.set_retry(untried);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(flight) = &ctx.in_flight {
            flight.backend().connected();
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        edit_request_headers(upstream, |headers| {
            strip_internal_headers(headers);
            headers.reserve(ADDED_HEADERS);
            if let Some(entry) = &ctx.tenant {
                headers.insert(X_TENANT_ID, entry.id_header.clone());
                headers.insert(X_TENANT_CONTEXT_VERSION, entry.version_header.clone());
            }
            if let Some(pool) = &ctx.pool {
                headers.insert(X_TENANT_SHARD, pool.shard_header.clone());
            }
            if let Some(id) = &ctx.request_id {
                headers.insert(X_REQUEST_ID, id.clone());
            }
            let ip = client_ip.map(ip_header);
            if let Some(forwarded) = forwarded_value(client_ip, ip.as_ref(), tls) {
                headers.insert(http::header::FORWARDED, forwarded);
            }
            if let Some(ip) = ip {
                headers.insert(X_FORWARDED_FOR, ip.clone());
                headers.insert(X_REAL_IP, ip);
            }
            let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
            headers.insert(X_FORWARDED_PROTO, proto);
            if let Some(host) = &ctx.host {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        });
        if let Some(path) = ctx.rewritten_path.take() {
            let uri = path
                .parse()
                .or_err(InternalError, "normalised path is not a URI")?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.as_u16() != 421 {
            return Ok(());
        }
        // A plain 421 (misdirected request) passes through; only the shard's ownership fence
        // carries `tenant-moved`.
        let Some(moved) = resp.headers.get("tenant-moved") else {
            return Ok(());
        };
        let version = moved
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        self.on_tenant_moved(session, ctx, version).await
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let shared = &self.shared;
        let strip = !shared.show_backend_headers;
        if ctx.request_id.is_some() || strip || shared.server_value.is_some() {
            edit_response_headers(resp, |headers| {
                if strip {
                    strip_backend_headers(headers);
                    headers.remove(http::header::SERVER);
                }
                if let Some(server) = shared.server_value.clone() {
                    headers.insert(http::header::SERVER, server);
                }
                if let Some(id) = &ctx.request_id {
                    headers.insert(X_REQUEST_ID, id.clone());
                }
            });
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let status = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // pingora closes the client connection after an error once a peer is being chosen,
        // whatever we ask; say so in the answer so that no client reuses it.
        session.set_keepalive(None);
        if let Some(r) = ctx.reject.take() {
            if let Err(err) = self.respond(session, ctx, r).await {
                tracing::debug!(error = %err, "could not write the error answer");
            }
            return FailToProxy {
                error_code: r.status,
                can_reuse_downstream: false,
            };
        }
        if status > 0 {
            let reason = match status {
                503 => "no healthy backend for the shard",
                502 => "backend failed",
                400 => "bad request",
                _ => "internal error",
            };
            let retry_after = (status == 503).then_some(RETRY_AFTER_OUTAGE);
            let r = Reject {
                status,
                reason,
                retry_after,
            };
            if let Err(err) = self.respond(session, ctx, r).await {
                tracing::debug!(error = %err, "could not write the error answer");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.in_flight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let state = ctx.state.clone().unwrap_or_else(|| self.shared.state.load_full());
        state.count(ctx.product, status, ctx.upstream_started.map(|t| t.elapsed()));
        if self.shared.access_log {
            let req = session.req_header();
            tracing::info!(
                target: "tenant_edge::access",
                method = %req.method,
                path = %req.uri.path(),
                status,
                tenant = ctx.tenant.as_ref().map(|t| t.record.id.as_str()),
                shard = ctx.pool.as_ref().map(|p| p.shard.as_str()),
                request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
                error = e.map(|e| e.to_string()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.set_uri(uri.parse().unwrap());
        for h in hosts {
            r.append_header("host", *h).unwrap();
        }
        r
    }

    fn host_of(r: &RequestHeader) -> Result<String, u16> {
        let mut buf = [0u8; MAX_HOST_LEN];
        request_host(&RequestView::of(r), &mut buf)
            .map(str::to_owned)
            .map_err(|r| r.status)
    }

    #[test]
    fn addresses_format_as_header_values() {
        let v6: std::net::IpAddr = "2001:db8:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        assert_eq!(ip_header(v6).to_str().unwrap(), v6.to_string());
        for v4 in [
            "127.0.0.1",
            "0.0.0.0",
            "10.9.99.100",
            "255.255.255.255",
            "192.168.1.20",
        ] {
            let ip: std::net::IpAddr = v4.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), v4);
        }
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            host_of(&req("/", &["Acme.Example.Test:8080"])),
            Ok("acme.example.test".into())
        );
        assert_eq!(host_of(&req("/", &[])), Err(400));
        assert_eq!(host_of(&req("/", &["a.test", "b.test"])), Err(400));
        assert_eq!(host_of(&req("/", &["10.1.1.1"])), Err(400));
        assert_eq!(
            host_of(&req("http://acme.example.test/x", &["acme.example.test"])),
            Ok("acme.example.test".into())
        );
        assert_eq!(
            host_of(&req("http://other.test/x", &["acme.example.test"])),
            Err(400)
        );
        assert_eq!(
            host_of(&req("http://acme.example.test/x", &[])),
            Ok("acme.example.test".into())
        );
    }

    #[test]
    fn strips_tenant_headers() {
        let mut r = req("/", &["a.test"]);
        r.append_header("X-Tenant-Id", "evil").unwrap();
        r.append_header("x-tenant-shard", "evil").unwrap();
        r.append_header("x-tenantish", "fine").unwrap();
        edit_request_headers(&mut r, strip_internal_headers);
        assert!(r.headers.get("x-tenant-id").is_none());
        assert!(r.headers.get("x-tenant-shard").is_none());
        assert!(r.headers.get("x-tenantish").is_some());
    }

    #[test]
    fn editing_headers_keeps_the_request_line_and_every_other_header() {
        let mut r = RequestHeader::build("POST", b"/wiki/a%20b?x=1", None).unwrap();
        r.append_header("Host", "a.test").unwrap();
        r.append_header("Accept", "text/plain").unwrap();
        r.append_header("Cookie", "a=1").unwrap();
        r.append_header("Cookie", "b=2").unwrap();
        edit_request_headers(&mut r, |h| {
            h.insert(X_TENANT_ID, HeaderValue::from_static("t1"));
        });
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap().to_ascii_lowercase();
        for line in [
            "host: a.test",
            "accept: text/plain",
            "cookie: a=1",
            "cookie: b=2",
            "x-tenant-id: t1",
        ] {
            assert!(
                wire.contains(&format!("{line}\r\n")),
                "{line} missing from {wire}"
            );
        }
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.raw_path(), b"/wiki/a%20b?x=1");

        // A target that is not UTF-8 goes upstream byte for byte.
        let mut r = RequestHeader::build("GET", b"/caf\xe9", None).unwrap();
        assert!(!r.raw_path_is_utf8());
        edit_request_headers(&mut r, |_| {});
        assert_eq!(r.raw_path(), b"/caf\xe9");
    }

    #[test]
    fn editing_response_headers_keeps_status_and_headers() {
        let mut resp = ResponseHeader::build(404, None).unwrap();
        resp.append_header("Content-Length", "3").unwrap();
        resp.append_header("Set-Cookie", "a=1").unwrap();
        resp.append_header("Set-Cookie", "b=2").unwrap();
        edit_response_headers(&mut resp, |h| {
            h.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        });
        assert_eq!(resp.status, 404);
        assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(resp.headers["content-length"], "3");
        assert_eq!(resp.headers["x-request-id"], "abc");
    }

    #[test]
    fn only_idempotent_bodiless_requests_are_replayable() {
        for (method, idempotent) in [
            ("GET", true),
            ("HEAD", true),
            ("PUT", true),
            ("DELETE", true),
            ("POST", false),
        ] {
            assert_eq!(is_idempotent(&method.parse().unwrap()), idempotent, "{method}");
        }
        let mut r = req("/", &["a.test"]);
        assert!(has_no_body(&r));
        r.insert_header("content-length", "0").unwrap();
        assert!(has_no_body(&r));
        r.insert_header("content-length", "12").unwrap();
        assert!(!has_no_body(&r));
        let mut chunked = req("/", &["a.test"]);
        chunked.insert_header("transfer-encoding", "chunked").unwrap();
        assert!(!has_no_body(&chunked));
    }

    /// The proxy renders its error answers by hand (no allocation per answer), in the one
    /// shape every API answers errors in.
    #[test]
    fn error_answers_have_the_shape_of_every_api_error() {
        let mut out = Vec::new();
        error_json(&mut out, reject(404, "unknown host"), "00ab");
        let parsed: crate::feed::ApiError = serde_json::from_slice(&out).unwrap();
        let mut expected = crate::feed::ApiError::new(http::StatusCode::NOT_FOUND, "unknown host");
        expected.request_id = Some("00ab".into());
        assert_eq!(parsed, expected);
        assert_eq!(serde_json::to_vec(&expected).unwrap(), out, "the same bytes too");
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let ids = Arc::new(RequestIds::new());
        let other = RequestIds::new();
        let take = |ids: &RequestIds| (0..3 * ID_BATCH + 5).map(|_| ids.next()).collect::<Vec<_>>();
        // Two threads take batches from one counter; another instance on this thread has its own.
        let there = std::thread::spawn({
            let ids = Arc::clone(&ids);
            move || take(&ids)
        });
        let mut all = take(&ids);
        all.extend(take(&other));
        all.extend(take(&ids));
        all.extend(there.join().unwrap());
        let n = all.len();
        for id in &all {
            assert_eq!(id.len(), 24);
            assert!(id.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        }
        let unique: std::collections::HashSet<_> = all.iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(unique.len(), n);
        let prefix = format!("{:08x}", other.prefix);
        assert!(take(&other)
            .iter()
            .all(|v| v.to_str().unwrap().starts_with(&prefix)));
    }
}
