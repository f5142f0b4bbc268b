//! The HTTP edge's connections below hyper: binding the listener (or taking systemd's),
//! the tracked stream that times a request head and applies the [`HeadGate`], each
//! connection's activity, and the count of open connections shutdown waits on. Only I/O: it
//! knows no routing, no workers and no config store; `edge::http` drives it.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::edge::head_gate::{HeadGate, Refusal};

/// Binds the HTTP listener with SO_REUSEADDR and a deep backlog.
/// The HTTP listener systemd passed to this process (socket activation, `sd_listen_fds(3)`:
/// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`): the socket named `http`, else the first.
/// `None` when none was passed, or when `LISTEN_PID` names another process.
pub fn activated() -> std::io::Result<Option<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let index = names.split(':').position(|n| n == "http").unwrap_or(0);
    match fds.take_tcp_listener(index)? {
        Some(l) => {
            l.set_nonblocking(true)?;
            Ok(Some(TcpListener::from_std(l)?))
        }
        None => Ok(None),
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Activity of one connection, shared by its I/O wrapper, its requests and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    pub(super) epoch: Instant,
    /// Requests being handled on this connection.
    pub(super) active: AtomicU32,
    /// When bytes of a request head started arriving (ms since epoch + 1; 0 = none).
    pub(super) head_started: AtomicU64,
    /// When the connection last became idle (ms since epoch).
    pub(super) idle_since: AtomicU64,
    /// Requests hyper dispatched so far on this connection.
    pub(super) dispatched: AtomicU64,
    /// The index of the stand-in request hyper dispatches in place of a head the
    /// [`HeadGate`] refused (`u64::MAX`: none), read without a lock on every request...
    pub(super) refused_at: AtomicU64,
    /// ...and why it was refused.
    pub(super) refused: std::sync::Mutex<Option<Refusal>>,
}

impl Activity {
    pub(super) fn now(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `t` as this connection's clock counts (milliseconds since its epoch, plus 1).
    pub(super) fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

/// A TCP stream that notes when request bytes arrive while no request is in progress, and
/// hands hyper only what the connection's [`HeadGate`] let through.
pub(super) struct Tracked {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
    pub(super) gate: HeadGate,
    /// Bytes the gate let through that hyper has not read yet (a head that came in pieces,
    /// or the stand-in of a refused one).
    pub(super) out: BytesMut,
    /// Bytes read and dropped after a refusal (at most [`oxbus_proxy::LINGER_BYTES`]).
    pub(super) drained: usize,
    /// Whether the writing side was shut down (on the way to a lingering close).
    pub(super) write_shut: bool,
    /// The end of the lingering close after a refusal.
    pub(super) linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                bytes::Buf::advance(&mut this.out, n);
                return Poll::Ready(Ok(()));
            }
            if this.gate.cut() {
                // A chunked body the proxy's rules refuse: hyper reads the end of the stream
                // (its body read fails and the request is answered 400), and nothing after
                // it is parsed.
                return Poll::Ready(Ok(()));
            }
            if this.gate.refused() {
                // Nothing after a refused head reaches hyper; it answers the stand-in (which
                // asks for a close) and ends the connection. What the client still sends
                // is read and dropped (up to a bound) so that it does not sit unread and
                // turn the close into a reset that could destroy the answer.
                let _ = this.drain(cx);
                return Poll::Pending;
            }
            // Read straight into hyper's buffer; the gate says how much of it hyper may
            // have as it is (usually all), and keeps or replaces the rest.
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let got = &buf.filled()[before..];
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let a = &this.activity;
            if a.active.load(Ordering::Relaxed) == 0 && a.head_started.load(Ordering::Relaxed) == 0
            {
                a.head_started.store(a.now(), Ordering::Relaxed);
            }
            let (pass, refused) = this.gate.feed_in_place(got, &mut this.out);
            buf.set_filled(before + pass);
            if let Some((index, refused)) = refused {
                this.out.extend_from_slice(HeadGate::stand_in());
                *a.refused.lock().expect("refusal lock") = Some(refused);
                a.refused_at.store(index, Ordering::Release);
            }
            if pass > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Tracked {
    /// Reads and drops what the client sends, until it would block (the waker is then
    /// registered), ends, or [`oxbus_proxy::LINGER_BYTES`] were dropped.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sink = [0u8; 4096];
        while self.drained < oxbus_proxy::LINGER_BYTES {
            let mut b = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut b) {
                Poll::Ready(Ok(())) if !b.filled().is_empty() => {
                    self.drained += b.filled().len();
                }
                Poll::Pending => return Poll::Pending,
                _ => break,
            }
        }
        Poll::Ready(())
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !(this.gate.refused() || this.gate.cut()) {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        }
        // The connection ends on a refusal, with what the client sent after it perhaps
        // unread: as the proxy does, end the writing side first, then read and drop what
        // still comes for a while (bounded in time and bytes), so that the close does not
        // reset the connection before the client read its answer.
        if !this.write_shut {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.write_shut = true;
        }
        let deadline = this
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(oxbus_proxy::LINGER)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        this.drain(cx).map(Ok)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks a request in progress on a connection until dropped (or ended with
/// [`InRequest::end_at`]).
pub(super) struct InRequest(Arc<Activity>, Option<Instant>);

impl InRequest {
    pub(super) fn start(a: &Arc<Activity>) -> InRequest {
        a.active.fetch_add(1, Ordering::Relaxed);
        a.head_started.store(0, Ordering::Relaxed);
        InRequest(a.clone(), None)
    }

    /// Ends the request at `now`, a clock reading the caller already has.
    pub(super) fn end_at(mut self, now: Instant) {
        self.1 = Some(now);
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        let a = &self.0;
        let now = match self.1 {
            Some(t) => a.ms_at(t),
            None => a.now(),
        };
        a.idle_since.store(now, Ordering::Relaxed);
        a.head_started.store(0, Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts open connections so that shutdown can wait for the last one.
#[derive(Debug, Default)]
pub(super) struct ConnCount {
    pub(super) n: AtomicUsize,
    pub(super) zero: Notify,
}

pub(super) struct ConnGuard(pub(super) Arc<ConnCount>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}
