//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` of a request.
//!
//! A `traceparent` is `00-<trace id>-<parent id>-<flags>`: version `00`, a 16-byte trace id
//! and an 8-byte parent (span) id in lower-case hex, neither all zero, and one byte of flags.
//! [`TraceParent::parse`] takes exactly that (55 characters); anything else — another
//! version, upper-case hex, a zero id, a wrong length — is not a trace context, and the
//! request starts a new trace ([`TraceParent::new_root`]). Whether an incoming one is
//! believed at all is the caller's decision (the HTTP edge: only from a trusted proxy).
//!
//! The value a request carries onward (to its service, and from it to later outgoing calls)
//! keeps the trace id and flags it came with and gets a parent id of its own, this server's
//! span of the trace ([`TraceParent::continue_from`]). A new trace has flags `00`: Oxbus
//! records no spans, so it does not claim to have sampled one.
//!
//! Trace and span ids come from a generator seeded once from the OS (`crate::random`) and
//! stepped by one atomic increment: no system call per request. Its outputs are a bijection
//! of the counter under random keys, so one server never repeats an id and two servers
//! collide only by chance (2^-128 for trace ids). They are unpredictable enough for
//! correlation, not for secrets. Knows no subsystem.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::random::random_bytes;

/// The length of a version-00 `traceparent`.
pub const LEN: usize = 55;

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

fn put_hex(out: &mut [u8], mut v: u128, digits: usize) {
    for i in (0..digits).rev() {
        out[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl TraceParent {
    /// A `traceparent` header value, if it is a valid version-00 one.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let text: [u8; LEN] = value.try_into().ok()?;
        let (version, trace, parent, flags) =
            (&text[0..2], &text[3..35], &text[36..52], &text[53..55]);
        if version != b"00" || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
            return None;
        }
        if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
            return None;
        }
        if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
            return None;
        }
        Some(TraceParent { text })
    }

    fn build(trace: u128, parent: u64, flags: u8) -> TraceParent {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut text[3..35], trace, 32);
        put_hex(&mut text[36..52], parent as u128, 16);
        put_hex(&mut text[53..55], flags as u128, 2);
        TraceParent { text }
    }

    /// A new trace, with this server's span as its parent and flags `00`.
    pub fn new_root() -> TraceParent {
        let (trace, span) = GEN.next();
        TraceParent::build(trace, span, 0)
    }

    /// The same trace as `incoming` (trace id and flags), with this server's span as its
    /// parent.
    pub fn continue_from(incoming: &TraceParent) -> TraceParent {
        let (_, span) = GEN.next();
        let mut text = incoming.text;
        put_hex(&mut text[36..52], span as u128, 16);
        TraceParent { text }
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
}

/// Trace and span ids: keyed bijections of one counter (see the module documentation).
struct TraceGen {
    keys: [u64; 3],
    counter: AtomicU64,
}

static GEN: LazyLock<TraceGen> = LazyLock::new(TraceGen::new);

/// SplitMix64's finaliser: a bijection of u64 that scatters every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TraceGen {
    fn new() -> TraceGen {
        let r = random_bytes::<32>();
        let word = |i: usize| u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        TraceGen {
            keys: [word(0), word(1), word(2)],
            counter: AtomicU64::new(word(3)),
        }
    }

    /// (trace id, span id), neither zero.
    fn next(&self) -> (u128, u64) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hi = mix(n ^ self.keys[0]);
        let lo = mix(n.wrapping_add(self.keys[1]));
        let span = mix(n.rotate_left(17) ^ self.keys[2]);
        let trace = ((hi as u128) << 64) | lo as u128;
        (trace.max(1), span.max(1))
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
        let t = TraceParent::parse(b"00-00000000000000000000000000000001-0000000000000001-ff")
            .expect("ids that are not all zero, any flags");
        assert_eq!(t.trace_id(), "00000000000000000000000000000001");
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let long = format!("{GOOD}-extra");
        let bad: &[&str] = &[
            "",
            "00",
            &GOOD[..54],
            &long,
            // Another version (01, and ff, which is never valid).
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Upper-case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
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
    fn continuing_keeps_the_trace_and_flags_with_a_span_of_our_own() {
        let incoming = TraceParent::parse(GOOD.as_bytes()).unwrap();
        let a = TraceParent::continue_from(&incoming);
        let b = TraceParent::continue_from(&incoming);
        for t in [a, b] {
            assert_eq!(TraceParent::parse(t.as_str().as_bytes()), Some(t));
            assert_eq!(t.trace_id(), incoming.trace_id());
            assert!(t.as_str().ends_with("-01"), "{t}");
            assert_ne!(&t.as_str()[36..52], "00f067aa0ba902b7");
        }
        assert_ne!(a, b, "each request is a span of its own");
    }

    #[test]
    fn the_generator_never_yields_zero_and_mixes_the_counter() {
        let g = TraceGen {
            keys: [0, 0, 0],
            counter: AtomicU64::new(0),
        };
        let (t0, s0) = g.next();
        let (t1, s1) = g.next();
        assert!(t0 != 0 && s0 != 0 && t1 != 0 && s1 != 0);
        assert_ne!(t0, t1);
        assert_ne!(s0, s1);
        // Consecutive counters do not give ids that differ in a few low bits only.
        assert!((t0 ^ t1).count_ones() > 16, "{t0:x} {t1:x}");
    }
}
