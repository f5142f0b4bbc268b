//! The admin API's MQTT channels (docs/CONNECTORS.md "MQTT"):
//!
//! - `GET /v1/inbound/mqtt`: every definition (without `sealed`; `has_secret` instead) with
//!   this server's `status` of each (connected, figures, last error)
//! - `GET|PUT|DELETE /v1/inbound/mqtt/{name}`: one definition; create or replace it; delete
//!   it (`admin::objects`, with this kind's hooks here; a delete also ends each server's
//!   broker session)
//! - `GET /v1/inbound/mqtt/{name}/status`: this server's state of it
//!
//! The password is sealed, kept and checked exactly as an outgoing connection's
//! (`admin::outgoing::build`): kept on an edit only while the scheme, host and port of
//! `address` and `username` are unchanged.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::{self, AdminObject, Refused};
use super::outgoing::{Parsed, build, public_json};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::mqtt::MqttChannel;
use crate::model::object::ConfigObject;

/// Routes `/v1/inbound/mqtt/…`; `rest` is the path after `/v1/inbound/mqtt`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    let decode = crate::edge::router::percent_decode;
    match (&method, rest) {
        (&Method::GET, []) => list(cx).await,
        (&Method::GET, [name]) => get(cx, &decode(name)).await,
        (&Method::PUT, [name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => objects::put::<MqttChannel>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => objects::delete::<MqttChannel>(cx, &decode(name)).await,
        (&Method::GET, [name, "status"]) => {
            let name = decode(name);
            match cx
                .inbound
                .mqtt
                .status()
                .into_iter()
                .find(|s| s.name == name)
            {
                Some(s) => reply(
                    StatusCode::OK,
                    serde_json::to_value(s).expect("a status serialises"),
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no MQTT channel named {name} on this server"),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// `GET /v1/inbound/mqtt`: every stored definition with this server's status of each
/// (`status` null for one this server has not applied yet).
async fn list(cx: &Ctx) -> Response<Body> {
    let defs: Vec<MqttChannel> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let status = cx.inbound.mqtt.status();
    let list: Vec<Value> = defs
        .iter()
        .map(|d| {
            let mut v = public_json(d);
            v["status"] = status
                .iter()
                .find(|s| s.name == d.name)
                .map_or(Value::Null, |s| {
                    serde_json::to_value(s).expect("a status serialises")
                });
            v
        })
        .collect();
    reply(StatusCode::OK, json!({ "mqtt": list }))
}

/// `GET /v1/inbound/mqtt/{name}`.
async fn get(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.objects::<MqttChannel>().await {
        Ok(list) => match list.iter().find(|d| d.name == name) {
            Some(d) => reply(StatusCode::OK, public_json(d)),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no {} named {name}", MqttChannel::WHAT),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

impl AdminObject for MqttChannel {
    /// Built against the stored one: its sealed password may be kept.
    const BUILT_FROM_STORED: bool = true;

    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let input = <MqttChannel as Parsed>::parse(&input, name)
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        build(&cx.key, input, stored).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        let defs = objects::read_back(cx, expected, MqttChannel::WHAT).await;
        cx.inbound.apply_mqtt(&defs);
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
