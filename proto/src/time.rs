//! Time on the wire and on the command line: protobuf timestamps, dates and durations.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use prost_types::Timestamp;

/// A wall-clock instant in UTC.
pub type Instant = DateTime<Utc>;

/// Converts to a protobuf timestamp.
pub fn to_timestamp(t: Instant) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp; `None` when it is out of range or not normalized.
pub fn from_timestamp(ts: &Timestamp) -> Option<Instant> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Utc.timestamp_opt(ts.seconds, ts.nanos as u32).single()
}

/// Why a date or duration given as text is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error("{0:?} is not a date: use YYYY-MM-DD or RFC 3339 (2026-01-31T12:00:00Z)")]
    Date(String),
    #[error("{0:?} is not a duration: use a number and a unit, like 1s, 15m, 1h or 7d")]
    Duration(String),
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
pub fn parse_instant(s: &str) -> Result<Instant, TimeParseError> {
    let shown = || TimeParseError::Date(s.chars().take(64).collect());
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let dt = d.and_hms_opt(0, 0, 0).ok_or_else(shown)?;
        return Ok(Utc.from_utc_datetime(&dt));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| shown())
}

/// Parses the *end* of a period: a date `YYYY-MM-DD` is the end of that day (UTC), i.e.
/// the first instant of the next day, so "expires 2027-12-31" includes all of that day; an
/// RFC 3339 time is that instant.
pub fn parse_end_instant(s: &str) -> Result<Instant, TimeParseError> {
    let t = parse_instant(s)?;
    if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
        return t
            .checked_add_signed(chrono::Duration::days(1))
            .ok_or_else(|| TimeParseError::Date(s.chars().take(64).collect()));
    }
    Ok(t)
}

/// Parses a duration written `1s`, `15m`, `1h`, `7d` into seconds (at least 1).
pub fn parse_duration_secs(s: &str) -> Result<u64, TimeParseError> {
    let err = || TimeParseError::Duration(s.chars().take(64).collect());
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    let secs = n.checked_mul(mult).ok_or_else(err)?;
    // Keep durations within what every timestamp computation can add without overflow.
    if secs == 0 || secs > 100 * 366 * 86_400 {
        return Err(err());
    }
    Ok(secs)
}

/// Formats seconds back the way they are written (`90s`, `15m`, `7d`).
pub fn format_duration_secs(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The first instant after the month `YYYY-MM` (UTC), if it names one.
pub fn month_after(month: &str) -> Option<Instant> {
    use chrono::{Datelike, NaiveDate, TimeZone};
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let first = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)?
    };
    Some(chrono::Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?))
}

/// RFC 3339 with seconds precision and `Z`.
pub fn rfc3339(t: Instant) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with microseconds and `Z` (for instants that are compared with receipt times,
/// such as a statement's close time).
pub fn rfc3339_micros(t: Instant) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("1s"), Ok(1));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("7d"), Ok(604_800));
        for bad in [
            "",
            "0s",
            "h",
            "1",
            "1w",
            "-1s",
            "1.5h",
            "99999999999999999999d",
            " 1h",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration_secs(604_800), "7d");
        assert_eq!(format_duration_secs(90), "90s");
    }

    #[test]
    fn dates() {
        assert_eq!(
            rfc3339(parse_instant("2026-01-31").unwrap()),
            "2026-01-31T00:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_instant("2026-01-31T12:00:00+01:00").unwrap()),
            "2026-01-31T11:00:00Z"
        );
        for bad in [
            "2026-13-01",
            "tomorrow",
            "2026-01-31 12:00",
            "",
            "2026-02-30",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_reject_unnormalized_nanos() {
        assert!(
            from_timestamp(&Timestamp {
                seconds: 1,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            from_timestamp(&Timestamp {
                seconds: 1,
                nanos: 1_000_000_000
            })
            .is_none()
        );
        assert!(
            from_timestamp(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_none()
        );
    }
}
