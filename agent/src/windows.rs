//! Window arithmetic: windows are aligned to the UTC epoch in multiples of the interval.

/// Start of the aligned window containing `t`.
pub fn window_of(t: i64, interval: i64) -> i64 {
    t.div_euclid(interval) * interval
}

/// The aligned boundary after `t` (the end of the window containing `t`).
pub fn next_boundary(t: i64, interval: i64) -> i64 {
    window_of(t, interval) + interval
}

/// Longest report window (DESIGN.md §4): idle stretches are split into heartbeats of at
/// most this length.
pub const MAX_WINDOW: i64 = tally_proto::limits::MAX_WINDOW_SECS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert_eq!(window_of(3601, 3600), 3600);
        assert_eq!(window_of(3600, 3600), 3600);
        assert_eq!(next_boundary(3600, 3600), 7200);
        assert_eq!(next_boundary(7199, 3600), 7200);
        assert_eq!(window_of(5, 1), 5);
    }
}
