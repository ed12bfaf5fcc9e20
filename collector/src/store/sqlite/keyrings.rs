//! The keyrings on SQLite: the shared queries, in the writer's transaction.

use super::super::{KeyringStore, MAX_KEYRINGS, StoreError, StoreResult, sql};
use super::{SqliteStore, secs};
use async_trait::async_trait;
use rusqlite::params;
use tally_proto::time::Instant;

#[async_trait]
impl KeyringStore for SqliteStore {
    async fn add_keyring(&self, version: u64, signed: Vec<u8>, at: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                let newest: Option<i64> = c
                    .prepare_cached(&sql::sqlite(sql::NEWEST_KEYRING))?
                    .query_row([], |r| r.get(0))?;
                let next = newest.unwrap_or(0) as u64 + 1;
                if version != next {
                    return Err(StoreError::Conflict(format!(
                        "keyring version {version} is not the next one ({next}): another \
                         rotation came first"
                    )));
                }
                c.prepare_cached(&sql::sqlite(sql::INSERT_KEYRING))?
                    .execute(params![version as i64, signed, secs(at)])?;
                Ok(())
            })
            .await
    }

    async fn keyrings_after(&self, version: u64) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.read(move |c| {
            let after = i64::try_from(version).unwrap_or(i64::MAX);
            let rows = c
                .prepare_cached(&sql::sqlite(sql::KEYRINGS_AFTER))?
                .query_map(params![after, MAX_KEYRINGS], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }
}
