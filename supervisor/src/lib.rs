//! The Oxbus server ("supervisor"): owns every socket, supervises the Python workers and
//! dispatches each invocation to one of them over the IPC protocol of `oxbus-ipc`.
//!
//! - [`config`]: settings (TOML + `OXBUS_*` overrides) and their validation.
//! - [`router`]: REST channels, `{param}` paths, 404 vs 405; [`gate`]: what a channel checks
//!   before its service runs (allow lists, rate limits, security definitions).
//! - [`http`]: the HTTP edge (limits, timeouts, JSON errors, cids); [`head_gate`]: the
//!   request-head checks it shares with `oxbus proxy`; [`json_depth`]: the JSON nesting
//!   limit; [`forwarded`]: the
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
pub mod head_gate;
pub mod http;
pub mod jobs;
pub mod json_depth;
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
/// (`info,oxbus_supervisor::http=debug`). When standard error is the journal (systemd's
/// `JOURNAL_STREAM` names it), every line starts with its syslog priority (`<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p` filters by level.
pub fn init_logging(level: &str) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter: tracing_subscriber::filter::Targets = level
        .parse()
        .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let journal = stderr_is_journal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .event_format(Priority {
            prefix: journal,
            inner: tracing_subscriber::fmt::format(),
        });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init()
        .map_err(|e| e.to_string())
}

/// Whether standard error is the stream systemd's `JOURNAL_STREAM` (`DEV:INODE`) names.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| journal_stream_is(&stream, m.dev(), m.ino()))
}

/// Whether `JOURNAL_STREAM`'s value names the file `dev`/`ino`.
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The default line format, with the syslog priority in front when `prefix` is set.
struct Priority<F> {
    prefix: bool,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Priority<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.prefix {
            let p = match *event.metadata().level() {
                tracing::Level::ERROR => 3,
                tracing::Level::WARN => 4,
                tracing::Level::INFO => 6,
                _ => 7,
            };
            write!(writer, "<{p}>")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(super::journal_stream_is("8:1234", 8, 1234));
        assert!(!super::journal_stream_is("8:1234", 8, 1235));
        assert!(!super::journal_stream_is("8-1234", 8, 1234));
        assert!(!super::journal_stream_is("", 8, 1234));
    }
}
