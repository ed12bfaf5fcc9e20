//! Fault soak: a bounded, seeded, reproducible run that SIGKILLs the agent and the
//! collector at random moments and restarts them, while callers keep recording with
//! idempotent retries; then everything drains and totals must be exact.
//!
//! `TALLY_SOAK_SECS` (default 20) sets the length, `TALLY_SOAK_SEED` replays a run.
//! The seed and the counts are printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_tests::{AgentProcess, CollectorProcess, Deployment};

/// xorshift64*: tiny, deterministic for a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_random_sigkills() {
    let secs: u64 = std::env::var("TALLY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("TALLY_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!(
        "soak: seed {seed}, {secs} s (replay with TALLY_SOAK_SEED={seed} TALLY_SOAK_SECS={secs})"
    );
    let mut rng = Rng(seed);

    let mut d = Deployment::new(&["api.convert", "api.render"], Some(""));
    let (grpc, http) = (d.collector.grpc.to_string(), d.collector.http.to_string());
    let mut agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let listen = agent.listen.to_string();
    let url = agent.url();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let events = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for caller in 0..3u64 {
        let (url, stop, acked, events) = (url.clone(), stop.clone(), acked.clone(), events.clone());
        let mut crng = Rng(seed ^ (caller + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        callers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let m = (crng.next() % 2) as usize;
                let q = crng.range(1, 10);
                let metric = ["api.convert", "api.render"][m];
                let body = serde_json::json!({"metric": metric, "quantity": q, "idempotency_key": format!("soak-{caller}-{i}")});
                // Retry until acknowledged: a retry after an unacknowledged commit is a duplicate.
                loop {
                    match http.post(format!("{url}/v1/events")).json(&body).send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().is_client_error() => panic!("rejected: {}", r.text().await.unwrap_or_default()),
                        _ => tokio::time::sleep(Duration::from_millis(30)).await,
                    }
                }
                acked[m].fetch_add(q, Ordering::SeqCst);
                events.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(crng.range(0, 20))).await;
            }
        }));
    }

    let (mut agent_kills, mut collector_kills) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1500))).await;
        if rng.next().is_multiple_of(2) {
            agent.kill9();
            agent_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(0, 300))).await;
            agent = AgentProcess::spawn(&d.adata, &["--listen", &listen, "--interval", "1s"]);
        } else {
            d.collector.kill9();
            collector_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(0, 1000))).await;
            d.collector = CollectorProcess::spawn_with_args(
                &d.cdata,
                &["--grpc-listen", &grpc, "--http-listen", &http],
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    let status = agent.drain(240).await;
    let totals = d.totals().await;
    let expected: std::collections::BTreeMap<String, u64> = [
        ("api.convert".to_string(), acked[0].load(Ordering::SeqCst)),
        ("api.render".to_string(), acked[1].load(Ordering::SeqCst)),
    ]
    .into_iter()
    .filter(|(_, q)| *q > 0)
    .collect();
    println!(
        "soak: seed {seed}: {} events acknowledged, {agent_kills} agent and {collector_kills} collector SIGKILLs, totals {totals:?}",
        events.load(Ordering::SeqCst)
    );
    assert!(
        agent_kills + collector_kills >= 3,
        "too few faults injected"
    );
    assert_eq!(totals, expected, "seed {seed}; agent status {status}");
    let (code, _, err) = tally_tests::agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "seed {seed}: {err}");
}
