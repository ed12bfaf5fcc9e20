//! A Submit the collector cannot finish in time is answered `DEADLINE_EXCEEDED` (the server
//! ran out of time: retry), not `CANCELLED` (which reads as "the caller gave up"). The store
//! is held up for real: another connection holds SQLite's write lock on the collector's
//! database file, so the writer waits (up to its busy timeout) past the call deadline.
//! When the lock goes, the agent's retry of the same report is stored once.

use std::time::Duration;
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_tests::{InProcessCollector, receipts};

#[tokio::test(flavor = "multi_thread")]
async fn a_submit_past_the_call_deadline_is_deadline_exceeded_and_the_retry_counts_once() {
    let c = InProcessCollector::start_with(|col| {
        col.grpc_call_deadline = Duration::from_secs(1);
    })
    .await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c.issue_license(&customer, &["api.convert"]).await;
    let mut agent = c.enroll(&license, &token).await;
    let (_, signed) = agent.next(&[("api.convert", 7)]);

    let db = c.dir.path().join("data").join("collector.db");
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let err = c
        .client()
        .await
        .submit(pb::SubmitRequest {
            reports: vec![signed.clone()],
        })
        .await
        .expect_err("the store is locked for longer than the call deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("retry"), "{err}");

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // The first attempt may have been stored after its deadline (the writer got the lock
    // once it was released): the retry is then a DUPLICATE. Either way it counts once.
    let resp = c
        .client()
        .await
        .submit(pb::SubmitRequest {
            reports: vec![signed],
        })
        .await
        .expect("the retry goes through")
        .into_inner();
    let body = &receipts(resp, &c.collector.ingestor.collector_key())[0];
    assert!(
        matches!(body.outcome, Outcome::Accepted | Outcome::Duplicate),
        "{body:?}"
    );
    let totals = tally_tests::brute_force_totals(c.store().as_ref()).await;
    assert_eq!(totals.values().sum::<u64>(), 7, "{totals:?}");
    c.stop().await;
}
