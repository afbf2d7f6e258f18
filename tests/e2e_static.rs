//! Static stability end to end: an edge restarted while every TCS region is down serves the
//! tenants it knew from its cache file; the file is written periodically, not only on shutdown.

#![expect(clippy::unwrap_used, reason = "test helpers: failing loudly is the point")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Every demo tenant and product: host, path, the shard that must answer.
const KNOWN: [(&str, &str, &str); 5] = [
    ("acme.example.test", "/", "jira-us-east-1"),
    ("acme.example.test", "/wiki/x", "confluence-us-east-1"),
    ("globex.example.test", "/", "jira-eu-west-1"),
    ("globex.example.test", "/wiki", "confluence-eu-west-1"),
    ("initech.example.test", "/projects", "jira-us-east-1"),
];

async fn admin_json(stack: &Stack, path: &str) -> Value {
    let r = stack.http.get(stack.admin(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Requests every known tenant and product once; all must reach their shard.
async fn warm(stack: &Stack) {
    for (host, path, shard) in KNOWN {
        let (status, body) = stack.get_json(host, path).await;
        assert_eq!(status, 200, "{host}{path}: {body}");
        assert_eq!(body["shard"], shard, "{host}{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_serves_known_tenants_from_its_file_with_every_tcs_down() {
    let options = StackOptions {
        cache_file_interval_secs: Some(3600),
        ..Default::default()
    };
    let mut stack = Stack::start_with(options).await;
    warm(&stack).await;
    // SIGTERM: the edge writes its file on the way out (the periodic write is an hour away).
    assert!(stack.edges[0].terminate(), "the edge stops cleanly on SIGTERM");
    let file = tenant_edge::context::persist::read(&stack.edge_cache_file)
        .unwrap()
        .expect("the edge wrote its cache file on shutdown");
    assert_eq!(file.records, 3);
    assert!(file.seq > 0, "the file records how far the change stream got");
    for tcs in &mut stack.tcs {
        tcs.kill();
    }
    // Back once it says it is ready (its file's tenants cached), listening on both ports.
    stack.edges[0].restart_ready().unwrap();

    let cache = admin_json(&stack, "/admin/cache").await;
    assert_eq!(cache["file"]["loaded_records"], 3, "{cache}");
    assert_eq!(cache["file"]["loaded_seq"], file.seq, "{cache}");
    assert_eq!(cache["applied_seq"], file.seq, "{cache}");
    let acme = admin_json(&stack, "/admin/tenants/acme.example.test").await;
    assert_eq!(acme["origin"], "file", "{acme}");

    let mut errors = Vec::new();
    for i in 0..1000 {
        let (host, path, shard) = KNOWN[i % KNOWN.len()];
        let (status, body) = stack.get_json(host, path).await;
        if status != 200 || body["shard"] != shard {
            errors.push(format!("{host}{path}: {status} {body}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );

    let r = stack.get("never-seen.example.test", "/").await;
    assert_eq!(r.status(), 503, "an outage must not look like a deletion");
    assert!(r.headers().contains_key("retry-after"));
    let r = stack.http.get(stack.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "an edge that knows tenants stays ready");

    // A TCS comes back: the stream resumes from the file's sequence and changes flow again.
    stack.tcs[0].restart().unwrap();
    let doc = json!({"id": "acme", "hosts": ["acme.example.test", "acme2.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}});
    assert_eq!(stack.put_tenant(&doc).await.0, 200);
    eventually(Duration::from_secs(30), || async {
        let body = stack.admin_json("/admin/tenants/acme.example.test").await;
        (body["version"] == 2).then_some(())
    })
    .await;
    let (status, body) = stack.get_json("acme2.example.test", "/").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_file_is_written_periodically_without_a_shutdown() {
    let options = StackOptions {
        cache_file_interval_secs: Some(1),
        ..Default::default()
    };
    let mut stack = Stack::start_with(options).await;
    warm(&stack).await;
    eventually(Duration::from_secs(10), || async {
        let cache = admin_json(&stack, "/admin/cache").await;
        (cache["file"]["last_write_records"] == 3).then_some(())
    })
    .await;
    // SIGKILL: no shutdown write, so what is on disk came from the periodic writer.
    stack.edges[0].kill();
    let file = tenant_edge::context::persist::read(&stack.edge_cache_file)
        .unwrap()
        .expect("the periodic writer wrote the cache file");
    let mut ids: Vec<String> = file
        .parse()
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["acme", "globex", "initech"]);
}
