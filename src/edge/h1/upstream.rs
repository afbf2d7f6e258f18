//! Upstream connections of the lean path: one pool per worker thread, so checking a
//! connection out or in takes no lock and no other thread's cache line.
//!
//! Each proxy worker runs its own runtime on its own thread (the default), so a connection
//! made by a thread's tasks stays with that thread's reactor. A pooled connection is checked
//! for liveness at checkout from the readiness the reactor already holds (no system call when
//! the peer has sent nothing), and connections idle past their time are swept on checkin.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::body::Buf;

/// Most idle connections kept per backend and thread.
pub const MAX_IDLE_PER_BACKEND: usize = 64;
/// Read buffer of an upstream connection: a response head must fit in it.
pub const UPSTREAM_BUF: usize = 16 * 1024;

/// A connection to a backend, with its own read buffer.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub io: TcpStream,
    /// Bytes read from it and not yet used.
    pub buf: Buf,
    /// It came from the pool (it served an earlier request).
    pub reused: bool,
}

struct Idle {
    conn: Upstream,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    swept: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection to `addr` that still looks open, if this thread has one. (Connections
/// idle past their time are dropped by the sweep, at most a second late.)
pub fn checkout(addr: SocketAddr) -> Option<Upstream> {
    POOL.with_borrow_mut(|pool| {
        let list = pool.idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if is_open(&idle.conn.io) {
                let mut conn = idle.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    })
}

/// Gives a connection that finished an exchange cleanly, at `now`, back to this thread's pool.
pub fn checkin(addr: SocketAddr, conn: Upstream, idle_timeout: Duration, now: Instant) {
    if !conn.buf.is_empty() {
        // The backend sent more than its answer: the connection's framing is lost.
        return;
    }
    POOL.with_borrow_mut(|pool| {
        if pool
            .swept
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            pool.swept = Some(now);
            for list in pool.idle.values_mut() {
                list.retain(|i| now.duration_since(i.since) < idle_timeout);
            }
            pool.idle.retain(|_, list| !list.is_empty());
        }
        let list = pool.idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { conn, since: now });
        }
    });
}

/// An idle connection is open when it has nothing to read: a peer that closed it, or sent
/// bytes no request asked for, makes it readable.
fn is_open(io: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Connects to `addr` within `timeout`, with Nagle off.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Upstream> {
    let io = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    io.set_nodelay(true)?;
    Ok(Upstream {
        io,
        buf: Buf::new(UPSTREAM_BUF),
        reused: false,
    })
}
