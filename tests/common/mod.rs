//! Test harness: starts the real `tenant-edge` binary in its roles (demo shards, catalogue, TCS
//! regions, edge) on free loopback ports, each as its own process, and stops them on drop.

#![allow(dead_code, reason = "each test file uses a different part of the harness")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: failing loudly is the point"
)]

pub mod http1;
mod ports;
pub mod recorder;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tenant_edge::context::TcsEndpoint;
use tenant_edge::edge::{EdgeConfig, Http1Config};
use tenant_edge::feed::CatalogueClient;
use tenant_edge::routes::RouteSnapshot;
use tenant_edge::stack::{Child, TCS_READY};
use tenant_edge::tcs::{ConsumerConfig, TcsConfig};
use tenant_edge::tenant::Region;

pub const EDGE_TOKEN: &str = "test-edge-token";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-edge")
}

pub use ports::free_port;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A role of the binary as its own process (the library's one harness, [`Child`]), killed
/// when dropped. Started means listening: each role says where once it has bound.
pub struct Proc(Child);

impl Proc {
    /// Starts the role and returns once it listens.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc(Child::start(Path::new(bin()), name, args).unwrap())
    }

    /// Starts a TCS and returns once its view is within `max_lag` of the catalogue.
    pub fn start_tcs(name: &str, args: &[&str]) -> Proc {
        Proc(Child::start_until(Path::new(bin()), name, args, Some(TCS_READY)).unwrap())
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `http://<addr>` of a role that said its address.
    pub fn url(&self) -> String {
        self.0.url()
    }

    pub fn pid(&self) -> u32 {
        self.0.pid().unwrap()
    }

    /// The port it said it listens on.
    pub fn port(&self) -> u16 {
        self.0.addr().unwrap().port()
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// SIGTERM, then a clean exit.
    pub fn terminate(&mut self) {
        assert!(
            self.0.terminate(),
            "{} did not stop cleanly on SIGTERM",
            self.name()
        );
    }

    /// Starts the same command again, on the same address, and returns once it listens.
    pub fn restart(&mut self) {
        self.0.restart().unwrap();
    }
}

/// One edge process and its ports.
pub struct Edge {
    pub proc: Proc,
    pub http: u16,
    pub https: u16,
    pub admin: u16,
}

impl Edge {
    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

/// Starts an edge named `name` (its config file is `<name>.toml` in `dir`) and waits until it is
/// ready; `edit` changes its config first. The proxy's ports are picked here (pingora binds
/// them itself, so it cannot report a port 0 back).
pub async fn start_edge(
    dir: &Path,
    name: &str,
    routes: &Path,
    tcs_urls: &[String],
    edit: impl FnOnce(&mut EdgeConfig),
) -> Edge {
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let tcs = ["us-east-1", "eu-west-1"]
        .iter()
        .zip(tcs_urls)
        .map(|(region, url)| TcsEndpoint {
            region: (*region).into(),
            url: url.clone(),
            token: EDGE_TOKEN.into(),
        })
        .collect();
    let region = Region::new("us-east-1").unwrap();
    let mut cfg = EdgeConfig::new(region, addr(http), addr(admin), routes.to_owned(), tcs);
    cfg.listen_https = Some(addr(https));
    cfg.cert = Some(certs.join("dev.crt"));
    cfg.key = Some(certs.join("dev.key"));
    cfg.threads = 1;
    cfg.cache.negative_ttl_secs = 1;
    cfg.lookup.timeout_ms = 500;
    cfg.lookup.check_interval_ms = 200;
    cfg.lookup.canaries = vec!["acme.example.test".into()];
    edit(&mut cfg);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let proc = Proc::start(name, &["proxy", "--config", path.to_str().unwrap()]);
    wait_ok(&format!("http://127.0.0.1:{admin}/readyz")).await;
    Edge {
        proc,
        http,
        https,
        admin,
    }
}

/// Sets (`Some`) or clears (`None`) injected faults on a TCS.
pub async fn tcs_faults(http: &reqwest::Client, tcs_url: &str, faults: Option<serde_json::Value>) {
    let url = format!("{tcs_url}/admin/faults");
    let r = match faults {
        Some(f) => http.put(url).json(&f).send().await.unwrap(),
        None => http.delete(url).send().await.unwrap(),
    };
    assert!(r.status().is_success(), "faults: {}", r.status());
}

/// Polls `url` until it answers 2xx (60 s at most: a loaded machine starts fourteen processes per stack).
pub async fn wait_ok(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).timeout(Duration::from_millis(500)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

/// Polls `check` until it returns `Some`, for at most `limit`.
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

/// The shards of the dev stack: id, product, region.
pub const SHARDS: [(&str, &str, &str); 6] = [
    ("jira-us-east-1", "jira", "us-east-1"),
    ("jira-us-west-2", "jira", "us-west-2"),
    ("jira-eu-west-1", "jira", "eu-west-1"),
    ("confluence-us-east-1", "confluence", "us-east-1"),
    ("confluence-eu-west-1", "confluence", "eu-west-1"),
    ("jira-us-multi", "jira", "us-east-1"),
];

/// The regions holding `shard`'s data, home first: `jira-us-multi` spans both US regions.
pub fn data_regions(shard: &str) -> Vec<&'static str> {
    match SHARDS.iter().find(|s| s.0 == shard) {
        Some(("jira-us-multi", _, _)) => vec!["us-east-1", "us-west-2"],
        Some((_, _, region)) => vec![region],
        None => panic!("unknown test shard {shard}"),
    }
}

/// Writes a route file for `shards` (id -> backend ports) into `path`.
pub fn write_routes(path: &Path, version: &str, backends: &[(String, Vec<u16>)]) {
    let mut text = format!(
        "version = \"{version}\"\n\n[health_check]\npath = \"/healthz\"\ninterval_ms = 200\ntimeout_ms = 100\n\
         rise = 1\nfall = 1\neject_ms = 2000\neject_after = 1\n\n\
         [[products]]\nname = \"jira\"\nprefixes = [\"/\"]\n\n\
         [[products]]\nname = \"confluence\"\nprefixes = [\"/wiki\"]\n"
    );
    for (id, ports) in backends {
        let (_, product, region) = SHARDS.iter().find(|s| s.0 == id).unwrap();
        let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let regions: Vec<String> = data_regions(id).iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!(
            "\n[[shards]]\nid = \"{id}\"\nproduct = \"{product}\"\nregion = \"{region}\"\n\
             data_regions = [{}]\nbackends = [{}]\n",
            regions.join(", "),
            list.join(", ")
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What to change in the stack `Stack::start` builds.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Give the edge a cache file (`Stack::edge_cache_file`), written every this many seconds.
    pub cache_file_interval_secs: Option<u64>,
    /// The edge's lean HTTP/1.1 path settings, when not the defaults.
    pub http1: Option<Http1Config>,
    /// Edges beyond the first (`Stack::more_edges`), each with the default config.
    pub more_edges: usize,
}

/// The whole stack, each role its own process.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub routes: PathBuf,
    pub backends: Vec<(String, Vec<u16>)>,
    pub shards: Vec<Proc>,
    pub catalogue: Proc,
    pub catalogue_url: String,
    pub tcs: Vec<Proc>,
    pub tcs_urls: Vec<String>,
    pub edge: Proc,
    pub edge_http: u16,
    pub edge_https: u16,
    pub edge_admin: u16,
    /// Where the edge's cache file is, when `StackOptions` asked for one.
    pub edge_cache_file: PathBuf,
    /// The edges `StackOptions::more_edges` asked for.
    pub more_edges: Vec<Edge>,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.toml");
        let shard_data = dir.path().join("shards");
        let shard_data = shard_data.to_str().unwrap();
        // Ports below the ephemeral range: a restarted role binds its port again, and one that
        // port 0 had picked could be an outgoing connection's by then. Each role still says
        // when it listens, so nothing polls.
        let mut shards = Vec::new();
        let mut backends: Vec<(String, Vec<u16>)> = Vec::new();
        for (id, product, _) in SHARDS {
            let regions = data_regions(id).join(",");
            let mut ports = Vec::new();
            for backend in ["b1", "b2"] {
                let args = [
                    "demo-shard",
                    "--shard",
                    id,
                    "--backend",
                    backend,
                    "--listen",
                    &addr(free_port()).to_string(),
                    "--product",
                    product,
                    "--regions",
                    &regions,
                    "--data",
                    shard_data,
                ];
                let shard = Proc::start(&format!("{id}/{backend}"), &args);
                ports.push(shard.port());
                shards.push(shard);
            }
            backends.push((id.to_string(), ports));
        }
        write_routes(&routes, "test-1", &backends);
        let catalogue = start_catalogue(dir.path());
        let catalogue_url = catalogue.url();
        let http = reqwest::Client::new();
        let snapshot = RouteSnapshot::load_file(&routes).unwrap();
        let client = CatalogueClient::new(&catalogue_url).unwrap();
        tenant_edge::dev::seed(&client, &snapshot).await.unwrap();
        let mut tcs = Vec::new();
        let mut tcs_urls = Vec::new();
        for region in ["us-east-1", "eu-west-1"] {
            let p = start_tcs(dir.path(), region, &catalogue_url);
            tcs_urls.push(p.url());
            tcs.push(p);
        }
        let edge_cache_file = dir.path().join("edge-cache.json");
        let Edge {
            proc: edge,
            http: edge_http,
            https: edge_https,
            admin: edge_admin,
        } = start_edge(dir.path(), "edge", &routes, &tcs_urls, |cfg| {
            if let Some(secs) = options.cache_file_interval_secs {
                cfg.cache_file = Some(edge_cache_file.clone());
                cfg.cache_file_interval_secs = secs;
            }
            if let Some(http1) = options.http1 {
                cfg.http1 = http1;
            }
        })
        .await;
        let mut more_edges = Vec::new();
        for i in 1..=options.more_edges {
            let name = format!("edge{i}");
            more_edges.push(start_edge(dir.path(), &name, &routes, &tcs_urls, |_| {}).await);
        }
        Stack {
            dir,
            routes,
            backends,
            shards,
            catalogue,
            catalogue_url,
            tcs,
            tcs_urls,
            edge,
            edge_http,
            edge_https,
            edge_admin,
            edge_cache_file,
            more_edges,
            http,
        }
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
            .json(&serde_json::json!({"tenant": tenant, "version": version}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "release: {}", r.status());
    }

    pub fn shard_proc(&mut self, id: &str, backend: usize) -> &mut Proc {
        let name = format!("{id}/b{backend}");
        self.shards.iter_mut().find(|p| p.name() == name).unwrap()
    }
}

/// A catalogue, its data in `dir/catalogue`.
pub fn start_catalogue(dir: &Path) -> Proc {
    let data = dir.join("catalogue");
    let listen = addr(free_port()).to_string();
    Proc::start(
        "catalogue",
        &["catalogue", "--listen", &listen, "--data", data.to_str().unwrap()],
    )
}

/// A TCS of `region` tailing `catalogue_url`, returned once its view is within `max_lag` of the
/// catalogue.
pub fn start_tcs(dir: &Path, region: &str, catalogue_url: &str) -> Proc {
    let file = dir.join(format!("tcs-{region}.toml"));
    let consumers = vec![
        ConsumerConfig::new("edge", EDGE_TOKEN, &["ingress"]),
        ConsumerConfig::new("billing", "billing-token", &[]),
    ];
    let snapshot = dir.join(format!("tcs-{region}.json"));
    let mut cfg = TcsConfig::new(
        Region::new(region).unwrap(),
        addr(free_port()),
        catalogue_url,
        snapshot,
        consumers,
    );
    cfg.allow_faults = true;
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    Proc::start_tcs(
        &format!("tcs-{region}"),
        &["tcs", "--config", file.to_str().unwrap()],
    )
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
