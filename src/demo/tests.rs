use serde_json::{json, Value};

use super::*;

struct Running {
    base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

async fn start() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = DemoShardConfig {
        shard: "jira-us-east-1".into(),
        backend: "b1".into(),
        listen: addr,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, cfg, shutdown.clone()));
    Running {
        base: format!("http://{addr}"),
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let shard = start().await;
    let resp = reqwest::get(format!("{}/healthz", shard.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    shard.stop().await;
}

#[tokio::test]
async fn echoes_who_it_is_and_what_it_received() {
    let shard = start().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/wiki/x?a=1&b=2", shard.base))
        .header("x-tenant-id", "acme")
        .header("X-Tenant-Shard", "jira-us-east-1")
        .header("x-request-id", "r-1")
        .header("x-forwarded-for", "192.0.2.1")
        .header("x-forwarded-for", "192.0.2.2")
        .header("authorization", "secret")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let want = json!({
        "shard": "jira-us-east-1",
        "backend": "b1",
        "tenant": "acme",
        "method": "POST",
        "path": "/wiki/x?a=1&b=2",
        "headers": {
            "x-tenant-id": "acme",
            "x-tenant-shard": "jira-us-east-1",
            "x-request-id": "r-1",
            "x-forwarded-for": "192.0.2.1, 192.0.2.2",
        },
    });
    assert_eq!(body, want);
    shard.stop().await;
}

#[tokio::test]
async fn tenant_is_null_without_the_header_and_non_get_healthz_is_echoed() {
    let shard = start().await;
    let resp = reqwest::Client::new()
        .delete(format!("{}/healthz", shard.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tenant"], Value::Null);
    assert_eq!(body["method"], "DELETE");
    assert_eq!(body["path"], "/healthz");
    assert_eq!(body["headers"], json!({}));
    shard.stop().await;
}

#[tokio::test]
async fn run_binds_and_stops_on_shutdown() {
    // Take a free port, release it, and let `run` bind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = DemoShardConfig {
        shard: "s".into(),
        backend: "b".into(),
        listen: addr,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(cfg, shutdown.clone()));
    let url = format!("http://{addr}/healthz");
    // `run` gives no readiness signal: retry the connect, a bounded number of times.
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(resp) = reqwest::get(&url).await {
            ok = resp.status() == 200;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ok, "demo shard never answered on {addr}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_reports_a_taken_port() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = DemoShardConfig {
        shard: "s".into(),
        backend: "b".into(),
        listen: taken.local_addr().unwrap(),
    };
    assert!(run(cfg, CancellationToken::new()).await.is_err());
}
