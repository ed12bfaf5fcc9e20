//! Keys with real processes: a collector rotation (`keys rotate --collector`) with an agent
//! running across it and another offline during it; a revocation after a leak, backdated,
//! that `reports verify` then points at; a collector serving, ingesting and closing a month
//! without the vendor key, and `licenses issue` refused there.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tally_tests::{
    AgentProcess, CollectorProcess, Deployment, agent_cmd, agent_json, collector_cmd,
    collector_json,
};

async fn record(agent: &AgentProcess, q: u64) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", agent.url()))
        .json(&serde_json::json!({"metric": "api.convert", "quantity": q}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// The key id of every stored receipt of an agent, by seq.
fn receipt_key_ids(adata: &Path) -> Vec<(u64, String)> {
    let db = rusqlite::Connection::open(adata.join("agent.db")).unwrap();
    let mut st = db
        .prepare(
            "SELECT seq, receipt_key_id FROM reports WHERE receipt_body IS NOT NULL ORDER BY seq",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn current(keys: &Value, purpose: &str) -> Vec<String> {
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| {
            k["current"] == true
                && k["purposes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p == purpose)
        })
        .map(|k| k["key_id"].as_str().unwrap().to_string())
        .collect()
}

async fn usage_total(d: &Deployment) -> u64 {
    let v: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/usage?granularity=month",
            d.collector.http
        ))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quantity"].as_u64().unwrap())
        .sum()
}

/// A second agent enrolled on the same license, not running yet.
fn second_agent(d: &Deployment) -> std::path::PathBuf {
    let lic = collector_json(
        &d.cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &d.customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--endpoint",
            &format!("http://{}", d.collector.grpc),
        ],
    );
    let adata = d.tmp.path().join("agent2");
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
    adata
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_rotation_with_agents_across_it() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let offline = second_agent(&d);
    let before = collector_json(&d.cdata, &["keys", "list"]);
    let old_receipt = current(&before, "receipt");
    assert_eq!(old_receipt.len(), 1, "{before}");
    let args = ["--listen", "127.0.0.1:0", "--interval", "1s"];
    let agent = AgentProcess::spawn(&d.adata, &args);
    let mut sent = 0;
    for q in [3, 4] {
        record(&agent, q).await;
        sent += q;
    }
    agent.drain(60).await;
    // The offline agent delivers once, before the rotation, then stops.
    let a2 = AgentProcess::spawn(&offline, &args);
    record(&a2, 5).await;
    sent += 5;
    a2.drain(60).await;
    drop(a2);

    let rotated = collector_json(&d.cdata, &["keys", "rotate", "--collector"]);
    let new_receipt = current(&rotated, "receipt");
    assert_eq!(new_receipt.len(), 1, "{rotated}");
    assert_ne!(new_receipt, old_receipt);
    assert_eq!(rotated["version"], 2);
    // The serving collector picks the new keyring up by itself (no restart).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for q in [6, 7] {
        record(&agent, q).await;
        sent += q;
    }
    agent.drain(60).await;
    // The offline agent comes back after the rotation: it follows the keyring.
    let a2 = AgentProcess::spawn(&offline, &args);
    record(&a2, 8).await;
    sent += 8;
    a2.drain(60).await;

    assert_eq!(usage_total(&d).await, sent, "nothing lost, nothing twice");
    for (adata, who) in [(&d.adata, "running agent"), (&offline, "offline agent")] {
        let ids = receipt_key_ids(adata);
        assert!(
            ids.iter().any(|(_, k)| *k == old_receipt[0])
                && ids.iter().any(|(_, k)| *k == new_receipt[0]),
            "{who}: receipts by both keys: {ids:?}"
        );
        let (code, out, err) = agent_cmd(adata, &["reports", "verify"]);
        assert_eq!(code, 0, "{who}: {out}{err}");
        for r in agent_json(adata, &["reports", "list"]).as_array().unwrap() {
            assert_eq!(r["state"], "delivered", "{who}: {r}");
        }
    }
    // The old receipt key stays listed, ended, valid for what it signed.
    let old = rotated["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == old_receipt[0].as_str())
        .unwrap();
    assert!(
        old["valid_until"].is_string() && old["revoked_at"].is_null(),
        "{old}"
    );
}

/// A leaked receipt key, revoked from a time before the agent's last receipts: the
/// collector signs with new keys at once; the agent, once it has the new keyring, refuses
/// those receipts, and `reports verify` names the reports to fetch receipts for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_receipt_key_is_refused_from_its_revocation_on() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let leaked = current(&collector_json(&d.cdata, &["keys", "list"]), "receipt")[0].clone();
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&agent, 2).await;
    agent.drain(60).await;
    let cut = tally_proto::time::rfc3339(chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record(&agent, 3).await;
    agent.drain(60).await;
    let signed_by_leaked = receipt_key_ids(&d.adata)
        .into_iter()
        .filter(|(_, k)| *k == leaked)
        .count();
    assert!(signed_by_leaked >= 2, "receipts before and after the cut");

    // Revoked from `cut`: the receipts it signed after are no longer good.
    let revoked = collector_json(&d.cdata, &["keys", "revoke", &leaked, "--from", &cut]);
    assert!(current(&revoked, "receipt")[0] != leaked, "{revoked}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The next receipts come from the new key; the agent follows the keyring.
    record(&agent, 4).await;
    agent.drain(60).await;
    let ids = receipt_key_ids(&d.adata);
    assert!(ids.iter().any(|(_, k)| *k != leaked), "{ids:?}");
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_ne!(
        code, 0,
        "a receipt by a revoked key must not verify: {out}{err}"
    );
    assert!(err.contains(&leaked) && err.contains("revoked"), "{err}");
    // Revoking a vendor key, a key not in the keyring, or in the future: refused.
    for (args, needle) in [
        (
            vec!["keys", "revoke", "0000000000000000"],
            "not in the keyring",
        ),
        (
            vec!["keys", "revoke", &leaked, "--from", "2999-01-01"],
            "starts now or earlier",
        ),
    ] {
        let (code, _, err) = collector_cmd(&d.cdata, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The vendor key kept off the collector: it serves, ingests and closes months with its
/// online keys; `licenses issue` there fails naming the file it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_without_the_vendor_key() {
    let mut d = Deployment::new(&["api.convert"], Some(""));
    let offline_store = d.tmp.path().join("vendor.key.offline");
    d.collector.kill9();
    std::fs::rename(d.cdata.join("vendor.key"), &offline_store).unwrap();
    let (code, out, err) = collector_cmd(&d.cdata, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    d.collector = CollectorProcess::spawn(&d.cdata);
    // Re-enroll is not needed: the agent's license names the collector it enrolled with;
    // point it at the new address.
    let agent = AgentProcess::spawn(
        &d.adata,
        &[
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--collector",
            &format!("http://{}", d.collector.grpc),
        ],
    );
    record(&agent, 9).await;
    agent.drain(60).await;
    assert_eq!(usage_total(&d).await, 9);
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // Closing a month signs with the statement key: no vendor key needed.
    let closed = collector_json(&d.cdata, &["periods", "close", "2026-01"]);
    assert!(closed.is_object(), "{closed}");
    let (code, _, err) = collector_cmd(
        &d.cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &d.customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains("vendor.key is missing")
            && err.contains("licenses issue"),
        "{err}"
    );
    let (code, _, err) = collector_cmd(&d.cdata, &["keys", "rotate", "--collector"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("vendor.key is missing"), "{err}");
}

/// A deployment and an agent made before keyrings (simulated: the online keys and the
/// keyring taken away, the agent holding no keyring): `serve` writes a first keyring in
/// which the one vendor key signs everything, so the agent's receipts keep the key it
/// knows; after `keys rotate --collector` the agent follows the keyring to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_from_before_keyrings_keeps_its_one_key_until_rotated() {
    let mut d = Deployment::new(&["api.convert"], Some(""));
    d.collector.kill9();
    std::fs::remove_dir_all(d.cdata.join("keys")).unwrap();
    {
        let db = rusqlite::Connection::open(d.cdata.join("collector.db")).unwrap();
        db.execute("DELETE FROM keyrings", []).unwrap();
        let a = rusqlite::Connection::open(d.adata.join("agent.db")).unwrap();
        a.execute("DELETE FROM meta WHERE key = 'keyrings'", [])
            .unwrap();
    }
    d.collector = CollectorProcess::spawn(&d.cdata);
    let vendor = tally_proto::keys::read(&d.cdata.join("vendor.key")).unwrap();
    let vendor_id = tally_proto::keys::key_id(&vendor.verifying_key().to_bytes());
    let first = collector_json(&d.cdata, &["keys", "list"]);
    assert_eq!(first["version"], 1, "{first}");
    assert_eq!(
        current(&first, "receipt"),
        vec![vendor_id.clone()],
        "{first}"
    );
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "1s",
        "--collector",
        &format!("http://{}", d.collector.grpc),
    ];
    let agent = AgentProcess::spawn(&d.adata, &args);
    record(&agent, 2).await;
    agent.drain(60).await;
    assert!(
        receipt_key_ids(&d.adata)
            .iter()
            .all(|(_, k)| *k == vendor_id),
        "receipts by the one key"
    );
    let rotated = collector_json(&d.cdata, &["keys", "rotate", "--collector"]);
    let new_receipt = current(&rotated, "receipt")
        .into_iter()
        .find(|k| *k != vendor_id)
        .expect("a new receipt key");
    tokio::time::sleep(Duration::from_secs(4)).await;
    record(&agent, 3).await;
    agent.drain(60).await;
    assert!(
        receipt_key_ids(&d.adata)
            .iter()
            .any(|(_, k)| *k == new_receipt),
        "the agent followed the keyring"
    );
    assert_eq!(usage_total(&d).await, 5);
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
