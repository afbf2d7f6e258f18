//! The floor the race in `bench/race.py` measures against: a bare pingora proxy that forwards
//! every request to one backend, built with the same server settings as the edge (the same
//! `ServerConf`, from `edge::server_conf`; the same backend connection settings, from
//! `edge::backend_peer`; one service, HTTP/1.1 keep-alive to the backend), and nothing else.
//!
//! `cargo build --release --example passthrough`, then
//! `target/release/examples/passthrough LISTEN BACKEND [THREADS] [steal|nosteal] [TLS CERT KEY]`:
//! the fourth argument picks pingora's runtime flavour (work stealing, pingora's default, or one
//! single-threaded runtime per thread), as the edge's `work_stealing` setting does; the last three
//! add a TLS listener with HTTP/2 by ALPN, set up as the edge's.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

struct Passthrough {
    backend: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(tenant_edge::edge::backend_peer(self.backend)))
    }
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (args.get(1), args.get(2).and_then(|b| b.parse().ok())) else {
        eprintln!("usage: passthrough LISTEN BACKEND [THREADS] [steal|nosteal] [TLS CERT KEY]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let work_stealing = args.get(4).is_none_or(|f| f != "nosteal");
    let conf = tenant_edge::edge::server_conf(threads, work_stealing);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Passthrough { backend },
        "passthrough",
    );
    service.add_tcp(listen);
    if let (Some(addr), Some(cert), Some(key)) = (args.get(5), args.get(6), args.get(7)) {
        let Ok(mut tls) = pingora::listeners::tls::TlsSettings::intermediate(cert, key) else {
            eprintln!("passthrough: cannot load {cert} / {key}");
            std::process::exit(2);
        };
        tls.enable_h2();
        service.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(service);
    server.run_forever();
}
