//! A SQL connection's client (issue 19: being built; every call answers that it is not).

use bytes::Bytes;
use std::sync::Arc;

use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::model::outgoing::SqlConn;
use crate::secrets::Key;

#[derive(Debug)]
pub struct SqlClient {
    def: SqlConn,
}

impl SqlClient {
    pub fn new(def: SqlConn, _key: &Arc<Key>, _metrics: &Arc<crate::metrics::Metrics>) -> Self {
        SqlClient { def }
    }

    pub fn def(&self) -> &SqlConn {
        &self.def
    }

    pub async fn call(&self, _worker: u32, _raw_meta: &[u8], _body: Bytes) -> OpReply {
        OpReply::error(501, "invalid", "outgoing SQL calls are not built yet")
    }

    pub async fn ping(&self) -> PingOutcome {
        PingOutcome {
            ok: false,
            took_ms: 0.0,
            detail: "outgoing SQL calls are not built yet".into(),
        }
    }

    pub fn stats(&self) -> ConnStats {
        ConnStats {
            name: self.def.name.clone(),
            ..ConnStats::default()
        }
    }
}

impl SqlClient {
    pub fn worker_gone(&self, _worker: u32) {}
}
