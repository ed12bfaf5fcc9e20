//! `/metrics` of both binaries, scraped from real processes after real traffic: `promtool
//! check metrics` finds nothing to say about either (text format), a scraper that asks for
//! OpenMetrics gets it, and the figures are what happened — reports counted, Submits and
//! billing queries timed, events recorded, the outbox emptied and then, with the collector
//! killed, filling. The alerting rules in `deploy/` pass `promtool check rules` and their
//! own unit tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tally_tests::*;

fn promtool() -> PathBuf {
    deps::require("promtool")
}

/// `promtool check metrics` on `text`: it must exit 0 and print nothing (no lint problem).
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics: {:?}\n{said}\n---\n{text}",
        out.status
    );
}

/// The value of the sample `series` (name with its labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let ty = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ty, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_expose_metrics_that_promtool_accepts() {
    let mut d = Deployment::new(&["api.convert"], Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .post(format!("{}/v1/events", agent.url()))
            .json(&serde_json::json!({"metric": "api.convert", "quantity": 2}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    agent.drain(120).await;
    // One statement and one usage query, timed by the collector.
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    for path in [
        format!("/v1/statements/{}/{month}", d.customer),
        format!("/v1/usage?customer={}", d.customer),
    ] {
        let r = http
            .get(format!("http://{}{path}", d.collector.http))
            .bearer_auth(&d.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // The collector, as `curl` and promtool read it.
    let url = format!("http://{}/metrics", d.collector.http);
    let (ty, text) = scrape(&url, None).await;
    assert!(ty.starts_with("text/plain; version=0.0.4"), "{ty}");
    promtool_check("collector", &text);
    let accepted = sample(
        &text,
        "tally_reports_total{outcome=\"accepted\",reason=\"\"}",
    )
    .expect("accepted reports");
    assert!(accepted >= 1.0, "{text}");
    for (series, at_least) in [
        ("tally_submit_calls_total", 1.0),
        ("tally_submit_duration_seconds_count", 1.0),
        (
            "tally_store_transaction_duration_seconds_count{operation=\"ingest\"}",
            1.0,
        ),
        (
            "tally_query_duration_seconds_count{query=\"statement\"}",
            1.0,
        ),
        ("tally_query_duration_seconds_count{query=\"usage\"}", 1.0),
        ("tally_enrollments_total", 1.0),
        ("tally_http_responses_total{class=\"2xx\"}", 2.0),
    ] {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        assert!(v >= at_least, "{series} = {v}");
    }
    // Series with known labels are there from the start, at zero.
    for series in [
        "tally_reports_total{outcome=\"refused\",reason=\"bad_signature\"}",
        "tally_reports_total{outcome=\"quarantined\",reason=\"clock_skew\"}",
        "tally_webhook_deliveries_total{result=\"failed\"}",
        "tally_query_duration_seconds_count{query=\"evidence\"}",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}");
    }
    // Exactly one of each query was made.
    assert_eq!(
        sample(
            &text,
            "tally_query_duration_seconds_count{query=\"statement\"}"
        ),
        Some(1.0)
    );
    // Prometheus asks for OpenMetrics and gets it.
    let (ty, om) = scrape(
        &url,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(ty.starts_with("application/openmetrics-text"), "{ty}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE tally_reports counter\n"), "{om}");
    assert!(
        om.contains("# UNIT tally_submit_duration_seconds seconds\n"),
        "{om}"
    );

    // The agent: every event recorded, the outbox empty, a successful delivery.
    let agent_url = format!("{}/metrics", agent.url());
    let (_, text) = scrape(&agent_url, None).await;
    promtool_check("agent", &text);
    assert_eq!(
        sample(&text, "tally_agent_events_recorded_total"),
        Some(5.0)
    );
    assert_eq!(sample(&text, "tally_agent_outbox_reports"), Some(0.0));
    assert_eq!(
        sample(&text, "tally_agent_outbox_oldest_age_seconds"),
        Some(0.0)
    );
    let ok = sample(&text, "tally_agent_delivery_attempts_total{result=\"ok\"}")
        .expect("successful deliveries");
    assert!(ok >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "tally_agent_delivery_attempts_total{result=\"failed\"}"
        ),
        Some(0.0)
    );
    let delivered = sample(&text, "tally_agent_reports_delivered_total").unwrap();
    assert!(delivered >= 1.0, "{text}");

    // The collector gone: the next reports wait in the outbox and the attempts fail.
    d.collector.kill9();
    http.post(format!("{}/v1/events", agent.url()))
        .json(&serde_json::json!({"metric": "api.convert"}))
        .send()
        .await
        .unwrap();
    http.post(format!("{}/v1/flush", agent.url()))
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = scrape(&agent_url, None).await;
        let waiting = sample(&text, "tally_agent_outbox_reports").unwrap_or(0.0);
        let failed = sample(
            &text,
            "tally_agent_delivery_attempts_total{result=\"failed\"}",
        )
        .unwrap_or(0.0);
        if waiting >= 1.0 && failed >= 1.0 {
            assert_eq!(
                sample(&text, "tally_agent_events_recorded_total"),
                Some(6.0)
            );
            promtool_check("agent", &text);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no waiting report and failed attempt:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_alerting_rules_check_and_pass_their_unit_tests() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for args in [
        ["check", "rules", "prometheus-rules.yml"],
        ["test", "rules", "prometheus-rules.test.yml"],
    ] {
        let out = Command::new(promtool())
            .args(args)
            .current_dir(&deploy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
