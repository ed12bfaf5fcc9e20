//! Delivery under failure: a collector outage (the backlog grows; the waits the agent chose
//! between attempts, shown in its live status as `delivery.backoff_ms`, follow the backoff
//! schedule 1, 2, 4, 8 s… with jitter — backoff, not a hot loop, whatever the machine's
//! speed; then the backlog drains in sequence order); the offline path (export → import →
//! import-receipts) counting once alongside online delivery; and `reports verify` catching
//! one flipped byte.

use std::time::Duration;
use tally_tests::{
    AgentProcess, CollectorProcess, Deployment, agent_cmd, agent_json, collector_json,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_outage_backs_off_then_drains_in_order() {
    let mut d = Deployment::new(&["api.convert"], Some(""));
    let grpc = d.collector.grpc.to_string();
    let http = d.collector.http.to_string();
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let post = |q: u64| {
        let url = agent.url();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/events"))
                .json(&serde_json::json!({"metric": "api.convert", "quantity": q}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    post(1).await;
    agent.drain(30).await;

    // Outage: stop the collector and keep recording until the agent has chosen 4 waits in
    // a row (about 1 + 2 + 4 s after the first failure; 3 min is only the give-up).
    let outage = std::time::Instant::now();
    d.collector.kill9();
    let mut expected = 1;
    let give_up = std::time::Instant::now() + Duration::from_secs(180);
    let s = loop {
        post(2).await;
        expected += 2;
        let s = agent.status().await;
        if s["delivery"]["backoff_ms"].as_array().unwrap().len() >= 4 {
            break s;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no 4 consecutive backoff waits within 3 min of the outage: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let waits: Vec<u64> = s["delivery"]["backoff_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap())
        .collect();
    let backlog = s["reports"]["pending"].as_u64().unwrap_or(0);
    println!("waits chosen during the outage (ms): {waits:?}; backlog: {backlog}");
    // The k-th wait since the last success (k = 0, 1, 2…) is b = min(2^k, 300) s plus
    // jitter of less than b: in [b, 2b).
    for (k, &w) in waits.iter().enumerate() {
        let b = 1000 * 2u64.pow(k as u32).min(300);
        assert!(
            (b..2 * b).contains(&w),
            "wait {k} is {w} ms, not in [{b}, {}) ms: {waits:?}",
            2 * b
        );
    }
    // The agent really waited: all but the newest wait are over. (A lower bound only: a
    // slow machine makes the outage longer, never shorter.)
    let slept: u64 = waits[..waits.len() - 1].iter().sum();
    assert!(
        outage.elapsed() >= Duration::from_millis(slept),
        "waits {waits:?} recorded {:?} into the outage: the agent retried sooner",
        outage.elapsed()
    );
    assert!(
        s["delivery"]["failures"].as_u64().unwrap() >= waits.len() as u64,
        "{s}"
    );
    assert!(
        backlog > 0,
        "the backlog should grow during the outage: {s}"
    );
    assert!(
        s["delivery"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "a failing delivery shows its error: {s}"
    );
    let lic: serde_json::Value = reqwest::get(format!("{}/v1/license", agent.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        lic["state"], "grace",
        "unreachable collector, lease still valid: {lic}"
    );

    // Restart the collector on the same addresses: the backlog drains.
    d.collector = CollectorProcess::spawn_with_args(
        &d.cdata,
        &["--grpc-listen", &grpc, "--http-listen", &http],
    );
    agent.drain(120).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&expected));
    // Recovered: no stale error, and the last success is a time like every other.
    let s = agent.status().await;
    assert!(s["delivery"]["last_error"].is_null(), "{s}");
    assert!(
        s["delivery"]["last_success"]
            .as_str()
            .is_some_and(|t| tally_proto::time::parse_instant(t).is_ok()),
        "{s}"
    );
    // In sequence order: the collector never saw a gap.
    let anomalies: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/v1/anomalies"))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        anomalies["anomalies"].as_array().unwrap().is_empty(),
        "{anomalies}"
    );
    let lic: serde_json::Value = reqwest::get(format!("{}/v1/license", agent.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lic["state"], "active", "{lic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_export_import_counts_once_and_receipts_close_the_loop() {
    // Enrolled online, but run against an unreachable collector: nothing is delivered.
    let d = Deployment::new(&["api.convert"], Some(""));
    let mut agent = AgentProcess::spawn(
        &d.adata,
        &[
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--collector",
            "http://127.0.0.1:9",
        ],
    );
    let http = reqwest::Client::new();
    for i in 0..20u64 {
        let body = serde_json::json!({"metric": "api.convert", "quantity": i + 1});
        assert!(
            http.post(format!("{}/v1/events", agent.url()))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    http.post(format!("{}/v1/flush", agent.url()))
        .send()
        .await
        .unwrap();
    agent.kill9();
    let expected: u64 = (1..=20).sum();

    let bundle = d.tmp.path().join("reports.bundle");
    let receipts = d.tmp.path().join("receipts.bundle");
    let exported = agent_json(&d.adata, &["export", "--out", bundle.to_str().unwrap()]);
    let n = exported["reports"].as_u64().unwrap();
    assert!(n >= 1);
    let imported = collector_json(
        &d.cdata,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--receipts-out",
            receipts.to_str().unwrap(),
        ],
    );
    assert_eq!(
        imported["counts"]["accepted"].as_u64(),
        Some(n),
        "{imported}"
    );
    assert_eq!(d.totals().await.get("api.convert"), Some(&expected));
    // The same file again: all duplicates, still counted once.
    let again = collector_json(&d.cdata, &["import", bundle.to_str().unwrap()]);
    assert_eq!(again["counts"]["duplicate"].as_u64(), Some(n), "{again}");

    let stored = agent_json(&d.adata, &["import-receipts", receipts.to_str().unwrap()]);
    assert_eq!(stored["stored"].as_u64(), Some(n));
    let status = agent_json(&d.adata, &["status"]);
    assert_eq!(status["reports"]["delivered"].as_u64(), Some(n), "{status}");
    assert!(status["reports"]["pending"].is_null(), "{status}");

    // Now online too: everything delivered again over gRPC is a duplicate.
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let all = d.tmp.path().join("all.bundle");
    agent_json(
        &d.adata,
        &["export", "--since", "1", "--out", all.to_str().unwrap()],
    );
    let mut client = tally_tests::connect(d.collector.grpc).await;
    let b = tally_proto::bundle::read_reports(&std::fs::read(&all).unwrap()).unwrap();
    let resp = client
        .submit(tally_proto::pb::SubmitRequest { reports: b.reports })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.receipts.len() as u64, n);
    // Signed with the receipt key, named by its id.
    let ck = d.receipt_key;
    for r in &resp.receipts {
        assert_eq!(r.key_id, tally_proto::keys::key_id(&ck.to_bytes()));
        let body = tally_proto::receipt::ReceiptBody::verify(r, &ck).unwrap();
        assert_eq!(body.outcome, tally_proto::receipt::Outcome::Duplicate);
    }
    agent.drain(30).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&expected));
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_fails_clearly_after_one_flipped_byte() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let mut agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    for q in 1..=3u64 {
        let body = serde_json::json!({"metric": "api.convert", "quantity": q});
        reqwest::Client::new()
            .post(format!("{}/v1/events", agent.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    agent.drain(30).await;
    agent.kill9();
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"));
    let listed = agent_json(&d.adata, &["reports", "list"]);
    assert!(listed.as_array().unwrap().len() >= 3);
    let shown = agent_json(&d.adata, &["reports", "show", "2"]);
    assert_eq!(shown["seq"], 2);
    assert!(shown["prev_digest"].is_string());
    // Exactly the signed fields at the top level; delivery state apart.
    let mut keys: Vec<&str> = shown
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent_key",
            "agent_version",
            "counters",
            "created_at",
            "delivery",
            "license_id",
            "prev_digest",
            "seq",
            "window_end",
            "window_start"
        ]
    );
    assert_eq!(shown["delivery"]["state"], "delivered");

    // Flip one byte of the stored report seq 2.
    let db = rusqlite::Connection::open(d.adata.join("agent.db")).unwrap();
    let mut bytes: Vec<u8> = db
        .query_row("SELECT bytes FROM reports WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    db.execute("UPDATE reports SET bytes = ?1 WHERE seq = 2", [bytes])
        .unwrap();
    drop(db);
    let (code, _, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: 1 report does not verify; the first: report seq 2:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_over_between_collectors_and_shows_what_was_not_counted() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let real = format!("http://{}", d.collector.grpc);
    // The first endpoint is dead; the agent must fail over to the second.
    let agent = AgentProcess::spawn(
        &d.adata,
        &[
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--collector",
            "http://127.0.0.1:9",
            "--collector",
            &real,
        ],
    );
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", agent.url());
    assert!(
        http.post(&url)
            .json(&serde_json::json!({"metric": "api.convert", "quantity": 4}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let s = agent.drain(60).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&4), "{s}");
    let lic: serde_json::Value = reqwest::get(format!("{}/v1/license", agent.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lic["state"], "active", "{lic}");
    assert_eq!(lic["credits"][0]["used"], 4, "{lic}");
    // The same over gRPC.
    let mut rec = tally_proto::pb::recorder_client::RecorderClient::connect(agent.url())
        .await
        .unwrap();
    let st = rec
        .get_license_status(tally_proto::pb::GetLicenseStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (st.state.as_str(), st.license_id.as_str()),
        ("active", d.license.as_str())
    );
    assert!(st.lease_until.unwrap().seconds > chrono::Utc::now().timestamp());
    assert_eq!(st.credits[0].used, 4);

    // The vendor revokes the license: the next report is quarantined (final, visible in
    // status) and the license lapses.
    collector_json(&d.cdata, &["licenses", "revoke", &d.license]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        http.post(&url)
            .json(&serde_json::json!({"metric": "api.convert", "quantity": 5}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let s = agent.drain(60).await;
    let not_counted = s["not_counted"].as_array().unwrap();
    assert!(
        not_counted
            .iter()
            .any(|r| r["state"] == "quarantined" && r["reason"] == "license_inactive"),
        "{s}"
    );
    assert_eq!(s["license"]["state"], "lapsed", "{s}");
    assert_eq!(d.totals().await.get("api.convert"), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_enrollment_with_agents_add() {
    let d = Deployment::new(&["api.convert"], None);
    let init = agent_json(
        &d.adata,
        &["init", "--offline", "--license", &d.license_file],
    );
    assert_eq!(init["enrolled"], false);
    let key = init["agent_key"].as_str().unwrap();
    // Before the vendor adds the key, reports are refused as unknown_agent …
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", agent.url());
    assert!(
        http.post(&url)
            .json(&serde_json::json!({"metric": "api.convert", "quantity": 2}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // … and kept, not given up: waiting for enrollment (said in status), still exported.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let s = loop {
        let s = agent.status().await;
        if s["waiting_for_enrollment"].as_u64().unwrap_or(0) >= 1 {
            break s;
        }
        assert!(std::time::Instant::now() < give_up, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        s["not_counted"].as_array().unwrap().is_empty(),
        "unknown_agent is not final: {s}"
    );
    assert!(
        s["delivery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown_agent")),
        "{s}"
    );
    let bundle = d.tmp.path().join("waiting.bundle");
    let exported = agent_json(&d.adata, &["export", "--out", bundle.to_str().unwrap()]);
    assert!(exported["reports"].as_u64().unwrap() >= 1, "{exported}");
    // … after `agents add`, they count: the first ones too.
    collector_json(
        &d.cdata,
        &["agents", "add", "--license", &d.license, "--key", key],
    );
    assert!(
        http.post(&url)
            .json(&serde_json::json!({"metric": "api.convert", "quantity": 3}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let s = agent.drain(120).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&5), "{s}");
    assert_eq!(s["waiting_for_enrollment"], 0, "{s}");
}
