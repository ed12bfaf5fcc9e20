//! Ed25519 signing of many messages with one key, byte-for-byte the signatures
//! `ed25519_dalek::SigningKey::sign` makes, at about a third of the cost.
//!
//! Why it exists: the collector signs one receipt per report (docs/protocol.md §2.3), and the
//! profile of the ingest benchmark showed receipt signing costing more CPU than the
//! (batched) verification of the reports. Most of a single signature's cost is not the
//! base-point multiplication `R = r·B` but turning `R` into bytes, which needs one field
//! inversion (~255 squarings). Here the `R` points of a whole batch are compressed
//! together (`compress_batch_alloc`: Montgomery's trick, one inversion for the batch).
//!
//! The algorithm is RFC 8032 §5.1.6 (PureEdDSA, deterministic nonces), so the output is
//! fully determined by key and message; `tests` check equality with ed25519-dalek for
//! random keys and messages, and every signature made here also verifies with
//! ed25519-dalek's strict verifier. All secret-dependent arithmetic is curve25519-dalek's
//! constant-time code (`mul_base`, scalar arithmetic, the batched inversion).

use crate::signing::Domain;
use curve25519_dalek_batch::edwards::EdwardsPoint;
use curve25519_dalek_batch::scalar::{Scalar, clamp_integer};
use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha512};
use zeroize::Zeroize;

/// A signing key expanded once (SHA-512 of the seed) for repeated, batched signing.
pub struct BatchSigner {
    /// The clamped secret scalar `a`.
    scalar: Scalar,
    /// The second half of SHA-512(seed): the nonce-derivation prefix.
    nonce_prefix: [u8; 32],
    /// The public key `A = a·B`, compressed.
    public: [u8; 32],
}

impl BatchSigner {
    /// The id of the key it signs with.
    pub fn key_id(&self) -> String {
        crate::keys::key_id(&self.public)
    }

    pub fn new(key: &SigningKey) -> Self {
        let mut h: [u8; 64] = Sha512::digest(key.to_bytes()).into();
        let mut lower = [0u8; 32];
        lower.copy_from_slice(&h[..32]);
        let mut nonce_prefix = [0u8; 32];
        nonce_prefix.copy_from_slice(&h[32..]);
        let scalar = Scalar::from_bytes_mod_order(clamp_integer(lower));
        lower.zeroize();
        h.zeroize();
        BatchSigner {
            scalar,
            nonce_prefix,
            public: key.verifying_key().to_bytes(),
        }
    }

    /// Signs `domain || body` for every body; the result is in the same order.
    pub fn sign_all(&self, domain: Domain, bodies: &[&[u8]]) -> Vec<[u8; 64]> {
        let prefix = domain.prefix();
        let mut nonces: Vec<Scalar> = bodies
            .iter()
            .map(|body| {
                let h = Sha512::new()
                    .chain_update(self.nonce_prefix)
                    .chain_update(prefix)
                    .chain_update(body)
                    .finalize();
                Scalar::from_bytes_mod_order_wide(&h.into())
            })
            .collect();
        let points: Vec<EdwardsPoint> = nonces.iter().map(EdwardsPoint::mul_base).collect();
        let compressed = EdwardsPoint::compress_batch_alloc(&points);
        let out = bodies
            .iter()
            .zip(&nonces)
            .zip(&compressed)
            .map(|((body, r), big_r)| {
                let h = Sha512::new()
                    .chain_update(big_r.as_bytes())
                    .chain_update(self.public)
                    .chain_update(prefix)
                    .chain_update(body)
                    .finalize();
                let k = Scalar::from_bytes_mod_order_wide(&h.into());
                let s = k * self.scalar + r;
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(big_r.as_bytes());
                sig[32..].copy_from_slice(s.as_bytes());
                sig
            })
            .collect();
        nonces.zeroize();
        out
    }
}

impl Drop for BatchSigner {
    fn drop(&mut self) {
        self.scalar.zeroize();
        self.nonce_prefix.zeroize();
    }
}

impl std::fmt::Debug for BatchSigner {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchSigner({})", hex::encode(self.public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing;
    use rand_core::{OsRng, RngCore};

    #[test]
    fn signatures_equal_ed25519_dalek_for_random_keys_and_messages() {
        for round in 0..20 {
            let key = crate::keys::generate();
            let signer = BatchSigner::new(&key);
            let n = 1 + round * 7 % 50;
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let mut b = vec![0u8; (i * 37 + round) % 300];
                    OsRng.fill_bytes(&mut b);
                    b
                })
                .collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            for domain in [Domain::ReceiptBody, Domain::UsageReport] {
                let batch = signer.sign_all(domain, &refs);
                assert_eq!(batch.len(), bodies.len());
                for (body, sig) in bodies.iter().zip(&batch) {
                    assert_eq!(*sig, signing::sign(&key, domain, body), "round {round}");
                    signing::verify(&key.verifying_key(), domain, body, sig)
                        .expect("strict verify");
                }
            }
        }
    }

    #[test]
    fn empty_batch_and_debug_hides_the_secret() {
        let key = crate::keys::generate();
        let signer = BatchSigner::new(&key);
        assert!(signer.sign_all(Domain::ReceiptBody, &[]).is_empty());
        let shown = format!("{signer:?}");
        assert!(shown.contains(&hex::encode(key.verifying_key().to_bytes())));
        assert!(!shown.contains(&hex::encode(key.to_bytes())));
    }
}
