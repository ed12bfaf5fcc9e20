//! An agent key rotation with real processes: `tally-agent keys rotate` while the agent runs
//! (its clock in the last days of the previous month, libfaketime) hands its chain to a new
//! key with no gap and no fork; the collector records the rotation before the new key's
//! reports; every report, receipt and the closed statement verify, the statement's line
//! names both keys and the customer's audit needs both in its inventory. An adversary who
//! kept the old key cannot sign past the hand-over or hand the chain over twice, and a
//! revoked agent key is refused (`agent_revoked`).

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use tally_collector::calendar::{month_label, month_of};
use tally_proto::pb;
use tally_proto::report::{Counter, Report};
use tally_tests::{
    AgentProcess, CollectorProcess, agent_cmd, agent_cmd_env, agent_json, collector_cmd,
    collector_json,
};

async fn record(agent: &AgentProcess, quantities: &[u64]) {
    let http = reqwest::Client::new();
    for q in quantities {
        let r = http
            .post(format!("{}/v1/events", agent.url()))
            .json(&json!({"metric": "api.convert", "quantity": q}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        // Spread the events over windows (interval 1 s).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    agent.drain(60).await;
}

/// A report the agent never made, signed by `key`, continuing after the agent's newest.
fn forged(
    license: &str,
    key: &ed25519_dalek::SigningKey,
    seq: u64,
    at: chrono::DateTime<Utc>,
) -> pb::SignedReport {
    Report {
        license_id: license.to_string(),
        agent_key: key.verifying_key().to_bytes(),
        seq,
        prev_digest: Some(tally_proto::Digest([7; 32])),
        window_start: at,
        window_end: at + Duration::seconds(1),
        counters: vec![Counter {
            metric: "api.convert".into(),
            quantity: 1000,
        }],
        created_at: at + Duration::seconds(1),
        agent_version: "forged".into(),
    }
    .sign(key)
}

async fn submit(
    client: &mut pb::ingest_client::IngestClient<tonic::transport::Channel>,
    receipt_key: &ed25519_dalek::VerifyingKey,
    report: pb::SignedReport,
) -> tally_proto::receipt::ReceiptBody {
    let resp = client
        .submit(pb::SubmitRequest {
            reports: vec![report],
        })
        .await
        .unwrap()
        .into_inner();
    tally_tests::receipts(resp, receipt_key).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_key_rotation_with_the_agent_running_across_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (cdata, adata) = (tmp.path().join("collector"), tmp.path().join("agent"));
    let init = collector_json(&cdata, &["init"]);
    let admin = init["admin_token"].as_str().unwrap().to_string();
    let receipt_key = tally_proto::signing::verifying_key(
        &hex::decode(init["collector_key"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
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
    let not_before = tally_proto::time::rfc3339(Utc::now() - Duration::days(40));
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
    let license_id = lic["license_id"].as_str().unwrap().to_string();
    agent_json(
        &adata,
        &[
            "init",
            "--license",
            lic["file"].as_str().unwrap(),
            "--token",
            lic["enrollment_token"].as_str().unwrap(),
            "--collector",
            &endpoint,
        ],
    );
    let customer_token = collector_json(
        &cdata,
        &[
            "tokens",
            "create",
            "--role",
            &format!("customer:{customer}"),
        ],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The adversary's copy of the old key, taken before the rotation.
    let old_key = tally_proto::keys::read(&adata.join("agent.key")).unwrap();

    let this_month = month_of(Utc::now().timestamp());
    let day =
        |d: i64| chrono::DateTime::from_timestamp(this_month - d * 86_400 + 12 * 3600, 0).unwrap();
    let period = month_label(this_month - 1);
    let mut agent = AgentProcess::spawn_at(
        &adata,
        &["--listen", "127.0.0.1:0", "--interval", "1s"],
        day(3),
    );
    record(&agent, &[5, 7]).await;

    // Rotate while the agent runs.
    let rotated = agent_json(&adata, &["keys", "rotate"]);
    let (old_id, new_id) = (
        rotated["old_key_id"].as_str().unwrap().to_string(),
        rotated["new_key_id"].as_str().unwrap().to_string(),
    );
    let from_seq = rotated["from_seq"].as_u64().unwrap();
    assert_eq!(
        old_id,
        tally_proto::keys::key_id(&old_key.verifying_key().to_bytes())
    );
    assert!(from_seq >= 3, "{rotated}");
    let new_key = tally_proto::keys::read(&adata.join("agent.key")).unwrap();
    assert_eq!(
        new_id,
        tally_proto::keys::key_id(&new_key.verifying_key().to_bytes())
    );
    let leftovers: Vec<_> = std::fs::read_dir(&adata)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent.key."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(adata.join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    record(&agent, &[11, 13]).await;

    // The agent signs with the new key from `from_seq` on; nothing lost, no gap, no fork.
    let status = agent.status().await;
    assert_eq!(status["key_id"], new_id.as_str(), "{status}");
    assert_eq!(status["earlier_key_ids"], json!([old_id]), "{status}");
    let reports = agent_json(&adata, &["reports", "list"]);
    let reports = reports.as_array().unwrap();
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
        assert_eq!(r["state"], "delivered", "{r}");
    }
    assert!(
        reports.len() as u64 > from_seq,
        "the new key signed reports"
    );
    for (seq, key) in [(from_seq - 1, &old_key), (from_seq, &new_key)] {
        let shown = agent_json(&adata, &["reports", "show", &seq.to_string()]);
        assert_eq!(
            shown["agent_key"],
            hex::encode(key.verifying_key().to_bytes()),
            "seq {seq}: {shown}"
        );
    }
    let (code, out, err) = agent_cmd(&adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 agent keys"), "{out}");
    let keys = agent_json(&adata, &["keys", "list"]);
    let listed = keys["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{keys}");
    assert_eq!(listed[0]["until_seq"], from_seq);
    assert_eq!(listed[1]["current"], true);
    assert_eq!(listed[1]["rotation"]["state"], "recorded", "{keys}");
    let http = reqwest::Client::new();
    let anomalies: Value = http
        .get(format!("http://{}/v1/anomalies", collector.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anomalies["anomalies"], json!([]), "{anomalies}");
    let agents = collector_json(&cdata, &["agents", "list"]);
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(1),
        "one agent: {agents}"
    );

    // The adversary with the old key: past the hand-over it signs nothing, and it cannot
    // hand the chain over a second time.
    let mut client = tally_tests::connect(collector.grpc).await;
    let last = reports.len() as u64;
    let body = submit(
        &mut client,
        &receipt_key,
        forged(&license_id, &old_key, last + 1, day(1)),
    )
    .await;
    assert_eq!(
        (body.outcome.as_str(), body.reason.as_str()),
        ("refused", "agent_revoked"),
        "{}",
        body.detail
    );
    let other = tally_proto::keys::generate();
    let again = tally_proto::agent_key::Rotation {
        license_id: license_id.clone(),
        old_key: old_key.verifying_key().to_bytes(),
        new_key: other.verifying_key().to_bytes(),
        from_seq: last + 1,
        created_at: Utc::now(),
    };
    let status = client
        .rotate_agent_key(pb::RotateAgentKeyRequest {
            rotation: Some(again.sign(&old_key, &other)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("already handed the chain on"),
        "{status:?}"
    );
    // A rotation signed by the old key alone (the new key's signature forged).
    let mut half = again.sign(&old_key, &other);
    half.new_signature = vec![0; 64];
    let status = client
        .rotate_agent_key(pb::RotateAgentKeyRequest {
            rotation: Some(half),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The month closes: one line, naming both keys, that the agent and the customer check.
    agent.kill9();
    collector_json(&cdata, &["periods", "close", &period]);
    let (code, doc, err) = {
        let r = http
            .get(format!(
                "http://{}/v1/statements/{customer}/{period}",
                collector.http
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec(), ())
    };
    assert_eq!(code, 200, "{err:?}");
    let statement: Value = serde_json::from_slice(&doc).unwrap();
    let line = &statement["agents"][0];
    assert_eq!(
        statement["agents"].as_array().unwrap().len(),
        1,
        "{statement}"
    );
    assert_eq!(line["key_ids"], json!([old_id, new_id]), "{statement}");
    assert_eq!(line["key_id"], new_id.as_str());
    assert_eq!(statement["lines"][0]["used"], 36, "{statement}");
    let file = tmp.path().join("statement.json");
    std::fs::write(&file, &doc).unwrap();
    let (code, out, err) = agent_cmd(&adata, &["statements", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches my receipts"), "{out}");
    let api = format!("http://{}", collector.http);
    let audit = |inventory: &str| {
        let inv = tmp.path().join("inventory.txt");
        std::fs::write(&inv, inventory).unwrap();
        agent_cmd_env(
            &adata,
            &[
                "statements",
                "audit",
                "--fetch",
                &period,
                "--api",
                &api,
                "--agents",
                inv.to_str().unwrap(),
            ],
            &[("TALLY_API_TOKEN", Some(&customer_token))],
        )
    };
    let (code, out, err) = audit(&format!("{old_id}\n{new_id}\n"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches"), "{out}");
    // An inventory that forgot the old key: the reports it signed are a phantom's.
    let (code, out, err) = audit(&format!("{new_id}\n"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        format!("{out}{err}").contains(&format!("key id {old_id} is not one of our agents")),
        "{out}{err}"
    );

    // The vendor revokes the new key (a leak), on a node without the vendor key (an agent
    // key is the collector's to refuse): not from a future time; from a minute ago, its
    // later reports are refused.
    std::fs::rename(
        cdata.join("vendor.key"),
        tmp.path().join("vendor.key.offline"),
    )
    .unwrap();
    let (code, _, err) =
        collector_cmd(&cdata, &["keys", "revoke", &new_id, "--from", "2999-01-01"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("starts now or earlier"), "{err}");
    let from = tally_proto::time::rfc3339(Utc::now() - Duration::minutes(1));
    let (code, out, err) = collector_cmd(&cdata, &["keys", "revoke", &new_id, "--from", &from]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("revoked agent key {new_id}")),
        "{out}"
    );
    let body = submit(
        &mut client,
        &receipt_key,
        forged(
            &license_id,
            &new_key,
            last + 1,
            Utc::now() - Duration::hours(1),
        ),
    )
    .await;
    assert_eq!(
        (body.outcome.as_str(), body.reason.as_str()),
        ("refused", "agent_revoked"),
        "{}",
        body.detail
    );
    assert!(body.detail.contains("revoked"), "{}", body.detail);
    let (code, _, err) = collector_cmd(&cdata, &["keys", "revoke", &new_id]);
    assert_eq!(code, 2, "a second revocation from later: {err}");
}

/// An air-gapped site (enrolled by hand, never online) across a collector rotation and an
/// agent key rotation: its export carries the rotation, the vendor's import records it
/// before the new key's reports, and the receipt bundle carries the keyrings, so the site
/// checks receipts signed by keys it never heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_air_gapped_site_across_both_rotations() {
    use tally_tests::Deployment;
    let d = Deployment::new(&["api.convert"], None);
    let offline = agent_json(
        &d.adata,
        &["init", "--offline", "--license", &d.license_file],
    );
    let key = offline["agent_key"].as_str().unwrap().to_string();
    collector_json(
        &d.cdata,
        &["agents", "add", "--license", &d.license, "--key", &key],
    );
    let unreachable = [
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "1s",
        "--collector",
        "http://127.0.0.1:9",
    ];
    let http = reqwest::Client::new();
    let mut expected = 0;
    let mut record_offline = async |quantities: &[u64]| {
        let mut agent = AgentProcess::spawn(&d.adata, &unreachable);
        for q in quantities {
            let r = http
                .post(format!("{}/v1/events", agent.url()))
                .json(&json!({"metric": "api.convert", "quantity": q}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            expected += q;
        }
        http.post(format!("{}/v1/flush", agent.url()))
            .send()
            .await
            .unwrap();
        agent.kill9();
    };
    record_offline(&[2, 3]).await;
    // The vendor rotates its online keys; the site rotates its agent key. Neither side
    // hears of the other's rotation but through the files.
    collector_json(&d.cdata, &["keys", "rotate", "--collector"]);
    let rotated = agent_json(&d.adata, &["keys", "rotate"]);
    record_offline(&[5]).await;

    let bundle = d.tmp.path().join("reports.bundle");
    let receipts = d.tmp.path().join("receipts.bundle");
    let exported = agent_json(&d.adata, &["export", "--out", bundle.to_str().unwrap()]);
    let n = exported["reports"].as_u64().unwrap();
    let imported = collector_json(
        &d.cdata,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--receipts-out",
            receipts.to_str().unwrap(),
        ],
    );
    assert_eq!(
        imported["rotations"][0]["outcome"], "recorded",
        "{imported}"
    );
    assert_eq!(
        imported["rotations"][0]["new_key_id"], rotated["new_key_id"],
        "{imported}"
    );
    assert_eq!(
        imported["counts"]["accepted"].as_u64(),
        Some(n),
        "{imported}"
    );
    assert_eq!(d.totals().await.get("api.convert"), Some(&expected));
    let stored = agent_json(&d.adata, &["import-receipts", receipts.to_str().unwrap()]);
    assert_eq!(stored["stored"].as_u64(), Some(n), "{stored}");
    let (code, out, err) = agent_cmd(&d.adata, &["reports", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 agent keys"), "{out}");
    let keys = agent_json(&d.adata, &["keys", "list"]);
    assert_eq!(keys["keys"][1]["rotation"]["state"], "recorded", "{keys}");
    // The same bundle again: the rotation is recognized, every report a duplicate.
    let again = collector_json(&d.cdata, &["import", bundle.to_str().unwrap()]);
    assert_eq!(
        again["rotations"][0]["outcome"], "already_recorded",
        "{again}"
    );
    assert_eq!(again["counts"]["duplicate"].as_u64(), Some(n), "{again}");
}

/// Bad input to the agent key commands and RPC: one `error:` line, exit 2, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_to_agent_key_rotation_changes_nothing() {
    use tally_tests::Deployment;
    let d = Deployment::new(&["api.convert"], Some(""));
    let one_error = |code: i32, err: &str, needle: &str| {
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{err}"
        );
        assert!(err.contains(needle), "{err}");
    };
    // Not an agent directory.
    let (code, _, err) = agent_cmd(&d.tmp.path().join("nothing"), &["keys", "rotate"]);
    one_error(code, &err, "not an initialized agent directory");
    // Before the key has signed a report: a key that signs nothing is refused.
    let (code, _, err) = agent_cmd(&d.adata, &["keys", "rotate"]);
    one_error(code, &err, "has not signed a report yet");
    let leftovers = std::fs::read_dir(&d.adata)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent.key."))
        .count();
    assert_eq!(leftovers, 0, "the refused rotation's key file is gone");
    let keys = agent_json(&d.adata, &["keys", "list"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");
    // The collector: a revocation time that is not a time; an unknown key id.
    let status = agent_json(&d.adata, &["status"]);
    let key_id = status["key_id"].as_str().unwrap();
    let (code, _, err) = collector_cmd(&d.cdata, &["keys", "revoke", key_id, "--from", "soon"]);
    one_error(code, &err, "--from");
    // The RPC: no rotation, bytes that are not one, a rotation signed by one key only.
    let mut client = tally_tests::connect(d.collector.grpc).await;
    for (what, rotation) in [
        ("missing", None),
        (
            "garbage",
            Some(pb::SignedAgentKeyRotation {
                rotation: vec![0xff; 40],
                old_signature: vec![0; 64],
                new_signature: vec![0; 64],
            }),
        ),
    ] {
        let s = client
            .rotate_agent_key(pb::RotateAgentKeyRequest { rotation })
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
    }
    // Nothing was recorded: the agent's key is still the only one, and it still counts.
    let agent = AgentProcess::spawn(&d.adata, &["--listen", "127.0.0.1:0", "--interval", "1s"]);
    record(&agent, &[4]).await;
    assert_eq!(d.totals().await.get("api.convert"), Some(&4));
}
