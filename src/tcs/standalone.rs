//! A TCS fed by hand, for the tests and benches that need exact control of sequence numbers
//! and versions (the cache's tests, the TCS API tests, the miss bench): it tails no catalogue,
//! its view is filled through the real applier (`tcs.ingress().apply`) with the catalogue
//! changes built here, and its API is served on a loopback port. A whole stack with a real
//! catalogue is [`crate::stack`]'s.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ConsumerConfig, TcsConfig};
use crate::feed::{Change, ChangeBody, TenantDoc};
use crate::tenant::{Host, HostError, NameError, Realm, Region, TenantId};

/// A catalogue URL nothing listens on: a hand-fed TCS's tailer is never started.
const NO_CATALOGUE: &str = "http://127.0.0.1:9";

/// Why a hand-fed TCS or a change could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A host is invalid.
    #[error("{0}")]
    Host(#[from] HostError),
}

/// The config of a node of `region` read by `consumers`, tailing nothing, its snapshot file
/// never written (nothing starts the tailer that writes it).
pub fn config(region: &str, consumers: Vec<ConsumerConfig>) -> Result<TcsConfig, StandaloneError> {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(TcsConfig::new(
        Region::new(region)?,
        listen,
        NO_CATALOGUE,
        "unused.json".into(),
        consumers,
    ))
}

/// A catalogue change writing tenant `id` at `version` with `hosts` (realm `us`, no
/// placements).
pub fn put(seq: u64, id: &str, version: u64, hosts: &[&str]) -> Result<Change, StandaloneError> {
    let doc = TenantDoc {
        id: TenantId::new(id)?,
        hosts: hosts.iter().map(|h| Host::parse(h)).collect::<Result<_, _>>()?,
        realm: Realm::new("us")?,
        placements: Default::default(),
        products: Default::default(),
        rate_limits: Default::default(),
        data_key: None,
        version,
    };
    Ok(Change {
        seq,
        body: ChangeBody::Tenant {
            id: doc.id.clone(),
            version,
            doc: Some(doc),
        },
    })
}

/// A catalogue change deleting tenant `id` at `version`.
pub fn del(seq: u64, id: &str, version: u64) -> Result<Change, StandaloneError> {
    Ok(Change {
        seq,
        body: ChangeBody::Tenant {
            id: TenantId::new(id)?,
            version,
            doc: None,
        },
    })
}

/// Serves `tcs`'s API (no tailer) on `addr` (port 0 picks one) until `stop`: the bound
/// address, and the serving task.
pub async fn serve(
    tcs: &super::Tcs,
    addr: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(tcs.clone().serve_api(listener, stop))))
}
