//! Property tests of the cluster bus: any valid frame round-trips through the encoder and
//! the decoder whatever way the bytes are split into reads; arbitrary bytes never panic the
//! decoder, the handshake steps or the link; transcripts are injective; a handshake
//! completes exactly when both sides hold the same secret.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::bus::*;
use proptest::prelude::*;

/// A frame the decoder accepts: ASYNC on CALL only, stream 0 for connection-level kinds.
fn frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        any::<bool>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(kind, asy, s, p)| {
            let stream = if kind.has_stream() {
                if s & 0x7FFF_FFFF == 0 { s | 1 } else { s }
            } else {
                0
            };
            Frame {
                kind,
                flags: if asy && kind == Kind::Call {
                    FLAG_ASYNC
                } else {
                    0
                },
                stream,
                payload: Bytes::from(p),
            }
        })
}

fn name() -> impl Strategy<Value = String> {
    // A small alphabet so that names often share prefixes.
    "[ab][ab.-]{0,3}"
}

fn nonce() -> impl Strategy<Value = Nonce> {
    any::<[u8; 32]>().prop_map(Nonce)
}

proptest! {
    #[test]
    fn frames_round_trip_across_any_split(
        frames in prop::collection::vec(frame(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for f in &frames { f.encode(&mut wire); }
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf).unwrap() { got.push(f); }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn meta_frames_round_trip(meta in prop::collection::vec(any::<u8>(), 0..200),
                              body in prop::collection::vec(any::<u8>(), 0..500),
                              stream in 1u32..=u32::MAX,
                              asy in any::<bool>()) {
        prop_assume!(stream != ACCEPTOR_STREAM_BIT);
        let mut wire = BytesMut::new();
        let flags = if asy { FLAG_ASYNC } else { 0 };
        encode_meta_frame(&mut wire, Kind::Call, flags, stream, &meta, &body).unwrap();
        let f = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!((f.kind, f.flags, f.stream), (Kind::Call, flags, stream));
        let (m, b) = f.split_meta().unwrap();
        prop_assert_eq!(&m[..], &meta[..]);
        prop_assert_eq!(&b[..], &body[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let key = [7u8; 32];
        let dec = FrameDecoder::handshake();
        let mut buf = BytesMut::from(&data[..]);
        let alpha = Link { local: "alpha".into(), peer: "bravo".into(), role: Role::Dialer };
        let bravo = Link { local: "bravo".into(), peer: "alpha".into(), role: Role::Acceptor };
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            let _ = Acceptor::new(&key, "prod", "bravo", Nonce([1; 32])).unwrap().on_hello(&f);
            let (dialer, _) = Dialer::start(&key, "prod", "alpha", "bravo", Nonce([2; 32])).unwrap();
            let _ = dialer.on_challenge(&f);
            let _ = alpha.parse(f.clone());
            let _ = bravo.parse(f.clone());
            if let Ok((meta, _)) = f.split_meta() {
                let _ = Op::parse(&meta);
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_handshake(
        fields in prop::collection::vec(("[a-z_]{1,9}", any::<u32>(), "[0-9a-f]{0,70}"), 0..6),
    ) {
        let mut obj = serde_json::Map::new();
        for (k, n, s) in fields {
            obj.insert(k.clone(), if n % 2 == 0 { n.into() } else { s.into() });
        }
        for kind in [Kind::Hello, Kind::Challenge, Kind::Auth, Kind::Welcome] {
            let f = Frame::json(kind, &obj);
            let _ = Acceptor::new(&[0; 32], "prod", "bravo", Nonce([1; 32])).unwrap().on_hello(&f);
            let (dialer, _) = Dialer::start(&[0; 32], "prod", "alpha", "bravo", Nonce([2; 32])).unwrap();
            let _ = dialer.on_challenge(&f);
        }
        let _ = Op::parse(&serde_json::to_vec(&obj).unwrap());
    }

    #[test]
    fn transcripts_are_injective(
        a in (name(), name(), name(), nonce(), nonce(), any::<bool>()),
        b in (name(), name(), name(), nonce(), nonce(), any::<bool>()),
    ) {
        let role = |d: bool| if d { Role::Dialer } else { Role::Acceptor };
        let x = Exchange { cluster: &a.0, dialer: &a.1, acceptor: &a.2,
                           dialer_nonce: &a.3, acceptor_nonce: &a.4 };
        let y = Exchange { cluster: &b.0, dialer: &b.1, acceptor: &b.2,
                           dialer_nonce: &b.3, acceptor_nonce: &b.4 };
        let same = x == y && a.5 == b.5;
        prop_assert_eq!(transcript(role(a.5), &x) == transcript(role(b.5), &y), same);
        // Nonces from a small set too, so equal ones come up.
        let n = [Nonce([0; 32]), Nonce([1; 32])];
        let x2 = Exchange { dialer_nonce: &n[a.3.0[0] as usize % 2], ..x };
        let y2 = Exchange { dialer_nonce: &n[b.3.0[0] as usize % 2], ..y };
        prop_assert_eq!(transcript(Role::Dialer, &x2) == transcript(Role::Dialer, &y2), x2 == y2);
    }

    #[test]
    fn handshake_completes_iff_the_secrets_match(
        s1 in prop::collection::vec(any::<u8>(), 32..80),
        s2 in prop::collection::vec(any::<u8>(), 32..80),
        same in any::<bool>(),
        names in (name(), name()).prop_filter("distinct", |(a, b)| a != b),
        cluster in name(),
        dn in nonce(),
        an in nonce(),
    ) {
        let s2 = if same { s1.clone() } else { s2 };
        let (lo, hi) = if names.0 < names.1 { (names.0, names.1) } else { (names.1, names.0) };
        let run = || -> Result<(Link, Link)> {
            let (dialer, hello) = Dialer::start(&derive_key(&s1), &cluster, &lo, &hi, dn)?;
            let (acceptor, challenge) =
                Acceptor::new(&derive_key(&s2), &cluster, &hi, an)?.on_hello(&hello)?;
            let (dialer, auth) = dialer.on_challenge(&challenge)?;
            let (a, welcome) = acceptor.on_auth(&auth)?.welcome(&[], 1)?;
            let (d, _) = dialer.on_welcome(&welcome, &[])?;
            Ok((d, a))
        };
        match run() {
            Ok((d, a)) => {
                prop_assert!(s1 == s2);
                prop_assert_eq!((d.peer, a.peer), (hi.clone(), lo.clone()));
            }
            Err(e) => {
                prop_assert!(s1 != s2);
                prop_assert_eq!(e, Error::BadProof { peer: hi.clone() });
            }
        }
    }

    #[test]
    fn nonces_and_proofs_round_trip_as_hex(bytes in any::<[u8; 32]>()) {
        let n = Nonce(bytes);
        let json = serde_json::to_string(&n).unwrap();
        prop_assert_eq!(json.len(), 66);
        prop_assert_eq!(serde_json::from_str::<Nonce>(&json).unwrap(), n);
        prop_assert_eq!(Proof::from_hex(&Proof(bytes).to_hex()).unwrap(), Proof(bytes));
    }
}
