//! Criterion micro benchmarks of the per-request work that involves no I/O.
//!
//! Run with `cargo bench --bench hot_path`; numbers are recorded in `bench/README.md`.

#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented public functions"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use tenant_edge::context::{
    CacheConfig, LookupConfig, Origin, Resolved, TcsClient, TcsEndpoint, TenantCache,
};
use tenant_edge::edge::h1::parse::{self, Limits, Parsed};
use tenant_edge::edge::{decide, h1, BackendRegistry, Decision, EdgeState, RequestView};
use tenant_edge::metrics::EdgeMetrics;
use tenant_edge::routes::{normalize_path, RouteSnapshot, RouteStore};
use tenant_edge::tenant::{normalize_host, IngressRecord, MAX_HOST_LEN};

fn host(c: &mut Criterion) {
    c.bench_function("normalize_host", |b| {
        let mut buf = [0u8; MAX_HOST_LEN];
        b.iter(|| {
            let h = normalize_host(black_box(b"Acme.Example.Test:8443"), &mut buf);
            black_box(h.map(str::len).unwrap_or(0))
        })
    });
}

fn path(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml");
    let Ok(store) = RouteStore::load(&dir) else { return };
    let snapshot = store.current();
    c.bench_function("normalize_and_match_path", |b| {
        b.iter(|| {
            let p = normalize_path(black_box("/wiki/spaces/ENG/pages/12345")).unwrap_or_default();
            black_box(snapshot.match_path(&p).map(|r| r.index))
        })
    });
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|_| std::process::exit(1));
    let endpoint = TcsEndpoint {
        region: "us-east-1".into(),
        url: "http://127.0.0.1:9".into(),
        token: "t".into(),
    };
    let metrics = EdgeMetrics::new().unwrap_or_else(|_| std::process::exit(1));
    let client = TcsClient::new(&[endpoint], "us-east-1", LookupConfig::default())
        .unwrap_or_else(|_| std::process::exit(1));
    let cache = TenantCache::new(&CacheConfig::default(), Arc::new(client), metrics);
    let globex: IngressRecord = serde_json::from_str(
        r#"{"id":"globex","version":1,"realm":"eu","hosts":["globex.example.test"],"placements":{"jira":{"shard":"jira-eu-west-1"}}}"#,
    )
    .unwrap_or_else(|_| std::process::exit(1));
    let record: IngressRecord = serde_json::from_str(
        r#"{"id":"acme","version":1,"realm":"us","hosts":["acme.example.test"],"placements":{"jira":{"shard":"jira-us-east-1"}}}"#,
    )
    .unwrap_or_else(|_| std::process::exit(1));
    let region: Arc<str> = "us-east-1".into();
    rt.block_on(cache.restore(vec![record, globex], &region, Origin::Snapshot));
    // The loop runs inside one `block_on`, so the figure is the lookup itself. `resolve` hands
    // out a clone of the entry; `with_hit` lends it, as the proxy's hot path can.
    c.bench_function("tenant_cache_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(matches!(
                        cache.resolve(black_box("acme.example.test")).await,
                        Ok(Resolved::Found(_))
                    ));
                }
                started.elapsed()
            })
        })
    });
    c.bench_function("tenant_cache_with_hit", |b| {
        b.iter(|| black_box(cache.with_hit(black_box("acme.example.test"), |e| e.record.version)))
    });
    // Two threads at once, on the same entry and on two different ones: the time per lookup on
    // each thread.
    for (name, hosts) in [
        ("2_threads_same_host", ["acme.example.test", "acme.example.test"]),
        (
            "2_threads_two_hosts",
            ["acme.example.test", "globex.example.test"],
        ),
    ] {
        c.bench_function(&format!("tenant_cache_hit_{name}"), |b| {
            b.iter_custom(|iters| {
                on_two_threads(hosts, |host| {
                    futures::executor::block_on(async {
                        for _ in 0..iters {
                            black_box(matches!(
                                cache.resolve(black_box(host)).await,
                                Ok(Resolved::Found(_))
                            ));
                        }
                    })
                })
            })
        });
        c.bench_function(&format!("tenant_cache_with_hit_{name}"), |b| {
            b.iter_custom(|iters| {
                on_two_threads(hosts, |host| {
                    for _ in 0..iters {
                        black_box(cache.with_hit(black_box(host), |e| e.record.version));
                    }
                })
            })
        });
    }
}

/// The whole per-request decision on a hit, without I/O: Host and path from the request
/// header -> tenant (cache) -> product -> placement -> shard pool -> backend -> pingora peer.
fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|_| std::process::exit(1));
    let text = include_str!("../routes/dev.toml");
    let Ok(routes) = RouteSnapshot::from_toml_str(text) else {
        return;
    };
    let Ok(metrics) = EdgeMetrics::new() else { return };
    let state = EdgeState::build(Arc::new(routes), &BackendRegistry::default(), &metrics);
    let endpoint = TcsEndpoint {
        region: "us-east-1".into(),
        url: "http://127.0.0.1:9".into(),
        token: "t".into(),
    };
    let Ok(client) = TcsClient::new(&[endpoint], "us-east-1", LookupConfig::default()) else {
        return;
    };
    let cache = TenantCache::new(&CacheConfig::default(), Arc::new(client), metrics);
    let Ok(record) = serde_json::from_str::<IngressRecord>(
        r#"{"id":"acme","version":1,"realm":"us","hosts":["acme.example.test"],
            "placements":{"jira":{"shard":"jira-us-east-1"}}}"#,
    ) else {
        return;
    };
    rt.block_on(cache.restore(vec![record], &"us-east-1".into(), Origin::Snapshot));
    let Ok(mut req) = RequestHeader::build("GET", b"/browse/ENG-1", None) else {
        return;
    };
    if req.insert_header("host", "Acme.Example.Test:8080").is_err() {
        return;
    }
    let _guard = rt.enter();
    c.bench_function("request_decision", |b| {
        b.iter(|| {
            let mut buf = [0u8; MAX_HOST_LEN];
            let view = RequestView::of(black_box(&req));
            let Ok((_, Decision::Placed(pool, _, ()))) =
                decide(&state, &cache, &view, &req.method, &mut buf, |_| ())
            else {
                return None;
            };
            let (_, backend) = pool.pick(0)?;
            Some(backend.peer())
        })
    });
    // The same decision as the lean HTTP/1.1 path makes it: from the raw head (a browser-sized
    // one), parsed strictly, to a backend.
    let raw = b"GET /browse/ENG-1 HTTP/1.1\r\nHost: Acme.Example.Test:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
                Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\n\
                Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=abc123; theme=dark\r\n\r\n";
    let limits = Limits {
        max_target: 8192,
        max_head: 32768,
    };
    let mut drops = Vec::with_capacity(8);
    c.bench_function("lean_request_decision", |b| {
        b.iter(|| lean(&state, &cache, black_box(raw), limits, &mut drops))
    });
    // The same with every tenant limit on (a rate per product, requests in flight per shard;
    // high enough never to refuse): what checking and admitting cost.
    let limited = text
        .replace(
            "prefixes = [\"/\"]",
            "prefixes = [\"/\"]\nrate_limit_rps = 1000000000",
        )
        .replace("backends = [", "tenant_in_flight = 1000000\nbackends = [");
    let Ok(routes) = RouteSnapshot::from_toml_str(&limited) else {
        return;
    };
    let Ok(metrics) = EdgeMetrics::new() else { return };
    let state = EdgeState::build(Arc::new(routes), &BackendRegistry::default(), &metrics);
    c.bench_function("lean_request_decision_limited", |b| {
        b.iter(|| lean(&state, &cache, black_box(raw), limits, &mut drops))
    });
}

/// The lean HTTP/1.1 path's decision: a raw head parsed strictly, to a backend.
fn lean(
    state: &EdgeState,
    cache: &TenantCache,
    raw: &[u8],
    limits: Limits,
    drops: &mut Vec<std::ops::Range<usize>>,
) -> Option<std::net::SocketAddr> {
    let Ok(Parsed::Complete(head)) = parse::request(raw, limits, drops) else {
        return None;
    };
    let view = h1::view(raw, &head);
    let mut buf = [0u8; MAX_HOST_LEN];
    let Ok((_, Decision::Placed(pool, _, ()))) = decide(state, cache, &view, &head.method, &mut buf, |_| ())
    else {
        return None;
    };
    let (_, backend) = pool.pick(0)?;
    Some(backend.addr)
}

/// Runs `work` for each host on its own thread at once; the wall time of the pair.
fn on_two_threads(hosts: [&str; 2], work: impl Fn(&str) + Sync) -> std::time::Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for host in hosts {
            let work = &work;
            scope.spawn(move || work(host));
        }
    });
    started.elapsed()
}

criterion_group!(benches, host, path, cache_hit, decision);
criterion_main!(benches);
