//! The bus protocol's unit suite: the handshake and its refusals, framing, links, operations,
//! stream ids, reconnect delays and names. Longer than ~800 lines on purpose: one suite for
//! the protocol's behaviour, read top to bottom beside `BUS.md`.

use super::*;
use bytes::BufMut;

const SECRET: &[u8] = b"unit-test cluster secret, 32+ bytes long";

fn key() -> [u8; 32] {
    derive_key(SECRET)
}

fn nonces() -> (Nonce, Nonce) {
    (Nonce([0x11; 32]), Nonce([0x22; 32]))
}

fn exchange<'a>(d: &'a Nonce, a: &'a Nonce) -> Exchange<'a> {
    Exchange {
        cluster: "prod",
        dialer: "alpha",
        acceptor: "bravo",
        dialer_nonce: d,
        acceptor_nonce: a,
    }
}

/// Runs a handshake between `alpha` (dialer, `dialer_key`) and `bravo` (acceptor,
/// `acceptor_key`) and returns the first error, or both links.
fn handshake(dialer_key: &[u8; 32], acceptor_key: &[u8; 32]) -> Result<(Link, Link)> {
    let (d, a) = nonces();
    let (dialer, hello) = Dialer::start(dialer_key, "prod", "alpha", "bravo", d)?;
    let acceptor = Acceptor::new(acceptor_key, "prod", "bravo", a)?;
    let (acceptor, challenge) = acceptor.on_hello(&hello)?;
    let (dialer, auth) = dialer.on_challenge(&challenge)?;
    let (acceptor_link, welcome) = acceptor.on_auth(&auth)?.welcome(&[], 5)?;
    let (dialer_link, _) = dialer.on_welcome(&welcome, &[])?;
    Ok((dialer_link, acceptor_link))
}

// ---- proofs ----

#[test]
fn same_secret_completes_the_handshake() {
    let (d, a) = handshake(&key(), &key()).unwrap();
    assert_eq!((d.role, a.role), (Role::Dialer, Role::Acceptor));
    assert_eq!((d.peer.as_str(), a.peer.as_str()), ("bravo", "alpha"));
}

#[test]
fn wrong_secret_fails_on_both_sides() {
    let other = derive_key(b"a different cluster secret, also 32+ bytes");
    // The dialer is the first to see the acceptor's proof, so it refuses first.
    assert_eq!(
        handshake(&other, &key()).unwrap_err(),
        Error::BadProof {
            peer: "bravo".into()
        }
    );
    assert_eq!(
        handshake(&key(), &other).unwrap_err(),
        Error::BadProof {
            peer: "bravo".into()
        }
    );
    let (d, a) = nonces();
    let x = exchange(&d, &a);
    assert!(!verify(
        &other,
        Role::Dialer,
        &x,
        &proof(&key(), Role::Dialer, &x)
    ));
    assert_eq!(
        Error::BadProof { peer: "x".into() }.code(),
        Some(ErrorCode::BadProof)
    );
}

#[test]
fn swapped_roles_fail() {
    let (d, a) = nonces();
    let x = exchange(&d, &a);
    let p = proof(&key(), Role::Acceptor, &x);
    assert!(verify(&key(), Role::Acceptor, &x, &p));
    assert!(!verify(&key(), Role::Dialer, &x, &p));
    // Swapping the names instead of the role label changes the proof too.
    let swapped = Exchange {
        dialer: "bravo",
        acceptor: "alpha",
        ..x
    };
    assert!(!verify(&key(), Role::Acceptor, &swapped, &p));
}

#[test]
fn altered_nonce_name_or_cluster_fails() {
    let (d, a) = nonces();
    let x = exchange(&d, &a);
    let good = proof(&key(), Role::Dialer, &x);
    let other = Nonce([0x33; 32]);
    let mut flipped = d;
    flipped.0[31] ^= 1;
    let variants = [
        Exchange {
            dialer_nonce: &other,
            ..x
        },
        Exchange {
            dialer_nonce: &flipped,
            ..x
        },
        Exchange {
            acceptor_nonce: &other,
            ..x
        },
        // The two nonces swapped.
        Exchange {
            dialer_nonce: &a,
            acceptor_nonce: &d,
            ..x
        },
        Exchange {
            dialer: "alphb",
            ..x
        },
        Exchange {
            acceptor: "charlie",
            ..x
        },
        Exchange {
            cluster: "staging",
            ..x
        },
    ];
    for v in &variants {
        assert!(!verify(&key(), Role::Dialer, v, &good), "{v:?}");
    }
    let mut bad = good;
    bad.0[0] ^= 0x80;
    assert!(!verify(&key(), Role::Dialer, &x, &bad));
}

#[test]
fn length_prefixes_keep_field_boundaries() {
    // "ab" + "c" and "a" + "bc" concatenate alike; the transcript tells them apart.
    let (d, a) = nonces();
    let one = Exchange {
        dialer: "ab",
        acceptor: "c",
        ..exchange(&d, &a)
    };
    let two = Exchange {
        dialer: "a",
        acceptor: "bc",
        ..one
    };
    assert_ne!(
        transcript(Role::Dialer, &one),
        transcript(Role::Dialer, &two)
    );
}

#[test]
fn a_reflected_challenge_proof_is_not_an_auth() {
    // An attacker without the secret answers the acceptor's CHALLENGE with the acceptor's own
    // proof: the role label makes it fail.
    let (d, a) = nonces();
    let (_, hello) = Dialer::start(&key(), "prod", "alpha", "bravo", d).unwrap();
    let (challenged, challenge) = Acceptor::new(&key(), "prod", "bravo", a)
        .unwrap()
        .on_hello(&hello)
        .unwrap();
    let c: Challenge = challenge.parse_json().unwrap();
    let auth = Frame::json(Kind::Auth, &Auth { proof: c.proof });
    assert_eq!(
        challenged.on_auth(&auth).unwrap_err().code(),
        Some(ErrorCode::BadProof)
    );
}

#[test]
fn a_replayed_auth_fails_against_a_fresh_acceptor_nonce() {
    let (d, a) = nonces();
    // A recorded handshake ...
    let (dialer, hello) = Dialer::start(&key(), "prod", "alpha", "bravo", d).unwrap();
    let (_, challenge) = Acceptor::new(&key(), "prod", "bravo", a)
        .unwrap()
        .on_hello(&hello)
        .unwrap();
    let (_, recorded_auth) = dialer.on_challenge(&challenge).unwrap();
    // ... replayed to the acceptor, which picks a new nonce for the new connection.
    let (challenged, _) = Acceptor::new(&key(), "prod", "bravo", Nonce([0x44; 32]))
        .unwrap()
        .on_hello(&hello)
        .unwrap();
    assert_eq!(
        challenged.on_auth(&recorded_auth).unwrap_err().code(),
        Some(ErrorCode::BadProof)
    );
    // A recorded CHALLENGE replayed to a dialer with a fresh nonce fails the same way.
    let (dialer, _) = Dialer::start(&key(), "prod", "alpha", "bravo", Nonce([0x55; 32])).unwrap();
    assert_eq!(
        dialer.on_challenge(&challenge).unwrap_err().code(),
        Some(ErrorCode::BadProof)
    );
}

#[test]
fn handshake_debug_output_hides_the_key() {
    let (d, _) = nonces();
    let (dialer, _) = Dialer::start(&[0xab; 32], "prod", "alpha", "bravo", d).unwrap();
    let text = format!("{dialer:?}");
    assert!(text.contains("HiddenKey(..)"), "{text}");
    assert!(!text.contains("171"), "{text}");
}

// ---- handshake refusals ----

#[test]
fn acceptor_refusals_in_order() {
    let (d, a) = nonces();
    let acceptor = || Acceptor::new(&key(), "prod", "bravo", a).unwrap();
    let hello = |v: serde_json::Value| Frame::json(Kind::Hello, &v);
    let nonce = d.to_hex();
    // Protocol is read first, whatever else is (not) there.
    let e = acceptor()
        .on_hello(&hello(serde_json::json!({"protocol": 2})))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ProtocolMismatch));
    assert!(
        e.to_string().contains("protocol 1, its peer speaks 2"),
        "{e}"
    );
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"protocol": "1"}),
        serde_json::json!({"protocol": 1}),
        serde_json::json!({"protocol": 1, "cluster": "prod", "server": "alpha", "nonce": "00"}),
        serde_json::json!({"protocol": 1, "cluster": "prod", "server": "Alpha", "nonce": nonce}),
        serde_json::json!({"protocol": 1, "cluster": "", "server": "alpha", "nonce": nonce}),
    ] {
        let e = acceptor().on_hello(&hello(bad.clone())).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ProtocolError), "{bad}: {e}");
    }
    let e = acceptor()
        .on_hello(&hello(
            serde_json::json!({"protocol": 1, "cluster": "dev", "server": "alpha", "nonce": nonce}),
        ))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::WrongCluster));
    // charlie sorts after bravo: bravo dials charlie, never the reverse; nor itself.
    for name in ["charlie", "bravo"] {
        let e = acceptor()
            .on_hello(&hello(
                serde_json::json!({"protocol": 1, "cluster": "prod", "server": name, "nonce": nonce}),
            ))
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnexpectedServer), "{name}");
    }
    // Unknown fields are ignored.
    assert!(
        acceptor()
            .on_hello(&hello(serde_json::json!({
                "protocol": 1, "cluster": "prod", "server": "alpha", "nonce": nonce, "x": [1]
            })))
            .is_ok()
    );
}

#[test]
fn dialer_refusals() {
    let (d, a) = nonces();
    let challenge_from = |cluster: &str, server: &str, protocol: u32| {
        let x = Exchange {
            cluster,
            dialer: "alpha",
            acceptor: server,
            dialer_nonce: &d,
            acceptor_nonce: &a,
        };
        Frame::json(
            Kind::Challenge,
            &Challenge {
                protocol,
                cluster: cluster.into(),
                server: server.into(),
                nonce: a,
                proof: proof(&key(), Role::Acceptor, &x),
            },
        )
    };
    let dialer = || {
        Dialer::start(&key(), "prod", "alpha", "bravo", d)
            .unwrap()
            .0
    };
    let code = |f: &Frame| dialer().on_challenge(f).unwrap_err().code();
    assert_eq!(
        code(&challenge_from("prod", "bravo", 9)),
        Some(ErrorCode::ProtocolMismatch)
    );
    assert_eq!(
        code(&challenge_from("dev", "bravo", 1)),
        Some(ErrorCode::WrongCluster)
    );
    // The address of bravo was answered by charlie (a stale membership entry).
    let e = dialer()
        .on_challenge(&challenge_from("prod", "charlie", 1))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnexpectedServer));
    assert!(e.to_string().contains("reached \"charlie\""), "{e}");
    assert!(
        dialer()
            .on_challenge(&challenge_from("prod", "bravo", 1))
            .is_ok()
    );

    // The dialer refuses to start the wrong way round or towards itself.
    for peer in ["alpha", "aardvark"] {
        let e = Dialer::start(&key(), "prod", "alpha", peer, d).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnexpectedServer), "{peer}");
    }
    assert!(Dialer::start(&key(), "prod", "alpha", "bravo", d).is_ok());
}

#[test]
fn an_error_during_the_handshake_is_the_peers_refusal() {
    let (d, a) = nonces();
    let (dialer, _) = Dialer::start(&key(), "prod", "alpha", "bravo", d).unwrap();
    let refusal = Frame::error(ErrorCode::WrongCluster, "no");
    let e = dialer.on_challenge(&refusal).unwrap_err();
    assert_eq!(
        e,
        Error::Refused {
            code: "wrong_cluster".into(),
            message: "no".into()
        }
    );
    // Nothing is sent back to a peer that refused.
    assert_eq!(e.to_frame(), None);
    let garbled = Frame::new(Kind::Error, 0, &b"\xffnot json"[..]);
    let acceptor = Acceptor::new(&key(), "prod", "bravo", a).unwrap();
    assert!(matches!(
        acceptor.on_hello(&garbled),
        Err(Error::Refused { code, .. }) if code == "(unreadable)"
    ));
}

#[test]
fn frames_out_of_order_are_protocol_errors() {
    let (d, a) = nonces();
    let (dialer, hello) = Dialer::start(&key(), "prod", "alpha", "bravo", d).unwrap();
    // The acceptor wants HELLO first.
    let e = Acceptor::new(&key(), "prod", "bravo", a)
        .unwrap()
        .on_hello(&Frame::ping([0; 8]))
        .unwrap_err();
    assert_eq!(
        e,
        Error::Unexpected {
            got: Kind::Ping,
            expected: "HELLO"
        }
    );
    assert_eq!(e.code(), Some(ErrorCode::ProtocolError));
    // The dialer wants CHALLENGE, not WELCOME (skipping the acceptor's proof).
    let welcome = Frame::json(
        Kind::Welcome,
        &Welcome {
            config_version: 1,
            servers: vec!["alpha".into(), "bravo".into()],
        },
    );
    assert!(matches!(
        dialer.clone().on_challenge(&welcome),
        Err(Error::Unexpected {
            got: Kind::Welcome,
            ..
        })
    ));
    // A connection-level frame on a stream is refused even if built by hand.
    let mut on_stream = hello.clone();
    on_stream.stream = 3;
    assert!(matches!(
        Acceptor::new(&key(), "prod", "bravo", a)
            .unwrap()
            .on_hello(&on_stream),
        Err(Error::BadStream { .. })
    ));
    // The dialer, once authenticated, wants WELCOME.
    let (acceptor, challenge) = Acceptor::new(&key(), "prod", "bravo", a)
        .unwrap()
        .on_hello(&hello)
        .unwrap();
    let (dialer, auth) = dialer.on_challenge(&challenge).unwrap();
    assert!(dialer.clone().on_welcome(&challenge, &[]).is_err());
    // A WELCOME must list both ends, sorted, and at most three servers.
    for servers in [
        vec!["alpha"],
        vec!["bravo", "alpha"],
        vec!["alpha", "alpha", "bravo"],
        vec!["alpha", "bravo", "charlie", "delta"],
        vec!["alpha", "bravo", "Charlie"],
    ] {
        let w = Frame::json(
            Kind::Welcome,
            &Welcome {
                config_version: 1,
                servers: servers.iter().map(|s| s.to_string()).collect(),
            },
        );
        let e = dialer.clone().on_welcome(&w, &[]).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ProtocolError), "{servers:?}");
    }
    // The acceptor wants AUTH, not a CALL.
    let mut call = BytesMut::new();
    encode_call(&mut call, 0, 1, &serde_json::json!({"op": "x"}), b"").unwrap();
    let call = FrameDecoder::default().decode(&mut call).unwrap().unwrap();
    assert!(matches!(
        acceptor.clone().on_auth(&call),
        Err(Error::Unexpected {
            got: Kind::Call,
            ..
        })
    ));
    assert!(acceptor.on_auth(&auth).is_ok());
}

#[test]
fn duplicate_links_and_a_fourth_server_are_refused() {
    let (d, a) = nonces();
    let verified = || {
        let (dialer, hello) = Dialer::start(&key(), "prod", "alpha", "bravo", d).unwrap();
        let (acceptor, challenge) = Acceptor::new(&key(), "prod", "bravo", a)
            .unwrap()
            .on_hello(&hello)
            .unwrap();
        let (dialer, auth) = dialer.on_challenge(&challenge).unwrap();
        (dialer, acceptor.on_auth(&auth).unwrap())
    };
    // Acceptor side.
    let e = verified().1.welcome(&["alpha"], 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DuplicateLink));
    let e = verified().1.welcome(&["charlie", "delta"], 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ServerLimit));
    assert!(
        e.to_string()
            .contains("4 servers (alpha, bravo, charlie, delta): a cluster has at most 3"),
        "{e}"
    );
    let (_, welcome) = verified().1.welcome(&["charlie"], 9).unwrap();
    let w: Welcome = welcome.parse_json().unwrap();
    assert_eq!(w.servers, ["alpha", "bravo", "charlie"]);
    // Dialer side: its own links plus the servers the WELCOME names.
    let (dialer, _) = verified();
    let e = dialer.on_welcome(&welcome, &["delta"]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ServerLimit));
    let (dialer, _) = verified();
    let e = dialer.on_welcome(&welcome, &["bravo"]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DuplicateLink));
    let (dialer, _) = verified();
    assert!(dialer.on_welcome(&welcome, &["charlie"]).is_ok());
}

#[test]
fn invalid_local_configuration_is_refused_before_anything_is_sent() {
    let (d, a) = nonces();
    assert!(matches!(
        Dialer::start(&key(), "Prod", "alpha", "bravo", d),
        Err(Error::BadName {
            what: "cluster",
            ..
        })
    ));
    assert!(matches!(
        Acceptor::new(&key(), "prod", "-bravo", a),
        Err(Error::BadName { what: "server", .. })
    ));
}

// ---- frames ----

fn header(len: u32, kind: u8, flags: u8, stream: u32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(len);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b
}

#[test]
fn partial_frames_wait_for_more() {
    let f = Frame::ping([9; 8]);
    let wire = f.to_bytes();
    let d = FrameDecoder::default();
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
    }
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(f));
}

#[test]
fn decoder_refuses_bad_headers_before_the_payload() {
    let d = FrameDecoder::default();
    let dec = |mut b: BytesMut| d.decode(&mut b);
    assert_eq!(dec(header(0, 11, 0, 0)), Err(Error::UnknownKind(11)));
    assert_eq!(dec(header(0, 0, 0, 0)), Err(Error::UnknownKind(0)));
    assert_eq!(dec(header(0, 5, 0x02, 1)), Err(Error::UnknownFlags(0x02)));
    // ASYNC is for CALL only.
    assert_eq!(
        dec(header(0, Kind::Reply as u8, FLAG_ASYNC, 1)),
        Err(Error::FlagsNotAllowed {
            kind: Kind::Reply,
            flags: 1
        })
    );
    assert!(
        dec(header(0, Kind::Call as u8, FLAG_ASYNC, 1))
            .unwrap()
            .is_some()
    );
    // Streams: 0 for connection-level kinds, a real id for CALL / REPLY.
    for (kind, stream) in [
        (Kind::Ping, 1),
        (Kind::Notify, 0x8000_0001),
        (Kind::Call, 0),
        (Kind::Reply, 0x8000_0000),
    ] {
        assert!(
            matches!(
                dec(header(0, kind as u8, 0, stream)),
                Err(Error::BadStream { .. })
            ),
            "{kind} on {stream:#x}"
        );
    }
    // Too large: refused from the header, whatever follows.
    assert_eq!(
        dec(header(MAX_PAYLOAD as u32 + 1, 7, 0, 0)),
        Err(Error::TooLarge {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        })
    );
    // Before the handshake is complete, the limit is tiny: an HTTP or TLS client hitting
    // the port is refused at once.
    let hs = FrameDecoder::handshake();
    assert_eq!(hs.max_payload(), HANDSHAKE_MAX_PAYLOAD);
    let mut b = header(4097, 1, 0, 0);
    assert!(matches!(
        hs.decode(&mut b),
        Err(Error::TooLarge { len: 4097, .. })
    ));
    let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert!(matches!(hs.decode(&mut http), Err(Error::TooLarge { .. })));
    let mut tls = BytesMut::from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03][..]);
    assert!(matches!(hs.decode(&mut tls), Err(Error::TooLarge { .. })));
    assert_eq!(
        FrameDecoder::with_max_payload(usize::MAX).max_payload(),
        MAX_PAYLOAD
    );
    for e in [Error::UnknownKind(11), Error::UnknownFlags(2)] {
        let f = e.to_frame().unwrap();
        let m: ErrorMsg = f.parse_json().unwrap();
        assert_eq!(m.code, "protocol_error");
    }
}

#[test]
fn encoders_refuse_what_the_decoder_would_refuse() {
    let mut out = BytesMut::new();
    assert!(matches!(
        encode_call(&mut out, 0, 0, &serde_json::json!({"op": "x"}), b""),
        Err(Error::BadStream { .. })
    ));
    assert!(matches!(
        encode_call(&mut out, 0x04, 1, &serde_json::json!({"op": "x"}), b""),
        Err(Error::UnknownFlags(0x04))
    ));
    assert!(matches!(
        encode_reply(&mut out, 0x8000_0000, 200, b""),
        Err(Error::BadStream { .. })
    ));
    assert!(matches!(
        encode_meta_frame(&mut out, Kind::Notify, 0, 0, b"{}", b""),
        Err(Error::BadStream { .. })
    ));
    assert!(matches!(
        encode_meta_frame(&mut out, Kind::Reply, FLAG_ASYNC, 1, b"{}", b""),
        Err(Error::FlagsNotAllowed { .. })
    ));
    assert!(out.is_empty());
    let big = vec![0u8; MAX_PAYLOAD];
    assert!(matches!(
        encode_reply(&mut out, 1, 200, &big),
        Err(Error::TooLarge { .. })
    ));
    assert!(out.is_empty(), "a refused frame leaves nothing behind");
}

#[test]
fn every_kind_round_trips_its_code() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_u8(k as u8), Ok(k));
    }
    assert_eq!(Kind::from_u8(16), Err(Error::UnknownKind(16)));
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        codes,
        [
            "protocol_error",
            "protocol_mismatch",
            "wrong_cluster",
            "unexpected_server",
            "bad_proof",
            "duplicate_link",
            "server_limit"
        ]
    );
}

// ---- the established link ----

fn links() -> (Link, Link) {
    handshake(&key(), &key()).unwrap()
}

fn call_frame(stream: u32, flags: u8, meta: serde_json::Value, body: &[u8]) -> Frame {
    let mut b = BytesMut::new();
    encode_call(&mut b, flags, stream, &meta, body).unwrap();
    FrameDecoder::default().decode(&mut b).unwrap().unwrap()
}

#[test]
fn link_checks_stream_halves() {
    let (alpha, bravo) = links();
    let mut alpha_ids = alpha.stream_ids();
    let mut bravo_ids = bravo.stream_ids();
    let (s_alpha, s_bravo) = (alpha_ids.next_id(), bravo_ids.next_id());
    assert_eq!((s_alpha, s_bravo), (1, 0x8000_0001));
    let meta = serde_json::json!({"op": "deploy.remove", "modules": ["m"], "config_version": 3});
    // A call travels from its opener to the other side only.
    assert!(
        bravo
            .parse(call_frame(s_alpha, 0, meta.clone(), b""))
            .is_ok()
    );
    assert!(
        alpha
            .parse(call_frame(s_bravo, 0, meta.clone(), b""))
            .is_ok()
    );
    assert!(matches!(
        alpha.parse(call_frame(s_alpha, 0, meta.clone(), b"")),
        Err(Error::BadStream { .. })
    ));
    // A reply comes back on the opener's stream.
    let reply = |stream| {
        let mut b = BytesMut::new();
        encode_reply(&mut b, stream, 200, b"{}").unwrap();
        FrameDecoder::default().decode(&mut b).unwrap().unwrap()
    };
    assert_eq!(
        alpha.parse(reply(s_alpha)),
        Ok(Incoming::Reply {
            stream: 1,
            status: 200,
            body: Bytes::from_static(b"{}")
        })
    );
    assert!(matches!(
        bravo.parse(reply(s_alpha)),
        Err(Error::BadStream { .. })
    ));
    // A REPLY whose meta has no status is a protocol error.
    let mut b = BytesMut::new();
    encode_meta_frame(&mut b, Kind::Reply, 0, 1, b"{\"ok\":1}", b"").unwrap();
    let f = FrameDecoder::default().decode(&mut b).unwrap().unwrap();
    assert_eq!(
        alpha.parse(f).unwrap_err().code(),
        Some(ErrorCode::ProtocolError)
    );
}

#[test]
fn link_checks_connection_level_frames() {
    let (alpha, bravo) = links();
    assert_eq!(alpha.parse(Frame::ping([7; 8])), Ok(Incoming::Ping([7; 8])));
    assert!(matches!(
        alpha.parse(Frame::new(Kind::Pong, 0, vec![1u8; 7])),
        Err(Error::BadPayload { .. })
    ));
    assert!(matches!(
        alpha.parse(Frame::new(Kind::Bye, 0, &b"x"[..])),
        Err(Error::BadPayload { .. })
    ));
    assert_eq!(alpha.parse(Frame::bye()), Ok(Incoming::Bye));
    let n = Notify {
        config_version: 4,
        server: "bravo".into(),
        kinds: None,
    };
    assert_eq!(
        alpha.parse(Frame::notify(&n)),
        Ok(Incoming::Notify(n.clone()))
    );
    // The NOTIFY's server must be the sender.
    assert!(bravo.parse(Frame::notify(&n)).is_err());
    // No handshake frame after WELCOME.
    let (_, hello) = Dialer::start(&key(), "prod", "alpha", "bravo", nonces().0).unwrap();
    assert!(matches!(
        bravo.parse(hello),
        Err(Error::Unexpected {
            got: Kind::Hello,
            ..
        })
    ));
    assert!(matches!(
        bravo.parse(Frame::error(ErrorCode::ProtocolError, "bad")),
        Err(Error::Refused { .. })
    ));
    // An ASYNC call is marked.
    let meta = serde_json::json!({"op": "anything"});
    assert!(matches!(
        bravo.parse(call_frame(5, FLAG_ASYNC, meta, b"\x00")),
        Ok(Incoming::Call {
            asynchronous: true,
            ..
        })
    ));
}

// ---- ops ----

#[test]
fn ops_parse_or_say_why_not() {
    let parse = |v: serde_json::Value| Op::parse(&serde_json::to_vec(&v).unwrap());
    let ok = parse(serde_json::json!({
        "config_version": 3, "op": "deploy.activate", "modules": [{"version": 2, "name": "m"}],
        "future_field": true
    }))
    .unwrap();
    assert_eq!(ok.name(), "deploy.activate");
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"op":"deploy.activate","modules":[{"name":"m","version":2}],"config_version":3}"#
    );
    let e = parse(serde_json::json!({"op": "frobnicate"})).unwrap_err();
    assert_eq!(
        (e.status(), e.to_string().as_str()),
        (501, "unknown op: frobnicate")
    );
    for reserved in ["cache.get", "pubsub.publish", "invoke"] {
        let e = parse(serde_json::json!({"op": reserved})).unwrap_err();
        assert!(matches!(e, OpError::Reserved { .. }), "{reserved}");
        assert_eq!(e.status(), 501);
        assert!(is_reserved_op(reserved));
    }
    assert!(!is_reserved_op("invoke.x"));
    assert!(!is_reserved_op("cachet"));
    for bad in [
        serde_json::json!({"modules": []}),
        serde_json::json!({"op": 7}),
        serde_json::json!({"op": "deploy.activate", "modules": [], "config_version": 1}),
        serde_json::json!({"op": "deploy.activate", "modules": [{"name": "m"}], "config_version": 1}),
        serde_json::json!({"op": "deploy.activate", "modules": [{"name": "m", "version": 1}]}),
        serde_json::json!({"op": "deploy.remove", "modules": ["a", "a"], "config_version": 1}),
        serde_json::json!({"op": "deploy.remove", "modules": [""], "config_version": 1}),
        serde_json::json!({"op": "deploy.remove", "modules": [1], "config_version": 1}),
    ] {
        let e = parse(bad.clone()).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}: {e}");
        assert!(!e.body().error.is_empty());
    }
    assert_eq!(Op::parse(b"not json").unwrap_err().status(), 400);
}

#[test]
fn services_stats_parses_with_or_without_a_service() {
    let parse = |v: serde_json::Value| Op::parse(&serde_json::to_vec(&v).unwrap());
    let all = parse(serde_json::json!({"op": "services.stats"})).unwrap();
    assert_eq!(all, Op::ServicesStats(ServicesStats { service: None }));
    assert_eq!(all.name(), "services.stats");
    assert_eq!(
        serde_json::to_string(&all).unwrap(),
        r#"{"op":"services.stats"}"#
    );
    let one = parse(serde_json::json!({"op": "services.stats", "service": "crm.get"})).unwrap();
    assert_eq!(
        serde_json::to_string(&one).unwrap(),
        r#"{"op":"services.stats","service":"crm.get"}"#
    );
    for bad in [
        serde_json::json!({"op": "services.stats", "service": ""}),
        serde_json::json!({"op": "services.stats", "service": 7}),
    ] {
        assert_eq!(parse(bad.clone()).unwrap_err().status(), 400, "{bad}");
    }
}

// ---- helpers ----

#[test]
fn roles_and_stream_owners() {
    assert_eq!(Role::between("alpha", "bravo"), Some(Role::Dialer));
    assert_eq!(Role::between("bravo", "alpha"), Some(Role::Acceptor));
    assert_eq!(Role::between("a", "a"), None);
    // Byte order: a prefix sorts first, digits before letters.
    assert_eq!(Role::between("web", "web1"), Some(Role::Dialer));
    assert_eq!(Role::between("9", "a"), Some(Role::Dialer));
    assert_eq!(stream_owner(0), None);
    assert_eq!(stream_owner(0x8000_0000), None);
    assert_eq!(stream_owner(1), Some(Role::Dialer));
    assert_eq!(stream_owner(0x7FFF_FFFF), Some(Role::Dialer));
    assert_eq!(stream_owner(0x8000_0001), Some(Role::Acceptor));
    assert_eq!(stream_owner(u32::MAX), Some(Role::Acceptor));
    assert!(Role::Acceptor.owns(u32::MAX) && !Role::Dialer.owns(u32::MAX));
    assert_eq!(Role::Dialer.peer(), Role::Acceptor);
}

#[test]
fn stream_ids_wrap_within_their_half() {
    let mut ids = StreamIds::new(Role::Acceptor);
    assert_eq!(ids.next_id(), 0x8000_0001);
    assert_eq!(ids.next_id(), 0x8000_0002);
    let mut ids = StreamIds {
        role: Role::Dialer,
        next: 0x7FFF_FFFE,
    };
    assert_eq!(ids.next_id(), 0x7FFF_FFFE);
    assert_eq!(ids.next_id(), 0x7FFF_FFFF);
    assert_eq!(ids.next_id(), 1, "wraps past 0");
    let mut ids = StreamIds {
        role: Role::Acceptor,
        next: 0x7FFF_FFFF,
    };
    assert_eq!(ids.next_id(), 0xFFFF_FFFF);
    assert_eq!(ids.next_id(), 0x8000_0001, "skips 0x8000_0000");
}

#[test]
fn reconnect_delays_double_with_jitter_up_to_five_seconds() {
    let ms = |attempt, random| reconnect_delay(attempt, random).as_millis();
    assert_eq!((ms(0, 0), ms(0, 50)), (50, 100));
    assert_eq!(ms(0, 51), 50, "wraps within the window");
    assert_eq!((ms(1, 0), ms(1, 100)), (100, 200));
    assert_eq!((ms(5, 0), ms(5, 1600)), (1600, 3200));
    for attempt in [6, 7, 20, u32::MAX] {
        assert_eq!(ms(attempt, 0), 2500, "{attempt}");
        assert_eq!(ms(attempt, 2500), 5000, "{attempt}");
        assert!(ms(attempt, u32::MAX) <= 5000);
    }
}

#[test]
fn names() {
    for ok in ["a", "prod", "web-1", "eu.west_2", "9", &"x".repeat(63)] {
        assert!(check_name("server", ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Web",
        "-a",
        ".a",
        "a b",
        "a/b",
        "é",
        "a\n",
        &"x".repeat(64),
    ] {
        let e = check_name("server", bad).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ProtocolError), "{bad}");
    }
}
