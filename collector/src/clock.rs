//! The collector's clock: the one source of "now" for every time that decides billing
//! (receipt times, "this month", close, retention and purge due dates, lease ends).
//!
//! Production uses [`Clock::system`]. Tests choose their own "now" with
//! [`Clock::starting_at`], so a check about "this month" never depends on the date the suite
//! runs on. The clock is owned by the store (`Store::clock`), so the store's in-transaction
//! times and every caller's "now" come from one place and cannot disagree.
//!
//! A test clock is *shifted*, not frozen: it reads the chosen instant when it is made and
//! then runs at the system clock's rate. Frozen time would break what needs time to pass:
//! receipt and close times must be strictly ordered (a report is on a closed statement
//! exactly when it was receipted before the close), and tokens, leases and timeouts expire.

use chrono::{DateTime, Duration, Utc};

/// A wall clock, possibly shifted by a fixed offset from the system's. `Copy`: pass it by
/// value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Microseconds added to the system clock (0 in production).
    offset_micros: i64,
}

impl Clock {
    /// The system clock: what production runs on.
    pub const fn system() -> Clock {
        Clock { offset_micros: 0 }
    }

    /// A clock that reads `at` now and then advances with the system clock. The offset is
    /// rounded up to whole microseconds, so it never reads before `at`.
    pub fn starting_at(at: DateTime<Utc>) -> Clock {
        let d = at - Utc::now();
        let us = d.num_microseconds().unwrap_or(0);
        Clock {
            offset_micros: if d > Duration::microseconds(us) {
                us.saturating_add(1)
            } else {
                us
            },
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::microseconds(self.offset_micros)
    }

    /// How far this clock is ahead of the system clock, in microseconds (0 in production).
    /// For stores whose times come from elsewhere (PostgreSQL reads the database server's
    /// clock, so N collectors share one): they add this offset to that clock.
    pub fn offset_micros(&self) -> i64 {
        self.offset_micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_not_shifted() {
        let before = Utc::now();
        let t = Clock::system().now();
        assert!(t >= before && t <= Utc::now());
        assert_eq!(Clock::system().offset_micros(), 0);
    }

    #[test]
    fn a_shifted_clock_starts_at_its_instant_and_runs_forward() {
        let at = DateTime::parse_from_rfc3339("2031-02-28T23:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::starting_at(at);
        let first = c.now();
        assert!(first >= at && first - at < Duration::seconds(5), "{first}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(c.now() > first, "a test clock must advance");
    }
}
