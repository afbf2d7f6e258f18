//! Test harness: starts the real `tenant-edge` binary in its roles (demo shards, catalogue, TCS
//! regions, edge) on free loopback ports, each as its own process, and stops them on drop.

#![allow(dead_code, reason = "each test file uses a different part of the harness")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: failing loudly is the point"
)]

#[path = "../support/ctl.rs"]
pub mod ctl;
pub mod http1;
pub mod recorder;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tenant_edge::edge::Http1Config;
use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::{Part, Run};
use tenant_edge::tcs::ConsumerConfig;

pub const EDGE_TOKEN: &str = "test-edge-token";
/// The token of a service reading two views (`jira` and `confluence`) from TCS.
pub const SUPPORT_TOKEN: &str = "test-support-token";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-edge")
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The AWS emulator with a new KMS key in `us-east-1`: the emulator (stop it to make KMS
/// unreachable) and the key as the catalogue's or a sidecar's master key. Sets the credentials
/// the SDK's chain signs with (the emulator takes any).
pub async fn kms_key() -> (
    tenant_edge::stack::moto::MotoServer,
    tenant_edge::secrets::KmsConfig,
) {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let moto = tenant_edge::stack::moto::MotoServer::start().unwrap();
    let sdk = tenant_edge::aws::sdk_config("us-east-1", Some(&moto.endpoint())).await;
    let key_id = aws_sdk_kms::Client::new(&sdk)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let kms = tenant_edge::secrets::KmsConfig {
        key_id,
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
    };
    (moto, kms)
}

/// Reads a change stream's body until it holds `needle` (at most 10 s between chunks); what it
/// read.
pub async fn read_stream_until(stream: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

/// Sets (`Some`) or clears (`None`) injected faults on a TCS.
pub async fn tcs_faults(stack: &Stack, tcs_url: &str, faults: Option<serde_json::Value>) {
    let url = format!("{tcs_url}/admin/faults");
    let http = &stack.http;
    let admin = stack.operator_token();
    let r = match faults {
        Some(f) => http.put(url).bearer_auth(admin).json(&f).send().await.unwrap(),
        None => http.delete(url).bearer_auth(admin).send().await.unwrap(),
    };
    assert!(r.status().is_success(), "faults: {}", r.status());
}

/// Polls `check` until it returns `Some`, for at most `limit`. For state in another process
/// (a change reaching an edge, a reload, a metric): every role here is a child process, and
/// nothing in-band tells the test when that state moved.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A value of Prometheus text: the sum over the lines that start with `prefix` (a metric's
/// name and some of its labels, or `name ` for one without labels); 0 when none does.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What to change in the stack `Stack::start` builds.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Give the edge a cache file (`Stack::edge_cache_file`), written every this many seconds.
    pub cache_file_interval_secs: Option<u64>,
    /// The edge's lean HTTP/1.1 path settings, when not the defaults.
    pub http1: Option<Http1Config>,
    /// Edges beyond the first (`Stack::edges[1..]`), each with the default config.
    pub more_edges: usize,
    /// Let the shards' backend headers (`x-served-by`) through the edges.
    pub show_backend_headers: bool,
    /// The first edge's connection caps, when not the defaults.
    pub connections: Option<tenant_edge::edge::conns::ConnectionLimits>,
    /// The first edge's HTTP/2 limits, when not the defaults.
    pub http2: Option<tenant_edge::edge::Http2Config>,
    /// The edges' `Server` name.
    pub server: Option<String>,
    /// The catalogue's store, when not SQLite.
    pub catalogue_store: Option<tenant_edge::catalogue::StoreConfig>,
    /// Changes through SNS/SQS with these settings (each region's topic is the template's
    /// topic and the region's name).
    pub fanout: Option<tenant_edge::fanout::aws::SnsConfig>,
    /// The catalogue's master key in KMS (an emulator's) instead of its key file.
    pub kms: Option<tenant_edge::secrets::KmsConfig>,
    /// A sidecar per product, and the demo shards checking tenants against it.
    pub sidecars: bool,
    /// Give the edge an `upgrade_sock` (`<dir>/edge-upgrade.sock`), for binary upgrades.
    pub upgrade_sock: bool,
}

/// The whole stack, each role its own process (the library's [`tenant_edge::stack::Stack`],
/// which this derefs to), with the addresses tests use most and a client.
pub struct Stack {
    pub inner: tenant_edge::stack::Stack,
    pub routes: PathBuf,
    /// Backend ports by shard id, as the route file names them at start.
    pub backends: Vec<(String, Vec<u16>)>,
    pub catalogue_url: String,
    pub tcs_urls: Vec<String>,
    pub edge_http: u16,
    pub edge_https: u16,
    pub edge_admin: u16,
    /// Where the edge's cache file is, when `StackOptions` asked for one.
    pub edge_cache_file: PathBuf,
    pub http: reqwest::Client,
    /// Last: removed after every process is gone.
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for Stack {
    type Target = tenant_edge::stack::Stack;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// The dev route file with the tests' quick health checks (a backend is out after one failed
/// probe, back after one good one, probed every 200 ms).
pub fn routes_template() -> RoutesFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml");
    let mut routes = RoutesFile::load(&path).unwrap();
    routes.version = Some("test-1".into());
    let hc = &mut routes.health_check;
    (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall) = (200, 100, 1, 1);
    (hc.eject_ms, hc.eject_after) = (2000, 1);
    routes
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let edge_cache_file = dir.path().join("edge-cache.json");
        let cache_file = edge_cache_file.clone();
        let upgrade_sock = options.upgrade_sock.then(|| dir.path().join("edge-upgrade.sock"));
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let mut builder = tenant_edge::stack::Stack::builder(dir.path(), routes_template());
        if let Some(fanout) = options.fanout.clone() {
            builder = builder.fanout(fanout);
        }
        if let Some(kms) = options.kms.clone() {
            builder = builder.kms(kms);
        }
        builder = builder.sidecars(options.sidecars);
        let inner = builder
            .run(Run::Children(bin().into()))
            .certs(certs)
            .edge_token(EDGE_TOKEN)
            .consumer(ConsumerConfig::new("billing", "billing-token", &[]))
            .consumer(ConsumerConfig::new(
                "support",
                SUPPORT_TOKEN,
                &["jira", "confluence"],
            ))
            .edges(1 + options.more_edges)
            .catalogue_store(options.catalogue_store.clone().unwrap_or_default())
            .tcs(|_, cfg| cfg.allow_faults = true)
            .edge(move |i, cfg| {
                cfg.cache.negative_ttl_secs = 1;
                cfg.lookup.timeout_ms = 500;
                cfg.lookup.check_interval_ms = 200;
                cfg.fleet_report_ms = 200;
                cfg.show_backend_headers = options.show_backend_headers;
                cfg.server.clone_from(&options.server);
                if i > 0 {
                    return;
                }
                cfg.upgrade_sock.clone_from(&upgrade_sock);
                if let Some(secs) = options.cache_file_interval_secs {
                    cfg.cache_file = Some(cache_file.clone());
                    cfg.cache_file_interval_secs = secs;
                }
                if let Some(http1) = options.http1.clone() {
                    cfg.http1 = http1;
                }
                if let Some(limits) = options.connections {
                    cfg.connections = limits;
                }
                if let Some(http2) = options.http2 {
                    cfg.http2 = http2;
                }
            })
            .start()
            .await
            .unwrap();
        let backends = inner
            .routes_file
            .shards
            .iter()
            .map(|s| {
                let ports = s
                    .backends
                    .iter()
                    .map(|a| a.parse::<SocketAddr>().unwrap().port())
                    .collect();
                (s.id.clone(), ports)
            })
            .collect();
        let edge = &inner.edges[0];
        Stack {
            routes: inner.routes.clone(),
            backends,
            catalogue_url: inner.catalogue().url(),
            tcs_urls: inner.tcs.iter().map(Part::url).collect(),
            edge_http: edge.http.port(),
            edge_https: edge.https.unwrap().port(),
            edge_admin: edge.admin().port(),
            edge_cache_file,
            http: reqwest::Client::new(),
            inner,
            dir,
        }
    }

    /// Points `shards` at the backend on `port` alone (a recorder, a sink) in a route file
    /// labelled `version`, and returns once the edge serves that file.
    pub async fn route_shards_to(&self, version: &str, shards: &[&str], port: u16) {
        let mut backends = self.backends.clone();
        for (id, ports) in &mut backends {
            if shards.contains(&id.as_str()) {
                *ports = vec![port];
            }
        }
        self.write_routes(version, &backends);
        eventually(Duration::from_secs(20), || async {
            (self.admin_json("/admin/routes").await["version"] == version).then_some(())
        })
        .await;
    }

    /// Rewrites the route file as labelled `version`, with `backends` (shard id, ports) for
    /// the shards named there; the edges reload it.
    pub fn write_routes(&self, version: &str, backends: &[(String, Vec<u16>)]) {
        let backends: Vec<(String, Vec<SocketAddr>)> = backends
            .iter()
            .map(|(id, ports)| (id.clone(), ports.iter().map(|&p| addr(p)).collect()))
            .collect();
        self.inner.write_routes(version, &backends).unwrap();
    }

    /// GET through the edge with `host`.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://127.0.0.1:{}{path}", self.edge_http))
            .header("host", host)
            .send()
            .await
            .unwrap()
    }

    /// GET through the edge, answer as JSON with the status.
    pub async fn get_json(&self, host: &str, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(host, path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge_admin)
    }

    /// Creates or replaces a tenant through the catalogue API: status and the stored document
    /// (raw, for the tests that assert refusals).
    pub async fn put_tenant(&self, doc: &serde_json::Value) -> (u16, serde_json::Value) {
        let id = doc["id"].as_str().unwrap();
        let r = self
            .http
            .put(format!("{}/v1/tenants/{id}", self.catalogue_url))
            .bearer_auth(self.operator_token())
            .json(doc)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// An admin answer of the edge as JSON, whatever its status (`Null` if it is not JSON).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.http.get(self.admin(path)).send().await.unwrap();
        r.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// The edge's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the TCS at `tcs_url` answers a lookup of `host` with `min_version` or newer
    /// (any version for 0), faults aside; 10 s at most.
    pub async fn wait_in_tcs(&self, tcs_url: &str, host: &str, min_version: u64) {
        let lookup = format!("{tcs_url}/v1/views/ingress/hosts/{host}");
        eventually(Duration::from_secs(10), || async {
            let r = self.http.get(&lookup).bearer_auth(EDGE_TOKEN).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            let v: serde_json::Value = r.json().await.ok()?;
            (v["record"]["version"].as_u64()? >= min_version).then_some(())
        })
        .await;
    }

    /// Tells `shard`'s mover that `tenant` left it at catalogue `version`: from then on the
    /// shard answers that tenant's requests 421 `tenant-moved`.
    pub async fn release(&self, shard: &str, tenant: &str, version: u64) {
        let ports = &self.backends.iter().find(|(id, _)| id == shard).unwrap().1;
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/mover/release", ports[0]))
            .bearer_auth(self.operator_token())
            .json(&serde_json::json!({"tenant": tenant, "version": version}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "release: {}", r.status());
    }

    /// The demo shard backend `id`/`b<backend>`.
    pub fn shard_proc(&mut self, id: &str, backend: usize) -> &mut Part {
        self.inner.shard(id, backend).unwrap()
    }
}

/// A `/proc/<pid>/status` figure in KiB: `VmRSS` (resident now) or `VmHWM` (its peak).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// curl over HTTP/2 and TLS to the edge's `port` for `acme.example.test` at `path`, with
/// curl's own `args` before the URL; its standard output.
pub async fn curl_h2(port: u16, path: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "--resolve",
            &format!("acme.example.test:{port}:127.0.0.1"),
        ])
        .args(args)
        .arg(format!("https://acme.example.test:{port}{path}"))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer head (lower case) of a GET over HTTP/2 and TLS to the edge's `port` for
/// `acme.example.test`, with extra `headers` (`name: value`), by curl.
pub async fn curl_h2_head(port: u16, headers: &[&str]) -> String {
    let mut args = vec!["-D", "-", "-o", "/dev/null"];
    for h in headers {
        args.extend(["-H", h]);
    }
    curl_h2(port, "/", &args).await.to_ascii_lowercase()
}

/// Sends raw bytes to `port` and returns the status code of the answer.
pub fn raw_status(port: u16, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
