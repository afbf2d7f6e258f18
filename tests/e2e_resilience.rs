//! The edge's tenant context when TCS is slow, down or wrong (every role a real process; faults
//! injected through the TCS admin API).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KNOWN: [&str; 3] = ["acme.example.test", "globex.example.test", "initech.example.test"];

async fn put_tenant(stack: &Stack, id: &str, shard: &str) -> u64 {
    let doc = json!({"id": id, "hosts": [format!("{id}.example.test")], "realm": "us",
        "placements": {"jira": {"shard": shard}}});
    let (status, stored) = stack.put_tenant(&doc).await;
    assert!((200..300).contains(&status), "{status}");
    stored["version"].as_u64().unwrap()
}

/// Waits until the edge's `/admin/regions` shows `region` with trust `want`.
async fn wait_for_trust(stack: &Stack, region: &str, want: &str) {
    eventually(Duration::from_secs(10), || async {
        let r = stack.admin_json("/admin/regions").await;
        let found = r["regions"]
            .as_array()?
            .iter()
            .find(|g| g["region"] == region)?
            .clone();
        (found["trust"] == want).then_some(())
    })
    .await;
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_failing_known_tenants_keep_serving() {
    let stack = Stack::start().await;
    for host in KNOWN {
        assert_eq!(stack.get(host, "/").await.status(), 200);
    }
    for url in &stack.tcs_urls {
        tcs_faults(&stack, url, Some(json!({"error_rate": 1.0}))).await;
    }
    let mut errors = 0;
    for i in 0..1000 {
        if stack.get(KNOWN[i % KNOWN.len()], "/").await.status() != 200 {
            errors += 1;
        }
    }
    assert_eq!(errors, 0);
    let r = stack.get("stranger.example.test", "/").await;
    assert_eq!(r.status(), 503, "no TCS answered: an outage, not a deletion");
    assert!(r.headers().contains_key("retry-after"));
    let ready = stack.http.get(stack.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_region_does_not_slow_misses() {
    let stack = Stack::start().await;
    // The local region turns 300 ms slow; new tenants then miss at the edge.
    tcs_faults(&stack, &stack.tcs_urls[0], Some(json!({"latency_ms": 300}))).await;
    let ids: Vec<String> = (0..50).map(|i| format!("slow{i}")).collect();
    for id in &ids {
        put_tenant(&stack, id, "jira-us-east-1").await;
    }
    let last = format!("{}.example.test", ids[ids.len() - 1]);
    stack.wait_in_tcs(&stack.tcs_urls[1], &last, 0).await;
    let mut latencies = Vec::new();
    for id in &ids {
        let host = format!("{id}.example.test");
        let started = Instant::now();
        let (status, body) = stack.get_json(&host, "/").await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "{host}: {body}");
        let seen: Value = stack.admin_json(&format!("/admin/tenants/{host}")).await;
        assert_eq!(
            seen["region"], "eu-west-1",
            "{host}: the fast region's answer wins"
        );
        assert_eq!(seen["origin"], "fetch");
    }
    latencies.sort();
    println!(
        "miss through the edge with the local region 300 ms slow: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_region_is_distrusted_and_nothing_is_lost() {
    let stack = Stack::start().await;
    for host in KNOWN {
        assert_eq!(stack.get(host, "/").await.status(), 200);
    }
    // A tenant this edge has never seen.
    put_tenant(&stack, "umbrella", "jira-us-west-2").await;
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "umbrella.example.test", 0)
        .await;
    stack
        .wait_in_tcs(&stack.tcs_urls[0], "umbrella.example.test", 0)
        .await;
    // The local region's table is emptied: it says 404 for everything.
    tcs_faults(&stack, &stack.tcs_urls[0], Some(json!({"empty": true}))).await;
    wait_for_trust(&stack, "us-east-1", "canary_missing").await;
    for host in KNOWN {
        let (status, body) = stack.get_json(host, "/").await;
        assert_eq!(status, 200, "{host} must not be lost: {body}");
    }
    let (status, body) = stack.get_json("umbrella.example.test", "/").await;
    assert_eq!(status, 200, "resolved through the trusted region: {body}");
    assert_eq!(body["shard"], "jira-us-west-2");
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("tenant_edge_tcs_region_trust{region=\"us-east-1\"} 1"),
        "{metrics}"
    );
    // The region recovers and is trusted again.
    tcs_faults(&stack, &stack.tcs_urls[0], None).await;
    wait_for_trust(&stack, "us-east-1", "trusted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_placement_takes_effect_from_the_stream() {
    let stack = Stack::start().await;
    assert_eq!(stack.get("initech.example.test", "/").await.status(), 200);
    let doc = json!({"id": "initech", "hosts": ["initech.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1", "state": "frozen"}}});
    assert_eq!(stack.put_tenant(&doc).await.0, 200);
    let post = || {
        stack
            .http
            .post(format!("http://127.0.0.1:{}/items", stack.edge_http))
            .header("host", "initech.example.test")
            .send()
    };
    eventually(Duration::from_secs(10), || async {
        (post().await.ok()?.status() == 503).then_some(())
    })
    .await;
    let r = post().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        stack.get("initech.example.test", "/").await.status(),
        200,
        "reads still reach the source"
    );
    let seen: Value = stack.admin_json("/admin/tenants/initech.example.test").await;
    assert_eq!(seen["origin"], "stream", "the change was pushed, not fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_four_edges() {
    let stack = Stack::start_with(StackOptions {
        more_edges: 3,
        ..Default::default()
    })
    .await;
    let admins: Vec<String> = stack
        .edges
        .iter()
        .map(|e| format!("http://{}", e.admin()))
        .collect();
    let host = "initech.example.test";
    for e in stack.edges.iter().map(|e| e.http) {
        let r = stack
            .http
            .get(format!("http://{e}/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let writes = 200;
    let mut delays = Vec::new();
    for i in 0..writes {
        let shard = if i % 2 == 0 {
            "jira-us-west-2"
        } else {
            "jira-us-east-1"
        };
        let started = Instant::now();
        let version = put_tenant(&stack, "initech", shard).await;
        for admin in &admins {
            // A tight poll (1 ms) so the measurement is not the polling step.
            let url = format!("{admin}/admin/tenants/{host}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen: Option<Value> = match stack.http.get(&url).send().await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
                if seen
                    .and_then(|s| s["version"].as_u64())
                    .is_some_and(|v| v >= version)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "version {version} did not reach {admin}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            delays.push(started.elapsed());
        }
    }
    delays.sort();
    println!(
        "write -> edge over {writes} writes x 4 edges: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}
