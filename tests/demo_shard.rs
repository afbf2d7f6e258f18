//! The `demo-shard` subcommand, run as a real process on loopback.

use std::path::Path;

use tenant_edge::stack::Child;

/// The subcommand binds a port of its choosing, says which, serves, keeps items in its data
/// directory, and stops cleanly on SIGTERM.
#[tokio::test]
async fn demo_shard_subcommand_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shards");
    let args = [
        "demo-shard",
        "--shard",
        "jira-us-east-1",
        "--backend",
        "b2",
        "--product",
        "jira",
        "--regions",
        "us-east-1",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--allow-unauthenticated",
    ];
    // Returns once the process said where it listens: nothing to poll.
    let mut shard = Child::start(Path::new(env!("CARGO_BIN_EXE_tenant-edge")), "shard", &args).unwrap();
    let base = shard.url();
    let body: serde_json::Value = reqwest::get(format!("{base}/browse/X-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["shard"], "jira-us-east-1");
    assert_eq!(body["backend"], "b2");
    assert_eq!(body["path"], "/browse/X-1");

    // Items land in the shard's file in the data directory.
    let resp = reqwest::Client::new()
        .post(format!("{base}/items"))
        .header("x-tenant-id", "acme")
        .json(&serde_json::json!({"k": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-served-by"], "jira-us-east-1/b2");
    assert!(data.join("shard-jira-us-east-1.db").exists());

    let stopped = tokio::task::spawn_blocking(move || shard.terminate())
        .await
        .unwrap();
    assert!(stopped, "a clean exit on SIGTERM");
}
