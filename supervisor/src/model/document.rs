//! The config export/import document: its shape (one list per object kind), the lists'
//! deserializers (each entry checked field by field, so that an error names the entry and the
//! field) and the scrubbing of serde's messages. Plain data and parsing: no I/O, no store.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::cache::parse_cache_def;
use crate::model::channel::Channel;
use crate::model::job::JobDef;
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
