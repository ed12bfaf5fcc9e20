//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! Labels are low-cardinality by construction: outcomes and reason codes are fixed sets,
//! HTTP statuses are grouped by class. A std `Mutex` is fine: it guards a tiny map for a
//! few nanoseconds and is never held across an `.await`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    reports: Mutex<BTreeMap<(&'static str, String), u64>>,
    submit_calls: AtomicU64,
    enrollments: AtomicU64,
    http: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn report(&self, outcome: &'static str, reason: &str) {
        let mut m = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((outcome, reason.to_string())).or_default() += 1;
    }

    pub fn submit_call(&self) {
        self.submit_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn enrollment(&self) {
        self.enrollments.fetch_add(1, Ordering::Relaxed);
    }

    pub fn http_response(&self, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        *self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP tally_reports_total Reports processed, by outcome and reason code.\n");
        out.push_str("# TYPE tally_reports_total counter\n");
        for ((o, r), n) in self
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tally_reports_total{{outcome=\"{o}\",reason=\"{r}\"}} {n}"
            );
        }
        out.push_str("# HELP tally_submit_calls_total Ingest.Submit calls.\n# TYPE tally_submit_calls_total counter\n");
        let _ = writeln!(
            out,
            "tally_submit_calls_total {}",
            self.submit_calls.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tally_enrollments_total Successful enrollments.\n# TYPE tally_enrollments_total counter\n");
        let _ = writeln!(
            out,
            "tally_enrollments_total {}",
            self.enrollments.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tally_http_responses_total Billing API responses, by status class.\n");
        out.push_str("# TYPE tally_http_responses_total counter\n");
        for (c, n) in self.http.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "tally_http_responses_total{{class=\"{c}\"}} {n}");
        }
        out
    }
}
