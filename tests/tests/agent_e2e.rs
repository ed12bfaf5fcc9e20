//! End to end with real `tally-collector` and `tally-agent` processes (interval 1 s):
//! concurrent HTTP, gRPC-stream and Rust-client callers; agent SIGKILLs with idempotent
//! retries; totals at the collector equal what was acknowledged, exactly.

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tally_agent::client::BatchingClient;
use tally_proto::pb;
use tally_proto::pb::recorder_client::RecorderClient;
use tally_tests::{AgentProcess, Deployment};

const METRICS: [&str; 3] = ["api.convert", "api.render", "pages.out"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_from_three_kinds_of_callers_count_exactly() {
    let d = Deployment::new(&METRICS, Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let url = agent.url();
    let acked: Arc<[AtomicU64; 3]> = Arc::new(Default::default());

    // HTTP: 2,000 single events and 1,000 in batches of 50.
    let http_task = {
        let (url, acked) = (url.clone(), acked.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            for i in 0..2000u64 {
                let m = (i % 3) as usize;
                let r = c
                    .post(format!("{url}/v1/events"))
                    .json(&json!({"metric": METRICS[m], "quantity": 1 + i % 4}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                acked[m].fetch_add(1 + i % 4, Ordering::SeqCst);
            }
            for b in 0..20u64 {
                let events: Vec<_> = (0..50u64)
                    .map(|j| json!({"metric": METRICS[((b + j) % 3) as usize], "quantity": 2}))
                    .collect();
                let r = c
                    .post(format!("{url}/v1/events"))
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                for j in 0..50u64 {
                    acked[((b + j) % 3) as usize].fetch_add(2, Ordering::SeqCst);
                }
            }
        })
    };
    // gRPC RecordStream: 4,000 events in 40 batches.
    let grpc_task = {
        let (url, acked) = (url.clone(), acked.clone());
        tokio::spawn(async move {
            let mut c = RecorderClient::connect(url).await.unwrap();
            let mut local = [0u64; 3];
            let batches: Vec<pb::RecordRequest> = (0..40u64)
                .map(|b| pb::RecordRequest {
                    events: (0..100u64)
                        .map(|j| {
                            let m = ((b * 7 + j) % 3) as usize;
                            local[m] += 3;
                            pb::Event {
                                metric: METRICS[m].into(),
                                quantity: 3,
                                idempotency_key: String::new(),
                            }
                        })
                        .collect(),
                })
                .collect();
            let r = c
                .record_stream(tokio_stream::iter(batches))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.recorded, 4000);
            for m in 0..3 {
                acked[m].fetch_add(local[m], Ordering::SeqCst);
            }
        })
    };
    // Batching Rust client: 3,000 events from 30 concurrent tasks.
    let client = BatchingClient::connect(&url).await.unwrap();
    let mut rust_tasks = Vec::new();
    for t in 0..30u64 {
        let (client, acked) = (client.clone(), acked.clone());
        rust_tasks.push(tokio::spawn(async move {
            for i in 0..100u64 {
                let m = ((t + i) % 3) as usize;
                client.record(METRICS[m], 1, None).await.unwrap();
                acked[m].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    http_task.await.unwrap();
    grpc_task.await.unwrap();
    for t in rust_tasks {
        t.await.unwrap();
    }
    let status = agent.drain(60).await;
    let expected: BTreeMap<String, u64> = METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| (m.to_string(), acked[i].load(Ordering::SeqCst)))
        .collect();
    assert_eq!(d.totals().await, expected, "agent status: {status}");
    assert!(
        status["reports"]["delivered"].as_u64().unwrap() >= 2,
        "{status}"
    );
    // The customer's view of the history verifies offline.
    let (code, out, err) = tally_tests::agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"), "{out}");
    // For a person, text; `--json` for scripts.
    let (code, out, err) = tally_tests::agent_cmd(&d.adata, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("agent key id ") && out.contains("reports: ") && out.contains("delivery: "),
        "{out}"
    );
    let (_, out, _) = tally_tests::agent_cmd(&d.adata, &["license"]);
    assert!(
        out.starts_with(&format!("license {}: active", d.license)),
        "{out}"
    );
    assert!(out.contains("  api.convert: used "), "{out}");
    let (code, out, err) = tally_tests::agent_cmd(&d.adata, &["record", "api.convert", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "recorded 1, already recorded 0 (committed)\n");
    let v = tally_tests::agent_json(&d.adata, &["status"]);
    assert!(v["key_id"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sigkilled_five_times_loses_and_doubles_nothing() {
    let d = Deployment::new(&METRICS, Some(""));
    let mut agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let listen = agent.listen.to_string();
    let url = agent.url();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let retries = Arc::new(AtomicU64::new(0));

    // Four callers, each event with its own idempotency key, retried until acknowledged.
    let mut callers = Vec::new();
    for c in 0..4u64 {
        let (url, acked, retries, done) =
            (url.clone(), acked.clone(), retries.clone(), done.clone());
        callers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            // Keep the load on until every kill has happened (and at least 300 events each).
            let mut i = 0u64;
            while i < 300 || !done.load(Ordering::SeqCst) {
                i += 1;
                let m = ((c + i) % 3) as usize;
                let q = 1 + (i % 5);
                let body = json!({"metric": METRICS[m], "quantity": q, "idempotency_key": format!("caller{c}-event{i}")});
                loop {
                    match http.post(format!("{url}/v1/events")).json(&body).send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().is_client_error() => panic!("rejected: {}", r.text().await.unwrap()),
                        _ => {
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked[m].fetch_add(q, Ordering::SeqCst);
            }
        }));
    }
    // Kill the agent five times during the load, restarting it on the same address.
    let killer = {
        let done = done.clone();
        let adata = d.adata.clone();
        tokio::spawn(async move {
            for k in 0..5u64 {
                tokio::time::sleep(Duration::from_millis(300 + 170 * k)).await;
                agent.kill9();
                agent = AgentProcess::spawn(&adata, &["--listen", &listen, "--interval", "1s"]);
            }
            done.store(true, Ordering::SeqCst);
            agent
        })
    };
    let agent = killer.await.unwrap();
    for c in callers {
        c.await.unwrap();
    }
    let status = agent.drain(60).await;
    let expected: BTreeMap<String, u64> = METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| (m.to_string(), acked[i].load(Ordering::SeqCst)))
        .collect();
    let retries = retries.load(Ordering::SeqCst);
    println!("retries during kills: {retries}");
    assert!(
        retries >= 5,
        "the kills did not hit the load ({retries} retries)"
    );
    assert_eq!(d.totals().await, expected, "agent status: {status}");
    let (code, _, err) = tally_tests::agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{err}");
}
