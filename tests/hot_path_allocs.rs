//! The per-request decision on a cache hit (request head -> Host -> tenant -> product -> shard
//! -> backend), as the lean HTTP/1.1 path makes it, allocates nothing: the strict parser, the
//! view of its slices and the one decision function both request paths call ([`decide`]). Counted with an
//! instrumented allocator, in a test binary of its own so no other test allocates meanwhile.

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tenant_edge::context::{CacheConfig, LookupConfig, Origin, TcsClient, TcsEndpoint, TenantCache};
use tenant_edge::edge::h1::parse::{self, Limits, Parsed};
use tenant_edge::edge::{decide, h1, BackendRegistry, Decision, EdgeState};
use tenant_edge::metrics::EdgeMetrics;
use tenant_edge::routes::RouteSnapshot;
use tenant_edge::tenant::{IngressRecord, MAX_HOST_LEN};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\nAccept: */*\r\nX-Tenant-Id: forged\r\n\r\n").into_bytes()
}

const LIMITS: Limits = Limits {
    max_target: 8192,
    max_head: 32768,
};

/// One request's decision, as the proxy makes it on a hit: the shard's pool and a backend.
fn decide_one(
    state: &EdgeState,
    cache: &TenantCache,
    raw: &[u8],
    drops: &mut Vec<std::ops::Range<usize>>,
) -> Option<u16> {
    let Ok(Parsed::Complete(head)) = parse::request(raw, LIMITS, drops) else {
        return None;
    };
    assert_eq!(drops.len(), 1, "the forged x-tenant-id is dropped");
    let view = h1::view(raw, &head);
    let mut buf = [0u8; MAX_HOST_LEN];
    let ((_, _, rewritten), decision) = decide(state, cache, &view, &head.method, &mut buf, |_| ()).ok()?;
    assert!(rewritten.is_none());
    let Decision::Placed(pool, _, ()) = decision else {
        return None;
    };
    let (_, backend) = pool.pick(0)?;
    Some(backend.addr.port())
}

/// A thousand decisions of each request, counted: what they allocated.
fn thousand_pairs(
    state: &EdgeState,
    cache: &TenantCache,
    requests: [&[u8]; 2],
    drops: &mut Vec<std::ops::Range<usize>>,
) -> stats_alloc::Stats {
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        for raw in requests {
            assert!(decide_one(state, cache, raw, drops).is_some());
        }
    }
    region.change()
}

#[tokio::test(flavor = "current_thread")]
async fn a_cache_hit_decision_allocates_nothing() {
    let routes = RouteSnapshot::from_toml_str(include_str!("../routes/dev.toml")).unwrap();
    let metrics = EdgeMetrics::new().unwrap();
    let state = EdgeState::build(Arc::new(routes), &BackendRegistry::default(), &metrics);
    let endpoint = TcsEndpoint {
        region: "us-east-1".into(),
        url: "http://127.0.0.1:9".into(),
        token: "t".into(),
    };
    let client = TcsClient::new(&[endpoint], "us-east-1", LookupConfig::default()).unwrap();
    let cache = TenantCache::new(&CacheConfig::default(), Arc::new(client), metrics);
    let record: IngressRecord = serde_json::from_str(
        r#"{"id":"acme","version":1,"realm":"us","hosts":["acme.example.test"],
            "placements":{"jira":{"shard":"jira-us-east-1"},"confluence":{"shard":"confluence-us-east-1"}}}"#,
    )
    .unwrap();
    cache
        .restore(vec![record], &"us-east-1".into(), Origin::Snapshot)
        .await;
    let jira = request("Acme.Example.Test:8080", "/browse/ENG-1");
    let wiki = request("acme.example.test", "/wiki/spaces/ENG");

    // The connection's scratch list of dropped fields grows once.
    let mut drops = Vec::with_capacity(8);
    // The first decision on a thread may set up per-thread state (epoch slot, counter shard).
    assert!(matches!(
        decide_one(&state, &cache, &jira, &mut drops),
        Some(9100 | 9101)
    ));
    assert!(matches!(
        decide_one(&state, &cache, &wiki, &mut drops),
        Some(9106 | 9107)
    ));

    let used = thousand_pairs(&state, &cache, [&jira, &wiki], &mut drops);
    assert_eq!(
        (used.allocations, used.reallocations),
        (0, 0),
        "2000 decisions allocated: {used:?}"
    );

    // With every tenant limit on (a rate per product, requests in flight per shard), checked
    // and admitted on every decision: still nothing allocated.
    let limited = include_str!("../routes/dev.toml")
        .replace(
            "prefixes = [\"/\"]",
            "prefixes = [\"/\"]\nrate_limit_rps = 1000000",
        )
        .replace(
            "prefixes = [\"/wiki\"]",
            "prefixes = [\"/wiki\"]\nrate_limit_rps = 1000000",
        )
        .replace("backends = [", "tenant_in_flight = 1000\nbackends = [");
    let routes = RouteSnapshot::from_toml_str(&limited).unwrap();
    assert_eq!(routes.products[0].rate_limit_rps, 1_000_000);
    let state = EdgeState::build(
        Arc::new(routes),
        &BackendRegistry::default(),
        &EdgeMetrics::new().unwrap(),
    );
    assert!(decide_one(&state, &cache, &jira, &mut drops).is_some());
    assert!(decide_one(&state, &cache, &wiki, &mut drops).is_some());
    let used = thousand_pairs(&state, &cache, [&jira, &wiki], &mut drops);
    assert_eq!(
        (used.allocations, used.reallocations),
        (0, 0),
        "2000 decisions with limits allocated: {used:?}"
    );
}
