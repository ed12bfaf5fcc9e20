//! Keyrings: the keys of one deployment, certified by the vendor key (the root).
//!
//! The vendor key signs licenses and keyrings and nothing else; it need not be on any
//! collector. Online keys — receipt keys and statement keys — are held by collectors and
//! listed in the keyring with their validity: `valid_from`, `valid_until` (a planned
//! rotation) and `revoked_at` (a leak). An artifact names the key id that signed it and
//! verifies with that key if the key was valid for its purpose at the artifact's time.
//!
//! **The chain rule** ([`Keyring::verify_next`]), how a verifier that trusts one keyring
//! (or, at first, the vendor key of its license) accepts the next:
//! 1. Each signature names a key id, at most once, and verifies — over the bytes as
//!    received, never a re-encoding — under that key as listed in the *new* keyring, which
//!    must give it the vendor purpose.
//! 2. At least one signer is a vendor key the verifier already trusts (current and not
//!    revoked in what it holds).
//! 3. Every current vendor key of the new keyring (no end, not revoked) signed it: a new
//!    root proves it holds its key, so a rotation is signed by the old and the new root.
//! 4. The version grows, and every key of the trusted keyring is still listed with the same
//!    public key, purposes and start; an end or a revocation, once set, never moves later
//!    nor disappears (what an old key signed keeps verifying, and a revocation cannot be
//!    undone by a later keyring).
//! 5. Every entry is well formed: its id is its key's id, the key is a canonical point of
//!    the prime-order subgroup (no torsion), purposes are known, sorted and unique, ids are
//!    sorted and unique, `valid_from` is before any end.

use crate::pb;
use crate::signing::{self, Domain, SignatureError};
use crate::time::{Instant, from_timestamp, to_timestamp};
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use std::collections::BTreeMap;

/// The most keys one keyring may list (rotations are rare; this is decades of them).
pub const MAX_KEYS: usize = 1024;
/// The largest encoded keyring accepted.
pub const MAX_KEYRING_BYTES: usize = 256 * 1024;

/// What a key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    Vendor,
    Receipt,
    Statement,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Vendor => "vendor",
            Purpose::Receipt => "receipt",
            Purpose::Statement => "statement",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vendor" => Some(Purpose::Vendor),
            "receipt" => Some(Purpose::Receipt),
            "statement" => Some(Purpose::Statement),
            _ => None,
        }
    }

    fn to_pb(self) -> pb::KeyPurpose {
        match self {
            Purpose::Vendor => pb::KeyPurpose::Vendor,
            Purpose::Receipt => pb::KeyPurpose::Receipt,
            Purpose::Statement => pb::KeyPurpose::Statement,
        }
    }

    fn from_pb(v: i32) -> Option<Self> {
        match pb::KeyPurpose::try_from(v).ok()? {
            pb::KeyPurpose::Vendor => Some(Purpose::Vendor),
            pb::KeyPurpose::Receipt => Some(Purpose::Receipt),
            pb::KeyPurpose::Statement => Some(Purpose::Statement),
            pb::KeyPurpose::Unspecified => None,
        }
    }
}

/// One key of a keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: String,
    pub public_key: [u8; 32],
    /// Sorted, unique, not empty.
    pub purposes: Vec<Purpose>,
    pub valid_from: Instant,
    pub valid_until: Option<Instant>,
    pub revoked_at: Option<Instant>,
}

impl KeyEntry {
    /// A key valid from `valid_from` with no end, for `purposes`.
    pub fn new(public: &VerifyingKey, purposes: &[Purpose], valid_from: Instant) -> Self {
        let mut purposes = purposes.to_vec();
        purposes.sort();
        purposes.dedup();
        KeyEntry {
            key_id: crate::keys::key_id(&public.to_bytes()),
            public_key: public.to_bytes(),
            purposes,
            valid_from,
            valid_until: None,
            revoked_at: None,
        }
    }

    /// Current: no end and not revoked.
    pub fn is_current(&self) -> bool {
        self.valid_until.is_none() && self.revoked_at.is_none()
    }

    pub fn has(&self, purpose: Purpose) -> bool {
        self.purposes.contains(&purpose)
    }

    /// Whether it may sign for `purpose` something made at `at`.
    pub fn valid_at(&self, purpose: Purpose, at: Instant) -> Result<(), KeyError> {
        if !self.has(purpose) {
            return Err(KeyError::WrongPurpose {
                key_id: self.key_id.clone(),
                purpose: purpose.as_str(),
            });
        }
        if at < self.valid_from {
            return Err(KeyError::NotYetValid {
                key_id: self.key_id.clone(),
            });
        }
        if let Some(r) = self.revoked_at
            && at >= r
        {
            return Err(KeyError::Revoked {
                key_id: self.key_id.clone(),
                revoked_at: r,
            });
        }
        if let Some(u) = self.valid_until
            && at >= u
        {
            return Err(KeyError::Expired {
                key_id: self.key_id.clone(),
            });
        }
        Ok(())
    }
}

/// Why a key may not be used for an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0} is not in the keyring")]
    Unknown(String),
    #[error("key {key_id} may not sign {purpose}s")]
    WrongPurpose {
        key_id: String,
        purpose: &'static str,
    },
    #[error("key {key_id} was not valid yet at that time")]
    NotYetValid { key_id: String },
    #[error("key {key_id} had been rotated out at that time")]
    Expired { key_id: String },
    #[error("key {key_id} was revoked at {revoked_at}")]
    Revoked { key_id: String, revoked_at: Instant },
}

/// A keyring, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub version: u64,
    pub issued_at: Instant,
    /// Sorted by key id.
    pub keys: Vec<KeyEntry>,
}

/// Why a keyring is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring is larger than {MAX_KEYRING_BYTES} bytes")]
    TooLarge,
    #[error("keyring is malformed: {0}")]
    Malformed(String),
    #[error("keyring signature by {key_id}: {source}")]
    Signature {
        key_id: String,
        source: SignatureError,
    },
    #[error("keyring is signed by {0}, which it does not list as a vendor key")]
    NotAVendorKey(String),
    #[error("keyring is signed twice by {0}")]
    DuplicateSigner(String),
    #[error("keyring is not signed by any vendor key already trusted")]
    NoTrustedSigner,
    #[error("keyring lists the new vendor key {0} but is not signed by it")]
    UnsignedVendorKey(String),
    #[error("keyring version {got} is not newer than the trusted version {trusted}")]
    NotNewer { got: u64, trusted: u64 },
    #[error("keyring drops or changes key {0}, which the trusted keyring lists")]
    Rewrites(String),
    #[error("keyring has no current vendor key")]
    NoVendorKey,
}

fn malformed(m: impl Into<String>) -> KeyringError {
    KeyringError::Malformed(m.into())
}

impl Keyring {
    /// The first keyring of a deployment: version 1 with `keys`.
    pub fn first(keys: Vec<KeyEntry>, issued_at: Instant) -> Self {
        let mut k = Keyring {
            version: 1,
            issued_at,
            keys,
        };
        k.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        k
    }

    /// The key with `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&KeyEntry> {
        self.keys
            .binary_search_by(|k| k.key_id.as_str().cmp(key_id))
            .ok()
            .map(|i| &self.keys[i])
    }

    /// The key `key_id` names, if it may sign for `purpose` something made at `at`.
    pub fn key_for(
        &self,
        purpose: Purpose,
        key_id: &str,
        at: Instant,
    ) -> Result<VerifyingKey, KeyError> {
        let k = self
            .get(key_id)
            .ok_or_else(|| KeyError::Unknown(key_id.to_string()))?;
        k.valid_at(purpose, at)?;
        // Every listed key was checked (canonical, torsion-free) when the keyring was
        // accepted or made.
        VerifyingKey::from_bytes(&k.public_key).map_err(|_| KeyError::Unknown(key_id.into()))
    }

    /// The current keys for `purpose` (no end, not revoked), newest first.
    pub fn current(&self, purpose: Purpose) -> Vec<&KeyEntry> {
        let mut v: Vec<&KeyEntry> = self
            .keys
            .iter()
            .filter(|k| k.has(purpose) && k.is_current())
            .collect();
        v.sort_by(|a, b| {
            b.valid_from
                .cmp(&a.valid_from)
                .then(a.key_id.cmp(&b.key_id))
        });
        v
    }

    pub fn encode(&self) -> Vec<u8> {
        pb::Keyring {
            version: self.version,
            issued_at: Some(to_timestamp(self.issued_at)),
            keys: self
                .keys
                .iter()
                .map(|k| pb::KeyEntry {
                    key_id: k.key_id.clone(),
                    public_key: k.public_key.to_vec(),
                    purposes: k.purposes.iter().map(|p| p.to_pb() as i32).collect(),
                    valid_from: Some(to_timestamp(k.valid_from)),
                    valid_until: k.valid_until.map(to_timestamp),
                    revoked_at: k.revoked_at.map(to_timestamp),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Signs the encoded keyring with each of `signers` (vendor keys).
    pub fn sign(&self, signers: &[&SigningKey]) -> pb::SignedKeyring {
        let keyring = self.encode();
        let signatures = signers
            .iter()
            .map(|k| pb::KeySignature {
                key_id: crate::keys::key_id(&k.verifying_key().to_bytes()),
                signature: signing::sign(k, Domain::Keyring, &keyring).to_vec(),
            })
            .collect();
        pb::SignedKeyring {
            keyring,
            signatures,
        }
    }

    /// Decodes and checks the entries (rule 5), without any signature.
    fn decode_checked(bytes: &[u8]) -> Result<Keyring, KeyringError> {
        let m = pb::Keyring::decode(bytes).map_err(|e| malformed(e.to_string()))?;
        if m.keys.len() > MAX_KEYS {
            return Err(malformed(format!("more than {MAX_KEYS} keys")));
        }
        let issued_at = m
            .issued_at
            .as_ref()
            .and_then(from_timestamp)
            .ok_or_else(|| malformed("issued_at missing"))?;
        let mut keys = Vec::with_capacity(m.keys.len());
        for e in m.keys {
            let public: [u8; 32] =
                e.public_key.as_slice().try_into().map_err(|_| {
                    malformed(format!("key {}: public key is not 32 bytes", e.key_id))
                })?;
            signing::trusted_key(&public)
                .map_err(|err| malformed(format!("key {}: {err}", e.key_id)))?;
            if crate::keys::key_id(&public) != e.key_id {
                return Err(malformed(format!(
                    "key {} is not the id of its public key",
                    e.key_id
                )));
            }
            let mut purposes = Vec::with_capacity(e.purposes.len());
            for p in &e.purposes {
                purposes.push(
                    Purpose::from_pb(*p).ok_or_else(|| {
                        malformed(format!("key {}: unknown purpose {p}", e.key_id))
                    })?,
                );
            }
            if purposes.is_empty() || purposes.windows(2).any(|w| w[0] >= w[1]) {
                return Err(malformed(format!(
                    "key {}: purposes must be sorted, unique and not empty",
                    e.key_id
                )));
            }
            let valid_from = e
                .valid_from
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| malformed(format!("key {}: valid_from missing", e.key_id)))?;
            let time = |t: &Option<prost_types::Timestamp>, what: &str| match t {
                None => Ok(None),
                Some(t) => from_timestamp(t)
                    .map(Some)
                    .ok_or_else(|| malformed(format!("key {}: bad {what}", e.key_id))),
            };
            let valid_until = time(&e.valid_until, "valid_until")?;
            let revoked_at = time(&e.revoked_at, "revoked_at")?;
            if valid_until.is_some_and(|u| u <= valid_from) {
                return Err(malformed(format!(
                    "key {}: valid_until is not after valid_from",
                    e.key_id
                )));
            }
            keys.push(KeyEntry {
                key_id: e.key_id,
                public_key: public,
                purposes,
                valid_from,
                valid_until,
                revoked_at,
            });
        }
        if keys.windows(2).any(|w| w[0].key_id >= w[1].key_id) {
            return Err(malformed("keys must be sorted by key id and unique"));
        }
        let k = Keyring {
            version: m.version,
            issued_at,
            keys,
        };
        if k.current(Purpose::Vendor).is_empty() {
            return Err(KeyringError::NoVendorKey);
        }
        Ok(k)
    }

    /// The signers of `signed` that verify (rule 1): their key ids.
    fn signers(keyring: &Keyring, signed: &pb::SignedKeyring) -> Result<Vec<String>, KeyringError> {
        let mut seen = Vec::new();
        for s in &signed.signatures {
            if seen.contains(&s.key_id) {
                return Err(KeyringError::DuplicateSigner(s.key_id.clone()));
            }
            let entry = keyring
                .get(&s.key_id)
                .filter(|k| k.has(Purpose::Vendor))
                .ok_or_else(|| KeyringError::NotAVendorKey(s.key_id.clone()))?;
            let key = VerifyingKey::from_bytes(&entry.public_key)
                .map_err(|_| KeyringError::NotAVendorKey(s.key_id.clone()))?;
            signing::verify(&key, Domain::Keyring, &signed.keyring, &s.signature).map_err(
                |source| KeyringError::Signature {
                    key_id: s.key_id.clone(),
                    source,
                },
            )?;
            seen.push(s.key_id.clone());
        }
        Ok(seen)
    }

    /// Accepts the first keyring a verifier sees, on the authority of the vendor key it
    /// already trusts (its license's): as [`Keyring::verify_next`] from an empty keyring
    /// whose one current vendor key is `vendor`.
    pub fn verify_first(
        signed: &pb::SignedKeyring,
        vendor: &VerifyingKey,
    ) -> Result<Keyring, KeyringError> {
        let anchor = Keyring {
            version: 0,
            issued_at: chrono::DateTime::UNIX_EPOCH,
            keys: Vec::new(),
        };
        anchor.verify_next_with(signed, &[vendor.to_bytes()])
    }

    /// Accepts `signed` as the successor of this (trusted) keyring under the chain rule.
    pub fn verify_next(&self, signed: &pb::SignedKeyring) -> Result<Keyring, KeyringError> {
        let trusted: Vec<[u8; 32]> = self
            .current(Purpose::Vendor)
            .iter()
            .map(|k| k.public_key)
            .collect();
        self.verify_next_with(signed, &trusted)
    }

    fn verify_next_with(
        &self,
        signed: &pb::SignedKeyring,
        trusted_vendor: &[[u8; 32]],
    ) -> Result<Keyring, KeyringError> {
        if signed.keyring.len() > MAX_KEYRING_BYTES {
            return Err(KeyringError::TooLarge);
        }
        // Rule 5 first: the signers are looked up in the entries, so they must be sound.
        // Decoding before verifying is safe here: the signatures are checked over the
        // received bytes, never over a re-encoding.
        let next = Self::decode_checked(&signed.keyring)?;
        let signers = Self::signers(&next, signed)?;
        let by_key = |id: &String| next.get(id).map(|k| k.public_key);
        // Rule 2.
        if !signers
            .iter()
            .filter_map(by_key)
            .any(|pk| trusted_vendor.contains(&pk))
        {
            return Err(KeyringError::NoTrustedSigner);
        }
        // Rule 3.
        for k in next.current(Purpose::Vendor) {
            if !signers.contains(&k.key_id) {
                return Err(KeyringError::UnsignedVendorKey(k.key_id.clone()));
            }
        }
        // Rule 4.
        if next.version <= self.version {
            return Err(KeyringError::NotNewer {
                got: next.version,
                trusted: self.version,
            });
        }
        let listed: BTreeMap<&str, &KeyEntry> =
            next.keys.iter().map(|k| (k.key_id.as_str(), k)).collect();
        for old in &self.keys {
            let Some(new) = listed.get(old.key_id.as_str()) else {
                return Err(KeyringError::Rewrites(old.key_id.clone()));
            };
            let kept = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                (None, _) => true,
                (Some(a), Some(b)) => b <= a,
                (Some(_), None) => false,
            };
            if new.public_key != old.public_key
                || new.purposes != old.purposes
                || new.valid_from != old.valid_from
                || !kept(old.valid_until, new.valid_until)
                || !kept(old.revoked_at, new.revoked_at)
            {
                return Err(KeyringError::Rewrites(old.key_id.clone()));
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Instant {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn entry(k: &SigningKey, purposes: &[Purpose], from: i64) -> KeyEntry {
        KeyEntry::new(&k.verifying_key(), purposes, t(from))
    }

    /// vendor 1, receipt 2, statement 3, all from t(0).
    fn first() -> Keyring {
        Keyring::first(
            vec![
                entry(&key(1), &[Purpose::Vendor], 0),
                entry(&key(2), &[Purpose::Receipt], 0),
                entry(&key(3), &[Purpose::Statement], 0),
            ],
            t(0),
        )
    }

    fn id(n: u8) -> String {
        crate::keys::key_id(&key(n).verifying_key().to_bytes())
    }

    fn with(k: &Keyring, edit: impl FnOnce(&mut Keyring)) -> Keyring {
        let mut n = k.clone();
        n.version += 1;
        n.issued_at = t(100);
        edit(&mut n);
        n.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        n
    }

    #[test]
    fn first_keyring_verifies_under_the_license_vendor_key() {
        let k = first();
        let signed = k.sign(&[&key(1)]);
        assert_eq!(
            Keyring::verify_first(&signed, &key(1).verifying_key()),
            Ok(k.clone())
        );
        // Another vendor's key, or no signature: refused.
        assert_eq!(
            Keyring::verify_first(&signed, &key(9).verifying_key()),
            Err(KeyringError::NoTrustedSigner)
        );
        let unsigned = pb::SignedKeyring {
            keyring: signed.keyring.clone(),
            signatures: vec![],
        };
        assert_eq!(
            Keyring::verify_first(&unsigned, &key(1).verifying_key()),
            Err(KeyringError::NoTrustedSigner)
        );
        // Signed by the receipt key (an online key, not a root).
        assert_eq!(
            Keyring::verify_first(&k.sign(&[&key(2)]), &key(1).verifying_key()),
            Err(KeyringError::NotAVendorKey(id(2)))
        );
    }

    #[test]
    fn the_chain_rule() {
        let v1 = first();
        // A collector rotation: new receipt and statement keys, the old ones end.
        let collector_rotation = with(&v1, |n| {
            for k in &mut n.keys {
                if !k.has(Purpose::Vendor) {
                    k.valid_until = Some(t(100));
                }
            }
            n.keys.push(entry(&key(4), &[Purpose::Receipt], 100));
            n.keys.push(entry(&key(5), &[Purpose::Statement], 100));
        });
        // A vendor rotation: key 1 ends, key 6 is the new root.
        let vendor_rotation = with(&v1, |n| {
            n.keys
                .iter_mut()
                .find(|k| k.key_id == id(1))
                .unwrap()
                .valid_until = Some(t(100));
            n.keys.push(entry(&key(6), &[Purpose::Vendor], 100));
        });
        let revoke_receipt = with(&v1, |n| {
            n.keys
                .iter_mut()
                .find(|k| k.key_id == id(2))
                .unwrap()
                .revoked_at = Some(t(50));
        });
        let cases: Vec<(&str, pb::SignedKeyring, Result<(), KeyringError>)> = vec![
            (
                "collector rotation",
                collector_rotation.sign(&[&key(1)]),
                Ok(()),
            ),
            ("revocation", revoke_receipt.sign(&[&key(1)]), Ok(())),
            (
                "vendor rotation, both roots",
                vendor_rotation.sign(&[&key(1), &key(6)]),
                Ok(()),
            ),
            (
                "vendor rotation signed by the old root only",
                vendor_rotation.sign(&[&key(1)]),
                Err(KeyringError::UnsignedVendorKey(id(6))),
            ),
            (
                "vendor rotation signed by the new root only (a leaked online key can't do \
                 better: it is no root)",
                vendor_rotation.sign(&[&key(6)]),
                Err(KeyringError::NoTrustedSigner),
            ),
            (
                "same version",
                with(&v1, |n| n.version = 1).sign(&[&key(1)]),
                Err(KeyringError::NotNewer { got: 1, trusted: 1 }),
            ),
            (
                "a key dropped",
                with(&v1, |n| n.keys.retain(|k| k.key_id != id(2))).sign(&[&key(1)]),
                Err(KeyringError::Rewrites(id(2))),
            ),
            (
                "a revocation undone",
                with(&revoke_receipt, |n| {
                    n.keys
                        .iter_mut()
                        .find(|k| k.key_id == id(2))
                        .unwrap()
                        .revoked_at = None;
                })
                .sign(&[&key(1)]),
                Ok(()), // from v1's point of view nothing was revoked yet; see below
            ),
            (
                "a purpose widened",
                with(&v1, |n| {
                    n.keys
                        .iter_mut()
                        .find(|k| k.key_id == id(2))
                        .unwrap()
                        .purposes = vec![Purpose::Receipt, Purpose::Statement];
                })
                .sign(&[&key(1)]),
                Err(KeyringError::Rewrites(id(2))),
            ),
            (
                "an entry whose id is not its key's",
                with(&v1, |n| {
                    let e = n.keys.iter_mut().find(|k| k.key_id == id(2)).unwrap();
                    e.public_key = key(7).verifying_key().to_bytes();
                })
                .sign(&[&key(1)]),
                Err(malformed(format!(
                    "key {} is not the id of its public key",
                    id(2)
                ))),
            ),
        ];
        for (name, signed, want) in cases {
            assert_eq!(v1.verify_next(&signed).map(|_| ()), want, "{name}");
        }
        // From the revoked keyring, undoing the revocation or moving it later is refused.
        for revoked_at in [None, Some(t(60))] {
            let undo = with(&revoke_receipt, |n| {
                n.keys
                    .iter_mut()
                    .find(|k| k.key_id == id(2))
                    .unwrap()
                    .revoked_at = revoked_at;
            });
            assert_eq!(
                revoke_receipt.verify_next(&undo.sign(&[&key(1)])),
                Err(KeyringError::Rewrites(id(2))),
                "{revoked_at:?}"
            );
        }
        // After a vendor rotation the old root signs no more: a keyring signed by key 1
        // alone is not accepted, one signed by key 6 is.
        let after = vendor_rotation.clone();
        let next = with(&after, |n| {
            n.keys.push(entry(&key(8), &[Purpose::Receipt], 200))
        });
        assert_eq!(
            after.verify_next(&next.sign(&[&key(1)])),
            Err(KeyringError::NoTrustedSigner)
        );
        assert!(after.verify_next(&next.sign(&[&key(6)])).is_ok());
    }

    #[test]
    fn tampered_bytes_or_signatures_are_refused() {
        let v1 = first();
        let next = with(&v1, |n| {
            n.keys.push(entry(&key(4), &[Purpose::Receipt], 100))
        });
        let mut signed = next.sign(&[&key(1)]);
        signed.signatures[0].signature[0] ^= 1;
        assert!(matches!(
            v1.verify_next(&signed),
            Err(KeyringError::Signature { .. })
        ));
        let mut twice = next.sign(&[&key(1)]);
        twice.signatures.push(twice.signatures[0].clone());
        assert_eq!(
            v1.verify_next(&twice),
            Err(KeyringError::DuplicateSigner(id(1)))
        );
        let mut garbage = next.sign(&[&key(1)]);
        garbage.keyring.push(0xff);
        assert!(v1.verify_next(&garbage).is_err());
    }

    #[test]
    fn keys_are_valid_for_their_purpose_within_their_window() {
        let mut k = first();
        k.keys
            .iter_mut()
            .find(|e| e.key_id == id(2))
            .unwrap()
            .valid_until = Some(t(100));
        k.keys
            .iter_mut()
            .find(|e| e.key_id == id(3))
            .unwrap()
            .revoked_at = Some(t(50));
        assert!(k.key_for(Purpose::Receipt, &id(2), t(0)).is_ok());
        assert!(k.key_for(Purpose::Receipt, &id(2), t(99)).is_ok());
        assert_eq!(
            k.key_for(Purpose::Receipt, &id(2), t(100)),
            Err(KeyError::Expired { key_id: id(2) })
        );
        assert_eq!(
            k.key_for(Purpose::Receipt, &id(2), t(-1)),
            Err(KeyError::NotYetValid { key_id: id(2) })
        );
        assert!(matches!(
            k.key_for(Purpose::Statement, &id(2), t(10)),
            Err(KeyError::WrongPurpose { .. })
        ));
        assert!(k.key_for(Purpose::Statement, &id(3), t(49)).is_ok());
        assert!(matches!(
            k.key_for(Purpose::Statement, &id(3), t(50)),
            Err(KeyError::Revoked { .. })
        ));
        assert_eq!(
            k.key_for(Purpose::Receipt, "0000000000000000", t(10)),
            Err(KeyError::Unknown("0000000000000000".into()))
        );
        assert_eq!(k.current(Purpose::Receipt).len(), 0);
        assert_eq!(k.current(Purpose::Vendor)[0].key_id, id(1));
    }
}
