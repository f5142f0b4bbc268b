//! The admin API's inbound channels (docs/CONNECTORS.md): channels that consume from a
//! broker into services, one resource per type under `/v1/inbound/{type}`:
//!
//! - `GET /v1/inbound/{type}`: every definition (without `sealed`; `has_secret` instead)
//!   with this server's `status` of each (connected, last error, figures)
//! - `GET|PUT|DELETE /v1/inbound/{type}/{name}`: one definition; create or replace it;
//!   delete it (`admin::objects`, with the kind's hooks here)
//! - `GET /v1/inbound/{type}/{name}/stats`: this server's status and figures of it
//!
//! Credentials as the outgoing connections' (`admin::outgoing::build`): a plaintext
//! `password` is sealed before anything is stored, a given `sealed` must open with this
//! server's key, and an edit without one keeps the stored one only while the destination
//! (`address` and `username`) is unchanged.
//!
//! A type is an [`InboundKind`]: its definition's parse, how this server applies the
//! definitions, and its status. `amqp` is the first; another plugs in with an impl and one
//! arm in [`route`].

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::{self, AdminObject, Refused};
use super::outgoing::{build, public_json};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::amqp::AmqpChannel;
use crate::model::object::{ConfigObject, InvalidObject};
use crate::model::outgoing::{Credentialed, Input};

/// What differs per inbound channel type.
pub(crate) trait InboundKind: Credentialed + ConfigObject {
    /// The type's path segment and list key (`amqp`).
    const TYPE: &'static str;
    /// Parses an operator's JSON (the model's parse; `name`: the URL's).
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject>;
    /// Makes `defs` this server's channels of the type.
    fn apply(inbound: &crate::inbound::Inbound, defs: &[Self]);
    /// This server's status of each channel of the type, by name.
    fn status(inbound: &crate::inbound::Inbound) -> Vec<(String, Value)>;
}

impl InboundKind for AmqpChannel {
    const TYPE: &'static str = "amqp";
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        AmqpChannel::parse_input(v, name)
    }
    fn apply(inbound: &crate::inbound::Inbound, defs: &[Self]) {
        inbound.apply_amqp(defs);
    }
    fn status(inbound: &crate::inbound::Inbound) -> Vec<(String, Value)> {
        inbound
            .amqp
            .stats()
            .into_iter()
            .map(|s| {
                let v = serde_json::to_value(&s).expect("figures serialise");
                (s.name, v)
            })
            .collect()
    }
}

/// Routes `/v1/inbound/…`; `rest` is the path after `/v1/inbound`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    match rest.first() {
        Some(&"amqp") => kind::<AmqpChannel>(req, cx, &rest[1..]).await,
        Some(&"mqtt") => kind::<crate::model::mqtt::MqttChannel>(req, cx, &rest[1..]).await,
        Some(&"file") => super::inbound_file::route(req, cx, &rest[1..]).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no admin endpoint {} {}: inbound channels are under /v1/inbound/amqp, /v1/inbound/mqtt and /v1/inbound/file",
                req.method(),
                req.uri().path()
            ),
        ),
    }
}

async fn kind<K: InboundKind + AdminObject>(
    req: Request<Incoming>,
    cx: &Ctx,
    rest: &[&str],
) -> Response<Body> {
    let method = req.method().clone();
    let decode = crate::edge::router::percent_decode;
    match (&method, rest) {
        (&Method::GET, []) => list::<K>(cx).await,
        (&Method::GET, [name]) => get::<K>(cx, &decode(name)).await,
        (&Method::PUT, [name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => objects::put::<K>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => objects::delete::<K>(cx, &decode(name)).await,
        (&Method::GET, [name, "stats"]) => {
            let name = decode(name);
            match K::status(&cx.inbound).into_iter().find(|(n, _)| *n == name) {
                Some((_, s)) => reply(StatusCode::OK, s),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no {} named {name} on this server", K::WHAT),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// `GET /v1/inbound/{type}`: every stored definition, with this server's status of each
/// (`status` null for one this server has not applied yet).
async fn list<K: InboundKind>(cx: &Ctx) -> Response<Body> {
    let defs: Vec<K> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let status = K::status(&cx.inbound);
    let list: Vec<Value> = defs
        .iter()
        .map(|d| {
            let mut v = public_json(d);
            v["status"] = status
                .iter()
                .find(|(n, _)| n == d.name())
                .map_or(Value::Null, |(_, s)| s.clone());
            v
        })
        .collect();
    reply(StatusCode::OK, json!({ K::TYPE: list }))
}

/// `GET /v1/inbound/{type}/{name}`.
async fn get<K: InboundKind>(cx: &Ctx, name: &str) -> Response<Body> {
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

impl AdminObject for AmqpChannel {
    /// Built against the stored one: its sealed password may be kept.
    const BUILT_FROM_STORED: bool = true;

    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let input = <Self as InboundKind>::parse(&input, name)
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        build(&cx.key, input, stored).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        let defs = objects::read_back(cx, expected, Self::WHAT).await;
        <Self as InboundKind>::apply(&cx.inbound, &defs);
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
            "channel": public_json(def),
        }))
    }
}

impl super::outgoing::Parsed for AmqpChannel {
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        AmqpChannel::parse_input(v, name)
    }
}
