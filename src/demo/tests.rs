use serde_json::{json, Value};

use super::*;

mod items;
mod mover;

/// One demo shard backend serving on a loopback port.
struct Running {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DemoError>>,
}

/// The data regions of the test shards: `jira-us-multi` spans both US regions; the others
/// hold data in the region their id ends with (us-east-1 for any other name).
fn regions_of(shard: &str) -> Vec<Region> {
    let names: &[&str] = match shard {
        "jira-us-multi" => &["us-east-1", "us-west-2"],
        "jira-us-west-2" => &["us-west-2"],
        _ => &["us-east-1"],
    };
    names.iter().map(|r| Region::new(r).unwrap()).collect()
}

fn config(
    shard: &str,
    backend: &str,
    listen: std::net::SocketAddr,
    dir: &std::path::Path,
) -> DemoShardConfig {
    DemoShardConfig {
        shard: shard.into(),
        backend: backend.into(),
        listen,
        product: Product::new("jira").unwrap(),
        regions: regions_of(shard),
        data_dir: dir.to_path_buf(),
        mover_token: Some(MOVER_TOKEN.into()),
        allow_unauthenticated: false,
        sidecar: None,
    }
}

/// The token the test shards' mover hooks ask for.
const MOVER_TOKEN: &str = "demo-test-mover-token";

/// Starts backend `backend` of `shard` with its files in `dir`, and returns once it listens.
async fn start_in(dir: &std::path::Path, shard: &str, backend: &str) -> Running {
    let cfg = config(shard, backend, "127.0.0.1:0".parse().unwrap(), dir);
    let bound = bind(cfg).await.unwrap();
    let addr = bound.addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.serve(shutdown.clone()));
    Running {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        shutdown,
        task,
    }
}

/// Backend `b1` of `jira-us-east-1` in a fresh temp dir (kept alive by the returned guard).
async fn start() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let shard = start_in(dir.path(), "jira-us-east-1", "b1").await;
    (dir, shard)
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// A request to `path`, for `tenant` when given.
    /// A request to `path` (the mover hooks' with their token).
    fn req(&self, method: reqwest::Method, path: &str, tenant: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if path.starts_with("/mover") {
            r = r.bearer_auth(MOVER_TOKEN);
        }
        match tenant {
            Some(t) => r.header("x-tenant-id", t),
            None => r,
        }
    }

    /// Sends and returns status, headers and the JSON body (`Null` when there is none).
    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, headers, body)
    }

    /// POST `/items` for `tenant`; returns the new id.
    async fn create(&self, tenant: &str, body: &Value) -> String {
        let (status, _, answer) = self
            .send(self.req(reqwest::Method::POST, "/items", Some(tenant)).json(body))
            .await;
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    /// A mover hook: POST `/mover/{hook}` with `body`; asserts 200 and returns the answer.
    async fn hook(&self, hook: &str, body: Value) -> Value {
        let (status, _, answer) = self
            .send(
                self.req(reqwest::Method::POST, &format!("/mover/{hook}"), None)
                    .json(&body),
            )
            .await;
        assert_eq!(status, 200, "{hook}: {answer}");
        answer
    }

    /// GET `/items` for `tenant`: status and the JSON answer.
    async fn list(&self, tenant: &str) -> (u16, Value) {
        let (status, _, body) = self
            .send(self.req(reqwest::Method::GET, "/items", Some(tenant)))
            .await;
        (status, body)
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let (_dir, shard) = start().await;
    let resp = reqwest::get(format!("{}/healthz", shard.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    shard.stop().await;
}

#[tokio::test]
async fn echoes_who_it_is_and_what_it_received() {
    let (_dir, shard) = start().await;
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
    assert_eq!(resp.headers()["x-served-by"], "jira-us-east-1/b1");
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
    let (_dir, shard) = start().await;
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

/// `bind` opens the files and the socket (port 0: it says which port), so the first request
/// needs no retry; `serve` stops on shutdown.
#[tokio::test]
async fn bind_then_serve_answers_at_once_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        "s",
        "b",
        "127.0.0.1:0".parse().unwrap(),
        &dir.path().join("shards"),
    );
    let bound = bind(cfg).await.unwrap();
    let addr = bound.addr();
    assert_ne!(addr.port(), 0);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bound.serve(shutdown.clone()));
    let resp = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_reports_a_taken_port() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("s", "b", taken.local_addr().unwrap(), dir.path());
    let err = run(cfg, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, DemoError::Io(_)), "{err}");
}

#[tokio::test]
async fn a_shard_id_that_cannot_name_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("../escape", "b", "127.0.0.1:0".parse().unwrap(), dir.path());
    let err = bind(cfg).await.err().unwrap();
    assert!(matches!(err, DemoError::Shard(_)), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
