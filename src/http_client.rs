//! The one way a role builds a reqwest client (the catalogue client, the TCS tailer, the edge's
//! TCS pings, change stream and health checks, the move orchestrator's hooks, the dev stack), so
//! that every client has the same safe defaults: a bounded connect, no redirects followed (an
//! API that answers with a redirect gets it back as an answer, and a bearer token never follows
//! one to another host), and `TCP_NODELAY`. The edge's batched TCS lookups are the one client
//! not built here: they speak HTTP/2 on hyper's connection directly (`context::batch`).

use std::time::Duration;

/// What a client needs beyond the defaults.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Longest wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Longest wait for a whole exchange, body included (default none: streams are long).
    pub timeout: Option<Duration>,
    /// Most idle connections kept per host (default reqwest's, unbounded).
    pub max_idle_per_host: Option<usize>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            max_idle_per_host: None,
        }
    }
}

/// A client with `options` over the defaults.
pub fn build(options: ClientOptions) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(timeout) = options.timeout {
        b = b.timeout(timeout);
    }
    if let Some(n) = options.max_idle_per_host {
        b = b.pool_max_idle_per_host(n);
    }
    b.build()
}

/// A client with the defaults.
pub fn default_client() -> reqwest::Result<reqwest::Client> {
    build(ClientOptions::default())
}
