//! The command line's one error type. Each variant names what failed and carries its cause;
//! its text is the line `oxbus: error: …` prints (so it stays byte-identical). Errors only:
//! no I/O here.

use std::io;
use std::path::PathBuf;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The dashboard or its users (a message for the operator).
    #[error("{0}")]
    Dashboard(String),
    /// The tokio runtime did not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Neither `--env` nor `--server` and `--token` say where the admin API is.
    #[error(
        "say which server: --env DIR, or --server URL --token TOKEN (or OXBUS_URL and OXBUS_TOKEN)"
    )]
    NoServer,
    /// `--server` is not `http://host:port`.
    #[error("--server {0:?}: expected http://host:port")]
    ServerUrl(String),
    /// The `--env` directory's server.toml.
    #[error("{0}")]
    Settings(#[from] crate::config::ConfigError),
    /// The `--env` directory's admin token file.
    #[error("cannot read the admin token {}: {source} (has the server run once?)", path.display())]
    AdminToken { path: PathBuf, source: io::Error },
    /// No connection to the admin API.
    #[error("cannot reach the admin API at {authority}: {source}")]
    Unreachable {
        authority: String,
        source: io::Error,
    },
    /// The HTTP exchange with the admin API broke.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a path the URI grammar refuses).
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    /// The admin API answered with an error status.
    #[error("{reason} (HTTP {status})")]
    Refused { reason: String, status: u16 },
    /// The admin API answered something that is not JSON.
    #[error("HTTP {status}: {body}")]
    NotJson { status: u16, body: String },
    /// A file named on the command line.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file or directory this command writes.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A directory this command creates.
    #[error("cannot create {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    /// `oxbus deploy FILE` with a FILE that is not `*.py`.
    #[error("{}: a module file must end in .py", .0.display())]
    NotAModule(PathBuf),
    /// `oxbus invoke --payload` that is not JSON.
    #[error("--payload must be JSON")]
    Payload,
    /// `oxbus config import FILE`: FILE is not YAML.
    #[error("{}: not valid YAML: {source}", path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    /// `oxbus config import FILE`: FILE is not a mapping of kinds.
    #[error(
        "{}: expected a mapping of object kinds (channel_rest, channel_jsonrpc, security, secret, service_module, cache)",
        .0.display()
    )]
    NotAMapping(PathBuf),
    /// `oxbus config export`: the server's document does not read as one.
    #[error("the server sent an unreadable export: {0}")]
    Export(#[source] serde_json::Error),
    /// `oxbus config export`: the document does not write as YAML.
    #[error("cannot write YAML: {0}")]
    ToYaml(#[source] serde_yaml_ng::Error),
    /// `oxbus secret set NAME` with standard input a terminal.
    #[error(
        "pipe the value in (printf '%s' \"$VALUE\" | oxbus secret set {0} …) or give \
         --value-file: it is not typed at a terminal, where it would show"
    )]
    SecretAtTerminal(String),
    /// `oxbus secret set`: standard input did not read.
    #[error("cannot read the value from standard input: {0}")]
    Stdin(#[source] io::Error),
    /// `oxbus secret set` with an empty value.
    #[error("the value is empty; nothing was set")]
    EmptySecret,
    /// `oxbus cache set KEY VALUE`: VALUE is not JSON.
    #[error("VALUE is not JSON ({0}); quote a string as '\"text\"' or give --string")]
    CacheValue(#[source] serde_json::Error),
    /// `oxbus cache set --expiry` below 0 or not a number.
    #[error("--expiry must be a number of seconds, 0 or more (0 = never)")]
    Expiry,
    /// `oxbus out ping`: the connection did not answer as a live one.
    #[error("ping of {0} failed: {1}")]
    PingFailed(String, String),
    /// `oxbus out put`: a credential for a definition that takes none, or two sources of it.
    #[error("{0}")]
    OutCredential(String),
    /// `oxbus jobs put` without a definition.
    #[error("give the definition: --file F.json or --json '{{…}}'")]
    NoDefinition,
    /// `oxbus jobs put`: the definition (from `--json` or a file) is not JSON.
    #[error("{from} is not JSON: {source}")]
    JobJson {
        from: String,
        source: serde_json::Error,
    },
    /// `oxbus user-config set --file F`: F does not read as the format its extension names,
    /// or its extension names none.
    #[error("{}: {reason}", path.display())]
    UserConfigFile { path: PathBuf, reason: String },
    /// `oxbus deploy --watch`: the watch did not start or broke (its own message).
    #[error("{0}")]
    Watch(#[from] crate::deploy::watch::WatchError),
    /// `oxbus quickstart --workers` out of range.
    #[error("--workers {0}: Oxbus runs 1 to {max} Python workers per server", max = crate::config::MAX_WORKERS)]
    Workers(u32),
    /// `oxbus quickstart --debug 5679`: the number was read as the directory.
    #[error(
        "--debug takes its port after '=': --debug={0} (for an environment directory named {0}, write ./{0})"
    )]
    DebugPortAsDir(String),
    /// `oxbus quickstart`: the new environment's store could not be opened or seeded.
    #[error("cannot seed the new environment's store: {0}")]
    Seed(#[source] crate::store::StoreError),
    /// `oxbus quickstart`: no runtime to seed the new environment's store on.
    #[error("cannot seed the new environment's store: {0}")]
    SeedRuntime(#[source] io::Error),
    /// `oxbus quickstart`: the proxy in front of the server did not start.
    #[error("cannot start the proxy: {0}")]
    StartProxy(#[source] Box<CliError>),
    /// Starting a process or preparing its files, without more context than the cause's.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// `oxbus reload --timeout` that is not a positive number of seconds.
    #[error("--timeout {0}: expected seconds above 0")]
    Timeout(f64),
    /// `oxbus reload`: the reload failed or timed out (its own message).
    #[error("{0}")]
    Reload(#[from] crate::lifecycle::reload::ReloadError),
    /// `oxbus systemd install` without `--bin`, and this binary's path unknown.
    #[error("cannot tell where this binary is ({0}): pass --bin")]
    CurrentExe(#[source] io::Error),
    /// `oxbus systemd install`: the settings or the unit files.
    #[error("{0}")]
    Units(#[from] super::systemd_units::UnitError),
    /// `oxbus proxy`: its proxy.toml.
    #[error("{0}")]
    ProxyConfig(#[from] oxbus_proxy::config::ConfigError),
    /// `oxbus proxy`: the load balancer did not start or stopped with an error (its message
    /// names the cause).
    #[error("{0}")]
    Proxy(#[from] oxbus_proxy::ProxyError),
    /// The log subscriber.
    #[error("{0}")]
    Logging(#[from] super::logging::LoggingError),
}
