//! Outgoing connections as plain data: a REST connection ([`RestConn`]) and an SQL connection
//! ([`SqlConn`]), what the store holds and an export carries — credentials only sealed
//! (`oxbus1:…`, under [`RestConn::seal_name`] / [`SqlConn::seal_name`]) — their validation,
//! and the parse of what an operator sends ([`parse_rest_input`], [`parse_sql_input`]: the
//! plaintext credential apart from the definition). No I/O and no crypto here: sealing
//! plaintext is the admin API's (`admin::outgoing::build`), opening it and using the
//! connection is `outgoing`'s. docs/OUTGOING.md describes every field.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::model::object::InvalidObject;

/// How a REST connection's request bodies are encoded by the worker, and the
/// `Content-Type` the server sets when the caller set none.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// `application/json`; answers parsed into `.data` when they are JSON.
    #[default]
    Json,
    /// Bytes as given, no `Content-Type` of the server's.
    Raw,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// TLS options of an `https://` connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// Verify the server's certificate chain and name (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// A PEM file of CA certificates trusted instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A PEM client certificate (chain) presented to the server, with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<String>,
    /// The PEM private key of `client_cert_file` (a file on the server; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            verify: true,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// How a REST connection authenticates. The secret part of each (`password`, `key`, `token`,
/// `client_secret` as an operator sends it) is stored only sealed, in `sealed`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RestAuth {
    #[default]
    None,
    /// HTTP Basic: `username` and the sealed password.
    Basic {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed: Option<String>,
    },
    /// An API key sent in `header` (default `X-API-Key`).
    Apikey {
        #[serde(default = "default_key_header")]
        header: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed: Option<String>,
    },
    /// A static `Authorization: Bearer` token.
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed: Option<String>,
    },
    /// OAuth2 client credentials: a token from `token_url`, cached and refreshed
    /// `refresh_before_s` seconds before it expires (and at once after a 401).
    Oauth2 {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default = "default_refresh_before_s")]
        refresh_before_s: u64,
        /// The client secret, sealed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed: Option<String>,
    },
}

impl RestAuth {
    /// The sealed secret material, if any.
    pub fn sealed(&self) -> Option<&str> {
        match self {
            RestAuth::None => None,
            RestAuth::Basic { sealed, .. }
            | RestAuth::Apikey { sealed, .. }
            | RestAuth::Bearer { sealed }
            | RestAuth::Oauth2 { sealed, .. } => sealed.as_deref(),
        }
    }

    /// The name of the plaintext field an operator sends for this kind.
    pub fn plain_field(&self) -> Option<&'static str> {
        match self {
            RestAuth::None => None,
            RestAuth::Basic { .. } => Some("password"),
            RestAuth::Apikey { .. } => Some("key"),
            RestAuth::Bearer { .. } => Some("token"),
            RestAuth::Oauth2 { .. } => Some("client_secret"),
        }
    }
}

/// An outgoing REST (plain HTTP) connection: `self.out.rest[name]` of the services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestConn {
    pub name: String,
    /// `http://host[:port]` or `https://host[:port]`, no path.
    pub address: String,
    /// The path every call goes to, with `{placeholders}` filled from a call's params.
    #[serde(default = "default_url_path")]
    pub url_path: String,
    #[serde(default)]
    pub data_format: DataFormat,
    /// The whole call (connect, send, answer), milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Connections per server (shared by its workers).
    #[serde(default = "default_rest_pool_size")]
    pub pool_size: u32,
    /// How long a call waits for a free connection when all are in use.
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default)]
    pub auth: RestAuth,
    /// Headers every call carries (a call's own override them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Retries of idempotent methods after a broken connection, and of any method whose
    /// connect was refused (nothing was sent).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry's delay; doubled for each next one.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default = "default_ping_method")]
    pub ping_method: String,
    #[serde(default = "default_url_path")]
    pub ping_path: String,
    /// An answer's body larger than this fails the call (`too_large`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

/// The database engines an SQL connection speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqlEngine {
    Postgresql,
    /// MySQL and MariaDB.
    Mysql,
    Sqlite,
}

impl SqlEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            SqlEngine::Postgresql => "postgresql",
            SqlEngine::Mysql => "mysql",
            SqlEngine::Sqlite => "sqlite",
        }
    }
}

/// An outgoing SQL connection: `self.out.sql[name]` of the services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqlConn {
    pub name: String,
    pub engine: SqlEngine,
    /// `postgres://user@host:port/db`, `mysql://user@host:port/db`, `sqlite:///path/to.db`:
    /// never with a password (that is `password`, sealed).
    pub url: String,
    /// The password, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub pool_min: u32,
    #[serde(default = "default_sql_pool_max")]
    pub pool_max: u32,
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
    /// A statement running longer fails `timeout` (and is cancelled where the engine can).
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// The most rows one `execute` returns; more fail `too_large` (use a stream).
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// A transaction or stream no call used for this long is rolled back / closed.
    #[serde(default = "default_session_idle_ms")]
    pub session_idle_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_key_header() -> String {
    "X-API-Key".into()
}
fn default_refresh_before_s() -> u64 {
    30
}
fn default_url_path() -> String {
    "/".into()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_rest_pool_size() -> u32 {
    20
}
fn default_pool_wait_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff_ms() -> u64 {
    100
}
fn default_ping_method() -> String {
    "HEAD".into()
}
fn default_max_response_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_sql_pool_max() -> u32 {
    10
}
fn default_statement_timeout_ms() -> u64 {
    30_000
}
fn default_max_rows() -> u64 {
    10_000
}
fn default_session_idle_ms() -> u64 {
    60_000
}

/// The longest timeout a connection takes (one hour), milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The largest `max_response_bytes` (63 MiB): an answer goes to the worker in one IPC frame
/// (at most `oxbus_ipc::MAX_PAYLOAD`, 64 MiB), and 1 MiB is left for its status and headers.
pub const MAX_RESPONSE_BYTES: u64 = (oxbus_ipc::MAX_PAYLOAD - (1 << 20)) as u64;
/// The methods a REST ping may use.
pub const PING_METHODS: [&str; 7] = ["HEAD", "GET", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];
/// Default headers the client sets itself (framing and routing), refused in `headers`.
const RESERVED_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];
/// Default headers that carry credentials: refused in `headers` (they go in `auth`, sealed).
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];
/// Headers the server sets on every call (request id and trace context) beside
/// [`RESERVED_HEADERS`]: an apikey auth's `header` may be none of them.
const TRACE_HEADERS: [&str; 3] = ["x-oxbus-cid", "traceparent", "tracestate"];
/// What every sealed value starts with (`secrets`' format; checked here by shape only).
pub(crate) const SEALED_PREFIX: &str = "oxbus1:";

impl RestConn {
    /// The name its credential is sealed under (the sealed value's associated data).
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/rest/{name}")
    }

    /// Checks what a stored REST connection must satisfy; the message names the connection
    /// and the field.
    pub fn validate(&self) -> Result<(), InvalidObject> {
        validate_name(&self.name)?;
        self.check()
            .map_err(|m| InvalidObject(format!("REST connection {}: {m}", self.name)))
    }

    fn check(&self) -> Result<(), String> {
        let https = check_address(&self.address).map_err(|m| format!("address: {m}"))?;
        check_path(&self.url_path).map_err(|m| format!("url_path: {m}"))?;
        check_path(&self.ping_path).map_err(|m| format!("ping_path: {m}"))?;
        timeout("timeout_ms", self.timeout_ms, 1)?;
        timeout("connect_timeout_ms", self.connect_timeout_ms, 1)?;
        timeout("pool_wait_ms", self.pool_wait_ms, 0)?;
        timeout("retry_backoff_ms", self.retry_backoff_ms, 0)?;
        if !(1..=1000).contains(&self.pool_size) {
            return Err(format!("pool_size: {} is not 1..=1000", self.pool_size));
        }
        if self.retries > 10 {
            return Err(format!("retries: {} is more than 10", self.retries));
        }
        if !PING_METHODS.contains(&self.ping_method.as_str()) {
            return Err(format!(
                "ping_method: {:?} is not one of {}",
                self.ping_method,
                PING_METHODS.join(", ")
            ));
        }
        if !(1..=MAX_RESPONSE_BYTES).contains(&self.max_response_bytes) {
            return Err(format!(
                "max_response_bytes: {} is not 1..={MAX_RESPONSE_BYTES} (63 MiB: the answer must fit in one IPC frame of 64 MiB with its headers)",
                self.max_response_bytes
            ));
        }
        for (name, value) in &self.headers {
            if !is_token(name) {
                return Err(format!("headers: {name:?} is not a valid header name"));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "headers: {name} is set by the connection itself and cannot be given"
                ));
            }
            if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "headers: {name} carries a credential, which would be stored in clear: \
                     give it in auth (stored sealed)"
                ));
            }
            if value.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
                return Err(format!(
                    "headers: the value of {name} holds a line break or NUL"
                ));
            }
        }
        let tls = &self.tls;
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            return Err(
                "tls: client_cert_file and client_key_file are given together or not at all".into(),
            );
        }
        for (field, file) in [
            ("tls.ca_file", &tls.ca_file),
            ("tls.client_cert_file", &tls.client_cert_file),
            ("tls.client_key_file", &tls.client_key_file),
        ] {
            if file.as_deref().is_some_and(|f| f.trim().is_empty()) {
                return Err(format!("{field}: must not be empty"));
            }
        }
        if !https && *tls != TlsOptions::default() {
            return Err(format!(
                "tls: options are for https:// addresses; {} is http://",
                self.address
            ));
        }
        self.check_auth()
    }

    fn check_auth(&self) -> Result<(), String> {
        match &self.auth {
            RestAuth::None => return Ok(()),
            RestAuth::Basic { username, .. } => {
                if username.is_empty() || username.contains(':') {
                    return Err("auth.username: a basic auth needs a username without ':'".into());
                }
            }
            RestAuth::Apikey { header, .. } => {
                if !is_token(header) {
                    return Err(format!(
                        "auth.header: {header:?} is not a valid header name"
                    ));
                }
                let lower = header.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&lower.as_str())
                    || TRACE_HEADERS.contains(&lower.as_str())
                {
                    return Err(format!(
                        "auth.header: {header} is set by the connection itself and cannot carry the key"
                    ));
                }
            }
            RestAuth::Bearer { .. } => {}
            RestAuth::Oauth2 {
                token_url,
                client_id,
                refresh_before_s,
                ..
            } => {
                let (base, path) = match token_url.find("://").and_then(|i| {
                    token_url[i + 3..]
                        .find('/')
                        .map(|j| token_url.split_at(i + 3 + j))
                }) {
                    Some(split) => split,
                    None => (token_url.as_str(), ""),
                };
                check_address(base).map_err(|m| format!("auth.token_url: {m}"))?;
                if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(
                        "auth.token_url: the path holds spaces or control characters".into(),
                    );
                }
                if path.contains(['?', '#']) {
                    return Err(
                        "auth.token_url: a query string or fragment is refused (it would be \
                         stored in clear): the client secret goes in auth.client_secret, the \
                         scope in auth.scope"
                            .into(),
                    );
                }
                if client_id.is_empty() {
                    return Err("auth.client_id: must not be empty".into());
                }
                if *refresh_before_s > 3600 {
                    return Err(format!(
                        "auth.refresh_before_s: {refresh_before_s} is more than 3600"
                    ));
                }
            }
        }
        let field = self.auth.plain_field().expect("an auth with a secret");
        match self.auth.sealed() {
            None => Err(format!(
                "auth.{field}: missing (a {} auth needs it; give auth.{field}, or auth.sealed as exported)",
                self.auth.type_name()
            )),
            Some(s) if !s.starts_with(SEALED_PREFIX) => {
                Err("auth.sealed: not a sealed value (oxbus1:…)".into())
            }
            Some(_) => Ok(()),
        }
    }
}

impl RestAuth {
    /// Its `type` as written in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            RestAuth::None => "none",
            RestAuth::Basic { .. } => "basic",
            RestAuth::Apikey { .. } => "apikey",
            RestAuth::Bearer { .. } => "bearer",
            RestAuth::Oauth2 { .. } => "oauth2",
        }
    }

    fn sealed_mut(&mut self) -> Option<&mut Option<String>> {
        match self {
            RestAuth::None => None,
            RestAuth::Basic { sealed, .. }
            | RestAuth::Apikey { sealed, .. }
            | RestAuth::Bearer { sealed }
            | RestAuth::Oauth2 { sealed, .. } => Some(sealed),
        }
    }
}

impl SqlConn {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/sql/{name}")
    }

    /// Checks what a stored SQL connection must satisfy; the message names the connection
    /// and the field.
    pub fn validate(&self) -> Result<(), InvalidObject> {
        validate_name(&self.name)?;
        self.check()
            .map_err(|m| InvalidObject(format!("SQL connection {}: {m}", self.name)))
    }

    fn check(&self) -> Result<(), String> {
        check_sql_url(self.engine, &self.url).map_err(|m| format!("url: {m}"))?;
        if !(1..=100).contains(&self.pool_max) {
            return Err(format!("pool_max: {} is not 1..=100", self.pool_max));
        }
        if self.pool_min > self.pool_max {
            return Err(format!(
                "pool_min: {} is more than pool_max ({})",
                self.pool_min, self.pool_max
            ));
        }
        timeout("pool_wait_ms", self.pool_wait_ms, 0)?;
        timeout("statement_timeout_ms", self.statement_timeout_ms, 1)?;
        timeout("session_idle_ms", self.session_idle_ms, 1)?;
        if !(1..=10_000_000).contains(&self.max_rows) {
            return Err(format!("max_rows: {} is not 1..=10000000", self.max_rows));
        }
        if let Some(s) = &self.sealed
            && !s.starts_with(SEALED_PREFIX)
        {
            return Err("sealed: not a sealed value (oxbus1:…)".into());
        }
        if self.engine == SqlEngine::Sqlite && self.sealed.is_some() {
            return Err("password: an SQLite connection has no password".into());
        }
        Ok(())
    }

    /// The user named in `url` (none for SQLite or a URL without one).
    pub fn url_user(&self) -> Option<&str> {
        let rest = self.url.split_once("://")?.1;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        authority.rsplit_once('@').map(|(user, _)| user)
    }
}

/// A definition whose credential is sealed: what the admin API and an import need to seal
/// plaintext, check a sealed value and keep the stored one.
pub trait Credentialed: Sized {
    /// The name the credential is sealed under.
    fn seal_name_of(&self) -> String;
    /// The sealed credential, if any.
    fn sealed_secret(&self) -> Option<&str>;
    /// Sets the sealed credential (nothing for a REST connection without auth).
    fn set_sealed(&mut self, sealed: Option<String>);
    /// Whether a definition that gives no credential may keep `stored`'s: only while the
    /// credential would go to the same place as the same identity (REST: same auth type,
    /// scheme, host and port of `address`, and same auth identity; SQL: same engine and
    /// whole URL).
    fn keeps_secret_of(&self, stored: &Self) -> Carry;
    /// The field an operator gives the credential in (for messages).
    fn secret_field(&self) -> &'static str;
    /// What must stay unchanged for a stored credential to be kept (for messages).
    fn destination_fields(&self) -> &'static str;
}

impl Credentialed for RestConn {
    fn seal_name_of(&self) -> String {
        RestConn::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.auth.sealed()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        if let Some(slot) = self.auth.sealed_mut() {
            *slot = s;
        }
    }
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        let same_identity = match (&self.auth, &stored.auth) {
            (RestAuth::None, RestAuth::None)
            | (RestAuth::Bearer { .. }, RestAuth::Bearer { .. }) => true,
            (RestAuth::Basic { username: a, .. }, RestAuth::Basic { username: b, .. }) => a == b,
            (RestAuth::Apikey { header: a, .. }, RestAuth::Apikey { header: b, .. }) => {
                a.eq_ignore_ascii_case(b)
            }
            (
                RestAuth::Oauth2 {
                    token_url: ta,
                    client_id: ca,
                    ..
                },
                RestAuth::Oauth2 {
                    token_url: tb,
                    client_id: cb,
                    ..
                },
            ) => ta == tb && ca == cb,
            _ => return Carry::OtherKind,
        };
        let same_origin =
            origin(&self.address).is_some() && origin(&self.address) == origin(&stored.address);
        if same_identity && same_origin {
            Carry::Keep
        } else {
            Carry::DestinationChanged
        }
    }
    fn secret_field(&self) -> &'static str {
        match self.auth.plain_field() {
            Some("password") => "auth.password",
            Some("key") => "auth.key",
            Some("token") => "auth.token",
            Some(_) => "auth.client_secret",
            None => "auth",
        }
    }
    fn destination_fields(&self) -> &'static str {
        match self.auth {
            RestAuth::Basic { .. } => "the scheme, host and port of address and auth.username",
            RestAuth::Apikey { .. } => "the scheme, host and port of address and auth.header",
            RestAuth::Oauth2 { .. } => {
                "the scheme, host and port of address, auth.token_url and auth.client_id"
            }
            RestAuth::None | RestAuth::Bearer { .. } => "the scheme, host and port of address",
        }
    }
}

impl Credentialed for SqlConn {
    fn seal_name_of(&self) -> String {
        SqlConn::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        if self.engine == stored.engine && self.url == stored.url {
            Carry::Keep
        } else {
            Carry::DestinationChanged
        }
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        "the engine and the whole url"
    }
}

/// Whether an edit that gives no credential keeps the stored one
/// ([`Credentialed::keeps_secret_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// Same destination and identity: the stored sealed value is kept.
    Keep,
    /// Another kind of credential (another REST auth type): nothing is kept; the new kind's
    /// credential must be given where it needs one.
    OtherKind,
    /// The credential would go elsewhere or for someone else: it must be given again.
    DestinationChanged,
}

/// The scheme, host (lower case) and port (the scheme's default if none) of an
/// `http(s)://host[:port]` address; none if it is not one.
fn origin(address: &str) -> Option<(bool, String, u16)> {
    let https = check_address(address).ok()?;
    let rest = address.split_once("://")?.1;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if https => 443,
        None => 80,
    };
    Some((https, host.to_ascii_lowercase(), port))
}

/// What an operator sent: the definition (its `sealed` as given, if given) and the
/// plaintext credential, if given. `Debug` does not show the plaintext.
pub struct Input<T> {
    pub def: T,
    pub plain: Option<String>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("def", &self.def)
            .field("plain", &self.plain.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Parses what an operator sends for a REST connection (the admin API's body, an import's
/// entry): a [`RestConn`] whose `auth` may carry the plaintext `password` (basic), `key`
/// (apikey), `token` (bearer) or `client_secret` (oauth2) instead of `sealed`.
/// `url_name`: the name in the URL (the body's `name` may be left out, or must match).
/// `has_secret` (as answers show it) is accepted and ignored. Not validated: call
/// `validate` once the credential is sealed.
pub fn parse_rest_input(
    v: &Value,
    url_name: Option<&str>,
) -> Result<Input<RestConn>, InvalidObject> {
    let (name, mut obj) = input_object(v, url_name, "REST connection")?;
    let fail = |m: String| InvalidObject(format!("REST connection {name}: {m}"));
    let mut plain = None;
    if let Some(Value::Object(auth)) = obj.get_mut("auth") {
        let kind = auth
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned();
        let wanted = match kind.as_str() {
            "basic" => Some("password"),
            "apikey" => Some("key"),
            "bearer" => Some("token"),
            "oauth2" => Some("client_secret"),
            _ => None,
        };
        for field in ["password", "key", "token", "client_secret"] {
            let Some(value) = auth.remove(field) else {
                continue;
            };
            if Some(field) != wanted {
                return Err(fail(format!(
                    "auth.{field}: a {kind} auth takes {}",
                    wanted.map_or("no secret".to_owned(), |w| format!("auth.{w}"))
                )));
            }
            match value {
                Value::String(p) if !p.is_empty() => plain = Some(p),
                _ => return Err(fail(format!("auth.{field}: must be a non-empty string"))),
            }
        }
        if plain.is_some() && auth.contains_key("sealed") {
            return Err(fail(
                "auth: give either sealed or a plaintext secret, not both".into(),
            ));
        }
    }
    let def = from_fields(&name, &obj, json!({"address": "http://x"})).map_err(fail)?;
    Ok(Input { def, plain })
}

/// Parses what an operator sends for an SQL connection: a [`SqlConn`] with the plaintext
/// `password` instead of `sealed`; as [`parse_rest_input`] otherwise. A password in `url`
/// is refused (by `validate`).
pub fn parse_sql_input(v: &Value, url_name: Option<&str>) -> Result<Input<SqlConn>, InvalidObject> {
    let (name, mut obj) = input_object(v, url_name, "SQL connection")?;
    let fail = |m: String| InvalidObject(format!("SQL connection {name}: {m}"));
    let plain = match obj.remove("password") {
        None => None,
        Some(Value::String(p)) if !p.is_empty() => Some(p),
        Some(_) => return Err(fail("password: must be a non-empty string".into())),
    };
    if plain.is_some() && obj.contains_key("sealed") {
        return Err(fail(
            "give either sealed or a plaintext password, not both".into(),
        ));
    }
    let def = from_fields(
        &name,
        &obj,
        json!({"engine": "sqlite", "url": "sqlite://x"}),
    )
    .map_err(fail)?;
    Ok(Input { def, plain })
}

/// The body as an object with its name settled (`has_secret` dropped).
pub(crate) fn input_object(
    v: &Value,
    url_name: Option<&str>,
    what: &str,
) -> Result<(String, serde_json::Map<String, Value>), InvalidObject> {
    let Some(obj) = v.as_object() else {
        return Err(InvalidObject(format!("a {what} is a JSON object")));
    };
    let name = match (obj.get("name"), url_name) {
        (Some(Value::String(n)), Some(u)) if n != u => {
            return Err(InvalidObject(format!(
                "{what} {u}: the body names {n:?}; a connection cannot be renamed"
            )));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err(InvalidObject(format!("{what}: name must be a string"))),
        (None, Some(u)) => u.to_owned(),
        (None, None) => return Err(InvalidObject(format!("{what}: name is missing"))),
    };
    validate_name(&name)?;
    let mut obj = obj.clone();
    obj.remove("has_secret");
    obj.insert("name".into(), Value::String(name.clone()));
    Ok((name, obj))
}

/// `obj` as a `T`, each field tried alone first (beside `required`'s stand-ins) so that an
/// error names its field; serde's quoted values are left out of every message.
pub(crate) fn from_fields<T: serde::de::DeserializeOwned>(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    required: Value,
) -> Result<T, String> {
    let scrub = |e: serde_json::Error| crate::model::document::without_values(&e.to_string());
    for (k, value) in obj.iter().filter(|(k, _)| *k != "name") {
        let mut one = required.as_object().expect("an object").clone();
        one.insert("name".into(), Value::String(name.to_owned()));
        one.insert(k.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(one)) {
            return Err(format!("{k}: {}", scrub(e)));
        }
    }
    serde_json::from_value(Value::Object(obj.clone())).map_err(scrub)
}

/// `http(s)://host[:port]`: whether it is https. No path, query, fragment or userinfo.
fn check_address(address: &str) -> Result<bool, String> {
    let shown = without_userinfo(address);
    if shown != address {
        // Never quoted with its user info: it may hold a password.
        return Err(format!(
            "{shown:?} has user info (credentials go in auth): give only http(s)://host[:port]"
        ));
    }
    let (https, rest) = if let Some(r) = address.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{address:?} is not http://host[:port] or https://host[:port]"
        ));
    };
    let refuse = |what: &str| {
        Err(format!(
            "{address:?} has {what}: give only http(s)://host[:port] (the path is url_path)"
        ))
    };
    if rest.contains('@') {
        return refuse("user info (credentials go in auth)");
    }
    if rest.contains('/') {
        return refuse("a path");
    }
    if rest.contains('?') || rest.contains('#') {
        return refuse("a query or fragment");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!("{address:?}: unclosed [ of an IPv6 address"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{address:?}: [{h}] is not an IPv6 address"));
        }
        match after {
            "" => (h, None),
            p if p.starts_with(':') => (h, Some(&p[1..])),
            _ => return Err(format!("{address:?}: junk after the IPv6 address")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{address:?}: the host is empty or not a host name"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!("{address:?}: the port is not 1-65535"));
    }
    Ok(https)
}

/// `address` with the user info of its authority (`user:password@`) replaced by `***@`, so
/// that a message may quote it.
fn without_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.find("://") {
        Some(i) => address.split_at(i + 3),
        None => ("", address),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => address.to_owned(),
    }
}

/// A path: starts with `/`, no spaces or control characters, `{placeholders}` of letters,
/// digits and `_`.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} does not start with /"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(format!("{path:?} holds a space, a control character or #"));
    }
    let mut rest = path;
    while let Some(i) = rest.find(['{', '}']) {
        if rest.as_bytes()[i] == b'}' {
            return Err(format!("{path:?}: a }} without its {{"));
        }
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(format!("{path:?}: a {{ without its }}"));
        };
        let name = &after[..j];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{path:?}: {{{name}}} is not a placeholder (letters, digits, _)"
            ));
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

pub(crate) fn timeout(field: &str, ms: u64, min: u64) -> Result<(), String> {
    if ms < min || ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "{field}: {ms} ms is not {min}..={MAX_TIMEOUT_MS} (at most an hour)"
        ));
    }
    Ok(())
}

/// An HTTP token (RFC 9110 `tchar`s).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An SQL URL of `engine`'s scheme, without a password.
fn check_sql_url(engine: SqlEngine, url: &str) -> Result<(), String> {
    let schemes: &[&str] = match engine {
        SqlEngine::Postgresql => &["postgres://", "postgresql://"],
        SqlEngine::Mysql => &["mysql://", "mariadb://"],
        SqlEngine::Sqlite => &["sqlite://"],
    };
    let Some(rest) = schemes.iter().find_map(|s| url.strip_prefix(s)) else {
        return Err(format!(
            "a {} URL starts with {}",
            engine.as_str(),
            schemes.join(" or ")
        ));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL holds a space or a control character".into());
    }
    if engine == SqlEngine::Sqlite {
        if rest.is_empty() {
            return Err("sqlite:// names no file (sqlite:///path/to.db)".into());
        }
        return Ok(());
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(
            "the URL holds a password: give it as `password` (it is stored sealed), \
             the URL without it"
                .into(),
        );
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    // The drivers percent-decode the keys: `passw%6Frd=` is a password too.
    if query.split('&').any(|kv| {
        kv.split('=')
            .next()
            .is_some_and(|k| percent_decoded(k).eq_ignore_ascii_case("password"))
    }) {
        return Err(
            "the URL holds a password parameter: give it as `password` (it is stored sealed)"
                .into(),
        );
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(())
}

/// `s` with its `%XX` escapes (and `+`) decoded, bytes that are no UTF-8 replaced.
pub(crate) fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Valid connection names: 1-200 of letters, digits, `._-` (Zato's names with spaces are
/// refused: they would need quoting in every URL and command line).
pub fn validate_name(name: &str) -> Result<(), InvalidObject> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(InvalidObject(format!(
            "{name:?} is not a valid connection name (1-200 characters: letters, digits, ._-)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(v: Value) -> Result<RestConn, String> {
        let input = parse_rest_input(&v, Some("crm")).map_err(|e| e.to_string())?;
        let mut def = input.def;
        if input.plain.is_some() {
            def.set_sealed(Some("oxbus1:k:n:c".into()));
        }
        def.validate().map_err(|e| e.to_string())?;
        Ok(def)
    }

    fn refused(v: Value, field: &str) {
        let e = rest(v.clone()).expect_err(&format!("{v} refused"));
        assert!(e.contains(&format!("{field}:")), "{v}: {e}");
        assert!(e.contains("crm"), "names the connection: {e}");
    }

    #[test]
    fn a_rest_connection_takes_its_defaults() {
        let d = rest(json!({"address": "https://api.example.com:8443"})).unwrap();
        assert_eq!(d.url_path, "/");
        assert_eq!(d.timeout_ms, 10_000);
        assert_eq!(d.pool_size, 20);
        assert_eq!(d.ping_method, "HEAD");
        assert!(d.tls.verify);
        assert_eq!(d.auth, RestAuth::None);
        rest(json!({"address": "http://[::1]:80", "url_path": "/a/{id}/b/{x_2}"})).unwrap();
    }

    #[test]
    fn each_rest_rule_names_its_field() {
        let a = |extra: Value| {
            let mut v = json!({"address": "https://h"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        for bad in [
            "ftp://h",
            "https://h/path",
            "https://u:p@h",
            "https://h?q=1",
            "https://h:0",
            "https://",
            "https://h:99999",
        ] {
            refused(json!({"address": bad}), "address");
        }
        refused(a(json!({"url_path": "x"})), "url_path");
        refused(a(json!({"url_path": "/a/{b"})), "url_path");
        refused(a(json!({"url_path": "/a/{b-c}"})), "url_path");
        refused(a(json!({"url_path": "/a/}"})), "url_path");
        refused(a(json!({"ping_path": "ping"})), "ping_path");
        refused(a(json!({"timeout_ms": 0})), "timeout_ms");
        refused(
            a(json!({"connect_timeout_ms": 3_600_001})),
            "connect_timeout_ms",
        );
        refused(a(json!({"pool_size": 0})), "pool_size");
        refused(a(json!({"pool_size": 1001})), "pool_size");
        refused(a(json!({"retries": 11})), "retries");
        refused(a(json!({"ping_method": "FETCH"})), "ping_method");
        refused(a(json!({"max_response_bytes": 0})), "max_response_bytes");
        refused(
            a(json!({"max_response_bytes": (1u64 << 30) + 1})),
            "max_response_bytes",
        );
        // An answer must fit in one IPC frame (64 MiB) with its meta.
        refused(
            a(json!({"max_response_bytes": 64u64 << 20})),
            "max_response_bytes",
        );
        assert!(rest(a(json!({"max_response_bytes": 63u64 << 20}))).is_ok());
        refused(a(json!({"headers": {"Bad Name": "x"}})), "headers");
        refused(
            a(json!({"headers": {"X-A": "a\r\nInjected: 1"}})),
            "headers",
        );
        for h in ["Host", "content-length", "Transfer-Encoding", "Connection"] {
            refused(a(json!({"headers": {h: "x"}})), "headers");
        }
        refused(a(json!({"tls": {"client_cert_file": "/c.pem"}})), "tls");
        refused(
            json!({"address": "http://h", "tls": {"verify": false}}),
            "tls",
        );
        refused(a(json!({"timeout_ms": "ten"})), "timeout_ms");
        refused(
            a(json!({"auth": {"type": "basic", "password": "pw"}})),
            "auth",
        );
        refused(
            a(json!({"auth": {"type": "basic", "username": "u"}})),
            "auth.password",
        );
        refused(a(json!({"auth": {"type": "bearer"}})), "auth.token");
        refused(
            a(
                json!({"auth": {"type": "oauth2", "token_url": "ftp://t", "client_id": "c", "client_secret": "s"}}),
            ),
            "auth.token_url",
        );
        refused(
            a(
                json!({"auth": {"type": "oauth2", "token_url": "https://t/token", "client_id": "", "client_secret": "s"}}),
            ),
            "auth.client_id",
        );
        refused(
            a(json!({"auth": {"type": "basic", "username": "u", "key": "k"}})),
            "auth.key",
        );
        refused(
            a(json!({"auth": {"type": "none", "token": "t"}})),
            "auth.token",
        );
        refused(a(json!({"adress": "x"})), "adress");
        rest(a(json!({"auth": {"type": "oauth2", "token_url": "https://idp.example/oauth/token", "client_id": "c", "client_secret": "s"}})))
            .unwrap();
    }

    #[test]
    fn plaintext_and_sealed_together_are_refused_and_plaintext_is_apart() {
        let v = json!({"address": "https://h", "auth": {"type": "bearer", "token": "hunter2", "sealed": "oxbus1:a:b:c"}});
        let e = parse_rest_input(&v, Some("crm")).unwrap_err().to_string();
        assert!(e.contains("not both") && !e.contains("hunter2"), "{e}");
        let v = json!({"address": "https://h", "auth": {"type": "bearer", "token": "hunter2"}});
        let input = parse_rest_input(&v, Some("crm")).unwrap();
        assert_eq!(input.plain.as_deref(), Some("hunter2"));
        assert!(!format!("{input:?}").contains("hunter2"));
        assert!(
            !serde_json::to_string(&input.def)
                .unwrap()
                .contains("hunter2")
        );
        let e = parse_rest_input(
            &json!({"name": "other", "address": "https://h"}),
            Some("crm"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("renamed"), "{e}");
    }

    fn sql(v: Value) -> Result<SqlConn, String> {
        let input = parse_sql_input(&v, Some("db")).map_err(|e| e.to_string())?;
        input.def.validate().map_err(|e| e.to_string())?;
        Ok(input.def)
    }

    #[test]
    fn each_sql_rule_names_its_field() {
        let ok = sql(json!({"engine": "postgresql", "url": "postgres://app@127.0.0.1:5432/test"}))
            .unwrap();
        assert_eq!(ok.url_user(), Some("app"));
        assert_eq!((ok.pool_min, ok.pool_max), (0, 10));
        sql(json!({"engine": "mysql", "url": "mariadb://root@127.0.0.1/test"})).unwrap();
        sql(json!({"engine": "sqlite", "url": "sqlite:///tmp/x.db"})).unwrap();
        let bad = |v: Value, field: &str| {
            let e = sql(v.clone()).expect_err(&format!("{v} refused"));
            assert!(
                e.contains(&format!("{field}:")) && e.contains("db"),
                "{v}: {e}"
            );
            e
        };
        bad(
            json!({"engine": "postgresql", "url": "mysql://h/db"}),
            "url",
        );
        bad(
            json!({"engine": "mysql", "url": "postgresql://h/db"}),
            "url",
        );
        bad(json!({"engine": "sqlite", "url": "postgres://h/db"}), "url");
        let e = bad(
            json!({"engine": "postgresql", "url": "postgres://app:hunter2@h/db"}),
            "url",
        );
        assert!(e.contains("`password`") && !e.contains("hunter2"), "{e}");
        bad(
            json!({"engine": "postgresql", "url": "postgres://app@h/db?password=x"}),
            "url",
        );
        // The drivers decode the keys' escapes.
        bad(
            json!({"engine": "postgresql", "url": "postgres://app@h/db?sslmode=disable&passw%6Frd=x"}),
            "url",
        );
        bad(
            json!({"engine": "mysql", "url": "mysql://app@h/db?%50ASSWORD=x"}),
            "url",
        );
        bad(
            json!({"engine": "postgresql", "url": "postgres://h/db", "pool_max": 0}),
            "pool_max",
        );
        bad(
            json!({"engine": "postgresql", "url": "postgres://h/db", "pool_max": 101}),
            "pool_max",
        );
        bad(
            json!({"engine": "postgresql", "url": "postgres://h/db", "pool_min": 5, "pool_max": 4}),
            "pool_min",
        );
        bad(
            json!({"engine": "postgresql", "url": "postgres://h/db", "statement_timeout_ms": 0}),
            "statement_timeout_ms",
        );
        bad(
            json!({"engine": "oracle", "url": "postgres://h/db"}),
            "engine",
        );
        let e = parse_sql_input(
            &json!({"engine": "postgresql", "url": "postgres://h/db", "password": "pw", "sealed": "oxbus1:a"}),
            Some("db"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn a_stored_secret_is_kept_only_for_the_same_destination_and_identity() {
        let basic = |address: &str, user: &str| RestConn {
            auth: RestAuth::Basic {
                username: user.into(),
                sealed: None,
            },
            ..rest(json!({"address": address})).unwrap()
        };
        let bearer = RestConn {
            auth: RestAuth::Bearer { sealed: None },
            ..basic("https://h", "u")
        };
        let at = |address: &str, auth: RestAuth| RestConn {
            auth,
            ..rest(json!({"address": address})).unwrap()
        };
        let b = basic("https://h", "a");
        assert_eq!(basic("https://H:443", "a").keeps_secret_of(&b), Carry::Keep);
        let moved = Carry::DestinationChanged;
        assert_eq!(basic("https://h", "b").keeps_secret_of(&b), moved);
        assert_eq!(basic("http://evil.example", "a").keeps_secret_of(&b), moved);
        assert_eq!(basic("http://h:443", "a").keeps_secret_of(&b), moved);
        assert_eq!(basic("https://h:8443", "a").keeps_secret_of(&b), moved);
        assert_eq!(bearer.keeps_secret_of(&b), Carry::OtherKind);
        assert_eq!(
            at("https://h2", RestAuth::Bearer { sealed: None }).keeps_secret_of(&bearer),
            moved
        );
        let key = |h: &str| RestAuth::Apikey {
            header: h.into(),
            sealed: None,
        };
        let k = at("https://h", key("X-Key"));
        assert_eq!(
            at("https://h", key("x-key")).keeps_secret_of(&k),
            Carry::Keep
        );
        assert_eq!(at("https://h", key("X-Other")).keeps_secret_of(&k), moved);
        let oauth = |url: &str, id: &str| RestAuth::Oauth2 {
            token_url: url.into(),
            client_id: id.into(),
            scope: None,
            refresh_before_s: 30,
            sealed: None,
        };
        let o = at("https://h", oauth("https://idp/token", "c"));
        let same = at("https://h", oauth("https://idp/token", "c"));
        assert_eq!(same.keeps_secret_of(&o), Carry::Keep);
        let evil = at("https://h", oauth("https://evil/token", "c"));
        assert_eq!(evil.keeps_secret_of(&o), moved);
        let other_id = at("https://h", oauth("https://idp/token", "d"));
        assert_eq!(other_id.keeps_secret_of(&o), moved);

        let pg = |url: &str| SqlConn {
            url: url.into(),
            ..sql(json!({"engine": "postgresql", "url": "postgres://h/db"})).unwrap()
        };
        let stored = pg("postgres://app@h/db");
        assert_eq!(
            pg("postgres://app@h/db").keeps_secret_of(&stored),
            Carry::Keep
        );
        for other in [
            "postgres://app@evil/db",
            "postgres://app@h:5433/db",
            "postgres://app@h/other",
            "postgres://root@h/db",
            "postgres://app@h/db?sslmode=disable",
        ] {
            assert_eq!(pg(other).keeps_secret_of(&stored), moved, "{other}");
        }
    }

    #[test]
    fn credentials_are_refused_outside_auth_and_never_echoed() {
        for h in ["Authorization", "proxy-authorization", "Cookie"] {
            let e =
                rest(json!({"address": "https://h", "headers": {h: "Basic eA=="}})).unwrap_err();
            assert!(
                e.contains("headers:") && e.contains("give it in auth"),
                "{h}: {e}"
            );
        }
        rest(json!({"address": "https://h", "headers": {"X-Trace": "1"}})).unwrap();
        let e = rest(json!({"address": "https://h", "auth": {"type": "oauth2",
            "token_url": "https://idp/token?client_secret=s3cret", "client_id": "c",
            "client_secret": "x"}}))
        .unwrap_err();
        assert!(e.contains("auth.token_url: a query string"), "{e}");
        for h in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "X-Oxbus-Cid",
            "traceparent",
            "TraceState",
        ] {
            let e = rest(json!({"address": "https://h", "auth": {"type": "apikey",
                "header": h, "key": "k"}}))
            .unwrap_err();
            assert!(e.contains("auth.header:"), "{h}: {e}");
        }
        rest(
            json!({"address": "https://h", "auth": {"type": "apikey", "header": "Authorization",
            "key": "k"}}),
        )
        .unwrap();
        for address in [
            "https://u:hunter2@h",
            "https://u:hunter2@h/path",
            "ftp://u:hunter2@h",
            "u:hunter2@h",
        ] {
            let e = rest(json!({"address": address})).unwrap_err();
            assert!(e.contains("address:"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = rest(json!({"address": "https://h", "auth": {"type": "oauth2",
            "token_url": "https://id:hunter2@idp/token", "client_id": "c", "client_secret": "x"}}))
        .unwrap_err();
        assert!(
            e.contains("auth.token_url:") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
