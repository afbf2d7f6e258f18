//! The `demo-shard` subcommand, run as a real process on loopback.

#[path = "common/ports.rs"]
mod ports;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Stops the child even when an assertion fails first.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

#[tokio::test]
async fn demo_shard_subcommand_serves_and_stops_on_sigterm() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports::free_port()));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shards");
    let child = Command::new(env!("CARGO_BIN_EXE_tenant-edge"))
        .args([
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
        ])
        .arg(addr.to_string())
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);

    let url = format!("http://{addr}/browse/X-1");
    let mut body = None;
    // The process gives no readiness signal but its port: retry, a bounded number of times.
    for _ in 0..500 {
        body = get_json(&url).await;
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = body.expect("demo shard never answered");
    assert_eq!(body["shard"], "jira-us-east-1");
    assert_eq!(body["backend"], "b2");
    assert_eq!(body["path"], "/browse/X-1");

    // Items land in the shard's file in the data directory.
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/items"))
        .header("x-tenant-id", "acme")
        .json(&serde_json::json!({"k": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-served-by"], "jira-us-east-1/b2");
    assert!(data.join("shard-jira-us-east-1.db").exists());

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
