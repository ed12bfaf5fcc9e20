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
}

impl Domain {
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Domain::UsageReport => b"tally.v1.UsageReport\0",
            Domain::ReceiptBody => b"tally.v1.ReceiptBody\0",
            Domain::License => b"tally.v1.License\0",
            Domain::Enroll => b"tally.v1.Enroll\0",
            Domain::Statement => b"tally.v1.Statement\0",
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

/// Verifies many signatures at once. Returns `true` only if every one verifies; callers fall
/// back to one-by-one verification on `false` to find the bad ones.
///
/// Batch verification does not check for weak keys, so keys must be rejected with
/// `is_weak()` when they are enrolled (the collector does).
pub fn verify_batch(messages: &[&[u8]], sigs: &[Signature], keys: &[VerifyingKey]) -> bool {
    ed25519_dalek::verify_batch(messages, sigs, keys).is_ok()
}

/// Strict verification of an already-built message (the one-by-one fallback after a batch
/// failed).
pub fn verify_message(key: &VerifyingKey, message: &[u8], sig: &Signature) -> bool {
    key.verify_strict(message, sig).is_ok()
}
