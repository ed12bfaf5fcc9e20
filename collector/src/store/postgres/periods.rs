//! Closing months on PostgreSQL. Several collectors may ingest, release and close at once,
//! so a close is serialized with ingest by an advisory lock: every ingest and release holds
//! it shared until its commit (`ingest::lock_periods`), and `begin_close` takes it
//! exclusively to record the closed month. A report therefore either committed before the
//! close (and is on the month's statement) or reads the closed month after it (and is
//! billed as an adjustment of a later month); none falls between.

use super::*;
use super::{execute, query, query_opt};
use crate::calendar::next_month;
use crate::rules::{self, LicenseLimit, periods::TermLimit};
use crate::store::sql;
use crate::store::{
    CountedReport, EvidenceRow, Expiry, PeriodRecord, RetainedDigest, StoreResult, counted_report,
    retained_by_agent,
};
use deadpool_postgres::GenericClient;
use tally_proto::Digest;
use tally_proto::time::Instant;

/// The advisory lock key that serializes closes with ingest ("tally_pe").
pub(super) const PERIODS_LOCK: i64 = 0x7461_6c6c_795f_7065;

fn period(r: &tokio_postgres::Row) -> PeriodRecord {
    PeriodRecord {
        month: r.get(0),
        closed_at: Instant::from_timestamp_micros(r.get(1)).unwrap_or_default(),
        done: r.get(2),
    }
}

pub(super) async fn periods<C: GenericClient>(c: &C) -> StoreResult<Vec<PeriodRecord>> {
    Ok(query(
        c,
        "SELECT month, closed_at, done FROM periods ORDER BY month",
        &[],
    )
    .await?
    .iter()
    .map(period)
    .collect())
}

pub(super) async fn begin_close<C: GenericClient>(
    c: &C,
    month: i64,
    clock_offset_micros: i64,
) -> StoreResult<PeriodRecord> {
    execute(c, "SELECT pg_advisory_xact_lock($1)", &[&PERIODS_LOCK]).await?;
    // The database's clock (never a node's), after the lock: later than every receipt time
    // of the ingests that committed before (they read the same clock earlier).
    execute(
        c,
        "INSERT INTO periods (month, closed_at)
         VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000000)::int8 + $2)
         ON CONFLICT (month) DO NOTHING",
        &[&month, &clock_offset_micros],
    )
    .await?;
    let row = query_opt(
        c,
        "SELECT month, closed_at, done FROM periods WHERE month = $1",
        &[&month],
    )
    .await?
    .ok_or_else(|| crate::store::StoreError::Database("closed month vanished".into()))?;
    Ok(period(&row))
}

/// The limits a customer's statement of `month` may apply: the candidates of
/// [`sql::LIMIT_CANDIDATES`], chosen by [`rules::periods::limits_in_month`].
pub(super) async fn license_limits<C: GenericClient>(
    c: &C,
    customer: &str,
    month: i64,
) -> StoreResult<Vec<LicenseLimit>> {
    let candidates = query(c, sql::LIMIT_CANDIDATES, &[&customer])
        .await?
        .into_iter()
        .map(|r| TermLimit {
            limit: LicenseLimit {
                license_id: r.get(0),
                metric: r.get(1),
                limit: r.get::<_, Option<i64>>(2).map(|q| q as u64),
            },
            not_before: r.get(3),
            usable_until: r.get::<_, i64>(4).saturating_add(r.get(5)),
        })
        .collect();
    Ok(rules::periods::limits_in_month(month, candidates))
}

/// The reports `month`'s statement counts (with `only_late`, the late ones only): the
/// candidates of the shared queries, kept by [`rules::periods::counts_on`].
pub(super) async fn counted_reports<C: GenericClient>(
    c: &C,
    customer: &str,
    month: i64,
    only_late: bool,
) -> StoreResult<Vec<CountedReport>> {
    let rows = if only_late {
        query(c, sql::LATE_CANDIDATES, &[&customer, &month]).await?
    } else {
        let end = next_month(month);
        query(c, sql::MONTH_CANDIDATES, &[&customer, &month, &end]).await?
    };
    rows.into_iter()
        .filter(|r| rules::periods::counts_on(month, only_late, r.get(6), r.get(7), r.get(8)))
        .map(|r| {
            counted_report(
                r.get(0),
                r.get::<_, &[u8]>(1),
                r.get(2),
                r.get(3),
                r.get::<_, &[u8]>(4),
                r.get::<_, &[u8]>(5),
            )
        })
        .collect()
}

/// The SQL of [`crate::store::Store::statement_evidence`]: one agent's candidates with
/// their signatures, kept by the same rule as [`counted_reports`].
pub(super) async fn statement_evidence<C: GenericClient>(
    c: &C,
    customer: &str,
    month: i64,
    agent: &str,
) -> StoreResult<Vec<EvidenceRow>> {
    query(
        c,
        sql::EVIDENCE_CANDIDATES,
        &[&customer, &month, &next_month(month), &agent],
    )
    .await?
    .into_iter()
    .filter(|r| rules::periods::counts_on(month, false, r.get(6), r.get(7), r.get(8)))
    .map(|r| {
        EvidenceRow::from_columns(
            r.get(0),
            r.get::<_, &[u8]>(1),
            r.get(2),
            r.get::<_, &[u8]>(3),
            r.get(4),
            r.get(5),
        )
    })
    .collect()
}

pub(super) async fn finish_close<C: GenericClient>(
    c: &C,
    month: i64,
    statements: &[(String, Vec<u8>)],
) -> StoreResult<()> {
    let (customers, docs): (Vec<&str>, Vec<&[u8]>) = statements
        .iter()
        .map(|(c, d)| (c.as_str(), d.as_slice()))
        .unzip();
    // Two collectors closing at once write identical documents (same close time, same
    // reports, deterministic signatures); whichever lands first stays.
    execute(
        c,
        "INSERT INTO statements (customer_id, month, document)
         SELECT u.c, $1, u.d FROM unnest($2::text[], $3::bytea[]) AS u(c, d)
         ON CONFLICT (customer_id, month) DO NOTHING",
        &[&month, &customers, &docs],
    )
    .await?;
    execute(
        c,
        "UPDATE periods SET done = true WHERE month = $1",
        &[&month],
    )
    .await?;
    Ok(())
}

pub(super) async fn closed_statement<C: GenericClient>(
    c: &C,
    customer: &str,
    month: i64,
) -> StoreResult<Option<Vec<u8>>> {
    Ok(query_opt(
        c,
        "SELECT document FROM statements WHERE customer_id = $1 AND month = $2",
        &[&customer, &month],
    )
    .await?
    .map(|r| r.get(0)))
}

/// The closed months whose report bodies are due for removal, oldest first.
pub(super) async fn months_to_expire<C: GenericClient>(
    c: &C,
    closed_before: Instant,
) -> StoreResult<Vec<i64>> {
    Ok(query(
        c,
        "SELECT month FROM periods WHERE done AND expired_at IS NULL AND closed_at <= $1
         ORDER BY month",
        &[&closed_before.timestamp_micros()],
    )
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect())
}

/// The reports billed on the month whose bodies retention removes (all but the quarantined).
const EXPIRING: &str = "status <> 'quarantined' AND length(bytes) > 0
    AND ((billed_month IS NULL AND window_start >= $1 AND window_start < $2) OR billed_month = $1)";

/// Removes one month's report bodies. The month's row is locked first, so two collectors
/// running retention at once do it once.
pub(super) async fn expire_month<C: GenericClient>(
    c: &C,
    month: i64,
    now: i64,
) -> StoreResult<Expiry> {
    let pending = query_opt(
        c,
        "SELECT month FROM periods WHERE month = $1 AND expired_at IS NULL FOR UPDATE",
        &[&month],
    )
    .await?;
    if pending.is_none() {
        return Ok(Expiry {
            month,
            reports: 0,
            agents: 0,
        });
    }
    let end = next_month(month);
    let rows: Vec<(String, u64, Digest)> = query(
        c,
        &format!(
            "SELECT agent_id, seq, digest FROM reports WHERE {EXPIRING} ORDER BY agent_id, seq"
        ),
        &[&month, &end],
    )
    .await?
    .into_iter()
    .map(|r| {
        (
            r.get(0),
            r.get::<_, i64>(1) as u64,
            Digest::from_slice(r.get::<_, &[u8]>(2)).unwrap_or(Digest([0; 32])),
        )
    })
    .collect();
    let summaries = retained_by_agent(month, &rows);
    for s in &summaries {
        execute(
            c,
            "INSERT INTO report_retention (agent_id, month, first_seq, last_seq, reports, root, removed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &s.agent_id,
                &month,
                &(s.first_seq as i64),
                &(s.last_seq as i64),
                &(s.reports as i64),
                &s.root.as_bytes().as_slice(),
                &now,
            ],
        )
        .await?;
    }
    execute(
        c,
        &format!("UPDATE reports SET bytes = '', signature = '' WHERE {EXPIRING}"),
        &[&month, &end],
    )
    .await?;
    execute(
        c,
        "UPDATE periods SET expired_at = $2 WHERE month = $1",
        &[&month, &now],
    )
    .await?;
    Ok(Expiry {
        month,
        reports: rows.len() as u64,
        agents: summaries.len() as u64,
    })
}

pub(super) async fn retained_digests<C: GenericClient>(
    c: &C,
    agent: Option<&str>,
) -> StoreResult<Vec<RetainedDigest>> {
    Ok(query(
        c,
        "SELECT agent_id, month, first_seq, last_seq, reports, root FROM report_retention
         WHERE $1::text IS NULL OR agent_id = $1 ORDER BY agent_id, month",
        &[&agent],
    )
    .await?
    .into_iter()
    .map(|r| RetainedDigest {
        agent_id: r.get(0),
        month: r.get(1),
        first_seq: r.get::<_, i64>(2) as u64,
        last_seq: r.get::<_, i64>(3) as u64,
        reports: r.get::<_, i64>(4) as u64,
        root: Digest::from_slice(r.get::<_, &[u8]>(5)).unwrap_or(Digest([0; 32])),
    })
    .collect())
}

#[async_trait]
impl PeriodStore for PostgresStore {
    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>> {
        let c = self.client().await?;
        super::periods::periods(&c).await
    }

    /// The close time comes from the database's clock, not `_now` (see
    /// `super::periods::begin_close`).
    async fn begin_close(&self, month: i64, _now: Instant) -> StoreResult<PeriodRecord> {
        let offset = self.clock.offset_micros();
        in_transaction!(self, |tx| super::periods::begin_close(&tx, month, offset)
            .await?)
    }

    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<crate::rules::LicenseLimit>> {
        let c = self.client().await?;
        super::periods::license_limits(&c, &customer, month).await
    }

    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>> {
        let c = self.client().await?;
        super::periods::statement_evidence(&c, &customer, month, &agent).await
    }

    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>> {
        let c = self.client().await?;
        super::periods::counted_reports(&c, &customer, month, only_late).await
    }

    async fn finish_close(
        &self,
        month: i64,
        statements: Vec<(String, Vec<u8>)>,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| super::periods::finish_close(
            &tx,
            month,
            &statements
        )
        .await?)
    }

    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>> {
        let c = self.client().await?;
        super::periods::closed_statement(&c, &customer, month).await
    }

    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>> {
        let months = {
            let c = self.client().await?;
            super::periods::months_to_expire(&c, closed_before).await?
        };
        let mut out = Vec::new();
        for month in months {
            out.push(in_transaction!(self, |tx| {
                super::periods::expire_month(&tx, month, secs(now)).await?
            })?);
        }
        Ok(out)
    }

    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>> {
        let c = self.client().await?;
        super::periods::retained_digests(&c, agent.as_deref()).await
    }
}
