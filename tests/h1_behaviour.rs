//! What the lean HTTP/1.1 path hands to the general proxy, and what it streams: a WebSocket
//! upgrade echoed through the edge by a demo shard, `Expect: 100-continue`, an HTTP/1.0
//! client, and 100 MiB bodies both ways with the edge's memory bounded.

mod common;

use std::time::Duration;

use common::http1::{read_response, until_closed};
use common::recorder::Sink;
use common::Stack;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_tunnelled_to_the_tenants_shard() {
    let stack = Stack::start().await;
    let mut request = format!("ws://127.0.0.1:{}/ws/echo", stack.edge_http)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "acme.example.test".parse().unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the edge"] {
        ws.send(Message::text(text)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The demo shard names the tenant the edge gave it on the upgrade request.
        assert_eq!(reply.into_text().unwrap().as_str(), format!("acme: {text}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_and_http10_are_served_whole() {
    let stack = Stack::start().await;
    // 100-continue: the client waits for the interim answer before it sends the body.
    let body = br#"{"title":"sent after 100 Continue"}"#;
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    let head = format!(
        "POST /items HTTP/1.1\r\nHost: acme.example.test\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut conn).await.status, 100);
    conn.write_all(body).await.unwrap();
    let created = read_response(&mut conn).await;
    assert_eq!(created.status, 201, "{}", created.head);
    let id = serde_json::from_slice::<serde_json::Value>(&created.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, stored) = stack.get_json("acme.example.test", &format!("/items/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["body"]["title"], "sent after 100 Continue");

    // An HTTP/1.0 client: answered, then closed (no keep-alive on that path).
    let text = until_closed(
        stack.edge_http,
        b"GET /browse HTTP/1.0\r\nHost: acme.example.test\r\n\r\n",
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("\"tenant\":\"acme\""), "{text}");
}

/// The edge's peak resident memory, from `/proc`.
fn peak_rss_kib(pid: u32) -> u64 {
    common::proc_status_kib(pid, "VmHWM")
}

const HUNDRED_MIB: usize = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_bodies_stream_with_bounded_memory() {
    let sink = Sink::start().await;
    let stack = Stack::start().await;
    stack
        .route_shards_to("sink", &["jira-us-east-1"], sink.port)
        .await;
    let pid = stack.edges[0].pid().unwrap();
    let before = peak_rss_kib(pid);

    // Upload, content-length: written in 1 MiB pieces while the edge streams it on.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    let head =
        format!("POST /sink HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: {HUNDRED_MIB}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let piece = vec![b'u'; 1024 * 1024];
    for _ in 0..100 {
        conn.write_all(&piece).await.unwrap();
    }
    let r = read_response(&mut conn).await;
    assert_eq!((r.status, r.body), (200, HUNDRED_MIB.to_string().into_bytes()));

    // Upload, chunked, on the same connection.
    let head = "POST /sink HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
    for _ in 0..100 {
        conn.write_all(&frame).await.unwrap();
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!((r.status, r.body), (200, HUNDRED_MIB.to_string().into_bytes()));

    // Download, chunked, read slowly at first so the edge must hold back.
    conn.write_all(
        format!("GET /source/{HUNDRED_MIB} HTTP/1.1\r\nHost: acme.example.test\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut data = 0usize;
    let mut tail = Vec::new();
    let mut head_done = false;
    let mut chunk = vec![0u8; 256 * 1024];
    while !tail.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        let mut got = &chunk[..n];
        if !head_done {
            // The head (with its own `x`s) comes in the first read.
            let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert!(got.starts_with(b"HTTP/1.1 200"));
            got = &got[end..];
            head_done = true;
        }
        // The data is all `x`; the chunk framing is hex digits and CRLF.
        data += got.iter().filter(|&&b| b == b'x').count();
        tail.extend_from_slice(got);
        let keep = tail.len().saturating_sub(8);
        tail.drain(..keep);
    }
    assert_eq!(data, HUNDRED_MIB);

    let after = peak_rss_kib(pid);
    println!("edge peak RSS: {before} KiB before, {after} KiB after 300 MiB through");
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "peak RSS grew by {} KiB moving 300 MiB",
        after - before
    );
}
