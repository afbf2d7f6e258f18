//! Connection caps: past them a connection is closed unread and counted, while the admin API
//! (health, readiness, metrics) keeps answering and the slots come back when clients leave.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tenant_edge::edge::conns::ConnectionLimits;

/// A counter or gauge of the edge's metrics, 0 when absent.
fn metric(text: &str, line_start: &str) -> u64 {
    common::metric(text, line_start) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_while_admin_answers() {
    let stack = Stack::start_with(StackOptions {
        connections: Some(ConnectionLimits {
            max_connections: 1000,
            max_connections_per_client: 20,
        }),
        ..Default::default()
    })
    .await;
    let port = stack.edge_http;
    // 25 idle connections from one address: 20 are held, 5 refused.
    let idle: Vec<TcpStream> = (0..25).map(|_| TcpStream::connect(addr(port)).unwrap()).collect();
    let counted = eventually(Duration::from_secs(10), || async {
        let m = stack.metrics().await;
        let open = metric(&m, "tenant_edge_connections_open ");
        let refused = metric(&m, "tenant_edge_connections_refused_total{reason=\"per_client\"}");
        (open == 20 && refused == 5).then_some((open, refused))
    })
    .await;
    assert_eq!(counted, (20, 5));
    // At the cap: a new client connection from the same address is refused too, while the
    // admin API answers.
    let health = stack.http.get(stack.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = stack.http.get(stack.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        stack
            .http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "acme.example.test")
            .send()
            .await
            .is_err(),
        "a connection past the cap is closed unanswered"
    );
    // The slots come back when the clients leave.
    drop(idle);
    eventually(Duration::from_secs(10), || async {
        let m = stack.metrics().await;
        (metric(&m, "tenant_edge_connections_open ") == 0).then_some(())
    })
    .await;
    let (status, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200, "{body}");
}

/// A raw HTTP/2 client (TLS with ALPN `h2`): sends the preface and an empty SETTINGS, then
/// reads frames until the edge closes; prints the server's MAX_CONCURRENT_STREAMS setting and
/// whether the edge closed the connection (within the 20 s the client waits at most).
const IDLE_H2_CLIENT: &str = r#"
import socket, ssl, struct, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="acme.example.test")
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
s.settimeout(20)
data, closed = b"", True
while True:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        closed = False
        break
    except (ConnectionResetError, ssl.SSLError):
        break
    if not chunk:
        break
    data += chunk
streams, at = None, 0
while at + 9 <= len(data):
    length = int.from_bytes(data[at:at + 3], "big")
    kind, flags = data[at + 3], data[at + 4]
    body = data[at + 9:at + 9 + length]
    if kind == 4 and not flags & 1:
        for i in range(0, len(body) - 5, 6):
            ident, value = struct.unpack(">HI", body[i:i + 6])
            if ident == 3:
                streams = value
    at += 9 + length
print(f"streams={streams} closed={closed}")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_and_its_stream_cap_advertised() {
    let stack = Stack::start_with(StackOptions {
        http2: Some(tenant_edge::edge::Http2Config {
            idle_timeout_ms: 300,
            max_concurrent_streams: 7,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let port = stack.edge_https.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", IDLE_H2_CLIENT, &port])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "streams=7 closed=True");
}

/// The resident memory of process `pid` now (`VmRSS`), in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Hostile connections held open, each with a request head just under the limit and never
/// finished: the edge's memory stays bounded (the figure is printed; 64 MiB is the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partial_heads_keep_memory_bounded() {
    const HOSTILE: usize = 1000;
    // This test process holds the client ends.
    rlimit::increase_nofile_limit(4096).unwrap();
    // Room for them all from one address, and heads that wait as long as the test may take.
    let stack = Stack::start_with(StackOptions {
        connections: Some(ConnectionLimits {
            max_connections: 1500,
            max_connections_per_client: 1500,
        }),
        http1: Some(tenant_edge::edge::Http1Config {
            header_timeout_ms: 120_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let pid = stack.edges[0].pid().unwrap();
    let (status, _) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200);
    let idle = rss_kib(pid);
    // A head of 30 KiB (the limit is 32 KiB) without its final empty line.
    let mut partial = b"GET / HTTP/1.1\r\nHost: acme.example.test\r\n".to_vec();
    while partial.len() < 30 * 1024 {
        partial.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut held = Vec::with_capacity(HOSTILE);
    for _ in 0..HOSTILE {
        let mut s = tokio::net::TcpStream::connect(addr(stack.edge_http))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &partial)
            .await
            .unwrap();
        held.push(s);
    }
    // Every byte sent is read by the edge (its buffers hold the heads) once all are open.
    // Generous: a machine busy with other work accepts slowly.
    eventually(Duration::from_secs(120), || async {
        let m = stack.metrics().await;
        (metric(&m, "tenant_edge_connections_open ") >= HOSTILE as u64).then_some(())
    })
    .await;
    let loaded = rss_kib(pid);
    let added_mib = loaded.saturating_sub(idle) / 1024;
    println!(
        "edge RSS: idle {} MiB, {HOSTILE} partial heads {} MiB (+{added_mib} MiB)",
        idle / 1024,
        loaded / 1024
    );
    assert!(added_mib <= 64, "+{added_mib} MiB for {HOSTILE} partial heads");
    // And a normal tenant is served meanwhile.
    let (status, _) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200);
    drop(held);
}

/// Slowloris: 300 connections dripping their heads a byte at a time are each cut at the
/// header deadline with 408, while a normal tenant is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripping_heads_are_cut_at_the_header_deadline() {
    const DRIPPING: usize = 300;
    rlimit::increase_nofile_limit(4096).unwrap();
    let stack = Stack::start_with(StackOptions {
        http1: Some(tenant_edge::edge::Http1Config {
            header_timeout_ms: 1000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let port = stack.edge_http;
    let mut drips = Vec::new();
    for _ in 0..DRIPPING {
        drips.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
            let head = b"GET / HTTP/1.1\r\nHost: acme.example.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let mut answer = Vec::new();
            // At most the whole head, a byte every 100 ms: the deadline cuts it first.
            for &b in head.iter() {
                if conn.write_all(&[b]).await.is_err() {
                    break;
                }
                let mut chunk = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        answer.extend_from_slice(&chunk[..n]);
                        break;
                    }
                    Err(_) => {}
                }
            }
            answer.starts_with(b"HTTP/1.1 408")
        }));
    }
    // Served meanwhile.
    let (status, _) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200);
    let mut cut = 0;
    for drip in drips {
        cut += usize::from(drip.await.unwrap());
    }
    assert_eq!(cut, DRIPPING, "every dripping head is answered 408");
    let (status, _) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200);
}

/// A paced HTTP/2 rapid reset (TLS, ALPN `h2`): after the preface and the SETTINGS exchange,
/// one stream opened every millisecond (`POST /`, its body to follow) and reset half a
/// millisecond later, once the edge has taken it, at most `argv[3]` of them, until the edge
/// closes the connection; prints how many were sent.
const RAPID_RESET_CLIENT: &str = r#"
import socket, ssl, sys, time
port, host, most = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
raw = socket.create_connection(("127.0.0.1", port))
# Each frame its own segment, when it is sent.
raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s = ctx.wrap_socket(raw, server_hostname=host.decode())
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
s.settimeout(5)
data = b""
while True:
    data += s.recv(65536)
    if len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
        assert data[3] == 4, data
        break
s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
# :method POST, :scheme https, :path /, :authority HOST (a literal with an indexed name).
block = b"\x83\x87\x84\x01" + bytes([len(host)]) + host
sent, closed, stream = 0, False, 1
while sent < most:
    ident = stream.to_bytes(4, "big")
    headers = len(block).to_bytes(3, "big") + b"\x01\x04" + ident + block
    reset = b"\x00\x00\x04\x03\x00" + ident + (8).to_bytes(4, "big")
    try:
        s.sendall(headers)
        time.sleep(0.0005)
        s.sendall(reset)
    except (OSError, ssl.SSLError):
        closed = True
        break
    sent, stream = sent + 1, stream + 2
    time.sleep(0.0005)
if not closed:
    try:
        while s.recv(65536):
            pass
        closed = True
    except socket.timeout:
        pass
    except (OSError, ssl.SSLError):
        closed = True
print(f"sent={sent} closed={closed}")
"#;

/// Paced rapid reset: a stream opened and reset every millisecond slips under the HTTP/2
/// library's limit of resets pending at once, but not under the edge's rate over a window. The
/// connection is closed once the burst the window allows is spent, no reset stream reaches the
/// shard, and another tenant is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_http2_rapid_reset_is_cut_and_never_reaches_a_shard() {
    use common::recorder::Recorder;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const PER_SECOND: u32 = 20;
    const WINDOW_MS: u64 = 5_000;
    const BURST: usize = 100; // PER_SECOND x the window
    let recorder = Recorder::start().await;
    let stack = Stack::start_with(StackOptions {
        http2: Some(tenant_edge::edge::Http2Config {
            max_resets_per_second: PER_SECOND,
            reset_window_ms: WINDOW_MS,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    stack
        .route_shards_to("resets", &["jira-us-east-1"], recorder.port)
        .await;
    recorder.take();
    // Another tenant, on another shard, served all along.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let served = {
        let (stop, failed) = (stop.clone(), failed.clone());
        let (http, url) = (
            stack.http.clone(),
            format!("http://127.0.0.1:{}/", stack.edge_http),
        );
        tokio::spawn(async move {
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = http
                    .get(&url)
                    .header("host", "globex.example.test")
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    served += 1;
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            served
        })
    };
    let port = stack.edge_https.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", RAPID_RESET_CLIENT, &port, "acme.example.test", "3000"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (sent, closed) = said
        .strip_prefix("sent=")
        .and_then(|s| s.split_once(" closed="))
        .map(|(n, c)| (n.parse::<usize>().unwrap(), c == "True"))
        .unwrap();
    assert!(closed, "the edge closes the flooding connection: {said}");
    // The burst, and the few sent before the client saw the close.
    assert!((BURST..BURST + 60).contains(&sent), "{said}");
    // A normal HTTP/2 client on its own connection is served after it.
    let head = curl_h2_head(stack.edge_https, &[]).await;
    assert!(head.starts_with("http/2 200"), "{head}");
    stop.store(true, Ordering::Relaxed);
    let served = served.await.unwrap();
    assert!(
        served > 0 && failed.load(Ordering::Relaxed) == 0,
        "served {served}, failed {failed:?}"
    );
    // The reset streams were not proxied: the shard saw curl's request alone.
    let reached = recorder.take();
    assert_eq!(reached.len(), 1, "{} requests reached the shard", reached.len());
    let m = stack.metrics().await;
    assert_eq!(metric(&m, "tenant_edge_http2_reset_floods_total "), 1);
    assert!(
        metric(&m, "tenant_edge_http2_reset_unproxied_total ") >= BURST as u64,
        "{m}"
    );
}

/// HTTP/2 request bodies are read ahead before the request is proxied (up to 32 KiB, so that a
/// stream reset before its request is complete never reaches a shard); the rest streams after
/// it. Small, large and unsized bodies all reach the shard whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_bodies_reach_the_shard_whole() {
    use common::recorder::Recorder;
    let recorder = Recorder::start().await;
    let stack = Stack::start().await;
    stack
        .route_shards_to("bodies", &["jira-us-east-1"], recorder.port)
        .await;
    recorder.take();
    let dir = tempfile::tempdir().unwrap();
    for (size, sized) in [(5usize, true), (100_000, true), (70_000, false)] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 23) as u8).collect();
        let file = dir.path().join(format!("body-{size}"));
        std::fs::write(&file, &body).unwrap();
        let data = format!("@{}", file.display());
        let mut args = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--data-binary",
            &data,
        ];
        if !sized {
            // No length: the edge frames it chunked upstream.
            args.extend(["-H", "transfer-encoding: chunked"]);
        }
        let said = curl_h2(stack.edge_https, "/", &args).await;
        assert_eq!(said, "2 200", "{size} bytes");
        let reached = recorder.take();
        assert_eq!(reached.len(), 1);
        let raw = &reached[0];
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let got = if head.contains("transfer-encoding: chunked") {
            dechunk(&raw[head_end..]).unwrap()
        } else {
            assert!(head.contains(&format!("content-length: {size}\r\n")), "{head}");
            raw[head_end..].to_vec()
        };
        assert!(
            got == body,
            "{size} bytes: the shard got {} bytes, not the body sent",
            got.len()
        );
    }
}

/// The data of a chunked body (no extensions, no trailers); `None` if it is not one.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).ok()?, 16).ok()?;
        raw = raw.get(line + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}
