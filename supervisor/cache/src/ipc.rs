//! The workers' `cache.*` calls (`ipc-protocol/SPEC.md`, "Cache operations"): parses a
//! CALL's meta ([`IpcCall`]) and answers with an [`IpcReply`] through the registry. Knows
//! nothing of sockets or frames: the supervisor's pool hands the meta and body over.

use crate::caches::Caches;
use crate::def::DEFAULT_CACHE;
use crate::entry::ValueKind;
use crate::error::CacheError;
use bytes::Bytes;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct IpcCall<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    cache: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    kind: Option<ValueKind>,
    #[serde(default)]
    expiry: Option<f64>,
    #[serde(default)]
    by: Option<i64>,
    #[serde(borrow, default)]
    prefix: Option<std::borrow::Cow<'a, str>>,
}

/// The answer to a worker's cache call: status, content type, error kind, body.
#[derive(Debug, PartialEq)]
pub struct IpcReply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub error: Option<&'static str>,
    pub body: Bytes,
}

impl IpcReply {
    fn json(body: impl Into<Bytes>) -> IpcReply {
        IpcReply {
            status: 200,
            content_type: Some("application/json"),
            error: None,
            body: body.into(),
        }
    }

    fn error(e: &CacheError) -> IpcReply {
        IpcReply {
            status: e.status(),
            content_type: Some("application/json"),
            error: Some(e.kind()),
            body: Bytes::from(serde_json::json!({ "error": e.to_string() }).to_string()),
        }
    }
}

impl Caches {
    /// Serves one `cache.*` call of a worker: `meta` is the CALL's JSON meta, `body` its body.
    pub fn serve_ipc(&self, meta: &[u8], body: Bytes) -> IpcReply {
        match self.serve_ipc_inner(meta, body) {
            Ok(r) => r,
            Err(e) => IpcReply::error(&e),
        }
    }

    fn serve_ipc_inner(&self, meta: &[u8], body: Bytes) -> Result<IpcReply, CacheError> {
        let call: IpcCall<'_> = serde_json::from_slice(meta)
            .map_err(|e| CacheError::Invalid(format!("bad cache call: {e}")))?;
        let name = call.cache.as_deref().unwrap_or(DEFAULT_CACHE);
        let cache = self.get(name)?;
        let key = || {
            call.key
                .as_deref()
                .ok_or_else(|| CacheError::Invalid(format!("{} needs a key", call.op)))
        };
        let flag = |b: bool| IpcReply::json(if b { "true" } else { "false" });
        Ok(match &*call.op {
            "cache.get" => match cache.get(key()?) {
                Some(e) => IpcReply {
                    status: 200,
                    content_type: Some(e.kind.content_type()),
                    error: None,
                    body: e.value,
                },
                None => IpcReply {
                    status: 204,
                    content_type: None,
                    error: None,
                    body: Bytes::new(),
                },
            },
            "cache.set" => {
                let kind = call.kind.unwrap_or(ValueKind::Json);
                self.set(&cache, key()?, body, kind, call.expiry)?;
                IpcReply::json("true")
            }
            "cache.delete" => flag(self.delete(&cache, key()?)?),
            "cache.has" => flag(cache.contains(key()?)),
            "cache.expire" => {
                let seconds = call
                    .expiry
                    .ok_or_else(|| CacheError::Invalid("cache.expire needs an expiry".into()))?;
                flag(self.expire(&cache, key()?, seconds)?)
            }
            "cache.incr" => {
                IpcReply::json(self.incr(&cache, key()?, call.by.unwrap_or(1))?.to_string())
            }
            "cache.keys" => IpcReply::json(
                serde_json::to_vec(&cache.keys(call.prefix.as_deref().unwrap_or("")))
                    .expect("strings serialise"),
            ),
            "cache.items" => {
                let items: Vec<(String, ValueKind, String)> = cache
                    .items(call.prefix.as_deref().unwrap_or(""))
                    .into_iter()
                    .map(|(k, e)| {
                        let text = match e.kind {
                            ValueKind::Json => String::from_utf8_lossy(&e.value).into_owned(),
                            ValueKind::Bytes => {
                                use base64::Engine;
                                base64::engine::general_purpose::STANDARD.encode(&e.value)
                            }
                        };
                        (k, e.kind, text)
                    })
                    .collect();
                IpcReply::json(serde_json::to_vec(&items).expect("strings serialise"))
            }
            "cache.clear" => IpcReply::json(self.clear(&cache).to_string()),
            "cache.len" => IpcReply::json(cache.len().to_string()),
            other => {
                return Ok(IpcReply {
                    status: 501,
                    content_type: Some("application/json"),
                    error: None,
                    body: Bytes::from(
                        serde_json::json!({ "error": format!("unknown op: {other}") }).to_string(),
                    ),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::caches::tests::caches;
    use bytes::Bytes;

    #[test]
    fn worker_calls_answer_as_the_protocol_says() {
        let c = caches("a");
        let call = |meta: &str, body: &'static [u8]| {
            c.serve_ipc(meta.as_bytes(), Bytes::from_static(body))
        };
        let r = call(
            r#"{"op":"cache.set","cache":"default","key":"k","kind":"bytes"}"#,
            b"\x00\x01",
        );
        assert_eq!(r.status, 200);
        let r = call(r#"{"op":"cache.get","key":"k"}"#, b"");
        assert_eq!(
            (r.status, r.content_type, &r.body[..]),
            (200, Some("application/octet-stream"), &b"\x00\x01"[..])
        );
        assert_eq!(call(r#"{"op":"cache.get","key":"nope"}"#, b"").status, 204);
        let r = call(r#"{"op":"cache.get","cache":"nope","key":"k"}"#, b"");
        assert_eq!((r.status, r.error), (404, Some("unknown_cache")));
        assert_eq!(
            &call(r#"{"op":"cache.incr","key":"n","by":3}"#, b"").body[..],
            b"3"
        );
        assert_eq!(
            &call(r#"{"op":"cache.has","key":"n"}"#, b"").body[..],
            b"true"
        );
        assert_eq!(
            &call(r#"{"op":"cache.keys","prefix":"k"}"#, b"").body[..],
            br#"["k"]"#
        );
        assert_eq!(
            &call(r#"{"op":"cache.items","prefix":"n"}"#, b"").body[..],
            br#"[["n","json","3"]]"#
        );
        assert_eq!(
            &call(r#"{"op":"cache.delete","key":"n"}"#, b"").body[..],
            b"true"
        );
        assert_eq!(
            &call(r#"{"op":"cache.expire","key":"n","expiry":5}"#, b"").body[..],
            b"false"
        );
        assert_eq!(call(r#"{"op":"cache.get"}"#, b"").status, 400);
        assert_eq!(call(r#"{"op":"cache.fly"}"#, b"").status, 501);
        assert_eq!(&call(r#"{"op":"cache.clear"}"#, b"").body[..], b"1");
    }
}
