//! The wide fan-out's numbers, against a real AWS emulator (`moto_server`) on loopback, with
//! the dev stack's catalogue and TCS in this process and 50 edges (the edge's cache and fan-out
//! consumer, each with its own SQS queue) at the defaults (`batch_ms` 500, 20 s long polls):
//!
//! - a catalogue write until every one of the 50 edges holds it, p50 and p99;
//! - SNS calls (`PublishBatch`) per second while the catalogue takes 100 writes a second;
//! - SQS requests per idle edge per minute.
//!
//! `cargo bench --bench fanout` (`make bench-fanout`, a few minutes). Results: `bench/README.md`.

use std::time::{Duration, Instant};

use tenant_edge::context::TcsEndpoint;
use tenant_edge::fanout::aws::SnsConfig;
use tenant_edge::fanout::consume::Headless;
use tenant_edge::feed::{CatalogueClient, TenantDoc};
use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::moto::MotoServer;
use tenant_edge::stack::Stack;

const EDGES: usize = 50;
const REGION: &str = "us-east-1";
const HOST: &str = "acme.example.test";

/// Full under `cargo bench`; a quick check that the bench still runs under `cargo test
/// --all-targets` (which runs it without `--bench`).
struct Sizes {
    edges: usize,
    writes: usize,
    load_secs: u64,
    idle_secs: u64,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            edges: EDGES,
            writes: 100,
            load_secs: 20,
            idle_secs: 300,
        }
    } else {
        Sizes {
            edges: 3,
            writes: 2,
            load_secs: 1,
            idle_secs: 2,
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let sizes = sizes();
    // The emulator takes any key; the SDK's standard chain must find one to sign with.
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
    let moto = MotoServer::start()?;
    let mut sns = SnsConfig::new("bench-");
    sns.endpoint_url = Some(moto.endpoint());
    let dir = tempfile::tempdir()?;
    let routes = RoutesFile::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml"))?;
    let mut stack = Stack::builder(dir.path(), routes)
        .shards(false)
        .edges(0)
        .fanout(sns.clone())
        .start()
        .await?;
    let catalogue =
        CatalogueClient::new(&stack.catalogue().url())?.with_token(Some(stack.operator_token().to_owned()));
    let tcs_url = stack.tcs[0].url();
    let mut edge_sns = sns.clone();
    edge_sns.topic = format!("bench-{REGION}");
    let mut edges = Vec::new();
    for i in 0..sizes.edges {
        let tcs = TcsEndpoint {
            region: REGION.into(),
            url: tcs_url.clone(),
            token: stack.edge_token().to_owned(),
        };
        edges.push(Headless::start(tcs, edge_sns.clone(), &format!("bench-{i}"))?);
    }
    for e in &edges {
        e.on_sqs().await;
        e.cache.resolve(HOST).await.map_err(|e| e.to_string())?;
    }
    eprintln!("{} edges on their queues", edges.len());

    // 1. A write until every edge holds it.
    let acme = tenant_edge::tenant::TenantId::new("acme")?;
    let mut lags = Vec::new();
    for n in 0..sizes.writes {
        let doc = touched(catalogue.get_tenant(&acme).await?, n);
        let start = Instant::now();
        let version = catalogue.put_tenant(&doc, None).await?.version;
        while !edges.iter().all(|e| e.version(HOST) >= version) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("write {n} did not reach every edge in 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lags.push(start.elapsed());
        // Out of step with the batch window, as writes are.
        tokio::time::sleep(Duration::from_millis(137 + (n as u64 * 53) % 400)).await;
    }
    lags.sort();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "write -> all {} edges: p50 {:?} p99 {:?} max {:?}",
        edges.len(),
        pct(0.5),
        pct(0.99),
        lags[lags.len() - 1]
    );

    // 2. SNS calls at 100 writes a second.
    let http = reqwest::Client::new();
    let calls_before = tcs_counter(&http, &tcs_url, "tcs_fanout_publish_calls_total").await?;
    let messages_before = tcs_counter(&http, &tcs_url, "tcs_fanout_published_total").await?;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut written = 0u64;
    let mut doc = catalogue.get_tenant(&acme).await?;
    while start.elapsed() < Duration::from_secs(sizes.load_secs) {
        tick.tick().await;
        doc = catalogue
            .put_tenant(&touched(doc, written as usize), None)
            .await?;
        written += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // The last batch goes out within a window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = tcs_counter(&http, &tcs_url, "tcs_fanout_publish_calls_total").await? - calls_before;
    let messages = tcs_counter(&http, &tcs_url, "tcs_fanout_published_total").await? - messages_before;
    eprintln!(
        "{:.0} writes/s for {secs:.1} s: {:.2} PublishBatch calls/s, {:.2} messages/s",
        written as f64 / secs,
        calls / secs,
        messages / secs
    );
    let version = doc.version;
    let start = Instant::now();
    while !edges.iter().all(|e| e.version(HOST) >= version) {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the load's last write did not reach every edge in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. SQS requests of an idle edge.
    let requests = |edges: &[Headless]| -> f64 {
        edges
            .iter()
            .map(|e| {
                ["receive_message", "delete_message_batch"]
                    .iter()
                    .map(|op| e.metrics.fanout_sqs_requests.with_label_values(&[op]).get())
                    .sum::<u64>() as f64
            })
            .sum()
    };
    let before = requests(&edges);
    tokio::time::sleep(Duration::from_secs(sizes.idle_secs)).await;
    let per_minute = (requests(&edges) - before) / edges.len() as f64 * 60.0 / sizes.idle_secs as f64;
    eprintln!(
        "idle for {} s: {per_minute:.2} SQS requests per edge per minute",
        sizes.idle_secs
    );

    println!();
    println!("| edges | write -> every edge p50 | p99 | writes/s | PublishBatch calls/s | SQS requests / idle edge / min |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} ms | {:.0} ms | {:.0} | {:.2} | {:.2} |",
        edges.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        written as f64 / secs,
        calls / secs,
        per_minute
    );
    for e in edges {
        e.stop().await;
    }
    stack.stop().await;
    Ok(())
}

/// Acme's document with a host that changes with `n`, so each write is a change.
fn touched(mut doc: TenantDoc, n: usize) -> TenantDoc {
    doc.hosts.truncate(1);
    if let Ok(host) = tenant_edge::tenant::Host::parse(&format!("acme-{n}.example.test")) {
        doc.hosts.push(host);
    }
    doc
}

/// The sum of a TCS counter over its labels.
async fn tcs_counter(http: &reqwest::Client, tcs: &str, name: &str) -> Res<f64> {
    let text = http.get(format!("{tcs}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| !l.contains("result=\"failed\"") && !l.contains("result=\"partial\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
