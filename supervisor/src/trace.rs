//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` of a request.
//!
//! A `traceparent` is `00-<trace id>-<parent id>-<flags>`: version `00`, a 16-byte trace id
//! and an 8-byte parent (span) id in lower-case hex, neither all zero, and one byte of flags.
//! [`TraceParent::parse`] takes exactly that (55 characters), and a value of a later version
//! as the specification asks: any version but `00` and `ff` whose first 55 characters are
//! shaped like version 00 and that is either 55 characters long or goes on with `-` (fields
//! a later version adds). Anything else — version `ff`, upper-case hex, a zero id, a wrong
//! length — is not a trace context, and the request starts a new trace
//! ([`TraceParent::new_root`]). Whether an incoming one is believed at all is the caller's
//! decision (the HTTP edge: only from a trusted proxy).
//!
//! A parsed value is passed on as version `00` with the fields it came with: the same trace
//! id, the same parent id (Oxbus records no spans yet, so it is a transparent hop: a parent
//! id of its own would name a span no tracer ever receives and break the trace's tree), and
//! its flags masked to the bits version 00 defines (`01` sampled, `02` random). A new trace
//! has flags `00`: Oxbus records no spans, so it does not claim to have sampled one. An
//! outgoing REST call passes the caller's value on unchanged the same way.
//!
//! Trace and span ids of a new trace are a keyed pseudo-random function (SipHash-1-3) of a
//! counter, under 256 bits of keys drawn once from the OS (`crate::random`): one atomic
//! increment per request and no system call. Without the keys, seeing ids does not tell the
//! next ones. Ids are never all zero. Knows no subsystem.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::random::random_bytes;

/// The length of a version-00 `traceparent`.
pub const LEN: usize = 55;

/// The trace flags passed on: `01` sampled, `02` random trace id (W3C Trace Context level 2).
pub const KNOWN_FLAGS: u8 = 0x03;

/// A valid version-00 `traceparent`, kept as its text (no allocation: 55 bytes inline).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    text: [u8; LEN],
}

impl std::fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

fn put_hex(out: &mut [u8], mut v: u128, digits: usize) {
    for i in (0..digits).rev() {
        out[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl TraceParent {
    /// A `traceparent` header value, if it is a valid one (see the module documentation),
    /// as the version-00 value passed on: version `00`, flags masked to [`KNOWN_FLAGS`].
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let head: [u8; LEN] = value.get(..LEN)?.try_into().ok()?;
        let version = &head[0..2];
        if !is_lower_hex(version) || version == b"ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; a later one may go on after a `-`.
        if value.len() > LEN && (version == b"00" || value[LEN] != b'-') {
            return None;
        }
        let (trace, parent, flags) = (&head[3..35], &head[36..52], &head[53..55]);
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
            return None;
        }
        if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
            return None;
        }
        let mut text = head;
        text[0..2].copy_from_slice(b"00");
        let flags = ((hex_value(flags[0]) << 4) | hex_value(flags[1])) & KNOWN_FLAGS;
        put_hex(&mut text[53..55], flags as u128, 2);
        Some(TraceParent { text })
    }

    fn build(trace: u128, parent: u64, flags: u8) -> TraceParent {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut text[3..35], trace, 32);
        put_hex(&mut text[36..52], parent as u128, 16);
        put_hex(&mut text[53..55], flags as u128, 2);
        TraceParent { text }
    }

    /// A new trace, with a new span id as its parent and flags `00`.
    pub fn new_root() -> TraceParent {
        let (trace, span) = GEN.next();
        TraceParent::build(trace, span, 0)
    }

    /// The whole value, `00-<trace id>-<parent id>-<flags>`.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only (checked by parse, or written from HEX).
        std::str::from_utf8(&self.text).expect("a traceparent is ASCII")
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.as_str()[3..35]
    }

    /// The 16 hex digits of the parent id.
    pub fn parent_id(&self) -> &str {
        &self.as_str()[36..52]
    }
}

/// The longest `tracestate` passed on (the specification's advice: 512 characters a
/// vendor may cut a longer one to; Oxbus drops it whole instead, never a half entry).
pub const MAX_TRACESTATE: usize = 512;

/// Whether `value` is a `tracestate` Oxbus passes on: 1–512 characters of printable ASCII
/// (so it is safe in a header, a log line and the `CALL` meta). Its list entries are not
/// interpreted.
pub fn valid_tracestate(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TRACESTATE
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) || b == b'\t')
        && value.iter().any(|&b| !matches!(b, b' ' | b'\t' | b','))
}

/// Trace and span ids: a keyed pseudo-random function of one counter (see the module
/// documentation).
struct TraceGen {
    /// SipHash keys (k0, k1) of the trace id's high and low halves and of the span id.
    keys: [(u64, u64); 3],
    counter: AtomicU64,
}

static GEN: LazyLock<TraceGen> = LazyLock::new(TraceGen::new);

/// SipHash-`C`-`D` of one 8-byte message (`m`, little-endian) under the key (`k0`, `k1`).
fn siphash<const C: usize, const D: usize>(k0: u64, k1: u64, m: u64) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    // The message block, then the final block: its length (8) in the top byte.
    for block in [m, 8u64 << 56] {
        v[3] ^= block;
        for _ in 0..C {
            round(&mut v);
        }
        v[0] ^= block;
    }
    v[2] ^= 0xff;
    for _ in 0..D {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

impl TraceGen {
    fn new() -> TraceGen {
        let r = random_bytes::<48>();
        let word = |i: usize| u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        TraceGen {
            keys: [(word(0), word(1)), (word(2), word(3)), (word(4), word(5))],
            counter: AtomicU64::new(0),
        }
    }

    /// (trace id, span id), neither zero.
    fn next(&self) -> (u128, u64) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let prf = |(k0, k1): (u64, u64)| siphash::<1, 3>(k0, k1, n);
        let trace = ((prf(self.keys[0]) as u128) << 64) | prf(self.keys[1]) as u128;
        (trace.max(1), prf(self.keys[2]).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let t = TraceParent::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(t.as_str(), GOOD);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        let t = TraceParent::parse(b"00-00000000000000000000000000000001-0000000000000001-03")
            .expect("ids that are not all zero");
        assert_eq!(t.trace_id(), "00000000000000000000000000000001");
    }

    #[test]
    fn flags_are_masked_to_the_known_bits() {
        let with = |flags: &str| {
            let v = format!("{}{flags}", &GOOD[..53]);
            TraceParent::parse(v.as_bytes()).expect("valid").as_str()[53..].to_owned()
        };
        assert_eq!(with("00"), "00");
        assert_eq!(with("01"), "01");
        assert_eq!(with("02"), "02");
        assert_eq!(with("03"), "03");
        assert_eq!(with("ff"), "03");
        assert_eq!(with("fd"), "01");
        assert_eq!(with("84"), "00");
        // The rest is passed on unchanged.
        let t = TraceParent::parse(&[&GOOD.as_bytes()[..53], b"ff"].concat()).unwrap();
        assert_eq!(&t.as_str()[..53], &GOOD[..53]);
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let v01 = format!("01{}", &GOOD[2..]);
        let t = TraceParent::parse(v01.as_bytes()).expect("version 01, 55 characters");
        assert_eq!(t.as_str(), GOOD);
        let longer = format!("cc{}-what-a-later-version-adds", &GOOD[2..]);
        let t = TraceParent::parse(longer.as_bytes()).expect("a later version, longer");
        assert_eq!(t.as_str(), GOOD);
        let flags = format!("fe{}ff-x", &GOOD[2..53]);
        assert_eq!(
            TraceParent::parse(flags.as_bytes()).unwrap().as_str(),
            format!("{}03", &GOOD[..53])
        );
        // Still refused: ff, version 00 with more, a later version going on without `-`,
        // a later version whose first 55 characters are not shaped like version 00.
        for bad in [
            format!("ff{}", &GOOD[2..]),
            format!("{GOOD}-extra"),
            format!("{GOOD}-"),
            format!("01{}x", &GOOD[2..]),
            format!("01{}", &GOOD[2..54]),
            format!("01-4BF92F3577B34DA6A3CE929D0E0E4736{}", &GOOD[35..]),
            format!("01-{}{}", "0".repeat(32), &GOOD[35..]),
            format!("0g{}", &GOOD[2..]),
            format!("1{}", &GOOD[2..]),
            format!("1-{}", &GOOD[2..]),
        ] {
            assert!(TraceParent::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let long = format!("{GOOD}-extra");
        let bad: &[&str] = &[
            "",
            "00",
            &GOOD[..54],
            &long,
            // Version ff, which is never valid.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Upper-case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Not hex, wrong separators, spaces.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            " 0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7- 1",
        ];
        for b in bad {
            assert!(
                TraceParent::parse(b.as_bytes()).is_none(),
                "{b:?} was taken"
            );
        }
        // Not UTF-8.
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[10] = 0xff;
        assert!(TraceParent::parse(&bytes).is_none());
    }

    #[test]
    fn a_new_trace_is_valid_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = TraceParent::new_root();
            assert_eq!(TraceParent::parse(t.as_str().as_bytes()), Some(t), "{t}");
            assert!(t.as_str().ends_with("-00"), "{t}");
            assert!(seen.insert(t.trace_id().to_owned()), "{t} repeated");
        }
    }

    #[test]
    fn tracestates_are_bounded_and_printable() {
        assert!(valid_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(valid_tracestate(b"a=1, b=2"));
        assert!(valid_tracestate(&[b'a'; MAX_TRACESTATE]));
        assert!(!valid_tracestate(&[b'a'; MAX_TRACESTATE + 1]));
        assert!(!valid_tracestate(b""));
        assert!(!valid_tracestate(b" , "));
        assert!(!valid_tracestate(b"a=1\nb=2"));
        assert!(!valid_tracestate("a=\u{e9}".as_bytes()));
    }

    #[test]
    #[allow(deprecated)] // std's SipHasher (SipHash-2-4) is the reference
    fn siphash_matches_the_reference() {
        use std::hash::Hasher;
        for (k0, k1, m) in [
            (0, 0, 0),
            (
                0x0706_0504_0302_0100,
                0x0f0e_0d0c_0b0a_0908,
                0x0706_0504_0302_0100,
            ),
            (u64::MAX, 1, 0xdead_beef),
            (0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321, u64::MAX),
        ] {
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(&m.to_le_bytes());
            assert_eq!(
                siphash::<2, 4>(k0, k1, m),
                h.finish(),
                "{k0:x} {k1:x} {m:x}"
            );
        }
        // The paper's vector: key 00..0f, message 00..07.
        assert_eq!(
            siphash::<2, 4>(
                0x0706_0504_0302_0100,
                0x0f0e_0d0c_0b0a_0908,
                0x0706_0504_0302_0100
            ),
            0x93f5_f579_9a93_2462
        );
    }

    #[test]
    fn the_generator_is_keyed_never_yields_zero_and_mixes_the_counter() {
        let gen_with = |keys: [(u64, u64); 3]| TraceGen {
            keys,
            counter: AtomicU64::new(0),
        };
        let g = gen_with([(0, 0); 3]);
        let (t0, s0) = g.next();
        let (t1, s1) = g.next();
        assert!(t0 != 0 && s0 != 0 && t1 != 0 && s1 != 0);
        assert_ne!(t0, t1);
        assert_ne!(s0, s1);
        // Consecutive counters do not give ids that differ in a few low bits only.
        assert!((t0 ^ t1).count_ones() > 16, "{t0:x} {t1:x}");
        // The ids are the PRF's outputs, so other keys give other ids for the same counter:
        // knowing the counter (or past ids) without the keys tells nothing.
        let (t0b, s0b) = gen_with([(1, 0), (0, 0), (0, 1)]).next();
        assert_eq!(t0b as u64, t0 as u64, "the low half has the same key");
        assert_ne!(t0b >> 64, t0 >> 64);
        assert_ne!(s0b, s0);
        assert_eq!(s0, siphash::<1, 3>(0, 0, 0).max(1));
    }
}
