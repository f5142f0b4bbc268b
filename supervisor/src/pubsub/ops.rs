//! I20-C fills this file: the workers' `pubsub.*` calls (ipc-protocol/SPEC.md) as a
//! [`ServerOps`].

use bytes::Bytes;

use crate::lifecycle::ops::{OpReply, ServerOps};

#[async_trait::async_trait]
impl ServerOps for super::Broker {
    fn handles(&self, op: &str) -> bool {
        op.starts_with("pubsub.")
    }

    async fn call(&self, _worker: u32, op: &str, _raw_meta: Bytes, _body: Bytes) -> OpReply {
        OpReply::error(500, "internal", &format!("I20-C: {op} is not built yet"))
    }

    fn worker_gone(&self, _worker: u32) {}
}
