//! A TCP relay a test controls, to make a broker "go away" without touching the broker (the
//! machine's RabbitMQ, Mosquitto and Redis are shared by every test and never stopped).
//!
//! ```text
//! let relay = Relay::start("127.0.0.1:5672").await;   // point the connection at relay.addr()
//! relay.cut().await;      // every relayed connection is closed, new ones are refused
//! relay.restore().await;  // accepts again, on the same port
//! ```
//!
//! "Refused" is a real `ECONNREFUSED`: while cut, the listening socket is closed, and
//! [`Relay::restore`] binds the same port again (`SO_REUSEADDR`, so connections of the last
//! period in `TIME_WAIT` do not stand in the way). Each relayed connection is a pair of
//! copies in one task; cutting aborts that task, which drops both sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A relay from 127.0.0.1:<port> to one target address; stops (and closes everything) on drop.
pub struct Relay {
    addr: SocketAddr,
    target: String,
    inner: Arc<Inner>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    conns: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
}

impl Relay {
    /// Listen on 127.0.0.1:0 and relay each connection to `target` (host:port).
    pub async fn start(target: &str) -> Relay {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = listener.local_addr().expect("relay local addr");
        let inner = Arc::new(Inner {
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let acceptor = spawn_acceptor(listener, target.to_owned(), inner.clone());
        Relay {
            addr,
            target: target.to_owned(),
            inner,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` of the relay, for a connection URL.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// How many connections the relay accepted so far (a reconnect shows as one more).
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Close every relayed connection and refuse new ones until [`Relay::restore`].
    pub async fn cut(&self) {
        let acceptor = self.acceptor.lock().unwrap().take();
        if let Some(a) = acceptor {
            a.abort();
            // The listener is dropped with the task: wait for that before saying "cut".
            let _ = a.await;
        }
        let conns: Vec<_> = std::mem::take(&mut *self.inner.conns.lock().unwrap());
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    /// Accept again, on the same port.
    pub async fn restore(&self) {
        let mut slot = self.acceptor.lock().unwrap();
        if slot.is_some() {
            return;
        }
        let listener = bind(self.addr);
        *slot = Some(spawn_acceptor(
            listener,
            self.target.clone(),
            self.inner.clone(),
        ));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(a) = self.acceptor.lock().unwrap().take() {
            a.abort();
        }
        for c in self.inner.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("relay socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("relay bind {addr}: {e}"));
    socket.listen(128).expect("relay listen")
}

fn spawn_acceptor(listener: TcpListener, target: String, inner: Arc<Inner>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            inner.accepted.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            let task = tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            let mut conns = inner.conns.lock().unwrap();
            conns.retain(|c| !c.is_finished());
            conns.push(task);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn relays_cuts_refuses_and_restores() {
        let echo = echo_server().await;
        let relay = Relay::start(&echo.to_string()).await;
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c).await.unwrap(), b"ping");

        relay.cut().await;
        // The relayed connection is closed: a read sees EOF or an error.
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the cut connection still delivers bytes");
        let refused = TcpStream::connect(relay.addr()).await;
        assert!(refused.is_err(), "a new connection was accepted while cut");

        relay.restore().await;
        let mut c2 = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c2).await.unwrap(), b"ping");
        assert_eq!(relay.accepted(), 2);
    }
}
