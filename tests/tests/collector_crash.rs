//! A collector process is SIGKILLed while several clients submit. After a restart every
//! report that got a receipt is stored, and resubmitting everything yields totals exactly
//! equal to the sum over all reports.

use std::collections::HashSet;
use std::time::Duration;
use tally_proto::Digest;
use tally_proto::pb;
use tally_proto::receipt::{Outcome, ReceiptBody};
use tally_tests::{CollectorProcess, TestAgent, collector_json, connect};

const CLIENTS: usize = 4;
const REPORTS_PER_CLIENT: usize = 150;
const BATCH: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipted_reports_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let init = collector_json(&data, &["init"]);
    let collector_key = tally_proto::signing::verifying_key(
        &hex::decode(init["collector_key"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let customer = collector_json(&data, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(chrono::Utc::now() - chrono::Duration::days(60));
    let lic = collector_json(
        &data,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--metric",
            "api.render",
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
        ],
    );
    let license = lic["license_id"].as_str().unwrap().to_string();

    // Agents enrolled offline (`agents add`), each with its full chain prepared up front.
    let mut plans: Vec<Vec<pb::SignedReport>> = Vec::new();
    let mut expected: u64 = 0;
    for i in 0..CLIENTS {
        let mut a = TestAgent::new(&license);
        collector_json(
            &data,
            &[
                "agents",
                "add",
                "--license",
                &license,
                "--key",
                &hex::encode(a.key_bytes()),
            ],
        );
        let mut v = Vec::new();
        for j in 0..REPORTS_PER_CLIENT {
            let q = (i * 1000 + j) as u64 % 13 + 1;
            expected += q * 2;
            v.push(a.next(&[("api.convert", q), ("api.render", q)]).1);
        }
        plans.push(v);
    }

    let mut proc = CollectorProcess::spawn(&data);
    let grpc = proc.grpc;
    // Each client submits its chain in batches and records what got a receipt.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for plan in plans.clone() {
        let key = collector_key;
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut receipted: Vec<Digest> = Vec::new();
            let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
            else {
                return receipted;
            };
            let mut client = pb::ingest_client::IngestClient::new(ch);
            for chunk in plan.chunks(BATCH) {
                match client
                    .submit(pb::SubmitRequest {
                        reports: chunk.to_vec(),
                    })
                    .await
                {
                    Ok(resp) => {
                        for r in resp.into_inner().receipts {
                            let body = ReceiptBody::verify(&r, &key).unwrap();
                            assert!(
                                matches!(body.outcome, Outcome::Accepted | Outcome::Duplicate),
                                "{body:?}"
                            );
                            receipted.push(body.report_digest);
                            progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Err(_) => break, // the collector died under us
                }
            }
            receipted
        }));
    }
    // Let the clients get a quarter of the way, then kill the collector mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while progress.load(std::sync::atomic::Ordering::SeqCst) < CLIENTS * REPORTS_PER_CLIENT / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "clients made no progress"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proc.kill9();
    let mut receipted = HashSet::new();
    for t in tasks {
        receipted.extend(t.await.unwrap());
    }
    let total: usize = plans.iter().map(Vec::len).sum();
    println!("receipted before SIGKILL: {} of {total}", receipted.len());
    assert!(
        !receipted.is_empty(),
        "the kill came before any receipt; the test proved nothing"
    );

    // Restart: every receipted report must be stored.
    let proc = CollectorProcess::spawn(&data);
    let db = rusqlite::Connection::open(data.join("collector.db")).unwrap();
    let stored: HashSet<Vec<u8>> = {
        let mut st = db.prepare("SELECT digest FROM reports").unwrap();
        st.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for d in &receipted {
        assert!(
            stored.contains(d.as_bytes().as_slice()),
            "receipted report {d} was lost"
        );
    }

    // Resubmit everything: totals equal the sum over all reports, exactly.
    let mut client = connect(proc.grpc).await;
    for plan in &plans {
        for chunk in plan.chunks(100) {
            let resp = client
                .submit(pb::SubmitRequest {
                    reports: chunk.to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            for r in resp.receipts {
                let body = ReceiptBody::verify(&r, &collector_key).unwrap();
                assert!(
                    matches!(body.outcome, Outcome::Accepted | Outcome::Duplicate),
                    "{body:?}"
                );
            }
        }
    }
    let sum: i64 = db
        .query_row("SELECT COALESCE(SUM(quantity), 0) FROM rollups", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(sum as u64, expected);
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM reports WHERE status = 'accepted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n as usize, total);
}
