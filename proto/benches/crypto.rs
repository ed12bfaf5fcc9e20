//! Per-report costs on the collector's ingest path: digest, decode, verification (single
//! and batched as the collector does) and receipt signing (single and batched).
//!
//! `cargo bench -p tally-proto --bench crypto`

use chrono::{Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tally_proto::Digest;
use tally_proto::batch_signer::BatchSigner;
use tally_proto::receipt::{Credit, Outcome, ReceiptBody};
use tally_proto::report::{Counter, Report};
use tally_proto::signing::{self, Domain};

fn report(key: &ed25519_dalek::SigningKey, seq: u64) -> Report {
    let ws = Utc::now() - Duration::days(1) + Duration::seconds(60 * seq as i64);
    Report {
        license_id: "lic_0123456789abcdef".into(),
        agent_key: key.verifying_key().to_bytes(),
        seq,
        prev_digest: (seq > 1).then_some(Digest([7; 32])),
        window_start: ws,
        window_end: ws + Duration::seconds(60),
        counters: ["api.convert", "api.render", "pages.out", "storage.gb"]
            .iter()
            .map(|m| Counter {
                metric: m.to_string(),
                quantity: 42,
            })
            .collect(),
        created_at: ws + Duration::seconds(60),
        agent_version: "bench".into(),
    }
}

fn receipt_body(seq: u8) -> ReceiptBody {
    ReceiptBody {
        report_digest: Digest([seq; 32]),
        outcome: Outcome::Accepted,
        reason: String::new(),
        detail: String::new(),
        received_at: Utc::now(),
        lease_until: Some(Utc::now() + Duration::days(7)),
        credits: ["api.convert", "api.render", "pages.out", "storage.gb"]
            .iter()
            .map(|m| Credit {
                metric: m.to_string(),
                limit: Some(1_000_000),
                used: 1234,
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let keys: Vec<_> = (0..100).map(|_| tally_proto::keys::generate()).collect();
    let signed: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| report(k, i as u64 + 1).sign(k))
        .collect();
    let one = &signed[0];

    let mut g = c.benchmark_group("report");
    g.throughput(Throughput::Elements(1));
    g.bench_function("digest", |b| b.iter(|| Digest::of(black_box(&one.report))));
    g.bench_function("decode", |b| {
        b.iter(|| Report::decode(black_box(&one.report)).unwrap())
    });
    g.bench_function("encode", |b| {
        let r = report(&keys[0], 2);
        b.iter(|| black_box(&r).encode())
    });
    g.bench_function("parse_agent_key", |b| {
        let k = keys[0].verifying_key().to_bytes();
        b.iter(|| signing::verifying_key(black_box(&k)).unwrap())
    });
    g.bench_function("verify_single", |b| {
        let vk = keys[0].verifying_key();
        b.iter(|| signing::verify(&vk, Domain::UsageReport, &one.report, &one.signature).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("report_batch_100");
    g.throughput(Throughput::Elements(100));
    let msgs: Vec<Vec<u8>> = signed
        .iter()
        .map(|s| Domain::UsageReport.message(&s.report))
        .collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<_> = signed
        .iter()
        .map(|s| signing::signature(&s.signature).unwrap())
        .collect();
    let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    // The rule ingest applies: each signature alone.
    g.bench_function("verify_each", |b| {
        b.iter(|| {
            for ((m, sig), vk) in msgs.iter().zip(&sigs).zip(&vks) {
                assert!(signing::verify_message(vk, m, sig));
            }
        })
    });
    // The batch equation ingest no longer uses (it passes signatures with a torsion
    // component in R that the strict check refuses), kept to show its speed.
    g.bench_function("verify_batch_equation", |b| {
        b.iter(|| assert!(ed25519_dalek::verify_batch(&refs, &sigs, &vks).is_ok()))
    });
    g.finish();

    let collector = tally_proto::keys::generate();
    let bodies: Vec<ReceiptBody> = (0..100).map(receipt_body).collect();
    let mut g = c.benchmark_group("receipt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_single", |b| b.iter(|| bodies[0].sign(&collector)));
    g.finish();
    let signer = BatchSigner::new(&collector);
    let mut g = c.benchmark_group("receipt_batch_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("sign_all", |b| {
        b.iter(|| ReceiptBody::sign_all(black_box(&bodies), &signer))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
