//! Fixed keyring test vectors (`proto/testdata/keyrings.json`): the first keyring of a
//! deployment, a collector rotation and a vendor rotation, each as signed bytes, and one
//! refused rotation. Other implementations check their chain rule against these; this test
//! checks ours still produces and judges exactly them. Regenerate (only when the contract
//! deliberately changes) with `TALLY_WRITE_VECTORS=1 cargo test -p tally-proto --test
//! keyring_vectors`.

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use prost::Message;
use serde_json::{Value, json};
use tally_proto::keyring::{KeyEntry, Keyring, Purpose};
use tally_proto::pb;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn signed_json(name: &str, k: &Keyring, signed: &pb::SignedKeyring, verdict: &str) -> Value {
    json!({
        "name": name,
        "version": k.version,
        "keyring": hex::encode(&signed.keyring),
        "signatures": signed.signatures.iter().map(|s| json!({
            "key_id": s.key_id,
            "signature": hex::encode(&s.signature),
        })).collect::<Vec<_>>(),
        "verdict": verdict,
    })
}

fn chain() -> (Vec<(Keyring, pb::SignedKeyring)>, pb::SignedKeyring) {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let t1 = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let t2 = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    let entry = |seed: u8, p: &[Purpose], from| KeyEntry::new(&key(seed).verifying_key(), p, from);
    let v1 = Keyring::first(
        vec![
            entry(0x11, &[Purpose::Vendor], t0),
            entry(0x12, &[Purpose::Receipt], t0),
            entry(0x13, &[Purpose::Statement], t0),
        ],
        t0,
    );
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.issued_at = t1;
    for k in &mut v2.keys {
        if !k.has(Purpose::Vendor) {
            k.valid_until = Some(t1);
        }
    }
    v2.keys.push(entry(0x14, &[Purpose::Receipt], t1));
    v2.keys.push(entry(0x15, &[Purpose::Statement], t1));
    v2.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let mut v3 = v2.clone();
    v3.version = 3;
    v3.issued_at = t2;
    for k in &mut v3.keys {
        if k.has(Purpose::Vendor) {
            k.valid_until = Some(t2);
        }
    }
    v3.keys.push(entry(0x16, &[Purpose::Vendor], t2));
    v3.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let s1 = v1.sign(&[&key(0x11)]);
    let s2 = v2.sign(&[&key(0x11)]);
    let s3 = v3.sign(&[&key(0x11), &key(0x16)]);
    let refused = v3.sign(&[&key(0x11)]);
    (vec![(v1, s1), (v2, s2), (v3, s3)], refused)
}

fn vectors() -> Value {
    let (chain, refused) = chain();
    let names = [
        "first keyring (vendor, receipt and statement keys)",
        "collector rotation (new receipt and statement keys), signed by the vendor key",
        "vendor rotation (a new root), signed by the old and the new vendor key",
    ];
    let mut list: Vec<Value> = chain
        .iter()
        .zip(names)
        .map(|((k, s), n)| signed_json(n, k, s, "accepted"))
        .collect();
    list.push(signed_json(
        "the vendor rotation signed by the old vendor key only",
        &chain[2].0,
        &refused,
        "refused: the new vendor key did not sign it",
    ));
    json!({
        "description": "tally.v1 Keyring chain: each signature = ed25519(vendor seed, \"tally.v1.Keyring\\0\" || keyring); the first keyring is trusted on the vendor key of seed 11…11, each next one under the chain rule (docs/protocol.md)",
        "vendor_seed": hex::encode([0x11u8; 32]),
        "seeds": {
            "vendor": hex::encode([0x11u8; 32]),
            "receipt": hex::encode([0x12u8; 32]),
            "statement": hex::encode([0x13u8; 32]),
            "receipt_2": hex::encode([0x14u8; 32]),
            "statement_2": hex::encode([0x15u8; 32]),
            "vendor_2": hex::encode([0x16u8; 32]),
        },
        "keyrings": list,
    })
}

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keyrings.json");

#[test]
fn keyring_vectors_match_the_stored_file_and_follow_the_chain_rule() {
    let expected = vectors();
    if std::env::var_os("TALLY_WRITE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(PATH).expect("proto/testdata/keyrings.json must exist"),
    )
    .unwrap();
    assert_eq!(stored, expected, "keyring encoding or signing drifted");
    let signed = |v: &Value| pb::SignedKeyring {
        keyring: hex::decode(v["keyring"].as_str().unwrap()).unwrap(),
        signatures: v["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| pb::KeySignature {
                key_id: s["key_id"].as_str().unwrap().into(),
                signature: hex::decode(s["signature"].as_str().unwrap()).unwrap(),
            })
            .collect(),
    };
    let list = stored["keyrings"].as_array().unwrap();
    let vendor = key(0x11).verifying_key();
    let mut k = Keyring::verify_first(&signed(&list[0]), &vendor).unwrap();
    for v in &list[1..3] {
        k = k.verify_next(&signed(v)).unwrap();
        assert_eq!(k.version, v["version"].as_u64().unwrap());
        assert_eq!(
            k.encode(),
            signed(v).keyring,
            "decoded and encoded back alike"
        );
    }
    let v2 = Keyring::verify_first(&signed(&list[0]), &vendor)
        .unwrap()
        .verify_next(&signed(&list[1]))
        .unwrap();
    assert!(v2.verify_next(&signed(&list[3])).is_err());
    // The bytes are a protobuf Keyring.
    assert_eq!(
        pb::Keyring::decode(signed(&list[2]).keyring.as_slice())
            .unwrap()
            .keys
            .len(),
        6
    );
}
