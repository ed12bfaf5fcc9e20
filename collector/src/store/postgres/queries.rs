//! Billing reads and quarantine resolution on PostgreSQL.

use super::super::plan::{self, ReleasePlan};
use super::ingest::PgFacts;
use super::*;
use super::{digest_of, execute, query, query_opt, ts};
use crate::rules::{self, ReportStatus};
use deadpool_postgres::GenericClient;

pub(super) async fn hourly_usage<C: GenericClient>(
    c: &C,
    f: &UsageFilter,
) -> StoreResult<Vec<HourlyUsage>> {
    let rows = query(
        c,
        // The shards of an hour summed; a total past i64::MAX fails the cast, never wraps.
        "SELECT l.customer_id, r.license_id, r.metric, r.hour, SUM(r.quantity)::bigint
         FROM rollups r JOIN licenses l ON l.id = r.license_id
         WHERE ($1::text IS NULL OR l.customer_id = $1)
           AND ($2::text IS NULL OR r.license_id = $2)
           AND ($3::text IS NULL OR r.metric = $3)
           AND ($4::bigint IS NULL OR r.hour >= $4)
           AND ($5::bigint IS NULL OR r.hour < $5)
           AND r.quantity > 0
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2, 3, 4",
        &[&f.customer, &f.license, &f.metric, &f.from, &f.to],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| HourlyUsage {
            customer_id: r.get(0),
            license_id: r.get(1),
            metric: r.get(2),
            hour: r.get(3),
            quantity: r.get::<_, i64>(4) as u64,
        })
        .collect())
}

pub(super) async fn statement<C: GenericClient>(
    c: &C,
    customer: &str,
    month: i64,
) -> StoreResult<Vec<StatementLine>> {
    let limits = super::periods::license_limits(c, customer, month).await?;
    // One row per license and shard.
    let used: Vec<crate::rules::LicenseUsage> = query(
        c,
        "SELECT u.license_id, u.metric, u.quantity FROM monthly_usage u JOIN licenses l ON l.id = u.license_id
         WHERE l.customer_id = $1 AND u.month = $2",
        &[&customer, &month],
    )
    .await?
    .into_iter()
    .map(|r| crate::rules::LicenseUsage {
        license_id: r.get(0),
        metric: r.get(1),
        quantity: r.get::<_, i64>(2) as u64,
    })
    .collect();
    crate::store::statement_from_rows(&limits, &used)
}

/// The anomalies: the recorded ones, and the quarantined reports
/// [`crate::store::anomaly_list`] adds.
pub(super) async fn anomalies<C: GenericClient>(
    c: &C,
    customer: Option<&str>,
) -> StoreResult<Vec<AnomalyRecord>> {
    let recorded = query(c, sql::ANOMALY_ROWS, &[&customer])
        .await?
        .into_iter()
        .map(|r| AnomalyRecord {
            kind: r.get(0),
            agent_id: r.get(1),
            license_id: r.get(2),
            customer_id: r.get(3),
            seq_from: r.get::<_, i64>(4) as u64,
            seq_to: r.get::<_, i64>(5) as u64,
            digest: r.get::<_, Option<&[u8]>>(6).and_then(Digest::from_slice),
            detail: r.get(7),
            opened_at: ts(r.get(8)),
            closed_at: r.get::<_, Option<i64>>(9).map(ts),
        })
        .collect();
    Ok(crate::store::anomaly_list(
        recorded,
        quarantine(c, customer).await?,
    ))
}

pub(super) async fn quarantine<C: GenericClient>(
    c: &C,
    customer: Option<&str>,
) -> StoreResult<Vec<QuarantineRecord>> {
    let rows = query(c, sql::QUARANTINE_ROWS, &[&customer]).await?;
    Ok(rows
        .into_iter()
        .map(|r| QuarantineRecord {
            digest: digest_of(r.get(0)),
            agent_id: r.get(1),
            license_id: r.get(2),
            customer_id: r.get(3),
            seq: r.get::<_, i64>(4) as u64,
            reason: r.get(5),
            detail: r.get(6),
            received_at: ts(r.get(7)),
            window_start: ts(r.get(8)),
            window_end: ts(r.get(9)),
        })
        .collect())
}

/// Counts a quarantined report. The row is locked first: when two operators (or two
/// collectors) release the same report at once, the second waits, then reads the row
/// the first committed — `accepted` — and counts nothing.
pub(super) async fn release<C: GenericClient>(
    c: &C,
    digest: &Digest,
    now: i64,
) -> StoreResult<bool> {
    let d = digest.as_bytes().as_slice();
    // Counting may bill a closed month's report as an adjustment: hold off closes first.
    let (closed, _) = super::ingest::lock_periods(c, 0).await?;
    let row = query_opt(
        c,
        "SELECT status, license_id, bytes, agent_id FROM reports WHERE digest = $1 FOR UPDATE",
        &[&d],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no stored report has digest {digest}")))?;
    let (status, license_id, bytes, agent_id): (ReportStatus, String, Vec<u8>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut facts = PgFacts::for_release(c, closed, &license_id, &bytes).await?;
    let billed =
        match plan::plan_release(&mut facts, digest, status, &bytes, &license_id, &agent_id)? {
            ReleasePlan::AlreadyCounted => return Ok(false),
            ReleasePlan::Count {
                billed_month,
                counter,
            } => {
                super::ingest::apply_counter(c, &counter, now).await?;
                billed_month
            }
        };
    execute(
        c,
        "UPDATE reports SET status = 'accepted', resolved_at = $2, billed_month = $3
         WHERE digest = $1",
        &[&d, &now, &billed],
    )
    .await?;
    Ok(true)
}

pub(super) async fn discard<C: GenericClient>(c: &C, digest: &Digest, now: i64) -> StoreResult<()> {
    let d = digest.as_bytes().as_slice();
    let status: ReportStatus = query_opt(
        c,
        "SELECT status FROM reports WHERE digest = $1 FOR UPDATE",
        &[&d],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no stored report has digest {digest}")))?
    .get(0);
    match rules::discard(status) {
        rules::Discard::Discard => {
            execute(
                c,
                "UPDATE reports SET status = 'discarded', resolved_at = $2 WHERE digest = $1",
                &[&d, &now],
            )
            .await?;
            Ok(())
        }
        rules::Discard::AlreadyDiscarded => Ok(()),
        rules::Discard::Refuse(why) => Err(StoreError::Conflict(format!("report {digest}: {why}"))),
    }
}

pub(super) async fn agent_reports<C: GenericClient>(
    c: &C,
    agent_id: &str,
    before_seq: Option<u64>,
    limit: u32,
) -> StoreResult<Vec<AgentReportRecord>> {
    let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
    Ok(query(
        c,
        "SELECT seq, digest, fork, window_start, window_end, received_at, status, reason, bytes
         FROM reports WHERE agent_id = $1 AND seq < $2 ORDER BY seq DESC, fork LIMIT $3",
        &[&agent_id, &before, &i64::from(limit)],
    )
    .await?
    .into_iter()
    .map(|r| AgentReportRecord {
        seq: r.get::<_, i64>(0) as u64,
        digest: digest_of(r.get(1)),
        fork: r.get(2),
        window_start: ts(r.get(3)),
        window_end: ts(r.get(4)),
        received_at: ts(r.get(5)),
        status: r.get(6),
        reason: r.get(7),
        bytes: r.get::<_, Option<Vec<u8>>>(8).unwrap_or_default(),
    })
    .collect())
}

#[async_trait]
impl BillingStore for PostgresStore {
    async fn hourly_usage(&self, filter: UsageFilter) -> StoreResult<Vec<HourlyUsage>> {
        let c = self.client().await?;
        super::queries::hourly_usage(&c, &filter).await
    }

    async fn statement(
        &self,
        customer: String,
        month_start: i64,
    ) -> StoreResult<Vec<StatementLine>> {
        // One snapshot for the limits and the sums.
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let lines = super::queries::statement(&tx, &customer, month_start).await?;
        tx.commit().await?;
        Ok(lines)
    }

    async fn anomalies(&self, customer: Option<String>) -> StoreResult<Vec<AnomalyRecord>> {
        let c = self.client().await?;
        super::queries::anomalies(&c, customer.as_deref()).await
    }

    async fn quarantine(&self, customer: Option<String>) -> StoreResult<Vec<QuarantineRecord>> {
        let c = self.client().await?;
        super::queries::quarantine(&c, customer.as_deref()).await
    }

    async fn release(&self, digest: Digest, now: Instant) -> StoreResult<bool> {
        in_transaction!(self, |tx| super::queries::release(&tx, &digest, secs(now))
            .await?)
    }

    async fn discard(&self, digest: Digest, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| super::queries::discard(&tx, &digest, secs(now))
            .await?)
    }

    async fn agent_reports(
        &self,
        agent_id: String,
        before_seq: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<AgentReportRecord>> {
        let c = self.client().await?;
        super::queries::agent_reports(&c, &agent_id, before_seq, limit).await
    }
}
