//! `oxbus user-config set|get|list|delete` (docs/USER_CONFIG.md): the user config services
//! read, through the admin API. `set` reads the value from a JSON, YAML or TOML file (by its
//! extension) and sends it as JSON; the server checks it. Sends and prints only.

use std::path::Path;

use serde_json::{Value, json};
use tokio::runtime::Runtime;

use super::CliError;
use super::args::UserConfigAction;
use super::client::{call, percent_encode};
use super::format::print;

/// Runs one `user-config` subcommand.
pub fn command(rt: &Runtime, action: &UserConfigAction) -> Result<(), CliError> {
    let one = |name: &str| format!("/v1/user-config/{}", percent_encode(name));
    match action {
        UserConfigAction::Set {
            to,
            name,
            file,
            description,
            output,
        } => {
            let value = read_value(file)?;
            let mut body = json!({ "value": value });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let answer = call(rt, to, "PUT", &one(name), body.to_string().into_bytes())?;
            print(answer, *output, |d| {
                println!(
                    "user config {name} {} ({}; config version {})",
                    if d["created"] == true {
                        "created"
                    } else {
                        "replaced"
                    },
                    super::format::count_of(&d["user_config"]["size"], "byte", "bytes"),
                    d["config_version"]
                )
            });
        }
        UserConfigAction::Get { to, name, output } => {
            let answer = call(rt, to, "GET", &one(name), Vec::new())?;
            print(answer, *output, |d| println!("{:#}", d["value"]));
        }
        UserConfigAction::List { to, output } => {
            let answer = call(rt, to, "GET", "/v1/user-config", Vec::new())?;
            print(answer, *output, |d| {
                println!("{:<40} {:>9}  DESCRIPTION", "NAME", "BYTES");
                for c in d["user_config"].as_array().into_iter().flatten() {
                    println!(
                        "{:<40} {:>9}  {}",
                        c["name"].as_str().unwrap_or(""),
                        c["size"].as_u64().unwrap_or(0),
                        c["description"].as_str().unwrap_or("")
                    );
                }
            });
        }
        UserConfigAction::Delete { to, name, output } => {
            let answer = call(rt, to, "DELETE", &one(name), Vec::new())?;
            print(answer, *output, |d| {
                println!(
                    "user config {name} deleted (config version {})",
                    d["config_version"]
                )
            });
        }
    }
    Ok(())
}

/// The value in `path`, parsed as its extension says (`.json`, `.yaml` / `.yml`, `.toml`).
/// Whether it is a mapping is the server's to check (one message for every client).
fn read_value(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    parse_value(&text, ext.as_deref()).map_err(|reason| CliError::UserConfigFile {
        path: path.to_owned(),
        reason,
    })
}

/// `text` as JSON, YAML or TOML (`ext`: the file's extension, lower case).
fn parse_value(text: &str, ext: Option<&str>) -> Result<Value, String> {
    match ext {
        Some("json") => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        Some("yaml" | "yml") => {
            serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))
        }
        Some("toml") => toml::from_str::<toml::Table>(text)
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| format!("not valid TOML: {e}")),
        _ => Err(
            "give a .json, .yaml, .yml or .toml file (its extension says how to read it)".into(),
        ),
    }
}

/// A TOML value as JSON: a date or time becomes its RFC 3339 text (JSON has no such type).
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        // NaN and the infinities have no JSON form: null, as serde_json writes them.
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_formats_read_as_the_same_json() {
        let want = json!({"crm": {"url": "https://crm", "retries": 3, "tags": ["a", "b"]}});
        let json_text = want.to_string();
        let yaml = "crm:\n  url: https://crm\n  retries: 3\n  tags: [a, b]\n";
        let toml = "[crm]\nurl = \"https://crm\"\nretries = 3\ntags = [\"a\", \"b\"]\n";
        assert_eq!(parse_value(&json_text, Some("json")).unwrap(), want);
        assert_eq!(parse_value(yaml, Some("yaml")).unwrap(), want);
        assert_eq!(parse_value(yaml, Some("yml")).unwrap(), want);
        assert_eq!(parse_value(toml, Some("toml")).unwrap(), want);
        // TOML's dates are text in JSON.
        let d = parse_value("[a]\nwhen = 2024-05-01T10:00:00Z\nx = 1.5\n", Some("toml")).unwrap();
        assert_eq!(d, json!({"a": {"when": "2024-05-01T10:00:00Z", "x": 1.5}}));
    }

    #[test]
    fn a_bad_file_is_named_by_its_format() {
        assert!(
            parse_value("{", Some("json"))
                .unwrap_err()
                .starts_with("not valid JSON")
        );
        assert!(
            parse_value("a: [", Some("yaml"))
                .unwrap_err()
                .starts_with("not valid YAML")
        );
        assert!(
            parse_value("a = ", Some("toml"))
                .unwrap_err()
                .starts_with("not valid TOML")
        );
        let e = parse_value("{}", Some("ini")).unwrap_err();
        assert!(e.contains(".json, .yaml, .yml or .toml"), "{e}");
        assert!(parse_value("{}", None).is_err());
    }
}
