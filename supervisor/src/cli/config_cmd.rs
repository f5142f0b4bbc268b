//! `oxbus config export|import`: the whole config store as one YAML document, through the
//! admin API (`model/document.rs` owns the document's shape; this file reads and
//! writes it as files and text).

use std::path::Path;

use super::CliError;
use super::args::{ConfigAction, Output, ServerArgs};
use super::client::call;
use super::format::print;
use tokio::runtime::Runtime;

/// Runs one `config` subcommand.
pub fn command(rt: &Runtime, action: &ConfigAction) -> Result<(), CliError> {
    match action {
        ConfigAction::Export { to, file, output } => {
            let answer = call(rt, to, "GET", "/v1/config", Vec::new())?;
            match answer.doc {
                Some(d) => write_export(d, *output, file.as_deref(), to)?,
                None => println!("{}", answer.text.trim_end()),
            }
        }
        ConfigAction::Import {
            to,
            file,
            dry_run,
            replace,
            output,
        } => {
            let text = std::fs::read_to_string(file).map_err(|source| CliError::Read {
                path: file.clone(),
                source,
            })?;
            let doc: serde_json::Value =
                serde_yaml_ng::from_str(&text).map_err(|source| CliError::Yaml {
                    path: file.clone(),
                    source,
                })?;
            if !doc.is_object() {
                return Err(CliError::NotAMapping(file.clone()));
            }
            let path = format!(
                "/v1/config?dry_run={}&replace={}",
                u8::from(*dry_run),
                u8::from(*replace)
            );
            let answer = call(rt, to, "POST", &path, doc.to_string().into_bytes())?;
            print(answer, *output, print_import);
        }
    }
    Ok(())
}

/// `config export`: the document as YAML (or JSON), to a file or standard output.
fn write_export(
    doc: serde_json::Value,
    output: Output,
    file: Option<&Path>,
    to: &ServerArgs,
) -> Result<(), CliError> {
    use crate::model::document::Document;
    let text = match output {
        Output::Json => format!("{doc:#}\n"),
        Output::Text => {
            // Through the typed document, so fields keep their order (name first).
            let typed: Document = serde_json::from_value(doc).map_err(CliError::Export)?;
            let yaml = serde_yaml_ng::to_string(&typed).map_err(CliError::ToYaml)?;
            let from = to
                .env
                .as_ref()
                .map(|e| e.display().to_string())
                .or_else(|| to.server.clone())
                .unwrap_or_default();
            format!(
                "# Oxbus config export from {from}, config version {}.\n\
                 # Secrets are sealed with that server's key (store.key_file); a plain\n\
                 # `value:` may replace `sealed:`. Apply with: oxbus config import FILE\n{yaml}",
                typed.config_version.unwrap_or(0)
            )
        }
    };
    match file {
        Some(f) => {
            // It holds sealed secrets and module sources: private, like the key.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(f)
                .and_then(|mut file| file.write_all(text.as_bytes()));
            written.map_err(|source| CliError::Write {
                path: f.to_owned(),
                source,
            })?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `config import`: one line per change, then a summary.
fn print_import(d: &serde_json::Value) {
    print_import_plan(d, false);
}

/// An import's answer (its plan, or what it applied) as text: one line per change, then a
/// summary; `dry_run` when the caller asked for one (the answer says so too). Shared with
/// `zato import`.
pub(super) fn print_import_plan(d: &serde_json::Value, dry_run: bool) {
    let dry = d["dry_run"] == true || dry_run;
    let changes = d["changes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for c in changes {
        println!(
            "{}{} {} {}",
            if dry { "would " } else { "" },
            c["action"].as_str().unwrap_or(""),
            c["kind"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or("")
        );
    }
    println!(
        "{} change(s){}, {} unchanged, config version {}",
        changes.len(),
        if dry {
            " (dry run: nothing applied)"
        } else {
            ""
        },
        d["unchanged"],
        d["config_version"]
    );
}
