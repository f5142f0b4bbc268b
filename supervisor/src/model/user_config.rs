//! User config (docs/USER_CONFIG.md): operator-provided settings that services read as
//! `self.user_config.<name>.<section>.<key>` (Zato's user-conf files). One named object per
//! set of settings, its `value` a JSON object (sections, keys and values as the operator
//! wrote them). Plain data, its validation and its parsing from an operator's JSON: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::object::InvalidObject;

/// The most bytes a user config's value may take, encoded as compact JSON: it crosses the
/// worker socket whole on every read, and every server keeps every value in memory.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The most characters a name may have (as every other kind's).
pub const MAX_NAME_CHARS: usize = 200;

/// The most characters a description may have.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// A named user config: `value` is a JSON object (checked by [`UserConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub value: Value,
}

impl UserConfig {
    /// The name's rule (1-200 of letters, digits, `._-`, as connections and jobs), a JSON
    /// object as the value, at most [`MAX_VALUE_BYTES`] of it, a description of at most
    /// [`MAX_DESCRIPTION_CHARS`].
    pub fn validate(&self) -> Result<(), InvalidObject> {
        validate_name(&self.name)?;
        let fail = |m: String| InvalidObject(format!("user config {}: {m}", self.name));
        if !self.value.is_object() {
            return Err(fail(format!(
                "value must be a JSON object (sections of keys), not {}",
                json_type(&self.value)
            )));
        }
        let size = self.size();
        if size > MAX_VALUE_BYTES {
            return Err(fail(format!(
                "value is {size} bytes as JSON, more than the {MAX_VALUE_BYTES} allowed"
            )));
        }
        if let Some(d) = &self.description
            && d.chars().count() > MAX_DESCRIPTION_CHARS
        {
            return Err(fail(format!(
                "description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        Ok(())
    }

    /// The value's size in bytes, encoded as compact JSON (what a service's read carries).
    pub fn size(&self) -> usize {
        // A `Value` always serialises.
        serde_json::to_vec(&self.value).map_or(0, |v| v.len())
    }
}

/// Valid user config names: 1-200 of letters, digits, `._-` (the rule of the other kinds:
/// a name is one URL path segment and one command-line word, never quoted).
pub fn validate_name(name: &str) -> Result<(), InvalidObject> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        let shown: String = name.chars().take(60).collect();
        return Err(InvalidObject(format!(
            "{shown:?}{} is not a valid user config name (1-{MAX_NAME_CHARS} characters: \
             letters, digits, ._-)",
            if name.chars().count() > 60 { "…" } else { "" }
        )));
    }
    Ok(())
}

/// A JSON value's type in a message.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A user config from JSON (an admin request's body, an export document's entry), checked
/// field by field so that an error names the field, then validated. `path_name`: the name
/// the request's URL gives (the body may leave `name` out and must not name another).
pub fn parse_user_config(v: &Value, path_name: Option<&str>) -> Result<UserConfig, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!(
            "a user config must be a JSON object {{\"value\": {{...}}, \"description\": ...}}, \
             not {}",
            json_type(v)
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["name", "value", "description"].contains(&k.as_str()))
    {
        return Err(format!(
            "user config: unknown field {k:?} (expected name, value, description)"
        ));
    }
    let name = match (obj.get("name"), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(format!(
                "the body names user config {n:?}, the URL {p:?}: a user config cannot be renamed"
            ));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err("user config: name must be a string".into()),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err("user config: name: missing".into()),
    };
    let value = match obj.get("value") {
        Some(v) => v.clone(),
        None => return Err(format!("user config {name}: value: missing")),
    };
    let description = match obj.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(format!("user config {name}: description must be a string")),
    };
    let def = UserConfig {
        name,
        description,
        value,
    };
    def.validate().map_err(|e| e.0)?;
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value, name: Option<&str>) -> Result<UserConfig, String> {
        parse_user_config(&v, name)
    }

    #[test]
    fn a_definition_is_an_object_value_under_a_valid_name() {
        let d = parse(
            json!({"value": {"crm": {"url": "https://crm", "retries": 3}}, "description": "CRM"}),
            Some("app.settings"),
        )
        .unwrap();
        assert_eq!(d.name, "app.settings");
        assert_eq!(d.description.as_deref(), Some("CRM"));
        assert_eq!(d.value["crm"]["retries"], 3);
        assert_eq!(
            d.size(),
            r#"{"crm":{"retries":3,"url":"https://crm"}}"#.len()
        );
        // As stored: no description key when there is none.
        let d = parse(json!({"name": "a", "value": {}}), None).unwrap();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"name": "a", "value": {}})
        );
        assert_eq!(
            serde_json::from_value::<UserConfig>(json!({"name": "a", "value": {}})).unwrap(),
            d
        );
    }

    #[test]
    fn other_json_types_are_refused_by_name() {
        for (v, what) in [
            (json!([1, 2]), "an array"),
            (json!("text"), "a string"),
            (json!(5), "a number"),
            (json!(true), "a boolean"),
            (Value::Null, "null"),
        ] {
            let e = parse(json!({"value": v}), Some("s")).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "user config s: value must be a JSON object (sections of keys), not {what}"
                )
            );
        }
        let e = parse(json!([{"value": {}}]), Some("s")).unwrap_err();
        assert!(
            e.contains("must be a JSON object") && e.contains("an array"),
            "{e}"
        );
    }

    #[test]
    fn the_value_is_bounded() {
        // Exactly at the bound: `{"k":"…"}` is 8 bytes beside the string.
        let at = "x".repeat(MAX_VALUE_BYTES - 8);
        assert!(parse(json!({"value": {"k": at}}), Some("s")).is_ok());
        let over = "x".repeat(MAX_VALUE_BYTES - 7);
        let e = parse(json!({"value": {"k": over}}), Some("s")).unwrap_err();
        assert!(e.contains(&format!("{} bytes", MAX_VALUE_BYTES + 1)), "{e}");
        let e = parse(
            json!({"value": {}, "description": "d".repeat(MAX_DESCRIPTION_CHARS + 1)}),
            Some("s"),
        )
        .unwrap_err();
        assert!(e.contains("description is longer"), "{e}");
    }

    #[test]
    fn names_follow_the_other_kinds_rule() {
        for ok in ["a", "crm.prod", "A-1_b.c", &"n".repeat(MAX_NAME_CHARS)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "ż",
            "a:b",
            &"n".repeat(MAX_NAME_CHARS + 1),
        ] {
            let e = validate_name(bad).unwrap_err().0;
            assert!(e.contains("not a valid user config name"), "{bad}: {e}");
        }
        let e = parse(json!({"value": {}}), Some("no spaces")).unwrap_err();
        assert!(e.contains("not a valid user config name"), "{e}");
    }

    #[test]
    fn fields_are_checked_one_by_one() {
        let e = parse(json!({"valeu": {}}), Some("s")).unwrap_err();
        assert!(e.contains("unknown field \"valeu\""), "{e}");
        let e = parse(json!({"description": "d"}), Some("s")).unwrap_err();
        assert_eq!(e, "user config s: value: missing");
        let e = parse(json!({"value": {}, "description": 5}), Some("s")).unwrap_err();
        assert_eq!(e, "user config s: description must be a string");
        let e = parse(json!({"name": "t", "value": {}}), Some("s")).unwrap_err();
        assert!(e.contains("cannot be renamed"), "{e}");
        let e = parse(json!({"value": {}}), None).unwrap_err();
        assert_eq!(e, "user config: name: missing");
        let e = parse(json!({"name": 5, "value": {}}), None).unwrap_err();
        assert_eq!(e, "user config: name must be a string");
    }
}
