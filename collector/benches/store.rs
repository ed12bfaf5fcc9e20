//! The store's share of ingest: `Store::ingest` of batches of 100 new, accepted 4-counter
//! reports into a real SQLite file (WAL, synchronous=FULL), through the writer thread, as
//! a Submit does. Signatures are not checked by the store, so none are made here.
//!
//! `cargo bench -p tally-collector --bench store`

use chrono::{Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_collector::store::fixture::{Fixture, Seed};
use tally_collector::store::sqlite::SqliteStore;
use tally_collector::store::{AuthenticReport, IngestStore, Source};

const METRICS: [&str; 4] = ["api.convert", "api.render", "pages.out", "storage.gb"];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("collector.db")).unwrap();
    let now = Utc::now();
    let limits: Vec<(&str, Option<u64>)> = METRICS.iter().map(|m| (*m, None)).collect();
    let mut agent = rt
        .block_on(Fixture::seed(
            &store,
            Seed {
                name: "bench",
                license_id: "lic_bench",
                metrics: &limits,
                now,
            },
        ))
        .unwrap();

    // One chain, continued across iterations so every report is new and accepted.
    let start = now - Duration::days(20);
    let mut next_batch = || -> Vec<AuthenticReport> {
        (0..100)
            .map(|_| {
                let seq = agent.seq;
                let ws = start + Duration::seconds(seq as i64);
                let counters: Vec<(&str, u64)> =
                    METRICS.iter().map(|m| (*m, 1 + seq % 7)).collect();
                agent.next(ws, 1, &counters)
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
                assert!(out.iter().all(|o| o.reason.is_none()), "{:?}", out[0]);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
