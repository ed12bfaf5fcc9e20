//! Per-agent rate limiting of online ingest: a token bucket per agent key, charged only for
//! reports whose signature verified (so nobody can spend another agent's budget by sending
//! garbage under its public key). A throttled call is answered `RESOURCE_EXHAUSTED` and
//! stores nothing; the agent retries it with backoff.
//!
//! A std `Mutex` is right here: it guards a map update of a few nanoseconds and is never
//! held across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Default sustained rate per agent key, in reports per second. An agent sends one report
/// per window, plus backlogs in batches of 100: this leaves room for fast draining while
/// one runaway key cannot take the writer from everyone else.
pub const DEFAULT_REPORTS_PER_SEC: f64 = 1000.0;

pub struct AgentRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

impl AgentRateLimiter {
    /// `rate` reports per second, bursts up to `max(2 × rate, 500)` (one full Submit).
    pub fn new(rate: f64) -> Self {
        AgentRateLimiter {
            rate,
            burst: (2.0 * rate).max(500.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens from every key's bucket, or none at all if any bucket lacks them.
    pub fn try_take(&self, wants: &HashMap<[u8; 32], usize>) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            // Forget full buckets of idle agents so the map stays bounded.
            let burst = self.burst;
            let rate = self.rate;
            b.retain(|_, (t, at)| (*t + now.duration_since(*at).as_secs_f64() * rate) < burst);
        }
        let mut refilled = Vec::with_capacity(wants.len());
        for (key, n) in wants {
            let (tokens, at) = b.get(key).copied().unwrap_or((self.burst, now));
            let tokens =
                (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
            if tokens < *n as f64 {
                return false;
            }
            refilled.push((*key, tokens - *n as f64));
        }
        for (key, t) in refilled {
            b.insert(key, (t, now));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_throttles_one_key_only() {
        let l = AgentRateLimiter::new(10.0);
        let a = HashMap::from([([1u8; 32], 400usize)]);
        let b = HashMap::from([([2u8; 32], 1usize)]);
        assert!(l.try_take(&a));
        assert!(!l.try_take(&a), "the burst is spent");
        assert!(l.try_take(&b), "another key is unaffected");
    }
}
