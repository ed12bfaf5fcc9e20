//! Usage only: the `UsageReport` descriptor has exactly the contract's
//! fields, and a product processing a document with a random canary string never makes
//! the canary leave the agent — checked on every byte through a recording TCP proxy between
//! agent and collector and in the collector's raw report store.

use prost::Message;
use std::sync::{Arc, Mutex};
use tally_tests::{AgentProcess, Deployment, agent_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn usage_report_has_exactly_the_contract_fields() {
    let fds = prost_types::FileDescriptorSet::decode(tally_proto::pb::FILE_DESCRIPTOR_SET).unwrap();
    let file = fds
        .file
        .iter()
        .find(|f| f.name() == "tally/v1/report.proto")
        .unwrap();
    let fields = |msg: &str| -> Vec<(String, i32)> {
        let m = file.message_type.iter().find(|m| m.name() == msg).unwrap();
        let mut v: Vec<(String, i32)> = m
            .field
            .iter()
            .map(|f| (f.name().to_string(), f.r#type() as i32))
            .collect();
        v.sort();
        v
    };
    use prost_types::field_descriptor_proto::Type;
    let mut expected = vec![
        ("license_id".to_string(), Type::String as i32),
        ("agent_key".into(), Type::Bytes as i32),
        ("seq".into(), Type::Uint64 as i32),
        ("prev_digest".into(), Type::Bytes as i32),
        ("window_start".into(), Type::Message as i32),
        ("window_end".into(), Type::Message as i32),
        ("counters".into(), Type::Message as i32),
        ("created_at".into(), Type::Message as i32),
        ("agent_version".into(), Type::String as i32),
    ];
    expected.sort();
    assert_eq!(fields("UsageReport"), expected);
    let mut counter = vec![
        ("metric".to_string(), Type::String as i32),
        ("quantity".into(), Type::Uint64 as i32),
    ];
    counter.sort();
    assert_eq!(fields("Counter"), counter);
    let mut signed = vec![
        ("report".to_string(), Type::Bytes as i32),
        ("signature".into(), Type::Bytes as i32),
    ];
    signed.sort();
    assert_eq!(fields("SignedReport"), signed);
}

/// A TCP proxy on loopback that records every byte in both directions.
async fn recording_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let (s1, s2) = (s.clone(), s.clone());
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        s1.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = wo.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = ro.read(&mut buf).await {
                        if n == 0 || wi.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        s2.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = wi.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, seen)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_in_the_document_never_leaves_the_agent() {
    let d = Deployment::new(&["docs.converted", "docs.words"], None);
    let (proxy, seen) = recording_proxy(d.collector.grpc).await;
    let via = format!("http://{proxy}");
    agent_json(
        &d.adata,
        &[
            "init",
            "--license",
            &d.license_file,
            "--token",
            &d.token,
            "--collector",
            &via,
        ],
    );
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);

    // The "product": converts documents that contain a random canary, and records usage
    // — even (carelessly) using document text as the idempotency key.
    let canary = format!(
        "CANARY-{}",
        hex::encode(tally_proto::keys::generate().verifying_key().to_bytes())
    );
    let http = reqwest::Client::new();
    for i in 0..10 {
        let document = format!("Quarterly report {i}. Confidential: {canary}. The end.");
        let words = document.split_whitespace().count() as u64;
        let body = serde_json::json!({"events": [
            {"metric": "docs.converted", "quantity": 1, "idempotency_key": format!("{canary}-{i}")},
            {"metric": "docs.words", "quantity": words},
        ]});
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
    // A caller that tries to smuggle the document in an extra field is refused.
    let smuggle = serde_json::json!({"metric": "docs.converted", "document": canary});
    assert_eq!(
        http.post(format!("{}/v1/events", agent.url()))
            .json(&smuggle)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    agent.drain(60).await;
    assert_eq!(d.totals().await.get("docs.converted"), Some(&10));

    let wire = seen.lock().unwrap().clone();
    assert!(
        wire.len() > 1000,
        "the proxy saw the traffic ({} bytes)",
        wire.len()
    );
    assert!(
        contains(&wire, b"docs.converted"),
        "the proxy must see the reports in clear"
    );
    assert!(
        !contains(&wire, canary.as_bytes()),
        "the canary crossed the wire"
    );
    assert!(
        !contains(&wire, b"CANARY-"),
        "part of the canary crossed the wire"
    );
    // The collector's raw report store.
    let db = rusqlite::Connection::open(d.cdata.join("collector.db")).unwrap();
    let mut st = db.prepare("SELECT bytes FROM reports").unwrap();
    let rows: Vec<Vec<u8>> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty());
    for r in rows {
        assert!(!contains(&r, b"CANARY-"));
    }
    let file = std::fs::read(d.cdata.join("collector.db")).unwrap();
    assert!(!contains(&file, b"CANARY-"));
}
