//! Outgoing Redis connections (docs/CONNECTORS.md, "Redis"): per connection and server,
//! `pool_size` multiplexed connections; a call takes the one with the fewest calls in flight.
//! Each is connected by the first call that finds it missing (a server starts while Redis is
//! down); a failed attempt is not kept, so the next call tries afresh. A call that times out
//! replaces its connection (it may be stalled); a connection found dropped, or one that cannot
//! be made, replaces every connection made before it at their next use. Every call is bounded
//! by `timeout_ms` (and by the caller's `deadline_ms`), connecting included. Sockets have
//! TCP_NODELAY, keepalive probes and a TCP user timeout.
//!
//! The workers' `out.redis` op (ipc-protocol/SPEC.md) carries one command or a pipeline of
//! them (optionally MULTI/EXEC), as argument lists; [`wire`] is the body format. Redis's
//! error replies fail the call `redis` (a pipeline's are elements of its reply instead),
//! connection failures `connect` / `io`, an expired call `timeout`. The password is opened
//! from its seal when the client is built and only handed to the `redis` crate.

pub mod wire;

use bytes::Bytes;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Value};

use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::redis::{RedisConn, parse_address};
use crate::secrets::Key;

/// The most commands one pipeline may hold.
pub const MAX_PIPELINE: usize = 100_000;

/// The largest encoded reply a call answers (a worker frame's payload less 1 MiB for its
/// meta); a larger one fails the call `too_large`.
pub const MAX_REPLY: usize = oxbus_ipc::MAX_PAYLOAD - (1 << 20);

/// Why a call failed: its SPEC error code, status and message (which names the connection).
#[derive(Debug)]
pub struct Failure {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
    /// A Redis error reply's own text (`WRONGTYPE Operation against…`), for `redis`.
    pub redis_message: Option<String>,
}

impl Failure {
    fn new(code: &'static str, status: u16, message: String) -> Failure {
        Failure {
            code,
            status,
            message,
            redis_message: None,
        }
    }

    fn reply(&self) -> OpReply {
        let mut r = OpReply::error(self.status, self.code, &self.message);
        if let Some(m) = &self.redis_message {
            let code = m.split(' ').next().unwrap_or_default();
            r.body = Bytes::from(
                serde_json::json!({"error": self.message, "message": m, "code": code}).to_string(),
            );
        }
        r
    }
}

/// One slot of the pool: its connection, made by the first call that finds none.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// One connect attempt at a time per slot: the calls arriving meanwhile wait for it.
    connecting: tokio::sync::Mutex<()>,
    /// Calls on this slot now.
    in_flight: AtomicU32,
}

#[derive(Default)]
struct SlotState {
    /// The connection and the client's epoch when it was made (older than the client's
    /// current epoch: suspect, replaced at its next use).
    conn: Option<(MultiplexedConnection, u64)>,
    /// The last connect attempt's outcome (None: none yet).
    connected: Option<bool>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().expect("redis slot lock");
        f.debug_struct("Slot")
            .field("connected", &st.connected)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

#[derive(Debug, Default)]
struct Figures {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: DurationHistogram,
}

/// One Redis connection's client on this server. Dropping it (a live edit, a delete) closes
/// its connections once the calls in flight, which hold them, are done.
#[derive(Debug)]
pub struct RedisClient {
    def: RedisConn,
    /// `Redis connection "name" (redis://host:port/db)`, the start of every message.
    who: String,
    /// The `redis` crate's client, or why it could not be made (a TLS file unreadable…),
    /// which every call and ping then answer.
    client: Result<redis::Client, String>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Bumped when a connection is found dropped or cannot be made: every slot's connection
    /// made before is then replaced at its next use (Redis went away: they all went).
    epoch: AtomicU64,
    figures: Figures,
}

/// The call's meta as `out.redis` sends it.
#[derive(serde::Deserialize)]
struct Meta {
    /// Commands of a pipeline; absent: one command.
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    transaction: bool,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

/// The `redis` crate's client of `def`: its address, user, opened password, TLS files.
fn client_of(def: &RedisConn, key: &Key) -> Result<redis::Client, String> {
    let addr = parse_address(&def.address)?;
    let info = def
        .address
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("address: {e}"))?;
    let mut settings = info.redis_settings().clone().set_db(i64::from(addr.db));
    if let Some(u) = &def.username {
        settings = settings.set_username(u);
    }
    if let Some(sealed) = &def.sealed {
        let password = key
            .open(&RedisConn::seal_name(&def.name), sealed)
            .map_err(|e| format!("the sealed password does not open: {e}"))?;
        settings = settings.set_password(password.expose());
    }
    // No Nagle delay (commands are small and awaited one by one); keepalive probes and a
    // user timeout so that a peer gone silent is noticed by the kernel too.
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        )
        .set_user_timeout(Duration::from_secs(60));
    let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
    let tls = &def.tls;
    if !addr.tls {
        return redis::Client::open(info).map_err(|e| e.to_string());
    }
    let read = |field: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, String> {
        match path {
            None => Ok(None),
            Some(p) => std::fs::read(p)
                .map(Some)
                .map_err(|e| format!("tls.{field} {p}: {e}")),
        }
    };
    let root_cert = read("ca_file", &tls.ca_file)?;
    let client_tls = match (
        read("client_cert_file", &tls.client_cert_file)?,
        read("client_key_file", &tls.client_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("TLS: {e}"))
}

impl RedisClient {
    pub fn new(def: RedisConn, key: &Arc<Key>, _metrics: &Arc<crate::metrics::Metrics>) -> Self {
        let who = format!("Redis connection {:?} ({})", def.name, def.address);
        let client = client_of(&def, key);
        let slots = (0..def.pool_size.max(1)).map(|_| Slot::default()).collect();
        RedisClient {
            def,
            who,
            client,
            slots,
            next: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            figures: Figures::default(),
        }
    }

    pub fn def(&self) -> &RedisConn {
        &self.def
    }

    /// The slot with the fewest calls in flight (ties: round-robin).
    fn pick(&self) -> usize {
        let n = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = first;
        let mut least = u32::MAX;
        for k in 0..n {
            let i = (first + k) % n;
            let f = self.slots[i].in_flight.load(Ordering::Relaxed);
            if f < least {
                least = f;
                best = i;
                if f == 0 {
                    break;
                }
            }
        }
        best
    }

    /// Slot `i`'s connection, made now if it has none or only one of an older epoch. A
    /// failed attempt leaves the slot empty: the next call makes a fresh one (nothing of a
    /// failure is kept, so the first call after Redis is back connects).
    async fn connection(&self, i: usize) -> Result<(MultiplexedConnection, u64), Failure> {
        let slot = &self.slots[i];
        let current = |epoch: u64| {
            let st = slot.state.lock().expect("redis slot lock");
            match &st.conn {
                Some((c, e)) if *e == epoch => Some((c.clone(), *e)),
                _ => None,
            }
        };
        if let Some(c) = current(self.epoch.load(Ordering::Acquire)) {
            return Ok(c);
        }
        let _one = slot.connecting.lock().await;
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(c) = current(epoch) {
            return Ok(c);
        }
        let client = self.client.as_ref().map_err(|e| {
            Failure::new("connect", 502, format!("{}: cannot connect: {e}", self.who))
        })?;
        let timeout = Duration::from_millis(self.def.timeout_ms);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let made = client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut st = slot.state.lock().expect("redis slot lock");
        match made {
            Ok(c) => {
                st.conn = Some((c.clone(), epoch));
                st.connected = Some(true);
                Ok((c, epoch))
            }
            Err(e) => {
                st.conn = None;
                st.connected = Some(false);
                drop(st);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                Err(self.connect_failure(&e))
            }
        }
    }

    /// Forgets slot `i`'s connection if it is still the one of `epoch` (the calls holding
    /// it finish on it); `all`: the others made before too.
    fn discard(&self, i: usize, epoch: u64, all: bool) {
        let mut st = self.slots[i].state.lock().expect("redis slot lock");
        if matches!(&st.conn, Some((_, e)) if *e == epoch) {
            st.conn = None;
            st.connected = None;
        }
        drop(st);
        if all {
            let _ =
                self.epoch
                    .compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Why a connection could not be made (refused, TLS, DNS, AUTH or SELECT refused,
    /// Redis's client limit…): `connect`, with what the `redis` crate said.
    fn connect_failure(&self, e: &RedisError) -> Failure {
        if e.is_timeout() {
            // A host that accepts and never answers (or drops packets): `timeout`.
            return Failure::new(
                "timeout",
                504,
                format!("{}: no connection within the timeout: {e}", self.who),
            );
        }
        let what = if e.kind() == redis::ErrorKind::AuthenticationFailed {
            // The crate turns any error answer to AUTH into this (wrong credentials, but also
            // a Redis at its client limit answering the handshake with an error).
            format!(
                "the handshake's AUTH was refused (wrong username or password, or Redis \
                 refused the client): {e}"
            )
        } else {
            format!("cannot connect: {e}")
        };
        Failure::new("connect", 502, format!("{}: {what}", self.who))
    }

    /// Answers one `out.redis` call.
    pub async fn call(&self, raw_meta: &[u8], body: Bytes) -> OpReply {
        let start = Instant::now();
        let out = self.dispatch(raw_meta, &body).await;
        let f = &self.figures;
        f.latency.observe(start.elapsed());
        match out {
            Ok(bytes) => {
                f.calls.fetch_add(1, Ordering::Relaxed);
                let mut r = OpReply::json(200, &serde_json::Value::Null);
                r.meta.content_type = None;
                r.body = Bytes::from(bytes);
                r
            }
            Err(e) => {
                f.errors.fetch_add(1, Ordering::Relaxed);
                e.reply()
            }
        }
    }

    async fn dispatch(&self, raw_meta: &[u8], body: &[u8]) -> Result<Vec<u8>, Failure> {
        let invalid = |m: String| Failure::new("invalid", 400, format!("{}: {m}", self.who));
        let meta: Meta =
            serde_json::from_slice(raw_meta).map_err(|e| invalid(format!("bad meta: {e}")))?;
        if meta.n.is_some_and(|n| n > MAX_PIPELINE) {
            return Err(invalid(format!(
                "a pipeline holds at most {MAX_PIPELINE} commands"
            )));
        }
        if meta.transaction && meta.n.is_none() {
            return Err(invalid("transaction applies to a pipeline (n)".into()));
        }
        let commands = wire::decode_commands(body, meta.n.unwrap_or(1)).map_err(invalid)?;
        for (i, c) in commands.iter().enumerate() {
            if let Some(why) = wire::refused(c) {
                return Err(invalid(match meta.n {
                    Some(_) => format!("command {i}: {why}"),
                    None => why,
                }));
            }
        }
        let mut limit = Duration::from_millis(self.def.timeout_ms);
        if let Some(d) = meta.deadline_ms {
            limit = limit.min(Duration::from_millis(d));
        }
        let mut out = Vec::with_capacity(64);
        match meta.n {
            None => {
                let mut cmd = redis::Cmd::new();
                for a in &commands[0] {
                    cmd.arg(a.as_slice());
                }
                let v = self
                    .run(limit, async |c: &mut MultiplexedConnection| {
                        c.req_packed_command(&cmd).await
                    })
                    .await?;
                if let Value::ServerError(e) = &v {
                    return Err(self.redis_error(wire::server_message(e)));
                }
                wire::encode_value(&v, &mut out);
            }
            Some(0) => wire::encode_value(&Value::Array(Vec::new()), &mut out),
            Some(n) => {
                let mut pipe = redis::Pipeline::with_capacity(n);
                if meta.transaction {
                    pipe.atomic();
                }
                for c in &commands {
                    let mut cmd = redis::Cmd::new();
                    for a in c {
                        cmd.arg(a.as_slice());
                    }
                    pipe.add_command(cmd);
                }
                let (offset, count) = if meta.transaction { (n + 1, 1) } else { (0, n) };
                let mut replies = self
                    .run(limit, async |c: &mut MultiplexedConnection| {
                        c.req_packed_commands(&pipe, offset, count).await
                    })
                    .await?;
                let v = if meta.transaction {
                    match replies.pop() {
                        Some(Value::ServerError(e)) => {
                            return Err(self.redis_error(wire::server_message(&e)));
                        }
                        Some(v @ Value::Array(_)) => v,
                        other => {
                            return Err(Failure::new(
                                "io",
                                502,
                                format!("{}: EXEC answered {other:?}", self.who),
                            ));
                        }
                    }
                } else {
                    Value::Array(replies)
                };
                wire::encode_value(&v, &mut out);
            }
        }
        if out.len() > MAX_REPLY {
            return Err(Failure::new(
                "too_large",
                502,
                format!(
                    "{}: the reply takes {} bytes, over the {MAX_REPLY} a worker frame carries",
                    self.who,
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// Runs `f` on the least busy slot's connection within `limit`, connecting included. A
    /// timeout replaces that slot's connection (it may be stalled: its answers, if they come,
    /// are not waited for); a dropped connection replaces every connection made before.
    async fn run<T>(
        &self,
        limit: Duration,
        f: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, Failure> {
        let i = self.pick();
        let slot = &self.slots[i];
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut used = None;
        let r = tokio::time::timeout(limit, async {
            let (mut conn, epoch) = self.connection(i).await.map_err(Ok)?;
            used = Some(epoch);
            f(&mut conn).await.map_err(|e| Err((e, epoch)))
        })
        .await;
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Ok(failure))) => Err(failure),
            Ok(Err(Err((e, epoch)))) => {
                if e.is_timeout() {
                    self.discard(i, epoch, false);
                } else if e.is_unrecoverable_error() || e.is_io_error() {
                    self.discard(i, epoch, true);
                }
                Err(self.failure(&e))
            }
            Err(_) => {
                if let Some(epoch) = used {
                    self.discard(i, epoch, false);
                }
                Err(self.timed_out(limit))
            }
        }
    }

    fn timed_out(&self, limit: Duration) -> Failure {
        Failure::new(
            "timeout",
            504,
            format!("{}: no answer within {} ms", self.who, limit.as_millis()),
        )
    }

    fn redis_error(&self, message: String) -> Failure {
        Failure {
            code: "redis",
            status: 400,
            message: format!("{}: {message}", self.who),
            redis_message: Some(message),
        }
    }

    /// The failure of an error of the `redis` crate.
    fn failure(&self, e: &RedisError) -> Failure {
        if e.is_timeout() {
            return Failure::new(
                "timeout",
                504,
                format!("{}: no answer in time: {e}", self.who),
            );
        }
        match e.kind() {
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension if e.code().is_some() => {
                // Redis's own text (`WRONGTYPE Operation…`); an aborted transaction's
                // `EXECABORT` then the errors of the commands Redis refused to queue.
                let m = match (e.code(), e.detail()) {
                    (Some(c), Some(d)) => format!("{c} {d}"),
                    (Some(c), None) => format!("{c} {e}"),
                    _ => e.to_string(),
                };
                self.redis_error(m)
            }
            _ if e.is_connection_dropped() || e.is_io_error() => {
                Failure::new("io", 502, format!("{}: connection lost: {e}", self.who))
            }
            _ => Failure::new("io", 502, format!("{}: {e}", self.who)),
        }
    }

    /// `PING` on the next connection.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let limit = Duration::from_millis(self.def.timeout_ms);
        let r = self
            .run(limit, async |c: &mut MultiplexedConnection| {
                c.req_packed_command(&redis::cmd("PING")).await
            })
            .await;
        let took_ms = start.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(Value::SimpleString(s)) => PingOutcome {
                ok: true,
                took_ms,
                detail: format!("{s} in {took_ms:.1} ms"),
            },
            Ok(Value::ServerError(e)) => PingOutcome {
                ok: false,
                took_ms,
                detail: format!("{}: {}", self.who, wire::server_message(&e)),
            },
            Ok(other) => PingOutcome {
                ok: false,
                took_ms,
                detail: format!("{}: PING answered {other:?}", self.who),
            },
            Err(e) => PingOutcome {
                ok: false,
                took_ms,
                detail: e.message,
            },
        }
    }

    /// Its figures: `pool_size` connections, `in_use` those with a call in flight, `idle`
    /// the connected ones without (a slot whose last attempt failed is neither); a multiplexed connection is never waited for (`waiting` 0).
    pub fn stats(&self) -> ConnStats {
        let f = &self.figures;
        let (buckets, sum) = f.latency.snapshot();
        let (mut in_use, mut idle) = (0, 0);
        for s in &self.slots {
            if s.in_flight.load(Ordering::Relaxed) > 0 {
                in_use += 1;
            } else {
                let st = s.state.lock().expect("redis slot lock");
                if st.connected == Some(true) && st.conn.is_some() {
                    idle += 1;
                }
            }
        }
        ConnStats {
            name: self.def.name.clone(),
            calls: f.calls.load(Ordering::Relaxed),
            errors: f.errors.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_s: sum,
            latency_buckets: buckets,
            pool_size: self.def.pool_size,
            in_use,
            idle,
            waiting: 0,
        }
    }
}
