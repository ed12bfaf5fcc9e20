//! Calendar arithmetic for rollups (UTC).

use chrono::{Datelike, TimeZone, Utc};

/// Start of the hour containing `t` (unix seconds).
pub fn hour_of(t: i64) -> i64 {
    t.div_euclid(3600) * 3600
}

/// Start of the day containing `t`.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(86_400) * 86_400
}

/// Start of the calendar month containing `t`.
pub fn month_of(t: i64) -> i64 {
    let Some(dt) = chrono::DateTime::from_timestamp(t, 0) else {
        return t;
    };
    Utc.with_ymd_and_hms(dt.year(), dt.month(), 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp())
        .unwrap_or(t)
}

/// Start of the month after the one starting at `month_start`.
pub fn next_month(month_start: i64) -> i64 {
    let Some(dt) = chrono::DateTime::from_timestamp(month_start, 0) else {
        return month_start;
    };
    let (y, m) = if dt.month() == 12 {
        (dt.year() + 1, 1)
    } else {
        (dt.year(), dt.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp())
        .unwrap_or(month_start)
}

/// `YYYY-MM` of the month containing `t`.
pub fn month_label(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m").to_string())
        .unwrap_or_default()
}

/// `YYYY-MM` → unix seconds of the month's first instant.
pub fn parse_month(s: &str) -> Option<i64> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp())
}
