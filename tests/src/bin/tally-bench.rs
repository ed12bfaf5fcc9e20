//! `tally-bench`: Tally's own benchmark (BENCHMARKS.md). Every figure is compared with a
//! bound measured in the same run on the same machine.
//!
//! ```text
//! cargo run --release -p tally-tests --bin tally-bench -- all
//! cargo run --release -p tally-tests --bin tally-bench -- ingest
//! ```
//! Scenarios: verify-bound, ingest, ingest-scaling, record, statement, ingest-pg,
//! statement-pg, all.

use chrono::{Duration as CDuration, Utc};
use ed25519_dalek::SigningKey;
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
            let rate = measure_verify_bound(VerifyLoop::Strict);
            rows.push(verify_bound_row(rate, "—".into()));
            rows.push(batch_reference_row(
                measure_verify_bound(VerifyLoop::Batch),
                None,
            ));
        }
        "ingest" => rt.block_on(ingest(&mut rows)),
        "ingest-scaling" => {
            rt.block_on(ingest_scaling(&mut rows));
        }
        "record" => rt.block_on(record(&mut rows)),
        "statement" => rt.block_on(statement(&mut rows, None)),
        "ingest-pg" => rt.block_on(ingest_pg(&mut rows)),
        "statement-pg" => rt.block_on(statement_pg(&mut rows)),
        "all" => {
            rt.block_on(async {
                ingest(&mut rows).await;
                // Before the multi-gigabyte stores of the scaling runs, whose writeback
                // would slow the agent's fsyncs.
                record(&mut rows).await;
                // The largest store built for scaling is reused for statements.
                let big = ingest_scaling(&mut rows).await;
                statement(&mut rows, big).await;
                ingest_pg(&mut rows).await;
                statement_pg(&mut rows).await;
            });
        }
        other => {
            eprintln!(
                "error: unknown scenario {other:?} (verify-bound, ingest, ingest-scaling, record, statement, ingest-pg, statement-pg, all)"
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

/// How a verify-only loop checks signatures.
#[derive(Clone, Copy, PartialEq)]
enum VerifyLoop {
    /// Each signature alone under the one rule, as the collector verifies them: the bound.
    Strict,
    /// One cofactorless batch equation per 100 signatures (ed25519-dalek `verify_batch`).
    /// Not a rule Tally may bill on (it passes some signatures the strict check refuses);
    /// measured only to show what giving it up costs.
    Batch,
}

/// ed25519 verification of pre-signed reports on all cores (plus decoding the report and
/// parsing its key), nothing else: the physical bound for ingest.
fn measure_verify_bound(how: VerifyLoop) -> f64 {
    let keys: Vec<SigningKey> = (0..16).map(|_| tally_proto::keys::generate()).collect();
    let reports: Arc<Vec<pb::SignedReport>> = Arc::new(
        presign("lic_bench", &keys, 1000)
            .into_iter()
            .flatten()
            .collect(),
    );
    let n_threads = cores();
    // ~1.5 s here with batches (about 3 s strict): a shorter loop let one noisy second on
    // this shared machine move it ±20 %.
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
                        match how {
                            VerifyLoop::Strict => {
                                for ((m, sig), key) in msgs.iter().zip(&sigs).zip(&keys) {
                                    assert!(signing::verify_message(key, m, sig));
                                }
                            }
                            VerifyLoop::Batch => {
                                let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
                                assert!(ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok());
                            }
                        }
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
        figure: "reports verified/s (strict ed25519 one by one + decode, all cores)".into(),
        value: fmt_rate(rate),
        bound: note,
        verdict: "the bound".into(),
    }
}

/// The batch-equation loop, for reference only (see [`VerifyLoop::Batch`]); with an ingest
/// rate, how far ingest is from it.
fn batch_reference_row(rate: f64, ingest: Option<f64>) -> Row {
    Row {
        scenario: "verify-batch",
        figure: "reports verified/s (batch equation, 100 per batch + decode, all cores)".into(),
        value: fmt_rate(rate),
        bound: match ingest {
            Some(i) => format!("ingest is {:.0} % of it", i / rate * 100.0),
            None => "—".into(),
        },
        verdict: "reference, not the rule".into(),
    }
}

/// A collector process with one license and `agents` enrolled keys.
struct Bench {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    collector: CollectorProcess,
    /// Further collectors on the same PostgreSQL database (same key files).
    more: Vec<CollectorProcess>,
    /// `None`: the SQLite file in `data`; else a PostgreSQL URL.
    database: Option<String>,
    license: String,
    customer: String,
    admin: String,
    keys: Vec<SigningKey>,
}

impl Bench {
    fn grpc_addrs(&self) -> Vec<std::net::SocketAddr> {
        std::iter::once(&self.collector)
            .chain(&self.more)
            .map(|c| c.grpc)
            .collect()
    }

    fn respawn(&mut self) {
        self.collector = spawn_node(&self.data, self.database.as_deref());
    }
}

/// A collector process with one license and `agents` enrolled keys (SQLite).
async fn collector_with_agents(agents: usize) -> Bench {
    bench_setup(None, 1, agents).await
}

/// The collector's store, opened in-process (enrollment and bulk fills).
async fn open_store(data: &Path, database: Option<&str>) -> Arc<dyn tally_collector::store::Store> {
    tally_collector::store::open(
        &tally_collector::datadir::DataDir::new(data),
        database,
        false,
    )
    .await
    .expect("open the store")
}

fn spawn_node(data: &Path, database: Option<&str>) -> CollectorProcess {
    match database {
        Some(url) => CollectorProcess::spawn_with_env(data, &[("TALLY_DATABASE_URL", url)]),
        None => CollectorProcess::spawn(data),
    }
}

/// `nodes` collector processes on one store (`database`: a PostgreSQL URL, or `None` for
/// SQLite), one license with 4 metrics and `agents` enrolled keys.
async fn bench_setup(database: Option<&str>, nodes: usize, agents: usize) -> Bench {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = database.map(|u| vec!["--database", u]).unwrap_or_default();
        all.extend_from_slice(args);
        collector_json(&data, &all)
    };
    let admin = cli(&["init"])["admin_token"].as_str().unwrap().to_string();
    let customer = cli(&["customers", "add", "Bench"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nb = tally_proto::time::rfc3339(Utc::now() - CDuration::days(60));
    let lic = cli(&[
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
    ]);
    let license = lic["license_id"].as_str().unwrap().to_string();
    let keys: Vec<SigningKey> = (0..agents).map(|_| tally_proto::keys::generate()).collect();
    // Enroll through the store directly (one process, many keys, no per-key process spawn).
    {
        let store = open_store(&data, database).await;
        for k in &keys {
            store
                .add_agent(license.clone(), k.verifying_key().to_bytes(), Utc::now())
                .await
                .unwrap();
        }
    }
    let collector = spawn_node(&data, database);
    let mut more = Vec::new();
    for i in 1..nodes {
        let node = tmp.path().join(format!("collector{i}"));
        std::fs::create_dir_all(&node).unwrap();
        std::fs::copy(data.join("vendor.key"), node.join("vendor.key")).unwrap();
        more.push(spawn_node(&node, database));
    }
    Bench {
        _tmp: tmp,
        data,
        collector,
        more,
        database: database.map(str::to_string),
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
    drive_ingest_to(&[grpc], chains).await
}

/// Like [`drive_ingest`], agent `i` submitting to collector `i % addrs.len()`.
async fn drive_ingest_to(
    addrs: &[std::net::SocketAddr],
    chains: Vec<Vec<pb::SignedReport>>,
) -> (f64, Vec<Duration>) {
    let total: usize = chains.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        let grpc = addrs[i % addrs.len()];
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
    let before = measure_verify_bound(VerifyLoop::Strict);
    let agents: usize = std::env::var("TALLY_BENCH_INGEST_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let per_agent = ingest_per_agent();
    let b = collector_with_agents(agents).await;
    let chains = presign(&b.license, &b.keys, per_agent);
    let (rate, lat) = drive_ingest(b.collector.grpc, chains).await;
    let rss = peak_rss_kib(b.collector.child.id()) as f64 / 1024.0;
    let after = measure_verify_bound(VerifyLoop::Strict);
    let batch = measure_verify_bound(VerifyLoop::Batch);
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
    rows.push(batch_reference_row(batch, Some(rate)));
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

/// Customers and agents of a bulk fill: hundreds of customers, thousands of agents (as a
/// vendor's store looks after a while), each agent with its own chain.
const FILL_CUSTOMERS: usize = 200;
const FILL_AGENTS_PER_CUSTOMER: usize = 10;
/// Window length of the filled reports: 10 minutes, so 10 M reports over 2,000 agents span
/// ~35 days.
const FILL_WINDOW_SECS: i64 = 600;

/// Fills a store with `n` accepted reports through its own ingest path (`Store::ingest`,
/// in batches of 100 per agent, 8 callers at once): the real rules, rollups, monthly sums
/// and indexes; only the signatures are not made (a store never checks them). Returns the
/// filled customers and the start of a month that holds their usage.
async fn fill_through_ingest(
    store: Arc<dyn tally_collector::store::Store>,
    n: u64,
) -> (Vec<String>, i64) {
    use tally_collector::store::Source;
    use tally_collector::store::fixture::{Fixture, Seed};
    let now = Utc::now();
    let metrics: [(&str, Option<u64>); 4] = [
        ("api.convert", None),
        ("api.render", Some(100_000_000)),
        ("pages.out", None),
        ("storage.gb", None),
    ];
    let mut customers = Vec::new();
    let mut agents = Vec::new();
    for c in 0..FILL_CUSTOMERS {
        let f = Fixture::seed(
            store.as_ref(),
            Seed {
                name: &format!("fill-{c}"),
                license_id: &format!("lic_fill_{c}"),
                metrics: &metrics,
                now,
            },
        )
        .await
        .expect("seed a fill customer");
        customers.push(f.customer_id.clone());
        for _ in 1..FILL_AGENTS_PER_CUSTOMER {
            agents.push(f.enroll_new_agent(store.as_ref(), now).await.unwrap());
        }
        agents.push(f);
    }
    let per_agent = n.div_ceil(agents.len() as u64);
    let start = now - CDuration::days(55);
    let done = Arc::new(AtomicU64::new(0));
    let callers = 8;
    let mut groups: Vec<Vec<Fixture>> = (0..callers).map(|_| Vec::new()).collect();
    for (i, a) in agents.into_iter().enumerate() {
        groups[i % callers].push(a);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mut group in groups {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let mut any = false;
                for a in &mut group {
                    let left = per_agent.saturating_sub(a.seq - 1);
                    if left == 0 || done.load(Ordering::Relaxed) >= n {
                        continue;
                    }
                    any = true;
                    let batch: Vec<_> = (0..left.min(100))
                        .map(|_| {
                            let seq = a.seq as i64;
                            let ws = start + CDuration::seconds(FILL_WINDOW_SECS * (seq - 1));
                            let counters: Vec<(&str, u64)> = metrics
                                .iter()
                                .enumerate()
                                .map(|(j, (m, _))| (*m, 1 + (seq as u64 + j as u64) % 9))
                                .collect();
                            a.next(ws, FILL_WINDOW_SECS, &counters)
                        })
                        .collect();
                    let k = batch.len() as u64;
                    let out = store
                        .ingest(batch, Utc::now(), Source::Import)
                        .await
                        .expect("fill ingest");
                    assert!(
                        out.iter().all(|o| o.reason.is_none()),
                        "a filled report was not accepted: {:?}",
                        out.iter().find(|o| o.reason.is_some())
                    );
                    let before = done.fetch_add(k, Ordering::Relaxed);
                    if (before + k) / 1_000_000 > before / 1_000_000 {
                        eprintln!(
                            "filled {} reports ({:.0} s)",
                            before + k,
                            t.elapsed().as_secs_f64()
                        );
                    }
                }
                if !any {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let month = tally_collector::calendar::month_of((now - CDuration::days(40)).timestamp());
    (customers, month)
}

/// Fills a stopped bench collector's store with `n` reports through the store's ingest,
/// flushes the page cache's dirty pages to disk (so their writeback does not compete with
/// the measured collector's fsyncs), and starts the collector again.
async fn fill_stopped(b: &mut Bench, n: u64) -> (Vec<String>, i64) {
    b.collector.kill9();
    let t = Instant::now();
    let store = open_store(&b.data, b.database.as_deref()).await;
    let filled = fill_through_ingest(store, n).await;
    let _ = std::process::Command::new("sync").status();
    eprintln!(
        "filled {n} reports through Store::ingest in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    b.respawn();
    filled
}

/// Agents submitting in `ingest-scaling` and `ingest-pg` (the same load as `ingest`).
const SCALING_AGENTS: usize = 32;
/// Measuring rounds: the stores take turns, and medians are compared, so one noisy stretch
/// of this shared machine cannot decide a ratio.
const ROUNDS: usize = 3;

/// Ingest with 0, 1 M and 10 M reports already stored (filled through `Store::ingest`),
/// the stores measured in turns over [`ROUNDS`] rounds, medians compared. Returns the
/// largest store (with its filled customers and a month) for the statement benchmark.
async fn ingest_scaling(rows: &mut Vec<Row>) -> Option<(Bench, u64, Vec<String>, i64)> {
    let sizes: Vec<u64> = std::env::var("TALLY_BENCH_SCALING")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1_000_000, 10_000_000]);
    let mut benches = Vec::new();
    for &n in &sizes {
        let mut b = collector_with_agents(SCALING_AGENTS * ROUNDS).await;
        let filled = if n > 0 {
            Some(fill_stopped(&mut b, n).await)
        } else {
            None
        };
        benches.push((b, n, filled));
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); benches.len()];
    for r in 0..ROUNDS {
        for (i, (b, _, _)) in benches.iter().enumerate() {
            let keys = &b.keys[r * SCALING_AGENTS..(r + 1) * SCALING_AGENTS];
            let chains = presign(&b.license, keys, ingest_per_agent());
            rates[i].push(drive_ingest(b.collector.grpc, chains).await.0);
        }
    }
    let base = median(&mut rates[0].clone());
    for (i, (_, n, _)) in benches.iter().enumerate() {
        let rate = median(&mut rates[i]);
        let ratio = rate / base;
        let all: Vec<String> = rates[i].iter().map(|r| fmt_rate(*r)).collect();
        rows.push(Row {
            scenario: "ingest-scaling",
            figure: format!(
                "reports/s with {n} reports stored (median of {ROUNDS} rounds: {})",
                all.join(", ")
            ),
            value: fmt_rate(rate),
            bound: if i == 0 {
                "—".into()
            } else {
                format!("{:.0} % of the first", ratio * 100.0)
            },
            verdict: if i == 0 {
                "baseline".into()
            } else {
                verdict(ratio >= 0.8, "≥ 80 %")
            },
        });
    }
    benches
        .into_iter()
        .filter_map(|(b, n, f)| f.map(|(c, m)| (b, n, c, m)))
        .max_by_key(|(_, n, _, _)| *n)
}

/// One collector on PostgreSQL and two collectors on one PostgreSQL database, against one
/// collector on SQLite, all with the load of `ingest` (32 agents on one license: every
/// Submit adds to the same rollup rows, the hot case for PostgreSQL), in turns over
/// [`PG_ROUNDS`] rounds, medians compared. The server is a local PostgreSQL started from the
/// machine's binaries with default durability (`fsync`, `synchronous_commit` on).
async fn ingest_pg(rows: &mut Vec<Row>) {
    let pg = tally_tests::pg::PgServer::start();
    let n_keys = SCALING_AGENTS * PG_ROUNDS;
    let sqlite = bench_setup(None, 1, n_keys).await;
    let url1 = pg.fresh_database().await;
    let one = bench_setup(Some(&url1), 1, n_keys).await;
    let url2 = pg.fresh_database().await;
    let two = bench_setup(Some(&url2), 2, n_keys).await;
    let targets = [&sqlite, &one, &two];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut pg_lat = Vec::new();
    for r in 0..PG_ROUNDS {
        for (i, b) in targets.iter().enumerate() {
            let keys = &b.keys[r * SCALING_AGENTS..(r + 1) * SCALING_AGENTS];
            let chains = presign(&b.license, keys, ingest_per_agent());
            let (rate, lat) = drive_ingest_to(&b.grpc_addrs(), chains).await;
            rates[i].push(rate);
            if i == 1 {
                pg_lat.extend(lat);
            }
        }
    }
    let rounds = |i: usize| -> String {
        rates[i]
            .iter()
            .map(|r| fmt_rate(*r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let figures = (rounds(0), rounds(1), rounds(2));
    let s = median(&mut rates[0]);
    let p1 = median(&mut rates[1]);
    let p2 = median(&mut rates[2]);
    rows.push(Row {
        scenario: "ingest-pg",
        figure: format!(
            "SQLite, one collector (median of {PG_ROUNDS}: {})",
            figures.0
        ),
        value: fmt_rate(s),
        bound: "—".into(),
        verdict: "baseline".into(),
    });
    let ratio = p1 / s;
    rows.push(Row {
        scenario: "ingest-pg",
        figure: format!(
            "PostgreSQL, one collector (median of {PG_ROUNDS}: {})",
            figures.1
        ),
        value: fmt_rate(p1),
        bound: format!("{:.0} % of SQLite", ratio * 100.0),
        verdict: if ratio >= 0.8 {
            verdict(true, "≥ 80 %")
        } else {
            verdict(ratio >= 0.5, "≥ 50 % floor (80 % wanted)")
        },
    });
    let ratio2 = p2 / p1;
    rows.push(Row {
        scenario: "ingest-pg",
        figure: format!(
            "PostgreSQL, two collectors on one database (median of {PG_ROUNDS}: {})",
            figures.2
        ),
        value: fmt_rate(p2),
        bound: format!("{:.0} % of one", ratio2 * 100.0),
        verdict: verdict(ratio2 >= 1.0, "≥ 100 %"),
    });
    pg_lat.sort();
    rows.push(Row {
        scenario: "ingest-pg",
        figure: "Submit latency p50 / p99, one collector on PostgreSQL".into(),
        value: format!(
            "{:.1} ms / {:.1} ms",
            percentile(&pg_lat, 0.5).as_secs_f64() * 1e3,
            percentile(&pg_lat, 0.99).as_secs_f64() * 1e3
        ),
        bound: "—".into(),
        verdict: "—".into(),
    });
    drop((sqlite, one, two));
    drop(pg);
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

/// Rounds of `ingest-pg`: its ratios (two collectors against one) sit near 100 %, where
/// three rounds left the verdict to the noise of this shared machine.
const PG_ROUNDS: usize = 5;

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

/// A customer-month statement and a usage query with `n` reports stored (the store of
/// `ingest-scaling`, or a new one filled through `Store::ingest`).
async fn statement(rows: &mut Vec<Row>, prefilled: Option<(Bench, u64, Vec<String>, i64)>) {
    let (b, n, customers, month) = match prefilled {
        Some(p) => p,
        None => {
            let n = statement_reports();
            let mut b = collector_with_agents(0).await;
            let (c, m) = fill_stopped(&mut b, n).await;
            (b, n, c, m)
        }
    };
    measure_statement(rows, "statement", &b, n, &customers[0], month).await;
}

/// The same on PostgreSQL (a local server started from the machine's binaries).
async fn statement_pg(rows: &mut Vec<Row>) {
    let pg = tally_tests::pg::PgServer::start();
    let url = pg.fresh_database().await;
    let n = statement_reports();
    let mut b = bench_setup(Some(&url), 1, 0).await;
    let (customers, month) = fill_stopped(&mut b, n).await;
    measure_statement(rows, "statement-pg", &b, n, &customers[0], month).await;
    drop(b);
    drop(pg);
}

fn statement_reports() -> u64 {
    std::env::var("TALLY_BENCH_STATEMENT_REPORTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000)
}

async fn measure_statement(
    rows: &mut Vec<Row>,
    scenario: &'static str,
    b: &Bench,
    n: u64,
    customer: &str,
    month: i64,
) {
    let http = reqwest::Client::new();
    let month = chrono::DateTime::from_timestamp(month, 0)
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
        "http://{}/v1/statements/{customer}/{month}",
        b.collector.http
    );
    let usage_url = format!(
        "http://{}/v1/usage?customer={customer}&granularity=day",
        b.collector.http
    );
    for _ in 0..300 {
        stmt_lat.push(timed_get(statement_url.clone()).await);
        usage_lat.push(timed_get(usage_url.clone()).await);
    }
    stmt_lat.sort();
    usage_lat.sort();
    let p99 = percentile(&stmt_lat, 0.99);
    rows.push(Row {
        scenario,
        figure: format!(
            "customer-month statement p50 / p99 ({n} reports stored, {FILL_CUSTOMERS} customers, {} agents)",
            FILL_CUSTOMERS * FILL_AGENTS_PER_CUSTOMER
        ),
        value: format!(
            "{:.2} ms / {:.2} ms",
            percentile(&stmt_lat, 0.5).as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        bound: "20 ms".into(),
        verdict: verdict(p99 <= Duration::from_millis(20), "p99 ≤ 20 ms"),
    });
    rows.push(Row {
        scenario,
        figure: "day-granularity usage query p50 / p99 (one customer, all history)".into(),
        value: format!(
            "{:.2} ms / {:.2} ms",
            percentile(&usage_lat, 0.5).as_secs_f64() * 1e3,
            percentile(&usage_lat, 0.99).as_secs_f64() * 1e3
        ),
        bound: "—".into(),
        verdict: "—".into(),
    });
}
