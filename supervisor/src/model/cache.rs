//! A cache definition from an operator's JSON (an admin request's body, an entry of a config
//! document): every error names the field. Plain parsing, no I/O; the definition itself is
//! `oxbus_cache::CacheDef`, validated by its own `validate`.

use oxbus_cache::CacheDef;
use serde_json::{Value, json};

/// A cache definition refused as input (a 400 answer's `error`, an import's, byte for byte).
#[derive(Debug, thiserror::Error)]
pub enum CacheInputError {
    /// A cache definition that is not a JSON object.
    #[error("expected a JSON object of cache definition fields")]
    NotAnObject,
    /// A cache definition whose `name` is not a string.
    #[error("name: must be a string")]
    NameNotString,
    /// A cache definition without `name`, and no name in the URL.
    #[error("name: missing")]
    NameMissing,
    /// A body naming another cache than its URL.
    #[error("name: the body names cache {body:?}, the URL {url:?}: a cache cannot be renamed")]
    Renamed { body: String, url: String },
    /// Fields a cache definition does not have (`unknown` and `known` comma-separated).
    #[error("cache {cache}: unknown field(s) {unknown} (a cache definition has {known})")]
    UnknownFields {
        cache: String,
        unknown: String,
        known: String,
    },
    /// One field of a cache definition with a value of the wrong type.
    #[error("cache {cache}: {field}: {source}")]
    Field {
        cache: String,
        field: String,
        source: serde_json::Error,
    },
    /// A cache definition that does not deserialize as a whole.
    #[error("cache {cache}: {source}")]
    Cache {
        cache: String,
        source: serde_json::Error,
    },
}

/// A cache definition from JSON (an admin request's body, an entry of a document). Every
/// error names the field: unknown fields are listed, a field of the wrong type is named.
/// `path_name`: the name the request's URL gives; the body may leave `name` out, and must
/// not name another cache. Not validated here: see [`CacheDef::validate`].
pub fn parse_cache_def(v: &Value, path_name: Option<&str>) -> Result<CacheDef, CacheInputError> {
    let Some(obj) = v.as_object() else {
        return Err(CacheInputError::NotAnObject);
    };
    let name = match (obj.get("name"), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(CacheInputError::Renamed {
                body: n.clone(),
                url: p.to_owned(),
            });
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err(CacheInputError::NameNotString),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err(CacheInputError::NameMissing),
    };
    let known = serde_json::to_value(CacheDef::builtin_default()).expect("a definition serialises");
    let known = known.as_object().expect("an object");
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains_key(*k))
        .collect();
    if !unknown.is_empty() {
        return Err(CacheInputError::UnknownFields {
            cache: name,
            unknown: unknown.join(", "),
            known: known
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // Field by field, so that a value of the wrong type is reported with its field's name.
    for (k, value) in obj.iter().filter(|(k, _)| *k != "name") {
        let one = json!({"name": name, k.as_str(): value});
        if let Err(e) = serde_json::from_value::<CacheDef>(one) {
            return Err(CacheInputError::Field {
                cache: name,
                field: k.clone(),
                source: e,
            });
        }
    }
    let mut full = obj.clone();
    full.insert("name".into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(full)).map_err(|e| CacheInputError::Cache {
        cache: name,
        source: e,
    })
}
