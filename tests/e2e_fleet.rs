//! Fleet freshness: every edge reports itself to its region's TCS, `GET /v1/fleet` shows each
//! one's lag behind the view, and `ctl fleet` lists them, the laggards first, failing past a
//! bound. An edge that stops (SIGSTOP) while the catalogue moves on shows up as lagging, and
//! catches up once it runs again.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::time::Duration;

use common::ctl::ctl;
use common::{eventually, Stack, StackOptions};
use serde_json::{json, Value};

async fn fleet(stack: &Stack) -> Value {
    let r = stack
        .http
        .get(format!("{}/v1/fleet", stack.tcs_urls[0]))
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_stopped_edge_shows_up_as_lagging_and_ctl_fleet_fails_past_the_bound() {
    let stack = Stack::start_with(StackOptions {
        more_edges: 1,
        ..StackOptions::default()
    })
    .await;
    let tcs = stack.tcs_urls[0].clone();

    // Both edges report, caught up; edge-0 holds the tenant it just served.
    assert_eq!(stack.get_json("acme.example.test", "/").await.0, 200);
    eventually(Duration::from_secs(10), || async {
        let f = fleet(&stack).await;
        let edges = f["edges"].as_array()?;
        let held = edges
            .iter()
            .any(|e| e["id"] == "edge-0" && e["cache_entries"].as_u64() >= Some(1));
        (edges.len() == 2 && held && edges.iter().all(|e| e["lag_seqs"] == 0)).then_some(())
    })
    .await;
    let f = fleet(&stack).await;
    let ids: Vec<&str> = f["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["edge-0", "edge-1"]);
    assert_eq!(f["edges"][0]["version"], env!("CARGO_PKG_VERSION"));
    let token = stack.operator_token().to_owned();
    let args = ["fleet", "--tcs", &tcs, "--max-lag-seconds", "0.5"];
    let ok = ctl(&stack.catalogue_url, Some(&token), &args, "").await;
    assert!(ok.ok(), "{}", ok.stderr);
    assert!(
        ok.stdout.contains("edge-0") && ok.stdout.contains("edge-1"),
        "{}",
        ok.stdout
    );

    // edge-1 stops; the catalogue moves on.
    let pid = stack.edges[1].pid().unwrap();
    signal(pid, "-STOP");
    let doc = json!({"id": "newco", "hosts": ["newco.example.test"], "realm": "us",
                     "placements": {"jira": {"shard": "jira-us-east-1"}}});
    assert_eq!(stack.put_tenant(&doc).await.0, 201);
    let behind = eventually(Duration::from_secs(15), || async {
        let f = fleet(&stack).await;
        let first = f["edges"][0].clone();
        (first["id"] == "edge-1" && first["lag_seqs"].as_u64()? >= 1 && first["lag_seconds"].as_f64()? > 0.5)
            .then_some(f)
    })
    .await;
    assert_eq!(behind["edges"][1]["id"], "edge-0");
    assert_eq!(behind["edges"][1]["lag_seqs"], 0, "{behind}");
    let failed = ctl(&stack.catalogue_url, Some(&token), &args, "").await;
    assert_eq!(failed.code, Some(3), "{}", failed.stderr);
    let first_row = failed.stdout.lines().nth(2).unwrap_or_default();
    assert!(first_row.starts_with("edge-1"), "{}", failed.stdout);
    assert!(
        failed.stderr.contains("1 edge(s) past the bound"),
        "{}",
        failed.stderr
    );

    // Running again, it catches up.
    signal(pid, "-CONT");
    eventually(Duration::from_secs(15), || async {
        let f = fleet(&stack).await;
        f["edges"]
            .as_array()?
            .iter()
            .all(|e| e["lag_seqs"] == 0)
            .then_some(())
    })
    .await;
}

/// Reports need an edge's token; the fleet view a consumer's or the operator's.
#[tokio::test]
async fn fleet_reports_and_views_are_authenticated_and_checked() {
    let stack = Stack::start().await;
    let tcs = &stack.tcs_urls[0];
    let report = json!({"region": "us-east-1", "version": "x", "applied_seq": 1, "cache_entries": 0});
    let post = |id: &str, token: Option<&str>| {
        let mut req = stack
            .http
            .post(format!("{tcs}/v1/fleet/edges/{id}"))
            .json(&report);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(post("e9", None).await.unwrap().status(), 401);
    assert_eq!(
        post("e9", Some("not-a-token-at-all")).await.unwrap().status(),
        401
    );
    assert_eq!(
        post("bad%20id", Some(common::EDGE_TOKEN)).await.unwrap().status(),
        400
    );
    assert_eq!(post("e9", Some(common::EDGE_TOKEN)).await.unwrap().status(), 200);
    let bad = stack
        .http
        .post(format!("{tcs}/v1/fleet/edges/e9"))
        .bearer_auth(common::EDGE_TOKEN)
        .json(&json!({"region": "us-east-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let anonymous = stack.http.get(format!("{tcs}/v1/fleet")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let f = fleet(&stack).await;
    assert!(
        f["edges"].as_array().unwrap().iter().any(|e| e["id"] == "e9"),
        "{f}"
    );
    let metrics = stack
        .http
        .get(format!("{tcs}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tcs_fleet_edges"), "{metrics}");
}
