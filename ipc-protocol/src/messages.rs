//! Typed payloads of the JSON-carrying frames (`HELLO`, `WELCOME`, `READY`, `LOG`, `ERROR`)
//! and the metadata of `CALL` / `REPLY` frames. Field names are the ones in `SPEC.md`.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// `HELLO`: the worker introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub worker_id: u32,
    pub pid: u32,
    pub token: String,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub oxbus: String,
}

/// `WELCOME`: the supervisor accepts the worker and tells it how to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    pub protocol: u32,
    pub worker_id: u32,
    pub generation: u64,
    pub threads: u32,
    pub services_dir: String,
    pub heartbeat_ms: u64,
    pub log_level: String,
}

/// One service as the worker reports it in `READY`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub module: String,
    pub class: String,
    #[serde(rename = "async")]
    pub is_async: bool,
    /// Verbs with a `handle_<VERB>` method; empty when one `handle` serves every verb.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// The SimpleIO input declaration; empty (and absent on the wire) when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<IoElem>,
    /// The SimpleIO output declaration; empty (and absent on the wire) when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<IoElem>,
}

/// One element of a SimpleIO declaration (`ServiceInfo` `input` / `output`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IoElem {
    pub name: String,
    pub required: bool,
    /// `"integer"`, `"boolean"`, `"number"`, `"string"`, `"array"`, `"object"` or `"any"`
    /// (passed through as it came). Kept as text: a type a later worker adds is carried, and
    /// read as `any` by [`IoElem::kind`].
    #[serde(rename = "type", default = "any_type")]
    pub ty: String,
    /// A JSON Schema `format` for a string (`date`, `date-time`, `uuid`, `decimal`), when
    /// the element has one. Added within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn any_type() -> String {
    "any".to_owned()
}

/// What SimpleIO converts an element to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    Integer,
    Boolean,
    Number,
    String,
    Array,
    Object,
    /// Passed through as it came (any JSON value; text from a path or query string).
    Any,
}

impl IoElem {
    pub fn kind(&self) -> IoType {
        match self.ty.as_str() {
            "integer" => IoType::Integer,
            "boolean" => IoType::Boolean,
            "number" => IoType::Number,
            "string" => IoType::String,
            "array" => IoType::Array,
            "object" => IoType::Object,
            _ => IoType::Any,
        }
    }
}

/// `READY`: the worker has imported its services and takes calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ready {
    pub services: Vec<ServiceInfo>,
    #[serde(default)]
    pub startup_ms: u64,
}

/// `LOG`: a log record from Python code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogRecord {
    pub level: String,
    #[serde(default)]
    pub logger: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The trace id (32 hex digits) of the invocation the record was logged in. Added
    /// within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The record's own fields (Python's `logger.info(..., extra={...})`), each a JSON
    /// value. Added within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `ERROR`: a fatal, connection-level error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorMsg {
    pub code: String,
    pub message: String,
}

/// The default type of [`InvokeMeta::headers`]: (name, value) pairs.
pub type HeaderPairs<'a> = &'a [(&'a str, std::borrow::Cow<'a, str>)];

/// Meta of an `invoke` `CALL` from the supervisor. Borrowed, so building one per request
/// costs no allocation beyond the serialised bytes. `H` is anything that serialises as a
/// list of `[name, value]` pairs (the HTTP layer passes its header map straight through).
#[derive(Debug, Clone, Serialize)]
pub struct InvokeMeta<'a, H: Serialize = HeaderPairs<'a>> {
    pub op: &'static str,
    pub service: &'a str,
    pub cid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_format: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "pairs_as_object"
    )]
    pub params: Option<&'a [(String, String)]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<H>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The client's IP address (behind trusted proxies, the one they report); serialised
    /// as its text form (`203.0.113.7`, `2001:db8::7`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<std::net::IpAddr>,
    /// `"http"` or `"https"`: the scheme the client used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<&'a str>,
    /// The port the client connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The channel's name (`self.channel.name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_name: Option<&'a str>,
    /// Who the channel's security definition let in (`self.channel.security`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityMeta<'a>>,
    /// The W3C `traceparent` of the invocation (`00-<trace id>-<parent id>-<flags>`): the
    /// service's `self.trace_id` is its trace id, and later outgoing calls send it on.
    /// Added within version 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    /// The W3C `tracestate` that goes with `traceparent` (a trusted proxy's, at most 512
    /// characters; the service's `self.tracestate`, kept by later outgoing calls). Added
    /// within version 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<&'a str>,
    /// A pub/sub delivery (`channel: "pubsub"`): the subscription, the topic and each
    /// message's metadata, whose sizes split the body (ipc-protocol/SPEC.md). Added within
    /// version 1: absent on every other invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<&'a serde_json::Value>,
    /// A message of an MQTT channel (`channel: "mqtt"`): its `topic`, `qos`, `retain`,
    /// `dup` and `pkid` (ipc-protocol/SPEC.md); the body is its payload. Added within
    /// version 1: absent on every other invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<&'a serde_json::Value>,
    /// An AMQP channel's delivery (`channel: "amqp"`): the message's properties and
    /// headers, exchange, routing key, delivery tag, redelivered flag, consumer tag and
    /// queue (ipc-protocol/SPEC.md); the body is the message's, raw. Added within version
    /// 1: absent on every other invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp: Option<&'a serde_json::Value>,
    /// A WebSocket channel's call (`channel: "websocket"`): the client's id, the `event`
    /// (`message`, `connect`, `disconnect`) and whether a message was `binary`
    /// (ipc-protocol/SPEC.md); the body is the message. Added within version 1: absent on
    /// every other invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wsx: Option<WsxMeta<'a>>,
    /// A file-transfer channel's file (`channel: "file-transfer"`): its path, name, folder,
    /// size, times and how the worker decodes and parses it (ipc-protocol/SPEC.md); the body
    /// is its bytes, or empty in path-only mode. Added within version 1: absent on every
    /// other invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<&'a serde_json::Value>,
    /// A REST channel's `params_priority`, when it sets one: `channel-params-over-msg` (path
    /// and query parameters win over the body for the same SimpleIO name) or
    /// `msg-over-channel-params`. Absent: the service's own default (Zato-style services
    /// take the first, Oxbus services the second). Added within version 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_priority: Option<&'a str>,
    /// A scheduled run (`channel: "scheduler"`): the job's type, `one_time`,
    /// `interval_based` or `cron_style` (Zato's `self.job_type`; which job hooks a
    /// Zato-style service runs). Added within version 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_type: Option<&'a str>,
}

/// The names of the positional fields of a compact `invoke` meta, in their order
/// (SPEC.md, "Compact invoke meta"); the last element of the array is the object of every
/// other field.
pub const COMPACT_INVOKE_FIELDS: [&str; 16] = [
    "op",
    "service",
    "cid",
    "channel",
    "data_format",
    "method",
    "path",
    "params",
    "query",
    "headers",
    "deadline_ms",
    "remote_addr",
    "scheme",
    "port",
    "channel_name",
    "traceparent",
];

/// An [`InvokeMeta`] serialised in the compact form (SPEC.md, "Compact invoke meta"): a JSON
/// array of the fields [`COMPACT_INVOKE_FIELDS`] names, `null` for an absent one, then an
/// object of the other fields that are present. It says exactly what the object form says;
/// the worker decodes it for about a sixth less than the object (no key strings to read
/// and intern), and the supervisor writes ~150 bytes less per request.
pub struct CompactInvoke<'m, 'a, H: Serialize>(pub &'m InvokeMeta<'a, H>);

impl<H: Serialize> Serialize for CompactInvoke<'_, '_, H> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        /// `params` as the object form writes it, or `null`.
        struct Params<'p>(Option<&'p [(String, String)]>);
        impl Serialize for Params<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    Some(_) => pairs_as_object(&self.0, s),
                    None => s.serialize_none(),
                }
            }
        }
        /// The fields that have no position, as an object (absent ones left out).
        struct Rest<'m, 'a, H: Serialize>(&'m InvokeMeta<'a, H>);
        impl<H: Serialize> Serialize for Rest<'_, '_, H> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Every field named, none with `..`: a field added to InvokeMeta does not
                // compile until it is placed here or in the array.
                let InvokeMeta {
                    op: _,
                    service: _,
                    cid: _,
                    channel: _,
                    data_format: _,
                    method: _,
                    path: _,
                    params: _,
                    query: _,
                    headers: _,
                    deadline_ms: _,
                    remote_addr: _,
                    scheme: _,
                    port: _,
                    channel_name: _,
                    traceparent: _,
                    security,
                    tracestate,
                    pubsub,
                    mqtt,
                    amqp,
                    wsx,
                    file,
                    params_priority,
                    job_type,
                } = self.0;
                let mut map = s.serialize_map(None)?;
                if let Some(v) = security {
                    map.serialize_entry("security", v)?;
                }
                if let Some(v) = tracestate {
                    map.serialize_entry("tracestate", v)?;
                }
                if let Some(v) = pubsub {
                    map.serialize_entry("pubsub", v)?;
                }
                if let Some(v) = mqtt {
                    map.serialize_entry("mqtt", v)?;
                }
                if let Some(v) = amqp {
                    map.serialize_entry("amqp", v)?;
                }
                if let Some(v) = wsx {
                    map.serialize_entry("wsx", v)?;
                }
                if let Some(v) = file {
                    map.serialize_entry("file", v)?;
                }
                if let Some(v) = params_priority {
                    map.serialize_entry("params_priority", v)?;
                }
                if let Some(v) = job_type {
                    map.serialize_entry("job_type", v)?;
                }
                map.end()
            }
        }
        let m = self.0;
        let mut seq = s.serialize_seq(Some(COMPACT_INVOKE_FIELDS.len() + 1))?;
        seq.serialize_element(m.op)?;
        seq.serialize_element(m.service)?;
        seq.serialize_element(m.cid)?;
        seq.serialize_element(&m.channel)?;
        seq.serialize_element(&m.data_format)?;
        seq.serialize_element(&m.method)?;
        seq.serialize_element(&m.path)?;
        seq.serialize_element(&Params(m.params))?;
        seq.serialize_element(&m.query)?;
        seq.serialize_element(&m.headers)?;
        seq.serialize_element(&m.deadline_ms)?;
        seq.serialize_element(&m.remote_addr)?;
        seq.serialize_element(&m.scheme)?;
        seq.serialize_element(&m.port)?;
        seq.serialize_element(&m.channel_name)?;
        seq.serialize_element(&m.traceparent)?;
        seq.serialize_element(&Rest(m))?;
        seq.end()
    }
}

/// What a WebSocket channel's call says of its client (see [`InvokeMeta::wsx`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WsxMeta<'a> {
    pub client_id: &'a str,
    pub event: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

/// Who a request authenticated as: the definition's name and type, and the user name
/// (HTTP Basic) or subject (JWT `sub`). Never a password, key or token.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecurityMeta<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
}

fn pairs_as_object<S: Serializer>(
    pairs: &Option<&[(String, String)]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let pairs = pairs.unwrap_or(&[]);
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// Meta of any `CALL`, as received (the supervisor reads worker-initiated calls with it).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CallMetaIn {
    pub op: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub cid: Option<String>,
    #[serde(default)]
    pub data_format: Option<String>,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The caller's `traceparent` (an `invoke` a service made keeps its caller's trace).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The caller's `tracestate`, kept with its `traceparent`.
    #[serde(default)]
    pub tracestate: Option<String>,
    /// The name of the service that made the call (`self.invoke_async`), for the server's
    /// log line when the callee does not exist. Added within version 1: optional.
    #[serde(default)]
    pub caller: Option<String>,
}

/// Meta of a `REPLY`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyMeta {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// On an error reply, what kind of error it is when the status alone does not say:
    /// [`REPLY_ERROR_INPUT`] or [`REPLY_ERROR_NO_SERVICE`]. Added within version 1: absent
    /// on every other reply, and ignored by a receiver that does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On an error reply, the family of what failed, for the server's per-service error
    /// counts: the `oxbus.errors` class (`BadRequest`, `NotFound`…), `OutputError`, the
    /// nearest built-in exception class of any other exception (`ValueError`, `OSError`,
    /// `Exception`…; never a user class name), or `input` for a refused input. Added within
    /// version 1: absent on every other reply, and ignored by a receiver that does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exc: Option<String>,
}

/// `REPLY` `error`: the request's input was refused before the service's handler ran (a body
/// that is not JSON, or a SimpleIO input that is missing or ill-typed); status 400.
pub const REPLY_ERROR_INPUT: &str = "input";
/// `REPLY` `error`: the worker has no service of the name called; status 404.
pub const REPLY_ERROR_NO_SERVICE: &str = "no_service";
