//! The log subscriber every long-running subcommand (`server`, `quickstart`, `proxy`)
//! installs first. Formatting only: it decides nothing about what is logged.
//!
//! Two formats (`server.log_format`): `text`, tracing-subscriber's default line, and `json`,
//! one object per line for log shippers:
//!
//! ```json
//! {"time":"2026-03-01T12:00:00.123456Z","level":"info","target":"oxbus::python",
//!  "cid":"0f3a9c1e2b4d5a6f7081","service":"crm.customer.get",
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","message":"customer 7 read",
//!  "fields":{"logger":"crm"}}
//! ```
//!
//! `cid`, `service` and `trace_id` are the event's own fields or, failing that, those of the
//! innermost span that has them (a request's span names its cid, service and trace id);
//! null when neither says, or when they are empty. `fields` holds every other field of the
//! event and of its spans (the event's own win, then the innermost span's; a field that is
//! empty text counts as absent, so a worker record's empty `cid` does not hide its span's).
//! tracing's JSON formatter nests span fields under `spans` instead, which a shipper cannot
//! index by cid, hence [`JsonLines`] and the [`SpanFields`] it reads; the fmt layer's own
//! span formatting is switched off ([`NoFields`]), so a span's fields are recorded once.
//!
//! The message and every text field value are cut at [`MAX_VALUE_BYTES`] (16 KiB, on a
//! character boundary) with `…[truncated N bytes]` appended, so that one huge record (a
//! service logging a whole payload) does not make a line journald splits (its `LineMax` is
//! 48 KiB by default).

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

/// The filter of `level`, with `lapin=off` unless `level` names lapin itself: lapin logs a
/// returned message whole (body and headers) at warn and an error at every channel close;
/// `outgoing/amqp` reports those events itself, without bodies.
fn log_filter(level: &str) -> Result<tracing_subscriber::filter::Targets, LoggingError> {
    let filter: tracing_subscriber::filter::Targets =
        level.parse().map_err(|source| LoggingError::Level {
            level: level.to_owned(),
            source,
        })?;
    if level.contains("lapin") {
        return Ok(filter);
    }
    Ok(filter.with_target("lapin", tracing_subscriber::filter::LevelFilter::OFF))
}

/// Installs the log subscriber: `level` is a level (`info`) or a target list
/// (`info,oxbus_supervisor::edge::http=debug`). When standard error is the journal (systemd's
/// `JOURNAL_STREAM` names it), every line starts with its syslog priority (`<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p` filters by level.
///
/// With `format` [`LogFormat::Json`] every line is one JSON object ([`JsonLines`]) and no
/// priority prefix is written, so that the line stays JSON in the journal too.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), LoggingError> {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(level)?;
    if format == LogFormat::Json {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(NoFields)
            .event_format(JsonLines);
        // One filter over both layers: a span the level leaves out is never built (the
        // request spans on the hot path are debug spans).
        return tracing_subscriber::registry()
            .with(SpanFieldsLayer.and_then(fmt).with_filter(filter))
            .try_init()
            .map_err(LoggingError::Init);
    }
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

pub use crate::config::LogFormat;

/// A span's fields as values, kept in its extensions by [`SpanFieldsLayer`] for
/// [`JsonLines`].
#[derive(Debug, Default)]
pub struct SpanFields(serde_json::Map<String, serde_json::Value>);

/// Records every span's fields (and later `record`s of them) as [`SpanFields`].
struct SpanFieldsLayer;

impl<S> tracing_subscriber::Layer<S> for SpanFieldsLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut FieldMap(&mut fields.0));
        span.extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut FieldMap(&mut fields.0));
        }
    }
}

/// Collects fields as JSON values: numbers and booleans as such, everything else as text.
struct FieldMap<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for FieldMap<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

/// The span formatter of the JSON layer: formats nothing. [`JsonLines`] reads a span's
/// fields from [`SpanFields`], so the fmt layer's own copy of them (its `FormattedFields`,
/// built for every span) would only cost a second formatting.
pub struct NoFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for NoFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: tracing_subscriber::fmt::format::Writer<'writer>,
        _fields: R,
    ) -> std::fmt::Result {
        Ok(())
    }
}

/// The longest message or text field value a JSON line carries whole, counted as written
/// (after JSON escaping: a control character takes 6 bytes, `"` and `\\` 2).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// A line longer than this (journald's LineMax is 48 KiB) carries its `fields` as a count
/// of what was left out, so it is never split into pieces that are not JSON.
pub const MAX_LINE_BYTES: usize = 44 * 1024;

/// How many bytes `c` takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Cuts `s` to [`MAX_VALUE_BYTES`] as written (on a character boundary) and says how much
/// was cut.
fn cap(s: &mut String) {
    let mut written = 0;
    let mut cut = None;
    for (i, c) in s.char_indices() {
        written += escaped_len(c);
        if written > MAX_VALUE_BYTES {
            cut = Some(i);
            break;
        }
    }
    let Some(cut) = cut else {
        return;
    };
    let dropped = s.len() - cut;
    s.truncate(cut);
    use std::fmt::Write as _;
    let _ = write!(s, "…[truncated {dropped} bytes]");
}

/// Whether a field's value says nothing (empty text): a span's value of it shows instead.
fn is_empty_value(v: &serde_json::Value) -> bool {
    matches!(v, serde_json::Value::String(s) if s.is_empty())
}

/// The target of a worker's log records.
const PYTHON_TARGET: &str = "oxbus::python";

/// The fields the JSON line has at its top level (when the event or a span names them).
const TOP_LEVEL: [&str; 3] = ["cid", "service", "trace_id"];

/// The `json` line format: see the module documentation.
pub struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = serde_json::Map::new();
        event.record(&mut FieldMap(&mut fields));
        if let Some(scope) = ctx.event_scope() {
            // Innermost first: a field already there (the event's, an inner span's) wins,
            // unless it is empty.
            for span in scope {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in span_fields {
                        let empty = TOP_LEVEL.contains(&k.as_str())
                            && fields.get(k).is_some_and(is_empty_value);
                        if empty || !fields.contains_key(k) {
                            fields.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        let line = json_line(
            &chrono::Utc::now(),
            event.metadata().level(),
            event.metadata().target(),
            fields,
        );
        writeln!(writer, "{line}")
    }
}

/// One JSON log line from an event's level, target and fields (its spans' merged in).
fn json_line(
    time: &chrono::DateTime<chrono::Utc>,
    level: &tracing::Level,
    target: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    use serde_json::Value;
    let mut message = match fields.remove("message") {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    cap(&mut message);
    // A worker record's `extra=` fields come as one JSON object text (lifecycle/connection.rs
    // emit_log): written as the object they are, so a shipper can index them. An object
    // longer than a value may be (nested values, many keys) stays its text, cut below like
    // any text field: one record's fields must not make the line too long to keep.
    if target == PYTHON_TARGET
        && let Some(Value::String(text)) = fields.get("extra")
        && text.len() <= MAX_VALUE_BYTES
        && let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(text)
    {
        fields.insert("extra".to_owned(), Value::Object(extra));
    }
    for v in fields.values_mut() {
        if let Value::String(s) = v {
            cap(s);
        }
    }
    // Records bridged from the `log` crate name their real target in a field.
    let target = match fields.remove("log.target") {
        Some(Value::String(t)) => t,
        _ => target.to_owned(),
    };
    fields.retain(|k, _| !k.starts_with("log."));
    let mut top = |key: &str| match fields.remove(key) {
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(v) => v,
        None => Value::Null,
    };
    let (cid, service, trace_id) = (top(TOP_LEVEL[0]), top(TOP_LEVEL[1]), top(TOP_LEVEL[2]));
    let level = match *level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    };
    // Written key by key, in this order (a JSON map would sort them): what a reader scans
    // for first comes first.
    let text = |v: &str| Value::from(v).to_string();
    let time = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let write = |fields: Value| {
        format!(
            r#"{{"time":{},"level":"{level}","target":{},"cid":{cid},"service":{service},"trace_id":{trace_id},"message":{},"fields":{fields}}}"#,
            text(&time),
            text(&target),
            text(&message),
        )
    };
    let n = fields.len();
    let line = write(Value::Object(fields));
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    // Several long values: the line keeps its message and says what it left out.
    write(serde_json::json!({ "dropped_fields": n, "line_bytes": line.len() }))
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
    fn lapin_is_off_unless_named() {
        use tracing::Level;
        let f = super::log_filter("info").unwrap();
        assert!(!f.would_enable("lapin::channel", &Level::ERROR));
        assert!(f.would_enable("oxbus_supervisor::outgoing::amqp", &Level::INFO));
        let f = super::log_filter("debug,oxbus_supervisor=trace").unwrap();
        assert!(!f.would_enable("lapin::returned_messages", &Level::WARN));
        let f = super::log_filter("info,lapin=warn").unwrap();
        assert!(f.would_enable("lapin::returned_messages", &Level::WARN));
        assert!(!f.would_enable("lapin::channel", &Level::INFO));
    }

    use serde_json::{Value, json};

    fn line(level: tracing::Level, target: &str, fields: Value) -> Value {
        let time = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00.5+01:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let Value::Object(fields) = fields else {
            panic!("fields must be an object")
        };
        let text = super::json_line(&time, &level, target, fields);
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.starts_with(r#"{"time":"#), "{text}");
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_json_line_has_the_known_keys_at_the_top() {
        let v = line(
            tracing::Level::WARN,
            "oxbus::python",
            json!({"message": "customer 7 \"read\"\nnext line", "cid": "0f3a", "service": "crm.get",
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "logger": "crm", "n": 7}),
        );
        assert_eq!(
            v,
            json!({
                "time": "2026-03-01T11:00:00.500000Z",
                "level": "warn",
                "target": "oxbus::python",
                "cid": "0f3a",
                "service": "crm.get",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "message": "customer 7 \"read\"\nnext line",
                "fields": {"logger": "crm", "n": 7},
            })
        );
    }

    #[test]
    fn a_worker_records_extra_fields_are_an_object() {
        let v = line(
            tracing::Level::INFO,
            "oxbus::python",
            json!({"message": "order placed", "cid": "0f3a", "logger": "crm",
                   "extra": r#"{"order":7,"who":{"name":"Ann"},"ok":true}"#}),
        );
        assert_eq!(
            v["fields"],
            json!({"logger": "crm", "extra": {"order": 7, "who": {"name": "Ann"}, "ok": true}})
        );
        // Only a worker record's: another target's `extra` text stays text.
        let v = line(
            tracing::Level::INFO,
            "oxbus_supervisor::edge::http",
            json!({"message": "x", "extra": r#"{"order":7}"#}),
        );
        assert_eq!(v["fields"], json!({"extra": "{\"order\":7}"}));
    }

    #[test]
    fn unknown_or_empty_context_is_null_and_log_records_keep_their_target() {
        let v = line(
            tracing::Level::INFO,
            "log",
            json!({"message": "from the log crate", "cid": "", "log.target": "sqlx::query",
                   "log.module_path": "sqlx", "log.line": 3}),
        );
        assert_eq!(v["target"], "sqlx::query");
        assert_eq!(v["cid"], Value::Null);
        assert_eq!(v["service"], Value::Null);
        assert_eq!(v["trace_id"], Value::Null);
        assert_eq!(v["level"], "info");
        assert_eq!(v["fields"], json!({}));
    }

    /// The JSON lines `f` logs through the JSON layer as `init_logging` builds it, and what
    /// the fmt layer's own span formatter (`FormattedFields`) held for each event's spans.
    fn capture(f: impl FnOnce()) -> (Vec<Value>, Vec<String>) {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::FormattedFields;
        use tracing_subscriber::prelude::*;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        /// Reads the fmt layer's formatted span fields at every event.
        struct Probe(Arc<Mutex<Vec<String>>>);
        impl<S> tracing_subscriber::Layer<S> for Probe
        where
            S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                for span in ctx.event_scope(event).into_iter().flatten() {
                    let ext = span.extensions();
                    let formatted = ext
                        .get::<FormattedFields<super::NoFields>>()
                        .expect("the fmt layer keeps its formatted fields");
                    self.0.lock().unwrap().push(formatted.fields.clone());
                }
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(super::NoFields)
            .event_format(super::JsonLines);
        let formatted = Arc::new(Mutex::new(Vec::new()));
        let filter: tracing_subscriber::filter::Targets = "debug".parse().unwrap();
        let subscriber = tracing_subscriber::registry().with(
            super::SpanFieldsLayer
                .and_then(fmt)
                .and_then(Probe(formatted.clone()))
                .with_filter(filter),
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let formatted = formatted.lock().unwrap().clone();
        (lines, formatted)
    }

    #[test]
    fn span_fields_reach_the_line_and_the_events_own_win() {
        let (lines, formatted) = capture(|| {
            let outer = tracing::debug_span!("worker", id = 3, service = "outer.svc");
            let _o = outer.enter();
            let span = tracing::debug_span!("request", cid = "c1", service = "demo.echo",
                trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736");
            let _e = span.enter();
            span.record("service", "demo.echo");
            tracing::warn!(status = 504, "request deadline passed");
            tracing::info!(cid = "own", "the event's cid wins");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["cid"], "c1");
        assert_eq!(lines[0]["service"], "demo.echo", "the innermost span's");
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[0]["message"], "request deadline passed");
        assert_eq!(lines[0]["fields"], json!({"status": 504, "id": 3}));
        assert_eq!(lines[1]["cid"], "own");
        // The spans were formatted once, into SpanFields: the fmt layer's copy is empty.
        assert_eq!(formatted.len(), 4, "two events in two spans each");
        assert!(formatted.iter().all(String::is_empty), "{formatted:?}");
    }

    #[test]
    fn an_events_empty_field_does_not_hide_its_spans() {
        let (lines, _) = capture(|| {
            {
                let span = tracing::debug_span!("request", cid = "c1", service = "demo.echo",
                    trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736", note = "span's");
                let _e = span.enter();
                // As connection.rs emits a worker record without a cid or service.
                let (cid, service) = ("", "");
                tracing::info!(target: "oxbus::python", cid, service, note = "", "record");
            }
            tracing::info!(cid = "", "no span: still null");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["cid"], "c1", "{}", lines[0]);
        assert_eq!(lines[0]["service"], "demo.echo", "{}", lines[0]);
        // Only the top-level fields take a span's value: the event's own empty `note` stays.
        assert_eq!(lines[0]["fields"]["note"], "", "{}", lines[0]);
        assert_eq!(lines[1]["cid"], Value::Null, "{}", lines[1]);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        use super::MAX_VALUE_BYTES;
        // 3-byte characters: MAX_VALUE_BYTES (16384) falls inside one.
        let long = "\u{20ac}".repeat(10_000);
        let v = line(
            tracing::Level::INFO,
            "oxbus::python",
            json!({"message": long, "cid": "c".repeat(20_000), "short": "kept", "n": 7}),
        );
        let cut = MAX_VALUE_BYTES / 3 * 3;
        let expect = format!("{}…[truncated {} bytes]", &long[..cut], long.len() - cut);
        assert_eq!(v["message"], expect.as_str());
        assert_eq!(
            v["cid"],
            format!("{}…[truncated 3616 bytes]", "c".repeat(MAX_VALUE_BYTES)).as_str()
        );
        assert_eq!(v["fields"]["short"], "kept");
        assert_eq!(v["fields"]["n"], 7);
        let v = line(tracing::Level::INFO, "t", json!({ "payload": long }));
        assert_eq!(v["fields"]["payload"], expect.as_str());
        // Escaping counts: 16 KiB of control characters is cut at a sixth of it (6 bytes each
        // as written), so the written value stays within the limit.
        let ctl = "\u{1}".repeat(MAX_VALUE_BYTES);
        let v = line(tracing::Level::INFO, "t", json!({ "message": ctl }));
        let kept = v["message"].as_str().unwrap();
        assert!(kept.starts_with(&"\u{1}".repeat(MAX_VALUE_BYTES / 6)));
        assert!(kept.ends_with(&format!(
            "…[truncated {} bytes]",
            MAX_VALUE_BYTES - MAX_VALUE_BYTES / 6
        )));
        // Several long values: the line keeps its message and counts the fields left out.
        let text = super::json_line(
            &chrono::Utc::now(),
            &tracing::Level::INFO,
            "t",
            json!({"message": long, "a": long, "b": long, "c": long})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(text.len() <= super::MAX_LINE_BYTES, "{}", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], expect.as_str());
        assert_eq!(v["fields"]["dropped_fields"], 3);
        // At the limit: whole.
        let exact = "x".repeat(MAX_VALUE_BYTES);
        let v = line(tracing::Level::INFO, "t", json!({ "message": exact }));
        assert_eq!(v["message"], exact.as_str());
        // The whole line stays well within journald's LineMax (48 KiB).
        let text = super::json_line(
            &chrono::Utc::now(),
            &tracing::Level::INFO,
            "t",
            json!({"message": "m".repeat(1 << 20)})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(text.len() < MAX_VALUE_BYTES + 400, "{}", text.len());
    }

    #[test]
    fn a_long_extra_is_capped_text_and_the_other_fields_stay() {
        use super::{MAX_LINE_BYTES, MAX_VALUE_BYTES, PYTHON_TARGET};
        let nested = json!({ "rows": ["x".repeat(1 << 20)] }).to_string();
        let many: serde_json::Map<String, Value> = (0..100)
            .map(|i| (format!("k{i}"), Value::from("v".repeat(1000))))
            .collect();
        for extra in [nested, Value::Object(many).to_string()] {
            let fields = json!({"message": "m", "logger": "app", "extra": extra});
            let text = super::json_line(
                &chrono::Utc::now(),
                &tracing::Level::INFO,
                PYTHON_TARGET,
                fields.as_object().unwrap().clone(),
            );
            assert!(text.len() < MAX_LINE_BYTES, "{}", text.len());
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["fields"]["logger"], "app", "{text:.300}");
            let kept = v["fields"]["extra"].as_str().unwrap();
            assert!(kept.len() < MAX_VALUE_BYTES + 40, "{}", kept.len());
            assert!(kept.contains("…[truncated "), "{kept:.100}");
        }
        // A short one stays an object.
        let v = line(
            tracing::Level::INFO,
            PYTHON_TARGET,
            json!({"message": "m", "extra": r#"{"order":7,"who":{"name":"Ann"}}"#}),
        );
        assert_eq!(
            v["fields"]["extra"],
            json!({"order": 7, "who": {"name": "Ann"}})
        );
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(super::journal_stream_is("8:1234", 8, 1234));
        assert!(!super::journal_stream_is("8:1234", 8, 1235));
        assert!(!super::journal_stream_is("8-1234", 8, 1234));
        assert!(!super::journal_stream_is("", 8, 1234));
    }
}
