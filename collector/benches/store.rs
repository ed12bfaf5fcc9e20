//! The store's share of ingest: `Store::ingest` of batches of 100 new, accepted 4-counter
//! reports into a real SQLite file (WAL, synchronous=FULL), through the writer thread, as
//! a Submit does. Signatures are not checked by the store, so none are made here.
//!
//! `cargo bench -p tally-collector --bench store`

use chrono::{Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_collector::store::sqlite::SqliteStore;
use tally_collector::store::{AuthenticReport, NewLicense, Source, Store};
use tally_proto::Digest;
use tally_proto::license::{License, LicensedMetric};
use tally_proto::report::{Counter, Report};

const METRICS: [&str; 4] = ["api.convert", "api.render", "pages.out", "storage.gb"];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("collector.db")).unwrap();
    let now = Utc::now();
    let key = tally_proto::keys::generate();
    let (license_id, agent_id) = rt.block_on(async {
        let customer = store.add_customer("bench".into(), now).await.unwrap();
        let license = License {
            license_id: "lic_bench".into(),
            customer_id: customer.id.clone(),
            metrics: METRICS
                .iter()
                .map(|m| LicensedMetric {
                    metric: m.to_string(),
                    limit: None,
                })
                .collect(),
            not_before: now - Duration::days(30),
            not_after: now + Duration::days(365),
            grace_secs: 86_400,
            collector_endpoint: "http://127.0.0.1:1".into(),
        };
        let signed = license.sign(&tally_proto::keys::generate());
        store
            .issue_license(
                NewLicense {
                    license: license.clone(),
                    signed: prost::Message::encode_to_vec(&signed),
                    token_hash: [0; 32],
                    enrollments: 1,
                    token_expires: now,
                },
                now,
            )
            .await
            .unwrap();
        let agent = store
            .add_agent(
                license.license_id.clone(),
                key.verifying_key().to_bytes(),
                now,
            )
            .await
            .unwrap();
        (license.license_id, agent)
    });

    // One chain, continued across iterations so every report is new and accepted.
    let mut seq = 0u64;
    let mut prev: Option<Digest> = None;
    let start = now - Duration::days(20);
    let mut next_batch = || -> Vec<AuthenticReport> {
        (0..100)
            .map(|_| {
                seq += 1;
                let ws = start + Duration::seconds(seq as i64);
                let report = Report {
                    license_id: license_id.clone(),
                    agent_key: key.verifying_key().to_bytes(),
                    seq,
                    prev_digest: prev,
                    window_start: ws,
                    window_end: ws + Duration::seconds(1),
                    counters: METRICS
                        .iter()
                        .map(|m| Counter {
                            metric: m.to_string(),
                            quantity: 1 + seq % 7,
                        })
                        .collect(),
                    created_at: ws + Duration::seconds(1),
                    agent_version: "bench".into(),
                };
                let bytes = report.encode();
                let digest = Digest::of(&bytes);
                prev = Some(digest);
                AuthenticReport {
                    digest,
                    bytes,
                    signature: vec![0; 64],
                    report,
                    agent_id: agent_id.clone(),
                }
            })
            .collect()
    };

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(100));
    g.bench_function("ingest_batch_100", |b| {
        b.iter_batched(
            &mut next_batch,
            |batch| {
                let out = rt
                    .block_on(store.ingest(batch, Utc::now(), Source::Online))
                    .unwrap();
                assert!(out.iter().all(|o| o.reason.is_empty()), "{:?}", out[0]);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
