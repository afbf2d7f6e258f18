//! Test support shared by the cache's tests: a real TCS (its view filled through the real
//! applier) served on a loopback port, and catalogue changes to feed it.

use tokio_util::sync::CancellationToken;

use super::TcsEndpoint;
use crate::feed::{Change, ChangeBody, TenantDoc};
use crate::tcs::{ConsumerConfig, Tcs, TcsConfig};
use crate::tenant::{Host, Realm, Region, TenantId};

/// The edge's token at the test TCS.
pub(crate) const TOKEN: &str = "cache-test-token";

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
    let region = Region::new("us-east-1").unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let config = TcsConfig {
        allow_faults,
        ..TcsConfig::new(
            region,
            listen,
            "http://127.0.0.1:9",
            "unused.json".into(),
            vec![edge],
        )
    };
    Tcs::with_capacities(config, ring, crate::tcs::view::DEFAULT_CHANNEL_CAPACITY).unwrap()
}

/// A TCS with the default event ring.
pub(crate) fn tcs() -> Tcs {
    tcs_with_ring(crate::tcs::view::DEFAULT_RING_CAPACITY)
}

/// Serves `tcs`'s API on `listener` until `stop` is cancelled.
pub(crate) fn serve(tcs: &Tcs, listener: tokio::net::TcpListener, stop: CancellationToken) {
    tokio::spawn(tcs.clone().serve_api(listener, stop));
}

/// Serves `tcs` on a fresh loopback port until `stop`; returns its base URL.
pub(crate) async fn serve_on_loopback(tcs: &Tcs, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    serve(tcs, listener, stop.clone());
    url
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
    let doc = TenantDoc {
        id: TenantId::new(id).unwrap(),
        hosts: hosts.iter().map(|h| Host::parse(h).unwrap()).collect(),
        realm: Realm::new("us").unwrap(),
        placements: Default::default(),
        version,
    };
    Change {
        seq,
        body: ChangeBody::Tenant {
            id: doc.id.clone(),
            version,
            doc: Some(doc),
        },
    }
}

/// A catalogue change deleting tenant `id` at `version`.
pub(crate) fn del(seq: u64, id: &str, version: u64) -> Change {
    Change {
        seq,
        body: ChangeBody::Tenant {
            id: TenantId::new(id).unwrap(),
            version,
            doc: None,
        },
    }
}
