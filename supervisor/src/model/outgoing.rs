//! Outgoing connections as plain data: a REST connection ([`RestConn`]) and an SQL connection
//! ([`SqlConn`]), what the store holds and an export carries — credentials only sealed
//! (`oxbus1:…`, under [`RestConn::seal_name`] / [`SqlConn::seal_name`]). No I/O and no crypto
//! here: sealing plaintext is the admin API's, opening it and using the connection is
//! `outgoing`'s. docs/OUTGOING.md describes every field.

use serde::{Deserialize, Serialize};
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

impl RestConn {
    /// The name its credential is sealed under (the sealed value's associated data).
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/rest/{name}")
    }

    /// Checks what a stored REST connection must satisfy.
    pub fn validate(&self) -> Result<(), InvalidObject> {
        validate_name(&self.name)?;
        // The address, url_path, headers, TLS files and limits are checked in full by
        // `validate_rest` (issue 19, model part); here the minimum the runtime relies on.
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return Err(InvalidObject(format!(
                "address: {:?} is not http://host[:port] or https://host[:port]",
                self.address
            )));
        }
        if self.pool_size == 0 {
            return Err(InvalidObject("pool_size: must be at least 1".into()));
        }
        Ok(())
    }
}

impl SqlConn {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/sql/{name}")
    }

    /// Checks what a stored SQL connection must satisfy.
    pub fn validate(&self) -> Result<(), InvalidObject> {
        validate_name(&self.name)?;
        if self.pool_max == 0 || self.pool_min > self.pool_max {
            return Err(InvalidObject(
                "pool_max: must be at least 1 and at least pool_min".into(),
            ));
        }
        Ok(())
    }
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
