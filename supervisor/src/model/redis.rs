//! A Redis connection as plain data (docs/CONNECTORS.md, "Redis"): `self.out.redis[name]`
//! and Zato's `self.kvdb.conn`. The password only sealed, under [`RedisConn::seal_name`].
//! No I/O here.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::object::InvalidObject;
use crate::model::outgoing::{Carry, Credentialed, Input, TlsOptions};

/// An outgoing Redis connection: `pool_size` multiplexed connections per server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConn {
    pub name: String,
    /// `redis://host[:port][/db]` or `rediss://…` (TLS); never with user info: the user is
    /// `username`, the password is given apart and sealed.
    pub address: String,
    /// The ACL user (Redis 6+); none: the password alone (`AUTH password`).
    #[serde(default)]
    pub username: Option<String>,
    /// The password, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// TLS options of a `rediss://` address (`verify` must stay true: certificates are
    /// always checked; `ca_file`, `client_cert_file` + `client_key_file`).
    #[serde(default)]
    pub tls: TlsOptions,
    /// Multiplexed connections per server, 1..=64; a call takes the least busy.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// The most one call (connecting included) takes, 1..=600 000 ms; then `timeout`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// The most connections a pool may have.
pub const MAX_POOL_SIZE: u32 = 64;
/// The longest `timeout_ms`.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

impl RedisConn {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/redis/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)?;
        let fail = |m: String| InvalidObject(format!("Redis connection {}: {m}", self.name));
        let addr = parse_address(&self.address).map_err(|m| fail(format!("address: {m}")))?;
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(fail(format!(
                "pool_size: {} is not in 1..={MAX_POOL_SIZE}",
                self.pool_size
            )));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(fail(format!(
                "timeout_ms: {} is not in 1..={MAX_TIMEOUT_MS}",
                self.timeout_ms
            )));
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(fail(
                "username: must be non-empty, without spaces or control characters".into(),
            ));
        }
        if self.username.is_some() && self.sealed.is_none() {
            return Err(fail("username given without a password".into()));
        }
        let tls = &self.tls;
        if !tls.verify {
            return Err(fail(
                "tls.verify: false is not supported for Redis (certificates are always \
                 checked: give tls.ca_file for a private CA)"
                    .into(),
            ));
        }
        let has_tls_files = tls.ca_file.is_some()
            || tls.client_cert_file.is_some()
            || tls.client_key_file.is_some();
        if has_tls_files && !addr.tls {
            return Err(fail(
                "tls: the files apply to a rediss:// address only".into(),
            ));
        }
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            return Err(fail(
                "tls: client_cert_file and client_key_file go together".into(),
            ));
        }
        for (field, path) in [
            ("ca_file", &tls.ca_file),
            ("client_cert_file", &tls.client_cert_file),
            ("client_key_file", &tls.client_key_file),
        ] {
            if let Some(p) = path
                && !p.starts_with('/')
            {
                return Err(fail(format!("tls.{field}: must be an absolute path")));
            }
        }
        Ok(())
    }
}

/// What a valid `address` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    /// `rediss://`.
    pub tls: bool,
    /// As written (an IPv6 address without its brackets), lower case.
    pub host: String,
    pub port: u16,
    pub db: u32,
}

/// Checks `redis://host[:port][/db]` / `rediss://…`: no user info (never quoted back when it
/// has some: it may hold a password), no query or fragment, a db number 0..=65535.
pub fn parse_address(address: &str) -> Result<RedisAddress, String> {
    let (tls, rest) = if let Some(r) = address.strip_prefix("rediss://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("redis://") {
        (false, r)
    } else {
        let shown = if address.contains('@') {
            "(not shown: it has an @)"
        } else {
            address
        };
        return Err(format!(
            "{shown:?} is not redis://host[:port][/db] or rediss://host[:port][/db]"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(
            "has user info: give the user in username and the password in password \
             (the address is never stored with credentials)"
                .into(),
        );
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{address:?} has a query or fragment: give only redis[s]://host[:port][/db]"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!("{address:?}: unclosed [ of an IPv6 address"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "{address:?}: {h:?} in brackets is not an IPv6 address"
            ));
        }
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("{address:?}: junk after the IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "{address:?}: a host with ':' must be an IPv6 address in brackets \
                     (redis://[::1]:6379)"
                ));
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%')
    {
        return Err(format!("{address:?}: no valid host"));
    }
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{address:?}: the port must be 1..=65535")),
        },
    };
    let db = match path {
        "" => 0,
        p if p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5 => match p.parse::<u32>() {
            Ok(d) if d <= 65_535 => d,
            _ => return Err(format!("{address:?}: the db number must be 0..=65535")),
        },
        _ => {
            return Err(format!(
                "{address:?}: the path must be a db number (redis://host:6379/2)"
            ));
        }
    };
    Ok(RedisAddress {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        db,
    })
}

impl Credentialed for RedisConn {
    fn seal_name_of(&self) -> String {
        RedisConn::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    /// Kept while the scheme, host and port of `address` and `username` are unchanged (the
    /// db number may change: the same server checks the same password).
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        let place = |a: &str| parse_address(a).ok().map(|a| (a.tls, a.host, a.port));
        let here = place(&self.address);
        if here.is_some() && here == place(&stored.address) && self.username == stored.username {
            Carry::Keep
        } else {
            Carry::DestinationChanged
        }
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        "the scheme, host and port of address and username"
    }
}

/// Parses what an operator sends for a Redis connection (the admin API's body, an import's
/// entry): a [`RedisConn`] with the plaintext `password` instead of `sealed` (or `sealed` as
/// exported). `url_name`: the name in the URL. Not validated: call `validate` once the
/// password is sealed.
pub fn parse_input(v: &Value, url_name: Option<&str>) -> Result<Input<RedisConn>, InvalidObject> {
    let (name, mut obj) = crate::model::outgoing::input_object(v, url_name, "Redis connection")?;
    let fail = |m: String| InvalidObject(format!("Redis connection {name}: {m}"));
    let plain = match obj.remove("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if !p.is_empty() => Some(p),
        Some(_) => return Err(fail("password: must be a non-empty string".into())),
    };
    if plain.is_some() && obj.contains_key("sealed") {
        return Err(fail(
            "give either sealed or a plaintext password, not both".into(),
        ));
    }
    let def =
        crate::model::outgoing::from_fields(&name, &obj, json!({"address": "redis://localhost"}))
            .map_err(fail)?;
    Ok(Input { def, plain })
}

fn default_pool_size() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    5_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(v: Value) -> Result<RedisConn, InvalidObject> {
        let Input { mut def, plain } = parse_input(&v, Some("kv"))?;
        if plain.is_some() {
            def.sealed = Some("sealed".into());
        }
        def.validate()?;
        Ok(def)
    }

    #[test]
    fn addresses_are_checked_and_never_echo_a_password() {
        let ok = parse_address("redis://Cache.example:6380/3").unwrap();
        assert_eq!(
            ok,
            RedisAddress {
                tls: false,
                host: "cache.example".into(),
                port: 6380,
                db: 3
            }
        );
        assert_eq!(parse_address("rediss://[::1]").unwrap().port, 6379);
        assert!(parse_address("rediss://[::1]").unwrap().tls);
        for bad in [
            "redis://::1",
            "redis://::1:6379",
            "redis://fe80::1/0",
            "redis://[nothost]",
        ] {
            assert!(parse_address(bad).is_err(), "{bad} accepted");
        }
        for (bad, says) in [
            ("http://h", "is not redis://"),
            ("redis://", "no valid host"),
            ("redis://h:0", "port"),
            ("redis://h:99999", "port"),
            ("redis://h/x", "db number"),
            ("redis://h/70000", "db number"),
            ("redis://h/1?protocol=resp3", "query"),
            ("rediss://h/#insecure", "query or fragment"),
            ("redis://u:hunter2@h", "user info"),
        ] {
            let e = parse_address(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse_address("ftp://u:hunter2@h").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let d = conn(json!({"address": "redis://127.0.0.1:6379/0"})).unwrap();
        assert_eq!((d.pool_size, d.timeout_ms), (4, 5_000));
        for (v, says) in [
            (
                json!({"address": "redis://h", "pool_size": 0}),
                "pool_size: 0",
            ),
            (
                json!({"address": "redis://h", "pool_size": 65}),
                "pool_size: 65",
            ),
            (
                json!({"address": "redis://h", "timeout_ms": 0}),
                "timeout_ms: 0",
            ),
            (
                json!({"address": "redis://h", "username": "app"}),
                "without a password",
            ),
            (
                json!({"address": "redis://h", "tls": {"ca_file": "/ca.pem"}}),
                "rediss:// address only",
            ),
            (
                json!({"address": "rediss://h", "tls": {"verify": false}}),
                "tls.verify",
            ),
            (
                json!({"address": "rediss://h", "tls": {"client_cert_file": "/c.pem"}}),
                "go together",
            ),
            (json!({"address": "redis://h", "pool": 3}), "pool"),
            (
                json!({"address": "redis://h", "password": 7}),
                "password: must be",
            ),
        ] {
            let e = conn(v.clone()).unwrap_err().to_string();
            assert!(e.contains(says), "{v}: {e}");
            assert!(e.starts_with("Redis connection kv"), "{e}");
        }
        let e = conn(json!({"address": "redis://h", "password": "p", "sealed": "s"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        conn(
            json!({"address": "rediss://h", "username": "app", "password": "p",
                    "tls": {"ca_file": "/ca.pem"}}),
        )
        .unwrap();
    }

    #[test]
    fn a_stored_password_stays_only_with_the_same_server_and_user() {
        let a = conn(json!({"address": "redis://h:6379/0", "username": "app", "password": "p"}))
            .unwrap();
        let same = |addr: &str, user: Option<&str>| {
            let mut b = a.clone();
            b.address = addr.into();
            b.username = user.map(str::to_owned);
            b.keeps_secret_of(&a)
        };
        assert_eq!(same("redis://H:6379/5", Some("app")), Carry::Keep);
        assert_eq!(same("redis://h/0", Some("app")), Carry::Keep);
        assert_eq!(
            same("rediss://h:6379/0", Some("app")),
            Carry::DestinationChanged
        );
        assert_eq!(
            same("redis://evil:6379/0", Some("app")),
            Carry::DestinationChanged
        );
        assert_eq!(
            same("redis://h:6380/0", Some("app")),
            Carry::DestinationChanged
        );
        assert_eq!(
            same("redis://h:6379/0", Some("root")),
            Carry::DestinationChanged
        );
        assert_eq!(same("redis://h:6379/0", None), Carry::DestinationChanged);
    }
}
