//! `oxbus`: the command line. Thin on purpose: parse, load settings, run, exit.

use clap::{Parser, Subcommand};
use oxbus_supervisor::config::{MAX_WORKERS, Settings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "oxbus",
    version,
    about = "Oxbus: integration platform — Rust server, Python services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server from a settings file.
    Server {
        /// The server.toml to read (OXBUS_<SECTION>_<KEY> variables override it).
        #[arg(long, short, env = "OXBUS_CONFIG")]
        config: PathBuf,
    },
    /// Deploy Python modules to a running server (all-or-nothing; a failing import prints
    /// its traceback and changes nothing).
    Deploy {
        #[command(flatten)]
        to: ServerArgs,
        /// Module files; each is deployed under its file name (crm.py -> module crm).
        #[arg(required_unless_present = "watch")]
        files: Vec<PathBuf>,
        /// Deploy on save: deploy the *.py files of DIR, then each one saved there, until
        /// Ctrl-C (unchanged modules are skipped; one line per deploy).
        #[arg(long, value_name = "DIR", conflicts_with = "files")]
        watch: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Invoke a service with a JSON payload and print its response.
    Invoke {
        #[command(flatten)]
        to: ServerArgs,
        /// Service name, e.g. demo.echo
        name: String,
        /// JSON payload (default: none)
        #[arg(long)]
        payload: Option<String>,
    },
    /// List the services the server runs.
    Services {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the server's OpenAPI 3.1 document: its REST channels with the services'
    /// SimpleIO declarations, as it serves them at GET /openapi.json.
    Openapi {
        #[command(flatten)]
        to: ServerArgs,
    },
    /// Make the previous version of a deployed module the active one again.
    Rollback {
        #[command(flatten)]
        to: ServerArgs,
        module: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Undeploy a module: its services stop at once everywhere (its history stays in the
    /// store; deploying it again continues its version numbers).
    Undeploy {
        #[command(flatten)]
        to: ServerArgs,
        module: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Export or import every object of the config store as YAML (one list per kind).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The cluster: its servers, the config version each runs, the store's health.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Secrets: stored sealed, never shown back.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// The caches: their figures and their contents (get, set, delete, keys, clear) on the
    /// server addressed; writes replicate to the cluster like a service's.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// The scheduler's jobs: list, get, create or replace (put), delete, enable, disable.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Run the cluster's load balancer (pingora) in front of its servers.
    Proxy {
        /// The proxy.toml to read.
        #[arg(long, short)]
        config: PathBuf,
        /// Take over from the running proxy (pid file in `state_dir`): its listening sockets
        /// pass to this process, no connection is refused, its in-flight requests finish.
        #[arg(long)]
        upgrade: bool,
        /// Stop when the parent process dies (used by quickstart).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Reload a running server: SIGHUP (a rolling restart of its workers), then wait until
    /// the new workers serve. Exits non-zero if the reload failed or timed out, or if PID
    /// is not an oxbus server (systemd's ExecReload=).
    Reload {
        /// The server's pid (systemd: $MAINPID).
        #[arg(long)]
        pid: u32,
        /// Seconds to wait for the reload to finish.
        #[arg(long, default_value = "90")]
        timeout: f64,
    },
    /// systemd units for this machine.
    Systemd {
        #[command(subcommand)]
        action: SystemdAction,
    },
    /// Create (or reuse) an environment with sample services and run it in the foreground.
    Quickstart {
        /// Environment directory; created with server.toml and services/ if missing.
        #[arg(default_value = "oxbus-quickstart")]
        dir: PathBuf,
        /// HTTP port (default 17010).
        #[arg(long)]
        port: Option<u16>,
        /// Python workers, 1..=8 (default min(CPUs, 8)).
        #[arg(long)]
        workers: Option<u32>,
        /// Run the server alone, without the load balancer in front of it.
        #[arg(long)]
        no_proxy: bool,
    },
}

#[derive(Subcommand)]
enum SystemdAction {
    /// Write oxbus@.service (one instance per server: oxbus@NAME reads
    /// CONFIG_DIR/NAME/server.toml), oxbus-proxy.service and oxbus.target. Runs no systemctl.
    Install {
        /// Where the unit files go.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// The oxbus binary the units run (default: this one).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Holds NAME/server.toml and NAME/secret.key per server, and proxy.toml.
        #[arg(long, default_value = "/etc/oxbus")]
        config_dir: PathBuf,
        /// Name of the state, runtime and cache directories (/var/lib/NAME/<server>, ...).
        #[arg(long, default_value = "oxbus")]
        state_dir: String,
        /// The user and group the units run as.
        #[arg(long, default_value = "oxbus")]
        user: String,
        /// Print the units instead of writing them.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print every stored object as YAML (channels, security and cache definitions, jobs,
    /// secrets sealed, modules with source).
    Export {
        #[command(flatten)]
        to: ServerArgs,
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// `json` prints the document as JSON instead of YAML.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Apply a YAML (or JSON) export: validated in full first, idempotent, one transaction.
    Import {
        #[command(flatten)]
        to: ServerArgs,
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete stored objects the file does not list (modules are undeployed).
        #[arg(long)]
        replace: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Servers, their config versions, the store's health.
    Status {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum SecretAction {
    /// Set a secret; the value is read from standard input (a trailing newline is dropped)
    /// or from --value-file, never from the command line.
    Set {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// List secret names (values are never shown).
    List {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a secret.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
    },
}

/// The cache subcommands; `--cache` names the cache (default `default`).
#[derive(Subcommand)]
enum CacheAction {
    /// Every cache with its settings and figures (entries, hits, misses, evictions).
    List {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the value under KEY (JSON; bytes are shown as base64).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        key: String,
        #[arg(long, default_value = "default")]
        cache: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Store VALUE under KEY: VALUE is JSON (`'{"a": 1}'`, `42`, `'"text"'`); with
    /// --string it is taken as a plain string.
    Set {
        #[command(flatten)]
        to: ServerArgs,
        key: String,
        value: String,
        #[arg(long, default_value = "default")]
        cache: String,
        /// VALUE is a plain string, not JSON.
        #[arg(long)]
        string: bool,
        /// Seconds until it expires (0 = never; default: the cache's default expiry).
        #[arg(long)]
        expiry: Option<f64>,
    },
    /// Delete KEY.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        key: String,
        #[arg(long, default_value = "default")]
        cache: String,
    },
    /// List keys (sorted), a page at a time, or all of them with --all.
    Keys {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, default_value = "default")]
        cache: String,
        /// Only keys that start with PREFIX.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this key (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Keys per page, 1..=1000 (default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Every page, one after another.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove every entry of the cache.
    Clear {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, default_value = "default")]
        cache: String,
    },
}

/// The jobs subcommands (docs/SCHEDULER.md). Each is one admin API call: see
/// `jobs_request` for the call and `print_jobs_answer` for its text output.
#[derive(Subcommand)]
enum JobsAction {
    /// Every job: type, schedule, service, active or not.
    List {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One job's definition.
    Get {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create or replace a job from its JSON definition (fields left out take their
    /// defaults; `name` may be left out).
    Put {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        /// A file holding the definition (JSON).
        #[arg(long, short, conflicts_with = "json", required_unless_present = "json")]
        file: Option<PathBuf>,
        /// The definition itself, e.g. '{"type": "interval_based", "service": "demo.ping",
        /// "minutes": 5}'.
        #[arg(long)]
        json: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a job.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Let a job run on schedule again.
    Enable {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Keep a job but stop it running on schedule.
    Disable {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a job's service now, on the server addressed, and print the run.
    Execute {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A job's recent runs, newest first: when, where, how long, the outcome.
    History {
        #[command(flatten)]
        to: ServerArgs,
        name: String,
        /// How many (1..=100, default 20).
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Which server leads the cluster's scheduler.
    Status {
        #[command(flatten)]
        to: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// How to reach a server's admin API.
#[derive(clap::Args)]
struct ServerArgs {
    /// An environment directory made by `oxbus quickstart` (address and token read from it).
    #[arg(long, conflicts_with = "server")]
    env: Option<PathBuf>,
    /// Admin API URL, e.g. http://127.0.0.1:17011
    #[arg(long, env = "OXBUS_SERVER", requires = "token")]
    server: Option<String>,
    /// Admin API bearer token.
    #[arg(long, env = "OXBUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn target(a: &ServerArgs) -> Result<oxbus_supervisor::cli::client::Target, String> {
    use oxbus_supervisor::cli::client::Target;
    match (&a.env, &a.server, &a.token) {
        (Some(dir), _, _) => Target::from_env_dir(dir),
        (None, Some(url), Some(token)) => Target::from_url(url, token),
        _ => Err("say which server: --env DIR, or --server URL --token TOKEN (or OXBUS_SERVER and OXBUS_TOKEN)".into()),
    }
}

/// Runs one client command; returns the exit code.
fn client_command(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    if let Command::Deploy {
        to,
        watch: Some(dir),
        output,
        ..
    } = &cmd
    {
        let target = match target(to) {
            Ok(t) => t,
            Err(e) => return fail(&e),
        };
        let json = matches!(output, Output::Json);
        return match rt.block_on(oxbus_supervisor::cli::client::deploy_watch(
            target, dir, json,
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Command::Cache { action } = &cmd {
        return cache_command(&rt, action);
    }
    if let Command::Jobs { action } = &cmd {
        return jobs_command(&rt, action);
    }
    let (to, method, path, body, output) = match &cmd {
        Command::Deploy {
            to, files, output, ..
        } => {
            let mut modules = Vec::new();
            for f in files {
                let Some(name) = f
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|_| f.extension().is_some_and(|e| e == "py"))
                else {
                    return fail(&format!("{}: a module file must end in .py", f.display()));
                };
                match std::fs::read_to_string(f) {
                    Ok(source) => modules.push(serde_json::json!({"name": name, "source": source})),
                    Err(e) => return fail(&format!("cannot read {}: {e}", f.display())),
                }
            }
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let body = serde_json::json!({"modules": modules, "deployed_by": who});
            (
                to,
                "POST",
                "/v1/modules".to_owned(),
                body.to_string().into_bytes(),
                *output,
            )
        }
        Command::Invoke { to, name, payload } => {
            let body = payload.clone().unwrap_or_default().into_bytes();
            if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                return fail("--payload must be JSON");
            }
            (to, "POST", format!("/v1/invoke/{name}"), body, Output::Json)
        }
        Command::Services { to, output } => {
            (to, "GET", "/v1/services".to_owned(), Vec::new(), *output)
        }
        // Printed as the server sends it (the bytes of its /openapi.json).
        Command::Openapi { to } => (
            to,
            "GET",
            "/v1/openapi".to_owned(),
            Vec::new(),
            Output::Json,
        ),
        Command::Rollback { to, module, output } => (
            to,
            "POST",
            format!("/v1/modules/{module}/rollback"),
            Vec::new(),
            *output,
        ),
        Command::Undeploy { to, module, output } => (
            to,
            "DELETE",
            format!("/v1/modules/{module}"),
            Vec::new(),
            *output,
        ),
        Command::Config {
            action: ConfigAction::Export { to, output, .. },
        } => (to, "GET", "/v1/config".to_owned(), Vec::new(), *output),
        Command::Config {
            action:
                ConfigAction::Import {
                    to,
                    file,
                    dry_run,
                    replace,
                    output,
                },
        } => {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => return fail(&format!("cannot read {}: {e}", file.display())),
            };
            let doc: serde_json::Value = match serde_yaml_ng::from_str(&text) {
                Ok(d) => d,
                Err(e) => return fail(&format!("{}: not valid YAML: {e}", file.display())),
            };
            if !doc.is_object() {
                return fail(&format!(
                    "{}: expected a mapping of object kinds (channel_rest, channel_jsonrpc, security, secret, service_module, cache)",
                    file.display()
                ));
            }
            let path = format!(
                "/v1/config?dry_run={}&replace={}",
                u8::from(*dry_run),
                u8::from(*replace)
            );
            (to, "POST", path, doc.to_string().into_bytes(), *output)
        }
        Command::Secret {
            action:
                SecretAction::Set {
                    to,
                    name,
                    value_file,
                },
        } => {
            use std::io::IsTerminal;
            let value = match value_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display())),
                None if std::io::stdin().is_terminal() => Err(format!(
                    "pipe the value in (printf '%s' \"$VALUE\" | oxbus secret set {name} …) or give \
                     --value-file: it is not typed at a terminal, where it would show"
                )),
                None => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("cannot read the value from standard input: {e}")),
            };
            let mut value = match value {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                return fail("the value is empty; nothing was set");
            }
            let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let body = serde_json::json!({"value": value, "updated_by": who});
            (
                to,
                "PUT",
                format!("/v1/secrets/{}", percent_encode(name)),
                body.to_string().into_bytes(),
                Output::Text,
            )
        }
        Command::Secret {
            action: SecretAction::List { to, output },
        } => (to, "GET", "/v1/secrets".to_owned(), Vec::new(), *output),
        Command::Cluster {
            action: ClusterAction::Status { to, output },
        } => (to, "GET", "/v1/cluster".to_owned(), Vec::new(), *output),
        Command::Secret {
            action: SecretAction::Delete { to, name },
        } => (
            to,
            "DELETE",
            format!("/v1/secrets/{}", percent_encode(name)),
            Vec::new(),
            Output::Text,
        ),
        _ => unreachable!("not a client command"),
    };
    let target = match target(to) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let (status, body) = match rt.block_on(target.request(method, &path, body)) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let text = String::from_utf8_lossy(&body);
    let doc: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if !(200..300).contains(&status) {
        let reason = doc
            .as_ref()
            .and_then(|d| d.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        if let Some(tb) = doc
            .as_ref()
            .and_then(|d| d.get("traceback"))
            .and_then(|t| t.as_str())
        {
            eprintln!("{tb}");
        }
        return fail(&format!("{reason} (HTTP {status})"));
    }
    match (output, &cmd, doc) {
        (
            output,
            Command::Config {
                action: ConfigAction::Export { file, to, .. },
            },
            Some(d),
        ) => return write_export(d, output, file.as_deref(), to),
        (Output::Json, _, _) | (_, _, None) => println!("{}", text.trim_end()),
        (Output::Text, Command::Services { .. }, Some(d)) => {
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
        }
        (Output::Text, Command::Deploy { .. }, Some(d)) => {
            for m in d["modules"].as_array().into_iter().flatten() {
                println!(
                    "deployed {} version {} ({})",
                    m["name"].as_str().unwrap_or(""),
                    m["version"],
                    &m["source_hash"].as_str().unwrap_or("")
                        [..12.min(m["source_hash"].as_str().unwrap_or("").len())]
                );
            }
            // The server deployed through first, then the peers that answered over the bus.
            if let Some(through) = d["server"].as_str() {
                let acks = d["workers"].as_array().cloned().unwrap_or_default();
                let failed = acks.iter().filter(|a| a["ok"] != true).count();
                println!(
                    "  server {through} (deployed through): {}",
                    if failed == 0 {
                        format!("ok ({} worker(s))", acks.len())
                    } else {
                        format!(
                            "FAILED: {failed} of {} worker(s) did not switch",
                            acks.len()
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
                            "ok ({} worker(s))",
                            srv["answer"]["worker_count"].as_u64().unwrap_or(0)
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
                "config version {}, {} worker(s) acknowledged, {:.1} ms",
                d["config_version"],
                workers,
                d["total_ms"].as_f64().unwrap_or(0.0)
            );
        }
        (Output::Text, Command::Config { .. }, Some(d)) => print_import(&d),
        (Output::Text, Command::Cluster { .. }, Some(d)) => print_cluster(&d),
        (Output::Text, Command::Rollback { module, .. }, Some(d)) => println!(
            "{module} is back at version {} (config version {}, {} worker(s) acknowledged)",
            d["module"]["version"],
            d["config_version"],
            d["workers"].as_array().map_or(0, Vec::len)
        ),
        (Output::Text, Command::Undeploy { module, .. }, Some(d)) => println!(
            "undeployed {module} (config version {}, {} worker(s) acknowledged)",
            d["config_version"],
            d["workers"].as_array().map_or(0, Vec::len)
        ),
        (Output::Text, Command::Secret { action }, Some(d)) => match action {
            SecretAction::List { .. } => {
                for s in d["secrets"].as_array().into_iter().flatten() {
                    println!(
                        "{:<40} set by {}",
                        s["name"].as_str().unwrap_or(""),
                        s["updated_by"].as_str().unwrap_or("")
                    );
                }
            }
            SecretAction::Set { name, .. } => println!(
                "secret {name} {} (config version {})",
                if d["created"] == true {
                    "created"
                } else {
                    "updated"
                },
                d["config_version"]
            ),
            SecretAction::Delete { name, .. } => println!(
                "secret {name} deleted (config version {})",
                d["config_version"]
            ),
        },
        (Output::Text, _, Some(d)) => println!("{d}"),
    }
    ExitCode::SUCCESS
}

/// `oxbus cache …`.
fn cache_command(rt: &tokio::runtime::Runtime, action: &CacheAction) -> ExitCode {
    let to = match action {
        CacheAction::List { to, .. }
        | CacheAction::Get { to, .. }
        | CacheAction::Set { to, .. }
        | CacheAction::Delete { to, .. }
        | CacheAction::Keys { to, .. }
        | CacheAction::Clear { to, .. } => to,
    };
    let target = match target(to) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let call = |method: &str, path: String, body: Vec<u8>| -> Result<serde_json::Value, String> {
        let (status, body) = rt.block_on(target.request(method, &path, body))?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()))?;
        if !(200..300).contains(&status) {
            let reason = doc["error"]
                .as_str()
                .map_or_else(|| doc.to_string(), str::to_owned);
            return Err(format!("{reason} (HTTP {status})"));
        }
        Ok(doc)
    };
    let entry = |cache: &str, key: &str| {
        format!(
            "/v1/caches/{}/keys/{}",
            percent_encode(cache),
            percent_encode(key)
        )
    };
    let result = match action {
        CacheAction::List { output, .. } => call("GET", "/v1/caches".into(), Vec::new()).map(|d| {
            if matches!(output, Output::Json) {
                println!("{d}");
                return;
            }
            println!(
                "{:<24} {:>9} {:>9} {:>10} {:>10} {:>9}  settings",
                "cache", "entries", "max", "hits", "misses", "evicted"
            );
            let list = d.get("caches").unwrap_or(&d);
            for c in list.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>9} {:>9} {:>10} {:>10} {:>9}  expiry {} s, item <= {} B{}{}",
                    c["name"].as_str().unwrap_or(""),
                    // As numbers: a JSON value's Display ignores the column widths.
                    c["entries"].as_u64().unwrap_or(0),
                    c["max_entries"].as_u64().unwrap_or(0),
                    c["hits"].as_u64().unwrap_or(0),
                    c["misses"].as_u64().unwrap_or(0),
                    c["evictions"].as_u64().unwrap_or(0),
                    c["default_expiry_s"],
                    c["max_item_size"],
                    if c["extend_expiry_on_get"] == true {
                        ", extend on get"
                    } else {
                        ""
                    },
                    if c["replicate"] == true {
                        ", replicated"
                    } else {
                        ", this server only"
                    },
                );
            }
        }),
        CacheAction::Get {
            key, cache, output, ..
        } => call("GET", entry(cache, key), Vec::new()).map(|d| match output {
            Output::Json => println!("{d}"),
            Output::Text if d["type"] == "bytes" => {
                println!("(bytes, base64) {}", d["value"].as_str().unwrap_or(""))
            }
            Output::Text => println!("{}", d["value"]),
        }),
        CacheAction::Set {
            key,
            value,
            cache,
            string,
            expiry,
            ..
        } => {
            let value: Result<serde_json::Value, String> = if *string {
                Ok(serde_json::Value::String(value.clone()))
            } else {
                serde_json::from_str(value).map_err(|e| {
                    format!(
                        "VALUE is not JSON ({e}); quote a string as '\"text\"' or give --string"
                    )
                })
            };
            value.and_then(|v| {
                let mut body = serde_json::json!({ "value": v });
                if expiry.is_some_and(|s| !s.is_finite() || s < 0.0) {
                    return Err(
                        "--expiry must be a number of seconds, 0 or more (0 = never)".into(),
                    );
                }
                if let Some(s) = expiry {
                    body["expiry"] = serde_json::json!(s);
                }
                call("PUT", entry(cache, key), body.to_string().into_bytes())
                    .map(|_| println!("stored {key} in cache {cache}"))
            })
        }
        CacheAction::Delete { key, cache, .. } => call("DELETE", entry(cache, key), Vec::new())
            .map(|d| {
                if d["deleted"] == true {
                    println!("deleted {key} from cache {cache}");
                } else {
                    println!("{key} was not in cache {cache}");
                }
            }),
        CacheAction::Keys {
            cache,
            prefix,
            after,
            limit,
            all,
            output,
            ..
        } => {
            let mut after = after.clone();
            loop {
                let mut path = format!(
                    "/v1/caches/{}/keys?prefix={}",
                    percent_encode(cache),
                    percent_encode(prefix)
                );
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", percent_encode(a)));
                }
                if let Some(n) = limit {
                    path.push_str(&format!("&limit={n}"));
                }
                let page = match call("GET", path, Vec::new()) {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                if matches!(output, Output::Json) {
                    println!("{page}");
                } else {
                    for k in page["keys"].as_array().into_iter().flatten() {
                        println!("{}", k.as_str().unwrap_or(""));
                    }
                }
                match page["next"].as_str() {
                    Some(next) if *all => after = Some(next.to_owned()),
                    Some(next) => {
                        if matches!(output, Output::Text) {
                            eprintln!("(more: --after {next:?}, or --all)");
                        }
                        break Ok(());
                    }
                    None => break Ok(()),
                }
            }
        }
        CacheAction::Clear { cache, .. } => call(
            "POST",
            format!("/v1/caches/{}/clear", percent_encode(cache)),
            Vec::new(),
        )
        .map(|d| println!("cleared {} entries from cache {cache}", d["cleared"])),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `oxbus jobs …`: one admin API call, its answer printed as text or JSON.
fn jobs_command(rt: &tokio::runtime::Runtime, action: &JobsAction) -> ExitCode {
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
    let target = match target(to) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let (method, path, body) = match jobs_request(action) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let answer = rt
        .block_on(target.request(method, &path, body))
        .and_then(|(status, body)| {
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()))?;
            if !(200..300).contains(&status) {
                let reason = doc["error"]
                    .as_str()
                    .map_or_else(|| doc.to_string(), str::to_owned);
                return Err(format!("{reason} (HTTP {status})"));
            }
            Ok(doc)
        });
    let doc = match answer {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    match output {
        Output::Json => println!("{doc}"),
        Output::Text => print_jobs_answer(action, &doc),
    }
    if let Some(w) = doc["warning"].as_str() {
        eprintln!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// The admin API call of a jobs subcommand: (method, path, body).
fn jobs_request(action: &JobsAction) -> Result<(&'static str, String, Vec<u8>), String> {
    let one = |name: &str| format!("/v1/jobs/{}", percent_encode(name));
    Ok(match action {
        JobsAction::List { .. } => ("GET", "/v1/jobs".into(), Vec::new()),
        JobsAction::Get { name, .. } => ("GET", one(name), Vec::new()),
        JobsAction::Put {
            name, file, json, ..
        } => {
            let (text, from) = match (file, json) {
                (Some(f), _) => (
                    std::fs::read_to_string(f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?,
                    f.display().to_string(),
                ),
                (None, Some(j)) => (j.clone(), "--json".into()),
                (None, None) => {
                    return Err("give the definition: --file F.json or --json '{…}'".into());
                }
            };
            let def: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{from} is not JSON: {e}"))?;
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

/// A job's schedule in a few words: `every 1 hours 30 minutes (3 times)`,
/// `cron 0 8 * * * Europe/Warsaw`, `once`.
fn job_schedule(j: &serde_json::Value) -> String {
    match j["type"].as_str().unwrap_or("") {
        "interval_based" => {
            let parts: Vec<String> = ["weeks", "days", "hours", "minutes", "seconds"]
                .iter()
                .filter_map(|f| {
                    j[*f]
                        .as_u64()
                        .filter(|n| *n > 0)
                        .map(|n| format!("{n} {f}"))
                })
                .collect();
            let times = j["repeats"]
                .as_u64()
                .map_or_else(String::new, |n| format!(" ({n} times)"));
            format!("every {}{times}", parts.join(" "))
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
                "{l} leads the scheduler{} ({} jobs)",
                if d["this_server_leads"] == true {
                    " (this server)"
                } else {
                    ""
                },
                d["jobs"]
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

/// Seeds a new quickstart environment's config store with the sample module and channels.
fn seed_store(s: &Settings) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = oxbus_supervisor::store::Store::open(&s.store_url())
            .await
            .map_err(|e| e.to_string())?;
        let r = oxbus_supervisor::cli::quickstart::seed(&store).await;
        store.close().await;
        r.map(drop).map_err(|e| e.to_string())
    })
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Percent-encodes a path segment (names may hold `/`).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `config export`: the document as YAML (or JSON), to a file or standard output.
fn write_export(
    doc: serde_json::Value,
    output: Output,
    file: Option<&std::path::Path>,
    to: &ServerArgs,
) -> ExitCode {
    use oxbus_supervisor::admin::config_io::Document;
    let text = match output {
        Output::Json => format!("{doc:#}\n"),
        Output::Text => {
            // Through the typed document, so fields keep their order (name first).
            let typed: Document = match serde_json::from_value(doc) {
                Ok(d) => d,
                Err(e) => return fail(&format!("the server sent an unreadable export: {e}")),
            };
            let yaml = match serde_yaml_ng::to_string(&typed) {
                Ok(y) => y,
                Err(e) => return fail(&format!("cannot write YAML: {e}")),
            };
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
            if let Err(e) = written {
                return fail(&format!("cannot write {}: {e}", f.display()));
            }
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

/// `cluster status`: the store, then one line per server.
fn print_cluster(d: &serde_json::Value) {
    let store = &d["store"];
    let current = store["config_version"].as_i64();
    match current {
        Some(v) => println!(
            "store: {} reachable, config version {v}",
            store["kind"].as_str().unwrap_or("")
        ),
        None => println!(
            "store: {} UNREACHABLE ({})",
            store["kind"].as_str().unwrap_or(""),
            store["error"].as_str().unwrap_or("")
        ),
    }
    println!(
        "{:<32} {:<22} {:>8}  {:<9} SEEN",
        "SERVER", "HTTP", "VERSION", "STATE"
    );
    for s in d["servers"].as_array().into_iter().flatten() {
        let version = s["config_version"].as_i64().unwrap_or(0);
        let state = match current {
            Some(v) if v == version => "in sync",
            Some(_) => "behind",
            None => "unknown",
        };
        println!(
            "{:<32} {:<22} {:>8}  {:<9} {}{}",
            format!(
                "{}{}",
                s["name"].as_str().unwrap_or(""),
                if s["this_server"] == true { " *" } else { "" }
            ),
            s["http_address"].as_str().unwrap_or("-"),
            version,
            state,
            s["seen_ms_ago"].as_i64().map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1} s ago", ms as f64 / 1000.0)
            ),
            if s["registered"] == false {
                " (not registered: store down)"
            } else {
                ""
            }
        );
    }
    let bus = &d["bus"];
    if bus["running"] == true {
        let links: Vec<String> = bus["links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} ({}, up {:.1} s)",
                    l["peer"].as_str().unwrap_or(""),
                    l["role"].as_str().unwrap_or(""),
                    l["up_ms"].as_f64().unwrap_or(0.0) / 1000.0
                )
            })
            .collect();
        println!(
            "bus: {}",
            if links.is_empty() {
                "no links".to_owned()
            } else {
                format!("linked to {}", links.join(", "))
            }
        );
    } else {
        println!("bus: off ({})", bus["why"].as_str().unwrap_or(""));
    }
}

/// `config import`: one line per change, then a summary.
fn print_import(d: &serde_json::Value) {
    let dry = d["dry_run"] == true;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Deploy { .. }
            | Command::Invoke { .. }
            | Command::Services { .. }
            | Command::Openapi { .. }
            | Command::Rollback { .. }
            | Command::Undeploy { .. }
            | Command::Config { .. }
            | Command::Cluster { .. }
            | Command::Secret { .. }
            | Command::Cache { .. }
            | Command::Jobs { .. }
    ) {
        return client_command(cli.command);
    }
    match &cli.command {
        Command::Reload { pid, timeout } => return reload(*pid, *timeout),
        Command::Systemd { action } => return systemd(action),
        _ => {}
    }
    if let Command::Proxy {
        config,
        upgrade,
        exit_with_parent,
    } = &cli.command
    {
        let level = std::env::var("OXBUS_LOG").unwrap_or_else(|_| "info".into());
        if let Err(e) = oxbus_supervisor::init_logging(&level) {
            return fail(&e);
        }
        return match oxbus_supervisor::cli::proxy_cmd::run(config, *upgrade, *exit_with_parent) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut quickstart_proxy: Option<std::process::Child> = None;
    let (settings, banner) = match cli.command {
        Command::Deploy { .. }
        | Command::Invoke { .. }
        | Command::Services { .. }
        | Command::Openapi { .. }
        | Command::Rollback { .. }
        | Command::Undeploy { .. }
        | Command::Config { .. }
        | Command::Cluster { .. }
        | Command::Secret { .. }
        | Command::Cache { .. }
        | Command::Jobs { .. }
        | Command::Reload { .. }
        | Command::Systemd { .. }
        | Command::Proxy { .. } => {
            unreachable!("handled above")
        }
        Command::Server { config } => match Settings::load(&config, env) {
            Ok(s) => (s, None),
            // EX_CONFIG: restarting will not help (the unit has RestartPreventExitStatus=78).
            Err(e) => {
                eprintln!("oxbus: error: {e}");
                return ExitCode::from(78);
            }
        },
        Command::Quickstart {
            dir,
            port,
            workers,
            no_proxy,
        } => {
            if let Some(w) = workers.filter(|w| *w == 0 || *w > MAX_WORKERS) {
                return fail(&format!(
                    "--workers {w}: Oxbus runs 1 to {MAX_WORKERS} Python workers per server"
                ));
            }
            let created = match oxbus_supervisor::cli::quickstart::ensure_env(
                &dir,
                port.unwrap_or(17010),
                workers,
            ) {
                Ok(c) => c,
                Err(e) => return fail(&format!("cannot create {}: {e}", dir.display())),
            };
            let mut env = env;
            if let Some(p) = port {
                env.push(("OXBUS_SERVER_LISTEN".into(), format!("\"127.0.0.1:{p}\"")));
                // The admin API sits next to it, as Zato's 17010 / 17011.
                env.push((
                    "OXBUS_ADMIN_LISTEN".into(),
                    format!("\"127.0.0.1:{}\"", p.wrapping_add(1)),
                ));
            }
            if let Some(w) = workers {
                env.push(("OXBUS_SERVER_WORKERS".into(), w.to_string()));
            }
            match Settings::load(&dir.join("server.toml"), env) {
                Ok(s) if created && let Err(e) = seed_store(&s) => {
                    return fail(&format!("cannot seed the new environment's store: {e}"));
                }
                Ok(s) => {
                    let url = format!("http://{}", s.server.listen);
                    let proxy_line = if no_proxy {
                        String::new()
                    } else {
                        match start_quickstart_proxy(&dir, s.server.listen) {
                            Ok((child, proxy_url, stats_url)) => {
                                quickstart_proxy = Some(child);
                                format!(
                                    "\n  proxy:   {proxy_url} (oxbus proxy in front of the server; stats {stats_url}, log {})",
                                    dir.join("proxy.log").display()
                                )
                            }
                            Err(e) => return fail(&format!("cannot start the proxy: {e}")),
                        }
                    };
                    let pickup = match s.pickup_dir() {
                        Some(d) => format!(
                            "\n  pickup:  {} (save or git pull a *.py there: deployed live)",
                            d.display()
                        ),
                        None => String::new(),
                    };
                    let banner = format!(
                        "{} environment in {}\n  server:  {url}{proxy_line}\n  admin:   http://{} (bearer token in {}){pickup}\n  try:     curl -s -X POST {url}/echo -H 'Content-Type: application/json' -d '{{\"hello\": \"world\"}}'\n           curl -s {url}/hello/Ann?greeting=Hi\n           curl -s {url}/visits/home   (a counter in the server's cache)\n  stop:    Ctrl-C (SIGTERM drains gracefully)",
                        if created {
                            "Created a new"
                        } else {
                            "Using the"
                        },
                        dir.display(),
                        s.admin.listen,
                        s.admin_token_file().display(),
                    );
                    (s, Some(banner))
                }
                Err(e) => return fail(&e.to_string()),
            }
        }
    };
    if let Err(e) = oxbus_supervisor::init_logging(&settings.server.log_level) {
        return fail(&e);
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    // One I/O thread (the default on small machines) runs everything on the main thread:
    // no cross-thread wake-ups between the HTTP tasks and the worker connections.
    let rt = if settings.io_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.io_threads())
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(oxbus_supervisor::boot::run(settings));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(mut proxy) = quickstart_proxy {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(proxy.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = proxy.wait();
    }
    match result {
        Ok(o) => ExitCode::from(o.exit_code as u8),
        Err(e) => {
            tracing::error!("{e}");
            fail(&e.to_string())
        }
    }
}

/// Starts `oxbus proxy` in front of quickstart's server (it stops with quickstart, and if
/// quickstart dies, by itself). Its log goes to DIR/proxy.log.
fn start_quickstart_proxy(
    dir: &std::path::Path,
    server: std::net::SocketAddr,
) -> Result<(std::process::Child, String, String), String> {
    let (config, url, stats) =
        oxbus_supervisor::cli::quickstart::write_proxy_config(dir, server)
            .map_err(|e| format!("cannot write {}: {e}", dir.join("proxy.toml").display()))?;
    // The proxy resolves the paths in its file against the file's directory.
    let config = std::path::absolute(&config).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("proxy.log")).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .arg("proxy")
        .arg("--config")
        .arg(&config)
        .arg("--exit-with-parent")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok((child, url, stats))
}

/// `oxbus reload --pid PID`: one line when the reload is done; an error otherwise.
fn reload(pid: u32, timeout: f64) -> ExitCode {
    let Some(timeout) = std::time::Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
    else {
        return fail(&format!("--timeout {timeout}: expected seconds above 0"));
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let started = std::time::Instant::now();
    match rt.block_on(oxbus_supervisor::lifecycle::reload::reload(pid, timeout)) {
        Ok(s) => {
            println!(
                "server {pid} reloaded in {:.1} s: worker generation {} serving",
                started.elapsed().as_secs_f64(),
                s.generation
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `oxbus systemd install`.
fn systemd(action: &SystemdAction) -> ExitCode {
    let SystemdAction::Install {
        unit_dir,
        bin,
        config_dir,
        state_dir,
        user,
        dry_run,
    } = action;
    let bin = match bin {
        Some(b) => b.clone(),
        None => match std::env::current_exe() {
            Ok(b) => b,
            Err(e) => {
                return fail(&format!(
                    "cannot tell where this binary is ({e}): pass --bin"
                ));
            }
        },
    };
    let install = oxbus_supervisor::cli::systemd_units::Install {
        unit_dir: unit_dir.clone(),
        bin,
        config_dir: config_dir.clone(),
        state_dir: state_dir.clone(),
        user: user.clone(),
    };
    if *dry_run {
        return match install.render() {
            Ok(units) => {
                for u in units {
                    println!("# would write {}\n{}", u.path.display(), u.text);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    match install.write() {
        Ok(units) => {
            for u in units {
                println!("wrote {}", u.path.display());
            }
            print!("{}", install.next_steps());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("oxbus: error: {msg}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_unix_milliseconds() {
        for (ms, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400_000, "2000-02-29 00:00:00 UTC"),
            (1_795_651_323_456, "2026-11-26 00:02:03 UTC"),
            (4_107_542_400_000, "2100-03-01 00:00:00 UTC"),
        ] {
            assert_eq!(super::utc(ms), want);
        }
    }

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(super::percent_encode("mq/token a"), "mq%2Ftoken%20a");
        assert_eq!(super::percent_encode("a.b-c_d~"), "a.b-c_d~");
    }
}
