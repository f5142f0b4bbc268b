//! Connection timeouts: a whole request head must arrive within `header_read_timeout`
//! (slowloris guard), and a keep-alive connection idle for `keepalive_timeout` closes.
//!
//! Bounding each *read* is not enough: a client that trickles one header byte every few
//! seconds would hold a connection forever. [`Guarded`] wraps every accepted stream and
//! watches the bytes it reads: from the first byte of a request head (or from accept, for the
//! first request) until the blank line that ends it, a deadline runs; past it, reads fail
//! with `TimedOut` and the connection closes. Once an answer goes out the connection is idle
//! until the next request's first byte; it closes after `keepalive_timeout` of no I/O while
//! no request of it is active.

use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head, which must end by the deadline.
    Head,
    /// The head is in: body and response.
    Body,
    /// A response went out; the next request has not started.
    Idle,
}

/// A stream whose request heads must arrive in time and whose idle time is bounded.

#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    phase: Phase,
    /// End of the current request head's time.
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// How much of "\r\n\r\n" the last bytes read matched.
    matched: u8,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    /// The last read or write.
    last_io: Instant,
    /// Requests of this connection still being answered (kept by the HTTP layer).
    active: Arc<AtomicU32>,
}

impl Guarded {
    pub fn new(
        inner: Stream,
        header_timeout: Duration,
        keepalive_timeout: Duration,
        active: Arc<AtomicU32>,
    ) -> Self {
        let now = Instant::now();
        let deadline = now + header_timeout;
        Guarded {
            inner,
            phase: Phase::Head,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            matched: 0,
            header_timeout,
            keepalive_timeout,
            last_io: now,
            active,
        }
    }

    fn idle_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "keep-alive connection idle for {} ms",
                self.keepalive_timeout.as_millis()
            ),
        )
    }

    /// The deadline the current phase runs against, if any.
    fn current_deadline(&mut self, now: Instant) -> Option<Instant> {
        match self.phase {
            Phase::Head => Some(self.deadline),
            Phase::Body => None,
            Phase::Idle => {
                if self.active.load(Ordering::Relaxed) > 0 {
                    // An answer is still streaming: idle time starts after it.
                    self.last_io = now;
                }
                Some(self.last_io + self.keepalive_timeout)
            }
        }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request head not complete within {} ms",
                self.header_timeout.as_millis()
            ),
        )
    }

    /// Feeds bytes just read to the head/body state machine.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.matched = 0;
            self.deadline = Instant::now() + self.header_timeout;
        }
        if self.phase != Phase::Head {
            return;
        }
        if scan_head_end(&mut self.matched, bytes) {
            self.phase = Phase::Body;
        }
    }
}

/// Advances the "\r\n\r\n" matcher over `bytes`; true once the blank line ending a request
/// head is seen (the match may span reads).
fn scan_head_end(matched: &mut u8, bytes: &[u8]) -> bool {
    const END: &[u8; 4] = b"\r\n\r\n";
    for &b in bytes {
        if b == END[*matched as usize] {
            *matched += 1;
            if *matched == 4 {
                return true;
            }
        } else {
            *matched = u8::from(b == b'\r');
        }
    }
    false
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Head && Instant::now() >= this.deadline {
                    return Poll::Ready(Err(this.timed_out()));
                }
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                let now = Instant::now();
                let Some(deadline) = this.current_deadline(now) else {
                    return Poll::Pending;
                };
                if now >= deadline {
                    let e = if this.phase == Phase::Head {
                        this.timed_out()
                    } else {
                        this.idle_out()
                    };
                    return Poll::Ready(Err(e));
                }
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The timer fired: re-evaluate (an answer may still be streaming).
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.phase != Phase::Head {
            // An answer going out: the idle time starts after its last write.
            self.phase = Phase::Idle;
            self.last_io = Instant::now();
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.phase != Phase::Head {
            // An answer going out: the idle time starts after its last write.
            self.phase = Phase::Idle;
            self.last_io = Instant::now();
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(timeout: Duration) -> (Guarded, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        (
            Guarded::new(stream, timeout, timeout * 3, Arc::new(AtomicU32::new(0))),
            client,
        )
    }

    #[tokio::test]
    async fn a_trickled_head_times_out() {
        let (mut g, mut c) = pair(Duration::from_millis(300)).await;
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\n" {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c
        });
        let mut buf = [0u8; 64];
        let err = loop {
            match g.read(&mut buf).await {
                Ok(0) => panic!("eof before the deadline"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        writer.abort();
    }

    #[tokio::test]
    async fn complete_heads_and_idle_keepalive_are_not_cut() {
        let (mut g, mut c) = pair(Duration::from_millis(200)).await;
        let mut buf = [0u8; 256];
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(g.phase, Phase::Body);
        g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(g.phase, Phase::Idle);
        // Idle for longer than the header timeout (not the keep-alive one): the next
        // request is still read.
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(g.phase, Phase::Head);
        c.write_all(b"Host: x\r\n\r\n").await.unwrap();
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Body);
    }

    #[tokio::test]
    async fn an_idle_keepalive_connection_closes_unless_an_answer_is_active() {
        let (mut g, mut c) = pair(Duration::from_millis(100)).await;
        let active = g.active.clone();
        let mut buf = [0u8; 256];
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(g.read(&mut buf).await.unwrap() > 0);
        active.fetch_add(1, Ordering::Relaxed);
        g.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        // While the answer is active, idling past the keep-alive timeout (300 ms) is fine.
        let r = tokio::time::timeout(Duration::from_millis(700), g.read(&mut buf)).await;
        assert!(r.is_err(), "no error while an answer is active: {r:?}");
        active.fetch_sub(1, Ordering::Relaxed);
        let err = tokio::time::timeout(Duration::from_secs(30), g.read(&mut buf))
            .await
            .expect("the idle connection is closed")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let mut m = 0u8;
        assert!(!scan_head_end(&mut m, b"GET / HTTP/1.1\r\nA: b\r"));
        assert!(!scan_head_end(&mut m, b"\n\r"));
        assert!(scan_head_end(&mut m, b"\n"));
        let mut m = 0u8;
        assert!(!scan_head_end(&mut m, b"a\r\r\n\rx\n\r\n"));
        assert!(scan_head_end(&mut m, b"\r\n\r\n"));
    }
}
