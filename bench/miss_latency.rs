//! Miss latency of the edge's tenant-context cache against two TCS regions served on loopback
//! (in process, real sockets, HTTP/2): p50/p99 of a miss with both regions healthy, and with
//! the local region 300 ms slow (hedging should hide it).
//!
//! `cargo bench --bench miss_latency`; under `cargo test` it runs a few lookups only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenant_edge::context::{CacheConfig, LookupConfig, Resolved, TcsClient, TcsEndpoint, TenantCache};
use tenant_edge::metrics::EdgeMetrics;
use tenant_edge::tcs::faults::Faults;
use tenant_edge::tcs::{standalone, ConsumerConfig, Tcs, TcsConfig};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";

fn tcs(region: &str, tenants: usize) -> Result<Tcs, Box<dyn std::error::Error>> {
    let edge = ConsumerConfig::new("edge", TOKEN, &["ingress"]);
    let config = TcsConfig {
        allow_faults: true,
        admin_token: Some("bench-admin-token-0123".into()),
        ..standalone::config(region, vec![edge])?
    };
    let tcs = Tcs::new(config)?;
    for i in 0..tenants {
        let id = format!("t{i}");
        let host = format!("{id}.example.test");
        tcs.ingress()
            .apply(&standalone::put(i as u64 + 1, &id, 1, &[&host])?);
    }
    Ok(tcs)
}

async fn serve(tcs: &Tcs, stop: &CancellationToken) -> Result<String, std::io::Error> {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (addr, _) = standalone::serve(tcs, any, stop.clone()).await?;
    Ok(format!("http://{addr}"))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn misses(cache: &TenantCache, hosts: std::ops::Range<usize>) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(hosts.len());
    for i in hosts {
        let host = format!("t{i}.example.test");
        let started = Instant::now();
        let found = matches!(cache.resolve(&host).await, Ok(Resolved::Found(_)));
        latencies.push(started.elapsed());
        assert!(found, "{host} not found");
    }
    latencies.sort();
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let benching = std::env::args().any(|a| a == "--bench");
    let n = if benching { 5_000 } else { 20 };
    let (us, eu) = (tcs("us-east-1", 2 * n)?, tcs("eu-west-1", 2 * n)?);
    let stop = CancellationToken::new();
    let endpoints = [
        TcsEndpoint {
            region: "us-east-1".into(),
            url: serve(&us, &stop).await?,
            token: TOKEN.into(),
        },
        TcsEndpoint {
            region: "eu-west-1".into(),
            url: serve(&eu, &stop).await?,
            token: TOKEN.into(),
        },
    ];
    let client = Arc::new(TcsClient::new(&endpoints, "us-east-1", LookupConfig::default())?);
    let cache = TenantCache::new(&CacheConfig::default(), client, EdgeMetrics::new()?);
    // Open the connections first, as the edge's region checks do.
    let _ = cache.resolve("warm.example.test").await;

    let healthy = misses(&cache, 0..n).await;
    us.faults().set(Faults {
        latency_ms: 300,
        ..Faults::default()
    })?;
    let slow = misses(&cache, n..2 * n).await;
    for (name, l) in [
        ("both regions healthy", &healthy),
        ("local region +300 ms", &slow),
    ] {
        println!(
            "miss ({name}, {} lookups): p50 {:?}  p99 {:?}  max {:?}",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            l[l.len() - 1]
        );
    }
    stop.cancel();
    Ok(())
}
