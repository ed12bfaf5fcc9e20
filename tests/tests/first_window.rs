//! A new customer's first window is billed. Licenses issued without `--not-before` start
//! "now", in the middle of an aligned window; the agent's first window must not reach back
//! before that instant, or the collector (rightly) answers `license_inactive` and the
//! customer's first hour goes unbilled. Real processes, the default 1 h interval (no
//! `--interval`), as a new vendor and customer would run them.

use serde_json::{Value, json};
use std::path::Path;
use tally_tests::{AgentProcess, Deployment, agent_json, collector_json};

/// Records `n` × api.convert through the running agent's HTTP API.
async fn record(agent: &AgentProcess, n: u64) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", agent.url()))
        .json(&json!({"metric": "api.convert", "quantity": n}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// The agent's own view of every report it sent: (state, reason) per seq.
fn outcomes(adata: &Path) -> Vec<(String, String)> {
    agent_json(adata, &["reports", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn init_agent(adata: &Path, license_file: &str, token: &str, collector: &str) {
    agent_json(
        adata,
        &[
            "init",
            "--license",
            license_file,
            "--token",
            token,
            "--collector",
            collector,
        ],
    );
}

/// Usage per license from the billing API (month granularity).
async fn usage_by_license(d: &Deployment) -> Vec<(String, u64)> {
    let v: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/usage?granularity=month",
            d.collector.http
        ))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rows: Vec<(String, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["license"].as_str().unwrap().to_string(),
                r["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_window_after_enrolling_mid_window_is_accepted_and_billed() {
    // The license is issued now (not_before = now), the agent enrolls right after.
    let d = Deployment::new(&["api.convert"], Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0"]);
    record(&agent, 5).await;
    let status = agent.drain(60).await;
    assert_eq!(
        outcomes(&d.adata),
        vec![("delivered".to_string(), String::new())],
        "the first report must be accepted; agent status: {status}"
    );
    let show = agent_json(&d.adata, &["reports", "show", "1"]);
    assert_eq!(show["delivery"]["receipt"]["outcome"], "accepted", "{show}");
    assert_eq!(usage_by_license(&d).await, vec![(d.license.clone(), 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolled_on_a_renewed_license_is_billed_from_its_first_window() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let collector = format!("http://{}", d.collector.grpc);
    let first = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0"]);
    record(&first, 2).await;
    first.drain(60).await;
    drop(first);
    // Renewal: a new license for the same customer (not_before = now, mid-window), the old
    // one revoked, and the site's agent enrolled again on the new one. An agent key belongs
    // to one license, so the re-enrolled agent is a new data directory with a new key.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let renewed = collector_json(
        &d.cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &d.customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-06-01",
            "--endpoint",
            &collector,
        ],
    );
    let renewed_id = renewed["license_id"].as_str().unwrap().to_string();
    collector_json(&d.cdata, &["licenses", "revoke", &d.license]);
    let adata2 = d.tmp.path().join("agent-renewed");
    init_agent(
        &adata2,
        renewed["file"].as_str().unwrap(),
        renewed["enrollment_token"].as_str().unwrap(),
        &collector,
    );
    let second = AgentProcess::spawn(&adata2, &["--listen", "127.0.0.1:0"]);
    record(&second, 7).await;
    let status = second.drain(60).await;
    assert_eq!(
        outcomes(&adata2),
        vec![("delivered".to_string(), String::new())],
        "the renewed license's first report must be accepted; agent status: {status}"
    );
    let mut expected = vec![(d.license.clone(), 2), (renewed_id, 7)];
    expected.sort();
    assert_eq!(usage_by_license(&d).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_before_a_license_starts_is_still_license_inactive() {
    // A license that starts in an hour: the agent may enroll early, but what it records
    // before not_before is outside the license and must not be billed as inside it.
    let d = Deployment::new(&["api.convert"], None);
    let collector = format!("http://{}", d.collector.grpc);
    let nb = tally_proto::time::rfc3339(chrono::Utc::now() + chrono::Duration::hours(1));
    let future = collector_json(
        &d.cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &d.customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-06-01",
            "--not-before",
            &nb,
            "--endpoint",
            &collector,
        ],
    );
    init_agent(
        &d.adata,
        future["file"].as_str().unwrap(),
        future["enrollment_token"].as_str().unwrap(),
        &collector,
    );
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0"]);
    record(&agent, 3).await;
    agent.drain(60).await;
    assert_eq!(
        outcomes(&d.adata),
        vec![("quarantined".to_string(), "license_inactive".to_string())]
    );
    assert_eq!(usage_by_license(&d).await, vec![]);
}
