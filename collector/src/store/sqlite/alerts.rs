//! Usage alerts on SQLite: thresholds per license, the crossings the counting path finds
//! (written in its transaction), and the webhook outbox.

use super::super::{AlertRecord, AlertTerms, NewAlert, StoreError, StoreResult, alert_id};
use super::*;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use tally_proto::time::Instant;

/// The alert terms of a license, or `None` when it has no thresholds (the common case:
/// one indexed read, nothing else).
pub(super) fn terms(conn: &Connection, license_id: &str) -> StoreResult<Option<AlertTerms>> {
    let percents: Vec<u32> = conn
        .prepare_cached(
            "SELECT percent FROM license_alerts WHERE license_id = ?1 ORDER BY percent",
        )?
        .query_map([license_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if percents.is_empty() {
        return Ok(None);
    }
    let customer_id: String = conn
        .prepare_cached("SELECT customer_id FROM licenses WHERE id = ?1")?
        .query_row([license_id], |r| r.get(0))?;
    let limits: HashMap<String, u64> = conn
        .prepare_cached(
            "SELECT metric, quota FROM license_metrics WHERE license_id = ?1 AND quota IS NOT NULL",
        )?
        .query_map([license_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(AlertTerms {
        customer_id,
        percents,
        limits,
    }))
}

/// Writes crossings found in this transaction; one already recorded is left as it is.
pub(super) fn insert(conn: &Connection, alerts: &[NewAlert], now: i64) -> StoreResult<()> {
    let mut put = conn.prepare_cached(
        "INSERT INTO alerts (id, license_id, customer_id, metric, month, percent, used, quota,
            crossed_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
         ON CONFLICT DO NOTHING",
    )?;
    for a in alerts {
        put.execute(params![
            alert_id(&a.license_id, &a.metric, a.month, a.percent),
            a.license_id,
            a.customer_id,
            a.metric,
            a.month,
            a.percent,
            i64::try_from(a.used).unwrap_or(i64::MAX),
            i64::try_from(a.limit).unwrap_or(i64::MAX),
            now,
        ])?;
    }
    Ok(())
}

pub(super) fn set_license_alerts(
    conn: &Connection,
    license_id: &str,
    percents: &[u32],
) -> StoreResult<()> {
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM licenses WHERE id = ?1", [license_id], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!(
            "license {license_id} not found"
        )));
    }
    conn.execute(
        "DELETE FROM license_alerts WHERE license_id = ?1",
        [license_id],
    )?;
    let mut put =
        conn.prepare_cached("INSERT INTO license_alerts (license_id, percent) VALUES (?1, ?2)")?;
    for p in percents {
        put.execute(params![license_id, p])?;
    }
    Ok(())
}

const COLUMNS: &str =
    "id, license_id, customer_id, metric, month, percent, used, quota, crossed_at,
    delivered_at, attempts";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    let t = |v: i64| Instant::from_timestamp(v, 0).unwrap_or_default();
    Ok(AlertRecord {
        id: r.get(0)?,
        license_id: r.get(1)?,
        customer_id: r.get(2)?,
        metric: r.get(3)?,
        month: r.get(4)?,
        percent: r.get(5)?,
        used: r.get::<_, i64>(6)? as u64,
        limit: r.get::<_, i64>(7)? as u64,
        crossed_at: t(r.get(8)?),
        delivered_at: r.get::<_, Option<i64>>(9)?.map(t),
        attempts: r.get(10)?,
    })
}

pub(super) fn alerts(
    conn: &Connection,
    customer: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<AlertRecord>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE ?1 IS NULL OR customer_id = ?1
             ORDER BY crossed_at DESC, id LIMIT ?2"
        ))?
        .query_map(params![customer, limit], record)?
        .collect::<Result<_, _>>()?)
}

/// Due alerts, claimed until `lease_until` (inside the writer's transaction).
pub(super) fn claim_due(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> StoreResult<Vec<AlertRecord>> {
    let due: Vec<AlertRecord> = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE delivered_at IS NULL AND next_attempt_at <= ?1
             ORDER BY next_attempt_at, crossed_at LIMIT ?2"
        ))?
        .query_map(params![now, limit], record)?
        .collect::<Result<_, _>>()?;
    let mut claim = conn.prepare_cached("UPDATE alerts SET next_attempt_at = ?2 WHERE id = ?1")?;
    for a in &due {
        claim.execute(params![a.id, lease_until])?;
    }
    Ok(due)
}

pub(super) fn attempted(
    conn: &Connection,
    id: &str,
    now: i64,
    next_attempt: Option<i64>,
) -> StoreResult<()> {
    match next_attempt {
        None => conn.execute(
            "UPDATE alerts SET delivered_at = ?2, attempts = attempts + 1 WHERE id = ?1",
            params![id, now],
        )?,
        Some(next) => conn.execute(
            "UPDATE alerts SET attempts = attempts + 1, next_attempt_at = ?2
             WHERE id = ?1 AND delivered_at IS NULL",
            params![id, next],
        )?,
    };
    Ok(())
}

#[async_trait]
impl AlertStore for SqliteStore {
    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()> {
        self.writer
            .write(move |c| super::alerts::set_license_alerts(c, &license_id, &percents))
            .await
    }

    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>> {
        self.read(move |c| super::alerts::alerts(c, customer.as_deref(), limit))
            .await
    }

    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        self.writer
            .write(move |c| super::alerts::claim_due(c, secs(now), secs(lease_until), limit))
            .await
    }

    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| super::alerts::attempted(c, &id, secs(now), next_attempt.map(secs)))
            .await
    }
}
