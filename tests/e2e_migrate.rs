//! `ctl migrate` against the whole stack, every role (and the orchestrator) a real process.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ctl::{ctl, Ran};
use common::*;
use serde_json::{json, Value};
use tokio::sync::watch;

const SOURCE: &str = "jira-us-east-1";
const TARGET: &str = "jira-us-west-2";

/// Runs `ctl migrate` for `tenant`'s jira to shard `to`, with the operator token.
async fn migrate(stack: &Stack, tenant: &str, to: &str, extra: &[&str]) -> Ran {
    let host = format!("{tenant}.example.test");
    let mut args = vec!["migrate", "--host", &host, "--product", "jira", "--to", to];
    args.extend_from_slice(extra);
    let token = Some(stack.operator_token());
    ctl(&stack.catalogue_url, token, &args, "").await
}

/// The first backend port of `shard`: where its mover hooks are.
fn hooks(stack: &Stack, shard: &str) -> String {
    let ports = &stack.backends.iter().find(|(id, _)| id == shard).unwrap().1;
    format!("http://127.0.0.1:{}/mover", ports[0])
}

async fn hook(stack: &Stack, shard: &str, name: &str, body: Value) -> Value {
    let r = stack
        .http
        .post(format!("{}/{name}", hooks(stack, shard)))
        .bearer_auth(stack.operator_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{name}: {}", r.status());
    r.json().await.unwrap()
}

/// GET a mover hook of `shard` (`export?tenant=..`, `regions?tenant=..`) with the token.
async fn mover_get(stack: &Stack, shard: &str, hook: &str) -> Value {
    let url = format!("{}/{hook}", hooks(stack, shard));
    let r = stack
        .http
        .get(url)
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

async fn export(stack: &Stack, shard: &str, tenant: &str) -> Value {
    mover_get(stack, shard, &format!("export?tenant={tenant}")).await
}

/// Catalogue call: status and JSON body.
async fn api(stack: &Stack, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = stack
        .http
        .request(method, format!("{}{path}", stack.catalogue_url))
        .bearer_auth(stack.operator_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn create(stack: &Stack, tenant: &str, to: &str) -> Value {
    let body = json!({"tenant": tenant, "product": "jira", "to": to});
    let (status, doc) = api(stack, reqwest::Method::POST, "/v1/migrations", Some(body)).await;
    assert_eq!(status, 201, "{doc}");
    doc
}

async fn set_phase(stack: &Stack, id: &str, phase: &str) {
    let path = format!("/v1/migrations/{id}/phase");
    let (status, doc) = api(
        stack,
        reqwest::Method::PUT,
        &path,
        Some(json!({ "phase": phase })),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
}

async fn phase(stack: &Stack, id: &str) -> String {
    let (_, doc) = api(stack, reqwest::Method::GET, &format!("/v1/migrations/{id}"), None).await;
    doc["phase"].as_str().unwrap().to_owned()
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn post_item(stack: &Stack, host: &str, n: u64) -> reqwest::Response {
    stack
        .http
        .post(format!("http://127.0.0.1:{}/items", stack.edge_http))
        .header("host", host)
        .json(&json!({ "n": n }))
        .send()
        .await
        .unwrap()
}

/// What the client saw during the move.
#[derive(Default)]
struct Traffic {
    acked: Vec<String>,
    write_503s: Vec<Instant>,
    other_errors: Vec<String>,
    reads: u64,
}

/// Writes (and reads back the last write) every ~5 ms until `stop`; `acked` counts the writes
/// acknowledged so far.
async fn client(stack: Arc<Stack>, stop: Arc<AtomicBool>, acked: watch::Sender<usize>) -> Traffic {
    let mut t = Traffic::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let r = post_item(&stack, "acme.example.test", n).await;
        match r.status().as_u16() {
            201 => {
                let v: Value = r.json().await.unwrap();
                t.acked.push(v["id"].as_str().unwrap().to_owned());
                acked.send_modify(|n| *n += 1);
            }
            503 => t.write_503s.push(Instant::now()),
            s => t.other_errors.push(format!("POST {s}")),
        }
        if let Some(id) = t.acked.last() {
            let r = stack.get("acme.example.test", &format!("/items/{id}")).await;
            t.reads += 1;
            if r.status() != 200 {
                t.other_errors.push(format!("GET {id}: {}", r.status()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

/// Waits (10 s at most) until the traffic has had `n` writes acknowledged.
async fn acked_at_least(acks: &mut watch::Receiver<usize>, n: usize) {
    let reached = tokio::time::timeout(Duration::from_secs(10), acks.wait_for(|&a| a >= n));
    let acked = reached
        .await
        .map_err(|_| format!("{n} writes not acknowledged"))
        .unwrap();
    acked.map_err(|_| "the traffic stopped").unwrap();
}

/// A move under write traffic loses no acknowledged write, fails only writes (503) and only
/// while frozen, and afterwards everything is served by the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_under_traffic_loses_no_acknowledged_write() {
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            show_backend_headers: true,
            ..Default::default()
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, mut acks) = watch::channel(0);
    let traffic = tokio::spawn(client(stack.clone(), stop.clone(), acked));
    // Some writes land on the source before the move.
    acked_at_least(&mut acks, 5).await;

    let ran = migrate(&stack, "acme", TARGET, &["--drain-ms", "300"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    for step in ["frozen", "copying", "switched", "cleaning", "done"] {
        assert!(
            ran.stdout.contains(&format!("[acme/jira] {step} (")),
            "{}",
            ran.stdout
        );
    }
    // Traffic goes on until writes after the move are acknowledged too.
    let moved_at = *acks.borrow();
    acked_at_least(&mut acks, moved_at + 20).await;
    stop.store(true, Ordering::Relaxed);
    let t = traffic.await.unwrap();

    let window = match (t.write_503s.first(), t.write_503s.last()) {
        (Some(a), Some(b)) => format!("{:?}", b.duration_since(*a)),
        _ => "none".to_owned(),
    };
    println!(
        "acked writes {}, reads {}, 503 on writes {} (freeze window {window}), other errors {:?}",
        t.acked.len(),
        t.reads,
        t.write_503s.len(),
        t.other_errors
    );
    assert!(t.other_errors.is_empty(), "{:?}", t.other_errors);
    assert!(!t.write_503s.is_empty(), "the freeze was never seen");
    for id in &t.acked {
        let r = stack.get("acme.example.test", &format!("/items/{id}")).await;
        assert_eq!(r.status(), 200, "acknowledged write {id} lost");
        assert!(served_by(&r).starts_with(TARGET), "{id}: {}", served_by(&r));
    }
    for _ in 0..50 {
        let r = stack.get("acme.example.test", "/items").await;
        assert_eq!(r.status(), 200);
        assert!(served_by(&r).starts_with(TARGET), "{}", served_by(&r));
    }
    assert_eq!(export(&stack, SOURCE, "acme").await["items"], json!([]));
}

/// Rolling back from `copying` brings the tenant back at the source and empties the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_copying_brings_the_tenant_back_at_the_source() {
    let stack = Stack::start_with(StackOptions {
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    assert_eq!(post_item(&stack, "acme.example.test", 1).await.status(), 201);
    // An orchestrator got as far as copying (the import done) and died.
    let m = create(&stack, "acme", TARGET).await;
    let id = m["id"].as_str().unwrap();
    hook(&stack, SOURCE, "freeze", json!({"tenant": "acme"})).await;
    set_phase(&stack, id, "frozen").await;
    set_phase(&stack, id, "copying").await;
    let items = export(&stack, SOURCE, "acme").await;
    hook(&stack, TARGET, "import", items).await;
    assert_eq!(
        export(&stack, TARGET, "acme").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let ran = migrate(&stack, "acme", TARGET, &["--rollback"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(ran.stdout.contains("[acme/jira] rolled_back ("), "{}", ran.stdout);
    assert_eq!(phase(&stack, id).await, "rolled_back");
    assert_eq!(export(&stack, TARGET, "acme").await["items"], json!([]));
    // Once the edge learns the placement is active again, writes reach the source.
    let by = eventually(Duration::from_secs(10), || async {
        let r = post_item(&stack, "acme.example.test", 2).await;
        (r.status() == 201).then(|| served_by(&r))
    })
    .await;
    assert!(by.starts_with(SOURCE), "{by}");
    // Nothing is left to roll back.
    let again = migrate(&stack, "acme", TARGET, &["--rollback"]).await;
    assert!(!again.ok());
    assert!(again.stderr.contains("no open migration"), "{}", again.stderr);
}

/// A run that died after the freeze is resumed from the recorded phase to `done`; a move past
/// the switch cannot be rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_move_resumes_from_its_recorded_phase() {
    let stack = Stack::start_with(StackOptions {
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    assert_eq!(post_item(&stack, "initech.example.test", 1).await.status(), 201);
    let m = create(&stack, "initech", TARGET).await;
    let id = m["id"].as_str().unwrap();
    hook(&stack, SOURCE, "freeze", json!({"tenant": "initech"})).await;
    set_phase(&stack, id, "frozen").await;

    let ran = migrate(&stack, "initech", TARGET, &["--drain-ms", "0"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(ran.stdout.contains(&format!("resuming {id}")), "{}", ran.stdout);
    assert!(!ran.stdout.contains("[initech/jira] frozen ("), "{}", ran.stdout);
    assert_eq!(phase(&stack, id).await, "done");
    let (_, tenant) = api(&stack, reqwest::Method::GET, "/v1/tenants/initech", None).await;
    assert_eq!(tenant["placements"]["jira"]["shard"], TARGET);
    assert_eq!(
        export(&stack, TARGET, "initech").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Past the switch: refused.
    let back = create(&stack, "initech", SOURCE).await;
    let back_id = back["id"].as_str().unwrap();
    for p in ["frozen", "copying", "switched"] {
        set_phase(&stack, back_id, p).await;
    }
    let ran = migrate(&stack, "initech", SOURCE, &["--rollback"]).await;
    assert!(!ran.ok());
    assert!(ran.stderr.contains("cannot be rolled back"), "{}", ran.stderr);
}

/// The catalogue's refusals reach the operator with their reason and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_moves_fail_with_the_catalogues_reason() {
    let stack = Stack::start_with(StackOptions {
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    let ran = migrate(&stack, "acme", "jira-eu-west-1", &[]).await;
    assert!(!ran.ok());
    assert!(ran.stderr.contains("422"), "{}", ran.stderr);

    // Another shard inside the realm, so the second move is valid but for the open one.
    let shard = json!({"id": "jira-us-west-3", "product": "jira", "regions": ["us-west-2"]});
    let (status, _) = api(
        &stack,
        reqwest::Method::PUT,
        "/v1/shards/jira-us-west-3",
        Some(shard),
    )
    .await;
    assert_eq!(status, 201);
    create(&stack, "acme", TARGET).await;
    let ran = migrate(&stack, "acme", "jira-us-west-3", &[]).await;
    assert!(!ran.ok());
    assert!(ran.stderr.contains("409"), "{}", ran.stderr);
    // Neither refused run froze the source.
    assert_eq!(post_item(&stack, "acme.example.test", 1).await.status(), 201);
}

const MULTI: &str = "jira-us-multi";

/// The tenant's item count in each data region of `shard`.
async fn regions(stack: &Stack, shard: &str, tenant: &str) -> Value {
    mover_get(stack, shard, &format!("regions?tenant={tenant}")).await
}

/// Reads the tenant's items through the edge once it routes to `shard`; the item count.
async fn items_via_edge_at(stack: &Stack, host: &str, shard: &str) -> usize {
    eventually(Duration::from_secs(10), || async {
        let r = stack
            .http
            .get(format!("http://127.0.0.1:{}/items", stack.edge_http))
            .header("host", host)
            .send()
            .await
            .unwrap();
        if r.status() != 200 || !served_by(&r).starts_with(shard) {
            return None;
        }
        let body: Value = r.json().await.unwrap();
        Some(body["items"].as_array().unwrap().len())
    })
    .await
}

/// Single-region -> multi-region -> back: each way copies only the regions added and deletes
/// only the regions dropped; the data in the shared region is never copied nor deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_between_overlapping_shards_touch_only_the_regions_that_differ() {
    let stack = Stack::start_with(StackOptions {
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    for n in 0..3 {
        assert_eq!(post_item(&stack, "acme.example.test", n).await.status(), 201);
    }
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 3, "us-west-2": 0})
    );

    // jira-us-east-1 -> jira-us-multi: add us-west-2, remove nothing.
    let ran = migrate(&stack, "acme", MULTI, &["--drain-ms", "100"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("copied 3 items to jira-us-multi in us-west-2"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("nothing to delete"), "{}", ran.stdout);
    let (_, list) = api(&stack, reqwest::Method::GET, "/v1/migrations?tenant=acme", None).await;
    let there = &list.as_array().unwrap()[0];
    assert_eq!(
        (&there["regions_to_add"], &there["regions_to_remove"]),
        (&json!(["us-west-2"]), &json!([]))
    );
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 3, "us-west-2": 3})
    );
    assert_eq!(items_via_edge_at(&stack, "acme.example.test", MULTI).await, 3);
    // A write at the multi-region shard lands in both its regions.
    let r = post_item(&stack, "acme.example.test", 3).await;
    assert_eq!(
        (r.status().as_u16(), served_by(&r).starts_with(MULTI)),
        (201, true)
    );
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 4, "us-west-2": 4})
    );

    // And back: add nothing, remove us-west-2; us-east-1 keeps every item, the new one too.
    let ran = migrate(&stack, "acme", SOURCE, &["--drain-ms", "100"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(ran.stdout.contains("nothing to copy"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("deleted from jira-us-multi in us-west-2"),
        "{}",
        ran.stdout
    );
    let (_, list) = api(&stack, reqwest::Method::GET, "/v1/migrations?tenant=acme", None).await;
    let back = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["to"] == SOURCE)
        .unwrap();
    assert_eq!(
        (&back["regions_to_add"], &back["regions_to_remove"]),
        (&json!([]), &json!(["us-west-2"]))
    );
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 4, "us-west-2": 0})
    );
    assert_eq!(items_via_edge_at(&stack, "acme.example.test", SOURCE).await, 4);
}

/// Rolling back a move into a multi-region shard deletes only what the copy added: the shared
/// region holds the source's own data and stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_into_an_overlapping_shard_leaves_the_shared_region_whole() {
    let stack = Stack::start_with(StackOptions {
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    for n in 0..2 {
        assert_eq!(post_item(&stack, "acme.example.test", n).await.status(), 201);
    }
    // An orchestrator got as far as copying into us-west-2 and died.
    let m = create(&stack, "acme", MULTI).await;
    let id = m["id"].as_str().unwrap();
    hook(&stack, SOURCE, "freeze", json!({"tenant": "acme"})).await;
    set_phase(&stack, id, "frozen").await;
    set_phase(&stack, id, "copying").await;
    let mut items = export(&stack, SOURCE, "acme").await;
    items["regions"] = json!(["us-west-2"]);
    hook(&stack, MULTI, "import", items).await;
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 2, "us-west-2": 2})
    );

    let ran = migrate(&stack, "acme", MULTI, &["--rollback"]).await;
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("target jira-us-multi emptied in us-west-2"),
        "{}",
        ran.stdout
    );
    assert_eq!(phase(&stack, id).await, "rolled_back");
    assert_eq!(
        regions(&stack, MULTI, "acme").await,
        json!({"us-east-1": 2, "us-west-2": 0})
    );
    assert_eq!(
        export(&stack, SOURCE, "acme").await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The source serves and takes writes again once the edge learns the placement is active.
    let by = eventually(Duration::from_secs(10), || async {
        let r = post_item(&stack, "acme.example.test", 9).await;
        (r.status() == 201).then(|| served_by(&r))
    })
    .await;
    assert!(by.starts_with(SOURCE), "{by}");
    assert_eq!(items_via_edge_at(&stack, "acme.example.test", SOURCE).await, 3);
}
