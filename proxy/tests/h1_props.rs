//! Property tests of the proxy's HTTP/1 framing (`oxbus_proxy::h1`) against the reference
//! model in `h1_model`: the same properties the fuzz target (`fuzz/fuzz_targets/h1.rs`)
//! checks for hours, here over generated near-valid messages for a few seconds in CI. The
//! generators build what the framing rules are about (chunk sizes, extensions, trailers,
//! framing headers in every combination) and then damage them, so both the accepting and the
//! refusing paths run; every input is split into reads at generated points. A request's
//! upgrade decision (`Upgrade` carried, or a plain request) is held to the model as well.

// `h1_model` reaches the code under test as `crate::h1`.
use oxbus_proxy::h1::{self, BodyKind, Framing};
use proptest::prelude::*;

mod h1_model;

use h1_model::{Body, MAX_CHUNK_META};

/// A chunk-size line's tail: nothing, whitespace, an extension, or both.
fn size_tail() -> impl Strategy<Value = Vec<u8>> {
    let ws = prop::sample::select(vec!["", "", " ", "\t", " \t "]);
    let ext = prop_oneof![
        4 => prop::sample::select(vec!["", "", ";a=b", ";x", ";", ";a=\"b c\";d"])
            .prop_map(|s| s.as_bytes().to_vec()),
        // Around the extension limit (the `;` counts).
        1 => (MAX_CHUNK_META - 2..MAX_CHUNK_META + 2).prop_map(|n| {
            let mut e = vec![b'e'; n];
            e[0] = b';';
            e
        }),
    ];
    (ws, ext).prop_map(|(w, e)| [w.as_bytes(), &e].concat())
}

/// A chunk: its data, how its size is written (upper case, leading zeros), its line's tail.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 1..40),
        any::<bool>(),
        // Up to the 15 digits a size may have, and one past.
        prop_oneof![0..3usize, 12..16usize],
        size_tail(),
    )
        .prop_map(|(data, upper, zeros, tail)| {
            let size = if upper {
                format!("{}{:X}", "0".repeat(zeros), data.len())
            } else {
                format!("{}{:x}", "0".repeat(zeros), data.len())
            };
            [size.as_bytes(), &tail, b"\r\n", &data, b"\r\n"].concat()
        })
}

/// Trailer lines (CRLFs included), some filling the trailer section to around its limit.
fn trailers() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(
            prop::sample::select(vec!["X-T: 1", "a:b", "X", "Checksum: abc def"]),
            0..3
        )
        .prop_map(|ls| ls.iter().flat_map(|l| [l.as_bytes(), b"\r\n"].concat()).collect()),
        // `lines` lines filling n bytes (CRLFs included), then `more` one-byte lines.
        1 => (MAX_CHUNK_META - 4..MAX_CHUNK_META + 4, 1..4usize, 0..3usize).prop_map(
            |(n, lines, more)| {
                let mut t = Vec::new();
                for i in 0..lines {
                    let len = if i + 1 == lines {
                        n.saturating_sub(t.len() + 2)
                    } else {
                        n / lines - 2
                    };
                    t.extend(std::iter::repeat_n(b't', len.max(1)));
                    t.extend_from_slice(b"\r\n");
                }
                t.extend(b"X\r\n".repeat(more));
                t
            }
        ),
    ]
}

/// Bytes that change what a chunked body means where they land.
const SHARP: &[u8] = b"0123456789abcdefABCDEFgG\r\n;\t ,:\0\x7f\xff";

/// Damage: (where, as a fraction of the length; what: delete, replace or insert a byte).
fn damage() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    prop::collection::vec((any::<u16>(), 0..3u8, prop::sample::select(SHARP)), 0..3)
}

fn apply(mut b: Vec<u8>, damage: &[(u16, u8, u8)]) -> Vec<u8> {
    for &(at, op, byte) in damage {
        let i = b.len() * usize::from(at) / 65536;
        match op {
            0 if i < b.len() => {
                b.remove(i);
            }
            1 if i < b.len() => b[i] = byte,
            _ => b.insert(i, byte),
        }
    }
    b
}

/// A chunked body (valid before its damage), then what follows it on the connection.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(chunk(), 0..4),
        size_tail(),
        trailers(),
        prop::sample::select(vec![&b""[..], b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n"]),
        damage(),
    )
        .prop_map(|(chunks, tail, trailers, next, damage)| {
            let valid = [
                chunks.concat(),
                b"0".to_vec(),
                tail,
                b"\r\n".to_vec(),
                trailers,
                b"\r\n".to_vec(),
                next.to_vec(),
            ]
            .concat();
            apply(valid, &damage)
        })
}

/// Where reads split a message: fractions of its length.
fn cuts() -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(any::<u16>(), 0..6)
}

fn at(cuts: &[u16], len: usize) -> Vec<usize> {
    cuts.iter().map(|&c| len * usize::from(c) / 65536).collect()
}

/// A framing header value: a list of framing-relevant elements.
fn framing_value() -> impl Strategy<Value = String> {
    let element = prop::sample::select(vec![
        "chunked",
        "Chunked",
        "CHUNKED",
        "gzip",
        "identity",
        "",
        " ",
        "0",
        "1",
        "5",
        "007",
        "-1",
        "+1",
        "1 ",
        "0x5",
        "9999999999999999999",
        "18446744073709551616",
        "99999999999999999999",
        "chunked ",
        "\tchunked",
        "chun ked",
        "upgrade",
        "websocket",
    ]);
    (
        prop::collection::vec(element, 1..4),
        prop::sample::select(vec![",", ", ", " ,"]),
    )
        .prop_map(|(es, sep)| es.join(sep))
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec![
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "transfer-encoding",
            "TRANSFER-ENCODING",
            "Host",
            "Connection",
            "Upgrade",
        ]),
        framing_value(),
    )
        .prop_map(|(n, v)| (n.to_string(), v))
}

/// A header that bears on an upgrade decision: `Upgrade`, `Connection`, the framing ones.
fn upgrade_header() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec![
            "Upgrade",
            "upgrade",
            "Connection",
            "CONNECTION",
            "Content-Length",
            "Transfer-Encoding",
            "Host",
        ]),
        prop::collection::vec(
            prop::sample::select(vec![
                "upgrade",
                "Upgrade",
                "UPGRADE",
                "websocket",
                "WebSocket",
                "websockets",
                "websocket/13",
                "h2c",
                "HTTP/2.0",
                "keep-alive",
                "close",
                "upgrades",
                "",
                " ",
                "0",
                "5",
                "chunked",
            ]),
            1..3,
        ),
        prop::sample::select(vec![",", ", ", " ,"]),
    )
        .prop_map(|(n, es, sep)| (n.to_string(), es.join(sep)))
}

/// A message: head (request or response, HTTP/1.1 or 1.0, CRLF or LF line ends), then a body.
fn message() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((header(), any::<bool>()), 0..4),
        prop_oneof![
            chunked_body(),
            prop::collection::vec(any::<u8>(), 0..20),
            Just(Vec::new())
        ],
        damage(),
    )
        .prop_map(|(request, http10, headers, body, damage)| {
            let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            let mut m = if request {
                format!("POST /p {version}\r\n")
            } else {
                format!("{version} 200 OK\r\n")
            }
            .into_bytes();
            for ((n, v), lf) in headers {
                m.extend_from_slice(format!("{n}: {v}").as_bytes());
                m.extend_from_slice(if lf { b"\n" } else { b"\r\n" });
            }
            m.extend_from_slice(b"\r\n");
            m = apply(m, &damage);
            m.extend_from_slice(&body);
            (request, m)
        })
}

proptest! {
    // 512 cases by default (well under a second); PROPTEST_CASES runs more.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512)
    ))]

    /// The follower ends a chunked body where the model does, refuses what it refuses, and
    /// takes every byte before the end, however the body is split into reads.
    #[test]
    fn chunked_follower_agrees_with_the_model(body in chunked_body(), cuts in cuts()) {
        let r = h1_model::follow(
            Framing::new(BodyKind::Chunked),
            &body,
            &at(&cuts, body.len()),
            h1_model::chunked,
        );
        prop_assert!(r.is_ok(), "{}: {:?}", r.unwrap_err(), String::from_utf8_lossy(&body));
    }

    /// Arbitrary bytes from the alphabet that matters to chunk framing.
    #[test]
    fn chunked_follower_agrees_on_sharp_bytes(
        body in prop::collection::vec(prop::sample::select(SHARP), 0..40),
        cuts in cuts(),
    ) {
        let r = h1_model::follow(
            Framing::new(BodyKind::Chunked),
            &body,
            &at(&cuts, body.len()),
            h1_model::chunked,
        );
        prop_assert!(r.is_ok(), "{}: {:?}", r.unwrap_err(), String::from_utf8_lossy(&body));
    }

    /// A head's end is seen by the read that completes it; its framing is the model's (or a
    /// refusal where the model refuses); its body ends where the model says.
    #[test]
    fn messages_are_framed_as_the_model_frames_them(
        (request, msg) in message(),
        cuts in cuts(),
    ) {
        let r = h1_model::message(&msg, &at(&cuts, msg.len()), request);
        prop_assert!(r.is_ok(), "{}: {:?}", r.unwrap_err(), String::from_utf8_lossy(&msg));
    }

    /// A request's upgrade is carried exactly when the model says: HTTP/1.1, no body,
    /// `Upgrade` listing `websocket`, `Connection` listing `upgrade`.
    #[test]
    fn upgrades_are_carried_as_the_model_says(
        headers in prop::collection::vec(upgrade_header(), 0..5),
        http10 in any::<bool>(),
    ) {
        let hs: Vec<httparse::Header> = headers
            .iter()
            .map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() })
            .collect();
        let framed = h1_model::check_framing(&hs, true, http10);
        prop_assert!(framed.is_ok(), "{}", framed.unwrap_err());
        if let Ok(Some(kind)) = framed {
            let r = h1_model::check_upgrade(&hs, http10, kind);
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }

    /// A length-framed body takes exactly its length, across any reads.
    #[test]
    fn length_follower_takes_its_length(
        n in 0..64u64,
        body in prop::collection::vec(any::<u8>(), 0..100),
        cuts in cuts(),
    ) {
        let r = h1_model::follow(
            Framing::new(BodyKind::Length(n)),
            &body,
            &at(&cuts, body.len()),
            h1_model::length(n),
        );
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The model itself, on bodies whose meaning is known: a model that says "more" to
/// everything would make the properties above hold trivially.
#[test]
fn the_model_reads_known_bodies() {
    let wiki =
        b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    assert_eq!(h1_model::chunked(wiki), Body::Ends(wiki.len() - 4));
    assert_eq!(h1_model::chunked(b"0\r\n\r\n"), Body::Ends(5));
    assert_eq!(h1_model::chunked(b"3 \t;a\r\nabc\r\n0\r\n\r"), Body::More);
    assert_eq!(h1_model::chunked(b""), Body::More);
    for bad in [
        &b"x"[..],
        b"3\nabc",
        b"3\r\nabcd",
        b"1234567890abcdef0",
        b"1b /admin",
        b"0\r\nX\n",
        b"0\r\n\r\r",
    ] {
        assert_eq!(h1_model::chunked(bad), Body::Invalid, "{bad:?}");
    }
    // The limits, at and past their bounds.
    let ext = |n: usize| [b"1;".as_slice(), &vec![b'e'; n - 1], b"\r\nx\r\n0\r\n\r\n"].concat();
    assert!(matches!(
        h1_model::chunked(&ext(MAX_CHUNK_META)),
        Body::Ends(_)
    ));
    assert_eq!(h1_model::chunked(&ext(MAX_CHUNK_META + 1)), Body::Invalid);
    let trailer = |n: usize| [b"0\r\n".as_slice(), &vec![b't'; n], b"\r\n\r\n"].concat();
    assert!(matches!(
        h1_model::chunked(&trailer(MAX_CHUNK_META)),
        Body::Ends(_)
    ));
    assert_eq!(
        h1_model::chunked(&trailer(MAX_CHUNK_META + 1)),
        Body::Invalid
    );

    let hs = |l: &[(&'static str, &'static str)]| -> Vec<(&[u8], &[u8])> {
        l.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    };
    let kind = |l, request| h1_model::framing(&hs(l), request, false).map(|f| f.kind);
    assert_eq!(
        kind(&[("Content-Length", "5, 5")], true),
        Some(BodyKind::Length(5))
    );
    assert_eq!(
        kind(&[("Transfer-Encoding", "gzip, chunked")], true),
        Some(BodyKind::Chunked)
    );
    assert_eq!(kind(&[("Transfer-Encoding", "chunked, gzip")], true), None);
    assert_eq!(
        kind(&[("Transfer-Encoding", "chunked, gzip")], false),
        Some(BodyKind::UntilClose)
    );
    assert_eq!(
        kind(
            &[("Content-Length", "1"), ("Transfer-Encoding", "chunked")],
            true
        ),
        None
    );
    assert_eq!(kind(&[("Content-Length", "\x0c1")], true), None);
    assert_eq!(kind(&[], true), Some(BodyKind::None));
    assert_eq!(kind(&[], false), Some(BodyKind::UntilClose));

    let ws = hs(&[
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
    ]);
    assert!(h1_model::upgrade(&ws, false, BodyKind::None));
    assert!(!h1_model::upgrade(&ws, true, BodyKind::None));
    assert!(!h1_model::upgrade(&ws, false, BodyKind::Length(5)));
    assert!(!h1_model::upgrade(&ws, false, BodyKind::Chunked));
    for h in [
        &[("Upgrade", "websocket")][..],
        &[("Upgrade", "websocket"), ("Connection", "upgrades")],
        &[("Upgrade", " , "), ("Connection", "upgrade")],
        &[("Connection", "upgrade")],
        &[
            ("Upgrade", "h2c"),
            ("Connection", "Upgrade, HTTP2-Settings"),
        ],
        &[("Upgrade", "websocket/13"), ("Connection", "upgrade")],
    ] {
        assert!(!h1_model::upgrade(&hs(h), false, BodyKind::None), "{h:?}");
    }
    for h in [
        &[("Upgrade", "h2c, WebSocket"), ("Connection", "upgrade")][..],
        &[
            ("Upgrade", "h2c"),
            ("Upgrade", "websocket"),
            ("Connection", "upgrade"),
        ],
    ] {
        assert!(h1_model::upgrade(&hs(h), false, BodyKind::None), "{h:?}");
    }
}

/// The checks catch a follower that disagrees: one fed a body it ends early fails.
#[test]
fn the_checks_catch_a_disagreement() {
    // A length follower checked against the chunked model must disagree.
    let body = b"3\r\nabc\r\n0\r\n\r\n";
    assert!(
        h1_model::follow(
            Framing::new(BodyKind::Length(3)),
            body,
            &[],
            h1_model::chunked
        )
        .is_err()
    );
    assert!(
        h1_model::follow(
            Framing::new(BodyKind::Chunked),
            body,
            &[4],
            h1_model::length(3)
        )
        .is_err()
    );
}
