//! Helpers shared by the TCS integration tests: catalogue changes, a config, a served router
//! on a loopback port, an NDJSON line reader, and a real catalogue whose polls a test sees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tenant_edge::catalogue::{self, SqliteStore};
use tenant_edge::feed::{CatalogueClient, Change, Lines, RealmDoc, TenantDoc, ViewEvent, MAX_STREAM_LINE};
use tenant_edge::tcs::{standalone, ConsumerConfig, Tcs, TcsConfig};
use tenant_edge::tenant::{Host, Realm, Region, TenantId};
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

/// The `after` of each `GET /v1/changes` poll a [`TappedCatalogue`] received, in order: how
/// far its tailer got, known without sleeping.
pub struct Polls(tokio::sync::mpsc::UnboundedReceiver<u64>);

impl Polls {
    /// The `after` of the next poll.
    pub async fn next(&mut self) -> u64 {
        self.0.recv().await.unwrap()
    }

    /// Waits for a poll for changes after `seq`: the tailer has seen the log up to `seq`.
    pub async fn wait_for_poll_after(&mut self, seq: u64) {
        while self.next().await != seq {}
    }
}

/// The query of a `/v1/changes` poll (`after` is 0 when absent, as the catalogue reads it).
#[derive(serde::Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
}

/// The real catalogue (SQLite in a temp dir, no tokens) behind a tap that reports the `after`
/// of every `/v1/changes` poll ([`Polls`]) and can answer one with 503 in its place. The
/// tap is a layer on the catalogue's router, so the router is served here rather than by
/// `catalogue::bind` or the stack builder, which serve their own.
pub struct TappedCatalogue {
    pub addr: SocketAddr,
    pub polls: Polls,
    client: CatalogueClient,
    fail_next: Arc<AtomicBool>,
    /// Which of the two catalogues answers: 0 until [`TappedCatalogue::replace_log`].
    #[allow(dead_code, reason = "used by the tailer tests of tcs_faults.rs only")]
    active: Arc<std::sync::atomic::AtomicUsize>,
    #[allow(dead_code, reason = "used by the tailer tests of tcs_faults.rs only")]
    first: Arc<SqliteStore>,
    _dirs: [tempfile::TempDir; 2],
}

impl TappedCatalogue {
    /// An empty catalogue served on a loopback port.
    pub async fn start() -> Self {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let stores = dirs
            .each_ref()
            .map(|dir| Arc::new(SqliteStore::open(&dir.path().join("catalogue.db")).unwrap()));
        let routers = stores
            .each_ref()
            .map(|store| catalogue::router(Arc::clone(store) as _, catalogue::auth::Access::Open));
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let which = Arc::clone(&active);
        let (tx, polls) = tokio::sync::mpsc::unbounded_channel();
        let fail_next = Arc::new(AtomicBool::new(false));
        let failing = Arc::clone(&fail_next);
        let tap = move |req: axum::extract::Request, next: axum::middleware::Next| {
            let mut fail = false;
            if req.uri().path() == "/v1/changes" {
                let Query(q) = Query::<ChangesQuery>::try_from_uri(req.uri()).unwrap();
                let _ = tx.send(q.after);
                fail = failing.swap(false, Ordering::SeqCst);
            }
            async move {
                if fail {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                next.run(req).await
            }
        };
        let app = axum::Router::new()
            .fallback(move |req: axum::extract::Request| {
                use tower::ServiceExt;
                routers[which.load(Ordering::SeqCst)].clone().oneshot(req)
            })
            .layer(axum::middleware::from_fn(tap));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            client: CatalogueClient::new(&format!("http://{addr}")).unwrap(),
            addr,
            polls: Polls(polls),
            fail_next,
            active,
            first: Arc::clone(&stores[0]),
            _dirs: dirs,
        }
    }

    /// From now on a second, empty catalogue answers at the same address: another log, with
    /// its own epoch, as a catalogue restored from elsewhere or re-created would be. A poll
    /// already parked on the first one stays parked until [`TappedCatalogue::wake_replaced`].
    #[allow(dead_code, reason = "used by the tailer tests of tcs_faults.rs only")]
    pub fn replace_log(&self) {
        self.active.store(1, Ordering::SeqCst);
    }

    /// Writes realm `eu` into the replaced catalogue, which answers the polls parked on it.
    #[allow(dead_code, reason = "used by the tailer tests of tcs_faults.rs only")]
    pub async fn wake_replaced(&self) {
        use tenant_edge::catalogue::Store;
        let eu = Realm::new("eu").unwrap();
        let doc = RealmDoc {
            name: eu.clone(),
            regions: vec![Region::new("eu-west-1").unwrap()],
        };
        self.first.put_realm(eu, doc).await.unwrap();
    }

    /// The next poll is answered 503 by the tap, without reaching the catalogue.
    pub fn fail_next_poll(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// Writes realm `us` (in `us-east-1`).
    pub async fn put_realm_us(&self) {
        let doc = RealmDoc {
            name: Realm::new("us").unwrap(),
            regions: vec![Region::new("us-east-1").unwrap()],
        };
        self.client.put_realm(&doc).await.unwrap();
    }

    /// Writes tenant `id` of realm `us` with the host `<id>.example.test`, no placements.
    pub async fn put_tenant(&self, id: &str) {
        let doc = TenantDoc {
            id: TenantId::new(id).unwrap(),
            hosts: vec![Host::parse(&format!("{id}.example.test")).unwrap()],
            realm: Realm::new("us").unwrap(),
            placements: Default::default(),
            products: Default::default(),
            rate_limits: Default::default(),
            data_key: None,
            version: 0,
        };
        self.client.put_tenant(&doc, None).await.unwrap();
    }

    /// Deletes tenant `id`.
    pub async fn delete_tenant(&self, id: &str) {
        let id = TenantId::new(id).unwrap();
        self.client.delete_tenant(&id, None).await.unwrap();
    }
}
