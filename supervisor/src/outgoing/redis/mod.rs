//! Outgoing Redis connections (docs/CONNECTORS.md, "Redis"): per connection and server,
//! `pool_size` multiplexed connections (the `redis` crate's `ConnectionManager`, which
//! reconnects by itself), taken round-robin by the calls, each connected at its first call
//! (a server starts while Redis is down). Every call is bounded by `timeout_ms` (and by the
//! caller's `deadline_ms`), connecting included.
//!
//! The workers' `out.redis` op (ipc-protocol/SPEC.md) carries one command or a pipeline of
//! them (optionally MULTI/EXEC), as argument lists; [`wire`] is the body format. Redis's
//! error replies fail the call `redis` (a pipeline's are elements of its reply instead),
//! connection failures `connect` / `io`, an expired call `timeout`. The password is opened
//! from its seal when the client is built and only handed to the `redis` crate.

pub mod wire;

use bytes::Bytes;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError, Value};

use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::redis::{RedisConn, parse_address};
use crate::secrets::Key;

/// The most commands one pipeline may hold.
pub const MAX_PIPELINE: usize = 100_000;

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

/// One slot of the pool: its connection, made at its first call.
#[derive(Default)]
struct Slot {
    conn: OnceLock<Result<ConnectionManager, String>>,
    /// Calls on this slot now.
    in_flight: AtomicU32,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("connected", &self.conn.get().is_some())
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
    let info = info.set_redis_settings(settings);
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
            figures: Figures::default(),
        }
    }

    pub fn def(&self) -> &RedisConn {
        &self.def
    }

    /// The next slot round-robin, and its connection (made now if this is its first call).
    fn connection(&self) -> Result<(&Slot, ConnectionManager), Failure> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let made = slot.conn.get_or_init(|| {
            let client = self.client.clone()?;
            let timeout = Duration::from_millis(self.def.timeout_ms);
            // One quick retry: a call during an outage fails `connect` at once rather than
            // waiting out a backoff; the next call starts another attempt.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1));
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
        });
        match made {
            Ok(c) => Ok((slot, c.clone())),
            Err(e) => Err(Failure::new(
                "connect",
                502,
                format!("{}: cannot connect: {e}", self.who),
            )),
        }
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
                    .run(limit, async |c: &mut ConnectionManager| {
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
                    .run(limit, async |c: &mut ConnectionManager| {
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
        Ok(out)
    }

    /// Runs `f` on the next connection within `limit`.
    async fn run<T>(
        &self,
        limit: Duration,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, Failure> {
        let (slot, mut conn) = self.connection()?;
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(limit, f(&mut conn)).await;
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failure(&e)),
            Err(_) => Err(self.timed_out(limit)),
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
            redis::ErrorKind::AuthenticationFailed => Failure::new(
                "connect",
                502,
                format!("{}: authentication failed: {e}", self.who),
            ),
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
            _ if e.is_connection_refusal() => {
                Failure::new("connect", 502, format!("{}: connect: {e}", self.who))
            }
            _ if e.is_connection_dropped() => {
                Failure::new("io", 502, format!("{}: connection lost: {e}", self.who))
            }
            // Not a dropped connection: one that could not be made (TLS: an untrusted
            // certificate, a name it does not cover; DNS; unreachable).
            _ if e.is_io_error() => {
                Failure::new("connect", 502, format!("{}: connect: {e}", self.who))
            }
            _ => Failure::new("io", 502, format!("{}: {e}", self.who)),
        }
    }

    /// `PING` on the next connection.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let limit = Duration::from_millis(self.def.timeout_ms);
        let r = self
            .run(limit, async |c: &mut ConnectionManager| {
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
    /// the made ones without; a multiplexed connection is never waited for (`waiting` 0).
    pub fn stats(&self) -> ConnStats {
        let f = &self.figures;
        let (buckets, sum) = f.latency.snapshot();
        let (mut in_use, mut idle) = (0, 0);
        for s in &self.slots {
            if s.in_flight.load(Ordering::Relaxed) > 0 {
                in_use += 1;
            } else if matches!(s.conn.get(), Some(Ok(_))) {
                idle += 1;
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
