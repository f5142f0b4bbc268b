//! Opening an AMQP 0-9-1 connection to RabbitMQ, shared by the outgoing AMQP connections
//! (`outgoing/amqp`) and the AMQP channels (`inbound/amqp`): the address's host, port and
//! vhost, the username and the sealed password (opened here, with the server's key, under
//! the definition's seal name), TLS for `amqps://` on rustls configured as a REST
//! connection's is (`tls.verify`, `tls.ca_file`, client certificate), the heartbeat, the
//! connection name `oxbus:<name>` shown by the broker, and the whole handshake bounded by
//! `connect_timeout_ms`. Errors name the definition and never hold the password.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use crate::model::amqp::{AmqpChannel, AmqpConn};
use crate::model::outgoing::TlsOptions;
use crate::outgoing::rest::tls;
use crate::secrets::Key;

/// What to connect to: borrowed from an [`AmqpConn`] or an [`AmqpChannel`].
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The kind, for errors and logs: "AMQP connection", "AMQP channel".
    pub kind: &'static str,
    pub conn_name: &'a str,
    /// `amqp://host:port/vhost` or `amqps://…`, without a password.
    pub address: &'a str,
    pub username: Option<&'a str>,
    /// The password, sealed under `seal_name`.
    pub sealed: Option<&'a str>,
    pub seal_name: String,
    pub tls: &'a TlsOptions,
    pub heartbeat_s: u16,
    pub connect_timeout_ms: u64,
}

impl<'a> Target<'a> {
    /// The target of an outgoing AMQP connection.
    pub fn of_conn(def: &'a AmqpConn) -> Target<'a> {
        Target {
            kind: "AMQP connection",
            conn_name: &def.name,
            address: &def.address,
            username: def.username.as_deref(),
            sealed: def.sealed.as_deref(),
            seal_name: AmqpConn::seal_name(&def.name),
            tls: &def.tls,
            heartbeat_s: def.heartbeat_s,
            connect_timeout_ms: def.connect_timeout_ms,
        }
    }

    /// The target of an AMQP channel.
    pub fn of_channel(def: &'a AmqpChannel) -> Target<'a> {
        Target {
            kind: "AMQP channel",
            conn_name: &def.name,
            address: &def.address,
            username: def.username.as_deref(),
            sealed: def.sealed.as_deref(),
            seal_name: AmqpChannel::seal_name(&def.name),
            tls: &def.tls,
            heartbeat_s: def.heartbeat_s,
            connect_timeout_ms: def.connect_timeout_ms,
        }
    }

    /// `<kind> "<name>": <what>`.
    pub fn error(&self, what: impl std::fmt::Display) -> String {
        format!("{} {:?}: {what}", self.kind, self.conn_name)
    }
}

/// Parses an address as the broker sees it (no I/O): the scheme, host, port and vhost.
/// A password in it is refused (passwords are only kept sealed).
pub fn parse_address(address: &str) -> Result<AMQPUri, String> {
    if !(address.starts_with("amqp://") || address.starts_with("amqps://")) {
        return Err(format!(
            "address {address:?} is not an amqp:// or amqps:// URL"
        ));
    }
    let uri: AMQPUri = address
        .parse()
        .map_err(|e| format!("address is not a valid AMQP URL: {e}"))?;
    if uri.authority.host.is_empty() {
        return Err("address has no host".into());
    }
    // The URL's userinfo: a username alone would be ambiguous with `username`, a password
    // would be stored in clear. Only the definition's fields carry them.
    if let Some(rest) = address.split_once("://").map(|(_, r)| r)
        && rest
            .split(['/', '?'])
            .next()
            .is_some_and(|auth| auth.contains('@'))
    {
        return Err("address must not hold credentials (use username and password)".into());
    }
    Ok(uri)
}

/// Opens a connection to `t`: TCP, TLS for `amqps://`, the AMQP handshake with the
/// credentials, all within `t.connect_timeout_ms`. Without a `username` the broker's
/// default `guest`/`guest` is used, as AMQP clients do.
pub async fn connect(t: &Target<'_>, key: &Key) -> Result<Connection, String> {
    let mut uri = parse_address(t.address).map_err(|e| t.error(e))?;
    let password = match t.sealed {
        Some(sealed) => Some(
            key.open(&t.seal_name, sealed)
                .map_err(|e| t.error(format!("password: {e}")))?,
        ),
        None => None,
    };
    if let Some(user) = t.username {
        uri.authority.userinfo.username = user.to_owned();
        uri.authority.userinfo.password = password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
    }
    uri.query.heartbeat = Some(t.heartbeat_s);
    uri.query.connection_timeout = Some(t.connect_timeout_ms);
    let secret = uri.authority.userinfo.password.clone();
    // The password never reaches a message, whatever an error below holds.
    let scrub = |msg: String| -> String {
        if secret.len() >= 3 {
            msg.replace(&secret, "<password>")
        } else {
            msg
        }
    };

    let tls = match uri.scheme {
        AMQPScheme::AMQPS => Some(RustlsConnector::from(
            tls::client_config_for(t.kind, t.conn_name, t.tls, &[])
                .map_err(|e| t.error(format!("TLS configuration: {e}")))?,
        )),
        AMQPScheme::AMQP => None,
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| t.error(e))?;
    let props = ConnectionProperties::default()
        .with_connection_name(format!("oxbus:{}", t.conn_name).into());
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    let handshake = Connection::connector(
        uri,
        runtime,
        async move |_uri, runtime| {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            match &tls {
                Some(connector) => Ok(stream.into_rustls(connector, &host).await?),
                None => Ok(stream),
            }
        },
        props,
    );
    let limit = Duration::from_millis(t.connect_timeout_ms);
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(t.error(scrub(format!("connect to {}: {e}", t.address)))),
        Err(_) => Err(t.error(format!(
            "connect to {}: no answer within {} ms",
            t.address, t.connect_timeout_ms
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let u = parse_address("amqp://127.0.0.1:5672/%2f").unwrap();
        assert_eq!(u.authority.host, "127.0.0.1");
        assert_eq!(u.authority.port, 5672);
        assert_eq!(u.vhost, "/");
        let u = parse_address("amqps://mq.example.com/orders").unwrap();
        assert_eq!(u.scheme, AMQPScheme::AMQPS);
        assert_eq!(u.authority.port, 5671);
        assert_eq!(u.vhost, "orders");
        assert!(parse_address("http://x/").is_err());
        assert!(parse_address("amqp://bob:secret@x/").is_err());
        assert!(parse_address("amqp://bob@x/").is_err());
        assert!(parse_address("amqp://x/a@b").is_ok());
    }

    fn key() -> Key {
        let dir = std::env::temp_dir().join(format!(
            "oxbus-amqp-connect-{}",
            crate::random::random_hex(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Key::create(&dir.join("key")).unwrap()
    }

    fn def(name: &str, address: &str, password: &str, key: &Key) -> AmqpConn {
        let mut d: AmqpConn = serde_json::from_value(serde_json::json!({
            "name": name, "address": address, "username": "guest",
            "connect_timeout_ms": 5000,
        }))
        .unwrap();
        d.sealed = Some(key.seal(&AmqpConn::seal_name(name), password));
        d
    }

    /// The machine's RabbitMQ (guest/guest on 127.0.0.1:5672).
    #[tokio::test]
    async fn connects_with_the_sealed_password_and_names_the_connection_on_failure() {
        let k = key();
        let good = def("orders", "amqp://127.0.0.1:5672/%2f", "guest", &k);
        let conn = connect(&Target::of_conn(&good), &k).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.close(200, "OK".into()).await.unwrap();
        conn.close(200, "OK".into()).await.unwrap();

        let bad = def(
            "orders",
            "amqp://127.0.0.1:5672/%2f",
            "not-the-password-xyz",
            &k,
        );
        let err = connect(&Target::of_conn(&bad), &k).await.unwrap_err();
        assert!(err.starts_with("AMQP connection \"orders\": "), "{err}");
        assert!(!err.contains("not-the-password-xyz"), "{err}");

        // A closed port: refused at once, not after connect_timeout_ms.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = def("gone", &format!("amqp://127.0.0.1:{port}/%2f"), "guest", &k);
        let err = connect(&Target::of_conn(&closed), &k).await.unwrap_err();
        assert!(
            err.starts_with("AMQP connection \"gone\": connect to"),
            "{err}"
        );
        assert!(!err.contains("no answer within"), "{err}");
    }
}
