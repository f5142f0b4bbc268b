//! The user config services read (docs/USER_CONFIG.md): this server's live map of every
//! stored user config by name, and the workers' `user_config.get` op that reads it
//! (ipc-protocol/SPEC.md). Python's `self.user_config.<name>` asks for a whole value by
//! name and the server answers from memory: no store, no lock held across an await.
//!
//! Boot applies the definitions of the store (or of the snapshot) before any worker starts,
//! the sync loop each new config version's (a change made through another server of the
//! cluster), the admin API and an import each change made through this server before
//! they answer; a read after that sees the new value, with no restart.
//!
//! Knows `model` and the lifecycle's [`ServerOps`] trait only: boot, `cluster/sync.rs` and
//! the admin API hand it the definitions.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use oxbus_ipc::ReplyMeta;

use crate::lifecycle::ops::{OpReply, ServerOps};
use crate::model::user_config::UserConfig;

/// The one op this module answers.
pub const OP_GET: &str = "user_config.get";

/// SPEC's `error` code of a read of a name that is not stored.
pub const UNKNOWN: &str = "unknown_user_config";

/// This server's user config, each value kept encoded as the op's answer (compact JSON), so
/// that a read copies a reference, not the value.
#[derive(Debug, Default)]
pub struct UserConfigs {
    /// Read by every call, written by an apply: a `std` lock, held for a map lookup or a
    /// swap only, never across an await.
    values: RwLock<HashMap<String, Bytes>>,
}

impl UserConfigs {
    pub fn new() -> UserConfigs {
        UserConfigs::default()
    }

    /// Makes `defs` the user config this server serves (every one; a name not among them
    /// is gone). Swapped whole: a read sees the previous set or this one.
    pub fn apply(&self, defs: &[UserConfig]) {
        let values: HashMap<String, Bytes> = defs
            .iter()
            .map(|d| {
                let json = serde_json::to_vec(&d.value).expect("a JSON value serialises");
                (d.name.clone(), Bytes::from(json))
            })
            .collect();
        *self.values.write().expect("user config lock") = values;
    }

    /// The value of `name` as JSON text, if there is one.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.values
            .read()
            .expect("user config lock")
            .get(name)
            .cloned()
    }

    /// `user_config.get`: 200 with the value (JSON) as the body; 404 `unknown_user_config`;
    /// 400 `invalid` for a meta without a string `name`.
    pub fn answer_get(&self, raw_meta: &[u8]) -> OpReply {
        #[derive(serde::Deserialize)]
        struct Meta {
            name: String,
        }
        let meta: Meta = match serde_json::from_slice(raw_meta) {
            Ok(m) => m,
            Err(e) => {
                return OpReply::error(400, "invalid", &format!("{OP_GET}: bad meta: {e}"));
            }
        };
        match self.get(&meta.name) {
            Some(body) => OpReply {
                meta: ReplyMeta {
                    status: 200,
                    content_type: Some("application/json".into()),
                    headers: vec![],
                    error: None,
                    exc: None,
                },
                body,
            },
            None => OpReply::error(
                404,
                UNKNOWN,
                &format!("no user config named {:?}", meta.name),
            ),
        }
    }
}

#[async_trait::async_trait]
impl ServerOps for UserConfigs {
    fn handles(&self, op: &str) -> bool {
        op == OP_GET
    }

    async fn call(&self, _worker: u32, op: &str, raw_meta: Bytes, _body: Bytes) -> OpReply {
        match op {
            OP_GET => self.answer_get(&raw_meta),
            _ => OpReply::error(501, "invalid", &format!("unknown op: {op}")),
        }
    }

    /// Nothing is held per worker.
    fn worker_gone(&self, _worker: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn def(name: &str, value: Value) -> UserConfig {
        UserConfig {
            name: name.into(),
            description: None,
            value,
        }
    }

    fn body(r: &OpReply) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[tokio::test]
    async fn a_known_name_answers_its_value_and_an_unknown_one_404() {
        let live = UserConfigs::new();
        assert!(live.handles("user_config.get"));
        assert!(!live.handles("user_config.list") && !live.handles("secret.get"));
        live.apply(&[def(
            "app",
            json!({"crm": {"url": "https://crm", "retries": 3}}),
        )]);
        let meta = Bytes::from_static(br#"{"op":"user_config.get","name":"app"}"#);
        let r = live.call(1, OP_GET, meta, Bytes::new()).await;
        assert_eq!(r.meta.status, 200);
        assert_eq!(r.meta.error, None);
        assert_eq!(r.meta.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            body(&r),
            json!({"crm": {"url": "https://crm", "retries": 3}})
        );

        let meta = Bytes::from_static(br#"{"op":"user_config.get","name":"nope"}"#);
        let r = live.call(1, OP_GET, meta, Bytes::new()).await;
        assert_eq!(r.meta.status, 404);
        assert_eq!(r.meta.error.as_deref(), Some("unknown_user_config"));
        assert_eq!(body(&r), json!({"error": "no user config named \"nope\""}));

        for bad in [
            &br#"{"op":"user_config.get"}"#[..],
            br#"{"op":"user_config.get","name":5}"#,
        ] {
            let r = live.call(1, OP_GET, Bytes::from(bad), Bytes::new()).await;
            assert_eq!(r.meta.status, 400, "{}", String::from_utf8_lossy(bad));
            assert_eq!(r.meta.error.as_deref(), Some("invalid"));
        }
    }

    #[test]
    fn an_apply_replaces_the_whole_set() {
        let live = UserConfigs::new();
        live.apply(&[def("a", json!({"x": 1})), def("b", json!({}))]);
        live.apply(&[def("a", json!({"x": 2}))]);
        assert_eq!(live.get("a").as_deref(), Some(&br#"{"x":2}"#[..]));
        assert_eq!(live.get("b"), None);
        live.apply(&[]);
        assert_eq!(live.get("a"), None);
    }
}
