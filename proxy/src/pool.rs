//! Idle keep-alive connections to the servers: [`UpConn`] (one server connection and the
//! bytes read from it past its last answer) and [`Pool`] (one server's idle connections, a
//! stack per proxy thread), with the rules for when an idle connection may be reused.
//!
//! It owns only the connections: which server to use, the counters and the data path
//! belong to `upstream` (which keeps a `Pool` per server) and `app` (which checks
//! connections out and back in). This module imports neither.

use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Idle pooled connections kept per server.
const POOL_MAX: usize = 256;
/// An idle pooled server connection is not used after this long: servers close idle
/// keep-alive connections (Oxbus servers after 75 s), and one closing just as a request is
/// written fails that request.
const POOL_IDLE_MAX: Duration = Duration::from_secs(30);
/// Proxy threads with a pool stack of their own (more share them, round-robin).
const POOL_SHARDS: usize = 16;

/// A connection to a server, with the bytes read from it past the last answer (none, while
/// it waits in the pool).
#[derive(Debug)]
pub struct UpConn {
    pub(crate) io: TcpStream,
    pub(crate) buf: BytesMut,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl UpConn {
    /// A freshly connected server connection, made at `now`.
    pub(crate) fn new(io: TcpStream, now: Instant) -> Self {
        UpConn {
            io,
            buf: BytesMut::with_capacity(16 * 1024),
            idle_since: now,
        }
    }

    /// Whether an idle pooled connection is still usable: not idle too long, and the
    /// server has neither closed it nor sent anything since its last answer. Known from the
    /// readiness the reactor last saw; a system call only when that says "readable".
    fn usable(&self, now: Instant) -> bool {
        if now.saturating_duration_since(self.idle_since) > POOL_IDLE_MAX {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(self.io.ready(Interest::READABLE)).poll(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(r)) if r.is_read_closed() || r.is_error() => false,
            // Maybe stale readiness: only "nothing to read" means usable (bytes here would
            // be read as the next request's answer).
            Poll::Ready(Ok(_)) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
            Poll::Ready(Err(_)) => false,
        }
    }
}

/// Idle keep-alive connections to one server: a stack per proxy thread. A connection is
/// registered with the reactor of the runtime (thread) that made it; used from another
/// thread's runtime, every wait on it would cost a cross-thread wake-up.
#[derive(Debug, Default)]
pub struct Pool {
    shards: [Mutex<Vec<UpConn>>; POOL_SHARDS],
}

impl Pool {
    /// The calling thread's stack.
    fn mine(&self) -> &Mutex<Vec<UpConn>> {
        &self.shards[shard()]
    }

    /// The most recently idled connection of this thread's stack that is still usable at
    /// `now`; the unusable ones found on the way are dropped.
    pub(crate) fn take(&self, now: Instant) -> Option<UpConn> {
        loop {
            let c = self.mine().lock().expect("pool lock").pop();
            match c {
                Some(c) if c.usable(now) => return Some(c),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Puts a connection back on this thread's stack, idle from `now`.
    pub(crate) fn put(&self, mut c: UpConn, now: Instant) {
        c.idle_since = now;
        let mut pool = self.mine().lock().expect("pool lock");
        // The pool is a stack: connections at its bottom may wait long; drop the expired.
        while pool
            .first()
            .is_some_and(|o| now.saturating_duration_since(o.idle_since) > POOL_IDLE_MAX)
        {
            pool.remove(0);
        }
        if pool.len() < POOL_MAX {
            pool.push(c);
        }
    }

    /// Drops every idle connection, on every thread's stack.
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().expect("pool lock").clear();
        }
    }
}

/// This thread's pool stack, fixed at its first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % POOL_SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_pool_stack() {
        let here = shard();
        assert_eq!(shard(), here, "a thread keeps its stack");
        let others: Vec<usize> = (0..3)
            .map(|_| std::thread::spawn(shard).join().unwrap())
            .collect();
        assert!(!others.contains(&here), "{here} {others:?}");
        assert!(others[0] != others[1] && others[1] != others[2]);
        let p = Pool::default();
        assert!(std::ptr::eq(p.mine(), p.mine()));
    }
}
