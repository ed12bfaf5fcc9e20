//! Agent key rotations: an agent hands its chain of reports from its old key to a new one.
//!
//! A rotation names the license, both public keys and `from_seq`, the first seq the new key
//! signs; the old key signs every report before it. It is signed as encoded by *both*
//! keys over `b"tally.v1.AgentKeyRotation\0" || rotation`: the old key's signature hands
//! the chain over (only the holder of the enrolled key can), the new key's proves the new
//! key is held (nobody can hand a chain to a key they do not hold, or to someone else's).
//!
//! The chain itself does not change: the new key's first report has seq `from_seq` and the
//! digest of the old key's last report as its `prev_digest`, so there is no gap and no
//! fork, and a verifier checks every report with the key that held the chain at its seq.

use crate::pb;
use crate::signing::{self, Domain, SignatureError};
use crate::time::{Instant, from_timestamp, to_timestamp};
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;

/// A decoded, verified rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub license_id: String,
    pub old_key: [u8; 32],
    pub new_key: [u8; 32],
    /// The first seq the new key signs (≥ 1).
    pub from_seq: u64,
    pub created_at: Instant,
}

/// Why a signed rotation was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("not a key rotation: {0}")]
    Malformed(String),
    #[error("the {which} key: {source}")]
    Key {
        which: &'static str,
        source: SignatureError,
    },
    #[error("the {which} key's signature: {source}")]
    Signature {
        which: &'static str,
        source: SignatureError,
    },
}

impl Rotation {
    pub fn encode(&self) -> Vec<u8> {
        pb::AgentKeyRotation {
            license_id: self.license_id.clone(),
            old_key: self.old_key.to_vec(),
            new_key: self.new_key.to_vec(),
            from_seq: self.from_seq,
            created_at: Some(to_timestamp(self.created_at)),
        }
        .encode_to_vec()
    }

    /// Signs with both keys: `old` must hold `old_key` and `new` `new_key`.
    pub fn sign(&self, old: &SigningKey, new: &SigningKey) -> pb::SignedAgentKeyRotation {
        debug_assert_eq!(old.verifying_key().to_bytes(), self.old_key);
        debug_assert_eq!(new.verifying_key().to_bytes(), self.new_key);
        let bytes = self.encode();
        pb::SignedAgentKeyRotation {
            old_signature: signing::sign(old, Domain::AgentKeyRotation, &bytes).to_vec(),
            new_signature: signing::sign(new, Domain::AgentKeyRotation, &bytes).to_vec(),
            rotation: bytes,
        }
    }

    /// Verifies both signatures over the bytes received (never re-encoded), then decodes.
    /// Both keys must be trusted keys (canonical, no torsion) and differ; `from_seq` ≥ 1.
    pub fn verify(signed: &pb::SignedAgentKeyRotation) -> Result<Rotation, RotationError> {
        let m = pb::AgentKeyRotation::decode(signed.rotation.as_slice())
            .map_err(|e| RotationError::Malformed(e.to_string()))?;
        let key = |which, b: &[u8]| {
            signing::trusted_key(b).map_err(|source| RotationError::Key { which, source })
        };
        let old: VerifyingKey = key("old", &m.old_key)?;
        let new: VerifyingKey = key("new", &m.new_key)?;
        for (which, k, sig) in [
            ("old", &old, &signed.old_signature),
            ("new", &new, &signed.new_signature),
        ] {
            signing::verify(k, Domain::AgentKeyRotation, &signed.rotation, sig)
                .map_err(|source| RotationError::Signature { which, source })?;
        }
        if old == new {
            return Err(RotationError::Malformed(
                "the old and the new key are the same".into(),
            ));
        }
        // Seqs are stored as signed 64-bit integers.
        if m.from_seq == 0 || m.from_seq > i64::MAX as u64 {
            return Err(RotationError::Malformed(format!(
                "from_seq must be from 1 to {}",
                i64::MAX
            )));
        }
        if m.license_id.is_empty() || m.license_id.len() > crate::limits::MAX_SHORT_STRING {
            return Err(RotationError::Malformed(
                "license_id: empty or too long".into(),
            ));
        }
        let created_at = m
            .created_at
            .as_ref()
            .and_then(from_timestamp)
            .ok_or_else(|| RotationError::Malformed("created_at: missing or invalid".into()))?;
        Ok(Rotation {
            license_id: m.license_id,
            old_key: old.to_bytes(),
            new_key: new.to_bytes(),
            from_seq: m.from_seq,
            created_at,
        })
    }

    pub fn old_key_id(&self) -> String {
        crate::keys::key_id(&self.old_key)
    }

    pub fn new_key_id(&self) -> String {
        crate::keys::key_id(&self.new_key)
    }
}

/// The keys an agent's chain was signed with, oldest first, from its enrolled key and its
/// verified rotations: which key holds the chain at each seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistory {
    /// `(key, from_seq)`, from_seq strictly increasing; the first from seq 1 (so every key
    /// signs at least one seq).
    keys: Vec<([u8; 32], u64)>,
}

/// Why rotations do not form one history.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("rotation {n} hands over key {found}, but the chain is held by key {expected}")]
    NotTheHolder {
        n: usize,
        found: String,
        expected: String,
    },
    #[error("rotation {n} starts at seq {from_seq}, not after the previous rotation's {previous}")]
    NotAfter {
        n: usize,
        from_seq: u64,
        previous: u64,
    },
    #[error("rotation {n} hands the chain to key {0}, which held it before", .key)]
    KeyReused { n: usize, key: String },
}

impl KeyHistory {
    /// The history of an agent enrolled with `first`, rotated by `rotations` in order.
    pub fn new(first: [u8; 32], rotations: &[Rotation]) -> Result<KeyHistory, HistoryError> {
        let mut keys = vec![(first, 1u64)];
        for (n, r) in rotations.iter().enumerate() {
            let (holder, since) = *keys.last().unwrap_or(&(first, 1));
            if r.old_key != holder {
                return Err(HistoryError::NotTheHolder {
                    n,
                    found: r.old_key_id(),
                    expected: crate::keys::key_id(&holder),
                });
            }
            // Each key signs at least one seq: a rotation starts after the seq its key took
            // the chain at (so an agent rotates only after its key's first report).
            if r.from_seq <= since {
                return Err(HistoryError::NotAfter {
                    n,
                    from_seq: r.from_seq,
                    previous: since,
                });
            }
            if keys.iter().any(|(k, _)| *k == r.new_key) {
                return Err(HistoryError::KeyReused {
                    n,
                    key: r.new_key_id(),
                });
            }
            keys.push((r.new_key, r.from_seq));
        }
        Ok(KeyHistory { keys })
    }

    /// The key that holds the chain at `seq`.
    pub fn key_at(&self, seq: u64) -> [u8; 32] {
        let i = self.keys.partition_point(|(_, from)| *from <= seq);
        self.keys[i.saturating_sub(1)].0
    }

    /// The key that signs new reports.
    pub fn current(&self) -> [u8; 32] {
        self.keys.last().map(|(k, _)| *k).unwrap_or([0; 32])
    }

    /// Every key, oldest first, with the first seq it holds.
    pub fn keys(&self) -> &[([u8; 32], u64)] {
        &self.keys
    }

    /// The ids of the keys that held the chain anywhere in `first..=last`, oldest first.
    pub fn key_ids_for(&self, first: u64, last: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (k, from)) in self.keys.iter().enumerate() {
            let until = self.keys.get(i + 1).map(|(_, f)| *f).unwrap_or(u64::MAX);
            if *from <= last && until > first && until > *from {
                out.push(crate::keys::key_id(k));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn rotation(old: u8, new: u8, from_seq: u64) -> Rotation {
        Rotation {
            license_id: "lic_1".into(),
            old_key: key(old).verifying_key().to_bytes(),
            new_key: key(new).verifying_key().to_bytes(),
            from_seq,
            created_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_rotation_signed_by_both_keys_verifies() {
        let r = rotation(1, 2, 7);
        let signed = r.sign(&key(1), &key(2));
        assert_eq!(Rotation::verify(&signed).unwrap(), r);
    }

    #[test]
    fn a_rotation_lacking_either_signature_or_tampered_is_refused() {
        let r = rotation(1, 2, 7);
        let good = r.sign(&key(1), &key(2));
        // An adversary holding the old key hands the chain to a key it does not hold: the
        // new key's signature is made by another key.
        let mut s = good.clone();
        s.new_signature = signing::sign(&key(3), Domain::AgentKeyRotation, &s.rotation).to_vec();
        assert!(matches!(
            Rotation::verify(&s),
            Err(RotationError::Signature { which: "new", .. })
        ));
        // Someone holding only a new key claims another agent's chain.
        let mut s = good.clone();
        s.old_signature = signing::sign(&key(9), Domain::AgentKeyRotation, &s.rotation).to_vec();
        assert!(matches!(
            Rotation::verify(&s),
            Err(RotationError::Signature { which: "old", .. })
        ));
        // Re-signed by both keys but with the seq changed in the bytes: the signatures cover
        // the bytes as received, so changing them without re-signing fails.
        let mut s = good.clone();
        let mut m = pb::AgentKeyRotation::decode(s.rotation.as_slice()).unwrap();
        m.from_seq = 3;
        s.rotation = m.encode_to_vec();
        assert!(Rotation::verify(&s).is_err());
        // Another domain's signature over the same bytes does not count.
        let mut s = good;
        s.old_signature = signing::sign(&key(1), Domain::Keyring, &s.rotation).to_vec();
        assert!(Rotation::verify(&s).is_err());
        // Signed by both keys but meaningless.
        let same = Rotation {
            new_key: key(1).verifying_key().to_bytes(),
            ..rotation(1, 2, 7)
        };
        assert!(matches!(
            Rotation::verify(&same.sign(&key(1), &key(1))),
            Err(RotationError::Malformed(_))
        ));
        for bad in [0, i64::MAX as u64 + 1, u64::MAX] {
            let r = rotation(1, 2, bad);
            assert!(matches!(
                Rotation::verify(&r.sign(&key(1), &key(2))),
                Err(RotationError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_history_names_the_key_of_every_seq() {
        let h = KeyHistory::new(
            key(1).verifying_key().to_bytes(),
            &[rotation(1, 2, 5), rotation(2, 3, 9)],
        )
        .unwrap();
        let k = |s: u8| key(s).verifying_key().to_bytes();
        for (seq, want) in [(1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (1000, 3)] {
            assert_eq!(h.key_at(seq), k(want), "seq {seq}");
        }
        assert_eq!(h.current(), k(3));
        let id = |s: u8| crate::keys::key_id(&k(s));
        assert_eq!(h.key_ids_for(1, 4), vec![id(1)]);
        assert_eq!(h.key_ids_for(3, 6), vec![id(1), id(2)]);
        assert_eq!(h.key_ids_for(2, 20), vec![id(1), id(2), id(3)]);
        assert_eq!(h.key_ids_for(9, 9), vec![id(3)]);
    }

    #[test]
    fn a_history_refuses_a_fork_of_keys() {
        let first = key(1).verifying_key().to_bytes();
        // Handed over by a key that no longer holds the chain.
        assert!(matches!(
            KeyHistory::new(first, &[rotation(1, 2, 5), rotation(1, 3, 9)]),
            Err(HistoryError::NotTheHolder { n: 1, .. })
        ));
        // Back in seq.
        assert!(matches!(
            KeyHistory::new(first, &[rotation(1, 2, 5), rotation(2, 3, 4)]),
            Err(HistoryError::NotAfter { n: 1, .. })
        ));
        assert!(matches!(
            KeyHistory::new(first, &[rotation(1, 2, 5), rotation(2, 3, 5)]),
            Err(HistoryError::NotAfter { n: 1, .. })
        ));
        // Back to a key that held it before.
        assert!(matches!(
            KeyHistory::new(first, &[rotation(1, 2, 5), rotation(2, 1, 9)]),
            Err(HistoryError::KeyReused { n: 1, .. })
        ));
        // Before the enrolled key's first report: a key that signs nothing.
        assert!(matches!(
            KeyHistory::new(first, &[rotation(1, 2, 1)]),
            Err(HistoryError::NotAfter { n: 0, .. })
        ));
        assert!(KeyHistory::new(first, &[rotation(1, 2, 2)]).is_ok());
    }
}
