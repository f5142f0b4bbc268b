//! A WebSocket channel's own settings (`type = "websocket"`, docs/WEBSOCKET.md): what a
//! channel's `websocket` table holds, its defaults and its checks. No I/O: the sessions are
//! `wsx`'s, the upgrade the edge's.

use serde::{Deserialize, Serialize};

use crate::model::channel::ChannelError;

/// The wire protocol a WebSocket channel speaks with its clients.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WsProtocol {
    /// Each client message (text or binary) is one call of the channel's service; its
    /// answer goes back to that client as one message.
    #[default]
    Raw,
    /// Zato 3.2's client protocol: JSON envelopes (`meta`, `data`), a `create-session`
    /// message first (with the credentials when the channel has a security definition),
    /// then `invoke-service` requests answered `zwsx.rspok` / `zwsx.rsperr`; pushes go out as
    /// `zwsx.rqc` requests (see `wsx::zato`).
    Zato,
}

impl WsProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            WsProtocol::Raw => "raw",
            WsProtocol::Zato => "zato",
        }
    }
}

/// `[channels.websocket]`: a WebSocket channel's settings, every one with a default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    /// The client protocol: `raw` (each message a call) or `zato` (Zato 3.2's envelopes).
    #[serde(default)]
    pub protocol: WsProtocol,
    /// `raw` only: a client may open the channel without a credential and send it as its
    /// first message (`{"username": …, "password": …}`, `{"token": …}` or
    /// `{"api_key": …}`, as the channel's security definition takes); an upgrade that
    /// carries one is checked at once, as always. Browsers cannot set headers on a
    /// WebSocket: this is how they authenticate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_message_auth: bool,
    /// How long a client that has not authenticated yet (its first message, or Zato's
    /// `create-session`) has to do so before it is closed (1008).
    #[serde(default = "default_auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    /// A service run when a client has connected (its answer is not sent to the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_connect: Option<String>,
    /// A service run after a client disconnected, for whatever reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disconnect: Option<String>,
    /// How often the server pings a client (0: never).
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// Pings in a row a client may leave unanswered; at the next it is disconnected.
    #[serde(default = "default_max_missed_pongs")]
    pub max_missed_pongs: u32,
    /// The largest message a client may send (after reassembling fragments); a larger one
    /// closes the connection with 1009.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bytes queued to one client (answers and pushes it has not read yet) past which it is
    /// disconnected (close 1008): a slow client may not hold the server's memory.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// A client that sends no message for this long is closed (1000); 0: never. Pings and
    /// pongs do not count as messages.
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// Calls of the channel's service one client may have running at once; its further
    /// messages wait, unread, until one ends. With 1 (the default) answers come back in the
    /// order of the messages.
    #[serde(default = "one")]
    pub max_inflight: u32,
    /// The web origins (`https://app.example.com`) whose pages may open the channel: a
    /// handshake with another `Origin` header is refused (403), one without an `Origin`
    /// (not from a browser) is not. Empty (the default): any origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

fn default_ping_interval_ms() -> u64 {
    30_000
}
fn default_auth_timeout_ms() -> u64 {
    5_000
}
fn default_max_missed_pongs() -> u32 {
    2
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_max_queued_bytes() -> usize {
    4 << 20
}
fn one() -> u32 {
    1
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            protocol: WsProtocol::Raw,
            first_message_auth: false,
            auth_timeout_ms: default_auth_timeout_ms(),
            on_connect: None,
            on_disconnect: None,
            ping_interval_ms: default_ping_interval_ms(),
            max_missed_pongs: default_max_missed_pongs(),
            max_message_bytes: default_max_message_bytes(),
            max_queued_bytes: default_max_queued_bytes(),
            idle_timeout_ms: 0,
            max_inflight: 1,
            allowed_origins: Vec::new(),
        }
    }
}

/// The server a WebSocket client id (`ws.<server>.<16 hex digits>`) names, if the id has
/// that form.
pub fn client_server(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("ws.")?;
    let (server, hex) = rest.rsplit_once('.')?;
    (!server.is_empty() && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(server)
}

/// The largest message a channel may accept: what one IPC frame carries with room for its
/// meta (ipc-protocol: 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 63 << 20;

impl WsSettings {
    /// Checks the settings; the error names the setting.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |key: &str, value: String, message: &str| ChannelError {
            key: format!("channels.websocket.{key}"),
            value,
            message: message.into(),
        };
        for (key, s) in [
            ("on_connect", &self.on_connect),
            ("on_disconnect", &self.on_disconnect),
        ] {
            if let Some(s) = s
                && s.trim().is_empty()
            {
                return Err(bad(
                    key,
                    format!("{s:?}"),
                    "a service name must not be empty",
                ));
            }
        }
        if self.ping_interval_ms != 0 && self.ping_interval_ms < 100 {
            return Err(bad(
                "ping_interval_ms",
                self.ping_interval_ms.to_string(),
                "pings at most every 100 ms (or 0: none)",
            ));
        }
        if self.ping_interval_ms != 0 && self.max_missed_pongs == 0 {
            return Err(bad(
                "max_missed_pongs",
                "0".into(),
                "at least 1 while pings are on (a client must be able to answer one)",
            ));
        }
        if self.ping_interval_ms == 0 && self.idle_timeout_ms == 0 {
            return Err(bad(
                "ping_interval_ms",
                "0".into(),
                "with idle_timeout_ms = 0 too, a client that stalls (in the middle of a message, or for good) would be held forever: set one of them",
            ));
        }
        for o in &self.allowed_origins {
            // As a browser sends it: lower-case scheme, no user, no path, no default port.
            let ok = o.split_once("://").is_some_and(|(scheme, host)| {
                let default_port = match scheme {
                    "http" => ":80",
                    "https" => ":443",
                    _ => return false,
                };
                !host.is_empty()
                    && host.is_ascii()
                    && !host.contains(['/', '?', '#', ' ', '@'])
                    && !host.ends_with(default_port)
            });
            if !ok {
                return Err(bad(
                    "allowed_origins",
                    format!("{o:?}"),
                    "an origin is http(s)://host[:port] as a browser sends it, such as https://app.example.com (lower-case scheme, no path, no user, no default port)",
                ));
            }
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(bad(
                "max_message_bytes",
                self.max_message_bytes.to_string(),
                &format!(
                    "must be 1..={MAX_MESSAGE_BYTES} (a message goes to a worker in one IPC frame)"
                ),
            ));
        }
        if self.first_message_auth && self.protocol == WsProtocol::Zato {
            return Err(bad(
                "first_message_auth",
                "true".into(),
                "the zato protocol always takes the credentials in its create-session message: leave first_message_auth out",
            ));
        }
        if !(100..=300_000).contains(&self.auth_timeout_ms) {
            return Err(bad(
                "auth_timeout_ms",
                self.auth_timeout_ms.to_string(),
                "must be 100..=300000",
            ));
        }
        if self.max_queued_bytes < 1024 {
            return Err(bad(
                "max_queued_bytes",
                self.max_queued_bytes.to_string(),
                "must be at least 1024",
            ));
        }
        if self.idle_timeout_ms != 0 && self.idle_timeout_ms < 100 {
            return Err(bad(
                "idle_timeout_ms",
                self.idle_timeout_ms.to_string(),
                "at least 100 ms (or 0: never)",
            ));
        }
        if !(1..=64).contains(&self.max_inflight) {
            return Err(bad(
                "max_inflight",
                self.max_inflight.to_string(),
                "must be 1..=64",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_values_are_named() {
        assert!(WsSettings::default().validate().is_ok());
        let parsed: WsSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, WsSettings::default());
        for (bad, key) in [
            (
                WsSettings {
                    ping_interval_ms: 5,
                    ..Default::default()
                },
                "ping_interval_ms",
            ),
            (
                WsSettings {
                    max_message_bytes: 0,
                    ..Default::default()
                },
                "max_message_bytes",
            ),
            (
                WsSettings {
                    max_queued_bytes: 10,
                    ..Default::default()
                },
                "max_queued_bytes",
            ),
            (
                WsSettings {
                    max_inflight: 0,
                    ..Default::default()
                },
                "max_inflight",
            ),
            (
                WsSettings {
                    on_connect: Some(" ".into()),
                    ..Default::default()
                },
                "on_connect",
            ),
            (
                WsSettings {
                    protocol: WsProtocol::Zato,
                    first_message_auth: true,
                    ..Default::default()
                },
                "first_message_auth",
            ),
            (
                WsSettings {
                    auth_timeout_ms: 10,
                    ..Default::default()
                },
                "auth_timeout_ms",
            ),
            (
                WsSettings {
                    max_missed_pongs: 0,
                    ..Default::default()
                },
                "max_missed_pongs",
            ),
            (
                WsSettings {
                    ping_interval_ms: 0,
                    ..Default::default()
                },
                "ping_interval_ms",
            ),
            (
                WsSettings {
                    allowed_origins: vec!["https://a.example/path".into()],
                    ..Default::default()
                },
                "allowed_origins",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.key.ends_with(key), "{e}");
        }
        let ok = WsSettings {
            ping_interval_ms: 0,
            idle_timeout_ms: 60_000,
            allowed_origins: vec![
                "https://app.example.com".into(),
                "http://localhost:8080".into(),
            ],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let zato: WsSettings = serde_json::from_str(r#"{"protocol": "zato"}"#).unwrap();
        assert_eq!(zato.protocol, WsProtocol::Zato);
        assert!(zato.validate().is_ok());
        let e = serde_json::from_str::<WsSettings>(r#"{"ping_every": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
