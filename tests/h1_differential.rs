//! Differential test of the lean path's request framing against hyper's HTTP/1 server.
//!
//! The same bytes go to `edge::h1::parse` (with the chunked decoder) and to a real hyper
//! connection. Where both accept a request, both must read the same method, target and body,
//! and the next request must start at the same byte: a request that two parsers frame
//! differently is how smuggling starts. Where one refuses and the other accepts, nothing is
//! asserted (the edge means to refuse more than hyper). Inputs are built from a grammar of
//! framing tricks, then mutated byte by byte. `make test` runs a short pass; `make fuzz` runs
//! `FUZZ_CASES` (default 200 000).

#![expect(clippy::unwrap_used, reason = "test: failing loudly is the point")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tenant_edge::edge::h1::body::ChunkedDecoder;
use tenant_edge::edge::h1::parse::{self, Framing, Limits, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as a parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    method: String,
    target: String,
    body: Vec<u8>,
}

const LIMITS: Limits = Limits {
    max_target: 8192,
    max_head: 16384,
};

/// The requests the edge's parser reads from `input`, in order, until it refuses, hands a
/// request over, or runs out of bytes.
fn ours(input: &[u8]) -> Vec<Read> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut drop = Vec::new();
    while !rest.is_empty() && out.len() < 3 {
        let Ok(Parsed::Complete(head)) = parse::request(rest, LIMITS, &mut drop) else {
            break;
        };
        if head.special.is_some() {
            break;
        }
        let target = String::from_utf8_lossy(&rest[head.line.start..head.fields - 2])
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let after = &rest[head.len..];
        let (body, used) = match head.framing {
            Framing::Empty | Framing::Close => (Vec::new(), 0),
            Framing::Length(n) => {
                let Ok(n) = usize::try_from(n) else { break };
                if after.len() < n {
                    break;
                }
                (after[..n].to_vec(), n)
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::default();
                let mut data = Vec::new();
                let mut at = 0;
                while at < after.len() && !dec.is_done() {
                    let Ok(step) = dec.step(&after[at..]) else { break };
                    if let Some(d) = step.data {
                        data.extend_from_slice(&after[at + d.start..at + d.end]);
                    }
                    at += step.consumed;
                }
                if !dec.is_done() {
                    break;
                }
                (data, at)
            }
        };
        // Shown as hyper shows it (`http://a.test` is `http://a.test/`): the target is a check
        // that both found the same request, the framing is what is compared.
        let target = target.parse::<http::Uri>().map_or(target, |u| u.to_string());
        out.push(Read {
            method: head.method.to_string(),
            target,
            body,
        });
        rest = &after[used..];
    }
    out
}

/// The requests hyper's server reads from `input` on one connection.
async fn hypers(input: Vec<u8>) -> Vec<Read> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (client, server) = tokio::io::duplex(1 << 20);
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let method = req.method().to_string();
            let target = req.uri().to_string();
            if let Ok(body) = req.into_body().collect().await {
                record.lock().unwrap().push(Read {
                    method,
                    target,
                    body: body.to_bytes().to_vec(),
                });
            }
            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        }
    });
    // Half-close: hyper serves every request already sent before it sees the client's end.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let (mut read, mut write) = tokio::io::split(client);
    let feed = async move {
        let _ = write.write_all(&input).await;
        let _ = write.shutdown().await;
        // Drain hyper's answers so it never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = read.read_to_end(&mut sink).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(conn, feed) }).await;
    let out = seen.lock().unwrap().clone();
    out
}

fn one_of(options: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(options)
}

/// Request lines, good and bad.
const LINES: &[&str] = &[
    "GET / HTTP/1.1\r\n",
    "POST /p HTTP/1.1\r\n",
    "PUT /p/q?r=s HTTP/1.1\r\n",
    "GET http://a.test/x HTTP/1.1\r\n",
    "GET / HTTP/1.0\r\n",
    "GET /\r\n",
    "GET  / HTTP/1.1\r\n",
    "GET / HTTP/1.1\n",
    "\r\nGET / HTTP/1.1\r\n",
];

/// Header fields that framing bugs are made of.
const FIELDS: &[&str] = &[
    "Content-Length: 5\r\n",
    "Content-Length: 0\r\n",
    "Content-Length: 3\r\n",
    "Content-Length: 5, 5\r\n",
    "Content-Length: +5\r\n",
    "Content-Length : 5\r\n",
    "Content-Length: 05\r\n",
    "Content-Length:5 \r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: Chunked\r\n",
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: chunked, identity\r\n",
    "Transfer-Encoding: xchunked\r\n",
    " Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding:\tchunked\r\n",
    "Transfer-Encoding: chunked\n",
    "X-A: b\r\n c\r\n",
    "X-A: b\r\n",
    "Host: b.test\r\n",
    "Connection: close\r\n",
    "Connection: keep-alive, x-hop\r\n",
    "Expect: 100-continue\r\n",
];

/// Bodies, good and bad, chunked and not.
const BODIES: &[&str] = &[
    "",
    "hello",
    "abc",
    "5\r\nhello\r\n0\r\n\r\n",
    "5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    "0\r\n\r\n",
    "3\r\nabc\r\n0\r\n\r\n",
    "A\r\n0123456789\r\n0\r\n\r\n",
    "ffffffffffffffffff\r\n",
    "5\nhello\n0\n\n",
    "5\r\nhelloX\r\n0\r\n\r\n",
];

/// One request: a line, usually a Host, some fields, the empty line, a body.
fn request() -> impl Strategy<Value = String> {
    (
        one_of(LINES),
        prop::bool::weighted(0.9),
        prop::collection::vec(one_of(FIELDS), 0..4),
        one_of(&["\r\n", "\r\n", "\r\n", "\n"]),
        one_of(BODIES),
    )
        .prop_map(|(line, host, fields, end, body)| {
            let host = if host { "Host: a.test\r\n" } else { "" };
            format!("{line}{host}{}{end}{body}", fields.concat())
        })
}

/// A few pipelined requests, then a few bytes changed.
fn input() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(request(), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..2),
    )
        .prop_map(|(requests, edits)| {
            let mut bytes = requests.concat().into_bytes();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes
        })
}

static CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static COMPARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Both parsers, on the same bytes: the requests both read must agree, one by one.
fn check(rt: &tokio::runtime::Runtime, input: &[u8]) -> Result<(), TestCaseError> {
    let ours = ours(input);
    let theirs = rt.block_on(hypers(input.to_vec()));
    CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !ours.is_empty() && !theirs.is_empty() {
        COMPARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    for (a, b) in ours.iter().zip(theirs.iter()) {
        // hyper shows an absolute-form target as it came; ours too (the edge rewrites it later).
        prop_assert_eq!(a, b, "framed differently: {:?}", String::from_utf8_lossy(input));
    }
    Ok(())
}

#[test]
fn framing_agrees_with_hyper() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&input(), |bytes| check(&rt, &bytes));
    let (checked, compared) = (
        CHECKED.load(std::sync::atomic::Ordering::Relaxed),
        COMPARED.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!(
        "{checked} inputs in {:.1} s; {compared} read by both parsers and compared",
        started.elapsed().as_secs_f64()
    );
    result.unwrap();
    assert!(
        compared * 20 >= checked,
        "too few inputs were accepted by both to compare"
    );
}

/// Known inputs, each read the same way by both, or refused by the edge.
#[test]
fn hand_picked_cases_agree() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nabc",
    ] {
        check(&rt, input).unwrap();
    }
    // Both really parse: two pipelined requests are two requests to each.
    let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(ours(two).len(), 2);
    assert_eq!(rt.block_on(hypers(two.to_vec())), ours(two));
    // The edge refuses what hyper takes as chunked.
    let both =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    assert!(ours(both).is_empty());
}

/// How many generated inputs each parser accepts at least one request of: a run where
/// neither accepts anything would test nothing.
#[test]
fn generated_inputs_are_often_accepted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config::default());
    let (mut by_us, mut by_hyper, mut by_both) = (0, 0, 0);
    for _ in 0..500 {
        let bytes = input().new_tree(&mut runner).unwrap().current();
        let (a, b) = (ours(&bytes), rt.block_on(hypers(bytes.clone())));
        by_us += usize::from(!a.is_empty());
        by_hyper += usize::from(!b.is_empty());
        by_both += usize::from(!a.is_empty() && !b.is_empty());
    }
    println!("of 500 inputs: edge accepted {by_us}, hyper {by_hyper}, both {by_both}");
    assert!(by_both >= 25, "edge {by_us}, hyper {by_hyper}, both {by_both}");
}
