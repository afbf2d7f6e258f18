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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EDGE_TOKEN: &str = "test-edge-token";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-edge")
}

pub use ports::free_port;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    args: Vec<String>,
}

impl Proc {
    pub fn start(name: &str, args: &[&str]) -> Proc {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = spawn(&args);
        Proc {
            name: name.into(),
            child: Some(child),
            args,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} did not stop on SIGTERM", self.name);
        }
    }

    /// Starts the same command again.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(&self.args));
    }
}

fn spawn(args: &[String]) -> Child {
    let quiet = std::env::var("TEST_LOG").is_err();
    Command::new(bin())
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if quiet { Stdio::null() } else { Stdio::inherit() })
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .unwrap()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
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
/// ready. `extra` is appended to the top-level keys of its config.
pub async fn start_edge(dir: &Path, name: &str, routes: &Path, tcs_urls: &[String], extra: &str) -> Edge {
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let mut cfg = format!(
        "region = \"us-east-1\"\nlisten_http = \"127.0.0.1:{http}\"\nlisten_https = \"127.0.0.1:{https}\"\n\
         cert = \"{}\"\nkey = \"{}\"\nadmin = \"127.0.0.1:{admin}\"\nroutes = \"{}\"\nthreads = 1\n{extra}\n\
         \n[cache]\nnegative_ttl_secs = 1\n\n[lookup]\ntimeout_ms = 500\ncheck_interval_ms = 200\n\
         canaries = [\"acme.example.test\"]\n",
        certs.join("dev.crt").display(),
        certs.join("dev.key").display(),
        routes.display()
    );
    for (region, url) in ["us-east-1", "eu-west-1"].iter().zip(tcs_urls) {
        cfg.push_str(&format!(
            "\n[[tcs]]\nregion = \"{region}\"\nurl = \"{url}\"\ntoken = \"{EDGE_TOKEN}\"\n"
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
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
    /// TOML appended to the edge's config after its top-level keys (tables such as `[http1]`).
    pub edge_extra: String,
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
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.toml");
        let backends: Vec<(String, Vec<u16>)> = SHARDS
            .iter()
            .map(|(id, _, _)| (id.to_string(), vec![free_port(), free_port()]))
            .collect();
        write_routes(&routes, "test-1", &backends);
        let shard_data = dir.path().join("shards");
        let shard_data = shard_data.to_str().unwrap();
        let mut shards = Vec::new();
        for (id, ports) in &backends {
            let product = SHARDS.iter().find(|s| s.0 == id).unwrap().1;
            let regions = data_regions(id).join(",");
            for (i, port) in ports.iter().enumerate() {
                let listen = addr(*port).to_string();
                let backend = format!("b{}", i + 1);
                let args = [
                    "demo-shard",
                    "--shard",
                    id,
                    "--backend",
                    &backend,
                    "--listen",
                    &listen,
                    "--product",
                    product,
                    "--regions",
                    &regions,
                    "--data",
                    shard_data,
                ];
                shards.push(Proc::start(&format!("{id}/{backend}"), &args));
            }
        }
        let (catalogue, catalogue_url) = start_catalogue(dir.path());
        wait_ok(&format!("{catalogue_url}/healthz")).await;
        let http = reqwest::Client::new();
        seed(&http, &catalogue_url, &backends).await;
        let mut tcs = Vec::new();
        let mut tcs_urls = Vec::new();
        for region in ["us-east-1", "eu-west-1"] {
            let (p, url) = start_tcs(dir.path(), region, &catalogue_url);
            wait_ok(&format!("{url}/readyz")).await;
            tcs.push(p);
            tcs_urls.push(url);
        }
        for (_, ports) in &backends {
            for p in ports {
                wait_ok(&format!("http://127.0.0.1:{p}/healthz")).await;
            }
        }
        let edge_cache_file = dir.path().join("edge-cache.json");
        let extra = match options.cache_file_interval_secs {
            Some(secs) => format!(
                "cache_file = \"{}\"
cache_file_interval_secs = {secs}
",
                edge_cache_file.display()
            ),
            None => String::new(),
        } + &options.edge_extra;
        let Edge {
            proc: edge,
            http: edge_http,
            https: edge_https,
            admin: edge_admin,
        } = start_edge(dir.path(), "edge", &routes, &tcs_urls, &extra).await;
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

    /// An admin answer of the edge as JSON, whatever its status (`Null` if it is not JSON).
    /// Creates or replaces a tenant through the catalogue API: status and the stored document.
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
        self.shards.iter_mut().find(|p| p.name == name).unwrap()
    }
}

pub fn start_catalogue(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let data = dir.join("catalogue");
    let listen = addr(port).to_string();
    let p = Proc::start(
        "catalogue",
        &["catalogue", "--listen", &listen, "--data", data.to_str().unwrap()],
    );
    (p, format!("http://{listen}"))
}

pub fn start_tcs(dir: &Path, region: &str, catalogue_url: &str) -> (Proc, String) {
    let port = free_port();
    let cfg = dir.join(format!("tcs-{region}.toml"));
    let snapshot = dir.join(format!("tcs-{region}.json"));
    let text = format!(
        "region = \"{region}\"\nlisten = \"127.0.0.1:{port}\"\ncatalogue = \"{catalogue_url}\"\n\
         snapshot = \"{}\"\nmax_lag = 100\nallow_faults = true\n\n\
         [[consumers]]\nname = \"edge\"\ntoken = \"{EDGE_TOKEN}\"\nviews = [\"ingress\"]\n\n\
         [[consumers]]\nname = \"billing\"\ntoken = \"billing-token\"\nviews = []\n",
        snapshot.display()
    );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start(
        &format!("tcs-{region}"),
        &["tcs", "--config", cfg.to_str().unwrap()],
    );
    (p, format!("http://127.0.0.1:{port}"))
}

/// Seeds realms, the dev shards (each shard's mover hooks on its first backend in `backends`)
/// and the demo tenants through the catalogue API.
pub async fn seed(http: &reqwest::Client, url: &str, backends: &[(String, Vec<u16>)]) {
    use serde_json::json;
    let put = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let r = http.put(path).json(&body).send().await.unwrap();
            assert!(
                r.status().is_success(),
                "seeding: {} {}",
                r.status(),
                r.text().await.unwrap()
            );
        }
    };
    put(
        format!("{url}/v1/realms/us"),
        json!({"name": "us", "regions": ["us-east-1", "us-west-2"]}),
    )
    .await;
    put(
        format!("{url}/v1/realms/eu"),
        json!({"name": "eu", "regions": ["eu-west-1", "eu-central-1"]}),
    )
    .await;
    for (id, product, _) in SHARDS {
        let mut doc = json!({"id": id, "product": product, "regions": data_regions(id)});
        if let Some((_, ports)) = backends.iter().find(|(b, _)| b == id) {
            doc["mover"] = json!(format!("http://127.0.0.1:{}", ports[0]));
        }
        put(format!("{url}/v1/shards/{id}"), doc).await;
    }
    for doc in tenant_edge::dev::demo_tenants().unwrap() {
        put(
            format!("{url}/v1/tenants/{}", doc.id),
            serde_json::to_value(&doc).unwrap(),
        )
        .await;
    }
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
