//! Fixed agent key rotation test vectors (`proto/testdata/agent_key_rotation.json`): an
//! agent's chain of three reports whose key is rotated after seq 2 (the rotation signed by
//! the old and the new key), and the closed statement of that month, whose one agent line
//! names both keys, signed by the statement key of `keyrings.json`'s first keyring. Other
//! implementations check their rotation and statement handling against these; this test
//! checks ours still produces and judges exactly them. Regenerate (only when the contract
//! deliberately changes) with `TALLY_WRITE_VECTORS=1 cargo test -p tally-proto --test
//! agent_key_vectors`.

use chrono::{Duration, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tally_proto::Digest;
use tally_proto::agent_key::{KeyHistory, Rotation};
use tally_proto::keyring::Keyring;
use tally_proto::keys::key_id;
use tally_proto::pb;
use tally_proto::report::{Counter, Report};
use tally_proto::statement::audit::{AgentEvidence, Evidence, ReportEvidence, audit};
use tally_proto::statement::{AgentLine, Line, Quantity, Statement, merkle_root, seq_ranges};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const OLD: u8 = 0x21;
const NEW: u8 = 0x22;
/// The statement key of `keyrings.json`'s first keyring.
const STATEMENT: u8 = 0x13;

struct Made {
    reports: Vec<pb::SignedReport>,
    rotation: pb::SignedAgentKeyRotation,
    statement: Vec<u8>,
    evidence: Evidence,
}

fn make() -> Made {
    let t0 = Utc.with_ymd_and_hms(2026, 2, 10, 0, 0, 0).unwrap();
    let mut prev = None;
    let mut reports = Vec::new();
    for seq in 1..=3u64 {
        let signer = key(if seq < 3 { OLD } else { NEW });
        let start = t0 + Duration::hours(seq as i64);
        let r = Report {
            license_id: "lic_vectors".into(),
            agent_key: signer.verifying_key().to_bytes(),
            seq,
            prev_digest: prev,
            window_start: start,
            window_end: start + Duration::hours(1),
            counters: vec![Counter {
                metric: "api.convert".into(),
                quantity: 10 * seq,
            }],
            created_at: start + Duration::hours(1),
            agent_version: "tally-agent/vectors".into(),
        };
        let signed = r.sign(&signer);
        prev = Some(Digest::of(&signed.report));
        reports.push(signed);
    }
    let rotation = Rotation {
        license_id: "lic_vectors".into(),
        old_key: key(OLD).verifying_key().to_bytes(),
        new_key: key(NEW).verifying_key().to_bytes(),
        from_seq: 3,
        created_at: t0 + Duration::hours(3),
    }
    .sign(&key(OLD), &key(NEW));
    let digests: Vec<Digest> = reports.iter().map(|r| Digest::of(&r.report)).collect();
    let (old_id, new_id) = (
        key_id(&key(OLD).verifying_key().to_bytes()),
        key_id(&key(NEW).verifying_key().to_bytes()),
    );
    let statement = Statement {
        customer: "cus_vectors".into(),
        period: "2026-02".into(),
        closed: true,
        closed_at: "2026-03-02T00:00:00Z".into(),
        key_id: key_id(&key(STATEMENT).verifying_key().to_bytes()),
        lines: vec![Line {
            metric: "api.convert".into(),
            used: 60,
            limit: Some(50),
            overage: 10,
        }],
        adjustments: vec![],
        agents: vec![AgentLine {
            agent_id: "agt_vectors".into(),
            key_id: new_id.clone(),
            key_ids: vec![old_id, new_id.clone()],
            license_id: "lic_vectors".into(),
            first_seq: 1,
            last_seq: 3,
            reports: 3,
            seqs: seq_ranges(&[1, 2, 3]),
            quantities: vec![Quantity {
                metric: "api.convert".into(),
                quantity: 60,
            }],
            root: hex::encode(merkle_root(&digests).0),
        }],
    }
    .sign(&key(STATEMENT));
    let evidence = Evidence {
        customer: "cus_vectors".into(),
        period: "2026-02".into(),
        agents: vec![AgentEvidence {
            agent_id: "agt_vectors".into(),
            key_id: new_id,
            key: hex::encode(key(NEW).verifying_key().to_bytes()),
            earlier_keys: vec![hex::encode(key(OLD).verifying_key().to_bytes())],
            reports: reports
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ReportEvidence::new(
                        i as u64 + 1,
                        &Digest::of(&r.report),
                        Some((&r.report, &r.signature)),
                    )
                })
                .collect(),
        }],
    };
    Made {
        reports,
        rotation,
        statement,
        evidence,
    }
}

fn vectors() -> Value {
    let m = make();
    json!({
        "description": "tally.v1 agent key rotation: an agent's reports seq 1-2 signed by the old key, the rotation (from_seq 3) signed by both keys over \"tally.v1.AgentKeyRotation\\0\" || rotation, seq 3 signed by the new key and chained on; the closed statement of 2026-02 (one agent line naming both key ids), signed by the statement key of keyrings.json's first keyring; and the evidence the customer audits it with (docs/protocol.md)",
        "seeds": {
            "agent_old": hex::encode([OLD; 32]),
            "agent_new": hex::encode([NEW; 32]),
            "statement": hex::encode([STATEMENT; 32]),
        },
        "reports": m.reports.iter().map(|r| json!({
            "report": hex::encode(&r.report),
            "signature": hex::encode(&r.signature),
            "digest": Digest::of(&r.report).to_hex(),
        })).collect::<Vec<_>>(),
        "rotation": {
            "rotation": hex::encode(&m.rotation.rotation),
            "old_signature": hex::encode(&m.rotation.old_signature),
            "new_signature": hex::encode(&m.rotation.new_signature),
        },
        "statement": String::from_utf8(m.statement).unwrap(),
        "evidence": serde_json::to_value(&m.evidence).unwrap(),
    })
}

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/agent_key_rotation.json"
);

#[test]
fn agent_key_rotation_vectors_match_the_stored_file_and_verify() {
    let expected = vectors();
    if std::env::var_os("TALLY_WRITE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(PATH).expect("proto/testdata/agent_key_rotation.json must exist"),
    )
    .unwrap();
    assert_eq!(stored, expected, "rotation or statement encoding drifted");

    // The rotation verifies and hands the chain over at seq 3.
    let hexed = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let r = &stored["rotation"];
    let rotation = Rotation::verify(&pb::SignedAgentKeyRotation {
        rotation: hexed(&r["rotation"]),
        old_signature: hexed(&r["old_signature"]),
        new_signature: hexed(&r["new_signature"]),
    })
    .unwrap();
    let history = KeyHistory::new(key(OLD).verifying_key().to_bytes(), &[rotation]).unwrap();
    // Each report verifies under the key holding the chain at its seq, and chains on.
    let mut prev = None;
    for (i, v) in stored["reports"].as_array().unwrap().iter().enumerate() {
        let seq = i as u64 + 1;
        let bytes = hexed(&v["report"]);
        let holder = history.key_at(seq);
        let vk = tally_proto::signing::verifying_key(&holder).unwrap();
        tally_proto::signing::verify(
            &vk,
            tally_proto::signing::Domain::UsageReport,
            &bytes,
            &hexed(&v["signature"]),
        )
        .unwrap();
        let rep = Report::decode(&bytes).unwrap();
        assert_eq!(
            (rep.seq, rep.agent_key, rep.prev_digest),
            (seq, holder, prev)
        );
        prev = Some(Digest::of(&bytes));
    }
    // The statement verifies in the first keyring of keyrings.json.
    let keyrings: Value = serde_json::from_str(include_str!("../testdata/keyrings.json")).unwrap();
    let first = &keyrings["keyrings"][0];
    let keyring = Keyring::verify_first(
        &pb::SignedKeyring {
            keyring: hexed(&first["keyring"]),
            signatures: first["signatures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| pb::KeySignature {
                    key_id: s["key_id"].as_str().unwrap().into(),
                    signature: hexed(&s["signature"]),
                })
                .collect(),
        },
        &key(0x11).verifying_key(),
    )
    .unwrap();
    let doc = stored["statement"].as_str().unwrap().as_bytes();
    let statement = Statement::verify_in(doc, &keyring).unwrap();
    let ids: Vec<String> = history.keys().iter().map(|(k, _)| key_id(k)).collect();
    assert_eq!(statement.agents[0].key_ids, ids);
    assert_eq!(history.key_ids_for(1, 3), ids);
    // The customer, holding both key ids, audits it whole; with the new key only, the
    // old key's reports are a phantom's.
    let evidence: Evidence = serde_json::from_value(stored["evidence"].clone()).unwrap();
    let both: BTreeSet<String> = ids.iter().cloned().collect();
    let out = audit(&statement, &both, &evidence);
    assert!(out.matches() && out.verified == 3, "{out:?}");
    let new_only: BTreeSet<String> = [ids[1].clone()].into_iter().collect();
    assert!(!audit(&statement, &new_only, &evidence).matches());
}
