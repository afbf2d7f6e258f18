//! The lean HTTP/1.1 path over real sockets, with a recording backend that keeps the exact
//! bytes that reached it: a table of request-smuggling and framing cases (each refused, or
//! forwarded in a stated normal form), the shard's answers held to the same rules, and the
//! path's behaviour (keep-alive, pipelining, chunked both ways, limits, slow clients).

mod common;

use std::time::Duration;

use common::http1::{exchange, read_answers, until_closed};
use common::recorder::Recorder;
use common::{curl_h2_head, Stack, StackOptions};
use tenant_edge::edge::Http1Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Timeouts short enough to test, limits small enough to reach.
/// Short timeouts and small limits, so that the slow-client and size cases run quickly.
fn http1() -> Http1Config {
    Http1Config {
        header_timeout_ms: 600,
        body_timeout_ms: 600,
        keepalive_timeout_ms: 5000,
        max_request_target: 1024,
        max_header_bytes: 4096,
        ..Http1Config::default()
    }
}

/// A stack whose `jira-us-east-1` and `confluence-us-east-1` shards are the recorder.
async fn stack_with_recorder() -> (Stack, Recorder) {
    let recorder = Recorder::start().await;
    let stack = Stack::start_with(StackOptions {
        http1: Some(http1()),
        ..Default::default()
    })
    .await;
    stack
        .route_shards_to(
            "framing",
            &["jira-us-east-1", "confluence-us-east-1"],
            recorder.port,
        )
        .await;
    // A first request through, so the cache holds acme before the table runs.
    let answers = exchange(
        stack.edge_http,
        b"GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(answers.responses[0].status, 200);
    recorder.take();
    (stack, recorder)
}

/// What a case expects.
enum Want {
    /// This status, a closed connection, and nothing at the backend.
    Refused(u16),
    /// Forwarded: the backend's bytes contain each of `has` and none of `lacks`.
    Forwarded {
        has: &'static [&'static str],
        lacks: &'static [&'static str],
    },
}

use Want::{Forwarded, Refused};

const HOST: &str = "Host: acme.example.test\r\n";

/// The request-smuggling and framing table: (name, request, expectation). `{H}` is the Host line.
fn table() -> Vec<(&'static str, String, Want)> {
    let post = |fields: &str, body: &str| format!("POST /items HTTP/1.1\r\n{HOST}{fields}\r\n{body}");
    let get = |line: &str, fields: &str| format!("{line}\r\n{fields}\r\n");
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    let h = |f: &str| format!("{HOST}{f}");
    vec![
        // Transfer-Encoding: only one final chunked.
        ("two TE fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE chunked, gzip", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE identity", post("Transfer-Encoding: identity\r\n", ""), Refused(400)),
        ("TE chunkedx", post("Transfer-Encoding: chunkedx\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE quoted", post("Transfer-Encoding: \"chunked\"\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE empty", post("Transfer-Encoding: \r\n", ""), Refused(400)),
        ("TE with a comma", post("Transfer-Encoding: ,chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"), Refused(400)),
        ("CL then TE", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE space before colon", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE tab before colon", post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE folded onto Host", format!("POST /items HTTP/1.1\r\n{HOST} Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Refused(400)),
        ("TE value folded", post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE in HTTP/1.0", format!("POST /items HTTP/1.0\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Refused(400)),
        ("TE with NUL", post("Transfer-Encoding: chunked\0\r\n", "0\r\n\r\n"), Refused(400)),
        ("TE with vertical tab", post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"), Refused(400)),
        // Content-Length: one valid decimal.
        ("two equal CL", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), Refused(400)),
        ("two different CL", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), Refused(400)),
        ("CL list", post("Content-Length: 5, 5\r\n", "hello"), Refused(400)),
        ("CL plus sign", post("Content-Length: +5\r\n", "hello"), Refused(400)),
        ("CL negative", post("Content-Length: -1\r\n", ""), Refused(400)),
        ("CL hex", post("Content-Length: 0x5\r\n", "hello"), Refused(400)),
        ("CL inner space", post("Content-Length: 5 5\r\n", "hello"), Refused(400)),
        ("CL letter", post("Content-Length: 5a\r\n", "hello"), Refused(400)),
        ("CL empty", post("Content-Length: \r\n", ""), Refused(400)),
        ("CL 20 digits", post("Content-Length: 10000000000000000000\r\n", ""), Refused(400)),
        ("CL space before colon", post("Content-Length : 5\r\n", "hello"), Refused(400)),
        ("CL underscore", post("Content_Length: 5\r\n", "hello"), Forwarded { has: &["Content_Length: 5\r\n"], lacks: &["hello"] }),
        // Control bytes in the request line and fields.
        ("CR in target", get("GET /a\rb HTTP/1.1", HOST), Refused(400)),
        ("LF in target", get("GET /a\nb HTTP/1.1", HOST), Refused(400)),
        ("NUL in target", get("GET /a\0b HTTP/1.1", HOST), Refused(400)),
        ("tab in target", get("GET /a\tb HTTP/1.1", HOST), Refused(400)),
        ("DEL in target", get("GET /a\x7fb HTTP/1.1", HOST), Refused(400)),
        ("fragment in target", get("GET /a#b HTTP/1.1", HOST), Refused(400)),
        ("NUL in field name", get("GET / HTTP/1.1", &h("X-A\0: 1\r\n")), Refused(400)),
        ("NUL in field value", get("GET / HTTP/1.1", &h("X-A: a\0b\r\n")), Refused(400)),
        ("bare CR in value", get("GET / HTTP/1.1", &h("X-A: a\rb\r\n")), Refused(400)),
        ("bare LF in Host", "GET / HTTP/1.1\r\nHost: acme.example.test\nX-Tenant-Id: evil\r\n\r\n".into(), Refused(400)),
        ("control byte in value", get("GET / HTTP/1.1", &h("X-A: a\x01b\r\n")), Refused(400)),
        ("DEL in value", get("GET / HTTP/1.1", &h("X-A: a\x7fb\r\n")), Refused(400)),
        ("space in field name", get("GET / HTTP/1.1", &h("X A: 1\r\n")), Refused(400)),
        ("obs-fold", get("GET / HTTP/1.1", &h("X-A: a\r\n b\r\n")), Refused(400)),
        ("space before first field", "GET / HTTP/1.1\r\n Host: acme.example.test\r\n\r\n".into(), Refused(400)),
        ("bare LF line ends", "GET / HTTP/1.1\nHost: acme.example.test\n\n".into(), Refused(400)),
        ("empty field name", get("GET / HTTP/1.1", &h(": 1\r\n")), Refused(400)),
        // Request lines and versions.
        ("HTTP/1.2", get("GET / HTTP/1.2", HOST), Refused(400)),
        ("HTTP/2.0", get("GET / HTTP/2.0", HOST), Refused(400)),
        ("HTTP/0.9", "GET /\r\n\r\n".into(), Refused(400)),
        ("lower-case version", get("GET / http/1.1", HOST), Refused(400)),
        ("double space", get("GET  / HTTP/1.1", HOST), Refused(400)),
        ("trailing space", get("GET / HTTP/1.1 ", HOST), Refused(400)),
        ("bad method", get("G@T / HTTP/1.1", HOST), Refused(400)),
        ("h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), Refused(400)),
        ("missing Host", get("GET / HTTP/1.1", ""), Refused(400)),
        ("two Hosts", get("GET / HTTP/1.1", &h("Host: globex.example.test\r\n")), Refused(400)),
        ("userinfo in absolute form", get("GET http://u@acme.example.test/ HTTP/1.1", HOST), Refused(400)),
        ("absolute form disagrees", get("GET http://globex.example.test/ HTTP/1.1", HOST), Refused(400)),
        ("malformed Connection", get("GET / HTTP/1.1", &h("Connection: close, a@b\r\n")), Refused(400)),
        // Chunked bodies.
        ("chunk size zz", chunked("zz\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk size 0x", chunked("0x5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk size negative", chunked("-5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk size leading space", chunked(" 5\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk size 17 digits", chunked("00000000000000005\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk size bare LF", chunked("5\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk data too long", chunked("5\r\nhelloX\r\n0\r\n\r\n"), Refused(400)),
        ("chunk ext with LF", chunked("5;a\nb\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("chunk ext with NUL", chunked("5;a\0\r\nhello\r\n0\r\n\r\n"), Refused(400)),
        ("trailer folded", chunked("0\r\nX-T: a\r\n b\r\n\r\n"), Refused(400)),
        ("trailer bad name", chunked("0\r\nX T: a\r\n\r\n"), Refused(400)),
        // Limits.
        ("oversized head", get("GET / HTTP/1.1", &h(&format!("X-Big: {}\r\n", "a".repeat(5000)))), Refused(431)),
        ("too many fields", get("GET / HTTP/1.1", &h(&"X-A: 1\r\n".repeat(101))), Refused(431)),
        ("oversized target", get(&format!("GET /{} HTTP/1.1", "a".repeat(2000)), HOST), Refused(414)),
        // Forwarded, in a stated normal form.
        (
            "chunk extensions and trailers dropped",
            chunked("5;ext=\"x\"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
            Forwarded { has: &["Transfer-Encoding: chunked\r\n", "\r\n\r\n5\r\nhello\r\n0\r\n\r\n"], lacks: &["ext=", "X-Trailer"] },
        ),
        ("chunk sizes in lower-case hex without leading zeros", chunked("00A\r\n0123456789\r\n0\r\n\r\n"), Forwarded { has: &["\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"], lacks: &["00A"] }),
        ("TE is case-insensitive", post("Transfer-Encoding: Chunked\r\n", "2\r\nok\r\n0\r\n\r\n"), Forwarded { has: &["\r\n\r\n2\r\nok\r\n0\r\n\r\n"], lacks: &[] }),
        ("CL body byte for byte", post("Content-Length: 5\r\n", "hello"), Forwarded { has: &["Content-Length: 5\r\n", "\r\n\r\nhello"], lacks: &[] }),
        ("CL with surrounding spaces", post("Content-Length:  5 \r\n", "hello"), Forwarded { has: &["\r\n\r\nhello"], lacks: &[] }),
        (
            "forged tenant fields dropped",
            get("GET / HTTP/1.1", &h("X-Tenant-Id: evil\r\nx_tenant_id: evil\r\nX_Tenant_Shard: evil\r\nx-tenantish: kept\r\n")),
            Forwarded { has: &["x-tenantish: kept\r\n", "x-tenant-id: acme\r\n", "x-tenant-shard: jira-us-east-1\r\n"], lacks: &["evil"] },
        ),
        (
            "hop-by-hop fields dropped",
            get("GET / HTTP/1.1", &h("Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X-T\r\n")),
            Forwarded { has: &[], lacks: &["Connection", "X-Hop", "Keep-Alive", "Proxy-Connection", "TE:", "Trailer"] },
        ),
        (
            "the edge's fields spelt with underscores, Forwarded and X-Real-IP replaced",
            get("GET / HTTP/1.1", &h("x_forwarded_for: 6.6.6.6\r\nX_Forwarded_Host: evil.test\r\nx_request_id: mine\r\nX_Real_IP: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;host=evil.test\r\nX-Forwarded-Port: 1\r\nx-forwardedish: kept\r\n")),
            Forwarded {
                has: &["x-real-ip: 127.0.0.1\r\n", "forwarded: for=127.0.0.1;proto=http\r\n", "x-forwardedish: kept\r\n"],
                lacks: &["6.6.6.6", "evil.test", "mine", "X-Forwarded-Port"],
            },
        ),
        (
            "client forwarded fields replaced",
            get("GET / HTTP/1.1", &h("X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\nX-Request-Id: mine\r\n")),
            Forwarded { has: &["x-forwarded-for: 127.0.0.1\r\n", "x-forwarded-proto: http\r\n", "x-forwarded-host: acme.example.test\r\n"], lacks: &["6.6.6.6", "evil.test", "mine"] },
        ),
        ("absolute form to origin form", get("GET http://acme.example.test/x?y=1 HTTP/1.1", HOST), Forwarded { has: &["GET /x?y=1 HTTP/1.1\r\n"], lacks: &["http://"] }),
        ("dot segments resolved", get("GET /a/../wiki/./x HTTP/1.1", HOST), Forwarded { has: &["GET /wiki/x HTTP/1.1\r\n", "x-tenant-shard: confluence-us-east-1"], lacks: &[".."] }),
        ("empty line before the request", format!("\r\nGET /e HTTP/1.1\r\n{HOST}\r\n"), Forwarded { has: &["GET /e HTTP/1.1\r\n"], lacks: &[] }),
        ("host normalised for x-forwarded-host", get("GET / HTTP/1.1", "Host: ACME.example.test.:80\r\n"), Forwarded { has: &["Host: ACME.example.test.:80\r\n", "x-forwarded-host: acme.example.test\r\n"], lacks: &[] }),
        ("Upgrade without Connection dropped", get("GET / HTTP/1.1", &h("Upgrade: websocket\r\n")), Forwarded { has: &[], lacks: &["Upgrade"] }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_table() {
    let (stack, recorder) = stack_with_recorder().await;
    let cases = table();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, raw, want) in &cases {
        let answers = exchange(stack.edge_http, raw.as_bytes(), 1).await;
        // Forwarded requests reach the recorder before the answer leaves the edge.
        let seen = recorder.take();
        let Some(resp) = answers.responses.first() else {
            failures.push(format!("{name}: no answer"));
            continue;
        };
        match want {
            Refused(status) => {
                if resp.status != *status || !answers.closed || !seen.is_empty() {
                    failures.push(format!(
                        "{name}: want {status} + close + nothing forwarded, got {} closed={} forwarded={}",
                        resp.status,
                        answers.closed,
                        seen.len()
                    ));
                }
                if !resp.head.contains("content-type: application/json") {
                    failures.push(format!("{name}: refusal is not the JSON answer: {}", resp.head));
                }
            }
            Forwarded { has, lacks } => {
                let Some(got) = seen.first().map(|b| String::from_utf8_lossy(b).into_owned()) else {
                    failures.push(format!("{name}: nothing forwarded, got {}", resp.status));
                    continue;
                };
                if resp.status != 200 || seen.len() != 1 {
                    failures.push(format!(
                        "{name}: status {} with {} forwarded",
                        resp.status,
                        seen.len()
                    ));
                }
                for part in *has {
                    if !got.contains(part) {
                        failures.push(format!("{name}: {part:?} missing from {got:?}"));
                    }
                }
                for part in *lacks {
                    if got.contains(part) {
                        failures.push(format!("{name}: {part:?} forwarded in {got:?}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_answers_are_held_to_the_same_rules() {
    let (stack, _recorder) = stack_with_recorder().await;
    let ask = |answer: &str| format!("GET / HTTP/1.1\r\n{HOST}x-answer: {answer}\r\n\r\n");
    for answer in [
        "two-lengths",
        "length-and-chunked",
        "gzip-coding",
        "bad-length",
        "bare-lf",
        "obs-fold",
        "space-before-colon",
        "nul-in-field",
        "bad-version",
        "unasked-101",
        "no-answer",
    ] {
        let answers = exchange(stack.edge_http, ask(answer).as_bytes(), 1).await;
        let resp = &answers.responses[0];
        assert_eq!(resp.status, 502, "{answer}: {resp:?}");
        assert!(!resp.head.contains("Content-Length: 3"), "{answer}");
    }

    // A chunk that goes wrong after the head has gone out: the client's connection is cut, so
    // no client ever reads a whole, wrong message.
    let text = until_closed(stack.edge_http, ask("bad-chunk").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut body never looks complete: {text:?}"
    );

    // Re-framed on the way back: extensions and trailers go, the data stays.
    let answers = exchange(stack.edge_http, ask("chunked-ext").as_bytes(), 1).await;
    assert_eq!(answers.responses[0].body, b"2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n");
    // A close-delimited answer closes the client connection too, and says so.
    let answers = exchange(stack.edge_http, ask("close-delimited").as_bytes(), 1).await;
    assert!(answers.closed);
    assert!(answers.responses[0].head.contains("connection: close"));
    // Interim answers are not passed on; the shard's own request id and hop-by-hop fields are
    // replaced or dropped.
    let answers = exchange(stack.edge_http, ask("interim").as_bytes(), 1).await;
    assert_eq!(answers.responses[0].status, 200);
    let answers = exchange(stack.edge_http, ask("own-request-id").as_bytes(), 1).await;
    let head = &answers.responses[0].head;
    assert!(
        !head.contains("shard-made") && !head.contains("Keep-Alive"),
        "{head}"
    );
    assert!(head.contains("x-request-id: "), "{head}");
    // Which backend answered, and the shard's own copies of the edge's fields, stay inside.
    let answers = exchange(stack.edge_http, ask("backend-headers").as_bytes(), 1).await;
    let head = &answers.responses[0].head;
    for inside in [
        "X-Served-By",
        "X-Tenant-Shard",
        "X_Tenant_Id",
        "10.1.2.3",
        "nginx/1.25",
    ] {
        assert!(!head.contains(inside), "{inside} reached the client: {head}");
    }
    assert!(head.contains("X-Kept: yes"), "{head}");
    let answers = exchange(stack.edge_http, ask("http10").as_bytes(), 1).await;
    assert_eq!(answers.responses[0].body, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pipelining_and_close() {
    let (stack, recorder) = stack_with_recorder().await;
    // Three pipelined requests in one write, one with a body: answered in order on one
    // connection, each reaching the backend whole.
    let raw = format!(
        "GET /1 HTTP/1.1\r\n{HOST}\r\nPOST /2 HTTP/1.1\r\n{HOST}Content-Length: 3\r\n\r\nabcGET /wiki/3 HTTP/1.1\r\n{HOST}\r\n"
    );
    let answers = exchange(stack.edge_http, raw.as_bytes(), 3).await;
    assert_eq!(answers.responses.len(), 3);
    assert!(!answers.closed, "keep-alive");
    let seen: Vec<String> = recorder
        .take()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].starts_with("GET /1 "), "{seen:?}");
    assert!(
        seen[1].starts_with("POST /2 ") && seen[1].ends_with("\r\n\r\nabc"),
        "{seen:?}"
    );
    assert!(seen[2].starts_with("GET /wiki/3 "), "{seen:?}");

    // Connection: close is answered, said, and honoured; the field is not forwarded.
    let answers = exchange(
        stack.edge_http,
        format!("GET / HTTP/1.1\r\n{HOST}Connection: close\r\n\r\nGET /never HTTP/1.1\r\n{HOST}\r\n")
            .as_bytes(),
        1,
    )
    .await;
    assert!(answers.closed);
    assert!(answers.responses[0].head.contains("connection: close"));
    let seen = recorder.take();
    assert_eq!(seen.len(), 1, "nothing after the close is served");

    // Many requests on one connection reuse one backend connection.
    let before = recorder.connections();
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    for i in 0..20 {
        conn.write_all(format!("GET /k{i} HTTP/1.1\r\n{HOST}\r\n").as_bytes())
            .await
            .unwrap();
        let answers = read_answers(&mut conn, 1).await;
        assert_eq!(answers.responses[0].status, 200);
    }
    assert!(
        recorder.connections() - before <= 2,
        "{} backend connections for 20 requests",
        recorder.connections() - before
    );
    recorder.take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out() {
    let (stack, recorder) = stack_with_recorder().await;
    // A head trickled a byte at a time never completes within header_timeout_ms: 408, closed.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\n{HOST}X-Slow: {}\r\n\r\n", "a".repeat(100));
    let mut answer = Vec::new();
    for b in head.bytes() {
        if conn.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut chunk = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), conn.read(&mut chunk)).await {
            answer.extend_from_slice(&chunk[..n]);
            if n == 0 || !answer.is_empty() {
                break;
            }
        }
    }
    let answers = read_answers(&mut conn, 0).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(answers.closed);

    // A body that stalls is cut off; nothing is answered as if it were whole.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    conn.write_all(format!("POST /items HTTP/1.1\r\n{HOST}Content-Length: 10\r\n\r\nabc").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "the stalled body's connection is closed");
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains(" 200 "), "{text}");
    recorder.take();

    // An idle keep-alive connection is left open well within its timeout.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.edge_http)).await.unwrap();
    conn.write_all(format!("GET / HTTP/1.1\r\n{HOST}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answers(&mut conn, 1).await.responses.len(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    conn.write_all(format!("GET / HTTP/1.1\r\n{HOST}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answers(&mut conn, 1).await.responses[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_connection_is_retried_once_on_a_fresh_one_when_idempotent() {
    let (stack, recorder) = stack_with_recorder().await;
    let stale = format!("GET /again HTTP/1.1\r\n{HOST}x-answer: stale\r\n\r\n");
    // The warm-up left a pooled connection; the backend drops it as this request arrives,
    // before answering: the edge sends it again on a fresh connection.
    let answers = exchange(stack.edge_http, stale.as_bytes(), 1).await;
    assert_eq!(answers.responses[0].status, 200);
    let seen = recorder.take();
    assert_eq!(
        seen.len(),
        2,
        "sent twice: once on the stale connection, once fresh"
    );
    assert_eq!(seen[0], seen[1], "the same bytes both times");
    // A request with a body is never sent twice.
    let post = format!("POST /items HTTP/1.1\r\n{HOST}x-answer: stale\r\nContent-Length: 2\r\n\r\nok");
    let answers = exchange(stack.edge_http, post.as_bytes(), 1).await;
    assert_eq!(answers.responses[0].status, 502);
    assert_eq!(recorder.take().len(), 1);
}

/// The general path (HTTP/2 over TLS here) keeps the same rules as the lean one: the edge's
/// fields in any spelling are dropped and replaced, and the backend headers stay inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_general_path_drops_and_replaces_the_same_fields() {
    let (stack, recorder) = stack_with_recorder().await;
    let head = curl_h2_head(
        stack.edge_https,
        &[
            "x_tenant_id: evil",
            "X_Forwarded_For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "x-answer: backend-headers",
        ],
    )
    .await;
    assert!(head.starts_with("http/2 200"), "{head}");
    for inside in [
        "x-served-by",
        "x-tenant-shard",
        "x_tenant_id",
        "10.1.2.3",
        "nginx/1.25",
    ] {
        assert!(!head.contains(inside), "{inside} reached the client: {head}");
    }
    let seen = recorder.take();
    assert_eq!(seen.len(), 1);
    let request = String::from_utf8_lossy(&seen[0]).to_ascii_lowercase();
    assert!(
        !request.contains("6.6.6.6") && !request.contains("evil"),
        "{request}"
    );
    for edge_says in [
        "x-real-ip: 127.0.0.1\r\n",
        "forwarded: for=127.0.0.1;proto=https\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-tenant-id: acme\r\n",
    ] {
        assert!(request.contains(edge_says), "{edge_says:?} missing: {request}");
    }
}

/// A configured `Server` name is on every answer, the shards' and the edge's own, over both
/// paths, and replaces a shard's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_server_name_replaces_the_shards() {
    let recorder = Recorder::start().await;
    let stack = Stack::start_with(StackOptions {
        server: Some("tenant-edge".into()),
        ..Default::default()
    })
    .await;
    stack
        .route_shards_to("server", &["jira-us-east-1"], recorder.port)
        .await;
    let shard = b"GET / HTTP/1.1\r\nHost: acme.example.test\r\nx-answer: backend-headers\r\n\r\n";
    let own = b"GET / HTTP/1.1\r\nHost: nobody.example.test\r\n\r\n";
    for (request, status) in [(&shard[..], 200), (&own[..], 404)] {
        let answers = exchange(stack.edge_http, request, 1).await;
        let head = &answers.responses[0].head;
        assert_eq!(answers.responses[0].status, status, "{head}");
        assert!(head.contains("server: tenant-edge\r\n"), "{head}");
        assert!(!head.contains("nginx"), "{head}");
    }
    let head = curl_h2_head(stack.edge_https, &["x-answer: backend-headers"]).await;
    assert!(head.contains("server: tenant-edge"), "{head}");
    assert!(!head.contains("nginx"), "{head}");
}
