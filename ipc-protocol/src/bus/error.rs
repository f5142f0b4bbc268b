//! The cluster bus's one error type and the `ERROR` codes it is reported with: which
//! error the peer hears about ([`Error::code`], [`Error::to_frame`]) and which stay local.
//! Errors only: no frames are read or written here.

use super::{Frame, Kind, MAX_SERVERS};

/// Errors of the cluster bus. [`Error::code`] names the `ERROR` code each one is reported
/// with, [`Error::to_frame`] builds that frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("flag bits {flags:#04x} are not allowed on {kind}")]
    FlagsNotAllowed { kind: Kind, flags: u8 },
    #[error("{kind} on stream {stream:#x}: {rule}")]
    BadStream {
        kind: Kind,
        stream: u32,
        rule: &'static str,
    },
    #[error("CALL/REPLY meta length {meta_len} exceeds the payload of {payload_len} bytes")]
    BadMetaLength { meta_len: usize, payload_len: usize },
    #[error("{kind} payload is invalid: {reason}")]
    BadPayload { kind: Kind, reason: String },
    #[error("unexpected {got} frame: expected {expected}")]
    Unexpected { got: Kind, expected: &'static str },
    #[error(
        "{what} {name:?} is not a valid name: {reason} (1 to 63 bytes of a-z, 0-9, '.', '_', \
         '-', starting with a letter or digit)"
    )]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error(
        "server {local:?} speaks cluster bus protocol {ours}, its peer speaks {theirs}: every \
         server of a cluster must run an Oxbus release with the same bus protocol"
    )]
    ProtocolMismatch {
        local: String,
        ours: u32,
        theirs: u64,
    },
    #[error(
        "server {local:?} is in cluster {ours:?} but server {peer:?} is in cluster {theirs:?}: \
         check the cluster name in both servers' configuration"
    )]
    WrongCluster {
        local: String,
        ours: String,
        peer: String,
        theirs: String,
    },
    #[error(
        "server {local:?} dialed server {expected:?} but reached {got:?}: the address is stale \
         or belongs to another server"
    )]
    ReachedWrongServer {
        local: String,
        expected: String,
        got: String,
    },
    #[error("{}", wrong_direction(.dialer, .acceptor))]
    WrongDirection { dialer: String, acceptor: String },
    #[error(
        "the proof from server {peer:?} does not verify: the two servers do not share the \
         same cluster secret"
    )]
    BadProof { peer: String },
    #[error(
        "server {local:?} already has a link with server {peer:?}: the old connection is not \
         dead yet, or two servers use the same name"
    )]
    DuplicateLink { local: String, peer: String },
    #[error(
        "a link between {local:?} and {peer:?} would make {count} servers ({}): a cluster has \
         at most {MAX_SERVERS} servers",
        .servers.join(", ")
    )]
    ServerLimit {
        local: String,
        peer: String,
        count: usize,
        servers: Vec<String>,
    },
    #[error("the peer closed the connection with {code}: {message}")]
    Refused { code: String, message: String },
    #[error(
        "the cluster secret is {len} bytes long; it must have at least {min} (for example \
         the output of `openssl rand -hex 32`)"
    )]
    WeakSecret { len: usize, min: usize },
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
}

fn wrong_direction(dialer: &str, acceptor: &str) -> String {
    if dialer == acceptor {
        format!("server {dialer:?} reached itself: a server has no link to itself")
    } else {
        format!(
            "server {dialer:?} dialed server {acceptor:?}, but the server whose name sorts \
             first dials: {acceptor:?} must dial {dialer:?}"
        )
    }
}

/// `Result` with the bus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `code` of an `ERROR` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A malformed frame or payload, an unknown kind or flag, a frame out of order.
    ProtocolError,
    /// The two servers speak different bus protocol versions.
    ProtocolMismatch,
    /// The two servers are configured with different cluster names.
    WrongCluster,
    /// The names do not fit: another server answered, the wrong side dialed, or a server
    /// reached itself.
    UnexpectedServer,
    /// A handshake proof did not verify: the secrets differ.
    BadProof,
    /// The two servers already have a link.
    DuplicateLink,
    /// The link would make more than [`MAX_SERVERS`] servers.
    ServerLimit,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::ProtocolError,
        ErrorCode::ProtocolMismatch,
        ErrorCode::WrongCluster,
        ErrorCode::UnexpectedServer,
        ErrorCode::BadProof,
        ErrorCode::DuplicateLink,
        ErrorCode::ServerLimit,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::WrongCluster => "wrong_cluster",
            ErrorCode::UnexpectedServer => "unexpected_server",
            ErrorCode::BadProof => "bad_proof",
            ErrorCode::DuplicateLink => "duplicate_link",
            ErrorCode::ServerLimit => "server_limit",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The `ERROR` code this error is reported to the peer with, or `None` when the peer is
    /// not told: it refused first ([`Error::Refused`]), or the problem is local
    /// ([`Error::WeakSecret`], [`Error::Random`]).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::TooLarge { .. }
            | Error::UnknownKind(_)
            | Error::UnknownFlags(_)
            | Error::FlagsNotAllowed { .. }
            | Error::BadStream { .. }
            | Error::BadMetaLength { .. }
            | Error::BadPayload { .. }
            | Error::Unexpected { .. }
            | Error::BadName { .. } => ErrorCode::ProtocolError,
            Error::ProtocolMismatch { .. } => ErrorCode::ProtocolMismatch,
            Error::WrongCluster { .. } => ErrorCode::WrongCluster,
            Error::ReachedWrongServer { .. } | Error::WrongDirection { .. } => {
                ErrorCode::UnexpectedServer
            }
            Error::BadProof { .. } => ErrorCode::BadProof,
            Error::DuplicateLink { .. } => ErrorCode::DuplicateLink,
            Error::ServerLimit { .. } => ErrorCode::ServerLimit,
            Error::Refused { .. } | Error::WeakSecret { .. } | Error::Random(_) => return None,
        })
    }

    /// The `ERROR` frame to send before closing the connection, or `None` when nothing is
    /// sent (see [`Error::code`]).
    pub fn to_frame(&self) -> Option<Frame> {
        self.code()
            .map(|code| Frame::error(code, &self.to_string()))
    }
}
