//! One flooding agent is throttled with RESOURCE_EXHAUSTED (nothing stored for the
//! throttled calls) while another agent's reports keep being accepted. The rate is so low
//! (0.01 reports/s) that refill during the test is negligible: the flooding agent gets
//! exactly its burst of 500, whatever the machine's speed. The limiter's decisions over
//! time (refill, cap, all-or-nothing) are table-tested with injected instants in
//! `collector/src/ratelimit.rs`.

use tally_collector::store::Inspect;
use tally_proto::pb;
use tally_proto::pb::ingest_client::IngestClient;
use tally_proto::receipt::Outcome;
use tally_proto::report::Report;
use tally_tests::{InProcessCollector, TestAgent, receipts};
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_agent_is_throttled_others_are_not() {
    // 0.01 reports/s: burst max(2 × 0.01, 500) = 500, and 100 more tokens would take
    // 10 000 s to refill.
    let c = InProcessCollector::start_configured(Some(0.01), |_| {}).await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c.issue_license(&customer, &["api.convert"]).await;
    let mut flood = c.enroll(&license, &token).await;
    let mut calm = c.enroll(&license, &token).await;
    let chain: Vec<pb::SignedReport> = (0..600)
        .map(|_| flood.next(&[("api.convert", 1)]).1)
        .collect();
    let key = c.collector.ingestor.collector_key();
    let mut flooder = c.client().await;
    let mut client = c.client().await;
    let mut calm_sent = 0u64;

    // The flooding agent's chain in Submits of 100, in order, the calm agent in between.
    for (i, batch) in chain.chunks(100).enumerate() {
        let res = flooder
            .submit(pb::SubmitRequest {
                reports: batch.to_vec(),
            })
            .await;
        if i < 5 {
            let resp = res.unwrap_or_else(|s| panic!("Submit {i} within the burst: {s}"));
            let r = receipts(resp.into_inner(), &key);
            assert_eq!(r.len(), 100);
            assert!(
                r.iter().all(|r| r.outcome == Outcome::Accepted),
                "Submit {i}"
            );
        } else {
            assert_throttled(res, "the 6th Submit of 100 (past the burst of 500)");
        }
        calm_submit(&mut client, &mut calm, &key).await;
        calm_sent += 1;
    }
    // Still throttled on retry, and the calm agent still is not.
    let res = flooder
        .submit(pb::SubmitRequest {
            reports: chain[500..].to_vec(),
        })
        .await;
    assert_throttled(res, "the 6th Submit again");
    for _ in 0..10 {
        calm_submit(&mut client, &mut calm, &key).await;
        calm_sent += 1;
    }

    // The throttled calls stored nothing: exactly the flooding agent's seq 1..=500 and the
    // calm agent's reports.
    let stored = c.store().stored_reports().await.unwrap();
    let mut flood_seqs: Vec<u64> = stored
        .iter()
        .map(|r| Report::decode(&r.bytes).unwrap())
        .filter(|r| r.agent_key == flood.key_bytes())
        .map(|r| r.seq)
        .collect();
    flood_seqs.sort();
    assert_eq!(flood_seqs, (1..=500).collect::<Vec<u64>>());
    assert_eq!(stored.len() as u64, 500 + calm_sent);
}

/// The calm agent submits its next report alone; it is always accepted.
async fn calm_submit(
    client: &mut IngestClient<Channel>,
    calm: &mut TestAgent,
    key: &ed25519_dalek::VerifyingKey,
) {
    let (_, s) = calm.next(&[("api.convert", 1)]);
    let resp = client
        .submit(pb::SubmitRequest { reports: vec![s] })
        .await
        .expect("the calm agent is never throttled");
    assert_eq!(
        receipts(resp.into_inner(), key)[0].outcome,
        Outcome::Accepted
    );
}

/// The call was answered RESOURCE_EXHAUSTED.
fn assert_throttled(res: Result<tonic::Response<pb::SubmitResponse>, tonic::Status>, what: &str) {
    match res {
        Ok(r) => panic!(
            "{what} was accepted ({} receipts), not throttled",
            r.get_ref().receipts.len()
        ),
        Err(s) => assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{what}: {s}"),
    }
}
