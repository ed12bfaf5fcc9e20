//! Administrative writes and reads: customers, licenses, agents, tokens, audit log.

use super::super::*;
use super::*;
use crate::ids;
use crate::roles::Role;
use rusqlite::{Connection, OptionalExtension, params};
use tally_proto::time::Instant;

/// A stored Unix time as an instant (times are written by this store, so always in range).
pub(super) fn ts(t: i64) -> Instant {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default()
}

pub(super) fn collector_key(conn: &Connection) -> StoreResult<Option<[u8; 32]>> {
    let v: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'collector_key'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| <[u8; 32]>::try_from(v).ok()))
}

pub(super) fn bind_collector_key(conn: &Connection, key: [u8; 32]) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('collector_key', ?1) ON CONFLICT (name) DO NOTHING",
        [key.as_slice()],
    )?;
    match collector_key(conn)? {
        Some(k) if k == key => Ok(()),
        Some(k) => Err(crate::store::key_mismatch(&k, &key)),
        None => Err(StoreError::Database(
            "the collector key was not recorded".into(),
        )),
    }
}

pub(super) fn add_customer(conn: &Connection, name: &str, now: i64) -> StoreResult<CustomerRecord> {
    let id = ids::new_id("cus");
    conn.execute(
        "INSERT INTO customers (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, name, now],
    )?;
    Ok(CustomerRecord {
        id,
        name: name.to_string(),
        created_at: ts(now),
        cancelled_at: None,
    })
}

pub(super) fn list_customers(
    conn: &Connection,
    only: Option<&str>,
) -> StoreResult<Vec<CustomerRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, created_at, cancelled_at FROM customers WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt
        .query_map([only], |r| {
            Ok(CustomerRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: ts(r.get(2)?),
                cancelled_at: r.get::<_, Option<i64>>(3)?.map(ts),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn issue_license(conn: &Connection, new: &NewLicense, now: i64) -> StoreResult<()> {
    let l = &new.license;
    let exists: bool = conn
        .query_row(
            "SELECT 1 FROM customers WHERE id = ?1",
            [&l.customer_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Err(StoreError::NotFound(format!(
            "customer {} not found",
            l.customer_id
        )));
    }
    conn.execute(
        "INSERT INTO licenses (id, customer_id, signed, not_before, not_after, grace_secs, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            l.license_id,
            l.customer_id,
            new.signed,
            l.not_before.timestamp(),
            l.not_after.timestamp(),
            l.grace_secs as i64,
            now
        ],
    )?;
    for m in &l.metrics {
        conn.execute(
            "INSERT INTO license_metrics (license_id, metric, quota) VALUES (?1, ?2, ?3)",
            params![
                l.license_id,
                m.metric,
                m.limit.map(|q| q.min(i64::MAX as u64) as i64)
            ],
        )?;
    }
    for p in &new.alerts {
        conn.execute(
            "INSERT INTO license_alerts (license_id, percent) VALUES (?1, ?2)",
            params![l.license_id, p],
        )?;
    }
    conn.execute(
        "INSERT INTO enrollment_tokens (hash, license_id, uses_left, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![new.token_hash.as_slice(), l.license_id, new.enrollments, new.token_expires.timestamp()],
    )?;
    Ok(())
}

pub(super) fn list_licenses(
    conn: &Connection,
    customer: Option<&str>,
) -> StoreResult<Vec<LicenseRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, customer_id, not_before, not_after, grace_secs, revoked_at FROM licenses
         WHERE ?1 IS NULL OR customer_id = ?1 ORDER BY created_at, id",
    )?;
    let mut metrics = conn.prepare_cached(
        "SELECT metric, quota FROM license_metrics WHERE license_id = ?1 ORDER BY metric",
    )?;
    let rows = stmt
        .query_map([customer], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, cust, nb, na, grace, revoked) in rows {
        let ms = metrics
            .query_map([&id], |r| {
                Ok(LicenseMetricRecord {
                    metric: r.get(0)?,
                    limit: r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let alerts = conn
            .prepare_cached(
                "SELECT percent FROM license_alerts WHERE license_id = ?1 ORDER BY percent",
            )?
            .query_map([&id], |r| r.get::<_, u32>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(LicenseRecord {
            license_id: id,
            customer_id: cust,
            metrics: ms,
            not_before: ts(nb),
            not_after: ts(na),
            grace_secs: grace.max(0) as u64,
            revoked_at: revoked.map(ts),
            alerts,
        });
    }
    Ok(out)
}

pub(super) fn revoke_license(conn: &Connection, id: &str, now: i64) -> StoreResult<()> {
    let revoked: Option<Option<i64>> = conn
        .query_row("SELECT revoked_at FROM licenses WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match revoked {
        None => Err(StoreError::NotFound(format!("license {id} not found"))),
        Some(Some(_)) => Err(StoreError::Conflict(format!(
            "license {id} is already revoked"
        ))),
        Some(None) => {
            conn.execute(
                "UPDATE licenses SET revoked_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            conn.execute(
                "UPDATE enrollment_tokens SET uses_left = 0 WHERE license_id = ?1",
                [id],
            )?;
            Ok(())
        }
    }
}

/// Adds an agent key to a license (online enrollment and `agents add`).
pub(super) fn add_agent(
    conn: &Connection,
    license_id: &str,
    key: &[u8; 32],
    now: i64,
) -> StoreResult<String> {
    let existing: Option<(String, String)> = conn
        .query_row(
            "SELECT a.id, a.license_id FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = ?1",
            [key.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((id, lic)) = existing {
        if lic == license_id {
            return Ok(id);
        }
        return Err(StoreError::Conflict(
            "this agent key is enrolled for another license".into(),
        ));
    }
    let lic: Option<Option<i64>> = conn
        .query_row(
            "SELECT revoked_at FROM licenses WHERE id = ?1",
            [license_id],
            |r| r.get(0),
        )
        .optional()?;
    match lic {
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
    conn.execute(
        "INSERT INTO agents (id, key, license_id, enrolled_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, key.as_slice(), license_id, now],
    )?;
    super::agent_keys::add_enrolled_key(conn, key, &id, now)?;
    Ok(id)
}

pub(super) fn enroll(
    conn: &Connection,
    license_id: &str,
    token_hash: &[u8; 32],
    key: &[u8; 32],
    now: i64,
) -> StoreResult<(String, Vec<u8>)> {
    let lic: Option<(Vec<u8>, Option<i64>, i64, i64)> = conn
        .query_row(
            "SELECT signed, revoked_at, not_after, grace_secs FROM licenses WHERE id = ?1",
            [license_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let token: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT license_id, uses_left, expires_at FROM enrollment_tokens WHERE hash = ?1",
            [token_hash.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let existing: Option<(String, String)> = conn
        .query_row(
            "SELECT a.id, a.license_id FROM agent_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key = ?1",
            [key.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
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
    conn.execute(
        "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE hash = ?1",
        [token_hash.as_slice()],
    )?;
    let id = add_agent(conn, license_id, key, now)?;
    Ok((id, signed))
}

pub(super) fn list_agents(conn: &Connection, f: &AgentFilter) -> StoreResult<Vec<AgentRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, a.key, a.license_id, l.customer_id, a.revoked_at, a.last_seq, a.last_seen, a.enrolled_at
         FROM agents a JOIN licenses l ON l.id = a.license_id
         WHERE (?1 IS NULL OR l.customer_id = ?1) AND (?2 IS NULL OR a.license_id = ?2)
         ORDER BY a.enrolled_at, a.id",
    )?;
    let rows = stmt
        .query_map(params![f.customer, f.license], |r| {
            let key: Vec<u8> = r.get(1)?;
            Ok(AgentRecord {
                agent_id: r.get(0)?,
                key: key.try_into().unwrap_or([0; 32]),
                license_id: r.get(2)?,
                customer_id: r.get(3)?,
                revoked_at: r.get::<_, Option<i64>>(4)?.map(ts),
                last_seq: r.get::<_, i64>(5)? as u64,
                last_seen: r.get::<_, Option<i64>>(6)?.map(ts),
                enrolled_at: ts(r.get(7)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn revoke_agent(conn: &Connection, id: &str, now: i64) -> StoreResult<()> {
    let revoked: Option<Option<i64>> = conn
        .query_row("SELECT revoked_at FROM agents WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match revoked {
        None => Err(StoreError::NotFound(format!("agent {id} not found"))),
        Some(Some(_)) => Err(StoreError::Conflict(format!(
            "agent {id} is already revoked"
        ))),
        Some(None) => {
            conn.execute(
                "UPDATE agents SET revoked_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        }
    }
}

pub(super) fn create_token(
    conn: &Connection,
    id: &str,
    hash: &[u8; 32],
    role: &Role,
    name: &str,
    now: i64,
) -> StoreResult<()> {
    if let Some(c) = role.customer() {
        let exists = conn
            .query_row("SELECT 1 FROM customers WHERE id = ?1", [c], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("customer {c} not found")));
        }
    }
    conn.execute(
        "INSERT INTO tokens (id, hash, role, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, hash.as_slice(), role.to_string(), name, now],
    )?;
    Ok(())
}

pub(super) fn list_tokens(conn: &Connection) -> StoreResult<Vec<TokenListing>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, role, name, created_at, revoked_at FROM tokens ORDER BY created_at, id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(TokenListing {
                id: r.get(0)?,
                role: r.get(1)?,
                name: r.get(2)?,
                created_at: ts(r.get(3)?),
                revoked: r.get::<_, Option<i64>>(4)?.is_some(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn revoke_token(conn: &Connection, id: &str, now: i64) -> StoreResult<()> {
    let n = conn.execute(
        "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    if n == 0 {
        let exists = conn
            .query_row("SELECT 1 FROM tokens WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some();
        return Err(if exists {
            StoreError::Conflict(format!("token {id} is already revoked"))
        } else {
            StoreError::NotFound(format!("token {id} not found"))
        });
    }
    Ok(())
}

pub(super) fn token_by_hash(
    conn: &Connection,
    hash: &[u8; 32],
) -> StoreResult<Option<TokenRecord>> {
    let row: Option<(String, String, String, Option<i64>)> = conn
        .prepare_cached("SELECT id, role, name, revoked_at FROM tokens WHERE hash = ?1")?
        .query_row([hash.as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((id, role, name, revoked)) = row else {
        return Ok(None);
    };
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

pub(super) fn audit(conn: &Connection, e: &AuditEntry) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        e.at.timestamp(),
        e.actor,
        e.action,
        e.target,
        e.outcome
    ])?;
    Ok(())
}

/// See [`Store::audit_repeatable`].
pub(super) fn audit_repeatable(
    conn: &Connection,
    e: &AuditEntry,
    since: Instant,
) -> StoreResult<()> {
    let grouped = conn
        .prepare_cached(
            "UPDATE audit SET repeats = repeats + 1, last_at = ?1
             WHERE id = (SELECT id FROM audit
                         WHERE actor = ?2 AND action = ?3 AND target = ?4 AND outcome = ?5
                         ORDER BY id DESC LIMIT 1)
               AND at >= ?6",
        )?
        .execute(params![
            e.at.timestamp(),
            e.actor,
            e.action,
            e.target,
            e.outcome,
            since.timestamp()
        ])?;
    if grouped == 0 {
        audit(conn, e)?;
    }
    Ok(())
}

pub(super) fn list_audit(conn: &Connection, limit: u32) -> StoreResult<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, actor, action, target, outcome, repeats, last_at
         FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit], |r| {
            let at = ts(r.get(0)?);
            Ok(AuditRecord {
                entry: AuditEntry {
                    at,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    outcome: r.get(4)?,
                },
                repeats: r.get::<_, i64>(5)?.max(1) as u64,
                last_at: r.get::<_, Option<i64>>(6)?.map_or(at, ts),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[async_trait]
impl RegistryStore for SqliteStore {
    async fn add_customer(&self, name: String, now: Instant) -> StoreResult<CustomerRecord> {
        self.writer
            .write(move |c| super::admin::add_customer(c, &name, secs(now)))
            .await
    }

    async fn list_customers(&self, only: Option<String>) -> StoreResult<Vec<CustomerRecord>> {
        self.read(move |c| super::admin::list_customers(c, only.as_deref()))
            .await
    }

    async fn customer_exists(&self, id: String) -> StoreResult<bool> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT 1 FROM customers WHERE id = ?1", [id], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
        .await
    }

    async fn issue_license(&self, new: NewLicense, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::issue_license(c, &new, secs(now)))
            .await
    }

    async fn list_licenses(&self, customer: Option<String>) -> StoreResult<Vec<LicenseRecord>> {
        self.read(move |c| super::admin::list_licenses(c, customer.as_deref()))
            .await
    }

    async fn revoke_license(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::revoke_license(c, &id, secs(now)))
            .await
    }

    async fn add_agent(
        &self,
        license_id: String,
        key: [u8; 32],
        now: Instant,
    ) -> StoreResult<String> {
        self.writer
            .write(move |c| super::admin::add_agent(c, &license_id, &key, secs(now)))
            .await
    }

    async fn list_agents(&self, filter: AgentFilter) -> StoreResult<Vec<AgentRecord>> {
        self.read(move |c| super::admin::list_agents(c, &filter))
            .await
    }

    async fn revoke_agent(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::revoke_agent(c, &id, secs(now)))
            .await
    }

    async fn create_token(
        &self,
        id: String,
        hash: [u8; 32],
        role: Role,
        name: String,
        now: Instant,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::create_token(c, &id, &hash, &role, &name, secs(now)))
            .await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenListing>> {
        self.read(super::admin::list_tokens).await
    }

    async fn revoke_token(&self, id: String, now: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::revoke_token(c, &id, secs(now)))
            .await
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        self.read(move |c| super::admin::token_by_hash(c, &hash))
            .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::audit(c, &entry))
            .await
    }

    async fn audit_repeatable(&self, entry: AuditEntry, since: Instant) -> StoreResult<()> {
        self.writer
            .write(move |c| super::admin::audit_repeatable(c, &entry, since))
            .await
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| super::admin::list_audit(c, limit)).await
    }
}
