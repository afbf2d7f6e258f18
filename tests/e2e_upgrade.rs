//! Binary upgrades: a new edge process takes the listening sockets over from the running one
//! (`proxy --upgrade`, then SIGQUIT to the old one), restores the cache file the old one wrote at
//! the hand-over, and the old one drains and exits; under steady load, three times in a row.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const HOSTS: [&str; 3] = ["acme.example.test", "globex.example.test", "initech.example.test"];
const CLIENTS: usize = 4;

/// Kills the edges this test started, whatever happens.
struct Edges(Vec<Child>);

impl Drop for Edges {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn quit(pid: u32) {
    let status = Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -QUIT {pid}");
}

/// One client's requests: when each started, how long it took, and what failed.
#[derive(Default)]
struct Load {
    done: Vec<(Instant, Duration)>,
    failed: Vec<String>,
}

async fn client(port: u16, n: usize, stop: Arc<AtomicBool>) -> Load {
    let http = reqwest::Client::new();
    let mut load = Load::default();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let host = HOSTS[i % HOSTS.len()];
        i += 1;
        let started = Instant::now();
        let answer = http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", host)
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 => match r.bytes().await {
                Ok(_) => load.done.push((started, started.elapsed())),
                Err(e) => load.failed.push(format!("{host}: body: {e}")),
            },
            Ok(r) => load.failed.push(format!("{host}: {}", r.status())),
            Err(e) => load.failed.push(format!("{host}: {e:?}")),
        }
    }
    load
}

fn p99(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d.get(((d.len() as f64 - 1.0) * 0.99) as usize)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_binary_upgrades_under_load_fail_no_request() {
    let mut stack = Stack::start_with(StackOptions {
        cache_file_interval_secs: Some(30),
        upgrade_sock: true,
        ..Default::default()
    })
    .await;
    let config = stack.dir.path().join("edge.toml");
    let sock = stack.dir.path().join("edge-upgrade.sock");
    for host in HOSTS {
        assert_eq!(stack.get(host, "/").await.status(), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(stack.edge_http, n, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut edges = Edges(Vec::new());
    let mut old_pid = stack.inner.edges[0].pid().unwrap();
    let mut handovers = Vec::new();
    for round in 0..3 {
        let _ = std::fs::remove_file(&sock);
        let new = Command::new(bin())
            .args(["proxy", "--upgrade", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The new edge waits on the socket; the old one is told to pass its listeners there.
        eventually(Duration::from_secs(10), || async { sock.exists().then_some(()) }).await;
        handovers.push(Instant::now());
        quit(old_pid);
        let old_exited = tokio::task::spawn_blocking({
            let mut previous = if round == 0 { None } else { edges.0.pop() };
            move || match previous.as_mut() {
                Some(child) => child.wait().map(|s| s.success()).unwrap_or(false),
                None => true,
            }
        });
        if round == 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stack.inner.edges[0].exited() {
                assert!(
                    Instant::now() < deadline,
                    "the first edge did not exit after SIGQUIT"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            old_exited.await.unwrap(),
            "round {round}: the old edge exits cleanly"
        );
        old_pid = new.id();
        edges.0.push(new);
        // The new edge serves alone now, from the cache the old one handed over.
        let cache: Value = stack.admin_json("/admin/cache").await;
        assert!(
            cache["file"]["loaded_records"].as_u64().unwrap() >= HOSTS.len() as u64,
            "round {round}: {cache}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for c in clients {
        let load = c.await.unwrap();
        done.extend(load.done);
        failed.extend(load.failed);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        done.len() + failed.len(),
        &failed[..failed.len().min(10)]
    );
    let first = handovers[0];
    let before: Vec<Duration> = done.iter().filter(|(t, _)| *t < first).map(|(_, d)| *d).collect();
    let around: Vec<Duration> = done
        .iter()
        .filter(|(t, _)| {
            handovers
                .iter()
                .any(|h| *t >= *h && *t < *h + Duration::from_secs(8))
        })
        .map(|(_, d)| *d)
        .collect();
    println!(
        "3 upgrades under {CLIENTS} clients: {} requests, 0 failed; p99 before {:?}, p99 during the hand-overs {:?}",
        done.len(),
        p99(before),
        p99(around)
    );
    assert!(done.len() > 100, "the load kept going: {}", done.len());
}
