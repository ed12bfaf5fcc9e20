//! Window arithmetic. Windows are aligned to the UTC epoch in multiples of the interval, and
//! are also cut at the license's validity bounds (`not_before` and `not_after + grace`), so
//! no report window straddles a bound.
//!
//! Why the cuts: a license issued without `--not-before` starts "now", in the middle of an
//! aligned window. Were the agent's first window to start at the aligned boundary before
//! it, the report would begin before the license and the collector would (rightly) keep it
//! out of billing as `license_inactive`. Cut at the bounds, a window lies wholly inside the
//! license (billed) or wholly outside it (usage genuinely outside the license, still
//! `license_inactive`); the collector's rule stays strict and never has to guess which part
//! of a straddling window's usage happened when.

use tally_proto::license::License;

/// Longest report window: idle stretches are split into heartbeats of at most this length.
pub const MAX_WINDOW: i64 = tally_proto::limits::MAX_WINDOW_SECS;

/// How one agent cuts time into report windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    interval: i64,
    /// Instants (Unix seconds) where a window always ends and the next begins.
    cuts: [i64; 2],
}

impl Windows {
    /// Aligned windows only (no license bounds).
    pub fn aligned(interval: i64) -> Windows {
        Windows {
            interval: interval.max(1),
            cuts: [i64::MIN, i64::MAX],
        }
    }

    /// Aligned windows, cut at the license's `not_before` and `not_after + grace`.
    pub fn for_license(interval: i64, license: &License) -> Windows {
        let nb = license.not_before.timestamp();
        let end = license
            .not_after
            .timestamp()
            .saturating_add(i64::try_from(license.grace_secs).unwrap_or(i64::MAX));
        Windows {
            interval: interval.max(1),
            cuts: [nb, end],
        }
    }

    /// Start of the window containing `t`.
    pub fn start_of(&self, t: i64) -> i64 {
        let aligned = t.div_euclid(self.interval) * self.interval;
        self.cuts
            .iter()
            .copied()
            .filter(|&c| c <= t)
            .fold(aligned, i64::max)
    }

    /// The first cut strictly after `t` (`i64::MAX` if none).
    pub fn next_cut(&self, t: i64) -> i64 {
        self.cuts
            .iter()
            .copied()
            .filter(|&c| c > t)
            .fold(i64::MAX, i64::min)
    }

    /// End of the window containing `t` (the next aligned boundary or cut after `t`).
    pub fn end_of(&self, t: i64) -> i64 {
        let aligned_next = t
            .div_euclid(self.interval)
            .saturating_mul(self.interval)
            .saturating_add(self.interval);
        aligned_next.min(self.next_cut(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        let w = Windows::aligned(3600);
        assert_eq!(w.start_of(3601), 3600);
        assert_eq!(w.start_of(3600), 3600);
        assert_eq!(w.end_of(3600), 7200);
        assert_eq!(w.end_of(7199), 7200);
        assert_eq!(Windows::aligned(1).start_of(5), 5);
    }

    #[test]
    fn license_bounds_cut_windows() {
        // not_before at 19:26:00 (69960 s into the day), not_after + grace at 21:30:00.
        let (nb, end) = (69_960, 77_400);
        let w = Windows {
            interval: 3600,
            cuts: [nb, end],
        };
        // Before the license: the aligned window, cut at not_before.
        assert_eq!(w.start_of(nb - 1), 68_400);
        assert_eq!(w.end_of(nb - 1), nb);
        // From not_before: the first window starts there, ends at the next boundary.
        assert_eq!(w.start_of(nb), nb);
        assert_eq!(w.start_of(nb + 25), nb);
        assert_eq!(w.end_of(nb), 72_000);
        // Inside: plain aligned windows.
        assert_eq!((w.start_of(72_001), w.end_of(72_001)), (72_000, 75_600));
        // The window holding not_after + grace ends there; the next starts there.
        assert_eq!((w.start_of(75_601), w.end_of(75_601)), (75_600, end));
        assert_eq!((w.start_of(end), w.end_of(end)), (end, 79_200));
        assert_eq!(w.next_cut(end), i64::MAX);
    }
}
