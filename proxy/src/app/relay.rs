//! Reads and writes with progress deadlines (an operation that has to wait must progress
//! within its limit), and the body relay ([`pump`]) that copies a framed body from one side
//! to the other. Plain I/O on any `AsyncRead`/`AsyncWrite`: no HTTP decisions here.

use bytes::{Buf, BytesMut};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::h1::Framing;

/// Polls `op` until it is ready; once it has had to wait, it must be ready within `limit`
/// (the timer is armed only then: an operation ready at once costs no timer work).
async fn within<T>(
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    what: &str,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    let mut armed = false;
    poll_fn(|cx| {
        if let Poll::Ready(r) = op(cx) {
            return Poll::Ready(r);
        }
        if !armed {
            timer.as_mut().reset(Instant::now() + limit);
            armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what}: no progress within {} ms", limit.as_millis()),
            )));
        }
        Poll::Pending
    })
    .await
}

/// Writes all of `data`; each write that has to wait must progress within `limit`.
pub(super) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<()> {
    write_all_counted(w, data, timer, limit, &mut 0).await
}

/// [`write_all`], counting in `written` the bytes that went out.
pub(super) async fn write_all_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    written: &mut usize,
) -> io::Result<()> {
    while !data.is_empty() {
        let n = within(timer, limit, "write", |cx| {
            Pin::new(&mut *w).poll_write(cx, data)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n;
        data = &data[n..];
    }
    Ok(())
}

pub(super) async fn flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<()> {
    within(timer, limit, "flush", |cx| Pin::new(&mut *w).poll_flush(cx)).await
}

/// Reads more into `buf`; a read that has to wait must complete within `limit`. 0: EOF.
pub(super) async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
    let mut read = pin!(r.read_buf(buf));
    within(timer, limit, "read", |cx| read.as_mut().poll(cx)).await
}

/// Where a body copy failed.
pub(super) enum PumpErr {
    /// Reading its source (or the source ended early).
    Src(io::Error),
    /// Writing its destination.
    Dst(io::Error),
    /// Its chunked framing is malformed.
    Bad(&'static str),
}

/// Copies a body from `src` to `dst` as `f` frames it, starting with what `sbuf` holds;
/// bytes past its end stay in `sbuf`.
pub(super) async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    src: &mut R,
    sbuf: &mut BytesMut,
    f: &mut Framing,
    dst: &mut W,
    src_timer: &mut Pin<Box<Sleep>>,
    dst_timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> Result<(), PumpErr> {
    loop {
        if !sbuf.is_empty() {
            let take = f.advance(sbuf).map_err(|b| PumpErr::Bad(b.0))?;
            write_all(dst, &sbuf[..take], dst_timer, limit)
                .await
                .map_err(PumpErr::Dst)?;
            sbuf.advance(take);
        }
        if f.done() {
            return Ok(());
        }
        match read_within(src, sbuf, src_timer, limit).await {
            Ok(0) if matches!(f, Framing::UntilClose) => {
                *f = Framing::Done;
                return Ok(());
            }
            Ok(0) => {
                return Err(PumpErr::Src(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the body ended early",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(PumpErr::Src(e)),
        }
    }
}
