//! Fixed test vectors (`proto/testdata/vectors.json`): seed → key → report bytes →
//! signature → digest. Other implementations check themselves against these files; this
//! test checks that ours still produces exactly them. Regenerate (only when the contract
//! deliberately changes) with `TALLY_WRITE_VECTORS=1 cargo test -p tally-proto --test vectors`.

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tally_proto::digest::Digest;
use tally_proto::report::{Counter, Report};
use tally_proto::signing::{self, Domain};

fn vector(seed_byte: u8, seq: u64, counters: &[(&str, u64)]) -> Value {
    let seed = [seed_byte; 32];
    let key = SigningKey::from_bytes(&seed);
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let report = Report {
        license_id: "lic_vectors".into(),
        agent_key: key.verifying_key().to_bytes(),
        seq,
        prev_digest: (seq > 1).then_some(Digest([0xab; 32])),
        window_start: start,
        window_end: start + chrono::Duration::hours(1),
        counters: counters
            .iter()
            .map(|(m, q)| Counter {
                metric: m.to_string(),
                quantity: *q,
            })
            .collect(),
        created_at: start + chrono::Duration::seconds(3601),
        agent_version: "tally-agent/0.1.0".into(),
    };
    let signed = report.sign(&key);
    json!({
        "seed": hex::encode(seed),
        "public_key": hex::encode(key.verifying_key().to_bytes()),
        "report": hex::encode(&signed.report),
        "signed_message_prefix": String::from_utf8_lossy(Domain::UsageReport.prefix()),
        "signature": hex::encode(&signed.signature),
        "digest": Digest::of(&signed.report).to_hex(),
    })
}

fn vectors() -> Value {
    json!({
        "description": "tally.v1 UsageReport test vectors: signature = ed25519(seed, \"tally.v1.UsageReport\\0\" || report); digest = SHA-256(report)",
        "vectors": [
            vector(1, 1, &[]),
            vector(2, 2, &[("api.convert", 1)]),
            vector(3, 7, &[("api.convert", 1234), ("api.render", 5), ("pages.rendered", 18_446_744), ("storage.gb_hours", 9)]),
        ]
    })
}

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");

#[test]
fn vectors_match_the_stored_file_and_verify() {
    let expected = vectors();
    if std::env::var_os("TALLY_WRITE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(PATH).expect("proto/testdata/vectors.json must exist"),
    )
    .unwrap();
    assert_eq!(
        stored, expected,
        "encoding or signing drifted from the stored vectors"
    );

    for v in stored["vectors"].as_array().unwrap() {
        let h = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
        let key = signing::verifying_key(&h("public_key")).unwrap();
        let report = h("report");
        signing::verify(&key, Domain::UsageReport, &report, &h("signature")).unwrap();
        assert_eq!(Digest::of(&report).0.to_vec(), h("digest"));
        let decoded = Report::decode(&report).unwrap();
        assert_eq!(decoded.agent_key.to_vec(), h("public_key"));
        decoded.check_counters().unwrap();
        // Without the domain prefix the same signature must not verify.
        let sig = signing::signature(&h("signature")).unwrap();
        assert!(!signing::verify_message(&key, &report, &sig));
    }
}

#[test]
fn a_report_signed_without_the_domain_prefix_does_not_verify() {
    use ed25519_dalek::Signer;
    let key = SigningKey::from_bytes(&[9; 32]);
    let bytes = b"any report bytes".to_vec();
    let bare = key.sign(&bytes).to_bytes();
    assert!(signing::verify(&key.verifying_key(), Domain::UsageReport, &bytes, &bare).is_err());
    // …and a signature for another domain does not verify as a report either.
    let receipt_sig = signing::sign(&key, Domain::ReceiptBody, &bytes);
    assert!(
        signing::verify(
            &key.verifying_key(),
            Domain::UsageReport,
            &bytes,
            &receipt_sig
        )
        .is_err()
    );
}
