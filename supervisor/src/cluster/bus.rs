//! The cluster bus runtime: one authenticated TCP link between every pair of servers
//! (`ipc-protocol/BUS.md`; the wire and the handshake are `oxbus_ipc::bus`).
//!
//! Runs when the store is PostgreSQL and `cluster.secret_file` is set. Each server listens on
//! `cluster.bus_listen` and records `bus_address` in the store's server list; every second it
//! reads that list and dials each live peer whose name sorts after its own and that it has no
//! link to, with backoff per peer (100 ms doubling to 5 s, jittered); while the store is down
//! it dials from the list the store last gave, or from the peers listed in the snapshot the
//! server booted from, so a server restarted during an outage still links (and replicates its
//! caches) before the store is back. A link carries PING/PONG
//! heartbeats (one per second; silent for 3 s = dead) and NOTIFY: when `sync` applies a new
//! config version it announces it on every link, and a peer that hears of a version it has
//! not applied runs its `sync` at once, so a change reaches the cluster in milliseconds
//! instead of at the next version check.
//! `deploy.activate` / `deploy.remove` calls make a peer catch up at once and answer with its
//! workers' acks, so a deploy's report lists every server. `services.stats` answers with
//! this server's per-service statistics (`metrics::stats`), for the admin API of a peer.
//! The pub/sub broker's ops ride the same links: `pubsub.committed` (ASYNC, to every peer:
//! a committed batch, `pubsub::publish::encode_committed`, applied in the link's own task
//! so that one peer's batches keep their order) and `pubsub.*` calls to one named peer
//! (answered by `pubsub::Broker::peer_call`).

use bytes::BytesMut;
use oxbus_ipc::bus::{
    Acceptor, Dialer, Frame, FrameDecoder, HANDSHAKE_TIMEOUT, HEARTBEAT_INTERVAL, Incoming,
    LINK_TIMEOUT, Link, Nonce, Notify, Role,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::sync::Ctx;
use crate::deploy::PeerReply;

/// One live link.
#[derive(Debug)]
struct LinkHandle {
    id: u64,
    role: Role,
    since: Instant,
    /// Encoded frames for the link's writer.
    tx: LinkTx,
    /// Ids for the calls this server opens on the link.
    streams: Arc<Mutex<oxbus_ipc::bus::StreamIds>>,
    /// Calls waiting for their REPLY: (status, body).
    pending: Pending,
    /// The config version the peer last announced (NOTIFY); -1 before its first.
    peer_version: Arc<std::sync::atomic::AtomicI64>,
}

/// Past this many bytes queued for a link's writer, `pubsub.committed` frames for that
/// link are dropped (a peer that does not read must not grow this server's memory without
/// bound). A dropped GD batch is found as a gap by the peer's delivery tasks, which read it
/// from the store; a dropped non-GD batch is lost for that peer's subscribers.
const COMMITTED_QUEUE_MAX: usize = 64 * 1024 * 1024;

/// The sending side of a link's writer queue, counting the bytes queued (the writer
/// subtracts what it takes).
#[derive(Debug, Clone)]
struct LinkTx {
    tx: mpsc::UnboundedSender<bytes::Bytes>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl LinkTx {
    fn send(&self, b: bytes::Bytes) -> Result<(), mpsc::error::SendError<bytes::Bytes>> {
        let n = b.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.send(b).inspect_err(|_| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        })
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Committed batches dropped for full link queues since the last warning, and when that
/// was (Unix s): one warning per [`DROP_WARN_EVERY_S`] at most.
static COMMITTED_DROPPED: AtomicU64 = AtomicU64::new(0);
static COMMITTED_WARNED_AT: AtomicU64 = AtomicU64::new(0);
const DROP_WARN_EVERY_S: u64 = 10;

fn committed_dropped(peer: &str, queued: usize) {
    let n = COMMITTED_DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = COMMITTED_WARNED_AT.load(Ordering::Relaxed);
    if now >= last + DROP_WARN_EVERY_S
        && COMMITTED_WARNED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        COMMITTED_DROPPED.fetch_sub(n, Ordering::Relaxed);
        warn!(peer = %peer, queued_bytes = queued, dropped_batches = n,
            "bus: the link's writer queue is full: committed pub/sub batches not sent (GD ones \
             reach the peer's subscribers from the store; non-GD ones are lost for them)");
    }
}

/// The calls a link waits on: stream → where its (status, body) goes.
type Pending = Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<(u16, bytes::Bytes)>>>>;

/// A deploy reaches the other servers through the bus.
impl crate::deploy::Peers for Bus {
    fn call_all<'a>(
        &'a self,
        meta: &'a serde_json::Value,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<PeerReply>> + Send + 'a>> {
        Box::pin(Bus::call_all(self, meta, timeout))
    }
}

/// The pub/sub broker reaches the other servers through the bus: committed batches to every
/// linked peer (fire and forget, like `cache.apply`), and calls to one named peer.
#[async_trait::async_trait]
impl crate::pubsub::Peers for Bus {
    fn send_committed(&self, frame: bytes::Bytes) {
        const META: &[u8] = br#"{"op":"pubsub.committed"}"#;
        let links = self.links.lock().expect("links lock");
        for (peer, h) in links.iter() {
            let queued = h.tx.queued();
            if queued + frame.len() > COMMITTED_QUEUE_MAX {
                committed_dropped(peer, queued);
                continue;
            }
            if let Some(out) = async_call(h, META, &frame) {
                let _ = h.tx.send(out);
            } else {
                // The peer finds the gap in the store when the next batch arrives.
                warn!(peer = %peer, bytes = frame.len(), "bus: a committed pub/sub batch does not fit one frame, not sent");
            }
        }
    }

    async fn call(
        &self,
        peer: &str,
        meta: serde_json::Value,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), String> {
        let (rx, pending, stream) = {
            let links = self.links.lock().expect("links lock");
            let h = links
                .get(peer)
                .ok_or_else(|| format!("no bus link to server {peer}"))?;
            let stream = h.streams.lock().expect("streams lock").next_id();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut out = BytesMut::with_capacity(body.len() + 256);
            oxbus_ipc::bus::encode_call(&mut out, 0, stream, &meta, &body)
                .map_err(|e| format!("a call to server {peer}: {e}"))?;
            // Registered under the links lock, as `call_all` does: a link going down
            // drains its pending calls after leaving the map, so this one fails at once.
            h.pending.lock().expect("pending lock").insert(stream, tx);
            if h.tx.send(out.freeze()).is_err() {
                h.pending.lock().expect("pending lock").remove(&stream);
                return Err(format!("the bus link to server {peer} is closing"));
            }
            (rx, h.pending.clone(), stream)
        };
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(format!(
                "the bus link to server {peer} went down before the answer"
            )),
            Err(_) => Err(format!(
                "server {peer} did not answer within {} ms",
                timeout.as_millis()
            )),
        };
        pending.lock().expect("pending lock").remove(&stream);
        answer
    }
}

/// WebSocket pushes reach the clients of other servers through the bus: a broadcast to
/// every linked peer (fire and forget), a send to the one server a client id names.
#[async_trait::async_trait]
impl crate::wsx::Peers for Bus {
    fn broadcast(&self, meta: &serde_json::Value, body: bytes::Bytes) {
        let meta = meta.to_string();
        let links = self.links.lock().expect("links lock");
        for (peer, h) in links.iter() {
            if let Some(out) = async_call(h, meta.as_bytes(), &body) {
                let _ = h.tx.send(out);
            } else {
                warn!(peer = %peer, bytes = body.len(), "bus: a WebSocket broadcast does not fit one frame, not sent");
            }
        }
    }

    async fn call(
        &self,
        peer: &str,
        meta: serde_json::Value,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), String> {
        crate::pubsub::Peers::call(self, peer, meta, body, timeout).await
    }
}

/// An `ASYNC` `CALL` frame of `meta` and `body` on link `h` (its next stream id); `None`
/// when it does not fit one frame.
fn async_call(h: &LinkHandle, meta: &[u8], body: &[u8]) -> Option<bytes::Bytes> {
    let stream = h.streams.lock().expect("streams lock").next_id();
    let mut out = BytesMut::with_capacity(body.len() + meta.len() + 32);
    oxbus_ipc::bus::encode_meta_frame(
        &mut out,
        oxbus_ipc::bus::Kind::Call,
        oxbus_ipc::bus::FLAG_ASYNC,
        stream,
        meta,
        body,
    )
    .ok()
    .map(|()| out.freeze())
}

/// The op a call's meta names, read once per call: `pubsub.*` ops are the broker's and
/// `wsx.*` ops the WebSocket registry's (neither is an `oxbus_ipc::bus::Op`).
fn op_of(meta: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct OpOnly {
        op: String,
    }
    serde_json::from_slice::<OpOnly>(meta).ok().map(|m| m.op)
}

/// The bus of one server.
pub struct Bus {
    key: [u8; 32],
    cluster: String,
    me: String,
    links: Mutex<HashMap<String, LinkHandle>>,
    next_id: AtomicU64,
    /// The servers (name, bus address) as last read from the store, or from the snapshot
    /// this server booted from: what it dials while the store is down.
    known: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// A link as `cluster status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkInfo {
    pub peer: String,
    pub role: &'static str,
    pub up_ms: u64,
}

/// Why the bus cannot start: its secret or this server's name.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The secret file does not read.
    #[error("cannot read the cluster secret {}: {source}", path.display())]
    ReadSecret {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The secret is too short.
    #[error("cluster secret {}: {source}", path.display())]
    Secret {
        path: std::path::PathBuf,
        source: oxbus_ipc::bus::Error,
    },
    /// This server's name is not one the bus carries.
    #[error("{0}")]
    Name(#[source] oxbus_ipc::bus::Error),
}

impl Bus {
    /// Reads the secret file and derives the handshake key; refuses a short secret.
    pub fn new(cluster: &str, me: &str, secret_file: &std::path::Path) -> Result<Bus, BusError> {
        let secret = std::fs::read(secret_file).map_err(|source| BusError::ReadSecret {
            path: secret_file.to_owned(),
            source,
        })?;
        let secret = secret.trim_ascii();
        oxbus_ipc::bus::check_secret(secret).map_err(|source| BusError::Secret {
            path: secret_file.to_owned(),
            source,
        })?;
        oxbus_ipc::bus::check_name("server", me).map_err(BusError::Name)?;
        Ok(Bus {
            key: oxbus_ipc::bus::derive_key(secret),
            cluster: cluster.to_owned(),
            me: me.to_owned(),
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            known: Mutex::new(Vec::new()),
        })
    }

    /// Sets the servers (name, bus address) this server knows of without the store: at boot,
    /// those of its snapshot; then each list the store gives.
    pub fn know(&self, servers: Vec<(String, String)>) {
        *self.known.lock().expect("known lock") = servers;
    }

    fn linked_names(&self) -> Vec<String> {
        self.links
            .lock()
            .expect("links lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The live links.
    pub fn links(&self) -> Vec<LinkInfo> {
        let mut v: Vec<LinkInfo> = self
            .links
            .lock()
            .expect("links lock")
            .iter()
            .map(|(peer, h)| LinkInfo {
                peer: peer.clone(),
                role: h.role.as_str(),
                up_ms: h.since.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    /// The live links with the config version each peer last announced (`None` before its
    /// first NOTIFY), for the metrics.
    pub fn peer_versions(&self) -> Vec<(String, Option<i64>)> {
        self.links
            .lock()
            .expect("links lock")
            .iter()
            .map(|(peer, h)| {
                let v = h.peer_version.load(Ordering::Relaxed);
                (peer.clone(), (v >= 0).then_some(v))
            })
            .collect()
    }

    /// Calls `meta` (with an empty body) on every linked peer at once and waits up to
    /// `timeout` for each answer.
    pub async fn call_all(&self, meta: &serde_json::Value, timeout: Duration) -> Vec<PeerReply> {
        let calls: Vec<_> = {
            let links = self.links.lock().expect("links lock");
            links
                .iter()
                .map(|(peer, h)| {
                    let stream = h.streams.lock().expect("streams lock").next_id();
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    h.pending.lock().expect("pending lock").insert(stream, tx);
                    let mut out = BytesMut::new();
                    let sent = oxbus_ipc::bus::encode_call(&mut out, 0, stream, meta, b"")
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            h.tx.send(out.freeze())
                                .map_err(|_| "the link is closing".to_owned())
                        });
                    (peer.clone(), sent, rx, h.pending.clone(), stream)
                })
                .collect()
        };
        let waits = calls
            .into_iter()
            .map(|(peer, sent, rx, pending, stream)| async move {
                let body = match sent {
                    Err(e) => Err(e),
                    Ok(()) => match tokio::time::timeout(timeout, rx).await {
                        Ok(Ok((status, body))) => Ok((status, body)),
                        Ok(Err(_)) => Err("the link went down before the answer".to_owned()),
                        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                    },
                };
                pending.lock().expect("pending lock").remove(&stream);
                match body {
                    Ok((status, body)) => PeerReply {
                        server: peer,
                        status,
                        body: serde_json::from_slice(&body)
                            .unwrap_or_else(|_| serde_json::json!({"error": "unreadable answer"})),
                    },
                    Err(e) => PeerReply {
                        server: peer,
                        status: 504,
                        body: serde_json::json!({ "error": e }),
                    },
                }
            });
        let mut out = Vec::new();
        for w in waits {
            out.push(w);
        }
        let mut replies = crate::deploy::join_all(out).await;
        replies.sort_by(|a, b| a.server.cmp(&b.server));
        replies
    }

    /// Tells every peer that this server is stopping (a clean stop, not a failure), and waits
    /// (at most a second) for the peers to close their ends, so the BYE is written before
    /// the process exits.
    pub async fn say_bye(&self) {
        let bytes = Frame::bye().to_bytes();
        for h in self.links.lock().expect("links lock").values() {
            let _ = h.tx.send(bytes.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.links.lock().expect("links lock").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells every peer that this server has applied `config_version`.
    pub fn announce(&self, config_version: i64) {
        let frame = Frame::notify(&Notify {
            config_version: config_version.max(0) as u64,
            server: self.me.clone(),
            kinds: None,
        });
        let bytes = frame.to_bytes();
        for h in self.links.lock().expect("links lock").values() {
            let _ = h.tx.send(bytes.clone());
        }
    }
}

/// Accepts links until the process ends.
pub async fn listen(bus: Arc<Bus>, cx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "bus accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let bus = bus.clone();
        let cx = cx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut conn = Conn::new(stream);
            let shaken =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(&bus, &cx, &mut conn))
                    .await;
            match shaken {
                Ok(Ok(link)) => run_link(bus, cx, link, conn).await,
                Ok(Err(e)) => {
                    warn!(peer = %addr, error = %e, "bus link refused");
                    if let Some(f) = e.to_frame() {
                        let _ = conn.send(&f).await;
                    }
                }
                Err(_) => warn!(peer = %addr, "bus handshake timed out"),
            }
        });
    }
}

/// A connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Protocol(#[from] oxbus_ipc::bus::Error),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
}

impl ConnError {
    fn to_frame(&self) -> Option<Frame> {
        match self {
            ConnError::Protocol(e) => e.to_frame(),
            _ => None,
        }
    }
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            decoder: FrameDecoder::handshake(),
        }
    }

    async fn recv(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), ConnError> {
        self.stream.write_all(&f.to_bytes()).await?;
        Ok(())
    }
}

async fn accept_handshake(bus: &Bus, cx: &Ctx, conn: &mut Conn) -> Result<Link, ConnError> {
    let acceptor = Acceptor::new(&bus.key, &bus.cluster, &bus.me, Nonce::random()?)?;
    let hello = conn.recv().await?;
    let (challenged, challenge) = acceptor.on_hello(&hello)?;
    conn.send(&challenge).await?;
    let auth = conn.recv().await?;
    let verified = challenged.on_auth(&auth)?;
    let linked = bus.linked_names();
    let linked: Vec<&str> = linked.iter().map(String::as_str).collect();
    let applied = cx.node.applied_version.load(Ordering::Relaxed).max(0) as u64;
    let (link, welcome) = verified.welcome(&linked, applied)?;
    conn.send(&welcome).await?;
    Ok(link)
}

async fn dial_handshake(bus: &Bus, peer: &str, conn: &mut Conn) -> Result<Link, ConnError> {
    let (dialer, hello) = Dialer::start(&bus.key, &bus.cluster, &bus.me, peer, Nonce::random()?)?;
    conn.send(&hello).await?;
    let challenge = conn.recv().await?;
    let (authenticated, auth) = dialer.on_challenge(&challenge)?;
    conn.send(&auth).await?;
    let welcome = conn.recv().await?;
    let linked = bus.linked_names();
    let linked: Vec<&str> = linked.iter().map(String::as_str).collect();
    let (link, _welcome) = authenticated.on_welcome(&welcome, &linked)?;
    Ok(link)
}

/// Dials the peers this server should dial, every second, until the process ends.
pub async fn dial_peers(bus: Arc<Bus>, cx: Arc<Ctx>) {
    // Per peer: attempts in a row, and when the next may start.
    let mut backoff: HashMap<String, (u32, Instant)> = HashMap::new();
    let dialing: Arc<Mutex<std::collections::HashSet<String>>> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        // While the store is down (known to the sync loop: no 5 s wait on it here) the last
        // list it gave — or the snapshot's, for a server that booted from it — still says
        // where the peers are: links, and so cache replication and NOTIFY, do not wait for
        // the store to return.
        let servers: Vec<(String, String)> = if cx.node.store_ok.load(Ordering::SeqCst) {
            let Ok(list) = cx.store.servers().await else {
                continue;
            };
            let list: Vec<(String, String)> = list
                .into_iter()
                .filter_map(|s| Some((s.name, s.bus_address?)))
                .collect();
            bus.know(list.clone());
            // The snapshot keeps up with the list (servers that joined or left since it was
            // written): what a restart during an outage dials.
            crate::cluster::sync::peers_seen(
                &cx,
                list.iter()
                    .map(|(name, addr)| crate::cluster::snapshot::BusPeer {
                        name: name.clone(),
                        bus_address: addr.clone(),
                    })
                    .collect(),
            );
            list
        } else {
            bus.known.lock().expect("known lock").clone()
        };
        let linked = bus.linked_names();
        for (name, addr) in servers {
            if name == bus.me
                || Role::between(&bus.me, &name) != Some(Role::Dialer)
                || linked.contains(&name)
                || dialing.lock().expect("dialing lock").contains(&name)
            {
                continue;
            }
            let (attempts, next) = backoff.get(&name).copied().unwrap_or((0, Instant::now()));
            if Instant::now() < next {
                continue;
            }
            let delay = oxbus_ipc::bus::reconnect_delay(attempts, rand_u32());
            backoff.insert(
                name.clone(),
                (attempts.saturating_add(1), Instant::now() + delay),
            );
            dialing.lock().expect("dialing lock").insert(name.clone());
            let (bus, cx, dialing, peer) = (bus.clone(), cx.clone(), dialing.clone(), name.clone());
            tokio::spawn(async move {
                let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let stream = TcpStream::connect(&addr).await?;
                    let _ = stream.set_nodelay(true);
                    let mut conn = Conn::new(stream);
                    let link = match dial_handshake(&bus, &peer, &mut conn).await {
                        Ok(link) => link,
                        Err(e) => {
                            // Tell the acceptor why (BUS.md: ERROR, then close).
                            if let Some(f) = e.to_frame() {
                                let _ = conn.send(&f).await;
                            }
                            return Err(e);
                        }
                    };
                    Ok::<_, ConnError>((link, conn))
                })
                .await;
                dialing.lock().expect("dialing lock").remove(&peer);
                match result {
                    Ok(Ok((link, conn))) => run_link(bus, cx, link, conn).await,
                    // Refused by the protocol (another secret, cluster or name): an operator
                    // must see it. Unreachable peers are routine while one restarts.
                    Ok(Err(e @ ConnError::Protocol(_))) => {
                        warn!(peer = %peer, address = %addr, error = %e, "bus dial refused")
                    }
                    Ok(Err(e)) => {
                        debug!(peer = %peer, address = %addr, error = %e, "bus dial failed")
                    }
                    Err(_) => debug!(peer = %peer, address = %addr, "bus dial timed out"),
                }
            });
        }
        // A peer linked now starts from scratch next time.
        for name in bus.linked_names() {
            backoff.remove(&name);
        }
    }
}

fn rand_u32() -> u32 {
    u32::from_be_bytes(crate::random::random_bytes::<4>())
}

/// Runs an established link until it ends.
async fn run_link(bus: Arc<Bus>, cx: Arc<Ctx>, link: Link, conn: Conn) {
    let peer = link.peer.clone();
    let id = bus.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<bytes::Bytes>();
    let tx = LinkTx {
        tx,
        queued: Default::default(),
    };
    let queued = tx.queued.clone();
    let pending: Pending = Default::default();
    let peer_version = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    {
        let mut links = bus.links.lock().expect("links lock");
        if links.contains_key(&peer) {
            warn!(peer = %peer, "a second bus link to the same peer: closing the new one");
            return;
        }
        links.insert(
            peer.clone(),
            LinkHandle {
                id,
                role: link.role,
                since: Instant::now(),
                tx: tx.clone(),
                streams: Arc::new(Mutex::new(link.stream_ids())),
                pending: pending.clone(),
                peer_version: peer_version.clone(),
            },
        );
    }
    info!(peer = %peer, role = link.role.as_str(), "bus link up");
    // Both ends learn the other's version at once (a change may have been missed).
    let applied = cx.node.applied_version.load(Ordering::Relaxed);
    let _ = tx.send(
        Frame::notify(&Notify {
            config_version: applied.max(0) as u64,
            server: bus.me.clone(),
            kinds: None,
        })
        .to_bytes(),
    );
    let Conn {
        stream, mut buf, ..
    } = conn;
    let decoder = FrameDecoder::default();
    let (mut rd, mut wr) = stream.into_split();
    let traffic = &cx.metrics.cluster;
    let (frames_out, bytes_out) = (traffic.frames_out.clone(), traffic.bytes_out.clone());
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(8 * 1024);
        // Every message on `rx` is one encoded frame.
        while let Some(b) = rx.recv().await {
            out.clear();
            out.extend_from_slice(&b);
            let mut frames = 1;
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
                frames += 1;
            }
            queued.fetch_sub(out.len(), Ordering::Relaxed);
            frames_out.inc_by(frames);
            bytes_out.inc_by(out.len() as u64);
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let pinger = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                if tx
                    .send(Frame::ping(crate::random::random_bytes::<8>()).to_bytes())
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let reason: String = 'link: loop {
        // Frames already buffered first, then the socket, silent for LINK_TIMEOUT = dead.
        loop {
            let decoded = decoder.decode(&mut buf);
            if let Ok(Some(_)) = &decoded {
                traffic.frames_in.inc();
            }
            match decoded {
                Ok(Some(frame)) => match link.parse(frame) {
                    Ok(Incoming::Ping(nonce)) => {
                        let _ = tx.send(Frame::pong(nonce).to_bytes());
                    }
                    Ok(Incoming::Pong(_)) => {}
                    Ok(Incoming::Notify(n)) => {
                        peer_version.store(
                            i64::try_from(n.config_version).unwrap_or(i64::MAX),
                            Ordering::Relaxed,
                        );
                        let applied = cx.node.applied_version.load(Ordering::Relaxed);
                        if n.config_version as i64 != applied {
                            debug!(peer = %peer, version = n.config_version, applied, "bus: peer has another version");
                            cx.node.changed.notify_one();
                        }
                    }
                    Ok(Incoming::Call {
                        stream,
                        asynchronous,
                        meta,
                        body,
                    }) => {
                        let op = op_of(&meta);
                        if let Some(wsx) = op.as_deref().filter(|op| op.starts_with("wsx.")) {
                            // In the link's own task: one peer's pushes keep their order.
                            let (status, body) = cx.wsx.peer_call(wsx, &meta, body);
                            if !asynchronous {
                                let mut out = BytesMut::new();
                                if oxbus_ipc::bus::encode_reply(&mut out, stream, status, &body)
                                    .is_ok()
                                {
                                    let _ = tx.send(out.freeze());
                                }
                            }
                            continue;
                        }
                        if let Some(op) = op.filter(|op| op.starts_with("pubsub.")) {
                            if op == "pubsub.committed" {
                                // In the link's own task, so a peer's batches reach the
                                // fanout in the order it committed them.
                                let status = match cx.pubsub.peer_committed(&body) {
                                    Ok(()) => 200,
                                    Err(e) => {
                                        warn!(peer = %peer, error = %e, "bus: unreadable pub/sub batch from a peer, dropped");
                                        400
                                    }
                                };
                                if !asynchronous {
                                    let mut out = BytesMut::new();
                                    if oxbus_ipc::bus::encode_reply(&mut out, stream, status, b"{}")
                                        .is_ok()
                                    {
                                        let _ = tx.send(out.freeze());
                                    }
                                }
                                continue;
                            }
                            // Pulls, acks and figures of a subscription this server delivers.
                            let (cx, tx) = (cx.clone(), tx.clone());
                            tokio::spawn(async move {
                                let meta: serde_json::Value =
                                    serde_json::from_slice(&meta).unwrap_or_default();
                                let (status, body) = cx.pubsub.peer_call(&meta, body).await;
                                if asynchronous {
                                    return;
                                }
                                let mut out = BytesMut::new();
                                if oxbus_ipc::bus::encode_reply(&mut out, stream, status, &body)
                                    .is_ok()
                                {
                                    let _ = tx.send(out.freeze());
                                }
                            });
                            continue;
                        }
                        if let Ok(oxbus_ipc::bus::Op::CacheApply(_)) =
                            oxbus_ipc::bus::Op::parse(&meta)
                        {
                            // In the link's own task, so a peer's writes apply in the order
                            // it made them.
                            let status = apply_cache_writes(&cx, &peer, &body);
                            if !asynchronous {
                                let mut out = BytesMut::new();
                                if oxbus_ipc::bus::encode_reply(&mut out, stream, status, b"{}")
                                    .is_ok()
                                {
                                    let _ = tx.send(out.freeze());
                                }
                            }
                            continue;
                        }
                        let (cx, tx) = (cx.clone(), tx.clone());
                        tokio::spawn(async move {
                            let (status, body) = serve_call(&cx, &meta).await;
                            if asynchronous {
                                return;
                            }
                            let mut out = BytesMut::new();
                            if oxbus_ipc::bus::encode_reply(
                                &mut out,
                                stream,
                                status,
                                body.to_string().as_bytes(),
                            )
                            .is_ok()
                            {
                                let _ = tx.send(out.freeze());
                            }
                        });
                    }
                    Ok(Incoming::Reply {
                        stream,
                        status,
                        body,
                    }) => {
                        if let Some(waiter) = pending.lock().expect("pending lock").remove(&stream)
                        {
                            let _ = waiter.send((status, body));
                        }
                    }
                    Ok(Incoming::Bye) => break 'link BYE_REASON.to_owned(),
                    Err(e) => {
                        if let Some(f) = e.to_frame() {
                            let _ = tx.send(f.to_bytes());
                        }
                        break 'link format!("protocol error: {e}");
                    }
                },
                Ok(None) => break,
                Err(e) => break 'link format!("protocol error: {e}"),
            }
        }
        match tokio::time::timeout(LINK_TIMEOUT, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => break 'link "the peer closed the connection".to_owned(),
            Ok(Ok(n)) => {
                traffic.bytes_in.inc_by(n as u64);
            }
            Ok(Err(e)) => break 'link format!("read failed: {e}"),
            Err(_) => break 'link format!("silent for {} s", LINK_TIMEOUT.as_secs()),
        }
    };
    pinger.abort();
    {
        let mut links = bus.links.lock().expect("links lock");
        if links.get(&peer).map(|h| h.id) == Some(id) {
            links.remove(&peer);
        }
    }
    // The calls waiting on this link fail now ("the link went down before the answer"),
    // not at their timeout. No call adds itself any more: `call_all` does so under the
    // links lock, and the link is out of the map.
    let failed: Vec<_> = pending.lock().expect("pending lock").drain().collect();
    drop(failed);
    drop(tx);
    let _ = writer.await;
    if reason == BYE_REASON {
        info!(peer = %peer, "bus link closed: the peer is stopping");
    } else {
        warn!(peer = %peer, reason = %reason, "bus link down");
    }
}

const BYE_REASON: &str = "the peer said BYE";

/// Applies a peer's `cache.apply` body (a JSON array of writes); the REPLY status.
fn apply_cache_writes(cx: &Ctx, peer: &str, body: &[u8]) -> u16 {
    match serde_json::from_slice::<Vec<oxbus_cache::Repl>>(body) {
        Ok(batch) => {
            cx.pool.caches.apply_remote(batch);
            200
        }
        Err(e) => {
            warn!(peer = %peer, error = %e, "bus: unreadable cache writes from a peer, dropped");
            400
        }
    }
}

/// Sends this server's cache writes to every linked peer, batched: whatever has queued up
/// while the previous batch was being sent goes in one `cache.apply` (at most 1024 writes).
/// A peer that is not linked right now misses them (`docs/CACHE.md`).
pub async fn replicate_caches(bus: Arc<Bus>, mut rx: mpsc::UnboundedReceiver<oxbus_cache::Repl>) {
    const META: &[u8] = br#"{"op":"cache.apply"}"#;
    // Sized by what is sent (JSON text travels escaped, bytes in base64), far below the
    // bus's 64 MiB frame limit; a value is at most 16 MiB, 32 MiB escaped.
    const BATCH_BYTES: usize = 8 * 1024 * 1024;
    let mut held: Option<Vec<u8>> = None;
    loop {
        let first = match held.take() {
            Some(w) => w,
            None => match rx.recv().await {
                // Nobody to send to (a cluster of one right now): nothing to encode.
                Some(_) if bus.links.lock().expect("links lock").is_empty() => {
                    while rx.try_recv().is_ok() {}
                    continue;
                }
                Some(r) => serde_json::to_vec(&r).expect("cache writes serialise"),
                None => return,
            },
        };
        let mut body = Vec::with_capacity(first.len() + 2);
        body.push(b'[');
        body.extend_from_slice(&first);
        let mut writes = 1;
        while writes < 1024 && body.len() < BATCH_BYTES {
            let Ok(r) = rx.try_recv() else { break };
            let w = serde_json::to_vec(&r).expect("cache writes serialise");
            if body.len() + w.len() > BATCH_BYTES {
                held = Some(w); // the first of the next batch
                break;
            }
            body.push(b',');
            body.extend_from_slice(&w);
            writes += 1;
        }
        body.push(b']');
        let links = bus.links.lock().expect("links lock");
        for h in links.values() {
            let stream = h.streams.lock().expect("streams lock").next_id();
            let mut out = BytesMut::with_capacity(body.len() + 64);
            if oxbus_ipc::bus::encode_meta_frame(
                &mut out,
                oxbus_ipc::bus::Kind::Call,
                oxbus_ipc::bus::FLAG_ASYNC,
                stream,
                META,
                &body,
            )
            .is_ok()
            {
                let _ = h.tx.send(out.freeze());
            } else {
                warn!(
                    writes,
                    bytes = body.len(),
                    "bus: cache writes too large for one frame, not replicated"
                );
            }
        }
    }
}

/// Serves a call from a peer: `services.stats` reads this server's statistics;
/// `deploy.activate` / `deploy.remove` bring this server up to the
/// store's version now (whatever versions the call names: the store decides, so concurrent
/// deploys through two servers converge) and answer with this server's workers' acks.
async fn serve_call(cx: &Ctx, meta: &[u8]) -> (u16, serde_json::Value) {
    match oxbus_ipc::bus::Op::parse(meta) {
        // This server's statistics, as its own admin API shows them (BUS.md).
        Ok(oxbus_ipc::bus::Op::ServicesStats(q)) => {
            let report = cx.metrics.services.report(
                cx.metrics.enabled(),
                &cx.pool.service_names(),
                q.service.as_deref(),
            );
            (
                200,
                serde_json::to_value(report)
                    .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
            )
        }
        Ok(_) => match crate::cluster::sync::catch_up(cx).await {
            Ok((version, workers)) => {
                // What it runs now (its own version check may have caught up first, in which
                // case `workers` is empty and `running` still shows the deployed versions).
                let running: std::collections::BTreeMap<String, i64> = cx
                    .pool
                    .deployed
                    .lock()
                    .expect("deployed lock")
                    .iter()
                    .map(|(n, m)| (n.clone(), m.version))
                    .collect();
                (
                    200,
                    serde_json::json!({
                        "server": cx.node.name,
                        "config_version": version,
                        "workers": workers,
                        "running": running,
                        "worker_count": crate::deploy::live_workers(&cx.pool).len(),
                    }),
                )
            }
            Err(e) => (
                503,
                serde_json::json!({"server": cx.node.name, "error": e.to_string()}),
            ),
        },
        Err(e) => (
            e.status(),
            serde_json::to_value(e.body()).unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Peers;

    /// A link whose writer does not drain: committed batches past the queue's byte budget
    /// are dropped for it, other frames are not; once the writer takes what is queued,
    /// batches go again.
    #[test]
    fn a_full_link_queue_drops_committed_batches() {
        let bus = Bus {
            key: [0; 32],
            cluster: "c".into(),
            me: "a".into(),
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            known: Mutex::new(Vec::new()),
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<bytes::Bytes>();
        let tx = LinkTx {
            tx,
            queued: Default::default(),
        };
        bus.links.lock().unwrap().insert(
            "b".into(),
            LinkHandle {
                id: 1,
                role: Role::Dialer,
                since: Instant::now(),
                tx: tx.clone(),
                streams: Arc::new(Mutex::new(oxbus_ipc::bus::StreamIds::new(Role::Dialer))),
                pending: Default::default(),
                peer_version: Default::default(),
            },
        );
        let frame = bytes::Bytes::from(vec![7u8; 1024 * 1024]);
        for _ in 0..100 {
            bus.send_committed(frame.clone());
        }
        let mut sent = 0;
        let mut bytes = 0;
        while let Ok(b) = rx.try_recv() {
            sent += 1;
            bytes += b.len();
        }
        assert!((60..64).contains(&sent), "{sent} of 100 queued");
        assert_eq!(tx.queued(), bytes);
        assert!(bytes <= COMMITTED_QUEUE_MAX);
        // Other frames are never dropped.
        tx.send(bytes::Bytes::from_static(b"ping")).unwrap();
        assert_eq!(tx.queued(), bytes + 4);
        // The writer took them all: room again.
        tx.queued.store(0, Ordering::Relaxed);
        bus.send_committed(frame);
        assert!(rx.try_recv().is_ok_and(|b| b[..] == b"ping"[..]));
        assert!(rx.try_recv().is_ok());
    }
}
