//! Receipts: the collector's signed statement of what it did with one report.

use crate::batch_signer::BatchSigner;
use crate::digest::Digest;
use crate::pb;
use crate::signing::{self, Domain, SignatureError};
use crate::time::{Instant, from_timestamp, to_timestamp};
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Quarantined,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Quarantined => "quarantined",
            Outcome::Refused => "refused",
        }
    }

    fn to_pb(self) -> pb::Outcome {
        match self {
            Outcome::Accepted => pb::Outcome::Accepted,
            Outcome::Duplicate => pb::Outcome::Duplicate,
            Outcome::Quarantined => pb::Outcome::Quarantined,
            Outcome::Refused => pb::Outcome::Refused,
        }
    }

    fn from_pb(o: i32) -> Option<Self> {
        match pb::Outcome::try_from(o).ok()? {
            pb::Outcome::Accepted => Some(Outcome::Accepted),
            pb::Outcome::Duplicate => Some(Outcome::Duplicate),
            pb::Outcome::Quarantined => Some(Outcome::Quarantined),
            pb::Outcome::Refused => Some(Outcome::Refused),
            pb::Outcome::Unspecified => None,
        }
    }
}

/// Per-metric credit in the current license period. `limit` is `None` when unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    pub metric: String,
    pub limit: Option<u64>,
    pub used: u64,
}

/// A receipt body, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptBody {
    pub report_digest: Digest,
    pub outcome: Outcome,
    /// Reason code (docs/protocol.md §6.4); empty for accepted and duplicate reports.
    pub reason: String,
    pub detail: String,
    pub received_at: Instant,
    /// `None` when the license is unknown (refused reports).
    pub lease_until: Option<Instant>,
    pub credits: Vec<Credit>,
}

/// Why a receipt cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("receipt body is malformed: {0}")]
    Malformed(String),
    #[error("receipt key: {0}")]
    Key(crate::keyring::KeyError),
}

impl ReceiptBody {
    /// Encodes and signs with the collector key.
    pub fn sign(&self, key: &SigningKey) -> pb::Receipt {
        let body = self.encode();
        let signature = signing::sign(key, Domain::ReceiptBody, &body).to_vec();
        pb::Receipt {
            body,
            signature,
            key_id: crate::keys::key_id(&key.verifying_key().to_bytes()),
        }
    }

    /// Encodes and signs many bodies at once (the collector's path: one receipt per
    /// report, signed in batches). Same signatures as [`ReceiptBody::sign`].
    pub fn sign_all(bodies: &[ReceiptBody], signer: &BatchSigner) -> Vec<pb::Receipt> {
        let encoded: Vec<Vec<u8>> = bodies.iter().map(ReceiptBody::encode).collect();
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let sigs = signer.sign_all(Domain::ReceiptBody, &refs);
        let key_id = signer.key_id();
        encoded
            .into_iter()
            .zip(sigs)
            .map(|(body, sig)| pb::Receipt {
                body,
                signature: sig.to_vec(),
                key_id: key_id.clone(),
            })
            .collect()
    }

    /// The body's wire encoding (what is signed).
    pub fn encode(&self) -> Vec<u8> {
        pb::ReceiptBody {
            report_digest: self.report_digest.0.to_vec(),
            outcome: self.outcome.to_pb() as i32,
            reason: self.reason.clone(),
            detail: self.detail.clone(),
            received_at: Some(to_timestamp(self.received_at)),
            lease_until: self.lease_until.map(to_timestamp),
            credits: self
                .credits
                .iter()
                .map(|c| pb::Credit {
                    metric: c.metric.clone(),
                    limit: c.limit.unwrap_or(0),
                    used: c.used,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Verifies a receipt against the keyring: the key its `key_id` names must verify it
    /// and be a receipt key valid at its `received_at`; and, given `arrived_at` (when the
    /// verifier got it, by its own clock), not revoked by then — so a leaked key cannot
    /// make a receipt an agent takes after the revocation pass by claiming an earlier time.
    /// A receipt without a key id (a collector that predates keyrings) is checked with
    /// `legacy`, the key the agent enrolled with, if given.
    pub fn verify_in(
        receipt: &pb::Receipt,
        keyring: &crate::keyring::Keyring,
        legacy: Option<&VerifyingKey>,
        arrived_at: Option<Instant>,
    ) -> Result<Self, ReceiptError> {
        use crate::keyring::Purpose;
        // A receipt that names no key (a collector from before key ids) is the vendor key's
        // — `legacy` — and is judged through the keyring like any other: valid only where
        // the keyring lets that key sign receipts, and not once it is retired or revoked.
        let key_id = if receipt.key_id.is_empty() {
            let legacy = legacy.ok_or(ReceiptError::Key(crate::keyring::KeyError::Unknown(
                "(none named)".into(),
            )))?;
            crate::keys::key_id(&legacy.to_bytes())
        } else {
            receipt.key_id.clone()
        };
        let entry = keyring
            .get(&key_id)
            .ok_or_else(|| ReceiptError::Key(crate::keyring::KeyError::Unknown(key_id.clone())))?;
        let key = VerifyingKey::from_bytes(&entry.public_key)
            .map_err(|_| ReceiptError::Signature(SignatureError::BadKey))?;
        let body = Self::verify(receipt, &key)?;
        keyring
            .key_for(Purpose::Receipt, &key_id, body.received_at)
            .map_err(ReceiptError::Key)?;
        if let Some(arrived) = arrived_at {
            // A revoked key's receipts are refused from the revocation on, whatever time
            // they claim (a planned rotation's end is judged at received_at alone).
            if let Some(r) = entry.revoked_at
                && arrived >= r
            {
                return Err(ReceiptError::Key(crate::keyring::KeyError::Revoked {
                    key_id: key_id.clone(),
                    revoked_at: r,
                }));
            }
        }
        Ok(body)
    }

    /// Verifies a receipt against the collector key, then decodes it.
    pub fn verify(
        receipt: &pb::Receipt,
        collector_key: &VerifyingKey,
    ) -> Result<Self, ReceiptError> {
        signing::verify(
            collector_key,
            Domain::ReceiptBody,
            &receipt.body,
            &receipt.signature,
        )?;
        let m = pb::ReceiptBody::decode(receipt.body.as_slice())
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        let bad = |s: &str| ReceiptError::Malformed(s.to_string());
        Ok(ReceiptBody {
            report_digest: Digest::from_slice(&m.report_digest)
                .ok_or_else(|| bad("report_digest must be 32 bytes"))?,
            outcome: Outcome::from_pb(m.outcome).ok_or_else(|| bad("unknown outcome"))?,
            reason: m.reason,
            detail: m.detail,
            received_at: m
                .received_at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| bad("received_at missing"))?,
            lease_until: m.lease_until.as_ref().and_then(from_timestamp),
            credits: m
                .credits
                .into_iter()
                .map(|c| Credit {
                    metric: c.metric,
                    limit: (c.limit != 0).then_some(c.limit),
                    used: c.used,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt naming no key is the vendor key's, and the keyring judges it: good where
    /// that key signs receipts (a deployment from before keyrings), refused where the vendor
    /// key signs only licenses and keyrings — an old root cannot forge receipts that way.
    #[test]
    fn a_receipt_naming_no_key_is_judged_as_the_vendor_keys() {
        use crate::keyring::{KeyEntry, Keyring, Purpose};
        let vendor = crate::keys::generate();
        let at = chrono::Utc::now();
        let body = ReceiptBody {
            report_digest: Digest([1; 32]),
            outcome: Outcome::Accepted,
            reason: String::new(),
            detail: String::new(),
            received_at: at,
            lease_until: None,
            credits: vec![],
        };
        let mut r = body.sign(&vendor);
        r.key_id.clear();
        let epoch = chrono::DateTime::UNIX_EPOCH;
        let legacy = Keyring::first(
            vec![KeyEntry::new(
                &vendor.verifying_key(),
                &[Purpose::Vendor, Purpose::Receipt, Purpose::Statement],
                epoch,
            )],
            epoch,
        );
        let root_only = Keyring::first(
            vec![KeyEntry::new(
                &vendor.verifying_key(),
                &[Purpose::Vendor],
                epoch,
            )],
            epoch,
        );
        let v = vendor.verifying_key();
        assert!(ReceiptBody::verify_in(&r, &legacy, Some(&v), Some(at)).is_ok());
        assert!(matches!(
            ReceiptBody::verify_in(&r, &root_only, Some(&v), Some(at)),
            Err(ReceiptError::Key(
                crate::keyring::KeyError::WrongPurpose { .. }
            ))
        ));
        assert!(ReceiptBody::verify_in(&r, &legacy, None, Some(at)).is_err());
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = crate::keys::generate();
        let body = ReceiptBody {
            report_digest: Digest([3; 32]),
            outcome: Outcome::Quarantined,
            reason: "clock_skew".into(),
            detail: "window ends in the future".into(),
            received_at: chrono::Utc::now(),
            lease_until: None,
            credits: vec![Credit {
                metric: "api.convert".into(),
                limit: Some(10),
                used: 4,
            }],
        };
        let mut r = body.sign(&key);
        let back = ReceiptBody::verify(&r, &key.verifying_key()).unwrap();
        assert_eq!(back.outcome, Outcome::Quarantined);
        assert_eq!(back.credits, body.credits);
        let other = crate::keys::generate();
        assert!(ReceiptBody::verify(&r, &other.verifying_key()).is_err());
        r.body[0] ^= 1;
        assert!(ReceiptBody::verify(&r, &key.verifying_key()).is_err());
    }
}
