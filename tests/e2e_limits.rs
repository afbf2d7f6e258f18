//! Connection caps: past them a connection is closed unread and counted, while the admin API
//! (health, readiness, metrics) keeps answering and the slots come back when clients leave.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tenant_edge::edge::conns::ConnectionLimits;

/// A counter or gauge of the edge's metrics, 0 when absent.
fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_while_admin_answers() {
    let stack = Stack::start_with(StackOptions {
        connections: Some(ConnectionLimits {
            max_connections: 1000,
            max_connections_per_client: 20,
        }),
        ..Default::default()
    })
    .await;
    let port = stack.edge_http;
    // 25 idle connections from one address: 20 are held, 5 refused.
    let idle: Vec<TcpStream> = (0..25).map(|_| TcpStream::connect(addr(port)).unwrap()).collect();
    let counted = eventually(Duration::from_secs(10), || async {
        let m = stack.metrics().await;
        let open = metric(&m, "tenant_edge_connections_open ");
        let refused = metric(&m, "tenant_edge_connections_refused_total{reason=\"per_client\"}");
        (open == 20 && refused == 5).then_some((open, refused))
    })
    .await;
    assert_eq!(counted, (20, 5));
    // At the cap: a new client connection from the same address is refused too, while the
    // admin API answers.
    let health = stack.http.get(stack.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = stack.http.get(stack.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        stack
            .http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "acme.example.test")
            .send()
            .await
            .is_err(),
        "a connection past the cap is closed unanswered"
    );
    // The slots come back when the clients leave.
    drop(idle);
    eventually(Duration::from_secs(10), || async {
        let m = stack.metrics().await;
        (metric(&m, "tenant_edge_connections_open ") == 0).then_some(())
    })
    .await;
    let (status, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200, "{body}");
}
