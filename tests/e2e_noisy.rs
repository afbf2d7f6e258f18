//! Noisy neighbours: a tenant over its request rate gets 429 (with `Retry-After` and a JSON
//! reason) while the other tenants on the same shard see no error; a tenant's requests in flight
//! on a shard are capped, so it cannot take the shard's whole backend pool.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::time::{Duration, Instant};

use common::recorder::Recorder;
use common::*;
use serde_json::{json, Value};

/// The noisy tenant's own limit (requests a second to jira), set in the catalogue.
const LIMIT: u32 = 20;

fn p99(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d.get(((d.len().max(1) - 1) as f64 * 0.99) as usize)
        .copied()
        .unwrap_or_default()
}

/// `n` requests for `host` at `per_sec`, each sent on time whatever the others take (open
/// loop, several in flight): the statuses and latencies.
async fn paced(port: u16, host: &'static str, per_sec: u64, n: u64) -> Vec<(u16, Duration, Option<Value>)> {
    let http = reqwest::Client::new();
    let start = tokio::time::Instant::now();
    let mut sent = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / per_sec)).await;
        let http = http.clone();
        sent.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", host)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().contains_key("retry-after");
            let body: Option<Value> = r.json().await.ok();
            assert!(status != 429 || retry, "a 429 says when to retry");
            (status, t.elapsed(), body)
        }));
    }
    let mut out = Vec::new();
    for s in sent {
        out.push(s.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_held_to_its_rate_and_the_others_see_no_error() {
    let stack = Stack::start().await;
    // noisy shares jira-us-east-1 with acme and initech; its own limit comes from the catalogue.
    let doc = json!({"id": "noisy", "hosts": ["noisy.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}, "rate_limits": {"jira": LIMIT}});
    let (status, stored) = stack.put_tenant(&doc).await;
    assert_eq!(status, 201, "{stored}");
    let bad = json!({"id": "noisy2", "hosts": ["noisy2.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}, "rate_limits": {"confluence": 5, "jira": 0}});
    let (status, refused) = stack.put_tenant(&bad).await;
    assert_eq!(status, 422, "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("confluence is not placed") && reason.contains("1 to"),
        "{reason}"
    );
    let version = stored["version"].as_u64().unwrap();
    stack
        .wait_in_tcs(&stack.tcs_urls[0], "noisy.example.test", version)
        .await;
    let port = stack.edge_http;
    for host in ["noisy.example.test", "acme.example.test", "initech.example.test"] {
        assert_eq!(stack.get(host, "/").await.status(), 200);
    }

    // The others alone, then again while noisy sends ten times its limit for three seconds.
    let quiet = tokio::join!(
        paced(port, "acme.example.test", 50, 100),
        paced(port, "initech.example.test", 50, 100)
    );
    let (flood, acme, initech) = tokio::join!(
        paced(
            port,
            "noisy.example.test",
            u64::from(LIMIT) * 10,
            u64::from(LIMIT) * 30
        ),
        paced(port, "acme.example.test", 50, 150),
        paced(port, "initech.example.test", 50, 150)
    );
    let failed: Vec<u16> = acme
        .iter()
        .chain(&initech)
        .map(|(s, ..)| *s)
        .filter(|&s| s != 200)
        .collect();
    assert!(failed.is_empty(), "the other tenants saw errors: {failed:?}");
    let limited: Vec<&(u16, Duration, Option<Value>)> = flood.iter().filter(|(s, ..)| *s == 429).collect();
    let passed = flood.iter().filter(|(s, ..)| *s == 200).count();
    assert_eq!(limited.len() + passed, flood.len(), "only 200 or 429 for noisy");
    // Three windows of a second at 20 each, give or take a window's edge.
    assert!(
        passed <= 4 * LIMIT as usize,
        "{passed} of noisy's requests passed"
    );
    assert!(
        passed >= 2 * LIMIT as usize,
        "noisy keeps its share: {passed} passed"
    );
    let body = limited[0].2.as_ref().unwrap();
    assert_eq!(body["status"], 429);
    assert!(body["reason"].as_str().unwrap().contains("rate"), "{body}");
    let metrics = stack.metrics().await;
    let counted = metric(
        &metrics,
        "tenant_edge_limited_total{limit=\"rate\",product=\"jira\"}",
    );
    assert_eq!(counted as usize, limited.len(), "{metrics}");
    let before = p99(quiet.0.iter().chain(&quiet.1).map(|r| r.1).collect());
    let during = p99(acme.iter().chain(&initech).map(|r| r.1).collect());
    println!(
        "noisy at 10x its limit: {} of {} limited; the others' p99 {before:?} alone, {during:?} during the flood",
        limited.len(),
        flood.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_take_a_shards_whole_pool() {
    let recorder = Recorder::start().await;
    let stack = Stack::start().await;
    stack
        .route_shards_to("slow", &["jira-us-east-1"], recorder.port)
        .await;
    // At most two of a tenant's requests in flight on the shard.
    let text = std::fs::read_to_string(&stack.routes).unwrap();
    let capped = text
        .replace("version = \"slow\"", "version = \"capped\"")
        .replace(
            "id = \"jira-us-east-1\"",
            "id = \"jira-us-east-1\"\ntenant_in_flight = 2",
        );
    assert_ne!(capped, text);
    std::fs::write(&stack.routes, capped).unwrap();
    eventually(Duration::from_secs(20), || async {
        (stack.admin_json("/admin/routes").await["version"] == "capped").then_some(())
    })
    .await;
    // Six slow requests of acme at once (each held 300 ms): two go through, four are refused.
    let slow = |host: &'static str| {
        let http = stack.http.clone();
        let url = format!("http://127.0.0.1:{}/", stack.edge_http);
        async move {
            http.get(url)
                .header("host", host)
                .header("x-answer", "slow")
                .send()
                .await
                .unwrap()
        }
    };
    let answers = futures::future::join_all((0..6).map(|_| slow("acme.example.test"))).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 4, "{statuses:?}");
    // Another tenant on the shard is not held back by acme's requests.
    let (acme, initech) = tokio::join!(
        futures::future::join_all((0..2).map(|_| slow("acme.example.test"))),
        slow("initech.example.test")
    );
    assert!(acme.iter().all(|r| r.status() == 200));
    assert_eq!(initech.status(), 200);
    let metrics = stack.metrics().await;
    assert!(
        metric(
            &metrics,
            "tenant_edge_limited_total{limit=\"in_flight\",product=\"jira\"}"
        ) >= 4.0
    );
}
