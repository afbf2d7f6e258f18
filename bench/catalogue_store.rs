//! The catalogue's stores side by side, SQLite against PostgreSQL, both with durable commits
//! (SQLite: WAL with `synchronous=FULL`; PostgreSQL: `fsync` and `synchronous_commit` on),
//! each behind a real catalogue API on loopback:
//!
//! - single-tenant PUTs from 8 concurrent clients: throughput and latency percentiles;
//! - a bulk import of `IMPORT_TENANTS` tenants (default 1 000 000) in the client's batches;
//! - a committed write until a long-poll parked on another catalogue instance wakes, p50 and
//!   p99 (SQLite: the same instance, since one file has one catalogue).
//!
//! `cargo bench --bench catalogue_store` (`make bench-catalogue`); `IMPORT_TENANTS=100000` for
//! a quicker run. Results: `bench/README.md`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tenant_edge::catalogue::{CatalogueConfig, StoreConfig};
use tenant_edge::feed::client::IMPORT_BATCH;
use tenant_edge::feed::{CatalogueClient, RealmDoc, ShardDoc, TenantDoc};
use tenant_edge::stack::postgres::PgServer;
use tenant_edge::tenant::{Host, Placement, Product, Realm, Region, ShardId, TenantId};
use tokio_util::sync::CancellationToken;

const WRITERS: usize = 8;

/// The sizes of a run: full under `cargo bench`, a quick check that the bench still runs under
/// `cargo test --all-targets` (which runs it without `--bench`).
struct Sizes {
    puts_per_writer: usize,
    wakes: usize,
    tenants: usize,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            puts_per_writer: 500,
            wakes: 200,
            tenants: std::env::var("IMPORT_TENANTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000),
        }
    } else {
        Sizes {
            puts_per_writer: 5,
            wakes: 5,
            tenants: 2_000,
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let sizes = sizes();
    let tenants = sizes.tenants;
    let sqlite_dir = tempfile::tempdir()?;
    let pg = PgServer::scratch(&[("max_wal_size", "4GB")])?;
    let pg_url = pg.url("postgres");
    let mut rows = Vec::new();
    for (name, store) in [
        ("SQLite", StoreConfig::Sqlite),
        ("PostgreSQL", StoreConfig::Postgres(pg_url.clone())),
    ] {
        eprintln!("== {name}");
        let stop = CancellationToken::new();
        let a = start(sqlite_dir.path(), store.clone(), &stop).await?;
        let b = match &store {
            StoreConfig::Sqlite => a.clone(),
            StoreConfig::Postgres(_) => start(sqlite_dir.path(), store.clone(), &stop).await?,
        };
        seed(&a).await?;
        let puts = puts(&a, sizes.puts_per_writer).await?;
        let wakes = wakes(&a, &b, sizes.wakes).await?;
        let import = import(&a, tenants).await?;
        stop.cancel();
        rows.push((name, puts, wakes, import));
    }
    println!();
    println!(
        "| store | PUT req/s ({WRITERS} clients) | PUT p50 / p99 | wake p50 / p99 | import of {tenants} |"
    );
    println!("|---|---|---|---|---|");
    for (name, (rate, p50, p99), (w50, w99), import) in rows {
        println!(
            "| {name} | {rate:.0} | {p50:.2?} / {p99:.2?} | {w50:.2?} / {w99:.2?} | {:.1} s ({:.0} tenants/s) |",
            import.as_secs_f64(),
            tenants as f64 / import.as_secs_f64()
        );
    }
    Ok(())
}

/// A catalogue in this process on a free port, without tokens (loopback).
async fn start(dir: &std::path::Path, store: StoreConfig, stop: &CancellationToken) -> Res<CatalogueClient> {
    let cfg = CatalogueConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
        store,
        tokens: None,
        allow_unauthenticated: true,
        new_log_epoch: false,
        master_key: None,
        previous_master_keys: Vec::new(),
        kms: None,
    };
    let bound = tenant_edge::catalogue::bind(cfg).await?;
    let url = format!("http://{}", bound.addr());
    tokio::spawn(bound.serve(stop.clone()));
    Ok(CatalogueClient::new(&url)?)
}

async fn seed(c: &CatalogueClient) -> Res<()> {
    c.put_realm(&RealmDoc {
        name: Realm::new("us")?,
        regions: vec![Region::new("us-east-1")?],
    })
    .await?;
    c.put_shard(&ShardDoc {
        id: ShardId::new("jira-us-east-1")?,
        product: Product::new("jira")?,
        regions: vec![Region::new("us-east-1")?],
        mover: None,
        database: serde_json::Map::new(),
    })
    .await?;
    Ok(())
}

fn tenant(id: &str) -> Res<TenantDoc> {
    let mut placements = std::collections::BTreeMap::new();
    placements.insert(
        Product::new("jira")?,
        Placement {
            shard: ShardId::new("jira-us-east-1")?,
            state: Default::default(),
        },
    );
    Ok(TenantDoc {
        id: TenantId::new(id)?,
        hosts: vec![Host::parse(&format!("{id}.example.test"))?],
        realm: Realm::new("us")?,
        placements,
        products: Default::default(),
        rate_limits: Default::default(),
        data_key: None,
        version: 0,
    })
}

/// `WRITERS` clients each putting its own tenant `per_writer` times.
async fn puts(c: &CatalogueClient, per_writer: usize) -> Res<(f64, Duration, Duration)> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let c = c.clone();
        let doc = tenant(&format!("put-{w}"))?;
        tasks.spawn(async move {
            let mut took = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let t = Instant::now();
                c.put_tenant(&doc, None).await?;
                took.push(t.elapsed());
            }
            Ok::<_, tenant_edge::feed::ClientError>(took)
        });
    }
    let mut took = Vec::new();
    while let Some(done) = tasks.join_next().await {
        took.extend(done??);
    }
    let rate = took.len() as f64 / started.elapsed().as_secs_f64();
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() * 99 / 100]);
    eprintln!("PUT: {rate:.0}/s, p50 {p50:?}, p99 {p99:?}");
    Ok((rate, p50, p99))
}

/// A long-poll parked on `b`, a write through `a`: the time from the write's answer (its
/// commit) until the poll answers.
async fn wakes(a: &CatalogueClient, b: &CatalogueClient, n: usize) -> Res<(Duration, Duration)> {
    let doc = tenant("wake")?;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let head = b.changes(u64::MAX >> 1, Some(1), Some(0)).await?.head;
        let poller = b.clone();
        let poll = tokio::spawn(async move {
            let page = poller.changes(head, Some(10), Some(10_000)).await;
            (page, Instant::now())
        });
        // Let the poll park (it answers at once if the write lands first, which is measured too).
        tokio::time::sleep(Duration::from_millis(2)).await;
        a.put_tenant(&doc, None).await?;
        let written = Instant::now();
        let (page, woke) = poll.await?;
        assert!(!page?.changes.is_empty());
        took.push(woke.saturating_duration_since(written));
    }
    took.sort();
    let (p50, p99) = (took[n / 2], took[n * 99 / 100]);
    eprintln!("wake: p50 {p50:?}, p99 {p99:?}");
    Ok((p50, p99))
}

/// `n` new tenants in the client's import batches, one after another, with a progress line.
async fn import(c: &CatalogueClient, n: usize) -> Res<Duration> {
    let batch = IMPORT_BATCH as usize;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let docs = (done..(done + batch).min(n))
            .map(|i| tenant(&format!("bulk-{i}")))
            .collect::<Res<Vec<_>>>()?;
        c.put_tenants(&docs).await?;
        done += docs.len();
        if done % (batch * 20) == 0 || done == n {
            let secs = started.elapsed().as_secs_f64();
            eprintln!("imported {done} in {secs:.1} s ({:.0}/s)", done as f64 / secs);
        }
    }
    Ok(started.elapsed())
}
