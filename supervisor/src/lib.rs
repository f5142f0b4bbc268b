//! The Oxbus server ("supervisor"): owns every socket, supervises the Python workers and
//! dispatches each invocation to one of them over the IPC protocol of `oxbus-ipc`.
//!
//! - [`config`]: settings (TOML + `OXBUS_*` overrides) and their validation.
//! - [`router`]: REST channels, `{param}` paths, 404 vs 405; [`gate`]: what a channel checks
//!   before its service runs (allow lists, rate limits, security definitions).
//! - [`http`]: the HTTP edge (limits, timeouts, JSON errors, cids); [`forwarded`]: the
//!   client address, scheme and request id behind trusted reverse proxies; [`jsonrpc`]:
//!   JSON-RPC 2.0 channels on top of it.
//! - [`pool`]: workers, their IPC connections, least-loaded dispatch with backpressure.
//! - [`server`]: the supervisor event loop (signals, exits, recycling, rolling restarts).
//! - [`process`]: spawning workers; [`python`]: the bundled Python package.
//! - [`quickstart`]: the `oxbus quickstart` environment.
//! - [`store`]: the config store on SQLite or PostgreSQL; [`admin`]: the admin API;
//!   [`deploy`]: hot deployment; [`watch`]: deploy-on-save (the pickup directory and
//!   `deploy --watch`); [`client`]: the CLI's admin client.
//! - [`jobs`]: scheduler job definitions (validation, fire-time arithmetic).
//! - [`openapi`]: the OpenAPI 3.1 document of the REST channels (`/openapi.json`).
//! - [`sdnotify`]: systemd's notify protocol; [`reload`]: `oxbus reload` and the reload
//!   status it reads; [`systemd_units`]: `oxbus systemd install`.

pub mod admin;
pub mod bus;
pub mod cache;
pub mod cache_admin;
pub mod cid;
pub mod client;
pub mod config;
pub mod config_io;
pub mod deploy;
pub mod forwarded;
pub mod gate;
pub mod http;
pub mod jobs;
pub mod jsonrpc;
pub mod openapi;
pub mod pool;
pub mod process;
pub mod proxy_cmd;
pub mod python;
pub mod quickstart;
pub mod reload;
pub mod router;
pub mod scheduler;
pub mod sdnotify;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod systemd_units;
pub mod watch;

/// Installs the log subscriber: `level` is a level (`info`) or a target list
/// (`info,oxbus_supervisor::http=debug`).
pub fn init_logging(level: &str) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter: tracing_subscriber::filter::Targets = level
        .parse()
        .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init()
        .map_err(|e| e.to_string())
}
