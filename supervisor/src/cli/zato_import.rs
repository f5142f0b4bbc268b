//! `oxbus zato import FILE`: a Zato 3.2 cluster's config, as its `enmasse` tool exports it
//! (YAML or JSON), turned into the document `oxbus config import` sends
//! (`model/document.rs`) and sent the same way, through the admin API, where the server
//! validates it in full. docs/ZATO_IMPORT.md says what maps to what.
//!
//! What cannot be mapped (a kind Oxbus lacks, a SOAP channel, an NTLM definition, a basic
//! auth definition whose password the export does not carry…) is left out and listed with
//! the reason; the rest is still imported, and the exit code is 2 instead of 0 so that a
//! script notices. Every mapped object is checked here with the model's own validation
//! first, so one object the server would refuse is reported alone instead of failing the
//! whole import.
//!
//! Passwords: Zato's enmasse never exports them, so an entry usually has none (or a
//! placeholder, `{Zato_Enmasse_Env.NAME}` when NAME is not set, `@@NAME@@`, `******`). None is
//! ever invented. A definition that cannot exist without one (a basic auth or API key
//! definition, an outgoing REST connection's credential) is imported only when this
//! server already holds one of that name and kind, whose stored secret the server then
//! keeps (the admin API's rule for an edit without a secret); otherwise it is reported as
//! not mapped, with what to do. A connection a password is optional for (SQL, Redis,
//! AMQP) is imported without one and its line says so.
//!
//! The mapping ([`map`]) is plain data in, plain data out: the file's document and what the
//! server stores (its `GET /v1/config`) give the document to send and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::CliError;
use super::args::{Output, ZatoImportArgs};
use super::client::call;
use crate::model::amqp::AmqpConn;
use crate::model::channel::{Channel, ChannelType, DataFormat, ParamsPriority};
use crate::model::job::{JobDef, JobType, format_start_date};
use crate::model::outgoing::{
    self, Carry, Credentialed, RestAuth, RestConn, SqlConn, SqlEngine, TlsOptions,
};
use crate::model::redis::RedisConn;
use crate::model::security::{DEFAULT_KEY_HEADER, SecurityDef, SecurityType};
use oxbus_cache::CacheDef;

/// The exit code of an import that left objects out (the others were imported).
pub const EXIT_SKIPPED: u8 = 2;

/// Why `oxbus zato import` failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ZatoImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid YAML or JSON: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    /// The file parses but is not an enmasse export.
    #[error("{}: not a Zato enmasse export: {why}", path.display())]
    NotEnmasse { path: PathBuf, why: String },
    /// The server's config export (read for the stored secrets) does not parse.
    #[error("the server's config export does not read: {0}")]
    Stored(String),
    /// Reaching the admin API, or its refusal of the document.
    #[error("{0}")]
    Cli(#[from] CliError),
}

/// One Zato object mapped to one Oxbus object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapped {
    pub zato_kind: String,
    pub zato_name: String,
    pub oxbus_kind: &'static str,
    pub oxbus_name: String,
    /// What differs from the Zato object, or what is left to do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One Zato object (or a whole top-level key) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub zato_kind: String,
    /// None: the whole top-level key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zato_name: Option<String>,
    pub reason: String,
}

/// The document to send and the report of how it was made.
#[derive(Debug, Default)]
pub struct Mapping {
    pub doc: Map<String, Value>,
    pub mapped: Vec<Mapped>,
    pub skipped: Vec<Skipped>,
}

/// What the server stores that the mapping needs: the definitions whose secret it may keep.
#[derive(Debug, Default)]
pub struct Stored {
    pub security: Vec<SecurityDef>,
    pub rest: Vec<RestConn>,
    pub sql: Vec<SqlConn>,
    pub redis: Vec<RedisConn>,
    pub amqp: Vec<AmqpConn>,
}

impl Stored {
    /// From the server's `GET /v1/config` document.
    pub fn from_export(doc: &Value) -> Result<Stored, String> {
        fn list<T: serde::de::DeserializeOwned>(doc: &Value, key: &str) -> Result<Vec<T>, String> {
            match doc.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}")),
            }
        }
        Ok(Stored {
            security: list(doc, "security")?,
            rest: list(doc, "outgoing_rest")?,
            sql: list(doc, "outgoing_sql")?,
            redis: list(doc, "outgoing_redis")?,
            amqp: list(doc, "outgoing_amqp")?,
        })
    }
}

/// The Oxbus kinds this import produces: with `--replace` only these are replaced.
const PRODUCED: [&str; 8] = [
    "security",
    "channel_rest",
    "outgoing_rest",
    "outgoing_sql",
    "outgoing_redis",
    "outgoing_amqp",
    "job",
    "cache",
];

/// Zato 3.2 enmasse keys this import reads.
const MAPPED_KEYS: [&str; 17] = [
    "security",
    "def_sec",
    "basic_auth",
    "apikey",
    "jwt",
    "channel_rest",
    "channel_plain_http",
    "outgoing_rest",
    "outconn_plain_http",
    "http_soap",
    "outconn_sql",
    "outconn_redis",
    "outconn_amqp",
    "def_amqp",
    "scheduler",
    "zato_cache_builtin",
    "channel_soap",
];

/// Zato 3.2 enmasse keys this import knows and does not map, with the reason.
const UNMAPPED_KEYS: &[(&str, &str)] = &[
    ("outconn_soap", "SOAP: Oxbus has no SOAP connections"),
    (
        "pubsub_topic",
        "pub/sub objects are not mapped by this import: define them with `oxbus pubsub` (docs/PUBSUB.md)",
    ),
    (
        "pubsub_endpoint",
        "pub/sub objects are not mapped by this import: define them with `oxbus pubsub` (docs/PUBSUB.md)",
    ),
    (
        "pubsub_subscription",
        "pub/sub objects are not mapped by this import: define them with `oxbus pubsub` (docs/PUBSUB.md)",
    ),
    (
        "pubsub_sub",
        "pub/sub objects are not mapped by this import: define them with `oxbus pubsub` (docs/PUBSUB.md)",
    ),
    (
        "web_socket",
        "WebSocket channels are not mapped by this import: define them as `type: websocket` channels (docs/WEBSOCKET.md)",
    ),
    (
        "channel_amqp",
        "AMQP channels are not mapped by this import: define them with `oxbus inbound put amqp` (docs/CONNECTORS.md)",
    ),
    (
        "outgoing_wsx",
        "Oxbus has no outgoing WebSocket connections",
    ),
    ("outgoing_ldap", "Oxbus has no LDAP connections"),
    (
        "security_groups",
        "Oxbus has no security groups: a channel takes one security definition",
    ),
    (
        "zato_generic_connection",
        "Zato's generic connections (LDAP, MongoDB, Microsoft 365, WebSocket, SFTP…) have no Oxbus equivalent",
    ),
    (
        "zato_generic_rest_wrapper",
        "Zato's REST wrappers have no Oxbus equivalent: use an outgoing REST connection",
    ),
    ("zato_cache_memcached", "Oxbus has no Memcached caches"),
    ("email_smtp", "Oxbus has no SMTP connections"),
    ("email_imap", "Oxbus has no IMAP connections"),
    ("channel_jms_wmq", "Oxbus has no IBM MQ channels"),
    ("outconn_jms_wmq", "Oxbus has no IBM MQ connections"),
    ("def_jms_wmq", "Oxbus has no IBM MQ connections"),
    ("channel_zmq", "Oxbus has no ZeroMQ channels"),
    ("outconn_zmq", "Oxbus has no ZeroMQ connections"),
    ("outconn_ftp", "Oxbus has no FTP connections"),
    ("outconn_odoo", "Oxbus has no Odoo connections"),
    ("outconn_sap", "Oxbus has no SAP connections"),
    ("outconn_im_slack", "Oxbus has no Slack connections"),
    ("outconn_im_telegram", "Oxbus has no Telegram connections"),
    ("def_cassandra", "Oxbus has no Cassandra connections"),
    ("query_cassandra", "Oxbus has no Cassandra connections"),
    ("notif_sql", "Oxbus has no SQL notifications"),
    ("search_es", "Oxbus has no ElasticSearch connections"),
    ("search_solr", "Oxbus has no Solr connections"),
    ("cloud_aws_s3", "Oxbus has no AWS S3 connections"),
    (
        "json_rpc",
        "Zato's JSON-RPC channels are not mapped: define a `type: jsonrpc` channel (docs/JSONRPC.md)",
    ),
    (
        "include",
        "includes are not followed: import each included file with its own `oxbus zato import`",
    ),
];

/// Names Zato gives its own objects (enmasse leaves them out of an export).
const ZATO_INTERNAL_PREFIXES: [&str; 3] = ["zato.", "/zato", "pub.zato."];

/// The values Zato writes for "no security definition".
const NO_SECURITY: [&str; 3] = ["zato-no-security", "ZATO_NONE", "ZATO_SEC_USE_RBAC"];

/// Runs `oxbus zato import`; the exit code is 0, or [`EXIT_SKIPPED`] when objects were left
/// out.
pub fn command(
    rt: &tokio::runtime::Runtime,
    a: &ZatoImportArgs,
) -> Result<ExitCode, ZatoImportError> {
    let file = read_file(&a.file, |k| std::env::var(k).ok())?;
    let export = call(rt, &a.to, "GET", "/v1/config", Vec::new())?;
    let export = export
        .doc
        .ok_or_else(|| ZatoImportError::Stored("not JSON".into()))?;
    let stored = Stored::from_export(&export).map_err(ZatoImportError::Stored)?;
    let mut m = map(&file, &stored);
    if a.replace {
        keep_other_kinds(&mut m.doc, &export);
    }
    let answer = if m.mapped.is_empty() && !a.replace {
        None
    } else {
        let path = format!(
            "/v1/config?dry_run={}&replace={}",
            u8::from(a.dry_run),
            u8::from(a.replace)
        );
        let body = Value::Object(m.doc.clone()).to_string().into_bytes();
        let answer = call(rt, &a.to, "POST", &path, body)?;
        Some(answer.doc.unwrap_or(Value::String(answer.text)))
    };
    match a.output {
        Output::Json => println!(
            "{:#}",
            json!({
                "file": a.file.display().to_string(),
                "dry_run": a.dry_run,
                "mapped": m.mapped,
                "skipped": m.skipped,
                "import": answer,
            })
        ),
        Output::Text => print_report(&m, answer.as_ref(), a.dry_run),
    }
    Ok(if m.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SKIPPED)
    })
}

/// With `--replace`: every stored object of a kind this import does not produce goes back
/// into the document as exported (sealed values included), so that the replace deletes only
/// objects of the kinds a Zato export describes, never modules, secrets or pub/sub.
fn keep_other_kinds(doc: &mut Map<String, Value>, export: &Value) {
    let Some(stored) = export.as_object() else {
        return;
    };
    for (k, v) in stored {
        if k == "config_version" || k == "oxbus_config" {
            continue;
        }
        if k == "channel_rest" {
            // Pub/sub and WebSocket channels are listed with the REST ones.
            let others: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| {
                    c.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t != "rest")
                })
                .cloned()
                .collect();
            if let Value::Array(list) = doc
                .entry("channel_rest")
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                list.extend(others);
            }
        } else if !PRODUCED.contains(&k.as_str()) {
            doc.insert(k.clone(), v.clone());
        }
    }
}

/// The file as a JSON document: YAML or JSON (JSON is read by the YAML parser too), a
/// mapping of known enmasse keys, `{Zato_Enmasse_Env.NAME}` in a value replaced by the
/// variable NAME (`env`) as Zato's enmasse does, when it is set.
pub fn read_file(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, ZatoImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ZatoImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut doc: Value =
        serde_yaml_ng::from_str(&text).map_err(|source| ZatoImportError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let not = |why: String| ZatoImportError::NotEnmasse {
        path: path.to_owned(),
        why,
    };
    substitute_env(&mut doc, &env);
    let Value::Object(map) = doc else {
        return Err(not("expected a mapping of object kinds (security, channel_rest, outgoing_rest, scheduler…)".into()));
    };
    if !map.keys().any(|k| known_key(k)) {
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        return Err(not(format!(
            "none of its keys ({}) is an enmasse object kind (security, channel_rest, outgoing_rest, scheduler…)",
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        )));
    }
    Ok(map)
}

fn known_key(k: &str) -> bool {
    MAPPED_KEYS.contains(&k) || UNMAPPED_KEYS.iter().any(|(u, _)| *u == k)
}

/// Replaces `{Zato_Enmasse_Env.NAME}` in every string of `v` by the variable NAME, when set.
fn substitute_env(v: &mut Value, env: &impl Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find(ENV_OPEN) {
                let after = &rest[i + ENV_OPEN.len()..];
                match after.find('}').map(|j| (&after[..j], env(&after[..j]))) {
                    Some((name, Some(value))) => {
                        out.push_str(&rest[..i]);
                        out.push_str(&value);
                        rest = &after[name.len() + 1..];
                    }
                    _ => {
                        out.push_str(&rest[..i + ENV_OPEN.len()]);
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute_env(x, env)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute_env(x, env)),
        _ => {}
    }
}

const ENV_OPEN: &str = "{Zato_Enmasse_Env.";

// ---- reading an entry ----

/// One entry of the file: its fields, read leniently (Zato writes numbers and flags as
/// strings as often as not; an empty string or null is "not given").
struct Entry<'a> {
    kind: &'a str,
    fields: &'a Map<String, Value>,
}

impl Entry<'_> {
    fn str(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| match self.fields.get(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    }

    fn name(&self) -> Option<String> {
        self.str(&["name"])
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match self.fields.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            },
            Value::Number(n) => n.as_u64().map(|n| n != 0),
            _ => None,
        }
    }

    /// A non-negative whole number (`None`: absent, null, empty).
    fn num(&self, key: &str) -> Result<Option<u64>, String> {
        match self.fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{key}: {n} is not a whole number of 0 or more")),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{key}: {s:?} is not a whole number of 0 or more")),
            Some(v) => Err(format!("{key}: {v} is not a number")),
        }
    }

    fn inactive(&self) -> bool {
        self.flag("is_active") == Some(false)
    }

    fn service(&self) -> Option<String> {
        self.str(&["service", "service_name"])
    }

    /// The security definition named (none for Zato's "no security" values).
    fn security(&self) -> Option<String> {
        self.str(&["security_name", "sec_def", "security", "sec_name"])
            .filter(|s| !NO_SECURITY.contains(&s.as_str()))
    }

    /// A secret field: given, or missing with the reason.
    fn secret(&self, field: &str) -> Secret {
        let v = match self.fields.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        match placeholder(&v) {
            None => Secret::Given(v),
            Some(why) => Secret::Missing(format!("{field} {why}")),
        }
    }
}

/// Why `v` is not a usable secret (`None`: it is one).
fn placeholder(v: &str) -> Option<String> {
    let t = v.trim();
    if t.is_empty() {
        return Some("is not in the export (Zato's enmasse never exports passwords)".into());
    }
    if let Some(name) = t.strip_prefix(ENV_OPEN).and_then(|r| r.strip_suffix('}')) {
        return Some(format!(
            "is {{Zato_Enmasse_Env.{name}}} and the variable {name} is not set"
        ));
    }
    let looks_placeholder = (t.len() >= 3 && t.chars().all(|c| c == '*'))
        || (t.starts_with("@@") && t.ends_with("@@") && t.len() > 4)
        || (t.starts_with('{') && t.ends_with('}'))
        || t.starts_with("Missing_Value_")
        || t == "ZATO_NONE";
    looks_placeholder.then(|| format!("is a placeholder ({t}), not a password"))
}

enum Secret {
    Given(String),
    Missing(String),
}

/// `name` as an Oxbus name of letters, digits and `._-` (other characters become `-`).
fn oxbus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `name` as an Oxbus channel name (printable ASCII, no spaces).
fn channel_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .collect()
}

fn internal(name: &str) -> bool {
    ZATO_INTERNAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn renamed_note(from: &str, to: &str) -> Option<String> {
    (from != to)
        .then(|| format!("renamed {from:?} → {to:?} (Oxbus names take letters, digits and ._-)"))
}

// ---- the mapping ----

/// A Zato security definition as the other objects use it.
struct SecInfo {
    zato_type: String,
    /// Its Oxbus security definition's name, when it was mapped to one.
    oxbus: Option<String>,
    /// Why it was not (for the objects that name it).
    why_not: Option<String>,
    username: Option<String>,
    secret: Option<String>,
    /// bearer_token: the OAuth2 token URL, scopes, and what stops it mapping.
    token_url: Option<String>,
    scope: Option<String>,
    oauth_problem: Option<String>,
    used_by: Vec<String>,
    zato_name: String,
}

struct Mapper<'a> {
    stored: &'a Stored,
    out: Mapping,
    security: BTreeMap<String, SecInfo>,
    names: BTreeMap<&'static str, BTreeSet<String>>,
    amqp_defs: BTreeMap<String, Map<String, Value>>,
    amqp_defs_used: BTreeSet<String>,
}

/// The document and the report for a parsed enmasse file, against what the server stores.
pub fn map(file: &Map<String, Value>, stored: &Stored) -> Mapping {
    let mut m = Mapper {
        stored,
        out: Mapping::default(),
        security: BTreeMap::new(),
        names: BTreeMap::new(),
        amqp_defs: BTreeMap::new(),
        amqp_defs_used: BTreeSet::new(),
    };
    // Security definitions first: channels and connections name them.
    for key in ["security", "def_sec", "basic_auth", "apikey", "jwt"] {
        for e in m.entries(file, key) {
            m.security_def(&e);
        }
    }
    for key in ["def_amqp"] {
        for e in m.entries(file, key) {
            if let Some(n) = e.name() {
                m.amqp_defs.insert(n, e.fields.clone());
            }
        }
    }
    for (key, fixed) in [
        ("channel_rest", Some(("channel", "plain_http"))),
        ("channel_plain_http", Some(("channel", "plain_http"))),
        ("channel_soap", Some(("channel", "soap"))),
        ("outgoing_rest", Some(("outgoing", "plain_http"))),
        ("outconn_plain_http", Some(("outgoing", "plain_http"))),
        ("http_soap", None),
    ] {
        for e in m.entries(file, key) {
            let connection = fixed
                .map(|f| f.0.to_owned())
                .or_else(|| e.str(&["connection"]));
            let transport = fixed
                .map(|f| f.1.to_owned())
                .or_else(|| e.str(&["transport"]))
                .unwrap_or_else(|| "plain_http".into());
            match connection.as_deref() {
                Some("channel") => m.channel(&e, &transport),
                Some("outgoing") => m.outgoing_rest(&e, &transport),
                other => m.skip(
                    &e,
                    format!(
                        "connection {}: expected channel or outgoing",
                        other.unwrap_or("(none)")
                    ),
                ),
            }
        }
    }
    for e in m.entries(file, "outconn_sql") {
        m.outgoing_sql(&e);
    }
    for e in m.entries(file, "outconn_redis") {
        m.outgoing_redis(&e);
    }
    for e in m.entries(file, "outconn_amqp") {
        m.outgoing_amqp(&e);
    }
    for e in m.entries(file, "scheduler") {
        m.job(&e);
    }
    for e in m.entries(file, "zato_cache_builtin") {
        m.cache(&e);
    }
    m.finish_security_and_amqp_defs();
    // Every other key: known and not mapped, or unknown.
    for (key, v) in file {
        if MAPPED_KEYS.contains(&key.as_str()) {
            continue;
        }
        let reason = match UNMAPPED_KEYS.iter().find(|(k, _)| k == key) {
            Some((_, r)) => (*r).to_owned(),
            None => "unknown top-level key: not a Zato 3.2 enmasse object kind".to_owned(),
        };
        let names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| match e {
                Value::Object(o) => o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| "(no name)".into()),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if names.is_empty() {
            m.out.skipped.push(Skipped {
                zato_kind: key.clone(),
                zato_name: None,
                reason,
            });
        } else {
            for n in names {
                m.out.skipped.push(Skipped {
                    zato_kind: key.clone(),
                    zato_name: Some(n),
                    reason: reason.clone(),
                });
            }
        }
    }
    m.out
}

impl<'a> Mapper<'a> {
    /// The entries under `key`; an entry that is not a mapping is reported.
    fn entries<'f>(&mut self, file: &'f Map<String, Value>, key: &'f str) -> Vec<Entry<'f>> {
        let list: &[Value] = match file.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                self.out.skipped.push(Skipped {
                    zato_kind: key.into(),
                    zato_name: None,
                    reason: "expected a list of objects".into(),
                });
                &[]
            }
        };
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            match v {
                Value::Object(fields) => out.push(Entry { kind: key, fields }),
                _ => self.out.skipped.push(Skipped {
                    zato_kind: key.into(),
                    zato_name: Some(format!("[{i}]")),
                    reason: "expected an object (a mapping of fields)".into(),
                }),
            }
        }
        out
    }

    fn skip(&mut self, e: &Entry, reason: impl Into<String>) {
        self.out.skipped.push(Skipped {
            zato_kind: e.kind.into(),
            zato_name: Some(e.name().unwrap_or_else(|| "(no name)".into())),
            reason: reason.into(),
        });
    }

    /// Records a mapped object and adds `value` to the document's `kind` list; refused when
    /// the Oxbus name is taken in the file already.
    fn add(
        &mut self,
        e: &Entry,
        kind: &'static str,
        name: &str,
        value: Value,
        notes: Vec<String>,
    ) -> bool {
        let taken = self.names.entry(kind).or_default();
        if !taken.insert(name.to_owned()) {
            self.skip(
                e,
                format!("another object of the file is already {kind} {name:?} in Oxbus"),
            );
            return false;
        }
        if let Value::Array(list) = self
            .out
            .doc
            .entry(kind)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(value);
        }
        self.out.mapped.push(Mapped {
            zato_kind: e.kind.into(),
            zato_name: e.name().unwrap_or_default(),
            oxbus_kind: kind,
            oxbus_name: name.to_owned(),
            notes,
        });
        true
    }

    // -- security --

    fn security_def(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        let zato_type = match e.kind {
            "security" | "def_sec" => e.str(&["type", "sec_type"]),
            k => Some(k.to_owned()),
        };
        let Some(zato_type) = zato_type else {
            return self.skip(e, "no type (basic_auth, apikey, …)");
        };
        let mut info = SecInfo {
            zato_type: zato_type.clone(),
            oxbus: None,
            why_not: None,
            username: e.str(&["username"]),
            secret: match e.secret("password") {
                Secret::Given(s) => Some(s),
                Secret::Missing(_) => None,
            },
            token_url: None,
            scope: None,
            oauth_problem: None,
            used_by: Vec::new(),
            zato_name: zname.clone(),
        };
        let why_not = if internal(&zname) {
            Some("Zato's own (internal) definition".to_owned())
        } else if e.inactive() {
            Some("inactive in Zato; Oxbus security definitions have no inactive state".to_owned())
        } else {
            match zato_type.as_str() {
                "basic_auth" | "apikey" => self.basic_or_apikey(e, &zname, &zato_type, &mut info),
                "bearer_token" | "oauth" => {
                    // An outgoing credential only: it becomes the oauth2 auth of the outgoing
                    // REST connections that name it (reported at the end).
                    info.token_url = e.str(&["auth_endpoint", "auth_server_url"]);
                    info.scope = scopes(e);
                    info.oauth_problem = oauth_problem(e, &info);
                    self.security.insert(zname, info);
                    return;
                }
                "jwt" => Some(
                    "Zato's jwt definitions are the credentials of tokens Zato itself issues; \
                     Oxbus's jwt definitions verify tokens an identity provider signed: define \
                     one with its algorithms and key (docs/SECURITY.md)"
                        .to_owned(),
                ),
                "ntlm" => Some("Oxbus has no NTLM security".to_owned()),
                "wss" => Some("Oxbus has no WS-Security (SOAP) security".to_owned()),
                "aws" => Some("Oxbus has no AWS security definitions".to_owned()),
                "vault_conn_sec" => Some("Oxbus has no Vault security definitions".to_owned()),
                t if t.starts_with("tls_") => Some(
                    "Oxbus has no TLS security definitions (client certificates of outgoing REST connections go in their tls settings)"
                        .to_owned(),
                ),
                t => Some(format!("unknown security type {t:?}")),
            }
        };
        if let Some(why) = why_not {
            self.skip(e, why.clone());
            info.why_not = Some(why);
        }
        self.security.insert(zname, info);
    }

    /// A basic auth or API key definition; `Some(reason)` when it is not mapped.
    fn basic_or_apikey(
        &mut self,
        e: &Entry,
        zname: &str,
        zato_type: &str,
        info: &mut SecInfo,
    ) -> Option<String> {
        let name = oxbus_name(zname);
        let (kind, plain_field) = if zato_type == "basic_auth" {
            (SecurityType::Basic, "password")
        } else {
            (SecurityType::Apikey, "key")
        };
        let mut def = SecurityDef {
            name: name.clone(),
            kind,
            username: None,
            realm: None,
            header: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            public_key: None,
            jwks_file: None,
            leeway_s: None,
            rate_limit: None,
            sealed: None,
        };
        let mut notes: Vec<String> = renamed_note(zname, &name).into_iter().collect();
        if kind == SecurityType::Basic {
            let Some(user) = info.username.clone() else {
                return Some("a basic_auth definition without a username".into());
            };
            def.username = Some(user);
            def.realm = e.str(&["realm"]);
        } else {
            let header = e
                .str(&["header"])
                .unwrap_or_else(|| DEFAULT_KEY_HEADER.into());
            if e.str(&["header"]).is_none() {
                notes.push(format!(
                    "the key is read from {DEFAULT_KEY_HEADER} (Zato's default; a Zato server that set Zato_API_Key_Name used that header)"
                ));
            }
            def.header = Some(header);
        }
        if let Err(err) = crate::model::security::validate_name(&name) {
            return Some(err.to_string());
        }
        let mut v = serde_json::to_value(&def).expect("a definition serialises");
        match e.secret("password") {
            Secret::Given(p) => {
                v[plain_field] = Value::String(p);
            }
            Secret::Missing(why) => {
                let kept = self
                    .stored
                    .security
                    .iter()
                    .any(|s| s.name == name && s.kind == kind && s.sealed.is_some());
                if !kept {
                    return Some(format!(
                        "{why}: add `password:` to the entry, or create security {name} first \
                         (POST /v1/security, with its {plain_field}), then import again"
                    ));
                }
                notes.push(format!(
                    "{why}: the {plain_field} security {name} holds on this server is kept"
                ));
            }
        }
        if self.add(e, "security", &name, v, notes) {
            info.oxbus = Some(name);
            None
        } else {
            info.why_not = Some("its name clashes in Oxbus with another definition's".into());
            None
        }
    }

    /// The Oxbus security definition a channel may name, or why it cannot.
    fn channel_security(&mut self, zname: &str, user: &str) -> Result<String, String> {
        let Some(info) = self.security.get_mut(zname) else {
            return Err(format!(
                "its security definition {zname:?} is not in the file"
            ));
        };
        info.used_by.push(user.to_owned());
        match (&info.oxbus, &info.why_not) {
            (Some(n), _) => Ok(n.clone()),
            (None, Some(why)) => Err(format!(
                "its security definition {zname:?} is not imported ({why})"
            )),
            (None, None) => Err(format!(
                "its security definition {zname:?} is a {} definition, which protects no channel",
                info.zato_type
            )),
        }
    }

    // -- channels --

    fn channel(&mut self, e: &Entry, transport: &str) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if transport != "plain_http" {
            return self.skip(
                e,
                format!("{transport} transport: Oxbus has no SOAP channels"),
            );
        }
        if internal(&zname) || e.flag("is_internal") == Some(true) {
            return self.skip(e, "Zato's own (internal) channel");
        }
        if e.inactive() {
            return self.skip(e, "inactive in Zato; Oxbus channels have no inactive state");
        }
        let Some(url_path) = e.str(&["url_path"]) else {
            return self.skip(e, "no url_path");
        };
        let Some(service) = e.service() else {
            return self.skip(e, "no service");
        };
        if has_list(e, &["security_groups", "groups"]) {
            return self.skip(
                e,
                "protected by Zato security groups, which Oxbus has not: dropping them would change who may call it",
            );
        }
        let name = channel_name(&zname);
        let mut notes: Vec<String> = (name != zname)
            .then(|| format!("renamed {zname:?} → {name:?} (Oxbus channel names have no spaces)"))
            .into_iter()
            .collect();
        let security = match e.security() {
            None => None,
            Some(s) => match self.channel_security(&s, &name) {
                Ok(n) => Some(n),
                Err(why) => return self.skip(e, why),
            },
        };
        let data_format = match e.str(&["data_format"]).as_deref() {
            None | Some("json") => DataFormat::Json,
            Some(other) => {
                notes.push(format!(
                    "data_format {other}: the service gets the body raw (self.request.raw) and parses it itself"
                ));
                DataFormat::Raw
            }
        };
        let methods = match e.str(&["method"]) {
            Some(m) => vec![m.to_ascii_uppercase()],
            None => Vec::new(),
        };
        if e.flag("merge_url_params_req") == Some(false) {
            notes.push(
                "merge_url_params_req was off: Oxbus always merges path and query parameters into SimpleIO input"
                    .into(),
            );
        }
        // Zato's params_pri (default: channel params over the message) is the channel's
        // params_priority; an unknown value keeps Zato's default, with a note.
        let params_priority = match e.str(&["params_pri"]).as_deref() {
            None | Some("channel-params-over-msg") => ParamsPriority::ChannelParamsOverMsg,
            Some("msg-over-channel-params") => ParamsPriority::MsgOverChannelParams,
            Some(other) => {
                notes.push(format!(
                    "params_pri {other}: not a Zato value; Zato's default channel-params-over-msg is used"
                ));
                ParamsPriority::ChannelParamsOverMsg
            }
        };
        if let Some(v) = e.str(&["url_params_pri"]).filter(|v| v != "path-over-qs") {
            notes.push(format!(
                "url_params_pri {v}: Oxbus has no such setting; path parameters win over the query string"
            ));
        }
        if e.flag("is_rate_limit_active") == Some(true) {
            notes.push(
                "Zato's rate limit is not carried over: give the channel a rate_limit".into(),
            );
        }
        if e.str(&["cache_name"]).is_some() || e.num("cache_expiry").ok().flatten().unwrap_or(0) > 0
        {
            notes.push("Zato's response caching is not carried over".into());
        }
        if internal(&service) {
            notes.push(format!(
                "{service} is a Zato built-in service: deploy an Oxbus service of that name"
            ));
        }
        let channel = Channel {
            name: Some(name.clone()),
            channel_type: ChannelType::Rest,
            url_path,
            methods,
            service,
            data_format,
            security,
            allow_from: Vec::new(),
            rate_limit: None,
            services: Vec::new(),
            websocket: None,
            params_priority: Some(params_priority),
        };
        if let Err(err) = crate::store::validate_channel_name(&name) {
            return self.skip(e, err.to_string());
        }
        if let Err(err) = crate::model::channel::routes(std::slice::from_ref(&channel)) {
            return self.skip(e, err.to_string());
        }
        let v = serde_json::to_value(&channel).expect("a channel serialises");
        self.add(e, "channel_rest", &name, v, notes);
    }

    // -- outgoing connections --

    fn outgoing_rest(&mut self, e: &Entry, transport: &str) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if transport != "plain_http" {
            return self.skip(
                e,
                format!("{transport} transport: Oxbus has no SOAP connections"),
            );
        }
        if internal(&zname) || e.flag("is_internal") == Some(true) {
            return self.skip(e, "Zato's own (internal) connection");
        }
        if e.inactive() {
            return self.skip(
                e,
                "inactive in Zato; Oxbus connections have no inactive state",
            );
        }
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        let Some(host) = e.str(&["host", "address"]) else {
            return self.skip(e, "no host");
        };
        let (address, base_path) = split_host(&host);
        let path = e.str(&["url_path"]).unwrap_or_else(|| "/".into());
        let url_path = match base_path {
            Some(base) => format!(
                "{base}{}",
                if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                }
            ),
            None if path.starts_with('/') => path,
            None => format!("/{path}"),
        };
        let data_format = match e.str(&["data_format"]).as_deref() {
            None | Some("json") => outgoing::DataFormat::Json,
            Some("form") | Some("post") => outgoing::DataFormat::Form,
            Some(other) => {
                notes.push(format!(
                    "data_format {other}: bodies are sent as the service gives them (raw)"
                ));
                outgoing::DataFormat::Raw
            }
        };
        let mut conn = RestConn {
            name: name.clone(),
            address,
            url_path,
            data_format,
            timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            pool_size: 20,
            pool_wait_ms: 5_000,
            tls: TlsOptions::default(),
            auth: RestAuth::None,
            headers: BTreeMap::new(),
            retries: 2,
            retry_backoff_ms: 100,
            ping_method: "HEAD".into(),
            ping_path: "/".into(),
            max_response_bytes: 10 * 1024 * 1024,
        };
        match (e.num("timeout"), e.num("pool_size")) {
            (Err(err), _) | (_, Err(err)) => return self.skip(e, err),
            (Ok(t), Ok(p)) => {
                if let Some(t) = t.filter(|t| *t > 0) {
                    conn.timeout_ms = t.saturating_mul(1000);
                }
                if let Some(p) = p.filter(|p| *p > 0) {
                    conn.pool_size = u32::try_from(p).unwrap_or(u32::MAX);
                }
            }
        }
        if let Some(m) = e.str(&["ping_method"]) {
            conn.ping_method = m.to_ascii_uppercase();
        }
        if e.flag("tls_verify") == Some(false) {
            conn.tls.verify = false;
            notes.push("TLS certificates are not verified (tls_verify was off)".into());
        }
        // The credential: plaintext from the security definition, or none (the stored one
        // is kept when the server holds one for the same destination and identity).
        let mut plain: Option<(&'static str, String)> = None;
        if let Some(sec) = e.security() {
            match self.rest_auth(&sec, &name) {
                Ok((auth, secret)) => {
                    conn.auth = auth;
                    plain = secret;
                }
                Err(why) => return self.skip(e, why),
            }
        }
        if !matches!(conn.auth, RestAuth::None) && plain.is_none() {
            match keeps(&conn, &self.stored.rest) {
                true => notes.push("the security definition's password is not in the file: the credential this server holds is kept".into()),
                false => {
                    return self.skip(
                        e,
                        format!(
                            "its security definition {:?} has no password in the file (Zato's enmasse never exports passwords): add `password:` to that definition, or create the connection first (oxbus out put rest {name} … --secret-file), then import again",
                            e.security().unwrap_or_default()
                        ),
                    );
                }
            }
        }
        // Checked as the server will hold it: with a credential (given here, or kept).
        let mut probe = conn.clone();
        probe.set_sealed(Some("oxbus1:probe".into()));
        if let Err(err) = probe.validate() {
            return self.skip(e, err.to_string());
        }
        let mut v = serde_json::to_value(&conn).expect("a connection serialises");
        if let Some((field, secret)) = plain {
            v["auth"][field] = Value::String(secret);
        }
        self.add(e, "outgoing_rest", &name, v, notes);
    }

    /// The auth of an outgoing REST connection (`user`) that names Zato security definition
    /// `sec`, with its plaintext field and value when the file gives one.
    #[allow(clippy::type_complexity)]
    fn rest_auth(
        &mut self,
        sec: &str,
        user: &str,
    ) -> Result<(RestAuth, Option<(&'static str, String)>), String> {
        let Some(info) = self.security.get_mut(sec) else {
            return Err(format!(
                "its security definition {sec:?} is not in the file"
            ));
        };
        info.used_by.push(user.to_owned());
        match info.zato_type.as_str() {
            "basic_auth" => {
                let Some(username) = info.username.clone() else {
                    return Err(format!("its security definition {sec:?} has no username"));
                };
                let plain = info.secret.clone().map(|s| ("password", s));
                Ok((
                    RestAuth::Basic {
                        username,
                        sealed: None,
                    },
                    plain,
                ))
            }
            "apikey" => {
                let plain = info.secret.clone().map(|s| ("key", s));
                let header = DEFAULT_KEY_HEADER.to_owned();
                Ok((
                    RestAuth::Apikey {
                        header,
                        sealed: None,
                    },
                    plain,
                ))
            }
            "bearer_token" | "oauth" => {
                if let Some(p) = &info.oauth_problem {
                    return Err(format!("its security definition {sec:?}: {p}"));
                }
                let auth = RestAuth::Oauth2 {
                    token_url: info.token_url.clone().unwrap_or_default(),
                    client_id: info.username.clone().unwrap_or_default(),
                    scope: info.scope.clone(),
                    refresh_before_s: 30,
                    sealed: None,
                };
                Ok((auth, info.secret.clone().map(|s| ("client_secret", s))))
            }
            t => Err(format!(
                "its security definition {sec:?} is of type {t}, which Oxbus outgoing REST connections do not take"
            )),
        }
    }

    fn outgoing_sql(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if internal(&zname) {
            return self.skip(e, "Zato's own (internal) connection");
        }
        if e.inactive() {
            return self.skip(
                e,
                "inactive in Zato; Oxbus connections have no inactive state",
            );
        }
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        let engine_text = e.str(&["engine"]).unwrap_or_default();
        let family = engine_text.split('+').next().unwrap_or("");
        let (engine, scheme) = match family {
            "postgresql" | "postgres" => (SqlEngine::Postgresql, "postgres"),
            "mysql" | "mariadb" => (SqlEngine::Mysql, "mysql"),
            "sqlite" => (SqlEngine::Sqlite, "sqlite"),
            "" => return self.skip(e, "no engine"),
            other => {
                return self.skip(
                    e,
                    format!("engine {other}: Oxbus speaks PostgreSQL, MySQL/MariaDB and SQLite"),
                );
            }
        };
        let db = e.str(&["db_name"]).unwrap_or_default();
        let url = if engine == SqlEngine::Sqlite {
            format!(
                "sqlite://{}{db}",
                if db.starts_with('/') { "" } else { "/" }
            )
        } else {
            let Some(host) = e.str(&["host"]) else {
                return self.skip(e, "no host");
            };
            let user = e
                .str(&["username"])
                .map(|u| format!("{}@", super::client::percent_encode(&u)))
                .unwrap_or_default();
            let port = match e.num("port") {
                Ok(Some(p)) => format!(":{p}"),
                Ok(None) => String::new(),
                Err(err) => return self.skip(e, err),
            };
            format!("{scheme}://{user}{host}{port}/{db}")
        };
        let pool_max = match e.num("pool_size") {
            Ok(Some(p)) if p > 100 => {
                notes.push(format!("pool_size {p} → pool_max 100 (Oxbus's largest)"));
                100
            }
            Ok(Some(p)) if p > 0 => p as u32,
            Ok(_) => 10,
            Err(err) => return self.skip(e, err),
        };
        if e.str(&["extra"]).is_some() {
            notes.push("extra (SQLAlchemy engine options) is not carried over".into());
        }
        let conn = SqlConn {
            name: name.clone(),
            engine,
            url,
            sealed: None,
            pool_min: 0,
            pool_max,
            pool_wait_ms: 5_000,
            statement_timeout_ms: 30_000,
            max_rows: 10_000,
            session_idle_ms: 60_000,
        };
        let plain = if engine == SqlEngine::Sqlite {
            None
        } else {
            self.optional_secret(
                e,
                &conn,
                &self.stored.sql,
                &mut notes,
                &format!("oxbus out put sql {name}"),
            )
        };
        self.add_credentialed(e, "outgoing_sql", conn, plain, "password", notes);
    }

    fn outgoing_redis(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if e.inactive() {
            return self.skip(
                e,
                "inactive in Zato; Oxbus connections have no inactive state",
            );
        }
        if e.flag("use_redis_sentinels") == Some(true) {
            return self.skip(
                e,
                "Redis Sentinel: an Oxbus Redis connection has one address",
            );
        }
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        let host = e.str(&["host"]).unwrap_or_else(|| "localhost".into());
        let (port, db) = match (e.num("port"), e.num("db")) {
            (Err(err), _) | (_, Err(err)) => return self.skip(e, err),
            (Ok(p), Ok(d)) => (p.unwrap_or(6379), d.unwrap_or(0)),
        };
        if name == "default" {
            notes.push(
                "Zato's default Redis connection (its KVDB): self.kvdb.conn in Oxbus too".into(),
            );
        }
        let conn = RedisConn {
            name: name.clone(),
            address: format!("redis://{host}:{port}/{db}"),
            username: e.str(&["username"]),
            sealed: None,
            tls: TlsOptions::default(),
            pool_size: 4,
            timeout_ms: 10_000,
        };
        let plain = self.optional_secret(
            e,
            &conn,
            &self.stored.redis,
            &mut notes,
            &format!("oxbus out put redis {name}"),
        );
        self.add_credentialed(e, "outgoing_redis", conn, plain, "password", notes);
    }

    fn outgoing_amqp(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if e.inactive() {
            return self.skip(
                e,
                "inactive in Zato; Oxbus connections have no inactive state",
            );
        }
        let Some(def_name) = e.str(&["def_name", "def"]) else {
            return self.skip(
                e,
                "no def_name (the AMQP definition with the broker's address)",
            );
        };
        let Some(def) = self.amqp_defs.get(&def_name).cloned() else {
            return self.skip(
                e,
                format!("its AMQP definition {def_name:?} (def_amqp) is not in the file"),
            );
        };
        self.amqp_defs_used.insert(def_name.clone());
        let d = Entry {
            kind: "def_amqp",
            fields: &def,
        };
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        notes.push(format!(
            "broker address, user and password from def_amqp {def_name:?}"
        ));
        let host = d.str(&["host"]).unwrap_or_else(|| "localhost".into());
        let (port, heartbeat, pool) = match (d.num("port"), d.num("heartbeat"), e.num("pool_size"))
        {
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => return self.skip(e, err),
            (Ok(p), Ok(h), Ok(s)) => (p.unwrap_or(5672), h, s),
        };
        let vhost = d.str(&["vhost"]).unwrap_or_else(|| "/".into());
        let for_message: Vec<&str> = [
            "delivery_mode",
            "priority",
            "content_type",
            "content_encoding",
            "expiration",
            "user_id",
            "app_id",
        ]
        .into_iter()
        .filter(|k| e.str(&[k]).is_some())
        .collect();
        if !for_message.is_empty() {
            notes.push(format!(
                "message defaults ({}) are not carried over: pass them to self.out.amqp.send",
                for_message.join(", ")
            ));
        }
        let conn = AmqpConn {
            name: name.clone(),
            address: format!(
                "amqp://{host}:{port}/{}",
                super::client::percent_encode(&vhost)
            ),
            username: d.str(&["username"]),
            sealed: None,
            tls: TlsOptions::default(),
            heartbeat_s: heartbeat.map_or(30, |h| u16::try_from(h).unwrap_or(u16::MAX)),
            connect_timeout_ms: 10_000,
            pool_size: pool
                .filter(|p| *p > 0)
                .map_or(4, |p| u32::try_from(p).unwrap_or(u32::MAX)),
            confirm_timeout_ms: 10_000,
        };
        let plain = self.optional_secret(
            &d,
            &conn,
            &self.stored.amqp,
            &mut notes,
            &format!("oxbus out put amqp {name}"),
        );
        self.add_credentialed(e, "outgoing_amqp", conn, plain, "password", notes);
    }

    /// The password of a connection that may have none: the file's, else none (the stored
    /// one kept when the server holds one for the same destination, else a note to set it).
    fn optional_secret<K: Credentialed + Validated>(
        &self,
        e: &Entry,
        conn: &K,
        stored: &[K],
        notes: &mut Vec<String>,
        how: &str,
    ) -> Option<String> {
        match e.secret("password") {
            Secret::Given(p) => Some(p),
            Secret::Missing(why) => {
                if keeps(conn, stored) {
                    notes.push(format!("{why}: the password this server holds is kept"));
                } else {
                    notes.push(format!(
                        "{why}: imported without one; if the server needs one, set it ({how} … --secret-file FILE)"
                    ));
                }
                None
            }
        }
    }

    fn add_credentialed<K: Credentialed + Serialize + Clone + Validated>(
        &mut self,
        e: &Entry,
        kind: &'static str,
        conn: K,
        plain: Option<String>,
        field: &str,
        notes: Vec<String>,
    ) {
        let mut probe = conn.clone();
        if plain.is_some() {
            probe.set_sealed(Some("oxbus1:probe".into()));
        }
        if let Err(err) = probe.check() {
            return self.skip(e, err);
        }
        let name = conn.name_of().to_owned();
        let mut v = serde_json::to_value(&conn).expect("a connection serialises");
        if let Some(p) = plain {
            v[field] = Value::String(p);
        }
        self.add(e, kind, &name, v, notes);
    }

    // -- scheduler --

    fn job(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if internal(&zname) {
            return self.skip(e, "Zato's own (internal) job");
        }
        let Some(service) = e.service() else {
            return self.skip(e, "no service");
        };
        let kind = match e.str(&["job_type"]).as_deref() {
            Some("one_time") => JobType::OneTime,
            Some("interval_based") => JobType::IntervalBased,
            Some("cron_style") => JobType::CronStyle,
            Some(other) => {
                return self.skip(
                    e,
                    format!("job_type {other}: expected one_time, interval_based or cron_style"),
                );
            }
            None => return self.skip(e, "no job_type"),
        };
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        let mut job = JobDef::new(&name, kind, &service);
        job.active = !e.inactive();
        if let Some(s) = e.str(&["start_date"]) {
            match start_date(&s) {
                Ok((d, naive)) => {
                    if naive {
                        notes.push(format!("start_date {s} has no time zone: taken as UTC"));
                    }
                    job.start_date = Some(d);
                }
                Err(err) => return self.skip(e, err),
            }
        }
        if kind == JobType::IntervalBased {
            for (field, slot) in [
                ("weeks", &mut job.weeks),
                ("days", &mut job.days),
                ("hours", &mut job.hours),
                ("minutes", &mut job.minutes),
                ("seconds", &mut job.seconds),
            ] {
                match e.num(field) {
                    Ok(n) => *slot = n.unwrap_or(0),
                    Err(err) => return self.skip(e, err),
                }
            }
            match e.num("repeats") {
                Ok(r) => job.repeats = r.filter(|r| *r > 0),
                Err(err) => return self.skip(e, err),
            }
        }
        if kind == JobType::CronStyle {
            job.cron = e.str(&["cron_definition", "cron"]);
            job.timezone = Some("UTC".into());
            notes.push("the cron expression runs in UTC".into());
        }
        if let Some(extra) = e.str(&["extra"]) {
            job.extra = Some(match serde_json::from_str::<Value>(&extra) {
                Ok(v) => v,
                Err(_) => {
                    notes.push("extra is not JSON: the service gets it as a JSON string".into());
                    Value::String(extra)
                }
            });
        }
        if internal(&service) {
            notes.push(format!(
                "{service} is a Zato built-in service: deploy an Oxbus service of that name"
            ));
        }
        if let Err(err) = job.validate() {
            return self.skip(e, err.to_string());
        }
        let v = serde_json::to_value(&job).expect("a job serialises");
        self.add(e, "job", &name, v, notes);
    }

    // -- caches --

    fn cache(&mut self, e: &Entry) {
        let Some(zname) = e.name() else {
            return self.skip(e, "no name");
        };
        if e.inactive() {
            return self.skip(e, "inactive in Zato; Oxbus caches have no inactive state");
        }
        let name = oxbus_name(&zname);
        let mut notes: Vec<String> = renamed_note(&zname, &name).into_iter().collect();
        let mut def = CacheDef::named(&name);
        match (e.num("max_size"), e.num("max_item_size")) {
            (Err(err), _) | (_, Err(err)) => return self.skip(e, err),
            (Ok(size), Ok(item)) => {
                if let Some(s) = size {
                    def.max_entries = s;
                }
                if let Some(i) = item {
                    def.max_item_size = i;
                }
            }
        }
        def.extend_expiry_on_get = e.flag("extend_expiry_on_get").unwrap_or(false);
        if e.flag("extend_expiry_on_set") == Some(true) {
            notes.push("extend_expiry_on_set has no Oxbus equivalent: a set gives the entry its own expiry".into());
        }
        if let Some(sync) = e.str(&["sync_method"]) {
            def.replicate = sync != "no-sync";
        }
        if e.str(&["persistent_storage"])
            .is_some_and(|p| p != "no-persistent-storage")
        {
            notes.push(
                "Oxbus caches are in memory only: persistent_storage is not carried over".into(),
            );
        }
        if let Err(err) = def.validate() {
            return self.skip(e, err.to_string());
        }
        let v = serde_json::to_value(&def).expect("a cache definition serialises");
        self.add(e, "cache", &name, v, notes);
    }

    /// Reports the bearer-token definitions (mapped into the outgoing connections that use
    /// them, or not at all) and the AMQP definitions no outgoing connection used.
    fn finish_security_and_amqp_defs(&mut self) {
        let oauth: Vec<(String, Vec<String>, Option<String>)> = self
            .security
            .values()
            .filter(|i| matches!(i.zato_type.as_str(), "bearer_token" | "oauth"))
            .map(|i| {
                (
                    i.zato_name.clone(),
                    i.used_by.clone(),
                    i.oauth_problem.clone(),
                )
            })
            .collect();
        for (zname, used_by, problem) in oauth {
            let kind = "security".to_owned();
            if used_by.is_empty() || problem.is_some() {
                self.out.skipped.push(Skipped {
                    zato_kind: kind,
                    zato_name: Some(zname),
                    reason: problem.unwrap_or_else(|| {
                        "a bearer-token (OAuth2) definition: Oxbus keeps such credentials in each outgoing REST connection, and no outgoing connection of the file names it".into()
                    }),
                });
            } else {
                self.out.mapped.push(Mapped {
                    zato_kind: kind,
                    zato_name: zname,
                    oxbus_kind: "outgoing_rest auth",
                    oxbus_name: used_by.join(", "),
                    notes: vec![
                        "the auth (oauth2) of each outgoing REST connection that names it".into(),
                    ],
                });
            }
        }
        let unused: Vec<String> = self
            .amqp_defs
            .keys()
            .filter(|n| !self.amqp_defs_used.contains(*n))
            .cloned()
            .collect();
        for n in unused {
            self.out.skipped.push(Skipped {
                zato_kind: "def_amqp".into(),
                zato_name: Some(n),
                reason: "an AMQP definition is the broker of outconn_amqp / channel_amqp entries; no mapped outconn_amqp names it".into(),
            });
        }
    }
}

/// What the connection kinds share for [`Mapper::add_credentialed`].
trait Validated {
    fn check(&self) -> Result<(), String>;
    fn name_of(&self) -> &str;
}

macro_rules! validated {
    ($($t:ty),*) => {$(
        impl Validated for $t {
            fn check(&self) -> Result<(), String> {
                self.validate().map_err(|e| e.to_string())
            }
            fn name_of(&self) -> &str {
                &self.name
            }
        }
    )*};
}
validated!(SqlConn, RedisConn, AmqpConn);

/// Whether the server keeps the credential it holds for `conn` when the import gives none.
fn keeps<K: Credentialed + Validated>(conn: &K, stored: &[K]) -> bool {
    stored
        .iter()
        .find(|s| s.name_of() == conn.name_of())
        .is_some_and(|s| s.sealed_secret().is_some() && conn.keeps_secret_of(s) == Carry::Keep)
}

impl Validated for RestConn {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
    fn name_of(&self) -> &str {
        &self.name
    }
}

fn has_list(e: &Entry, keys: &[&str]) -> bool {
    keys.iter().any(|k| match e.fields.get(*k) {
        Some(Value::Array(a)) => a
            .iter()
            .any(|x| !matches!(x, Value::String(s) if s.trim().is_empty()) && !x.is_null()),
        Some(Value::String(s)) => !s.trim().is_empty(),
        _ => false,
    })
}

/// A bearer-token definition's scopes, space-separated (Zato lists them, or one per line).
fn scopes(e: &Entry) -> Option<String> {
    let list: Vec<String> = match e.fields.get("scopes") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    (!list.is_empty()).then(|| list.join(" "))
}

/// Why a bearer-token definition is not an Oxbus oauth2 auth (`None`: it is one).
fn oauth_problem(e: &Entry, info: &SecInfo) -> Option<String> {
    if info.token_url.is_none() {
        return Some("no auth_endpoint (the token URL)".into());
    }
    if info.username.is_none() {
        return Some("no username (the OAuth2 client_id)".into());
    }
    if let Some(g) = e.str(&["grant_type"]).filter(|g| g != "client_credentials") {
        return Some(format!(
            "grant_type {g}: Oxbus's oauth2 auth is the client credentials grant"
        ));
    }
    if has_list(e, &["extra_fields"]) {
        return Some(
            "extra_fields: Oxbus's oauth2 auth sends no extra token request fields".into(),
        );
    }
    for (k, default) in [
        ("client_id_field", "client_id"),
        ("client_secret_field", "client_secret"),
    ] {
        if let Some(v) = e.str(&[k]).filter(|v| v != default) {
            return Some(format!("{k} {v}: Oxbus sends the standard {default} field"));
        }
    }
    None
}

/// `http(s)://host[:port]` and the path after it, if any (`/api` of `https://x/api/`).
fn split_host(host: &str) -> (String, Option<String>) {
    let with_scheme = if host.contains("://") {
        host.to_owned()
    } else {
        format!("http://{host}")
    };
    let after = with_scheme.find("://").map_or(0, |i| i + 3);
    match with_scheme[after..].find('/') {
        Some(j) => {
            let (addr, path) = with_scheme.split_at(after + j);
            let path = path.trim_end_matches('/');
            (addr.to_owned(), (!path.is_empty()).then(|| path.to_owned()))
        }
        None => (with_scheme, None),
    }
}

/// A Zato start date as RFC 3339; `true` when it had no offset and was taken as UTC.
fn start_date(s: &str) -> Result<(String, bool), String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok((s.to_owned(), false));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok((format_start_date(t.and_utc()), true));
        }
    }
    Err(format!(
        "start_date {s:?} is not a date and time (YYYY-MM-DD HH:MM:SS)"
    ))
}

/// The report as text: what was mapped, what was not, then the server's plan.
fn print_report(m: &Mapping, answer: Option<&Value>, dry_run: bool) {
    println!("mapped ({}):", m.mapped.len());
    for x in &m.mapped {
        println!(
            "  {} {:?} -> {} {}",
            x.zato_kind, x.zato_name, x.oxbus_kind, x.oxbus_name
        );
        for n in &x.notes {
            println!("      note: {n}");
        }
    }
    println!("not mapped ({}):", m.skipped.len());
    for s in &m.skipped {
        match &s.zato_name {
            Some(n) => println!("  {} {n:?}: {}", s.zato_kind, s.reason),
            None => println!("  {}: {}", s.zato_kind, s.reason),
        }
    }
    let Some(d) = answer else {
        println!("nothing to import");
        return;
    };
    super::config_cmd::print_import_plan(d, dry_run);
}

#[cfg(test)]
mod tests;
