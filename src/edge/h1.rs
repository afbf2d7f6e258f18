//! The lean HTTP/1.1 path: a pingora-core [`ServerApp`] on the edge's listeners.
//!
//! pingora keeps the listeners, TLS, the runtimes and the server's life; this module serves the
//! HTTP/1.1 connections itself, one task per client connection whose buffers live as long as
//! the connection. A request head is parsed once, strictly (`parse`), the route is decided from
//! its slices by the same functions as the general proxy's ([`target`], [`place`]), and the
//! upstream request is the client's bytes minus the fields the edge drops plus the edge's own,
//! written with one vectored write on a connection from this thread's pool (`upstream`).
//! Bodies stream both ways and chunked bodies are re-framed as they go (`body`).
//!
//! What it does not serve itself goes, whole, to the general proxy (pingora-proxy with the same
//! [`EdgeProxy`]): HTTP/2 (by ALPN), HTTP/1.0 clients, `Expect`, `Upgrade`, `CONNECT`,
//! `OPTIONS *` and targets that are not UTF-8. The connection is handed over with the bytes
//! already read, and closes after that request.

pub mod body;
pub mod parse;
mod upstream;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io::IoSlice;
use std::net::IpAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use http::HeaderValue;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use self::body::{chunk_head, Buf, ChunkError, ChunkedDecoder, LAST_CHUNK};
use self::parse::{Framing, Limits, Parsed, Refusal, RequestHead, ResponseHead};
use self::upstream::Upstream;
use super::limits::Admission;
use super::pool::ShardPool;
use super::proxy::{
    decide, decide_missed, error_json, is_idempotent, reject, relocate, Decision, RequestIds, RequestView,
    RETRY_AFTER_FROZEN, RETRY_AFTER_OUTAGE,
};
use super::{EdgeProxy, EdgeState, Reject, Shared};
use crate::context::Entry;
use crate::tenant::MAX_HOST_LEN;

/// How the lean HTTP/1.1 path reads clients and talks to backends (`[http1]` in the edge
/// config). Times are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http1Config {
    /// Serve HTTP/1.1 on the lean path; off hands every connection to the general proxy.
    pub lean: bool,
    /// Longest request target; longer gets 414.
    pub max_request_target: usize,
    /// Longest request head; longer gets 431.
    pub max_header_bytes: usize,
    /// A client must send a whole request head within this, or get 408 and a close.
    pub header_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout_ms: u64,
    /// A body (either way) that sends nothing for this long is cut off.
    pub body_timeout_ms: u64,
    /// A backend must start its answer within this, or the client gets 504.
    pub upstream_timeout_ms: u64,
    /// A backend connection must be made within this.
    pub connect_timeout_ms: u64,
    /// An idle pooled backend connection is closed after this.
    pub upstream_idle_ms: u64,
}

impl Default for Http1Config {
    fn default() -> Self {
        Http1Config {
            lean: true,
            max_request_target: 8 * 1024,
            max_header_bytes: 32 * 1024,
            header_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            body_timeout_ms: 30_000,
            upstream_timeout_ms: 60_000,
            connect_timeout_ms: 1_000,
            upstream_idle_ms: 30_000,
        }
    }
}

impl Http1Config {
    /// Checks the values make sense.
    pub fn check(&self) -> Result<(), String> {
        if self.max_request_target < 16 || self.max_header_bytes < self.max_request_target {
            return Err("http1: max_request_target must be >= 16 and <= max_header_bytes".into());
        }
        let times = [
            self.header_timeout_ms,
            self.keepalive_timeout_ms,
            self.body_timeout_ms,
            self.upstream_timeout_ms,
            self.connect_timeout_ms,
            self.upstream_idle_ms,
        ];
        if times.contains(&0) {
            return Err("http1: every timeout must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// [`Http1Config`] as the connection loop reads it.
#[derive(Debug, Clone, Copy)]
struct Settings {
    limits: Limits,
    header: Duration,
    keepalive: Duration,
    body: Duration,
    upstream: Duration,
    connect: Duration,
    idle: Duration,
}

impl From<&Http1Config> for Settings {
    fn from(c: &Http1Config) -> Self {
        let ms = Duration::from_millis;
        Settings {
            limits: Limits {
                max_target: c.max_request_target,
                max_head: c.max_header_bytes,
            },
            header: ms(c.header_timeout_ms),
            keepalive: ms(c.keepalive_timeout_ms),
            body: ms(c.body_timeout_ms),
            upstream: ms(c.upstream_timeout_ms),
            connect: ms(c.connect_timeout_ms),
            idle: ms(c.upstream_idle_ms),
        }
    }
}

/// A client connection's first buffer; it grows to `max_header_bytes` for a large head.
const CLIENT_BUF: usize = 4096;

/// The edge's HTTP/1.1 service, with the general proxy beside it for what it hands over.
pub(super) struct H1App {
    shared: Arc<Shared>,
    general: Arc<HttpProxy<EdgeProxy>>,
    ids: RequestIds,
    lean: bool,
    settings: Settings,
}

impl H1App {
    pub(super) fn new(shared: Arc<Shared>, general: HttpProxy<EdgeProxy>, cfg: &Http1Config) -> Self {
        H1App {
            shared,
            general: Arc::new(general),
            ids: RequestIds::new(),
            lean: cfg.lean,
            settings: Settings::from(cfg),
        }
    }
}

#[async_trait]
impl ServerApp for H1App {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Past a cap the connection is closed unread (and counted).
        let Ok(_slot) = self.shared.conns.admit(client) else {
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let guarded =
                super::resets::ResetGuard::wrap(stream, self.shared.resets, self.shared.metrics.clone());
            return ServerApp::process_new(&self.general, guarded, shutdown).await;
        }
        if !self.lean {
            return ServerApp::process_new(&self.general, stream, shutdown).await;
        }
        let mut conn = Conn::new(client, stream.get_ssl_digest().is_some());
        let mut watch = shutdown.clone();
        if let Next::HandOff = self.serve(&mut stream, &mut conn, &mut watch).await {
            self.hand_off(stream, &conn.buf, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.general).await;
    }
}

/// What a connection's state is after its loop.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Close,
    /// The unread bytes start a request the general proxy serves.
    HandOff,
}

/// A client connection's state, kept across its requests.
struct Conn {
    buf: Buf,
    /// Request fields not forwarded (ranges of the head), reused per request.
    drop: Vec<Range<usize>>,
    /// Response fields not passed back.
    resp_drop: Vec<Range<usize>>,
    /// Small per-request text: a rewritten request line, an error answer.
    out: Vec<u8>,
    /// The upstream request head as written.
    wire: Vec<u8>,
    /// `x-forwarded-for`, `x-forwarded-proto`, `x-real-ip` and `forwarded`, rendered once per
    /// connection.
    forwarded: Vec<u8>,
    served: u64,
    /// When the connection last went idle (accepted, or answered).
    idle_since: tokio::time::Instant,
    /// The connection's one timer, for every wait it does (see [`expired`]).
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Conn {
    fn new(client: Option<IpAddr>, tls: bool) -> Self {
        let now = tokio::time::Instant::now();
        let mut forwarded = Vec::with_capacity(160);
        super::proxy::render_forwarded(client, tls, &mut forwarded);
        Conn {
            buf: Buf::new(CLIENT_BUF),
            drop: Vec::new(),
            resp_drop: Vec::new(),
            out: Vec::with_capacity(256),
            wire: Vec::new(),
            forwarded,
            served: 0,
            idle_since: now,
            timer: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(86_400))),
        }
    }
}

/// Why no request head was read.
enum NoHead {
    /// The client closed, or idled out, between requests: close quietly.
    Quiet,
    /// Refused: answer and close.
    Refused(Refusal),
    /// Part of a head, then nothing in time: 408.
    TimedOut,
}

/// One request on the lean path, as it goes.
struct Exchange {
    id: HeaderValue,
    state: Arc<EdgeState>,
    product: Option<usize>,
    tenant: Option<TenantLine>,
    pool: Option<Arc<ShardPool>>,
    /// The normalised host, for `x-forwarded-host` and a re-resolve after a move.
    host: [u8; MAX_HOST_LEN],
    host_len: usize,
    rewritten: Option<String>,
    status: u16,
    upstream: Option<Duration>,
    /// When the backend's answer head arrived.
    answered: Option<Instant>,
    /// The client connection cannot carry another request.
    close: bool,
    /// Its place among the tenant's requests in flight on the shard (until the exchange ends).
    admission: Admission,
}

/// The tenant's `x-tenant-id` and `x-tenant-context-version` values, copied out of its cache
/// entry (ids are at most 63 bytes, versions 20 digits).
struct TenantLine {
    id: [u8; 64],
    id_len: u8,
    version: [u8; 20],
    version_len: u8,
}

impl TenantLine {
    fn of(entry: &Entry) -> Self {
        let mut line = TenantLine {
            id: [0; 64],
            id_len: 0,
            version: [0; 20],
            version_len: 0,
        };
        let id = entry.id_header.as_bytes();
        let n = id.len().min(64);
        line.id[..n].copy_from_slice(&id[..n]);
        line.id_len = n as u8;
        let v = entry.version_header.as_bytes();
        let n = v.len().min(20);
        line.version[..n].copy_from_slice(&v[..n]);
        line.version_len = n as u8;
        line
    }

    fn id(&self) -> &[u8] {
        &self.id[..usize::from(self.id_len)]
    }

    fn version(&self) -> &[u8] {
        &self.version[..usize::from(self.version_len)]
    }
}

/// How forwarding a body failed.
#[derive(Debug)]
enum BodyError {
    /// The sender closed, failed or stalled.
    Read,
    /// The sender framed it wrongly.
    Framing(ChunkError),
    /// The receiver failed.
    Write,
}

impl H1App {
    /// Serves requests until the connection closes, or one must go to the general proxy.
    async fn serve<S>(&self, io: &mut S, conn: &mut Conn, watch: &mut ShutdownWatch) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // One future for the connection's life, polled only while it idles between requests:
        // pingora stopping (after the drain, see `edge::Drain`) closes an idle connection. An
        // idle connection is not in flight, so it never holds the drain up; a request on it
        // during the drain is answered with `connection: close`.
        let mut shutdown: Shutdown<'_> = Box::pin(async move {
            while watch.changed().await.is_ok() {
                if *watch.borrow() {
                    return;
                }
            }
            // The server is gone without a shutdown signal: pingora drops its tasks.
            std::future::pending::<()>().await;
        });
        loop {
            let head = match self.read_head(io, conn, &mut shutdown).await {
                Ok(head) => head,
                Err(NoHead::Quiet) => return Next::Close,
                Err(NoHead::Refused(r)) => {
                    self.refuse_and_close(io, conn, r.status, r.reason).await;
                    return Next::Close;
                }
                Err(NoHead::TimedOut) => {
                    self.refuse_and_close(io, conn, 408, "request head not received in time")
                        .await;
                    return Next::Close;
                }
            };
            if head.special.is_some() {
                return Next::HandOff;
            }
            conn.served += 1;
            let close = self.one(io, conn, &head).await;
            if close {
                linger(io, &mut conn.buf).await;
                return Next::Close;
            }
        }
    }

    /// Reads the next request head into the connection's buffer.
    async fn read_head<S>(
        &self,
        io: &mut S,
        conn: &mut Conn,
        shutdown: &mut Shutdown<'_>,
    ) -> Result<RequestHead, NoHead>
    where
        S: AsyncRead + Unpin,
    {
        let limits = self.settings.limits;
        // The first request's head is timed from the accept; later ones from their first byte.
        let mut deadline = (conn.served == 0).then(|| conn.idle_since + self.settings.header);
        loop {
            if !conn.buf.is_empty() {
                match parse::request(conn.buf.filled(), limits, &mut conn.drop) {
                    Ok(Parsed::Complete(head)) => return Ok(head),
                    Ok(Parsed::Partial) => {}
                    Err(r) => return Err(NoHead::Refused(r)),
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.settings.header);
            }
            let partial = !conn.buf.is_empty();
            let space = conn.buf.space(1024, limits.max_head + 1);
            if space.is_empty() {
                return Err(NoHead::Refused(Refusal {
                    status: 431,
                    reason: "request head too large",
                }));
            }
            let idle = deadline.is_none();
            let until = deadline.unwrap_or(conn.idle_since + self.settings.keepalive);
            let read = tokio::select! {
                biased;
                read = io.read(space) => read,
                () = expired(&mut conn.timer, until) => {
                    return Err(if partial { NoHead::TimedOut } else { NoHead::Quiet });
                }
                () = shutdown.as_mut(), if idle => return Err(NoHead::Quiet),
            };
            match read {
                Ok(0) | Err(_) => return Err(NoHead::Quiet),
                Ok(n) => conn.buf.filled_by(n),
            }
        }
    }

    /// Serves one request; true when the connection must close afterwards.
    async fn one<S>(&self, io: &mut S, conn: &mut Conn, head: &RequestHead) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let _busy = self.shared.drain.busy();
        let mut ex = Exchange {
            id: self.ids.next(),
            state: self.shared.state.load_full(),
            product: None,
            tenant: None,
            pool: None,
            host: [0; MAX_HOST_LEN],
            host_len: 0,
            rewritten: None,
            status: 0,
            upstream: None,
            answered: None,
            close: head.close || self.shared.drain.draining(),
            admission: Admission::default(),
        };
        let decided = self.decide(conn.buf.filled(), head, &mut ex).await;
        match decided {
            Ok(()) => self.forward(io, conn, head, &mut ex).await,
            Err(r) => {
                // A malformed request may have been framed otherwise by its sender: close.
                ex.close |= r.status == 400;
                self.fail(io, conn, head, &mut ex, r).await;
            }
        }
        self.log(&ex, head);
        conn.idle_since = ex
            .answered
            .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
        ex.close
    }

    /// Steps 1-4 of the request path, from the head's slices.
    async fn decide(&self, buf: &[u8], head: &RequestHead, ex: &mut Exchange) -> Result<(), Reject> {
        let view = view(buf, head);
        let state = ex.state.clone();
        // A hit is placed on the borrowed entry, copying the two values the head needs: no
        // reference count, no write to the entry's memory (a cold line with many tenants).
        let cache = &self.shared.cache;
        let mut lowered = [0u8; MAX_HOST_LEN];
        let ((host, product, rewritten), decision) =
            decide(&state, cache, &view, &head.method, &mut lowered, |e| {
                TenantLine::of(e)
            })?;
        // The host is the request's own bytes when already normal, else in `lowered`; the
        // exchange keeps a copy for its forwarded headers.
        let host_len = host.len();
        ex.host[..host_len].copy_from_slice(host.as_bytes());
        ex.product = Some(product.index);
        ex.rewritten = rewritten;
        let (pool, admission, tenant) = match decision {
            Decision::Placed(pool, admission, tenant) => (pool, admission, tenant),
            Decision::Missed => {
                let (pool, admission, entry) =
                    decide_missed(&state, cache, host, product, &head.method).await?;
                (pool, admission, TenantLine::of(&entry))
            }
        };
        ex.admission = admission;
        ex.host_len = host_len;
        ex.pool = Some(pool);
        ex.tenant = Some(tenant);
        Ok(())
    }

    /// Sends the request to a backend of the chosen shard and the answer back to the client.
    async fn forward<S>(&self, io: &mut S, conn: &mut Conn, head: &RequestHead, ex: &mut Exchange)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let bodyless = head.framing == Framing::Empty;
        let replayable = bodyless && is_idempotent(&head.method);
        let mut replays = 0u8;
        loop {
            let Some(pool) = ex.pool.clone() else { return };
            let sent = self.send(io, conn, head, ex, &pool, replayable).await;
            let (mut up, resp, flight_backend) = match sent {
                Ok(ok) => ok,
                Err(r) => return self.fail(io, conn, head, ex, r).await,
            };
            if resp.status == 421 {
                if let Some(version) = resp.tenant_moved.clone() {
                    let version = std::str::from_utf8(&up.buf.filled()[version])
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    // The fence's answer is not passed on; its connection is not reused.
                    drop(up);
                    drop(flight_backend);
                    // One replay at most, as on the general path: a second fence is a 503.
                    if replays == 0 && self.moved(ex, head, version, replayable).await {
                        replays += 1;
                        continue;
                    }
                    if replays > 0 {
                        self.count_moved("unresolved");
                    }
                    let r = Reject {
                        status: 503,
                        reason: "tenant moved; retry the request",
                        retry_after: Some(RETRY_AFTER_FROZEN),
                    };
                    return self.fail(io, conn, head, ex, r).await;
                }
            }
            if bodyless {
                conn.buf.consume(head.len);
            }
            let reusable = self.respond(io, conn, ex, &mut up, &resp).await;
            let addr = flight_backend.backend().addr;
            drop(flight_backend);
            if reusable {
                // When the answer's head came: close enough to when the connection went idle.
                let at = ex.answered.unwrap_or_else(Instant::now);
                upstream::checkin(addr, up, self.settings.idle, at);
            }
            return;
        }
    }

    /// A shard said the tenant moved: refetch, re-place (freeze and health checked again), and
    /// say whether to send the request again. Counted by outcome.
    async fn moved(&self, ex: &mut Exchange, head: &RequestHead, version: u64, replayable: bool) -> bool {
        let host = std::str::from_utf8(&ex.host[..ex.host_len]).unwrap_or("");
        let relocated = match (ex.product, &ex.pool) {
            (Some(product), Some(old)) if !host.is_empty() => {
                relocate(&self.shared, &ex.state, host, product, old, version, &head.method).await
            }
            _ => None,
        };
        let outcome = match (&relocated, replayable) {
            (Some(_), true) => "replayed",
            (Some(_), false) => "rejected",
            (None, _) => "unresolved",
        };
        self.count_moved(outcome);
        match relocated {
            Some((entry, pool, admission)) if replayable => {
                ex.tenant = Some(TenantLine::of(&entry));
                ex.pool = Some(pool);
                ex.admission = admission;
                true
            }
            _ => false,
        }
    }

    /// Counts one shard answer "tenant moved" by what came of it.
    fn count_moved(&self, outcome: &str) {
        self.shared
            .metrics
            .tenant_moved
            .with_label_values(&[outcome])
            .inc();
    }

    /// Picks a backend, sends the head and the body, and reads the answer's head. Connection
    /// failures move on to an untried backend; a reused connection that fails before any byte
    /// of an answer is retried once on a fresh one when the request can be sent again.
    async fn send<S>(
        &self,
        io: &mut S,
        conn: &mut Conn,
        head: &RequestHead,
        ex: &mut Exchange,
        pool: &Arc<ShardPool>,
        replayable: bool,
    ) -> Result<(Upstream, ResponseHead, super::InFlight), Reject>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut tried = 0u64;
        let mut fresh_retry = false;
        let state = Arc::clone(&ex.state);
        let health = &state.health;
        loop {
            let Some((index, backend)) = pool.pick(tried) else {
                return Err(Reject {
                    status: if tried == 0 { 503 } else { 502 },
                    reason: if tried == 0 {
                        "no healthy backend for the shard"
                    } else {
                        "backend failed"
                    },
                    retry_after: (tried == 0).then_some(RETRY_AFTER_OUTAGE),
                });
            };
            let backend = backend.clone();
            let flight = backend.begin();
            let pooled = if fresh_retry {
                None
            } else {
                upstream::checkout(backend.addr)
            };
            let mut up = match pooled {
                Some(up) => up,
                None => match upstream::connect(backend.addr, self.settings.connect).await {
                    Ok(up) => up,
                    Err(e) => {
                        tracing::debug!(backend = %backend.addr, error = %e, "connect failed");
                        self.shared.metrics.upstream_connect_failures.inc();
                        backend.connect_failed(health);
                        if index < 64 {
                            tried |= 1 << index;
                        }
                        fresh_retry = false;
                        continue;
                    }
                },
            };
            backend.connected();
            let started = Instant::now();
            let wrote = self.write_request(conn, head, ex, &mut up).await;
            let result = match wrote {
                Ok(()) => match self.forward_request_body(io, conn, head, &mut up).await {
                    Ok(()) => self.read_response_head(conn, head, &mut up, started).await,
                    Err(BodyError::Framing(e)) => {
                        tracing::debug!(error = %e, "client body refused");
                        return Err(reject(400, "malformed chunked body"));
                    }
                    Err(BodyError::Read) => return Err(reject(400, "request body incomplete")),
                    // The backend may have answered before taking the whole body.
                    Err(BodyError::Write) => self.read_response_head(conn, head, &mut up, started).await,
                },
                Err(e) => Err(Upstream502::Io(e)),
            };
            match result {
                Ok(resp) => {
                    let now = Instant::now();
                    ex.upstream = Some(now.duration_since(started));
                    ex.answered = Some(now);
                    return Ok((up, resp, flight));
                }
                Err(Upstream502::Io(e)) if up.reused && replayable && !fresh_retry => {
                    // The backend closed a pooled connection before reading this request.
                    tracing::debug!(backend = %backend.addr, error = %e, "reused connection failed; retrying fresh");
                    fresh_retry = true;
                }
                Err(Upstream502::Io(e)) => {
                    tracing::debug!(backend = %backend.addr, error = %e, "backend failed");
                    return Err(reject(502, "backend failed"));
                }
                Err(Upstream502::TimedOut) => return Err(reject(504, "backend did not answer in time")),
                Err(Upstream502::Refused(r)) => {
                    tracing::warn!(backend = %backend.addr, reason = r.reason, "backend answer refused");
                    return Err(reject(502, "backend answer malformed"));
                }
            }
        }
    }

    /// Writes the upstream request head (and any body bytes already read) in one vectored
    /// write: the client's bytes minus the dropped fields, plus the edge's fields. The head is
    /// built in one contiguous buffer: the kernel's cost per iovec is above a user-space copy's.
    async fn write_request(
        &self,
        conn: &mut Conn,
        head: &RequestHead,
        ex: &Exchange,
        up: &mut Upstream,
    ) -> std::io::Result<()> {
        let buf = conn.buf.filled();
        let wire = &mut conn.wire;
        wire.clear();
        if ex.rewritten.is_some() || head.authority.is_some() {
            wire.extend_from_slice(head.method.as_str().as_bytes());
            wire.push(b' ');
            match &ex.rewritten {
                Some(path) => wire.extend_from_slice(path.as_bytes()),
                None => {
                    if head.path.is_empty() {
                        wire.push(b'/');
                    }
                    wire.extend_from_slice(&buf[head.path.clone()]);
                    if let Some(q) = &head.query {
                        wire.push(b'?');
                        wire.extend_from_slice(&buf[q.clone()]);
                    }
                }
            }
            wire.extend_from_slice(b" HTTP/1.1\r\n");
        } else {
            wire.extend_from_slice(&buf[head.line.start..head.fields]);
        }
        let mut at = head.fields;
        for d in &conn.drop {
            wire.extend_from_slice(&buf[at..d.start]);
            at = d.end;
        }
        wire.extend_from_slice(&buf[at..head.len - 2]);
        if let Some(t) = &ex.tenant {
            for part in [
                &b"x-tenant-id: "[..],
                t.id(),
                b"\r\nx-tenant-context-version: ",
                t.version(),
                b"\r\n",
            ] {
                wire.extend_from_slice(part);
            }
        }
        if let Some(pool) = &ex.pool {
            for part in [&b"x-tenant-shard: "[..], pool.shard_header.as_bytes(), b"\r\n"] {
                wire.extend_from_slice(part);
            }
        }
        for part in [
            &b"x-request-id: "[..],
            ex.id.as_bytes(),
            b"\r\nx-forwarded-host: ",
            &ex.host[..ex.host_len],
            b"\r\n",
            &conn.forwarded,
            b"\r\n",
        ] {
            wire.extend_from_slice(part);
        }
        let body_now = buffered_body(head.framing, buf.len() - head.len);
        let mut out = [
            IoSlice::new(wire),
            IoSlice::new(&buf[head.len..head.len + body_now]),
        ];
        let parts = if body_now == 0 { 1 } else { 2 };
        write_all_vectored(&mut up.io, &mut out[..parts]).await
    }

    /// Streams the rest of the request body to the backend. The head is consumed here when
    /// there is a body (a request with a body is never sent twice).
    async fn forward_request_body<S>(
        &self,
        io: &mut S,
        conn: &mut Conn,
        head: &RequestHead,
        up: &mut Upstream,
    ) -> Result<(), BodyError>
    where
        S: AsyncRead + Unpin,
    {
        if head.framing == Framing::Empty {
            // The head stays in the buffer until the answer: a moved tenant's request is sent
            // again from it.
            return Ok(());
        }
        // What `write_request` sent with the head is not sent again.
        let already = buffered_body(head.framing, conn.buf.filled().len() - head.len);
        conn.buf.consume(head.len + already);
        copy_body(
            io,
            &mut conn.buf,
            head.framing,
            already,
            &mut up.io,
            self.settings.body,
        )
        .await
    }

    /// Reads the backend's answer head, skipping interim (1xx) answers.
    async fn read_response_head(
        &self,
        conn: &mut Conn,
        head: &RequestHead,
        up: &mut Upstream,
        started: Instant,
    ) -> Result<ResponseHead, Upstream502> {
        let deadline = tokio::time::Instant::from_std(started) + self.settings.upstream;
        loop {
            if !up.buf.is_empty() {
                match parse::response(
                    up.buf.filled(),
                    upstream::UPSTREAM_BUF,
                    &head.method,
                    &mut conn.resp_drop,
                    self.shared.show_backend_headers,
                    self.shared.show_backend_headers && self.shared.server_line.is_none(),
                ) {
                    Ok(Parsed::Complete(resp)) if (100..200).contains(&resp.status) => {
                        if resp.status == 101 {
                            return Err(Upstream502::Refused(Refusal {
                                status: 502,
                                reason: "101 without an upgrade asked for",
                            }));
                        }
                        up.buf.consume(resp.len);
                        continue;
                    }
                    Ok(Parsed::Complete(resp)) => return Ok(resp),
                    Ok(Parsed::Partial) => {}
                    Err(r) => return Err(Upstream502::Refused(r)),
                }
            }
            let had = !up.buf.is_empty();
            let space = up.buf.space(1024, upstream::UPSTREAM_BUF);
            if space.is_empty() {
                return Err(Upstream502::Refused(Refusal {
                    status: 502,
                    reason: "response head too large",
                }));
            }
            let read = tokio::select! {
                biased;
                read = up.io.read(space) => Ok(read),
                () = expired(&mut conn.timer, deadline) => Err(()),
            };
            match read {
                Ok(Ok(0)) if had => {
                    return Err(Upstream502::Refused(Refusal {
                        status: 502,
                        reason: "backend closed inside its answer head",
                    }))
                }
                Ok(Ok(0)) => {
                    return Err(Upstream502::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "backend closed before answering",
                    )))
                }
                Ok(Ok(n)) => up.buf.filled_by(n),
                Ok(Err(e)) => return Err(Upstream502::Io(e)),
                Err(_) => return Err(Upstream502::TimedOut),
            }
        }
    }

    /// Passes the answer to the client: its head minus hop-by-hop fields plus the request id,
    /// then its body. True when the backend connection can be pooled again.
    async fn respond<S>(
        &self,
        io: &mut S,
        conn: &mut Conn,
        ex: &mut Exchange,
        up: &mut Upstream,
        resp: &ResponseHead,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        ex.status = resp.status;
        // Draining: the answer tells the client to go elsewhere for its next request.
        if resp.framing == Framing::Close || self.shared.drain.draining() {
            ex.close = true;
        }
        let buf = up.buf.filled();
        let body_now = buffered_body(resp.framing, buf.len() - resp.len);
        let mut slices = Slices::<40>::default();
        slices.push(&buf[..resp.fields]);
        let mut at = resp.fields;
        for d in &conn.resp_drop {
            slices.push(&buf[at..d.start]);
            at = d.end;
        }
        slices.push(&buf[at..resp.len - 2]);
        if let Some(server) = &self.shared.server_line {
            slices.push(server);
        }
        slices.push(b"x-request-id: ");
        slices.push(ex.id.as_bytes());
        slices.push(if ex.close {
            b"\r\nconnection: close\r\n\r\n"
        } else {
            b"\r\n\r\n"
        });
        slices.push(&buf[resp.len..resp.len + body_now]);
        if slices.overflowed {
            // A backend sending dozens of hop-by-hop fields: its answer is refused.
            self.answer(io, conn, ex, reject(502, "backend answer malformed"))
                .await;
            return false;
        }
        if write_all_vectored(io, slices.as_mut()).await.is_err() {
            ex.close = true;
            return false;
        }
        up.buf.consume(resp.len + body_now);
        let result = copy_body(
            &mut up.io,
            &mut up.buf,
            resp.framing,
            body_now,
            io,
            self.settings.body,
        )
        .await;
        let flushed = io.flush().await.is_ok();
        match result {
            Ok(()) if flushed => resp.keep_alive,
            Ok(()) => {
                ex.close = true;
                false
            }
            Err(e) => {
                tracing::debug!(error = ?e, "answer body cut off");
                ex.close = true;
                false
            }
        }
    }

    /// Answers a request the edge could not forward (or not finish forwarding) with its JSON
    /// error. A body that was not read whole cannot be skipped safely: the connection closes.
    /// A bodiless request's head is done with.
    async fn fail<S>(&self, io: &mut S, conn: &mut Conn, head: &RequestHead, ex: &mut Exchange, r: Reject)
    where
        S: AsyncWrite + Unpin,
    {
        let bodyless = head.framing == Framing::Empty;
        ex.close |= !bodyless;
        self.answer(io, conn, ex, r).await;
        if bodyless {
            conn.buf.consume(head.len);
        }
    }

    /// Answers a request with the edge's JSON error shape.
    async fn answer<S>(&self, io: &mut S, conn: &mut Conn, ex: &mut Exchange, r: Reject)
    where
        S: AsyncWrite + Unpin,
    {
        ex.status = r.status;
        let id = ex.id.to_str().unwrap_or("");
        write_error(&mut conn.out, r, id, ex.close, self.shared.server_line.as_deref());
        if io.write_all(&conn.out).await.is_err() || io.flush().await.is_err() {
            ex.close = true;
        }
    }

    /// Refuses what was read with `status` and closes: the framing can no longer be trusted.
    async fn refuse_and_close<S>(&self, io: &mut S, conn: &mut Conn, status: u16, reason: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = self.ids.next();
        write_error(
            &mut conn.out,
            Reject {
                status,
                reason,
                retry_after: None,
            },
            id.to_str().unwrap_or(""),
            true,
            self.shared.server_line.as_deref(),
        );
        let _ = io.write_all(&conn.out).await;
        let _ = io.flush().await;
        linger(io, &mut conn.buf).await;
        let state = self.shared.state.load();
        state.count(None, status, None);
        if self.shared.access_log {
            tracing::info!(target: "tenant_edge::access", status, reason, request_id = id.to_str().ok(), "refused");
        }
    }

    /// Metrics and the access log of one request.
    fn log(&self, ex: &Exchange, head: &RequestHead) {
        ex.state.count(ex.product, ex.status, ex.upstream);
        if self.shared.access_log {
            tracing::info!(
                target: "tenant_edge::access",
                method = %head.method,
                status = ex.status,
                tenant = ex.tenant.as_ref().and_then(|t| std::str::from_utf8(t.id()).ok()),
                shard = ex.pool.as_ref().map(|p| p.shard.as_str()),
                request_id = ex.id.to_str().ok(),
            );
        }
    }

    /// Gives the connection, with the bytes already read, to the general proxy for one request.
    async fn hand_off(&self, stream: Stream, buf: &Buf, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(None);
        session.set_pipelined_prefix(BytesMut::from(buf.filled()));
        let _ = HttpServerApp::process_new_http(&self.general, session, shutdown).await;
    }
}

/// What the decision reads of a head parsed from `buf`: its slices, nothing copied.
pub fn view<'b>(buf: &'b [u8], head: &RequestHead) -> RequestView<'b> {
    let slice = |r: &Range<usize>| &buf[r.clone()];
    // The parser hands targets that are not UTF-8 to the general proxy.
    let text = |r: &Range<usize>| std::str::from_utf8(&buf[r.clone()]).unwrap_or("");
    RequestView {
        host: head.host.as_ref().map(slice),
        hosts_repeated: head.hosts > 1,
        authority: head.authority.as_ref().map(slice),
        path: if head.path.is_empty() {
            "/"
        } else {
            text(&head.path)
        },
        query: head.query.as_ref().map(text),
    }
}

/// The server's shutdown, as one future per connection.
type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Waits on a connection's one timer until `deadline`.
///
/// The timer is moved earlier when a wait needs it, never later: a wait with a later deadline
/// lets it fire, sees that its own deadline is not reached, and only then sets it again. So a
/// connection whose deadlines move forward with every request (the keep-alive wait, a backend's
/// answer) re-arms its timer about once per timeout, not once per request.
async fn expired(timer: &mut Pin<Box<tokio::time::Sleep>>, deadline: tokio::time::Instant) {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    loop {
        timer.as_mut().await;
        if timer.deadline() >= deadline {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

/// Closes our side, then reads and discards what the client is still sending for a moment, so
/// that the answer is not lost to a reset (a close with unread bytes resets the connection).
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, buf: &mut Buf) {
    const LINGER: Duration = Duration::from_millis(500);
    const MAX_DISCARD: usize = 256 * 1024;
    if io.shutdown().await.is_err() {
        return;
    }
    let n = buf.filled().len();
    buf.consume(n);
    let mut discarded = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < MAX_DISCARD {
            let space = buf.space(1, CLIENT_BUF);
            match io.read(space).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// Why no answer head came from a backend.
#[derive(Debug)]
enum Upstream502 {
    Io(std::io::Error),
    TimedOut,
    Refused(Refusal),
}

/// The edge's own answer: status line, JSON body, the configured `server` line, and
/// `connection: close` when closing.
fn write_error(out: &mut Vec<u8>, r: Reject, id: &str, close: bool, server: Option<&[u8]>) {
    use std::io::Write;
    let mut body = Vec::with_capacity(96);
    error_json(&mut body, r, id);
    let reason = http::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {id}\r\n",
        r.status,
        body.len()
    );
    if let Some(after) = r.retry_after {
        let _ = write!(out, "retry-after: {after}\r\n");
    }
    if let Some(server) = server {
        out.extend_from_slice(server);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

/// Up to `N` slices for one vectored write; pushing more marks it overflowed.
struct Slices<'a, const N: usize> {
    slices: [IoSlice<'a>; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for Slices<'_, N> {
    fn default() -> Self {
        Slices {
            slices: [IoSlice::new(&[]); N],
            len: 0,
            overflowed: false,
        }
    }
}

impl<'a, const N: usize> Slices<'a, N> {
    fn push(&mut self, s: &'a [u8]) {
        if s.is_empty() {
            return;
        }
        if self.len == N {
            self.overflowed = true;
            return;
        }
        self.slices[self.len] = IoSlice::new(s);
        self.len += 1;
    }

    fn as_mut(&mut self) -> &mut [IoSlice<'a>] {
        &mut self.slices[..self.len]
    }
}

/// Writes every slice, however the writes split them.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// How many bytes of a body with `framing` are already in the buffer, `available` of them
/// following the head: all of a close-delimited body's, up to a length, none of a chunked
/// body's (the decoder reads those from the buffer itself).
fn buffered_body(framing: Framing, available: usize) -> usize {
    match framing {
        Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).min(available),
        Framing::Close => available,
        Framing::Empty | Framing::Chunked => 0,
    }
}

/// Forwards a body framed by `framing`, `already` bytes of which were sent with its head: the
/// rest of `buf` first, then from `src`, re-framed as it came.
async fn copy_body<R, W>(
    src: &mut R,
    buf: &mut Buf,
    framing: Framing,
    already: usize,
    dst: &mut W,
    timeout: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => copy_length(src, buf, n - already as u64, dst, timeout).await,
        Framing::Chunked => copy_chunked(src, buf, dst, timeout).await,
        Framing::Close => copy_to_end(src, buf, dst, timeout).await,
    }
}

/// Reads into `buf` within `timeout`; 0 bytes is an error (the sender stopped early).
async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut Buf,
    timeout: Duration,
) -> Result<usize, BodyError> {
    let space = buf.space(8 * 1024, 64 * 1024);
    match tokio::time::timeout(timeout, src.read(space)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Err(BodyError::Read),
        Ok(Ok(n)) => {
            buf.filled_by(n);
            Ok(n)
        }
    }
}

/// Copies `left` body bytes: first those in `buf`, then from `src`.
async fn copy_length<R, W>(
    src: &mut R,
    buf: &mut Buf,
    mut left: u64,
    dst: &mut W,
    timeout: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while left > 0 {
        if buf.is_empty() {
            fill(src, buf, timeout).await?;
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(buf.filled().len());
        dst.write_all(&buf.filled()[..take])
            .await
            .map_err(|_| BodyError::Write)?;
        buf.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// Decodes a chunked body from `buf` and `src` and writes it re-framed, chunk by chunk as
/// data arrives, ending with the last chunk and no trailers.
async fn copy_chunked<R, W>(
    src: &mut R,
    buf: &mut Buf,
    dst: &mut W,
    timeout: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = ChunkedDecoder::default();
    loop {
        while !buf.is_empty() {
            let step = decoder.step(buf.filled()).map_err(BodyError::Framing)?;
            if let Some(data) = step.data {
                let mut size = [0u8; 18];
                let data = &buf.filled()[data];
                let mut slices = [
                    IoSlice::new(chunk_head(data.len(), &mut size)),
                    IoSlice::new(data),
                    IoSlice::new(b"\r\n"),
                ];
                write_all_vectored(dst, &mut slices)
                    .await
                    .map_err(|_| BodyError::Write)?;
            }
            buf.consume(step.consumed);
            if decoder.is_done() {
                return dst.write_all(LAST_CHUNK).await.map_err(|_| BodyError::Write);
            }
        }
        fill(src, buf, timeout).await?;
    }
}

/// Copies a body delimited by the sender's close.
async fn copy_to_end<R, W>(
    src: &mut R,
    buf: &mut Buf,
    dst: &mut W,
    timeout: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let space = buf.space(8 * 1024, 64 * 1024);
        match tokio::time::timeout(timeout, src.read(space)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => buf.filled_by(n),
            Ok(Err(_)) | Err(_) => return Err(BodyError::Read),
        }
        dst.write_all(buf.filled()).await.map_err(|_| BodyError::Write)?;
        let n = buf.filled().len();
        buf.consume(n);
    }
}
