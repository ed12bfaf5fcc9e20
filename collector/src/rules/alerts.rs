//! Usage alerts: which thresholds a report makes a license's monthly usage of a metric
//! cross. Pure: the store says the license's thresholds, the metric's limit and the
//! month's usage before and after the report; this decides.
//!
//! A threshold is a percentage of the metric's monthly limit (`--alert 80%,100%`); it is
//! crossed by the report that takes usage from below `limit × pct / 100` to at or above
//! it. Unlimited metrics have no alerts. Each threshold fires at most once per license,
//! metric and month (the store keeps one row per crossing).

/// Largest threshold accepted, in percent (a limit can be overshot tenfold and still be
/// alerted on).
pub const MAX_PERCENT: u32 = 1000;

/// The thresholds (percent, ascending) crossed when usage goes from `before` to `after`.
pub fn crossed(limit: u64, before: u64, after: u64, thresholds: &[u32]) -> Vec<u32> {
    if limit == 0 || after <= before {
        return Vec::new();
    }
    // In u128: limit × pct never overflows, nor does usage × 100.
    let reached =
        |used: u64, pct: u32| u128::from(used) * 100 >= u128::from(limit) * u128::from(pct);
    let mut out: Vec<u32> = thresholds
        .iter()
        .copied()
        .filter(|&p| p > 0 && !reached(before, p) && reached(after, p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Parses `80%,100%` (the `%` optional): 1 to 16 distinct whole percentages from 1 to
/// [`MAX_PERCENT`], returned ascending; `none` is no alerts.
pub fn parse_thresholds(s: &str) -> Result<Vec<u32>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let digits = p.strip_suffix('%').unwrap_or(p);
        let v: u32 = digits
            .parse()
            .ok()
            .filter(|v| (1..=MAX_PERCENT).contains(v) && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!("{p:?} is not a threshold (a whole percentage from 1% to {MAX_PERCENT}%)")
            })?;
        out.push(v);
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > 16 {
        return Err("at most 16 thresholds".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_fires_on_the_report_that_reaches_it() {
        let t = [80, 100];
        type Case = (u64, u64, u64, Vec<u32>);
        let cases: Vec<Case> = vec![
            // limit, before, after, crossed
            (1000, 0, 799, vec![]),
            (1000, 0, 800, vec![80]),
            (1000, 799, 800, vec![80]),
            (1000, 800, 900, vec![]), // already past 80, not yet 100
            (1000, 790, 1000, vec![80, 100]),
            (1000, 1000, 5000, vec![]), // both already reached
            (1000, 999, 1001, vec![100]),
            // Rounding: 80% of 3 is 2.4, reached at 3, not at 2.
            (3, 0, 2, vec![]),
            (3, 2, 3, vec![80, 100]),
            // No growth, no alert; a zero limit alerts nothing.
            (1000, 900, 900, vec![]),
            (0, 0, 10, vec![]),
            // Huge numbers do not overflow.
            (u64::MAX, 0, u64::MAX, vec![80, 100]),
        ];
        for (limit, before, after, want) in cases {
            assert_eq!(
                crossed(limit, before, after, &t),
                want,
                "{limit} {before}->{after}"
            );
        }
        assert_eq!(crossed(10, 0, 10, &[150, 50, 50]), vec![50]);
        assert_eq!(crossed(10, 0, 15, &[150, 50]), vec![50, 150]);
    }

    #[test]
    fn thresholds_parse_strictly() {
        assert_eq!(parse_thresholds("80%,100%"), Ok(vec![80, 100]));
        assert_eq!(parse_thresholds(" 100, 80% ,80"), Ok(vec![80, 100]));
        assert_eq!(parse_thresholds("none"), Ok(vec![]));
        for bad in [
            "", "0%", "80.5%", "-5%", "1001%", "eighty", "80%%", "+80", "80,,90",
        ] {
            assert!(parse_thresholds(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (1..=17).map(|i| format!("{i}%")).collect();
        assert!(parse_thresholds(&many.join(",")).is_err());
    }
}
