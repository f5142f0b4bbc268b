//! The settings' unit tests: parsing, environment overrides, defaults and limits.

use super::*;
use crate::model::channel::{ChannelType, DataFormat};

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Settings> {
    Settings::from_toml(
        text,
        Path::new("test.toml"),
        Path::new("/base"),
        env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
    )
}

#[test]
fn defaults_and_channels() {
    let s = parse(
        r#"
        [server]
        workers = 2
        [[channels]]
        url_path = "/echo"
        methods = ["POST"]
        service = "demo.echo"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(s.worker_count(), 2);
    assert_eq!(s.http.keepalive_timeout_ms, 75_000);
    assert_eq!(s.channels[0].data_format, DataFormat::Json);
    assert_eq!(s.services_dir(), PathBuf::from("/base/services"));
}

#[test]
fn jsonrpc_channels_have_a_type_and_a_services_list() {
    let s = parse(
        r#"
        [[channels]]
        type = "jsonrpc"
        url_path = "/rpc"
        services = ["crm.get"]
        [[channels]]
        url_path = "/echo"
        service = "demo.echo"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(s.channels[0].channel_type, ChannelType::JsonRpc);
    assert_eq!(s.channels[0].services, ["crm.get"]);
    assert_eq!(s.channels[1].channel_type, ChannelType::Rest);
    for bad in [
        "type = \"soap\"\nurl_path = \"/x\"",
        "type = \"jsonrpc\"\nurl_path = \"/x\"\nservice = \"s\"",
        "url_path = \"/x\"\nservice = \"s\"\nservices = [\"s\"]",
        "url_path = \"/x\"",
    ] {
        assert!(
            parse(&format!("[[channels]]\n{bad}"), &[]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn rss_ceiling_and_deploy_deadline_have_defaults_and_limits() {
    let s = parse("", &[]).unwrap();
    assert_eq!(s.workers.max_rss_mb, DEFAULT_MAX_RSS_MB);
    assert_eq!(s.deploy.check_timeout_ms, 10_000);
    let s = parse(
        "[workers]\nmax_rss_mb = 0\n[deploy]\ncheck_timeout_ms = 2000",
        &[],
    )
    .unwrap();
    assert_eq!((s.workers.max_rss_mb, s.deploy.check_timeout_ms), (0, 2000));
    let e = parse("[workers]\nmax_rss_mb = 10", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers.max_rss_mb = 10"), "{e}");
    let e = parse("", &[("OXBUS_DEPLOY_CHECK_TIMEOUT_MS", "0")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("deploy.check_timeout_ms = 0"), "{e}");
}

#[test]
fn more_than_eight_workers_is_refused_naming_the_limit() {
    let e = parse("[server]\nworkers = 9", &[]).unwrap_err().to_string();
    assert!(e.contains("server.workers = 9"), "{e}");
    assert!(e.contains("at most 8 Python workers"), "{e}");
    let e = parse("", &[("OXBUS_SERVER_WORKERS", "12")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 8"), "{e}");
}

#[test]
fn env_overrides_the_file() {
    let s = parse(
        "[server]\nworkers = 2\n",
        &[
            ("OXBUS_SERVER_WORKERS", "3"),
            ("OXBUS_HTTP_MAX_BODY_BYTES", "1000"),
            ("OXBUS_SERVER_PYTHON", "/opt/venv/bin/python"),
            ("OXBUS_TOKEN", "ignored: not a setting section"),
            ("OXBUS_URL", "ignored: the CLI's admin API URL"),
            ("OXBUS_SERVER", "ignored: OXBUS_URL's old name"),
        ],
    )
    .unwrap();
    assert_eq!(s.worker_count(), 3);
    assert_eq!(s.http.max_body_bytes, 1000);
    assert_eq!(s.server.python, "/opt/venv/bin/python");
}

#[test]
fn openapi_section_is_optional_and_overridable() {
    let s = parse("", &[]).unwrap();
    assert_eq!((s.openapi.title, s.openapi.version), (None, None));
    let s = parse(
        "[openapi]\ntitle = \"CRM\"\nversion = \"2.1\"\n",
        // The value is TOML, like every override: a bare 2.2 would be a number.
        &[("OXBUS_OPENAPI_VERSION", "\"2.2\"")],
    )
    .unwrap();
    assert_eq!(s.openapi.title.as_deref(), Some("CRM"));
    assert_eq!(s.openapi.version.as_deref(), Some("2.2"));
    assert!(parse("[openapi]\nservers = []\n", &[]).is_err());
}

#[test]
fn pickup_dir_is_optional_relative_and_overridable() {
    assert_eq!(parse("", &[]).unwrap().pickup_dir(), None);
    let s = parse("[pickup]\ndir = \"pickup\"", &[]).unwrap();
    assert_eq!(s.pickup_dir(), Some(PathBuf::from("/base/pickup")));
    let s = parse("[pickup]\ndir = \"/srv/drop\"", &[]).unwrap();
    assert_eq!(s.pickup_dir(), Some(PathBuf::from("/srv/drop")));
    let s = parse("", &[("OXBUS_PICKUP_DIR", "incoming")]).unwrap();
    assert_eq!(s.pickup_dir(), Some(PathBuf::from("/base/incoming")));
    // An empty override turns off the directory the file sets.
    let s = parse("[pickup]\ndir = \"pickup\"", &[("OXBUS_PICKUP_DIR", "")]).unwrap();
    assert_eq!(s.pickup_dir(), None);
    assert!(parse("[pickup]\ndirectory = \"x\"", &[]).is_err());
    assert!(parse("", &[("OXBUS_PICKUP_DIRS", "x")]).is_err());
    let e = parse("[pickup]\ndir = \"services\"", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pickup.dir") && e.contains("services directory"),
        "{e}"
    );
}

#[test]
fn trusted_proxies_are_parsed_at_load_and_a_bad_entry_is_named() {
    let s = parse("", &[]).unwrap();
    assert!(s.http.trusted_proxies.is_empty() && s.http.trusted().is_empty());
    let s = parse(
        "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1/128\"]",
        &[],
    )
    .unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(s.http.trusted().contains(ip("10.20.30.40")));
    assert!(s.http.trusted().contains(ip("::1")));
    assert!(!s.http.trusted().contains(ip("127.0.0.2")));
    // The environment: a TOML list, or a comma-separated string; empty trusts nobody.
    for value in [r#"["172.16.0.0/12", "::1"]"#, "172.16.0.0/12, ::1"] {
        let s = parse(
            "[http]\ntrusted_proxies = [\"10.0.0.0/8\"]",
            &[("OXBUS_HTTP_TRUSTED_PROXIES", value)],
        )
        .unwrap();
        assert_eq!(s.http.trusted_proxies, ["172.16.0.0/12", "::1"], "{value}");
        assert!(s.http.trusted().contains(ip("172.31.0.1")));
        assert!(!s.http.trusted().contains(ip("10.0.0.1")));
    }
    let s = parse(
        "[http]\ntrusted_proxies = [\"10.0.0.0/8\"]",
        &[("OXBUS_HTTP_TRUSTED_PROXIES", "")],
    )
    .unwrap();
    assert!(s.http.trusted().is_empty());
    let e = parse(
        "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(r#"http.trusted_proxies = "10.0.0.1/8""#) && e.contains("host bits"),
        "{e}"
    );
    let e = parse(
        "",
        &[("OXBUS_HTTP_TRUSTED_PROXIES", "10.0.0.0/8,example.com")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(r#"http.trusted_proxies = "example.com""#) && e.contains("not an IP address"),
        "{e}"
    );
    assert!(parse("[http]\ntrusted_proxies = [1]", &[]).is_err());
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    assert!(parse("[server]\nworkerz = 2", &[]).is_err());
    assert!(parse("", &[("OXBUS_HTTP_MAX_BODY_BYTEZ", "1")]).is_err());
    assert!(parse("[server]\nworkers = 0", &[]).is_err());
    let e = parse("[[channels]]\nurl_path = \"echo\"\nservice = \"x\"", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("must start with /"), "{e}");
}

#[test]
fn audit_retention_defaults_to_90_days_and_is_checked() {
    assert_eq!(parse("", &[]).unwrap().audit.retention_days, 90);
    let s = parse("[audit]\nretention_days = 7", &[]).unwrap();
    assert_eq!(s.audit.retention_days, 7);
    let s = parse("", &[("OXBUS_AUDIT_RETENTION_DAYS", "30")]).unwrap();
    assert_eq!(s.audit.retention_days, 30);
    let e = parse("[audit]\nretention_days = 0", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("audit.retention_days = 0"), "{e}");
}

#[test]
fn log_format_is_text_or_json_and_overridable() {
    assert_eq!(parse("", &[]).unwrap().server.log_format, LogFormat::Text);
    let s = parse("[server]\nlog_format = \"json\"", &[]).unwrap();
    assert_eq!(s.server.log_format, LogFormat::Json);
    let s = parse(
        "[server]\nlog_format = \"json\"",
        &[("OXBUS_SERVER_LOG_FORMAT", "text")],
    )
    .unwrap();
    assert_eq!(s.server.log_format, LogFormat::Text);
    // Anything else stops the start, naming the setting and the values it takes.
    let e = parse("", &[("OXBUS_SERVER_LOG_FORMAT", "xml")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("log_format")
            && e.contains("`text`")
            && e.contains("`json`")
            && e.contains("xml"),
        "{e}"
    );
    assert!(parse("[server]\nlog_format = \"JSON\"", &[]).is_err());
}

#[test]
fn metrics_settings_default_on_without_a_token_and_are_overridable() {
    let s = parse("", &[]).unwrap();
    assert!(s.metrics.enabled);
    assert!(s.admin.metrics_token.is_none());
    let s = parse(
        "[metrics]\nenabled = false\n[admin]\nmetrics_token = \"abcdefghijklmnopqrstuvwxyz\"\n",
        &[],
    )
    .unwrap();
    assert!(!s.metrics.enabled);
    assert_eq!(
        s.admin.metrics_token.as_ref().map(|t| t.as_str()),
        Some("abcdefghijklmnopqrstuvwxyz")
    );
    // Its Debug never shows the token.
    assert!(!format!("{s:?}").contains("abcdefghijklmnopqrstuvwxyz"));
    let s = parse(
        "[admin]\nmetrics_token = \"abcdefghijklmnopqrstuvwxyz\"\n",
        &[
            ("OXBUS_METRICS_ENABLED", "false"),
            ("OXBUS_ADMIN_METRICS_TOKEN", ""),
        ],
    )
    .unwrap();
    assert!(!s.metrics.enabled);
    assert!(s.admin.metrics_token.is_none(), "empty = no token");
    let s = parse("", &[("OXBUS_ADMIN_METRICS_TOKEN", "0123456789abcdef")]).unwrap();
    assert_eq!(
        s.admin.metrics_token.as_ref().map(|t| t.as_str()),
        Some("0123456789abcdef")
    );
}

#[test]
fn a_short_or_unprintable_metrics_token_is_refused_without_showing_it() {
    let e = parse("[admin]\nmetrics_token = \"short-secret\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin.metrics_token"), "{e}");
    assert!(e.contains("at least 16 characters"), "{e}");
    assert!(!e.contains("short-secret"), "{e}");
    let e = parse(
        "[admin]\nmetrics_token = \"with a space in the middle\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("printable ASCII"), "{e}");
    assert!(!e.contains("with a space"), "{e}");
    let e = parse("[metrics]\nenabled = \"yes\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("enabled"), "{e}");
    let e = parse("[metrics]\nenable = true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("enable"), "{e}");
}

#[test]
fn debug_mode_is_off_by_default_and_runs_one_worker_when_on() {
    let s = parse("[server]\nworkers = 4\n", &[]).unwrap();
    assert_eq!(s.debug_port(), None);
    assert_eq!(s.worker_count(), 4);
    let s = parse("[server]\nworkers = 4\n[debug]\nport = 5679\n", &[]).unwrap();
    assert_eq!(s.debug_port(), Some(5679));
    assert_eq!(s.worker_count(), 1);
    // `oxbus server --debug` and quickstart's reach it as this variable.
    let s = parse("", &[("OXBUS_DEBUG_PORT", "5680")]).unwrap();
    assert_eq!(s.debug_port(), Some(5680));
    assert_eq!(s.worker_count(), 1);
}

#[test]
fn a_debug_port_must_be_a_port() {
    let e = parse("[debug]\nport = 0\n", &[]).unwrap_err().to_string();
    assert!(e.contains("debug.port") && e.contains("1-65535"), "{e}");
    let e = parse("[debug]\nport = 70000\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("port"), "{e}");
    let e = parse("[debug]\nhost = \"0.0.0.0\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");
}
