//! Agent keys: which key may sign which report, and whether a rotation is recorded.
//!
//! An agent's chain of reports is held by one key at a time. The enrolled key holds it
//! from seq 1; a rotation (signed by the holder and the new key, see
//! `tally_proto::agent_key`) hands it to a new key from `from_seq` on. Each key therefore
//! signs one range of seqs, `[from_seq, until_seq)`, and nothing outside it. A key revoked
//! at a time signs nothing the collector receives at or after that time (the collector's
//! clock decides, never a time the signer claims).
//!
//! Pure functions over what the store tells them; the store asks, writes what they
//! decide, and never decides itself.

use tally_proto::agent_key::Rotation;
use tally_proto::keys::key_id;
use tally_proto::reason::Reason;
use tally_proto::time::{Instant, rfc3339};

/// One enrolled agent key as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKey {
    pub key: [u8; 32],
    pub agent_id: String,
    pub license_id: String,
    /// The first seq it signs.
    pub from_seq: u64,
    /// The first seq it no longer signs (it handed the chain on); `None` while it holds it.
    pub until_seq: Option<u64>,
    /// It signs nothing received at or after this.
    pub revoked_at: Option<Instant>,
    /// The whole agent was revoked (`agents revoke`, a revoked license, a cancelled
    /// customer).
    pub agent_revoked: bool,
}

/// Whether `key` may sign a report of `license_id` with `seq` received at `received_at`:
/// `Err` with the refusal's reason and detail when not.
pub fn judge_report(
    key: &AgentKey,
    license_id: &str,
    seq: u64,
    received_at: Instant,
) -> Result<(), (Reason, String)> {
    let id = key_id(&key.key);
    if key.agent_revoked {
        return Err((Reason::AgentRevoked, "the agent key was revoked".into()));
    }
    if let Some(at) = key.revoked_at
        && received_at >= at
    {
        return Err((
            Reason::AgentRevoked,
            format!("agent key {id} was revoked from {}", rfc3339(at)),
        ));
    }
    if key.license_id != license_id {
        return Err((
            Reason::LicenseMismatch,
            format!("the agent key is enrolled for another license than {license_id}"),
        ));
    }
    if seq < key.from_seq {
        return Err((
            Reason::AgentRevoked,
            format!(
                "agent key {id} signs seq {} and later, not seq {seq}",
                key.from_seq
            ),
        ));
    }
    if let Some(until) = key.until_seq
        && seq >= until
    {
        return Err((
            Reason::AgentRevoked,
            format!("agent key {id} handed the chain to a new key at seq {until}, not seq {seq}"),
        ));
    }
    Ok(())
}

/// What the store knows when a rotation arrives, read in the transaction that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationFacts {
    /// The rotation's old key, if enrolled.
    pub old: Option<AgentKey>,
    /// The rotation's new key, if already enrolled (by this rotation before, or otherwise).
    pub new: Option<AgentKey>,
    /// The highest seq stored for the old key's agent.
    pub last_seq: u64,
}

/// What to do with a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationDecision {
    /// Record it: the new key holds the agent's chain from `from_seq`, the old key until
    /// then.
    Record,
    /// This very rotation is recorded already (a resend): nothing to write, answer OK.
    AlreadyRecorded,
    Refuse(RotationRefusal),
}

/// Why a rotation is not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefusal {
    /// The old key is not enrolled (yet: an air-gapped agent added later may retry).
    #[error("agent key {0} is not enrolled")]
    UnknownKey(String),
    #[error("{0}")]
    Revoked(String),
    #[error("agent key {key} is enrolled for license {enrolled}, not {claimed}")]
    LicenseMismatch {
        key: String,
        enrolled: String,
        claimed: String,
    },
    /// A rotation that would fork the chain or the keys: refused, never recorded.
    #[error("{0}")]
    Conflict(String),
}

/// Decides a verified `rotation` given what the store knows, at the collector's `now`.
pub fn decide_rotation(r: &Rotation, facts: &RotationFacts, now: Instant) -> RotationDecision {
    use RotationDecision::Refuse;
    let Some(old) = &facts.old else {
        return Refuse(RotationRefusal::UnknownKey(r.old_key_id()));
    };
    if let Some(new) = &facts.new {
        // The same rotation again: the new key holds this agent's chain from this seq.
        return if new.agent_id == old.agent_id
            && new.from_seq == r.from_seq
            && old.until_seq == Some(r.from_seq)
        {
            RotationDecision::AlreadyRecorded
        } else {
            Refuse(RotationRefusal::Conflict(format!(
                "agent key {} is already enrolled",
                r.new_key_id()
            )))
        };
    }
    if old.agent_revoked {
        return Refuse(RotationRefusal::Revoked(format!(
            "agent {} was revoked",
            old.agent_id
        )));
    }
    if let Some(at) = old.revoked_at
        && now >= at
    {
        return Refuse(RotationRefusal::Revoked(format!(
            "agent key {} was revoked from {}: it cannot hand the chain on",
            r.old_key_id(),
            rfc3339(at)
        )));
    }
    if old.license_id != r.license_id {
        return Refuse(RotationRefusal::LicenseMismatch {
            key: r.old_key_id(),
            enrolled: old.license_id.clone(),
            claimed: r.license_id.clone(),
        });
    }
    if let Some(until) = old.until_seq {
        return Refuse(RotationRefusal::Conflict(format!(
            "agent key {} already handed the chain on at seq {until}",
            r.old_key_id()
        )));
    }
    // Every key signs at least one seq (the rule of `tally_proto::agent_key::KeyHistory`,
    // which verifiers apply to the same rotations).
    if r.from_seq <= old.from_seq {
        return Refuse(RotationRefusal::Conflict(format!(
            "agent key {} holds the chain from seq {}: a rotation starts after it",
            r.old_key_id(),
            old.from_seq,
        )));
    }
    if r.from_seq <= facts.last_seq {
        return Refuse(RotationRefusal::Conflict(format!(
            "seq {} is stored already, signed by agent key {}: a rotation starts after the \
             last report (seq {})",
            r.from_seq,
            r.old_key_id(),
            facts.last_seq
        )));
    }
    RotationDecision::Record
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn k(seed: u8) -> [u8; 32] {
        SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .to_bytes()
    }

    fn t(s: i64) -> Instant {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn key(seed: u8, from: u64, until: Option<u64>) -> AgentKey {
        AgentKey {
            key: k(seed),
            agent_id: "agt_1".into(),
            license_id: "lic_1".into(),
            from_seq: from,
            until_seq: until,
            revoked_at: None,
            agent_revoked: false,
        }
    }

    fn rot(old: u8, new: u8, from_seq: u64) -> Rotation {
        Rotation {
            license_id: "lic_1".into(),
            old_key: k(old),
            new_key: k(new),
            from_seq,
            created_at: t(0),
        }
    }

    #[test]
    fn a_key_signs_its_range_of_seqs_until_revoked() {
        let old = key(1, 1, Some(10));
        let new = key(2, 10, None);
        let revoked = AgentKey {
            revoked_at: Some(t(100)),
            ..key(2, 10, None)
        };
        let gone = AgentKey {
            agent_revoked: true,
            ..key(1, 1, None)
        };
        let ok = |k: &AgentKey, seq, at| judge_report(k, "lic_1", seq, t(at)).is_ok();
        let reason = |k: &AgentKey, lic, seq, at| judge_report(k, lic, seq, t(at)).map_err(|e| e.0);
        // (key, license, seq, received at) → outcome
        assert!(ok(&old, 1, 0));
        assert!(ok(&old, 9, 0));
        assert_eq!(reason(&old, "lic_1", 10, 0), Err(Reason::AgentRevoked));
        assert_eq!(reason(&new, "lic_1", 9, 0), Err(Reason::AgentRevoked));
        assert!(ok(&new, 10, 0));
        assert!(ok(&new, u64::MAX, 0));
        assert!(ok(&revoked, 10, 99));
        assert_eq!(
            reason(&revoked, "lic_1", 10, 100),
            Err(Reason::AgentRevoked)
        );
        assert_eq!(reason(&gone, "lic_1", 1, 0), Err(Reason::AgentRevoked));
        assert_eq!(reason(&new, "lic_2", 10, 0), Err(Reason::LicenseMismatch));
    }

    #[test]
    fn a_rotation_is_recorded_once_and_never_forks_the_chain() {
        let facts = |old: Option<AgentKey>, new: Option<AgentKey>, last_seq| RotationFacts {
            old,
            new,
            last_seq,
        };
        use RotationDecision::*;
        let conflict = |d: RotationDecision| matches!(d, Refuse(RotationRefusal::Conflict(_)));
        // The holder hands over after its last stored report (its outbox may hold more).
        assert_eq!(
            decide_rotation(&rot(1, 2, 8), &facts(Some(key(1, 1, None)), None, 5), t(0)),
            Record
        );
        assert_eq!(
            decide_rotation(&rot(1, 2, 6), &facts(Some(key(1, 1, None)), None, 5), t(0)),
            Record
        );
        // Before the key's first seq: a key that would sign nothing.
        assert!(conflict(decide_rotation(
            &rot(1, 2, 1),
            &facts(Some(key(1, 1, None)), None, 0),
            t(0)
        )));
        assert!(conflict(decide_rotation(
            &rot(2, 3, 8),
            &facts(Some(key(2, 8, None)), None, 0),
            t(0)
        )));
        // A resend of the recorded rotation.
        assert_eq!(
            decide_rotation(
                &rot(1, 2, 8),
                &facts(Some(key(1, 1, Some(8))), Some(key(2, 8, None)), 9),
                t(0)
            ),
            AlreadyRecorded
        );
        // A seq the old key already signed and the collector stored: a fork.
        assert!(conflict(decide_rotation(
            &rot(1, 2, 5),
            &facts(Some(key(1, 1, None)), None, 5),
            t(0)
        )));
        // A second rotation of a key that already handed over (a key fork).
        assert!(conflict(decide_rotation(
            &rot(1, 3, 9),
            &facts(Some(key(1, 1, Some(8))), None, 9),
            t(0)
        )));
        // Before the old key's own range.
        assert!(conflict(decide_rotation(
            &rot(2, 3, 7),
            &facts(Some(key(2, 8, None)), None, 0),
            t(0)
        )));
        // To a key enrolled elsewhere (another agent's, or this agent's earlier key).
        let elsewhere = AgentKey {
            agent_id: "agt_2".into(),
            ..key(2, 1, None)
        };
        assert!(conflict(decide_rotation(
            &rot(1, 2, 8),
            &facts(Some(key(1, 1, None)), Some(elsewhere), 0),
            t(0)
        )));
        assert!(conflict(decide_rotation(
            &rot(1, 2, 9),
            &facts(Some(key(1, 1, Some(8))), Some(key(2, 8, None)), 0),
            t(0)
        )));
        // Unknown, revoked, another license.
        assert_eq!(
            decide_rotation(&rot(1, 2, 8), &facts(None, None, 0), t(0)),
            Refuse(RotationRefusal::UnknownKey(key_id(&k(1))))
        );
        let revoked = AgentKey {
            revoked_at: Some(t(10)),
            ..key(1, 1, None)
        };
        assert_eq!(
            decide_rotation(&rot(1, 2, 8), &facts(Some(revoked.clone()), None, 0), t(9)),
            Record
        );
        assert!(matches!(
            decide_rotation(&rot(1, 2, 8), &facts(Some(revoked), None, 0), t(10)),
            Refuse(RotationRefusal::Revoked(_))
        ));
        let gone = AgentKey {
            agent_revoked: true,
            ..key(1, 1, None)
        };
        assert!(matches!(
            decide_rotation(&rot(1, 2, 8), &facts(Some(gone), None, 0), t(0)),
            Refuse(RotationRefusal::Revoked(_))
        ));
        let other = AgentKey {
            license_id: "lic_9".into(),
            ..key(1, 1, None)
        };
        assert!(matches!(
            decide_rotation(&rot(1, 2, 8), &facts(Some(other), None, 0), t(0)),
            Refuse(RotationRefusal::LicenseMismatch { .. })
        ));
    }
}
