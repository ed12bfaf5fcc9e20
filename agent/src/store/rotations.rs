//! Agent key rotations: the signed hand-overs of the chain from one agent key to the next,
//! each waiting to be recorded by the collector (`pending`), then `recorded` or `refused`.
//!
//! One transaction starts a rotation: it fixes `from_seq` as one past the newest report,
//! so the report-closing transaction (which checks the key it signs with against the
//! newest rotation) never signs a seq with a key that handed it on.

use super::*;
use tally_proto::agent_key::{KeyHistory, Rotation};

/// Where a rotation stands with the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationState {
    /// Not recorded by the collector yet: sent before any report.
    Pending,
    Recorded,
    /// The collector refused it (final; reports by the new key then wait as unknown).
    Refused,
}

impl RotationState {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Pending => "pending",
            RotationState::Recorded => "recorded",
            RotationState::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            RotationState::Pending,
            RotationState::Recorded,
            RotationState::Refused,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A stored rotation, verified as it is read.
#[derive(Debug, Clone)]
pub struct StoredRotation {
    pub rotation: Rotation,
    pub signed: pb::SignedAgentKeyRotation,
    pub state: RotationState,
    pub detail: String,
}

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS key_rotations (
    from_seq INTEGER PRIMARY KEY,
    signed BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'recorded', 'refused')),
    detail TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
"#;

fn read_all(c: &Connection) -> StoreResult<Vec<StoredRotation>> {
    read_where(c, "ORDER BY from_seq")
}

/// The rotations `clause` selects (each verified as it is read).
fn read_where(c: &Connection, clause: &str) -> StoreResult<Vec<StoredRotation>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT signed, state, detail FROM key_rotations {clause}"
        ))?
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(bytes, state, detail)| {
            let signed =
                <pb::SignedAgentKeyRotation as prost::Message>::decode(bytes.as_slice())
                    .map_err(|e| StoreError::Database(format!("a stored key rotation: {e}")))?;
            let rotation = Rotation::verify(&signed)
                .map_err(|e| StoreError::Database(format!("a stored key rotation: {e}")))?;
            Ok(StoredRotation {
                rotation,
                signed,
                state: RotationState::parse(&state).ok_or_else(|| {
                    StoreError::Database(format!("unknown rotation state {state:?}"))
                })?,
                detail,
            })
        })
        .collect()
}

/// The key the newest rotation handed the chain to; `None` before any rotation.
/// (Asked by every window close: reads and verifies the newest rotation only.)
pub(super) fn current_key(c: &Connection) -> StoreResult<Option<[u8; 32]>> {
    Ok(read_where(c, "ORDER BY from_seq DESC LIMIT 1")?
        .first()
        .map(|r| r.rotation.new_key))
}

impl AgentStore {
    /// Every rotation, oldest first, each verified (both signatures).
    pub fn rotations(&self) -> StoreResult<Vec<StoredRotation>> {
        read_all(&self.reader()?)
    }

    /// The rotations not yet recorded by the collector, oldest first (asked before every
    /// delivery: usually none, and nothing is verified then).
    pub fn pending_rotations(&self) -> StoreResult<Vec<StoredRotation>> {
        read_where(&self.reader()?, "WHERE state = 'pending' ORDER BY from_seq")
    }

    /// The key the chain is held by now according to the rotations; `None` before any.
    pub fn rotated_key(&self) -> StoreResult<Option<[u8; 32]>> {
        current_key(&self.reader()?)
    }

    /// The history of keys that signed this agent's chain; `current` is the key the agent
    /// signs with now (its enrolled key when it never rotated). The rotations must chain
    /// from the enrolled key (see `tally_proto::agent_key::KeyHistory`).
    pub fn key_history(&self, current: [u8; 32]) -> StoreResult<KeyHistory> {
        let rotations: Vec<Rotation> = self.rotations()?.into_iter().map(|r| r.rotation).collect();
        let first = rotations.first().map_or(current, |r| r.old_key);
        KeyHistory::new(first, &rotations)
            .map_err(|e| StoreError::Database(format!("the stored key rotations: {e}")))
    }

    /// Starts a rotation from `old` (the key holding the chain) to `new`: signed by both,
    /// from one past the newest report, stored `pending`. Refused (`Invalid`) when `old`
    /// does not hold the chain, or when the key the last rotation handed over to has not
    /// signed a report yet.
    pub async fn begin_rotation(
        &self,
        old: SigningKey,
        new: SigningKey,
        license_id: String,
        now: i64,
    ) -> StoreResult<StoredRotation> {
        self.writer
            .write(move |c| {
                let old_key = old.verifying_key().to_bytes();
                let all = read_all(c)?;
                if let Some(last) = all.last()
                    && last.rotation.new_key != old_key
                {
                    return Err(StoreError::Invalid(format!(
                        "the agent key file is key {}, but the chain is held by key {}",
                        tally_proto::keys::key_id(&old_key),
                        last.rotation.new_key_id()
                    )));
                }
                let newest: Option<i64> = c
                    .prepare_cached("SELECT MAX(seq) FROM reports")?
                    .query_row([], |r| r.get(0))?;
                let from_seq = newest.unwrap_or(0) as u64 + 1;
                // Every key signs at least one report before it hands the chain on.
                let holder_from = all.last().map_or(1, |l| l.rotation.from_seq);
                if from_seq <= holder_from {
                    return Err(StoreError::Invalid(
                        "the agent key has not signed a report yet; rotate after its first \
                         report"
                            .into(),
                    ));
                }
                if let Some(last) = all.last()
                    && last.state == RotationState::Refused
                {
                    return Err(StoreError::Invalid(format!(
                        "the collector refused the last rotation ({}): the chain is still held \
                         by key {} there; sort that out with the vendor first",
                        last.detail,
                        last.rotation.old_key_id()
                    )));
                }
                let rotation = Rotation {
                    license_id,
                    old_key,
                    new_key: new.verifying_key().to_bytes(),
                    from_seq,
                    created_at: chrono::DateTime::from_timestamp(now, 0)
                        .ok_or_else(|| StoreError::Invalid("time out of range".into()))?,
                };
                let signed = rotation.sign(&old, &new);
                c.prepare_cached(
                    "INSERT INTO key_rotations (from_seq, signed, state, created_at)
                     VALUES (?1, ?2, 'pending', ?3)",
                )?
                .execute(params![
                    from_seq as i64,
                    prost::Message::encode_to_vec(&signed),
                    now
                ])?;
                Ok(StoredRotation {
                    rotation,
                    signed,
                    state: RotationState::Pending,
                    detail: String::new(),
                })
            })
            .await
    }

    /// Marks `recorded` every pending rotation the collector has shown it recorded: it
    /// counted a report the new key signed (an air-gapped site learns it this way, from
    /// the receipts of an import).
    pub async fn rotations_recorded_by_receipts(&self) -> StoreResult<()> {
        self.writer
            .write(|c| {
                c.execute(
                    "UPDATE key_rotations SET state = 'recorded' WHERE state = 'pending'
                     AND EXISTS (SELECT 1 FROM reports r WHERE r.seq >= key_rotations.from_seq
                                 AND r.state = 'delivered')",
                    [],
                )?;
                Ok(())
            })
            .await
    }

    /// Records what the collector answered for the rotation starting at `from_seq`.
    pub async fn rotation_answered(
        &self,
        from_seq: u64,
        state: RotationState,
        detail: String,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE key_rotations SET state = ?2, detail = ?3 WHERE from_seq = ?1",
                )?
                .execute(params![from_seq as i64, state.as_str(), detail])?;
                Ok(())
            })
            .await
    }
}
