//! Identifiers and secrets: random, prefixed by what they name (`cus_`, `lic_`, `agt_`,
//! `tok_`), and secret hashing.

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// A new random id like `cus_3f9a0c12d4e5b6a7`.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    OsRng.fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// A new secret (API token or enrollment token) with a recognisable prefix.
pub fn new_secret(prefix: &str) -> String {
    let mut b = [0u8; 24];
    OsRng.fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Secrets are stored only as SHA-256 hashes: they are high-entropy random values, so a
/// plain hash cannot be reversed and lookups stay one index probe.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Ids are short ASCII words: letters, digits, `_` and `-`. Anything else (quotes, path
/// separators, SQL) is rejected before it reaches a query.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
