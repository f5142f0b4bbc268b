//! The tunnel of an upgraded connection (a WebSocket, after the server's `101 Switching
//! Protocols`): bytes copied both ways between the client and the server as they come,
//! in the connection's own task (no second task, no channel), until both directions have
//! ended or the tunnel has been idle for its timeout.
//!
//! A direction ends when its source ends (EOF: a FIN, or TLS's close_notify): what was read
//! is written, then the destination's write side is shut down, so the end is passed on as
//! the peer's end, and the other direction goes on until its own source ends (half-close).
//! A failed read or write on either side ends both. The idle timeout counts from the last
//! byte that moved either way; a peer that reads nothing, so that a write waits, makes no
//! progress either.
//!
//! Memory: many WebSockets sit idle behind a proxy, so an idle tunnel holds no copy
//! buffer. Each direction reads into a buffer on the stack and writes from it at once; only
//! what a destination does not take then (it waits, or takes part) is kept, in an
//! allocation of its own size, freed once written. A tunnel's own state is then a few
//! hundred bytes besides its sockets.
//!
//! Plain I/O on any `AsyncRead`/`AsyncWrite` (a client's TCP or TLS stream, a server's
//! TCP stream): no HTTP here; the switch is decided in [`super`].

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The most one read takes (on the stack, for the moment it is written on).
const READ: usize = 16 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub(super) enum End {
    /// Both sides ended their sending (each end passed on to the other side).
    Closed,
    /// No byte moved either way within the idle timeout.
    Idle,
    /// A read or write failed (a reset, say); both sides are dropped.
    Failed(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("both sides ended"),
            End::Idle => f.write_str("idle for tunnel_idle_timeout_ms"),
            End::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A tunnel's end and the bytes it moved.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) end: End,
    /// Bytes from the client to the server (those read before the switch included).
    pub(super) up: u64,
    /// Bytes from the server to the client.
    pub(super) down: u64,
}

/// One direction.
struct Half {
    /// Bytes read and not yet written, from `at` on: what the destination did not take when
    /// they were read. Empty, holding no memory, once they are written.
    pending: Vec<u8>,
    at: usize,
    /// The source ended.
    eof: bool,
    /// Bytes were written since the destination's last flush (a TLS layer may hold them).
    unflushed: bool,
    /// The end was passed on: the destination's write side is shut down.
    done: bool,
    moved: u64,
}

/// One write of `data` to `dst` (a write of nothing from a non-empty buffer is an error).
fn poll_write_some<W>(cx: &mut Context<'_>, dst: &mut W, data: &[u8]) -> Poll<io::Result<usize>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    match ready!(Pin::new(&mut *dst).poll_write(cx, data)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        r => Poll::Ready(r),
    }
}

impl Half {
    /// A direction whose first bytes to write are `pending`.
    fn new(pending: Vec<u8>) -> Half {
        Half {
            pending,
            at: 0,
            eof: false,
            unflushed: false,
            done: false,
            moved: 0,
        }
    }

    fn wrote(&mut self, n: usize, moved: &mut bool) {
        self.moved += n as u64;
        self.unflushed = true;
        *moved = true;
    }

    /// Moves what can be moved now from `src` to `dst`. `Ready(Ok)`: this direction is
    /// over; `Pending`: it waits for either side; `Ready(Err)`: a side failed. `moved` is
    /// set when a byte was read or written.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.at < self.pending.len() {
                let n = ready!(poll_write_some(cx, dst, &self.pending[self.at..]))?;
                self.at += n;
                self.wrote(n, moved);
                continue;
            }
            if self.at > 0 {
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.eof {
                // The source's end becomes the destination's (a shutdown flushes first).
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut space = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut space);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let data = rb.filled();
                    if data.is_empty() {
                        self.eof = true;
                        continue;
                    }
                    *moved = true;
                    // Written from here while the destination takes it; the rest is kept.
                    let mut at = 0;
                    while at < data.len() {
                        match poll_write_some(cx, dst, &data[at..]) {
                            Poll::Ready(Ok(n)) => {
                                at += n;
                                self.wrote(n, moved);
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {
                                self.pending = data[at..].to_vec();
                                return Poll::Pending;
                            }
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to send for now: out with what a TLS layer still holds.
                    if self.unflushed && Pin::new(&mut *dst).poll_flush(cx)?.is_ready() {
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Whether the idle timer says the tunnel has been idle for `idle` since `last` (the last
/// byte that moved). The timer is moved only when it fires, not at every byte: it then
/// waits for what is left of the idle time since `last`. Whether the time is up is decided
/// by the deadline that fired, never by a clock read before the timer was polled: such a
/// reading may be older than the deadline (the timer fires on another thread meanwhile), and
/// then a deadline already past would be set again, and fire again, forever.
fn idle_expired(
    mut timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
    last: Instant,
    idle: Duration,
) -> bool {
    while timer.as_mut().poll(cx).is_ready() {
        if last + idle <= timer.deadline() {
            return true;
        }
        timer.as_mut().reset(last + idle);
    }
    false
}

/// Copies bytes both ways between `client` and `server` until both directions have ended,
/// one side failed, or nothing moved for `idle`. `early`: what the client sent behind its
/// request head before the switch, which goes to the server first.
pub(super) async fn run<C, S>(
    client: &mut C,
    early: Vec<u8>,
    server: &mut S,
    idle: Duration,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Half::new(early);
    let mut down = Half::new(Vec::new());
    let mut last = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(last + idle));
    // Which direction goes first alternates, so that one that always has bytes ready does not
    // keep the other waiting (the runtime's budget ends a poll after so many reads).
    let mut up_first = false;
    let end = poll_fn(|cx| {
        let mut moved = false;
        up_first = !up_first;
        let (u, d) = if up_first {
            let u = up.poll(cx, client, server, &mut moved);
            (u, down.poll(cx, server, client, &mut moved))
        } else {
            let d = down.poll(cx, server, client, &mut moved);
            (up.poll(cx, client, server, &mut moved), d)
        };
        match (u, d) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(End::Failed(e));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        if moved {
            last = Instant::now();
        }
        if idle_expired(timer.as_mut(), cx, last, idle) {
            return Poll::Ready(End::Idle);
        }
        Poll::Pending
    })
    .await;
    Outcome {
        end,
        up: up.moved,
        down: down.moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// A tunnel between the far ends of two in-memory pipes, run in a task of its own;
    /// returns (the client's end, the server's end, the tunnel's outcome).
    fn tunnel(
        early: &'static [u8],
        idle: Duration,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Outcome>) {
        let (client, mut c) = duplex(64);
        let (server, mut s) = duplex(64);
        let t = tokio::spawn(async move { run(&mut c, early.to_vec(), &mut s, idle).await });
        (client, server, t)
    }

    async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        s.read_exact(&mut b).await.unwrap();
        b
    }

    #[tokio::test]
    async fn bytes_go_both_ways_the_early_ones_first() {
        let (mut client, mut server, t) = tunnel(b"early", Duration::from_secs(30));
        client.write_all(b" then more").await.unwrap();
        assert_eq!(read_n(&mut server, 15).await, b"early then more");
        // More than the pipes and the tunnel's buffers hold at once, both ways together.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (b1, b2) = (big.clone(), big.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let w1 = tokio::spawn(async move { cw.write_all(&b1).await.map(|_| cw) });
        let w2 = tokio::spawn(async move { sw.write_all(&b2).await.map(|_| sw) });
        let mut got_s = vec![0; big.len()];
        let mut got_c = vec![0; big.len()];
        let (a, b) = tokio::join!(sr.read_exact(&mut got_s), cr.read_exact(&mut got_c));
        a.unwrap();
        b.unwrap();
        assert!(got_s == big && got_c == big);
        let mut cw = w1.await.unwrap().unwrap();
        let mut sw = w2.await.unwrap().unwrap();
        cw.shutdown().await.unwrap();
        sw.shutdown().await.unwrap();
        let o = t.await.unwrap();
        assert!(matches!(o.end, End::Closed), "{o:?}");
        assert_eq!((o.up, o.down), (15 + 200_000, 200_000));
    }

    #[tokio::test]
    async fn an_end_is_passed_on_and_the_other_direction_goes_on() {
        let (mut client, mut server, t) = tunnel(b"", Duration::from_secs(30));
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_n(&mut server, 10).await, b"last words");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the client's end reaches the server");
        // The server still answers after the client's end, then ends too.
        server.write_all(b"a reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"a reply");
        assert!(matches!(t.await.unwrap().end, End::Closed));
    }

    #[tokio::test]
    async fn a_failed_side_ends_both() {
        let (client, mut server, t) = tunnel(b"", Duration::from_secs(30));
        drop(client);
        // The client's pipe is gone: writing to it fails, which ends the tunnel.
        server.write_all(b"x").await.unwrap();
        let o = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("the tunnel ends")
            .unwrap();
        assert!(matches!(o.end, End::Failed(_)), "{o:?}");
        // The client's end was passed on to the server before that.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn the_idle_timeout_counts_from_the_last_byte_either_way() {
        let idle = Duration::from_millis(600);
        let (mut client, mut server, t) = tunnel(b"", idle);
        let start = std::time::Instant::now();
        // A byte every 400 ms, the direction alternating: each direction alone is idle
        // longer than the timeout, the tunnel never is.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if i % 2 == 0 {
                client.write_all(b"u").await.unwrap();
                assert_eq!(read_n(&mut server, 1).await, b"u");
            } else {
                server.write_all(b"d").await.unwrap();
                assert_eq!(read_n(&mut client, 1).await, b"d");
            }
        }
        assert!(!t.is_finished(), "ended while bytes moved");
        let o = t.await.unwrap();
        assert!(matches!(o.end, End::Idle), "{o:?}");
        assert!(start.elapsed() >= Duration::from_millis(8 * 400 + 600));
        assert_eq!((o.up, o.down), (4, 4));
    }

    #[tokio::test]
    async fn a_copy_buffer_is_held_only_while_a_destination_waits() {
        let (mut from, mut src) = duplex(64 * 1024);
        // A destination that takes 16 bytes at a time.
        let (mut dst, mut to) = duplex(16);
        let mut h = Half::new(Vec::new());
        let mut moved = false;
        let mut step = |h: &mut Half| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(h.poll(&mut cx, &mut src, &mut dst, &mut moved).is_pending());
        };
        step(&mut h);
        assert_eq!(h.pending.capacity(), 0, "nothing read, nothing held");
        from.write_all(&[7u8; 100]).await.unwrap();
        step(&mut h);
        assert_eq!(
            h.pending.len() - h.at,
            84,
            "what the destination did not take is kept"
        );
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(read_n(&mut to, 16.min(100 - got.len())).await);
            step(&mut h);
        }
        assert_eq!(got, [7u8; 100]);
        assert_eq!(h.pending.capacity(), 0, "released once written");
        assert_eq!(h.moved, 100);
    }

    #[tokio::test]
    async fn idleness_is_decided_by_the_deadline_that_fired() {
        let idle = Duration::from_millis(20);
        let start = Instant::now();
        let mut timer = pin!(tokio::time::sleep_until(start + idle));
        // A byte moved 10 ms in; the clock is then past both the deadline armed (20 ms) and
        // the one due since (30 ms): the tunnel is idle, and the check ends rather than
        // setting a past deadline again and again.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let last = start + Duration::from_millis(10);
        let expired = poll_fn(|cx| {
            if idle_expired(timer.as_mut(), cx, last, idle) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(5), expired)
            .await
            .expect("idle 50 ms past a 20 ms timeout");
        assert_eq!(timer.deadline(), last + idle);
        // A byte just moved: not idle, and the timer waits for the rest of the idle time.
        let last = Instant::now();
        let idle = Duration::from_secs(30);
        let expired = poll_fn(|cx| Poll::Ready(idle_expired(timer.as_mut(), cx, last, idle))).await;
        assert!(!expired);
        assert_eq!(timer.deadline(), last + idle);
    }
}
