//! Failover to a synchronous standby: a PostgreSQL primary with a synchronous streaming
//! standby (both real servers from the machine's binaries), two collectors that name both
//! hosts in one URL (`…@primary,standby/db?target_session_attrs=read-write`), agents
//! submitting. Mid-run the primary is SIGKILLed with all its processes (a lost host) and the
//! standby promoted. The collectors find the new primary by themselves: neither is
//! restarted, every receipted report is on the new primary, the totals are exact on both
//! collectors and every agent's `reports verify` is clean.
//!
//! A synchronous standby is what makes this hold: a commit is acknowledged (and so a
//! receipt sent) only once the standby has it, so nothing an agent was told is stored can
//! be lost with the primary.
//!
//! Length and seed: `TALLY_SOAK_SECS` (default 20) and `TALLY_SOAK_SEED`; a long local soak
//! is the same test with a larger `TALLY_SOAK_SECS`.

use serde_json::Value;
use std::time::{Duration, Instant};
use tally_tests::cluster::{Cluster, enroll_agent, run_args};
use tally_tests::pg::PgServer;
use tally_tests::soak::{Callers, Rng};
use tally_tests::{AgentProcess, agent_cmd, agent_json};

/// `GET path` on collector `i`'s billing API with the admin token.
async fn get(c: &Cluster, i: usize, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("http://{}{path}", c.procs[i].http))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collectors_follow_a_promoted_synchronous_standby() {
    let (secs, seed) = tally_tests::soak::settings("pg failover");
    let mut rng = Rng(seed);
    let primary = PgServer::start();
    let one_host = primary.fresh_database().await;
    let db = one_host.rsplit('/').next().unwrap().to_string();
    // After the database exists: the base backup copies it.
    let standby = primary.standby();
    let url = format!(
        "postgres://tally@{},{}/{db}?target_session_attrs=read-write",
        primary.host_port(),
        standby.host_port()
    );
    let mut c = Cluster::new(url, 2);
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
        order.rotate_left(i % 2);
        let adata = c.tmp.path().join(format!("agent{i}"));
        enroll_agent(&adata, &lic, &order);
        agents.push(AgentProcess::spawn(
            &adata,
            &run_args(&order, "127.0.0.1:0"),
        ));
        adirs.push(adata);
    }
    let callers = Callers::start(
        &agents.iter().map(AgentProcess::url).collect::<Vec<_>>(),
        seed,
    );

    // The primary dies somewhere in the middle third of the run.
    let start = Instant::now();
    let kill_at = Duration::from_millis(rng.range(secs * 1000 / 3, secs * 2000 / 3));
    tokio::time::sleep(kill_at).await;
    let before = c.totals(0).await;
    primary.stop("kill");
    let down = Duration::from_millis(rng.range(500, 3000));
    tokio::time::sleep(down).await;
    standby.promote();
    let rest = Duration::from_secs(secs).saturating_sub(start.elapsed());
    tokio::time::sleep(rest).await;

    let (events, expected) = callers.finish().await;
    for a in &agents {
        a.drain(300).await;
    }
    println!(
        "pg failover: seed {seed}: primary SIGKILLed at {kill_at:?} with {before:?} counted, \
         standby promoted {down:?} later; {events} events acknowledged, totals {expected:?}"
    );
    assert!(
        !before.is_empty(),
        "seed {seed}: nothing was counted before the primary died; the test proved nothing"
    );

    // No collector was restarted: both processes are the ones started before the failover.
    for (i, p) in c.procs.iter_mut().enumerate() {
        let exited = p.child.try_wait().unwrap();
        assert!(exited.is_none(), "collector {i} exited: {exited:?}");
    }
    for i in 0..2 {
        assert_eq!(c.totals(i).await, expected, "seed {seed}: collector {i}");
    }
    // Every receipted report is on the new primary: each agent's reports all have receipts,
    // the collector's last seq for its key is the agent's last, and there is no gap.
    let listed = get(&c, 0, "/v1/agents").await;
    let listed = listed["agents"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("agents list: {listed}"));
    for adata in &adirs {
        let reports = agent_json(adata, &["reports", "list"]);
        let reports = reports.as_array().expect("reports list is an array");
        assert!(!reports.is_empty());
        for r in reports {
            assert_eq!(r["state"], "delivered", "seed {seed}: {r}");
        }
        let last = reports.iter().filter_map(|r| r["seq"].as_u64()).max();
        let key = agent_json(adata, &["reports", "show", "1"])["agent_key"]
            .as_str()
            .unwrap()
            .to_string();
        let at_collector = listed
            .iter()
            .find(|a| a["key"] == key.as_str())
            .unwrap_or_else(|| panic!("agent {key} is not listed: {listed:?}"));
        assert_eq!(
            at_collector["last_seq"].as_u64(),
            last,
            "seed {seed}: agent {key}"
        );
        let (code, out, err) = agent_cmd(adata, &["reports", "verify"]);
        assert_eq!(code, 0, "seed {seed}: reports verify: {out}{err}");
    }
    let anomalies = get(&c, 1, "/v1/anomalies").await;
    assert!(
        anomalies["anomalies"].as_array().is_some_and(Vec::is_empty),
        "seed {seed}: no gap, fork or quarantine expected: {anomalies}"
    );
}
