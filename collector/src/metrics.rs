//! The collector's metrics, kept with `prometheus-client` and served at `/metrics` in the
//! OpenMetrics text format (every metric is listed in docs/operations.md).
//!
//! Labels are low-cardinality by construction: outcomes, reason codes, queries, store
//! operations and delivery results are fixed sets, HTTP statuses are grouped by class.
//! Nothing names a customer, a license or an agent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;
use tally_runtime::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    query: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A billing query whose latency is measured.
#[derive(Debug, Clone, Copy)]
pub enum Query {
    /// `GET /v1/statements/{customer}/{month}`.
    Statement,
    /// `GET /v1/usage`.
    Usage,
    /// `GET /v1/statements/{customer}/{month}/evidence`.
    Evidence,
}

impl Query {
    pub fn label(self) -> &'static str {
        match self {
            Query::Statement => "statement",
            Query::Usage => "usage",
            Query::Evidence => "evidence",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    reports: Family<ReportLabels, Counter>,
    submit_calls: Counter,
    submit_duration: Histogram,
    enrollments: Counter,
    http: Family<ClassLabels, Counter>,
    queries: Histograms<QueryLabels>,
    store: Histograms<OperationLabels>,
    webhook: Family<ResultLabels, Counter>,
    backups: Family<ResultLabels, Counter>,
    backups_pruned: Counter,
    backup_last_success: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally");
        let reports = Family::<ReportLabels, Counter>::default();
        registry.register(
            "reports",
            "Reports processed, by outcome and reason code",
            reports.clone(),
        );
        let submit_calls = Counter::default();
        registry.register("submit_calls", "Ingest.Submit calls", submit_calls.clone());
        let submit_duration = latency_histogram();
        registry.register_with_unit(
            "submit_duration",
            "Time to answer one Ingest.Submit call (verify, store, sign receipts)",
            Unit::Seconds,
            submit_duration.clone(),
        );
        let enrollments = Counter::default();
        registry.register("enrollments", "Successful enrollments", enrollments.clone());
        let http = Family::<ClassLabels, Counter>::default();
        registry.register(
            "http_responses",
            "Billing API responses, by status class",
            http.clone(),
        );
        let queries: Histograms<QueryLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "query_duration",
            "Time to answer a billing query (statement, usage, evidence)",
            Unit::Seconds,
            queries.clone(),
        );
        let store: Histograms<OperationLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "store_transaction_duration",
            "Time the store took to commit a write (ingest: one Submit's reports), queue \
             included",
            Unit::Seconds,
            store.clone(),
        );
        let webhook = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Usage alert deliveries to the webhook, by result",
            webhook.clone(),
        );
        let backups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "backups",
            "Scheduled backups, by result (ok: taken, checked, encrypted; failed)",
            backups.clone(),
        );
        let backups_pruned = Counter::default();
        registry.register(
            "backups_pruned",
            "Old scheduled backups removed to keep --backup-keep",
            backups_pruned.clone(),
        );
        let backup_last_success = Gauge::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last scheduled backup succeeded (Unix time; 0: none since start)",
            backup_last_success.clone(),
        );
        // Every series with a known label value exists from the start, at zero, so
        // `increase()` sees its first event and an alert comparing two of them (failed
        // against delivered) has both sides.
        for (outcome, reason) in [("accepted", ""), ("duplicate", ""), ("throttled", "")] {
            let _ = reports.get_or_create(&ReportLabels {
                outcome,
                reason: reason.to_string(),
            });
        }
        for r in tally_proto::reason::Reason::ALL {
            let _ = reports.get_or_create(&ReportLabels {
                outcome: r.outcome().as_str(),
                reason: r.as_str().to_string(),
            });
        }
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            let _ = http.get_or_create(&ClassLabels { class });
        }
        for q in [Query::Statement, Query::Usage, Query::Evidence] {
            let _ = queries.get_or_create(&QueryLabels { query: q.label() });
        }
        let _ = store.get_or_create(&OperationLabels {
            operation: "ingest",
        });
        for result in ["delivered", "failed"] {
            let _ = webhook.get_or_create(&ResultLabels { result });
        }
        for result in ["ok", "failed"] {
            let _ = backups.get_or_create(&ResultLabels { result });
        }
        Metrics {
            registry,
            reports,
            submit_calls,
            submit_duration,
            enrollments,
            http,
            queries,
            store,
            webhook,
            backups,
            backups_pruned,
            backup_last_success,
        }
    }
}

impl Metrics {
    pub fn report(&self, outcome: &'static str, reason: &str) {
        self.reports
            .get_or_create(&ReportLabels {
                outcome,
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn submit_call(&self) {
        self.submit_calls.inc();
    }

    pub fn submit_duration(&self, took: Duration) {
        self.submit_duration.observe(took.as_secs_f64());
    }

    pub fn enrollment(&self) {
        self.enrollments.inc();
    }

    pub fn http_response(&self, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http.get_or_create(&ClassLabels { class }).inc();
    }

    pub fn query_duration(&self, query: Query, took: Duration) {
        self.queries
            .get_or_create(&QueryLabels {
                query: query.label(),
            })
            .observe(took.as_secs_f64());
    }

    /// A store write of `operation` (`ingest`, …) took `took`.
    pub fn store_transaction(&self, operation: &'static str, took: Duration) {
        self.store
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    pub fn webhook_delivery(&self, delivered: bool) {
        let result = if delivered { "delivered" } else { "failed" };
        self.webhook.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn backup(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.backups.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn backups_pruned(&self, n: u64) {
        self.backups_pruned.inc_by(n);
    }

    pub fn backup_succeeded_at(&self, unix_secs: i64) {
        self.backup_last_success.set(unix_secs);
    }

    /// Every metric, in the format `accept` asks for (see
    /// [`tally_runtime::metrics::negotiate`]): the content type and the body.
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        tally_runtime::metrics::negotiate(&self.registry, accept)
    }
}
