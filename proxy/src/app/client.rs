//! The client side of a connection: its state ([`Client`]: the socket, the read buffer,
//! the deadlines, the shutdown signal), reading the next request head within the keep-alive
//! and header timeouts, and the refusals of a head (431, 400) before anything is forwarded.
//! It does not rewrite heads ([`super::rewrite`]) or talk to servers ([`super`]).

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::Balancer;
use super::rewrite::ReqId;
use crate::h1::{self, BodyKind};
use crate::{LINGER, LINGER_BYTES};

/// What the rest of an exchange needs to know of its request.
pub(super) struct ReqInfo {
    pub(super) body: BodyKind,
    /// HEAD: the answer has no body whatever it announces.
    pub(super) head_only: bool,
    pub(super) idempotent: bool,
    /// The client keeps the connection after this exchange (HTTP/1.1, no `close`).
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
    pub(super) expect_continue: bool,
    /// It asks for a protocol upgrade that is carried, to WebSocket (`Upgrade: websocket`
    /// goes to the server, whose `101` switching to it opens a tunnel):
    /// [`h1::ConnectionHeader::carries_upgrade`].
    pub(super) upgrade: bool,
    pub(super) id: ReqId,
}

/// Where a client connection comes from, as the forwarding headers tell it.
pub(super) struct Peer {
    /// The client's address as `X-Forwarded-For` gets it.
    pub(super) ip: Option<String>,
    pub(super) proto: &'static str,
    /// The port it connected to.
    pub(super) port: Option<String>,
}

/// The 431 message of a head with too many headers (the server's edge says the same).
fn too_many_headers() -> String {
    format!(
        "more than {} request headers (besides X-Forwarded-For/-Proto/-Port and X-Request-Id)",
        h1::MAX_HEADERS
    )
}

/// Why a request head is not forwarded.
pub(super) enum Stop {
    /// Close without an answer: the client left, idled out, or trickled its head past the
    /// deadline (slowloris); or the process is stopping and the connection is idle.
    Quiet,
    /// Answer with this status and message, then close.
    Answer(u16, String),
}

/// A client connection and its per-connection state.
pub(super) struct Client {
    pub(super) io: Stream,
    pub(super) buf: BytesMut,
    /// Deadlines of reads and writes on the client side.
    pub(super) timer: Pin<Box<Sleep>>,
    /// Deadlines of reads and writes on the server side.
    pub(super) up_timer: Pin<Box<Sleep>>,
    /// Resolves when the process starts stopping.
    pub(super) shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub(super) closing: bool,
    pub(super) peer: Peer,
}

enum Wait {
    Read,
    Eof,
    Timeout,
    Shutdown,
    Failed,
}

impl Client {
    /// Reads more of the client's bytes, until the timer; while `idle` (no byte of the next
    /// request yet), a stopping process ends the wait.
    async fn read_more(&mut self, idle: bool) -> Wait {
        if idle && self.closing {
            return Wait::Shutdown;
        }
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        let Client {
            io,
            buf,
            timer,
            shutdown,
            closing,
            ..
        } = self;
        let mut read = pin!(io.read_buf(buf));
        poll_fn(|cx| {
            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                return Poll::Ready(match r {
                    Ok(0) => Wait::Eof,
                    Ok(_) => Wait::Read,
                    Err(_) => Wait::Failed,
                });
            }
            if idle && !*closing && shutdown.as_mut().poll(cx).is_ready() {
                *closing = true;
                return Poll::Ready(Wait::Shutdown);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::Timeout);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends FIN (TLS: close_notify), then drains what the client still sends for a moment
    /// so that an answer it has not read yet is not lost to a reset.
    pub(super) async fn linger(&mut self) {
        let end = Instant::now() + LINGER;
        let _ = tokio::time::timeout_at(end, self.io.shutdown()).await;
        // On the heap, and only now: an array here would be part of every connection's
        // future, for its whole life (a tunnel's too), not just of one that lingers.
        let mut sink = vec![0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tokio::time::timeout_at(end, self.io.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left -= n.min(left),
                _ => break,
            }
        }
    }
}

impl Balancer {
    /// Reads the next request head and writes its rewritten form into `out`; the head's
    /// bytes leave the client buffer.
    pub(super) async fn read_request(
        &self,
        c: &mut Client,
        out: &mut Vec<u8>,
        first: bool,
    ) -> Result<ReqInfo, Stop> {
        let lim = &self.limits;
        let mut idle = c.buf.is_empty();
        if !first {
            let wait = if idle {
                lim.keepalive_timeout
            } else {
                lim.header_timeout
            };
            c.timer.as_mut().reset(Instant::now() + wait);
        }
        // Bytes of the buffer known not to end the head: a head trickled in is parsed once
        // its end may be there, not once per read.
        let mut scanned = 0;
        loop {
            if !c.buf.is_empty() {
                if h1::may_end_head(&c.buf, &mut scanned) {
                    let mut hs = [const { MaybeUninit::<httparse::Header>::uninit() };
                        h1::MAX_HEADER_FIELDS];
                    let mut r = httparse::Request::new(&mut []);
                    match r.parse_with_uninit_headers(&c.buf, &mut hs) {
                        Ok(httparse::Status::Complete(n)) => {
                            if n > lim.max_header_bytes {
                                return Err(self.too_large(n));
                            }
                            if h1::too_many_headers(r.headers) {
                                self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
                                return Err(Stop::Answer(431, too_many_headers()));
                            }
                            let info = self.rewrite_request(&r, &c.peer, out)?;
                            c.buf.advance(n);
                            return Ok(info);
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(httparse::Error::TooManyHeaders) => {
                            self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
                            return Err(Stop::Answer(431, too_many_headers()));
                        }
                        Err(e) => {
                            self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
                            return Err(Stop::Answer(400, format!("malformed request head: {e}")));
                        }
                    }
                }
                if c.buf.len() > lim.max_header_bytes {
                    return Err(self.too_large(c.buf.len()));
                }
                if idle {
                    // The head has started: it must be complete within the header timeout
                    // (the first request's deadline already runs from accept).
                    idle = false;
                    if !first {
                        c.timer.as_mut().reset(Instant::now() + lim.header_timeout);
                    }
                }
            }
            // A new connection's first request is served even if the process started
            // stopping since accept: closing it quietly would fail a client that did
            // nothing wrong.
            match c.read_more(idle && !first).await {
                Wait::Read => {}
                Wait::Eof | Wait::Timeout | Wait::Shutdown | Wait::Failed => {
                    return Err(Stop::Quiet);
                }
            }
        }
    }

    fn too_large(&self, size: usize) -> Stop {
        self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
        Stop::Answer(
            431,
            format!(
                "request head of {size}+ bytes exceeds the limit of {} bytes",
                self.limits.max_header_bytes
            ),
        )
    }
}
