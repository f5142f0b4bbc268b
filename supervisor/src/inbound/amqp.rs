//! FOUNDATION (issue 21): a placeholder the AMQP-channel work replaces; it runs nothing yet.

use std::sync::Arc;

use crate::model::amqp::AmqpChannel;

/// This server's AMQP channels.
#[derive(Debug)]
pub struct AmqpChannels {}

impl AmqpChannels {
    pub fn new(
        _server: &str,
        _key: Arc<crate::secrets::Key>,
        _metrics: Arc<crate::metrics::Metrics>,
    ) -> AmqpChannels {
        AmqpChannels {}
    }

    pub fn set_pool(&self, _pool: Arc<crate::lifecycle::pool::Pool>) {}

    pub fn apply(&self, _defs: &[AmqpChannel]) {}

    pub fn start(&self, _shutdown: tokio::sync::watch::Receiver<bool>) {}

    pub async fn drain(&self) {}
}
