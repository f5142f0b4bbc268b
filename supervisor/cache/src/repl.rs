//! The replication record: one write as it travels to the other servers (`cache.apply` on
//! the cluster bus). Wire format only; applying it is [`crate::Caches::apply_remote`].

use crate::clock::Stamp;
use crate::entry::{Entry, ValueKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Repl {
    Put {
        cache: String,
        key: String,
        kind: ValueKind,
        /// JSON text as is, or base64 for bytes.
        value: String,
        #[serde(default)]
        expires_at: u64,
        #[serde(default)]
        ttl_ms: u64,
        stamp: Stamp,
    },
    Delete {
        cache: String,
        key: String,
        stamp: Stamp,
    },
    Clear {
        cache: String,
        stamp: Stamp,
    },
}

impl Repl {
    pub(crate) fn put(cache: &str, key: &str, e: &Entry) -> Repl {
        use base64::Engine;
        let value = match e.kind {
            ValueKind::Json => String::from_utf8_lossy(&e.value).into_owned(),
            ValueKind::Bytes => base64::engine::general_purpose::STANDARD.encode(&e.value),
        };
        Repl::Put {
            cache: cache.to_owned(),
            key: key.to_owned(),
            kind: e.kind,
            value,
            expires_at: e.expires_at,
            ttl_ms: e.ttl_ms,
            stamp: e.stamp,
        }
    }

    pub(crate) fn stamp(&self) -> Stamp {
        match self {
            Repl::Put { stamp, .. } | Repl::Delete { stamp, .. } | Repl::Clear { stamp, .. } => {
                *stamp
            }
        }
    }
}
