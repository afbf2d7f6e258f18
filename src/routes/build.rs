//! Validation and compilation of a parsed file into a [`RouteSnapshot`].
//!
//! Every check runs even after one fails, so an operator fixes a file in one pass; nothing here
//! panics on any input.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use super::path::{prefix_problem, PathMatcher};
use super::schema::{HealthCheckToml, ProductToml, RoutesFile, ShardToml};
use super::{HealthCheck, ProductRoute, RouteSnapshot, Shard};
use crate::tenant::{Product, Region, ShardId};

/// Longest interval, eject time: an hour. Beyond that a setting is a typo, not a choice.
const MAX_MS: u64 = 3_600_000;
/// Probes more often than this would load the backends more than the traffic does.
const MIN_INTERVAL_MS: u64 = 10;
const MAX_RISE_FALL: u64 = 100;
const MAX_EJECT_AFTER: u64 = 1000;
const MAX_VERSION_LEN: usize = 64;

/// The problems found so far, each prefixed with where it is.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, at: &str, what: impl Display) {
        self.0.push(format!("{at}: {what}"));
    }
}

/// Parses, validates and compiles; `Err` holds every problem found.
pub(crate) fn build(text: &str) -> Result<RouteSnapshot, Vec<String>> {
    let file: RoutesFile = ::toml::from_str(text).map_err(|e| vec![syntax_problem(text, &e)])?;
    let mut problems = Problems::default();
    let content_hash = fnv1a(text.as_bytes());
    let version = version(file.version.as_deref(), content_hash, &mut problems);
    let health_check = health_check(&file.health_check, &mut problems);
    let (products, prefixes) = products(&file.products, &mut problems);
    let shards = shards(&file.shards, &products, &mut problems);
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    Ok(RouteSnapshot {
        version,
        products,
        shards,
        health_check,
        matcher: PathMatcher::new(prefixes),
        content_hash,
    })
}

/// A TOML syntax or type error, located by line and column.
fn syntax_problem(text: &str, err: &::toml::de::Error) -> String {
    let Some(span) = err.span() else {
        return format!("toml: {}", err.message());
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {}", err.message().trim_end())
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn version(label: Option<&str>, content_hash: u64, problems: &mut Problems) -> String {
    let Some(label) = label else {
        return format!("{:012x}", content_hash >> 16);
    };
    let printable = label.bytes().all(|b| b.is_ascii_graphic());
    if label.is_empty() || label.len() > MAX_VERSION_LEN || !printable {
        problems.push(
            "version",
            format_args!("{label:?}: use 1-{MAX_VERSION_LEN} printable ASCII characters, no spaces"),
        );
    }
    label.to_owned()
}

fn health_check(hc: &HealthCheckToml, problems: &mut Problems) -> HealthCheck {
    let at = "health_check";
    if !hc.path.starts_with('/') || hc.path.bytes().any(|b| !b.is_ascii_graphic() || b == b'#') {
        let what = format_args!("path {:?}: must start with '/' and be printable ASCII", hc.path);
        problems.push(at, what);
    }
    in_range(
        problems,
        "health_check.interval_ms",
        hc.interval_ms,
        MIN_INTERVAL_MS,
        MAX_MS,
    );
    in_range(problems, "health_check.timeout_ms", hc.timeout_ms, 1, MAX_MS);
    if hc.timeout_ms >= hc.interval_ms {
        let what = format_args!(
            "{} must be less than interval_ms ({})",
            hc.timeout_ms, hc.interval_ms
        );
        problems.push("health_check.timeout_ms", what);
    }
    in_range(problems, "health_check.rise", hc.rise, 1, MAX_RISE_FALL);
    in_range(problems, "health_check.fall", hc.fall, 1, MAX_RISE_FALL);
    in_range(problems, "health_check.eject_ms", hc.eject_ms, 1, MAX_MS);
    in_range(
        problems,
        "health_check.eject_after",
        hc.eject_after,
        1,
        MAX_EJECT_AFTER,
    );
    HealthCheck {
        path: hc.path.clone(),
        interval: Duration::from_millis(hc.interval_ms),
        timeout: Duration::from_millis(hc.timeout_ms),
        rise: small(hc.rise),
        fall: small(hc.fall),
        eject: Duration::from_millis(hc.eject_ms),
        eject_after: small(hc.eject_after),
    }
}

fn in_range(problems: &mut Problems, at: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        problems.push(at, format_args!("{value} is out of range {min}..={max}"));
    }
}

/// Range-checked before use; saturates so an out-of-range value can never wrap.
fn small(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Validates the products; returns them and the `(prefix, product index)` pairs to match on.
fn products(input: &[ProductToml], problems: &mut Problems) -> (Vec<ProductRoute>, Vec<(Box<str>, usize)>) {
    if input.is_empty() {
        problems.push("products", "none defined: add at least one [[products]]");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut owners: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(input.len());
    let mut prefixes = Vec::new();
    for (index, p) in input.iter().enumerate() {
        let at = format!("products[{index}] ({})", p.name);
        let first = *names.entry(&p.name).or_insert(index);
        if first != index {
            problems.push(
                &at,
                format_args!("duplicate product name, first at products[{first}]"),
            );
        }
        if p.prefixes.is_empty() {
            problems.push(&at, "no prefixes");
        }
        if p.rate_limit_rps == Some(0) {
            problems.push(
                &at,
                "rate_limit_rps must be at least 1 (leave it out for no limit)",
            );
        }
        for prefix in &p.prefixes {
            if prefix_ok(input, &mut owners, (index, prefix), &at, problems) {
                prefixes.push((Box::from(prefix.as_str()), index));
            }
        }
        match Product::new(&p.name) {
            Ok(name) => routes.push(ProductRoute {
                sym: crate::tenant::Sym::of(name.as_str()),
                name,
                index,
                prefixes: p.prefixes.clone(),
                rate_limit_rps: p.rate_limit_rps.unwrap_or(0),
            }),
            Err(e) => problems.push(&at, e),
        }
    }
    (routes, prefixes)
}

/// Checks one prefix of product `index` and claims it; false (with a problem) when unusable.
fn prefix_ok<'a>(
    input: &[ProductToml],
    owners: &mut HashMap<&'a str, usize>,
    (index, prefix): (usize, &'a str),
    at: &str,
    problems: &mut Problems,
) -> bool {
    if let Some(why) = prefix_problem(prefix) {
        problems.push(at, format_args!("prefix {prefix:?}: {why}"));
        return false;
    }
    let Some(&owner) = owners.get(prefix) else {
        owners.insert(prefix, index);
        return true;
    };
    if owner == index {
        problems.push(at, format_args!("prefix {prefix:?}: listed twice"));
    } else {
        let other = input.get(owner).map_or("", |o| o.name.as_str());
        problems.push(
            at,
            format_args!("prefix {prefix:?}: already used by products[{owner}] ({other})"),
        );
    }
    false
}

fn shards(
    input: &[ShardToml],
    products: &[ProductRoute],
    problems: &mut Problems,
) -> HashMap<ShardId, Shard> {
    let known: HashSet<&str> = products.iter().map(|p| p.name.as_str()).collect();
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    let mut shards = HashMap::with_capacity(input.len());
    for (index, s) in input.iter().enumerate() {
        let at = format!("shards[{index}] ({})", s.id);
        let first = *first_at.entry(&s.id).or_insert(index);
        if first != index {
            problems.push(&at, format_args!("duplicate shard id, first at shards[{first}]"));
        }
        let product = Product::new(&s.product).map_err(|e| problems.push(&at, e)).ok();
        if product.is_some() && !known.contains(s.product.as_str()) {
            problems.push(&at, format_args!("unknown product {:?}", s.product));
        }
        if s.tenant_in_flight == Some(0) {
            problems.push(
                &at,
                "tenant_in_flight must be at least 1 (leave it out for no limit)",
            );
        }
        let region = Region::new(&s.region).map_err(|e| problems.push(&at, e)).ok();
        let id = ShardId::new(&s.id).map_err(|e| problems.push(&at, e)).ok();
        let backends = backends(&s.backends, &at, problems);
        let data_regions = region
            .as_ref()
            .and_then(|r| data_regions(r, &s.data_regions, &at, problems));
        if let (Some(id), Some(product), Some(region), Some(data_regions)) =
            (id, product, region, data_regions)
        {
            shards.insert(
                id.clone(),
                Shard {
                    id,
                    product,
                    region,
                    data_regions,
                    backends,
                    tenant_in_flight: s.tenant_in_flight.unwrap_or(0),
                },
            );
        }
    }
    shards
}

/// `region` first, then the other data regions in file order; `region` must be among them when
/// they are given.
fn data_regions(region: &Region, input: &[String], at: &str, problems: &mut Problems) -> Option<Vec<Region>> {
    if input.is_empty() {
        return Some(vec![region.clone()]);
    }
    if !input.iter().any(|r| r == region.as_str()) {
        problems.push(
            at,
            format_args!("data_regions must include the shard's region {region}"),
        );
    }
    let mut out = vec![region.clone()];
    let mut ok = true;
    for raw in input {
        match Region::new(raw) {
            Ok(r) if out.contains(&r) => {
                if r != *region {
                    problems.push(at, format_args!("data region {r} listed twice"));
                }
            }
            Ok(r) => out.push(r),
            Err(e) => {
                problems.push(at, e);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn backends(input: &[String], at: &str, problems: &mut Problems) -> Vec<SocketAddr> {
    if input.is_empty() {
        problems.push(at, "no backends");
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(input.len());
    for raw in input {
        match raw.parse::<SocketAddr>() {
            Err(_) => problems.push(
                at,
                format_args!("backend {raw:?}: invalid socket address (want ip:port)"),
            ),
            Ok(addr) if addr.port() == 0 => problems.push(at, format_args!("backend {raw:?}: port 0")),
            Ok(addr) if out.contains(&addr) => {
                problems.push(at, format_args!("backend {raw:?}: listed twice"))
            }
            Ok(addr) => out.push(addr),
        }
    }
    out
}
