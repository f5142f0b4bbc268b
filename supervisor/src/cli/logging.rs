//! The log subscriber every long-running subcommand (`server`, `quickstart`, `proxy`)
//! installs first. Formatting only: it decides nothing about what is logged.

/// Why the log subscriber was not installed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `log_level` (or `OXBUS_LOG`) is not a level or a target list.
    #[error("invalid log level {level:?}: {source}")]
    Level {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// A subscriber is installed already.
    #[error("{0}")]
    Init(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the log subscriber: `level` is a level (`info`) or a target list
/// (`info,oxbus_supervisor::edge::http=debug`). When standard error is the journal (systemd's
/// `JOURNAL_STREAM` names it), every line starts with its syslog priority (`<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p` filters by level.
pub fn init_logging(level: &str) -> Result<(), LoggingError> {
    use tracing_subscriber::prelude::*;
    let filter: tracing_subscriber::filter::Targets =
        level.parse().map_err(|source| LoggingError::Level {
            level: level.to_owned(),
            source,
        })?;
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
        .map_err(LoggingError::Init)
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
