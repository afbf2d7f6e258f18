use proptest::prelude::*;

use super::body::{chunk_head, Buf, ChunkError, ChunkedDecoder};
use super::parse::{self, Framing, Limits, Parsed, Special};

const LIMITS: Limits = Limits {
    max_target: 64,
    max_head: 512,
};

fn req(raw: &str) -> Result<parse::RequestHead, u16> {
    let mut drop = Vec::new();
    match parse::request(raw.as_bytes(), LIMITS, &mut drop) {
        Ok(Parsed::Complete(h)) => Ok(h),
        Ok(Parsed::Partial) => Err(0),
        Err(r) => Err(r.status),
    }
}

fn dropped(raw: &str) -> Vec<String> {
    let mut drop = Vec::new();
    let Ok(Parsed::Complete(_)) = parse::request(raw.as_bytes(), LIMITS, &mut drop) else {
        panic!("not complete: {raw:?}");
    };
    drop.iter().map(|r| raw[r.clone()].to_owned()).collect()
}

#[test]
fn framing_of_requests() {
    let h = req("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 12\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::Length(12));
    let h = req("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked \r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    let h = req("GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::Empty);
    for bad in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
        "Content-Length: 3\r\nContent-Length: 3",
        "Content-Length: 3, 3",
        "Content-Length: +3",
        "Content-Length: 0x3",
        "Content-Length: 1234567890123456789",
        "Content-Length:",
        "Transfer-Encoding : chunked",
        "X-A: a\r\n b",
        "X-A: a\rb",
        "X-A: a\x00b",
        "X-A: a\x7fb",
        "Connection: close, a@b",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a.test\r\n{bad}\r\n\r\n");
        assert_eq!(req(&raw).map(|_| ()), Err(400), "{bad:?}");
    }
}

#[test]
fn request_lines_and_limits() {
    assert_eq!(req("GET / HTTP/1.2\r\nHost: a\r\n\r\n").map(|_| ()), Err(400));
    assert_eq!(
        req("GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()),
        Err(400)
    );
    assert_eq!(req("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()), Err(400));
    assert_eq!(req("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()), Err(400));
    assert_eq!(req("GET / HTTP/1.1\nHost: a\n\n").map(|_| ()), Err(400));
    for bare in [
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: 1\nY: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(req(bare).map(|_| ()), Err(400), "{bare:?}");
    }
    assert!(req("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    assert_eq!(req("GET / HTTP/1.1\r\n\r\n").map(|_| ()), Err(400), "no Host");
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(80));
    assert_eq!(req(&long).map(|_| ()), Err(414));
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(600));
    assert_eq!(req(&big).map(|_| ()), Err(431));
    // A head still coming in: partial until it passes the limit.
    assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").map(|_| ()), Err(0));
    assert_eq!(req(&format!("GET /{}", "a".repeat(600))).map(|_| ()), Err(414));
    assert_eq!(
        req(&format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(600))).map(|_| ()),
        Err(431)
    );
}

#[test]
fn targets_and_special_requests() {
    let raw = "GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let h = req(raw).unwrap();
    assert_eq!(&raw[h.authority.clone().unwrap()], "a.test");
    assert_eq!(&raw[h.path.clone()], "/x");
    assert_eq!(&raw[h.query.clone().unwrap()], "y=1");
    let raw = "GET HTTP://a.test?q HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let h = req(raw).unwrap();
    assert!(h.path.is_empty());
    assert_eq!(&raw[h.query.clone().unwrap()], "q");
    assert_eq!(
        req("GET http://u@a.test/ HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()),
        Err(400)
    );
    let special = |raw: &str| req(raw).unwrap().special;
    assert_eq!(special("GET / HTTP/1.0\r\n\r\n"), Some(Special::Http10));
    assert_eq!(
        special("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
        Some(Special::Expect)
    );
    assert_eq!(
        special("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        Some(Special::Upgrade)
    );
    assert_eq!(
        special("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
        None
    );
    assert_eq!(
        special("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        Some(Special::Connect)
    );
    assert_eq!(
        special("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Special::Asterisk)
    );
    assert_eq!(
        special("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"),
        None,
        "UTF-8 stays"
    );
    let mut drop = Vec::new();
    let latin1 = b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n";
    let Ok(Parsed::Complete(h)) = parse::request(latin1, LIMITS, &mut drop) else {
        panic!("latin-1 target");
    };
    assert_eq!(h.special, Some(Special::NotUtf8));
    assert_eq!(
        req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").map(|_| ()),
        Err(400)
    );
}

#[test]
fn hop_by_hop_and_internal_fields_are_dropped() {
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\
               TE: trailers\r\nx-tenant-id: evil\r\nX_Tenant_Shard: evil\r\nx-tenantish: ok\r\n\
               X-Forwarded-For: 1.2.3.4\r\nX-Request-Id: mine\r\nAccept: */*\r\n\r\n";
    let h = req(raw).unwrap();
    assert!(h.close);
    let gone = dropped(raw);
    for name in [
        "Connection",
        "X-Secret",
        "Keep-Alive",
        "TE",
        "x-tenant-id",
        "X_Tenant_Shard",
        "X-Forwarded-For",
        "X-Request-Id",
    ] {
        assert!(gone.iter().any(|l| l.starts_with(name)), "{name} kept: {gone:?}");
    }
    assert!(!gone
        .iter()
        .any(|l| l.starts_with("x-tenantish") || l.starts_with("Accept")));
    // In order, each a whole line.
    assert!(gone.windows(2).all(|w| raw.find(&w[0]) < raw.find(&w[1])));
    assert!(gone.iter().all(|l| l.ends_with("\r\n")));
}

fn resp(raw: &str, method: http::Method) -> Result<parse::ResponseHead, u16> {
    let mut drop = Vec::new();
    match parse::response(raw.as_bytes(), 4096, &method, &mut drop, false, false) {
        Ok(Parsed::Complete(h)) => Ok(h),
        Ok(Parsed::Partial) => Err(0),
        Err(r) => Err(r.status),
    }
}

#[test]
fn framing_of_responses() {
    let get = http::Method::GET;
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", get.clone()).unwrap();
    assert_eq!((r.framing, r.keep_alive), (Framing::Length(5), true));
    let r = resp("HTTP/1.1 200 OK\r\n\r\n", get.clone()).unwrap();
    assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
    let r = resp(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        get.clone(),
    )
    .unwrap();
    assert_eq!(r.framing, Framing::Empty);
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", http::Method::HEAD).unwrap();
    assert_eq!(r.framing, Framing::Empty);
    let r = resp("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", get.clone()).unwrap();
    assert!(!r.keep_alive, "an HTTP/1.0 backend connection is not reused");
    let r = resp(
        "HTTP/1.1 421 Misdirected\r\ntenant-moved: 7\r\nContent-Length: 0\r\n\r\n",
        get.clone(),
    )
    .unwrap();
    assert!(r.tenant_moved.is_some());
    for bad in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: gzip",
        "Content-Length: five",
        "X: a\r\n b",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
        assert_eq!(resp(&raw, get.clone()).map(|_| ()), Err(502), "{bad:?}");
    }
    assert_eq!(
        resp("HTTP/1.1 200 OK\nContent-Length: 0\n\n", get).map(|_| ()),
        Err(502)
    );
}

/// Decodes `input` fed in pieces of `split` bytes (a `Buf` in between, as on a connection).
fn decode(input: &[u8], split: usize) -> Result<Vec<u8>, ChunkError> {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut buf = Buf::new(8);
    for piece in input.chunks(split.max(1)) {
        let space = buf.space(piece.len(), 1 << 20);
        space[..piece.len()].copy_from_slice(piece);
        buf.filled_by(piece.len());
        while !buf.is_empty() && !dec.is_done() {
            let step = dec.step(buf.filled())?;
            if let Some(d) = step.data {
                out.extend_from_slice(&buf.filled()[d]);
            }
            buf.consume(step.consumed);
        }
    }
    if dec.is_done() {
        Ok(out)
    } else {
        Err(ChunkError("incomplete"))
    }
}

#[test]
fn chunked_bodies() {
    let ok = b"5;name=\"v\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
    assert_eq!(decode(ok, 1000).unwrap(), b"hello0123456789");
    assert_eq!(decode(ok, 1).unwrap(), b"hello0123456789");
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"-5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"0\r\nX: a\r\n b\r\n\r\n",
        b"0\r\nX Y: a\r\n\r\n",
        b"\r\n",
    ] {
        assert!(decode(bad, 3).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn chunk_heads_are_lowercase_hex() {
    let mut buf = [0u8; 18];
    assert_eq!(chunk_head(0, &mut buf), b"0\r\n");
    assert_eq!(chunk_head(10, &mut buf), b"a\r\n");
    assert_eq!(chunk_head(0x1234f, &mut buf), b"1234f\r\n");
    assert_eq!(chunk_head(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
}

proptest! {
    /// Whatever the chunk sizes and however the bytes are split on arrival, the decoder gives
    /// back exactly the data.
    #[test]
    fn chunked_round_trip(data in proptest::collection::vec(any::<u8>(), 0..2000),
                          sizes in proptest::collection::vec(1usize..300, 1..20),
                          split in 1usize..64) {
        let mut encoded = Vec::new();
        let mut rest = &data[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            let mut head = [0u8; 18];
            encoded.extend_from_slice(chunk_head(n, &mut head));
            encoded.extend_from_slice(&rest[..n]);
            encoded.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        encoded.extend_from_slice(b"0\r\n\r\n");
        prop_assert_eq!(decode(&encoded, split).unwrap(), data);
    }

    /// The parsers never panic, and every range they hand out lies inside the head, in order:
    /// the connection slices its buffer with them. An accepted request's fields say how its
    /// body is framed the same way the head's bytes do.
    #[test]
    fn parsers_are_total_and_their_ranges_hold(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            // Mostly-valid heads, so that the accepting side is exercised too.
            (proptest::collection::vec(prop::sample::select(vec![
                "Host: a.test\r\n", "Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n",
                "Connection: close, x-a\r\n", "X-A: 1\r\n", "x-tenant-id: e\r\n", "Keep-Alive: 1\r\n",
            ]), 0..6)).prop_map(|f| format!("POST /p?q HTTP/1.1\r\n{}\r\nhello", f.concat()).into_bytes()),
        ]
    ) {
        let mut drop = Vec::new();
        if let Ok(Parsed::Complete(h)) = parse::request(&bytes, LIMITS, &mut drop) {
            prop_assert!(h.len <= bytes.len());
            prop_assert!(h.line.end <= h.fields && h.fields <= h.len - 2);
            for r in [Some(&h.path), h.query.as_ref(), h.host.as_ref(), h.authority.as_ref()].into_iter().flatten() {
                prop_assert!(r.start <= r.end && r.end <= h.len);
            }
            prop_assert!(drop.windows(2).all(|w| w[0].end <= w[1].start));
            prop_assert!(drop.iter().all(|d| h.fields <= d.start && d.end <= h.len - 2));
            let text = String::from_utf8_lossy(&bytes[..h.len]).to_ascii_lowercase();
            match h.framing {
                Framing::Chunked => prop_assert!(text.contains("transfer-encoding") && !text.contains("content-length")),
                Framing::Length(_) => prop_assert!(!text.contains("transfer-encoding")),
                Framing::Empty | Framing::Close => prop_assert!(!text.contains("transfer-encoding")),
            }
        }
        if let Ok(Parsed::Complete(r)) = parse::response(&bytes, 512, &http::Method::GET, &mut drop, false, false) {
            prop_assert!(r.len <= bytes.len() && r.fields <= r.len - 2);
            prop_assert!(drop.iter().all(|d| r.fields <= d.start && d.end <= r.len - 2));
        }
    }
}

#[test]
fn buffers_grow_to_their_bound_and_keep_unread_bytes() {
    let mut buf = Buf::new(8);
    let space = buf.space(4, 20);
    space[..4].copy_from_slice(b"abcd");
    buf.filled_by(4);
    buf.consume(2);
    // Unread bytes move to the front, then the buffer doubles, never past its bound.
    assert!(buf.space(10, 20).len() >= 10);
    assert_eq!(buf.filled(), b"cd");
    assert!(buf.capacity() <= 20);
    let room = buf.space(100, 20).len();
    assert_eq!(buf.capacity(), 20);
    assert_eq!(room, 18);
    assert!(buf.space(100, 12).len() <= 18, "a smaller bound never shrinks it");
}

/// The connection loop itself, on an in-memory stream with tokio's clock paused: timeouts are
/// reached by advancing time, not by waiting.
mod timeouts {
    use std::sync::Arc;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::{Conn, H1App, Http1Config, Next};
    use crate::context::{CacheConfig, CacheService, CacheSettings, LookupConfig, TcsEndpoint};
    use crate::edge::{BackendRegistry, EdgeProxy, EdgeState, Shared};
    use crate::metrics::EdgeMetrics;
    use crate::routes::RouteStore;

    fn app(cfg: &Http1Config) -> H1App {
        let routes =
            Arc::new(RouteStore::load(concat!(env!("CARGO_MANIFEST_DIR"), "/routes/dev.toml")).unwrap());
        let metrics = EdgeMetrics::new().unwrap();
        let endpoint = TcsEndpoint {
            region: "us-east-1".into(),
            url: "http://127.0.0.1:9".into(),
            token: "t".into(),
        };
        let settings = CacheSettings {
            view: "ingress".into(),
            region: "us-east-1".into(),
            tcs: vec![endpoint],
            lookup: LookupConfig::default(),
            cache: CacheConfig::default(),
            cache_file: None,
            cache_file_interval: Duration::from_secs(30),
            prewarm: false,
        };
        let service = Arc::new(CacheService::new(settings, metrics.clone(), 0).unwrap());
        let registry = BackendRegistry::default();
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(EdgeState::build(routes.load_full(), &registry, &metrics)),
            cache: service.cache.clone(),
            service,
            metrics,
            routes,
            registry,
            access_log: false,
            show_backend_headers: false,
            server_line: None,
            server_value: None,
            drain: Default::default(),
            conns: crate::edge::conns::Connections::new(Default::default(), None),
            resets: crate::edge::Http2Config::default().reset_limit(),
            body_timeout: Duration::from_millis(Http1Config::default().body_timeout_ms),
        });
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let general = pingora::proxy::http_proxy(&conf, EdgeProxy::new(shared.clone()));
        H1App::new(shared, general, cfg)
    }

    /// Runs the loop on one end of a pipe; the test holds the other.
    fn serve(cfg: Http1Config) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Next>) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let handle = tokio::spawn(async move {
            let app = app(&cfg);
            let (_tx, mut watch) = tokio::sync::watch::channel(false);
            let mut conn = Conn::new(None, false);
            let next = app.serve(&mut server, &mut conn, &mut watch).await;
            drop(_tx);
            next
        });
        (client, handle)
    }

    async fn read_all(client: &mut tokio::io::DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_complete_in_time_gets_408() {
        let cfg = Http1Config {
            header_timeout_ms: 5_000,
            ..Http1Config::default()
        };
        let (mut client, handle) = serve(cfg);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: acme.exa")
            .await
            .unwrap();
        // Just before the deadline nothing has been answered.
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(1), client.read(&mut probe)).await;
        assert!(early.is_err(), "answered before the header timeout");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(answer.contains("connection: close"), "{answer:?}");
        assert_eq!(handle.await.unwrap(), Next::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_without_an_answer() {
        let (mut client, handle) = serve(Http1Config::default());
        // Nothing sent at all: after the header timeout the connection just closes.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(read_all(&mut client).await, "");
        assert_eq!(handle.await.unwrap(), Next::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_and_hand_overs_come_from_the_loop() {
        // A framing refusal: 400, closed, whatever follows unread.
        let (mut client, handle) = serve(Http1Config::default());
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        assert!(
            answer.contains(r#""reason":"both Transfer-Encoding and Content-Length""#),
            "{answer:?}"
        );
        assert_eq!(handle.await.unwrap(), Next::Close);
        // An HTTP/1.0 request goes to the general proxy, its bytes kept for it.
        let (mut client, handle) = serve(Http1Config::default());
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert_eq!(handle.await.unwrap(), Next::HandOff);
    }
}

#[test]
fn the_edges_own_fields_are_known_in_every_spelling() {
    for name in [
        "x-tenant-id",
        "X_Tenant_Shard",
        "x-tenant_anything",
        "x-forwarded-for",
        "X_FORWARDED_HOST",
        "x-forwarded-port",
        "Forwarded",
        "x-real-ip",
        "X_Real_Ip",
        "x_request_id",
    ] {
        assert!(parse::internal(name.as_bytes()), "{name}");
    }
    for name in [
        "x-tenantish",
        "x-tenant",
        "x-forwardedish",
        "forwarder",
        "x-real-ips",
        "x-request",
        "content_length",
        "x-served-by",
    ] {
        assert!(!parse::internal(name.as_bytes()), "{name}");
    }
}
