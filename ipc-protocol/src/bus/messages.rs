//! Typed payloads of the bus frames that carry JSON, and the meta and bodies of the
//! operations of version 1. Field names and order are those of `BUS.md`; the encoders write
//! fields in that order (the golden vectors depend on it), receivers accept any order and
//! ignore fields they do not know.

use super::{Error, Nonce, Proof, check_name};
use serde::{Deserialize, Serialize};

pub use crate::messages::ErrorMsg;

/// `HELLO`: the dialer introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub cluster: String,
    pub server: String,
    pub nonce: Nonce,
}

/// `CHALLENGE`: the acceptor introduces itself and proves it knows the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    pub protocol: u32,
    pub cluster: String,
    pub server: String,
    pub nonce: Nonce,
    pub proof: Proof,
}

/// `AUTH`: the dialer proves it knows the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Auth {
    pub proof: Proof,
}

/// `WELCOME`: the acceptor admits the dialer; the link is up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    /// The acceptor's config version.
    pub config_version: u64,
    /// The servers the acceptor counts in the cluster: itself, its linked peers and the
    /// dialer, sorted by byte order.
    pub servers: Vec<String>,
}

/// `NOTIFY`: "I wrote config version N to the store".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notify {
    pub config_version: u64,
    /// The sender (the server that wrote the version).
    pub server: String,
    /// A hint: the kinds of objects the change touched (`modules`, `channels`, …); absent
    /// means anything may have changed. Receivers catch up from the store either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

/// The meta of a bus `REPLY`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyMeta {
    pub status: u16,
}

/// The JSON body of a `REPLY` whose status is not 200.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// A module and the stored version to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleVersion {
    pub name: String,
    pub version: u64,
}

/// `deploy.activate`: catch up to `config_version`, then make every worker run the store's
/// active version of each listed module (the listed one, unless a later change superseded it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployActivate {
    pub modules: Vec<ModuleVersion>,
    /// The config version the deploy wrote; the receiver catches up to it first.
    pub config_version: u64,
}

/// `deploy.remove`: catch up to `config_version`, then remove the listed modules from every
/// worker (those the store still has no active version of).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployRemove {
    pub modules: Vec<String>,
    pub config_version: u64,
}

/// The body of a 200 `REPLY` to `deploy.activate` / `deploy.remove`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployReport {
    /// The server that carried the call out.
    pub server: String,
    /// The config version it has applied (at least the call's).
    pub config_version: u64,
    /// What its workers now run for each listed module, in the call's order: the store's
    /// active version, which a later deploy may have made newer than the call's.
    pub modules: Vec<ModuleState>,
    /// One entry per worker, in worker id order.
    pub workers: Vec<WorkerReport>,
}

/// A module and the version a server's workers run (`null`: not deployed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleState {
    pub name: String,
    pub version: Option<u64>,
}

/// One worker's part of a [`DeployReport`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerReport {
    pub worker_id: u32,
    pub pid: u32,
    pub ok: bool,
    /// How long the worker took, in milliseconds.
    pub ms: u64,
    /// Why it failed (present exactly when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The operations of protocol version 1, as `CALL` meta (`{"op": …, fields…}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op")]
pub enum Op {
    #[serde(rename = "deploy.activate")]
    DeployActivate(DeployActivate),
    #[serde(rename = "deploy.remove")]
    DeployRemove(DeployRemove),
    /// Cache writes made on the sender, to apply here (`BUS.md`, `cache.apply`). Sent
    /// `ASYNC`; the body is a JSON array of writes.
    #[serde(rename = "cache.apply")]
    CacheApply(CacheApply),
    /// The receiver's per-service statistics (`BUS.md`, `services.stats`). Added within
    /// version 1.
    #[serde(rename = "services.stats")]
    ServicesStats(ServicesStats),
}

/// `services.stats` meta: one service's statistics, or (no `service`) every service's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicesStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `cache.apply` meta: nothing but the op; the writes are the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheApply {}

/// Op names and name prefixes that later versions define; in version 1 they are unknown
/// ops like any other (status 501), but nothing else may use them.
pub const RESERVED_OPS: [&str; 3] = ["cache.", "pubsub.", "invoke"];

/// Whether `op` is reserved for a later version (`cache.*`, `pubsub.*`, `invoke`).
pub fn is_reserved_op(op: &str) -> bool {
    op == "invoke" || op.starts_with("cache.") || op.starts_with("pubsub.")
}

/// Why a `CALL` meta cannot be carried out. Answered with a `REPLY` of [`OpError::status`]
/// and body [`OpError::body`] (nothing for an `ASYNC` call); never a connection error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpError {
    #[error("unknown op: {op}")]
    Unknown { op: String },
    #[error("unknown op: {op} (reserved for a later version of the cluster bus)")]
    Reserved { op: String },
    #[error("bad {op} call: {reason}")]
    Invalid { op: String, reason: String },
}

impl OpError {
    /// The `REPLY` status: 501 for an unknown op, 400 for a bad one.
    pub fn status(&self) -> u16 {
        match self {
            OpError::Unknown { .. } | OpError::Reserved { .. } => 501,
            OpError::Invalid { .. } => 400,
        }
    }

    /// The `REPLY` body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
        }
    }
}

impl Op {
    /// The op's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::DeployActivate(_) => "deploy.activate",
            Op::DeployRemove(_) => "deploy.remove",
            Op::CacheApply(_) => "cache.apply",
            Op::ServicesStats(_) => "services.stats",
        }
    }

    /// Reads a `CALL` meta: an unknown `op` is [`OpError::Unknown`] (or `Reserved`), a
    /// known one with bad fields is [`OpError::Invalid`].
    pub fn parse(meta: &[u8]) -> Result<Op, OpError> {
        #[derive(Deserialize)]
        struct Name {
            op: String,
        }
        let invalid = |op: &str, reason: String| OpError::Invalid {
            op: op.to_owned(),
            reason,
        };
        let name: Name = serde_json::from_slice(meta)
            .map_err(|e| invalid("(unnamed)", format!("meta needs a string \"op\": {e}")))?;
        let op = name.op;
        if op == "cache.apply" {
            return Ok(Op::CacheApply(CacheApply {}));
        }
        if op == "services.stats" {
            let parsed: Op =
                serde_json::from_slice(meta).map_err(|e| invalid(&op, e.to_string()))?;
            if let Op::ServicesStats(ServicesStats { service: Some(s) }) = &parsed
                && s.is_empty()
            {
                return Err(invalid(&op, "the service name is empty".into()));
            }
            return Ok(parsed);
        }
        if !matches!(op.as_str(), "deploy.activate" | "deploy.remove") {
            return Err(if is_reserved_op(&op) {
                OpError::Reserved { op }
            } else {
                OpError::Unknown { op }
            });
        }
        let parsed: Op = serde_json::from_slice(meta).map_err(|e| invalid(&op, e.to_string()))?;
        let names: Vec<&str> = match &parsed {
            Op::DeployActivate(a) => a.modules.iter().map(|m| m.name.as_str()).collect(),
            Op::DeployRemove(r) => r.modules.iter().map(String::as_str).collect(),
            Op::CacheApply(_) | Op::ServicesStats(_) => unreachable!("returned above"),
        };
        if names.is_empty() {
            return Err(invalid(&op, "no modules".into()));
        }
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() {
                return Err(invalid(&op, "a module name is empty".into()));
            }
            if names[..i].contains(n) {
                return Err(invalid(&op, format!("module {n:?} is listed twice")));
            }
        }
        Ok(parsed)
    }
}

/// Why a `WELCOME`'s server list is refused (the reason of its [`Error::BadPayload`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerListError {
    #[error("{0}")]
    Name(Error),
    #[error("servers are not sorted or repeat a name")]
    Unsorted,
    #[error("{0} servers listed")]
    TooMany(usize),
    #[error("servers do not include {0:?}")]
    Missing(String),
}

/// Checks a `WELCOME`'s server list: valid names, strictly ascending, at most
/// [`super::MAX_SERVERS`], including both ends of the link.
pub(crate) fn check_servers(
    servers: &[String],
    dialer: &str,
    acceptor: &str,
) -> Result<(), ServerListError> {
    for s in servers {
        check_name("server", s).map_err(ServerListError::Name)?;
    }
    if servers
        .windows(2)
        .any(|w| w[0].as_bytes() >= w[1].as_bytes())
    {
        return Err(ServerListError::Unsorted);
    }
    if servers.len() > super::MAX_SERVERS {
        return Err(ServerListError::TooMany(servers.len()));
    }
    for name in [dialer, acceptor] {
        if !servers.iter().any(|s| s == name) {
            return Err(ServerListError::Missing(name.to_owned()));
        }
    }
    Ok(())
}
