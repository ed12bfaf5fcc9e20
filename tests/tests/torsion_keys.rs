//! Keys with a torsion component are refused where they are first seen: `Enroll` over gRPC
//! and `tally-collector agents add`. The key is `aB + T` (`T` of order 8) and comes with an
//! enrollment proof that verifies for it under ed25519-dalek's `verify_strict` (made with
//! raw curve arithmetic: no signing library makes such a key), so only the key check can
//! refuse it; the same scalar's clean key `aB` enrolls.

use curve25519_dalek_batch::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek_batch::edwards::EdwardsPoint;
use curve25519_dalek_batch::scalar::Scalar;
use curve25519_dalek_batch::traits::IsIdentity;
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha512};
use tally_proto::pb;
use tally_tests::{InProcessCollector, collector_cmd};

/// The message an enrollment proof signs (docs/protocol.md §3.3).
fn proof_message(key: &[u8; 32], license: &str, token: &str) -> Vec<u8> {
    let mut m = b"tally.v1.Enroll\0".to_vec();
    m.extend_from_slice(key);
    m.extend_from_slice(license.as_bytes());
    m.push(0);
    m.extend_from_slice(token.as_bytes());
    m
}

fn random_scalar() -> Scalar {
    let mut b = [0u8; 64];
    OsRng.fill_bytes(&mut b);
    Scalar::from_bytes_mod_order_wide(&b)
}

/// A signature by secret scalar `a` for the public point `public` (= aB, or aB + T):
/// (R, s) with R = rB torsion-free, s = r + k·a, k = H(R || public || msg). For public =
/// aB + T the cofactorless check [s]B = R + [k]public holds exactly when [k]T = O, so r is
/// drawn until k is a multiple of T's order (8 tries on average).
fn sign_raw(a: &Scalar, public: &EdwardsPoint, torsion: &EdwardsPoint, msg: &[u8]) -> [u8; 64] {
    let public_bytes = public.compress().to_bytes();
    loop {
        let r = random_scalar();
        let big_r = EdwardsPoint::mul_base(&r);
        let mut h = Sha512::new();
        h.update(big_r.compress().as_bytes());
        h.update(public_bytes);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        if !(torsion * k).is_identity() {
            continue;
        }
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.compress().as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        return sig;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_a_torsion_component_is_refused_by_enroll_and_agents_add() {
    let c = InProcessCollector::start().await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c.issue_license(&customer, &["api.convert"]).await;

    let a = random_scalar();
    let clean = EdwardsPoint::mul_base(&a);
    let t = EIGHT_TORSION[1];
    assert!(!(t * Scalar::from(4u8)).is_identity(), "T has order 8");
    let mixed = clean + t;
    assert_ne!(mixed, ED25519_BASEPOINT_POINT * a);
    let mixed_bytes = mixed.compress().to_bytes();
    let msg = proof_message(&mixed_bytes, &license, &token);
    let proof = sign_raw(&a, &mixed, &t, &msg);
    // The proof is valid for the mixed key under the strict single rule: only a key check
    // can refuse this enrollment.
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&mixed_bytes).unwrap();
    assert!(
        !vk.is_weak(),
        "not small-order: is_weak() alone lets it through"
    );
    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&proof))
        .expect("the proof verifies for the mixed key under verify_strict");

    let enroll = |key: [u8; 32], proof: [u8; 64]| pb::EnrollRequest {
        license_id: license.clone(),
        enrollment_token: token.clone(),
        agent_key: key.to_vec(),
        proof: proof.to_vec(),
    };
    let err = c
        .client()
        .await
        .enroll(enroll(mixed_bytes, proof))
        .await
        .expect_err("a torsion key must not enroll");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("torsion"), "{err}");

    // `agents add` (air-gapped enrollment), as a process: exit 2, one error line.
    let data = c.dir.path().join("data");
    let (code, out, stderr) = collector_cmd(
        &data,
        &[
            "agents",
            "add",
            "--license",
            &license,
            "--key",
            &hex::encode(mixed_bytes),
        ],
    );
    assert_eq!(code, 2, "{out}{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("torsion"),
        "{stderr}"
    );
    let (_, listed, _) = collector_cmd(&data, &["--json", "agents", "list"]);
    assert!(!listed.contains(&hex::encode(mixed_bytes)), "{listed}");

    // The same scalar's clean key, proved the same raw way, enrolls.
    let clean_bytes = clean.compress().to_bytes();
    let msg = proof_message(&clean_bytes, &license, &token);
    let proof = sign_raw(&a, &clean, &EdwardsPoint::default(), &msg);
    c.client()
        .await
        .enroll(enroll(clean_bytes, proof))
        .await
        .expect("the clean key enrolls");
}
