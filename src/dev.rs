//! `tenant-edge dev`: the whole stack on loopback in one process, for a first run.
//!
//! Starts the demo shards named in the route file (their items in `<data>/shards`), the
//! catalogue (in a data dir it creates), one TCS per dev region, and the edge; seeds realms,
//! shards and the demo tenants; prints one banner; stops everything cleanly on Ctrl-C. The
//! configs it uses are written into the data dir, so what runs here can be run role by role too.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalogue::CatalogueConfig;
use crate::context::TcsEndpoint;
use crate::demo::DemoShardConfig;
use crate::edge::EdgeConfig;
use crate::feed::{CatalogueClient, ClientError, RealmDoc, ShardDoc, TenantDoc};
use crate::routes::RouteStore;
use crate::tcs::{ConsumerConfig, TcsConfig};
use crate::tenant::{Placement, PlacementState, Product, Realm, Region, ShardId, TenantId};

/// The token the dev edge presents to the dev TCS nodes.
pub const DEV_EDGE_TOKEN: &str = "dev-edge-token";

/// Options of `tenant-edge dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for the catalogue database, TCS snapshots and generated configs.
    #[arg(long, default_value = "data/dev")]
    pub data: PathBuf,
    /// Route snapshot of the dev stack.
    #[arg(long, default_value = "routes/dev.toml")]
    pub routes: PathBuf,
    /// Directory holding `dev.crt` and `dev.key` for the HTTPS listener.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
}

/// Why the dev stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The route file is invalid.
    #[error(transparent)]
    Routes(#[from] crate::routes::RouteError),
    /// Seeding the catalogue failed.
    #[error("seeding the catalogue: {0}")]
    Seed(#[from] ClientError),
    /// A part did not come up.
    #[error("{0} did not become ready")]
    NotReady(String),
    /// A part failed.
    #[error("{0}")]
    Part(String),
}

/// Fixed loopback ports of the dev stack (the contract in the design).
pub mod ports {
    /// Edge, plain HTTP.
    pub const EDGE_HTTP: u16 = 8080;
    /// Edge, HTTPS (h2 + http/1.1).
    pub const EDGE_HTTPS: u16 = 8443;
    /// Edge admin.
    pub const EDGE_ADMIN: u16 = 9900;
    /// Catalogue API.
    pub const CATALOGUE: u16 = 7000;
    /// TCS us-east-1.
    pub const TCS_US_EAST_1: u16 = 7101;
    /// TCS eu-west-1.
    pub const TCS_EU_WEST_1: u16 = 7102;
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> DevError {
    DevError::Io(format!("{}: {e}", what.display()))
}

/// Runs the dev stack until `shutdown` is cancelled (Ctrl-C or SIGTERM in the binary).
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<(), DevError> {
    let mut parts = JoinSet::new();
    let result = start(&args, &shutdown, &mut parts).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "dev stack failed to start; stopping");
        shutdown.cancel();
    }
    // Any part ending early (a bind failure, say) stops the whole stack.
    while let Some(done) = parts.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %e, "a part of the dev stack stopped");
        }
        shutdown.cancel();
    }
    result
}

type Parts = JoinSet<Result<(), String>>;

/// Runs a part; one that fails stops the whole stack at once (a start still waiting on
/// another part sees `shutdown` and gives up).
fn spawn_part<F, E>(parts: &mut Parts, shutdown: &CancellationToken, fut: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let shutdown = shutdown.clone();
    parts.spawn(async move {
        let done = fut.await.map_err(|e| e.to_string());
        if done.is_err() {
            shutdown.cancel();
        }
        done
    });
}

/// Starts every part in order, each bound before the next needs it: a role's `bind` (or the
/// edge's `start`) returning is its readiness, so nothing here polls.
async fn start(args: &DevArgs, shutdown: &CancellationToken, parts: &mut Parts) -> Result<(), DevError> {
    std::fs::create_dir_all(&args.data).map_err(|e| io_err(&args.data, e))?;
    let routes = RouteStore::load(&args.routes)?.current();
    for shard in routes.shards.values() {
        for (i, &listen) in shard.backends.iter().enumerate() {
            let cfg = DemoShardConfig {
                shard: shard.id.to_string(),
                backend: format!("b{}", i + 1),
                listen,
                product: shard.product.clone(),
                regions: shard.data_regions.clone(),
                data_dir: args.data.join("shards"),
            };
            let bound = crate::demo::bind(cfg).await.map_err(part("demo shard"))?;
            spawn_part(parts, shutdown, bound.serve(shutdown.clone()));
        }
    }
    let catalogue = CatalogueConfig {
        listen: loopback(ports::CATALOGUE),
        data_dir: args.data.join("catalogue"),
    };
    let catalogue = crate::catalogue::bind(catalogue)
        .await
        .map_err(part("catalogue"))?;
    let catalogue_url = format!("http://{}", catalogue.addr());
    spawn_part(parts, shutdown, catalogue.serve(shutdown.clone()));
    seed(&CatalogueClient::new(&catalogue_url)?, &routes).await?;

    let mut endpoints = Vec::new();
    for (region, port) in [
        ("us-east-1", ports::TCS_US_EAST_1),
        ("eu-west-1", ports::TCS_EU_WEST_1),
    ] {
        let cfg = tcs_config(
            &args.data,
            &name(Region::new(region))?,
            loopback(port),
            &catalogue_url,
        );
        write_toml(&args.data.join(format!("tcs-{region}.toml")), &cfg)?;
        let bound = crate::tcs::bind(cfg)
            .await
            .map_err(part(format!("tcs {region}")))?;
        let url = format!("http://{}", bound.addr());
        let tcs = bound.tcs().clone();
        spawn_part(parts, shutdown, bound.serve(shutdown.clone()));
        // Ready once its view is within max_lag of the catalogue (the tailer signals each
        // applied poll); a Ctrl-C or a part that stopped (it cancels `shutdown`) ends the wait.
        tokio::select! {
            ready = tokio::time::timeout(READY_WITHIN, tcs.ready()) => {
                ready.map_err(|_| DevError::NotReady(format!("tcs {region}")))?;
            }
            () = shutdown.cancelled() => return Err(DevError::NotReady(format!("tcs {region}"))),
        }
        endpoints.push(TcsEndpoint {
            region: region.into(),
            url,
            token: DEV_EDGE_TOKEN.into(),
        });
    }
    let edge = edge_config(args, name(Region::new("us-east-1"))?, endpoints);
    write_toml(&args.data.join("edge.toml"), &edge)?;
    let edge = crate::edge::start(edge, shutdown.clone())
        .await
        .map_err(part("edge"))?;
    parts.spawn(async move {
        edge.wait().await;
        Ok(())
    });
    print_banner(args, &routes);
    Ok(())
}

/// How long a TCS may take to catch up with the catalogue at start.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// Names the part a start error came from.
fn part<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl Fn(E) -> DevError {
    move |e| DevError::Part(format!("{what}: {e}"))
}

fn tcs_config(data: &Path, region: &Region, listen: SocketAddr, catalogue: &str) -> TcsConfig {
    let snapshot = data.join(format!("tcs-{region}.json"));
    let edge = ConsumerConfig::new("edge", DEV_EDGE_TOKEN, &["ingress"]);
    TcsConfig {
        allow_faults: true,
        ..TcsConfig::new(region.clone(), listen, catalogue, snapshot, vec![edge])
    }
}

fn edge_config(args: &DevArgs, region: Region, tcs: Vec<TcsEndpoint>) -> EdgeConfig {
    EdgeConfig {
        region,
        listen_http: loopback(ports::EDGE_HTTP),
        listen_https: Some(loopback(ports::EDGE_HTTPS)),
        cert: Some(args.certs.join("dev.crt")),
        key: Some(args.certs.join("dev.key")),
        admin: loopback(ports::EDGE_ADMIN),
        routes: args.routes.clone(),
        threads: 2,
        work_stealing: false,
        access_log: true,
        cache_file: Some(args.data.join("edge-cache.json")),
        cache_file_interval_secs: 30,
        prewarm: false,
        cache: Default::default(),
        lookup: crate::context::LookupConfig {
            canaries: vec!["acme.example.test".into()],
            ..Default::default()
        },
        tcs,
        http1: Default::default(),
    }
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), DevError> {
    let text = toml::to_string_pretty(value).map_err(|e| io_err(path, e))?;
    std::fs::write(path, text).map_err(|e| io_err(path, e))
}

fn name<T>(r: Result<T, crate::tenant::NameError>) -> Result<T, DevError> {
    r.map_err(|e| DevError::Part(e.to_string()))
}

/// Seeds realms, the shards of the route file (each shard's mover hooks on its first backend)
/// and the demo tenants; existing tenants are left as they are, so a restart keeps what the
/// operator changed. The dev stack and the integration tests seed through this.
pub async fn seed(client: &CatalogueClient, routes: &crate::routes::RouteSnapshot) -> Result<(), DevError> {
    for (realm, regions) in [
        ("us", ["us-east-1", "us-west-2"]),
        ("eu", ["eu-west-1", "eu-central-1"]),
    ] {
        let regions = regions
            .iter()
            .map(|r| name(Region::new(r)))
            .collect::<Result<_, _>>()?;
        client
            .put_realm(&RealmDoc {
                name: name(Realm::new(realm))?,
                regions,
            })
            .await?;
    }
    for shard in routes.shards.values() {
        let doc = ShardDoc {
            id: shard.id.clone(),
            product: shard.product.clone(),
            regions: shard.data_regions.clone(),
            // Both backends share the shard's data, so the first one's hooks serve the shard.
            mover: shard.backends.first().map(|a| format!("http://{a}")),
        };
        client.put_shard(&doc).await?;
    }
    for doc in demo_tenants()? {
        match client.get_tenant(&doc.id).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {
                client.put_tenant(&doc, None).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The demo tenants of the contract.
pub fn demo_tenants() -> Result<Vec<TenantDoc>, DevError> {
    let tenant = |id: &str, realm: &str, placements: &[(&str, &str)]| -> Result<TenantDoc, DevError> {
        let placements = placements
            .iter()
            .map(|(p, s)| {
                let placement = Placement {
                    shard: name(ShardId::new(s))?,
                    state: PlacementState::Active,
                };
                Ok((name(Product::new(p))?, placement))
            })
            .collect::<Result<_, DevError>>()?;
        let host = crate::tenant::Host::parse(&format!("{id}.example.test"))
            .map_err(|e| DevError::Part(e.to_string()))?;
        Ok(TenantDoc {
            id: name(TenantId::new(id))?,
            hosts: vec![host],
            realm: name(Realm::new(realm))?,
            placements,
            version: 0,
        })
    };
    Ok(vec![
        tenant(
            "acme",
            "us",
            &[("jira", "jira-us-east-1"), ("confluence", "confluence-us-east-1")],
        )?,
        tenant(
            "globex",
            "eu",
            &[("jira", "jira-eu-west-1"), ("confluence", "confluence-eu-west-1")],
        )?,
        tenant("initech", "us", &[("jira", "jira-us-east-1")])?,
    ])
}

fn print_banner(args: &DevArgs, routes: &crate::routes::RouteSnapshot) {
    let backends: usize = routes.shards.values().map(|s| s.backends.len()).sum();
    let (http, https, admin) = (ports::EDGE_HTTP, ports::EDGE_HTTPS, ports::EDGE_ADMIN);
    let lines = [
        String::new(),
        format!("tenant-edge dev stack is up (data in {})", args.data.display()),
        format!("  edge        http://127.0.0.1:{http}   https://127.0.0.1:{https} (h2)   admin http://127.0.0.1:{admin}"),
        format!("  catalogue   http://127.0.0.1:{}", ports::CATALOGUE),
        format!(
            "  tcs         us-east-1 http://127.0.0.1:{}   eu-west-1 http://127.0.0.1:{}",
            ports::TCS_US_EAST_1,
            ports::TCS_EU_WEST_1
        ),
        format!(
            "  shards      {} demo shards, {backends} backends (routes: {})",
            routes.shards.len(),
            args.routes.display()
        ),
        "  tenants     acme.example.test, globex.example.test, initech.example.test".into(),
        String::new(),
        "Try:".into(),
        format!("  curl -s -H 'Host: acme.example.test' http://127.0.0.1:{http}/"),
        format!("  curl -s -H 'Host: globex.example.test' http://127.0.0.1:{http}/wiki/spaces"),
        format!("  curl -sk --http2 --resolve acme.example.test:{https}:127.0.0.1 https://acme.example.test:{https}/wiki"),
        String::new(),
        "Ctrl-C stops everything.".into(),
    ];
    println!("{}", lines.join("\n"));
}
