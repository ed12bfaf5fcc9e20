//! Domain-separated ed25519 signatures.
//!
//! Every signature covers `domain || bytes`, where `bytes` are the encoded message exactly
//! as sent. Verifiers check the bytes they received and only then decode them; nothing is
//! ever re-encoded to be verified.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// What a signature is for. The prefix makes a signature for one kind of message useless
/// for any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    UsageReport,
    ReceiptBody,
    License,
    Enroll,
    Statement,
    Keyring,
    AgentKeyRotation,
}

impl Domain {
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Domain::UsageReport => b"tally.v1.UsageReport\0",
            Domain::ReceiptBody => b"tally.v1.ReceiptBody\0",
            Domain::License => b"tally.v1.License\0",
            Domain::Enroll => b"tally.v1.Enroll\0",
            Domain::Statement => b"tally.v1.Statement\0",
            Domain::Keyring => b"tally.v1.Keyring\0",
            Domain::AgentKeyRotation => b"tally.v1.AgentKeyRotation\0",
        }
    }

    /// The exact message that is signed: `prefix || bytes`.
    pub fn message(self, bytes: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut m = Vec::with_capacity(prefix.len() + bytes.len());
        m.extend_from_slice(prefix);
        m.extend_from_slice(bytes);
        m
    }
}

/// Signs `bytes` for `domain`.
pub fn sign(key: &SigningKey, domain: Domain, bytes: &[u8]) -> [u8; 64] {
    key.sign(&domain.message(bytes)).to_bytes()
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 64 bytes, got {0}")]
    BadLength(usize),
    #[error("public key must be 32 bytes, got {0}")]
    BadKeyLength(usize),
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("public key is not in canonical encoding")]
    NonCanonicalKey,
    #[error("public key is a weak (small-order) key")]
    WeakKey,
    #[error("public key has a torsion component (it is not in the prime-order subgroup)")]
    TorsionKey,
    #[error("signature does not verify")]
    Mismatch,
}

/// Parses a 32-byte ed25519 public key.
pub fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, SignatureError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| SignatureError::BadKeyLength(bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| SignatureError::BadKey)
}

/// Parses a public key that is to sign anything Tally bills or trusts (an agent key at
/// enrollment, a vendor key in a license): a canonical encoding of a point of the
/// prime-order subgroup other than the identity. A key with a torsion component (`aB + T`,
/// `T` of small order) is refused: signatures by it can verify under one ed25519 rule and
/// not under another, and batch verification does not check keys at all. Checked once,
/// where the key is first seen (about a scalar multiplication), never per report.
pub fn trusted_key(bytes: &[u8]) -> Result<VerifyingKey, SignatureError> {
    let key = verifying_key(bytes)?;
    let point = key.to_edwards();
    if point.compress().as_bytes() != bytes {
        return Err(SignatureError::NonCanonicalKey);
    }
    if point.is_small_order() {
        return Err(SignatureError::WeakKey);
    }
    if !point.is_torsion_free() {
        return Err(SignatureError::TorsionKey);
    }
    Ok(key)
}

/// Parses a 64-byte signature.
pub fn signature(bytes: &[u8]) -> Result<Signature, SignatureError> {
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| SignatureError::BadLength(bytes.len()))?;
    Ok(Signature::from_bytes(&arr))
}

/// Verifies `sig` over `domain || bytes` (strict: rejects malleable signatures).
pub fn verify(
    key: &VerifyingKey,
    domain: Domain,
    bytes: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let sig = signature(sig)?;
    key.verify_strict(&domain.message(bytes), &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// Strict verification of an already-built message (`domain || bytes`): the one rule, as
/// [`verify`]. Ingest verifies every report this way, one signature at a time: a
/// cofactorless batch equation with random coefficients also passes, with probability up
/// to 1/2, a signature whose nonce point `R` carries a small-order component, which this
/// check (and libsodium's) always refuses; refusing such an `R` before a batch costs more
/// than the batch saves (docs/protocol.md §3.1).
pub fn verify_message(key: &VerifyingKey, message: &[u8], sig: &Signature) -> bool {
    key.verify_strict(message, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek_batch::constants::EIGHT_TORSION;
    use curve25519_dalek_batch::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek_batch::scalar::Scalar;

    #[test]
    fn trusted_keys_are_canonical_prime_order_points() {
        let clean = EdwardsPoint::mul_base(&Scalar::from(123_456_789u64));
        let bytes = clean.compress().to_bytes();
        assert!(trusted_key(&bytes).is_ok());
        // Each torsion component, of order 2, 4 and 8, added to it: refused.
        for t in &EIGHT_TORSION[1..] {
            let mixed = (clean + t).compress().to_bytes();
            assert!(verifying_key(&mixed).is_ok(), "a valid point");
            assert_eq!(trusted_key(&mixed), Err(SignatureError::TorsionKey));
        }
        // Small-order points themselves (the identity included): weak.
        for t in &EIGHT_TORSION {
            assert_eq!(
                trusted_key(&t.compress().to_bytes()),
                Err(SignatureError::WeakKey)
            );
        }
        // A non-canonical encoding of a valid point: the identity (x = 0) with the sign bit
        // of x set ("-0") decodes, but encodes back without the bit.
        let mut neg_zero = EdwardsPoint::default().compress().to_bytes();
        neg_zero[31] |= 0x80;
        let p = CompressedEdwardsY(neg_zero)
            .decompress()
            .expect("-0 decodes");
        assert_ne!(p.compress().to_bytes(), neg_zero);
        assert_eq!(trusted_key(&neg_zero), Err(SignatureError::NonCanonicalKey));
        assert_eq!(
            trusted_key(&[0u8; 31]),
            Err(SignatureError::BadKeyLength(31))
        );
    }
}
