//! One signature rule at ingest: a report is never accepted in a batch that its signature
//! would fail alone.
//!
//! The odd report is signed by an enrolled (clean) agent key with a nonce point
//! `R = rB + T`, `T` of order 2, 4 or 8, and `s = r + k·a` with `k = H(R || A || M)`. Then
//! `[s]B − [k]A − R = −T`: the strict single check (`[s]B − [k]A` re-encoded must equal
//! the received `R`) always fails, while a cofactorless batch equation with random
//! coefficients `z` passes whenever `z·T = O` (probability 1/2 for `T` of order 2). Built
//! with raw curve arithmetic: no signing library makes such a signature. Sent as the one
//! odd report in Submits of honest reports, 48 times; under a batch rule about a third of
//! them would have been billed.

use curve25519_dalek_batch::constants::EIGHT_TORSION;
use curve25519_dalek_batch::edwards::EdwardsPoint;
use curve25519_dalek_batch::scalar::Scalar;
use curve25519_dalek_batch::traits::IsIdentity;
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha512};
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_proto::signing::Domain;
use tally_tests::{InProcessCollector, TestAgent, receipts};

fn random_scalar() -> Scalar {
    let mut b = [0u8; 64];
    OsRng.fill_bytes(&mut b);
    Scalar::from_bytes_mod_order_wide(&b)
}

/// Re-signs `signed` for `agent` with the nonce point `rB + torsion`.
fn sign_with_torsion_nonce(
    agent: &TestAgent,
    signed: &pb::SignedReport,
    torsion: &EdwardsPoint,
) -> pb::SignedReport {
    let a = Scalar::from_bytes_mod_order(agent.key.to_scalar().to_bytes());
    let public = EdwardsPoint::mul_base(&a);
    assert_eq!(public.compress().to_bytes(), agent.key_bytes(), "same key");
    let r = random_scalar();
    let big_r = EdwardsPoint::mul_base(&r) + torsion;
    let r_bytes = big_r.compress().to_bytes();
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(agent.key_bytes());
    h.update(Domain::UsageReport.message(&signed.report));
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_bytes);
    sig[32..].copy_from_slice(s.as_bytes());
    pb::SignedReport {
        report: signed.report.clone(),
        signature: sig.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torsion_nonce_report_is_never_accepted_in_a_batch_of_honest_reports() {
    let c = InProcessCollector::start().await;
    let customer = c.add_customer("Acme").await;
    let (license, token) = c.issue_license(&customer, &["api.convert"]).await;
    let (license2, token2) = c.issue_license(&customer, &["api.convert"]).await;
    let mut honest = c.enroll(&license, &token).await;
    let mut odd = c.enroll(&license2, &token2).await;
    let collector_key = c.collector.ingestor.collector_key();

    // Torsion points of order 2, 4 and 8 (EIGHT_TORSION[4] has order 2, [2] and [6] order
    // 4, the odd indices order 8).
    let torsions = [EIGHT_TORSION[4], EIGHT_TORSION[2], EIGHT_TORSION[1]];
    for (t, expected_order) in torsions.iter().zip([2u8, 4, 8]) {
        assert!(!t.is_identity());
        assert!((t * Scalar::from(expected_order)).is_identity());
        assert!(!(t * Scalar::from(expected_order / 2)).is_identity());
    }

    let mut refused = 0;
    for round in 0..48 {
        let torsion = torsions[round % torsions.len()];
        let (_, clean) = odd.next(&[("api.convert", 1)]);
        let bad = sign_with_torsion_nonce(&odd, &clean, &torsion);
        // The signature fails the strict single check: [s]B − [k]A = R − T ≠ R.
        let vk = odd.key.verifying_key();
        let sig = ed25519_dalek::Signature::from_slice(&bad.signature).unwrap();
        assert!(
            vk.verify_strict(&Domain::UsageReport.message(&bad.report), &sig)
                .is_err()
        );

        let mut batch: Vec<pb::SignedReport> = (0..9)
            .map(|_| honest.next(&[("api.convert", 1)]).1)
            .collect();
        let at = round % 10;
        batch.insert(at, bad);
        let resp = c
            .client()
            .await
            .submit(pb::SubmitRequest { reports: batch })
            .await
            .expect("submit")
            .into_inner();
        let bodies = receipts(resp, &collector_key);
        assert_eq!(bodies.len(), 10);
        for (i, b) in bodies.iter().enumerate() {
            if i == at {
                assert_eq!(
                    (b.outcome, b.reason.as_str()),
                    (Outcome::Refused, "bad_signature"),
                    "round {round}: the torsion-nonce report must be refused, got {b:?}"
                );
                refused += 1;
            } else {
                assert_eq!(b.outcome, Outcome::Accepted, "round {round}: honest {i}");
            }
        }
        // The same report with its honest signature is accepted: only the signature was
        // wrong. The chain continues from it.
        let resp = c
            .client()
            .await
            .submit(pb::SubmitRequest {
                reports: vec![clean],
            })
            .await
            .expect("submit")
            .into_inner();
        let body = &receipts(resp, &collector_key)[0];
        assert_eq!(body.outcome, Outcome::Accepted, "{body:?}");
    }
    assert_eq!(refused, 48);
    // Exactly the honest units are billed: 9 × 48 honest reports + 48 clean resends.
    let totals = tally_tests::brute_force_totals(c.store().as_ref()).await;
    let sum: u64 = totals.values().sum();
    assert_eq!(sum, 10 * 48, "{totals:?}");
    c.stop().await;
}
