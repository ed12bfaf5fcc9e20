//! Cancelling a customer and purging it when its time comes.

use super::super::*;
use super::*;
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn cancel_customer(
    conn: &Connection,
    id: &str,
    now: i64,
    purge_at: i64,
) -> StoreResult<Cancellation> {
    let cancelled: Option<Option<i64>> = conn
        .query_row(
            "SELECT cancelled_at FROM customers WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    match cancelled {
        None => return Err(StoreError::NotFound(format!("customer {id} not found"))),
        Some(Some(_)) => {
            return Err(StoreError::Conflict(format!(
                "customer {id} is already cancelled"
            )));
        }
        Some(None) => {}
    }
    let licenses = conn.execute(
        "UPDATE licenses SET revoked_at = ?2 WHERE customer_id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )? as u64;
    conn.execute(
        "UPDATE enrollment_tokens SET uses_left = 0
         WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = ?1)",
        [id],
    )?;
    let agents = conn.execute(
        "UPDATE agents SET revoked_at = ?2
         WHERE revoked_at IS NULL AND license_id IN (SELECT id FROM licenses WHERE customer_id = ?1)",
        params![id, now],
    )? as u64;
    let tokens = conn.execute(
        "UPDATE tokens SET revoked_at = ?2 WHERE role = 'customer:' || ?1 AND revoked_at IS NULL",
        params![id, now],
    )? as u64;
    conn.execute(
        "UPDATE customers SET cancelled_at = ?2, purge_at = ?3 WHERE id = ?1",
        params![id, now, purge_at],
    )?;
    Ok(Cancellation {
        licenses,
        agents,
        tokens,
        purge_at: chrono::DateTime::from_timestamp(purge_at, 0),
    })
}

/// Cancelled customers whose purge is due at `now`.
pub(super) fn purge_due_ids(conn: &Connection, now: i64) -> StoreResult<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT id FROM customers WHERE purge_at IS NOT NULL AND purge_at <= ?1 ORDER BY purge_at, id",
    )?;
    let ids = st
        .query_map([now], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

/// Removes everything of one cancelled customer, children before parents. `None` if it is
/// not (or no longer) due: another purge got there first.
pub(super) fn purge_one(conn: &Connection, id: &str, now: i64) -> StoreResult<Option<Purge>> {
    let due: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM customers WHERE id = ?1 AND purge_at IS NOT NULL AND purge_at <= ?2",
            params![id, now],
            |r| r.get(0),
        )
        .optional()?;
    if due.is_none() {
        return Ok(None);
    }
    let license_ids: Vec<String> = conn
        .prepare_cached("SELECT id FROM licenses WHERE customer_id = ?1 ORDER BY id")?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let of_licenses = "(SELECT id FROM licenses WHERE customer_id = ?1)";
    let run = |sql: String| -> StoreResult<u64> { Ok(conn.execute(&sql, [id])? as u64) };
    let reports = run(format!(
        "DELETE FROM reports WHERE license_id IN {of_licenses}
            OR agent_id IN (SELECT id FROM agents WHERE license_id IN {of_licenses})"
    ))?;
    let rollup_rows = run(format!(
        "DELETE FROM rollups WHERE license_id IN {of_licenses}"
    ))? + run(format!(
        "DELETE FROM monthly_usage WHERE license_id IN {of_licenses}"
    ))?;
    let anomalies = run(format!(
        "DELETE FROM anomalies WHERE license_id IN {of_licenses}"
    ))?;
    run(format!(
        "DELETE FROM report_retention WHERE agent_id IN (SELECT id FROM agents WHERE license_id IN {of_licenses})"
    ))?;
    run(format!(
        "DELETE FROM agent_keys WHERE agent_id IN (SELECT id FROM agents WHERE license_id IN {of_licenses})"
    ))?;
    let agents = run(format!(
        "DELETE FROM agents WHERE license_id IN {of_licenses}"
    ))?;
    run(format!(
        "DELETE FROM enrollment_tokens WHERE license_id IN {of_licenses}"
    ))?;
    run(format!(
        "DELETE FROM license_metrics WHERE license_id IN {of_licenses}"
    ))?;
    let statements = run("DELETE FROM statements WHERE customer_id = ?1".into())?;
    let alerts = run("DELETE FROM alerts WHERE customer_id = ?1".into())?;
    run(format!(
        "DELETE FROM license_alerts WHERE license_id IN {of_licenses}"
    ))?;
    let licenses = run("DELETE FROM licenses WHERE customer_id = ?1".into())?;
    let tokens = run("DELETE FROM tokens WHERE role = 'customer:' || ?1".into())?;
    run("DELETE FROM customers WHERE id = ?1".into())?;
    Ok(Some(Purge {
        customer_id: id.to_string(),
        license_ids,
        reports,
        rollup_rows,
        anomalies,
        agents,
        licenses,
        tokens,
        statements,
        alerts,
    }))
}

#[async_trait]
impl LifecycleStore for SqliteStore {
    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation> {
        self.writer
            .write(move |c| super::lifecycle::cancel_customer(c, &id, secs(now), secs(purge_at)))
            .await
    }

    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>> {
        let now = secs(now);
        let ids = self
            .read(move |c| super::lifecycle::purge_due_ids(c, now))
            .await?;
        let mut out = Vec::new();
        for id in ids {
            // One transaction per customer: a large purge does not hold up ingest for the
            // whole set, and a failure leaves the others done.
            if let Some(p) = self
                .writer
                .write(move |c| super::lifecycle::purge_one(c, &id, now))
                .await?
            {
                out.push(p);
            }
        }
        Ok(out)
    }
}
