//! The command line's grammar: every subcommand, its arguments and its help text (clap).
//! Plain data only: what each subcommand does lives in its own file of `cli/`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "oxbus",
    version,
    about = "Oxbus: integration platform — Rust server, Python services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a server from a settings file.
    Server {
        /// The server.toml to read (OXBUS_<SECTION>_<KEY> variables override it).
        #[arg(long, short, env = "OXBUS_CONFIG")]
        config: PathBuf,
        /// Run one worker under debugpy listening on 127.0.0.1:PORT (default 5678), for VS
        /// Code or PyCharm to attach to (docs/DEBUGGING.md); debugpy must be installed in
        /// server.python's environment. The same as [debug] port. Not for production.
        #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true,
              default_missing_value = "5678")]
        debug: Option<u16>,
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
        /// Store and activate a new version of every module even when its source equals
        /// the active version's (by default such a module is left alone, and only this
        /// server's workers that failed to switch to it are given it again).
        #[arg(long, conflicts_with = "watch")]
        force: bool,
        /// Text for people, or json for scripts (the answer as the server sent it).
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
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Show each service's statistics on every server of the cluster instead: calls,
        /// errors, mean/p50/p99 over the last 1, 5 and 15 minutes, the last error.
        #[arg(long)]
        stats: bool,
        /// With --stats: print the server's JSON document (as --output json).
        #[arg(long, requires = "stats")]
        json: bool,
        /// With --stats: only this service.
        #[arg(requires = "stats")]
        name: Option<String>,
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
        /// The module to put back at its previous version.
        module: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Undeploy a module: its services stop at once everywhere (its history stays in the
    /// store; deploying it again continues its version numbers).
    Undeploy {
        #[command(flatten)]
        to: ServerArgs,
        /// The module to undeploy (as `oxbus services` lists it).
        module: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Export or import every object of the config store as YAML (one list per kind).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Move a Zato 3.2 cluster's config to Oxbus (docs/ZATO_IMPORT.md).
    Zato {
        #[command(subcommand)]
        action: ZatoAction,
    },
    /// The cluster: its servers, the config version each runs, the store's health.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// WebSocket clients: those connected to every server of the cluster; closing one.
    Websocket {
        #[command(subcommand)]
        action: WebsocketAction,
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
    /// Outgoing REST, SQL, AMQP, MQTT and Redis connections: list, get, put, delete, ping, stats
    /// (docs/OUTGOING.md).
    Out {
        #[command(subcommand)]
        action: OutAction,
    },
    /// Inbound channels that consume from a broker into services (AMQP, MQTT): list, get,
    /// put, delete, stats (docs/CONNECTORS.md).
    Inbound {
        #[command(subcommand)]
        action: InboundAction,
    },
    /// Pub/sub: topics, subscriptions and endpoints (list, get, put, delete), a
    /// subscription's queue and dead letters (requeue, purge), a test publish
    /// (docs/PUBSUB.md).
    Pubsub {
        #[command(subcommand)]
        action: PubsubAction,
    },
    /// User config: operator settings services read as self.user_config.NAME (set from a
    /// JSON, YAML or TOML file, get, list, delete; docs/USER_CONFIG.md).
    UserConfig {
        #[command(subcommand)]
        action: UserConfigAction,
    },
    /// Named admin API tokens with a role (admin, deployer, viewer), e.g. one per CI
    /// pipeline: create (the token is printed once), list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The audit log of admin changes, newest first: who changed what, when, on which
    /// server, with digests of the object before and after.
    Audit {
        #[command(flatten)]
        to: ServerArgs,
        /// An object kind (module, channel, secret, security, cache, job, outgoing_rest,
        /// outgoing_sql, outgoing_amqp, outgoing_mqtt, outgoing_redis, inbound_amqp,
        /// inbound_mqtt, pubsub_topic, pubsub_subscription, pubsub_endpoint, user_config,
        /// token, config)
        /// or KIND/NAME (a topic: pubsub_topic//orders/new).
        #[arg(long)]
        object: Option<String>,
        /// Only the changes of this identity (root, a token's name, pickup).
        #[arg(long)]
        who: Option<String>,
        /// Only changes since an RFC 3339 time or a duration back from now (90s, 30m, 1h,
        /// 7d, 2w).
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (1..=1000; default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Entries older than this id (the next page: the line `more:` gives it).
        #[arg(long)]
        before: Option<i64>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
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
    /// Run the web console (docs/DASHBOARD.md): `oxbus dashboard --config dashboard.toml`;
    /// its users: `oxbus dashboard user add|remove|list`.
    #[command(args_conflicts_with_subcommands = true)]
    Dashboard {
        #[command(subcommand)]
        action: Option<DashboardAction>,
        /// The dashboard.toml to read.
        #[arg(long, short, env = "OXBUS_DASHBOARD_CONFIG")]
        config: Option<PathBuf>,
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
        /// Do not start the dashboard (the web console) beside the server.
        #[arg(long)]
        no_dashboard: bool,
        /// Run the one worker under debugpy on 127.0.0.1:PORT (default 5678), as `oxbus
        /// server --debug` does (docs/DEBUGGING.md).
        #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true,
              default_missing_value = "5678")]
        debug: Option<u16>,
    },
}

#[derive(Subcommand)]
pub enum SystemdAction {
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
pub enum ConfigAction {
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
        /// The export to apply: YAML or JSON, as `oxbus config export` writes it.
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete stored objects the file does not list (modules are undeployed).
        #[arg(long)]
        replace: bool,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum ZatoAction {
    /// Import a Zato 3.2 enmasse export (YAML or JSON): REST channels, security definitions,
    /// outgoing REST, SQL, Redis and AMQP connections, scheduler jobs and caches, sent as one
    /// `config import`. Prints what was mapped and every object that was not, with the
    /// reason; exit code 2 when some were not (the others are imported all the same).
    Import(ZatoImportArgs),
}

/// `oxbus zato import`'s arguments.
#[derive(clap::Args)]
pub struct ZatoImportArgs {
    #[command(flatten)]
    pub to: ServerArgs,
    /// The enmasse export (zato enmasse --export).
    pub file: PathBuf,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete stored security definitions, REST channels, outgoing REST, SQL, Redis and
    /// AMQP connections, jobs and caches the file does not give (every other kind is kept).
    #[arg(long)]
    pub replace: bool,
    /// Text for people, or json for scripts (the answer as the server sent it).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Servers, their config versions, the store's health.
    Status {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum WebsocketAction {
    /// The clients connected to every server (of one channel with --channel).
    Clients {
        #[command(flatten)]
        to: ServerArgs,
        /// Only the clients of this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Close one client (close code 4005), on whichever server holds it.
    Disconnect {
        #[command(flatten)]
        to: ServerArgs,
        /// The client's id (ws.<server>.<16 hex digits>).
        client_id: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum SecretAction {
    /// Set a secret; the value is read from standard input (a trailing newline is dropped)
    /// or from --value-file, never from the command line. --service (repeatable) sets which
    /// services may read it from Python (`self.secrets[name]`); without it a new secret is
    /// readable by none and an existing one keeps its readers.
    Set {
        #[command(flatten)]
        to: ServerArgs,
        /// The secret's name, e.g. crm.password.
        name: String,
        /// Read the value from this file (one trailing newline dropped) instead of standard input.
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// A service name or a pattern with `*` (e.g. `crm.*`) that may read the secret.
        #[arg(long = "service", value_name = "PATTERN")]
        services: Vec<String>,
    },
    /// Change which services may read a secret, keeping its value: the --service patterns
    /// given replace the stored ones; none: no service may read it.
    Services {
        #[command(flatten)]
        to: ServerArgs,
        /// The secret's name, e.g. crm.password.
        name: String,
        /// A service name or a pattern with `*` (e.g. `crm.*`) that may read the secret.
        #[arg(long = "service", value_name = "PATTERN")]
        services: Vec<String>,
    },
    /// List secret names and which services may read them (values are never shown).
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a secret.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The secret's name, e.g. crm.password.
        name: String,
    },
}

/// The user-config subcommands (docs/USER_CONFIG.md): each is one admin API call.
#[derive(Subcommand)]
pub enum UserConfigAction {
    /// Create or replace user config NAME from FILE: a JSON, YAML or TOML mapping (by its
    /// extension: .json, .yaml/.yml, .toml) of sections and keys; services read it as
    /// self.user_config.NAME.<section>.<key> at once on every server.
    Set {
        #[command(flatten)]
        to: ServerArgs,
        /// The user config's name (services read it as self.user_config.NAME).
        name: String,
        /// The value: a .json, .yaml/.yml or .toml file holding a mapping.
        #[arg(long, short)]
        file: PathBuf,
        /// What it is for (shown by `list`).
        #[arg(long)]
        description: Option<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print user config NAME's value (as JSON; --output json: with its name, description
    /// and size).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The user config's name (services read it as self.user_config.NAME).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Every user config: name, size, description (not the values).
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete user config NAME.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The user config's name (services read it as self.user_config.NAME).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// The cache subcommands; `--cache` names the cache (default `default`).
#[derive(Subcommand)]
pub enum CacheAction {
    /// Every cache with its settings and figures (entries, hits, misses, evictions).
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the value under KEY (JSON; bytes are shown as base64).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The key: any string of at most 4096 bytes.
        key: String,
        /// Which cache (oxbus cache list names them).
        #[arg(long, default_value = "default")]
        cache: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Store VALUE under KEY: VALUE is JSON (`'{"a": 1}'`, `42`, `'"text"'`); with
    /// --string it is taken as a plain string.
    Set {
        #[command(flatten)]
        to: ServerArgs,
        /// The key: any string of at most 4096 bytes.
        key: String,
        /// The value: JSON, or with --string a plain string.
        value: String,
        /// Which cache (oxbus cache list names them).
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
        /// The key: any string of at most 4096 bytes.
        key: String,
        /// Which cache (oxbus cache list names them).
        #[arg(long, default_value = "default")]
        cache: String,
    },
    /// List keys (sorted), a page at a time, or all of them with --all.
    Keys {
        #[command(flatten)]
        to: ServerArgs,
        /// Which cache (oxbus cache list names them).
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
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove every entry of the cache.
    Clear {
        #[command(flatten)]
        to: ServerArgs,
        /// Which cache (oxbus cache list names them).
        #[arg(long, default_value = "default")]
        cache: String,
    },
}

/// The jobs subcommands (docs/SCHEDULER.md). Each is one admin API call: see
/// `jobs_request` for the call and `print_jobs_answer` for its text output.
#[derive(Subcommand)]
pub enum JobsAction {
    /// Every job: type, schedule, service, active or not.
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One job's definition.
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create or replace a job from its JSON definition (fields left out take their
    /// defaults; `name` may be left out).
    Put {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// A file holding the definition (JSON).
        #[arg(long, short, conflicts_with = "json", required_unless_present = "json")]
        file: Option<PathBuf>,
        /// The definition itself, e.g. '{"type": "interval_based", "service": "demo.ping",
        /// "minutes": 5}'.
        #[arg(long)]
        json: Option<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a job.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Let a job run on schedule again.
    Enable {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Keep a job but stop it running on schedule.
    Disable {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a job's service now, on the server addressed, and print the run.
    Execute {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A job's recent runs, newest first: when, where, how long, the outcome.
    History {
        #[command(flatten)]
        to: ServerArgs,
        /// The job's name (oxbus jobs list names them).
        name: String,
        /// How many (1..=100, default 20).
        #[arg(long)]
        limit: Option<u32>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Which server leads the cluster's scheduler.
    Status {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `oxbus dashboard …`
#[derive(Subcommand)]
pub enum DashboardAction {
    /// The dashboard's users.
    User {
        #[command(subcommand)]
        action: DashboardUserAction,
    },
}

/// `oxbus dashboard user …`
#[derive(Subcommand)]
pub enum DashboardUserAction {
    /// Add a user: an admin API token `dashboard.NAME` with the role is created through the
    /// admin API (an admin's --env or --server/--token) and kept sealed under the user's
    /// password in the users file. The password is read from standard input
    /// (--password-stdin) or made and printed once.
    Add {
        /// The dashboard.toml (its users_file is written).
        #[arg(long, short, env = "OXBUS_DASHBOARD_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        to: ServerArgs,
        /// Letters, digits and ._- (at most 64).
        name: String,
        /// admin, deployer or viewer (as the admin API's roles).
        #[arg(long)]
        role: String,
        /// Read the password (at least 12 characters) from standard input's first line.
        #[arg(long)]
        password_stdin: bool,
        /// Replace a user of that name (new password, role and token; the old token revoked).
        #[arg(long)]
        replace: bool,
    },
    /// Remove a user and revoke its admin API token (its sessions stop working at once).
    Remove {
        /// The dashboard.toml (its users_file is read and written).
        #[arg(long, short, env = "OXBUS_DASHBOARD_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        to: ServerArgs,
        /// The user's name.
        name: String,
    },
    /// List the users and their roles.
    List {
        /// The dashboard.toml (its users_file is read and written).
        #[arg(long, short, env = "OXBUS_DASHBOARD_CONFIG")]
        config: PathBuf,
    },
}

/// The token subcommands.
#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token NAME with a role; the token is printed once (on standard output, alone)
    /// and can never be shown again: the server keeps only its hash.
    Create {
        #[command(flatten)]
        to: ServerArgs,
        /// Letters, digits and ._- (`root` is the admin token file's).
        name: String,
        /// admin (everything), deployer (deploy, rollback, undeploy, invoke, read) or viewer
        /// (read, never secret material).
        #[arg(long)]
        role: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List the tokens: name, role, who created them and when, last use (never the token).
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a token: refused at once on every server of the cluster.
    Revoke {
        #[command(flatten)]
        to: ServerArgs,
        /// The token's name (oxbus token list names them).
        name: String,
    },
}

/// The types of outgoing connection.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutType {
    Rest,
    Sql,
    Redis,
    Amqp,
    Mqtt,
}

impl OutType {
    pub fn as_str(self) -> &'static str {
        match self {
            OutType::Mqtt => "mqtt",
            OutType::Rest => "rest",
            OutType::Redis => "redis",
            OutType::Sql => "sql",
            OutType::Amqp => "amqp",
        }
    }
}

/// The outgoing connection subcommands (docs/OUTGOING.md). A credential is never taken from
/// the command line: `put` reads it from `--secret-file` or (`--secret-stdin`) standard input.
#[derive(Subcommand)]
pub enum OutAction {
    /// The connections (of one type, or of every type) without their credentials.
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type; none: every type.
        #[arg(value_enum)]
        kind: Option<OutType>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One connection's definition (its credential shown only as has_secret).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type.
        #[arg(value_enum)]
        kind: OutType,
        /// The connection's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create or replace a connection from its JSON definition in FILE (`-`: standard input).
    /// Without a credential (in FILE or by the options below), an edit keeps the stored one
    /// while the REST auth type (SQL engine and URL user) stays the same.
    Put {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type.
        #[arg(value_enum)]
        kind: OutType,
        /// The connection's name.
        name: String,
        /// The definition (JSON); `-` reads it from standard input.
        file: String,
        /// A file holding the credential (REST: the password, key, token or client secret
        /// of its auth type; SQL, AMQP, MQTT, Redis: the password); one trailing newline is
        /// dropped.
        #[arg(long, conflicts_with = "secret_stdin")]
        secret_file: Option<PathBuf>,
        /// Read the credential from standard input (FILE must then not be `-`).
        #[arg(long)]
        secret_stdin: bool,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a connection (calls through it then fail, naming it).
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type.
        #[arg(value_enum)]
        kind: OutType,
        /// The connection's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Ping a connection from the server addressed (REST: ping_method ping_path; SQL:
    /// SELECT 1; AMQP: connect and open a channel; MQTT: connect; Redis: PING); exit code 1 when it fails.
    Ping {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type.
        #[arg(value_enum)]
        kind: OutType,
        /// The connection's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The figures of the connections on the server addressed: calls, errors, mean
    /// duration, pool size, in use, idle, waiting.
    Stats {
        #[command(flatten)]
        to: ServerArgs,
        /// The connection type; none: every type.
        #[arg(value_enum)]
        kind: Option<OutType>,
        /// The connection's name.
        name: Option<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// An inbound channel's type: its path under `/v1/inbound/`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InboundType {
    Amqp,
    Mqtt,
    /// File-transfer channels (docs/FILES.md).
    File,
}

impl InboundType {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundType::Amqp => "amqp",
            InboundType::Mqtt => "mqtt",
            InboundType::File => "file",
        }
    }
}

/// The inbound channel subcommands (docs/CONNECTORS.md). A password is never taken from the
/// command line: `put` reads it from `--secret-file` or (`--secret-stdin`) standard input.
#[derive(Subcommand)]
pub enum InboundAction {
    /// The channels of a type, each with this server's status (connected, figures).
    List {
        #[command(flatten)]
        to: ServerArgs,
        /// The channel type.
        #[arg(value_enum)]
        kind: InboundType,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One channel's definition (its password shown only as has_secret).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The channel type.
        #[arg(value_enum)]
        kind: InboundType,
        /// The channel's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create or replace a channel from its JSON definition in FILE (`-`: standard input).
    /// Without a password, an edit keeps the stored one while the destination is unchanged.
    Put {
        #[command(flatten)]
        to: ServerArgs,
        /// The channel type.
        #[arg(value_enum)]
        kind: InboundType,
        /// The channel's name.
        name: String,
        /// The definition (JSON); `-` reads it from standard input.
        file: String,
        /// A file holding the password; one trailing newline is dropped.
        #[arg(long, conflicts_with = "secret_stdin")]
        secret_file: Option<PathBuf>,
        /// Read the password from standard input (FILE must then not be `-`).
        #[arg(long)]
        secret_stdin: bool,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a channel (it stops consuming; its in-flight messages finish first).
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The channel type.
        #[arg(value_enum)]
        kind: InboundType,
        /// The channel's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A channel's status on the server addressed: connected, last error, consumed, acked,
    /// requeued, rejected, reconnects.
    Stats {
        #[command(flatten)]
        to: ServerArgs,
        /// The channel type.
        #[arg(value_enum)]
        kind: InboundType,
        /// The channel's name.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// The pub/sub subcommands (docs/PUBSUB.md). A topic is named with its leading `/`
/// (`/orders/new`; `orders/new` means the same).
#[derive(Subcommand)]
pub enum PubsubAction {
    /// Every topic with its figures: GD or not, depth, last seq, published, rate,
    /// subscriptions.
    Topics {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One topic: get, put (create or replace from JSON), delete.
    Topic {
        #[command(subcommand)]
        action: PubsubDefAction,
    },
    /// Every subscription with its figures: delivering server, depth, in flight, delivered,
    /// dead letters.
    Subs {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One subscription (by sub_key): get, put, delete (its queue and dead letters go too).
    Sub {
        #[command(subcommand)]
        action: PubsubDefAction,
    },
    /// Every pub/sub endpoint: its security definition and pub=/sub= patterns.
    Endpoints {
        #[command(flatten)]
        to: ServerArgs,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One pub/sub endpoint: get, put, delete.
    Endpoint {
        #[command(subcommand)]
        action: PubsubDefAction,
    },
    /// The messages waiting in a subscription's queue, in delivery order.
    Queue {
        #[command(flatten)]
        to: ServerArgs,
        /// The subscription's sub_key (oxbus pubsub subs lists them).
        sub_key: String,
        /// At most this many (1..=1000, default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A subscription's dead letters (messages past retry.max_attempts), oldest first.
    Dead {
        #[command(flatten)]
        to: ServerArgs,
        /// The subscription's sub_key (oxbus pubsub subs lists them).
        sub_key: String,
        /// At most this many (1..=1000, default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Put dead letters back into the subscription's queue: these MSG_IDS, or all of them.
    Requeue {
        #[command(flatten)]
        to: ServerArgs,
        /// The subscription's sub_key (oxbus pubsub subs lists them).
        sub_key: String,
        /// The dead letters' msg_ids (oxbus pubsub dead lists them); none: every dead letter.
        msg_ids: Vec<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Empty a subscription's queue: every message waiting is dropped.
    Purge {
        #[command(flatten)]
        to: ServerArgs,
        /// The subscription's sub_key (oxbus pubsub subs lists them).
        sub_key: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Publish a test message to TOPIC (as admin:<token>); prints its msg_id.
    Publish {
        #[command(flatten)]
        to: ServerArgs,
        /// The topic's name, e.g. /demo/orders.
        topic: String,
        /// The data as text.
        #[arg(long, conflicts_with_all = ["json", "file"], required_unless_present_any = ["json", "file"])]
        data: Option<String>,
        /// The data as JSON (published as application/json), e.g. '{"id": 1}'.
        #[arg(long, conflicts_with = "file")]
        json: Option<String>,
        /// The data from a UTF-8 text file (`-`: standard input).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// 1 (lowest) to 9 (highest); default 5.
        #[arg(long)]
        priority: Option<u8>,
        /// Milliseconds until it expires (default: the topic's).
        #[arg(long)]
        expiration: Option<u64>,
        /// Not guaranteed delivery: kept in memory only (default: the topic's has_gd).
        #[arg(long)]
        no_gd: bool,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `get|put|delete` of one pub/sub definition (a topic, a subscription, an endpoint).
#[derive(Subcommand)]
pub enum PubsubDefAction {
    /// Its definition (with its figures, for topics and subscriptions).
    Get {
        #[command(flatten)]
        to: ServerArgs,
        /// The topic's or endpoint's name; for a subscription its sub_key.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create or replace it from its JSON definition (fields left out take their
    /// defaults; the name may be left out).
    Put {
        #[command(flatten)]
        to: ServerArgs,
        /// The topic's or endpoint's name; for a subscription its sub_key.
        name: String,
        /// A file holding the definition (JSON).
        #[arg(long, short, conflicts_with = "json", required_unless_present = "json")]
        file: Option<PathBuf>,
        /// The definition itself, e.g. '{"has_gd": true, "max_depth_gd": 50000}'.
        #[arg(long)]
        json: Option<String>,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete it.
    Delete {
        #[command(flatten)]
        to: ServerArgs,
        /// The topic's or endpoint's name; for a subscription its sub_key.
        name: String,
        /// Text for people, or json for scripts (the answer as the server sent it).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// How to reach a server's admin API.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// An environment directory made by `oxbus quickstart` (address and token read from it).
    #[arg(long, conflicts_with = "server")]
    pub env: Option<PathBuf>,
    /// The admin API's URL, e.g. http://127.0.0.1:17011 [env: OXBUS_URL] (OXBUS_SERVER, the
    /// variable's old name, is still read, with a warning).
    // OXBUS_URL is read by cli::client, after --server and --env: as clap's `env`, it would
    // count as --server given, which --env conflicts with.
    #[arg(long, requires = "token")]
    pub server: Option<String>,
    /// An admin API bearer token (`oxbus token create`, or the server's admin.token).
    #[arg(long, env = "OXBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--debug` alone is the default port, `--debug=PORT` another; `--debug PORT` is not
    /// read as a port (the flag takes its value only after `=`).
    #[test]
    fn debug_takes_an_optional_port_after_an_equals_sign() {
        use clap::Parser;
        let debug_of = |args: &[&str]| match super::Cli::try_parse_from(args) {
            Ok(super::Cli {
                command: super::Command::Server { debug, .. },
                ..
            }) => Ok(debug),
            Ok(_) => panic!("not server"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(debug_of(&["oxbus", "server", "-c", "s.toml"]), Ok(None));
        assert_eq!(
            debug_of(&["oxbus", "server", "-c", "s.toml", "--debug"]),
            Ok(Some(crate::config::DEFAULT_DEBUG_PORT))
        );
        assert_eq!(
            debug_of(&["oxbus", "server", "-c", "s.toml", "--debug=5700"]),
            Ok(Some(5700))
        );
        assert!(debug_of(&["oxbus", "server", "-c", "s.toml", "--debug", "5700"]).is_err());
        assert!(debug_of(&["oxbus", "server", "-c", "s.toml", "--debug=x"]).is_err());
        let Ok(super::Cli {
            command: super::Command::Quickstart { debug, .. },
            ..
        }) = super::Cli::try_parse_from(["oxbus", "quickstart", "--debug"])
        else {
            panic!("quickstart --debug does not parse")
        };
        assert_eq!(debug, Some(crate::config::DEFAULT_DEBUG_PORT));
    }

    /// Every subcommand and every argument of `cmd` and below without help text, as
    /// `oxbus deploy --output` / `oxbus cache list`.
    fn missing_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = match arg.get_long() {
                    Some(l) => format!("--{l}"),
                    None => arg.get_id().to_string().to_uppercase(),
                };
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(sub_path.clone());
            }
            missing_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_help_text() {
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        missing_help(&cmd, "oxbus", &mut missing);
        assert!(
            missing.is_empty(),
            "{} without help text (a /// comment in cli/args.rs):\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    #[test]
    fn the_env_variables_show_their_names_only() {
        let mut cmd = super::Cli::command();
        let help = cmd
            .find_subcommand_mut("deploy")
            .expect("deploy")
            .render_help()
            .to_string();
        assert!(help.contains("[env: OXBUS_URL]"), "{help}");
        assert!(help.contains("[env: OXBUS_TOKEN]"), "{help}");
        assert!(!help.contains("OXBUS_SERVER="), "{help}");
    }
}
