//! Golden vectors of the cluster bus: every frame in `testdata/bus-v1/` decodes to the fields
//! its manifest lists and re-encodes to the same bytes, through the typed messages; the key,
//! the transcripts and the proofs of the fixed handshake are recomputed; and the handshake
//! state machines, fed the same secret and nonces, produce exactly those frames. The vectors
//! are written by `testdata/bus-v1/generate.py`, an independent implementation.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::bus::*;
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/bus-v1")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(dir().join("vectors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["protocol"], PROTOCOL_VERSION);
    v
}

fn vectors() -> Vec<Value> {
    manifest()["vectors"].as_array().unwrap().clone()
}

fn wire(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(format!("{name}.bin"))).unwrap()
}

fn decode_one(name: &str, wire: &[u8]) -> Frame {
    let mut buf = BytesMut::from(wire);
    let frame = FrameDecoder::default()
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: incomplete"));
    assert!(buf.is_empty(), "{name}: trailing bytes");
    frame
}

/// Serialises `value` as the typed message `T` and back: the bytes must not change.
fn typed_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str, json: &[u8]) {
    let value: T = serde_json::from_slice(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        serde_json::to_vec(&value).unwrap(),
        json,
        "{name}: typed re-encoding differs"
    );
}

#[test]
fn every_kind_has_a_vector() {
    let names: Vec<String> = vectors()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in Kind::ALL {
        assert!(names.iter().any(|n| n == k.name()), "no vector for {k:?}");
    }
}

#[test]
fn golden_vectors_decode_and_reencode_byte_for_byte() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let wire = std::fs::read(dir().join(v["file"].as_str().unwrap())).unwrap();
        let frame = decode_one(name, &wire);
        assert_eq!(frame.kind.name(), v["kind"].as_str().unwrap(), "{name}");
        assert_eq!(
            u64::from(frame.flags),
            v["flags"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(frame.stream),
            v["stream"].as_u64().unwrap(),
            "{name}"
        );

        let mut out = BytesMut::new();
        if let Some(meta) = v.get("meta") {
            let meta = meta.as_str().unwrap().as_bytes();
            let body = unhex(v["body_hex"].as_str().unwrap());
            let (m, b) = frame.split_meta().unwrap();
            assert_eq!(&m[..], meta, "{name}: meta");
            assert_eq!(&b[..], &body[..], "{name}: body");
            match frame.kind {
                Kind::Call => match Op::parse(meta) {
                    // Known ops re-encode from the typed meta.
                    Ok(op) => encode_call(&mut out, frame.flags, frame.stream, &op, &body).unwrap(),
                    Err(e) => {
                        assert_eq!(e.status(), 501, "{name}: {e}");
                        encode_meta_frame(
                            &mut out,
                            Kind::Call,
                            frame.flags,
                            frame.stream,
                            meta,
                            &body,
                        )
                        .unwrap();
                    }
                },
                Kind::Reply => {
                    let r: ReplyMeta = serde_json::from_slice(meta).unwrap();
                    if r.status == 200 {
                        typed_round_trip::<DeployReport>(name, &body);
                    } else {
                        typed_round_trip::<ErrorBody>(name, &body);
                    }
                    encode_reply(&mut out, frame.stream, r.status, &body).unwrap();
                }
                k => panic!("{name}: {k} has no meta"),
            }
        } else {
            let payload: Vec<u8> = match v.get("payload_text") {
                Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
                None => unhex(v["payload_hex"].as_str().unwrap()),
            };
            assert_eq!(frame.payload.to_vec(), payload, "{name}: payload");
            match frame.kind {
                Kind::Hello => typed_round_trip::<Hello>(name, &payload),
                Kind::Challenge => typed_round_trip::<Challenge>(name, &payload),
                Kind::Auth => typed_round_trip::<Auth>(name, &payload),
                Kind::Welcome => typed_round_trip::<Welcome>(name, &payload),
                Kind::Notify => typed_round_trip::<Notify>(name, &payload),
                Kind::Error => typed_round_trip::<ErrorMsg>(name, &payload),
                Kind::Ping | Kind::Pong => assert_eq!(payload.len(), 8, "{name}"),
                Kind::Bye => assert!(payload.is_empty(), "{name}"),
                k => panic!("{name}: {k} needs meta"),
            }
            Frame {
                kind: frame.kind,
                flags: frame.flags,
                stream: frame.stream,
                payload: Bytes::from(payload),
            }
            .encode(&mut out);
        }
        assert_eq!(&out[..], &wire[..], "{name}: re-encoding differs");
    }
}

struct Fixture {
    secret: Vec<u8>,
    key: [u8; 32],
    cluster: String,
    dialer: String,
    acceptor: String,
    linked: Vec<String>,
    config_version: u64,
    dialer_nonce: Nonce,
    acceptor_nonce: Nonce,
    h: Value,
}

fn fixture() -> Fixture {
    let h = manifest()["handshake"].clone();
    let s = |k: &str| h[k].as_str().unwrap().to_owned();
    Fixture {
        secret: s("secret_text").into_bytes(),
        key: unhex(&s("key")).try_into().unwrap(),
        cluster: s("cluster"),
        dialer: s("dialer"),
        acceptor: s("acceptor"),
        linked: serde_json::from_value(h["linked"].clone()).unwrap(),
        config_version: h["config_version"].as_u64().unwrap(),
        dialer_nonce: Nonce::from_hex(&s("dialer_nonce")).unwrap(),
        acceptor_nonce: Nonce::from_hex(&s("acceptor_nonce")).unwrap(),
        h,
    }
}

#[test]
fn handshake_key_transcripts_and_proofs_are_reproduced() {
    let f = fixture();
    check_secret(&f.secret).unwrap();
    assert_eq!(derive_key(&f.secret), f.key);
    let x = Exchange {
        cluster: &f.cluster,
        dialer: &f.dialer,
        acceptor: &f.acceptor,
        dialer_nonce: &f.dialer_nonce,
        acceptor_nonce: &f.acceptor_nonce,
    };
    for (role, t, p) in [
        (Role::Dialer, "transcript_dialer", "proof_dialer"),
        (Role::Acceptor, "transcript_acceptor", "proof_acceptor"),
    ] {
        assert_eq!(transcript(role, &x), unhex(f.h[t].as_str().unwrap()), "{t}");
        let expected = Proof::from_hex(f.h[p].as_str().unwrap()).unwrap();
        assert_eq!(proof(&f.key, role, &x), expected, "{p}");
        assert!(verify(&f.key, role, &x, &expected), "{p}");
        assert!(
            !verify(&f.key, role.peer(), &x, &expected),
            "{p} as the other role"
        );
    }
}

#[test]
fn handshake_state_machines_produce_the_vectors() {
    let f = fixture();
    let key = derive_key(&f.secret);
    let (dialer, hello) =
        Dialer::start(&key, &f.cluster, &f.dialer, &f.acceptor, f.dialer_nonce).unwrap();
    assert_eq!(&hello.to_bytes()[..], &wire("hello")[..], "HELLO");

    // The acceptor reads the golden bytes, not the dialer's own frame.
    let acceptor = Acceptor::new(&key, &f.cluster, &f.acceptor, f.acceptor_nonce).unwrap();
    let (acceptor, challenge) = acceptor
        .on_hello(&decode_one("hello", &wire("hello")))
        .unwrap();
    assert_eq!(acceptor.peer(), f.dialer);
    assert_eq!(
        &challenge.to_bytes()[..],
        &wire("challenge")[..],
        "CHALLENGE"
    );

    let (dialer, auth) = dialer
        .on_challenge(&decode_one("challenge", &wire("challenge")))
        .unwrap();
    assert_eq!(dialer.peer(), f.acceptor);
    assert_eq!(&auth.to_bytes()[..], &wire("auth")[..], "AUTH");

    let verified = acceptor
        .on_auth(&decode_one("auth", &wire("auth")))
        .unwrap();
    assert_eq!(verified.peer(), f.dialer);
    let linked: Vec<&str> = f.linked.iter().map(String::as_str).collect();
    let (acceptor_link, welcome) = verified.welcome(&linked, f.config_version).unwrap();
    assert_eq!(&welcome.to_bytes()[..], &wire("welcome")[..], "WELCOME");

    let (dialer_link, w) = dialer
        .on_welcome(&decode_one("welcome", &wire("welcome")), &[])
        .unwrap();
    assert_eq!(w.config_version, f.config_version);
    assert_eq!(w.servers, ["alpha", "bravo", "charlie"]);
    assert_eq!(
        dialer_link,
        Link {
            local: f.dialer.clone(),
            peer: f.acceptor.clone(),
            role: Role::Dialer
        }
    );
    assert_eq!(
        acceptor_link,
        Link {
            local: f.acceptor.clone(),
            peer: f.dialer.clone(),
            role: Role::Acceptor
        }
    );
}

#[test]
fn refusals_produce_the_error_vectors() {
    let f = fixture();
    let key = derive_key(&f.secret);
    let acceptor = || Acceptor::new(&key, &f.cluster, &f.acceptor, f.acceptor_nonce).unwrap();

    // A dialer of version 2: only `protocol` is read.
    let hello = Frame::new(Kind::Hello, 0, &br#"{"protocol":2,"whatever":true}"#[..]);
    let e = acceptor().on_hello(&hello).unwrap_err();
    assert_eq!(
        e.to_frame().unwrap().to_bytes(),
        wire("error_protocol_mismatch")
    );

    // A dialer configured for another cluster.
    let (_, hello) =
        Dialer::start(&key, "staging", &f.dialer, &f.acceptor, f.dialer_nonce).unwrap();
    let e = acceptor().on_hello(&hello).unwrap_err();
    assert_eq!(
        e.to_frame().unwrap().to_bytes(),
        wire("error_wrong_cluster")
    );

    // A dialer with another secret: the acceptor refuses its AUTH.
    let wrong = derive_key(b"another secret that is long enough to be accepted");
    let (_, hello) =
        Dialer::start(&wrong, &f.cluster, &f.dialer, &f.acceptor, f.dialer_nonce).unwrap();
    let (challenged, _) = acceptor().on_hello(&hello).unwrap();
    let x = Exchange {
        cluster: &f.cluster,
        dialer: &f.dialer,
        acceptor: &f.acceptor,
        dialer_nonce: &f.dialer_nonce,
        acceptor_nonce: &f.acceptor_nonce,
    };
    let auth = Frame::json(
        Kind::Auth,
        &Auth {
            proof: proof(&wrong, Role::Dialer, &x),
        },
    );
    let e = challenged.on_auth(&auth).unwrap_err();
    assert_eq!(e.to_frame().unwrap().to_bytes(), wire("error_bad_proof"));
}

#[test]
fn post_handshake_vectors_parse_on_the_right_side() {
    let alpha = Link {
        local: "alpha".into(),
        peer: "bravo".into(),
        role: Role::Dialer,
    };
    let bravo = Link {
        local: "bravo".into(),
        peer: "alpha".into(),
        role: Role::Acceptor,
    };
    let parse = |link: &Link, name: &str| link.parse(decode_one(name, &wire(name)));

    assert_eq!(
        parse(&alpha, "ping"),
        Ok(Incoming::Ping([1, 2, 3, 4, 5, 6, 7, 8]))
    );
    assert_eq!(
        parse(&bravo, "pong"),
        Ok(Incoming::Pong([1, 2, 3, 4, 5, 6, 7, 8]))
    );
    assert!(matches!(parse(&bravo, "notify"), Ok(Incoming::Notify(n)) if n.config_version == 18));
    assert!(
        matches!(parse(&alpha, "notify_minimal"), Ok(Incoming::Notify(n)) if n.kinds.is_none())
    );
    // alpha (dialer) calls bravo on stream 1; bravo answers with the report.
    let Ok(Incoming::Call {
        stream: 1,
        asynchronous: false,
        meta,
        body,
    }) = parse(&bravo, "call_deploy_activate")
    else {
        panic!("call_deploy_activate")
    };
    assert!(body.is_empty());
    let Op::DeployActivate(a) = Op::parse(&meta).unwrap() else {
        panic!("not deploy.activate")
    };
    assert_eq!(a.config_version, 18);
    assert_eq!(
        a.modules[1],
        ModuleVersion {
            name: "crm.util".into(),
            version: 7
        }
    );
    let Ok(Incoming::Reply {
        stream: 1,
        status: 200,
        body,
    }) = parse(&alpha, "reply_deploy_report")
    else {
        panic!("reply_deploy_report")
    };
    let report: DeployReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(report.server, "bravo");
    // A later deploy through another server superseded crm.util 7: bravo runs the store's 8.
    assert_eq!(
        report.modules[1],
        ModuleState {
            name: "crm.util".into(),
            version: Some(8)
        }
    );
    assert!(!report.workers[1].ok && report.workers[1].error.is_some());
    // bravo (acceptor) calls alpha on 0x8000_0001.
    let Ok(Incoming::Call {
        stream: 0x8000_0001,
        meta,
        ..
    }) = parse(&alpha, "call_deploy_remove")
    else {
        panic!("call_deploy_remove")
    };
    assert!(matches!(Op::parse(&meta), Ok(Op::DeployRemove(r)) if r.modules == ["crm.util"]));
    let Ok(Incoming::Reply {
        stream: 0x8000_0001,
        status: 200,
        body,
    }) = parse(&bravo, "reply_deploy_remove")
    else {
        panic!("reply_deploy_remove")
    };
    let report: DeployReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(report.modules[0].version, None, "removed: null");
    // A reserved op is answered 501 with exactly the vector's body.
    let Ok(Incoming::Call { stream, meta, .. }) = parse(&bravo, "call_reserved_op") else {
        panic!("call_reserved_op")
    };
    let e = Op::parse(&meta).unwrap_err();
    let mut out = BytesMut::new();
    encode_reply(
        &mut out,
        stream,
        e.status(),
        &serde_json::to_vec(&e.body()).unwrap(),
    )
    .unwrap();
    assert_eq!(&out[..], &wire("reply_unknown_op")[..]);
    assert!(matches!(
        parse(&alpha, "reply_unknown_op"),
        Ok(Incoming::Reply { status: 501, .. })
    ));
    // ASYNC, from the acceptor, raw body.
    assert!(matches!(
        parse(&alpha, "call_async_unknown_op"),
        Ok(Incoming::Call { stream: 0xFFFF_FFFF, asynchronous: true, ref body, .. })
            if body[..] == [0, 1, 0xff, 0x0d, 0x0a, 0x22]
    ));
    assert_eq!(parse(&alpha, "bye"), Ok(Incoming::Bye));
    assert!(matches!(
        parse(&alpha, "error_bad_proof"),
        Err(Error::Refused { ref code, .. }) if code == "bad_proof"
    ));
    // The wrong side of the link refuses what is not for it.
    assert!(parse(&alpha, "call_deploy_activate").is_err());
    assert!(parse(&bravo, "reply_deploy_report").is_err());
    assert!(
        parse(&alpha, "notify").is_err(),
        "alpha does not hear its own NOTIFY"
    );
    assert!(parse(&alpha, "hello").is_err());
}

#[test]
fn the_manifest_lists_every_file() {
    let listed: Vec<String> = vectors()
        .iter()
        .map(|v| v["file"].as_str().unwrap().to_owned())
        .collect();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".bin") {
            assert!(listed.contains(&name), "{name} is not in vectors.json");
        }
    }
}
