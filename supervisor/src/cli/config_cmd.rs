//! `oxbus config export|import`: the whole config store as one YAML document, through the
//! admin API (`model/document.rs` owns the document's shape; this file reads and
//! writes it as files and text).

use std::path::Path;

use super::CliError;
use super::args::{ConfigAction, Output, ServerArgs};
use super::client::call;
use super::format::{print, shell_word};
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
            format!(
                "{}{yaml}",
                export_header(
                    to.env.as_deref(),
                    super::client::server_url_given(to).as_deref(),
                    file,
                    typed.config_version.unwrap_or(0)
                )
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

/// The comment lines heading a YAML export: where it came from and the full command that
/// applies it to the same place (`--env DIR`, or `--server URL --token TOKEN`; never the
/// token itself).
fn export_header(
    env: Option<&Path>,
    server: Option<&str>,
    file: Option<&Path>,
    version: i64,
) -> String {
    let (from, target) = match (env, server) {
        (Some(env), _) => {
            let env = env.display().to_string();
            (env.clone(), format!("--env {}", shell_word(&env)))
        }
        (None, Some(url)) => (
            url.to_owned(),
            format!("--server {} --token TOKEN", shell_word(url)),
        ),
        (None, None) => (String::new(), String::new()),
    };
    let file = file.map_or_else(
        || "FILE".to_owned(),
        |f| shell_word(&f.display().to_string()),
    );
    format!(
        "# Oxbus config export from {from}, config version {version}.\n\
         # Secrets are sealed with that server's key (store.key_file); a plain\n\
         # `value:` may replace `sealed:`. Apply with:\n\
         #   oxbus config import {target} {file}\n"
    )
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
        "{}{}, {} unchanged, config version {}",
        super::format::count(changes.len() as u64, "change", "changes"),
        if dry {
            " (dry run: nothing applied)"
        } else {
            ""
        },
        d["unchanged"],
        d["config_version"]
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_export_header_gives_the_whole_import_command() {
        let h = super::export_header(Some(Path::new("oxbus-quickstart")), None, None, 7);
        assert!(
            h.contains("export from oxbus-quickstart, config version 7."),
            "{h}"
        );
        assert!(
            h.contains("#   oxbus config import --env oxbus-quickstart FILE\n"),
            "{h}"
        );
        let h = super::export_header(
            Some(Path::new("my envs/prod")),
            None,
            Some(Path::new("prod.yaml")),
            1,
        );
        assert!(
            h.contains("oxbus config import --env 'my envs/prod' prod.yaml\n"),
            "{h}"
        );
        let h = super::export_header(None, Some("http://10.0.0.5:17011"), None, 3);
        assert!(
            h.contains("oxbus config import --server http://10.0.0.5:17011 --token TOKEN FILE"),
            "{h}"
        );
        // Every line is a YAML comment.
        assert!(h.lines().all(|l| l.starts_with('#')), "{h}");
    }
}
