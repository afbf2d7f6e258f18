//! The HTTP/2 rapid-reset defence measured over time. The HTTP/2 library bounds only the streams
//! reset before the edge took them *at once*, so a client that opens and resets one stream a
//! millisecond slips under it. Here every `RST_STREAM` a client sends is counted per connection
//! in a leaky bucket: it holds `max_resets_per_second` x the window and drains at
//! `max_resets_per_second`, so pacing at any rate above that average fills it, however the
//! resets are spread. A connection that overflows it is closed (and counted).
//!
//! The count comes from the frame headers of the bytes the client sends, read as they pass to
//! the HTTP/2 library: nine bytes looked at per frame, the clock read only on a reset, nothing on
//! the HTTP/1.1 path. A stream the client reset before the edge proxied it is not proxied at all
//! (see [`reset_by_client`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::EdgeMetrics;

/// The client connection preface that starts every HTTP/2 connection, before its first frame.
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: length (3 bytes), type, flags, stream id (4).
const FRAME_HEAD: usize = 9;
/// The frame type of `RST_STREAM`.
const RST_STREAM: u8 = 0x3;

/// How many resets a connection may send, and over what window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetLimit {
    /// The average rate allowed.
    pub per_second: u32,
    /// The window the rate is measured over: a burst of `per_second` x this is allowed.
    pub window: Duration,
}

impl ResetLimit {
    /// The bucket's size: the resets allowed at once.
    fn capacity(&self) -> f64 {
        f64::from(self.per_second) * self.window.as_secs_f64()
    }
}

/// Finds the frame boundaries in what a client sends and counts the `RST_STREAM` frames.
#[derive(Debug)]
struct FrameScan {
    /// Bytes still to pass before the next frame header: the preface, then each frame's payload.
    skip: usize,
    head: [u8; FRAME_HEAD],
    /// Bytes of `head` read so far.
    have: usize,
}

impl FrameScan {
    fn new() -> Self {
        FrameScan {
            skip: PREFACE_LEN,
            head: [0; FRAME_HEAD],
            have: 0,
        }
    }

    /// Reads on through `bytes`; returns the `RST_STREAM` frames whose header was completed.
    fn scan(&mut self, mut bytes: &[u8]) -> u32 {
        let mut resets = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEAD - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEAD {
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                resets += u32::from(h[3] == RST_STREAM);
                self.have = 0;
            }
        }
        resets
    }
}

/// A leaky bucket of resets.
#[derive(Debug)]
struct Bucket {
    level: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Adds `n` resets at `now`; false once the bucket overflows.
    fn add(&mut self, limit: &ResetLimit, n: u32, now: Instant) -> bool {
        if let Some(last) = self.last {
            let drained = now.saturating_duration_since(last).as_secs_f64() * f64::from(limit.per_second);
            self.level = (self.level - drained).max(0.0);
        }
        self.last = Some(now);
        self.level += f64::from(n);
        self.level <= limit.capacity()
    }
}

/// A client's HTTP/2 connection with its resets counted; fails every read once they overflow
/// the limit, which ends the connection.
pub(super) struct ResetGuard {
    inner: Stream,
    scan: FrameScan,
    bucket: Bucket,
    limit: ResetLimit,
    tripped: bool,
    metrics: EdgeMetrics,
}

impl ResetGuard {
    /// Wraps a client connection that negotiated HTTP/2.
    pub(super) fn wrap(inner: Stream, limit: ResetLimit, metrics: EdgeMetrics) -> Stream {
        Box::new(ResetGuard {
            inner,
            scan: FrameScan::new(),
            bucket: Bucket {
                level: 0.0,
                last: None,
            },
            limit,
            tripped: false,
            metrics,
        })
    }

    fn flooded() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 stream resets over the limit",
        )
    }
}

impl std::fmt::Debug for ResetGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetGuard")
            .field("inner", &self.inner)
            .field("level", &self.bucket.level)
            .field("tripped", &self.tripped)
            .finish()
    }
}

impl AsyncRead for ResetGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.tripped {
            return Poll::Ready(Err(Self::flooded()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let resets = this.scan.scan(&buf.filled()[before..]);
        if resets > 0 && !this.bucket.add(&this.limit, resets, Instant::now()) {
            this.tripped = true;
            this.metrics.http2_reset_floods.inc();
            let client = this
                .inner
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned());
            tracing::warn!(
                client = ?client,
                per_second = this.limit.per_second,
                window_ms = this.limit.window.as_millis() as u64,
                "closing an HTTP/2 connection: stream resets over the limit"
            );
            return Poll::Ready(Err(Self::flooded()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ResetGuard {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ResetGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for ResetGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ResetGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ResetGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ResetGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ResetGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ResetGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The start of an HTTP/2 request body read before the request is proxied: below pingora's
/// retry buffer (64 KiB) by more than one DATA frame (16 KiB), so none of it is dropped.
pub(super) const EARLY_BODY: usize = 32 * 1024;

/// Why an HTTP/2 request was not proxied after its early body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EarlyBody {
    /// The client reset the stream (or the connection went) before the request was complete.
    Reset,
    /// No body byte came within the body timeout.
    Stalled,
}

/// Reads an HTTP/2 request's body before it is proxied, until it ends or [`EARLY_BODY`] bytes
/// are held, into the retry buffer that pingora sends upstream ahead of the rest; so a stream
/// reset before its request is complete never reaches a shard, and a request of a small body
/// reaches it whole (nginx buffers request bodies for the same reason). Not for a client that
/// waits for `100 Continue`, nor for HTTP/1 (the lean path streams).
pub(super) async fn read_early_body(session: &mut ServerSession, timeout: Duration) -> Result<(), EarlyBody> {
    let ServerSession::H2(h2) = session else {
        return Ok(());
    };
    if h2.is_body_done() || h2.req_header().headers.contains_key(http::header::EXPECT) {
        return Ok(());
    }
    h2.enable_retry_buffering();
    while !h2.is_body_done() && h2.body_bytes_read() < EARLY_BODY {
        match tokio::time::timeout(timeout, h2.read_body_bytes()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(_)) => return Err(EarlyBody::Reset),
            Err(_) => return Err(EarlyBody::Stalled),
        }
    }
    Ok(())
}

/// Whether the client already reset the HTTP/2 stream of `session` (or its connection is gone):
/// such a request is not proxied. Looked at once, without waiting.
pub(super) fn reset_by_client(session: &mut ServerSession) -> bool {
    let ServerSession::H2(h2) = session else {
        return false;
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut idle = h2.idle();
    Pin::new(&mut idle).poll(&mut cx).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.resize(FRAME_HEAD + payload, 0xee);
        f
    }

    fn client_bytes() -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 12)); // SETTINGS
        for _ in 0..5 {
            bytes.extend(frame(0x1, 40)); // HEADERS
            bytes.extend(frame(RST_STREAM, 4));
        }
        // A DATA frame whose payload looks like a RST_STREAM header: not counted.
        let mut data = frame(0x0, 18);
        data[FRAME_HEAD..].copy_from_slice(&frame(RST_STREAM, 9)[..18]);
        bytes.extend(data);
        bytes
    }

    #[test]
    fn resets_are_counted_at_frame_boundaries_however_the_bytes_are_split() {
        let bytes = client_bytes();
        let mut whole = FrameScan::new();
        assert_eq!(whole.scan(&bytes), 5);
        for step in [1, 2, 7, 9, 13, 64] {
            let mut split = FrameScan::new();
            let n: u32 = bytes.chunks(step).map(|c| split.scan(c)).sum();
            assert_eq!(n, 5, "split every {step} bytes");
        }
    }

    #[test]
    fn pacing_under_the_burst_still_overflows_the_bucket() {
        let limit = ResetLimit {
            per_second: 20,
            window: Duration::from_secs(10),
        };
        let start = Instant::now();
        // One reset a millisecond: 200 allowed at once, drained at 20 a second.
        let mut bucket = Bucket {
            level: 0.0,
            last: None,
        };
        let overflowed = (0..1_000u64).find(|&i| !bucket.add(&limit, 1, start + Duration::from_millis(i)));
        assert!(
            matches!(overflowed, Some(i) if (200..215).contains(&i)),
            "{overflowed:?}"
        );
        // One reset every 60 ms (under 20 a second) never does.
        let mut bucket = Bucket {
            level: 0.0,
            last: None,
        };
        assert!((0..10_000u64).all(|i| bucket.add(&limit, 1, start + Duration::from_millis(60 * i))));
    }
}
