//! Criterion benchmark of the edge's cache file: how long an edge takes to restore its tenant
//! contexts at start (read, check, parse, insert into the cache), and what each cached tenant
//! costs in memory.
//!
//! Run with `cargo bench --bench cache_file`: it writes a 1 000 000-tenant file, prints the
//! resident memory per cached tenant, then measures the restore. Under `cargo test` (criterion
//! runs each benchmark once) it uses 1 000 tenants so tests stay fast. Numbers are recorded in
//! `bench/README.md`.

#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented public functions"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion};
use tenant_edge::context::persist::{check, read, write_atomic};
use tenant_edge::context::{CacheConfig, TcsClient, TcsEndpoint, TenantCache};
use tenant_edge::metrics::EdgeMetrics;
use tenant_edge::tenant::{
    Host, IngressRecord, Placement, PlacementState, Product, Realm, ShardId, TenantId,
};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exits instead of panicking: benches follow the crate's lints.
fn or_exit<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("cache_file bench setup failed: {e:?}");
        std::process::exit(1)
    })
}

/// 1M tenants when benchmarking for real, a few when criterion only checks the bench runs.
fn tenants() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        1_000
    }
}

/// A tenant shaped like the demo ones: one host, jira and confluence placements.
fn record(i: usize) -> IngressRecord {
    let (realm, region) = if i % 2 == 0 {
        ("us", "us-east-1")
    } else {
        ("eu", "eu-west-1")
    };
    let placement = |product: &str| Placement {
        shard: or_exit(ShardId::new(&format!("{product}-{region}"))),
        state: PlacementState::Active,
    };
    let placements: BTreeMap<Product, Placement> = ["jira", "confluence"]
        .iter()
        .map(|p| (or_exit(Product::new(p)), placement(p)))
        .collect();
    IngressRecord {
        id: or_exit(TenantId::new(&format!("tenant-{i:07}"))),
        version: 1 + (i % 7) as u64,
        realm: or_exit(Realm::new(realm)),
        hosts: vec![or_exit(Host::parse(&format!("tenant-{i:07}.example.test")))],
        placements: placements.into(),
        rate_limits: Default::default(),
        products: None,
        data_key: None,
    }
}

fn empty_cache(hosts: u64) -> TenantCache {
    let endpoint = TcsEndpoint {
        region: "us-east-1".into(),
        url: "http://127.0.0.1:9".into(),
        token: "t".into(),
    };
    let client = or_exit(TcsClient::new(
        &[endpoint],
        "us-east-1",
        tenant_edge::context::LookupConfig::default(),
    ));
    let config = CacheConfig {
        max_entries: 2 * hosts,
        ..CacheConfig::default()
    };
    TenantCache::with_capacity(&config, Arc::new(client), or_exit(EdgeMetrics::new()), hosts)
}

/// What `edge::run` does at start, minus logging: read and check the file, build the cache to
/// its size, then parse and insert every record.
fn restore(path: &Path) -> TenantCache {
    let file = match read(path) {
        Ok(Some(file)) => file,
        other => or_exit(Err(format!("{other:?}"))),
    };
    let cache = empty_cache(file.hosts);
    or_exit(cache.restore_file_records(&file));
    cache
}

/// User and system CPU time of this process so far, from `/proc/self/stat` (Linux, 100 Hz).
fn cpu_split() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = |i: usize| Duration::from_millis(fields.get(i).copied().unwrap_or(0) * 10);
    (ticks(11), ticks(12))
}

/// Wall and CPU time of one phase, printed.
struct Phase(&'static str, Instant, (Duration, Duration));

impl Phase {
    fn start(name: &'static str) -> Self {
        Phase(name, Instant::now(), cpu_split())
    }

    fn end(self) {
        let (user, sys) = cpu_split();
        let (user, sys) = (user.saturating_sub(self.2 .0), sys.saturating_sub(self.2 .1));
        println!(
            "cache_file:   {:<28} wall {:>7.3} s, cpu {:>7.3} s (user {:.3}, system {:.3})",
            self.0,
            self.1.elapsed().as_secs_f64(),
            (user + sys).as_secs_f64(),
            user.as_secs_f64(),
            sys.as_secs_f64()
        );
    }
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Set in the child process that measures memory, to the file to restore.
const MEMORY_CHILD: &str = "CACHE_FILE_BENCH_MEMORY_CHILD";

/// Restores `path` in a fresh process, so memory the parent freed (its own records) cannot be
/// reused and hide the cost; prints what the child reports.
fn memory_per_tenant(path: &Path, n: usize) {
    let exe = or_exit(std::env::current_exe());
    let out = or_exit(
        std::process::Command::new(exe)
            .env(MEMORY_CHILD, path)
            .env("CACHE_FILE_BENCH_TENANTS", n.to_string())
            .output(),
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The child's side: RSS before and after restoring every tenant into a fresh cache, and the
/// wall and CPU time of each step (CPU time stays meaningful on a busy machine).
fn memory_child(path: &Path) {
    let n: usize = std::env::var("CACHE_FILE_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let before = rss();
    let all = Phase::start("total");
    let phase = Phase::start("read the file");
    let bytes = or_exit(std::fs::read(path));
    phase.end();
    let phase = Phase::start("check (crc, framing)");
    let file = or_exit(check(bytes));
    phase.end();
    let phase = Phase::start("parse + insert (pipelined)");
    let cache = empty_cache(file.hosts);
    or_exit(cache.restore_file_records(&file));
    phase.end();
    drop(file);
    all.end();
    let after = rss();
    println!(
        "cache_file: {n} tenants restored, {} hosts held, RSS {} -> {} MiB, {} bytes per tenant",
        cache.len(),
        before >> 20,
        after >> 20,
        after.saturating_sub(before) / n as u64
    );
}

fn cache_file(c: &mut Criterion) {
    let n = tenants();
    let dir = or_exit(tempfile::tempdir());
    let path = dir.path().join("edge-cache.json");
    let records: Vec<Arc<IngressRecord>> = (0..n).map(|i| Arc::new(record(i))).collect();
    or_exit(write_atomic(&path, 42, 0, &records));
    drop(records);
    let size = or_exit(std::fs::metadata(&path)).len();
    println!("cache_file: {n} tenants, file {} MiB", size >> 20);
    memory_per_tenant(&path, n);

    let mut group = c.benchmark_group("cache_file");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function(format!("restore_{n}"), |b| {
        b.iter_batched(|| (), |()| restore(&path), BatchSize::PerIteration)
    });
    group.bench_function(format!("read_{n}"), |b| {
        b.iter_batched(|| (), |()| read(&path), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, cache_file);

// `criterion_main!` with one more branch: the memory-measuring child runs no benchmark.
fn main() {
    if let Some(path) = std::env::var_os(MEMORY_CHILD) {
        memory_child(Path::new(&path));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
