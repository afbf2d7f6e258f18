//! The cap on client connections, over every listener: at most `max_connections` open, and at
//! most `max_connections_per_client` from one address, so that neither a flood nor one client
//! can take the edge's file descriptors. A connection past a cap is closed at once, before a
//! byte is read, and counted (`connections_refused_total{reason}`). Checked once per
//! connection: the request path never sees it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::metrics::EdgeMetrics;

/// File descriptors kept free beyond the client connections and one upstream connection for
/// each: the admin API, health checks, TCS, the cache file, logs.
pub const FD_HEADROOM: u64 = 256;

/// `[connections]` in the edge config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Client connections open at once, over every listener. Lowered at start to what the
    /// file descriptor limit allows (each client connection may hold an upstream one too).
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_connections_per_client: 1_000,
        }
    }
}

impl ConnectionLimits {
    /// Checks the values make sense.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err("connection limits must be at least 1".into());
        }
        if self.max_connections_per_client > self.max_connections {
            return Err("max_connections_per_client is above max_connections".into());
        }
        Ok(())
    }

    /// The cap that `fds` open files allow: a client connection and its upstream one each,
    /// beside [`FD_HEADROOM`].
    pub fn within_fds(mut self, fds: u64) -> Self {
        let fit = usize::try_from(fds.saturating_sub(FD_HEADROOM) / 2)
            .unwrap_or(usize::MAX)
            .max(1);
        self.max_connections = self.max_connections.min(fit);
        self.max_connections_per_client = self.max_connections_per_client.min(self.max_connections);
        self
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The edge holds `max_connections`.
    Total,
    /// The client's address holds `max_connections_per_client`.
    PerClient,
}

/// The connections open, by client address.
pub struct Connections {
    limits: ConnectionLimits,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
    metrics: Option<EdgeMetrics>,
}

/// An admitted connection; its slot is freed when dropped.
pub struct Admitted<'a> {
    conns: &'a Connections,
    client: Option<IpAddr>,
}

impl Connections {
    /// No connection open yet, under `limits`; `metrics` count them.
    pub fn new(limits: ConnectionLimits, metrics: Option<EdgeMetrics>) -> Self {
        Connections {
            limits,
            open: AtomicUsize::new(0),
            by_client: Mutex::default(),
            metrics,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Takes a slot for a connection from `client`, or says which cap refuses it.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<Admitted<'_>, Refused> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.limits.max_connections).then_some(n + 1)
        });
        if taken.is_err() {
            return Err(self.refused(Refused::Total));
        }
        if let Some(ip) = client {
            let mut by_client = self.by_client.lock().unwrap_or_else(PoisonError::into_inner);
            let n = by_client.entry(ip).or_insert(0);
            if *n >= self.limits.max_connections_per_client {
                drop(by_client);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(self.refused(Refused::PerClient));
            }
            *n += 1;
        }
        if let Some(m) = &self.metrics {
            m.connections_open.inc();
        }
        Ok(Admitted { conns: self, client })
    }

    fn refused(&self, why: Refused) -> Refused {
        if let Some(m) = &self.metrics {
            let reason = match why {
                Refused::Total => "total",
                Refused::PerClient => "per_client",
            };
            m.connections_refused.with_label_values(&[reason]).inc();
        }
        why
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Admitted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("client", &self.client).finish()
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            let mut by_client = self
                .conns
                .by_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = by_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_client.remove(&ip);
                }
            }
        }
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = &self.conns.metrics {
            m.connections_open.dec();
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit; the limit in force
/// after.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn caps_hold_and_slots_come_back() {
        let conns = Connections::new(
            ConnectionLimits {
                max_connections: 3,
                max_connections_per_client: 2,
            },
            None,
        );
        let a1 = conns.admit(ip(1)).unwrap();
        let a2 = conns.admit(ip(1)).unwrap();
        assert_eq!(conns.admit(ip(1)).unwrap_err(), Refused::PerClient);
        let b1 = conns.admit(ip(2)).unwrap();
        assert_eq!(conns.admit(ip(3)).unwrap_err(), Refused::Total);
        assert_eq!(conns.open(), 3);
        drop(a1);
        let a3 = conns.admit(ip(1)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(conns.open(), 0);
        assert!(
            conns.by_client.lock().unwrap().is_empty(),
            "no address is kept once gone"
        );
    }

    #[test]
    fn the_cap_fits_the_fd_limit() {
        let limits = ConnectionLimits::default().within_fds(1024);
        assert_eq!(limits.max_connections, (1024 - FD_HEADROOM as usize) / 2);
        assert!(limits.max_connections_per_client <= limits.max_connections);
        assert_eq!(
            ConnectionLimits::default().within_fds(1 << 20),
            ConnectionLimits::default()
        );
        assert!(ConnectionLimits {
            max_connections: 0,
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
