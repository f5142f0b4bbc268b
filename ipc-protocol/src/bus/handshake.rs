//! The handshake as typestate machines, one per role. Each step takes the frame the peer
//! sent and returns the frame to send next, so a runtime cannot skip a check or send
//! anything early: the only way to a [`Link`] is through every verification `BUS.md`
//! ("Handshake") lists, in its order.
//!
//! ```text
//! Dialer::start ──HELLO──►  Acceptor::on_hello
//! Dialer::on_challenge ◄──CHALLENGE──
//!        ──AUTH──►  AcceptorChallenged::on_auth → AcceptorVerified::welcome
//! DialerAuthenticated::on_welcome ◄──WELCOME──
//! ```
//!
//! On any `Err`, send [`Error::to_frame`] (when it is `Some`) and close the connection.

use super::messages::check_servers;
use super::{
    Auth, Challenge, Error, Exchange, Frame, Hello, Kind, Link, MAX_SERVERS, Nonce,
    PROTOCOL_VERSION, Result, Role, Welcome, check_header, check_name, proof, refused, verify,
};
use serde::Deserialize;
use std::collections::BTreeSet;

/// The handshake key, kept out of `Debug` output.
#[derive(Clone)]
struct HiddenKey([u8; 32]);

impl std::fmt::Debug for HiddenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HiddenKey(..)")
    }
}

/// The dialer before the acceptor's `CHALLENGE`.
#[derive(Debug, Clone)]
pub struct Dialer {
    key: HiddenKey,
    cluster: String,
    server: String,
    peer: String,
    nonce: Nonce,
}

/// The dialer after it verified the acceptor's proof and sent `AUTH`, awaiting `WELCOME`.
#[derive(Debug, Clone)]
pub struct DialerAuthenticated {
    server: String,
    peer: String,
}

/// The acceptor of a new connection, before `HELLO`.
#[derive(Debug, Clone)]
pub struct Acceptor {
    key: HiddenKey,
    cluster: String,
    server: String,
    nonce: Nonce,
}

/// The acceptor after it sent `CHALLENGE`, awaiting `AUTH`.
#[derive(Debug, Clone)]
pub struct AcceptorChallenged {
    key: HiddenKey,
    cluster: String,
    server: String,
    peer: String,
    dialer_nonce: Nonce,
    nonce: Nonce,
}

/// The acceptor after the dialer's proof verified; [`AcceptorVerified::welcome`] admits it.
#[derive(Debug, Clone)]
pub struct AcceptorVerified {
    server: String,
    peer: String,
}

impl Dialer {
    /// Starts the handshake of server `server` of `cluster` with server `peer` (the name the
    /// membership gives for the address being dialed), with the handshake `key`
    /// ([`super::derive_key`]) and a fresh `nonce` ([`Nonce::random`]). Returns the `HELLO`
    /// to send. Refuses names that are invalid or where `server` does not sort first.
    pub fn start(
        key: &[u8; 32],
        cluster: &str,
        server: &str,
        peer: &str,
        nonce: Nonce,
    ) -> Result<(Dialer, Frame)> {
        check_name("cluster", cluster)?;
        check_name("server", server)?;
        check_name("server", peer)?;
        if Role::between(server, peer) != Some(Role::Dialer) {
            return Err(Error::WrongDirection {
                dialer: server.to_owned(),
                acceptor: peer.to_owned(),
            });
        }
        let hello = Frame::json(
            Kind::Hello,
            &Hello {
                protocol: PROTOCOL_VERSION,
                cluster: cluster.to_owned(),
                server: server.to_owned(),
                nonce,
            },
        );
        let dialer = Dialer {
            key: HiddenKey(*key),
            cluster: cluster.to_owned(),
            server: server.to_owned(),
            peer: peer.to_owned(),
            nonce,
        };
        Ok((dialer, hello))
    }

    /// Checks the acceptor's answer to `HELLO`: protocol, cluster, the acceptor's name,
    /// then its proof. Returns the `AUTH` to send.
    pub fn on_challenge(self, frame: &Frame) -> Result<(DialerAuthenticated, Frame)> {
        expect(frame, Kind::Challenge, "CHALLENGE")?;
        check_protocol(frame, &self.server)?;
        let c: Challenge = frame.parse_json()?;
        check_name("cluster", &c.cluster)?;
        check_name("server", &c.server)?;
        if c.cluster != self.cluster {
            return Err(Error::WrongCluster {
                local: self.server,
                ours: self.cluster,
                peer: c.server,
                theirs: c.cluster,
            });
        }
        if c.server != self.peer {
            return Err(Error::ReachedWrongServer {
                local: self.server,
                expected: self.peer,
                got: c.server,
            });
        }
        let x = Exchange {
            cluster: &self.cluster,
            dialer: &self.server,
            acceptor: &self.peer,
            dialer_nonce: &self.nonce,
            acceptor_nonce: &c.nonce,
        };
        if !verify(&self.key.0, Role::Acceptor, &x, &c.proof) {
            return Err(Error::BadProof { peer: self.peer });
        }
        let auth = Frame::json(
            Kind::Auth,
            &Auth {
                proof: proof(&self.key.0, Role::Dialer, &x),
            },
        );
        let next = DialerAuthenticated {
            server: self.server,
            peer: self.peer,
        };
        Ok((next, auth))
    }
}

impl DialerAuthenticated {
    /// The acceptor, whose proof verified.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Checks `WELCOME` and the server limit against this server's other live links
    /// (`linked`: the names of the servers it has an established link with, either role).
    /// After `Ok`, anything may flow.
    pub fn on_welcome(self, frame: &Frame, linked: &[&str]) -> Result<(Link, Welcome)> {
        expect(frame, Kind::Welcome, "WELCOME")?;
        let w: Welcome = frame.parse_json()?;
        check_servers(&w.servers, &self.server, &self.peer).map_err(|reason| {
            Error::BadPayload {
                kind: Kind::Welcome,
                reason: reason.to_string(),
            }
        })?;
        admit(&self.server, &self.peer, linked, &w.servers)?;
        let link = Link {
            local: self.server,
            peer: self.peer,
            role: Role::Dialer,
        };
        Ok((link, w))
    }
}

impl Acceptor {
    /// The acceptor side of a new connection of server `server` of `cluster`, with the
    /// handshake `key` and a fresh `nonce` ([`Nonce::random`]).
    pub fn new(key: &[u8; 32], cluster: &str, server: &str, nonce: Nonce) -> Result<Acceptor> {
        check_name("cluster", cluster)?;
        check_name("server", server)?;
        Ok(Acceptor {
            key: HiddenKey(*key),
            cluster: cluster.to_owned(),
            server: server.to_owned(),
            nonce,
        })
    }

    /// Checks `HELLO`: protocol, cluster, the dialer's name (it must sort before this
    /// server's). Returns the `CHALLENGE` to send.
    pub fn on_hello(self, frame: &Frame) -> Result<(AcceptorChallenged, Frame)> {
        expect(frame, Kind::Hello, "HELLO")?;
        check_protocol(frame, &self.server)?;
        let h: Hello = frame.parse_json()?;
        check_name("cluster", &h.cluster)?;
        check_name("server", &h.server)?;
        if h.cluster != self.cluster {
            return Err(Error::WrongCluster {
                local: self.server,
                ours: self.cluster,
                peer: h.server,
                theirs: h.cluster,
            });
        }
        if Role::between(&h.server, &self.server) != Some(Role::Dialer) {
            return Err(Error::WrongDirection {
                dialer: h.server,
                acceptor: self.server,
            });
        }
        let x = Exchange {
            cluster: &self.cluster,
            dialer: &h.server,
            acceptor: &self.server,
            dialer_nonce: &h.nonce,
            acceptor_nonce: &self.nonce,
        };
        let challenge = Frame::json(
            Kind::Challenge,
            &Challenge {
                protocol: PROTOCOL_VERSION,
                cluster: self.cluster.clone(),
                server: self.server.clone(),
                nonce: self.nonce,
                proof: proof(&self.key.0, Role::Acceptor, &x),
            },
        );
        let next = AcceptorChallenged {
            key: self.key,
            cluster: self.cluster,
            server: self.server,
            peer: h.server,
            dialer_nonce: h.nonce,
            nonce: self.nonce,
        };
        Ok((next, challenge))
    }
}

impl AcceptorChallenged {
    /// The name the dialer gave in `HELLO` (not authenticated yet).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Verifies the dialer's proof in `AUTH`.
    pub fn on_auth(self, frame: &Frame) -> Result<AcceptorVerified> {
        expect(frame, Kind::Auth, "AUTH")?;
        let a: Auth = frame.parse_json()?;
        let x = Exchange {
            cluster: &self.cluster,
            dialer: &self.peer,
            acceptor: &self.server,
            dialer_nonce: &self.dialer_nonce,
            acceptor_nonce: &self.nonce,
        };
        if !verify(&self.key.0, Role::Dialer, &x, &a.proof) {
            return Err(Error::BadProof { peer: self.peer });
        }
        Ok(AcceptorVerified {
            server: self.server,
            peer: self.peer,
        })
    }
}

impl AcceptorVerified {
    /// The authenticated dialer.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Admits the dialer unless it already has a link with this server (`duplicate_link`)
    /// or the link would make more than three servers (`server_limit`), counting the
    /// servers this one has an established link with (`linked`, either role). Returns the
    /// `WELCOME` to send; the link is up once it is sent.
    pub fn welcome(self, linked: &[&str], config_version: u64) -> Result<(Link, Frame)> {
        let servers = admit(&self.server, &self.peer, linked, &[])?;
        let welcome = Frame::json(
            Kind::Welcome,
            &Welcome {
                config_version,
                servers,
            },
        );
        let link = Link {
            local: self.server,
            peer: self.peer,
            role: Role::Acceptor,
        };
        Ok((link, welcome))
    }
}

/// The duplicate and server-limit checks of both roles. Returns every server counted, in
/// byte order.
fn admit(local: &str, peer: &str, linked: &[&str], listed: &[String]) -> Result<Vec<String>> {
    if linked.contains(&peer) {
        return Err(Error::DuplicateLink {
            local: local.to_owned(),
            peer: peer.to_owned(),
        });
    }
    let all: BTreeSet<&str> = linked
        .iter()
        .copied()
        .chain([local, peer])
        .chain(listed.iter().map(String::as_str))
        .collect();
    let servers: Vec<String> = all.into_iter().map(str::to_owned).collect();
    if servers.len() > MAX_SERVERS {
        return Err(Error::ServerLimit {
            local: local.to_owned(),
            peer: peer.to_owned(),
            count: servers.len(),
            servers,
        });
    }
    Ok(servers)
}

/// The frame must be of `kind`; an `ERROR` is the peer's refusal.
fn expect(frame: &Frame, kind: Kind, expected: &'static str) -> Result<()> {
    check_header(frame.kind, frame.flags, frame.stream)?;
    if frame.kind == kind {
        Ok(())
    } else if frame.kind == Kind::Error {
        Err(refused(frame))
    } else {
        Err(Error::Unexpected {
            got: frame.kind,
            expected,
        })
    }
}

/// Reads `protocol` alone first, so that a peer of another version hears
/// `protocol_mismatch` whatever else its message holds.
fn check_protocol(frame: &Frame, local: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Version {
        protocol: u64,
    }
    let v: Version = frame.parse_json()?;
    if v.protocol != u64::from(PROTOCOL_VERSION) {
        return Err(Error::ProtocolMismatch {
            local: local.to_owned(),
            ours: PROTOCOL_VERSION,
            theirs: v.protocol,
        });
    }
    Ok(())
}
