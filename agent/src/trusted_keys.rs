//! The keys an agent trusts: the vendor key of its license (the root) and the keyrings it
//! certifies, which name the receipt and statement keys and when each was valid. Receipts
//! and statements are checked with the key their id names, valid when they were made; a
//! key this agent does not know yet is looked up by fetching the newer keyrings from a
//! collector (`GetKeyrings`) and following the chain from the keyring it holds, each
//! verified under the chain rule of `tally_proto::keyring` before it is kept.
//!
//! An agent whose collector predates keyrings holds none: its receipts name no key (or
//! the vendor key's id) and are checked with the vendor key, as before.

use crate::store::AgentStore;
use ed25519_dalek::VerifyingKey;
use prost::Message;
use std::sync::RwLock;
use tally_proto::keyring::Keyring;
use tally_proto::pb;
use tally_proto::receipt::{ReceiptBody, ReceiptError};
use tally_proto::statement::{Statement, StatementError};
use tally_proto::time::Instant;

/// Where the accepted keyrings are kept (an encoded `GetKeyringsResponse`, oldest first).
const META: &str = "keyrings";

pub struct TrustedKeys {
    vendor: VerifyingKey,
    /// The newest accepted keyring and every accepted one as signed.
    chain: RwLock<Option<(Keyring, Vec<pb::SignedKeyring>)>>,
}

impl TrustedKeys {
    /// The keys held in `store`, verified again from `vendor` (a stored keyring that does
    /// not verify is an error: the directory was tampered with).
    pub fn load(store: &AgentStore, vendor: VerifyingKey) -> Result<TrustedKeys, String> {
        let keys = TrustedKeys {
            vendor,
            chain: RwLock::new(None),
        };
        if let Some(raw) = store.meta(META).map_err(|e| e.to_string())? {
            let list = pb::GetKeyringsResponse::decode(raw.as_slice())
                .map_err(|e| format!("stored keyrings: {e}"))?
                .keyrings;
            let (k, _) = keys.follow(None, &list)?;
            *keys.chain.write().unwrap_or_else(|p| p.into_inner()) = Some((k, list));
        }
        Ok(keys)
    }

    /// The vendor key of the license.
    pub fn vendor(&self) -> &VerifyingKey {
        &self.vendor
    }

    /// The newest accepted keyring, if any.
    pub fn keyring(&self) -> Option<Keyring> {
        self.chain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(k, _)| k.clone())
    }

    /// The version of the newest accepted keyring (0: none).
    pub fn version(&self) -> u64 {
        self.keyring().map_or(0, |k| k.version)
    }

    /// Follows `list` (oldest first) from `from`, or, holding nothing yet, from the first
    /// keyring the vendor key itself signs as a current root (a license of a later vendor
    /// key starts where that key came in). Returns the newest keyring and the part of
    /// `list` followed.
    fn follow(
        &self,
        from: Option<&Keyring>,
        list: &[pb::SignedKeyring],
    ) -> Result<(Keyring, usize), String> {
        let (mut current, rest) = match from {
            Some(k) => (k.clone(), list),
            None => {
                let start = list
                    .iter()
                    .position(|s| Keyring::verify_first(s, &self.vendor).is_ok())
                    .ok_or_else(|| {
                        "keyring refused: keyring is not signed by any vendor key already trusted"
                            .to_string()
                    })?;
                let first = Keyring::verify_first(&list[start], &self.vendor)
                    .map_err(|e| format!("keyring refused: {e}"))?;
                (first, &list[start + 1..])
            }
        };
        for signed in rest {
            current = current
                .verify_next(signed)
                .map_err(|e| format!("keyring refused: {e}"))?;
        }
        Ok((current, list.len()))
    }

    /// The newest keyring `list` (oldest first) leads to from `vendor`, as [`Self::follow`].
    pub fn follow_from(
        vendor: VerifyingKey,
        list: &[pb::SignedKeyring],
    ) -> Result<Keyring, String> {
        let keys = TrustedKeys {
            vendor,
            chain: RwLock::new(None),
        };
        keys.follow(None, list).map(|(k, _)| k)
    }

    /// Verifies `list` (keyrings newer than the one held, oldest first) and keeps them.
    /// Returns whether anything new was accepted. Nothing is kept unless all verify.
    pub async fn accept(
        &self,
        store: &AgentStore,
        list: Vec<pb::SignedKeyring>,
    ) -> Result<bool, AcceptError> {
        if list.is_empty() {
            return Ok(false);
        }
        let (held, mut all) = match self
            .chain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some((k, all)) => (Some(k.clone()), all.clone()),
            None => (None, Vec::new()),
        };
        // Versions already held are skipped (a collector may send more than asked for).
        let newer: Vec<pb::SignedKeyring> = list
            .into_iter()
            .filter(|s| {
                let v = pb::Keyring::decode(s.keyring.as_slice()).map_or(u64::MAX, |k| k.version);
                held.as_ref().is_none_or(|h| v > h.version)
            })
            .collect();
        if newer.is_empty() {
            return Ok(false);
        }
        let (next, _) = self
            .follow(held.as_ref(), &newer)
            .map_err(AcceptError::Refused)?;
        all.extend(newer);
        store
            .set_meta(
                META,
                pb::GetKeyringsResponse {
                    keyrings: all.clone(),
                }
                .encode_to_vec(),
            )
            .await?;
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Some((next, all));
        Ok(true)
    }

    /// Verifies a receipt: with the keyring, by the key its id names (valid at its
    /// `received_at`, and not revoked by `arrived_at` when given: when it came in); without
    /// a keyring (a collector that predates them), with the vendor key.
    pub fn verify_receipt(
        &self,
        r: &pb::Receipt,
        arrived_at: Option<Instant>,
    ) -> Result<ReceiptBody, ReceiptError> {
        match self.keyring() {
            Some(k) => ReceiptBody::verify_in(r, &k, Some(&self.vendor), arrived_at),
            None => {
                let vendor_id = tally_proto::keys::key_id(&self.vendor.to_bytes());
                if r.key_id.is_empty() || r.key_id == vendor_id {
                    ReceiptBody::verify(r, &self.vendor)
                } else {
                    Err(ReceiptError::Key(tally_proto::keyring::KeyError::Unknown(
                        r.key_id.clone(),
                    )))
                }
            }
        }
    }

    /// The stored receipts whose key the keyring held now no longer lets sign at their
    /// `received_at` (a revocation since they arrived; their signatures were checked then):
    /// `(seq, why)`, for `status` to show which receipts to fetch again.
    pub fn receipts_no_longer_valid(
        &self,
        reports: &[crate::store::StoredReport],
    ) -> Vec<(u64, String)> {
        use tally_proto::keyring::Purpose;
        let Some(k) = self.keyring() else {
            return Vec::new();
        };
        let vendor_id = tally_proto::keys::key_id(&self.vendor.to_bytes());
        let mut out = Vec::new();
        for r in reports {
            let Some(rc) = &r.receipt else { continue };
            let at = pb::ReceiptBody::decode(rc.body.as_slice())
                .ok()
                .and_then(|b| b.received_at)
                .and_then(|t| tally_proto::time::from_timestamp(&t));
            let Some(at) = at else {
                out.push((r.seq, "the stored receipt does not decode".into()));
                continue;
            };
            let id = if rc.key_id.is_empty() {
                vendor_id.as_str()
            } else {
                rc.key_id.as_str()
            };
            if let Err(e) = k.key_for(Purpose::Receipt, id, at) {
                out.push((r.seq, e.to_string()));
            }
        }
        out
    }

    /// Verifies a closed statement: with the keyring, by its key valid at its close;
    /// without one, with the vendor key.
    pub fn verify_statement(&self, document: &[u8]) -> Result<Statement, StatementError> {
        match self.keyring() {
            Some(k) => Statement::verify_in(document, &k),
            None => Statement::verify(document, &self.vendor),
        }
    }
}

/// Whether an error means "a key this agent does not know": worth fetching keyrings for.
pub fn unknown_key(e: &ReceiptError) -> bool {
    matches!(
        e,
        ReceiptError::Key(tally_proto::keyring::KeyError::Unknown(_))
    )
}

/// Fetches the keyrings newer than the held one from a collector and accepts them.
pub async fn refresh(
    keys: &TrustedKeys,
    store: &AgentStore,
    client: &mut pb::ingest_client::IngestClient<tonic::transport::Channel>,
) -> Result<bool, String> {
    let list = client
        .get_keyrings(pb::GetKeyringsRequest {
            after_version: keys.version(),
        })
        .await
        .map_err(|s| format!("GetKeyrings: {}: {}", s.code(), s.message()))?
        .into_inner()
        .keyrings;
    keys.accept(store, list).await.map_err(|e| e.to_string())
}

/// Why keyrings were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// They do not follow from the keyring held under the chain rule (forged, or not this
    /// deployment's): bad input.
    #[error("{0}")]
    Refused(String),
    /// They verify, but could not be stored.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}
