//! The upgrade of a `websocket` channel's request (RFC 6455 §4.2): after the channel's
//! gate let the request in, its handshake headers are checked and it is answered `101`;
//! the upgraded connection goes to [`crate::wsx`], which runs the session. A request that
//! is not a valid WebSocket handshake gets `426` (no `Upgrade: websocket`) or `400`, and,
//! like every answer to a head that asked for an upgrade, a close (`edge::head_gate`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tracing::debug;

use super::http::{Body, Ctx};
use crate::edge::forwarded::Origin;
use crate::edge::gate::{Caller, Rejection, Verifier};
use crate::model::channel::Channel;

/// Whether a header's comma-separated values name `token` (case-insensitive).
fn has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn plain(status: StatusCode, cid: &str, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": msg, "cid": cid }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(cid) {
        r.headers_mut().insert("x-oxbus-cid", v);
    }
    r
}

/// What the edge worked out about the request, for the session.
pub(super) struct Upgrade<'a> {
    pub channel: Arc<Channel>,
    /// The security definition the channel's check used (as the table holds it).
    pub security_def: Option<crate::model::security::SecurityDef>,
    /// `wsx::Wsx::generation` read before the routing table was.
    pub generation: u64,
    pub params: Vec<(String, String)>,
    pub origin: Origin,
    pub caller: Option<Caller>,
    /// Whether the client authenticates after the upgrade (its channel's security
    /// definition checks the credential it sends then).
    pub admit_later: bool,
    pub cid: &'a str,
    /// Held until the session ends (the listener's count of open connections).
    pub hold: Box<dyn Send + Sync>,
}

/// Answers a `websocket` channel's request: `101` and a session, or why not.
pub(super) fn upgrade(cx: &Ctx, mut req: Request<Incoming>, u: Upgrade<'_>) -> Response<Body> {
    let cid = u.cid;
    if !(has_token(&req, header::UPGRADE, "websocket")
        && has_token(&req, header::CONNECTION, "upgrade"))
    {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            cid,
            "this is a WebSocket channel: open it with a WebSocket handshake (Upgrade: websocket, Connection: Upgrade)",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return r;
    }
    if req.version() != hyper::Version::HTTP_11 {
        return plain(
            StatusCode::BAD_REQUEST,
            cid,
            "a WebSocket handshake is an HTTP/1.1 request",
        );
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            cid,
            "unsupported Sec-WebSocket-Version: this server speaks version 13 (RFC 6455)",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    // A browser's page from an origin the channel does not name (cross-site WebSocket
    // hijacking: the browser sends the user's cookies and cached credentials along).
    let allowed = u
        .channel
        .websocket
        .as_ref()
        .map(|w| w.allowed_origins.as_slice())
        .unwrap_or_default();
    let origins: Vec<&HeaderValue> = req.headers().get_all(header::ORIGIN).iter().collect();
    if !allowed.is_empty()
        && (origins.len() > 1
            || origins.first().is_some_and(|origin| {
                !allowed
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
            }))
    {
        return plain(
            StatusCode::FORBIDDEN,
            cid,
            "this page's Origin may not open the channel (allowed_origins)",
        );
    }
    // The key is 16 random bytes in base64: 24 characters.
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if k.len() == 24 => k.as_bytes().to_vec(),
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                cid,
                "missing or malformed Sec-WebSocket-Key (16 bytes in base64)",
            );
        }
    };
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return plain(
            StatusCode::BAD_REQUEST,
            cid,
            "a WebSocket handshake has no body",
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let open = crate::wsx::Open {
        channel: u.channel,
        path: req.uri().path().to_owned(),
        params: u.params,
        query: req.uri().query().unwrap_or("").to_owned(),
        remote_addr: u.origin.addr,
        scheme: u.origin.scheme,
        port: u.origin.port,
        who: u.caller.map(|c| crate::wsx::Who {
            name: c.name,
            kind: c.kind,
            username: c.username,
            subject: c.subject,
        }),
        admit: match (u.admit_later, &u.security_def) {
            (true, Some(def)) => Some(Arc::new(MessageAuth {
                routes: cx.routes.clone(),
                def: def.clone(),
            }) as crate::wsx::auth::AdmitRef),
            _ => None,
        },
        security_def: u.security_def,
        generation: u.generation,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let wsx = cx.wsx.clone();
    let hold = u.hold;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => wsx.accept(TokioIo::new(upgraded), open, hold),
            Err(e) => debug!(error = %e, "websocket upgrade did not complete"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(cid) {
        h.insert("x-oxbus-cid", v);
    }
    r
}

/// The channel's security definition checking a credential a client sends after the
/// upgrade (`wsx::auth`): the definition as the routing table has it *now* (its keys, its
/// rate limit's bucket), refused when it is no longer the one the client was let in under
/// (the session is being closed with 1012 then).
struct MessageAuth {
    routes: Arc<crate::edge::routes::RoutingTable>,
    def: crate::model::security::SecurityDef,
}

impl std::fmt::Debug for MessageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageAuth")
            .field("def", &self.def.name)
            .finish()
    }
}

#[async_trait::async_trait]
impl crate::wsx::auth::Admit for MessageAuth {
    async fn admit(
        &self,
        credential: crate::wsx::auth::Credential,
    ) -> Result<crate::wsx::Who, String> {
        let router = self.routes.current();
        let verifier: Arc<Verifier> = match router.gate.verifier(&self.def.name) {
            Some((def, v)) if *def == self.def => v.clone(),
            _ => {
                return Err(format!(
                    "security definition {} changed or was removed",
                    self.def.name
                ));
            }
        };
        match verifier.admit_credential(credential).await {
            Ok(c) => Ok(crate::wsx::Who {
                name: c.name,
                kind: c.kind,
                username: c.username,
                subject: c.subject,
            }),
            Err(Rejection::Unauthorized { reason, .. } | Rejection::Forbidden(reason)) => {
                Err(reason)
            }
            Err(Rejection::TooMany { reason, .. }) => Err(reason),
        }
    }
}
