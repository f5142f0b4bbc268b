//! FOUNDATION (issue 21): a placeholder the MQTT-channel work replaces; it runs nothing yet.

use std::sync::Arc;

use crate::model::mqtt::MqttChannel;

/// This server's MQTT channels.
#[derive(Debug)]
pub struct MqttChannels {}

impl MqttChannels {
    pub fn new(
        _server: &str,
        _key: Arc<crate::secrets::Key>,
        _metrics: Arc<crate::metrics::Metrics>,
    ) -> MqttChannels {
        MqttChannels {}
    }

    pub fn set_pool(&self, _pool: Arc<crate::lifecycle::pool::Pool>) {}

    pub fn apply(&self, _defs: &[MqttChannel]) {}

    pub fn start(&self, _shutdown: tokio::sync::watch::Receiver<bool>) {}

    pub async fn drain(&self) {}
}
