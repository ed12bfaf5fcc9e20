//! One flooding agent is throttled with RESOURCE_EXHAUSTED (nothing stored for the
//! throttled calls) while another agent's reports keep being accepted.

use std::time::{Duration, Instant};
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_tests::{InProcessCollector, receipts};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_agent_is_throttled_others_are_not() {
    // A low limit (200 reports/s, burst 500), so that even a slow machine floods past it.
    let c = InProcessCollector::start_configured(Some(200.0), |_| {}).await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c.issue_license(&customer, &["api.convert"]).await;
    let mut flood = c.enroll(&license, &token).await;
    let mut calm = c.enroll(&license, &token).await;
    let chain: Vec<pb::SignedReport> = (0..3000)
        .map(|_| flood.next(&[("api.convert", 1)]).1)
        .collect();
    let key = c.collector.ingestor.collector_key();

    let grpc = c.grpc;
    let flooder = tokio::spawn(async move {
        let mut client = tally_tests::connect(grpc).await;
        let (mut throttled, mut accepted) = (0u64, 0u64);
        let start = Instant::now();
        let mut batches = chain.chunks(100);
        let mut batch = batches.next();
        while let Some(b) = batch {
            if start.elapsed() > Duration::from_secs(4) {
                break;
            }
            match client
                .submit(pb::SubmitRequest {
                    reports: b.to_vec(),
                })
                .await
            {
                Ok(_) => {
                    accepted += b.len() as u64;
                    batch = batches.next();
                }
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s}");
                    throttled += 1;
                }
            }
        }
        (throttled, accepted)
    });
    let mut client = c.client().await;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (_, s) = calm.next(&[("api.convert", 1)]);
        let t = Instant::now();
        let resp = client
            .submit(pb::SubmitRequest { reports: vec![s] })
            .await
            .expect("the calm agent is never throttled");
        worst = worst.max(t.elapsed());
        assert_eq!(
            receipts(resp.into_inner(), &key)[0].outcome,
            Outcome::Accepted
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (throttled, accepted) = flooder.await.unwrap();
    println!(
        "flood: {throttled} throttled calls, {accepted} reports accepted; calm agent worst Submit {worst:?}"
    );
    assert!(throttled > 0, "the flood was never throttled");
    // Throttled calls stored nothing: the store holds exactly what was accepted.
    use tally_collector::store::Inspect;
    let stored = c.store().stored_reports().await.unwrap().len() as u64;
    assert_eq!(stored, accepted + 20);
}
