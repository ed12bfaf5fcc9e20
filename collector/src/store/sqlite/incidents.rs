//! The status page's incidents on SQLite: the shared queries, in the writer's transaction
//! (one writer: no two collectors race here).

use super::super::{Incident, IncidentStore, MAX_INCIDENTS, StoreResult, sql};
use super::{SqliteStore, secs};
use crate::rules::incidents::{self, Change, Latest, Write};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tally_proto::time::Instant;

fn at(t: i64) -> Instant {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default()
}

#[async_trait]
impl IncidentStore for SqliteStore {
    async fn record_incident(
        &self,
        component: String,
        change: Change,
        when: Instant,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                let latest = c
                    .prepare_cached(&sql::sqlite(sql::LATEST_INCIDENT))?
                    .query_row([&component], |r| {
                        Ok(Latest {
                            id: r.get(0)?,
                            opened_at: at(r.get(1)?),
                            closed_at: r.get::<_, Option<i64>>(2)?.map(at),
                        })
                    })
                    .optional()?;
                let (change, when) = incidents::whole_seconds(change, when);
                match incidents::decide(latest, &change, when) {
                    Write::Nothing => {}
                    Write::Insert {
                        detail,
                        opened_at,
                        closed_at,
                    } => {
                        c.prepare_cached(&sql::sqlite(sql::INSERT_INCIDENT))?
                            .execute(params![
                                component,
                                detail,
                                secs(opened_at),
                                closed_at.map(secs)
                            ])?;
                    }
                    Write::Update {
                        id,
                        opened_at,
                        closed_at,
                    } => {
                        c.prepare_cached(&sql::sqlite(sql::UPDATE_INCIDENT))?
                            .execute(params![id, secs(opened_at), closed_at.map(secs)])?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn incidents_since(&self, since: Instant) -> StoreResult<Vec<Incident>> {
        self.read(move |c| {
            let rows = c
                .prepare_cached(&sql::sqlite(sql::INCIDENTS_SINCE))?
                .query_map(params![secs(since), MAX_INCIDENTS], |r| {
                    Ok(Incident {
                        id: r.get(0)?,
                        component: r.get(1)?,
                        detail: r.get(2)?,
                        opened_at: at(r.get(3)?),
                        closed_at: r.get::<_, Option<i64>>(4)?.map(at),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }
}
