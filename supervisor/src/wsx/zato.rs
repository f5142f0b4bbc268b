//! Zato 3.2's WebSocket client protocol (a channel's `protocol = "zato"`), so that Zato's
//! clients (`zato.common.wsx_client`, and the JavaScript ones built on it) connect
//! unchanged. Every message is a JSON object `{"meta": {…}, "data": …}`:
//!
//! - the client's first message is `meta.action = "create-session"` (with `meta.username`
//!   and `meta.secret` when the channel has a security definition); the server answers
//!   `zwsx.rspa` with `data.token`, which every later message carries in `meta.token`;
//! - `meta.action = "invoke-service"` (any action other than `create-session` and
//!   `client-response`) calls the channel's service with `data` (or, where the channel
//!   lists `services`, the service `data.service` names with `data.request`, as Zato's
//!   `helpers.web-sockets-gateway` does); the answer is `zwsx.rspok` with the service's
//!   response as `data`, or `zwsx.rsperr` with `meta.status` and `meta.error_message`,
//!   both with `meta.in_reply_to` set to the request's `meta.id`;
//! - pushes from services go out as `zwsx.rqc` requests; a refusal (no session, a wrong
//!   token, bad credentials) as `zwsx.merr` before the connection is closed.
//!
//! Pure functions: the session (`session.rs`) does the I/O.

use bytes::Bytes;
use serde_json::Value;

/// What a client's message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateSession,
    /// An answer to a request the server sent (not used by Oxbus: pushes expect none).
    ClientResponse,
    /// `invoke-service`, or any other action (Zato treats them alike).
    Invoke,
}

/// A client's message, read.
#[derive(Debug)]
pub struct Incoming {
    pub id: String,
    pub action: Action,
    pub token: Option<String>,
    pub username: Option<String>,
    pub secret: Option<String>,
    /// The client's own id and name for itself (`meta.client_id`, `meta.client_name`).
    pub client_id: Option<String>,
    pub client_name: Option<String>,
    pub data: Value,
}

/// Why a message could not be read (sent back as a `zwsx.merr` 400).
pub const MALFORMED: &str = "a message is a JSON object {\"meta\": {\"id\": …, \"timestamp\": …, \"action\": …}, \"data\": …}";

/// Reads a client's message.
pub fn parse(text: &[u8]) -> Result<Incoming, &'static str> {
    let v: Value = serde_json::from_slice(text).map_err(|_| MALFORMED)?;
    let Value::Object(mut o) = v else {
        return Err(MALFORMED);
    };
    let data = o.remove("data").unwrap_or(Value::Null);
    let Some(Value::Object(meta)) = o.remove("meta") else {
        return Err(MALFORMED);
    };
    let s = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_owned);
    // Zato reads both with [] (a message without them is not handled).
    let id = s("id").ok_or(MALFORMED)?;
    if !meta.contains_key("timestamp") {
        return Err(MALFORMED);
    }
    let action = match meta.get("action").and_then(Value::as_str) {
        Some("create-session") => Action::CreateSession,
        None | Some("client-response") => Action::ClientResponse,
        Some(_) => Action::Invoke,
    };
    // `client_name` may be an object: Zato flattens it to "k: v; …".
    let client_name = match meta.get("client_name") {
        Some(Value::String(n)) => Some(n.clone()),
        Some(Value::Object(m)) => Some(
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: {s}"),
                    v => format!("{k}: {v}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    };
    let client_id = match meta.get("client_id") {
        Some(Value::String(n)) => Some(n.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(Incoming {
        id,
        action,
        token: s("token").filter(|t| !t.is_empty()),
        username: s("username").filter(|u| !u.is_empty()),
        secret: s("secret"),
        client_id,
        client_name,
        data,
    })
}

/// Zato's message types.
pub const RSP_AUTH: &str = "zwsx.rspa";
pub const RSP_OK: &str = "zwsx.rspok";
pub const RSP_ERR: &str = "zwsx.rsperr";
pub const MSG_ERR: &str = "zwsx.merr";
pub const REQ_TO_CLIENT: &str = "zwsx.rqc";
pub const PUBSUB_REQ: &str = "zwsx.psrq";

/// Zato's words for a refusal (what its clients may match on).
pub const NOT_AUTHORIZED: &str = "You are not authorized to access this resource";
pub const NOT_ALLOWED: &str = "You are not allowed to access this resource";

/// A new id of a server message (a cid: unique, not secret).
pub fn new_id() -> String {
    crate::cid::next()
}

/// A new session token: 24 hex digits from the OS's random source (it must not be
/// guessed).
pub fn new_token() -> String {
    format!("zwsxt.{}", crate::random::random_hex(12))
}

/// Now as Zato writes it (`datetime.utcnow().isoformat()`).
fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

/// `data` as a JSON value's text: a service's answer that is JSON goes in as it is, other
/// text as a JSON string.
fn data_json(body: &[u8]) -> String {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Valid JSON is valid UTF-8.
        String::from_utf8_lossy(body).into_owned()
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned()).to_string()
    }
}

/// One server message: `meta` (as built by the caller, without id and timestamp) and its
/// `data` as JSON text (none: no `data` key, as Zato leaves out an empty one).
fn envelope(msg_type: &str, id: &str, meta: &[(&str, Value)], data: Option<String>) -> Bytes {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), Value::from(id));
    m.insert("timestamp".into(), Value::from(timestamp()));
    m.insert("msg_type".into(), Value::from(msg_type));
    for (k, v) in meta {
        m.insert((*k).into(), v.clone());
    }
    let meta = Value::Object(m).to_string();
    Bytes::from(match data {
        Some(d) => format!("{{\"meta\":{meta},\"data\":{d}}}"),
        None => format!("{{\"meta\":{meta}}}"),
    })
}

/// The answer to a `create-session`: the session's token.
pub fn auth_ok(in_reply_to: &str, token: &str) -> Bytes {
    envelope(
        RSP_AUTH,
        &new_id(),
        &[
            ("status", Value::from(200)),
            ("in_reply_to", Value::from(in_reply_to)),
        ],
        Some(serde_json::json!({ "token": token }).to_string()),
    )
}

/// A service's answer (`body`, its response; empty: no `data`).
pub fn ok(cid: &str, in_reply_to: &str, body: &[u8]) -> Bytes {
    envelope(
        RSP_OK,
        cid,
        &[
            ("status", Value::from(200)),
            ("in_reply_to", Value::from(in_reply_to)),
        ],
        (!body.is_empty()).then(|| data_json(body)),
    )
}

/// A call that failed: its status and message; `data` holds the cid (for the server's
/// log), as Zato's.
pub fn err(cid: &str, in_reply_to: &str, status: u16, message: &str) -> Bytes {
    envelope(
        RSP_ERR,
        cid,
        &[
            ("status", Value::from(status)),
            ("in_reply_to", Value::from(in_reply_to)),
            ("error_message", Value::from(message)),
        ],
        Some(serde_json::json!({ "cid": cid }).to_string()),
    )
}

/// A refusal that answers no request (the connection is closed after it).
pub fn merr(status: u16, message: &str) -> Bytes {
    envelope(
        MSG_ERR,
        &new_id(),
        &[("status", Value::from(status))],
        Some(Value::from(message).to_string()),
    )
}

/// A push from a service: a request to the client, which expects no answer.
pub fn request_to_client(body: &[u8]) -> Bytes {
    envelope(REQ_TO_CLIENT, &new_id(), &[], Some(data_json(body)))
}

/// A pub/sub delivery (`zwsx.psrq`): one message as its `data` (its `meta.id` the
/// message's id), or several as a list; each message also under Zato's key names
/// (`pub_msg_id`, `topic_name`).
pub fn pubsub_request(mut messages: Vec<Value>) -> Bytes {
    for m in &mut messages {
        if let Value::Object(o) = m {
            if let Some(id) = o.get("msg_id").cloned() {
                o.insert("pub_msg_id".into(), id);
            }
            if let Some(t) = o.get("topic").cloned() {
                o.insert("topic_name".into(), t);
            }
        }
    }
    let (id, data) = if messages.len() == 1 {
        let m = messages.pop().unwrap_or(Value::Null);
        let id = m
            .get("msg_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(new_id);
        (id, m)
    } else {
        (new_id(), Value::Array(messages))
    };
    envelope(PUBSUB_REQ, &id, &[], Some(data.to_string()))
}

/// The `error_message` of a failed call: Zato's words for a 500 (what Zato's clients
/// show), the service's `error` text for a status it chose, else the status's reason.
pub fn error_message(status: u16, body: &[u8]) -> String {
    if status == 500 {
        return "Internal server error".into();
    }
    if status == 403 {
        return NOT_ALLOWED.into();
    }
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::String(e)) = o.get("error")
    {
        return e.clone();
    }
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_owned()
}

/// What an `invoke-service` calls: the service and its payload (JSON text). `services`:
/// the channel's list (empty: the channel's service gets `data` whole); with a list,
/// `data.service` names one of them and `data.request` is its payload, as Zato's
/// gateway service does. `Err`: the service named is not on the list.
pub fn target<'a>(
    channel_service: &'a str,
    services: &'a [String],
    data: Value,
) -> Result<(&'a str, Bytes), String> {
    if services.is_empty() {
        return Ok((channel_service, Bytes::from(data.to_string())));
    }
    match data {
        Value::Object(mut o) if o.get("service").is_some_and(Value::is_string) => {
            let Some(Value::String(name)) = o.remove("service") else {
                unreachable!("checked as a string")
            };
            let request = o.remove("request").unwrap_or(Value::Null);
            match services.iter().find(|s| **s == name) {
                Some(s) => Ok((s.as_str(), Bytes::from(request.to_string()))),
                None => Err(name),
            }
        }
        data => Ok((channel_service, Bytes::from(data.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Zato's wsx_client sends (json.dumps: spaces, nulls).
    const CREATE: &str = r#"{"meta": {"id": "zwsxc.auth.8f3a", "action": "create-session", "attrs": null, "timestamp": "2025-01-01T10:00:00.123456", "client_id": "123456", "client_name": "My Client", "token": "", "username": "user1", "secret": "secret1", "in_reply_to": null}, "data": {}}"#;

    #[test]
    fn zato_clients_messages_are_read() {
        let m = parse(CREATE.as_bytes()).unwrap();
        assert_eq!(m.action, Action::CreateSession);
        assert_eq!(m.id, "zwsxc.auth.8f3a");
        assert_eq!(m.token, None);
        assert_eq!(m.username.as_deref(), Some("user1"));
        assert_eq!(m.secret.as_deref(), Some("secret1"));
        assert_eq!(m.client_id.as_deref(), Some("123456"));
        let inv = parse(br#"{"meta":{"action":"invoke-service","id":"i1","timestamp":"t","token":"zwsxt.1","client_name":{"app":"crm","v":2}},"data":{"service":"a.b","request":{"x":1}}}"#).unwrap();
        assert_eq!(inv.action, Action::Invoke);
        assert_eq!(inv.token.as_deref(), Some("zwsxt.1"));
        assert_eq!(inv.client_name.as_deref(), Some("app: crm; v: 2"));
        let rsp = parse(
            br#"{"meta":{"id":"r","timestamp":"t","in_reply_to":"x"},"data":{"response":1}}"#,
        )
        .unwrap();
        assert_eq!(rsp.action, Action::ClientResponse);
        for bad in [
            &b"[]"[..],
            b"{}",
            b"not json",
            br#"{"meta":{"timestamp":"t"}}"#,
            br#"{"meta":{"id":"x"}}"#,
            br#"{"meta":"x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn server_messages_have_zatos_shapes() {
        let a = json(&auth_ok("c1", "zwsxt.abc"));
        assert_eq!(a["meta"]["msg_type"], "zwsx.rspa");
        assert_eq!(a["meta"]["status"], 200);
        assert_eq!(a["meta"]["in_reply_to"], "c1");
        assert_eq!(a["data"]["token"], "zwsxt.abc");
        let ts = a["meta"]["timestamp"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.6f").is_ok(),
            "{ts}"
        );
        let o = json(&ok("cid1", "i1", br#"{"pong":"zato"}"#));
        assert_eq!(o["meta"]["msg_type"], "zwsx.rspok");
        assert_eq!(o["meta"]["id"], "cid1");
        assert_eq!(o["data"]["pong"], "zato");
        let text = json(&ok("cid1", "i1", b"plain text"));
        assert_eq!(text["data"], "plain text");
        let empty = json(&ok("cid1", "i1", b""));
        assert!(empty.get("data").is_none());
        let e = json(&err("cid2", "i2", 500, "Internal server error"));
        assert_eq!(e["meta"]["msg_type"], "zwsx.rsperr");
        assert_eq!(e["meta"]["status"], 500);
        assert_eq!(e["meta"]["error_message"], "Internal server error");
        assert_eq!(e["data"]["cid"], "cid2");
        let m = json(&merr(403, NOT_AUTHORIZED));
        assert_eq!(m["meta"]["msg_type"], "zwsx.merr");
        assert!(m["meta"].get("in_reply_to").is_none());
        assert_eq!(m["data"], NOT_AUTHORIZED);
        let r = json(&request_to_client(br#"{"note":"hi"}"#));
        assert_eq!(r["meta"]["msg_type"], "zwsx.rqc");
        assert!(r["meta"].get("status").is_none());
        assert_eq!(r["data"]["note"], "hi");
        assert!(new_token().starts_with("zwsxt.") && new_token().len() == 30);
        let one = json(&pubsub_request(vec![
            serde_json::json!({"msg_id": "zpsm1", "topic": "/a", "data": "x"}),
        ]));
        assert_eq!(one["meta"]["msg_type"], "zwsx.psrq");
        assert_eq!(one["meta"]["id"], "zpsm1");
        assert_eq!(one["data"]["pub_msg_id"], "zpsm1");
        assert_eq!(one["data"]["topic_name"], "/a");
        let two = json(&pubsub_request(vec![
            serde_json::json!({"msg_id": "zpsm1"}),
            serde_json::json!({"msg_id": "zpsm2"}),
        ]));
        assert_eq!(two["data"][1]["pub_msg_id"], "zpsm2");
        assert_ne!(two["meta"]["id"], "zpsm1");
    }

    #[test]
    fn error_messages_and_targets() {
        assert_eq!(error_message(500, b"{}"), "Internal server error");
        assert_eq!(error_message(403, b""), NOT_ALLOWED);
        assert_eq!(
            error_message(400, br#"{"error":"missing: name"}"#),
            "missing: name"
        );
        assert_eq!(error_message(404, b"x"), "Not Found");
        let none: Vec<String> = vec![];
        let data = serde_json::json!({"service": "a", "request": {"x": 1}});
        let (s, p) = target("ch.svc", &none, data.clone()).unwrap();
        assert_eq!(s, "ch.svc");
        assert_eq!(serde_json::from_slice::<Value>(&p).unwrap(), data);
        let listed = vec!["a".to_owned()];
        let (s, p) = target("ch.svc", &listed, data).unwrap();
        assert_eq!((s, &p[..]), ("a", &br#"{"x":1}"#[..]));
        assert_eq!(
            target("ch.svc", &listed, serde_json::json!({"service": "b"})).unwrap_err(),
            "b"
        );
        let (s, p) = target("ch.svc", &listed, serde_json::json!({"service": "a"})).unwrap();
        assert_eq!((s, &p[..]), ("a", &b"null"[..]));
        let (s, _) = target("ch.svc", &listed, serde_json::json!([1])).unwrap();
        assert_eq!(s, "ch.svc");
    }
}
