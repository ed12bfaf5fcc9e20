//! Administrative writes and reads on PostgreSQL: customers, licenses, agents, tokens,
//! the audit log and the collector key. Check-then-write sequences lock the row they
//! check (`FOR UPDATE`), since another collector may act on it at the same time.

use super::*;
use super::{execute, query, query_opt, ts};
use crate::ids;
use crate::roles::Role;
use deadpool_postgres::GenericClient;

fn quota(limit: Option<u64>) -> Option<i64> {
    limit.map(|q| q.min(i64::MAX as u64) as i64)
}

pub(super) async fn collector_key<C: GenericClient>(c: &C) -> StoreResult<Option<[u8; 32]>> {
    let row = query_opt(
        c,
        "SELECT value FROM meta WHERE name = 'collector_key'",
        &[],
    )
    .await?;
    Ok(row.and_then(|r| <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0)).ok()))
}

pub(super) async fn bind_collector_key<C: GenericClient>(c: &C, key: [u8; 32]) -> StoreResult<()> {
    execute(
        c,
        "INSERT INTO meta (name, value) VALUES ('collector_key', $1) ON CONFLICT (name) DO NOTHING",
        &[&key.as_slice()],
    )
    .await?;
    match collector_key(c).await? {
        Some(k) if k == key => Ok(()),
        Some(k) => Err(crate::store::key_mismatch(&k, &key)),
        None => Err(StoreError::Database(
            "the collector key was not recorded".into(),
        )),
    }
}

pub(super) async fn add_customer<C: GenericClient>(
    c: &C,
    name: &str,
    now: i64,
) -> StoreResult<CustomerRecord> {
    let id = ids::new_id("cus");
    execute(
        c,
        "INSERT INTO customers (id, name, created_at) VALUES ($1, $2, $3)",
        &[&id, &name, &now],
    )
    .await?;
    Ok(CustomerRecord {
        id,
        name: name.to_string(),
        created_at: ts(now),
        cancelled_at: None,
    })
}

pub(super) async fn list_customers<C: GenericClient>(
    c: &C,
    only: Option<&str>,
) -> StoreResult<Vec<CustomerRecord>> {
    let rows = query(
        c,
        "SELECT id, name, created_at, cancelled_at FROM customers
         WHERE $1::text IS NULL OR id = $1 ORDER BY created_at, id",
        &[&only],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CustomerRecord {
            id: r.get(0),
            name: r.get(1),
            created_at: ts(r.get(2)),
            cancelled_at: r.get::<_, Option<i64>>(3).map(ts),
        })
        .collect())
}

pub(super) async fn issue_license<C: GenericClient>(
    c: &C,
    new: &NewLicense,
    now: i64,
) -> StoreResult<()> {
    let l = &new.license;
    if query_opt(
        c,
        "SELECT 1 FROM customers WHERE id = $1 FOR SHARE",
        &[&l.customer_id],
    )
    .await?
    .is_none()
    {
        return Err(StoreError::NotFound(format!(
            "customer {} not found",
            l.customer_id
        )));
    }
    execute(
        c,
        "INSERT INTO licenses (id, customer_id, signed, not_before, not_after, grace_secs, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &l.license_id,
            &l.customer_id,
            &new.signed,
            &l.not_before.timestamp(),
            &l.not_after.timestamp(),
            &(l.grace_secs.min(i64::MAX as u64) as i64),
            &now,
        ],
    )
    .await?;
    for m in &l.metrics {
        execute(
            c,
            "INSERT INTO license_metrics (license_id, metric, quota) VALUES ($1, $2, $3)",
            &[&l.license_id, &m.metric, &quota(m.limit)],
        )
        .await?;
    }
    for p in &new.alerts {
        execute(
            c,
            "INSERT INTO license_alerts (license_id, percent) VALUES ($1, $2)",
            &[&l.license_id, &(*p as i32)],
        )
        .await?;
    }
    execute(
        c,
        "INSERT INTO enrollment_tokens (hash, license_id, uses_left, expires_at) VALUES ($1, $2, $3, $4)",
        &[
            &new.token_hash.as_slice(),
            &l.license_id,
            &i64::from(new.enrollments),
            &new.token_expires.timestamp(),
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn list_licenses<C: GenericClient>(
    c: &C,
    customer: Option<&str>,
) -> StoreResult<Vec<LicenseRecord>> {
    let rows = query(
        c,
        "SELECT id, customer_id, not_before, not_after, grace_secs, revoked_at FROM licenses
         WHERE $1::text IS NULL OR customer_id = $1 ORDER BY created_at, id",
        &[&customer],
    )
    .await?;
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let metric_rows = query(
        c,
        "SELECT license_id, metric, quota FROM license_metrics WHERE license_id = ANY($1)
         ORDER BY license_id, metric",
        &[&ids],
    )
    .await?;
    let mut metrics: HashMap<String, Vec<LicenseMetricRecord>> = HashMap::new();
    for r in metric_rows {
        metrics
            .entry(r.get(0))
            .or_default()
            .push(LicenseMetricRecord {
                metric: r.get(1),
                limit: r.get::<_, Option<i64>>(2).map(|q| q as u64),
            });
    }
    let mut alerts: HashMap<String, Vec<u32>> = HashMap::new();
    for r in query(
        c,
        "SELECT license_id, percent FROM license_alerts WHERE license_id = ANY($1)
         ORDER BY license_id, percent",
        &[&ids],
    )
    .await?
    {
        alerts
            .entry(r.get(0))
            .or_default()
            .push(r.get::<_, i32>(1) as u32);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let id: String = r.get(0);
            LicenseRecord {
                alerts: alerts.remove(&id).unwrap_or_default(),
                metrics: metrics.remove(&id).unwrap_or_default(),
                license_id: id,
                customer_id: r.get(1),
                not_before: ts(r.get(2)),
                not_after: ts(r.get(3)),
                grace_secs: r.get::<_, i64>(4).max(0) as u64,
                revoked_at: r.get::<_, Option<i64>>(5).map(ts),
            }
        })
        .collect())
}

pub(super) async fn revoke_license<C: GenericClient>(c: &C, id: &str, now: i64) -> StoreResult<()> {
    let row = query_opt(
        c,
        "SELECT revoked_at FROM licenses WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    match row.map(|r| r.get::<_, Option<i64>>(0)) {
        None => Err(StoreError::NotFound(format!("license {id} not found"))),
        Some(Some(_)) => Err(StoreError::Conflict(format!(
            "license {id} is already revoked"
        ))),
        Some(None) => {
            execute(
                c,
                "UPDATE licenses SET revoked_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
            execute(
                c,
                "UPDATE enrollment_tokens SET uses_left = 0 WHERE license_id = $1",
                &[&id],
            )
            .await?;
            Ok(())
        }
    }
}

/// Adds an agent key to a license (online enrollment and `agents add`).
pub(super) async fn add_agent<C: GenericClient>(
    c: &C,
    license_id: &str,
    key: &[u8; 32],
    now: i64,
) -> StoreResult<String> {
    // Lock the license first: a concurrent revoke waits, and two adds of one key take turns.
    let lic = query_opt(
        c,
        "SELECT revoked_at FROM licenses WHERE id = $1 FOR SHARE",
        &[&license_id],
    )
    .await?;
    let existing = query_opt(
        c,
        "SELECT a.id, a.license_id FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = $1",
        &[&key.as_slice()],
    )
    .await?;
    if let Some(r) = existing {
        let (id, lic): (String, String) = (r.get(0), r.get(1));
        if lic == license_id {
            return Ok(id);
        }
        return Err(StoreError::Conflict(
            "this agent key is enrolled for another license".into(),
        ));
    }
    match lic.map(|r| r.get::<_, Option<i64>>(0)) {
        None => {
            return Err(StoreError::NotFound(format!(
                "license {license_id} not found"
            )));
        }
        Some(Some(_)) => {
            return Err(StoreError::Conflict(format!(
                "license {license_id} is revoked"
            )));
        }
        Some(None) => {}
    }
    let id = ids::new_id("agt");
    execute(
        c,
        "INSERT INTO agents (id, key, license_id, enrolled_at) VALUES ($1, $2, $3, $4)",
        &[&id, &key.as_slice(), &license_id, &now],
    )
    .await?;
    super::agent_keys::add_enrolled_key(c, key, &id, now).await?;
    Ok(id)
}

pub(super) async fn enroll<C: GenericClient>(
    c: &C,
    license_id: &str,
    token_hash: &[u8; 32],
    key: &[u8; 32],
    now: i64,
) -> StoreResult<(String, Vec<u8>)> {
    let lic: Option<(Vec<u8>, Option<i64>, i64, i64)> = query_opt(
        c,
        "SELECT signed, revoked_at, not_after, grace_secs FROM licenses WHERE id = $1",
        &[&license_id],
    )
    .await?
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)));
    // The token row is locked: two collectors using its last enrollment take turns.
    let token: Option<(String, i64, i64)> = query_opt(
        c,
        "SELECT license_id, uses_left, expires_at FROM enrollment_tokens WHERE hash = $1 FOR UPDATE",
        &[&token_hash.as_slice()],
    )
    .await?
    .map(|r| (r.get(0), r.get(1), r.get(2)));
    let existing: Option<(String, String)> = query_opt(
        c,
        "SELECT a.id, a.license_id FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = $1",
        &[&key.as_slice()],
    )
    .await?
    .map(|r| (r.get(0), r.get(1)));
    let decision = crate::rules::enrollment(&crate::rules::EnrollFacts {
        license_id,
        license: lic
            .as_ref()
            .map(|l| (l.1.is_some(), l.2.saturating_add(l.3))),
        token: token.as_ref().map(|t| (t.0.as_str(), t.1, t.2)),
        key_enrolled_on: existing.as_ref().map(|e| e.1.as_str()),
        now,
    });
    if let Some(e) = crate::store::enrollment_refusal(&decision) {
        return Err(e);
    }
    let signed = lic.map(|l| l.0).unwrap_or_default();
    if let (crate::rules::Enrollment::AlreadyEnrolled, Some((id, _))) = (&decision, existing) {
        return Ok((id, signed));
    }
    execute(
        c,
        "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE hash = $1",
        &[&token_hash.as_slice()],
    )
    .await?;
    let id = add_agent(c, license_id, key, now).await?;
    Ok((id, signed))
}

pub(super) async fn list_agents<C: GenericClient>(
    c: &C,
    f: &AgentFilter,
) -> StoreResult<Vec<AgentRecord>> {
    let rows = query(
        c,
        "SELECT a.id, a.key, a.license_id, l.customer_id, a.revoked_at, a.last_seq, a.last_seen, a.enrolled_at
         FROM agents a JOIN licenses l ON l.id = a.license_id
         WHERE ($1::text IS NULL OR l.customer_id = $1) AND ($2::text IS NULL OR a.license_id = $2)
         ORDER BY a.enrolled_at, a.id",
        &[&f.customer, &f.license],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AgentRecord {
            agent_id: r.get(0),
            key: r.get::<_, Vec<u8>>(1).try_into().unwrap_or([0; 32]),
            license_id: r.get(2),
            customer_id: r.get(3),
            revoked_at: r.get::<_, Option<i64>>(4).map(ts),
            last_seq: r.get::<_, i64>(5) as u64,
            last_seen: r.get::<_, Option<i64>>(6).map(ts),
            enrolled_at: ts(r.get(7)),
        })
        .collect())
}

pub(super) async fn revoke_agent<C: GenericClient>(c: &C, id: &str, now: i64) -> StoreResult<()> {
    let row = query_opt(
        c,
        "SELECT revoked_at FROM agents WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    match row.map(|r| r.get::<_, Option<i64>>(0)) {
        None => Err(StoreError::NotFound(format!("agent {id} not found"))),
        Some(Some(_)) => Err(StoreError::Conflict(format!(
            "agent {id} is already revoked"
        ))),
        Some(None) => {
            execute(
                c,
                "UPDATE agents SET revoked_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
            Ok(())
        }
    }
}

pub(super) async fn create_token<C: GenericClient>(
    c: &C,
    id: &str,
    hash: &[u8; 32],
    role: &Role,
    name: &str,
    now: i64,
) -> StoreResult<()> {
    if let Some(cust) = role.customer()
        && query_opt(
            c,
            "SELECT 1 FROM customers WHERE id = $1 FOR SHARE",
            &[&cust],
        )
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound(format!("customer {cust} not found")));
    }
    execute(
        c,
        "INSERT INTO tokens (id, hash, role, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &hash.as_slice(), &role.to_string(), &name, &now],
    )
    .await?;
    Ok(())
}

pub(super) async fn list_tokens<C: GenericClient>(c: &C) -> StoreResult<Vec<TokenListing>> {
    let rows = query(
        c,
        "SELECT id, role, name, created_at, revoked_at FROM tokens ORDER BY created_at, id",
        &[],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TokenListing {
            id: r.get(0),
            role: r.get(1),
            name: r.get(2),
            created_at: ts(r.get(3)),
            revoked: r.get::<_, Option<i64>>(4).is_some(),
        })
        .collect())
}

pub(super) async fn revoke_token<C: GenericClient>(c: &C, id: &str, now: i64) -> StoreResult<()> {
    let n = execute(
        c,
        "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[&id, &now],
    )
    .await?;
    if n == 0 {
        let exists = query_opt(c, "SELECT 1 FROM tokens WHERE id = $1", &[&id])
            .await?
            .is_some();
        return Err(if exists {
            StoreError::Conflict(format!("token {id} is already revoked"))
        } else {
            StoreError::NotFound(format!("token {id} not found"))
        });
    }
    Ok(())
}

pub(super) async fn token_by_hash<C: GenericClient>(
    c: &C,
    hash: &[u8; 32],
) -> StoreResult<Option<TokenRecord>> {
    let Some(r) = query_opt(
        c,
        "SELECT id, role, name, revoked_at FROM tokens WHERE hash = $1",
        &[&hash.as_slice()],
    )
    .await?
    else {
        return Ok(None);
    };
    let (id, role, name, revoked): (String, String, String, Option<i64>) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let role = role
        .parse::<Role>()
        .map_err(|e| StoreError::Database(format!("stored role of token {id}: {e}")))?;
    Ok(Some(TokenRecord {
        id,
        role,
        name,
        revoked: revoked.is_some(),
    }))
}

pub(super) async fn audit<C: GenericClient>(c: &C, e: &AuditEntry) -> StoreResult<()> {
    execute(
        c,
        "INSERT INTO audit (at, actor, action, target, outcome) VALUES ($1, $2, $3, $4, $5)",
        &[
            &e.at.timestamp(),
            &e.actor,
            &e.action,
            &e.target,
            &e.outcome,
        ],
    )
    .await?;
    Ok(())
}

/// See [`Store::audit_repeatable`]. One statement: the update of the newest matching row
/// if it began at or after `since`, else the insert.
pub(super) async fn audit_repeatable<C: GenericClient>(
    c: &C,
    e: &AuditEntry,
    since: Instant,
) -> StoreResult<()> {
    execute(
        c,
        "WITH newest AS (
             SELECT id, at FROM audit
             WHERE actor = $2 AND action = $3 AND target = $4 AND outcome = $5
             ORDER BY id DESC LIMIT 1
         ), grouped AS (
             UPDATE audit SET repeats = audit.repeats + 1, last_at = $1
             FROM newest WHERE audit.id = newest.id AND newest.at >= $6
             RETURNING audit.id
         )
         INSERT INTO audit (at, actor, action, target, outcome)
         SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM grouped)",
        &[
            &e.at.timestamp(),
            &e.actor,
            &e.action,
            &e.target,
            &e.outcome,
            &since.timestamp(),
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn list_audit<C: GenericClient>(
    c: &C,
    limit: u32,
) -> StoreResult<Vec<AuditRecord>> {
    let rows = query(
        c,
        "SELECT at, actor, action, target, outcome, repeats, last_at
         FROM audit ORDER BY id DESC LIMIT $1",
        &[&i64::from(limit)],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let at = ts(r.get(0));
            AuditRecord {
                entry: AuditEntry {
                    at,
                    actor: r.get(1),
                    action: r.get(2),
                    target: r.get(3),
                    outcome: r.get(4),
                },
                repeats: r.get::<_, i64>(5).max(1) as u64,
                last_at: r.get::<_, Option<i64>>(6).map_or(at, ts),
            }
        })
        .collect())
}

#[async_trait]
impl RegistryStore for PostgresStore {
    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord> {
        let c = self.client().await?;
        super::admin::add_customer(&c, &name, secs(now)).await
    }

    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>> {
        let c = self.client().await?;
        super::admin::list_customers(&c, only.as_deref()).await
    }

    async fn customer_exists(&self, id: String) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(
            query_opt(&c, "SELECT 1 FROM customers WHERE id = $1", &[&id])
                .await?
                .is_some(),
        )
    }

    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| super::admin::issue_license(&tx, &new, secs(now))
            .await?)
    }

    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>> {
        let c = self.client().await?;
        super::admin::list_licenses(&c, customer.as_deref()).await
    }

    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| super::admin::revoke_license(&tx, &id, secs(now))
            .await?)
    }

    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String> {
        in_transaction!(self, |tx| super::admin::add_agent(
            &tx,
            &license_id,
            &key,
            secs(now)
        )
        .await?)
    }

    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>> {
        let c = self.client().await?;
        super::admin::list_agents(&c, &filter).await
    }

    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| super::admin::revoke_agent(&tx, &id, secs(now))
            .await?)
    }

    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| {
            super::admin::create_token(&tx, &id, &hash, &role, &name, secs(now)).await?
        })
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>> {
        let c = self.client().await?;
        super::admin::list_tokens(&c).await
    }

    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()> {
        in_transaction!(self, |tx| super::admin::revoke_token(&tx, &id, secs(now))
            .await?)
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        let c = self.client().await?;
        super::admin::token_by_hash(&c, &hash).await
    }
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        let c = self.client().await?;
        super::admin::audit(&c, &entry).await
    }

    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()> {
        let c = self.client().await?;
        super::admin::audit_repeatable(&c, &entry, since).await
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        super::admin::list_audit(&c, limit).await
    }
}
