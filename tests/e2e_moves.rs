//! Tenants moving between shards, as the edge sees it (every role a real process).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// An edge that missed the switch (its change stream's region stopped ingesting) is told by
/// the source shard's fence (421 `tenant-moved`), fetches the newer context from the other
/// region, and replays a GET at the target; a POST is not replayed but answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_missed_the_switch_reroutes_on_421() {
    let stack = Stack::start().await;
    for host in ["acme.example.test", "initech.example.test"] {
        let (status, body) = stack.get_json(host, "/").await;
        assert_eq!((status, body["shard"].as_str()), (200, Some("jira-us-east-1")));
    }
    // The edge follows the local region's stream: that region stops ingesting.
    tcs_faults(
        &stack.http,
        &stack.tcs_urls[0],
        Some(json!({"pause_ingest": true})),
    )
    .await;
    let mut versions = Vec::new();
    for (id, confluence) in [("acme", Some("confluence-us-east-1")), ("initech", None)] {
        let mut placements = json!({"jira": {"shard": "jira-us-west-2"}});
        if let Some(c) = confluence {
            placements["confluence"] = json!({"shard": c});
        }
        let doc = json!({"id": id, "hosts": [format!("{id}.example.test")], "realm": "us", "placements": placements});
        let (status, stored) = stack.put_tenant(&doc).await;
        assert_eq!(status, 200);
        versions.push(stored["version"].as_u64().unwrap());
    }
    // The other region has the switch; the source shard fences both tenants off.
    let lookup = format!(
        "{}/v1/views/ingress/hosts/initech.example.test",
        stack.tcs_urls[1]
    );
    eventually(Duration::from_secs(10), || async {
        let r = stack
            .http
            .get(&lookup)
            .bearer_auth(EDGE_TOKEN)
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["record"]["version"].as_u64()? >= versions[1]).then_some(())
    })
    .await;
    let source = &stack
        .backends
        .iter()
        .find(|(id, _)| id == "jira-us-east-1")
        .unwrap()
        .1;
    for (id, version) in ["acme", "initech"].iter().zip(&versions) {
        let r = stack
            .http
            .post(format!("http://127.0.0.1:{}/mover/release", source[0]))
            .json(&json!({"tenant": id, "version": version}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "release: {}", r.status());
    }

    // A GET is replayed at the target, and the client sees success.
    let (status, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "jira-us-west-2");
    // A POST is not replayed: 503 with Retry-After, and the retry lands at the target.
    let post = || {
        stack
            .http
            .post(format!("http://127.0.0.1:{}/items", stack.edge_http))
            .header("host", "initech.example.test")
            .json(&json!({"title": "after the move"}))
            .send()
    };
    let r = post().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = post().await.unwrap();
    assert_eq!(r.status(), 201, "the retry reaches the target");

    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("tenant_edge_tenant_moved_total{outcome=\"replayed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenant_edge_tenant_moved_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
}
