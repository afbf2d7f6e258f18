//! The wide fan-out against a real AWS emulator (`moto_server`) on loopback: TCS publishes the
//! view's changes to its region's SNS topic, every edge reads its own SQS queue.
//!
//! - every edge (the stack's edge process and 50 in-process consumers, each with its own queue)
//!   gets every change, through SQS;
//! - faults the emulator never makes (duplicated, reordered, dropped messages) are injected into
//!   a queue directly: nothing stale is left and nothing applies out of order;
//! - the emulator going away moves the edge to the stream, with nothing lost, and back; a queue
//!   deleted under an edge is created again;
//! - two TCS nodes of one region: one publisher at a time, the other taking over.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, metric, Stack, StackOptions, EDGE_TOKEN};
use serde_json::{json, Value};
use tenant_edge::context::TcsEndpoint;
use tenant_edge::fanout::aws::SnsConfig;
use tenant_edge::fanout::consume::Headless;
use tenant_edge::fanout::FanoutMessage;
use tenant_edge::feed::ViewEvent;
use tenant_edge::stack::moto::MotoServer;
use tokio_util::sync::CancellationToken;

const REGION: &str = "us-east-1";
const ACME: &str = "acme.example.test";

/// The emulator, and the credentials the SDK's standard chain finds (it signs every request;
/// the emulator accepts any key).
fn moto() -> MotoServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .try_init();
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    MotoServer::start().unwrap()
}

/// The stack's fan-out settings: topics `te-<region>`, quick retries for the tests.
fn settings(moto: &MotoServer) -> SnsConfig {
    let mut sns = SnsConfig::new("te-");
    sns.endpoint_url = Some(moto.endpoint());
    sns.retry_secs = 2;
    // Shorter long polls: an edge notices it hears nothing sooner.
    sns.wait_secs = 5;
    sns
}

/// An in-process edge of region `REGION` on the stack's TCS.
fn mini(stack: &Stack, mut sns: SnsConfig, id: &str) -> Headless {
    sns.topic = format!("{}{REGION}", sns.topic);
    let tcs = TcsEndpoint {
        region: REGION.into(),
        url: stack.tcs_urls[0].clone(),
        token: EDGE_TOKEN.into(),
    };
    Headless::start(tcs, sns, id).unwrap()
}

/// Replaces acme's document with one more host; its new version.
async fn touch_acme(stack: &Stack, n: usize) -> u64 {
    let r = stack
        .http
        .get(format!("{}/v1/tenants/acme", stack.catalogue_url))
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap();
    let mut doc: Value = r.json().await.unwrap();
    doc["hosts"] = json!([ACME, format!("acme-{n}.example.test")]);
    let (status, stored) = stack.put_tenant(&doc).await;
    assert_eq!(status, 200, "{stored}");
    stored["version"].as_u64().unwrap()
}

async fn tcs_metrics(stack: &Stack, i: usize) -> String {
    let url = format!("{}/metrics", stack.tcs_urls[i]);
    stack.http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn edge_transport(stack: &Stack) -> Value {
    stack.admin_json("/admin/regions").await["fanout"]["transport"].clone()
}

/// The version of `host` the stack's edge holds (0: none).
async fn edge_version(stack: &Stack, host: &str) -> u64 {
    let v = stack.admin_json(&format!("/admin/tenants/{host}")).await;
    v["version"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_gets_every_change_through_its_own_queue() {
    let moto = moto();
    let sns = settings(&moto);
    let stack = Stack::start_with(StackOptions {
        fanout: Some(sns.clone()),
        ..StackOptions::default()
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        (edge_transport(&stack).await == "sqs").then_some(())
    })
    .await;
    let minis: Vec<Headless> = (0..50)
        .map(|i| mini(&stack, sns.clone(), &format!("mini-{i}")))
        .collect();
    for m in &minis {
        m.on_sqs().await;
        // Each holds acme (a change applies to the hosts an edge holds).
        m.cache.resolve(ACME).await.unwrap();
    }
    assert_eq!(stack.get_json(ACME, "/").await.0, 200);

    let mut lags = Vec::new();
    for n in 0..3 {
        let written = Instant::now();
        let version = touch_acme(&stack, n).await;
        eventually(Duration::from_secs(20), || async {
            minis.iter().all(|m| m.version(ACME) >= version).then_some(())
        })
        .await;
        lags.push(written.elapsed());
        eventually(Duration::from_secs(20), || async {
            (edge_version(&stack, ACME).await >= version).then_some(())
        })
        .await;
    }
    eprintln!("write to all 50 in-process edges: {lags:?}");
    for m in &minis {
        let applied = m.metrics.fanout_events_applied.get();
        let by = |r: &str| m.metrics.fanout_messages.with_label_values(&[r]).get();
        let rep = |r: &str| m.metrics.fanout_repairs.with_label_values(&[r]).get();
        assert!(
            applied >= 1,
            "every change came through SQS, not a repair ({applied}; messages applied {} duplicate {} buffered {}; repairs start {} gap {})",
            by("applied"), by("duplicate"), by("buffered"), rep("start"), rep("gap")
        );
    }
    let tcs = tcs_metrics(&stack, 0).await;
    assert!(
        metric(&tcs, "tcs_fanout_published_total{result=\"ok\"") >= 3.0,
        "{tcs}"
    );
    assert_eq!(metric(&tcs, "tcs_fanout_leader"), 1.0);
    let edge = stack.metrics().await;
    assert!(
        metric(&edge, "tenant_edge_fanout_events_applied_total") >= 1.0,
        "{edge}"
    );
    assert_eq!(
        metric(&edge, "tenant_edge_fanout_transport{transport=\"sqs\"}"),
        1.0
    );
    for m in minis {
        m.stop().await;
    }
}

/// Reads the TCS change stream after `after` until `n` upserts came.
async fn upserts_after(stack: &Stack, after: u64, n: usize) -> Vec<ViewEvent> {
    let url = format!("{}/v1/views/ingress/changes?after={after}", stack.tcs_urls[0]);
    let mut resp = stack.http.get(url).bearer_auth(EDGE_TOKEN).send().await.unwrap();
    let mut events = Vec::new();
    let mut buf = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            if let Ok(e @ ViewEvent::Upsert { .. }) = serde_json::from_slice::<ViewEvent>(&line) {
                events.push(e);
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_and_dropped_messages_leave_nothing_stale() {
    let moto = moto();
    let stack = Stack::start_with(StackOptions {
        fanout: Some(settings(&moto)),
        ..StackOptions::default()
    })
    .await;
    // A consumer on a topic nobody publishes to: only what the test sends reaches it.
    let mut quiet = settings(&moto);
    quiet.topic = "faults-".into();
    let mini = mini(&stack, quiet, "faulty");
    mini.on_sqs().await;
    mini.cache.resolve(ACME).await.unwrap();
    let start = mini.status.applied();
    let v0 = mini.version(ACME);

    let mut versions = Vec::new();
    for n in 0..5 {
        versions.push(touch_acme(&stack, n).await);
    }
    let events = upserts_after(&stack, start, 5).await;
    let message = |e: &ViewEvent| {
        let ViewEvent::Upsert { seq, prev, .. } = e else {
            unreachable!()
        };
        FanoutMessage {
            from_seq: *seq,
            to_seq: *seq,
            prev: *prev,
            events: vec![e.clone()],
        }
        .to_body()
    };
    let bodies: Vec<String> = events.iter().map(message).collect();

    let sdk = settings(&moto).sdk(REGION).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs
        .get_queue_url()
        .queue_name("tenant-edge-faulty")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    // The second before the first, duplicates, the fourth never: the edge must wait for the
    // first, skip the duplicates, and repair the hole from TCS.
    let mut seen = vec![mini.version(ACME)];
    for i in [1, 0, 0, 2, 4, 2] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(&bodies[i])
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        seen.push(mini.version(ACME));
    }
    let last = *versions.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mini.version(ACME) != last {
        assert!(
            Instant::now() < deadline,
            "the dropped change never came: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.push(mini.version(ACME));
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "a version went back: {seen:?}"
    );
    assert!(seen.iter().all(|v| *v == v0 || versions.contains(v)), "{seen:?}");
    let m = &mini.metrics;
    assert!(m.fanout_messages.with_label_values(&["duplicate"]).get() >= 2);
    assert!(m.fanout_messages.with_label_values(&["buffered"]).get() >= 1);
    assert!(
        m.fanout_repairs.with_label_values(&["gap"]).get() >= 1,
        "the dropped message was repaired"
    );
    // A body that is no fan-out message is counted and deleted, not retried forever.
    sqs.send_message()
        .queue_url(&queue)
        .message_body("{\"hello\": 1}")
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        (m.fanout_messages.with_label_values(&["malformed"]).get() == 1).then_some(())
    })
    .await;
    mini.stop().await;
    // At shutdown the queue is deleted.
    let gone = sqs.get_queue_url().queue_name("tenant-edge-faulty").send().await;
    assert!(gone.is_err(), "the queue outlived its edge");
}

// Waits here are a minute: the emulator restarted, queues created again and repairs all take
// their time when the machine is busy (they end as soon as the condition holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_moves_the_edge_to_the_stream_and_a_deleted_queue_comes_back() {
    let mut moto = moto();
    let port = moto.port();
    let stack = Stack::start_with(StackOptions {
        fanout: Some(settings(&moto)),
        ..StackOptions::default()
    })
    .await;
    eventually(Duration::from_secs(60), || async {
        (edge_transport(&stack).await == "sqs").then_some(())
    })
    .await;
    assert_eq!(stack.get_json(ACME, "/").await.0, 200);

    // SNS and SQS down: the edge follows the stream, and changes still arrive.
    moto.stop();
    eventually(Duration::from_secs(60), || async {
        (edge_transport(&stack).await == "stream-fallback").then_some(())
    })
    .await;
    let v = touch_acme(&stack, 1).await;
    eventually(Duration::from_secs(20), || async {
        (edge_version(&stack, ACME).await >= v).then_some(())
    })
    .await;
    let edge = stack.metrics().await;
    assert_eq!(
        metric(&edge, "tenant_edge_fanout_transport{transport=\"stream\"}"),
        1.0
    );

    // Back: the edge returns to its queue (a new one: the emulator forgot everything).
    let moto = MotoServer::start_on(port).unwrap();
    eventually(Duration::from_secs(60), || async {
        (edge_transport(&stack).await == "sqs").then_some(())
    })
    .await;
    let before = metric(&stack.metrics().await, "tenant_edge_fanout_events_applied_total");
    let v = touch_acme(&stack, 2).await;
    eventually(Duration::from_secs(60), || async {
        (edge_version(&stack, ACME).await >= v).then_some(())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = stack.metrics().await;
        if metric(&text, "tenant_edge_fanout_events_applied_total") > before {
            break;
        }
        if Instant::now() > deadline {
            let fan: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("fanout") && !l.starts_with('#'))
                .collect();
            let tcs = tcs_metrics(&stack, 0).await;
            let pubs: Vec<&str> = tcs
                .lines()
                .filter(|l| l.contains("fanout") && !l.starts_with('#'))
                .collect();
            panic!(
                "no change through the new queue: {fan:#?} {pubs:#?} {}",
                stack.admin_json("/admin/regions").await["fanout"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The queue deleted under the edge: it is created again, and changes come through it.
    let sdk = settings(&moto).sdk(REGION).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs
        .get_queue_url()
        .queue_name("tenant-edge-edge-0")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    sqs.delete_queue().queue_url(&queue).send().await.unwrap();
    eventually(Duration::from_secs(60), || async {
        sqs.get_queue_url()
            .queue_name("tenant-edge-edge-0")
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let v = touch_acme(&stack, 3).await;
    eventually(Duration::from_secs(60), || async {
        (edge_version(&stack, ACME).await >= v).then_some(())
    })
    .await;
    assert_eq!(edge_transport(&stack).await, "sqs");

    // The topic deleted (its subscriptions with it) and created again by the publisher: the
    // edge, hearing nothing while TCS moves on, repairs from the stream, then subscribes again.
    let setups = |edge: &str| metric(edge, "tenant_edge_fanout_sqs_requests_total{op=\"create_queue\"}");
    let set_up = setups(&stack.metrics().await);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = format!("arn:aws:sns:{REGION}:123456789012:te-{REGION}");
    sns.delete_topic().topic_arn(&topic).send().await.unwrap();
    for n in 4..6 {
        let v = touch_acme(&stack, n).await;
        eventually(Duration::from_secs(60), || async {
            (edge_version(&stack, ACME).await >= v).then_some(())
        })
        .await;
    }
    let before = metric(&stack.metrics().await, "tenant_edge_fanout_events_applied_total");
    let repairs = metric(
        &stack.metrics().await,
        "tenant_edge_fanout_repairs_total{reason=\"behind\"}",
    );
    assert!(repairs >= 2.0, "{repairs}");
    eventually(Duration::from_secs(60), || async {
        (setups(&stack.metrics().await) > set_up).then_some(())
    })
    .await;
    let v = touch_acme(&stack, 6).await;
    eventually(Duration::from_secs(60), || async {
        let now = metric(&stack.metrics().await, "tenant_edge_fanout_events_applied_total");
        (edge_version(&stack, ACME).await >= v && now > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_of_a_region_publishes_and_another_takes_over() {
    let moto = moto();
    let mut sns = settings(&moto);
    sns.lease_ms = 3000;
    let mut stack = Stack::start_with(StackOptions {
        fanout: Some(sns.clone()),
        ..StackOptions::default()
    })
    .await;
    // A second node of the region, in this process, on the same catalogue and topic.
    let read = stack.tcs_token().to_owned();
    let mut cfg = tenant_edge::tcs::TcsConfig::new(
        tenant_edge::tenant::Region::new(REGION).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &stack.catalogue_url,
        stack.dir.path().join("second-tcs.json"),
        vec![tenant_edge::tcs::ConsumerConfig::new(
            "edge",
            EDGE_TOKEN,
            &["ingress"],
        )],
    );
    cfg.catalogue_token = Some(read);
    let mut second_sns = sns.clone();
    second_sns.topic = format!("te-{REGION}");
    cfg.fanout = tenant_edge::fanout::aws::FanoutConfig::Sns(second_sns);
    let bound = tenant_edge::tcs::bind(cfg).await.unwrap();
    let second = bound.tcs().clone();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(bound.serve(stop.clone()));
    second.ready().await;

    // The stack's node took the lease first: the second waits.
    let leader = |text: &str| metric(text, "tcs_fanout_leader");
    for _ in 0..20 {
        let first = leader(&tcs_metrics(&stack, 0).await);
        let other = second.metrics().fanout_leader.get();
        assert_eq!(
            first + other as f64,
            1.0,
            "exactly one publisher ({first} and {other})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        second.metrics().fanout_published.with_label_values(&["ok"]).get(),
        0
    );

    // The leader dies without giving the lease up: the other takes it once it expires, and
    // publishes.
    stack.tcs[0].kill();
    eventually(Duration::from_secs(20), || async {
        (second.metrics().fanout_leader.get() == 1).then_some(())
    })
    .await;
    touch_acme(&stack, 1).await;
    eventually(Duration::from_secs(20), || async {
        (second.metrics().fanout_published.with_label_values(&["ok"]).get() >= 2).then_some(())
    })
    .await;
    stop.cancel();
    serving.await.unwrap().unwrap();
}
