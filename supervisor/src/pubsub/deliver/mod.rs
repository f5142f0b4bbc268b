//! I20-B fills this folder: leases, delivery tasks (service, push, pull), cursors, retries,
//! dead letters; subscribe/unsubscribe; the admin's queue operations.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use super::{Caller, Defs, Delivered, Inner, PubsubError, QueuedMsg, SubStats, SubscribeReq};

pub struct Delivery {}

impl Delivery {
    pub fn new() -> Delivery {
        Delivery {}
    }
}

fn nb<T>() -> Result<T, PubsubError> {
    Err(PubsubError::Internal("I20-B: not built yet".into()))
}

pub(crate) fn applied(_inner: &Arc<Inner>, _defs: &Arc<Defs>) {}

pub(crate) fn start(_inner: &Arc<Inner>, _shutdown: tokio::sync::watch::Receiver<bool>) {}

pub(crate) async fn peer_call(
    _inner: &Arc<Inner>,
    _meta: &serde_json::Value,
    _body: Bytes,
) -> (u16, Bytes) {
    (500, Bytes::from_static(b"I20-B: not built yet"))
}

pub(crate) async fn subscribe(
    _inner: &Arc<Inner>,
    _caller: &Caller,
    _req: SubscribeReq,
) -> Result<String, PubsubError> {
    nb()
}

pub(crate) async fn unsubscribe(
    _inner: &Arc<Inner>,
    _caller: &Caller,
    _sub_key: &str,
) -> Result<(), PubsubError> {
    nb()
}

pub(crate) async fn get_messages(
    _inner: &Arc<Inner>,
    _caller: &Caller,
    _sub_key: &str,
    _max: usize,
    _wait: Duration,
) -> Result<Vec<Delivered>, PubsubError> {
    nb()
}

pub(crate) async fn ack(
    _inner: &Arc<Inner>,
    _caller: &Caller,
    _sub_key: &str,
    _msg_ids: &[String],
) -> Result<usize, PubsubError> {
    nb()
}

pub(crate) async fn sub_stats(
    _inner: &Arc<Inner>,
    _sub_key: &str,
) -> Result<SubStats, PubsubError> {
    nb()
}

pub(crate) async fn browse(
    _inner: &Arc<Inner>,
    _sub_key: &str,
    _limit: usize,
) -> Result<Vec<QueuedMsg>, PubsubError> {
    nb()
}

pub(crate) async fn purge(_inner: &Arc<Inner>, _sub_key: &str) -> Result<u64, PubsubError> {
    nb()
}

pub(crate) async fn dead_letters(
    _inner: &Arc<Inner>,
    _sub_key: &str,
    _limit: usize,
) -> Result<Vec<QueuedMsg>, PubsubError> {
    nb()
}

pub(crate) async fn requeue(
    _inner: &Arc<Inner>,
    _sub_key: &str,
    _msg_ids: Option<&[String]>,
) -> Result<u64, PubsubError> {
    nb()
}
