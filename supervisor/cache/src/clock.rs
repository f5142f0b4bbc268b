//! Time for stamps: [`Stamp`] (a write's place in the cluster-wide order), the hybrid
//! logical clock [`Hlc`], a server's [`node_id`] and wall-clock [`now_ms`]. Knows nothing of
//! caches or entries.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Wall-clock milliseconds << 16 | a counter (see [`Hlc`]).
    pub t: u64,
    /// The writing server's id ([`node_id`]).
    pub node: u64,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp { t: 0, node: 0 };
}

/// The id of a server in stamps: the first 8 bytes of SHA-256 of its name.
pub fn node_id(server: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(server.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A hybrid logical clock: never goes backwards, stays close to wall-clock time, and moves
/// past every stamp it has seen, so a write made after seeing another is ordered after it.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A new local time, greater than every time returned or observed before.
    pub fn now(&self) -> u64 {
        let wall = now_ms() << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes note of a time seen in another server's write.
    pub fn observe(&self, t: u64) {
        self.last.fetch_max(t, Ordering::AcqRel);
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_past_what_it_observes() {
        let h = Hlc::default();
        h.observe(u64::MAX);
        assert_eq!(h.now(), u64::MAX, "saturates instead of wrapping");
        let h = Hlc::default();
        let a = h.now();
        h.observe(a + (1 << 30));
        assert!(h.now() > a + (1 << 30));
    }
}
