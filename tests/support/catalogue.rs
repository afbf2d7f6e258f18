//! The catalogue binary on a loopback port, and helpers shared by its integration tests.

#[path = "ctl.rs"]
pub mod ctl;

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tenant_edge::catalogue::StoreConfig;
use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::{Run, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_tenant-edge");

/// A catalogue process on a loopback port of its choosing (a stack of the catalogue alone),
/// killed when dropped.
pub struct Catalogue {
    pub stack: Stack,
    pub base: String,
    pub http: reqwest::Client,
}

impl Catalogue {
    /// Starts the binary with its data in `dir/catalogue` and returns once it has said where
    /// it listens.
    pub async fn start(dir: &Path) -> Self {
        Self::start_on(dir, StoreConfig::Sqlite).await
    }

    /// As [`Catalogue::start`], on `store`.
    pub async fn start_on(dir: &Path, store: StoreConfig) -> Self {
        let stack = Stack::builder(dir, RoutesFile::default())
            .catalogue_store(store)
            .run(Run::Children(BIN.into()))
            .shards(false)
            .regions(&[])
            .unwrap()
            .edges(0)
            .seed(false)
            .start()
            .await
            .unwrap();
        Catalogue {
            base: stack.catalogue().url(),
            stack,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.stack.operator_token());
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        if let Some(m) = if_match {
            req = req.header(IF_MATCH, m);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| format!("not JSON ({e}): {text}"))
                .unwrap()
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(&body.to_string()), None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::PUT, path, Some(&body.to_string()), None).await
    }

    pub async fn put_if(&self, path: &str, body: &Value, if_match: &str) -> Reply {
        self.call(Method::PUT, path, Some(&body.to_string()), Some(if_match))
            .await
    }

    pub async fn delete(&self, path: &str, if_match: Option<&str>) -> Reply {
        self.call(Method::DELETE, path, None, if_match).await
    }

    /// Sends only the head of a PUT declaring a 2 MiB body and reads the answer: the limit must
    /// be enforced before any body is read. (A client that really sends the body races the early
    /// answer against the server closing the half-read connection.)
    pub async fn declare_huge_body(&self, path: &str) -> (String, Value) {
        let addr = self.base.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.stack.operator_token(),
            2 << 20
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        // A server that waits for the body would never answer: bound the wait.
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer))
            .await
            .map_err(|_| "no answer before the body was sent")
            .unwrap()
            .unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_owned();
        (status, serde_json::from_str(body).unwrap())
    }

    /// Waits until `n` long-polls of `/v1/changes` are parked. The catalogue is another process
    /// and logs nothing when a poll parks: the count its `/healthz` reports is the only witness,
    /// so this polls it.
    pub async fn wait_for_parked_polls(&self, n: u64) {
        while self.get("/healthz").await.expect(200)["waiting"] != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `tenant-edge ctl` against this catalogue with the operator token.
    pub async fn ctl(&self, args: &[&str], stdin: &str) -> ctl::Ran {
        let token = Some(self.stack.operator_token());
        ctl::ctl(&self.base, token, args, stdin).await
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Reply {
    /// Asserts the status and, for errors, the JSON error body; returns the body.
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.json);
        if status >= 400 {
            assert_eq!(self.json["status"], status, "{}", self.json);
            assert!(self.json["reason"].is_string(), "{}", self.json);
        }
        self.json
    }

    pub fn etag(&self) -> &str {
        self.headers.get(ETAG).unwrap().to_str().unwrap()
    }
}

/// The sequence numbers of a `/v1/changes` page, in order.
pub fn seqs(page: &Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["seq"].as_u64().unwrap())
        .collect()
}

pub fn acme() -> Value {
    json!({"id": "acme", "hosts": ["acme.example.test"], "realm": "us",
           "placements": {"jira": {"shard": "jira-us-east-1"}}})
}

/// Realms us and eu, shards jira-us-east-1, jira-eu-west-1, confluence-us-east-1.
pub async fn seed_registry(c: &Catalogue) {
    c.put(
        "/v1/realms/us",
        &json!({"name": "us", "regions": ["us-east-1", "us-west-2"]}),
    )
    .await
    .expect(201);
    c.put(
        "/v1/realms/eu",
        &json!({"name": "eu", "regions": ["eu-west-1", "eu-central-1"]}),
    )
    .await
    .expect(201);
    for (id, product, region) in [
        ("jira-us-east-1", "jira", "us-east-1"),
        ("jira-eu-west-1", "jira", "eu-west-1"),
        ("confluence-us-east-1", "confluence", "us-east-1"),
    ] {
        let doc = json!({"id": id, "product": product, "regions": [region]});
        c.put(&format!("/v1/shards/{id}"), &doc).await.expect(201);
    }
}
