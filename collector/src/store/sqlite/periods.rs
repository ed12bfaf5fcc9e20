//! Closing months on SQLite: the closed months, the reports a statement counts, and the
//! frozen statements. The writer runs one transaction at a time, so a close is serialized
//! with every ingest and release by construction.

use super::super::{
    CountedReport, EvidenceRow, Expiry, PeriodRecord, RetainedDigest, StoreResult, counted_report,
    retained_by_agent,
};
use super::*;
use crate::calendar::next_month;
use crate::clock::Clock;
use crate::rules::{self, LicenseLimit, periods::TermLimit};
use crate::store::sql;
use rusqlite::{Connection, OptionalExtension, params};
use tally_proto::Digest;
use tally_proto::time::Instant;

fn period(month: i64, closed_at_micros: i64, done: bool) -> PeriodRecord {
    PeriodRecord {
        month,
        closed_at: Instant::from_timestamp_micros(closed_at_micros).unwrap_or_default(),
        done,
    }
}

pub(super) fn periods(conn: &Connection) -> StoreResult<Vec<PeriodRecord>> {
    Ok(conn
        .prepare_cached("SELECT month, closed_at, done FROM periods ORDER BY month")?
        .query_map([], |r| {
            Ok(period(r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0))
        })?
        .collect::<Result<_, _>>()?)
}

pub(super) fn begin_close(
    conn: &Connection,
    month: i64,
    now: Instant,
    clock: Clock,
) -> StoreResult<PeriodRecord> {
    // Inside the writer: every ingest before this has its (earlier) receipt time.
    let now = now.max(clock.now()).timestamp_micros();
    conn.execute(
        "INSERT INTO periods (month, closed_at) VALUES (?1, ?2) ON CONFLICT (month) DO NOTHING",
        params![month, now],
    )?;
    Ok(conn.query_row(
        "SELECT month, closed_at, done FROM periods WHERE month = ?1",
        [month],
        |r| Ok(period(r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)),
    )?)
}

/// The limits a customer's statement of `month` may apply: the candidates of
/// [`sql::LIMIT_CANDIDATES`], chosen by [`rules::periods::limits_in_month`].
pub(super) fn license_limits(
    conn: &Connection,
    customer: &str,
    month: i64,
) -> StoreResult<Vec<LicenseLimit>> {
    let candidates = conn
        .prepare_cached(&sql::sqlite(sql::LIMIT_CANDIDATES))?
        .query_map(params![customer], |r| {
            Ok(TermLimit {
                limit: LicenseLimit {
                    license_id: r.get(0)?,
                    metric: r.get(1)?,
                    limit: r.get::<_, Option<i64>>(2)?.map(|q| q as u64),
                },
                not_before: r.get(3)?,
                usable_until: r.get::<_, i64>(4)?.saturating_add(r.get(5)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rules::periods::limits_in_month(month, candidates))
}

/// The reports `month`'s statement counts (with `only_late`, the late ones only): the
/// candidates of the shared queries, kept by [`rules::periods::counts_on`]. The month's
/// own candidates are read along each agent's `(agent_id, seq)` key, the late ones from
/// the small index of billed months.
pub(super) fn counted_reports(
    conn: &Connection,
    customer: &str,
    month: i64,
    only_late: bool,
) -> StoreResult<Vec<CountedReport>> {
    let mut stmt = conn.prepare_cached(&sql::sqlite(if only_late {
        sql::LATE_CANDIDATES
    } else {
        sql::MONTH_CANDIDATES
    }))?;
    let mut rows = if only_late {
        stmt.query(params![customer, month])?
    } else {
        stmt.query(params![customer, month, next_month(month)])?
    };
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if !rules::periods::counts_on(month, only_late, r.get(6)?, r.get(7)?, r.get(8)?) {
            continue;
        }
        out.push(counted_report(
            r.get(0)?,
            r.get_ref(1)?.as_blob().unwrap_or_default(),
            r.get(2)?,
            r.get(3)?,
            r.get_ref(4)?.as_blob().unwrap_or_default(),
            r.get_ref(5)?.as_blob().unwrap_or_default(),
        )?);
    }
    Ok(out)
}

/// The SQL of [`super::super::Store::statement_evidence`]: one agent's candidates with
/// their signatures, kept by the same rule as [`counted_reports`].
pub(super) fn statement_evidence(
    conn: &Connection,
    customer: &str,
    month: i64,
    agent: &str,
) -> StoreResult<Vec<EvidenceRow>> {
    let mut stmt = conn.prepare_cached(&sql::sqlite(sql::EVIDENCE_CANDIDATES))?;
    let mut rows = stmt.query(params![customer, month, next_month(month), agent])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if !rules::periods::counts_on(month, false, r.get(6)?, r.get(7)?, r.get(8)?) {
            continue;
        }
        out.push(EvidenceRow::from_columns(
            r.get(0)?,
            r.get_ref(1)?.as_blob().unwrap_or_default(),
            r.get(2)?,
            r.get_ref(3)?.as_blob().unwrap_or_default(),
            r.get(4)?,
            r.get(5)?,
        )?);
    }
    Ok(out)
}

pub(super) fn finish_close(
    conn: &Connection,
    month: i64,
    statements: &[(String, Vec<u8>)],
) -> StoreResult<()> {
    let mut put = conn.prepare_cached(
        "INSERT INTO statements (customer_id, month, document) VALUES (?1, ?2, ?3)
         ON CONFLICT (customer_id, month) DO NOTHING",
    )?;
    for (customer, doc) in statements {
        put.execute(params![customer, month, doc])?;
    }
    conn.execute("UPDATE periods SET done = 1 WHERE month = ?1", [month])?;
    Ok(())
}

pub(super) fn closed_statement(
    conn: &Connection,
    customer: &str,
    month: i64,
) -> StoreResult<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT document FROM statements WHERE customer_id = ?1 AND month = ?2")?
        .query_row(params![customer, month], |r| r.get(0))
        .optional()?)
}

/// The closed months whose report bodies are due for removal, oldest first.
pub(super) fn months_to_expire(conn: &Connection, closed_before: Instant) -> StoreResult<Vec<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT month FROM periods WHERE done = 1 AND expired_at IS NULL AND closed_at <= ?1
             ORDER BY month",
        )?
        .query_map([closed_before.timestamp_micros()], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The reports billed on the month whose bodies retention removes (all but the quarantined).
const EXPIRING: &str = "status != 'quarantined' AND length(bytes) > 0
    AND ((billed_month IS NULL AND window_start >= ?1 AND window_start < ?2) OR billed_month = ?1)";

pub(super) fn expire_month(conn: &Connection, month: i64, now: i64) -> StoreResult<Expiry> {
    // Another process (`retention apply` beside `serve`) may have done it since the read.
    let pending: Option<i64> = conn
        .query_row(
            "SELECT month FROM periods WHERE month = ?1 AND expired_at IS NULL",
            [month],
            |r| r.get(0),
        )
        .optional()?;
    if pending.is_none() {
        return Ok(Expiry {
            month,
            reports: 0,
            agents: 0,
        });
    }
    let end = next_month(month);
    let rows = conn
        .prepare_cached(&format!(
            "SELECT agent_id, seq, digest FROM reports WHERE {EXPIRING} ORDER BY agent_id, seq"
        ))?
        .query_map(params![month, end], |r| {
            let d: Vec<u8> = r.get(2)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                Digest::from_slice(&d).unwrap_or(Digest([0; 32])),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let summaries = retained_by_agent(month, &rows);
    let mut put = conn.prepare_cached(
        "INSERT INTO report_retention (agent_id, month, first_seq, last_seq, reports, root, removed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for s in &summaries {
        put.execute(params![
            s.agent_id,
            month,
            s.first_seq as i64,
            s.last_seq as i64,
            s.reports as i64,
            s.root.as_bytes().as_slice(),
            now
        ])?;
    }
    conn.execute(
        &format!("UPDATE reports SET bytes = x'', signature = x'' WHERE {EXPIRING}"),
        params![month, end],
    )?;
    conn.execute(
        "UPDATE periods SET expired_at = ?2 WHERE month = ?1",
        params![month, now],
    )?;
    Ok(Expiry {
        month,
        reports: rows.len() as u64,
        agents: summaries.len() as u64,
    })
}

pub(super) fn retained_digests(
    conn: &Connection,
    agent: Option<&str>,
) -> StoreResult<Vec<RetainedDigest>> {
    Ok(conn
        .prepare_cached(
            "SELECT agent_id, month, first_seq, last_seq, reports, root FROM report_retention
             WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY agent_id, month",
        )?
        .query_map([agent], |r| {
            let root: Vec<u8> = r.get(5)?;
            Ok(RetainedDigest {
                agent_id: r.get(0)?,
                month: r.get(1)?,
                first_seq: r.get::<_, i64>(2)? as u64,
                last_seq: r.get::<_, i64>(3)? as u64,
                reports: r.get::<_, i64>(4)? as u64,
                root: Digest::from_slice(&root).unwrap_or(Digest([0; 32])),
            })
        })?
        .collect::<Result<_, _>>()?)
}

#[async_trait]
impl PeriodStore for SqliteStore {
    async fn periods(&self) -> StoreResult<Vec<PeriodRecord>> {
        self.read(super::periods::periods).await
    }

    async fn begin_close(&self, month: i64, now: Instant) -> StoreResult<PeriodRecord> {
        let clock = self.clock;
        self.writer
            .write(move |c| super::periods::begin_close(c, month, now, clock))
            .await
    }

    async fn license_limits(
        &self,
        customer: String,
        month: i64,
    ) -> StoreResult<Vec<crate::rules::LicenseLimit>> {
        self.read(move |c| super::periods::license_limits(c, &customer, month))
            .await
    }

    async fn statement_evidence(
        &self,
        customer: String,
        month: i64,
        agent: String,
    ) -> StoreResult<Vec<EvidenceRow>> {
        self.read(move |c| super::periods::statement_evidence(c, &customer, month, &agent))
            .await
    }

    async fn counted_reports(
        &self,
        customer: String,
        month: i64,
        only_late: bool,
    ) -> StoreResult<Vec<CountedReport>> {
        self.read(move |c| super::periods::counted_reports(c, &customer, month, only_late))
            .await
    }

    async fn finish_close(
        &self,
        month: i64,
        statements: Vec<(String, Vec<u8>)>,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| super::periods::finish_close(c, month, &statements))
            .await
    }

    async fn closed_statement(&self, customer: String, month: i64) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| super::periods::closed_statement(c, &customer, month))
            .await
    }

    async fn expire_reports(
        &self,
        closed_before: Instant,
        now: Instant,
    ) -> StoreResult<Vec<Expiry>> {
        let months = self
            .read(move |c| super::periods::months_to_expire(c, closed_before))
            .await?;
        let mut out = Vec::new();
        for month in months {
            // One transaction per month, so a large removal does not hold up ingest long.
            out.push(
                self.writer
                    .write(move |c| super::periods::expire_month(c, month, secs(now)))
                    .await?,
            );
        }
        Ok(out)
    }

    async fn retained_digests(&self, agent: Option<String>) -> StoreResult<Vec<RetainedDigest>> {
        self.read(move |c| super::periods::retained_digests(c, agent.as_deref()))
            .await
    }
}
