//! Helpers shared by the TCS integration tests: catalogue changes, a config, a served router
//! on a loopback port, and an NDJSON line reader.

use std::net::SocketAddr;

use tenant_edge::feed::{Change, Lines, ViewEvent, MAX_STREAM_LINE};
use tenant_edge::tcs::{standalone, ConsumerConfig, Tcs, TcsConfig};
use tokio_util::sync::CancellationToken;

pub const EDGE_TOKEN: &str = "dev-edge-token";
pub const AUDIT_TOKEN: &str = "dev-audit-token";

/// A config with an `edge` consumer of `ingress` and an `audit` consumer of nothing, tailing
/// the catalogue at `catalogue` (`IP:port`) when a test starts its tailer.
pub fn config(catalogue: &str) -> TcsConfig {
    let consumers = vec![
        ConsumerConfig::new("edge", EDGE_TOKEN, &["ingress"]),
        ConsumerConfig::new("audit", AUDIT_TOKEN, &[]),
    ];
    TcsConfig {
        catalogue: format!("http://{catalogue}"),
        ..standalone::config("us-east-1", consumers).unwrap()
    }
}

pub fn put(seq: u64, id: &str, version: u64, hosts: &[&str]) -> Change {
    standalone::put(seq, id, version, hosts).unwrap()
}

pub fn del(seq: u64, id: &str, version: u64) -> Change {
    standalone::del(seq, id, version).unwrap()
}

pub fn seq_prev(event: &ViewEvent) -> (u64, u64) {
    match event {
        ViewEvent::Upsert { seq, prev, .. } | ViewEvent::Delete { seq, prev, .. } => (*seq, *prev),
        other => panic!("not a change event: {other:?}"),
    }
}

/// The API router of a `Tcs` served on a loopback port (no tailer).
pub struct Server {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(tcs: Tcs) -> Self {
        let shutdown = CancellationToken::new();
        let any = "127.0.0.1:0".parse().unwrap();
        let (addr, served) = standalone::serve(&tcs, any, shutdown.clone()).await.unwrap();
        let task = tokio::spawn(async move { served.await.unwrap().unwrap() });
        Self {
            addr,
            client: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Stops serving; open change streams end, so this returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// Reads NDJSON lines from a streaming response as they arrive.
pub struct Ndjson {
    resp: reqwest::Response,
    lines: Lines,
}

impl Ndjson {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            lines: Lines::new(MAX_STREAM_LINE),
        }
    }

    /// The next line, or `None` at the end of the body.
    pub async fn next_event(&mut self) -> Option<ViewEvent> {
        loop {
            if let Some(line) = self.lines.next_line().unwrap() {
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = self.resp.chunk().await.unwrap()?;
            self.lines.push(&chunk);
        }
    }

    /// The next upsert or delete, skipping heartbeats.
    pub async fn next_change(&mut self) -> ViewEvent {
        loop {
            match self.next_event().await {
                Some(ViewEvent::Heartbeat { .. }) => {}
                Some(event) => return event,
                None => panic!("change stream ended"),
            }
        }
    }
}

/// A stand-in for the catalogue's `GET /v1/changes` (the contract in `feed`): serves a fixed
/// log, fails the first poll with 503, and reports the `after` of every poll so a test knows how
/// far the tailer got. A real catalogue cannot be made to fail one poll, or to hand out a log
/// of exactly these sequence numbers.
pub struct StubCatalogue {
    pub addr: SocketAddr,
    pub polls: tokio::sync::mpsc::UnboundedReceiver<u64>,
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    after: u64,
    limit: usize,
    wait_ms: u64,
}

impl StubCatalogue {
    pub async fn start(log: Vec<Change>) -> Self {
        use axum::extract::{Query, State};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        type St = (
            Arc<Vec<Change>>,
            tokio::sync::mpsc::UnboundedSender<u64>,
            Arc<AtomicBool>,
        );
        async fn changes(
            State((log, tx, failed)): State<St>,
            Query(q): Query<ChangesQuery>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            tx.send(q.after).unwrap();
            if !failed.swap(true, Ordering::SeqCst) {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let head = log.last().map_or(0, |c| c.seq);
            let page: Vec<Change> = log
                .iter()
                .filter(|c| c.seq > q.after)
                .take(q.limit)
                .cloned()
                .collect();
            if page.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(q.wait_ms)).await;
            }
            axum::Json(tenant_edge::feed::ChangesPage { changes: page, head }).into_response()
        }
        let (tx, polls) = tokio::sync::mpsc::unbounded_channel();
        let state: St = (Arc::new(log), tx, Arc::new(AtomicBool::new(false)));
        let app = axum::Router::new()
            .route("/v1/changes", axum::routing::get(changes))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, polls }
    }

    /// Waits for the tailer to ask for changes after `seq`, i.e. to have applied up to it.
    pub async fn wait_for_poll_after(&mut self, seq: u64) {
        while self.polls.recv().await.unwrap() != seq {}
    }
}
