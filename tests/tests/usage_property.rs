//! Usage queries equal a brute-force sum over the stored accepted reports, for randomly
//! generated data, every granularity, JSON and CSV, with and without filters.

use chrono::{DateTime, Duration};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use tally_collector::calendar::{day_of, hour_of, month_of};
use tally_collector::store::{Inspect, RegistryStore};
use tally_proto::pb;
use tally_proto::report::Report;
use tally_tests::InProcessCollector;

const METRICS: [&str; 3] = ["api.convert", "api.render", "pages.out"];

#[derive(Debug, Clone)]
struct Plan {
    /// (agent index, window length in minutes, gap before in minutes, quantities per metric)
    reports: Vec<(usize, i64, i64, [u64; 3])>,
}

fn plan() -> impl Strategy<Value = Plan> {
    proptest::collection::vec(
        (
            0usize..4,
            1i64..=180,
            0i64..=600,
            [0u64..50, 0u64..1_000_000, 0u64..3],
        ),
        1..60,
    )
    .prop_map(|reports| Plan { reports })
}

async fn check(plan: Plan) -> Result<(), TestCaseError> {
    let c = InProcessCollector::start().await;
    let cust = [c.add_customer("A").await, c.add_customer("B").await];
    let mut agents = Vec::new();
    for i in 0..4 {
        let (l, t) = c.issue_license(&cust[i % 2], &METRICS).await;
        let mut a = c.enroll(&l, &t).await;
        // Start ~32 days back so windows cross day and month boundaries.
        let start = c.now() - Duration::days(32);
        a.cursor = DateTime::from_timestamp(start.timestamp() - start.timestamp() % 60, 0).unwrap();
        agents.push(a);
    }
    let mut batch = Vec::new();
    for (ai, len, gap, qs) in &plan.reports {
        let a = &mut agents[*ai];
        a.cursor += Duration::minutes(*gap);
        a.window = Duration::minutes(*len);
        if a.cursor + a.window > c.now() {
            continue;
        }
        let counters: Vec<(&str, u64)> = METRICS
            .iter()
            .zip(qs)
            .filter(|(_, q)| **q > 0)
            .map(|(m, q)| (*m, *q))
            .collect();
        batch.push(a.next(&counters).1);
    }
    c.client()
        .await
        .submit(pb::SubmitRequest { reports: batch })
        .await
        .unwrap();

    // Brute force: decode every stored accepted report.
    let store = c.store();
    let licenses = store.list_licenses(None).await.unwrap();
    let customer_of: BTreeMap<String, String> = licenses
        .iter()
        .map(|l| (l.license_id.clone(), l.customer_id.clone()))
        .collect();
    let reports: Vec<Report> = store
        .stored_reports()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.status == tally_collector::rules::ReportStatus::Accepted)
        .map(|r| Report::decode(&r.bytes).unwrap())
        .collect();
    for (g, period) in [
        ("hour", hour_of as fn(i64) -> i64),
        ("day", day_of),
        ("month", month_of),
    ] {
        for filter in [
            String::new(),
            format!("&customer={}", cust[0]),
            "&metric=api.render".to_string(),
        ] {
            let mut expected: BTreeMap<(String, String, String, i64), u64> = BTreeMap::new();
            for r in &reports {
                let customer = &customer_of[&r.license_id];
                for cn in &r.counters {
                    if filter.contains("customer=") && *customer != cust[0]
                        || filter.contains("metric=") && cn.metric != "api.render"
                    {
                        continue;
                    }
                    *expected
                        .entry((
                            customer.clone(),
                            r.license_id.clone(),
                            cn.metric.clone(),
                            period(r.window_start.timestamp()),
                        ))
                        .or_default() += cn.quantity;
                }
            }
            let url = c.http_url(&format!("/v1/usage?granularity={g}{filter}"));
            let http = reqwest::Client::new();
            let v: serde_json::Value = http
                .get(&url)
                .bearer_auth(&c.admin_token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let got: BTreeMap<(String, String, String, i64), u64> = v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let p =
                        chrono::DateTime::parse_from_rfc3339(r["period_start"].as_str().unwrap())
                            .unwrap()
                            .timestamp();
                    (
                        (
                            r["customer"].as_str().unwrap().into(),
                            r["license"].as_str().unwrap().into(),
                            r["metric"].as_str().unwrap().into(),
                            p,
                        ),
                        r["quantity"].as_u64().unwrap(),
                    )
                })
                .collect();
            prop_assert_eq!(&got, &expected, "json {} {}", g, filter);

            let csv = http
                .get(format!("{url}&format=csv"))
                .bearer_auth(&c.admin_token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let mut lines = csv.lines();
            prop_assert_eq!(
                lines.next(),
                Some("customer,license,metric,period_start,quantity")
            );
            let got_csv: BTreeMap<(String, String, String, i64), u64> = lines
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    let p = chrono::DateTime::parse_from_rfc3339(f[3])
                        .unwrap()
                        .timestamp();
                    (
                        (f[0].into(), f[1].into(), f[2].into(), p),
                        f[4].parse().unwrap(),
                    )
                })
                .collect();
            prop_assert_eq!(&got_csv, &expected, "csv {} {}", g, filter);
        }
    }
    c.stop().await;
    Ok(())
}

#[test]
fn usage_equals_brute_force_sum() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    runner.run(&plan(), |p| rt.block_on(check(p))).unwrap();
}
