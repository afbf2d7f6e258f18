//! `tenant-edge stack`: a stack started from the command line, every role a child process of
//! this binary on free loopback ports, for scripts that measure or signal the processes
//! themselves (the benchmark race). It prints one JSON line saying where each part listens and
//! which process it is, then runs until Ctrl-C or SIGTERM, or until a part exits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Part, Ports, Run, Stack, StackError};
use crate::edge::EdgeConfig;
use crate::routes::RoutesFile;
use crate::tcs::TcsConfig;
use crate::tenant::Region;

/// Options of `tenant-edge stack`.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Directory for the stack's data, configs and tokens (created; owner-only files).
    #[arg(long)]
    pub dir: PathBuf,
    /// Route file template: products, shards and health checks. Demo shards replace its
    /// backends with their own addresses; with `--no-shards` its backends are used as written.
    #[arg(long)]
    pub routes: PathBuf,
    /// TCS regions, one TCS node each (comma-separated); the first is the edges' own.
    #[arg(long, value_delimiter = ',', default_value = "us-east-1", value_parser = Region::new)]
    pub regions: Vec<Region>,
    /// Edges to start.
    #[arg(long, default_value_t = 1)]
    pub edges: usize,
    /// Directory holding `dev.crt` and `dev.key`: the edges listen for HTTPS too.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Start no demo shards: the route file's backends are servers of the caller's.
    #[arg(long)]
    pub no_shards: bool,
    /// Seed realms and shards, not the demo tenants.
    #[arg(long)]
    pub no_demo_tenants: bool,
    /// Tenant documents to import (one JSON object a line) before any TCS starts.
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// A TOML file laid over every edge's config, keys as in `proxy --config` (for example
    /// `access_log = false`, or `[cache]` with `max_entries = 100000`).
    #[arg(long)]
    pub edge_overrides: Option<PathBuf>,
    /// The same over every TCS config, keys as in `tcs --config`.
    #[arg(long)]
    pub tcs_overrides: Option<PathBuf>,
}

/// Where one part listens and which process it is.
#[derive(Debug, Serialize)]
struct PartLine {
    name: String,
    url: String,
    pid: Option<u32>,
}

/// An edge's listeners and process.
#[derive(Debug, Serialize)]
struct EdgeLine {
    name: String,
    http: String,
    https: Option<String>,
    admin: String,
    pid: Option<u32>,
}

/// The one line printed once every part is ready.
#[derive(Debug, Serialize)]
struct Started {
    dir: PathBuf,
    /// The operator's catalogue token (every scope), owner-only.
    operator_token_file: PathBuf,
    catalogue: PartLine,
    tcs: Vec<PartLine>,
    edges: Vec<EdgeLine>,
    shards: Vec<PartLine>,
}

/// Runs `tenant-edge stack` until `shutdown` is cancelled or a part exits.
pub async fn run(args: StackArgs, shutdown: CancellationToken) -> Result<(), StackError> {
    let bin = std::env::current_exe().map_err(|e| StackError::Spec(format!("this binary: {e}")))?;
    let template = RoutesFile::load(&args.routes)?;
    let edge_overrides = overrides_of(args.edge_overrides.as_deref())?;
    let tcs_overrides = overrides_of(args.tcs_overrides.as_deref())?;
    let regions: Vec<&str> = args.regions.iter().map(Region::as_str).collect();
    let mut builder = Stack::builder(&args.dir, template)
        .run(Run::Children(bin))
        .ports(Ports::Free)
        .regions(&regions)?
        .edges(args.edges)
        .shards(!args.no_shards)
        .demo_tenants(!args.no_demo_tenants);
    if let Some(certs) = &args.certs {
        builder = builder.certs(certs);
    }
    if let Some(file) = &args.import {
        builder = builder.import(file);
    }
    if let Some(over) = edge_overrides {
        check_overlay::<EdgeConfig>(&sample_edge(), &over, "--edge-overrides")?;
        builder = builder.edge(move |_, cfg| {
            // Checked above on a config of the same shape: only the values differ.
            if let Ok(laid) = overlay(&*cfg, &over) {
                *cfg = laid;
            }
        });
    }
    if let Some(over) = tcs_overrides {
        check_overlay::<TcsConfig>(&sample_tcs(), &over, "--tcs-overrides")?;
        builder = builder.tcs(move |_, cfg| {
            if let Ok(laid) = overlay(&*cfg, &over) {
                *cfg = laid;
            }
        });
    }
    let mut stack = tokio::select! {
        started = builder.start() => started?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let line = serde_json::to_string(&started(&stack)).map_err(|e| StackError::Spec(e.to_string()))?;
    println!("{line}");
    let exited = loop {
        tokio::select! {
            () = shutdown.cancelled() => break None,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(part) = first_exited(&mut stack) {
                    break Some(part);
                }
            }
        }
    };
    stack.stop().await;
    match exited {
        None => Ok(()),
        Some(name) => Err(StackError::Part(format!("{name} exited"))),
    }
}

fn started(stack: &Stack) -> Started {
    let part = |p: &Part| PartLine {
        name: p.name().to_owned(),
        url: p.url(),
        pid: p.pid(),
    };
    Started {
        dir: stack.dir.clone(),
        operator_token_file: stack.dir.join("operator.token"),
        catalogue: part(stack.catalogue()),
        tcs: stack.tcs.iter().map(part).collect(),
        edges: stack
            .edges
            .iter()
            .map(|e| EdgeLine {
                name: e.name().to_owned(),
                http: e.http.to_string(),
                https: e.https.map(|a| a.to_string()),
                admin: e.admin().to_string(),
                pid: e.pid(),
            })
            .collect(),
        shards: stack.shards.iter().map(part).collect(),
    }
}

/// The name of a part whose process ended.
fn first_exited(stack: &mut Stack) -> Option<String> {
    let parts = stack
        .edges
        .iter_mut()
        .map(|e| &mut e.part)
        .chain(&mut stack.tcs)
        .chain(&mut stack.shards);
    for p in parts {
        if p.exited() {
            return Some(p.name().to_owned());
        }
    }
    let catalogue = stack.catalogue_mut();
    catalogue.exited().then(|| catalogue.name().to_owned())
}

fn overrides_of(file: Option<&Path>) -> Result<Option<toml::Table>, StackError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| super::io_err(file, e))?;
    text.parse::<toml::Table>()
        .map(Some)
        .map_err(|e| super::io_err(file, e))
}

/// `base` with every key of `over` laid over it; tables merge key by key, anything else
/// replaces. An unknown key is an error (the configs refuse unknown fields).
fn overlay<T: Serialize + DeserializeOwned>(base: &T, over: &toml::Table) -> Result<T, String> {
    let mut value = toml::Value::try_from(base).map_err(|e| e.to_string())?;
    merge(&mut value, over);
    value.try_into().map_err(|e: toml::de::Error| e.to_string())
}

fn merge(into: &mut toml::Value, over: &toml::Table) {
    let toml::Value::Table(table) = into else {
        return;
    };
    for (key, value) in over {
        match (table.get_mut(key), value) {
            (Some(inner @ toml::Value::Table(_)), toml::Value::Table(more)) => merge(inner, more),
            _ => {
                table.insert(key.clone(), value.clone());
            }
        }
    }
}

fn check_overlay<T: Serialize + DeserializeOwned>(
    sample: &T,
    over: &toml::Table,
    flag: &str,
) -> Result<(), StackError> {
    overlay(sample, over)
        .map(drop)
        .map_err(|e| StackError::Spec(format!("{flag}: {e}")))
}

fn sample_edge() -> EdgeConfig {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let region = Region::new("us-east-1").unwrap_or_else(|_| unreachable!("a valid region"));
    EdgeConfig::new(region, any, any, PathBuf::from("routes.toml"), Vec::new())
}

fn sample_tcs() -> TcsConfig {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let region = Region::new("us-east-1").unwrap_or_else(|_| unreachable!("a valid region"));
    TcsConfig::new(
        region,
        any,
        "http://127.0.0.1:1",
        PathBuf::from("tcs.json"),
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_tables_and_refuse_unknown_keys() {
        let over: toml::Table = "access_log = false\nprewarm = false\n[cache]\nmax_entries = 7\n"
            .parse()
            .unwrap();
        let base = sample_edge();
        let laid = overlay(&base, &over).unwrap();
        assert!(!laid.access_log);
        assert_eq!(laid.cache.max_entries, 7);
        assert_eq!(
            laid.cache.negative_max_entries, base.cache.negative_max_entries,
            "the rest of [cache] stays"
        );
        assert_eq!(laid.listen_http, base.listen_http);
        let typo: toml::Table = "acces_log = false\n".parse().unwrap();
        let e = check_overlay(&base, &typo, "--edge-overrides").unwrap_err();
        assert!(e.to_string().contains("acces_log"), "{e}");
        let wrong: toml::Table = "[cache]\nmax_entries = \"many\"\n".parse().unwrap();
        assert!(overlay(&base, &wrong).is_err());
    }
}
