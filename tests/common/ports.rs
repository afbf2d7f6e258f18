//! Ports for child processes that bind them themselves.
//!
//! A port taken from the kernel with `bind(0)` and released is in the ephemeral range, where the
//! kernel may hand it to one of the tests' own outgoing connections before the child binds it.
//! Ports are therefore picked below that range, each once per test process, and checked free.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port below the ephemeral range, never handed out twice by this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().max(12_000);
    let span = low - 10_000;
    // Test binaries run one after another; the pid spreads them anyway.
    let seed = std::process::id() * 97;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below {low}");
        let port = 10_000 + (seed.wrapping_add(n) % span);
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(32_768)
}
