//! Bad input on the agent's recording paths gets a clear error and counts nothing.

use serde_json::json;
use tally_proto::pb;
use tally_proto::pb::recorder_client::RecorderClient;
use tally_tests::{AgentProcess, Deployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_events_are_refused_and_count_nothing() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", agent.url());
    let big = "x".repeat(2 * 1024 * 1024);
    let cases: Vec<(String, &str)> = vec![
        (
            json!({"metric": "api.unlicensed"}).to_string(),
            "not licensed",
        ),
        (json!({"metric": "Api-Convert"}).to_string(), "not valid"),
        (
            json!({"metric": "api.convert", "quantity": 0}).to_string(),
            "at least 1",
        ),
        (
            json!({"metric": "api.convert", "quantity": 1_000_000_000_000u64}).to_string(),
            "absurd",
        ),
        (
            json!({"metric": "api.convert", "quantity": -1}).to_string(),
            "positive integer",
        ),
        (
            json!({"metric": "api.convert", "quantity": 1.5}).to_string(),
            "positive integer",
        ),
        (
            json!({"metric": "api.convert", "document": "secret"}).to_string(),
            "unknown field",
        ),
        (
            json!({"metric": "api.convert", "idempotency_key": ""}).to_string(),
            "idempotency_key",
        ),
        (
            json!({"metric": "api.convert", "idempotency_key": "k".repeat(200)}).to_string(),
            "idempotency_key",
        ),
        (json!({"metric": 5}).to_string(), "metric"),
        (json!({"events": "api.convert"}).to_string(), "array"),
        (json!({"events": []}).to_string(), "no events"),
        (
            json!({"events": [{"metric": "api.convert"}, {"metric": "api.nope"}]}).to_string(),
            "events[1]",
        ),
        (
            json!({"events": [{"metric": "api.convert"}], "extra": 1}).to_string(),
            "only the field",
        ),
        ("{\"metric\": \"api.convert\"".to_string(), "not valid JSON"),
        ("[1, 2, 3]".to_string(), "JSON object"),
        ("\u{0}\u{1}binary".to_string(), "not valid JSON"),
        // A repeated key is malformed: parsers disagree on which one wins.
        (
            r#"{"metric": "api.render", "metric": "api.convert"}"#.to_string(),
            r#"duplicate key "metric""#,
        ),
        (
            r#"{"events": [{"metric": "api.convert", "quantity": 1, "quantity": 9}]}"#.to_string(),
            r#"duplicate key "quantity""#,
        ),
        (
            r#"{"events": [], "events": [{"metric": "api.convert"}]}"#.to_string(),
            r#"duplicate key "events""#,
        ),
    ];
    for (body, needle) in &cases {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let r = http
        .post(&url)
        .body(format!(
            "{{\"metric\": \"api.convert\", \"idempotency_key\": \"{big}\"}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413, "oversized bodies are cut off");
    let v: serde_json::Value = r.json().await.expect("the 413 is a JSON error too");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{v}"
    );

    // gRPC: the same rules.
    let mut grpc = RecorderClient::connect(agent.url()).await.unwrap();
    for ev in [
        pb::Event {
            metric: "api.unlicensed".into(),
            quantity: 1,
            idempotency_key: String::new(),
        },
        pb::Event {
            metric: "api.convert".into(),
            quantity: u64::MAX,
            idempotency_key: String::new(),
        },
    ] {
        let err = grpc
            .record(pb::RecordRequest { events: vec![ev] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }

    let s = agent.status().await;
    assert!(
        s["open_window"].as_array().unwrap().is_empty(),
        "nothing may be counted: {s}"
    );
    agent.drain(30).await;
    assert!(
        d.totals().await.is_empty(),
        "nothing may reach the collector"
    );
    // A valid event still works afterwards.
    assert!(
        http.post(&url)
            .json(&json!({"metric": "api.convert"}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    agent.drain(30).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&1));
}

/// The batching client gathers concurrent calls into one RPC; an invalid event in a batch
/// fails only its own caller, and every valid event around it is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batching_client_isolates_a_bad_event_from_its_batch() {
    use tally_agent::client::{BatchingClient, ClientError};
    let d = Deployment::new(&["api.convert"], Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let client = BatchingClient::connect(&agent.url()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            // Every 50th caller sends an unlicensed metric, the others a valid one.
            let metric = if i % 50 == 7 {
                "api.unlicensed"
            } else {
                "api.convert"
            };
            (i, c.record(metric, 1 + i % 3, None).await)
        }));
    }
    let mut counted = 0u64;
    let mut rejected = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 50 == 7 {
            match r {
                Err(ClientError::Rejected(m)) => {
                    assert!(m.contains("not licensed"), "{m}");
                    rejected += 1;
                }
                other => panic!("caller {i}: expected a rejection, got {other:?}"),
            }
        } else {
            r.unwrap_or_else(|e| panic!("caller {i}: {e}"));
            counted += 1 + i % 3;
        }
    }
    assert_eq!(rejected, 8);
    agent.drain(30).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&counted));
    assert_eq!(d.totals().await.len(), 1, "nothing else may be counted");
}
