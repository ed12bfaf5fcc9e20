//! Cancelling a customer and purging it when its time comes, on PostgreSQL.

use super::*;
use super::{execute, query, query_opt};
use deadpool_postgres::GenericClient;

pub(super) async fn cancel_customer<C: GenericClient>(
    c: &C,
    id: &str,
    now: i64,
    purge_at: i64,
) -> StoreResult<Cancellation> {
    let row = query_opt(
        c,
        "SELECT cancelled_at FROM customers WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    match row.map(|r| r.get::<_, Option<i64>>(0)) {
        None => return Err(StoreError::NotFound(format!("customer {id} not found"))),
        Some(Some(_)) => {
            return Err(StoreError::Conflict(format!(
                "customer {id} is already cancelled"
            )));
        }
        Some(None) => {}
    }
    let licenses = execute(
        c,
        "UPDATE licenses SET revoked_at = $2 WHERE customer_id = $1 AND revoked_at IS NULL",
        &[&id, &now],
    )
    .await?;
    execute(
        c,
        "UPDATE enrollment_tokens SET uses_left = 0
         WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)",
        &[&id],
    )
    .await?;
    let agents = execute(
        c,
        "UPDATE agents SET revoked_at = $2
         WHERE revoked_at IS NULL AND license_id IN (SELECT id FROM licenses WHERE customer_id = $1)",
        &[&id, &now],
    )
    .await?;
    let tokens = execute(
        c,
        "UPDATE tokens SET revoked_at = $2 WHERE role = 'customer:' || $1 AND revoked_at IS NULL",
        &[&id, &now],
    )
    .await?;
    execute(
        c,
        "UPDATE customers SET cancelled_at = $2, purge_at = $3 WHERE id = $1",
        &[&id, &now, &purge_at],
    )
    .await?;
    Ok(Cancellation {
        licenses,
        agents,
        tokens,
        purge_at: chrono::DateTime::from_timestamp(purge_at, 0),
    })
}

/// Cancelled customers whose purge is due at `now`.
pub(super) async fn purge_due_ids<C: GenericClient>(c: &C, now: i64) -> StoreResult<Vec<String>> {
    let rows = query(
        c,
        "SELECT id FROM customers WHERE purge_at IS NOT NULL AND purge_at <= $1 ORDER BY purge_at, id",
        &[&now],
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Removes everything of one cancelled customer, children before parents. `None` if it is
/// not (or no longer) due: another purge got there first.
pub(super) async fn purge_one<C: GenericClient>(
    c: &C,
    id: &str,
    now: i64,
) -> StoreResult<Option<Purge>> {
    let due = query_opt(
        c,
        "SELECT 1 FROM customers WHERE id = $1 AND purge_at IS NOT NULL AND purge_at <= $2 FOR UPDATE",
        &[&id, &now],
    )
    .await?;
    if due.is_none() {
        return Ok(None);
    }
    let license_ids: Vec<String> = query(
        c,
        "SELECT id FROM licenses WHERE customer_id = $1 ORDER BY id",
        &[&id],
    )
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    let run = |sql: &'static str| async move { execute(c, sql, &[&id]).await };
    // A report's license is always its agent's (ingest refuses any other), so the
    // agents' reports are all of the licenses' reports, found by the table's key.
    let reports = run("DELETE FROM reports WHERE agent_id IN
            (SELECT a.id FROM agents a JOIN licenses l ON l.id = a.license_id WHERE l.customer_id = $1)")
    .await?;
    let rollup_rows = run(
        "DELETE FROM rollups WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)",
    )
    .await?
        + run("DELETE FROM monthly_usage WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)")
            .await?;
    let anomalies = run(
        "DELETE FROM anomalies WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)",
    )
    .await?;
    run("DELETE FROM report_retention WHERE agent_id IN
            (SELECT a.id FROM agents a JOIN licenses l ON l.id = a.license_id WHERE l.customer_id = $1)")
    .await?;
    run("DELETE FROM agent_keys WHERE agent_id IN
            (SELECT a.id FROM agents a JOIN licenses l ON l.id = a.license_id WHERE l.customer_id = $1)")
    .await?;
    let agents = run(
        "DELETE FROM agents WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)",
    )
    .await?;
    run("DELETE FROM enrollment_tokens WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)")
        .await?;
    run("DELETE FROM license_metrics WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)")
        .await?;
    let statements = run("DELETE FROM statements WHERE customer_id = $1").await?;
    let alerts = run("DELETE FROM alerts WHERE customer_id = $1").await?;
    run("DELETE FROM license_alerts WHERE license_id IN (SELECT id FROM licenses WHERE customer_id = $1)")
        .await?;
    let licenses = run("DELETE FROM licenses WHERE customer_id = $1").await?;
    let tokens = run("DELETE FROM tokens WHERE role = 'customer:' || $1").await?;
    run("DELETE FROM customers WHERE id = $1").await?;
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
impl LifecycleStore for PostgresStore {
    async fn cancel_customer(
        &self,
        id: String,
        now: Instant,
        purge_at: Instant,
    ) -> StoreResult<Cancellation> {
        in_transaction!(self, |tx| {
            super::lifecycle::cancel_customer(&tx, &id, secs(now), secs(purge_at)).await?
        })
    }

    async fn purge_due(&self, now: Instant) -> StoreResult<Vec<Purge>> {
        let now = secs(now);
        let ids = {
            let c = self.client().await?;
            super::lifecycle::purge_due_ids(&c, now).await?
        };
        let mut out = Vec::new();
        for id in ids {
            // One transaction per customer, as on SQLite. Two collectors may try the same
            // purge; the row lock makes the second find nothing left to do.
            if let Some(p) = in_transaction!(self, |tx| super::lifecycle::purge_one(&tx, &id, now)
                .await?)?
            {
                out.push(p);
            }
        }
        Ok(out)
    }
}
