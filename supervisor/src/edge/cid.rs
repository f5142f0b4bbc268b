//! Correlation ids and small random values.
//!
//! A cid is 20 hex characters: a random 32-bit prefix chosen at start (so two servers, or two
//! runs, do not collide) and a 48-bit counter. It costs one atomic increment and one short
//! format per request, which matters on the hot path more than cryptographic randomness does;
//! the tokens that need unpredictability come from the OS generator instead.

use std::sync::atomic::{AtomicU64, Ordering};

/// Generates correlation ids.
#[derive(Debug)]
pub struct CidGen {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for CidGen {
    fn default() -> Self {
        Self::new()
    }
}

impl CidGen {
    pub fn new() -> CidGen {
        let seed = u64::from_be_bytes(random_bytes::<8>());
        CidGen {
            prefix: (seed >> 32) as u32,
            counter: AtomicU64::new(seed & 0xFFFF),
        }
    }

    /// The next cid.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF_FFFF;
        format!("{:08x}{:012x}", self.prefix, n)
    }
}

/// `N` random bytes from the OS's cryptographic source (`getrandom`). It does not fail on
/// Linux; if it ever did, there is no safe fallback for tokens and keys, so this panics with
/// the reason instead of inventing weaker bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)
        .unwrap_or_else(|e| panic!("the operating system's random source failed: {e}"));
    out
}

/// `n_bytes` random bytes as lower-case hex.
pub fn random_hex(n_bytes: usize) -> String {
    let mut s = String::with_capacity(n_bytes * 2);
    let mut left = n_bytes;
    while left > 0 {
        let b = random_bytes::<16>();
        for x in b.iter().take(left.min(16)) {
            s.push_str(&format!("{x:02x}"));
        }
        left = left.saturating_sub(16);
    }
    s
}

/// A random number in `0..n` (0 when `n` is 0).
pub fn random_below(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        u64::from_be_bytes(random_bytes::<8>()) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_are_unique_and_fixed_width() {
        let g = CidGen::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_hex(16).len(), 32);
        assert!(random_below(5) < 5);
    }
}
