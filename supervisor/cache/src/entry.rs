//! One cached value: [`Entry`], its [`ValueKind`], and the per-entry expiry moka applies
//! ([`ByEntry`]). No storage or replication here.

use crate::clock::{Stamp, now_ms};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// JSON text (any JSON-serialisable value on the Python side).
    Json,
    /// Raw bytes.
    Bytes,
}

impl ValueKind {
    /// The content type a value of this kind travels with.
    pub fn content_type(self) -> &'static str {
        match self {
            ValueKind::Json => "application/json",
            ValueKind::Bytes => "application/octet-stream",
        }
    }

    pub fn from_content_type(ct: &str) -> Option<ValueKind> {
        match ct {
            "application/json" | "json" => Some(ValueKind::Json),
            "application/octet-stream" | "bytes" => Some(ValueKind::Bytes),
            _ => None,
        }
    }
}

/// One cached value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub kind: ValueKind,
    /// Wall-clock ms when it expires; 0 = never.
    pub expires_at: u64,
    /// The expiry it was written with, ms (0 = none): what extend-on-get extends by.
    pub ttl_ms: u64,
    pub stamp: Stamp,
}

impl Entry {
    fn remaining(&self) -> Option<Duration> {
        (self.expires_at != 0)
            .then(|| Duration::from_millis(self.expires_at.saturating_sub(now_ms())))
    }
}

/// Per-entry expiry for moka, from the entry's absolute expiry time.
pub(crate) struct ByEntry {
    pub(crate) extend_on_get: bool,
}

impl moka::Expiry<String, Entry> for ByEntry {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        v.remaining()
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.remaining()
    }

    fn expire_after_read(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        left: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        if self.extend_on_get && v.ttl_ms > 0 {
            Some(Duration::from_millis(v.ttl_ms))
        } else {
            left
        }
    }
}
