//! An established link ([`Link`], the result of a completed handshake): every incoming
//! frame checked and typed ([`Incoming`]), and an `ERROR` from the peer read as
//! [`Error::Refused`]. The handshake that makes a link is in [`super::handshake`]; the
//! framing it reads is in [`super`].

use bytes::Bytes;

use super::{Error, ErrorMsg, FLAG_ASYNC, Frame, Kind, Notify, ReplyMeta, Result, Role, StreamIds};

/// An established link, the result of a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// This server's name.
    pub local: String,
    /// The authenticated peer's name.
    pub peer: String,
    /// This server's role on the link.
    pub role: Role,
}

/// A frame received on an established link, checked and typed by [`Link::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Answer with [`Frame::pong`] and the same nonce.
    Ping([u8; 8]),
    Pong([u8; 8]),
    /// The peer wrote `config_version` to the store.
    Notify(Notify),
    /// A call on a stream the peer opened: read `meta` with [`Op::parse`]. With
    /// `asynchronous`, nothing is sent back, not even an error.
    Call {
        stream: u32,
        asynchronous: bool,
        meta: Bytes,
        body: Bytes,
    },
    /// The answer to a call this side made on `stream`.
    Reply {
        stream: u32,
        status: u16,
        body: Bytes,
    },
    /// The peer closes gracefully: send it no new call.
    Bye,
}

impl Link {
    /// The stream id allocator of this side of the link (one per link: every call made on
    /// the link takes its id from the same allocator).
    pub fn stream_ids(&self) -> StreamIds {
        StreamIds::new(self.role)
    }

    /// Checks a frame received after the handshake against `BUS.md` and types it. An
    /// `ERROR` from the peer is [`Error::Refused`]; any other error is a protocol violation
    /// to report with [`Error::to_frame`] before closing.
    pub fn parse(&self, frame: Frame) -> Result<Incoming> {
        let stream = frame.stream;
        match frame.kind {
            Kind::Hello | Kind::Challenge | Kind::Auth | Kind::Welcome => Err(Error::Unexpected {
                got: frame.kind,
                expected: "anything but a handshake frame after WELCOME",
            }),
            Kind::Ping | Kind::Pong => {
                let nonce: [u8; 8] =
                    frame
                        .payload
                        .as_ref()
                        .try_into()
                        .map_err(|_| Error::BadPayload {
                            kind: frame.kind,
                            reason: format!("{} bytes, not 8", frame.payload.len()),
                        })?;
                Ok(if frame.kind == Kind::Ping {
                    Incoming::Ping(nonce)
                } else {
                    Incoming::Pong(nonce)
                })
            }
            Kind::Notify => {
                let n: Notify = frame.parse_json()?;
                if n.server != self.peer {
                    return Err(Error::BadPayload {
                        kind: Kind::Notify,
                        reason: format!("server {:?} is not the sender, {:?}", n.server, self.peer),
                    });
                }
                Ok(Incoming::Notify(n))
            }
            Kind::Call => {
                if !self.role.peer().owns(stream) {
                    return Err(Error::BadStream {
                        kind: Kind::Call,
                        stream,
                        rule: "a CALL must be on a stream of the sender's half",
                    });
                }
                let (meta, body) = frame.split_meta()?;
                Ok(Incoming::Call {
                    stream,
                    asynchronous: frame.flags & FLAG_ASYNC != 0,
                    meta,
                    body,
                })
            }
            Kind::Reply => {
                if !self.role.owns(stream) {
                    return Err(Error::BadStream {
                        kind: Kind::Reply,
                        stream,
                        rule: "a REPLY must be on a stream of the receiver's half",
                    });
                }
                let (meta, body) = frame.split_meta()?;
                let meta: ReplyMeta =
                    serde_json::from_slice(&meta).map_err(|e| Error::BadPayload {
                        kind: Kind::Reply,
                        reason: format!("meta: {e}"),
                    })?;
                Ok(Incoming::Reply {
                    stream,
                    status: meta.status,
                    body,
                })
            }
            Kind::Bye => {
                if !frame.payload.is_empty() {
                    return Err(Error::BadPayload {
                        kind: Kind::Bye,
                        reason: "BYE has an empty payload".into(),
                    });
                }
                Ok(Incoming::Bye)
            }
            Kind::Error => Err(refused(&frame)),
        }
    }
}

/// The [`Error::Refused`] for an `ERROR` frame from the peer (readable or not).
pub(crate) fn refused(frame: &Frame) -> Error {
    match serde_json::from_slice::<ErrorMsg>(&frame.payload) {
        Ok(m) => Error::Refused {
            code: m.code,
            message: m.message,
        },
        Err(_) => Error::Refused {
            code: "(unreadable)".into(),
            message: String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(1024)])
                .into_owned(),
        },
    }
}
