//! Agent keys on SQLite: the shared queries, the rotation in the writer's transaction (one
//! writer, so racing rotations are serialized).

use super::super::{AgentKey, AgentKeyStore, StoreResult, sql};
use super::{SqliteStore, secs};
use crate::rules::agent_keys::{RotationDecision, RotationFacts, decide_rotation};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tally_proto::agent_key::Rotation;
use tally_proto::time::Instant;

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

type Row = (
    Vec<u8>,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn to_key(r: Row) -> StoreResult<AgentKey> {
    AgentKey::from_columns(&r.0, r.1, r.2, r.3, r.4, r.5, r.6)
}

/// The agent key `key`, if enrolled.
pub(super) fn agent_key(c: &Connection, key: &[u8; 32]) -> StoreResult<Option<AgentKey>> {
    c.prepare_cached(&sql::sqlite(sql::AGENT_KEY))?
        .query_row([key.as_slice()], row)
        .optional()?
        .map(to_key)
        .transpose()
}

/// Records the enrolled key of a new agent.
pub(super) fn add_enrolled_key(
    c: &Connection,
    key: &[u8; 32],
    agent_id: &str,
    now: i64,
) -> StoreResult<()> {
    c.prepare_cached(&sql::sqlite(sql::INSERT_AGENT_KEY))?
        .execute(params![
            key.as_slice(),
            agent_id,
            1i64,
            None::<Vec<u8>>,
            now
        ])?;
    Ok(())
}

fn rotate(
    c: &Connection,
    r: &Rotation,
    signed: &[u8],
    now: Instant,
) -> StoreResult<RotationDecision> {
    let old = agent_key(c, &r.old_key)?;
    let new = agent_key(c, &r.new_key)?;
    let last_seq: i64 = match &old {
        Some(o) => c
            .prepare_cached("SELECT last_seq FROM agents WHERE id = ?1")?
            .query_row([&o.agent_id], |r| r.get(0))?,
        None => 0,
    };
    let facts = RotationFacts {
        old,
        new,
        last_seq: last_seq.max(0) as u64,
    };
    let decision = decide_rotation(r, &facts, now);
    if let (RotationDecision::Record, Some(old)) = (&decision, &facts.old) {
        let from = i64::try_from(r.from_seq).unwrap_or(i64::MAX);
        c.prepare_cached(&sql::sqlite(sql::ADOPT_ENROLLED_KEY))?
            .execute(params![r.old_key.as_slice(), old.agent_id, secs(now)])?;
        c.prepare_cached(&sql::sqlite(sql::HAND_OVER_AGENT_KEY))?
            .execute(params![r.old_key.as_slice(), from])?;
        c.prepare_cached(&sql::sqlite(sql::INSERT_AGENT_KEY))?
            .execute(params![
                r.new_key.as_slice(),
                old.agent_id,
                from,
                signed,
                secs(now)
            ])?;
        c.prepare_cached(&sql::sqlite(sql::SET_AGENT_KEY))?
            .execute(params![old.agent_id, r.new_key.as_slice()])?;
    }
    Ok(decision)
}

#[async_trait]
impl AgentKeyStore for SqliteStore {
    async fn rotate_agent_key(
        &self,
        rotation: Rotation,
        signed: Vec<u8>,
        now: Instant,
    ) -> StoreResult<RotationDecision> {
        self.writer
            .write(move |c| rotate(c, &rotation, &signed, now))
            .await
    }

    async fn agent_keys(&self, agent_id: String) -> StoreResult<Vec<AgentKey>> {
        self.read(move |c| {
            let rows = c
                .prepare_cached(&sql::sqlite(sql::KEYS_OF_AGENT))?
                .query_map([agent_id], row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_key).collect()
        })
        .await
    }

    async fn agent_key_by_id(&self, key_id: String) -> StoreResult<Option<AgentKey>> {
        self.read(move |c| {
            let keys = c
                .prepare_cached(sql::ALL_AGENT_KEYS)?
                .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            match keys
                .iter()
                .filter_map(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                .find(|k| tally_proto::keys::key_id(k) == key_id)
            {
                Some(k) => agent_key(c, &k),
                None => Ok(None),
            }
        })
        .await
    }

    async fn revoke_agent_key(&self, key: [u8; 32], at: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(&sql::sqlite(sql::ADOPT_KEY))?
                    .execute(params![key.as_slice(), secs(at)])?;
                c.prepare_cached(&sql::sqlite(sql::REVOKE_AGENT_KEY))?
                    .execute(params![key.as_slice(), secs(at)])?;
                Ok(())
            })
            .await
    }

    async fn agent_rotations(&self, agent_id: String) -> StoreResult<Vec<Vec<u8>>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&sql::sqlite(sql::ROTATIONS_OF_AGENT))?
                .query_map([agent_id], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
