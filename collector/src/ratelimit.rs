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
        self.try_take_at(wants, Instant::now())
    }

    /// [`AgentRateLimiter::try_take`] at the instant `now` (tests inject it). Each bucket
    /// refills at `rate` tokens per second since its last successful take, up to `burst`; a
    /// key never seen starts full. A refused call changes no bucket.
    pub fn try_take_at(&self, wants: &HashMap<[u8; 32], usize>, now: Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |tokens: f64, at: Instant| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst)
        };
        if b.len() > 100_000 {
            // Forget full buckets of idle agents so the map stays bounded.
            b.retain(|_, (t, at)| refill(*t, *at) < self.burst);
        }
        let mut refilled = Vec::with_capacity(wants.len());
        for (key, n) in wants {
            let tokens = match b.get(key) {
                Some(&(t, at)) => refill(t, at),
                None => self.burst,
            };
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
    use std::time::Duration;

    /// One call: whole seconds after the start, `(key byte, n)` per key, the decision.
    type Step = (u64, &'static [(u8, usize)], bool);

    /// Runs each case's steps in order against a fresh limiter of `rate` reports/s, at
    /// injected instants (no real time passes).
    fn run(cases: &[(&str, f64, &[Step])]) {
        for (name, rate, steps) in cases {
            let l = AgentRateLimiter::new(*rate);
            let t0 = Instant::now();
            for (i, (at, wants, ok)) in steps.iter().enumerate() {
                let w: HashMap<[u8; 32], usize> =
                    wants.iter().map(|&(k, n)| ([k; 32], n)).collect();
                let now = t0 + Duration::from_secs(*at);
                assert_eq!(
                    l.try_take_at(&w, now),
                    *ok,
                    "{name}, step {i}: at {at} s, wants {wants:?}"
                );
            }
        }
    }

    #[test]
    fn ratelimit_decisions() {
        run(&[
            // Burst is max(2 × rate, 500).
            (
                "burst spent, then refused",
                10.0,
                &[(0, &[(1, 500)], true), (0, &[(1, 1)], false)],
            ),
            (
                "burst is 2 × rate above 250/s",
                1000.0,
                &[(0, &[(1, 2000)], true), (0, &[(1, 1)], false)],
            ),
            (
                "more than the burst at once",
                10.0,
                &[(0, &[(1, 501)], false), (0, &[(1, 500)], true)],
            ),
            // 10/s for 5 s is exactly 50 tokens; a refused call does not move the bucket's time.
            (
                "refill is rate × seconds",
                10.0,
                &[
                    (0, &[(1, 500)], true),
                    (4, &[(1, 41)], false),
                    (5, &[(1, 51)], false),
                    (5, &[(1, 50)], true),
                    (5, &[(1, 1)], false),
                    (6, &[(1, 10)], true),
                    (6, &[(1, 1)], false),
                ],
            ),
            (
                "a refused call takes nothing from any key",
                10.0,
                &[
                    (0, &[(1, 450)], true),
                    (0, &[(1, 100), (2, 10), (3, 10), (4, 10)], false),
                    (0, &[(2, 500)], true),
                    (0, &[(3, 500)], true),
                    (0, &[(4, 500)], true),
                    (0, &[(1, 50)], true),
                    (0, &[(1, 1)], false),
                ],
            ),
            (
                "a call that fits takes from every key",
                10.0,
                &[
                    (0, &[(1, 100), (2, 200)], true),
                    (0, &[(1, 401)], false),
                    (0, &[(2, 301)], false),
                    (0, &[(1, 400), (2, 300)], true),
                ],
            ),
            (
                "another key is unaffected",
                10.0,
                &[
                    (0, &[(1, 500)], true),
                    (0, &[(1, 1)], false),
                    (0, &[(2, 500)], true),
                ],
            ),
            // 1000 s at 10/s would be 10 000 tokens: the bucket holds the burst at most.
            (
                "refill is capped at the burst",
                10.0,
                &[
                    (0, &[(1, 1)], true),
                    (1000, &[(1, 501)], false),
                    (1000, &[(1, 500)], true),
                    (1000, &[(1, 1)], false),
                ],
            ),
        ]);
    }

    #[test]
    fn ratelimit_all_or_nothing_whatever_the_key_order() {
        // Keys are visited in the map's (random) order: repeat so the short key also comes
        // after the others.
        for _ in 0..50 {
            run(&[(
                "all or nothing",
                10.0,
                &[
                    (0, &[(9, 499)], true),
                    (0, &[(1, 10), (2, 10), (9, 2), (3, 10)], false),
                    (0, &[(1, 500), (2, 500), (3, 500), (9, 1)], true),
                ],
            )]);
        }
    }

    #[test]
    fn ratelimit_try_take_uses_the_real_clock() {
        let l = AgentRateLimiter::new(10.0);
        let a = HashMap::from([([1u8; 32], 400usize)]);
        let b = HashMap::from([([2u8; 32], 1usize)]);
        assert!(l.try_take(&a));
        assert!(!l.try_take(&a), "the burst is spent");
        assert!(l.try_take(&b), "another key is unaffected");
    }
}
