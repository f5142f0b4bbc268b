//! The config export/import document: its shape (one list per object kind), the lists'
//! deserializers (each entry checked field by field, so that an error names the entry and the
//! field) and the scrubbing of serde's messages. Plain data and parsing: no I/O, no store.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::cache::parse_cache_def;
use crate::model::channel::Channel;
use crate::model::job::JobDef;
use crate::model::pubsub::{Endpoint, Subscription, Topic};
use oxbus_cache::CacheDef;

/// The document's format version.
pub const FORMAT: u32 = 1;

/// The export/import document.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version (1); optional on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oxbus_config: Option<u32>,
    /// The store's config version at export; informational, ignored on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<i64>,
    #[serde(default)]
    pub channel_rest: Vec<Channel>,
    /// JSON-RPC channels (`type: jsonrpc` may be left out here). One name space with
    /// `channel_rest`: a name is listed in one of the two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_jsonrpc: Vec<Channel>,
    /// A list of `{name, value}` (plain, sealed on import) or `{name, sealed}` (as exported).
    /// Kept as raw JSON and checked by hand, so that no parse error can quote a value.
    #[serde(default)]
    pub secret: Value,
    #[serde(default)]
    pub service_module: Vec<ModuleDoc>,
    /// Security definitions (docs/SECURITY.md): as exported, with `sealed` secret material;
    /// on import also with plaintext `password` / `key` / `secret`, hashed or sealed here.
    /// Raw JSON, checked by hand, for the same reason as `secret`.
    #[serde(default)]
    pub security: Value,
    /// Cache definitions (docs/CACHE.md), each checked field by field so that an error names
    /// the entry and the field.
    #[serde(default, deserialize_with = "cache_list")]
    pub cache: Vec<CacheDef>,
    /// Scheduler jobs (docs/SCHEDULER.md), each checked field by field like `cache`.
    #[serde(default, deserialize_with = "job_list")]
    pub job: Vec<JobDef>,
    /// Outgoing REST connections (docs/OUTGOING.md): as exported, with `auth.sealed`; on
    /// import also with the plaintext `auth.password` / `key` / `token` / `client_secret`,
    /// sealed here. Raw JSON, checked by hand, for the same reason as `secret`.
    #[serde(default)]
    pub outgoing_rest: Value,
    /// Outgoing SQL connections: as exported, with `sealed`; on import also with the
    /// plaintext `password`. Raw JSON like `outgoing_rest`.
    #[serde(default)]
    pub outgoing_sql: Value,
    /// Pub/sub topics (docs/PUBSUB.md), each checked field by field like `cache`.
    #[serde(default, deserialize_with = "topic_list")]
    pub pubsub_topic: Vec<Topic>,
    /// Pub/sub subscriptions, each checked field by field; `created_at_ms` left out keeps the
    /// stored one's (a new one: the time of the import).
    #[serde(default, deserialize_with = "subscription_list")]
    pub pubsub_subscription: Vec<Subscription>,
    /// Pub/sub endpoints (who may publish and subscribe where).
    #[serde(default, deserialize_with = "endpoint_list")]
    pub pubsub_endpoint: Vec<Endpoint>,
    /// AMQP channels (docs/CONNECTORS.md): as exported, with `sealed`; on import also with
    /// the plaintext `password`. Raw JSON like `outgoing_rest`.
    #[serde(default)]
    pub channel_amqp: Value,
    /// MQTT channels, like `channel_amqp`.
    #[serde(default)]
    pub channel_mqtt: Value,
    /// File-transfer channels (docs/FILES.md), each checked field by field like `cache`.
    #[serde(default, deserialize_with = "file_channel_list")]
    pub channel_file: Vec<crate::model::files::FileChannel>,
    /// Outgoing AMQP connections, like `channel_amqp`.
    #[serde(default)]
    pub outgoing_amqp: Value,
    /// Outgoing MQTT connections, like `channel_amqp`.
    #[serde(default)]
    pub outgoing_mqtt: Value,
    /// Outgoing Redis connections, like `channel_amqp`.
    #[serde(default)]
    pub outgoing_redis: Value,
    /// User config (docs/USER_CONFIG.md), each checked field by field like `cache`. Left out
    /// of an export when there is none, so that a server without this kind still imports
    /// the export of one that has it but stores none.
    #[serde(
        default,
        deserialize_with = "user_config_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_config: Vec<crate::model::user_config::UserConfig>,
}

fn user_config_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::model::user_config::UserConfig>, D::Error> {
    parsed_list(d, "user_config", "user config", |v| {
        crate::model::user_config::parse_user_config(v, None)
    })
}

fn topic_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Topic>, D::Error> {
    parsed_list(d, "pubsub_topic", "topics", |v| parse_topic(v, None))
}

fn subscription_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Subscription>, D::Error> {
    parsed_list(d, "pubsub_subscription", "subscriptions", |v| {
        parse_subscription(v, None)
    })
}

fn file_channel_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::model::files::FileChannel>, D::Error> {
    parsed_list(d, "channel_file", "file channels", |v| {
        let c: crate::model::files::FileChannel =
            serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.0)?;
        Ok::<_, String>(c)
    })
}

fn endpoint_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Endpoint>, D::Error> {
    parsed_list(d, "pubsub_endpoint", "pub/sub endpoints", |v| {
        parse_endpoint(v, None)
    })
}

/// A topic from JSON (an admin request's body, a document's entry); every error names the
/// field. `path_name`: the name the request's URL gives (the body may leave `name` out and
/// must not name another). Not validated here: see [`Topic::validate`].
pub fn parse_topic(v: &Value, path_name: Option<&str>) -> Result<Topic, String> {
    parse_fields(v, path_name, "name", "topic", serde_json::json!({}))
}

/// A subscription from JSON, as [`parse_topic`] (its name is `sub_key`).
pub fn parse_subscription(v: &Value, path_name: Option<&str>) -> Result<Subscription, String> {
    parse_fields(
        v,
        path_name,
        "sub_key",
        "subscription",
        serde_json::json!({"topic": "/t", "delivery": {"type": "pull"}}),
    )
}

/// A pub/sub endpoint from JSON, as [`parse_topic`].
pub fn parse_endpoint(v: &Value, path_name: Option<&str>) -> Result<Endpoint, String> {
    parse_fields(
        v,
        path_name,
        "name",
        "pub/sub endpoint",
        serde_json::json!({"security": "s"}),
    )
}

/// An object of a kind whose name is `name_key`, parsed field by field: each field is tried
/// alone on `template` (the kind's required fields), so that a value of the wrong type or an
/// unknown field is reported with the field's name; then the whole object.
fn parse_fields<T: serde::de::DeserializeOwned>(
    v: &Value,
    path_name: Option<&str>,
    name_key: &str,
    what: &str,
    mut template: Value,
) -> Result<T, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("a {what} must be a JSON object"));
    };
    let name = match (obj.get(name_key), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(format!(
                "the body names {what} {n:?}, the URL {p:?}: a {what} cannot be renamed"
            ));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err(format!("{what}: {name_key} must be a string")),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err(format!("{what}: {name_key}: missing")),
    };
    template[name_key] = Value::String(name.clone());
    for (k, value) in obj.iter().filter(|(k, _)| *k != name_key) {
        let mut one = template.clone();
        one[k.as_str()] = value.clone();
        if let Err(e) = serde_json::from_value::<T>(one) {
            return Err(format!("{what} {name}: {k}: {e}"));
        }
    }
    let mut full = obj.clone();
    full.insert(name_key.into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(full)).map_err(|e| format!("{what} {name}: {e}"))
}

fn job_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<JobDef>, D::Error> {
    parsed_list(d, "job", "job definitions", |v| {
        crate::model::job::parse_job_def(v, None)
    })
}

fn cache_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CacheDef>, D::Error> {
    parsed_list(d, "cache", "cache definitions", |v| {
        parse_cache_def(v, None)
    })
}

/// A document's list of `key` entries (absent or null: none), each parsed by `parse` so that
/// an error names the entry (`key[i]: …`) and the field.
fn parsed_list<'de, D, T, E>(
    d: D,
    key: &str,
    what: &str,
    parse: impl Fn(&Value) -> Result<T, E>,
) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    E: std::fmt::Display,
{
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| parse(v).map_err(|e| D::Error::custom(format!("{key}[{i}]: {e}"))))
            .collect(),
        _ => Err(D::Error::custom(format!(
            "{key}: expected a list of {what}"
        ))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleDoc {
    pub name: String,
    pub source: String,
}

/// A serde message with the contents of quoted strings left out (`string "…"`), so that a
/// mistyped document never echoes a value that may be a secret.
pub fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        let (head, tail) = rest.split_at(i + "string \"".len());
        out.push_str(head);
        match tail.find('"') {
            Some(j) => {
                out.push_str("…\"");
                rest = &tail[j + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_errors_do_not_quote_values() {
        let e = serde_json::from_str::<Document>(r#"{"channel_rest": "hunter2"}"#).unwrap_err();
        let msg = without_values(&e.to_string());
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        assert_eq!(
            without_values("a string \"x\" and string \"y"),
            "a string \"…\" and string \"…"
        );
        assert_eq!(without_values("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn a_cache_definition_error_names_the_field() {
        let def = parse_cache_def(&json!({"max_entries": 5}), Some("s")).unwrap();
        assert_eq!(
            def,
            CacheDef {
                max_entries: 5,
                ..CacheDef::named("s")
            }
        );
        let err = |v: Value, name: Option<&str>| parse_cache_def(&v, name).unwrap_err().to_string();
        let e = err(
            json!({"max_entires": 5, "ttl": 1, "replicate": true}),
            Some("s"),
        );
        assert!(
            e.contains("max_entires, ttl") && e.contains("max_entries"),
            "{e}"
        );
        let e = err(json!({"max_entries": "many"}), Some("s"));
        assert!(e.starts_with("cache s: max_entries: invalid type"), "{e}");
        let e = err(json!({"default_expiry_s": -1}), Some("s"));
        assert!(e.contains("default_expiry_s:"), "{e}");
        let e = err(json!({"name": "t"}), Some("s"));
        assert!(e.contains("cannot be renamed"), "{e}");
        assert!(err(json!({"max_entries": 5}), None).contains("name"));
        assert!(err(json!([1]), Some("s")).contains("JSON object"));
        // In a document: the entry is named too.
        let e = serde_json::from_value::<Document>(
            json!({"cache": [{"name": "a"}, {"name": "b", "replicate": "no"}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cache[1]: cache b: replicate:"), "{e}");
        let doc: Document = serde_json::from_value(json!({"cache": null})).unwrap();
        assert!(doc.cache.is_empty());
    }

    #[test]
    fn a_pubsub_entry_error_names_the_entry_and_the_field() {
        let doc: Document = serde_json::from_value(json!({
            "pubsub_topic": [{"name": "/orders/new", "has_gd": false}],
            "pubsub_subscription": [{"sub_key": "sk.a", "topic": "/orders/*",
                                     "delivery": {"type": "service", "service": "crm.x"}}],
            "pubsub_endpoint": [{"name": "crm", "security": "crm-basic",
                                 "topic_patterns": ["pub=/orders/*"]}],
        }))
        .unwrap();
        assert!(!doc.pubsub_topic[0].has_gd);
        assert_eq!(doc.pubsub_subscription[0].batch_size, 1);
        assert_eq!(doc.pubsub_endpoint[0].security, "crm-basic");
        for (v, want) in [
            (
                json!({"pubsub_topic": [{"name": "/a"}, {"name": "/b", "max_depth_gd": "lots"}]}),
                "pubsub_topic[1]: topic /b: max_depth_gd: invalid type",
            ),
            (
                json!({"pubsub_topic": [{"name": "/a", "max_dept_gd": 5}]}),
                "pubsub_topic[0]: topic /a: max_dept_gd: unknown field `max_dept_gd`",
            ),
            (
                json!({"pubsub_subscription": [{"sub_key": "k", "topic": "/a",
                                                "delivery": {"type": "mail"}}]}),
                "pubsub_subscription[0]: subscription k: delivery: unknown variant `mail`",
            ),
            (
                json!({"pubsub_subscription": [{"topic": "/a", "delivery": {"type": "pull"}}]}),
                "pubsub_subscription[0]: subscription: sub_key: missing",
            ),
            (
                json!({"pubsub_endpoint": [{"name": "e"}]}),
                "pubsub_endpoint[0]: pub/sub endpoint e: missing field `security`",
            ),
            (
                json!({"pubsub_endpoint": {"name": "e"}}),
                "pubsub_endpoint: expected a list of pub/sub endpoints",
            ),
        ] {
            let e = serde_json::from_value::<Document>(v)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}\n  wanted: {want}");
        }
        // A body of the admin API: the URL's name, and no other.
        let t = parse_topic(&json!({"has_gd": false}), Some("/x")).unwrap();
        assert_eq!(t.name, "/x");
        let e = parse_topic(&json!({"name": "/y"}), Some("/x")).unwrap_err();
        assert!(e.contains("cannot be renamed"), "{e}");
    }

    #[test]
    fn a_user_config_entry_error_names_the_entry_and_the_field() {
        let doc: Document = serde_json::from_value(json!({"user_config": [
            {"name": "app", "value": {"crm": {"url": "https://crm"}}, "description": "CRM"},
        ]}))
        .unwrap();
        assert_eq!(doc.user_config[0].value["crm"]["url"], "https://crm");
        for (v, want) in [
            (
                json!({"user_config": [{"name": "a", "value": {}}, {"name": "b", "value": [1]}]}),
                "user_config[1]: user config b: value must be a JSON object (sections of keys), not an array",
            ),
            (
                json!({"user_config": [{"name": "a b", "value": {}}]}),
                "user_config[0]: \"a b\" is not a valid user config name",
            ),
            (
                json!({"user_config": {"name": "a"}}),
                "user_config: expected a list of user config",
            ),
        ] {
            let e = serde_json::from_value::<Document>(v)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}\n  wanted: {want}");
        }
        // Left out when there is none (an older server refuses an unknown key); there when
        // there is.
        let none = serde_json::to_value(Document::default()).unwrap();
        assert!(none.get("user_config").is_none(), "{none}");
        let some = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            some["user_config"],
            json!([{"name": "app", "description": "CRM", "value": {"crm": {"url": "https://crm"}}}])
        );
    }

    #[test]
    fn a_job_entry_error_names_the_entry_and_the_field() {
        let doc: Document = serde_json::from_value(json!({"job": [
            {"name": "a", "type": "one_time", "service": "s"},
            {"name": "b", "type": "cron_style", "service": "s", "cron": "0 8 * * *"},
        ]}))
        .unwrap();
        assert_eq!(doc.job.len(), 2);
        assert_eq!(doc.job[1].cron.as_deref(), Some("0 8 * * *"));
        let e = serde_json::from_value::<Document>(json!({"job": [
            {"name": "a", "type": "one_time", "service": "s"},
            {"name": "b", "type": "one_time", "service": "s", "jitter_ms": "x"},
        ]}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("job[1]: job b: jitter_ms:"), "{e}");
        let e = serde_json::from_value::<Document>(json!({"job": [{"type": "one_time"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("job[0]: name: missing"), "{e}");
        let e = serde_json::from_value::<Document>(json!({"job": {"name": "a"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("job: expected a list"), "{e}");
        let doc: Document = serde_json::from_value(json!({"job": null})).unwrap();
        assert!(doc.job.is_empty());
    }
}
