//! The admin API's outgoing connections (docs/OUTGOING.md, docs/CONNECTORS.md): REST, SQL
//! and Redis connection definitions, their ping and their figures on this server.
//!
//! - `GET /v1/outgoing/{rest|sql|redis}`: every definition (without `sealed`; `has_secret`
//!   instead) with this server's `stats` of each
//! - `GET|PUT|DELETE /v1/outgoing/{rest|sql|redis}/{name}`: one definition; create or replace
//!   it; delete it (`admin::objects`, with this kind's hooks here)
//! - `POST /v1/outgoing/{rest|sql|redis}/{name}/ping`: this server pings it (200 with
//!   `{ok, took_ms, detail}` whether or not the remote answered; 404 for an unknown name)
//! - `GET /v1/outgoing/{rest|sql|redis}/{name}/stats`: this server's figures of it
//!
//! Credentials: a body gives the plaintext (`auth.password|key|token|client_secret`, SQL
//! and Redis `password`), sealed here with the server's key under the connection's seal
//! name before anything is stored, never logged or echoed; or `sealed` as exported (it must
//! open with this server's key). A body with neither keeps the stored sealed value only
//! while the credential would go to the same place as the same identity (REST: the auth
//! type, the scheme, host and port of `address`, and the auth's username, header, or
//! token_url and client_id; SQL: engine and the whole URL; Redis: the scheme, host and port
//! of `address` and `username`); when these changed it is refused (400: give
//! the credential again), so an edit cannot send a stored password elsewhere. Another REST
//! auth type keeps nothing. [`build`] is that rule, shared with the config import.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::{self, AdminObject, Refused};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::amqp::AmqpConn;
use crate::model::mqtt::MqttConn;
use crate::model::object::{ConfigObject, InvalidObject};
use crate::model::outgoing::{Carry, Credentialed, Input, RestConn, SqlConn};
use crate::model::redis::RedisConn;
use crate::outgoing::{ConnStats, ConnType};

/// Routes `/v1/outgoing/…`; `rest` is the path after `/v1/outgoing`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    let kind = match rest.first() {
        Some(&"rest") => ConnType::Rest,
        Some(&"sql") => ConnType::Sql,
        Some(&"amqp") => ConnType::Amqp,
        Some(&"redis") => ConnType::Redis,
        Some(&"mqtt") => ConnType::Mqtt,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no admin endpoint {method} {}: connections are under /v1/outgoing/rest, \
                     /v1/outgoing/sql, /v1/outgoing/amqp, /v1/outgoing/redis and /v1/outgoing/mqtt",
                    req.uri().path()
                ),
            );
        }
    };
    let decode = crate::edge::router::percent_decode;
    match (&method, &rest[1..]) {
        (&Method::GET, []) => match kind {
            ConnType::Rest => list::<RestConn>(cx, kind).await,
            ConnType::Sql => list::<SqlConn>(cx, kind).await,
            ConnType::Amqp => list::<AmqpConn>(cx, kind).await,
            ConnType::Redis => list::<RedisConn>(cx, kind).await,
            ConnType::Mqtt => list::<MqttConn>(cx, kind).await,
        },
        (&Method::GET, [name]) => match kind {
            ConnType::Rest => get::<RestConn>(cx, &decode(name)).await,
            ConnType::Sql => get::<SqlConn>(cx, &decode(name)).await,
            ConnType::Mqtt => get::<MqttConn>(cx, &decode(name)).await,
            ConnType::Redis => get::<RedisConn>(cx, &decode(name)).await,
            ConnType::Amqp => get::<AmqpConn>(cx, &decode(name)).await,
        },
        (&Method::PUT, [name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => match kind {
                    ConnType::Mqtt => objects::put::<MqttConn>(cx, Some(&name), body).await,
                    ConnType::Rest => objects::put::<RestConn>(cx, Some(&name), body).await,
                    ConnType::Redis => objects::put::<RedisConn>(cx, Some(&name), body).await,
                    ConnType::Sql => objects::put::<SqlConn>(cx, Some(&name), body).await,
                    ConnType::Amqp => objects::put::<AmqpConn>(cx, Some(&name), body).await,
                },
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => match kind {
            // A connection a push subscription delivers through stays (409 naming them).
            ConnType::Rest => {
                let name = decode(name);
                match super::pubsub::in_use_by(cx, None, Some(&name)).await {
                    Ok(None) => objects::delete::<RestConn>(cx, &name).await,
                    Ok(Some(m)) => error(StatusCode::CONFLICT, m),
                    Err(r) => r,
                }
            }
            ConnType::Mqtt => objects::delete::<MqttConn>(cx, &decode(name)).await,
            ConnType::Redis => objects::delete::<RedisConn>(cx, &decode(name)).await,
            ConnType::Sql => objects::delete::<SqlConn>(cx, &decode(name)).await,
            ConnType::Amqp => objects::delete::<AmqpConn>(cx, &decode(name)).await,
        },
        (&Method::POST, [name, "ping"]) => match cx.outgoing.ping(kind, &decode(name)).await {
            Ok(outcome) => reply(
                StatusCode::OK,
                serde_json::to_value(outcome).expect("an outcome serialises"),
            ),
            Err(e) => error(StatusCode::NOT_FOUND, e),
        },
        (&Method::GET, [name, "stats"]) => {
            let name = decode(name);
            match cx.outgoing.stats(kind).into_iter().find(|s| s.name == name) {
                Some(s) => reply(StatusCode::OK, stats_json(kind, &s)),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no {} connection named {name} on this server",
                        kind.as_str()
                    ),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

fn stats_json(kind: ConnType, s: &ConnStats) -> Value {
    let mut v = serde_json::to_value(s).expect("figures serialise");
    if let Some(m) = v.as_object_mut() {
        m.insert("type".into(), kind.as_str().into());
    }
    v
}

/// What a definition looks like to an operator: everything but its sealed credential, and
/// `has_secret` instead.
pub fn public_json<K: Credentialed + ConfigObject>(def: &K) -> Value {
    let mut v = serde_json::to_value(def).expect("a definition serialises");
    if let Some(m) = v.as_object_mut() {
        m.remove("sealed");
        if let Some(Value::Object(auth)) = m.get_mut("auth") {
            auth.remove("sealed");
        }
        m.insert("has_secret".into(), def.sealed_secret().is_some().into());
    }
    v
}
impl Listed for MqttConn {
    const PLURAL: &'static str = "mqtt";
}

/// The two kinds' JSON keys in answers.
trait Listed: Credentialed + ConfigObject {
    const PLURAL: &'static str;
}
impl Listed for RestConn {
    const PLURAL: &'static str = "rest";
}
impl Listed for SqlConn {
    const PLURAL: &'static str = "sql";
}
impl Listed for AmqpConn {
    const PLURAL: &'static str = "amqp";
}
impl Listed for RedisConn {
    const PLURAL: &'static str = "redis";
}

/// `GET /v1/outgoing/{type}`: every stored definition, with this server's figures of each
/// (`stats` null for one this server has not applied yet).
async fn list<K: Listed>(cx: &Ctx, kind: ConnType) -> Response<Body> {
    let defs: Vec<K> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let stats = cx.outgoing.stats(kind);
    let list: Vec<Value> = defs
        .iter()
        .map(|d| {
            let mut v = public_json(d);
            let s = stats.iter().find(|s| s.name == d.name());
            v["stats"] = s.map_or(Value::Null, |s| stats_json(kind, s));
            v
        })
        .collect();
    reply(StatusCode::OK, json!({ K::PLURAL: list }))
}

/// `GET /v1/outgoing/{type}/{name}`.
async fn get<K: Listed>(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.objects::<K>().await {
        Ok(list) => match list.iter().find(|d| d.name() == name) {
            Some(d) => reply(StatusCode::OK, public_json(d)),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no {} named {name}", K::WHAT),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A checked definition from what an operator sent (`input`, parsed by the model) and the
/// stored one of its name: the plaintext credential sealed under the connection's seal name;
/// a given `sealed` checked to open with `key`; neither given: the stored sealed value kept
/// when [`Credentialed::keeps_secret_of`] says so, refused when the destination changed,
/// else none (which validation refuses where a credential is needed).
pub(crate) fn build<K: Credentialed + ConfigObject>(
    key: &crate::secrets::Key,
    input: Input<K>,
    stored: Option<&K>,
) -> Result<K, InvalidObject> {
    let Input { mut def, plain } = input;
    let field = def.secret_field();
    let what = format!("{} {}", K::WHAT, def.name());
    match (plain, def.sealed_secret()) {
        (Some(p), _) => {
            let sealed = key.seal(&def.seal_name_of(), &p);
            def.set_sealed(Some(sealed));
        }
        (None, Some(s)) => {
            if let Err(e) = key.open(&def.seal_name_of(), s) {
                return Err(InvalidObject(format!(
                    "{what}: {field}: the sealed value does not open with this server's key: {e}"
                )));
            }
        }
        (None, None) => {
            if let Some(old) = stored.filter(|old| old.sealed_secret().is_some()) {
                match def.keeps_secret_of(old) {
                    Carry::Keep => def.set_sealed(old.sealed_secret().map(str::to_owned)),
                    Carry::OtherKind => {}
                    Carry::DestinationChanged => {
                        // Its own rules first: a definition wrong anyway says so.
                        let mut probe = def.clone();
                        probe.set_sealed(old.sealed_secret().map(str::to_owned));
                        probe.validate()?;
                        return Err(InvalidObject(format!(
                            "{what}: the destination changed: give {field} again (the stored \
                             one is kept only while {} is unchanged)",
                            def.destination_fields()
                        )));
                    }
                }
            }
        }
    }
    def.validate()?;
    Ok(def)
}

/// Whether two definitions are the same once their sealed values are opened (a value sealed
/// again has another nonce, not another secret).
pub(crate) fn same_opened<K: Credentialed + ConfigObject>(
    key: &crate::secrets::Key,
    a: &K,
    b: &K,
) -> bool {
    let strip = |d: &K| {
        let mut d = d.clone();
        d.set_sealed(None);
        d
    };
    let open = |d: &K| {
        d.sealed_secret()
            .map(|s| key.open(&d.seal_name_of(), s).ok())
    };
    strip(a) == strip(b) && open(a) == open(b)
}

/// How each kind parses an operator's JSON (the model's parse).
pub(crate) trait Parsed: Credentialed + ConfigObject {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject>;
}
impl Parsed for RestConn {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::outgoing::parse_rest_input(v, name)
    }
}
impl Parsed for SqlConn {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::outgoing::parse_sql_input(v, name)
    }
}
impl Parsed for AmqpConn {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::amqp::parse_amqp_input(v, name)
    }
}
impl Parsed for RedisConn {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::redis::parse_input(v, name)
    }
}
impl Parsed for MqttConn {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::mqtt::parse_conn_input(v, name)
    }
}
impl Parsed for crate::model::mqtt::MqttChannel {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        crate::model::mqtt::parse_channel_input(v, name)
    }
}

/// This server's connections of kind `K`, as the store has them after a change (`expected`
/// should it not answer now).
pub(crate) trait Applied: ConfigObject {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]);
}
impl Applied for RestConn {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]) {
        outgoing.apply_rest(defs);
    }
}
impl Applied for SqlConn {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]) {
        outgoing.apply_sql(defs);
    }
}
impl Applied for AmqpConn {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]) {
        outgoing.apply_amqp(defs);
    }
}
impl Applied for RedisConn {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]) {
        outgoing.apply_redis(defs);
    }
}
impl Applied for MqttConn {
    fn apply(outgoing: &crate::outgoing::Outgoing, defs: &[Self]) {
        outgoing.apply_mqtt(defs);
    }
}

/// The kinds' [`AdminObject`] hooks (the same for both).
macro_rules! admin_object {
    ($k:ty) => {
        impl AdminObject for $k {
            /// Built against the stored one: its sealed credential may be kept.
            const BUILT_FROM_STORED: bool = true;

            async fn build(
                cx: &Ctx,
                input: Value,
                name: Option<&str>,
                stored: Option<&Self>,
            ) -> Result<Self, Refused> {
                let input = <$k as Parsed>::parse(&input, name)
                    .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
                build(&cx.key, input, stored).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))
            }

            async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
                let defs = objects::read_back(cx, expected, <$k as ConfigObject>::WHAT).await;
                <$k as Applied>::apply(&cx.outgoing, &defs);
                Ok(())
            }

            fn put_answer(
                _cx: &Ctx,
                def: &Self,
                config_version: i64,
                created: bool,
            ) -> Result<Value, Refused> {
                Ok(json!({
                    "config_version": config_version,
                    "created": created,
                    "connection": public_json(def),
                }))
            }
        }
    };
}
admin_object!(RestConn);
admin_object!(SqlConn);
admin_object!(MqttConn);
admin_object!(RedisConn);
admin_object!(AmqpConn);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::outgoing::{parse_rest_input, parse_sql_input};

    fn key() -> crate::secrets::Key {
        let dir =
            std::env::temp_dir().join(format!("oxbus-outkey-{}", crate::random::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let k = crate::secrets::Key::create(&dir.join("k")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        k
    }

    #[test]
    fn plaintext_is_sealed_under_the_connection_kept_on_an_edit_and_checked_on_input() {
        let k = key();
        let v = json!({"address": "https://h", "auth": {"type": "basic", "username": "u", "password": "hunter2"}});
        let def = build(&k, parse_rest_input(&v, Some("crm")).unwrap(), None).unwrap();
        let sealed = def.auth.sealed().unwrap().to_owned();
        assert!(!serde_json::to_string(&def).unwrap().contains("hunter2"));
        assert_eq!(
            k.open(&RestConn::seal_name("crm"), &sealed)
                .unwrap()
                .expose(),
            "hunter2"
        );
        assert!(!public_json(&def).to_string().contains(&sealed));
        assert_eq!(public_json(&def)["has_secret"], true);

        // An edit without a credential keeps it while it goes to the same place as the same
        // user; another address or user must give it again; another auth type keeps nothing.
        for moved in [
            json!({"address": "http://evil.example", "auth": {"type": "basic", "username": "u"}}),
            json!({"address": "https://h", "auth": {"type": "basic", "username": "v"}}),
        ] {
            let e = build(
                &k,
                parse_rest_input(&moved, Some("crm")).unwrap(),
                Some(&def),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("the destination changed: give auth.password again"),
                "{e}"
            );
        }
        let edit = json!({"address": "https://h", "timeout_ms": 500, "auth": {"type": "basic", "username": "u"}});
        let kept = build(
            &k,
            parse_rest_input(&edit, Some("crm")).unwrap(),
            Some(&def),
        )
        .unwrap();
        assert_eq!(kept.auth.sealed(), Some(sealed.as_str()));
        assert!(same_opened(&k, &def, &def.clone()));
        assert!(!same_opened(&k, &def, &kept));
        let other = json!({"address": "https://h", "auth": {"type": "bearer"}});
        let e = build(
            &k,
            parse_rest_input(&other, Some("crm")).unwrap(),
            Some(&def),
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.token: missing"), "{e}");

        // Sealed input: it must open with this key and under this name.
        let copied = json!({"address": "https://h", "auth": {"type": "basic", "username": "u", "sealed": sealed}});
        build(&k, parse_rest_input(&copied, Some("crm")).unwrap(), None).unwrap();
        let e = build(&k, parse_rest_input(&copied, Some("erp")).unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        let e = build(
            &key(),
            parse_rest_input(&copied, Some("crm")).unwrap(),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("does not open with this server's key"),
            "{e}"
        );

        // SQL: a resealed same password is no change; another URL must give it again.
        let pg = json!({"engine": "postgresql", "url": "postgres://app@h/db", "password": "pw"});
        let a = build(&k, parse_sql_input(&pg, Some("db")).unwrap(), None).unwrap();
        let b = build(&k, parse_sql_input(&pg, Some("db")).unwrap(), Some(&a)).unwrap();
        assert_ne!(a.sealed, b.sealed, "a new nonce");
        assert!(same_opened(&k, &a, &b));
        let same = json!({"engine": "postgresql", "url": "postgres://app@h/db", "max_rows": 5});
        let kept = build(&k, parse_sql_input(&same, Some("db")).unwrap(), Some(&a)).unwrap();
        assert_eq!(kept.sealed, a.sealed);
        for url in ["postgres://root@h/db", "postgres://app@evil/db"] {
            let moved = json!({"engine": "postgresql", "url": url});
            let e = build(&k, parse_sql_input(&moved, Some("db")).unwrap(), Some(&a))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("the destination changed: give password again"),
                "{e}"
            );
        }
    }
}
