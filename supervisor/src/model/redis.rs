//! A Redis connection as plain data (docs/CONNECTORS.md): `self.out.redis[name]` and Zato's
//! `self.kvdb.conn`. The password only sealed. No I/O here.
//!
//! FOUNDATION (issue 21): the fields below are the contract the Redis work starts from.

use serde::{Deserialize, Serialize};

use crate::model::object::InvalidObject;
use crate::model::outgoing::TlsOptions;

/// An outgoing Redis connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConn {
    pub name: String,
    /// `redis://host:6379/0` or `rediss://…`; never with a password.
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl RedisConn {
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/redis/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)
    }
}

fn default_pool_size() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    5_000
}
