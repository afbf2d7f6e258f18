//! `make chaos`: faults injected into a running stack under bounded load, and the invariants
//! checked after each.
//!
//! The stack is the dev route file's, every role a child process of the `tenant-edge` binary
//! beside this example, the catalogue's data on a small tmpfs (so its disk can fill up). A writer
//! creates tenants one after another and remembers every write the catalogue acknowledged; a
//! reader asks the edge for tenants it knows. The faults, each at a random moment:
//!
//! 1. the catalogue killed (-9) during writes, then restarted;
//! 2. a TCS region killed (-9), then restarted from its snapshot;
//! 3. the edge killed (-9) and restarted while every TCS is down, then the TCS brought back;
//! 4. the catalogue's disk filled up, then freed.
//!
//! The invariants: no acknowledged write lost; the change log dense; no known tenant answered
//! with an error while a source of its context survives (a TCS region, or the edge's cache
//! file); the whole stack healthy again within [`RECOVERY`]. It prints a table and exits 1 if any
//! invariant failed. Needs root for the tmpfs (the CI machine and the dev container are).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tenant_edge::feed::{CatalogueClient, TenantDoc};
use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::{Run, Stack};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long the stack may take to be fully healthy again after a fault.
const RECOVERY: Duration = Duration::from_secs(30);
/// The demo tenants every fault must leave answering.
const KNOWN: [&str; 3] = ["acme.example.test", "globex.example.test", "initech.example.test"];

/// One fault's line in the table.
struct Outcome {
    fault: &'static str,
    injected_after_ms: u128,
    recovered_in: Option<Duration>,
    checks: Vec<(&'static str, bool, String)>,
}

#[tokio::main]
async fn main() -> Res<()> {
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tenant-edge"))
        .ok_or("no binary beside the example")?;
    if !bin.exists() {
        return Err(format!(
            "{} is missing: cargo build first (make chaos does)",
            bin.display()
        )
        .into());
    }
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("catalogue");
    std::fs::create_dir_all(&disk)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&disk)
        .status()?;
    if !mounted.success() {
        return Err("cannot mount a 48 MiB tmpfs for the catalogue's disk (run as root)".into());
    }
    let outcome = run(&bin, dir.path(), &disk).await;
    let _ = std::process::Command::new("umount").arg(&disk).status();
    let outcomes = outcome?;
    print_table(&outcomes);
    if outcomes.iter().all(|o| o.checks.iter().all(|c| c.1)) {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// What the load saw.
#[derive(Default)]
struct Load {
    /// Tenants whose creation the catalogue acknowledged, with the version.
    acked: Mutex<Vec<(String, u64)>>,
    /// Writes refused or failed (expected while the catalogue is down or full).
    write_errors: AtomicU64,
    /// Answers of the edge for known tenants that were not 200 (connection errors excluded: the
    /// edge itself was down), while the fault allows none.
    read_errors: AtomicU64,
    reads: AtomicU64,
    stop: AtomicBool,
}

async fn run(bin: &Path, dir: &Path, disk: &Path) -> Res<Vec<Outcome>> {
    let routes = RoutesFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml"))?;
    let cache_file = dir.join("edge-cache.json");
    let file = cache_file.clone();
    let mut stack = Stack::builder(dir, routes)
        .run(Run::Children(bin.to_owned()))
        .edges(1)
        .edge(move |_, cfg| {
            cfg.cache_file = Some(file.clone());
            cfg.cache_file_interval_secs = 1;
        })
        .start()
        .await?;
    let catalogue =
        CatalogueClient::new(&stack.catalogue().url())?.with_token(Some(stack.operator_token().to_owned()));
    let edge = format!("http://127.0.0.1:{}/", stack.edges[0].http.port());
    let admin = format!("http://{}", stack.edges[0].admin());
    let load = Arc::new(Load::default());
    eprintln!("stack up in {}; load starting", dir.display());
    let writer = tokio::spawn(write_loop(catalogue.clone(), load.clone()));
    let reader = tokio::spawn(read_loop(edge.clone(), load.clone()));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let pause = || Duration::from_millis(rand::thread_rng().gen_range(500..2500));

    // 1. The catalogue killed during writes.
    tokio::time::sleep(pause()).await;
    let at = started.elapsed().as_millis();
    let acked_before = load.acked.lock().map(|a| a.len()).unwrap_or(0);
    let errors_before = load.read_errors.load(Ordering::SeqCst);
    stack.catalogue_mut().kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.catalogue_mut().restart()?;
    let recovered = healthy(&stack, &http, &admin, &catalogue).await;
    let mut checks = writes_kept(&catalogue, &load).await;
    checks.push((
        "writes went on around it",
        load.acked.lock().map(|a| a.len()).unwrap_or(0) > acked_before,
        String::new(),
    ));
    let errors = load.read_errors.load(Ordering::SeqCst) - errors_before;
    checks.push((
        "known tenants answered throughout",
        errors == 0,
        format!("{errors} errors"),
    ));
    outcomes.push(outcome("catalogue kill -9 during writes", at, recovered, checks));

    // 2. A TCS region killed and restarted from its snapshot.
    tokio::time::sleep(pause()).await;
    let at = started.elapsed().as_millis();
    let errors_before = load.read_errors.load(Ordering::SeqCst);
    stack.tcs[0].kill();
    tokio::time::sleep(pause()).await;
    stack.tcs[0].restart()?;
    let recovered = healthy(&stack, &http, &admin, &catalogue).await;
    let mut checks = writes_kept(&catalogue, &load).await;
    let errors = load.read_errors.load(Ordering::SeqCst) - errors_before;
    checks.push((
        "known tenants answered throughout",
        errors == 0,
        format!("{errors} errors"),
    ));
    outcomes.push(outcome(
        "TCS us-east-1 kill -9, restart from snapshot",
        at,
        recovered,
        checks,
    ));

    // 3. The edge killed and restarted while every TCS is down.
    tokio::time::sleep(pause()).await;
    let at = started.elapsed().as_millis();
    for t in &mut stack.tcs {
        t.kill();
    }
    // Its cache file, written every second, holds the known tenants.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let errors_before = load.read_errors.load(Ordering::SeqCst);
    stack.edges[0].kill();
    stack.edges[0].restart()?;
    let mut served = true;
    let mut detail = String::new();
    for host in KNOWN {
        let status = http
            .get(&edge)
            .header("host", host)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if !matches!(status, Ok(200)) {
            served = false;
            detail = format!("{host}: {status:?}");
        }
    }
    for t in &mut stack.tcs {
        t.restart()?;
    }
    let recovered = healthy(&stack, &http, &admin, &catalogue).await;
    let mut checks = writes_kept(&catalogue, &load).await;
    let errors = load.read_errors.load(Ordering::SeqCst) - errors_before;
    checks.push((
        "known tenants served from the cache file",
        served && errors == 0,
        format!("{errors} errors {detail}"),
    ));
    outcomes.push(outcome(
        "edge kill -9, restart with every TCS down",
        at,
        recovered,
        checks,
    ));

    // 4. The catalogue's disk full.
    tokio::time::sleep(pause()).await;
    let at = started.elapsed().as_millis();
    let errors_before = load.read_errors.load(Ordering::SeqCst);
    let filler = fill(disk)?;
    let refused = full_write(&catalogue).await;
    std::fs::remove_file(&filler)?;
    // The database is checked by a restart: it opens, every acknowledged write in it.
    stack.catalogue_mut().kill();
    stack.catalogue_mut().restart()?;
    let recovered = healthy(&stack, &http, &admin, &catalogue).await;
    let mut checks = writes_kept(&catalogue, &load).await;
    checks.push(("a write on a full disk is a 503", refused.0, refused.1));
    let errors = load.read_errors.load(Ordering::SeqCst) - errors_before;
    checks.push((
        "known tenants answered throughout",
        errors == 0,
        format!("{errors} errors"),
    ));
    outcomes.push(outcome("catalogue disk full, then freed", at, recovered, checks));

    load.stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let _ = reader.await;
    eprintln!(
        "load: {} tenants written ({} writes refused or failed), {} reads of known tenants",
        load.acked.lock().map(|a| a.len()).unwrap_or(0),
        load.write_errors.load(Ordering::SeqCst),
        load.reads.load(Ordering::SeqCst)
    );
    stack.stop().await;
    Ok(outcomes)
}

fn outcome(
    fault: &'static str,
    at: u128,
    recovered: Option<Duration>,
    mut checks: Vec<(&'static str, bool, String)>,
) -> Outcome {
    checks.push((
        "healthy again in time",
        recovered.is_some(),
        recovered.map_or_else(|| format!("not within {RECOVERY:?}"), |d| format!("{d:.1?}")),
    ));
    Outcome {
        fault,
        injected_after_ms: at,
        recovered_in: recovered,
        checks,
    }
}

/// Creates tenants one after another until stopped, remembering every acknowledged write.
async fn write_loop(catalogue: CatalogueClient, load: Arc<Load>) {
    let mut n = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("chaos-{n}");
        let Some(doc) = tenant(&id, None) else { return };
        match catalogue.put_tenant(&doc, None).await {
            Ok(written) => {
                if let Ok(mut acked) = load.acked.lock() {
                    acked.push((id, written.version));
                }
            }
            Err(_) => {
                load.write_errors.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks the edge for the known tenants until stopped; counts answers that are not 200.
async fn read_loop(edge: String, load: Arc<Load>) {
    let http = reqwest::Client::new();
    let mut i = 0;
    while !load.stop.load(Ordering::SeqCst) {
        i += 1;
        let host = KNOWN[i % KNOWN.len()];
        match http.get(&edge).header("host", host).send().await {
            Ok(r) => {
                load.reads.fetch_add(1, Ordering::SeqCst);
                if r.status() != 200 {
                    load.read_errors.fetch_add(1, Ordering::SeqCst);
                }
            }
            // The edge itself is down (restarting): nothing answered, no wrong answer given.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every acknowledged write is in the catalogue at its version or later, and the log is dense.
async fn writes_kept(catalogue: &CatalogueClient, load: &Load) -> Vec<(&'static str, bool, String)> {
    let acked: Vec<(String, u64)> = load.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut lost = Vec::new();
    for (id, version) in &acked {
        let Ok(tid) = tenant_edge::tenant::TenantId::new(id) else {
            continue;
        };
        match catalogue.get_tenant(&tid).await {
            Ok(doc) if doc.version >= *version => {}
            other => lost.push(format!("{id}: {:?}", other.map(|d| d.version))),
        }
    }
    let mut after = 0;
    let mut dense = true;
    let mut detail = String::new();
    loop {
        match catalogue.changes(after, Some(1000), None).await {
            Ok(page) if page.changes.is_empty() => break,
            Ok(page) => {
                for c in &page.changes {
                    if c.seq != after + 1 {
                        dense = false;
                        detail = format!("seq {} after {after}", c.seq);
                    }
                    after = c.seq;
                }
            }
            Err(e) => {
                dense = false;
                detail = e.to_string();
                break;
            }
        }
    }
    vec![
        (
            "no acknowledged write lost",
            lost.is_empty(),
            format!(
                "{} acknowledged, {} lost {}",
                acked.len(),
                lost.len(),
                lost.first().cloned().unwrap_or_default()
            ),
        ),
        ("change log dense", dense, format!("1..{after} {detail}")),
    ]
}

/// Waits until every part is healthy: the catalogue answers, every TCS is ready, the edge is
/// ready and a new write reaches it. How long it took, or None past [`RECOVERY`].
async fn healthy(
    stack: &Stack,
    http: &reqwest::Client,
    admin: &str,
    catalogue: &CatalogueClient,
) -> Option<Duration> {
    let started = Instant::now();
    let probe = format!("probe-{}", rand::random::<u32>());
    let mut written = None;
    while started.elapsed() < RECOVERY {
        let tcs_ready = futures_ready(http, stack).await;
        let edge_ready = http
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if written.is_none() {
            if let Some(doc) = tenant(&probe, None) {
                written = catalogue.put_tenant(&doc, None).await.ok().map(|d| d.version);
            }
        }
        let reached = match written {
            Some(_) => {
                http.get(format!("{admin}/admin/tenants/{probe}.example.test"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                    || http
                        .get(format!("http://127.0.0.1:{}/", stack.edges[0].http.port()))
                        .header("host", format!("{probe}.example.test"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
            }
            None => false,
        };
        if tcs_ready && edge_ready && reached {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn futures_ready(http: &reqwest::Client, stack: &Stack) -> bool {
    for t in &stack.tcs {
        let ok = http
            .get(format!("{}/readyz", t.url()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if !ok {
            return false;
        }
    }
    true
}

/// Fills the tmpfs at `disk` to the last byte; the filler's path.
fn fill(disk: &Path) -> Res<PathBuf> {
    use std::io::Write;
    let path = disk.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0u8; 1 << 20];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let small = vec![0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.flush();
    Ok(path)
}

/// A few writes on the full disk: whether the first refused was a 503, and what was seen.
async fn full_write(catalogue: &CatalogueClient) -> (bool, String) {
    let mut seen = Vec::new();
    for i in 0..20 {
        let id = format!("full-{i}-{}", rand::random::<u16>());
        let padding = serde_json::json!({"jira": {"config": {"padding": "x".repeat(2000)}}});
        let Some(doc) = tenant(&id, Some(padding)) else {
            continue;
        };
        match catalogue.put_tenant(&doc, None).await {
            Ok(_) => seen.push("201".to_owned()),
            Err(e) => {
                let status = e.status();
                seen.push(format!("{status:?}"));
                if status.is_some() {
                    return (status == Some(503), seen.join(" "));
                }
            }
        }
    }
    (false, seen.join(" "))
}

/// A tenant `id` on jira-us-east-1, with `products` when given.
fn tenant(id: &str, products: Option<serde_json::Value>) -> Option<TenantDoc> {
    let mut doc = serde_json::json!({
        "id": id, "hosts": [format!("{id}.example.test")], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}
    });
    if let Some(p) = products {
        doc["products"] = p;
    }
    serde_json::from_value(doc).ok()
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!("| fault | injected at | healthy again in | invariant | held | detail |");
    println!("|---|---|---|---|---|---|");
    for o in outcomes {
        for (i, (name, held, detail)) in o.checks.iter().enumerate() {
            let (fault, at, rec) = if i == 0 {
                (
                    o.fault.to_owned(),
                    format!("{:.1} s", o.injected_after_ms as f64 / 1000.0),
                    o.recovered_in
                        .map_or_else(|| "-".to_owned(), |d| format!("{d:.1?}")),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            println!(
                "| {fault} | {at} | {rec} | {name} | {} | {detail} |",
                if *held { "yes" } else { "NO" }
            );
        }
    }
    let held = outcomes.iter().flat_map(|o| &o.checks).filter(|c| c.1).count();
    let all = outcomes.iter().map(|o| o.checks.len()).sum::<usize>();
    println!(
        "\n{} faults injected, {held} of {all} invariants held",
        outcomes.len()
    );
}
