//! `oxbus jobs …` (docs/SCHEDULER.md): each subcommand is one admin API call, its answer
//! printed as text or JSON. Sends and prints only; the scheduler is `crate::scheduler`.

use super::CliError;
use super::args::{JobsAction, Output};
use super::client::{percent_encode, target};
use super::format::{count, count_of, utc};
use tokio::runtime::Runtime;

/// `oxbus jobs …`: one admin API call, its answer printed as text or JSON.
pub fn command(rt: &Runtime, action: &JobsAction) -> Result<(), CliError> {
    let (to, output) = match action {
        JobsAction::List { to, output }
        | JobsAction::Get { to, output, .. }
        | JobsAction::Put { to, output, .. }
        | JobsAction::Delete { to, output, .. }
        | JobsAction::Enable { to, output, .. }
        | JobsAction::Disable { to, output, .. }
        | JobsAction::Execute { to, output, .. }
        | JobsAction::History { to, output, .. }
        | JobsAction::Status { to, output } => (to, *output),
    };
    let target = target(to)?;
    let (method, path, body) = jobs_request(action)?;
    let doc = rt.block_on(target.call_json(method, &path, body))?;
    match output {
        Output::Json => println!("{doc}"),
        Output::Text => print_jobs_answer(action, &doc),
    }
    if let Some(w) = doc["warning"].as_str() {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// The admin API call of a jobs subcommand: (method, path, body).
fn jobs_request(action: &JobsAction) -> Result<(&'static str, String, Vec<u8>), CliError> {
    let one = |name: &str| format!("/v1/jobs/{}", percent_encode(name));
    Ok(match action {
        JobsAction::List { .. } => ("GET", "/v1/jobs".into(), Vec::new()),
        JobsAction::Get { name, .. } => ("GET", one(name), Vec::new()),
        JobsAction::Put {
            name, file, json, ..
        } => {
            let (text, from) = match (file, json) {
                (Some(f), _) => (
                    std::fs::read_to_string(f).map_err(|source| CliError::Read {
                        path: f.clone(),
                        source,
                    })?,
                    f.display().to_string(),
                ),
                (None, Some(j)) => (j.clone(), "--json".into()),
                (None, None) => return Err(CliError::NoDefinition),
            };
            let def: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| CliError::JobJson { from, source })?;
            ("PUT", one(name), def.to_string().into_bytes())
        }
        JobsAction::Delete { name, .. } => ("DELETE", one(name), Vec::new()),
        JobsAction::Enable { name, .. } => ("POST", format!("{}/enable", one(name)), Vec::new()),
        JobsAction::Disable { name, .. } => ("POST", format!("{}/disable", one(name)), Vec::new()),
        JobsAction::Execute { name, .. } => ("POST", format!("{}/execute", one(name)), Vec::new()),
        JobsAction::History { name, limit, .. } => (
            "GET",
            format!("{}/runs?limit={}", one(name), limit.unwrap_or(20)),
            Vec::new(),
        ),
        JobsAction::Status { .. } => ("GET", "/v1/scheduler".into(), Vec::new()),
    })
}

/// A job's schedule in a few words: `every 1 hour 30 minutes (3 times)`, `every minute`,
/// `cron 0 8 * * * Europe/Warsaw`, `once`.
fn job_schedule(j: &serde_json::Value) -> String {
    match j["type"].as_str().unwrap_or("") {
        "interval_based" => {
            let parts: Vec<String> = ["week", "day", "hour", "minute", "second"]
                .iter()
                .filter_map(|unit| {
                    j[format!("{unit}s")]
                        .as_u64()
                        .filter(|n| *n > 0)
                        .map(|n| count(n, unit, &format!("{unit}s")))
                })
                .collect();
            let times = j["repeats"]
                .as_u64()
                .map_or_else(String::new, |n| format!(" ({})", count(n, "time", "times")));
            // `every 1 minute` reads as `every minute`.
            let every = match parts.as_slice() {
                [one] => one.strip_prefix("1 ").unwrap_or(one).to_owned(),
                _ => parts.join(" "),
            };
            format!("every {every}{times}")
        }
        "cron_style" => format!(
            "cron {} {}",
            j["cron"].as_str().unwrap_or(""),
            j["timezone"].as_str().unwrap_or("UTC")
        ),
        "one_time" => "once".into(),
        other => other.into(),
    }
}

/// The text output of a jobs subcommand's answer.
fn print_jobs_answer(action: &JobsAction, d: &serde_json::Value) {
    let version = &d["config_version"];
    match action {
        JobsAction::List { .. } => {
            println!(
                "{:<32} {:<8} {:<32} {:<25} SCHEDULE",
                "JOB", "ACTIVE", "SERVICE", "START"
            );
            for j in d["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<8} {:<32} {:<25} {}",
                    j["name"].as_str().unwrap_or(""),
                    if j["active"] == true { "yes" } else { "no" },
                    j["service"].as_str().unwrap_or(""),
                    j["start_date"].as_str().unwrap_or(""),
                    job_schedule(j)
                );
            }
        }
        JobsAction::Get { .. } => {
            for (k, v) in d.as_object().into_iter().flatten() {
                match v {
                    serde_json::Value::String(s) => println!("{k}: {s}"),
                    v => println!("{k}: {v}"),
                }
            }
        }
        JobsAction::Put { name, .. } => println!(
            "job {name} {} (config version {version}): {}",
            if d["created"] == true {
                "created"
            } else {
                "replaced"
            },
            job_schedule(&d["job"])
        ),
        JobsAction::Delete { name, .. } => {
            println!("job {name} deleted (config version {version})")
        }
        JobsAction::Enable { name, .. } => {
            println!("job {name} enabled (config version {version})")
        }
        JobsAction::Disable { name, .. } => {
            println!("job {name} disabled (config version {version})")
        }
        JobsAction::Execute { name, .. } => print_run(name, &d["run"]),
        JobsAction::History { name, .. } => {
            let runs = d["runs"].as_array().map_or(&[][..], Vec::as_slice);
            if runs.is_empty() {
                println!("job {name} has not run yet");
            }
            for r in runs {
                print_run(name, r);
            }
        }
        JobsAction::Status { .. } => match d["leader"].as_str() {
            Some(l) => println!(
                "{l} leads the scheduler{}: {}",
                if d["this_server_leads"] == true {
                    " (this server)"
                } else {
                    ""
                },
                count_of(&d["jobs"], "job", "jobs")
            ),
            None => println!("no server leads the scheduler right now"),
        },
    }
}

/// One run of a job as a line: when, trigger, server, duration, outcome, error.
fn print_run(name: &str, r: &serde_json::Value) {
    println!(
        "{} {name} {} on {} {} {}{}",
        utc(r["started"].as_i64().unwrap_or(0)),
        r["trigger"].as_str().unwrap_or(""),
        r["server"].as_str().unwrap_or(""),
        r["duration_ms"]
            .as_i64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
        r["outcome"].as_str().unwrap_or(""),
        r["error"]
            .as_str()
            .map_or_else(String::new, |e| format!(": {e}")),
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_schedule_reads_as_english() {
        for (job, want) in [
            (
                json!({"type": "interval_based", "minutes": 1}),
                "every minute",
            ),
            (
                json!({"type": "interval_based", "minutes": 5}),
                "every 5 minutes",
            ),
            (
                json!({"type": "interval_based", "hours": 1, "minutes": 30, "repeats": 3}),
                "every 1 hour 30 minutes (3 times)",
            ),
            (
                json!({"type": "interval_based", "days": 2, "seconds": 1, "repeats": 1}),
                "every 2 days 1 second (1 time)",
            ),
            (json!({"type": "one_time"}), "once"),
        ] {
            assert_eq!(super::job_schedule(&job), want, "{job}");
        }
    }
}
