//! Small random values from the OS's cryptographic source: tokens, key file names, the
//! jitter of worker recycling, the seed of correlation ids. Depends on nothing of the crate,
//! so every layer may use it.

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
    fn random_values_have_their_size_and_range() {
        assert_eq!(random_hex(16).len(), 32);
        assert!(random_below(5) < 5);
    }
}
