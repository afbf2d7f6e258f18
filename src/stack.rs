//! One way to start the stack (demo shards, catalogue, TCS regions, edges) for `tenant-edge
//! dev`, the integration tests and the benches: a typed builder, each role in this process or
//! as its own child process.
//!
//! A caller states what it needs and reads back where each part listens:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tenant_edge::stack::StackError> {
//! use tenant_edge::routes::RoutesFile;
//! use tenant_edge::stack::Stack;
//! let routes = RoutesFile::load("routes/dev.toml".as_ref())?;
//! let stack = Stack::builder("data/try", routes).edges(2).start().await?;
//! println!("edge on {}, catalogue on {}", stack.edges[0].http, stack.catalogue.url());
//! # Ok(()) }
//! ```
//!
//! Every role binds before it serves, and a part is started only once the parts it needs are
//! ready: a catalogue that listens, a TCS whose view caught up with it, an edge that listens and
//! hears a change stream. Starting returns when all are; nothing polls. Seeding (realms, the
//! route file's shards, the demo tenants) goes through the one catalogue client. Every config is
//! a struct, written into the stack's directory as TOML, so what ran can be run role by role.
//!
//! Ports: [`Ports::Contract`] is the design's fixed dev ports and the route file's backend
//! addresses (the route file is used in place, so editing it reloads the edges); [`Ports::Free`]
//! lets the kernel pick (port 0) in process, where every role reports what it bound, and picks
//! free ports below the ephemeral range for children, which are restarted on the same address
//! (a port 0 picked from the ephemeral range may meanwhile be an outgoing connection's).

mod child;
pub mod cli;
pub mod moto;
pub mod postgres;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use child::{Child, ChildError, LISTENING, TCS_READY};

use crate::catalogue::{CatalogueConfig, StoreConfig};
use crate::context::TcsEndpoint;
use crate::demo::DemoShardConfig;
use crate::edge::EdgeConfig;
use crate::feed::client::IMPORT_BATCH;
use crate::feed::{CatalogueClient, ClientError, RealmDoc, ShardDoc, TenantDoc};
use crate::routes::{RouteError, RouteSnapshot, RoutesFile};
use crate::tcs::{ConsumerConfig, TcsConfig};
use crate::tenant::{Placement, PlacementState, Product, Realm, Region, ShardId, TenantId};

/// Where `tenant-edge ctl` looks for the dev stack's operator token when given none.
pub const DEV_OPERATOR_TOKEN: &str = "data/dev/operator.token";

/// How long a TCS may take to catch up with the catalogue, and an edge to hear its stream.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Fixed loopback ports of the dev stack (the contract in the design), used with
/// [`Ports::Contract`].
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
    /// The demo shards' sidecars: the first product's (jira), then the next (confluence).
    pub const SIDECARS: u16 = 7201;
}

/// Where the roles run.
#[derive(Debug, Clone)]
pub enum Run {
    /// As tasks of this process (the dev stack, benches).
    InProcess,
    /// Each as its own process of this binary (tests that kill, restart or measure a role).
    Children(PathBuf),
}

/// Where the roles listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The contract's fixed ports ([`ports`]) and the route file's backend addresses: one
    /// edge, the `us-east-1` and `eu-west-1` regions.
    Contract,
    /// Whatever is free.
    Free,
}

/// Why a stack did not start, or a part of it stopped.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The route file is invalid.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// Seeding the catalogue failed.
    #[error("seeding the catalogue: {0}")]
    Seed(#[from] ClientError),
    /// A child process did not start.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// A part did not come up, or failed.
    #[error("{0}")]
    Part(String),
    /// The builder was asked for something it cannot start.
    #[error("{0}")]
    Spec(String),
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> StackError {
    StackError::Io(format!("{}: {e}", what.display()))
}

/// Names the part an error came from.
fn part<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl Fn(E) -> StackError {
    move |e| StackError::Part(format!("{what}: {e}"))
}

/// Changes a config before it is written and started.
type Edit<T> = Box<dyn Fn(usize, &mut T) + Send + Sync>;

/// What to start; see [`Stack::builder`].
pub struct StackBuilder {
    dir: PathBuf,
    routes: RoutesFile,
    routes_in_place: Option<PathBuf>,
    run: Run,
    ports: Ports,
    shards: bool,
    regions: Vec<Region>,
    edges: usize,
    certs: Option<PathBuf>,
    edge_token: Option<String>,
    consumers: Vec<ConsumerConfig>,
    seed: bool,
    demo_tenants: bool,
    import: Option<PathBuf>,
    catalogue_store: StoreConfig,
    kms: Option<crate::secrets::KmsConfig>,
    sidecars: bool,
    fanout: Option<crate::fanout::aws::SnsConfig>,
    edit_tcs: Option<Edit<TcsConfig>>,
    edit_edge: Option<Edit<EdgeConfig>>,
}

impl StackBuilder {
    /// Give each product with a service token (jira, confluence) a sidecar reading its view,
    /// and its demo shards that sidecar (off by default).
    pub fn sidecars(mut self, on: bool) -> Self {
        self.sidecars = on;
        self
    }

    /// The catalogue's master key in KMS instead of its key file.
    pub fn kms(mut self, kms: crate::secrets::KmsConfig) -> Self {
        self.kms = Some(kms);
        self
    }

    /// Runs the roles in this process (the default) or as children of `bin`.
    pub fn run(mut self, run: Run) -> Self {
        self.run = run;
        self
    }

    /// Where the roles listen (default [`Ports::Free`]).
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// Edges read `path`, the file the template came from, instead of a copy in the stack's
    /// directory: editing it reloads them. Only with [`Ports::Contract`] (a copy is what
    /// records the ports picked).
    pub fn routes_in_place(mut self, path: impl Into<PathBuf>) -> Self {
        self.routes_in_place = Some(path.into());
        self
    }

    /// Whether to start a demo shard for every backend of the route file (default yes).
    pub fn shards(mut self, on: bool) -> Self {
        self.shards = on;
        self
    }

    /// The TCS regions, one node each (default `us-east-1`, `eu-west-1`); the edges are in
    /// the first, and ask every region.
    pub fn regions(mut self, regions: &[&str]) -> Result<Self, StackError> {
        self.regions = regions
            .iter()
            .map(|r| Region::new(r).map_err(|e| StackError::Spec(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// How many edges (default 1; 0 for none).
    pub fn edges(mut self, n: usize) -> Self {
        self.edges = n;
        self
    }

    /// The directory holding `dev.crt` and `dev.key`: the edges get an HTTPS listener.
    pub fn certs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.certs = Some(dir.into());
        self
    }

    /// The token the edges present to TCS (default: one generated at the stack's first start
    /// and kept in `edge.token`).
    pub fn edge_token(mut self, token: &str) -> Self {
        self.edge_token = Some(token.to_owned());
        self
    }

    /// One more TCS consumer besides the edges'.
    pub fn consumer(mut self, consumer: ConsumerConfig) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Whether to seed realms, shards and the demo tenants (default yes).
    pub fn seed(mut self, on: bool) -> Self {
        self.seed = on;
        self
    }

    /// Whether seeding includes the demo tenants (default yes); realms and shards are seeded
    /// either way.
    pub fn demo_tenants(mut self, on: bool) -> Self {
        self.demo_tenants = on;
        self
    }

    /// Imports the tenant documents of `file` (one JSON object a line, as `ctl tenants
    /// import` reads) after seeding and before any TCS starts, so that TCS starts caught up.
    pub fn import(mut self, file: impl Into<PathBuf>) -> Self {
        self.import = Some(file.into());
        self
    }

    /// The catalogue's store (default: SQLite in the stack's directory); with PostgreSQL, the
    /// stack's catalogue serves that database.
    pub fn catalogue_store(mut self, store: StoreConfig) -> Self {
        self.catalogue_store = store;
        self
    }

    /// Changes reach edges through SNS/SQS, with `template`'s settings: each region's topic
    /// is `<template.topic><region>`, and the TCS nodes and edges get the same table.
    pub fn fanout(mut self, template: crate::fanout::aws::SnsConfig) -> Self {
        self.fanout = Some(template);
        self
    }

    /// The `[fanout]` of `region`'s nodes.
    fn fanout_of(&self, region: &Region) -> crate::fanout::aws::FanoutConfig {
        match &self.fanout {
            None => crate::fanout::aws::FanoutConfig::Stream,
            Some(template) => {
                let mut sns = template.clone();
                sns.topic = format!("{}{region}", template.topic);
                crate::fanout::aws::FanoutConfig::Sns(sns)
            }
        }
    }

    /// Changes each TCS config (with the region's index) before it starts.
    pub fn tcs(mut self, edit: impl Fn(usize, &mut TcsConfig) + Send + Sync + 'static) -> Self {
        self.edit_tcs = Some(Box::new(edit));
        self
    }

    /// Changes each edge config (with the edge's index) before it starts.
    pub fn edge(mut self, edit: impl Fn(usize, &mut EdgeConfig) + Send + Sync + 'static) -> Self {
        self.edit_edge = Some(Box::new(edit));
        self
    }

    /// Starts every part, each once what it needs is ready; returns when all are. A part that
    /// fails to start stops the ones already running.
    pub async fn start(self) -> Result<Stack, StackError> {
        self.check()?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let routes = self
            .routes_in_place
            .clone()
            .unwrap_or_else(|| self.dir.join("routes.toml"));
        let secrets = Secrets::ensure(&self.dir, self.edge_token.as_deref())?;
        let mut stack = Stack {
            secrets,
            dir: self.dir.clone(),
            routes,
            routes_file: self.routes.clone(),
            shards: Vec::new(),
            catalogue: None,
            tcs: Vec::new(),
            edges: Vec::new(),
            sidecars: Vec::new(),
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        match self.start_parts(&mut stack).await {
            Ok(()) => Ok(stack),
            Err(e) => {
                stack.stop().await;
                Err(e)
            }
        }
    }

    fn check(&self) -> Result<(), StackError> {
        if self.regions.is_empty() && self.edges > 0 {
            return Err(StackError::Spec("edges need at least one TCS region".into()));
        }
        if self.ports == Ports::Contract {
            if self.edges > 1 {
                return Err(StackError::Spec("the contract's ports fit one edge".into()));
            }
            if let Some(r) = self.regions.iter().find(|r| contract_tcs_port(r).is_none()) {
                return Err(StackError::Spec(format!("the contract has no TCS port for {r}")));
            }
        } else if self.routes_in_place.is_some() {
            return Err(StackError::Spec(
                "a route file used in place keeps its own ports: use Ports::Contract".into(),
            ));
        }
        Ok(())
    }

    async fn start_parts(&self, stack: &mut Stack) -> Result<(), StackError> {
        // Validated before anything starts: a bad template is a clear error, not a stack
        // whose edges refuse their routes. (A catalogue alone needs no routes.)
        let routed = self.shards || self.seed || self.edges > 0;
        let mut sidecars = Vec::new();
        if routed {
            let snapshot = RouteSnapshot::from_toml_str(&self.routes.to_toml())?;
            if self.shards {
                sidecars = self.sidecar_addrs(stack, &snapshot);
                self.start_shards(stack, &snapshot, &sidecars).await?;
            }
        }
        if routed && self.routes_in_place.is_none() {
            stack
                .routes_file
                .write(&stack.routes)
                .map_err(|e| io_err(&stack.routes, e))?;
        }
        let catalogue = self.start_catalogue(stack).await?;
        let catalogue_url = catalogue.url();
        stack.catalogue = Some(catalogue);
        let client = CatalogueClient::new(&catalogue_url)?.with_token(Some(stack.secrets.operator.clone()));
        if self.seed {
            let snapshot = RouteSnapshot::from_toml_str(&stack.routes_file.to_toml())?;
            seed(&client, &snapshot, self.demo_tenants).await?;
        }
        if let Some(file) = &self.import {
            import(&client, file).await?;
        }
        let mut endpoints = Vec::new();
        for (i, region) in self.regions.iter().enumerate() {
            let tcs = self.start_tcs(stack, i, region, &catalogue_url).await?;
            endpoints.push(TcsEndpoint {
                region: region.to_string(),
                url: tcs.url(),
                token: stack.secrets.edge.clone(),
            });
            stack.tcs.push(tcs);
        }
        for (product, addr) in &sidecars {
            let part = self.start_sidecar(stack, product, *addr).await?;
            stack.sidecars.push(part);
        }
        for i in 0..self.edges {
            let edge = self.start_edge(stack, i, &endpoints).await?;
            stack.edges.push(edge);
        }
        Ok(())
    }

    /// Where each product's sidecar will listen (chosen before the shards start, which are
    /// told), for the products that have a service token.
    fn sidecar_addrs(&self, stack: &Stack, snapshot: &RouteSnapshot) -> Vec<(Product, SocketAddr)> {
        if !self.sidecars {
            return Vec::new();
        }
        // In the route file's order (jira, then confluence), each once.
        let mut products: Vec<&Product> = Vec::new();
        for p in snapshot.products.iter().map(|p| &p.name) {
            if !products.contains(&p) && snapshot.shards.values().any(|s| s.product == *p) {
                products.push(p);
            }
        }
        products
            .into_iter()
            .filter(|p| stack.product_token(p.as_str()).is_some())
            .enumerate()
            .map(|(i, p)| {
                let addr = match self.ports {
                    Ports::Contract => loopback(ports::SIDECARS + i as u16),
                    Ports::Free => loopback(free_port()),
                };
                (p.clone(), addr)
            })
            .collect()
    }

    /// Starts `product`'s sidecar on `addr`: its view, every region (the first asked first),
    /// the catalogue's master key, a cache file.
    async fn start_sidecar(
        &self,
        stack: &mut Stack,
        product: &Product,
        addr: SocketAddr,
    ) -> Result<Part, StackError> {
        let token = stack
            .product_token(product.as_str())
            .ok_or_else(|| StackError::Spec(format!("no service token for {product}")))?
            .to_owned();
        let region = self
            .regions
            .first()
            .cloned()
            .ok_or_else(|| StackError::Spec("a sidecar needs a TCS region".into()))?;
        let mut cfg =
            crate::sidecar::SidecarConfig::new(product.as_str(), region, addr, stack.tcs_endpoints(&token));
        cfg.secrets = Some(match &self.kms {
            Some(kms) => crate::secrets::KeySettings {
                kms: Some(kms.clone()),
                ..Default::default()
            },
            None => crate::secrets::KeySettings {
                master_key: Some(stack.master_key_file()),
                ..Default::default()
            },
        });
        cfg.cache_file = Some(self.dir.join(format!("sidecar-{product}.cache")));
        let file = self.dir.join(format!("sidecar-{product}.toml"));
        write_toml(&file, &cfg)?;
        let name = format!("sidecar-{product}");
        match &self.run {
            Run::InProcess => {
                let started = crate::sidecar::start(cfg, stack.shutdown.child_token())
                    .await
                    .map_err(part(&name))?;
                Ok(stack.task(name, addr, |_| async move {
                    started.wait().await;
                    Ok::<(), String>(())
                }))
            }
            Run::Children(bin) => {
                let args = ["sidecar", "--config", &path_arg(&file)?];
                Part::child(Child::start(bin, &name, &args)?)
            }
        }
    }

    /// The address a role binds itself: the contract's, or port 0 (a child that may be
    /// restarted gets a free port instead, to bind again).
    fn bind_addr(&self, contract: u16) -> SocketAddr {
        match (self.ports, &self.run) {
            (Ports::Contract, _) => loopback(contract),
            (Ports::Free, Run::InProcess) => loopback(0),
            (Ports::Free, Run::Children(_)) => loopback(free_port()),
        }
    }

    async fn start_shards(
        &self,
        stack: &mut Stack,
        snapshot: &RouteSnapshot,
        sidecars: &[(Product, SocketAddr)],
    ) -> Result<(), StackError> {
        let data = self.dir.join("shards");
        let mut ids: Vec<&ShardId> = snapshot.shards.keys().collect();
        ids.sort();
        for id in ids {
            let shard = &snapshot.shards[id];
            let mut bound = Vec::new();
            for (i, &listen) in shard.backends.iter().enumerate() {
                let listen = match self.ports {
                    Ports::Contract => listen,
                    Ports::Free => self.bind_addr(0),
                };
                let cfg = DemoShardConfig {
                    shard: shard.id.to_string(),
                    backend: format!("b{}", i + 1),
                    listen,
                    product: shard.product.clone(),
                    regions: shard.data_regions.clone(),
                    data_dir: data.clone(),
                    // The operator's token moves tenants (`ctl migrate` presents it).
                    mover_token: Some(stack.secrets.operator.clone()),
                    allow_unauthenticated: false,
                    sidecar: sidecars
                        .iter()
                        .find(|(p, _)| *p == shard.product)
                        .and_then(|(p, addr)| {
                            Some(crate::demo::SidecarLink {
                                url: format!("http://{addr}"),
                                token: stack.product_token(p.as_str())?.to_owned(),
                            })
                        }),
                };
                let name = format!("{}/{}", cfg.shard, cfg.backend);
                let part = match &self.run {
                    Run::InProcess => {
                        let b = crate::demo::bind(cfg).await.map_err(part(&name))?;
                        let addr = b.addr();
                        stack.task(name, addr, |stop| b.serve(stop))
                    }
                    Run::Children(bin) => {
                        let regions: Vec<String> = cfg.regions.iter().map(ToString::to_string).collect();
                        let mut args: Vec<String> = vec![
                            "demo-shard".into(),
                            "--shard".into(),
                            cfg.shard.clone(),
                            "--backend".into(),
                            cfg.backend.clone(),
                            "--listen".into(),
                            cfg.listen.to_string(),
                            "--product".into(),
                            cfg.product.to_string(),
                            "--regions".into(),
                            regions.join(","),
                            "--data".into(),
                            path_arg(&cfg.data_dir)?,
                            "--mover-token-file".into(),
                            path_arg(&stack.dir.join("operator.token"))?,
                        ];
                        if let Some(link) = &cfg.sidecar {
                            let token_file = stack.dir.join(format!("{}.token", cfg.product));
                            args.extend([
                                "--sidecar".into(),
                                link.url.clone(),
                                "--sidecar-token-file".into(),
                                path_arg(&token_file)?,
                            ]);
                        }
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        Part::child(Child::start(bin, &name, &args)?)?
                    }
                };
                bound.push(part.addr.to_string());
                stack.shards.push(part);
            }
            if let Some(toml) = stack.routes_file.shard_mut(id.as_str()) {
                toml.backends = bound;
            }
        }
        Ok(())
    }

    async fn start_catalogue(&self, stack: &mut Stack) -> Result<Part, StackError> {
        let cfg = CatalogueConfig {
            listen: self.bind_addr(ports::CATALOGUE),
            data_dir: self.dir.join("catalogue"),
            store: self.catalogue_store.clone(),
            tokens: Some(stack.secrets.token_file.clone()),
            allow_unauthenticated: false,
            new_log_epoch: false,
            master_key: None,
            previous_master_keys: Vec::new(),
            kms: self.kms.clone(),
        };
        match &self.run {
            Run::InProcess => {
                let b = crate::catalogue::bind(cfg).await.map_err(part("catalogue"))?;
                let addr = b.addr();
                Ok(stack.task("catalogue".into(), addr, |stop| b.serve(stop)))
            }
            Run::Children(bin) => {
                let mut args = vec![
                    "catalogue".to_owned(),
                    "--listen".to_owned(),
                    cfg.listen.to_string(),
                    "--data".to_owned(),
                    path_arg(&cfg.data_dir)?,
                    "--tokens".to_owned(),
                    path_arg(&stack.secrets.token_file)?,
                ];
                if let StoreConfig::Postgres(url) = &cfg.store {
                    args.extend(["--store".to_owned(), url.clone()]);
                }
                if let Some(kms) = &cfg.kms {
                    args.extend(["--kms-key-id".to_owned(), kms.key_id.clone()]);
                    if let Some(region) = &kms.region {
                        args.extend(["--kms-region".to_owned(), region.clone()]);
                    }
                    if let Some(endpoint) = &kms.endpoint {
                        args.extend(["--kms-endpoint".to_owned(), endpoint.clone()]);
                    }
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Part::child(Child::start(bin, "catalogue", &args)?)
            }
        }
    }

    async fn start_tcs(
        &self,
        stack: &mut Stack,
        index: usize,
        region: &Region,
        catalogue: &str,
    ) -> Result<Part, StackError> {
        let listen = self.bind_addr(contract_tcs_port(region).unwrap_or(0));
        let snapshot = self.dir.join(format!("tcs-{region}.json"));
        let mut consumers = vec![
            ConsumerConfig::new("edge", &stack.secrets.edge, &["ingress"]),
            ConsumerConfig::new("jira", &stack.secrets.jira, &["jira"]),
            ConsumerConfig::new("confluence", &stack.secrets.confluence, &["confluence"]),
        ];
        consumers.extend(self.consumers.iter().cloned());
        let mut cfg = TcsConfig::new(region.clone(), listen, catalogue, snapshot, consumers);
        cfg.catalogue_token = Some(stack.secrets.tcs.clone());
        // The operator's token also opens the TCS's admin endpoints.
        cfg.admin_token = Some(stack.secrets.operator.clone());
        cfg.fanout = self.fanout_of(region);
        // Each product's service reads its own view: its config and sealed secrets.
        cfg.views = ["jira", "confluence"]
            .iter()
            .filter_map(|p| crate::tenant::Product::new(p).ok())
            .map(|product| crate::tcs::config::ViewConfig {
                name: product.to_string(),
                products: vec![product],
                secrets: true,
            })
            .collect();
        if let Some(edit) = &self.edit_tcs {
            edit(index, &mut cfg);
        }
        let file = self.dir.join(format!("tcs-{region}.toml"));
        write_toml(&file, &cfg)?;
        let name = format!("tcs-{region}");
        match &self.run {
            Run::InProcess => {
                let b = crate::tcs::bind(cfg).await.map_err(part(&name))?;
                let (addr, tcs) = (b.addr(), b.tcs().clone());
                let part = stack.task(name.clone(), addr, |stop| b.serve(stop));
                stack.ready(&name, tcs.ready()).await?;
                Ok(part)
            }
            Run::Children(bin) => {
                let args = ["tcs", "--config", &path_arg(&file)?];
                Part::child(Child::start_until(bin, &name, &args, Some(TCS_READY))?)
            }
        }
    }

    async fn start_edge(
        &self,
        stack: &mut Stack,
        index: usize,
        tcs: &[TcsEndpoint],
    ) -> Result<EdgePart, StackError> {
        // The proxy listeners of an edge that may be restarted get ports it can bind again.
        let proxy = |contract| self.bind_addr(contract);
        let region = self
            .regions
            .first()
            .cloned()
            .ok_or_else(|| StackError::Spec("no region".into()))?;
        let fanout = self.fanout_of(&region);
        let mut cfg = EdgeConfig::new(
            region,
            proxy(ports::EDGE_HTTP),
            self.bind_addr(ports::EDGE_ADMIN),
            stack.routes.clone(),
            tcs.to_vec(),
        );
        if let Some(certs) = &self.certs {
            cfg.listen_https = Some(proxy(ports::EDGE_HTTPS));
            cfg.cert = Some(certs.join("dev.crt"));
            cfg.key = Some(certs.join("dev.key"));
        }
        cfg.threads = 1;
        cfg.id = Some(format!("edge-{index}"));
        cfg.fanout = fanout;
        // A demo tenant is the canary that tells a region's "not found" can be trusted; without
        // them the caller names its own (`lookup.canaries`), or none.
        if self.seed && self.demo_tenants {
            cfg.lookup.canaries = vec!["acme.example.test".into()];
        }
        if let Some(edit) = &self.edit_edge {
            edit(index, &mut cfg);
        }
        let name = if index == 0 {
            "edge".to_owned()
        } else {
            format!("edge{index}")
        };
        let file = self.dir.join(format!("{name}.toml"));
        write_toml(&file, &cfg)?;
        let (mut http, mut https) = (cfg.listen_http, cfg.listen_https);
        let part = match &self.run {
            Run::InProcess => {
                let stop = stack.shutdown.child_token();
                let started = crate::edge::start(cfg, stop.clone()).await.map_err(part(&name))?;
                (http, https) = (started.http, started.https);
                let admin = started.admin;
                stack.ready(&name, started.ready()).await?;
                stack.tasks.spawn(async move {
                    started.wait().await;
                    Ok(())
                });
                Part {
                    name,
                    addr: admin,
                    runs: Runs::Task(stop),
                }
            }
            Run::Children(bin) => {
                let args = ["proxy", "--config", &path_arg(&file)?];
                let child = Child::start_until(bin, &name, &args, Some(crate::edge::READY_LINE))?;
                Part {
                    name,
                    addr: cfg.admin,
                    runs: Runs::Child(child),
                }
            }
        };
        Ok(EdgePart { part, http, https })
    }
}

/// The TCS port of `region` in the contract.
fn contract_tcs_port(region: &Region) -> Option<u16> {
    match region.as_str() {
        "us-east-1" => Some(ports::TCS_US_EAST_1),
        "eu-west-1" => Some(ports::TCS_EU_WEST_1),
        _ => None,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn path_arg(path: &Path) -> Result<String, StackError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| io_err(path, "not UTF-8"))
}

/// Writes a config owner-only (0600): configs hold tokens.
fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StackError> {
    let text = toml::to_string_pretty(value).map_err(|e| io_err(path, e))?;
    crate::catalogue::auth::write_private(path, text.as_bytes()).map_err(|e| io_err(path, e))
}

/// A started stack. Dropping it stops the in-process parts and kills the child processes.
pub struct Stack {
    /// Its directory: data, snapshots, and every config it wrote.
    pub dir: PathBuf,
    /// The route file the edges read.
    pub routes: PathBuf,
    /// What that file held at start, with the backends' bound addresses: a template for a
    /// caller that rewrites it ([`Stack::write_routes`]).
    pub routes_file: RoutesFile,
    /// The demo shards' backends, by shard id, then backend (`jira-us-east-1/b1`).
    pub shards: Vec<Part>,
    catalogue: Option<Part>,
    /// One TCS node per region, in the order asked.
    pub tcs: Vec<Part>,
    /// The edges.
    pub edges: Vec<EdgePart>,
    /// The products' sidecars (with [`StackBuilder::sidecars`]).
    pub sidecars: Vec<Part>,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
    secrets: Secrets,
}

/// The stack's tokens, generated at its first start and kept owner-only in its directory:
/// the catalogue's token file (`catalogue-tokens.toml`: `operator` with every scope, `tcs`
/// reading), the operator's token alone (`operator.token`, for `ctl` and `curl`), and the
/// edges' token at TCS (`edge.token`).
#[derive(Debug, Clone)]
struct Secrets {
    token_file: PathBuf,
    operator: String,
    tcs: String,
    edge: String,
    /// The jira and confluence services' tokens at TCS (their own views only).
    jira: String,
    confluence: String,
}

impl Secrets {
    fn ensure(dir: &Path, edge: Option<&str>) -> Result<Secrets, StackError> {
        use crate::catalogue::auth::{new_token, write_private, ApiToken, Scope, TokenFile};
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let token_file = dir.join("catalogue-tokens.toml");
        let file = if token_file.exists() {
            TokenFile::load(&token_file).map_err(StackError::Spec)?
        } else {
            let token = |name: &str, scopes: Vec<Scope>| ApiToken {
                name: name.into(),
                token: new_token(),
                scopes,
            };
            let file = TokenFile {
                tokens: vec![
                    token("operator", vec![Scope::Admin]),
                    token("tcs", vec![Scope::Read]),
                ],
            };
            file.write(&token_file).map_err(|e| io_err(&token_file, e))?;
            file
        };
        let named = |name: &str| {
            file.tokens
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.token.clone())
                .ok_or_else(|| StackError::Spec(format!("{}: no {name} token", token_file.display())))
        };
        let (operator, tcs) = (named("operator")?, named("tcs")?);
        let operator_file = dir.join("operator.token");
        write_private(&operator_file, format!("{operator}\n").as_bytes())
            .map_err(|e| io_err(&operator_file, e))?;
        // A consumer's token at TCS: kept in `<name>.token`, generated at the first start.
        let consumer = |name: &str| -> Result<String, StackError> {
            let path = dir.join(format!("{name}.token"));
            match crate::feed::bearer::read_token_file(&path) {
                Ok(Some(token)) => Ok(token),
                _ => {
                    let token = new_token();
                    write_private(&path, format!("{token}\n").as_bytes()).map_err(|e| io_err(&path, e))?;
                    Ok(token)
                }
            }
        };
        let edge = match edge {
            Some(token) => token.to_owned(),
            None => consumer("edge")?,
        };
        Ok(Secrets {
            token_file,
            operator,
            tcs,
            edge,
            jira: consumer("jira")?,
            confluence: consumer("confluence")?,
        })
    }
}

impl Stack {
    /// The operator's catalogue token (every scope).
    pub fn operator_token(&self) -> &str {
        &self.secrets.operator
    }

    /// The token of product `product`'s service at TCS (`jira`, `confluence`): its own view only.
    pub fn product_token(&self, product: &str) -> Option<&str> {
        match product {
            "jira" => Some(&self.secrets.jira),
            "confluence" => Some(&self.secrets.confluence),
            _ => None,
        }
    }

    /// The catalogue token TCS nodes read with (`read` scope).
    pub fn tcs_token(&self) -> &str {
        &self.secrets.tcs
    }

    /// The token the edges present to TCS.
    pub fn edge_token(&self) -> &str {
        &self.secrets.edge
    }

    /// Each region's TCS as a client sees it, presenting `token` (the edge's, a product's).
    pub fn tcs_endpoints(&self, token: &str) -> Vec<crate::context::TcsEndpoint> {
        self.tcs
            .iter()
            .map(|p| crate::context::TcsEndpoint {
                region: p.name().trim_start_matches("tcs-").to_owned(),
                url: p.url(),
                token: token.to_owned(),
            })
            .collect()
    }

    /// The catalogue's master key file (the embedded default: a key file in its data directory).
    pub fn master_key_file(&self) -> PathBuf {
        self.dir.join("catalogue").join("master.key")
    }

    /// A stack built from the route file `routes` (its products, shards and health checks), with
    /// its files in `dir`.
    pub fn builder(dir: impl Into<PathBuf>, routes: RoutesFile) -> StackBuilder {
        let regions = ["us-east-1", "eu-west-1"]
            .iter()
            .filter_map(|r| Region::new(r).ok())
            .collect();
        StackBuilder {
            dir: dir.into(),
            routes,
            routes_in_place: None,
            run: Run::InProcess,
            ports: Ports::Free,
            shards: true,
            regions,
            edges: 1,
            certs: None,
            edge_token: None,
            consumers: Vec::new(),
            seed: true,
            demo_tenants: true,
            import: None,
            catalogue_store: StoreConfig::Sqlite,
            kms: None,
            sidecars: false,
            fanout: None,
            edit_tcs: None,
            edit_edge: None,
        }
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Part {
        // Set before `start` returns a stack.
        self.catalogue
            .as_ref()
            .unwrap_or_else(|| unreachable!("a started stack has a catalogue"))
    }

    /// The catalogue, to stop or restart it.
    pub fn catalogue_mut(&mut self) -> &mut Part {
        self.catalogue
            .as_mut()
            .unwrap_or_else(|| unreachable!("a started stack has a catalogue"))
    }

    /// The demo shard backend `shard`/`b<backend>`.
    pub fn shard(&mut self, shard: &str, backend: usize) -> Option<&mut Part> {
        let name = format!("{shard}/b{backend}");
        self.shards.iter_mut().find(|p| p.name == name)
    }

    /// Writes the route file again, as at start but labelled `version` and with `backends`
    /// (shard id, addresses) for the shards named there: the edges reload it.
    pub fn write_routes(
        &self,
        version: &str,
        backends: &[(String, Vec<SocketAddr>)],
    ) -> Result<(), StackError> {
        let mut file = self.routes_file.clone();
        file.version = Some(version.to_owned());
        for (id, addrs) in backends {
            let shard = file
                .shard_mut(id)
                .ok_or_else(|| StackError::Spec(format!("no shard {id} in the route file")))?;
            shard.backends = addrs.iter().map(ToString::to_string).collect();
        }
        file.write(&self.routes).map_err(|e| io_err(&self.routes, e))
    }

    /// Runs `serve` as an in-process part with its own stop token; one that fails stops the
    /// whole stack.
    fn task<F, E>(
        &mut self,
        name: String,
        addr: SocketAddr,
        serve: impl FnOnce(CancellationToken) -> F,
    ) -> Part
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let stop = self.shutdown.child_token();
        let fut = serve(stop.clone());
        let shutdown = self.shutdown.clone();
        let what = name.clone();
        self.tasks.spawn(async move {
            let done = fut.await.map_err(|e| format!("{what}: {e}"));
            if done.is_err() {
                shutdown.cancel();
            }
            done
        });
        Part {
            name,
            addr,
            runs: Runs::Task(stop),
        }
    }

    /// Waits for `ready`, giving up on the stack stopping (a part failed) or after a minute.
    async fn ready(&self, name: &str, ready: impl Future<Output = ()>) -> Result<(), StackError> {
        tokio::select! {
            done = tokio::time::timeout(READY_WITHIN, ready) => {
                done.map_err(|_| StackError::Part(format!("{name} did not become ready")))
            }
            () = self.shutdown.cancelled() => Err(StackError::Part(format!("{name}: the stack stopped while it started"))),
        }
    }

    /// Runs until `shutdown` is cancelled or an in-process part fails; then stops every part.
    /// The first failure, if any, is the error.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> Result<(), StackError> {
        let mut failed = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.shutdown.cancelled() => break,
                done = self.tasks.join_next() => match done {
                    None => return Ok(()),
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { failed = Some(e); break; }
                    Some(Err(e)) => { failed = Some(format!("a part panicked: {e}")); break; }
                },
            }
        }
        while let Some(done) = self.drain_one().await {
            if let (None, Err(e)) = (&failed, done) {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), |e| Err(StackError::Part(e)))
    }

    async fn drain_one(&mut self) -> Option<Result<(), String>> {
        self.shutdown.cancel();
        match self.tasks.join_next().await? {
            Ok(done) => Some(done),
            Err(e) => Some(Err(format!("a part panicked: {e}"))),
        }
    }

    /// Stops every part: in-process ones drain (the edges write their cache files), children
    /// are sent SIGTERM.
    pub async fn stop(&mut self) {
        while self.drain_one().await.is_some() {}
        for part in self
            .edges
            .iter_mut()
            .map(|e| &mut e.part)
            .chain(&mut self.shards)
            .chain(&mut self.sidecars)
            .chain(&mut self.tcs)
            .chain(&mut self.catalogue)
        {
            part.terminate();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How a part runs.
#[derive(Debug)]
enum Runs {
    /// A task of this process, stopped by its token.
    Task(CancellationToken),
    /// A child process.
    Child(Child),
}

/// One running role of a stack.
#[derive(Debug)]
pub struct Part {
    name: String,
    addr: SocketAddr,
    runs: Runs,
}

impl Part {
    fn child(child: Child) -> Result<Part, StackError> {
        let addr = child
            .addr()
            .ok_or_else(|| StackError::Part(format!("{} named no address", child.name())))?;
        Ok(Part {
            name: child.name().to_owned(),
            addr,
            runs: Runs::Child(child),
        })
    }

    /// Its name (`catalogue`, `tcs-us-east-1`, `jira-us-east-1/b1`, `edge`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens (an edge's: its admin API).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The id of the process it runs in (this one's, for an in-process part).
    pub fn pid(&self) -> Option<u32> {
        match &self.runs {
            Runs::Task(_) => Some(std::process::id()),
            Runs::Child(c) => c.pid(),
        }
    }

    /// Stops it at once: SIGKILL for a child (a crash); an in-process part is cancelled.
    pub fn kill(&mut self) {
        match &mut self.runs {
            Runs::Task(stop) => stop.cancel(),
            Runs::Child(c) => c.kill(),
        }
    }

    /// Stops it cleanly: SIGTERM for a child, true when it exited cleanly within 10 s; an
    /// in-process part is cancelled (and drains as the stack's tasks are joined).
    pub fn terminate(&mut self) -> bool {
        match &mut self.runs {
            Runs::Task(stop) => {
                stop.cancel();
                true
            }
            Runs::Child(c) => c.terminate(),
        }
    }

    /// Sends a child SIGTERM and returns at once: it drains ([`Part::wait_exit`] waits for
    /// the end). An in-process part is cancelled.
    pub fn signal_term(&mut self) {
        match &mut self.runs {
            Runs::Task(stop) => stop.cancel(),
            Runs::Child(c) => c.signal_term(),
        }
    }

    /// Whether a child has exited, without waiting (an in-process part's end is seen by
    /// [`Stack::run_until`]).
    pub fn exited(&mut self) -> bool {
        match &mut self.runs {
            Runs::Task(_) => false,
            Runs::Child(c) => c.exited(),
        }
    }

    /// Waits up to 10 s for a child to exit; true when it exited cleanly. An in-process part
    /// has nothing to wait for here (the stack's tasks are joined by [`Stack::stop`]).
    pub fn wait_exit(&mut self) -> bool {
        match &mut self.runs {
            Runs::Task(_) => true,
            Runs::Child(c) => c.wait_exit(),
        }
    }

    /// Kills a child and starts it again on the same address; returns once it listens. An
    /// in-process part cannot be restarted.
    pub fn restart(&mut self) -> Result<(), StackError> {
        Ok(self.restartable()?.restart()?)
    }

    /// [`Part::restart`], returning once the part says it is ready as at its first start (an
    /// edge: tenants cached from its file, or a change stream live), not only listening.
    pub fn restart_ready(&mut self) -> Result<(), StackError> {
        Ok(self.restartable()?.restart_ready()?)
    }

    /// The child process to restart; an in-process part has none.
    fn restartable(&mut self) -> Result<&mut Child, StackError> {
        match &mut self.runs {
            Runs::Task(_) => Err(StackError::Spec(format!(
                "{} runs in process: no restart",
                self.name
            ))),
            Runs::Child(c) => Ok(c),
        }
    }
}

/// An edge of a stack: its part (whose address is the admin API's) and its proxy listeners.
#[derive(Debug)]
pub struct EdgePart {
    /// The running edge.
    pub part: Part,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// HTTPS listener (h2 + http/1.1), when the stack has certificates.
    pub https: Option<SocketAddr>,
}

impl EdgePart {
    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.part.addr
    }
}

impl std::ops::Deref for EdgePart {
    type Target = Part;
    fn deref(&self) -> &Part {
        &self.part
    }
}

impl std::ops::DerefMut for EdgePart {
    fn deref_mut(&mut self) -> &mut Part {
        &mut self.part
    }
}

/// Reads a server's log on a thread of its own until it ends (echoed with `[label]` when
/// `TEST_LOG` is set); the receiver gets one message at the first line containing `needle`:
/// the server's own word that it is ready, so nothing polls it.
pub(crate) fn ready_line(
    log: impl std::io::Read + Send + 'static,
    label: &'static str,
    needle: String,
) -> std::sync::mpsc::Receiver<()> {
    use std::io::BufRead;
    let (ready, said) = std::sync::mpsc::channel();
    let show = std::env::var_os("TEST_LOG").is_some();
    std::thread::spawn(move || {
        let mut ready = Some(ready);
        for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
            if show {
                eprintln!("[{label}] {line}");
            }
            if line.contains(&needle) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    said
}

/// A free loopback port below the ephemeral range, never handed out twice by this process:
/// for a listener bound by someone else later (a child, pingora). A port the kernel picked
/// with `bind(0)` and released is in the ephemeral range, where the kernel may hand it to an
/// outgoing connection before the listener binds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().clamp(12_000, 65_536);
    let span = low - 10_000;
    // Test binaries run side by side; the pid spreads them.
    let seed = std::process::id().wrapping_mul(97);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below {low}");
        let port = u16::try_from(10_000 + (seed.wrapping_add(n) % span)).unwrap_or(10_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(32_768)
}

fn name<T>(r: Result<T, crate::tenant::NameError>) -> Result<T, StackError> {
    r.map_err(|e| StackError::Spec(e.to_string()))
}

/// Seeds realms, the shards of the route file (each shard's mover hooks on its first backend)
/// and, with `demo`, the demo tenants; existing tenants are left as they are, so a restart
/// keeps what the operator changed.
pub async fn seed(client: &CatalogueClient, routes: &RouteSnapshot, demo: bool) -> Result<(), StackError> {
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
    let mut shards: Vec<_> = routes.shards.values().collect();
    shards.sort_by(|a, b| a.id.cmp(&b.id));
    for shard in shards {
        let doc = ShardDoc {
            id: shard.id.clone(),
            product: shard.product.clone(),
            regions: shard.data_regions.clone(),
            // Both backends share the shard's data, so the first one's hooks serve the shard.
            mover: shard.backends.first().map(|a| format!("http://{a}")),
            database: [(
                "db_host".to_owned(),
                serde_json::Value::from(crate::demo::db_host(shard.id.as_str())),
            )]
            .into_iter()
            .collect(),
        };
        client.put_shard(&doc).await?;
    }
    if !demo {
        return Ok(());
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

/// Imports the tenant documents of `file` in batches of [`IMPORT_BATCH`], with a progress line
/// every 100 000 (a million tenants take tens of seconds).
async fn import(client: &CatalogueClient, file: &Path) -> Result<(), StackError> {
    let reader = std::fs::File::open(file).map_err(|e| io_err(file, e))?;
    let started = std::time::Instant::now();
    let written = client
        .import_lines(
            std::io::BufReader::new(reader),
            IMPORT_BATCH as usize,
            |written| {
                if written % 100_000 == 0 {
                    tracing::info!(written, "importing tenants");
                }
            },
        )
        .await
        .map_err(|e| io_err(file, e))?;
    tracing::info!(
        written,
        took_s = started.elapsed().as_secs_f64(),
        "imported tenants"
    );
    Ok(())
}

/// The demo tenants of the contract.
pub fn demo_tenants() -> Result<Vec<TenantDoc>, StackError> {
    let tenant = |id: &str, realm: &str, placements: &[(&str, &str)]| -> Result<TenantDoc, StackError> {
        let placements: std::collections::BTreeMap<Product, Placement> = placements
            .iter()
            .map(|(p, s)| {
                let placement = Placement {
                    shard: name(ShardId::new(s))?,
                    state: PlacementState::Active,
                };
                Ok((name(Product::new(p))?, placement))
            })
            .collect::<Result<_, StackError>>()?;
        let host = crate::tenant::Host::parse(&format!("{id}.example.test"))
            .map_err(|e| StackError::Spec(e.to_string()))?;
        // Each product's database and its credential, generated here (the catalogue seals it).
        let products = placements
            .iter()
            .map(|(product, placement): (&Product, &Placement)| {
                let mut config = serde_json::Map::new();
                config.insert("db".into(), format!("{id}_{product}").into());
                config.insert(
                    "db_host".into(),
                    crate::demo::db_host(placement.shard.as_str()).into(),
                );
                let password = crate::feed::Secret::Plain(format!("{:032x}", rand::random::<u128>()));
                let doc = crate::feed::ProductDoc {
                    config,
                    secrets: [("db_password".to_owned(), password)].into_iter().collect(),
                };
                (product.clone(), doc)
            })
            .collect();
        Ok(TenantDoc {
            id: name(TenantId::new(id))?,
            hosts: vec![host],
            realm: name(Realm::new(realm))?,
            placements,
            products,
            rate_limits: Default::default(),
            data_key: None,
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
