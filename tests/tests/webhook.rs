//! Usage alerts end to end: a real `tally-collector` process posts each threshold crossing
//! to a local HTTP receiver, signed with HMAC-SHA256. The receiver fails the first two
//! deliveries; the alert arrives after the retries with a valid signature, as exactly one
//! distinct id. Then a crossing is recorded while the receiver refuses everything, the
//! collector is SIGKILLed before it could deliver, and the restarted collector delivers
//! it: still exactly one distinct id per crossing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{Duration, Utc};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tally_proto::pb;
use tally_tests::{CollectorProcess, TestAgent, collector_json, connect};

const SECRET: &str = "a-webhook-secret-of-some-length";

#[derive(Default)]
struct Receiver {
    /// Deliveries still to refuse with a 503 (`u32::MAX`: all).
    refuse: u32,
    /// Every delivery: (accepted, idempotency key, signature header, body).
    seen: Vec<(bool, String, String, Vec<u8>)>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn hook(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    let accept = r.refuse == 0;
    if !accept && r.refuse != u32::MAX {
        r.refuse -= 1;
    }
    let h = |k: &str| {
        headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let entry = (
        accept,
        h("idempotency-key"),
        h("x-tally-signature"),
        body.to_vec(),
    );
    r.seen.push(entry);
    if accept {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The distinct ids the receiver accepted, each checked: a valid signature and a body
/// naming the same id.
fn accepted_ids(r: &Shared) -> BTreeSet<String> {
    let r = r.lock().unwrap();
    let mut ids = BTreeSet::new();
    for (accepted, key, sig, body) in &r.seen {
        assert_eq!(
            sig,
            &tally_collector::webhook::signature(SECRET.as_bytes(), body),
            "a delivery with a wrong signature"
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"].as_str(), Some(key.as_str()), "{v}");
        if *accepted {
            ids.insert(key.clone());
        }
    }
    ids
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn alerts(http: std::net::SocketAddr, token: &str) -> Vec<Value> {
    let v: Value = reqwest::Client::new()
        .get(format!("http://{http}/v1/alerts"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["alerts"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_delivered_signed_once_through_failures_and_a_sigkill() {
    let receiver: Shared = Arc::new(Mutex::new(Receiver {
        refuse: 2,
        ..Receiver::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let cdata = tmp.path().join("collector");
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_file = tmp.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let serve_args = [
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--webhook",
        &hook_url,
        "--webhook-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let mut collector = CollectorProcess::spawn_with_args(&cdata, &serve_args);
    let nb = tally_proto::time::rfc3339(Utc::now() - Duration::days(40));
    let license = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert=100",
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
            "--alert",
            "50%,100%",
        ],
    )["license_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut agent = TestAgent::new(&license);
    // Windows in the current month, an hour ago.
    agent.cursor = Utc::now() - Duration::hours(1);
    collector_json(
        &cdata,
        &[
            "agents",
            "add",
            "--license",
            &license,
            "--key",
            &hex::encode(agent.key_bytes()),
        ],
    );
    let submit = |grpc, reports: Vec<pb::SignedReport>| async move {
        let mut c = connect(grpc).await;
        c.submit(pb::SubmitRequest { reports }).await.unwrap();
    };

    // 30 + 30 of 100 crosses 50%: delivered after two refusals, once.
    let reports = vec![
        agent.next(&[("api.convert", 30)]).1,
        agent.next(&[("api.convert", 30)]).1,
    ];
    submit(collector.grpc, reports).await;
    wait_until("the 50% alert accepted", || {
        !accepted_ids(&receiver).is_empty()
    })
    .await;
    let ids = accepted_ids(&receiver);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let seen = receiver.lock().unwrap().seen.clone();
    assert!(
        seen.len() >= 3 && !seen[0].0 && !seen[1].0,
        "two refusals first"
    );
    let body: Value = serde_json::from_slice(&seen.last().unwrap().3).unwrap();
    assert_eq!(body["threshold_percent"], 50, "{body}");
    assert_eq!(body["used"], 60);
    assert_eq!(body["limit"], 100);
    assert_eq!(body["customer"], customer.as_str());
    assert_eq!(body["event"], "usage.threshold_crossed");
    let listed = alerts(collector.http, &admin).await;
    assert_eq!(listed.len(), 1, "{listed:?}");

    // The receiver refuses everything; 45 more crosses 100%; the collector dies before it
    // could deliver; after a restart the alert arrives, once.
    receiver.lock().unwrap().refuse = u32::MAX;
    submit(collector.grpc, vec![agent.next(&[("api.convert", 45)]).1]).await;
    let listed = alerts(collector.http, &admin).await;
    assert_eq!(
        listed.len(),
        2,
        "the crossing is recorded with the report: {listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|a| a["threshold_percent"] == 100 && a["delivered_at"].is_null())
    );
    collector.kill9();
    receiver.lock().unwrap().refuse = 0;
    let collector = CollectorProcess::spawn_with_args(&cdata, &serve_args);
    wait_until("the 100% alert accepted after the restart", || {
        accepted_ids(&receiver).len() == 2
    })
    .await;
    // Give any duplicate delivery a chance to show up: still two distinct ids.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(accepted_ids(&receiver).len(), 2);
    let listed = alerts(collector.http, &admin).await;
    assert!(
        listed.iter().all(|a| !a["delivered_at"].is_null()),
        "{listed:?}"
    );
}
