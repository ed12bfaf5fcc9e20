//! Every reason code (docs/protocol.md §6.4), each from a real offending report submitted over
//! real gRPC to a collector with a real SQLite store. REFUSED stores nothing; QUARANTINED
//! stores but counts nothing, and `quarantine release` then counts it exactly once.

use chrono::Duration;
use prost::Message;
use tally_collector::commands;
use tally_collector::store::{
    AgentFilter, BillingStore, Inspect, RegistryStore, Source, UsageFilter,
};
use tally_proto::Digest;
use tally_proto::pb;
use tally_proto::receipt::{Outcome, ReceiptBody};
use tally_tests::{InProcessCollector, TestAgent, receipts};

struct Fixture {
    c: InProcessCollector,
    agent: TestAgent,
    license: String,
    token: String,
}

async fn fixture() -> Fixture {
    let c = InProcessCollector::start().await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c
        .issue_license(&customer, &["api.convert", "api.render=1000"])
        .await;
    let agent = c.enroll(&license, &token).await;
    Fixture {
        c,
        agent,
        license,
        token,
    }
}

async fn submit(c: &InProcessCollector, reports: Vec<pb::SignedReport>) -> Vec<ReceiptBody> {
    let resp = c
        .client()
        .await
        .submit(pb::SubmitRequest { reports })
        .await
        .expect("submit")
        .into_inner();
    receipts(resp, &c.collector.ingestor.collector_key())
}

async fn one(c: &InProcessCollector, r: pb::SignedReport) -> ReceiptBody {
    submit(c, vec![r]).await.remove(0)
}

/// (stored report count, total counted quantity over all rollups)
async fn state(c: &InProcessCollector) -> (usize, u64) {
    let store = c.store();
    let n = store.stored_reports().await.unwrap().len();
    let q = store
        .hourly_usage(UsageFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.quantity)
        .sum();
    (n, q)
}

fn assert_outcome(r: &ReceiptBody, outcome: Outcome, reason: &str) {
    assert_eq!(
        (r.outcome, r.reason.as_str()),
        (outcome, reason),
        "detail: {}",
        r.detail
    );
    assert!(outcome == Outcome::Accepted || outcome == Outcome::Duplicate || !r.detail.is_empty());
}

async fn assert_refused(f: &Fixture, report: pb::SignedReport, reason: &str) {
    let before = state(&f.c).await;
    let r = one(&f.c, report.clone()).await;
    assert_outcome(&r, Outcome::Refused, reason);
    assert_eq!(r.report_digest, Digest::of(&report.report));
    assert_eq!(
        state(&f.c).await,
        before,
        "a refused report must change nothing"
    );
}

/// Submits, expects quarantine with `reason`, checks nothing is counted, then releases it
/// twice and checks it is counted exactly once.
async fn assert_quarantined_then_released(
    f: &Fixture,
    report: pb::SignedReport,
    reason: &str,
    counted_on_release: u64,
) {
    let (n0, q0) = state(&f.c).await;
    let r = one(&f.c, report.clone()).await;
    assert_outcome(&r, Outcome::Quarantined, reason);
    assert_eq!(
        state(&f.c).await,
        (n0 + 1, q0),
        "quarantined: stored, not counted"
    );
    let digest = Digest::of(&report.report);
    let listed = f.c.store().quarantine(None).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|q| q.digest == digest && q.reason == reason)
    );

    let out = commands::quarantine_release(&f.c.ctx, &digest.to_hex())
        .await
        .unwrap();
    assert_eq!(out.json["status"], "released");
    assert_eq!(state(&f.c).await, (n0 + 1, q0 + counted_on_release));
    let again = commands::quarantine_release(&f.c.ctx, &digest.to_hex())
        .await
        .unwrap();
    assert_eq!(again.json["status"], "already_counted");
    assert_eq!(
        state(&f.c).await,
        (n0 + 1, q0 + counted_on_release),
        "release counts once"
    );
    // And a resend is now a duplicate, not a second count.
    assert_outcome(&one(&f.c, report).await, Outcome::Duplicate, "");
    assert_eq!(state(&f.c).await, (n0 + 1, q0 + counted_on_release));
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_then_duplicate() {
    let mut f = fixture().await;
    let (_, s) = f.agent.next(&[("api.convert", 5)]);
    let r = one(&f.c, s.clone()).await;
    assert_outcome(&r, Outcome::Accepted, "");
    assert!(r.lease_until.unwrap() > f.c.now() + Duration::days(6));
    let credit = r.credits.iter().find(|c| c.metric == "api.render").unwrap();
    assert_eq!(credit.limit, Some(1000));
    assert_eq!(state(&f.c).await, (1, 5));
    assert_outcome(&one(&f.c, s).await, Outcome::Duplicate, "");
    assert_eq!(state(&f.c).await, (1, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn too_large() {
    let mut f = fixture().await;
    // A signed report padded past 64 KiB with an unknown field.
    let mut bytes = f.agent.draft(&[("api.convert", 1)]).encode();
    let pad = vec![b'x'; 70 * 1024];
    prost::encoding::bytes::encode(99, &pad, &mut bytes);
    let sig = tally_proto::signing::sign(
        &f.agent.key,
        tally_proto::signing::Domain::UsageReport,
        &bytes,
    );
    assert_refused(
        &f,
        pb::SignedReport {
            report: bytes,
            signature: sig.to_vec(),
        },
        "too_large",
    )
    .await;
    // More than 256 counters.
    let names: Vec<String> = (0..257).map(|i| format!("m{i:03}")).collect();
    let counters: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let (_, s) = f.agent.next(&counters);
    assert_refused(&f, s, "too_large").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed() {
    let mut f = fixture().await;
    assert_refused(
        &f,
        pb::SignedReport {
            report: vec![0xff, 0xff, 0xff],
            signature: vec![0; 64],
        },
        "malformed",
    )
    .await;
    let (_, mut s) = f.agent.next(&[("api.convert", 1)]);
    s.report.truncate(s.report.len() - 5);
    assert_refused(&f, s, "malformed").await;
    let (_, mut s) = f.agent.next(&[("api.convert", 1)]);
    s.signature.truncate(10);
    assert_refused(&f, s, "malformed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signature_including_missing_domain_prefix() {
    use ed25519_dalek::Signer;
    let mut f = fixture().await;
    let (_, mut s) = f.agent.next(&[("api.convert", 1)]);
    s.signature[0] ^= 0x01;
    assert_refused(&f, s, "bad_signature").await;
    // Signed over the bare bytes, without "tally.v1.UsageReport\0".
    let r = f.agent.draft(&[("api.convert", 1)]);
    let bytes = r.encode();
    let bare = f.agent.key.sign(&bytes).to_bytes().to_vec();
    assert_refused(
        &f,
        pb::SignedReport {
            report: bytes,
            signature: bare,
        },
        "bad_signature",
    )
    .await;
    // A batch with one bad signature among good ones: only that one is refused.
    let mut batch = Vec::new();
    for _ in 0..6 {
        batch.push(f.agent.next(&[("api.convert", 1)]).1);
    }
    batch[3].signature[5] ^= 0x10;
    let rs = submit(&f.c, batch).await;
    let reasons: Vec<&str> = rs.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons[3], "bad_signature");
    assert_eq!(
        rs.iter().filter(|r| r.outcome == Outcome::Refused).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_agent() {
    let f = fixture().await;
    let mut stranger = TestAgent::at(&f.license, f.c.now());
    assert_refused(&f, stranger.next(&[("api.convert", 1)]).1, "unknown_agent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_revoked() {
    let mut f = fixture().await;
    let agents =
        f.c.store()
            .list_agents(AgentFilter::default())
            .await
            .unwrap();
    let id = agents
        .iter()
        .find(|a| a.key == f.agent.key_bytes())
        .unwrap()
        .agent_id
        .clone();
    commands::agents_revoke(&f.c.ctx, &id).await.unwrap();
    let (_, s) = f.agent.next(&[("api.convert", 1)]);
    assert_refused(&f, s, "agent_revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn license_mismatch() {
    let mut f = fixture().await;
    let other = f.c.add_customer("Other").await;
    let (other_license, _) = f.c.issue_license(&other, &["api.convert"]).await;
    let mut r = f.agent.draft(&[("api.convert", 1)]);
    r.license_id = other_license;
    let s = f.agent.sign(&r);
    f.agent.accept_into_chain(&s);
    assert_refused(&f, s, "license_mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_not_licensed() {
    let mut f = fixture().await;
    let (_, s) = f
        .agent
        .next(&[("api.convert", 2), ("api.secret_feature", 3)]);
    assert_quarantined_then_released(&f, s, "metric_not_licensed", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_counters() {
    let mut f = fixture().await;
    // Unsorted counters.
    let (_, s) = f.agent.next(&[("api.render", 1), ("api.convert", 2)]);
    let r = one(&f.c, s.clone()).await;
    assert_outcome(&r, Outcome::Quarantined, "invalid_counters");
    // Invalid counters can never be counted: release refuses, discard works.
    let d = Digest::of(&s.report).to_hex();
    assert!(commands::quarantine_release(&f.c.ctx, &d).await.is_err());
    assert_eq!(state(&f.c).await.1, 0);
    commands::quarantine_discard(&f.c.ctx, &d).await.unwrap();
    assert!(f.c.store().quarantine(None).await.unwrap().is_empty());
    // Zero quantity.
    let (_, s) = f.agent.next(&[("api.convert", 0)]);
    assert_outcome(
        &one(&f.c, s).await,
        Outcome::Quarantined,
        "invalid_counters",
    );
    assert_eq!(state(&f.c).await, (2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_window() {
    let mut f = fixture().await;
    let mut r = f.agent.draft(&[("api.convert", 4)]);
    r.window_end = r.window_start;
    let s = f.agent.sign(&r);
    f.agent.accept_into_chain(&s);
    assert_quarantined_then_released(&f, s, "bad_window", 4).await;
    let mut r = f.agent.draft(&[("api.convert", 1)]);
    r.window_end = r.window_start + Duration::hours(25);
    let s = f.agent.sign(&r);
    f.agent.accept_into_chain(&s);
    assert_outcome(&one(&f.c, s).await, Outcome::Quarantined, "bad_window");
}

#[tokio::test(flavor = "multi_thread")]
async fn window_overlap() {
    let mut f = fixture().await;
    let (_, first) = f.agent.next(&[("api.convert", 1)]);
    assert_outcome(&one(&f.c, first).await, Outcome::Accepted, "");
    let mut r = f.agent.draft(&[("api.convert", 6)]);
    r.window_start -= Duration::seconds(30);
    let s = f.agent.sign(&r);
    f.agent.accept_into_chain(&s);
    assert_quarantined_then_released(&f, s, "window_overlap", 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_skew() {
    let f = fixture().await;
    let mut r = f.agent.draft(&[("api.convert", 7)]);
    r.window_start = f.c.now() + Duration::minutes(30);
    r.window_end = r.window_start + Duration::minutes(1);
    let s = f.agent.sign(&r);
    assert_quarantined_then_released(&f, s, "clock_skew", 7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_old_online_but_fine_by_import() {
    let mut f = fixture().await;
    let mut r = f.agent.draft(&[("api.convert", 8)]);
    r.window_start = f.c.now() - Duration::days(40);
    r.window_end = r.window_start + Duration::minutes(1);
    let s = f.agent.sign(&r);
    f.agent.accept_into_chain(&s);
    assert_quarantined_then_released(&f, s, "too_old", 8).await;

    // The same age arriving by import (400 days allowed) is accepted.
    let mut r = f.agent.draft(&[("api.convert", 2)]);
    r.window_start = f.c.now() - Duration::days(39);
    r.window_end = r.window_start + Duration::minutes(1);
    let s = f.agent.sign(&r);
    let (_, verdicts) =
        f.c.collector
            .ingestor
            .submit(vec![s], Source::Import)
            .await
            .unwrap();
    assert_eq!(
        verdicts[0].outcome,
        Outcome::Accepted,
        "{}",
        verdicts[0].detail
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn license_inactive() {
    let f = fixture().await;
    commands::licenses_revoke(&f.c.ctx, &f.license)
        .await
        .unwrap();
    let mut r = f.agent.draft(&[("api.convert", 9)]);
    r.window_start = f.c.now() - Duration::minutes(2);
    r.window_end = f.c.now() - Duration::minutes(1) + Duration::seconds(90);
    let s = f.agent.sign(&r);
    let rec = one(&f.c, s.clone()).await;
    assert_outcome(&rec, Outcome::Quarantined, "license_inactive");
    assert!(
        rec.lease_until.unwrap() <= f.c.now(),
        "a revoked license's lease is over"
    );
    let d = Digest::of(&s.report).to_hex();
    commands::quarantine_release(&f.c.ctx, &d).await.unwrap();
    assert_eq!(state(&f.c).await.1, 9);
    // Enrollment with the token of a revoked license is refused.
    let err =
        f.c.client()
            .await
            .enroll(pb::EnrollRequest {
                license_id: f.license.clone(),
                enrollment_token: f.token.clone(),
                agent_key: tally_proto::keys::generate()
                    .verifying_key()
                    .to_bytes()
                    .to_vec(),
                proof: vec![0; 64],
            })
            .await
            .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_mismatch() {
    let mut f = fixture().await;
    let (_, first) = f.agent.next(&[("api.convert", 1)]);
    assert_outcome(&one(&f.c, first).await, Outcome::Accepted, "");
    let mut r = f.agent.draft(&[("api.convert", 3)]);
    r.prev_digest = Some(Digest([9; 32]));
    let s = f.agent.sign(&r);
    assert_quarantined_then_released(&f, s, "chain_mismatch", 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seq_conflict_is_a_fork() {
    let f = fixture().await;
    let original = f.agent.draft(&[("api.convert", 1)]);
    let mut clone = original.clone();
    clone.counters[0].quantity = 50;
    let (s1, s2) = (f.agent.sign(&original), f.agent.sign(&clone));
    assert_outcome(&one(&f.c, s1).await, Outcome::Accepted, "");
    assert_quarantined_then_released(&f, s2.clone(), "seq_conflict", 50).await;
    let anomalies = f.c.store().anomalies(None).await.unwrap();
    assert!(
        anomalies.iter().any(|a| a.kind == "fork"
            && a.seq_from == 1
            && a.digest == Some(Digest::of(&s2.report)))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gaps_open_and_close() {
    let mut f = fixture().await;
    let reports: Vec<_> = (0..4)
        .map(|_| f.agent.next(&[("api.convert", 1)]).1)
        .collect();
    // Deliver 1 and 4: a gap 2..=3 opens.
    for r in submit(&f.c, vec![reports[0].clone(), reports[3].clone()]).await {
        assert_outcome(&r, Outcome::Accepted, "");
    }
    let open_gaps = |a: &Vec<tally_collector::store::AnomalyRecord>| {
        a.iter()
            .filter(|a| a.kind == "gap" && a.closed_at.is_none())
            .map(|a| (a.seq_from, a.seq_to))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        open_gaps(&f.c.store().anomalies(None).await.unwrap()),
        vec![(2, 3)]
    );
    assert_outcome(&one(&f.c, reports[2].clone()).await, Outcome::Accepted, "");
    assert_eq!(
        open_gaps(&f.c.store().anomalies(None).await.unwrap()),
        vec![(2, 2)]
    );
    assert_outcome(&one(&f.c, reports[1].clone()).await, Outcome::Accepted, "");
    assert!(open_gaps(&f.c.store().anomalies(None).await.unwrap()).is_empty());
    assert_eq!(state(&f.c).await, (4, 4));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_truncated_grpc_messages_change_nothing() {
    let mut f = fixture().await;
    let (_, s) = f.agent.next(&[("api.convert", 1)]);
    // 501 reports in one call.
    let err =
        f.c.client()
            .await
            .submit(pb::SubmitRequest {
                reports: vec![s.clone(); 501],
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("500"), "{}", err.message());
    // A request over 4 MiB.
    let big = pb::SignedReport {
        report: vec![0u8; 60 * 1024],
        signature: vec![0; 64],
    };
    let err =
        f.c.client()
            .await
            .submit(pb::SubmitRequest {
                reports: vec![big; 80],
            })
            .await
            .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(
        err.message().to_lowercase().contains("message") || err.message().contains("size"),
        "{err}"
    );
    assert_eq!(state(&f.c).await, (0, 0));
    // A truncated protobuf request body (raw bytes on a real gRPC call).
    let mut req = pb::SubmitRequest { reports: vec![s] }.encode_to_vec();
    req.truncate(req.len() / 2);
    let err = raw_submit(f.c.grpc, req).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(err.message().to_lowercase().contains("decode"), "{err}");
    assert_eq!(state(&f.c).await, (0, 0));
}

/// Sends raw bytes as the Submit request message over a real gRPC connection.
async fn raw_submit(addr: std::net::SocketAddr, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Default, Clone)]
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
            use bytes_put::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
            use bytes_put::Buf;
            let mut v = vec![0; src.remaining()];
            src.copy_to_slice(&mut v);
            Ok(Some(v))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/tally.v1.Ingest/Submit");
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(|r| r.into_inner())
}
