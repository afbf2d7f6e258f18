//! Noisy neighbours: per-tenant request rates by product and requests in flight by shard.
//!
//! Both are count-min estimators from `pingora-limits`, shared by every worker: a check is a
//! few atomic operations on fixed arrays, with no lock and no allocation. A tenant's key is its
//! id hashed once per cache entry ([`crate::context::Entry::limit_key`]). The limits come from
//! the route file (a product's `rate_limit_rps`, a shard's `tenant_in_flight`) and, for the rate,
//! from the tenant's own `rate_limits` in the catalogue, carried in the `ingress` view. The
//! estimators live with the route snapshot: a reload starts them afresh.

use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

use super::pool::ShardPool;
use super::proxy::Reject;
use crate::context::{Entry, Placed};
use crate::routes::ProductRoute;

/// How long a client over a limit should wait, in seconds (the rate's window).
pub(super) const RETRY_AFTER_LIMITED: &str = "1";

/// The estimators of one route snapshot.
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
            let seen = self.rate.observe(&(entry.limit_key, product.index), 1);
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
