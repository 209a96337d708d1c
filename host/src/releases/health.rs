//! A canary's health over one interval, against the stable version's over the same interval.
//!
//! Health is a version's error rate (answers with a 5xx status: its own 500s, traps,
//! timeouts, limits; a 4xx is the caller's fault and counts as a success) and its p99 latency.
//! The canary is unhealthy, once it has `min_requests` calls in the interval, when
//!
//! - its error rate is over `max_error_rate` and over the stable version's in the same
//!   interval, measured on `min_requests` calls too (when the stable version fails as often,
//!   the cause is shared: a dependency is down, the callers send bad requests; that is not the
//!   canary's doing), or
//! - its p99 is over `max_p99_ms`, or both versions have [`P99_MIN_CALLS`] calls in the
//!   interval and the canary's p99 is over [`P99_RATIO`] times the stable's and
//!   [`P99_MARGIN_MS`] above it.

use std::time::Duration;

/// How much slower than the stable version a canary's p99 may be.
pub const P99_RATIO: f64 = 2.0;
/// ... and by how much at least (short calls jitter by more than their own length).
pub const P99_MARGIN_MS: f64 = 10.0;
/// Calls each version needs in the interval before their p99s are compared: below it, a p99
/// is one slow call (a neighbour's burst, a cold cache), not a regression.
pub const P99_MIN_CALLS: u64 = 50;
/// Latencies kept per version and interval; past it, the window keeps a uniform sample.
const MAX_SAMPLES: usize = 20_000;

/// One version's calls in the current interval.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub calls: u64,
    pub errors: u64,
    /// Latencies in microseconds (a reservoir sample past [`MAX_SAMPLES`]).
    samples: Vec<u32>,
    /// Position of the next replaced sample, when full.
    next: usize,
}

impl Tally {
    pub fn record(&mut self, failed: bool, took: Duration) {
        self.calls += 1;
        self.errors += u64::from(failed);
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(us);
        } else {
            // A deterministic stand-in for reservoir sampling: every call replaces the oldest
            // kept sample, so the window keeps the interval's latest calls.
            self.samples[self.next] = us;
            self.next = (self.next + 1) % MAX_SAMPLES;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.errors as f64 / self.calls as f64 }
    }

    /// The 99th percentile latency in milliseconds (0 without calls).
    pub fn p99_ms(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        let (_, p99, _) = sorted.select_nth_unstable(rank.clamp(1, self.samples.len()) - 1);
        f64::from(*p99) / 1e3
    }
}

/// The limits a canary is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
}

/// Why a canary is unhealthy, with its figures: the reason of its automatic rollback.
pub fn unhealthy(canary: &Tally, stable: &Tally, limits: &Limits) -> Option<String> {
    if canary.calls < limits.min_requests.max(1) {
        return None;
    }
    let rate = canary.error_rate();
    let stable_rate = stable.error_rate();
    // The stable version's rate excuses the canary only when it is measured on as many calls.
    let stable_measured = stable.calls >= limits.min_requests.max(1);
    if rate > limits.max_error_rate && (rate > stable_rate || !stable_measured) {
        return Some(format!(
            "error rate {rate:.3} over {} calls in the interval (limit {:.3}; stable {stable_rate:.3} over {} calls)",
            canary.calls, limits.max_error_rate, stable.calls
        ));
    }
    let p99 = canary.p99_ms();
    if let Some(max) = limits.max_p99_ms
        && p99 > max
    {
        return Some(format!("p99 {p99:.1} ms over {} calls in the interval (limit {max:.1} ms)", canary.calls));
    }
    let stable_p99 = stable.p99_ms();
    let comparable = canary.calls >= P99_MIN_CALLS.max(limits.min_requests)
        && stable.calls >= P99_MIN_CALLS.max(limits.min_requests);
    if comparable && p99 > stable_p99 * P99_RATIO && p99 > stable_p99 + P99_MARGIN_MS {
        return Some(format!(
            "p99 {p99:.1} ms over {} calls in the interval, more than {P99_RATIO}x the stable version's {stable_p99:.1} ms",
            canary.calls
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(calls: u64, errors: u64, ms: u64) -> Tally {
        let mut t = Tally::default();
        for i in 0..calls {
            t.record(i < errors, Duration::from_millis(ms));
        }
        t
    }

    const LIMITS: Limits = Limits { max_error_rate: 0.01, max_p99_ms: None, min_requests: 10 };

    #[test]
    fn a_failing_canary_is_unhealthy_once_it_has_enough_calls() {
        let stable = tally(100, 0, 2);
        assert_eq!(unhealthy(&tally(9, 9, 2), &stable, &LIMITS), None, "too few calls to judge");
        let reason = unhealthy(&tally(10, 10, 2), &stable, &LIMITS).expect("unhealthy");
        assert!(reason.starts_with("error rate 1.000 over 10 calls"), "{reason}");
        assert_eq!(unhealthy(&tally(200, 2, 2), &stable, &LIMITS), None, "1% is within the limit");
        // The stable version fails as often: the cause is not the canary.
        assert_eq!(unhealthy(&tally(20, 10, 2), &tally(20, 10, 2), &LIMITS), None);
        assert!(unhealthy(&tally(20, 10, 2), &tally(0, 0, 2), &LIMITS).is_some(), "no stable calls to compare");
        assert!(unhealthy(&tally(20, 20, 2), &tally(1, 1, 2), &LIMITS).is_some(), "one stable failure excuses nothing");
    }

    #[test]
    fn a_slow_canary_is_unhealthy() {
        let stable = tally(100, 0, 5);
        let reason = unhealthy(&tally(50, 0, 30), &stable, &LIMITS).expect("6x slower");
        assert!(reason.contains("2x the stable version's 5.0 ms"), "{reason}");
        assert_eq!(unhealthy(&tally(49, 0, 30), &stable, &LIMITS), None, "too few calls to compare p99s");
        // Twice as slow, but by less than the margin: jitter, not a regression.
        assert_eq!(unhealthy(&tally(50, 0, 12), &stable, &LIMITS), None);
        let limits = Limits { max_p99_ms: Some(8.0), ..LIMITS };
        let reason = unhealthy(&tally(20, 0, 12), &stable, &limits).expect("over the absolute limit");
        assert!(reason.contains("limit 8.0 ms"), "{reason}");
    }

    #[test]
    fn p99_is_the_99th_percentile() {
        let mut t = Tally::default();
        for ms in 1..=100 {
            t.record(false, Duration::from_millis(ms));
        }
        assert_eq!(t.p99_ms(), 99.0);
        assert_eq!(Tally::default().p99_ms(), 0.0);
    }
}
