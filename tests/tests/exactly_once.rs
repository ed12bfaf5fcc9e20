//! Exactly once under concurrency: the same 200 reports submitted three times at once on
//! three connections count once; every repeat is answered DUPLICATE.

use tally_collector::store::{BillingStore, Inspect, UsageFilter};
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_tests::{InProcessCollector, brute_force_totals, receipts};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_batch_three_times_concurrently_counts_once() {
    let c = InProcessCollector::start().await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c
        .issue_license(&customer, &["api.convert", "api.render", "pages.out"])
        .await;
    let mut agents = Vec::new();
    for _ in 0..4 {
        agents.push(c.enroll(&license, &token).await);
    }
    let mut batch = Vec::new();
    let mut expected: u64 = 0;
    for i in 0..200u64 {
        let q = 1 + i % 7;
        expected += q + 2 * q;
        let a = &mut agents[(i % 4) as usize];
        batch.push(a.next(&[("api.convert", q), ("api.render", 2 * q)]).1);
    }
    let key = c.collector.ingestor.collector_key();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut client = c.client().await; // a separate connection each
        let reports = batch.clone();
        tasks.push(tokio::spawn(async move {
            client
                .submit(pb::SubmitRequest { reports })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut outcomes = std::collections::HashMap::new();
    for t in tasks {
        for r in receipts(t.await.unwrap(), &key) {
            *outcomes.entry(r.outcome).or_insert(0) += 1;
        }
    }
    assert_eq!(outcomes.get(&Outcome::Accepted), Some(&200), "{outcomes:?}");
    assert_eq!(
        outcomes.get(&Outcome::Duplicate),
        Some(&400),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");

    let store = c.store();
    let total: u64 = store
        .hourly_usage(UsageFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.quantity)
        .sum();
    assert_eq!(total, expected);
    let brute: u64 = brute_force_totals(store.as_ref()).await.values().sum();
    assert_eq!(brute, expected);
    assert_eq!(store.stored_reports().await.unwrap().len(), 200);
}
