//! Usage alerts on PostgreSQL. A crossing is found from the month's total across shards,
//! so with several collectors two transactions adding to the same license at once could
//! each see the total below a threshold that together they pass. To find every crossing
//! exactly once, a transaction that counts for a license with thresholds takes that
//! license's advisory lock (`lock`, in license order, before it reads the sums): such
//! transactions run one after the other, each reading the total the previous committed.
//! Licenses without thresholds take no lock and are not slowed down.

use super::*;
use super::{execute, query, query_opt};
use crate::store::{AlertRecord, AlertTerms, NewAlert, StoreError, StoreResult, alert_id};
use deadpool_postgres::GenericClient;
use std::collections::HashMap;
use tally_proto::time::Instant;

/// The advisory lock key of an alerting license: 64 bits of SHA-256 (a collision between
/// two licenses only makes them wait for each other).
fn lock_key(license_id: &str) -> i64 {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(format!("tally.alerts\0{license_id}"));
    i64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

/// The alert terms of those of `license_ids` that have thresholds.
pub(super) async fn terms<C: GenericClient>(
    c: &C,
    license_ids: &[&str],
) -> StoreResult<HashMap<String, AlertTerms>> {
    let mut out: HashMap<String, AlertTerms> = HashMap::new();
    for r in query(
        c,
        "SELECT a.license_id, a.percent, l.customer_id FROM license_alerts a
         JOIN licenses l ON l.id = a.license_id
         WHERE a.license_id = ANY($1) ORDER BY a.license_id, a.percent",
        &[&license_ids],
    )
    .await?
    {
        let t = out.entry(r.get(0)).or_default();
        t.percents.push(r.get::<_, i32>(1) as u32);
        t.customer_id = r.get(2);
    }
    if out.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = out.keys().map(String::as_str).collect();
    for r in query(
        c,
        "SELECT license_id, metric, quota FROM license_metrics
         WHERE license_id = ANY($1) AND quota IS NOT NULL",
        &[&ids],
    )
    .await?
    {
        if let Some(t) = out.get_mut(r.get::<_, &str>(0)) {
            t.limits.insert(r.get(1), r.get::<_, i64>(2) as u64);
        }
    }
    Ok(out)
}

/// Takes the advisory lock of each alerting license, in key order (so no two transactions
/// wait for each other in a cycle); held until the transaction ends.
pub(super) async fn lock<C: GenericClient>(
    c: &C,
    terms: &HashMap<String, AlertTerms>,
) -> StoreResult<()> {
    let mut keys: Vec<i64> = terms.keys().map(|id| lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        execute(c, "SELECT pg_advisory_xact_lock($1)", &[&key]).await?;
    }
    Ok(())
}

/// Writes crossings found in this transaction; one already recorded is left as it is.
pub(super) async fn insert<C: GenericClient>(
    c: &C,
    alerts: &[NewAlert],
    now: i64,
) -> StoreResult<()> {
    for a in alerts {
        execute(
            c,
            "INSERT INTO alerts (id, license_id, customer_id, metric, month, percent, used, quota,
                crossed_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT DO NOTHING",
            &[
                &alert_id(&a.license_id, &a.metric, a.month, a.percent),
                &a.license_id,
                &a.customer_id,
                &a.metric,
                &a.month,
                &(a.percent as i32),
                &i64::try_from(a.used).unwrap_or(i64::MAX),
                &i64::try_from(a.limit).unwrap_or(i64::MAX),
                &now,
            ],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn set_license_alerts<C: GenericClient>(
    c: &C,
    license_id: &str,
    percents: &[u32],
) -> StoreResult<()> {
    if query_opt(
        c,
        "SELECT 1 FROM licenses WHERE id = $1 FOR UPDATE",
        &[&license_id],
    )
    .await?
    .is_none()
    {
        return Err(StoreError::NotFound(format!(
            "license {license_id} not found"
        )));
    }
    execute(
        c,
        "DELETE FROM license_alerts WHERE license_id = $1",
        &[&license_id],
    )
    .await?;
    let p: Vec<i32> = percents.iter().map(|&v| v as i32).collect();
    execute(
        c,
        "INSERT INTO license_alerts (license_id, percent) SELECT $1, unnest($2::int4[])",
        &[&license_id, &p],
    )
    .await?;
    Ok(())
}

const COLUMNS: &str =
    "id, license_id, customer_id, metric, month, percent, used, quota, crossed_at,
    delivered_at, attempts";

fn record(r: &tokio_postgres::Row) -> AlertRecord {
    let t = |v: i64| Instant::from_timestamp(v, 0).unwrap_or_default();
    AlertRecord {
        id: r.get(0),
        license_id: r.get(1),
        customer_id: r.get(2),
        metric: r.get(3),
        month: r.get(4),
        percent: r.get::<_, i32>(5) as u32,
        used: r.get::<_, i64>(6) as u64,
        limit: r.get::<_, i64>(7) as u64,
        crossed_at: t(r.get(8)),
        delivered_at: r.get::<_, Option<i64>>(9).map(t),
        attempts: r.get::<_, i32>(10) as u32,
    }
}

pub(super) async fn alerts<C: GenericClient>(
    c: &C,
    customer: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<AlertRecord>> {
    Ok(query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM alerts WHERE $1::text IS NULL OR customer_id = $1
             ORDER BY crossed_at DESC, id LIMIT $2"
        ),
        &[&customer, &i64::from(limit)],
    )
    .await?
    .iter()
    .map(record)
    .collect())
}

/// Due alerts, claimed until `lease_until` in one statement; rows another collector is
/// claiming at the same moment are skipped, not waited for.
pub(super) async fn claim_due<C: GenericClient>(
    c: &C,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> StoreResult<Vec<AlertRecord>> {
    let mut out: Vec<AlertRecord> = query(
        c,
        &format!(
            "UPDATE alerts SET next_attempt_at = $2
             WHERE id IN (SELECT id FROM alerts
                          WHERE delivered_at IS NULL AND next_attempt_at <= $1
                          ORDER BY next_attempt_at, crossed_at LIMIT $3
                          FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        ),
        &[&now, &lease_until, &i64::from(limit)],
    )
    .await?
    .iter()
    .map(record)
    .collect();
    out.sort_by(|a, b| {
        a.crossed_at
            .cmp(&b.crossed_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

pub(super) async fn attempted<C: GenericClient>(
    c: &C,
    id: &str,
    now: i64,
    next_attempt: Option<i64>,
) -> StoreResult<()> {
    match next_attempt {
        None => {
            execute(
                c,
                "UPDATE alerts SET delivered_at = $2, attempts = attempts + 1 WHERE id = $1",
                &[&id, &now],
            )
            .await?
        }
        Some(next) => {
            execute(
                c,
                "UPDATE alerts SET attempts = attempts + 1, next_attempt_at = $2
                 WHERE id = $1 AND delivered_at IS NULL",
                &[&id, &next],
            )
            .await?
        }
    };
    Ok(())
}

#[async_trait]
impl AlertStore for PostgresStore {
    async fn set_license_alerts(&self, license_id: String, percents: Vec<u32>) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            super::alerts::set_license_alerts(&tx, &license_id, &percents).await?
        })
    }

    async fn alerts(&self, customer: Option<String>, limit: u32) -> StoreResult<Vec<AlertRecord>> {
        let c = self.client().await?;
        super::alerts::alerts(&c, customer.as_deref(), limit).await
    }

    async fn claim_due_alerts(
        &self,
        now: Instant,
        lease_until: Instant,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        let c = self.client().await?;
        super::alerts::claim_due(&c, secs(now), secs(lease_until), limit).await
    }

    async fn alert_attempted(
        &self,
        id: String,
        now: Instant,
        next_attempt: Option<Instant>,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        super::alerts::attempted(&c, &id, secs(now), next_attempt.map(secs)).await
    }
}
