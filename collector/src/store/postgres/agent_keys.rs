//! Agent keys on PostgreSQL: the shared queries; a rotation locks its agent's row first,
//! so rotations racing on two nodes (and the ingest of that agent's reports, which locks
//! the same row) are serialized and each decides on what the other wrote.

use super::super::{AgentKey, AgentKeyStore, StoreError, StoreResult, sql};
use super::{PostgresStore, execute, query, query_opt, secs};
use crate::rules::agent_keys::{RotationDecision, RotationFacts, decide_rotation};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use std::collections::HashMap;
use std::time::Duration;
use tally_proto::agent_key::Rotation;
use tally_proto::time::Instant;

fn to_key(r: &tokio_postgres::Row) -> StoreResult<AgentKey> {
    AgentKey::from_columns(
        r.get::<_, &[u8]>(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
    )
}

async fn agent_key<C: GenericClient>(c: &C, key: &[u8; 32]) -> StoreResult<Option<AgentKey>> {
    query_opt(c, sql::AGENT_KEY, &[&key.as_slice()])
        .await?
        .as_ref()
        .map(to_key)
        .transpose()
}

/// Records the enrolled key of a new agent.
pub(super) async fn add_enrolled_key<C: GenericClient>(
    c: &C,
    key: &[u8; 32],
    agent_id: &str,
    now: i64,
) -> StoreResult<()> {
    execute(
        c,
        sql::INSERT_AGENT_KEY,
        &[&key.as_slice(), &agent_id, &1i64, &None::<Vec<u8>>, &now],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl AgentKeyStore for PostgresStore {
    async fn rotate_agent_key(
        &self,
        rotation: Rotation,
        signed: Vec<u8>,
        now: Instant,
    ) -> StoreResult<RotationDecision> {
        let r = &rotation;
        in_transaction!(self, |tx| {
            // Lock the agent first, then read every fact under the lock.
            let last_seq: i64 = match agent_key(&tx, &r.old_key).await? {
                Some(o) => query_opt(
                    &tx,
                    "SELECT last_seq FROM agents WHERE id = $1 FOR UPDATE",
                    &[&o.agent_id],
                )
                .await?
                .map(|row| row.get(0))
                .unwrap_or(0),
                None => 0,
            };
            let facts = RotationFacts {
                old: agent_key(&tx, &r.old_key).await?,
                new: agent_key(&tx, &r.new_key).await?,
                last_seq: last_seq.max(0) as u64,
            };
            let decision = decide_rotation(r, &facts, now);
            if let (RotationDecision::Record, Some(old)) = (&decision, &facts.old) {
                let from = i64::try_from(r.from_seq).unwrap_or(i64::MAX);
                execute(
                    &tx,
                    sql::ADOPT_ENROLLED_KEY,
                    &[&r.old_key.as_slice(), &old.agent_id, &secs(now)],
                )
                .await?;
                execute(
                    &tx,
                    sql::HAND_OVER_AGENT_KEY,
                    &[&r.old_key.as_slice(), &from],
                )
                .await?;
                execute(
                    &tx,
                    sql::INSERT_AGENT_KEY,
                    &[
                        &r.new_key.as_slice(),
                        &old.agent_id,
                        &from,
                        &signed,
                        &secs(now),
                    ],
                )
                .await?;
                execute(
                    &tx,
                    sql::SET_AGENT_KEY,
                    &[&old.agent_id, &r.new_key.as_slice()],
                )
                .await?;
            }
            decision
        })
    }

    async fn agent_keys(&self, agent_id: String) -> StoreResult<Vec<AgentKey>> {
        let c = self.client().await?;
        query(&c, sql::KEYS_OF_AGENT, &[&agent_id])
            .await?
            .iter()
            .map(to_key)
            .collect()
    }

    async fn agent_key_by_id(&self, key_id: String) -> StoreResult<Option<AgentKey>> {
        let c = self.client().await?;
        let found = query(&c, sql::ALL_AGENT_KEYS, &[])
            .await?
            .iter()
            .filter_map(|r| <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).ok())
            .find(|k| tally_proto::keys::key_id(k) == key_id);
        match found {
            Some(k) => agent_key(&c, &k).await,
            None => Ok(None),
        }
    }

    /// Under the agent's row lock, which ingest takes before it reads the keys: a report
    /// whose keys were read before the revocation commits is stored before it, one after
    /// sees it.
    async fn revoke_agent_key(&self, key: [u8; 32], at: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            if let Some(k) = agent_key(&tx, &key).await? {
                query_opt(
                    &tx,
                    "SELECT 1 FROM agents WHERE id = $1 FOR UPDATE",
                    &[&k.agent_id],
                )
                .await?;
            }
            execute(&tx, sql::ADOPT_KEY, &[&key.as_slice(), &secs(at)]).await?;
            execute(&tx, sql::REVOKE_AGENT_KEY, &[&key.as_slice(), &secs(at)]).await?;
        })
    }

    async fn agent_rotations(&self, agent_id: String) -> StoreResult<Vec<Vec<u8>>> {
        let c = self.client().await?;
        Ok(query(&c, sql::ROTATIONS_OF_AGENT, &[&agent_id])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

/// The agent keys among `keys` (as `sql::AGENT_KEY`, for many keys at once).
pub(super) async fn agent_keys<C: GenericClient>(
    c: &C,
    keys: &[[u8; 32]],
) -> StoreResult<HashMap<[u8; 32], AgentKey>> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    let rows = query(
        c,
        "SELECT k.key, a.id, a.license_id, k.from_seq, k.until_seq, k.revoked_at, a.revoked_at
         FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = ANY($1)
         UNION ALL
         SELECT a.key, a.id, a.license_id, 1, NULL, NULL, a.revoked_at
         FROM agents a WHERE a.key = ANY($1)
           AND NOT EXISTS (SELECT 1 FROM agent_keys k WHERE k.agent_id = a.id)",
        &[&keys],
    )
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let key = to_key(r)?;
        out.insert(key.key, key);
    }
    Ok(out)
}
