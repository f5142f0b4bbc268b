//! Correlation ids (the random values they start from are `crate::random`'s).
//!
//! A cid is 20 hex characters: a random 32-bit prefix chosen at start (so two servers, or two
//! runs, do not collide) and a 48-bit counter. It costs one atomic increment and one short
//! format per request, which matters on the hot path more than cryptographic randomness does;
//! the tokens that need unpredictability come from the OS generator instead. Depends on
//! nothing of the crate but `random`: every layer may use it ([`next`] for a process-wide
//! generator).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::random::random_bytes;

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

/// The next cid of the process-wide generator (for the subsystems that are handed none).
pub fn next() -> String {
    static GEN: std::sync::LazyLock<CidGen> = std::sync::LazyLock::new(CidGen::new);
    GEN.next()
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
    }
}
