//! Authentication after the upgrade: a client of a channel with `first_message_auth` that
//! opened it without a credential, and every client of a `zato` channel, authenticates with
//! a message (its first, or Zato's `create-session`). The check itself is the edge's (the
//! channel's security definition, compiled there): it is handed over as an [`Admit`].
//!
//! Until a client is admitted it gets no pushes, calls no service and may make the server
//! read at most [`UNADMITTED_BYTES`] from its socket ([`Budget`]): an anonymous client
//! costs a few KiB for `auth_timeout_ms` at most.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Who;

/// What a client sent to authenticate.
pub enum Credential {
    /// A user name and password (Basic definitions).
    Basic { username: String, password: String },
    /// A single secret: a JWT (JWT definitions) or an API key (API key definitions).
    Secret(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            Credential::Secret(_) => f.write_str("Secret(..)"),
        }
    }
}

/// The channel's security definition, as a check of a credential sent in a message.
#[async_trait::async_trait]
pub trait Admit: Send + Sync + std::fmt::Debug + 'static {
    /// Who the credential lets in, or why not (for the log; the client is told only that
    /// it was refused).
    async fn admit(&self, credential: Credential) -> Result<Who, String>;
}

/// A shared handle to an [`Admit`].
pub type AdmitRef = Arc<dyn Admit>;

/// The most a client that is not admitted yet may make the server read: its credential
/// message (a JWT with many claims fits) and what one read past it may hold.
pub const UNADMITTED_BYTES: usize = 32 * 1024;

/// Reads the credential message of a channel with `first_message_auth`: a JSON object with
/// `username` and `password`, or `token` (a JWT), or `api_key`.
pub fn parse_credential(text: &[u8]) -> Result<Credential, &'static str> {
    const SHAPE: &str = "the first message must authenticate: {\"username\": …, \"password\": …}, {\"token\": …} or {\"api_key\": …}";
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|_| SHAPE)?;
    let o = v.as_object().ok_or(SHAPE)?;
    let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    match (s("username"), s("password"), s("token"), s("api_key")) {
        (Some(username), Some(password), None, None) if o.len() == 2 => {
            Ok(Credential::Basic { username, password })
        }
        (None, None, Some(t), None) | (None, None, None, Some(t)) if o.len() == 1 => {
            Ok(Credential::Secret(t))
        }
        _ => Err(SHAPE),
    }
}

/// A connection whose reads are limited to a budget until the budget is lifted
/// ([`Budget::lift`]): past it a read fails, which ends the session.
pub struct Budget<S> {
    io: S,
    left: Arc<AtomicUsize>,
}

/// Lifts the budget of a [`Budget`] connection.
#[derive(Clone)]
pub struct Lift(Arc<AtomicUsize>);

impl Lift {
    pub fn lift(&self) {
        self.0.store(usize::MAX, Ordering::Release);
    }
}

impl<S> Budget<S> {
    /// `io` with `limit` bytes to read (`None`: unlimited from the start).
    pub fn new(io: S, limit: Option<usize>) -> (Budget<S>, Lift) {
        let left = Arc::new(AtomicUsize::new(limit.unwrap_or(usize::MAX)));
        (
            Budget {
                io,
                left: left.clone(),
            },
            Lift(left),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budget<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let left = self.left.load(Ordering::Acquire);
        if left == usize::MAX {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a client that has not authenticated sent too much",
            )));
        }
        // Read at most what is left, into a part of the caller's buffer.
        let room = buf.remaining().min(left);
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
        let r = Pin::new(&mut self.io).poll_read(cx, &mut part);
        let n = part.filled().len();
        if let Poll::Ready(Ok(())) = r {
            buf.advance(n);
            // The budget may have been lifted meanwhile: only a finite one is charged.
            let _ = self
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                    (l != usize::MAX).then(|| l.saturating_sub(n))
                });
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budget<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn credential_messages() {
        assert!(matches!(
            parse_credential(br#"{"username": "u", "password": "p"}"#),
            Ok(Credential::Basic { username, password }) if username == "u" && password == "p"
        ));
        assert!(
            matches!(parse_credential(br#"{"token": "t"}"#), Ok(Credential::Secret(t)) if t == "t")
        );
        assert!(
            matches!(parse_credential(br#"{"api_key": "k"}"#), Ok(Credential::Secret(t)) if t == "k")
        );
        for bad in [
            &br#"{"username": "u"}"#[..],
            br#"{"token": "t", "x": 1}"#,
            br#"{"token": 5}"#,
            br#"["token"]"#,
            b"token",
            br#"{"username": "u", "password": "p", "token": "t"}"#,
        ] {
            assert!(parse_credential(bad).is_err());
        }
        // No secret in a debug print.
        let c = parse_credential(br#"{"username": "u", "password": "hunter2"}"#).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn the_budget_limits_reads_until_lifted() {
        let data = [7u8; 100];
        let (mut b, lift) = Budget::new(&data[..], Some(30));
        let mut buf = [0u8; 64];
        assert_eq!(b.read(&mut buf).await.unwrap(), 30);
        assert!(b.read(&mut buf).await.is_err());
        lift.lift();
        assert_eq!(b.read(&mut buf).await.unwrap(), 64);
        let (mut open, _) = Budget::new(&data[..], None);
        let mut all = Vec::new();
        open.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 100);
    }
}
