//! The sidecar's numbers: lookup latency from a client on the same machine at 1 000 and
//! 10 000 requests a second, and the memory a cached tenant takes with and without secrets.
//!
//! The dev stack's catalogue and two TCS regions run as processes of their own, with 20 000 imported
//! tenants (half with three secrets in jira, half with none). For the latency, the sidecar is the
//! release binary, its own process, reading the `jira` view with the catalogue's key file, once
//! with one thread (the default) and once with two. The client is four threads, each with one
//! keep-alive HTTP/1.1 connection, sending at a fixed pace (open loop) and timing each lookup
//! from the request's write to the answer's last byte. For the memory, a sidecar runs in this
//! process under a counting allocator, a fresh one for each half: the bytes still allocated after
//! every tenant of the half was looked up once (cached, and with secrets opened), per tenant.
//!
//! `cargo bench --bench sidecar` (about a minute). Results: `bench/README.md`.

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::{Run, Stack};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const THREADS: usize = 4;

/// Full under `cargo bench`; a quick check that the bench still runs under `cargo test
/// --all-targets` (which runs it without `--bench`).
struct Sizes {
    tenants: usize,
    secs: u64,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            tenants: 20_000,
            secs: 10,
        }
    } else {
        Sizes {
            // SIDECAR_BENCH_TENANTS: more tenants for a debug build's memory figures.
            tenants: std::env::var("SIDECAR_BENCH_TENANTS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(200),
            secs: 1,
        }
    }
}

fn host(i: usize) -> String {
    format!("t{i:06}.example.test")
}

/// Tenant `i`: even ones with three jira secrets, odd ones with config only.
fn doc(i: usize) -> serde_json::Value {
    let id = format!("t{i:06}");
    let mut jira =
        serde_json::json!({"config": {"db": format!("{id}_jira"), "db_host": "db-7.jira.internal"}});
    if i % 2 == 0 {
        jira["secrets"] = serde_json::json!({
            "db_password": format!("pw-{id}-0123456789abcdef"),
            "api_key": format!("ak-{id}-0123456789abcdef0123456789"),
            "signing_key": format!("sk-{id}-0123456789abcdef0123456789abcdef"),
        });
    }
    serde_json::json!({
        "id": id, "hosts": [host(i)], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}},
        "products": {"jira": jira},
    })
}

#[tokio::main]
async fn main() -> Res<()> {
    let sizes = sizes();
    let dir = tempfile::tempdir()?;
    let import = dir.path().join("tenants.ndjson");
    let mut lines = String::new();
    for i in 0..sizes.tenants {
        lines.push_str(&doc(i).to_string());
        lines.push('\n');
    }
    std::fs::write(&import, lines)?;
    let routes = RoutesFile::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml"))?;
    let stack = Stack::builder(dir.path(), routes)
        .shards(false)
        .edges(0)
        // The catalogue and TCS as processes of their own: the counted allocator sees the
        // sidecar alone.
        .run(Run::Children(env!("CARGO_BIN_EXE_tenant-edge").into()))
        .import(&import)
        .start()
        .await?;
    let token = stack.product_token("jira").ok_or("no jira token")?.to_owned();
    let sidecar = |port: u16| {
        let mut cfg = tenant_edge::sidecar::SidecarConfig::new(
            "jira",
            tenant_edge::tenant::Region::new("us-east-1")?,
            SocketAddr::from(([127, 0, 0, 1], port)),
            stack.tcs_endpoints(&token),
        );
        cfg.secrets = Some(tenant_edge::secrets::KeySettings {
            master_key: Some(stack.master_key_file()),
            ..Default::default()
        });
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(cfg)
    };

    // Memory: a sidecar in this process, its allocations counted; a fresh one for each kind of
    // tenant, so that both pay the same growth of the caches' tables.
    let mut per_tenant = [0f64; 2];
    for (with_secrets, bytes) in per_tenant.iter_mut().enumerate() {
        let stop = tokio_util::sync::CancellationToken::new();
        let started = tenant_edge::sidecar::start(sidecar(0)?, stop.clone()).await?;
        let port = started.addr.port();
        let (tenants, auth) = (sizes.tenants, token.clone());
        let parity = if with_secrets == 1 { 0 } else { 1 };
        let (net, counted) =
            tokio::task::spawn_blocking(move || memory(port, &auth, tenants, parity)).await??;
        *bytes = net as f64 / counted as f64;
        stop.cancel();
        started.wait().await;
    }
    println!(
        "memory per cached tenant: {:.0} B without secrets, {:.0} B with three ({} tenants each, looked up once)",
        per_tenant[0],
        per_tenant[1],
        sizes.tenants / 2
    );

    // Latency: the release binary, with one thread, then two.
    for threads in [1, 2] {
        let port = tenant_edge::stack::free_port();
        let mut cfg = sidecar(port)?;
        cfg.threads = threads;
        let config = dir.path().join(format!("sidecar-{threads}.toml"));
        std::fs::write(&config, toml::to_string(&cfg)?)?;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-edge"))
            .args(["sidecar", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let (auth, tenants) = (token.clone(), sizes.tenants);
        let secs = sizes.secs;
        let outcome = tokio::task::spawn_blocking(move || latency(port, &auth, tenants, secs, threads)).await;
        let _ = child.kill();
        let _ = child.wait();
        outcome??;
    }
    Ok(())
}

/// Net bytes the sidecar on `port` keeps for looking up every tenant of `parity` (odd: config
/// only; even: three secrets), and how many tenants that was.
fn memory(port: u16, token: &str, tenants: usize, parity: usize) -> Res<(i128, usize)> {
    let mut conn = ready(port, token)?;
    // A first lookup sets up what every later one shares.
    conn.lookup(&host(parity))?;
    let net = |r: &Region<System>| {
        let c = r.change();
        c.bytes_allocated as i128 - c.bytes_deallocated as i128 + c.bytes_reallocated as i128
    };
    let looked_up = (parity + 2..tenants).step_by(2);
    let counted = looked_up.len();
    let region = Region::new(GLOBAL);
    for i in looked_up.clone() {
        conn.lookup(&host(i))?;
    }
    let kept = net(&region);
    // The same lookups again, all hits: what the process keeps meanwhile for other reasons.
    let region = Region::new(GLOBAL);
    for i in looked_up {
        conn.lookup(&host(i))?;
    }
    println!(
        "(a second pass over the same, cached tenants kept {} bytes: the drift of the rest)",
        net(&region)
    );
    Ok((kept, counted))
}

/// A connection to the sidecar on `port` once it is ready.
fn ready(port: u16, token: &str) -> Res<Conn> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Conn::open(addr, token) {
            if c.get("/readyz").is_ok_and(|(status, _)| status == 200) {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err("the sidecar did not become ready".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn latency(port: u16, token: &str, tenants: usize, secs: u64, threads: usize) -> Res<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = ready(port, token)?;
    // Every tenant cached before anything is timed.
    for i in 0..tenants {
        conn.lookup(&host(i))?;
    }
    // Each rate twice: a warm-up of a fifth of the run first, unmeasured; then `/healthz` at the
    // same rate, the floor of this machine and client (no cache, no JSON).
    let runs = [
        (1_000u64, false, false),
        (1_000, true, false),
        (1_000, true, true),
        (10_000, false, false),
        (10_000, true, false),
        (10_000, true, true),
    ];
    for (rate, measured, floor) in runs {
        let per_thread = rate as f64 / THREADS as f64;
        let interval = Duration::from_secs_f64(1.0 / per_thread);
        let secs = if measured { secs as f64 } else { secs as f64 / 5.0 };
        let n = (per_thread * secs) as usize;
        let started = Instant::now();
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                let token = token.to_owned();
                std::thread::spawn(move || -> Res<(Vec<Duration>, usize)> {
                    let mut conn = Conn::open(addr, &token)?;
                    let mut latencies = Vec::with_capacity(n);
                    let mut errors = 0;
                    let start = Instant::now();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                    for k in 0..n {
                        let due = start + interval * k as u32;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let h = host((x % tenants as u64) as usize);
                        let sent = Instant::now();
                        let answered = if floor {
                            conn.get("/healthz").map(|(status, _)| status == 200)
                        } else {
                            conn.lookup(&h).map(|()| true)
                        };
                        match answered {
                            Ok(true) => latencies.push(sent.elapsed()),
                            _ => errors += 1,
                        }
                    }
                    Ok((latencies, errors))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in clients {
            let (l, e) = t.join().map_err(|_| "client thread panicked")??;
            all.extend(l);
            errors += e;
        }
        let took = started.elapsed();
        if !measured {
            continue;
        }
        all.sort();
        let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
        println!(
            "{threads} thread(s), {} at {rate} req/s offered, {:.0} achieved, {} lookups, {errors} errors: p50 {:?} p90 {:?} p99 {:?} p99.9 {:?} max {:?}",
            if floor { "/healthz" } else { "lookups" },
            all.len() as f64 / took.as_secs_f64(),
            all.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            all[all.len() - 1]
        );
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection, as lean as a load generator's.
struct Conn {
    stream: TcpStream,
    auth: String,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr, token: &str) -> Res<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            stream,
            auth: format!("Bearer {token}"),
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    fn lookup(&mut self, host: &str) -> Res<()> {
        match self.get(&format!("/v1/views/jira/hosts/{host}"))? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{host}: {status} {}", String::from_utf8_lossy(&body)).into()),
        }
    }

    /// Sends a GET and reads the whole answer: its status and body.
    fn get(&mut self, path: &str) -> Res<(u16, Vec<u8>)> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: {}\r\n\r\n",
            self.auth
        );
        self.stream.write_all(request.as_bytes())?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&self.buf)? {
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .ok_or("no content-length")?;
                if self.buf.len() >= head + length {
                    let status = resp.code.unwrap_or(0);
                    return Ok((status, self.buf[head..head + length].to_vec()));
                }
            }
        }
    }
}
