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

/// Waits (up to 60 s) until the serving collector signs with keyring `version`'s keys: its
/// `GetKeyrings` (served from the keys it holds) lists that version.
async fn serving(c: &CollectorProcess, version: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut client = tally_tests::connect(c.grpc).await;
    loop {
        let held = client
            .get_keyrings(tally_proto::pb::GetKeyringsRequest {
                after_version: version - 1,
            })
            .await
            .unwrap()
            .into_inner()
            .keyrings;
        if !held.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector did not take keyring {version}: {}",
            c.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    d.totals().await.values().sum()
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
    serving(&d.collector, 2).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record(&agent, 1).await;
    agent.drain(60).await;
    let signed_by_leaked = receipt_key_ids(&d.adata)
        .into_iter()
        .filter(|(_, k)| *k == leaked)
        .count();
    assert!(signed_by_leaked >= 2, "receipts before and after the cut");

    // Revoked from `cut`: the receipts it signed after are no longer good.
    let revoked = collector_json(&d.cdata, &["keys", "revoke", &leaked, "--from", &cut]);
    assert!(current(&revoked, "receipt")[0] != leaked, "{revoked}");
    serving(&d.collector, 2).await;
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
    // Every report whose receipt the key signed after the cut is named, not only the
    // first: at least the two recorded after it.
    let named: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("report seq ") && l.contains("revoked"))
        .collect();
    assert!(named.len() >= 2, "{out}");
    // `status` shows the same reports, as receipts to fetch again.
    let status = agent.status().await;
    let refetch: Vec<u64> = status["receipts_to_refetch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(refetch.len(), named.len(), "{status}");
    assert!(
        status["receipts_to_refetch"][0]["why"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{status}"
    );
    assert!(
        err.contains(&format!("{} reports do not verify", named.len())),
        "{err}"
    );
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
    serving(&d.collector, 2).await;
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

/// A vendor rotation with an agent running across it: the new keyring is signed by both
/// roots, so the agent follows it, and then a collector rotation signed by the new root
/// alone; a license issued after it is signed by the new key and enrolls; the old license
/// stays valid. A forged keyring put in the store (signed by the retired root only) is
/// refused: `keys list` names it and the collector keeps serving with the keys it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vendor_rotation_with_an_agent_across_it() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&agent, 2).await;
    agent.drain(60).await;
    let old = tally_proto::keys::read(&d.cdata.join("vendor.key")).unwrap();
    let old_id = tally_proto::keys::key_id(&old.verifying_key().to_bytes());
    // A license of the old root, enrolled only after both rotations below.
    let early = collector_json(
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
    let rotated = collector_json(&d.cdata, &["keys", "rotate", "--vendor"]);
    let vendors = current(&rotated, "vendor");
    assert_eq!(vendors.len(), 1, "{rotated}");
    assert_ne!(vendors[0], old_id);
    assert!(
        d.cdata
            .join(format!("vendor.key.retired-{old_id}"))
            .exists()
    );
    let new = tally_proto::keys::read(&d.cdata.join("vendor.key")).unwrap();
    assert_eq!(
        tally_proto::keys::key_id(&new.verifying_key().to_bytes()),
        vendors[0]
    );
    // Then a collector rotation, signed by the new root only: the agent must have followed
    // the vendor rotation to accept it.
    let after = collector_json(&d.cdata, &["keys", "rotate", "--collector"]);
    let receipt = current(&after, "receipt")[0].clone();
    serving(&d.collector, 3).await;
    record(&agent, 3).await;
    agent.drain(60).await;
    assert!(
        receipt_key_ids(&d.adata).iter().any(|(_, k)| *k == receipt),
        "the agent followed both keyrings"
    );
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // A license issued now is signed by the new vendor key and enrolls a new agent.
    let adata2 = second_agent(&d);
    let lic = std::fs::read_dir(d.cdata.join("licenses"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let text = std::fs::read(&lic).unwrap();
    let signed = tally_proto::license::parse_armored(&text).unwrap();
    assert_eq!(signed.key_id, vendors[0]);
    let a2 = AgentProcess::spawn(&adata2, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&a2, 4).await;
    a2.drain(60).await;
    // The old root's license still enrolls: the agent follows the chain from its key.
    let adata3 = d.tmp.path().join("agent3");
    agent_json(
        &adata3,
        &[
            "init",
            "--license",
            early["file"].as_str().unwrap(),
            "--token",
            early["enrollment_token"].as_str().unwrap(),
        ],
    );
    let a3 = AgentProcess::spawn(&adata3, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&a3, 5).await;
    a3.drain(60).await;
    let (code, out, err) = agent_cmd(&adata3, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(usage_total(&d).await, 14);

    // A forged next keyring, signed by the retired root alone.
    let mut forged = tally_proto::keyring::Keyring::first(Vec::new(), chrono::Utc::now());
    {
        let db = rusqlite::Connection::open(d.cdata.join("collector.db")).unwrap();
        let (version, bytes): (i64, Vec<u8>) = db
            .query_row(
                "SELECT version, signed FROM keyrings ORDER BY version DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let newest =
            <tally_proto::pb::SignedKeyring as prost::Message>::decode(bytes.as_slice()).unwrap();
        let k = <tally_proto::pb::Keyring as prost::Message>::decode(newest.keyring.as_slice())
            .unwrap();
        forged.version = version as u64 + 1;
        let thief = tally_proto::keys::generate();
        // Everything kept, plus a receipt key of the forger's.
        let mut keys: Vec<tally_proto::keyring::KeyEntry> = Vec::new();
        for e in k.keys {
            let public: [u8; 32] = e.public_key.as_slice().try_into().unwrap();
            let mut entry = tally_proto::keyring::KeyEntry::new(
                &ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap(),
                &[],
                tally_proto::time::from_timestamp(e.valid_from.as_ref().unwrap()).unwrap(),
            );
            entry.purposes = e
                .purposes
                .iter()
                .map(|p| match p {
                    1 => tally_proto::keyring::Purpose::Vendor,
                    2 => tally_proto::keyring::Purpose::Receipt,
                    _ => tally_proto::keyring::Purpose::Statement,
                })
                .collect();
            entry.valid_until = e
                .valid_until
                .as_ref()
                .and_then(tally_proto::time::from_timestamp);
            entry.revoked_at = e
                .revoked_at
                .as_ref()
                .and_then(tally_proto::time::from_timestamp);
            keys.push(entry);
        }
        keys.push(tally_proto::keyring::KeyEntry::new(
            &thief.verifying_key(),
            &[tally_proto::keyring::Purpose::Receipt],
            chrono::Utc::now(),
        ));
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        forged.keys = keys;
        let signed = forged.sign(&[&old]);
        db.execute(
            "INSERT INTO keyrings (version, signed, added_at) VALUES (?1, ?2, 0)",
            rusqlite::params![
                forged.version as i64,
                prost::Message::encode_to_vec(&signed)
            ],
        )
        .unwrap();
    }
    let (code, _, err) = collector_cmd(&d.cdata, &["keys", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("keyring {} does not verify", forged.version))
            && err.contains("not signed by any vendor key already trusted"),
        "{err}"
    );
    // The running collector refuses it too (an ERROR) and keeps signing with the keys it
    // had.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !d
        .collector
        .stderr()
        .contains("A newer keyring cannot be used here")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            d.collector.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    record(&agent, 1).await;
    agent.drain(60).await;
    assert!(
        d.collector
            .stderr()
            .contains("A newer keyring cannot be used here")
    );
}

/// A revocation of a key that no longer signs (an ended receipt key, revoked after the
/// fact) names no key the agent lacks: it still reaches the agent, which learns of the
/// newer keyring from every Submit's answer, and `reports verify` then refuses the
/// receipts that key signed after the revocation time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_of_an_ended_key_reaches_the_agent() {
    let d = Deployment::new(&["api.convert"], Some(""));
    let first = current(&collector_json(&d.cdata, &["keys", "list"]), "receipt")[0].clone();
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&agent, 2).await;
    agent.drain(60).await;
    let cut = tally_proto::time::rfc3339(chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record(&agent, 3).await;
    agent.drain(60).await;
    // A planned rotation: the agent follows it at its next receipt (an unknown key).
    collector_json(&d.cdata, &["keys", "rotate", "--collector"]);
    serving(&d.collector, 2).await;
    record(&agent, 4).await;
    agent.drain(60).await;
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // The first key, no longer current, is found to have leaked before `cut`: revoked.
    // The collector keeps signing with the current key, which the agent knows.
    let revoked = collector_json(&d.cdata, &["keys", "revoke", &first, "--from", &cut]);
    assert_eq!(revoked["version"], 3, "{revoked}");
    serving(&d.collector, 3).await;
    record(&agent, 5).await;
    agent.drain(60).await;
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_ne!(code, 0, "the revocation must reach the agent: {out}{err}");
    assert!(err.contains(&first) && err.contains("revoked"), "{err}");
}

/// Two collector nodes on PostgreSQL: a rotation made where only the other node's files
/// are, and this node not given the new keys. Once its old keys end it answers
/// `UNAVAILABLE` (naming what to do) rather than sign with an ended key; the agent keeps
/// its reports and delivers them as soon as the keys are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_the_new_keys_stops_signing_when_its_keys_end() {
    use tally_tests::cluster::{Cluster, cli, enroll_agent, run_args};
    let url = tally_tests::pg::shared().fresh_database().await;
    let mut c = Cluster::new(url, 2);
    c.procs[1].kill9();
    let (_, lic) = c.customer_with_license(&["api.convert"]);
    let collectors = vec![format!("http://{}", c.procs[0].grpc)];
    let adata = c.tmp.path().join("agent");
    enroll_agent(&adata, &lic, &collectors);
    let agent = AgentProcess::spawn(&adata, &run_args(&collectors, "127.0.0.1:0"));
    record(&agent, 2).await;
    agent.drain(60).await;

    // An overlap shorter than five refresh periods is refused: a node could sign with an
    // ended key before it noticed the rotation.
    let (code, _, err) = tally_tests::collector_cmd(
        &c.nodes[1],
        &[
            "--database",
            &c.url,
            "keys",
            "rotate",
            "--collector",
            "--overlap",
            "9s",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--overlap: at least 10s"), "{err}");
    // Rotated on node 1's files, with the shortest overlap; node 0 never gets the new keys.
    cli(
        &c.nodes[1],
        &c.url,
        &["keys", "rotate", "--collector", "--overlap", "10s"],
    );
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    record(&agent, 3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = agent.status().await;
        let err = s["delivery"]["last_error"].as_str().unwrap_or_default();
        if err.contains("may not sign now") {
            assert!(
                err.contains("Unavailable") || err.contains("unavailable"),
                "{err}"
            );
            assert!(s["reports"]["pending"].as_u64().unwrap_or(0) > 0, "{s}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 0 must refuse to sign with its ended key: {s}\n{}",
            c.procs[0].stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 0 gets the keys: it takes them within seconds and the outbox drains.
    for e in std::fs::read_dir(c.nodes[1].join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), c.nodes[0].join("keys").join(e.file_name())).unwrap();
    }
    agent.drain(60).await;
    assert_eq!(c.totals(0).await.values().sum::<u64>(), 5);
    let (code, out, err) = agent_cmd(&adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        c.procs[0].stderr().contains("ERROR"),
        "node 0 logged that it lacks the keys"
    );
    // The ended keys' private files leave the serving node (their public keys stay in the
    // keyring); node 1, not serving, still has them until it serves.
    let old_receipt = c.nodes[0].join("keys").join(format!(
        "{}.key",
        tally_proto::keys::key_id(&c.collector_key.to_bytes())
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while old_receipt.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} stays",
            old_receipt.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let remaining = std::fs::read_dir(c.nodes[0].join("keys")).unwrap().count();
    assert_eq!(remaining, 2, "the current receipt and statement keys stay");
    assert!(
        c.nodes[1]
            .join("keys")
            .join(old_receipt.file_name().unwrap())
            .exists()
    );
}

/// A month closed after a collector rotation the agent has not seen: the statement names a
/// statement key the agent does not know, so `statements verify` fetches the newer keyrings
/// from its collector and then checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_by_a_key_the_agent_never_saw_is_checked_after_fetching_keyrings() {
    use tally_collector::calendar::{month_label, month_of};
    let tmp = tempfile::tempdir().unwrap();
    let (cdata, adata) = (tmp.path().join("collector"), tmp.path().join("agent"));
    let admin = collector_json(&cdata, &["init"])["admin_token"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = collector_json(&cdata, &["customers", "add", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let collector = CollectorProcess::spawn_with_args(
        &cdata,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--close-grace",
            "off",
        ],
    );
    let endpoint = format!("http://{}", collector.grpc);
    let not_before = tally_proto::time::rfc3339(chrono::Utc::now() - chrono::Duration::days(40));
    let lic = collector_json(
        &cdata,
        &[
            "licenses",
            "issue",
            "--customer",
            &customer,
            "--metric",
            "api.convert",
            "--expires",
            "2099-01-01",
            "--not-before",
            &not_before,
            "--endpoint",
            &endpoint,
        ],
    );
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
    let this_month = month_of(chrono::Utc::now().timestamp());
    let mut agent = AgentProcess::spawn_at(
        &adata,
        &["--listen", "127.0.0.1:0", "--interval", "1s"],
        chrono::DateTime::from_timestamp(this_month - 3 * 86_400, 0).unwrap(),
    );
    record(&agent, 7).await;
    agent.drain(60).await;
    agent.kill9();
    // Rotated while the agent is stopped; the month is closed with the new statement key.
    let rotated = collector_json(&cdata, &["keys", "rotate", "--collector"]);
    serving(&collector, 2).await;
    let period = month_label(this_month - 1);
    collector_json(&cdata, &["periods", "close", &period]);
    let bytes = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/statements/{customer}/{period}",
            collector.http
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let new_statement_key = current(&rotated, "statement")[0].clone();
    assert_eq!(doc["key_id"], new_statement_key.as_str(), "{doc}");
    let file = tmp.path().join("statement.json");
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, err) = agent_cmd(&adata, &["statements", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches my receipts"), "{out}");
}

/// A collector that is not the vendor's (or a man in the middle): it answers every report
/// with a receipt signed by its own key and serves a keyring listing that key, forged.
struct ForgedCollector {
    keyring: tally_proto::pb::SignedKeyring,
    receipt_key: ed25519_dalek::SigningKey,
}

#[tonic::async_trait]
impl tally_proto::pb::ingest_server::Ingest for ForgedCollector {
    async fn enroll(
        &self,
        _: tonic::Request<tally_proto::pb::EnrollRequest>,
    ) -> Result<tonic::Response<tally_proto::pb::EnrollResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("forger"))
    }

    async fn submit(
        &self,
        request: tonic::Request<tally_proto::pb::SubmitRequest>,
    ) -> Result<tonic::Response<tally_proto::pb::SubmitResponse>, tonic::Status> {
        let now = chrono::Utc::now();
        let receipts = request
            .into_inner()
            .reports
            .iter()
            .map(|r| {
                tally_proto::receipt::ReceiptBody {
                    report_digest: tally_proto::Digest::of(&r.report),
                    outcome: tally_proto::receipt::Outcome::Accepted,
                    reason: String::new(),
                    detail: String::new(),
                    received_at: now,
                    lease_until: Some(now + chrono::Duration::days(365)),
                    credits: Vec::new(),
                }
                .sign(&self.receipt_key)
            })
            .collect();
        Ok(tonic::Response::new(tally_proto::pb::SubmitResponse {
            receipts,
            keyring_version: 2,
        }))
    }

    async fn get_keyrings(
        &self,
        _: tonic::Request<tally_proto::pb::GetKeyringsRequest>,
    ) -> Result<tonic::Response<tally_proto::pb::GetKeyringsResponse>, tonic::Status> {
        Ok(tonic::Response::new(tally_proto::pb::GetKeyringsResponse {
            keyrings: vec![self.keyring.clone()],
        }))
    }

    async fn rotate_agent_key(
        &self,
        _: tonic::Request<tally_proto::pb::RotateAgentKeyRequest>,
    ) -> Result<tonic::Response<tally_proto::pb::RotateAgentKeyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("forger"))
    }
}

/// An agent sent to a forged collector: whether its keyring is signed by a key the agent
/// never trusted, or is a vendor rotation signed by the new "vendor" key alone, the agent
/// refuses it and every receipt it certifies; its reports stay in the outbox and go to the
/// real collector later, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_keyring_is_refused_by_the_agent() {
    use tally_proto::keyring::{KeyEntry, Keyring, Purpose};
    let d = Deployment::new(&["api.convert"], Some(""));
    let listed = collector_json(&d.cdata, &["keys", "list"]);
    let vendor_hex = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["purposes"] == serde_json::json!(["vendor"]))
        .unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let vendor = tally_proto::signing::verifying_key(&hex::decode(vendor_hex).unwrap()).unwrap();
    let mut client = tally_tests::connect(d.collector.grpc).await;
    let v1_signed = client
        .get_keyrings(tally_proto::pb::GetKeyringsRequest { after_version: 0 })
        .await
        .unwrap()
        .into_inner()
        .keyrings
        .remove(0);
    let v1 = Keyring::verify_first(&v1_signed, &vendor).unwrap();
    let now = chrono::Utc::now();
    let receipt_key = tally_proto::keys::generate();
    let forger = tally_proto::keys::generate();
    let forged = |end_old_vendor: bool| {
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.issued_at = now;
        if end_old_vendor {
            for k in &mut v2.keys {
                if k.has(Purpose::Vendor) {
                    k.valid_until = Some(now);
                }
            }
        }
        v2.keys.push(KeyEntry::new(
            &forger.verifying_key(),
            &[Purpose::Vendor],
            now,
        ));
        v2.keys.push(KeyEntry::new(
            &receipt_key.verifying_key(),
            &[Purpose::Receipt],
            now,
        ));
        v2.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        v2.sign(&[&forger])
    };
    let mut sent = 0;
    for (what, keyring) in [
        ("signed by a key the agent never trusted", forged(false)),
        (
            "a vendor rotation signed by the new key alone",
            forged(true),
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(tally_proto::pb::ingest_server::IngestServer::new(
                    ForgedCollector {
                        keyring,
                        receipt_key: receipt_key.clone(),
                    },
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let agent = AgentProcess::spawn(
            &d.adata,
            &[
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "1s",
                "--collector",
                &format!("http://{addr}"),
            ],
        );
        record(&agent, 3).await;
        sent += 3;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            let s = agent.status().await;
            if s["delivery"]["failures"].as_u64().unwrap_or(0) > 0 {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let err = status["delivery"]["last_error"]
            .as_str()
            .unwrap_or_default();
        assert!(err.contains("newer keyring"), "{what}: {status}");
        assert!(status["reports"]["delivered"].is_null(), "{what}: {status}");
        drop(agent);
        server.abort();
    }
    // The keyring the agent holds is still the vendor's: the real collector's receipts
    // verify and every report is counted once.
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    agent.drain(60).await;
    assert_eq!(usage_total(&d).await, sent);
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
