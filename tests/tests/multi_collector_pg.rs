//! Several `tally-collector serve` processes on one PostgreSQL database (a real server
//! started from the machine's binaries): the same reports through three collectors count
//! once; an agent fails over between collectors and every receipt verifies; and a seeded
//! soak SIGKILLs collectors and restarts PostgreSQL itself while agents keep delivering.
//!
//! The soak's length and seed: `TALLY_SOAK_SECS` (default 20) and `TALLY_SOAK_SEED`, as
//! in the single-collector soak.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tally_proto::pb;
use tally_proto::pb::ingest_client::IngestClient;
use tally_proto::receipt::Outcome;
use tally_tests::cluster::{Cluster, cli, enroll_agent, run_args};
use tally_tests::pg::PgServer;
use tally_tests::soak::{Callers, Rng};
use tally_tests::{AgentProcess, TestAgent, agent_cmd, agent_json, receipts};

/// The same 500 reports, submitted concurrently through each of three collectors: each is
/// accepted exactly once across the cluster, every other copy is DUPLICATE, every receipt
/// verifies with the one collector key, and the totals (asked of every node) equal one
/// submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_reports_through_three_collectors_count_once() {
    let url = tally_tests::pg::shared().fresh_database().await;
    let c = Cluster::new(url, 3);
    let (_, lic) = c.customer_with_license(&["api.convert", "api.render"]);
    let license = lic["license_id"].as_str().unwrap();
    let mut agents: Vec<TestAgent> = (0..5).map(|_| TestAgent::new(license)).collect();
    for a in &agents {
        cli(
            &c.nodes[0],
            &c.url,
            &[
                "agents",
                "add",
                "--license",
                license,
                "--key",
                &hex::encode(a.key_bytes()),
            ],
        );
    }
    let mut reports = Vec::new();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..500u64 {
        let q = 1 + i % 7;
        *want.entry("api.convert".into()).or_default() += q;
        *want.entry("api.render".into()).or_default() += 2;
        reports.push(
            agents[(i % 5) as usize]
                .next(&[("api.convert", q), ("api.render", 2)])
                .1,
        );
    }
    let mut tasks = Vec::new();
    for (n, p) in c.procs.iter().enumerate() {
        let addr = format!("http://{}", p.grpc);
        // Each collector gets the batches in a different order.
        let mut batches: Vec<Vec<pb::SignedReport>> =
            reports.chunks(100).map(|b| b.to_vec()).collect();
        batches.rotate_left(n);
        tasks.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(addr).await.unwrap();
            let mut out = Vec::new();
            for b in batches {
                let digests: Vec<_> = b
                    .iter()
                    .map(|r| tally_proto::Digest::of(&r.report))
                    .collect();
                let resp = client
                    .submit(pb::SubmitRequest { reports: b })
                    .await
                    .unwrap()
                    .into_inner();
                out.push((digests, resp));
            }
            out
        }));
    }
    let mut accepted: HashMap<tally_proto::Digest, u32> = HashMap::new();
    let mut duplicate: HashMap<tally_proto::Digest, u32> = HashMap::new();
    for t in tasks {
        for (digests, resp) in t.await.unwrap() {
            for (d, r) in digests.into_iter().zip(receipts(resp, &c.collector_key)) {
                assert_eq!(r.report_digest, d, "receipts come in report order");
                match r.outcome {
                    Outcome::Accepted => *accepted.entry(d).or_default() += 1,
                    Outcome::Duplicate => *duplicate.entry(d).or_default() += 1,
                    other => panic!("{d}: {other:?} {} {}", r.reason, r.detail),
                }
            }
        }
    }
    for r in &reports {
        let d = tally_proto::Digest::of(&r.report);
        assert_eq!(
            (accepted.get(&d).copied(), duplicate.get(&d).copied()),
            (Some(1), Some(2)),
            "report {d}: accepted once and duplicate twice"
        );
    }
    for i in 0..3 {
        assert_eq!(c.totals(i).await, want, "totals asked of node {i}");
    }
}

/// An agent whose first collector is down delivers through the next one, and back again
/// when that one goes down; the receipts of both verify at the agent (`reports verify`)
/// and the totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_fails_over_and_receipts_from_any_collector_verify() {
    let url = tally_tests::pg::shared().fresh_database().await;
    let mut c = Cluster::new(url, 2);
    let (_, lic) = c.customer_with_license(&["api.convert"]);
    let urls: Vec<String> = c
        .procs
        .iter()
        .map(|p| format!("http://{}", p.grpc))
        .collect();
    let adata = c.tmp.path().join("agent");
    enroll_agent(&adata, &lic, &urls);
    let agent = AgentProcess::spawn(&adata, &run_args(&urls, "127.0.0.1:0"));
    let http = reqwest::Client::new();
    let mut sent = 0;
    let mut record = |q: u64| {
        sent += q;
        let (http, url) = (http.clone(), agent.url());
        async move {
            let r = http
                .post(format!("{url}/v1/events"))
                .json(&serde_json::json!({"metric": "api.convert", "quantity": q}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    record(3).await;
    agent.drain(60).await;
    // Node 0 down: delivery moves to node 1.
    c.procs[0].kill9();
    record(4).await;
    agent.drain(120).await;
    // Node 0 back, node 1 down: delivery moves back.
    c.restart(0);
    c.procs[1].kill9();
    record(5).await;
    agent.drain(120).await;
    c.restart(1);
    assert_eq!(
        c.totals(1).await,
        BTreeMap::from([("api.convert".to_string(), sent)])
    );
    let (code, out, err) = agent_cmd(&adata, &["reports", "verify"]);
    assert_eq!(code, 0, "reports verify: {out}{err}");
    // Every report has a receipt that verified with the collector key.
    let list = agent_json(&adata, &["reports", "list"]);
    let list = list.as_array().expect("reports list is an array");
    assert!(list.len() >= 3, "{list:?}");
    for r in list {
        assert_eq!(r["state"].as_str(), Some("delivered"), "{r}");
    }
}

/// The soak: three collectors on one PostgreSQL, three agents failing over between them
/// (each lists all three, in its own order), callers recording with idempotency keys;
/// collectors are SIGKILLed at random and PostgreSQL itself is crashed
/// (`pg_ctl stop -m immediate`) and restarted mid-run. Then everything drains: totals are
/// exact on every node, and each agent's `reports verify` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_three_collectors_sigkills_and_a_database_restart() {
    let (secs, seed) = tally_tests::soak::settings("pg soak");
    let mut rng = Rng(seed);
    // A private server: this test crashes it.
    let pg = PgServer::start();
    let url = pg.fresh_database().await;
    let mut c = Cluster::new(url, 3);
    let (_, lic) = c.customer_with_license(&["api.convert", "api.render"]);
    let urls: Vec<String> = c
        .procs
        .iter()
        .map(|p| format!("http://{}", p.grpc))
        .collect();

    let mut agents = Vec::new();
    let mut adirs = Vec::new();
    for i in 0..3 {
        let mut order = urls.clone();
        order.rotate_left(i);
        let adata = c.tmp.path().join(format!("agent{i}"));
        enroll_agent(&adata, &lic, &order);
        let a = AgentProcess::spawn(&adata, &run_args(&order, "127.0.0.1:0"));
        agents.push(a);
        adirs.push(adata);
    }

    let callers = Callers::start(
        &agents.iter().map(AgentProcess::url).collect::<Vec<_>>(),
        seed,
    );

    let (mut collector_kills, mut db_restarts) = (0, 0);
    let start = Instant::now();
    // The database is crashed once in the middle of the run, whatever the seed.
    let db_crash_at = Duration::from_secs(secs / 2);
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1500))).await;
        if db_restarts == 0 && start.elapsed() >= db_crash_at {
            pg.stop("immediate");
            db_restarts += 1;
            tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
            pg.start_again();
            continue;
        }
        let i = rng.range(0, 3) as usize;
        c.procs[i].kill9();
        collector_kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(0, 1000))).await;
        c.restart(i);
    }
    let (events, expected) = callers.finish().await;
    for a in &agents {
        a.drain(300).await;
    }
    let totals = c.totals(0).await;
    println!(
        "pg soak: seed {seed}: {events} events acknowledged, {collector_kills} collector SIGKILLs, \
         {db_restarts} PostgreSQL crash-restarts, totals {totals:?}"
    );
    assert!(
        collector_kills >= 3 && db_restarts == 1,
        "too few faults injected"
    );
    for i in 0..3 {
        assert_eq!(c.totals(i).await, expected, "seed {seed}: node {i}");
    }
    for adata in &adirs {
        let (code, out, err) = agent_cmd(adata, &["reports", "verify"]);
        assert_eq!(code, 0, "seed {seed}: reports verify: {out}{err}");
    }
}
