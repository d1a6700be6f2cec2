//! Per-key rate limiting: a looping agent is slowed with 429 before it floods the guard, and one key cannot
//! starve the others. A token bucket per key, in memory: each instance limits what it serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Requests a key may make: `per_second` on average, up to `burst` at once. `per_second == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 200,
            burst: 400,
        }
    }
}

impl RateLimit {
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };
}

#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
    /// Open streams (WebSocket and SSE) per key.
    streams: Mutex<HashMap<Uuid, usize>>,
}

/// One open stream of a key, counted until it is dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<Limiter>,
    key: Uuid,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self
            .limiter
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = streams.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Opens one more stream for `key`, unless it already has `most` open here.
    pub fn open_stream(self: &Arc<Self>, key: Uuid, most: usize) -> Option<StreamPermit> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let open = streams.entry(key).or_default();
        if *open >= most {
            return None;
        }
        *open += 1;
        Some(StreamPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: Uuid) -> Result<(), Duration> {
        if self.limit.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = Limiter::new(RateLimit {
            per_second: 10,
            burst: 3,
        });
        let key = Uuid::new_v4();
        for _ in 0..3 {
            assert!(limiter.check(key).is_ok());
        }
        let wait = limiter.check(key).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            limiter.check(Uuid::new_v4()).is_ok(),
            "other keys are not affected"
        );
        assert!(Limiter::new(RateLimit::OFF).check(key).is_ok());
    }

    #[test]
    fn streams_are_counted_until_dropped() {
        let limiter = Arc::new(Limiter::new(RateLimit::OFF));
        let key = Uuid::new_v4();
        let first = limiter.open_stream(key, 2).unwrap();
        let _second = limiter.open_stream(key, 2).unwrap();
        assert!(limiter.open_stream(key, 2).is_none());
        assert!(limiter.open_stream(Uuid::new_v4(), 2).is_some());
        drop(first);
        assert!(limiter.open_stream(key, 2).is_some());
    }
}
