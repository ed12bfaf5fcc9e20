//! `tally-bench`: Tally's own benchmark (BENCHMARKS.md). Every figure is compared with a
//! bound measured in the same run on the same machine.
//!
//! ```text
//! cargo run --release -p tally-tests --bin tally-bench -- all
//! cargo run --release -p tally-tests --bin tally-bench -- ingest
//! ```
//! Scenarios: verify-bound, ingest, ingest-scaling, record, statement, all.

use chrono::{Duration as CDuration, Utc};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_proto::pb;
use tally_proto::report::{Counter, Report};
use tally_proto::signing::{self, Domain};
use tally_tests::{AgentProcess, CollectorProcess, agent_json, collector_json, connect};

const REPRO: &str = "cargo run --release -p tally-tests --bin tally-bench --";

/// One row of the results table.
struct Row {
    scenario: &'static str,
    figure: String,
    value: String,
    bound: String,
    verdict: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("all");
    if scenario == BARE_AXUM_SCENARIO {
        return serve_bare_axum();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    ensure_release_binaries();
    let mut rows = Vec::new();
    let started = Instant::now();
    match scenario {
        "verify-bound" => {
            let rate = measure_verify_bound();
            rows.push(verify_bound_row(rate, "—".into()));
        }
        "ingest" => rt.block_on(ingest(&mut rows)),
        "ingest-scaling" => {
            rt.block_on(ingest_scaling(&mut rows));
        }
        "record" => rt.block_on(record(&mut rows)),
        "statement" => rt.block_on(statement(&mut rows, None)),
        "all" => {
            rt.block_on(async {
                ingest(&mut rows).await;
                // Before the multi-gigabyte stores of the scaling runs, whose writeback
                // would slow the agent's fsyncs.
                record(&mut rows).await;
                // The largest store built for scaling is reused for statements.
                let big = ingest_scaling(&mut rows).await;
                statement(&mut rows, big).await;
            });
        }
        other => {
            eprintln!(
                "error: unknown scenario {other:?} (verify-bound, ingest, ingest-scaling, record, statement, all)"
            );
            std::process::exit(2);
        }
    }
    println!(
        "\n## tally-bench {scenario} ({} cores, {:.0} s)\n",
        cores(),
        started.elapsed().as_secs_f64()
    );
    println!("Reproduce: `{REPRO} {scenario}`\n");
    println!("| scenario | figure | value | bound (same run) | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario, r.figure, r.value, r.bound, r.verdict
        );
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The benchmark measures release builds of the real binaries.
fn ensure_release_binaries() {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().expect("dir");
    let profile = dir.file_name().and_then(|s| s.to_str()).unwrap_or("");
    if profile != "release" {
        eprintln!(
            "warning: tally-bench is not a release build; figures will be meaningless (run: {REPRO} all)"
        );
    }
    // Always (re)build: `cargo run` of this binary does not rebuild the other crates'
    // binaries, and a stale collector would be measured silently. A no-op when fresh.
    {
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "build",
            "-p",
            "tally-collector",
            "-p",
            "tally-agent",
            "--bins",
        ]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "could not build tally-collector and tally-agent");
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

fn verdict(ok: bool, what: &str) -> String {
    format!("{} {what}", if ok { "✅" } else { "❌" })
}

/// Pre-signed reports with 4 counters each, from `agents` distinct keys.
fn presign(license: &str, keys: &[SigningKey], per_agent: usize) -> Vec<Vec<pb::SignedReport>> {
    let start = Utc::now() - CDuration::days(20);
    keys.iter()
        .map(|k| {
            let mut prev = None;
            (0..per_agent)
                .map(|i| {
                    let ws = start + CDuration::seconds(60 * i as i64);
                    let r = Report {
                        license_id: license.to_string(),
                        agent_key: k.verifying_key().to_bytes(),
                        seq: i as u64 + 1,
                        prev_digest: prev,
                        window_start: ws,
                        window_end: ws + CDuration::seconds(60),
                        counters: ["api.convert", "api.render", "pages.out", "storage.gb"]
                            .iter()
                            .enumerate()
                            .map(|(j, m)| Counter {
                                metric: m.to_string(),
                                quantity: 1 + (i + j) as u64 % 9,
                            })
                            .collect(),
                        created_at: ws + CDuration::seconds(60),
                        agent_version: "tally-bench".into(),
                    };
                    let s = r.sign(k);
                    prev = Some(tally_proto::Digest::of(&s.report));
                    s
                })
                .collect()
        })
        .collect()
}

/// ed25519 verification of pre-signed reports on all cores, in batches of 100 (as the
/// collector verifies them), nothing else: the physical bound for ingest.
fn measure_verify_bound() -> f64 {
    let keys: Vec<SigningKey> = (0..16).map(|_| tally_proto::keys::generate()).collect();
    let reports: Arc<Vec<pb::SignedReport>> = Arc::new(
        presign("lic_bench", &keys, 1000)
            .into_iter()
            .flatten()
            .collect(),
    );
    let n_threads = cores();
    // ~1.5 s here: a shorter loop let one noisy second on this shared machine move it ±20 %.
    let rounds = 6;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..n_threads {
            let reports = reports.clone();
            s.spawn(move || {
                for _ in 0..rounds {
                    for chunk in reports.chunks(100).skip(th).step_by(n_threads) {
                        let msgs: Vec<Vec<u8>> = chunk
                            .iter()
                            .map(|r| Domain::UsageReport.message(&r.report))
                            .collect();
                        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
                        let sigs: Vec<_> = chunk
                            .iter()
                            .map(|r| signing::signature(&r.signature).unwrap())
                            .collect();
                        let keys: Vec<_> = chunk
                            .iter()
                            .map(|r| {
                                signing::verifying_key(
                                    &Report::decode(&r.report).unwrap().agent_key,
                                )
                                .unwrap()
                            })
                            .collect();
                        assert!(signing::verify_batch(&refs, &sigs, &keys));
                    }
                }
            });
        }
    });
    (reports.len() * rounds) as f64 / t.elapsed().as_secs_f64()
}

fn verify_bound_row(rate: f64, note: String) -> Row {
    Row {
        scenario: "verify-bound",
        figure: "reports verified/s (batch ed25519 + decode, all cores)".into(),
        value: fmt_rate(rate),
        bound: note,
        verdict: "the bound".into(),
    }
}

/// A collector process with one license and `agents` enrolled keys.
struct Bench {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    collector: CollectorProcess,
    license: String,
    customer: String,
    admin: String,
    keys: Vec<SigningKey>,
}

async fn collector_with_agents(agents: usize) -> Bench {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let admin = collector_json(&data, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&data, &["customers", "add", "Bench"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(Utc::now() - CDuration::days(60));
    let lic = collector_json(
        &data,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--expires",
            "2099-01-01",
            "--not-before",
            &nb,
            "--metric",
            "api.convert",
            "--metric",
            "api.render=100000000",
            "--metric",
            "pages.out",
            "--metric",
            "storage.gb",
        ],
    );
    let license = lic["license_id"].as_str().unwrap().to_string();
    let keys: Vec<SigningKey> = (0..agents).map(|_| tally_proto::keys::generate()).collect();
    // Enroll through the store directly (one process, many keys, no per-key process spawn).
    {
        let store =
            tally_collector::store::sqlite::SqliteStore::open(&data.join("collector.db")).unwrap();
        use tally_collector::store::Store;
        for k in &keys {
            store
                .add_agent(license.clone(), k.verifying_key().to_bytes(), Utc::now())
                .await
                .unwrap();
        }
    }
    let collector = CollectorProcess::spawn(&data);
    Bench {
        _tmp: tmp,
        data,
        collector,
        license,
        customer,
        admin,
        keys,
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Submits every agent's chain in batches of 100, agents concurrently on their own
/// connections. Returns (reports/s, latencies).
async fn drive_ingest(
    grpc: std::net::SocketAddr,
    chains: Vec<Vec<pb::SignedReport>>,
) -> (f64, Vec<Duration>) {
    let total: usize = chains.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chain in chains {
        tasks.push(tokio::spawn(async move {
            let mut client = connect(grpc).await;
            let mut lat = Vec::new();
            // The requests are built up front: the load generator shares the machine's
            // cores with the collector, so it should spend them on nothing else.
            let mut chain = chain.into_iter();
            let mut requests = Vec::new();
            loop {
                let reports: Vec<_> = chain.by_ref().take(100).collect();
                if reports.is_empty() {
                    break;
                }
                requests.push(pb::SubmitRequest { reports });
            }
            for request in requests {
                let n = request.reports.len();
                let s = Instant::now();
                let resp = client.submit(request).await.expect("submit");
                lat.push(s.elapsed());
                assert_eq!(resp.into_inner().receipts.len(), n);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat)
}

/// Reports per agent in `ingest` and `ingest-scaling`: ~3 s of ingest here, long enough
/// that one slow fsync does not decide the figure.
fn ingest_per_agent() -> usize {
    std::env::var("TALLY_BENCH_INGEST_PER_AGENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500)
}

/// Ingest, compared with the verify bound measured just before and just after it: the
/// higher of the two is the bound (the conservative choice on a machine whose speed
/// drifts).
async fn ingest(rows: &mut Vec<Row>) {
    let before = measure_verify_bound();
    let agents: usize = std::env::var("TALLY_BENCH_INGEST_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let per_agent = ingest_per_agent();
    let b = collector_with_agents(agents).await;
    let chains = presign(&b.license, &b.keys, per_agent);
    let (rate, lat) = drive_ingest(b.collector.grpc, chains).await;
    let rss = peak_rss_kib(b.collector.child.id()) as f64 / 1024.0;
    let after = measure_verify_bound();
    let bound = before.max(after);
    rows.push(verify_bound_row(
        bound,
        format!(
            "higher of {} (before ingest) and {} (after)",
            fmt_rate(before),
            fmt_rate(after)
        ),
    ));
    let ratio = rate / bound;
    rows.push(Row {
        scenario: "ingest",
        figure: format!(
            "reports/s ({agents} agents, 4 counters, batches of 100, SQLite synchronous=FULL)"
        ),
        value: fmt_rate(rate),
        bound: format!("{:.0} % of verify-bound", ratio * 100.0),
        verdict: verdict(ratio >= 0.5, "≥ 50 %"),
    });
    rows.push(Row {
        scenario: "ingest",
        figure: "Submit latency p50 / p99".into(),
        value: format!(
            "{:.1} ms / {:.1} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        ),
        bound: "—".into(),
        verdict: "—".into(),
    });
    rows.push(Row {
        scenario: "ingest",
        figure: "collector peak RSS".into(),
        value: format!("{rss:.1} MiB"),
        bound: "256 MiB".into(),
        verdict: verdict(rss <= 256.0, "≤ 256 MiB"),
    });
    let _ = (&b.data, &b.customer, &b.admin);
}

/// Adds `n` accepted reports to a stopped collector's database in bulk (SQL, one
/// transaction per 100k rows), with matching rollups, so that scaling can be measured
/// without signing millions of reports.
fn bulk_fill(db: &Path, license: &str, agent_key: &[u8; 32], n: u64) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .unwrap();
    let agent_id: String = c
        .query_row(
            "SELECT id FROM agents WHERE key = ?1",
            [agent_key.as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    let base = Utc::now().timestamp() - 300 * 86_400;
    let mut done = 0u64;
    while done < n {
        let tx = c.transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO reports (digest, agent_id, seq, license_id, window_start, window_end, received_at, source, status, bytes, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'online', 'accepted', ?8, x'00')",
                )
                .unwrap();
            for i in done..(done + 100_000).min(n) {
                let seq = i as i64 + 1;
                let digest = tally_proto::Digest::of(&seq.to_le_bytes());
                let ws = base + seq % (250 * 86_400);
                ins.execute(rusqlite::params![
                    digest.as_bytes().as_slice(),
                    agent_id,
                    seq,
                    license,
                    ws,
                    ws + 60,
                    ws + 61,
                    [0u8; 120].as_slice()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        done = (done + 100_000).min(n);
    }
    // Rollups for the filler (1 per report, metric api.convert, hourly/monthly).
    c.execute_batch(&format!(
        "INSERT INTO rollups (license_id, metric, hour, quantity)
           SELECT license_id, 'api.convert', (window_start / 3600) * 3600, COUNT(*) FROM reports WHERE bytes != x'' AND signature = x'00' GROUP BY 1, 3
           ON CONFLICT DO UPDATE SET quantity = quantity + excluded.quantity;
         UPDATE agents SET last_seq = {n} WHERE id = '{agent_id}';"
    ))
    .unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    // The filler writes gigabytes with synchronous=OFF; flush them to disk now, or the
    // kernel's writeback of them would compete with the measured collector's fsyncs.
    std::fs::File::open(db).unwrap().sync_all().unwrap();
}

/// Returns the collector with the largest pre-filled store, and its size, for reuse.
/// Agents submitting in `ingest-scaling` (the same load as `ingest`); one more agent owns
/// the bulk-filled reports.
const SCALING_AGENTS: usize = 32;

async fn ingest_scaling(rows: &mut Vec<Row>) -> Option<(Bench, u64)> {
    let sizes: Vec<u64> = std::env::var("TALLY_BENCH_SCALING")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1_000_000, 10_000_000]);
    let mut first = None;
    let mut largest: Option<(Bench, u64)> = None;
    for n in sizes {
        let mut b = collector_with_agents(SCALING_AGENTS + 1).await;
        if n > 0 {
            b.collector.kill9();
            let t = Instant::now();
            bulk_fill(
                &b.data.join("collector.db"),
                &b.license,
                &b.keys[SCALING_AGENTS].verifying_key().to_bytes(),
                n,
            );
            eprintln!("filled {n} reports in {:.0} s", t.elapsed().as_secs_f64());
            b.collector = CollectorProcess::spawn(&b.data);
        }
        let chains = presign(&b.license, &b.keys[..SCALING_AGENTS], ingest_per_agent());
        let (rate, _) = drive_ingest(b.collector.grpc, chains).await;
        let base = *first.get_or_insert(rate);
        let ratio = rate / base;
        rows.push(Row {
            scenario: "ingest-scaling",
            figure: format!("reports/s with {n} reports stored"),
            value: fmt_rate(rate),
            bound: if n == 0 {
                "—".into()
            } else {
                format!("{:.0} % of empty", ratio * 100.0)
            },
            verdict: if n == 0 {
                "baseline".into()
            } else {
                verdict(ratio >= 0.8, "≥ 80 %")
            },
        });
        if n > 0 && largest.as_ref().is_none_or(|(_, m)| *m < n) {
            largest = Some((b, n));
        }
    }
    largest
}

async fn record(rows: &mut Vec<Row>) {
    // A collector, and an agent process enrolled with it.
    let b = collector_with_agents(0).await;
    let lic = collector_json(
        &b.data,
        &[
            "licenses",
            "issue",
            "--customer",
            &b.customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--endpoint",
            &format!("http://{}", b.collector.grpc),
        ],
    );
    let adata = b.data.parent().unwrap().join("agent");
    agent_json(
        &adata,
        &[
            "init",
            "--license",
            lic["file"].as_str().unwrap(),
            "--token",
            lic["enrollment_token"].as_str().unwrap(),
        ],
    );
    let agent = AgentProcess::spawn(&adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let url = agent.url();

    // Batching client: many concurrent callers. Each caller awaits its own commit, so the
    // rate is at most callers / commit latency (Little's law): the number of callers is
    // part of the figure, and it is measured at two concurrencies.
    let client = tally_agent::client::BatchingClient::connect(&url)
        .await
        .unwrap();
    let callers: Vec<u64> = std::env::var("TALLY_BENCH_RECORD_CALLERS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![512, 4096]);
    for n_tasks in callers.into_iter().filter(|n| *n > 0) {
        let per = (819_200 / n_tasks).max(1);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n_tasks {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.record("api.convert", 1, None).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let batched = (n_tasks * per) as f64 / t.elapsed().as_secs_f64();
        rows.push(Row {
            scenario: "record",
            figure: format!(
                "events/s, batching Rust client ({n_tasks} concurrent callers, each awaiting its commit)"
            ),
            value: fmt_rate(batched),
            bound: "1,000,000/s".into(),
            verdict: verdict(batched >= 1e6, "≥ 1 M/s"),
        });
    }

    // RecordStream: batches of 1,000 events.
    let mut rc = pb::recorder_client::RecorderClient::connect(url.clone())
        .await
        .unwrap();
    let batches = 400u64;
    let t = Instant::now();
    let reqs: Vec<pb::RecordRequest> = (0..batches)
        .map(|_| pb::RecordRequest {
            events: vec![
                pb::Event {
                    metric: "api.convert".into(),
                    quantity: 1,
                    idempotency_key: String::new()
                };
                1000
            ],
        })
        .collect();
    let r = rc
        .record_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.recorded, batches * 1000);
    let stream = (batches * 1000) as f64 / t.elapsed().as_secs_f64();
    rows.push(Row {
        scenario: "record",
        figure: "events/s, RecordStream (batches of 1,000)".into(),
        value: fmt_rate(stream),
        bound: "1,000,000/s".into(),
        verdict: verdict(stream >= 1e6, "≥ 1 M/s"),
    });

    // With idempotency keys.
    let counter = AtomicU64::new(0);
    let t = Instant::now();
    let reqs: Vec<pb::RecordRequest> = (0..100)
        .map(|_| pb::RecordRequest {
            events: (0..1000)
                .map(|_| pb::Event {
                    metric: "api.convert".into(),
                    quantity: 1,
                    idempotency_key: format!("k{}", counter.fetch_add(1, Ordering::Relaxed)),
                })
                .collect(),
        })
        .collect();
    rc.record_stream(tokio_stream::iter(reqs)).await.unwrap();
    let keyed = 100_000.0 / t.elapsed().as_secs_f64();
    rows.push(Row {
        scenario: "record",
        figure: "events/s, RecordStream with idempotency keys".into(),
        value: fmt_rate(keyed),
        bound: "100,000/s".into(),
        verdict: verdict(keyed >= 1e5, "≥ 100 k/s"),
    });

    // Single-event HTTP vs a bare axum handler in its own process (as the agent is), same
    // client, same concurrency. Rounds alternate between the two and the medians are
    // compared, so a burst of noise on this shared machine does not land on one side only.
    let bare = BareAxumProcess::spawn();
    let (mut agent_rates, mut bare_rates) = (Vec::new(), Vec::new());
    for _ in 0..HTTP_ROUNDS {
        agent_rates.push(http_load(&format!("{url}/v1/events"), 64, 20_000).await);
        bare_rates.push(http_load(&bare.url, 64, 20_000).await);
    }
    let (http_rate, bare_rate) = (median(&mut agent_rates), median(&mut bare_rates));
    let ratio = http_rate / bare_rate;
    rows.push(Row {
        scenario: "record",
        figure: "single-event HTTP POST /v1/events (64 concurrent)".into(),
        value: fmt_rate(http_rate),
        bound: format!("{} bare axum = {:.0} %", fmt_rate(bare_rate), ratio * 100.0),
        verdict: verdict(ratio >= 0.5, "≥ 50 %"),
    });
    let rss = peak_rss_kib(agent.child.id()) as f64 / 1024.0;
    rows.push(Row {
        scenario: "record",
        figure: "agent peak RSS".into(),
        value: format!("{rss:.1} MiB"),
        bound: "25 MiB".into(),
        verdict: verdict(rss <= 25.0, "≤ 25 MiB"),
    });
}

async fn http_load(url: &str, concurrency: usize, total: usize) -> f64 {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, done) = (client.clone(), url.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.fetch_add(1, Ordering::Relaxed) < total as u64 {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"metric":"api.convert","quantity":1}"#)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// Alternating rounds of the single-event HTTP comparison.
const HTTP_ROUNDS: usize = 3;

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The hidden scenario that runs the bare handler: this binary again, in its own process
/// with a default multi-threaded runtime like the agent's.
const BARE_AXUM_SCENARIO: &str = "bare-axum-server";

/// A bare axum handler that parses the same JSON and answers, nothing else. Prints its
/// address on stdout and serves until killed.
fn serve_bare_axum() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let app = axum::Router::new().route(
            "/v1/events",
            axum::routing::post(|body: axum::body::Bytes| async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                axum::Json(serde_json::json!({"recorded": v.is_object() as u64, "duplicates": 0}))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap());
        axum::serve(l, app).await.unwrap()
    })
}

struct BareAxumProcess {
    child: std::process::Child,
    url: String,
}

impl BareAxumProcess {
    fn spawn() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(BARE_AXUM_SCENARIO)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        BareAxumProcess {
            child,
            url: format!("http://{}/v1/events", line.trim()),
        }
    }
}

impl Drop for BareAxumProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn statement(rows: &mut Vec<Row>, prefilled: Option<(Bench, u64)>) {
    let t = Instant::now();
    let (mut b, n) = match prefilled {
        Some((mut b, n)) => {
            b.collector.kill9();
            (b, n)
        }
        None => {
            let n: u64 = std::env::var("TALLY_BENCH_STATEMENT_REPORTS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(10_000_000);
            let mut b = collector_with_agents(1).await;
            b.collector.kill9();
            bulk_fill(
                &b.data.join("collector.db"),
                &b.license,
                &b.keys[0].verifying_key().to_bytes(),
                n,
            );
            (b, n)
        }
    };
    // Monthly sums for statements, as ingest would have kept them.
    let c = rusqlite::Connection::open(b.data.join("collector.db")).unwrap();
    let months: Vec<i64> = {
        let mut st = c.prepare("SELECT DISTINCT hour FROM rollups").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut by_month: BTreeMap<i64, i64> = BTreeMap::new();
    for h in months {
        let q: i64 = c
            .query_row(
                "SELECT quantity FROM rollups WHERE hour = ?1 AND metric = 'api.convert'",
                [h],
                |r| r.get(0),
            )
            .unwrap();
        *by_month
            .entry(tally_collector::calendar::month_of(h))
            .or_default() += q;
    }
    for (m, q) in &by_month {
        c.execute("INSERT INTO monthly_usage (license_id, metric, month, quantity) VALUES (?1, 'api.convert', ?2, ?3)
              ON CONFLICT (license_id, metric, month) DO UPDATE SET quantity = excluded.quantity", rusqlite::params![b.license, m, q]).unwrap();
    }
    drop(c);
    eprintln!(
        "statement store ready ({n} reports) in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    b.collector = CollectorProcess::spawn(&b.data);
    let http = reqwest::Client::new();
    let month =
        chrono::DateTime::from_timestamp(*by_month.keys().nth(by_month.len() / 2).unwrap_or(&0), 0)
            .unwrap()
            .format("%Y-%m")
            .to_string();
    let mut stmt_lat = Vec::new();
    let mut usage_lat = Vec::new();
    // One timed, authenticated GET, read to the end.
    let timed_get = |url: String| {
        let req = http.get(url).bearer_auth(&b.admin);
        async move {
            let s = Instant::now();
            let r = req.send().await.unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await;
            s.elapsed()
        }
    };
    let statement_url = format!(
        "http://{}/v1/statements/{}/{month}",
        b.collector.http, b.customer
    );
    let usage_url = format!(
        "http://{}/v1/usage?customer={}&granularity=day",
        b.collector.http, b.customer
    );
    for _ in 0..300 {
        stmt_lat.push(timed_get(statement_url.clone()).await);
        usage_lat.push(timed_get(usage_url.clone()).await);
    }
    stmt_lat.sort();
    usage_lat.sort();
    let p99 = percentile(&stmt_lat, 0.99);
    rows.push(Row {
        scenario: "statement",
        figure: format!("customer-month statement p50 / p99 ({n} reports stored)"),
        value: format!(
            "{:.2} ms / {:.2} ms",
            percentile(&stmt_lat, 0.5).as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        bound: "20 ms".into(),
        verdict: verdict(p99 <= Duration::from_millis(20), "p99 ≤ 20 ms"),
    });
    rows.push(Row {
        scenario: "statement",
        figure: "day-granularity usage query p50 / p99 (all history)".into(),
        value: format!(
            "{:.2} ms / {:.2} ms",
            percentile(&usage_lat, 0.5).as_secs_f64() * 1e3,
            percentile(&usage_lat, 0.99).as_secs_f64() * 1e3
        ),
        bound: "—".into(),
        verdict: "—".into(),
    });
}
