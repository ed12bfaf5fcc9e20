//! `/metrics` for both binaries: a `prometheus-client` registry rendered in the OpenMetrics
//! text format, or in Prometheus' older text format (0.0.4) for a scraper that does not ask
//! for OpenMetrics — the negotiation Prometheus' own client libraries do. Each binary keeps
//! its own metrics and registry; this is the part they share (negotiation, rendering, the
//! latency buckets).

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry in the format the scraper's `Accept` header asks for: OpenMetrics when it
/// names `application/openmetrics-text` (Prometheus does), else the 0.0.4 text format
/// (what `curl` and older tools read). Returns the content type and the body.
pub fn negotiate(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let open_metrics = render(registry);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (CONTENT_TYPE, open_metrics)
    } else {
        (TEXT_CONTENT_TYPE, to_text_format(&open_metrics))
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4, for what `prometheus-client` writes
/// (counters, gauges, histograms; no exemplars, no `_created`): a counter's `# HELP` and
/// `# TYPE` name its `_total` series, `# UNIT` and `# EOF` go. Samples are the same lines.
pub fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The registry in the OpenMetrics text format (label values escaped by the library),
/// ending with `# EOF`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoding error would only come from a metric's
    // own `encode`, and the library's metrics have none.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "Rendering the metrics failed.");
    }
    out
}

/// A latency histogram in seconds: buckets from 1 ms doubling to about 33 s (16 buckets
/// and +Inf), wide enough for a Submit of 500 reports on a slow disk.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn the_text_format_names_counters_by_their_total_series() {
        let mut r = Registry::with_prefix("t");
        let c = Counter::<u64>::default();
        r.register("calls", "Calls", c.clone());
        let g = Gauge::<i64>::default();
        r.register("depth", "Depth", g.clone());
        r.register_with_unit(
            "latency",
            "Latency",
            prometheus_client::registry::Unit::Seconds,
            latency_histogram(),
        );
        c.inc();
        g.set(3);
        let (ty, om) = negotiate(&r, Some("application/openmetrics-text;version=1.0.0"));
        assert_eq!(ty, CONTENT_TYPE);
        assert!(
            om.ends_with("# EOF\n") && om.contains("# TYPE t_calls counter\n"),
            "{om}"
        );
        let (ty, text) = negotiate(&r, None);
        assert_eq!(ty, TEXT_CONTENT_TYPE);
        assert!(
            text.contains(
                "# HELP t_calls_total Calls.\n# TYPE t_calls_total counter\nt_calls_total 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE t_depth gauge\nt_depth 3\n"), "{text}");
        assert!(
            text.contains("# TYPE t_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
