//! The service-module subcommands: `deploy FILE…`, `rollback`, `undeploy`, `services`,
//! `invoke` and `openapi`. Each is one admin API call (`deploy --watch` is
//! [`super::deploy_watch`]); this file builds it and prints its answer.

use std::path::PathBuf;

use super::CliError;
use super::args::{Output, ServerArgs};
use super::client::call;
use super::format::{count, print, utc};
use tokio::runtime::Runtime;

/// `oxbus deploy FILE…`: every module in one request (all-or-nothing). With `force`, a
/// module whose source equals its active version gets a new version all the same
/// (`skip_unchanged: false`).
pub fn deploy(
    rt: &Runtime,
    to: &ServerArgs,
    files: &[PathBuf],
    force: bool,
    output: Output,
) -> Result<(), CliError> {
    let mut modules = Vec::new();
    for f in files {
        let Some(name) = f
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| f.extension().is_some_and(|e| e == "py"))
        else {
            return Err(CliError::NotAModule(f.clone()));
        };
        let source = std::fs::read_to_string(f).map_err(|source| CliError::Read {
            path: f.clone(),
            source,
        })?;
        // Where the file is (absolute): the workers compile the module under this name, so
        // its tracebacks and __file__ name it (docs/DEPLOY.md).
        let mut module = serde_json::json!({"name": name, "source": source});
        if let Some(path) = origin(f) {
            module["origin"] = path.into();
        }
        modules.push(module);
    }
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let body = serde_json::json!({
        "modules": modules,
        "deployed_by": who,
        "skip_unchanged": !force,
    });
    let answer = call(rt, to, "POST", "/v1/modules", body.to_string().into_bytes())?;
    print(answer, output, print_deployed);
    Ok(())
}

/// `file`'s absolute path with `.` and `..` folded away (as the server wants an origin; a
/// symbolic link stays as named), or None when there is no such POSIX path.
fn origin(file: &std::path::Path) -> Option<String> {
    use std::path::Component;
    let mut parts: Vec<String> = Vec::new();
    for c in std::path::absolute(file).ok()?.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::Prefix(_) => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// A module's services for `deploy`'s text: `services: a, b`, or that it has none.
fn services_line(services: &serde_json::Value) -> String {
    let names: Vec<&str> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    if names.is_empty() {
        "no services".to_owned()
    } else {
        format!("services: {}", names.join(", "))
    }
}

/// A module left unchanged, for `deploy`'s text: its services only when the server said
/// which (no worker was ready otherwise).
fn unchanged_line(m: &serde_json::Value) -> String {
    let line = format!(
        "unchanged {} version {} (the active version has this source: no new version)",
        m["name"].as_str().unwrap_or(""),
        m["version"]
    );
    match m.get("services") {
        Some(s) => format!("{line}; {}", services_line(s)),
        None => line,
    }
}

/// `deploy`'s text: each module's new version and services, the modules left unchanged,
/// the check's warnings (on standard error), then each server's acknowledgement.
fn print_deployed(d: &serde_json::Value) {
    for m in d["modules"].as_array().into_iter().flatten() {
        println!(
            "deployed {} version {} ({}); {}",
            m["name"].as_str().unwrap_or(""),
            m["version"],
            &m["source_hash"].as_str().unwrap_or("")
                [..12.min(m["source_hash"].as_str().unwrap_or("").len())],
            services_line(&m["services"])
        );
    }
    for m in d["unchanged_modules"].as_array().into_iter().flatten() {
        println!("{}", unchanged_line(m));
    }
    for w in d["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w["message"].as_str().unwrap_or(""));
    }
    if d["modules"].as_array().is_some_and(Vec::is_empty) {
        println!(
            "nothing deployed: every module is unchanged (config version {})",
            d["config_version"]
        );
        // Workers that did not run the active versions were given them again.
        let acks = d["workers"].as_array().cloned().unwrap_or_default();
        if !acks.is_empty() {
            let failed = acks.iter().filter(|a| a["ok"] != true).count();
            let n = count(acks.len() as u64, "worker", "workers");
            if failed == 0 {
                println!("  re-activated the active versions on {n} that did not run them: ok");
            } else {
                println!(
                    "  re-activating the active versions FAILED on {failed} of {n} that did \
                     not run them (see --output json)"
                );
            }
        }
        return;
    }
    // The server deployed through first, then the peers that answered over the bus.
    if let Some(through) = d["server"].as_str() {
        let acks = d["workers"].as_array().cloned().unwrap_or_default();
        let failed = acks.iter().filter(|a| a["ok"] != true).count();
        println!(
            "  server {through} (deployed through): {}",
            if failed == 0 {
                format!("ok ({})", count(acks.len() as u64, "worker", "workers"))
            } else {
                format!(
                    "FAILED: {failed} of {} did not switch",
                    count(acks.len() as u64, "worker", "workers")
                )
            }
        );
    }
    for srv in d["servers"].as_array().into_iter().flatten() {
        println!(
            "  server {}: {}",
            srv["server"].as_str().unwrap_or(""),
            if srv["ok"] == true {
                format!(
                    "ok ({})",
                    count(
                        srv["answer"]["worker_count"].as_u64().unwrap_or(0),
                        "worker",
                        "workers"
                    )
                )
            } else {
                format!(
                    "FAILED: {}",
                    srv["answer"]["error"]
                        .as_str()
                        .unwrap_or("see --output json")
                )
            }
        );
    }
    let workers = d["workers"].as_array().map(|w| w.len()).unwrap_or(0);
    println!(
        "config version {}, {} acknowledged, {:.1} ms",
        d["config_version"],
        count(workers as u64, "worker", "workers"),
        d["total_ms"].as_f64().unwrap_or(0.0)
    );
}

/// `oxbus invoke NAME [--payload JSON]`: the service's response as the server sends it.
pub fn invoke(
    rt: &Runtime,
    to: &ServerArgs,
    name: &str,
    payload: Option<&str>,
) -> Result<(), CliError> {
    let body = payload.unwrap_or_default().as_bytes().to_vec();
    if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return Err(CliError::Payload);
    }
    let answer = call(rt, to, "POST", &format!("/v1/invoke/{name}"), body)?;
    println!("{}", answer.text.trim_end());
    Ok(())
}

/// `oxbus services`: one line per service.
pub fn services(rt: &Runtime, to: &ServerArgs, output: Output) -> Result<(), CliError> {
    let answer = call(rt, to, "GET", "/v1/services", Vec::new())?;
    print(answer, output, |d| {
        println!(
            "{:<36} {:<36} {:>7}  {:<12} DEPLOYED",
            "SERVICE", "MODULE.CLASS", "VERSION", "SOURCE"
        );
        for s in d["services"].as_array().into_iter().flatten() {
            let hash = s["source_hash"].as_str().unwrap_or("");
            println!(
                "{:<36} {:<36} {:>7}  {:<12} {}",
                s["name"].as_str().unwrap_or(""),
                format!(
                    "{}.{}",
                    s["module"].as_str().unwrap_or(""),
                    s["class"].as_str().unwrap_or("")
                ),
                s["version"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                if hash.is_empty() {
                    "services_dir"
                } else {
                    &hash[..12.min(hash.len())]
                },
                s["deployed_at_ms"].as_i64().map(utc).unwrap_or_default()
            );
        }
    });
    Ok(())
}

/// `oxbus openapi`: printed as the server sends it (the bytes of its /openapi.json).
pub fn openapi(rt: &Runtime, to: &ServerArgs) -> Result<(), CliError> {
    let answer = call(rt, to, "GET", "/v1/openapi", Vec::new())?;
    println!("{}", answer.text.trim_end());
    Ok(())
}

/// `oxbus rollback MODULE`.
pub fn rollback(
    rt: &Runtime,
    to: &ServerArgs,
    module: &str,
    output: Output,
) -> Result<(), CliError> {
    let path = format!("/v1/modules/{module}/rollback");
    let answer = call(rt, to, "POST", &path, Vec::new())?;
    print(answer, output, |d| {
        println!(
            "{module} is back at version {} (config version {}, {} acknowledged)",
            d["module"]["version"],
            d["config_version"],
            super::format::count(
                d["workers"].as_array().map_or(0, Vec::len) as u64,
                "worker",
                "workers"
            )
        )
    });
    Ok(())
}

/// `oxbus undeploy MODULE`.
pub fn undeploy(
    rt: &Runtime,
    to: &ServerArgs,
    module: &str,
    output: Output,
) -> Result<(), CliError> {
    let answer = call(
        rt,
        to,
        "DELETE",
        &format!("/v1/modules/{module}"),
        Vec::new(),
    )?;
    print(answer, output, |d| {
        println!(
            "undeployed {module} (config version {}, {} acknowledged)",
            d["config_version"],
            count(
                d["workers"].as_array().map_or(0, Vec::len) as u64,
                "worker",
                "workers"
            )
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unchanged_module_without_services_says_nothing_of_them() {
        let m = serde_json::json!({"name": "hot", "version": 3});
        assert_eq!(
            super::unchanged_line(&m),
            "unchanged hot version 3 (the active version has this source: no new version)"
        );
        let m = serde_json::json!({"name": "hot", "version": 3, "services": []});
        assert!(super::unchanged_line(&m).ends_with("; no services"));
    }

    #[test]
    fn an_origin_is_the_files_path_without_dot_segments() {
        let o = |p: &str| super::origin(std::path::Path::new(p));
        assert_eq!(
            o("/srv/app/../lib/./x.py").as_deref(),
            Some("/srv/lib/x.py")
        );
        assert_eq!(o("/srv/app/x.py").as_deref(), Some("/srv/app/x.py"));
        let cwd = std::env::current_dir().unwrap();
        let parent = cwd.parent().unwrap_or(&cwd).join("x.py");
        assert_eq!(o("../x.py").as_deref(), parent.to_str());
    }
}
