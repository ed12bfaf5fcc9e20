//! Recording an agent's key rotation, whether it arrives by `RotateAgentKey` or in an
//! imported bundle: verify both signatures, let the store decide on its facts
//! (`rules::agent_keys::decide_rotation`) and write, and audit what was recorded.

use crate::rules::agent_keys::{RotationDecision, RotationRefusal};
use crate::store::{AuditEntry, Store, StoreError};
use prost::Message;
use tally_proto::agent_key::Rotation;
use tally_proto::pb;

/// Why a rotation was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Malformed or not signed by both keys: nothing was read from the store.
    #[error("{0}")]
    Invalid(#[from] tally_proto::agent_key::RotationError),
    #[error("{0}")]
    Refused(RotationRefusal),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Whether a rotation was recorded now or had been before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Now(Rotation),
    Before(Rotation),
}

/// Verifies and records `signed`; `via` names the path in the audit log.
pub async fn record(
    store: &dyn Store,
    signed: &pb::SignedAgentKeyRotation,
    via: &str,
) -> Result<Recorded, RotationError> {
    let rotation = Rotation::verify(signed)?;
    let now = store.clock().now();
    let decision = store
        .rotate_agent_key(rotation.clone(), signed.encode_to_vec(), now)
        .await?;
    match decision {
        RotationDecision::Record => {
            tracing::info!(
                old_key = %rotation.old_key_id(),
                new_key = %rotation.new_key_id(),
                from_seq = rotation.from_seq,
                via,
                "Agent key rotated."
            );
            // The rotation is recorded; a failed audit write must not make the agent
            // believe it was not (it would only resend it).
            if let Err(e) = store
                .audit(AuditEntry {
                    at: now,
                    actor: format!("agent:{}", rotation.old_key_id()),
                    action: "agent_key.rotate".into(),
                    target: format!(
                        "{} -> {} from seq {}",
                        rotation.old_key_id(),
                        rotation.new_key_id(),
                        rotation.from_seq
                    ),
                    outcome: format!("ok ({via})"),
                })
                .await
            {
                tracing::warn!(error = %e, "Auditing an agent key rotation failed.");
            }
            Ok(Recorded::Now(rotation))
        }
        RotationDecision::AlreadyRecorded => Ok(Recorded::Before(rotation)),
        RotationDecision::Refuse(r) => {
            tracing::warn!(
                old_key = %rotation.old_key_id(),
                new_key = %rotation.new_key_id(),
                refusal = %r,
                "Agent key rotation refused."
            );
            Err(RotationError::Refused(r))
        }
    }
}
