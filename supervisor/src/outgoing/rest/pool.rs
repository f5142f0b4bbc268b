//! A REST connection's own pool of HTTP/1.1 keep-alive connections: a semaphore of
//! `pool_size` slots (a call holds one for its whole duration), the idle connections kept
//! for reuse, and the connecting (TCP with keepalive probes, then TLS with rustls).
//!
//! A connection idle for [`IDLE_MAX`] is not reused: a NAT or load balancer may have
//! forgotten it, and a request written on it would wait for `timeout_ms` unanswered.

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use rustls::pki_types::ServerName;

/// How long a connection may stay idle and still be reused.
pub const IDLE_MAX: Duration = Duration::from_secs(60);
/// TCP keepalive: the first probe after this long without traffic.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);

/// One pooled connection's request side.
pub type Sender = SendRequest<Full<Bytes>>;

/// Where a pool connects to.
pub struct Target {
    /// The host as written (no brackets around an IPv6 address).
    pub host: String,
    pub port: u16,
    /// TLS connector and SNI name, for `https://`.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} refused")]
    Refused(String),
    #[error("connect to {0} timed out after {1} ms")]
    Timeout(String, u64),
    #[error("connect to {0} failed: {1}")]
    Io(String, io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, io::Error),
    #[error("HTTP/1.1 handshake with {0} failed: {1}")]
    Handshake(String, hyper::Error),
}

impl ConnectError {
    /// Whether nothing reached the server (the connect itself was refused).
    pub fn refused(&self) -> bool {
        matches!(self, ConnectError::Refused(_))
    }
}

/// No slot became free within the pool wait.
#[derive(Debug)]
pub struct PoolFull;

/// A plain or TLS TCP stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The pool of one REST connection (or of its OAuth2 token endpoint).
#[derive(Debug)]
pub struct Pool {
    target: Target,
    /// `host:port`, for messages.
    addr: String,
    size: u32,
    slots: Semaphore,
    /// Idle connections and since when each is idle.
    idle: Mutex<Vec<(Sender, Instant)>>,
    waiting: AtomicU32,
    wait: Duration,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(target: Target, size: u32, wait: Duration, connect_timeout: Duration) -> Pool {
        let addr = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        Pool {
            target,
            addr,
            size,
            slots: Semaphore::new(size as usize),
            idle: Mutex::new(Vec::with_capacity(size as usize)),
            waiting: AtomicU32::new(0),
            wait,
            connect_timeout,
        }
    }

    /// A slot: at once when one is free, else within the pool wait, else [`PoolFull`].
    pub async fn slot(&self) -> Result<SemaphorePermit<'_>, PoolFull> {
        if let Ok(p) = self.slots.try_acquire() {
            return Ok(p);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted down however the wait ends (also when the caller's timeout drops it).
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(PoolFull),
        }
    }

    /// An idle connection that is still open and was idle less than [`IDLE_MAX`], if there
    /// is one (older ones are dropped, which closes them).
    pub async fn idle(&self) -> Option<Sender> {
        loop {
            let mut s = {
                let mut idle = self.idle.lock().expect("pool lock");
                idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_MAX);
                idle.pop()?.0
            };
            // The previous answer's end may not have been processed by its task yet.
            if s.ready().await.is_ok() {
                return Some(s);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly for the next call.
    pub fn put_back(&self, s: Sender) {
        if !s.is_closed() {
            self.idle
                .lock()
                .expect("pool lock")
                .push((s, Instant::now()));
        }
    }

    /// A new connection.
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        let addr = &self.addr;
        let ms = self.connect_timeout.as_millis() as u64;
        let connecting = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| match e.kind() {
                    io::ErrorKind::ConnectionRefused => ConnectError::Refused(addr.clone()),
                    _ => ConnectError::Io(addr.clone(), e),
                })?;
            let _ = tcp.set_nodelay(true);
            let _ = socket2::SockRef::from(&tcp)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(KEEPALIVE_TIME));
            match &self.target.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, sni)) => connector
                    .connect(sni.clone(), tcp)
                    .await
                    .map(|t| Stream::Tls(Box::new(t)))
                    .map_err(|e| ConnectError::Tls(addr.clone(), e)),
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(addr.clone(), ms))??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr.clone(), e))?;
        tokio::spawn(async move {
            // Ends when the connection closes or its sender is dropped; an error here is
            // also the pending call's, which reports it.
            let _ = conn.await;
        });
        Ok(sender)
    }

    pub fn in_use(&self) -> u32 {
        self.size
            .saturating_sub(self.slots.available_permits() as u32)
    }

    pub fn idle_count(&self) -> u32 {
        let idle = self.idle.lock().expect("pool lock");
        idle.iter()
            .filter(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_MAX)
            .count() as u32
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
