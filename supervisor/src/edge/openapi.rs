//! The OpenAPI 3.1 document of a server's REST channels, served at `GET /openapi.json` on
//! the HTTP listener and at `GET /v1/openapi` on the admin API (`oxbus openapi`).
//!
//! It is built on every request from what the server serves at that moment: the routing
//! table (server.toml's channels and the store's, so a channel created through the admin API
//! is in the next document) and the service table of a ready worker (each service's SimpleIO
//! declarations, which the workers report in `ServiceInfo`). Building it is a pure function
//! of those ([`document`]), so it is unit-tested without a server.
//!
//! How a channel becomes operations:
//! - Its methods (all five of GET, PUT, POST, DELETE, PATCH when the channel takes any
//!   method), narrowed to the service's `handle_<VERB>` methods when it has them: the others
//!   get 405 from the worker, so they are not offered. Methods OpenAPI has no field for (a
//!   custom `PURGE`) cannot be described and are left out.
//! - `{param}` segments are path parameters, typed by the SimpleIO input element of the same
//!   name (SimpleIO looks values up in the body, then the path, then the query string).
//! - The other input elements are the JSON request body's properties for POST, PUT and
//!   PATCH on a JSON channel, and query parameters otherwise (a raw channel's body is not
//!   looked into). A raw channel's body is `application/octet-stream`.
//! - The output declaration is the 200 response's schema. Without a declaration the body
//!   and the answer are free-form JSON objects (octet-stream on a raw channel).
//! - The error answers are the ones the server and the worker really give, all with the
//!   JSON body `{"error": …, "cid": …}` (plus `field` when a SimpleIO element is at fault).

use oxbus_ipc::{IoElem, IoType, ServiceInfo};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tracing::warn;

use crate::config::OpenApiSection;
use crate::model::channel::{Channel, DataFormat};

/// The methods a channel that takes any method is described with: the ones APIs use. It also
/// takes HEAD, OPTIONS, TRACE and custom methods; describing them would only add noise.
const ANY_METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

/// The methods OpenAPI has a path-item field for.
const OPENAPI_METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// Methods whose input is sent as a JSON body (on JSON channels); the others send it in
/// the query string.
const BODY_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

/// The error answers every operation can get, as (status, component name). 405 is not
/// among them: it is what the methods a path does *not* list get (see `components`).
const ERRORS: [(&str, &str); 7] = [
    ("400", "BadRequest"),
    ("404", "NotFound"),
    ("413", "PayloadTooLarge"),
    ("431", "HeadersTooLarge"),
    ("500", "InternalError"),
    ("503", "Unavailable"),
    ("504", "Timeout"),
];

/// What the document's `info` is made of.
#[derive(Debug, Clone)]
pub struct Info<'a> {
    pub settings: &'a OpenApiSection,
    /// The cluster's name: the default title.
    pub cluster: &'a str,
    /// The config version the server runs.
    pub config_version: i64,
    /// The security definitions (for `components.securitySchemes`).
    pub security: &'a [crate::model::security::SecurityDef],
}

/// How a security definition is described to clients.
fn security_scheme(d: &crate::model::security::SecurityDef) -> Value {
    use crate::model::security::SecurityType;
    match d.kind {
        SecurityType::Basic => json!({"type": "http", "scheme": "basic"}),
        SecurityType::Apikey => json!({"type": "apiKey", "in": "header",
            "name": d.header.as_deref().unwrap_or(crate::model::security::DEFAULT_KEY_HEADER)}),
        SecurityType::Jwt => json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
    }
}

/// The document for `channels` (in routing-table order) and the services of `services`.
pub fn document(channels: &[Arc<Channel>], services: &[ServiceInfo], info: &Info) -> Value {
    let by_name: BTreeMap<&str, &ServiceInfo> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut paths = Map::new();
    let mut ids = HashSet::new();
    // Each path template's shape (names erased) and the template that has it: OpenAPI 3.1
    // forbids two templates of one shape (`/files/{p}`, `/files/{path}`).
    let mut shapes: HashMap<String, String> = HashMap::new();
    let mut omitted: Vec<Value> = Vec::new();
    // JSON-RPC channels are one URL for many services: OpenAPI has no way to describe a
    // request whose body names the operation, so they are left out (docs/OPENAPI.md).
    for channel in channels
        .iter()
        .filter(|c| c.channel_type == crate::model::channel::ChannelType::Rest)
    {
        let service = by_name.get(channel.service.as_str()).copied();
        let key = openapi_path(&channel.url_path);
        let shape = path_shape(&key);
        if let Some(other) = shapes.get(&shape).filter(|other| **other != key) {
            let reason = format!(
                "its template {key} has the shape of {other}, described already \
                 (OpenAPI allows one template of a shape)"
            );
            warn!(url_path = %channel.url_path, "OpenAPI document: channel left out: {reason}");
            omitted.push(json!({"url_path": channel.url_path, "reason": reason}));
            continue;
        }
        shapes.insert(shape, key.clone());
        let item = paths.entry(key.clone()).or_insert_with(|| json!({}));
        for method in methods(channel, service) {
            let verb = method.to_ascii_lowercase();
            if item.get(&verb).is_some() {
                // `/files/{id}` and `/files/{id:path}` are one template: the first channel
                // configured (the one routed first) is described.
                let reason = format!("{method} {key} is another channel's operation already");
                warn!(url_path = %channel.url_path, "OpenAPI document: operation left out: {reason}");
                omitted.push(json!({"url_path": channel.url_path, "method": method,
                    "reason": reason}));
                continue;
            }
            let mut op = operation(channel, service, method, &mut ids);
            gate_responses(&mut op, channel, info.security);
            item[verb] = op;
        }
    }
    let mut components = components();
    if !info.security.is_empty() {
        components["securitySchemes"] = info
            .security
            .iter()
            .map(|d| (d.name.clone(), security_scheme(d)))
            .collect::<Map<String, Value>>()
            .into();
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info_object(info),
        "paths": paths,
        "components": components,
    });
    if !omitted.is_empty() {
        doc["x-oxbus-omitted"] = omitted.into();
    }
    doc
}

/// A path template with its parameter names erased (`/files/{}`): two templates of one
/// shape match the same paths.
fn path_shape(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "{}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The channel's checks on an operation: its security requirement and the answers the gate
/// gives (401, 403, 429).
fn gate_responses(op: &mut Value, channel: &Channel, defs: &[crate::model::security::SecurityDef]) {
    let mut limited = channel.rate_limit.is_some();
    if let Some(name) = &channel.security {
        let mut requirement = Map::new();
        requirement.insert(name.clone(), json!([]));
        op["security"] = json!([requirement]);
        op["responses"]["401"] = json!({"$ref": "#/components/responses/Unauthorized"});
        limited |= defs
            .iter()
            .any(|d| &d.name == name && d.rate_limit.is_some());
    }
    if !channel.allow_from.is_empty() {
        op["responses"]["403"] = json!({"$ref": "#/components/responses/Forbidden"});
    }
    if limited {
        op["responses"]["429"] = json!({"$ref": "#/components/responses/TooManyRequests"});
    }
}

fn info_object(info: &Info) -> Value {
    let s = info.settings;
    let n = info.config_version;
    let mut doc = json!({
        "title": s.title.as_deref().unwrap_or(info.cluster),
        "version": match &s.version {
            Some(v) => format!("{v}+config.{n}"),
            None => format!("config.{n}"),
        },
        "x-oxbus-config-version": n,
    });
    if let Some(d) = &s.description {
        doc["description"] = json!(d);
    }
    doc
}

/// The methods `channel` is described with (upper case, OpenAPI's order).
fn methods(channel: &Channel, service: Option<&ServiceInfo>) -> Vec<&'static str> {
    let verbs = service.map(|s| s.verbs.as_slice()).unwrap_or(&[]);
    OPENAPI_METHODS
        .into_iter()
        .filter(|m| {
            let routed = if channel.methods.is_empty() {
                // Any method reaches the service; a service with handle_<VERB> methods
                // answers only those, so they are the whole list.
                !verbs.is_empty() || ANY_METHODS.contains(m)
            } else {
                channel.methods.iter().any(|c| c == m)
            };
            routed && (verbs.is_empty() || verbs.iter().any(|v| v == m))
        })
        .collect()
}

/// The `{param}` names of a channel's path, in order, each with whether it is a catch-all
/// (`{name:path}`).
fn path_params(url_path: &str) -> Vec<(&str, bool)> {
    url_path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| match p.split_once(':') {
            Some((name, _)) => (name, true),
            None => (p, false),
        })
        .collect()
}

/// A channel's path as an OpenAPI path template: a catch-all `{name:path}` is `{name}`
/// there (OpenAPI has no converters; its description says it takes slashes).
fn openapi_path(url_path: &str) -> String {
    if !url_path.contains(':') {
        return url_path.to_owned();
    }
    url_path
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) => format!("{{{}}}", p.split_once(':').map_or(p, |(name, _)| name)),
                None => s.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn operation(
    channel: &Channel,
    service: Option<&ServiceInfo>,
    method: &str,
    ids: &mut HashSet<String>,
) -> Value {
    let input = service.map(|s| s.input.as_slice()).unwrap_or(&[]);
    let output = service.map(|s| s.output.as_slice()).unwrap_or(&[]);
    let raw = channel.data_format == DataFormat::Raw;
    let in_path = path_params(&channel.url_path);
    let mut parameters: Vec<Value> = in_path
        .iter()
        .map(|&(name, catch_all)| {
            let elem = input.iter().find(|e| e.name == name);
            let mut p = json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": text_schema(
                    elem.map_or(IoType::Any, IoElem::kind),
                    elem.and_then(|e| e.format.as_deref()),
                ),
            });
            if catch_all {
                // OpenAPI 3.1 cannot say that a path parameter spans segments (its
                // allowReserved is for query parameters only): say it in words.
                p["description"] = json!(
                    "The rest of the path, slashes included (a catch-all {name:path}); a client that encodes its slashes as %2F gets the same value."
                );
            }
            p
        })
        .collect();
    let rest: Vec<&IoElem> = input
        .iter()
        .filter(|e| !in_path.iter().any(|(name, _)| *name == e.name))
        .collect();
    let json_body = !raw && BODY_METHODS.contains(&method);
    if !json_body {
        parameters.extend(rest.iter().map(|e| {
            json!({
                "name": e.name,
                "in": "query",
                "required": e.required,
                "schema": text_schema(e.kind(), e.format.as_deref()),
            })
        }));
    }

    let mut op = json!({
        "operationId": operation_id(&channel.service, method, ids),
        "summary": channel.service,
        "description": description(channel, service),
        "x-oxbus-service": channel.service,
        "x-oxbus-channel": channel.name.as_deref().unwrap_or(&channel.url_path),
        "responses": responses(raw, output, method == "HEAD"),
    });
    if let Some(s) = service {
        op["tags"] = json!([s.module]);
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if json_body {
        let (schema, required) = if service.is_some_and(|s| !s.input.is_empty()) {
            (object_schema(&rest), rest.iter().any(|e| e.required))
        } else {
            (free_form(), false)
        };
        op["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": schema}},
        });
    } else if raw && BODY_METHODS.contains(&method) {
        op["requestBody"] = json!({
            "description": "The raw request body, handed to the service as bytes (`self.request.raw`).",
            "content": {"application/octet-stream": {}},
        });
    }
    op
}

/// A unique `operationId`: the service's name, then `<service>.<method>` when one service
/// is behind several operations, then a counter.
fn operation_id(service: &str, method: &str, ids: &mut HashSet<String>) -> String {
    let mut candidates = [
        service.to_owned(),
        format!("{service}.{}", method.to_ascii_lowercase()),
    ]
    .into_iter()
    .chain((2..).map(|n| format!("{service}.{}.{n}", method.to_ascii_lowercase())));
    loop {
        let id = candidates.next().expect("an endless iterator");
        if ids.insert(id.clone()) {
            return id;
        }
    }
}

fn description(channel: &Channel, service: Option<&ServiceInfo>) -> String {
    match service {
        Some(s) => format!("Runs service `{}` ({}.{}).", s.name, s.module, s.class),
        None => format!(
            "Service `{}` is not deployed: requests get 404 until it is.",
            channel.service
        ),
    }
}

fn responses(raw: bool, output: &[IoElem], head: bool) -> Value {
    let mut ok = json!({
        "description": "The service's answer.",
        "headers": {"X-Oxbus-CID": {"$ref": "#/components/headers/X-Oxbus-CID"}},
    });
    if !head {
        ok["content"] = if !output.is_empty() {
            let elems: Vec<&IoElem> = output.iter().collect();
            json!({"application/json": {"schema": object_schema(&elems)}})
        } else if raw {
            json!({"application/octet-stream": {}})
        } else {
            json!({"application/json": {"schema": free_form()}})
        };
    }
    let mut all = Map::new();
    all.insert("200".into(), ok);
    for (status, name) in ERRORS {
        all.insert(
            status.into(),
            json!({"$ref": format!("#/components/responses/{name}")}),
        );
    }
    Value::Object(all)
}

/// The schema of a value in a JSON body.
fn json_schema(t: IoType, format: Option<&str>) -> Value {
    let mut schema = match t {
        IoType::Integer => json!({"type": "integer"}),
        IoType::Boolean => json!({"type": "boolean"}),
        IoType::Number => json!({"type": "number"}),
        IoType::String => json!({"type": "string"}),
        IoType::Array => json!({"type": "array"}),
        IoType::Object => json!({"type": "object"}),
        IoType::Any => json!({}),
    };
    if let (Some(f), IoType::String) = (format, t) {
        schema["format"] = json!(f);
    }
    schema
}

/// The schema of a value in a path or query string (text unless SimpleIO converts it).
fn text_schema(t: IoType, format: Option<&str>) -> Value {
    match t {
        IoType::Any | IoType::Array | IoType::Object => json!({"type": "string"}),
        t => json_schema(t, format),
    }
}

fn object_schema(elems: &[&IoElem]) -> Value {
    let properties: Map<String, Value> = elems
        .iter()
        .map(|e| (e.name.clone(), json_schema(e.kind(), e.format.as_deref())))
        .collect();
    let required: Vec<&str> = elems
        .iter()
        .filter(|e| e.required)
        .map(|e| e.name.as_str())
        .collect();
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn free_form() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

fn error_response(description: &str, extra_headers: &[&str]) -> Value {
    let mut headers = Map::new();
    for h in std::iter::once(&"X-Oxbus-CID").chain(extra_headers) {
        headers.insert(
            (*h).into(),
            json!({"$ref": format!("#/components/headers/{h}")}),
        );
    }
    json!({
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

fn components() -> Value {
    json!({
        "schemas": {
            "Error": {
                "type": "object",
                "description": "Every error answer of the server and of its workers.",
                "required": ["error", "cid"],
                "properties": {
                    "error": {"type": "string", "description": "What went wrong."},
                    "cid": {"type": "string", "description": "The request's correlation id (also in X-Oxbus-CID)."},
                    "field": {"type": "string", "description": "The SimpleIO element at fault: a missing or invalid input (400; the first of them), a missing or invalid output (500)."},
                    "allowed": {"type": "array", "items": {"type": "string"}, "description": "The methods the path takes (405), as the Allow header lists them."},
                    "errors": {
                        "type": "array",
                        "description": "Every refused input element (400), by path (`phones[1].imei` in a model).",
                        "items": {"type": "object", "properties": {
                            "field": {"type": "string"}, "error": {"type": "string"}}},
                    },
                },
            },
        },
        "headers": {
            "X-Oxbus-CID": {
                "description": "The request's correlation id: the server's own, or a trusted proxy's X-Request-Id.",
                "schema": {"type": "string"},
            },
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer"},
            },
            "WWW-Authenticate": {
                "description": "The authentication challenge (Basic realm, or Bearer with the token error).",
                "schema": {"type": "string"},
            },
            "Allow": {
                "description": "The methods the path takes.",
                "schema": {"type": "string"},
            },
        },
        "responses": {
            "BadRequest": error_response(
                "Malformed JSON, a missing or invalid SimpleIO input (named in `field`), a body that is not a JSON object where input is declared, or a body that could not be read.",
                &[],
            ),
            "NotFound": error_response(
                "The channel's service is not deployed, or the service answered not found.",
                &[],
            ),
            "MethodNotAllowed": error_response(
                "A method the path does not list (the methods it takes are in Allow).",
                &["Allow"],
            ),
            "PayloadTooLarge": error_response(
                "The request body is over the server's limit (http.max_body_bytes).",
                &[],
            ),
            "HeadersTooLarge": error_response(
                "The request headers are over the server's limit (http.max_header_bytes).",
                &[],
            ),
            "InternalError": error_response(
                "The service failed (details only in the server log), or did not produce a required output element (named in `field`).",
                &[],
            ),
            "Unavailable": error_response(
                "Every worker is busy and the queue is full or waited too long, or the worker running the request died.",
                &["Retry-After"],
            ),
            "Unauthorized": error_response(
                "Missing or wrong credentials for the channel's security definition (WWW-Authenticate names the scheme where it has one).",
                &["WWW-Authenticate"],
            ),
            "Forbidden": error_response(
                "The client's address is not on the channel's allow list.",
                &[],
            ),
            "TooManyRequests": error_response(
                "Over the channel's or the security definition's rate limit.",
                &["Retry-After"],
            ),
            "Timeout": error_response(
                "The service did not answer within the request timeout (http.request_timeout_ms).",
                &[],
            ),
        },
    })
}

/// Why a server cannot describe its API right now.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The services' declarations come from a worker; none is ready (starting up).
    #[error("no worker is ready yet: the services' declarations are not known")]
    NoWorker,
}

/// The document of the server that runs `pool` with `routes`, as served (pretty-printed
/// JSON).
pub fn render(
    pool: &crate::lifecycle::pool::Pool,
    routes: &crate::edge::routes::RoutingTable,
    settings: &crate::config::Settings,
    node: &crate::node::Node,
) -> Result<Vec<u8>, Error> {
    let services = pool
        .all()
        .iter()
        .find(|w| w.state() == crate::lifecycle::pool::WorkerState::Ready)
        .map(|w| w.services.lock().expect("services lock").clone())
        .ok_or(Error::NoWorker)?;
    let router = routes.current();
    let defs = router.gate.definitions();
    let info = Info {
        security: &defs,
        settings: &settings.openapi,
        cluster: &settings.cluster.name,
        config_version: node.applied(),
    };
    let doc = document(router.channels(), &services, &info);
    let mut bytes = serde_json::to_vec_pretty(&TopLevel(&doc)).expect("a JSON value serialises");
    bytes.push(b'\n');
    Ok(bytes)
}

/// The document with its top-level keys in the order people read them (`openapi`, `info`,
/// `paths`, `components`) rather than serde_json's alphabetical one; below that level the
/// keys are sorted, which keeps the output stable.
struct TopLevel<'a>(&'a Value);

impl serde::Serialize for TopLevel<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let doc = self.0.as_object().expect("the document is an object");
        let first = ["openapi", "info", "paths", "components"];
        let mut map = s.serialize_map(Some(doc.len()))?;
        for key in first {
            if let Some(v) = doc.get(key) {
                map.serialize_entry(key, v)?;
            }
        }
        for (k, v) in doc.iter().filter(|(k, _)| !first.contains(&k.as_str())) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deserialised rather than a struct literal, so fields later added to `Channel` with
    /// serde defaults do not break these tests.
    fn ch(path: &str, methods: &[&str], service: &str, fmt: DataFormat) -> Arc<Channel> {
        let c = json!({"url_path": path, "methods": methods, "service": service,
                       "data_format": fmt.as_str()});
        Arc::new(serde_json::from_value(c).unwrap())
    }

    fn elem(name: &str, required: bool, ty: &str) -> IoElem {
        IoElem {
            name: name.into(),
            required,
            ty: ty.into(),
            format: None,
        }
    }

    fn svc(name: &str, verbs: &[&str], input: Vec<IoElem>, output: Vec<IoElem>) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            module: "crm".into(),
            class: "C".into(),
            is_async: false,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            input,
            output,
        }
    }

    fn doc(channels: &[Arc<Channel>], services: &[ServiceInfo]) -> Value {
        let settings = OpenApiSection::default();
        document(
            channels,
            services,
            &Info {
                settings: &settings,
                cluster: "oxbus",
                config_version: 7,
                security: &[],
            },
        )
    }

    #[test]
    fn templates_of_one_shape_are_described_once() {
        let a = svc("files.one", &[], vec![], vec![]);
        let b = svc("files.rest", &[], vec![], vec![]);
        let c = svc("files.put", &[], vec![], vec![]);
        let d = doc(
            &[
                ch("/files/{id}", &["GET"], "files.one", DataFormat::Json),
                // Same template once `:path` goes, same method: the first is described.
                ch(
                    "/files/{id:path}",
                    &["GET", "DELETE"],
                    "files.rest",
                    DataFormat::Json,
                ),
                // Same shape, another name: a second template OpenAPI 3.1 forbids.
                ch(
                    "/files/{path:path}",
                    &["PUT"],
                    "files.put",
                    DataFormat::Json,
                ),
            ],
            &[a, b, c],
        );
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(paths.keys().collect::<Vec<_>>(), ["/files/{id}"]);
        let item = &paths["/files/{id}"];
        assert_eq!(item["get"]["operationId"], "files.one");
        // The other method of the catch-all is kept.
        assert_eq!(item["delete"]["operationId"], "files.rest");
        assert!(item.get("put").is_none());
        let omitted = d["x-oxbus-omitted"].as_array().unwrap();
        assert_eq!(omitted.len(), 2, "{omitted:?}");
        assert_eq!(omitted[0]["url_path"], "/files/{id:path}");
        assert_eq!(omitted[0]["method"], "GET");
        assert_eq!(omitted[1]["url_path"], "/files/{path:path}");
        assert!(
            omitted[1]["reason"]
                .as_str()
                .unwrap()
                .contains("shape of /files/{id}")
        );
        // Nothing left out: no note.
        let d = doc(
            &[ch("/files/{id}", &["GET"], "files.one", DataFormat::Json)],
            &[svc("files.one", &[], vec![], vec![])],
        );
        assert!(d.get("x-oxbus-omitted").is_none());
    }

    #[test]
    fn path_params_body_and_output_from_simpleio() {
        let get = svc(
            "crm.get",
            &[],
            vec![
                elem("customer_id", true, "integer"),
                elem("needs_details", false, "boolean"),
                elem("lang", false, "any"),
            ],
            vec![elem("name", true, "any"), elem("email", false, "any")],
        );
        let update = svc(
            "crm.update",
            &[],
            vec![
                elem("customer_id", true, "integer"),
                elem("name", true, "any"),
            ],
            vec![],
        );
        let d = doc(
            &[
                ch(
                    "/customers/{customer_id}",
                    &["GET"],
                    "crm.get",
                    DataFormat::Json,
                ),
                ch(
                    "/customers/{customer_id}",
                    &["PUT"],
                    "crm.update",
                    DataFormat::Json,
                ),
            ],
            &[get, update],
        );
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["title"], "oxbus");
        assert_eq!(d["info"]["version"], "config.7");
        let item = &d["paths"]["/customers/{customer_id}"];
        let get = &item["get"];
        assert_eq!(get["operationId"], "crm.get");
        assert_eq!(
            get["parameters"],
            json!([
                {"name": "customer_id", "in": "path", "required": true, "schema": {"type": "integer"}},
                {"name": "needs_details", "in": "query", "required": false, "schema": {"type": "boolean"}},
                {"name": "lang", "in": "query", "required": false, "schema": {"type": "string"}},
            ])
        );
        assert!(get.get("requestBody").is_none());
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object", "properties": {"name": {}, "email": {}}, "required": ["name"]})
        );
        let put = &item["put"];
        assert_eq!(put["parameters"].as_array().unwrap().len(), 1);
        assert_eq!(put["requestBody"]["required"], true);
        assert_eq!(
            put["requestBody"]["content"]["application/json"]["schema"],
            json!({"type": "object", "properties": {"name": {}}, "required": ["name"]})
        );
        // No output declared: a free-form object.
        assert_eq!(
            put["responses"]["200"]["content"]["application/json"]["schema"],
            free_form()
        );
        for (status, _) in ERRORS {
            assert!(put["responses"][status]["$ref"].is_string(), "{status}");
        }
        assert!(item.get("post").is_none());
    }

    #[test]
    fn typed_elements_and_formats() {
        let mut day = elem("day", true, "string");
        day.format = Some("date".into());
        let mut count = elem("n", false, "integer");
        count.format = Some("ignored".into());
        let s = svc(
            "x.typed",
            &[],
            vec![
                day.clone(),
                elem("ratio", false, "number"),
                elem("tags", false, "array"),
                elem("address", false, "object"),
                count,
            ],
            vec![day, elem("tags", false, "array")],
        );
        let d = doc(&[ch("/t", &["GET"], "x.typed", DataFormat::Json)], &[s]);
        let get = &d["paths"]["/t"]["get"];
        // In the query string: the scalar types as they convert; arrays and objects as text.
        assert_eq!(
            get["parameters"],
            json!([
                {"name": "day", "in": "query", "required": true, "schema": {"type": "string", "format": "date"}},
                {"name": "ratio", "in": "query", "required": false, "schema": {"type": "number"}},
                {"name": "tags", "in": "query", "required": false, "schema": {"type": "string"}},
                {"name": "address", "in": "query", "required": false, "schema": {"type": "string"}},
                {"name": "n", "in": "query", "required": false, "schema": {"type": "integer"}},
            ])
        );
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object", "properties": {
                "day": {"type": "string", "format": "date"}, "tags": {"type": "array"}},
                "required": ["day"]})
        );
    }

    #[test]
    fn methods_follow_the_channel_and_the_services_verbs() {
        let verbs = svc("v", &["GET", "POST"], vec![], vec![]);
        let plain = svc("p", &[], vec![], vec![]);
        let d = doc(
            &[
                ch("/any", &[], "p", DataFormat::Json),
                ch("/verbs", &[], "v", DataFormat::Json),
                ch(
                    "/narrow",
                    &["POST", "DELETE", "PURGE"],
                    "v",
                    DataFormat::Json,
                ),
            ],
            &[verbs, plain],
        );
        let keys = |p: &str| {
            d["paths"][p]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("/any"), ["delete", "get", "patch", "post", "put"]);
        assert_eq!(keys("/verbs"), ["get", "post"]);
        assert_eq!(keys("/narrow"), ["post"]);
        // One service behind several operations: ids stay unique.
        let ids: HashSet<&str> = ["/any", "/verbs", "/narrow"]
            .iter()
            .flat_map(|p| d["paths"][*p].as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 5 + 2 + 1);
    }

    #[test]
    fn top_level_keys_come_in_reading_order() {
        let text = serde_json::to_string(&TopLevel(&doc(&[], &[]))).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        assert_eq!(at("openapi"), 1, "{text}");
        assert!(at("info") < at("paths") && at("paths") < at("components"));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc(&[], &[]));
    }

    #[test]
    fn raw_channels_unknown_services_and_info() {
        let up = svc(
            "files.put",
            &[],
            vec![elem("file_id", true, "integer")],
            vec![],
        );
        let d = doc(
            &[
                ch("/files/{file_id}", &["PUT"], "files.put", DataFormat::Raw),
                ch("/gone", &["POST"], "not.deployed", DataFormat::Json),
            ],
            &[up],
        );
        let put = &d["paths"]["/files/{file_id}"]["put"];
        assert_eq!(
            put["requestBody"]["content"],
            json!({"application/octet-stream": {}})
        );
        assert_eq!(
            put["responses"]["200"]["content"],
            json!({"application/octet-stream": {}})
        );
        assert_eq!(put["parameters"][0]["schema"], json!({"type": "integer"}));
        let gone = &d["paths"]["/gone"]["post"];
        assert!(
            gone["description"]
                .as_str()
                .unwrap()
                .contains("not deployed")
        );
        assert_eq!(
            gone["requestBody"]["content"]["application/json"]["schema"],
            free_form()
        );
        assert!(gone.get("tags").is_none());

        let settings = OpenApiSection {
            title: Some("CRM".into()),
            version: Some("2.1".into()),
            description: Some("Customers".into()),
        };
        let info = info_object(&Info {
            settings: &settings,
            cluster: "oxbus",
            config_version: 12,
            security: &[],
        });
        assert_eq!(
            info,
            json!({"title": "CRM", "version": "2.1+config.12", "description": "Customers",
                   "x-oxbus-config-version": 12})
        );
    }

    #[test]
    fn a_catch_all_is_a_path_parameter_of_the_template() {
        let d = doc(
            &[ch(
                "/files/{dir}/{path:path}",
                &["GET"],
                "files.get",
                DataFormat::Raw,
            )],
            &[],
        );
        let get = &d["paths"]["/files/{dir}/{path}"]["get"];
        let params = get["parameters"].as_array().unwrap();
        assert_eq!(params.len(), 2, "{params:?}");
        assert_eq!(params[1]["name"], "path");
        assert_eq!(params[1]["in"], "path");
        assert!(
            params[1]["description"]
                .as_str()
                .unwrap()
                .contains("slashes included")
        );
        assert!(params[0].get("description").is_none());
        assert!(d["paths"].get("/files/{dir}/{path:path}").is_none());
    }
}
