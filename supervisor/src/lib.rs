//! The Oxbus server ("supervisor"): owns every socket, supervises the Python workers and
//! dispatches each invocation to one of them over the IPC protocol of `oxbus-ipc`.
//!
//! One folder per concern (ARCHITECTURE.md has the map and the layer rules):
//! - [`edge`]: the HTTP edge — head checks, routing table, gate, JSON-RPC, OpenAPI.
//! - [`lifecycle`]: the supervisor event loop, the worker pool, processes, embedded Python.
//! - [`deploy`]: hot deployment and deploy-on-save.
//! - [`cluster`]: the cluster bus, following the store (`sync`), the on-disk snapshot.
//! - [`scheduler`]: job definitions and the scheduler runtime.
//! - [`store`]: the config store (every SQL statement of the crate).
//! - [`admin`]: the admin API, one file per resource; config export/import.
//! - [`cli`]: the `oxbus` subcommands other than `server`.
//! - [`config`]: `server.toml` settings; [`secrets`]: sealing secrets under a key file.
//! - [`boot`]: the only module that knows every subsystem: builds the handles, wires them.
//! - [`node`]: this server's own state (name, readiness, store health, applied version).
//! - [`random`]: small random values from the OS.
//! - The named caches are their own crate, `oxbus-cache`.

pub mod admin;
pub mod boot;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod edge;
pub mod lifecycle;
pub mod model;
pub mod node;
pub mod random;
pub mod scheduler;
pub mod secrets;
pub mod store;

/// Installs the log subscriber: `level` is a level (`info`) or a target list
/// (`info,oxbus_supervisor::edge::http=debug`). When standard error is the journal (systemd's
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
