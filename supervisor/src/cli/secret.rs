//! `oxbus secret set|services|list|delete`: secrets through the admin API. The value is read
//! from standard input or a file, never from the command line, and never printed;
//! `--service PATTERN` names the services that may read it (`self.secrets[name]`).

use super::CliError;
use super::args::{Output, SecretAction};
use super::client::{call, percent_encode};
use super::format::print;
use tokio::runtime::Runtime;

/// Runs one `secret` subcommand.
pub fn command(rt: &Runtime, action: &SecretAction) -> Result<(), CliError> {
    match action {
        SecretAction::Set {
            to,
            name,
            value_file,
            services,
        } => {
            let value = read_value(name, value_file.as_deref())?;
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let mut body = serde_json::json!({"value": value, "updated_by": who});
            if !services.is_empty() {
                body["services"] = serde_json::json!(services);
            }
            let path = format!("/v1/secrets/{}", percent_encode(name));
            let answer = call(rt, to, "PUT", &path, body.to_string().into_bytes())?;
            print(answer, Output::Text, |d| {
                println!(
                    "secret {name} {} (config version {})",
                    if d["created"] == true {
                        "created"
                    } else {
                        "updated"
                    },
                    d["config_version"]
                )
            });
        }
        SecretAction::Services { to, name, services } => {
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let body = serde_json::json!({"services": services, "updated_by": who});
            let path = format!("/v1/secrets/{}", percent_encode(name));
            let answer = call(rt, to, "PUT", &path, body.to_string().into_bytes())?;
            print(answer, Output::Text, |d| {
                println!(
                    "secret {name} readable by {} (config version {})",
                    readers(&serde_json::json!(services)),
                    d["config_version"]
                )
            });
        }
        SecretAction::List { to, output } => {
            let answer = call(rt, to, "GET", "/v1/secrets", Vec::new())?;
            print(answer, *output, |d| {
                for s in d["secrets"].as_array().into_iter().flatten() {
                    println!(
                        "{:<40} set by {:<16} readable by {}",
                        s["name"].as_str().unwrap_or(""),
                        s["updated_by"].as_str().unwrap_or(""),
                        readers(&s["services"])
                    );
                }
            });
        }
        SecretAction::Delete { to, name } => {
            let path = format!("/v1/secrets/{}", percent_encode(name));
            let answer = call(rt, to, "DELETE", &path, Vec::new())?;
            print(answer, Output::Text, |d| {
                println!(
                    "secret {name} deleted (config version {})",
                    d["config_version"]
                )
            });
        }
    }
    Ok(())
}

/// A secret's `services` for people: the patterns, or "no service".
fn readers(services: &serde_json::Value) -> String {
    let list: Vec<&str> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    if list.is_empty() {
        "no service".to_owned()
    } else {
        list.join(", ")
    }
}

/// The value of `secret set NAME`: from `value_file`, else from standard input unless it
/// is a terminal; one trailing newline (`\n` or `\r\n`) dropped; never empty.
pub(super) fn read_value(
    name: &str,
    value_file: Option<&std::path::Path>,
) -> Result<String, CliError> {
    use std::io::IsTerminal;
    let mut value = match value_file {
        Some(f) => std::fs::read_to_string(f).map_err(|source| CliError::Read {
            path: f.to_owned(),
            source,
        })?,
        None if std::io::stdin().is_terminal() => {
            return Err(CliError::SecretAtTerminal(name.to_owned()));
        }
        None => std::io::read_to_string(std::io::stdin()).map_err(CliError::Stdin)?,
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(CliError::EmptySecret);
    }
    Ok(value)
}

/// A `put` command's definition: FILE's JSON (`-`: standard input) and, when
/// `--secret-file` or `--secret-stdin` gives one, the secret read for `name` — the JSON
/// then must be an object, returned for the caller to put the secret in. `what` names the
/// secret in the message refusing both from standard input ("password", "credential").
pub(super) fn definition_and_secret(
    name: &str,
    file: &str,
    secret_file: Option<&std::path::Path>,
    secret_stdin: bool,
    what: &str,
) -> Result<(serde_json::Value, Option<String>), CliError> {
    let (text, from) = if file == "-" {
        if secret_stdin {
            return Err(CliError::OutCredential(format!(
                "the definition and the {what} cannot both come from standard input: \
                 give FILE or --secret-file"
            )));
        }
        (
            std::io::read_to_string(std::io::stdin()).map_err(CliError::Stdin)?,
            "standard input".to_owned(),
        )
    } else {
        let path = std::path::PathBuf::from(file);
        (
            std::fs::read_to_string(&path).map_err(|source| CliError::Read {
                path: path.clone(),
                source,
            })?,
            file.to_owned(),
        )
    };
    let def: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| CliError::JobJson { from, source })?;
    if secret_file.is_none() && !secret_stdin {
        return Ok((def, None));
    }
    let secret = read_value(name, secret_file)?;
    if !def.is_object() {
        return Err(CliError::OutCredential(
            "the definition is not a JSON object".into(),
        ));
    }
    Ok((def, Some(secret)))
}
