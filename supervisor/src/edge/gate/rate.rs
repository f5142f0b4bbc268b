//! Token buckets: the rate limits of channels and of security definitions. A bucket holds
//! its own state only; which limit it serves, and carrying its state over a rebuild of the
//! gate, are the compiled gate's (`edge::gate`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::channel::RateLimit;

/// A token bucket.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(limit: RateLimit) -> Bucket {
        let cap = limit.capacity();
        Bucket {
            limit,
            state: Mutex::new((cap, Instant::now())),
        }
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let rate = self.limit.rate_per_s();
        let cap = self.limit.capacity();
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * rate).min(cap);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / rate))
        }
    }

    /// Copies `from`'s state into this bucket when both serve the same limit (a config
    /// change must not hand out a fresh burst).
    pub fn carry_from(&self, from: &Bucket) {
        if from.limit == self.limit {
            *self.state.lock().expect("bucket lock") = *from.state.lock().expect("bucket lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_the_burst_then_paces() {
        let b = Bucket::new(RateLimit {
            requests: 2,
            per_s: 1,
            burst: Some(3),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }
}
