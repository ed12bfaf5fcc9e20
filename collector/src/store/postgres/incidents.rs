//! The status page's incidents on PostgreSQL: the shared queries, in one transaction under
//! a per-component advisory lock, so two collectors reporting the same outage at once
//! read and write one after the other (and fold it into one incident).

use super::super::{Incident, IncidentStore, MAX_INCIDENTS, StoreError, StoreResult, sql};
use super::{PostgresStore, secs, ts};
use crate::rules::incidents::{self, Change, Latest, Write};
use async_trait::async_trait;
use std::time::Duration;
use tally_proto::time::Instant;

fn lock_key(component: &str) -> i64 {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(format!("tally.incidents\0{component}"));
    i64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

#[async_trait]
impl IncidentStore for PostgresStore {
    async fn record_incident(
        &self,
        component: String,
        change: Change,
        when: Instant,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(&component)])
                .await?;
            let latest = tx
                .query_opt(sql::LATEST_INCIDENT, &[&component])
                .await?
                .map(|r| Latest {
                    id: r.get(0),
                    opened_at: ts(r.get(1)),
                    closed_at: r.get::<_, Option<i64>>(2).map(ts),
                });
            let (change, when) = incidents::whole_seconds(change.clone(), when);
            match incidents::decide(latest, &change, when) {
                Write::Nothing => {}
                Write::Insert {
                    detail,
                    opened_at,
                    closed_at,
                } => {
                    tx.execute(
                        sql::INSERT_INCIDENT,
                        &[&component, &detail, &secs(opened_at), &closed_at.map(secs)],
                    )
                    .await?;
                }
                Write::Update {
                    id,
                    opened_at,
                    closed_at,
                } => {
                    tx.execute(
                        sql::UPDATE_INCIDENT,
                        &[&id, &secs(opened_at), &closed_at.map(secs)],
                    )
                    .await?;
                }
            }
        })
    }

    async fn incidents_since(&self, since: Instant) -> StoreResult<Vec<Incident>> {
        let c = self.client().await?;
        let rows = c
            .query(
                sql::INCIDENTS_SINCE,
                &[&secs(since), &i64::from(MAX_INCIDENTS)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Incident {
                id: r.get(0),
                component: r.get(1),
                detail: r.get(2),
                opened_at: ts(r.get(3)),
                closed_at: r.get::<_, Option<i64>>(4).map(ts),
            })
            .collect())
    }
}
