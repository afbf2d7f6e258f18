//! Tenants moving between shards, as the edge sees it (every role a real process).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use serde_json::{json, Value};

/// A stack whose edge caches `hosts` on `jira-us-east-1`, then stops hearing of changes: the
/// region whose stream it follows stops ingesting, so only a shard's 421 tells it of a move.
async fn deaf_to_moves(hosts: &[&str]) -> Stack {
    let stack = Stack::start().await;
    for host in hosts {
        let (status, body) = stack.get_json(host, "/").await;
        assert_eq!((status, body["shard"].as_str()), (200, Some("jira-us-east-1")));
    }
    tcs_faults(&stack, &stack.tcs_urls[0], Some(json!({"pause_ingest": true}))).await;
    stack
}

/// An edge that missed the switch (its change stream's region stopped ingesting) is told by
/// the source shard's fence (421 `tenant-moved`), fetches the newer context from the other
/// region, and replays a GET at the target; a POST is not replayed but answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_missed_the_switch_reroutes_on_421() {
    let stack = deaf_to_moves(&["acme.example.test", "initech.example.test"]).await;
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
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "initech.example.test", versions[1])
        .await;
    for (id, version) in ["acme", "initech"].iter().zip(&versions) {
        stack.release("jira-us-east-1", id, *version).await;
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

/// A shard's 421 sends the edge to the tenant's new placement, but the new placement is still
/// frozen: a write that would be replayed there (an idempotent, bodiless DELETE) is answered
/// 503 with `Retry-After` instead, as a first placement would be; a read is still replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_rerouted_onto_a_frozen_placement_waits() {
    let stack = deaf_to_moves(&["acme.example.test"]).await;
    let doc = json!({"id": "acme", "hosts": ["acme.example.test"], "realm": "us", "placements": {
        "jira": {"shard": "jira-us-west-2", "state": "frozen"},
        "confluence": {"shard": "confluence-us-east-1"},
    }});
    let (status, stored) = stack.put_tenant(&doc).await;
    assert_eq!(status, 200, "{stored}");
    let version = stored["version"].as_u64().unwrap();
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "acme.example.test", version)
        .await;
    stack.release("jira-us-east-1", "acme", version).await;

    let r = stack
        .http
        .delete(format!("http://127.0.0.1:{}/items/1", stack.edge_http))
        .header("host", "acme.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the write must not reach the frozen placement");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 503, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    // Reads pass a freeze: a GET goes to the new placement.
    let (status, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(
        (status, body["shard"].as_str()),
        (200, Some("jira-us-west-2")),
        "{body}"
    );

    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("tenant_edge_tenant_moved_total{outcome=\"unresolved\"} 1"),
        "{metrics}"
    );
}
