//! The catalogue on a PostgreSQL primary with a synchronous standby, under a steady stream of
//! acknowledged tenant writes: the primary is killed (SIGKILL) and the standby promoted. The
//! catalogue follows through its multi-host connection string (`target_session_attrs=
//! read-write`) with no restart and no configuration change; every acknowledged write is
//! still there, the log is dense, and TCS and the edge converge on the final state.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Stack, StackOptions};
use serde_json::json;
use tenant_edge::catalogue::StoreConfig;
use tenant_edge::stack::postgres::PgServer;

fn tenant(n: u32) -> serde_json::Value {
    json!({"id": format!("fo-{n}"), "hosts": [format!("fo-{n}.example.test")], "realm": "us",
           "placements": {"jira": {"shard": "jira-us-east-1"}}})
}

#[derive(Debug, Clone)]
struct Write {
    n: u32,
    status: u16,
    sent: Instant,
    done: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_follows_a_failover_and_loses_no_acknowledged_write() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut primary = PgServer::start(d1.path(), &[("synchronous_standby_names", "*")]).unwrap();
    // A standby retries its WAL source every 5 s by default, which can hold up a promotion.
    let standby =
        PgServer::standby_of(&primary, d2.path(), &[("wal_retrieve_retry_interval", "100ms")]).unwrap();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres \
         target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        standby.port()
    );
    let stack = Stack::start_with(StackOptions {
        catalogue_store: Some(StoreConfig::Postgres(url)),
        ..StackOptions::default()
    })
    .await;
    // The demo tenants were seeded through the catalogue, so the synchronous standby is live.
    assert_eq!(stack.get_json("acme.example.test", "/").await.0, 200);

    // A steady stream of writes from their own task, one at a time, each a new tenant:
    // acknowledged (201) or refused (503, outcome unknown to the writer).
    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (http, catalogue, token) = (
            stack.http.clone(),
            stack.catalogue_url.clone(),
            stack.operator_token().to_owned(),
        );
        let (writes, stop) = (Arc::clone(&writes), stop.clone());
        tokio::spawn(async move {
            let mut acked = 0;
            for n in 1.. {
                if stop.is_cancelled() {
                    return;
                }
                let doc = tenant(n);
                let sent = Instant::now();
                let status = http
                    .put(format!("{catalogue}/v1/tenants/fo-{n}"))
                    .bearer_auth(&token)
                    .json(&doc)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                assert!(status == 201 || status == 503, "write {n}: {status}");
                writes.lock().unwrap().push(Write {
                    n,
                    status,
                    sent,
                    done: Instant::now(),
                });
                if status == 201 {
                    acked += 1;
                    acked_tx.send_replace(acked);
                }
            }
        })
    };
    acked_rx.wait_for(|&a| a >= 100).await.unwrap();
    let switch = Instant::now();
    primary.kill();
    standby.promote().unwrap();
    let promoted = switch.elapsed();
    // A hundred more acknowledged after the promotion, or the catalogue never followed.
    let target = *acked_rx.borrow() + 100;
    tokio::time::timeout(Duration::from_secs(60), acked_rx.wait_for(|&a| a >= target))
        .await
        .map_err(|_| "writes never came back after the failover")
        .unwrap()
        .unwrap();
    stop.cancel();
    writer.await.unwrap();

    let writes = writes.lock().unwrap().clone();
    let acked: Vec<u32> = writes.iter().filter(|w| w.status == 201).map(|w| w.n).collect();
    let refused: Vec<&Write> = writes.iter().filter(|w| w.status != 201).collect();
    // Writes failed from the first refused one's start to the next acknowledged one's end; a
    // write that waited through the switch instead shows as the slowest write.
    let window = refused.first().map(|first| {
        let back = writes.iter().find(|w| w.status == 201 && w.n > first.n).unwrap();
        back.done - first.sent
    });
    let slowest = writes.iter().map(|w| w.done - w.sent).max().unwrap();
    eprintln!(
        "failover: kill + promote took {promoted:?}; {} writes refused (503), failing for {window:?}; \
         slowest write {slowest:?}; {} acknowledged",
        refused.len(),
        acked.len()
    );

    // Every acknowledged write is there, once, in a dense log.
    let catalogue = stack.catalogue_url.clone();
    let token = stack.operator_token().to_owned();
    let page: serde_json::Value = stack
        .http
        .get(format!("{catalogue}/v1/changes?after=0&limit=10000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let changes = page["changes"].as_array().unwrap();
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    let head = page["head"].as_u64().unwrap();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "dense");
    for n in &acked {
        let id = format!("fo-{n}");
        let found = changes.iter().filter(|c| c["id"] == id.as_str()).count();
        assert_eq!(found, 1, "acknowledged write {id} is in the log once");
    }

    // TCS and the edge converge: the last acknowledged tenant routes.
    let last = format!("fo-{}.example.test", acked.last().unwrap());
    let first = format!("fo-{}.example.test", acked[0]);
    eventually(Duration::from_secs(30), || async {
        (stack.get_json(&last, "/").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(stack.get_json(&first, "/").await.0, 200);
}
