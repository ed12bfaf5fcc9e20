//! The agent's metrics, kept with `prometheus-client` and served at `GET /metrics` on the
//! recording port in the OpenMetrics text format (listed in docs/operations.md). Counters
//! move where the work happens; the outbox gauges are read from the database when scraped,
//! so they are exact even after a restart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    events_recorded: Counter,
    events_duplicate: Counter,
    delivery_attempts: Family<ResultLabels, Counter>,
    reports_delivered: Counter,
    outbox_reports: Gauge,
    outbox_oldest_age: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_agent");
        let events_recorded = Counter::default();
        registry.register(
            "events_recorded",
            "Usage events committed (acknowledged to the product)",
            events_recorded.clone(),
        );
        let events_duplicate = Counter::default();
        registry.register(
            "events_duplicate",
            "Events acknowledged but not counted again: their idempotency key was seen",
            events_duplicate.clone(),
        );
        let delivery_attempts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Submit calls to a collector, by result (failed ones are retried with backoff)",
            delivery_attempts.clone(),
        );
        let reports_delivered = Counter::default();
        registry.register(
            "reports_delivered",
            "Reports a collector answered with a verified receipt",
            reports_delivered.clone(),
        );
        let outbox_reports = Gauge::default();
        registry.register(
            "outbox_reports",
            "Signed reports waiting for a receipt",
            outbox_reports.clone(),
        );
        let outbox_oldest_age = Gauge::default();
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest report waiting for a receipt (0 when none waits)",
            Unit::Seconds,
            outbox_oldest_age.clone(),
        );
        // Both results exist from the start, at zero (see the collector's metrics).
        for result in ["ok", "failed"] {
            let _ = delivery_attempts.get_or_create(&ResultLabels { result });
        }
        Metrics {
            registry,
            events_recorded,
            events_duplicate,
            delivery_attempts,
            reports_delivered,
            outbox_reports,
            outbox_oldest_age,
        }
    }
}

impl Metrics {
    pub fn recorded(&self, counted: u64, duplicates: u64) {
        self.events_recorded.inc_by(counted);
        self.events_duplicate.inc_by(duplicates);
    }

    /// One Submit call: `Some(n)` when it succeeded with `n` receipts.
    pub fn delivery(&self, delivered: Option<u64>) {
        let result = if delivered.is_some() { "ok" } else { "failed" };
        self.delivery_attempts
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(n) = delivered {
            self.reports_delivered.inc_by(n);
        }
    }

    /// Every metric in the format `accept` asks for (see
    /// [`tally_runtime::metrics::negotiate`]), with the outbox as the database holds it now:
    /// `depth` reports, the oldest created at `oldest` (Unix seconds), at `now`.
    pub fn render(
        &self,
        accept: Option<&str>,
        depth: u64,
        oldest: Option<i64>,
        now: i64,
    ) -> (&'static str, String) {
        self.outbox_reports
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.outbox_oldest_age
            .set(oldest.map_or(0, |t| now.saturating_sub(t).max(0)));
        tally_runtime::metrics::negotiate(&self.registry, accept)
    }
}
