//! Fault soak: a bounded, seeded, reproducible run that SIGKILLs the agent and the
//! collector at random moments and restarts them, while callers keep recording with
//! idempotent retries; then everything drains and totals must be exact.
//!
//! `TALLY_SOAK_SECS` (default 20) sets the length, `TALLY_SOAK_SEED` replays a run.
//! The seed and the counts are printed.

use std::time::{Duration, Instant};
use tally_tests::soak::{Callers, Rng};
use tally_tests::{AgentProcess, CollectorProcess, Deployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_random_sigkills() {
    let (secs, seed) = tally_tests::soak::settings("soak");
    let mut rng = Rng(seed);

    let mut d = Deployment::new(&["api.convert", "api.render"], Some(""));
    let (grpc, http) = (d.collector.grpc.to_string(), d.collector.http.to_string());
    let mut agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    let listen = agent.listen.to_string();
    let url = agent.url();

    let callers = Callers::start(&[url.clone(), url.clone(), url], seed);

    let (mut agent_kills, mut collector_kills) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1500))).await;
        if rng.next_u64().is_multiple_of(2) {
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
    let (events, expected) = callers.finish().await;
    let status = agent.drain(240).await;
    let totals = d.totals().await;
    println!(
        "soak: seed {seed}: {events} events acknowledged, {agent_kills} agent and {collector_kills} collector SIGKILLs, totals {totals:?}"
    );
    assert!(
        agent_kills + collector_kills >= 3,
        "too few faults injected"
    );
    assert_eq!(totals, expected, "seed {seed}; agent status {status}");
    let (code, _, err) = tally_tests::agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "seed {seed}: {err}");
}
