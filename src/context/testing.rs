//! Test support shared by the cache's tests: a real TCS fed by hand ([`crate::tcs::standalone`])
//! served on a loopback port, and catalogue changes to feed it.

use tokio_util::sync::CancellationToken;

use super::TcsEndpoint;
use crate::feed::Change;
use crate::tcs::{standalone, ConsumerConfig, Tcs, TcsConfig};

/// The edge's token at the test TCS.
pub(crate) const TOKEN: &str = "cache-test-token";

/// The test TCS's admin token.
pub(crate) const ADMIN_TOKEN: &str = "cache-test-admin-token";

/// A TCS for region `us-east-1` with an event ring of `ring` events. Nothing tails a
/// catalogue: tests apply changes through `tcs.ingress().apply`.
pub(crate) fn tcs_with_ring(ring: usize) -> Tcs {
    tcs_with(ring, false)
}

/// A TCS whose faults may be set (through [`Tcs::faults`]).
pub(crate) fn tcs_with_faults() -> Tcs {
    tcs_with(crate::tcs::view::DEFAULT_RING_CAPACITY, true)
}

fn tcs_with(ring: usize, allow_faults: bool) -> Tcs {
    let edge = ConsumerConfig::new("edge", TOKEN, &["ingress"]);
    let config = TcsConfig {
        allow_faults,
        admin_token: Some(ADMIN_TOKEN.into()),
        ..standalone::config("us-east-1", vec![edge]).unwrap()
    };
    Tcs::with_capacities(config, ring, crate::tcs::view::DEFAULT_CHANNEL_CAPACITY).unwrap()
}

/// A TCS with the default event ring.
pub(crate) fn tcs() -> Tcs {
    tcs_with_ring(crate::tcs::view::DEFAULT_RING_CAPACITY)
}

/// Serves `tcs`'s API on `listener` (bound ahead, so its URL is known before it serves)
/// until `stop` is cancelled.
pub(crate) fn serve(tcs: &Tcs, listener: tokio::net::TcpListener, stop: CancellationToken) {
    tokio::spawn(tcs.clone().serve_api(listener, stop));
}

/// Serves `tcs` on `addr` (port 0: a fresh one) until `stop`; returns its base URL.
pub(crate) async fn serve_on(tcs: &Tcs, addr: std::net::SocketAddr, stop: &CancellationToken) -> String {
    let (bound, _) = standalone::serve(tcs, addr, stop.clone()).await.unwrap();
    format!("http://{bound}")
}

/// Serves `tcs` on a fresh loopback port until `stop`; returns its base URL.
pub(crate) async fn serve_on_loopback(tcs: &Tcs, stop: &CancellationToken) -> String {
    serve_on(tcs, "127.0.0.1:0".parse().unwrap(), stop).await
}

/// This edge's endpoint for the test TCS at `url`.
pub(crate) fn endpoint(region: &str, url: &str) -> TcsEndpoint {
    TcsEndpoint {
        region: region.into(),
        url: url.into(),
        token: TOKEN.into(),
    }
}

/// A catalogue change writing tenant `id` at `version` with `hosts` (realm `us`).
pub(crate) fn put(seq: u64, id: &str, version: u64, hosts: &[&str]) -> Change {
    standalone::put(seq, id, version, hosts).unwrap()
}

/// A catalogue change deleting tenant `id` at `version`.
pub(crate) fn del(seq: u64, id: &str, version: u64) -> Change {
    standalone::del(seq, id, version).unwrap()
}
