//! The keyrings on PostgreSQL: the shared queries; adding one takes a lock so two
//! rotations racing on two nodes cannot both add the same version.

use super::super::{KeyringStore, MAX_KEYRINGS, StoreError, StoreResult, sql};
use super::{PostgresStore, secs};
use async_trait::async_trait;
use std::time::Duration;
use tally_proto::time::Instant;

/// The advisory lock serializing keyring additions.
const KEYRINGS_LOCK: i64 = 0x7461_6c6c_796b_6579; // "tallykey"

#[async_trait]
impl KeyringStore for PostgresStore {
    async fn add_keyring(&self, version: u64, signed: Vec<u8>, at: Instant) -> StoreResult<()> {
        let v = i64::try_from(version)
            .map_err(|_| StoreError::Invalid(format!("keyring version {version}")))?;
        in_transaction!(self, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYRINGS_LOCK])
                .await?;
            let newest: Option<i64> = tx.query_one(sql::NEWEST_KEYRING, &[]).await?.get(0);
            let next = newest.unwrap_or(0) + 1;
            if v != next {
                return Err(StoreError::Conflict(format!(
                    "keyring version {version} is not the next one ({next}): another \
                     rotation came first"
                )));
            }
            tx.execute(sql::INSERT_KEYRING, &[&v, &signed, &secs(at)])
                .await?;
        })
    }

    async fn keyrings_after(&self, version: u64) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let c = self.client().await?;
        let after = i64::try_from(version).unwrap_or(i64::MAX);
        let rows = c
            .query(sql::KEYRINGS_AFTER, &[&after, &i64::from(MAX_KEYRINGS)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
            .collect())
    }
}
