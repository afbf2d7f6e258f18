//! A graceful drain under load: on SIGTERM the edge fails `/readyz` at once, answers every
//! request that arrived before the signal (none fails), tells clients to go elsewhere, and
//! exits cleanly once nothing is in flight.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::recorder::Recorder;
use common::*;

/// Clients sending requests in a loop, each answered after 300 ms.
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_request_that_started_before_it() {
    let recorder = Recorder::start().await;
    let mut stack = Stack::start().await;
    stack
        .route_shards_to("drain", &["jira-us-east-1"], recorder.port)
        .await;
    let url = format!("http://127.0.0.1:{}/", stack.edge_http);
    let signalled = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, signalled) = (url.clone(), signalled.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            // (started before the signal, answered 200) for each request; a client stops
            // after its first request that started after the signal, as a load balancer that
            // saw `/readyz` fail would.
            let mut seen = Vec::new();
            for _ in 0..200 {
                let before = !signalled.load(Ordering::SeqCst);
                let r = http
                    .get(&url)
                    .header("host", "acme.example.test")
                    .header("x-answer", "slow")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let ok = matches!(&r, Ok(r) if r.status() == 200);
                seen.push((before, ok));
                if !before {
                    break;
                }
            }
            seen
        }));
    }
    // Every client has a request in flight once the backend has seen one from each (it holds
    // each for 300 ms).
    let mut seen = 0;
    eventually(Duration::from_secs(20), || {
        seen += recorder.take().len();
        let all = seen >= CLIENTS;
        async move { all.then_some(()) }
    })
    .await;
    stack.edges[0].signal_term();
    signalled.store(true, Ordering::SeqCst);
    // `/readyz` fails while the drain runs.
    let readyz = stack.admin("/readyz");
    let draining = eventually(Duration::from_secs(5), || async {
        let r = stack.http.get(&readyz).send().await.ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        (body["draining"] == true).then_some(body)
    })
    .await;
    assert_eq!(draining["ready"], false, "{draining}");
    let mut before = 0;
    let mut failed_before = 0;
    for client in clients {
        for (started_before, ok) in client.await.unwrap() {
            if started_before {
                before += 1;
                failed_before += usize::from(!ok);
            }
        }
    }
    assert!(
        before >= CLIENTS,
        "every client had a request in flight: {before}"
    );
    assert_eq!(failed_before, 0, "of {before} requests started before SIGTERM");
    let clean = tokio::task::spawn_blocking(move || stack.edges[0].wait_exit())
        .await
        .unwrap();
    assert!(clean, "the edge exits cleanly after its drain");
}
