//! Enrollment proofs: the agent shows it holds the private key it enrolls.

use crate::signing::{self, Domain, SignatureError};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The bytes after the domain prefix:
/// `agent_key || license_id || "\0" || enrollment_token`.
fn proof_body(agent_key: &[u8; 32], license_id: &str, token: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + license_id.len() + 1 + token.len());
    m.extend_from_slice(agent_key);
    m.extend_from_slice(license_id.as_bytes());
    m.push(0);
    m.extend_from_slice(token.as_bytes());
    m
}

/// Signs an enrollment proof with the agent key.
pub fn prove(agent: &SigningKey, license_id: &str, token: &str) -> [u8; 64] {
    let key = agent.verifying_key().to_bytes();
    signing::sign(agent, Domain::Enroll, &proof_body(&key, license_id, token))
}

/// Verifies an enrollment proof.
pub fn verify_proof(
    agent: &VerifyingKey,
    license_id: &str,
    token: &str,
    proof: &[u8],
) -> Result<(), SignatureError> {
    let body = proof_body(&agent.to_bytes(), license_id, token);
    signing::verify(agent, Domain::Enroll, &body, proof)
}
