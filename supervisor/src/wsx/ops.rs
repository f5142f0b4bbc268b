//! The workers' `wsx.*` calls (ipc-protocol/SPEC.md) and the peers' (ipc-protocol/BUS.md):
//! `wsx.send` (one client, on the server its id names) and `wsx.broadcast` (every client
//! of a channel, on every server).

use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;

use super::{DeliverError, PushError, Wsx};
use crate::lifecycle::ops::{OpReply, ServerOps};

/// How long a send to a client on another server waits for that server's answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct SendMeta {
    client_id: String,
    #[serde(default)]
    binary: bool,
}

#[derive(Deserialize)]
struct BroadcastMeta {
    channel: String,
    #[serde(default)]
    binary: bool,
}

/// A pub/sub batch for one client (the body: its messages, a JSON array).
#[derive(Deserialize)]
struct PubsubMeta {
    client_id: String,
    sub_key: String,
}

impl Wsx {
    /// Queues a pub/sub batch for this server's client `id`: as Zato's `zwsx.psrq`, or
    /// `{"sub_key": …, "messages": […]}` for a raw client.
    fn pubsub_local(
        &self,
        id: &str,
        sub_key: &str,
        messages: Vec<serde_json::Value>,
    ) -> Result<(), PushError> {
        let c = self.client(id).ok_or(PushError::Gone)?;
        // Not let in yet, or closing (what is queued now would be dropped): not here.
        if !c.admitted.load(std::sync::atomic::Ordering::Acquire) || c.close.borrow().is_some() {
            return Err(PushError::Gone);
        }
        let body = if c.zato {
            super::zato::pubsub_request(messages)
        } else {
            Bytes::from(serde_json::json!({"sub_key": sub_key, "messages": messages}).to_string())
        };
        c.push(super::message(body, false))?;
        self.inner
            .messages_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Delivers a pub/sub batch to client `client_id`, here or on the server its id names.
    pub async fn deliver_pubsub(
        &self,
        client_id: &str,
        sub_key: &str,
        messages: Vec<serde_json::Value>,
    ) -> Result<(), DeliverError> {
        let Some(server) = Wsx::server_of(client_id) else {
            return Err(DeliverError::Gone);
        };
        if server == self.inner.server {
            return match self.pubsub_local(client_id, sub_key, messages) {
                Ok(()) => Ok(()),
                Err(PushError::Gone) => Err(DeliverError::Gone),
                Err(PushError::Full) => Err(DeliverError::Failed(format!(
                    "WebSocket client {client_id} does not read fast enough"
                ))),
            };
        }
        let Some(peers) = self.inner.peers.get() else {
            return Err(DeliverError::Failed(format!(
                "WebSocket client {client_id} is on server {server}, and this server has no cluster bus"
            )));
        };
        let meta =
            serde_json::json!({"op": "wsx.pubsub", "client_id": client_id, "sub_key": sub_key});
        let body = Bytes::from(serde_json::Value::Array(messages).to_string());
        match peers.call(server, meta, body, PEER_TIMEOUT).await {
            Ok((200, _)) => Ok(()),
            Ok((404, _)) => Err(DeliverError::Gone),
            Ok((status, body)) => Err(DeliverError::Failed(format!(
                "server {server} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ))),
            // Not linked (restarting, or cut off for a while) or no answer: tried again; a
            // server that restarts drops its earlier clients' subscriptions itself.
            Err(e) => Err(DeliverError::Failed(format!(
                "a delivery to WebSocket client {client_id} on server {server}: {e}"
            ))),
        }
    }

    /// Closes client `client_id` (4005), here or on the server its id names: Ok(true) when
    /// it was connected, Ok(false) when no server holds it, Err when its server did not
    /// answer.
    pub async fn disconnect(&self, client_id: &str) -> Result<bool, String> {
        let Some(server) = Wsx::server_of(client_id) else {
            return Ok(false);
        };
        if server == self.inner.server {
            return Ok(self.disconnect_local(client_id));
        }
        let Some(peers) = self.inner.peers.get() else {
            return Ok(false);
        };
        let meta = serde_json::json!({"op": "wsx.disconnect", "client_id": client_id});
        match peers.call(server, meta, Bytes::new(), PEER_TIMEOUT).await {
            Ok((200, _)) => Ok(true),
            Ok((404, _)) => Ok(false),
            Ok((status, body)) => Err(format!(
                "server {server} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) if e.starts_with("no bus link") => Ok(false),
            Err(e) => Err(format!("server {server}: {e}")),
        }
    }

    /// A send to one client: here, or on the server its id names.
    async fn send(&self, m: SendMeta, body: Bytes) -> OpReply {
        let Some(server) = Wsx::server_of(&m.client_id) else {
            return OpReply::error(
                400,
                "invalid",
                &format!("{:?} is not a WebSocket client id", m.client_id),
            );
        };
        if server == self.inner.server {
            return send_reply(&m.client_id, self.send_local(&m.client_id, body, m.binary));
        }
        let Some(peers) = self.inner.peers.get() else {
            return gone(&m.client_id);
        };
        let meta =
            serde_json::json!({"op": "wsx.send", "client_id": m.client_id, "binary": m.binary});
        match peers.call(server, meta, body, PEER_TIMEOUT).await {
            Ok((200, _)) => OpReply::json(200, &serde_json::json!({"sent": true})),
            Ok((404, _)) => gone(&m.client_id),
            Ok((409, _)) => full(&m.client_id),
            Ok((status, body)) => OpReply::error(
                502,
                "peer",
                &format!(
                    "server {server} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            ),
            // The server is not linked (down, or not in the cluster): its clients are gone.
            Err(e) if e.starts_with("no bus link") => OpReply::error(
                404,
                "unknown_client",
                &format!("WebSocket client {} cannot be reached: {e}", m.client_id),
            ),
            // Linked, but the call failed (a timeout, the link dropped under it): whether
            // the message was queued is not known.
            Err(e) => OpReply::error(
                503,
                "peer",
                &format!("a send to WebSocket client {}: {e}", m.client_id),
            ),
        }
    }

    /// A broadcast: this server's clients of the channel now, the peers' through the bus.
    fn broadcast(&self, m: BroadcastMeta, body: Bytes) -> OpReply {
        let n = self.broadcast_local(&m.channel, &body, m.binary);
        if let Some(peers) = self.inner.peers.get() {
            let meta = serde_json::json!({"op": "wsx.broadcast", "channel": m.channel, "binary": m.binary});
            peers.broadcast(&meta, body);
        }
        OpReply::json(200, &serde_json::json!({"local_clients": n}))
    }

    /// A peer's `wsx.*` call (`op`, as the bus read it from `meta`): (status, body) for the
    /// bus.
    pub fn peer_call(&self, op: &str, meta: &[u8], body: Bytes) -> (u16, Bytes) {
        match op {
            "wsx.send" => match serde_json::from_slice::<SendMeta>(meta) {
                Ok(m) => match self.send_local(&m.client_id, body, m.binary) {
                    Ok(()) => (200, Bytes::from_static(b"{}")),
                    Err(PushError::Gone) => (404, Bytes::from_static(b"{}")),
                    Err(PushError::Full) => (409, Bytes::from_static(b"{}")),
                },
                Err(e) => bad_meta(e),
            },
            "wsx.pubsub" => match (
                serde_json::from_slice::<PubsubMeta>(meta),
                serde_json::from_slice::<Vec<serde_json::Value>>(&body),
            ) {
                (Ok(m), Ok(messages)) => {
                    match self.pubsub_local(&m.client_id, &m.sub_key, messages) {
                        Ok(()) => (200, Bytes::from_static(b"{}")),
                        Err(PushError::Gone) => (404, Bytes::from_static(b"{}")),
                        Err(PushError::Full) => {
                            (409, Bytes::from_static(b"{\"error\":\"queue full\"}"))
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => bad_meta(e),
            },
            "wsx.clients" => {
                #[derive(Deserialize)]
                struct ClientsMeta {
                    #[serde(default)]
                    channel: Option<String>,
                    #[serde(default)]
                    limit: Option<usize>,
                }
                match serde_json::from_slice::<ClientsMeta>(meta) {
                    Ok(m) => {
                        let limit = m.limit.unwrap_or(1000).clamp(1, 10_000);
                        let (total, list) = self.describe(m.channel.as_deref(), limit);
                        let doc = serde_json::json!({"total": total, "clients": list});
                        (200, Bytes::from(doc.to_string()))
                    }
                    Err(e) => bad_meta(e),
                }
            }
            "wsx.disconnect" => match serde_json::from_slice::<SendMeta>(meta) {
                Ok(m) if self.disconnect_local(&m.client_id) => (200, Bytes::from_static(b"{}")),
                Ok(_) => (404, Bytes::from_static(b"{}")),
                Err(e) => bad_meta(e),
            },
            "wsx.broadcast" => match serde_json::from_slice::<BroadcastMeta>(meta) {
                Ok(m) => {
                    let n = self.broadcast_local(&m.channel, &body, m.binary);
                    (200, Bytes::from(format!("{{\"local_clients\":{n}}}")))
                }
                Err(e) => bad_meta(e),
            },
            other => (
                400,
                Bytes::from(serde_json::json!({"error": format!("no op {other:?}")}).to_string()),
            ),
        }
    }
}

/// A peer op's answer to a meta (or body) it could not read: a JSON body whatever the
/// message holds.
fn bad_meta(e: impl std::fmt::Display) -> (u16, Bytes) {
    let doc = serde_json::json!({"error": format!("bad meta or body: {e}")});
    (400, Bytes::from(doc.to_string()))
}

fn send_reply(id: &str, r: Result<(), PushError>) -> OpReply {
    match r {
        Ok(()) => OpReply::json(200, &serde_json::json!({"sent": true})),
        Err(PushError::Gone) => gone(id),
        Err(PushError::Full) => full(id),
    }
}

fn gone(id: &str) -> OpReply {
    OpReply::error(
        404,
        "unknown_client",
        &format!("no WebSocket client {id} is connected"),
    )
}

fn full(id: &str) -> OpReply {
    OpReply::error(
        409,
        "queue_full",
        &format!(
            "WebSocket client {id} does not read fast enough: its send queue is full and it is being disconnected"
        ),
    )
}

#[async_trait::async_trait]
impl ServerOps for Wsx {
    fn handles(&self, op: &str) -> bool {
        op.starts_with("wsx.")
    }

    async fn call(&self, _worker: u32, op: &str, raw_meta: Bytes, body: Bytes) -> OpReply {
        match op {
            "wsx.send" => match serde_json::from_slice::<SendMeta>(&raw_meta) {
                Ok(m) => self.send(m, body).await,
                Err(e) => OpReply::error(400, "invalid", &format!("wsx.send: {e}")),
            },
            "wsx.broadcast" => match serde_json::from_slice::<BroadcastMeta>(&raw_meta) {
                Ok(m) => self.broadcast(m, body),
                Err(e) => OpReply::error(400, "invalid", &format!("wsx.broadcast: {e}")),
            },
            other => OpReply::error(400, "invalid", &format!("no op {other:?}")),
        }
    }

    fn worker_gone(&self, _worker: u32) {}
}
