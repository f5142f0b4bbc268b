//! I20-A fills this file: the publish path (queue → flusher → one transaction per flush →
//! answer → fanout and peers), the committed-batch frame, topic figures.

use bytes::Bytes;
use std::sync::Arc;

use super::{Caller, Inner, NewMsg, PubsubError, TopicStats};

/// This server's publish queue and flusher state.
pub struct Publisher {}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher {}
    }
}

pub(crate) fn start(_inner: &Arc<Inner>, _shutdown: tokio::sync::watch::Receiver<bool>) {}

pub(crate) async fn publish(
    _inner: &Arc<Inner>,
    _caller: &Caller,
    _topic: &str,
    _msgs: Vec<NewMsg>,
) -> Result<Vec<String>, PubsubError> {
    Err(PubsubError::Internal(
        "I20-A: publish is not built yet".into(),
    ))
}

/// Encodes a committed batch for the bus.
pub fn encode_committed(_batch: &super::Committed) -> Bytes {
    Bytes::new()
}

pub(crate) fn peer_committed(_inner: &Arc<Inner>, _frame: &[u8]) -> Result<(), String> {
    Err("I20-A: not built yet".into())
}

pub(crate) async fn topic_stats(_inner: &Arc<Inner>) -> Result<Vec<TopicStats>, PubsubError> {
    Err(PubsubError::Internal("I20-A: not built yet".into()))
}
