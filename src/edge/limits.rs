//! Noisy neighbours: per-tenant request rates by product and requests in flight by shard.
//!
//! Both are count-min estimators from `pingora-limits`, shared by every worker: a check is a
//! few atomic operations on fixed arrays, with no lock and no allocation. A tenant's key is its
//! id hashed once per cache entry ([`crate::context::Entry::limit_key`]). The limits come from
//! the route file (a product's `rate_limit_rps`, a shard's `tenant_in_flight`) and, for the rate,
//! from the tenant's own `rate_limits` in the catalogue, carried in the `ingress` view. The
//! estimators outlive route snapshots: a reload carries them over (keys name the product and the
//! shard by their interned numbers, which do not change), so a reload neither forgives a
//! flooding tenant its window nor forgets requests in flight.

use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

use super::pool::ShardPool;
use super::proxy::Reject;
use crate::context::{Entry, Placed};
use crate::routes::ProductRoute;

/// How long a client over a limit should wait, in seconds (the rate's window).
pub(super) const RETRY_AFTER_LIMITED: &str = "1";

/// The estimators, shared by every route snapshot (see [`super::EdgeState::carry_over`]).
pub struct Limiter {
    /// Requests per tenant and product in the current second.
    rate: Rate,
    /// Requests per tenant and shard in flight now.
    in_flight: Inflight,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            rate: Rate::new(Duration::from_secs(1)),
            in_flight: Inflight::new(),
        }
    }
}

/// Which limit refused a request (the `limit` label of `tenant_edge_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The tenant's request rate for the product.
    Rate = 0,
    /// The tenant's requests in flight on the shard.
    InFlight = 1,
}

impl Limit {
    /// The label value.
    pub const NAMES: [&'static str; 2] = ["rate", "in_flight"];
}

/// A request let through; holds its place among the tenant's requests in flight on the shard
/// until dropped (when the request ends).
#[derive(Debug, Default)]
pub struct Admission {
    /// Held for its `Drop`, which gives the place back.
    _slot: Option<Guard>,
}

impl Limiter {
    /// Lets the request through or says which limit it is over. No limit configured, no work.
    pub fn admit(
        &self,
        product: &ProductRoute,
        entry: &Entry,
        placed: Placed,
        pool: &ShardPool,
    ) -> Result<Admission, Limit> {
        let rps = match placed.rate_limit {
            0 => product.rate_limit_rps,
            own => own,
        };
        if rps > 0 {
            let seen = self.rate.observe(&(entry.limit_key, product.sym), 1);
            if seen > rps as isize {
                return Err(Limit::Rate);
            }
        }
        if pool.tenant_in_flight == 0 {
            return Ok(Admission::default());
        }
        let (guard, now) = self.in_flight.incr((entry.limit_key, placed.shard), 1);
        if now > pool.tenant_in_flight as isize {
            return Err(Limit::InFlight);
        }
        Ok(Admission { _slot: Some(guard) })
    }
}

/// The answer to a request over `limit`: 429, with `Retry-After` and the reason in JSON.
pub(super) fn refused(limit: Limit) -> Reject {
    Reject {
        status: 429,
        reason: match limit {
            Limit::Rate => "tenant is over its request rate for this product",
            Limit::InFlight => "tenant has too many requests in flight on this shard",
        },
        retry_after: Some(RETRY_AFTER_LIMITED),
    }
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;

    use crate::context::{Entry, Origin};
    use crate::edge::{place, BackendRegistry, EdgeState};
    use crate::metrics::EdgeMetrics;
    use crate::routes::RouteSnapshot;
    use crate::tenant::IngressRecord;

    /// The dev routes with `rps` requests a second per tenant for jira and `in_flight` requests
    /// per tenant and shard; `confluence_first` lists confluence before jira.
    fn state(rps: u32, in_flight: u32, confluence_first: bool, metrics: &EdgeMetrics) -> EdgeState {
        let mut toml = include_str!("../../routes/dev.toml").to_owned();
        if confluence_first {
            let jira = "[[products]]\nname = \"jira\"\nprefixes = [\"/\"]\n\n";
            assert!(toml.contains(jira));
            toml = toml.replace(jira, "").replace(
                "[[shards]]\nid = \"jira-us-east-1\"",
                &format!("{jira}[[shards]]\nid = \"jira-us-east-1\""),
            );
        }
        if rps > 0 {
            toml = toml.replace(
                "prefixes = [\"/\"]",
                &format!("prefixes = [\"/\"]\nrate_limit_rps = {rps}"),
            );
        }
        if in_flight > 0 {
            toml = toml.replace(
                "backends = [",
                &format!("tenant_in_flight = {in_flight}\nbackends = ["),
            );
        }
        let routes = RouteSnapshot::from_toml_str(&toml).unwrap();
        EdgeState::build(Arc::new(routes), &BackendRegistry::default(), metrics)
    }

    fn tenant(id: &str) -> Entry {
        let record: IngressRecord = serde_json::from_str(&format!(
            r#"{{"id":"{id}","version":1,"realm":"us","hosts":["{id}.example.test"],
                "placements":{{"jira":{{"shard":"jira-us-east-1"}}}}}}"#
        ))
        .unwrap();
        Entry::new(record, Origin::Fetch, "us-east-1".into())
    }

    #[test]
    fn a_reload_carries_the_windows_and_the_requests_in_flight_over() {
        let metrics = EdgeMetrics::new().unwrap();
        let get = http::Method::GET;
        let noisy = tenant("noisy");
        let quiet = tenant("quiet");

        // The rate: three a second, the fourth refused.
        let first = state(3, 0, false, &metrics);
        let jira = &first.routes.products[0];
        for _ in 0..3 {
            assert!(place(&first, jira, &noisy, &get).is_ok());
        }
        let refused = place(&first, jira, &noisy, &get).unwrap_err();
        assert_eq!((refused.status, refused.retry_after), (429, Some("1")));

        // A new snapshot (products in another order, so their positions change) carried over
        // from the first: the window goes on, the tenant stays refused; another tenant is not.
        let second = state(3, 0, true, &metrics).carry_over(&first);
        let jira = &second.routes.products[1];
        assert_eq!(jira.name.as_str(), "jira");
        assert!(place(&second, jira, &noisy, &get).is_err());
        assert!(place(&second, jira, &quiet, &get).is_ok());
        // Without carrying over, a reload would have forgiven it.
        let fresh = state(3, 0, false, &metrics);
        let jira = &fresh.routes.products[0];
        assert!(place(&fresh, jira, &noisy, &get).is_ok());

        // Requests in flight: two allowed; held across a reload, the third is still refused,
        // and one ending gives its place back in the new snapshot.
        let first = state(0, 2, false, &metrics);
        let jira = &first.routes.products[0];
        let one = place(&first, jira, &noisy, &get).unwrap();
        let _two = place(&first, jira, &noisy, &get).unwrap();
        let second = state(0, 2, false, &metrics).carry_over(&first);
        let jira = &second.routes.products[0];
        let refused = place(&second, jira, &noisy, &get).unwrap_err();
        assert_eq!(refused.status, 429);
        drop(one);
        assert!(place(&second, jira, &noisy, &get).is_ok());
    }
}
