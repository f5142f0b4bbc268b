//! Calls a worker makes that another subsystem answers: `out.*` (outgoing connections) and
//! `secret.*` (ipc-protocol/SPEC.md). The lifecycle layer only routes such a `CALL` to the
//! [`ServerOps`] boot handed the pool and sends back what it answers; it knows nothing of
//! what the ops do.

use bytes::Bytes;
use oxbus_ipc::ReplyMeta;

/// What a [`ServerOps`] call answers: the `REPLY`'s meta and body.
#[derive(Debug, Clone)]
pub struct OpReply {
    pub meta: ReplyMeta,
    pub body: Bytes,
}

impl OpReply {
    /// A JSON answer with the given status.
    pub fn json(status: u16, body: &serde_json::Value) -> OpReply {
        OpReply {
            meta: ReplyMeta {
                status,
                content_type: Some("application/json".into()),
                headers: vec![],
                error: None,
                exc: None,
            },
            body: Bytes::from(body.to_string()),
        }
    }

    /// A failure of the call itself: `error` is the SPEC's code (`unknown_conn`, `timeout`…),
    /// the body `{"error": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> OpReply {
        let mut r = OpReply::json(status, &serde_json::json!({ "error": message }));
        r.meta.error = Some(code.to_owned());
        r
    }
}

/// The worker → server ops another subsystem answers (`out.*`, `secret.*`). Boot hands the
/// pool one implementation ([`crate::lifecycle::pool::Pool::with_server_ops`]).
#[async_trait::async_trait]
pub trait ServerOps: std::fmt::Debug + Send + Sync + 'static {
    /// Whether `op` is answered here.
    fn handles(&self, op: &str) -> bool;

    /// Answers one `CALL` of worker `worker` (its id: sessions it opens, such as SQL
    /// transactions, are its own): `op` as parsed, the meta's raw JSON, the body.
    async fn call(&self, worker: u32, op: &str, raw_meta: Bytes, body: Bytes) -> OpReply;

    /// Worker `worker`'s connection ended: release what it held (roll back its open
    /// transactions, close its streams).
    fn worker_gone(&self, worker: u32);
}

/// Several [`ServerOps`] as one: a call goes to the first that handles its op (`out.*` and
/// `secret.get` to the outgoing connections, `pubsub.*` to the broker, `user_config.get` to
/// the user config); a worker's end is told to all.
#[derive(Debug)]
pub struct OpsSet(pub Vec<std::sync::Arc<dyn ServerOps>>);

#[async_trait::async_trait]
impl ServerOps for OpsSet {
    fn handles(&self, op: &str) -> bool {
        self.0.iter().any(|o| o.handles(op))
    }

    async fn call(&self, worker: u32, op: &str, raw_meta: Bytes, body: Bytes) -> OpReply {
        match self.0.iter().find(|o| o.handles(op)) {
            Some(o) => o.call(worker, op, raw_meta, body).await,
            None => OpReply::error(400, "invalid", &format!("no op {op:?}")),
        }
    }

    fn worker_gone(&self, worker: u32) {
        for o in &self.0 {
            o.worker_gone(worker);
        }
    }
}
