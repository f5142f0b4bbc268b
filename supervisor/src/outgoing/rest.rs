//! A REST connection's client (issue 19: being built; every call answers that it is not).

use bytes::Bytes;
use std::sync::Arc;

use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::model::outgoing::RestConn;
use crate::secrets::Key;

#[derive(Debug)]
pub struct RestClient {
    def: RestConn,
}

impl RestClient {
    pub fn new(def: RestConn, _key: &Arc<Key>, _metrics: &Arc<crate::metrics::Metrics>) -> Self {
        RestClient { def }
    }

    pub fn def(&self) -> &RestConn {
        &self.def
    }

    pub async fn call(&self, _raw_meta: &[u8], _body: Bytes) -> OpReply {
        OpReply::error(501, "invalid", "outgoing REST calls are not built yet")
    }

    pub async fn ping(&self) -> PingOutcome {
        PingOutcome {
            ok: false,
            took_ms: 0.0,
            detail: "outgoing REST calls are not built yet".into(),
        }
    }

    pub fn stats(&self) -> ConnStats {
        ConnStats {
            name: self.def.name.clone(),
            ..ConnStats::default()
        }
    }
}
