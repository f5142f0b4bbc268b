//! The audit log of admin changes: the central step of `mod.rs`'s `handle` ([`begin`] before
//! `route`, [`finish`] after it) and `GET /v1/audit`.
//!
//! Every non-GET request (but a service call and a cache entry's write, which change no
//! configuration) is recorded, so that no endpoint can be forgotten: its path gives the
//! object kind, name and action, and for the kinds the store holds (modules, channels,
//! secrets, security definitions, caches, jobs, API tokens) the digests of the stored objects
//! are read before and after the request — one object for `/v1/<kind>/{name}…`, the whole
//! kind for a create by `POST /v1/<kind>`, everything for a config import. A request on a
//! whole kind or on everything records only the objects it names itself (a deploy's or an
//! import's [`AuditNote::objects`], a create's [`AuditNote::name`] or the `name` of its
//! answer), so that a change made meanwhile through another server is never credited to it;
//! a deploy gives one row per module it changed, an import one per object and its own. A
//! handler can refine its row by attaching an [`AuditNote`] to its response (kind, name,
//! action, digests, detail), which [`finish`] reads and removes. A refused change (4xx) is
//! recorded as `refused` (a refusal by role without reading the store: [`refusal`]); a
//! failed one (5xx) only if something changed. A failure to write the row is logged at error
//! level and does not undo the change.

use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tracing::error as log_error;

use super::auth::Identity;
use super::{Body, Ctx, error, reply};
use crate::model::object::ConfigObject;
use crate::store::{AuditQuery, AuditRecord, digest};
use std::sync::atomic::Ordering;

/// The audit kind of a config import's change kind (`service_module` → `module`, both
/// channel kinds → `channel`).
pub(super) fn import_kind(kind: &str) -> &str {
    match kind {
        "service_module" => "module",
        k if k.starts_with("channel_") => "channel",
        k => k,
    }
}

/// A handler's refinement of its request's audit row, attached to its response's extensions
/// (`note.attach(&mut response)`). Every field is optional: what is unset comes from the path
/// and the digests read around the request.
#[derive(Debug, Clone, Default)]
pub(super) struct AuditNote {
    pub kind: Option<String>,
    /// The row's object name; for a create by `POST /v1/<kind>`, also the only object of the
    /// kind the row is about (without it, the `name` of the answer's JSON object is).
    pub name: Option<String>,
    pub action: Option<String>,
    /// Digest of the object before (see `store::digest`); never a secret's value or a token.
    pub before: Option<String>,
    pub after: Option<String>,
    /// The cid of what the change ran (a job run's), when the response has no `X-Oxbus-CID`.
    pub cid: Option<String>,
    /// The objects (audit kind, name) a request on a whole kind or on everything (a deploy,
    /// an import) changed: rows are written for these only, so that a change made at the same
    /// moment through another server is not recorded as this request's too.
    pub objects: Option<Vec<(String, String)>>,
    /// Merged into the row's detail (every row's, when the request changed several objects).
    pub detail: Option<Map<String, Value>>,
}

impl AuditNote {
    /// Attaches the note to `resp` for [`finish`].
    pub(super) fn attach(self, resp: &mut Response<Body>) {
        resp.extensions_mut().insert(self);
    }

    /// A note that adds `detail` only.
    pub(super) fn detail(detail: Value) -> AuditNote {
        AuditNote {
            detail: match detail {
                Value::Object(m) => Some(m),
                _ => None,
            },
            ..Default::default()
        }
    }
}

/// The kinds whose stored objects are digested here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Module,
    Channel,
    Secret,
    Security,
    Cache,
    Job,
    /// An outgoing REST connection (`/v1/outgoing/rest/…`).
    OutgoingRest,
    /// An outgoing SQL connection (`/v1/outgoing/sql/…`).
    OutgoingSql,
    /// An outgoing MQTT connection (`/v1/outgoing/mqtt/…`).
    OutgoingMqtt,
    /// An MQTT channel (`/v1/inbound/mqtt/…`).
    InboundMqtt,
    /// An AMQP channel (`/v1/inbound/amqp/…`).
    InboundAmqp,
    /// A file-transfer channel (`/v1/inbound/file/…`).
    InboundFile,
    /// An outgoing Redis connection (`/v1/outgoing/redis/…`).
    OutgoingRedis,
    /// Outgoing AMQP connections (`/v1/outgoing/amqp/…`).
    OutgoingAmqp,
    /// Pub/sub definitions (`/v1/pubsub/topics|subs|endpoints/…`).
    PubsubTopic,
    PubsubSub,
    PubsubEndpoint,
    /// A user config (`/v1/user-config/…`).
    UserConfig,
    /// A named admin API token (never the token or its hash).
    Token,
}

const ALL_KINDS: [Kind; 18] = [
    Kind::Module,
    Kind::Channel,
    Kind::Secret,
    Kind::Security,
    Kind::OutgoingMqtt,
    Kind::InboundMqtt,
    Kind::InboundAmqp,
    Kind::InboundFile,
    Kind::Cache,
    Kind::Job,
    Kind::OutgoingRedis,
    Kind::OutgoingRest,
    Kind::OutgoingSql,
    Kind::OutgoingAmqp,
    Kind::PubsubTopic,
    Kind::PubsubSub,
    Kind::PubsubEndpoint,
    Kind::UserConfig,
];

impl Kind {
    fn of(resource: &str) -> Option<Kind> {
        Some(match resource {
            "modules" => Kind::Module,
            "channels" => Kind::Channel,
            "outgoing_mqtt" => Kind::OutgoingMqtt,
            "inbound_mqtt" => Kind::InboundMqtt,
            "inbound_amqp" => Kind::InboundAmqp,
            "inbound_file" => Kind::InboundFile,
            "secrets" => Kind::Secret,
            "security" => Kind::Security,
            "caches" => Kind::Cache,
            "outgoing_redis" => Kind::OutgoingRedis,
            "jobs" => Kind::Job,
            "outgoing_rest" => Kind::OutgoingRest,
            "outgoing_sql" => Kind::OutgoingSql,
            "outgoing_amqp" => Kind::OutgoingAmqp,
            "pubsub_topics" => Kind::PubsubTopic,
            "pubsub_subs" => Kind::PubsubSub,
            "pubsub_endpoints" => Kind::PubsubEndpoint,
            "tokens" => Kind::Token,
            "user-config" => Kind::UserConfig,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::OutgoingMqtt => "outgoing_mqtt",
            Kind::InboundMqtt => "inbound_mqtt",
            Kind::InboundAmqp => "inbound_amqp",
            Kind::InboundFile => "inbound_file",
            Kind::Module => "module",
            Kind::Channel => "channel",
            Kind::Secret => "secret",
            Kind::Security => "security",
            Kind::OutgoingRedis => "outgoing_redis",
            Kind::Cache => "cache",
            Kind::Job => "job",
            Kind::OutgoingRest => "outgoing_rest",
            Kind::OutgoingSql => "outgoing_sql",
            Kind::OutgoingAmqp => "outgoing_amqp",
            // As an import's change list names them.
            Kind::PubsubTopic => "pubsub_topic",
            Kind::PubsubSub => "pubsub_subscription",
            Kind::PubsubEndpoint => "pubsub_endpoint",
            Kind::UserConfig => "user_config",
            Kind::Token => "token",
        }
    }
}

/// Which stored objects are digested around a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    None,
    Object(Kind, String),
    Kind(Kind),
    All,
}

/// A stored object's digest and what its rows show of it (a module's version).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    digest: String,
    detail: Map<String, Value>,
}

type Snapshot = BTreeMap<(Kind, String), Entry>;

/// An object whose digest a request changed: its key, before and after.
type Changed = ((Kind, String), Option<Entry>, Option<Entry>);

/// A request being recorded: what its path says, and the digests read before it.
pub(super) struct Pending {
    kind: String,
    name: String,
    action: String,
    scope: Scope,
    before: Option<Snapshot>,
}

/// The singular of a resource's path segment, as the audit log names a kind.
fn kind_name(resource: &str) -> String {
    match Kind::of(resource) {
        Some(k) => k.as_str().to_owned(),
        None => match resource {
            "config" => "config".to_owned(),
            r => r.strip_suffix('s').unwrap_or(r).to_owned(),
        },
    }
}

/// The most characters of a path's kind and name a row records (a path is the caller's:
/// a refused one may be anything).
const MAX_KIND_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 256;

/// `s` cut to `max` characters (an ellipsis marks a cut).
fn capped(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push('…');
    }
    s
}

/// What a request's method and path say it changes (its kind and name capped); None for a
/// request that is not recorded (a read, a service call, a cache entry's write).
fn target(method: &Method, path: &str) -> Option<(String, String, String, Scope)> {
    let (kind, name, action, scope) = target_uncapped(method, path)?;
    Some((
        capped(kind, MAX_KIND_CHARS),
        capped(name, MAX_NAME_CHARS),
        capped(action, MAX_KIND_CHARS),
        scope,
    ))
}

fn target_uncapped(method: &Method, path: &str) -> Option<(String, String, String, Scope)> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // A topic's name is the rest of its path (`/v1/pubsub/topics/orders/new`: `/orders/new`).
    if let ["v1", "pubsub", "topics", segments @ ..] = parts.as_slice()
        && !segments.is_empty()
    {
        let name = super::pubsub::topic_from_segments(segments);
        let action = match *method {
            Method::PUT => "put".to_owned(),
            Method::DELETE => "delete".to_owned(),
            ref m => m.as_str().to_ascii_lowercase(),
        };
        let scope = Scope::Object(Kind::PubsubTopic, name.clone());
        return Some((Kind::PubsubTopic.as_str().into(), name, action, scope));
    }
    let (resource, rest): (&str, &[&str]) = match parts.as_slice() {
        // One resource per connection type: `/v1/outgoing/rest/{name}` is an `outgoing_rest`.
        ["v1", "outgoing", "rest", rest @ ..] => ("outgoing_rest", rest),
        ["v1", "outgoing", "sql", rest @ ..] => ("outgoing_sql", rest),
        ["v1", "outgoing", "amqp", rest @ ..] => ("outgoing_amqp", rest),
        ["v1", "outgoing", "redis", rest @ ..] => ("outgoing_redis", rest),
        ["v1", "outgoing", "mqtt", rest @ ..] => ("outgoing_mqtt", rest),
        ["v1", "inbound", "mqtt", rest @ ..] => ("inbound_mqtt", rest),
        ["v1", "inbound", "amqp", rest @ ..] => ("inbound_amqp", rest),
        ["v1", "inbound", "file", rest @ ..] => ("inbound_file", rest),
        // A test publish is a call (as `invoke`), not a change of anything stored.
        ["v1", "pubsub", "publish", ..] => return None,
        ["v1", "pubsub", "topics"] => ("pubsub_topics", &[]),
        ["v1", "pubsub", "subs", rest @ ..] => ("pubsub_subs", rest),
        ["v1", "pubsub", "endpoints", rest @ ..] => ("pubsub_endpoints", rest),
        ["v1", "websocket", "clients", rest @ ..] => ("websocket_clients", rest),
        // A rolling restart: an action on this server's workers, no object.
        ["v1", "workers", "restart"] => {
            return Some((
                "workers".into(),
                String::new(),
                "restart".into(),
                Scope::None,
            ));
        }
        ["v1", resource, rest @ ..] => (*resource, rest),
        _ => {
            return Some((
                "unknown".into(),
                String::new(),
                method.as_str().to_ascii_lowercase(),
                Scope::None,
            ));
        }
    };
    // A ping probes the remote and changes nothing.
    if resource == "invoke"
        || matches!((resource, rest), ("caches", [_, "keys", ..]))
        || matches!(
            (resource, rest),
            (
                "outgoing_rest"
                    | "outgoing_sql"
                    | "outgoing_amqp"
                    | "outgoing_redis"
                    | "outgoing_mqtt",
                [_, "ping"]
            )
        )
    {
        return None;
    }
    let kind = Kind::of(resource);
    let kname = kind_name(resource);
    let decode = crate::edge::router::percent_decode;
    Some(match (rest, method) {
        ([], &Method::POST) if resource == "config" => {
            (kname, String::new(), "import".into(), Scope::All)
        }
        ([], &Method::POST) => (
            kname,
            String::new(),
            if kind == Some(Kind::Module) {
                "deploy"
            } else {
                "create"
            }
            .into(),
            kind.map_or(Scope::None, Scope::Kind),
        ),
        ([name], m) => {
            let name = decode(name);
            let action = match *m {
                Method::PUT => "put",
                Method::DELETE if kind == Some(Kind::Module) => "undeploy",
                Method::DELETE if kind == Some(Kind::Token) => "revoke",
                Method::DELETE => "delete",
                Method::POST => "create",
                _ => "change",
            };
            let scope = kind.map_or(Scope::None, |k| Scope::Object(k, name.clone()));
            (kname, name, action.into(), scope)
        }
        ([name, verb], _) => {
            let name = decode(name);
            let scope = kind.map_or(Scope::None, |k| Scope::Object(k, name.clone()));
            (kname, name, verb.to_string(), scope)
        }
        _ => (
            kname,
            rest.first().map(|n| decode(n)).unwrap_or_default(),
            method.as_str().to_ascii_lowercase(),
            Scope::None,
        ),
    })
}

async fn objects_of<K: ConfigObject>(
    cx: &Ctx,
    kind: Kind,
    out: &mut Snapshot,
) -> Result<(), String> {
    let list: Vec<K> = cx.store.objects().await.map_err(|e| e.to_string())?;
    for o in list {
        let v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
        out.insert(
            (kind, o.name().to_owned()),
            Entry {
                digest: digest(&v),
                detail: Map::new(),
            },
        );
    }
    Ok(())
}

/// Digests of every stored object of `kind`, added to `out`.
async fn read_kind(cx: &Ctx, kind: Kind, out: &mut Snapshot) -> Result<(), String> {
    match kind {
        Kind::Module => {
            let heads = cx
                .store
                .active_module_heads()
                .await
                .map_err(|e| e.to_string())?;
            for (name, version, hash) in heads {
                let mut detail = Map::new();
                detail.insert("version".into(), json!(version));
                out.insert(
                    (kind, name.clone()),
                    Entry {
                        digest: crate::store::module_head_digest(&name, version, &hash),
                        detail,
                    },
                );
            }
        }
        Kind::Channel => {
            for c in cx.store.channels().await.map_err(|e| e.to_string())? {
                let name = c.name.clone().unwrap_or_else(|| c.url_path.clone());
                let v = serde_json::to_value(&c).map_err(|e| e.to_string())?;
                out.insert(
                    (kind, name),
                    Entry {
                        digest: digest(&v),
                        detail: Map::new(),
                    },
                );
            }
        }
        Kind::Secret => {
            for s in cx.store.secrets().await.map_err(|e| e.to_string())? {
                out.insert(
                    (kind, s.name.clone()),
                    Entry {
                        digest: crate::store::secret_digest(&s.name, &s.sealed, &s.services),
                        detail: Map::new(),
                    },
                );
            }
        }
        Kind::Security => {
            objects_of::<crate::model::security::SecurityDef>(cx, kind, out).await?;
        }
        Kind::Cache => objects_of::<oxbus_cache::CacheDef>(cx, kind, out).await?,
        Kind::Job => objects_of::<crate::model::job::JobDef>(cx, kind, out).await?,
        // The digest covers the sealed credential (an edit of it is a change), never a
        // plaintext: the store has none.
        Kind::OutgoingRest => {
            objects_of::<crate::model::outgoing::RestConn>(cx, kind, out).await?;
        }
        Kind::OutgoingSql => {
            objects_of::<crate::model::outgoing::SqlConn>(cx, kind, out).await?;
        }
        Kind::OutgoingAmqp => {
            objects_of::<crate::model::amqp::AmqpConn>(cx, kind, out).await?;
        }
        Kind::OutgoingRedis => {
            objects_of::<crate::model::redis::RedisConn>(cx, kind, out).await?;
        }
        Kind::OutgoingMqtt => objects_of::<crate::model::mqtt::MqttConn>(cx, kind, out).await?,
        Kind::InboundMqtt => {
            objects_of::<crate::model::mqtt::MqttChannel>(cx, kind, out).await?;
        }
        Kind::InboundAmqp => {
            objects_of::<crate::model::amqp::AmqpChannel>(cx, kind, out).await?;
        }
        Kind::InboundFile => {
            objects_of::<crate::model::files::FileChannel>(cx, kind, out).await?;
        }
        Kind::PubsubTopic => objects_of::<crate::model::pubsub::Topic>(cx, kind, out).await?,
        Kind::PubsubSub => {
            objects_of::<crate::model::pubsub::Subscription>(cx, kind, out).await?;
        }
        Kind::PubsubEndpoint => {
            objects_of::<crate::model::pubsub::Endpoint>(cx, kind, out).await?;
        }
        Kind::UserConfig => {
            objects_of::<crate::model::user_config::UserConfig>(cx, kind, out).await?;
        }
        Kind::Token => {
            for t in cx.store.tokens().await.map_err(|e| e.to_string())? {
                // What the token is, never the token or its hash.
                let v = json!({
                    "name": t.name,
                    "role": t.role,
                    "created_at": t.created_at,
                    "created_by": t.created_by,
                });
                let mut detail = Map::new();
                detail.insert("role".into(), json!(t.role));
                out.insert(
                    (kind, t.name),
                    Entry {
                        digest: digest(&v),
                        detail,
                    },
                );
            }
        }
    }
    Ok(())
}

/// The digests `scope` covers; None (and an error logged) when the store cannot be read.
async fn snapshot(cx: &Ctx, scope: &Scope) -> Option<Snapshot> {
    let mut out = Snapshot::new();
    let kinds: &[Kind] = match scope {
        Scope::None => return Some(out),
        Scope::Object(k, _) | Scope::Kind(k) => std::slice::from_ref(k),
        Scope::All => &ALL_KINDS,
    };
    for k in kinds {
        if let Err(e) = read_kind(cx, *k, &mut out).await {
            log_error!(error = %e, "audit: cannot read the stored objects' digests");
            return None;
        }
    }
    if let Scope::Object(k, name) = scope {
        out.retain(|key, _| key.0 == *k && key.1 == *name);
    }
    Some(out)
}

/// Before `route`: what the request changes and the digests before it; None for a request
/// that is not recorded.
pub(super) async fn begin(cx: &Ctx, method: &Method, path: &str) -> Option<Pending> {
    let (kind, name, action, scope) = target(method, path)?;
    let before = snapshot(cx, &scope).await;
    Some(Pending {
        kind,
        name,
        action,
        scope,
        before,
    })
}

/// A change the caller's role does not allow (`resp`, its 403): recorded as `refused`
/// without reading any object; while the store is known to be down, logged instead (the
/// refusal is not kept waiting on the store). Returns `resp`.
pub(super) async fn refusal(
    cx: &Ctx,
    who: &Identity,
    method: &Method,
    path: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let Some((kind, name, action, _)) = target(method, path) else {
        return resp;
    };
    if !cx.node.store_ok.load(Ordering::SeqCst) {
        tracing::warn!(
            who = %who.name, action = %action, kind = %kind, name = %name,
            status = resp.status().as_u16(),
            "refused a change the role does not allow; not in the audit log: the config \
             store is unreachable"
        );
        return resp;
    }
    let pending = Pending {
        kind,
        name,
        action,
        scope: Scope::None,
        before: None,
    };
    finish(cx, who, pending, resp).await
}

/// The `name` of `resp`'s JSON object (a created object's), `resp` itself given back
/// unchanged. Only the name is taken: an answer may hold what must never be recorded (a new
/// API token).
async fn answer_name(resp: Response<Body>) -> (Option<String>, Response<Body>) {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let name = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
    (name, Response::from_parts(parts, Body::new(bytes)))
}

/// `after`'s detail, with `before`'s under `previous_<key>` (a module's versions).
fn entry_detail(before: Option<&Entry>, after: Option<&Entry>) -> Map<String, Value> {
    let mut d = Map::new();
    if let Some(a) = after {
        d.extend(a.detail.clone());
    }
    if let Some(b) = before {
        for (k, v) in &b.detail {
            d.insert(format!("previous_{k}"), v.clone());
        }
    }
    d
}

/// After `route`: writes the request's rows (see the module's doc) and returns `resp`
/// without its [`AuditNote`].
pub(super) async fn finish(
    cx: &Ctx,
    who: &Identity,
    p: Pending,
    mut resp: Response<Body>,
) -> Response<Body> {
    let status = resp.status();
    let note = resp.extensions_mut().remove::<AuditNote>();
    let cid = resp
        .headers()
        .get("x-oxbus-cid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let note = note.unwrap_or_default();
    let cid = cid.or(note.cid.clone());
    let (after, created) = if status.is_client_error() {
        (None, None)
    } else {
        // Read even when the before-read failed: what the object is now is still known.
        let after = snapshot(cx, &p.scope).await;
        let created = match &p.scope {
            Scope::Kind(_)
                if status.is_success() && note.objects.is_none() && note.name.is_none() =>
            {
                let (n, r) = answer_name(resp).await;
                resp = r;
                n
            }
            _ => None,
        };
        (after, created)
    };
    let base = AuditRecord {
        id: 0,
        at: 0,
        server: cx.node.name.clone(),
        who: who.name.clone(),
        action: String::new(),
        kind: String::new(),
        name: String::new(),
        before: None,
        after: None,
        cid,
        detail: Value::Null,
    };
    let rows = rows_of(&base, p, status, note, after, created);
    if let Err(e) = cx.store.audit_insert(&rows).await {
        for r in &rows {
            log_error!(
                error = %e, who = %r.who, action = %r.action, kind = %r.kind, name = %r.name,
                status = status.as_u16(),
                "cannot write the audit log: the change stands, unrecorded"
            );
        }
    }
    resp
}

/// The rows of a request (see the module's doc): `base` gives the server, identity and cid;
/// `after` is the digests read after it (None: not read, or the store could not be read);
/// `created` the name in a create's answer. No row for a failure (5xx) that changed nothing.
fn rows_of(
    base: &AuditRecord,
    p: Pending,
    status: StatusCode,
    note: AuditNote,
    after: Option<Snapshot>,
    created: Option<String>,
) -> Vec<AuditRecord> {
    let row = |kind: String, name: String, action: String| AuditRecord {
        action,
        kind,
        name,
        ..base.clone()
    };
    let mut kind = note.kind.clone().unwrap_or(p.kind);
    let name = note.name.clone().unwrap_or(p.name);
    let mut rows = Vec::new();
    if status.is_client_error() {
        let mut r = row(kind, name, "refused".into());
        let mut d = note.detail.clone().unwrap_or_default();
        d.insert("status".into(), json!(status.as_u16()));
        d.insert(
            "attempted".into(),
            json!(note.action.clone().unwrap_or(p.action)),
        );
        r.detail = Value::Object(d);
        rows.push(r);
    } else {
        // A request on a whole kind or on everything: the objects it names itself, and no
        // other (a change made meanwhile through another server is not this request's).
        let only: Option<Vec<(String, String)>> = match &p.scope {
            Scope::Kind(_) | Scope::All if note.objects.is_some() => note.objects.clone(),
            Scope::Kind(k) if status.is_success() => Some(
                note.name
                    .clone()
                    .or(created)
                    .map_or_else(Vec::new, |n| vec![(k.as_str().to_owned(), n)]),
            ),
            Scope::Kind(_) | Scope::All => Some(Vec::new()),
            Scope::Object(..) | Scope::None => None,
        };
        // The objects whose digest changed, by key.
        let mut changed: Vec<Changed> = match (&p.before, &after) {
            (Some(b), Some(a)) => {
                let mut keys: Vec<&(Kind, String)> = b.keys().chain(a.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .filter(|k| b.get(*k).map(|e| &e.digest) != a.get(*k).map(|e| &e.digest))
                    .map(|k| ((*k).clone(), b.get(k).cloned(), a.get(k).cloned()))
                    .collect()
            }
            _ => Vec::new(),
        };
        if let Some(only) = &only {
            changed
                .retain(|((k, n), _, _)| only.iter().any(|(ok, on)| ok == k.as_str() && on == n));
        }
        if status.is_server_error() && changed.is_empty() && note.action.is_none() {
            // Nothing changed: the answer says why.
            return Vec::new();
        }
        let presence = |b: &Option<Entry>, a: &Option<Entry>| match (b, a) {
            (None, _) => "create",
            (Some(_), None) => "delete",
            _ => "update",
        };
        let mut extra = note.detail.clone().unwrap_or_default();
        if status.is_server_error() {
            extra.insert("status".into(), json!(status.as_u16()));
        }
        let digests_known = p.before.is_some() && after.is_some();
        if !digests_known {
            extra.insert(
                "digests".into(),
                json!("unavailable: the store could not be read"),
            );
        }
        match &p.scope {
            Scope::Object(k, n) => {
                let b = p.before.as_ref().and_then(|s| s.get(&(*k, n.clone())));
                let a = after.as_ref().and_then(|s| s.get(&(*k, n.clone())));
                let action = match p.action.as_str() {
                    // Created or updated: known only from both digests.
                    "put" if digests_known => presence(&b.cloned(), &a.cloned()).to_owned(),
                    other => other.to_owned(),
                };
                let mut r = row(kind, name, note.action.clone().unwrap_or(action));
                r.before = note.before.clone().or_else(|| b.map(|e| e.digest.clone()));
                r.after = note.after.clone().or_else(|| a.map(|e| e.digest.clone()));
                let mut d = entry_detail(b, a);
                d.extend(extra);
                r.detail = Value::Object(d);
                rows.push(r);
            }
            Scope::Kind(_) | Scope::All => {
                let import = p.scope == Scope::All;
                for ((k, n), b, a) in &changed {
                    let action = match (k, a) {
                        (Kind::Module, Some(_)) => "deploy",
                        (Kind::Module, None) => "undeploy",
                        _ => presence(b, a),
                    };
                    let mut r = row(k.as_str().into(), n.clone(), action.into());
                    r.before = b.as_ref().map(|e| e.digest.clone());
                    r.after = a.as_ref().map(|e| e.digest.clone());
                    let mut d = entry_detail(b.as_ref(), a.as_ref());
                    if import {
                        d.insert("via".into(), json!("import"));
                    }
                    d.extend(extra.clone());
                    r.detail = Value::Object(d);
                    rows.push(r);
                }
                // A config import's own row; and a create or deploy that changed nothing
                // (every module unchanged) or whose digests could not be read.
                if import || changed.is_empty() {
                    if import {
                        kind = note.kind.clone().unwrap_or_else(|| "config".into());
                    }
                    let mut r = row(kind, name, note.action.clone().unwrap_or(p.action));
                    r.before = note.before.clone();
                    r.after = note.after.clone();
                    r.detail = Value::Object(extra);
                    rows.push(r);
                }
            }
            Scope::None => {
                let mut r = row(kind, name, note.action.clone().unwrap_or(p.action));
                r.before = note.before.clone();
                r.after = note.after.clone();
                r.detail = Value::Object(extra);
                rows.push(r);
            }
        }
    }
    rows
}

/// How often the rows past the retention are deleted, and how many per statement (short
/// transactions: a large backlog never holds the table long).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const PRUNE_BATCH: i64 = 1000;

/// Deletes every row older than `retention_days`, batch by batch; how many were deleted.
pub async fn prune_once(
    store: &crate::store::Store,
    retention_days: u32,
) -> crate::store::Result<u64> {
    let cutoff = chrono::Utc::now().timestamp_millis() - i64::from(retention_days) * 86_400_000;
    let mut total = 0;
    loop {
        let n = store.audit_prune(cutoff, PRUNE_BATCH).await?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The background task (started by boot): [`prune_once`] at start and then hourly; a store
/// that cannot be reached now is tried again at the next round.
pub async fn prune(store: crate::store::Store, retention_days: u32) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match prune_once(&store, retention_days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, retention_days, "audit log: old rows deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "audit log: cannot delete old rows now; trying again in an hour")
            }
        }
    }
}

/// The most rows one `GET /v1/audit` answers with, and the default.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

/// `1h`, `30m`, `90s`, `7d`, `2w` as milliseconds.
fn parse_duration_ms(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// `since`: an RFC 3339 time or a duration back from now; Unix ms.
fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match parse_duration_ms(s) {
        Some(d) => Ok(now_ms.saturating_sub(d)),
        None => Err(format!(
            "since={s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration \
             (90s, 30m, 1h, 7d, 2w)"
        )),
    }
}

/// The query of `GET /v1/audit`, and its pairs for the `next` link (as given, but `since`
/// as an absolute time and without `before`).
fn parse_query(query: &str, now_ms: i64) -> Result<(AuditQuery, Vec<(String, String)>), String> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // `+` stays `+` (an RFC 3339 offset); a space is `%20`.
        let v = crate::edge::router::percent_decode(v);
        match k {
            "object" => {
                let (kind, name) = match v.split_once('/') {
                    Some((k, n)) => (k, Some(n)),
                    None => (v.as_str(), None),
                };
                if kind.is_empty() || name == Some("") {
                    return Err(format!(
                        "object={v:?}: expected a kind (module, channel, secret, security, \
                         cache, job, token, config) or kind/name"
                    ));
                }
                q.kind = Some(kind.to_owned());
                q.name = name.map(str::to_owned);
            }
            "who" if v.is_empty() => {
                return Err(
                    "who must not be empty: expected an identity name (root, a token's name, \
                     pickup)"
                        .to_owned(),
                );
            }
            "who" => q.who = Some(v.clone()),
            "since" => {
                let since = parse_since(&v, now_ms)?;
                q.since = Some(since);
                // The next page covers the same span: a duration (`1h`) becomes its time.
                kept.push(("since".to_owned(), time_rfc3339(since)));
                continue;
            }
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => {
                    return Err(format!(
                        "limit={v:?}: expected a number from 1 to {MAX_LIMIT}"
                    ));
                }
            },
            "before" => match v.parse::<i64>() {
                Ok(n) if n > 0 => {
                    q.before_id = Some(n);
                    continue;
                }
                _ => {
                    return Err(format!(
                        "before={v:?}: expected an entry id (a positive number)"
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "unknown query parameter {k:?} (object, who, since, limit, before)"
                ));
            }
        }
        kept.push((
            k.to_owned(),
            pair.split_once('=').map_or("", |x| x.1).to_owned(),
        ));
    }
    Ok((q, kept))
}

fn time_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `GET /v1/audit?object=&who=&since=&limit=&before=`: newest first; `next` is the path of
/// the following page (older rows), null on the last.
pub(super) async fn list(cx: &Ctx, query: &str) -> Response<Body> {
    let now = chrono::Utc::now().timestamp_millis();
    let (mut q, kept) = match parse_query(query, now) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let limit = q.limit;
    q.limit = limit + 1;
    let mut rows = match cx.store.audit_page(&q).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let next = next_before.map(|id| {
        let mut pairs: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.push(format!("before={id}"));
        format!("/v1/audit?{}", pairs.join("&"))
    });
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "time": time_rfc3339(r.at),
                "at_ms": r.at,
                "server": r.server,
                "who": r.who,
                "action": r.action,
                "kind": r.kind,
                "name": r.name,
                "object": if r.name.is_empty() { r.kind.clone() } else { format!("{}/{}", r.kind, r.name) },
                "before": r.before,
                "after": r.after,
                "cid": r.cid,
                "detail": r.detail,
            })
        })
        .collect();
    let mut resp = reply(
        StatusCode::OK,
        json!({"entries": entries, "next": next, "next_before": next_before}),
    );
    if let Some(next) = next
        && let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\""))
    {
        resp.headers_mut().insert(hyper::header::LINK, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_what_they_change() {
        let t = |m: Method, p: &str| target(&m, p).map(|(k, n, a, _)| format!("{k} {n} {a}"));
        assert_eq!(t(Method::GET, "/v1/modules"), None);
        assert_eq!(t(Method::POST, "/v1/invoke/echo"), None);
        assert_eq!(t(Method::PUT, "/v1/caches/c/keys/k"), None);
        assert_eq!(t(Method::POST, "/v1/outgoing/rest/crm/ping"), None);
        assert_eq!(
            t(Method::PUT, "/v1/outgoing/rest/crm").unwrap(),
            "outgoing_rest crm put"
        );
        assert_eq!(
            t(Method::DELETE, "/v1/outgoing/sql/db").unwrap(),
            "outgoing_sql db delete"
        );
        let scope = target(&Method::PUT, "/v1/outgoing/sql/db").unwrap().3;
        assert_eq!(scope, Scope::Object(Kind::OutgoingSql, "db".into()));
        assert_eq!(t(Method::POST, "/v1/modules").unwrap(), "module  deploy");
        assert_eq!(
            t(Method::DELETE, "/v1/modules/m").unwrap(),
            "module m undeploy"
        );
        assert_eq!(
            t(Method::POST, "/v1/modules/m/rollback").unwrap(),
            "module m rollback"
        );
        assert_eq!(
            t(Method::PUT, "/v1/channels/%2Fecho").unwrap(),
            "channel /echo put"
        );
        assert_eq!(
            t(Method::POST, "/v1/caches/c/clear").unwrap(),
            "cache c clear"
        );
        assert_eq!(
            t(Method::PUT, "/v1/pubsub/topics/orders/new").unwrap(),
            "pubsub_topic /orders/new put"
        );
        let scope = target(&Method::DELETE, "/v1/pubsub/topics/orders")
            .unwrap()
            .3;
        assert_eq!(scope, Scope::Object(Kind::PubsubTopic, "/orders".into()));
        assert_eq!(
            t(Method::DELETE, "/v1/pubsub/subs/sk.1").unwrap(),
            "pubsub_subscription sk.1 delete"
        );
        assert_eq!(
            t(Method::POST, "/v1/pubsub/subs/sk.1/purge").unwrap(),
            "pubsub_subscription sk.1 purge"
        );
        assert_eq!(
            t(Method::PUT, "/v1/pubsub/endpoints/crm").unwrap(),
            "pubsub_endpoint crm put"
        );
        assert_eq!(t(Method::POST, "/v1/pubsub/publish/orders/new"), None);
        assert_eq!(
            t(Method::PUT, "/v1/user-config/app.settings").unwrap(),
            "user_config app.settings put"
        );
        let scope = target(&Method::DELETE, "/v1/user-config/app").unwrap().3;
        assert_eq!(scope, Scope::Object(Kind::UserConfig, "app".into()));
        assert_eq!(t(Method::POST, "/v1/config").unwrap(), "config  import");
        assert_eq!(t(Method::POST, "/v1/tokens").unwrap(), "token  create");
        assert_eq!(
            t(Method::DELETE, "/v1/tokens/ci").unwrap(),
            "token ci revoke"
        );
        // A path is the caller's: what a row keeps of it is capped.
        let long = format!("/v1/{}/{}", "k".repeat(5000), "n".repeat(5000));
        let (k, n, a, _) = target(&Method::DELETE, &long).unwrap();
        assert_eq!(k.chars().count(), MAX_KIND_CHARS + 1);
        assert_eq!(n.chars().count(), MAX_NAME_CHARS + 1);
        assert!(k.ends_with('…') && n.ends_with('…'));
        assert_eq!(a, "delete");
        let (_, n, ..) =
            target(&Method::PUT, &format!("/v1/channels/{}", "é".repeat(300))).unwrap();
        assert_eq!(n.chars().count(), MAX_NAME_CHARS + 1);
    }

    #[test]
    fn queries_are_checked() {
        let now = 10 * 86_400_000;
        let (q, _) = parse_query("object=channel/%2Fecho&who=root&limit=5", now).unwrap();
        assert_eq!(q.kind.as_deref(), Some("channel"));
        assert_eq!(q.name.as_deref(), Some("/echo"));
        assert_eq!(q.who.as_deref(), Some("root"));
        assert_eq!(q.limit, 5);
        assert_eq!(
            parse_query("since=1h", now).unwrap().0.since,
            Some(now - 3_600_000)
        );
        assert_eq!(
            parse_query("since=1970-01-02T00:00:00Z", now)
                .unwrap()
                .0
                .since,
            Some(86_400_000)
        );
        for offset in ["+02:00", "%2B02:00"] {
            let q = format!("since=1970-01-02T02:00:00{offset}");
            assert_eq!(parse_query(&q, now).unwrap().0.since, Some(86_400_000));
        }
        // `next` keeps a relative `since` as the absolute time it meant.
        let (_, kept) = parse_query("since=1h&who=ci", now).unwrap();
        assert_eq!(
            kept,
            [
                ("since".to_owned(), "1970-01-10T23:00:00.000Z".to_owned()),
                ("who".to_owned(), "ci".to_owned())
            ]
        );
        let abs = &kept[0].1;
        assert_eq!(
            parse_query(&format!("since={abs}"), now).unwrap().0.since,
            Some(now - 3_600_000)
        );
        assert_eq!(
            parse_query("who=", now).unwrap_err(),
            "who must not be empty: expected an identity name (root, a token's name, pickup)"
        );
        for bad in [
            "who=",
            "limit=0",
            "limit=1001",
            "limit=x",
            "since=yesterday",
            "since=5y",
            "object=",
            "object=module/",
            "before=-1",
            "color=red",
        ] {
            assert!(parse_query(bad, now).is_err(), "{bad}");
        }
    }

    fn snap(objects: &[(Kind, &str, &str)]) -> Snapshot {
        objects
            .iter()
            .map(|(k, n, d)| {
                (
                    (*k, (*n).to_owned()),
                    Entry {
                        digest: (*d).to_owned(),
                        detail: Map::new(),
                    },
                )
            })
            .collect()
    }

    fn base() -> AuditRecord {
        AuditRecord {
            id: 0,
            at: 0,
            server: "s1".into(),
            who: "ci".into(),
            action: String::new(),
            kind: String::new(),
            name: String::new(),
            before: None,
            after: None,
            cid: None,
            detail: Value::Null,
        }
    }

    /// `kind/name action before after` of each row.
    fn lines(rows: &[AuditRecord]) -> Vec<String> {
        rows.iter()
            .map(|r| {
                format!(
                    "{}/{} {} {} {}",
                    r.kind,
                    r.name,
                    r.action,
                    r.before.as_deref().unwrap_or("-"),
                    r.after.as_deref().unwrap_or("-")
                )
            })
            .collect()
    }

    /// A create by `POST /v1/<kind>` is credited with the object it created only: a change
    /// of another object of the kind made meanwhile (through another server) is not its.
    #[test]
    fn a_create_is_credited_with_its_own_object_only() {
        let pending = || {
            let (kind, name, action, scope) = target(&Method::POST, "/v1/channels").unwrap();
            Pending {
                kind,
                name,
                action,
                scope,
                before: Some(snap(&[
                    (Kind::Channel, "theirs", "d1"),
                    (Kind::Channel, "other", "d2"),
                ])),
            }
        };
        let after = || {
            Some(snap(&[
                (Kind::Channel, "other", "d2x"),
                (Kind::Channel, "mine", "d3"),
            ]))
        };
        let created = StatusCode::CREATED;
        // Named by the handler's note, or by the answer.
        let note = AuditNote {
            name: Some("mine".into()),
            ..Default::default()
        };
        let rows = rows_of(&base(), pending(), created, note, after(), None);
        assert_eq!(lines(&rows), ["channel/mine create - d3"]);
        assert_eq!(
            (rows[0].who.as_str(), rows[0].server.as_str()),
            ("ci", "s1")
        );
        let rows = rows_of(
            &base(),
            pending(),
            created,
            AuditNote::default(),
            after(),
            Some("mine".into()),
        );
        assert_eq!(lines(&rows), ["channel/mine create - d3"]);
        // Named by nothing: no other object credited.
        let rows = rows_of(
            &base(),
            pending(),
            created,
            AuditNote::default(),
            after(),
            None,
        );
        assert_eq!(lines(&rows), ["channel/ create - -"]);
        // A deploy's or an import's note names its objects.
        let note = AuditNote {
            objects: Some(vec![("channel".into(), "other".into())]),
            ..Default::default()
        };
        let rows = rows_of(&base(), pending(), StatusCode::OK, note, after(), None);
        assert_eq!(lines(&rows), ["channel/other update d2 d2x"]);
    }

    /// A failed before-read leaves a PUT `put` (created or updated is not known), with the
    /// digest after it.
    #[test]
    fn a_put_without_its_before_digest_stays_put() {
        let pending = |before: Option<Snapshot>| {
            let (kind, name, action, scope) = target(&Method::PUT, "/v1/secrets/s").unwrap();
            Pending {
                kind,
                name,
                action,
                scope,
                before,
            }
        };
        let after = Some(snap(&[(Kind::Secret, "s", "d9")]));
        let rows = rows_of(
            &base(),
            pending(None),
            StatusCode::OK,
            AuditNote::default(),
            after.clone(),
            None,
        );
        assert_eq!(lines(&rows), ["secret/s put - d9"]);
        assert_eq!(
            rows[0].detail["digests"],
            "unavailable: the store could not be read"
        );
        let rows = rows_of(
            &base(),
            pending(Some(Snapshot::new())),
            StatusCode::CREATED,
            AuditNote::default(),
            after,
            None,
        );
        assert_eq!(lines(&rows), ["secret/s create - d9"]);
        assert_eq!(rows[0].detail.get("digests"), None);
    }

    #[test]
    fn digests_do_not_depend_on_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": null, "y": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"b": 2})));
        assert_eq!(
            crate::store::canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,2]},"b":1}"#
        );
    }
}
