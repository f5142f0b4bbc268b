//! The MQTT channels' hooks for the admin API's inbound channels (`admin::inbound`:
//! `/v1/inbound/mqtt[/{name}[/stats]]`, docs/CONNECTORS.md "MQTT"): the parse, how this
//! server applies the definitions, its status of each. A delete also ends each server's
//! broker session (`inbound::mqtt`).
//!
//! The password is sealed, kept and checked exactly as an outgoing connection's
//! (`admin::outgoing::build`): kept on an edit only while the scheme, host and port of
//! `address` and `username` are unchanged.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::Ctx;
use super::inbound::InboundKind;
use super::objects::{self, AdminObject, Refused};
use super::outgoing::{Parsed, build, public_json};
use crate::model::mqtt::MqttChannel;
use crate::model::object::{ConfigObject, InvalidObject};
use crate::model::outgoing::Input;

impl InboundKind for MqttChannel {
    const TYPE: &'static str = "mqtt";
    fn parse(v: &Value, name: Option<&str>) -> Result<Input<Self>, InvalidObject> {
        <MqttChannel as Parsed>::parse(v, name)
    }
    fn apply(inbound: &crate::inbound::Inbound, defs: &[Self]) {
        inbound.apply_mqtt(defs);
    }
    fn status(inbound: &crate::inbound::Inbound) -> Vec<(String, Value)> {
        inbound
            .mqtt
            .status()
            .into_iter()
            .map(|s| {
                let v = serde_json::to_value(&s).expect("a status serialises");
                (s.name, v)
            })
            .collect()
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
        let def =
            build(&cx.key, input, stored).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        if def.client_id.is_some() {
            let mut all: Vec<MqttChannel> = cx
                .store
                .objects()
                .await
                .map_err(|e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
            all.retain(|d| d.name != def.name);
            all.push(def.clone());
            if let Some(e) = crate::model::mqtt::shared_client_id(&all) {
                return Err(Refused::new(StatusCode::CONFLICT, e));
            }
        }
        Ok(def)
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
