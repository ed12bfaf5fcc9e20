//! Billing reads and quarantine resolution.

use super::super::plan::{self, ReleasePlan};
use super::super::*;
use super::admin::ts;
use super::ingest::SqliteFacts;
use super::*;
use crate::rules;
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn hourly_usage(conn: &Connection, f: &UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
    let mut stmt = conn.prepare_cached(
        // Licenses first (CROSS JOIN fixes SQLite's loop order): the few licenses that pass
        // the filters, then each one's rollups by their key's prefix. Scanning the rollups
        // first read every customer's rows to answer for one.
        "SELECT l.customer_id, r.license_id, r.metric, r.hour, r.quantity
         FROM licenses l CROSS JOIN rollups r ON r.license_id = l.id
         WHERE (?1 IS NULL OR l.customer_id = ?1)
           AND (?2 IS NULL OR r.license_id = ?2)
           AND (?3 IS NULL OR r.metric = ?3)
           AND (?4 IS NULL OR r.hour >= ?4)
           AND (?5 IS NULL OR r.hour < ?5)
           AND r.quantity > 0
         ORDER BY l.customer_id, r.license_id, r.metric, r.hour",
    )?;
    let rows = stmt
        .query_map(
            params![f.customer, f.license, f.metric, f.from, f.to],
            |r| {
                Ok(HourlyUsage {
                    customer_id: r.get(0)?,
                    license_id: r.get(1)?,
                    metric: r.get(2)?,
                    hour: r.get(3)?,
                    quantity: r.get::<_, i64>(4)? as u64,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn statement(
    conn: &Connection,
    customer: &str,
    month: i64,
) -> StoreResult<Vec<StatementLine>> {
    let limits = super::periods::license_limits(conn, customer, month)?;
    let used = conn
        .prepare_cached(
            "SELECT u.license_id, u.metric, u.quantity FROM monthly_usage u JOIN licenses l ON l.id = u.license_id
             WHERE l.customer_id = ?1 AND u.month = ?2",
        )?
        .query_map(params![customer, month], |r| {
            Ok(crate::rules::LicenseUsage {
                license_id: r.get(0)?,
                metric: r.get(1)?,
                quantity: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    crate::store::statement_from_rows(&limits, &used)
}

/// The anomalies: the recorded ones, and the quarantined reports
/// [`crate::store::anomaly_list`] adds.
pub(super) fn anomalies(
    conn: &Connection,
    customer: Option<&str>,
) -> StoreResult<Vec<AnomalyRecord>> {
    let recorded = conn
        .prepare_cached(&sql::sqlite(sql::ANOMALY_ROWS))?
        .query_map([customer], |r| {
            let digest: Option<Vec<u8>> = r.get(6)?;
            Ok(AnomalyRecord {
                kind: r.get(0)?,
                agent_id: r.get(1)?,
                license_id: r.get(2)?,
                customer_id: r.get(3)?,
                seq_from: r.get::<_, i64>(4)? as u64,
                seq_to: r.get::<_, i64>(5)? as u64,
                digest: digest.as_deref().and_then(Digest::from_slice),
                detail: r.get(7)?,
                opened_at: ts(r.get(8)?),
                closed_at: r.get::<_, Option<i64>>(9)?.map(ts),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::store::anomaly_list(
        recorded,
        quarantine(conn, customer)?,
    ))
}

pub(super) fn quarantine(
    conn: &Connection,
    customer: Option<&str>,
) -> StoreResult<Vec<QuarantineRecord>> {
    let mut stmt = conn.prepare_cached(&sql::sqlite(sql::QUARANTINE_ROWS))?;
    let rows = stmt
        .query_map([customer], |r| {
            Ok(QuarantineRecord {
                digest: Digest::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or(Digest([0; 32])),
                agent_id: r.get(1)?,
                license_id: r.get(2)?,
                customer_id: r.get(3)?,
                seq: r.get::<_, i64>(4)? as u64,
                reason: r.get(5)?,
                detail: r.get(6)?,
                received_at: ts(r.get(7)?),
                window_start: ts(r.get(8)?),
                window_end: ts(r.get(9)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A stored report found by digest for review.
struct ReviewRow {
    status: crate::rules::ReportStatus,
    license_id: String,
    bytes: Vec<u8>,
    agent_id: String,
    seq: i64,
}

/// Finds a report by digest: first among the reports that are or were under review (the
/// `reports_reviewed` partial index), then, only to tell "already counted" from "no such
/// report", among all of them (a table scan: the table is keyed by agent and sequence).
fn review_row(conn: &Connection, digest: &Digest) -> StoreResult<ReviewRow> {
    let d = digest.as_bytes().as_slice();
    let map = |r: &rusqlite::Row<'_>| {
        Ok(ReviewRow {
            status: r.get(0)?,
            license_id: r.get(1)?,
            bytes: r.get(2)?,
            agent_id: r.get(3)?,
            seq: r.get(4)?,
        })
    };
    if let Some(row) = conn
        .prepare_cached(
            "SELECT status, license_id, bytes, agent_id, seq FROM reports
             WHERE digest = ?1 AND (status != 'accepted' OR resolved_at IS NOT NULL)",
        )?
        .query_row([d], map)
        .optional()?
    {
        return Ok(row);
    }
    conn.prepare_cached(
        "SELECT status, license_id, bytes, agent_id, seq FROM reports WHERE digest = ?1",
    )?
    .query_row([d], map)
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no stored report has digest {digest}")))
}

pub(super) fn release(conn: &Connection, digest: &Digest, now: i64) -> StoreResult<bool> {
    let row = review_row(conn, digest)?;
    let billed = match plan::plan_release(
        &mut SqliteFacts(conn),
        digest,
        row.status,
        &row.bytes,
        &row.license_id,
        &row.agent_id,
    )? {
        ReleasePlan::AlreadyCounted => return Ok(false),
        ReleasePlan::Count {
            billed_month,
            counter,
        } => {
            super::ingest::apply_counter(conn, &counter, now)?;
            billed_month
        }
    };
    conn.execute(
        "UPDATE reports SET status = 'accepted', resolved_at = ?2, billed_month = ?5
         WHERE agent_id = ?3 AND seq = ?4 AND digest = ?1",
        params![
            digest.as_bytes().as_slice(),
            now,
            row.agent_id,
            row.seq,
            billed
        ],
    )?;
    Ok(true)
}

pub(super) fn discard(conn: &Connection, digest: &Digest, now: i64) -> StoreResult<()> {
    let row = review_row(conn, digest)?;
    match rules::discard(row.status) {
        rules::Discard::Discard => {
            conn.execute(
                "UPDATE reports SET status = 'discarded', resolved_at = ?2
                 WHERE agent_id = ?3 AND seq = ?4 AND digest = ?1",
                params![digest.as_bytes().as_slice(), now, row.agent_id, row.seq],
            )?;
            Ok(())
        }
        rules::Discard::AlreadyDiscarded => Ok(()),
        rules::Discard::Refuse(why) => Err(StoreError::Conflict(format!("report {digest}: {why}"))),
    }
}

pub(super) fn stored_reports(conn: &Connection) -> StoreResult<Vec<StoredReport>> {
    let mut stmt =
        conn.prepare_cached("SELECT digest, status, bytes FROM reports ORDER BY agent_id, seq")?;
    let rows = stmt
        .query_map([], |r| {
            let d: Vec<u8> = r.get(0)?;
            Ok(StoredReport {
                digest: Digest::from_slice(&d).unwrap_or(Digest([0; 32])),
                status: r.get(1)?,
                bytes: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn agent_reports(
    conn: &Connection,
    agent_id: &str,
    before_seq: Option<u64>,
    limit: u32,
) -> StoreResult<Vec<AgentReportRecord>> {
    let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
    let t = |v: i64| tally_proto::time::Instant::from_timestamp(v, 0).unwrap_or_default();
    Ok(conn
        .prepare_cached(
            "SELECT seq, digest, fork, window_start, window_end, received_at, status, reason, bytes
             FROM reports WHERE agent_id = ?1 AND seq < ?2 ORDER BY seq DESC, fork LIMIT ?3",
        )?
        .query_map(params![agent_id, before, limit], |r| {
            let d: Vec<u8> = r.get(1)?;
            Ok(AgentReportRecord {
                seq: r.get::<_, i64>(0)? as u64,
                digest: Digest::from_slice(&d).unwrap_or(Digest([0; 32])),
                fork: r.get::<_, i64>(2)? != 0,
                window_start: t(r.get(3)?),
                window_end: t(r.get(4)?),
                received_at: t(r.get(5)?),
                status: r.get(6)?,
                reason: r.get(7)?,
                bytes: r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default(),
            })
        })?
        .collect::<Result<_, _>>()?)
}

#[async_trait]
impl BillingStore for SqliteStore {
    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
        self.read(move |c| super::queries::hourly_usage(c, &filter))
            .await
    }

    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>> {
        self.read(move |c| super::queries::statement(c, &customer, month_start))
            .await
    }

    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>> {
        self.read(move |c| super::queries::anomalies(c, customer.as_deref()))
            .await
    }

    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>> {
        self.read(move |c| super::queries::quarantine(c, customer.as_deref()))
            .await
    }

    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool> {
        self.writer
            .write(move |c| super::queries::release(c, &digest, secs(now)))
            .await
    }

    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::queries::discard(c, &digest, secs(now)))
            .await
    }

    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>> {
        self.read(move |c| super::queries::agent_reports(c, &agent_id, before_seq, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::store::fixture::{Fixture, Seed};
    use crate::store::{BillingStore, IngestStore, Source, StoreError};
    use chrono::{Duration, Utc};
    use tally_proto::Digest;

    /// Release/discard find a report by digest whether or not it was ever under review:
    /// the `reports_reviewed` index first, then the fallback scan.
    #[tokio::test]
    async fn review_by_digest_finds_accepted_quarantined_and_missing_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let now = Utc::now();
        let f = Fixture::seed(
            &store,
            Seed {
                name: "c",
                license_id: "lic_t",
                metrics: &[("api.convert", None)],
                now,
            },
        )
        .await
        .unwrap();
        let ws = now - Duration::hours(2);
        let report = |seq: u64, metric: &str| f.report(seq, None, ws, 60, &[(metric, 3)]);
        // seq 1 is accepted; a different report for the same seq is a fork, quarantined.
        let accepted = report(1, "api.convert");
        let quarantined = report(1, "api.other");
        let (a, q) = (accepted.digest, quarantined.digest);
        let out = store
            .ingest(vec![accepted, quarantined], now, Source::Online)
            .await
            .unwrap();
        assert_eq!(out[0].reason, None);
        assert_eq!(
            out[1].reason,
            Some(tally_proto::reason::Reason::SeqConflict)
        );

        // Accepted from the start: found by the fallback scan, never counted twice.
        assert!(!store.release(a, now).await.unwrap());
        assert!(matches!(
            store.discard(a, now).await,
            Err(StoreError::Conflict(_))
        ));
        // Quarantined: found through the review index; discard works, a second discard is
        // a no-op, and a discarded report can no longer be released.
        store.discard(q, now).await.unwrap();
        store.discard(q, now).await.unwrap();
        assert!(matches!(
            store.release(q, now).await,
            Err(StoreError::Conflict(_))
        ));
        // Unknown digest.
        assert!(matches!(
            store.release(Digest([9; 32]), now).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
