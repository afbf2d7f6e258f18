//! TCS fault injection over real loopback sockets: `/admin/faults` and what each fault does to
//! the `/v1/views/...` answers, the tailer against a real catalogue for `pause_ingest`, and the
//! `--allow-faults` flag of the binary.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]
#![expect(clippy::panic, reason = "test helpers fail loudly")]

#[path = "support/tcs.rs"]
#[expect(dead_code, reason = "shared with tcs_api.rs, which uses the rest")]
mod tcs_support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tcs_support::{config, put, seq_prev, Ndjson, Server, TappedCatalogue, EDGE_TOKEN};
use tenant_edge::feed::{ApiError, ViewEvent, ViewSnapshot};
use tenant_edge::stack::Child;
use tenant_edge::tcs::faults::{Faults, MAX_LATENCY_MS};
use tenant_edge::tcs::{Tcs, TcsConfig};
use tokio_util::sync::CancellationToken;

const ACME: &str = "/v1/views/ingress/hosts/acme.example.test";
const SNAPSHOT: &str = "/v1/views/ingress/snapshot";
const FAULTS: &str = "/admin/faults";

/// The admin token of the tests' TCS (faults need it).
const ADMIN: &str = "tcs-test-admin-token";

fn faults_config(allow: bool) -> TcsConfig {
    let mut cfg = config("127.0.0.1:1");
    cfg.allow_faults = allow;
    cfg.admin_token = Some(ADMIN.into());
    cfg
}

/// Three tenants applied through the real applier; the tailer counts as having polled.
fn seeded(allow: bool) -> Tcs {
    let tcs = Tcs::new(faults_config(allow)).unwrap();
    let view = tcs.ingress();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    view.apply(&put(2, "globex", 1, &["globex.example.test"]));
    view.apply(&put(3, "initech", 1, &["initech.example.test"]));
    tcs.status().record_ok(3);
    tcs
}

async fn set_faults(srv: &Server, body: serde_json::Value) -> Faults {
    let resp = srv
        .client
        .put(srv.url(FAULTS))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "PUT {body}");
    resp.json().await.unwrap()
}

async fn clear_faults(srv: &Server) {
    let resp = srv
        .client
        .delete(srv.url(FAULTS))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Faults>().await.unwrap(), Faults::default());
}

async fn metrics(srv: &Server) -> String {
    srv.get("/metrics", "").await.text().await.unwrap()
}

#[tokio::test]
async fn admin_routes_do_not_exist_unless_allowed() {
    let srv = Server::start(seeded(false)).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = srv
            .client
            .request(method.clone(), srv.url(FAULTS))
            .bearer_auth(ADMIN)
            .json(&json!({"empty": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method}");
    }
    assert_eq!(srv.get(ACME, EDGE_TOKEN).await.status(), StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn admin_faults_are_validated_shown_and_cleared() {
    let srv = Server::start(seeded(true)).await;
    let put_raw = |body: &'static str| {
        srv.client
            .put(srv.url(FAULTS))
            .bearer_auth(ADMIN)
            .body(body)
            .send()
    };
    for malformed in [
        "",
        "not json",
        r#"{"latency": 5}"#,
        r#"{"error_rate": "half"}"#,
        r#"{"latency_ms": -1}"#,
    ] {
        let resp = put_raw(malformed).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{malformed:?}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 400);
    }
    for invalid in [
        r#"{"error_rate": 1.5}"#,
        r#"{"error_rate": -0.1}"#,
        r#"{"latency_ms": 600001}"#,
    ] {
        let resp = put_raw(invalid).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{invalid:?}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 422);
    }
    // Nothing refused was applied.
    let shown: Faults = srv.get(FAULTS, ADMIN).await.json().await.unwrap();
    assert_eq!(shown, Faults::default());
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_faults_active{region="us-east-1"} 0"#));

    let set = set_faults(&srv, json!({"error_rate": 0.25, "pause_ingest": true})).await;
    let expected = Faults {
        error_rate: 0.25,
        pause_ingest: true,
        ..Faults::default()
    };
    assert_eq!(set, expected);
    assert_eq!(
        srv.get(FAULTS, ADMIN).await.json::<Faults>().await.unwrap(),
        expected
    );
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_faults_active{region="us-east-1"} 1"#));

    clear_faults(&srv).await;
    assert_eq!(
        srv.get(FAULTS, ADMIN).await.json::<Faults>().await.unwrap(),
        Faults::default()
    );
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_faults_active{region="us-east-1"} 0"#));
    srv.stop().await;
}

#[tokio::test]
async fn error_rate_fails_view_requests_but_never_health() {
    let srv = Server::start(seeded(true)).await;
    set_faults(&srv, json!({"error_rate": 1.0})).await;
    for path in [ACME, SNAPSHOT, "/v1/views/ingress/changes?after=0"] {
        let resp = srv.get(path, EDGE_TOKEN).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 503);
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(srv.get(path, "").await.status(), StatusCode::OK, "{path}");
    }
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_fault_errors_total{region="us-east-1"} 3"#));

    clear_faults(&srv).await;
    assert_eq!(srv.get(ACME, EDGE_TOKEN).await.status(), StatusCode::OK);
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_fault_errors_total{region="us-east-1"} 3"#));
    srv.stop().await;
}

#[tokio::test]
async fn empty_hides_every_tenant_but_not_the_change_stream() {
    let tcs = seeded(true);
    let view = tcs.ingress();
    let srv = Server::start(tcs).await;
    set_faults(&srv, json!({"empty": true})).await;
    let resp = srv.get(ACME, EDGE_TOKEN).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<ApiError>().await.unwrap().status, 404);
    let snap: ViewSnapshot = srv.get(SNAPSHOT, EDGE_TOKEN).await.json().await.unwrap();
    assert_eq!((snap.seq, snap.records.len()), (3, 0));
    assert!(metrics(&srv)
        .await
        .contains(r#"tcs_lookups_total{result="miss",view="ingress",region="us-east-1"} 1"#));

    // The stream still replays and follows: an emptied table sends no deletes.
    let resp = srv.get("/v1/views/ingress/changes?after=2", EDGE_TOKEN).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut lines = Ndjson::new(resp);
    assert_eq!(seq_prev(&lines.next_change().await), (3, 2));
    view.apply(&put(4, "acme", 2, &["acme.example.test"]));
    assert_eq!(seq_prev(&lines.next_change().await), (4, 3));
    drop(lines);

    clear_faults(&srv).await;
    assert_eq!(srv.get(ACME, EDGE_TOKEN).await.status(), StatusCode::OK);
    let snap: ViewSnapshot = srv.get(SNAPSHOT, EDGE_TOKEN).await.json().await.unwrap();
    assert_eq!((snap.seq, snap.records.len()), (4, 3));
    srv.stop().await;
}

/// Time is paused: the runtime jumps the clock to the next timer whenever every task waits,
/// so "took at least the latency" is measured on tokio's clock, deterministically, and the
/// test takes no real time.
#[tokio::test(start_paused = true)]
async fn latency_delays_view_answers_but_never_health() {
    let srv = Server::start(seeded(true)).await;
    // Fresh connections only: an idle pooled connection is not worth reasoning about while
    // the clock jumps.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let latency = Duration::from_millis(MAX_LATENCY_MS);
    let took = |path: &'static str| {
        let token = if path == FAULTS { ADMIN } else { EDGE_TOKEN };
        let req = http.get(srv.url(path)).bearer_auth(token);
        async move {
            let start = tokio::time::Instant::now();
            let status = req.send().await.unwrap().status();
            (status, start.elapsed())
        }
    };
    set_faults(&srv, json!({"latency_ms": MAX_LATENCY_MS})).await;
    for path in [ACME, SNAPSHOT, "/v1/views/ingress/changes?after=3"] {
        let (status, elapsed) = took(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(elapsed >= latency, "{path} answered after {elapsed:?}");
    }
    for path in ["/healthz", "/readyz", "/metrics", FAULTS] {
        let (status, elapsed) = took(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(elapsed < latency, "{path} was delayed: {elapsed:?}");
    }
    clear_faults(&srv).await;
    let (status, elapsed) = took(ACME).await;
    assert_eq!(status, StatusCode::OK);
    assert!(elapsed < latency, "still delayed after clearing: {elapsed:?}");
    srv.stop().await;
}

/// The tailer against a real catalogue: paused, it sees the head move but applies nothing, and
/// readiness goes red once the lag exceeds `max_lag`; lifted, it catches up.
#[tokio::test]
async fn pause_ingest_stops_application_until_lifted() {
    let mut catalogue = TappedCatalogue::start().await;
    catalogue.put_realm_us().await; // seq 1
    catalogue.put_tenant("acme").await; // seq 2

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = faults_config(true);
    cfg.catalogue = format!("http://{}", catalogue.addr);
    cfg.snapshot = dir.path().join("tcs.json");
    cfg.max_lag = 0;
    let bound = tenant_edge::tcs::bind(cfg).await.unwrap();
    let (tcs, addr) = (bound.tcs().clone(), bound.addr());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bound.serve(shutdown.clone()));
    let srv = Client::new(addr);
    catalogue.polls.wait_for_poll_after(2).await;
    assert_eq!(srv.lookup("acme").await, StatusCode::OK);
    assert_eq!(srv.status("/readyz").await, StatusCode::OK);

    srv.send(reqwest::Method::PUT, json!({"pause_ingest": true}))
        .await;
    catalogue.put_tenant("globex").await; // seq 3
                                          // Paused, the tailer polls from the newest head it saw: it has seen seq 3.
    catalogue.polls.wait_for_poll_after(3).await;
    assert_eq!(srv.lookup("globex").await, StatusCode::NOT_FOUND);
    assert_eq!(tcs.ingress().seq(), 2);
    assert_eq!(srv.status("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);

    let stream = srv.get("/v1/views/ingress/changes?after=2").await;
    let mut lines = Ndjson::new(stream);
    srv.send(reqwest::Method::DELETE, json!({})).await;
    match lines.next_change().await {
        ViewEvent::Upsert { seq: 3, record, .. } => assert_eq!(record.id.as_str(), "globex"),
        other => panic!("expected globex at seq 3, got {other:?}"),
    }
    drop(lines);
    assert_eq!(srv.lookup("globex").await, StatusCode::OK);
    assert_eq!(srv.status("/readyz").await, StatusCode::OK);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// The catalogue's log replaced under a running TCS (restored from elsewhere, re-created):
/// its sequence numbers mean something else now, so the view is reloaded in full from the new
/// log instead of being patched by them, and a change-stream subscriber is told to resync.
#[tokio::test]
async fn a_catalogue_log_with_a_new_epoch_is_reloaded_in_full() {
    let mut catalogue = TappedCatalogue::start().await;
    catalogue.put_realm_us().await; // seq 1
    catalogue.put_tenant("acme").await; // seq 2
    catalogue.put_tenant("globex").await; // seq 3

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = faults_config(false);
    cfg.catalogue = format!("http://{}", catalogue.addr);
    cfg.snapshot = dir.path().join("tcs.json");
    // A product's view beside ingress is reloaded with it, from the same log.
    cfg.views = vec![tenant_edge::tcs::config::ViewConfig {
        name: "jira".into(),
        products: vec![tenant_edge::tenant::Product::new("jira").unwrap()],
        secrets: true,
    }];
    let bound = tenant_edge::tcs::bind(cfg).await.unwrap();
    let (tcs, addr) = (bound.tcs().clone(), bound.addr());
    let jira = tcs.view("jira").unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bound.serve(shutdown.clone()));
    let srv = Client::new(addr);
    catalogue.polls.wait_for_poll_after(3).await;
    assert_eq!(srv.lookup("acme").await, StatusCode::OK);
    let mut lines = Ndjson::new(srv.get("/v1/views/ingress/changes?after=3").await);

    // The new log is longer than the old: its head alone would not tell.
    catalogue.replace_log();
    catalogue.put_realm_us().await; // seq 1 of the new log
    for t in ["umbrella", "initech", "hooli", "piper"] {
        catalogue.put_tenant(t).await; // seqs 2..=5
    }
    catalogue.wake_replaced().await; // the old log's seq 4 answers the parked poll
    loop {
        match lines.next_event().await {
            Some(ViewEvent::Heartbeat { .. }) => {}
            Some(ViewEvent::Resync { seq }) => {
                assert_eq!(seq, 5);
                break;
            }
            other => panic!("expected a resync, got {other:?}"),
        }
    }
    for gone in ["acme", "globex"] {
        assert_eq!(srv.lookup(gone).await, StatusCode::NOT_FOUND, "{gone}");
    }
    for t in ["umbrella", "initech", "hooli", "piper"] {
        assert_eq!(srv.lookup(t).await, StatusCode::OK, "{t}");
    }
    assert_eq!(tcs.ingress().seq(), 5);
    assert_eq!(
        (jira.seq(), jira.len()),
        (5, 4),
        "the product view holds the new log's tenants"
    );
    // Later changes of the new log apply as usual.
    catalogue.put_tenant("acme").await; // seq 6
    match lines.next_change().await {
        ViewEvent::Upsert { seq: 6, record, .. } => assert_eq!(record.id.as_str(), "acme"),
        other => panic!("expected acme at seq 6, got {other:?}"),
    }
    drop(lines);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A client of a TCS served by `tcs::bind` and `Bound::serve`.
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let req = self.http.get(format!("{}{path}", self.base));
        req.bearer_auth(EDGE_TOKEN).send().await.unwrap()
    }

    async fn status(&self, path: &str) -> StatusCode {
        self.get(path).await.status()
    }

    async fn lookup(&self, id: &str) -> StatusCode {
        self.status(&format!("/v1/views/ingress/hosts/{id}.example.test"))
            .await
    }

    async fn send(&self, method: reqwest::Method, body: serde_json::Value) {
        let url = format!("{}{FAULTS}", self.base);
        let resp = self
            .http
            .request(method, url)
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// `--allow-faults` turns fault injection on although the config file says no.
#[tokio::test]
async fn allow_faults_flag_overrides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = faults_config(false);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.snapshot = dir.path().join("tcs.json");
    let file = dir.path().join("tcs.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    let tcs = Child::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tenant-edge")),
        "tcs",
        &["tcs", "--config", file.to_str().unwrap(), "--allow-faults"],
    )
    .unwrap();
    let url = format!("{}{FAULTS}", tcs.url());
    let http = reqwest::Client::new();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the admin token is needed"
    );
    let resp = http.get(&url).bearer_auth(EDGE_TOKEN).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "a consumer's token is not the admin's"
    );
    let resp = http.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Faults>().await.unwrap(), Faults::default());
}
